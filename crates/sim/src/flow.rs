//! Flow-level simulation, round by round.
//!
//! A round's transfers are flows over their routes (ECMP shares as weights on the links).
//! Bandwidth is shared max-min fairly (progressive filling: every unfrozen flow's rate
//! grows alike until a link fills, whose flows then freeze); when flows finish, the rest
//! are re-shared, so a round is a sequence of these allocations. The round ends with its
//! last flow, plus its longest path latency, software overhead for extra peers and the
//! slowest reduction. Rounds of one class are simulated once.

use std::collections::HashMap;

use topoccl_plan::{Op, Plan, TransferInfo};
use topoccl_topo::{Endpoints, LinkId, NodeId, Router, Topology};

use crate::fault::Stragglers;
use crate::SimError;

/// Rates and remaining bytes below this share count as done (floating-point dust).
const EPS: f64 = 1e-12;
/// Re-sharing events per round before the rest is shared once more and finished at those
/// rates: bounds the work on rounds with many different flow sizes.
const MAX_EVENTS: usize = 256;

/// One flow of a round.
struct Flow {
    left: f64,
    rate: f64,
    /// Links outside the fabric, each used fully.
    local: Vec<LinkId>,
    /// The fabric crossing's link shares (index into `Round::crossings`).
    crossing: Option<usize>,
    active: bool,
}

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

/// Simulates plans on one topology (routes cached across rounds and plans).
pub struct FlowSim<'t> {
    router: Router<'t>,
    endpoints: Endpoints,
    stragglers: Stragglers,
}

