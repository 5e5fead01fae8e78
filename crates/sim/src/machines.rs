//! The pipelined timing again, by the runtime's own state machine: one
//! [`RankMachine`] per rank, driven on virtual time by a discrete-event loop — the
//! cross-check of [`crate::pipeline`] for small worlds.
//!
//! The machines decide which op may start (program order, derived dependencies, a window
//! of rounds), exactly as they do for the TCP runtime; this loop decides when it ends, from
//! the same costs the pipelined mode uses: the flow level's per-transfer times of the
//! round's class ([`FlowSim::timed`]: when the last byte left, from the round's start, and
//! the path latency) and each rank's own time per round (its reductions and per-peer
//! overhead). A send ends when its last byte has left, a receive when the bytes have
//! arrived (and it was posted), a local op at once; a rank's own time of a round is spent
//! after its last op of that round, before its first op of the next.
//!
//! With a window of one round (what the pipelined mode models: a rank starts a round
//! when its own part of the previous one is done) the two agree to floating-point
//! rounding for every plan; the tests check it over algorithms, collectives and world
//! sizes. The runtime's window is larger (`PlanParams::in_flight` rounds), which lets ops
//! of later rounds that do not depend on the current one start early: neither mode
//! times that.
//!
//! Every transfer's cost is kept (by link, in program order), so this is for small worlds:
//! runs above [`MAX_TRANSFERS`] are refused.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;
use topoccl_plan::machine::RankMachine;
use topoccl_plan::{OpKind, Placement, Plan, Rank, TransferInfo};
use topoccl_topo::{Endpoints, Topology};

use crate::fault::{self, Fault};
use crate::flow::FlowSim;
use crate::SimError;

/// Transfers a run may hold the costs of (about 40 MiB of them).
pub const MAX_TRANSFERS: u64 = 1 << 20;

/// A transfer's link: source, destination, channel.
type Link = (Rank, Rank, u16);

/// One transfer's cost: its round, when its last byte left (from the round's start) and
/// its path latency.
#[derive(Clone, Copy)]
struct Cost {
    round: u32,
    left: f64,
    latency: f64,
}

/// The costs the pipelined mode uses, for every transfer of the plan.
struct Costs {
    /// Per link, its transfers in program order: a send's `link_seq` indexes it.
    links: HashMap<Link, Vec<Cost>>,
    /// Per round, the index of its class in `own`.
    class_of: Vec<u32>,
    /// Per round class, each rank's own time (reductions, per-peer overhead).
    own: Vec<Vec<f64>>,
}

impl Costs {
    fn new(plan: &Plan, sim: &mut FlowSim<'_>) -> Result<Costs, SimError> {
        /// A round class's per-transfer times, found by (link, length), the n-th
        /// transfer of a round on one key taking the class's n-th (rounds of one class
        /// move the same multiset of transfers, in any order).
        struct Class {
            by_key: HashMap<(Link, u64), Vec<(f64, f64)>>,
        }
        let mut classes: HashMap<u64, u32> = HashMap::default();
        let mut by_class: Vec<Class> = Vec::new();
        let mut costs = Costs {
            links: HashMap::default(),
            class_of: Vec::with_capacity(plan.rounds() as usize),
            own: Vec::new(),
        };
        let mut transfers: Vec<TransferInfo> = Vec::new();
        let mut seen: HashMap<(Link, u64), usize> = HashMap::default();
        let mut total = 0u64;
        for round in 0..plan.rounds() {
            transfers.clear();
            plan.transfers(round, &mut transfers);
            total += transfers.len() as u64;
            if total > MAX_TRANSFERS {
                return Err(SimError::Invalid(format!(
                    "timing {} ranks by their state machines holds every transfer's cost, \
                     and this plan has more than {MAX_TRANSFERS} transfers; use the \
                     pipelined mode or a smaller world",
                    plan.world()
                )));
            }
            let class = plan.round_class(round);
            let c = match classes.get(&class) {
                Some(&c) => c,
                None => {
                    let timing = sim.timed(plan, round)?;
                    let mut by_key: HashMap<(Link, u64), Vec<(f64, f64)>> = HashMap::default();
                    for (tr, &(src, dst, left, latency)) in transfers.iter().zip(&timing.sends) {
                        debug_assert_eq!((tr.src, tr.dst), (src, dst), "timing out of order");
                        by_key
                            .entry(((src, dst, tr.channel), tr.len))
                            .or_default()
                            .push((left, latency));
                    }
                    let c = by_class.len() as u32;
                    by_class.push(Class { by_key });
                    costs.own.push(timing.own);
                    classes.insert(class, c);
                    c
                }
            };
            costs.class_of.push(c);
            seen.clear();
            for tr in &transfers {
                let key = ((tr.src, tr.dst, tr.channel), tr.len);
                let n = seen.entry(key).or_default();
                let Some(&(left, latency)) = by_class[c as usize]
                    .by_key
                    .get(&key)
                    .and_then(|v| v.get(*n))
                else {
                    return Err(SimError::Invalid(format!(
                        "round {round} sends {} elements from rank {} to rank {} (channel {}) \
                         that the first round of its class does not; the plan's round \
                         classes are wrong",
                        tr.len, tr.src, tr.dst, tr.channel
                    )));
                };
                *n += 1;
                costs.links.entry(key.0).or_default().push(Cost {
                    round,
                    left,
                    latency,
                });
            }
        }
        Ok(costs)
    }

