//! What both engines share about one round: its transfers on their routes and the
//! endpoint terms (software overhead for extra peers, the slowest reduction). Keeping these
//! in one place is what makes the flow and chunk levels differ only in how bytes move.

use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;
use topoccl_plan::{Op, Plan, TransferInfo};
use topoccl_topo::{Endpoints, LinkId, NodeId, Router, Topology};

use crate::fault::Stragglers;
use crate::SimError;

/// What a simulated round costs and loads.
#[derive(Clone, Debug, Default)]
pub struct RoundResult {
    pub transfer_s: f64,
    pub latency_s: f64,
    pub reduction_s: f64,
    /// Bytes per link.
    pub bytes: Vec<(LinkId, f64)>,
}

impl RoundResult {
    pub fn total(&self) -> f64 {
        self.transfer_s + self.latency_s + self.reduction_s
    }
}

/// One transfer on its route.
pub(crate) struct Routed {
    pub src: u32,
    pub dst: u32,
    /// The path's latency.
    pub latency: f64,
    pub bytes: u64,
    /// Links outside the fabric: the source host's way out, then the destination host's
    /// way in (or the whole path, inside one host).
    pub local: SmallVec<[LinkId; 6]>,
    /// How many of `local` come before the fabric crossing.
    pub before_fabric: usize,
    /// Index into [`RoutedRound::crossings`].
    pub crossing: Option<usize>,
    /// Links on the path, whichever ECMP branch is taken.
    pub hops: u32,
}

/// A fabric crossing's links and the share of its bytes each carries (shared with the
/// cache).
pub(crate) type Shares = Rc<[(LinkId, f64)]>;

/// A fabric crossing shared by every transfer between the same two fabric nodes.
pub(crate) struct Crossing {
    /// Where it enters and leaves the fabric.
    pub from: NodeId,
    pub to: NodeId,
    /// Each link's share of the bytes, by link id.
    pub shares: Shares,
}

/// A round's transfers routed, with its latency term.
pub(crate) struct RoutedRound {
    pub transfers: Vec<Routed>,
    pub crossings: Vec<Crossing>,
    /// The longest path's latency.
    pub path_latency_s: f64,
    /// Software overhead of the rank with the most peers, for every peer beyond the first.
    pub overhead_s: f64,
}

impl RoutedRound {
    /// Every link's bytes in the round, as `add(link, bytes)` calls: whole transfers on
    /// their local links, each crossing's sum spread by its shares.
    pub fn loads(&self, add: &mut dyn FnMut(LinkId, f64)) {
        let mut through = vec![0.0; self.crossings.len()];
        for tr in &self.transfers {
            for &l in &tr.local {
                add(l, tr.bytes as f64);
            }
            if let Some(c) = tr.crossing {
                through[c] += tr.bytes as f64;
            }
        }
        for (c, b) in self.crossings.iter().zip(&through) {
            for &(l, w) in c.shares.iter() {
                add(l, b * w);
            }
        }
    }
}

/// Every link's opposite on its cable, where some link of `t` loses bandwidth to traffic
/// the other way (`Link::duplex` < 1); empty otherwise, so full-duplex topologies look
/// nothing up.
pub(crate) fn opposites(t: &Topology) -> Vec<Option<LinkId>> {
    if !t.has_half_duplex() {
        return Vec::new();
    }
    (0..t.links().len() as LinkId)
        .map(|l| t.reverse(l))
        .collect()
}

/// Link shares of fabric crossings kept across rounds (an rhd plan meets the same leaf
/// pairs in its reduce-scatter and all-gather halves); past this many entries the cache
/// starts over, bounding it near 100 MiB.
const SPREAD_CACHE: usize = 6 << 20;

/// Routes and endpoint terms for rounds on one topology (routes cached across rounds).
pub(crate) struct Rounds<'t> {
    router: Router<'t>,
    endpoints: Endpoints,
    stragglers: Stragglers,
    transfers: Vec<TransferInfo>,
    spreads: HashMap<(NodeId, NodeId), Shares>,
    spread_entries: usize,
}

