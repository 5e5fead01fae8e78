//! Flow-level simulation, round by round.
//!
//! A round's transfers are flows over their routes (ECMP shares as weights on the links).
//! Bandwidth is shared max-min fairly (progressive filling: every unfrozen flow's rate
//! grows alike until a link fills, whose flows then freeze); when flows finish, the rest
//! are re-shared, so a round is a sequence of these allocations. The round ends with its
//! last flow, plus its longest path latency, software overhead for extra peers and the
//! slowest reduction. Rounds of one class are simulated once.

use std::collections::HashMap;

use topoccl_plan::Plan;
use topoccl_topo::{Endpoints, LinkId, Topology};

use crate::fault::Stragglers;
use crate::round::{Crossing, RoundResult, Rounds};
use crate::{RoundEngine, SimError};

/// Rates and remaining bytes below this share count as done (floating-point dust).
const EPS: f64 = 1e-12;
/// Re-sharing events per round before the rest is shared once more and finished at those
/// rates: bounds the work on rounds with many different flow sizes.
const MAX_EVENTS: usize = 256;

/// One flow of a round.
struct Flow<'r> {
    left: f64,
    rate: f64,
    /// Links outside the fabric, each used fully.
    local: &'r [LinkId],
    /// The fabric crossing's link shares (index into `crossings`).
    crossing: Option<usize>,
    active: bool,
}

/// Simulates plans on one topology (routes cached across rounds and plans).
pub struct FlowSim<'t> {
    rounds: Rounds<'t>,
}

impl<'t> FlowSim<'t> {
    pub fn new(t: &'t Topology, endpoints: Endpoints, stragglers: Stragglers) -> FlowSim<'t> {
        FlowSim {
            rounds: Rounds::new(t, endpoints, stragglers),
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.rounds.topology()
    }

    /// One round of `plan`.
    pub fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        let routed = self.rounds.route(plan, round)?;
        let mut flows: Vec<Flow> = routed
            .transfers
            .iter()
            .map(|tr| Flow {
                left: tr.bytes as f64,
                rate: 0.0,
                local: &tr.local,
                crossing: tr.crossing,
                active: tr.bytes > 0,
            })
            .collect();
        let mut bytes: HashMap<LinkId, f64> = HashMap::new();
        routed.loads(&mut |l, b| *bytes.entry(l).or_default() += b);
        let transfer_s = share(self.topology(), &mut flows, &routed.crossings);
        let mut bytes: Vec<(LinkId, f64)> = bytes.into_iter().collect();
        bytes.sort_by_key(|b| b.0);
        Ok(RoundResult {
            transfer_s,
            latency_s: routed.path_latency_s + routed.overhead_s,
            reduction_s: self.rounds.reduction(plan, round),
            bytes,
        })
    }
}

impl RoundEngine for FlowSim<'_> {
    fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        FlowSim::round(self, plan, round)
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
fn share(t: &Topology, flows: &mut [Flow], crossings: &[Crossing]) -> f64 {
    let mut by_link: HashMap<LinkId, Users> = HashMap::new();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); crossings.len()];
    for (i, f) in flows.iter().enumerate() {
        for &l in f.local {
            users_of(&mut by_link, l).flows.push(i);
        }
        if let Some(c) = f.crossing {
            members[c].push(i);
        }
    }
    for (c, crossing) in crossings.iter().enumerate() {
        if members[c].is_empty() {
            continue;
        }
        for &(l, w) in &crossing.shares {
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
