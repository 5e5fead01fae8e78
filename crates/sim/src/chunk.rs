//! Chunk-level simulation, round by round: store and forward.
//!
//! A round's transfers are cut into chunks. Every directed link is a FIFO: a chunk holds
//! it for size / bandwidth, reaches the far end a link latency after it has left, and then
//! queues for the next link of its path. A source offers a transfer's next chunk when the
//! previous one starts on the first link, so chunks to different peers leave a rank
//! interleaved, as a NIC serving several queues does. A chunk that takes a link while the
//! opposite link of its cable still holds one holds it for size / (bandwidth × duplex).
//!
//! The flow level is the limit of this one as chunks shrink, so the two differ only where
//! the fluid picture is wrong: pipeline fill across hops, FIFO rather than max-min order,
//! chunk-sized queueing behind other transfers. Everything else — routes, the latency term,
//! endpoint overhead, reductions, rounds of one class simulated once — is shared with the
//! flow level (the `round` module, [`crate::simulate_with`]).
//!
//! Events: a chunk takes a link the moment it reaches the link's near end, in order of
//! arrival, so when it will leave is known at once, and a link's chunks reach the far end
//! in the order they took it. Each link is therefore a queue already sorted by arrival, and
//! the discrete-event heap holds only the head of each queue and each source's next chunk
//! (ties by chunk number, then transfer, so runs repeat exactly): its size is bounded by
//! links plus transfers, not by the chunks waiting in a congested fabric.
//!
//! Adaptive chunks, per transfer, the larger of [`ChunkParams::MIN_ADAPTIVE`] and the
//! smaller of two sizes:
//! - Pipeline fill: store and forward delays a transfer by one chunk time on every link of
//!   its path but the slowest. A round takes at least as long as its busiest link needs
//!   for the bytes the routes put on it, so chunks are cut to keep every transfer's fill
//!   within [`ChunkParams::FILL`] of that time. A transfer alone on a fat-tree path gets
//!   some hundreds of chunks, however big it is; transfers queueing behind many others
//!   get fewer, bigger ones.
//! - Interleaving: at least [`ChunkParams::INTERLEAVE`] chunks per transfer, so a rank's
//!   concurrent transfers share its links finely. A rank sending many transfers whole, one
//!   after the other, loads each peer's links in bursts the fluid picture does not have;
//!   if every rank visited its peers in the same order, each would be hit by all at once
//!   and the round would take about one pass over the peers longer: 1/n of it with n
//!   chunks per transfer. The generators stagger their peers, so it is milder (a 256-rank
//!   direct all-reduce, 255 transfers per rank, on a 4:1 fat-tree with scattered ranks:
//!   1.1% slower than the flow level at one chunk per transfer, 0.14% at eight), but a
//!   plan need not.
//!
//! Fixed chunks are for looking at one pipelining granularity.
//!
//! ECMP: the router splits every fabric crossing evenly among the next hops at each node
//! it passes, so each node deals a crossing's chunks round-robin over its next hops (one
//! counter per crossing and node, fresh each round): every branch carries the crossing's
//! share to within one chunk at all times, as the flow level's exact split does. The
//! counters of crossings leaving the same node start where the previous ones' chunks end,
//! so their odd chunks fall on different branches. Against the flow level on a randomly
//! placed 256-rank fat-tree with 4:1 leaves, two other rules did worse: numbering each
//! transfer's chunks over the branches leaves up to a chunk per transfer on the low
//! branches (uplinks 2% uneven, rounds as much slower), and one counter per node for all
//! crossings locks transfers whose chunks arrive in turn onto fixed branches, overloading
//! some spine-to-leaf links (rounds up to 67% slower). The event order is deterministic,
//! so the dealing is too; no randomness is involved.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use topoccl_plan::Plan;
use topoccl_topo::{Endpoints, LinkId, NodeId, Topology};

use crate::fault::Stragglers;
use crate::round::{opposites, Crossing, RoundResult, Rounds, Routed, RoutedRound};
use crate::{RoundEngine, SimError};

