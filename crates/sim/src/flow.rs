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
        let mut through = vec![0.0; crossings.len()];
        for (tr, f) in transfers.iter().zip(&flows) {
            let b = tr.len as f64 * elem;
            for &l in &f.local {
                *bytes.entry(l).or_default() += b;
            }
            if let Some(c) = f.crossing {
                through[c] += b;
            }
        }
        for (shares, b) in crossings.iter().zip(&through) {
            for &(l, w) in shares {
                *bytes.entry(l).or_default() += b * w;
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

/// Who loads a link: flows that use it whole, and fabric crossings that put a share of
/// each of their flows on it. Crossings are counted as groups so that 16k flows through a
/// few hundred leaf pairs cost a few hundred entries per link, not 16k.
struct Users {
    link: LinkId,
    flows: Vec<usize>,
    crossings: Vec<(usize, f64)>,
}

/// Runs the flows to completion under max-min fair sharing; returns the time taken.
fn share(t: &Topology, flows: &mut [Flow], crossings: &[Vec<(LinkId, f64)>]) -> f64 {
    let mut by_link: HashMap<LinkId, Users> = HashMap::new();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); crossings.len()];
    for (i, f) in flows.iter().enumerate() {
        for &l in &f.local {
            users_of(&mut by_link, l).flows.push(i);
        }
        if let Some(c) = f.crossing {
            members[c].push(i);
        }
    }
    for (c, shares) in crossings.iter().enumerate() {
        if members[c].is_empty() {
            continue;
        }
        for &(l, w) in shares {
            users_of(&mut by_link, l).crossings.push((c, w));
        }
    }
    let mut links: Vec<Users> = by_link.into_values().collect();
    links.sort_by_key(|u| u.link);
    let mut elapsed = 0.0;
    for event in 0.. {
        if !flows.iter().any(|f| f.active) {
            break;
        }
        allocate(t, flows, &links, &members);
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

fn users_of(m: &mut HashMap<LinkId, Users>, l: LinkId) -> &mut Users {
    m.entry(l).or_insert_with(|| Users {
        link: l,
        flows: Vec::new(),
        crossings: Vec::new(),
    })
}

/// Max-min fair rates for the active flows (progressive filling): every unfrozen flow
/// grows alike until a link fills; its flows freeze at the level reached.
fn allocate(t: &Topology, flows: &mut [Flow], links: &[Users], members: &[Vec<usize>]) {
    let mut frozen: Vec<bool> = flows.iter().map(|f| !f.active).collect();
    let mut open: Vec<f64> = members
        .iter()
        .map(|m| m.iter().filter(|&&i| !frozen[i]).count() as f64)
        .collect();
    let mut room: Vec<f64> = links.iter().map(|u| t.link(u.link).bandwidth).collect();
    let mut level = 0.0;
    let mut left = frozen.iter().filter(|&&f| !f).count();
    for f in flows.iter_mut() {
        f.rate = 0.0;
    }
    let freeze =
        |i: usize, frozen: &mut Vec<bool>, open: &mut Vec<f64>, flows: &mut [Flow], level: f64| {
            if !frozen[i] {
                frozen[i] = true;
                flows[i].rate = level;
                if let Some(c) = flows[i].crossing {
                    open[c] -= 1.0;
                }
                true
            } else {
                false
            }
        };
    while left > 0 {
        let demand: Vec<f64> = links
            .iter()
            .map(|u| {
                let whole = u.flows.iter().filter(|&&i| !frozen[i]).count() as f64;
                let shares: f64 = u.crossings.iter().map(|&(c, w)| w * open[c]).sum();
                whole + shares
            })
            .collect();
        let step = demand
            .iter()
            .zip(&room)
            .filter(|(d, _)| **d > EPS)
            .map(|(d, r)| r / d)
            .fold(f64::INFINITY, f64::min);
        if !step.is_finite() {
            break;
        }
        level += step;
        let mut saturated = Vec::new();
        for (k, u) in links.iter().enumerate() {
            room[k] -= step * demand[k];
            if demand[k] > EPS && room[k] <= EPS * t.link(u.link).bandwidth.max(1.0) {
                saturated.push(k);
            }
        }
        for k in saturated {
            let u = &links[k];
            for &i in &u.flows {
                if freeze(i, &mut frozen, &mut open, flows, level) {
                    left -= 1;
                }
            }
            for &(c, _) in &u.crossings {
                for &i in &members[c] {
                    if freeze(i, &mut frozen, &mut open, flows, level) {
                        left -= 1;
                    }
                }
            }
        }
    }
    // Flows no link limits (none here: every flow crosses a link) keep the last level.
    for (i, f) in flows.iter_mut().enumerate() {
        if !frozen[i] {
            f.rate = level;
        }
    }
}
