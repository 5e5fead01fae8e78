//! Flow-level simulation, round by round.
//!
//! A round's transfers are flows over their routes (ECMP shares as weights on the links).
//! Bandwidth is shared max-min fairly (progressive filling: every unfrozen flow's rate
//! grows alike until a link fills, whose flows then freeze); when flows finish, the rest
//! are re-shared, so a round is a sequence of these allocations. The round ends with its
//! last flow, plus its longest path latency, software overhead for extra peers and the
//! slowest reduction. Rounds of one class are simulated once. A link whose cable carries
//! data the other way at the same moment keeps only its `duplex` share of its bandwidth
//! (1 for full-duplex cables; TCP through rate-limited cables measures below 1).
//!
//! Rounds of a 131,072-rank plan hold that many flows over a million links, so a round's
//! links get dense indices and their users are kept in flat arrays (no per-link maps or
//! per-flow allocations), and the scratch space is reused from round to round.

use topoccl_plan::Plan;
use topoccl_topo::{Endpoints, LinkId, Topology};

use crate::fault::Stragglers;
use crate::round::{opposites, RoundResult, Rounds, RoutedRound};
use crate::{RoundEngine, SimError};

/// Rates and remaining bytes below this share count as done (floating-point dust).
const EPS: f64 = 1e-12;
/// Re-sharing events per round before the rest is shared once more and finished at those
/// rates: bounds the work on rounds with many different flow sizes.
const MAX_EVENTS: usize = 256;
/// No link index yet in this round.
const NONE: u32 = u32::MAX;

/// One flow of a round.
struct Flow {
    left: f64,
    rate: f64,
    /// Links outside the fabric, each used fully: `Round::local[local.0..local.1]`.
    local: (u32, u32),
    /// The fabric crossing's link shares (index into `Round::crossings`).
    crossing: Option<u32>,
    active: bool,
    /// When it finished, from the round's start.
    done: f64,
}

/// A round's timing per rank (see [`FlowSim::timed`]).
pub struct RankTiming {
    /// Per transfer: source, destination, when its last byte left (seconds from the
    /// round's start) and its path latency.
    pub sends: Vec<(u32, u32, f64, f64)>,
    /// Per rank: its reduction and extra-peer overhead in the round.
    pub own: Vec<f64>,
}

/// One round's flows and the links they load, in flat arrays.
#[derive(Default)]
struct Round {
    flows: Vec<Flow>,
    local: Vec<LinkId>,
    /// Per fabric crossing: its (link, share) list, `shares[span.0..span.1]`.
    crossings: Vec<(u32, u32)>,
    shares: Vec<(LinkId, f64)>,
    /// Flows per crossing, `members[member_at[c]..member_at[c + 1]]`.
    member_at: Vec<u32>,
    members: Vec<u32>,
    /// The round's links, densely numbered, and for each the flows that use it whole and
    /// the crossings that put a share of each of their flows on it (so 16k flows through
    /// a few hundred leaf pairs cost a few hundred entries per link, not 16k).
    links: Vec<LinkId>,
    flow_at: Vec<u32>,
    flow_users: Vec<u32>,
    crossing_at: Vec<u32>,
    crossing_users: Vec<(u32, f64)>,
    /// Per link: the dense index of the opposite link of its cable, or `NONE`; empty when
    /// every link of the topology is full duplex.
    opposite: Vec<u32>,
}

/// Simulates plans on one topology (routes cached across rounds and plans).
pub struct FlowSim<'t> {
    rounds: Rounds<'t>,
    /// Per link of the topology: its dense index in the current round, or `NONE`.
    slot: Vec<u32>,
    round: Round,
    /// Per link, the opposite link of its cable ([`opposites`]).
    opposite: Vec<Option<LinkId>>,
}