/// How transfers are cut into chunks, and how much work a run may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    /// Bytes per chunk; `None`: adaptive, per round (see the module's documentation).
    pub chunk_bytes: Option<u64>,
    /// Most chunk events (a chunk crossing one link) a run may create.
    pub max_events: u64,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            chunk_bytes: None,
            max_events: ChunkParams::MAX_EVENTS,
        }
    }
}

impl ChunkParams {
    /// The default bound on chunk events: under a minute of simulation, and even if every
    /// chunk of a round were queued at once, 24 B each stay well under the default memory
    /// cap of `topoccl sim`.
    pub const MAX_EVENTS: u64 = 50_000_000;
    /// Adaptive chunks keep each transfer's pipeline fill within this fraction of its
    /// round's busiest-link time.
    pub const FILL: f64 = 1.0 / 128.0;
    /// Adaptive chunks cut every transfer into at least this many pieces.
    pub const INTERLEAVE: u64 = 32;
    /// Adaptive chunks are no smaller: 256 B costs ~5 ns per extra hop at 400 Gb/s, far
    /// below a hop's latency, so finer cuts would only add events to latency-bound rounds.
    pub const MIN_ADAPTIVE: u64 = 256;

    /// A fixed chunk size.
    pub fn fixed(bytes: u64) -> ChunkParams {
        ChunkParams {
            chunk_bytes: Some(bytes),
            ..ChunkParams::default()
        }
    }
}

/// A chunk on its way: it reaches the node at the far end of the link (or its source)
/// at `at`.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    at: f64,
    /// Chunk number within its transfer.
    seq: u64,
    transfer: u32,
    /// Links of the transfer's `local` already taken.
    taken: u32,
}

/// Where the next event comes from.
#[derive(Clone, Copy, Debug)]
enum Stream {
    /// The front of a link's queue.
    Link(LinkId),
    /// A transfer's next chunk, still at its source.
    Source,
}

/// The earliest chunk of a stream, as the heap orders it.
#[derive(Clone, Copy, Debug)]
struct Head {
    at: f64,
    seq: u64,
    transfer: u32,
    stream: Stream,
}

impl Head {
    fn of(c: &Chunk, stream: Stream) -> Head {
        Head {
            at: c.at,
            seq: c.seq,
            transfer: c.transfer,
            stream,
        }
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on time; a chunk is in one place at a time, so (seq, transfer) is unique.
        other
            .at
            .total_cmp(&self.at)
            .then(other.seq.cmp(&self.seq))
            .then(other.transfer.cmp(&self.transfer))
    }
}

/// A transfer as the event loop walks it.
struct Walk {
    routed: Routed,
    source: NodeId,
    chunks: u64,
    chunk: u64,
}

impl Walk {
    fn size(&self, seq: u64) -> u64 {
        if seq + 1 == self.chunks {
            self.routed.bytes - (self.chunks - 1) * self.chunk
        } else {
            self.chunk
        }
    }
}

/// How a round's transfers are cut: (chunk bytes, chunks) each.
type Cuts = Vec<(u64, u64)>;

/// Per crossing: the ECMP next hops out of each node it passes, in link order, with the
/// index of the node's dealing counter for the crossing.
type NextHops = Vec<HashMap<NodeId, (Vec<LinkId>, usize)>>;

/// Simulates plans on one topology chunk by chunk (routes cached across rounds).
pub struct ChunkSim<'t> {
    rounds: Rounds<'t>,
    params: ChunkParams,
    /// Per link, this round: when it is next free, the chunks that took it (in order),
    /// the bytes they carried, and the bytes the routes put on it (known before the run).
    free_at: Vec<f64>,
    queue: Vec<VecDeque<Chunk>>,
    carried: Vec<f64>,
    load: Vec<f64>,
    /// Per link, the opposite link of its cable ([`opposites`]).
    opposite: Vec<Option<LinkId>>,
}