    /// `rank`'s own time in `round`.
    fn own(&self, round: u32, rank: usize) -> f64 {
        self.own[self.class_of[round as usize] as usize][rank]
    }

    /// The cost of the send at `seq` on `link`.
    fn transfer(&self, link: Link, seq: u32) -> Option<Cost> {
        self.links.get(&link)?.get(seq as usize).copied()
    }
}

/// An op ending at a time; earlier first, then in the order scheduled.
struct Event {
    at: f64,
    order: u64,
    rank: u32,
    index: u64,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap pops the earliest.
        other
            .at
            .total_cmp(&self.at)
            .then(other.order.cmp(&self.order))
    }
}

/// One rank: its machine and where its clock stands.
struct RankState {
    machine: RankMachine,
    /// The round of the ops it runs now.
    round: u32,
    /// When it started that round.
    start: f64,
    /// When its latest op of that round ended.
    end: f64,
    /// When it finished its program.
    finished: Option<f64>,
}

/// The event loop's state.
struct Run<'a> {
    costs: &'a Costs,
    ranks: Vec<RankState>,
    events: BinaryHeap<Event>,
    order: u64,
    /// Sends whose receive is not posted yet: when their bytes arrive.
    arrivals: HashMap<(Link, u32), f64>,
    /// Receives posted before their send: (rank, op index, when posted).
    waiting: HashMap<(Link, u32), (u32, u64, f64)>,
}

impl Run<'_> {
    fn schedule(&mut self, at: f64, rank: u32, index: u64) {
        self.order += 1;
        self.events.push(Event {
            at,
            order: self.order,
            rank,
            index,
        });
    }

    /// Starts every op `rank`'s machine allows at `now`.
    fn start_ready(&mut self, rank: u32, now: f64) -> Result<(), SimError> {
        let r = rank as usize;
        while let Some(ready) = self.ranks[r].machine.next_ready() {
            let st = &mut self.ranks[r];
            let op = ready.op;
            if op.round != st.round {
                // A window of one round: the machine admits a round once the rank's ops
                // of the earlier ones have all ended; its own time of the last comes first.
                debug_assert!(op.round > st.round, "rank {rank} went back a round");
                debug_assert!(
                    (st.round + 1..op.round).all(|k| self.costs.own(k, r) == 0.0),
                    "rank {rank} skipped a round with work of its own"
                );
                st.start = st.end + self.costs.own(st.round, r);
                st.end = st.start;
                st.round = op.round;
            }
            let begin = st.start.max(now);
            match op.kind {
                OpKind::Send { peer, .. } => {
                    let link = (rank, peer, op.channel);
                    let cost = self.costs.transfer(link, ready.link_seq).ok_or_else(|| {
                        SimError::Invalid(format!(
                            "rank {rank}'s send #{} to rank {peer} (channel {}) is not in the \
                             plan's transfers",
                            ready.link_seq, op.channel
                        ))
                    })?;
                    debug_assert_eq!(cost.round, op.round, "send matched across rounds");
                    // The round rule: no send waits on a receive of its own round, so every
                    // send starts with its round, as the pipelined mode has it.
                    debug_assert_eq!(begin, st.start, "rank {rank} sent late in its round");
                    let left = begin + cost.left;
                    let arrival = left + cost.latency;
                    self.schedule(left, rank, ready.index);
                    let key = (link, ready.link_seq);
                    match self.waiting.remove(&key) {
                        Some((dst, index, posted)) => {
                            self.schedule(posted.max(arrival), dst, index)
                        }
                        None => {
                            self.arrivals.insert(key, arrival);
                        }
                    }
                }
                OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                    let key = ((peer, rank, op.channel), ready.link_seq);
                    match self.arrivals.remove(&key) {
                        Some(arrival) => self.schedule(begin.max(arrival), rank, ready.index),
                        None => {
                            self.waiting.insert(key, (rank, ready.index, begin));
                        }
                    }
                }
                // Reductions are the rank's own time of the round (as in the pipelined
                // mode), so local ops take none here.
                OpKind::Copy { .. } | OpKind::Reduce { .. } => {
                    self.schedule(begin, rank, ready.index)
                }
            }
        }
        let st = &mut self.ranks[r];
        if st.machine.is_done() && st.finished.is_none() {
            st.finished = Some(st.end + self.costs.own(st.round, r));
        }
        Ok(())
    }
}