impl<'t> FlowSim<'t> {
    pub fn new(t: &'t Topology, endpoints: Endpoints, stragglers: Stragglers) -> FlowSim<'t> {
        FlowSim {
            rounds: Rounds::new(t, endpoints, stragglers),
            slot: vec![NONE; t.links().len()],
            round: Round::default(),
            opposite: opposites(t),
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.rounds.topology()
    }

    /// One round of `plan`.
    pub fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        let routed = self.rounds.route(plan, round)?;
        self.run(plan, round, &routed)
    }

    /// One round of `plan` as each rank sees it: when every transfer finishes sending
    /// (from the round's start, all starting together) and each rank's own reduction and
    /// per-peer overhead, for timing ranks that do not wait for one another.
    pub fn timed(&mut self, plan: &Plan, round: u32) -> Result<RankTiming, SimError> {
        let routed = self.rounds.route(plan, round)?;
        self.run(plan, round, &routed)?;
        let mut own = self.rounds.reductions(plan, round);
        let mut peers: Vec<(u32, u32)> = routed.transfers.iter().map(|t| (t.src, t.dst)).collect();
        peers.sort_unstable();
        peers.dedup();
        let overhead = self.rounds.overhead_per_peer();
        let mut last = None;
        for &(src, _) in &peers {
            // Every peer beyond a rank's first costs it the overhead once.
            if last == Some(src) {
                own[src as usize] += overhead;
            }
            last = Some(src);
        }
        Ok(RankTiming {
            sends: routed
                .transfers
                .iter()
                .zip(&self.round.flows)
                .map(|(t, f)| (t.src, t.dst, f.done, t.latency))
                .collect(),
            own,
        })
    }

    fn run(
        &mut self,
        plan: &Plan,
        round: u32,
        routed: &RoutedRound,
    ) -> Result<RoundResult, SimError> {
        self.flows(routed);
        self.index_links();
        let t = self.topology();
        let transfer_s = share(t, &mut self.round);
        let r = &self.round;
        let slot = &self.slot;
        let mut bytes = vec![0.0; r.links.len()];
        routed.loads(&mut |l, b| bytes[slot[l as usize] as usize] += b);
        debug_assert!(
            transfer_s >= 0.0 && transfer_s.is_finite(),
            "round time {transfer_s}"
        );
        let mut bytes: Vec<(LinkId, f64)> = r.links.iter().copied().zip(bytes).collect();
        bytes.sort_by_key(|b| b.0);
        for &l in &r.links {
            self.slot[l as usize] = NONE;
        }
        Ok(RoundResult {
            transfer_s,
            latency_s: routed.path_latency_s + routed.overhead_s,
            reduction_s: self.rounds.reduction(plan, round),
            bytes,
        })
    }

    /// Lays the routed round's transfers and crossings out flat.
    fn flows(&mut self, routed: &RoutedRound) {
        let r = &mut self.round;
        r.flows.clear();
        r.local.clear();
        r.crossings.clear();
        r.shares.clear();
        for c in &routed.crossings {
            let s0 = r.shares.len() as u32;
            r.shares.extend_from_slice(&c.shares);
            r.crossings.push((s0, r.shares.len() as u32));
        }
        for tr in &routed.transfers {
            let start = r.local.len() as u32;
            r.local.extend_from_slice(&tr.local);
            r.flows.push(Flow {
                left: tr.bytes as f64,
                rate: 0.0,
                local: (start, r.local.len() as u32),
                crossing: tr.crossing.map(|c| c as u32),
                active: tr.bytes > 0,
                done: 0.0,
            });
        }
    }

    /// Numbers the round's links and lists their users (counting sort into flat arrays).
    fn index_links(&mut self) {
        let r = &mut self.round;
        let slot = &mut self.slot;
        r.links.clear();
        let mut number = |l: LinkId, links: &mut Vec<LinkId>| -> usize {
            if slot[l as usize] == NONE {
                slot[l as usize] = links.len() as u32;
                links.push(l);
            }
            slot[l as usize] as usize
        };
        // Crossings first learn their members; only crossings with flows load links.
        let mut member_count = vec![0u32; r.crossings.len() + 1];
        for f in &r.flows {
            if let Some(c) = f.crossing {
                member_count[c as usize + 1] += 1;
            }
        }
        prefix(&mut member_count);
        r.member_at = member_count.clone();
        r.members.clear();
        r.members
            .resize(member_count[r.crossings.len()] as usize, 0);
        let mut fill = member_count;
        for (i, f) in r.flows.iter().enumerate() {
            if let Some(c) = f.crossing {
                r.members[fill[c as usize] as usize] = i as u32;
                fill[c as usize] += 1;
            }
        }
        for &l in &r.local {
            number(l, &mut r.links);
        }
        for &(l, _) in &r.shares {
            number(l, &mut r.links);
        }
        let n = r.links.len();
        let mut flow_count = vec![0u32; n + 1];
        for f in &r.flows {
            for &l in &r.local[f.local.0 as usize..f.local.1 as usize] {
                flow_count[slot[l as usize] as usize + 1] += 1;
            }
        }
        let mut crossing_count = vec![0u32; n + 1];
        let used = |c: usize| r.member_at[c + 1] > r.member_at[c];
        for (c, &(s0, s1)) in r.crossings.iter().enumerate() {
            if used(c) {
                for &(l, _) in &r.shares[s0 as usize..s1 as usize] {
                    crossing_count[slot[l as usize] as usize + 1] += 1;
                }
            }
        }
        prefix(&mut flow_count);
        prefix(&mut crossing_count);
        r.flow_users.clear();
        r.flow_users.resize(flow_count[n] as usize, 0);
        r.crossing_users.clear();
        r.crossing_users
            .resize(crossing_count[n] as usize, (0, 0.0));
        let mut fill = flow_count.clone();
        for (i, f) in r.flows.iter().enumerate() {
            for &l in &r.local[f.local.0 as usize..f.local.1 as usize] {
                let k = slot[l as usize] as usize;
                r.flow_users[fill[k] as usize] = i as u32;
                fill[k] += 1;
            }
        }
        let mut fill_c = crossing_count.clone();
        for (c, &(s0, s1)) in r.crossings.iter().enumerate() {
            if used(c) {
                for &(l, w) in &r.shares[s0 as usize..s1 as usize] {
                    let k = slot[l as usize] as usize;
                    r.crossing_users[fill_c[k] as usize] = (c as u32, w);
                    fill_c[k] += 1;
                }
            }
        }
        r.flow_at = flow_count;
        r.crossing_at = crossing_count;
        r.opposite.clear();
        if !self.opposite.is_empty() {
            let opposite = &self.opposite;
            r.opposite.extend(
                r.links
                    .iter()
                    .map(|&l| opposite[l as usize].map_or(NONE, |o| slot[o as usize])),
            );
        }
    }
}

impl RoundEngine for FlowSim<'_> {
    fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError> {
        FlowSim::round(self, plan, round)
    }
}