impl<'t> ChunkSim<'t> {
    pub fn new(
        t: &'t Topology,
        endpoints: Endpoints,
        stragglers: Stragglers,
        params: ChunkParams,
    ) -> ChunkSim<'t> {
        let links = t.links().len();
        ChunkSim {
            rounds: Rounds::new(t, endpoints, stragglers),
            params,
            free_at: vec![0.0; links],
            queue: vec![VecDeque::new(); links],
            carried: vec![0.0; links],
            load: vec![0.0; links],
            opposite: opposites(t),
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.rounds.topology()
    }

    /// Chunk events a run of `plan` creates (rounds of one class counted once, as they are
    /// simulated once).
    pub fn events(&mut self, plan: &Plan) -> Result<u64, SimError> {
        let mut seen = HashSet::new();
        let mut events = 0u64;
        for round in 0..plan.rounds() {
            if !seen.insert(plan.round_class(round)) {
                continue;
            }
            let routed = self.rounds.route(plan, round)?;
            let cuts = self.cut(&routed);
            events = routed
                .transfers
                .iter()
                .zip(&cuts)
                .map(|(tr, &(_, n))| n.saturating_mul(tr.hops as u64))
                .fold(events, u64::saturating_add);
        }
        Ok(events)
    }

    /// Refuses a run above the event bound, saying how far above and what to do instead.
    pub fn check(&mut self, plan: &Plan) -> Result<(), SimError> {
        let events = self.events(plan)?;
        if events > self.params.max_events {
            return Err(SimError::Invalid(format!(
                "the chunk level would create {events} chunk events for {} ranks on '{}' \
                 ({}), above the limit of {}; use the flow level or a bigger --chunk size",
                plan.world(),
                self.topology().name(),
                describe_chunks(self.params.chunk_bytes),
                self.params.max_events
            )));
        }
        Ok(())
    }