/// The completion time of `plan` on `t` after `faults` with pipelining between rounds,
/// by one [`RankMachine`] per rank with a window of one round (see the module's notes);
/// agrees with [`crate::pipeline::pipelined`]. Refused above [`MAX_TRANSFERS`].
pub fn pipelined(
    plan: &Plan,
    t: &Topology,
    faults: &[Fault],
    endpoints: Endpoints,
) -> Result<f64, SimError> {
    crate::check_world(plan, t)?;
    let p = plan.world() as usize;
    let (faulty, stragglers) = fault::apply(t, faults)?;
    let mut late = stragglers.late.clone();
    late.resize(p, 0.0);
    let mut sim = FlowSim::new(&faulty, endpoints, stragglers);
    let costs = Costs::new(plan, &mut sim)?;
    let mut run = Run {
        costs: &costs,
        ranks: (0..plan.world())
            .zip(&late)
            .map(|(r, &at)| RankState {
                machine: RankMachine::new(plan, r, Placement::OutOfPlace, 1),
                round: 0,
                start: at,
                end: at,
                finished: None,
            })
            .collect(),
        events: BinaryHeap::new(),
        order: 0,
        arrivals: HashMap::default(),
        waiting: HashMap::default(),
    };
    for (r, &at) in late.iter().enumerate() {
        run.start_ready(r as u32, at)?;
    }
    let mut now = 0.0f64;
    while let Some(e) = run.events.pop() {
        debug_assert!(e.at >= now, "virtual time went back from {now} to {}", e.at);
        now = e.at;
        let st = &mut run.ranks[e.rank as usize];
        debug_assert!(
            e.at >= st.start,
            "rank {} ended an op before its round",
            e.rank
        );
        st.end = st.end.max(e.at);
        st.machine.complete(e.index);
        run.start_ready(e.rank, e.at)?;
    }
    if let Some(((src, dst, channel), seq)) = run.waiting.keys().min().copied() {
        return Err(SimError::Invalid(format!(
            "rank {dst}'s receive #{seq} from rank {src} (channel {channel}) has no send; \
             the plan deadlocks"
        )));
    }
    if let Some(((src, dst, channel), seq)) = run.arrivals.keys().min().copied() {
        return Err(SimError::Invalid(format!(
            "rank {src}'s send #{seq} to rank {dst} (channel {channel}) has no receive"
        )));
    }
    let mut total = 0.0f64;
    for (r, st) in run.ranks.iter().enumerate() {
        let Some(at) = st.finished else {
            return Err(SimError::Invalid(format!(
                "rank {r} stopped after {} ops, waiting on ops that never end; the plan \
                 deadlocks",
                st.machine.completed()
            )));
        };
        total = total.max(at);
    }
    Ok(total)
}