/// Turns counts at `[k + 1]` into start offsets at `[k]` (and the total at the end).
fn prefix(v: &mut [u32]) {
    for k in 1..v.len() {
        v[k] += v[k - 1];
    }
}

/// Runs the round's flows to completion under max-min fair sharing; returns the time.
fn share(t: &Topology, r: &mut Round) -> f64 {
    let mut elapsed = 0.0;
    for event in 0.. {
        if !r.flows.iter().any(|f| f.active) {
            break;
        }
        allocate(t, r);
        // A flow that crosses no link at all (same node) finishes at once.
        for f in r.flows.iter_mut().filter(|f| f.active && f.rate <= EPS) {
            if f.local.0 == f.local.1 && f.crossing.is_none() {
                f.active = false;
                f.done = elapsed;
            }
        }
        let running = || r.flows.iter().filter(|f| f.active && f.rate > EPS);
        let next = running()
            .map(|f| f.left / f.rate)
            .fold(f64::INFINITY, f64::min);
        if !next.is_finite() {
            break;
        }
        // After many events, finish everything at the current rates.
        let step = if event >= MAX_EVENTS {
            running().map(|f| f.left / f.rate).fold(0.0, f64::max)
        } else {
            next
        };
        debug_assert!(step >= 0.0, "the round's clock went back by {step}");
        elapsed += step;
        for f in r.flows.iter_mut().filter(|f| f.active) {
            f.left -= f.rate * step;
            // Bytes are conserved: no flow sends more than it had (to rounding).
            debug_assert!(
                f.left >= -1e-9 * (1.0 + f.rate * step),
                "a flow sent {} bytes more than it had",
                -f.left
            );
            if f.left <= EPS * (1.0 + f.rate * step) {
                f.active = false;
                f.done = elapsed;
            }
        }
    }
    // Every flow crosses a link of positive bandwidth, so every one finishes.
    debug_assert!(
        r.flows.iter().all(|f| !f.active && f.done <= elapsed),
        "a flow of the round never finished"
    );
    elapsed
}

/// Who loads each link of a round: flows whole, crossings by a share of each member.
struct Users<'a> {
    flow_at: &'a [u32],
    flow_users: &'a [u32],
    crossing_at: &'a [u32],
    crossing_users: &'a [(u32, f64)],
}

impl Users<'_> {
    /// Each link's count of unfrozen flows, crossing members weighted by their shares: how
    /// fast its load grows as the common level rises.
    fn demands(&self, frozen: &[bool], open: &[f64], demand: &mut [f64]) {
        for (k, d) in demand.iter_mut().enumerate() {
            let whole = self.flow_users[self.flow_at[k] as usize..self.flow_at[k + 1] as usize]
                .iter()
                .filter(|&&i| !frozen[i as usize])
                .count() as f64;
            let shares: f64 = self.crossing_users
                [self.crossing_at[k] as usize..self.crossing_at[k + 1] as usize]
                .iter()
                .map(|&(c, w)| w * open[c as usize])
                .sum();
            *d = whole + shares;
        }
    }
}