    /// One round of `plan`.
    pub fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        let t = self.topology();
        let routed = self.rounds.route(plan, round)?;
        let cuts = self.cut(&routed);
        let (hops, mut dealt) = next_hops(t, &routed, &cuts);
        let walks: Vec<Walk> = routed
            .transfers
            .into_iter()
            .zip(cuts)
            .map(|(tr, (chunk, chunks))| Walk {
                source: t.rank_node(tr.src),
                chunks,
                chunk,
                routed: tr,
            })
            .collect();
        let makespan = self.run(&walks, &routed.crossings, &hops, &mut dealt)?;
        let bytes = (self.carried.iter().enumerate())
            .filter(|(_, &b)| b > 0.0)
            .map(|(l, &b)| (l as LinkId, b))
            .collect();
        Ok(RoundResult {
            // The critical chunk's path latency is inside the makespan; the longest path's
            // is the latency term, as at the flow level, and the rest is moving bytes.
            transfer_s: (makespan - routed.path_latency_s).max(0.0),
            latency_s: routed.path_latency_s + routed.overhead_s,
            reduction_s: self.rounds.reduction(plan, round),
            bytes,
        })
    }

    /// The chunks of each transfer of `routed`: fixed, or adaptive (see the module's
    /// documentation).
    fn cut(&mut self, routed: &RoutedRound) -> Cuts {
        let t = self.rounds.topology();
        if let Some(c) = self.params.chunk_bytes {
            let c = c.max(1);
            return routed
                .transfers
                .iter()
                .map(|tr| (c, tr.bytes.div_ceil(c).max(1)))
                .collect();
        }
        let bw = |l: LinkId| t.link(l).bandwidth;
        self.load.fill(0.0);
        let load = &mut self.load;
        routed.loads(&mut |l, b| load[l as usize] += b);
        let busiest = load
            .iter()
            .enumerate()
            .map(|(l, b)| b / bw(l as LinkId))
            .fold(0.0, f64::max);
        // Per crossing: seconds per byte over its hops (ECMP branches weighted by their
        // shares) and its slowest link.
        let via: Vec<(f64, f64)> = routed
            .crossings
            .iter()
            .map(|c| {
                c.shares
                    .iter()
                    .fold((0.0, f64::INFINITY), |(d, slowest), &(l, w)| {
                        (d + w / bw(l), slowest.min(bw(l)))
                    })
            })
            .collect();
        routed
            .transfers
            .iter()
            .map(|tr| {
                let (mut per_byte, mut slowest) =
                    tr.crossing.map_or((0.0, f64::INFINITY), |c| via[c]);
                for &l in &tr.local {
                    per_byte += 1.0 / bw(l);
                    slowest = slowest.min(bw(l));
                }
                // Seconds the fill adds per byte of chunk: every hop but the slowest.
                let fill = per_byte - 1.0 / slowest;
                let interleaved = tr.bytes.div_ceil(ChunkParams::INTERLEAVE);
                let chunk = if fill > 1e-9 * per_byte {
                    interleaved.min((busiest * ChunkParams::FILL / fill).ceil() as u64)
                } else {
                    interleaved
                };
                let chunk = chunk.max(ChunkParams::MIN_ADAPTIVE);
                (chunk, tr.bytes.div_ceil(chunk).max(1))
            })
            .collect()
    }

    /// Moves every chunk to its destination; returns when the last one arrived.
    fn run(
        &mut self,
        walks: &[Walk],
        crossings: &[Crossing],
        hops: &NextHops,
        dealt: &mut [u64],
    ) -> Result<f64, SimError> {
        let t = self.rounds.topology();
        self.free_at.fill(0.0);
        self.carried.fill(0.0);
        self.queue.iter_mut().for_each(VecDeque::clear);
        let mut heap: BinaryHeap<Head> = walks
            .iter()
            .enumerate()
            .filter(|(_, w)| w.routed.hops > 0)
            .map(|(i, _)| Head {
                at: 0.0,
                seq: 0,
                transfer: i as u32,
                stream: Stream::Source,
            })
            .collect();
        let mut makespan: f64 = 0.0;
        #[cfg(debug_assertions)]
        let (mut now, mut arrived) = (0.0f64, 0u64);
        while let Some(head) = heap.pop() {
            #[cfg(debug_assertions)]
            {
                debug_assert!(head.at >= now, "time went back from {now} to {}", head.at);
                now = head.at;
            }
            let w = &walks[head.transfer as usize];
            let (mut chunk, node) = match head.stream {
                Stream::Source => (
                    Chunk {
                        at: head.at,
                        seq: head.seq,
                        transfer: head.transfer,
                        taken: 0,
                    },
                    w.source,
                ),
                Stream::Link(l) => {
                    let queue = &mut self.queue[l as usize];
                    let c = queue.pop_front().expect("a queue's head is its front");
                    if let Some(next) = queue.front() {
                        heap.push(Head::of(next, Stream::Link(l)));
                    }
                    (c, t.link(l).to)
                }
            };
            let Some(link) = next_link(t, w, crossings, hops, dealt, &mut chunk, node)? else {
                debug_assert_eq!(chunk.taken as usize, w.routed.local.len(), "arrived early");
                #[cfg(debug_assertions)]
                {
                    arrived += 1;
                }
                makespan = makespan.max(chunk.at);
                continue;
            };
            let size = w.size(chunk.seq) as f64;
            let l = t.link(link);
            let start = chunk.at.max(self.free_at[link as usize]);
            // A cable still carrying a chunk the other way leaves this one its duplex share.
            let back = self.opposite.get(link as usize).copied().flatten();
            let shared = back.is_some_and(|b| self.free_at[b as usize] > start);
            let hold = size / (l.bandwidth * if shared { l.duplex } else { 1.0 });
            self.free_at[link as usize] = start + hold;
            self.carried[link as usize] += size;
            if matches!(head.stream, Stream::Source) && chunk.seq + 1 < w.chunks {
                heap.push(Head {
                    at: start,
                    seq: chunk.seq + 1,
                    transfer: chunk.transfer,
                    stream: Stream::Source,
                });
            }
            chunk.at = start + hold + l.latency;
            let queue = &mut self.queue[link as usize];
            // A link is a FIFO: chunks reach its far end in the order they took it.
            debug_assert!(
                queue.back().is_none_or(|b| b.at <= chunk.at),
                "link {link} reorders chunks"
            );
            if queue.is_empty() {
                heap.push(Head::of(&chunk, Stream::Link(link)));
            }
            queue.push_back(chunk);
        }
        // Every chunk arrived, and the links carried each transfer's bytes once per hop.
        #[cfg(debug_assertions)]
        {
            let moving = walks.iter().filter(|w| w.routed.hops > 0);
            let chunks: u64 = moving.clone().map(|w| w.chunks).sum();
            debug_assert_eq!(arrived, chunks, "chunks lost in the round");
            let want: f64 = moving
                .map(|w| w.routed.bytes as f64 * w.routed.hops as f64)
                .sum();
            let carried: f64 = self.carried.iter().sum();
            debug_assert!(
                (carried - want).abs() <= 1e-9 * want.max(1.0),
                "links carried {carried} B for {want} B of transfers × hops"
            );
        }
        Ok(makespan)
    }
}