impl<'t> Rounds<'t> {
    pub fn new(t: &'t Topology, endpoints: Endpoints, stragglers: Stragglers) -> Rounds<'t> {
        Rounds {
            router: Router::new(t),
            endpoints,
            stragglers,
            transfers: Vec::new(),
            spreads: HashMap::default(),
            spread_entries: 0,
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.router.topology()
    }

    /// `round`'s transfers on their routes; crossings are spread once however many
    /// transfers share them.
    pub fn route(&mut self, plan: &Plan, round: u32) -> Result<RoutedRound, SimError> {
        let elem = plan.spec().dtype.size() as u64;
        let mut transfers = std::mem::take(&mut self.transfers);
        transfers.clear();
        plan.transfers(round, &mut transfers);
        let mut crossing_index: HashMap<(NodeId, NodeId), usize> = HashMap::default();
        let mut crossings: Vec<Crossing> = Vec::new();
        let mut routed = Vec::with_capacity(transfers.len());
        let mut latency: f64 = 0.0;
        let mut peers: HashMap<u32, Vec<u32>> = HashMap::default();
        for tr in &transfers {
            let mine = peers.entry(tr.src).or_default();
            if !mine.contains(&tr.dst) {
                mine.push(tr.dst);
            }
            let parts = self.router.parts(tr.src, tr.dst)?.clone();
            latency = latency.max(parts.latency);
            let crossing = parts.fabric.map(|key| match crossing_index.get(&key) {
                Some(&i) => i,
                None => {
                    crossings.push(Crossing {
                        from: key.0,
                        to: key.1,
                        shares: self.spread(key),
                    });
                    crossing_index.insert(key, crossings.len() - 1);
                    crossings.len() - 1
                }
            });
            let t = self.router.topology();
            // The way out ends on the fabric node where the crossing starts; the way in
            // starts from the fabric, so no later link can end there.
            let before_fabric = match parts.fabric {
                Some((from, _)) => parts
                    .local
                    .iter()
                    .position(|&l| t.link(l).to == from)
                    .map_or(0, |i| i + 1),
                None => parts.local.len(),
            };
            routed.push(Routed {
                src: tr.src,
                dst: tr.dst,
                latency: parts.latency,
                bytes: tr.len * elem,
                local: parts.local,
                before_fabric,
                crossing,
                hops: parts.hops,
            });
        }
        self.transfers = transfers;
        let most_peers = peers.values().map(Vec::len).max().unwrap_or(0);
        Ok(RoutedRound {
            transfers: routed,
            crossings,
            path_latency_s: latency,
            overhead_s: self.endpoints.overhead_s * most_peers.saturating_sub(1) as f64,
        })
    }

    /// The link shares of the fabric crossing `key` (from, to), spread once and cached.
    fn spread(&mut self, key: (NodeId, NodeId)) -> Shares {
        if let Some(s) = self.spreads.get(&key) {
            return s.clone();
        }
        let mut shares: HashMap<LinkId, f64> = HashMap::default();
        self.router.spread_to(key.1, &[(key.0, 1.0)], &mut |l, w| {
            *shares.entry(l).or_default() += w
        });
        let mut shares: Vec<_> = shares.into_iter().collect();
        shares.sort_by_key(|s| s.0);
        #[cfg(debug_assertions)]
        self.check_conserved(key, &shares);
        if self.spread_entries + shares.len() > SPREAD_CACHE {
            self.spreads.clear();
            self.spread_entries = 0;
        }
        self.spread_entries += shares.len();
        let shares: Shares = shares.into();
        self.spreads.insert(key, shares.clone());
        shares
    }

    /// A crossing's spread conserves bytes: every share is a fraction, all of it leaves
    /// where it enters the fabric and arrives where it leaves, and every node between
    /// passes on what it takes in.
    #[cfg(debug_assertions)]
    fn check_conserved(&self, key: (NodeId, NodeId), shares: &[(LinkId, f64)]) {
        let t = self.router.topology();
        let mut net: HashMap<NodeId, f64> = HashMap::default();
        for &(l, w) in shares {
            debug_assert!(w > 0.0 && w <= 1.0 + 1e-9, "link {l} takes a share of {w}");
            let link = t.link(l);
            *net.entry(link.from).or_default() -= w;
            *net.entry(link.to).or_default() += w;
        }
        for (&n, &v) in &net {
            let want = if n == key.0 {
                -1.0
            } else if n == key.1 {
                1.0
            } else {
                0.0
            };
            debug_assert!(
                (v - want).abs() <= 1e-9,
                "the crossing from '{}' to '{}' does not conserve bytes at '{}': {v}",
                t.node(key.0).name,
                t.node(key.1).name,
                t.node(n).name
            );
        }
    }

    /// The slowest rank's reduction in this round (stragglers reduce slower).
    pub fn reduction(&self, plan: &Plan, round: u32) -> f64 {
        self.reductions(plan, round).into_iter().fold(0.0, f64::max)
    }

    /// Each rank's reduction time in this round.
    pub fn reductions(&self, plan: &Plan, round: u32) -> Vec<f64> {
        let elem = plan.spec().dtype.size() as f64;
        let mut ops: Vec<Op> = Vec::new();
        // Every send of the round has its receive in the same round (the round rule).
        #[cfg(debug_assertions)]
        let mut unmatched: HashMap<(u32, u32, u16, u64), i64> = HashMap::default();
        let reductions = (0..plan.world())
            .map(|r| {
                ops.clear();
                plan.emit(r, round, &mut ops);
                #[cfg(debug_assertions)]
                for op in &ops {
                    use topoccl_plan::OpKind;
                    match op.kind {
                        OpKind::Send { peer, src } => {
                            *unmatched.entry((r, peer, op.channel, src.len)).or_default() += 1
                        }
                        OpKind::Recv { peer, dst } | OpKind::RecvReduce { peer, dst, .. } => {
                            *unmatched.entry((peer, r, op.channel, dst.len)).or_default() -= 1
                        }
                        _ => {}
                    }
                }
                let reduced: u64 = ops.iter().map(|o| o.reduced_len()).sum();
                let factor = self
                    .stragglers
                    .reduce_factor
                    .get(r as usize)
                    .copied()
                    .unwrap_or(1.0);
                reduced as f64 * elem * self.endpoints.gamma_s_per_byte / factor
            })
            .collect();
        #[cfg(debug_assertions)]
        if let Some(((src, dst, channel, len), n)) = unmatched.into_iter().find(|e| e.1 != 0) {
            panic!(
                "round {round}: {} of {len} elements from rank {src} to rank {dst} (channel \
                 {channel}) unmatched",
                if n > 0 { "sends" } else { "receives" }
            );
        }
        reductions
    }

    /// Software overhead per extra peer a rank talks to in one round.
    pub fn overhead_per_peer(&self) -> f64 {
        self.endpoints.overhead_s
    }
}