/// Max-min fair rates for the active flows (progressive filling): every unfrozen flow
/// grows alike until a link fills; its flows freeze at the level reached.
fn allocate(t: &Topology, r: &mut Round) {
    let mut frozen: Vec<bool> = r.flows.iter().map(|f| !f.active).collect();
    let mut open: Vec<f64> = (0..r.crossings.len())
        .map(|c| {
            r.members[r.member_at[c] as usize..r.member_at[c + 1] as usize]
                .iter()
                .filter(|&&i| !frozen[i as usize])
                .count() as f64
        })
        .collect();
    let mut room: Vec<f64> = r.links.iter().map(|&l| t.link(l).bandwidth).collect();
    let mut demand = vec![0.0; r.links.len()];
    let users = Users {
        flow_at: &r.flow_at,
        flow_users: &r.flow_users,
        crossing_at: &r.crossing_at,
        crossing_users: &r.crossing_users,
    };
    users.demands(&frozen, &open, &mut demand);
    // A link whose cable carries data the other way too keeps its duplex fraction.
    for (k, &o) in r.opposite.iter().enumerate() {
        if o != NONE && demand[o as usize] > EPS {
            room[k] *= t.link(r.links[k]).duplex;
        }
    }
    #[cfg(debug_assertions)]
    let capacity = room.clone();
    let mut level = 0.0;
    let mut left = frozen.iter().filter(|&&f| !f).count();
    for f in r.flows.iter_mut() {
        f.rate = 0.0;
    }
    let flows = &mut r.flows;
    let mut freeze = |i: u32, frozen: &mut Vec<bool>, open: &mut Vec<f64>, level: f64| {
        let i = i as usize;
        if frozen[i] {
            return false;
        }
        frozen[i] = true;
        flows[i].rate = level;
        if let Some(c) = flows[i].crossing {
            open[c as usize] -= 1.0;
        }
        true
    };
    while left > 0 {
        let step = demand
            .iter()
            .zip(&room)
            .filter(|(d, _)| **d > EPS)
            .map(|(d, room)| room / d)
            .fold(f64::INFINITY, f64::min);
        if !step.is_finite() {
            break;
        }
        level += step;
        let mut saturated = Vec::new();
        for (k, &l) in r.links.iter().enumerate() {
            room[k] -= step * demand[k];
            if demand[k] > EPS && room[k] <= EPS * t.link(l).bandwidth.max(1.0) {
                saturated.push(k);
            }
        }
        for k in saturated {
            for &i in &r.flow_users[r.flow_at[k] as usize..r.flow_at[k + 1] as usize] {
                if freeze(i, &mut frozen, &mut open, level) {
                    left -= 1;
                }
            }
            for &(c, _) in
                &r.crossing_users[r.crossing_at[k] as usize..r.crossing_at[k + 1] as usize]
            {
                let c = c as usize;
                // Saturated links share crossings: freeze each crossing's flows once.
                if open[c] < 0.5 {
                    continue;
                }
                for &i in &r.members[r.member_at[c] as usize..r.member_at[c + 1] as usize] {
                    if freeze(i, &mut frozen, &mut open, level) {
                        left -= 1;
                    }
                }
            }
        }
        if left > 0 {
            users.demands(&frozen, &open, &mut demand);
        }
    }
    // Flows no link limits (none here: every flow crosses a link) keep the last level.
    for (i, f) in flows.iter_mut().enumerate() {
        if !frozen[i] {
            f.rate = level;
        }
    }
    #[cfg(debug_assertions)]
    within_capacity(r, &capacity);
}

/// The allocation's invariant: rates are non-negative and no link carries more than its
/// capacity (its duplex share where the cable is busy both ways), to rounding.
#[cfg(debug_assertions)]
fn within_capacity(r: &Round, capacity: &[f64]) {
    debug_assert!(r.flows.iter().all(|f| f.rate >= 0.0), "a negative rate");
    let crossing_rate: Vec<f64> = (0..r.crossings.len())
        .map(|c| {
            r.members[r.member_at[c] as usize..r.member_at[c + 1] as usize]
                .iter()
                .map(|&i| r.flows[i as usize].rate)
                .sum()
        })
        .collect();
    for (k, &cap) in capacity.iter().enumerate() {
        let whole: f64 = r.flow_users[r.flow_at[k] as usize..r.flow_at[k + 1] as usize]
            .iter()
            .map(|&i| r.flows[i as usize].rate)
            .sum();
        let shared: f64 = r.crossing_users
            [r.crossing_at[k] as usize..r.crossing_at[k + 1] as usize]
            .iter()
            .map(|&(c, w)| w * crossing_rate[c as usize])
            .sum();
        let load = whole + shared;
        debug_assert!(
            load <= cap * (1.0 + 1e-9) + EPS,
            "link {} carries {load} B/s, above its {cap} B/s",
            r.links[k]
        );
    }
}