impl RoundEngine for ChunkSim<'_> {
    fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        ChunkSim::round(self, plan, round)
    }
}

/// The link `chunk` takes out of `node`: the way out of its source host, an ECMP branch
/// through the fabric, the way into its destination host; `None` once it has arrived.
fn next_link(
    t: &Topology,
    w: &Walk,
    crossings: &[Crossing],
    hops: &NextHops,
    dealt: &mut [u64],
    chunk: &mut Chunk,
    node: NodeId,
) -> Result<Option<LinkId>, SimError> {
    let r = &w.routed;
    let taken = chunk.taken as usize;
    if taken < r.before_fabric {
        chunk.taken += 1;
        return Ok(Some(r.local[taken]));
    }
    if let Some(c) = r.crossing {
        let to = crossings[c].to;
        if taken == r.before_fabric && node != to {
            let (out, counter) = hops[c].get(&node).ok_or_else(|| {
                SimError::Invalid(format!(
                    "no next hop from '{}' toward '{}'",
                    t.node(node).name,
                    t.node(to).name
                ))
            })?;
            let turn = &mut dealt[*counter];
            *turn += 1;
            return Ok(Some(out[((*turn - 1) % out.len() as u64) as usize]));
        }
    }
    if taken < r.local.len() {
        chunk.taken += 1;
        return Ok(Some(r.local[taken]));
    }
    Ok(None)
}

/// The next-hop tables of the round's crossings and their dealing counters, each starting
/// after the chunks of the earlier crossings from the same node.
fn next_hops(t: &Topology, routed: &RoutedRound, cuts: &Cuts) -> (NextHops, Vec<u64>) {
    let mut chunks = vec![0u64; routed.crossings.len()];
    for (tr, &(_, n)) in routed.transfers.iter().zip(cuts) {
        if let Some(c) = tr.crossing {
            chunks[c] += n;
        }
    }
    let mut before: HashMap<NodeId, u64> = HashMap::new();
    let mut dealt = Vec::new();
    let tables = routed
        .crossings
        .iter()
        .zip(&chunks)
        .map(|(c, &n)| {
            let start = before.entry(c.from).or_default();
            let first = *start;
            *start += n;
            let mut out: HashMap<NodeId, Vec<LinkId>> = HashMap::new();
            for &(l, _) in c.shares.iter() {
                out.entry(t.link(l).from).or_default().push(l);
            }
            out.into_iter()
                .map(|(node, links)| {
                    dealt.push(first);
                    (node, (links, dealt.len() - 1))
                })
                .collect()
        })
        .collect();
    (tables, dealt)
}

/// `64 KiB chunks`, `adaptive chunks`.
pub(crate) fn describe_chunks(chunk_bytes: Option<u64>) -> String {
    match chunk_bytes {
        None => "adaptive chunks".to_string(),
        Some(b) if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB chunks", b >> 20),
        Some(b) if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB chunks", b >> 10),
        Some(b) => format!("{b} B chunks"),
    }
}