impl<'t> FlowSim<'t> {
    pub fn new(t: &'t Topology, endpoints: Endpoints, stragglers: Stragglers) -> FlowSim<'t> {
        FlowSim {
            router: Router::new(t),
            endpoints,
            stragglers,
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.router.topology()
    }

    /// One round of `plan`.
    pub fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        let elem = plan.spec().dtype.size() as f64;
        let mut transfers = Vec::new();
        plan.transfers(round, &mut transfers);
        let (mut flows, crossings, latency) = self.flows(&transfers, elem)?;
        let transfer_s = share(self.topology(), &mut flows, &crossings);
        let mut bytes: HashMap<LinkId, f64> = HashMap::new();
        for (tr, f) in transfers.iter().zip(&flows) {
            let b = tr.len as f64 * elem;
            for &l in &f.local {
                *bytes.entry(l).or_default() += b;
            }
            if let Some(c) = f.crossing {
                for &(l, w) in &crossings[c] {
                    *bytes.entry(l).or_default() += b * w;
                }
            }
        }
        let mut bytes: Vec<(LinkId, f64)> = bytes.into_iter().collect();
        bytes.sort_by_key(|b| b.0);
        Ok(RoundResult {
            transfer_s,
            latency_s: latency,
            reduction_s: self.reduction(plan, round, elem),
            bytes,
        })
    }

    #[allow(clippy::type_complexity)]
    fn flows(
        &mut self,
        transfers: &[TransferInfo],
        elem: f64,
    ) -> Result<(Vec<Flow>, Vec<Vec<(LinkId, f64)>>, f64), SimError> {
        let mut crossing_index: HashMap<(NodeId, NodeId), usize> = HashMap::new();
        let mut crossings: Vec<Vec<(LinkId, f64)>> = Vec::new();
        let mut flows = Vec::with_capacity(transfers.len());
        let mut latency: f64 = 0.0;
        let mut peers: HashMap<u32, Vec<u32>> = HashMap::new();
        for tr in transfers {
            let mine = peers.entry(tr.src).or_default();
            if !mine.contains(&tr.dst) {
                mine.push(tr.dst);
            }
            let parts = self.router.parts(tr.src, tr.dst)?.clone();
            latency = latency.max(parts.latency);
            let crossing = match parts.fabric {
                None => None,
                Some(key) => Some(match crossing_index.get(&key) {
                    Some(&i) => i,
                    None => {
                        let mut shares: HashMap<LinkId, f64> = HashMap::new();
                        self.router.spread_to(key.1, &[(key.0, 1.0)], &mut |l, w| {
                            *shares.entry(l).or_default() += w
                        });
                        let mut shares: Vec<_> = shares.into_iter().collect();
                        shares.sort_by_key(|s| s.0);
                        crossings.push(shares);
                        crossing_index.insert(key, crossings.len() - 1);
                        crossings.len() - 1
                    }
                }),
            };
            flows.push(Flow {
                left: tr.len as f64 * elem,
                rate: 0.0,
                local: parts.local,
                crossing,
                active: tr.len > 0,
            });
        }
        let most_peers = peers.values().map(Vec::len).max().unwrap_or(0);
        if !transfers.is_empty() {
            latency += self.endpoints.overhead_s * most_peers.saturating_sub(1) as f64;
        }
        Ok((flows, crossings, latency))
    }

    /// The slowest rank's reduction in this round (stragglers reduce slower).
    fn reduction(&self, plan: &Plan, round: u32, elem: f64) -> f64 {
        let mut ops: Vec<Op> = Vec::new();
        (0..plan.world())
            .map(|r| {
                ops.clear();
                plan.emit(r, round, &mut ops);
                let reduced: u64 = ops.iter().map(|o| o.reduced_len()).sum();
                let factor = self
                    .stragglers
                    .reduce_factor
                    .get(r as usize)
                    .copied()
                    .unwrap_or(1.0);
                reduced as f64 * elem * self.endpoints.gamma_s_per_byte / factor
            })
            .fold(0.0, f64::max)
    }
}

/// Runs the flows to completion under max-min fair sharing; returns the time taken.
fn share(t: &Topology, flows: &mut [Flow], crossings: &[Vec<(LinkId, f64)>]) -> f64 {
    // Link → (flow, weight) incidence, built once: allocation walks it for every fill.
    let mut users: HashMap<LinkId, Vec<(usize, f64)>> = HashMap::new();
    for (i, f) in flows.iter().enumerate() {
        for &l in &f.local {
            users.entry(l).or_default().push((i, 1.0));
        }
        if let Some(c) = f.crossing {
            for &(l, w) in &crossings[c] {
                users.entry(l).or_default().push((i, w));
            }
        }
    }
    let mut links: Vec<(LinkId, Vec<(usize, f64)>)> = users.into_iter().collect();
    links.sort_by_key(|l| l.0);
    let mut elapsed = 0.0;
    for event in 0.. {
        if !flows.iter().any(|f| f.active) {
            break;
        }
        allocate(t, flows, &links);
        // A flow that crosses no link at all (same node) finishes at once.
        for f in flows.iter_mut().filter(|f| f.active && f.rate <= EPS) {
            if f.local.is_empty() && f.crossing.is_none() {
                f.active = false;
            }
        }
        let next = flows
            .iter()
            .filter(|f| f.active && f.rate > EPS)
            .map(|f| f.left / f.rate)
            .fold(f64::INFINITY, f64::min);
        if !next.is_finite() {
            break;
        }
        // After many events, finish everything at the current rates.
        let step = if event >= MAX_EVENTS {
            flows
                .iter()
                .filter(|f| f.active && f.rate > EPS)
                .map(|f| f.left / f.rate)
                .fold(0.0, f64::max)
        } else {
            next
        };
        elapsed += step;
        for f in flows.iter_mut().filter(|f| f.active) {
            f.left -= f.rate * step;
            if f.left <= EPS * (1.0 + f.rate * step) {
                f.active = false;
            }
        }
    }
    elapsed
}

/// Max-min fair rates for the active flows (progressive filling).
fn allocate(t: &Topology, flows: &mut [Flow], links: &[(LinkId, Vec<(usize, f64)>)]) {
    let mut frozen: Vec<bool> = flows.iter().map(|f| !f.active).collect();
    for f in flows.iter_mut() {
        f.rate = 0.0;
    }
    let mut room: Vec<f64> = links.iter().map(|(l, _)| t.link(*l).bandwidth).collect();
    loop {
        // Growth rate of each link's load per unit of common rate increase.
        let mut best = f64::INFINITY;
        let mut demand = vec![0.0; links.len()];
        for (k, (_, us)) in links.iter().enumerate() {
            let d: f64 = us.iter().filter(|(i, _)| !frozen[*i]).map(|(_, w)| w).sum();
            demand[k] = d;
            if d > EPS {
                best = best.min(room[k] / d);
            }
        }
        if !best.is_finite() {
            break;
        }
        for (i, f) in flows.iter_mut().enumerate() {
            if !frozen[i] {
                f.rate += best;
            }
        }
        let mut any = false;
        for (k, (_, us)) in links.iter().enumerate() {
            room[k] -= best * demand[k];
            if demand[k] > EPS && room[k] <= EPS * t.link(links[k].0).bandwidth.max(1.0) {
                for &(i, _) in us {
                    if !frozen[i] {
                        frozen[i] = true;
                        any = true;
                    }
                }
            }
        }
        if !any || frozen.iter().all(|&f| f) {
            break;
        }
    }
}
