//! topoccl's simulator: the plans the runtime runs, executed over a topology of any size.
//! Pure and deterministic: no I/O, no clock; faults are data and seeds are passed in.
//!
//! Both engines walk a plan round by round, routing each round's transfers; rounds of one
//! class are simulated once. The flow level ([`flow`]) shares link bandwidth max-min
//! fairly among a round's transfers; the chunk level ([`chunk`]) cuts them into chunks
//! that queue on every link (store and forward), its check on small and medium runs.
//! Faults ([`fault`]) change the topology (a link down, degraded or slower) or a rank
//! (late start, slow reduction) before the run.

#![forbid(unsafe_code)]

pub mod chunk;
pub mod failures;
pub mod fault;
pub mod flow;
pub mod hw;
pub mod innet;
pub mod machines;
pub mod nccl;
pub mod pipeline;
mod round;
pub mod traffic;

use std::fmt;

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use topoccl_plan::Plan;
use topoccl_topo::{lower_bound, Endpoints, NodeKind, Tier, TopoError, Topology};

pub use chunk::{ChunkParams, ChunkSim};
pub use fault::{Fault, LinkRef, Stragglers};
pub use flow::FlowSim;
pub use round::RoundResult;

#[derive(Debug, Error)]
pub enum SimError {
    #[error("{0}")]
    Fault(String),
    #[error("{0}")]
    Topology(#[from] TopoError),
    #[error("{0}")]
    Invalid(String),
}

/// Consecutive rounds with the same time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRun {
    pub first: u32,
    pub rounds: u32,
    /// Seconds per round.
    pub each_s: f64,
    pub transfer_s: f64,
    pub latency_s: f64,
    pub reduction_s: f64,
}

/// A link's share of the work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkLoad {
    pub link: String,
    pub bytes: f64,
    /// Time the link was busy at full rate over the collective's time.
    pub utilisation: f64,
}

/// What a simulation found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    pub topology: String,
    pub ranks: u32,
    pub collective: String,
    pub algorithm: String,
    /// The engine that ran ([`Engine`]'s description).
    #[serde(default)]
    pub level: String,
    pub bytes: u64,
    pub total_s: f64,
    pub transfer_s: f64,
    pub latency_s: f64,
    pub reduction_s: f64,
    /// With pipelining between rounds (each rank starts a round when its own part of the
    /// previous one is done; [`pipeline`]), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipelined_s: Option<f64>,
    /// The latest start of a straggling rank, added in front.
    pub start_delay_s: f64,
    pub busbw_gbps: f64,
    pub lower_bound_s: f64,
    pub gap: f64,
    pub rounds: Vec<RoundRun>,
    /// The busiest links, most utilised first.
    pub hottest: Vec<LinkLoad>,
    pub faults: Vec<String>,
}

/// Links listed in a report.
pub const HOTTEST: usize = 10;

/// How bytes move in a run; everything else (routes, terms, classes, the report) is common.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engine {
    /// Max-min fair sharing of every link among a round's transfers ([`flow`]).
    Flow,
    /// Store-and-forward chunks through FIFO links ([`chunk`]).
    Chunk(ChunkParams),
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Flow => write!(f, "flow level"),
            Engine::Chunk(p) => write!(f, "chunk level, {}", chunk::describe_chunks(p.chunk_bytes)),
        }
    }
}

/// One round's simulation: the part the engines differ in.
pub(crate) trait RoundEngine {
    fn round(&mut self, plan: &Plan, round: u32) -> Result<RoundResult, SimError>;
}

/// Simulates `plan` on `t` after `faults`, at the flow level.
pub fn simulate(
    plan: &Plan,
    t: &Topology,
    faults: &[Fault],
    endpoints: Endpoints,
) -> Result<SimReport, SimError> {
    simulate_with(plan, t, faults, endpoints, Engine::Flow)
}

/// Simulates `plan` on `t` after `faults`, at the chunk level; refused above
/// `params.max_events` chunk events.
pub fn simulate_chunks(
    plan: &Plan,
    t: &Topology,
    faults: &[Fault],
    endpoints: Endpoints,
    params: ChunkParams,
) -> Result<SimReport, SimError> {
    simulate_with(plan, t, faults, endpoints, Engine::Chunk(params))
}

/// Simulates `plan` on `t` after `faults` with `engine`.
pub fn simulate_with(
    plan: &Plan,
    t: &Topology,
    faults: &[Fault],
    endpoints: Endpoints,
    engine: Engine,
) -> Result<SimReport, SimError> {
    check_world(plan, t)?;
    let (faulty, stragglers) = fault::apply(t, faults)?;
    let start_delay = stragglers.late.iter().copied().fold(0.0, f64::max);
    let mut sim: Box<dyn RoundEngine + '_> = match engine {
        Engine::Flow => Box::new(FlowSim::new(&faulty, endpoints, stragglers)),
        Engine::Chunk(params) => {
            let mut sim = ChunkSim::new(&faulty, endpoints, stragglers, params);
            sim.check(plan)?;
            Box::new(sim)
        }
    };
    let mut by_class: HashMap<u64, (RoundResult, u32)> = HashMap::default();
    let mut runs: Vec<RoundRun> = Vec::new();
    let (mut transfer, mut latency, mut reduction) = (0.0, 0.0, 0.0);
    for round in 0..plan.rounds() {
        let class = plan.round_class(round);
        let entry = match by_class.entry(class) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert((sim.round(plan, round)?, 0)),
        };
        entry.1 += 1;
        let r = &entry.0;
        transfer += r.transfer_s;
        latency += r.latency_s;
        reduction += r.reduction_s;
        match runs.last_mut() {
            Some(last) if last.each_s == r.total() && last.first + last.rounds == round => {
                last.rounds += 1
            }
            _ => runs.push(RoundRun {
                first: round,
                rounds: 1,
                each_s: r.total(),
                transfer_s: r.transfer_s,
                latency_s: r.latency_s,
                reduction_s: r.reduction_s,
            }),
        }
    }
    let total = start_delay + transfer + latency + reduction;
    debug_assert!(
        [start_delay, transfer, latency, reduction]
            .iter()
            .all(|x| *x >= 0.0 && x.is_finite()),
        "a negative or infinite term: delay {start_delay}, transfer {transfer}, latency \
         {latency}, reduction {reduction}"
    );
    let mut per_link = vec![0.0; faulty.links().len()];
    for (r, count) in by_class.values() {
        for &(l, b) in &r.bytes {
            debug_assert!(b >= 0.0, "link {l} carried {b} B");
            per_link[l as usize] += b * *count as f64;
        }
    }
    let busy = |l: u32, bytes: f64| {
        if total > 0.0 {
            bytes / faulty.link(l).bandwidth / total
        } else {
            0.0
        }
    };
    // A large run touches a million links: rank them by number, name only the few shown.
    let mut ranked: Vec<(u32, f64)> = (0..)
        .zip(per_link)
        .filter(|&(_, bytes)| bytes > 0.0)
        .collect();
    let order = |a: &(u32, f64), b: &(u32, f64)| {
        busy(b.0, b.1)
            .total_cmp(&busy(a.0, a.1))
            .then(a.0.cmp(&b.0))
    };
    if ranked.len() > HOTTEST {
        ranked.select_nth_unstable_by(HOTTEST, order);
        ranked.truncate(HOTTEST);
    }
    ranked.sort_by(order);
    let hottest: Vec<LinkLoad> = ranked
        .into_iter()
        .take(HOTTEST)
        .map(|(l, bytes)| LinkLoad {
            link: faulty.link_name(l),
            bytes,
            utilisation: busy(l, bytes),
        })
        .collect();
    let spec = plan.spec();
    let bytes = spec.size_bytes();
    let bound = match spec.counts {
        Some(_) => traffic::lower_bound(&faulty, spec),
        None => lower_bound(&faulty, spec.collective, bytes as f64),
    };
    Ok(SimReport {
        topology: t.name().to_string(),
        ranks: plan.world(),
        collective: spec.collective.to_string(),
        algorithm: plan.algorithm().name().to_string(),
        level: engine.to_string(),
        bytes,
        total_s: total,
        transfer_s: transfer,
        latency_s: latency,
        reduction_s: reduction,
        start_delay_s: start_delay,
        pipelined_s: None,
        busbw_gbps: spec.bandwidth(total).busbw_gbps,
        lower_bound_s: bound,
        gap: if bound > 0.0 { total / bound } else { 1.0 },
        rounds: runs,
        hottest,
        faults: faults.iter().map(|f| f.to_string()).collect(),
    })
}

/// The report as a Chrome trace (the trace-event JSON that chrome://tracing and Perfetto
/// open): a late start, then one slice per run of equal rounds with its terms as
/// arguments, and the time split of one round of each run on a second track.
pub fn chrome_trace(r: &SimReport) -> serde_json::Value {
    let us = |s: f64| s * 1e6;
    let mut events = vec![serde_json::json!({
        "name": "process_name", "ph": "M", "pid": 1,
        "args": {"name": format!("{} {} on {} ({} ranks, {})", r.collective, r.algorithm, r.topology, r.ranks, r.level)}
    })];
    let mut t = 0.0;
    if r.start_delay_s > 0.0 {
        events.push(serde_json::json!({
            "name": "late start", "ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": us(r.start_delay_s)
        }));
        t += r.start_delay_s;
    }
    for run in &r.rounds {
        let last = run.first + run.rounds - 1;
        events.push(serde_json::json!({
            "name": if run.rounds == 1 { format!("round {}", run.first) } else { format!("rounds {}–{last}", run.first) },
            "ph": "X", "pid": 1, "tid": 1, "ts": us(t), "dur": us(run.each_s * run.rounds as f64),
            "args": {"rounds": run.rounds, "each_us": us(run.each_s), "transfer_us": us(run.transfer_s),
                     "latency_us": us(run.latency_s), "reduction_us": us(run.reduction_s)}
        }));
        let mut at = t;
        for (name, d) in [
            ("transfer", run.transfer_s),
            ("latency", run.latency_s),
            ("reduction", run.reduction_s),
        ] {
            if d > 0.0 {
                events.push(serde_json::json!({
                    "name": name, "ph": "X", "pid": 1, "tid": 2, "ts": us(at), "dur": us(d)
                }));
                at += d;
            }
        }
        t += run.each_s * run.rounds as f64;
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ns"})
}

/// A rough upper estimate of the memory a flow-level run of a plan of `world` ranks on `t`
/// takes (it depends on the plan only through its world, so it can be checked before any
/// plan is built or chosen), fitted
/// to peak resident sizes measured on generated fat-trees (16,384 and 131,072 ranks; see
/// docs/benchmarks.md): the topology, one column of fabric distances per leaf switch, and
/// per rank its ways out of and into its host plus a cached route per partner (about
/// log2 p + 2 partners for the plans here) and its share of a round's flat arrays.
pub fn estimate_memory(world: u32, t: &Topology) -> u64 {
    let is_fabric = |n: &topoccl_topo::Node| n.host.is_none() && n.kind != NodeKind::Host;
    let fabric = t.nodes().iter().filter(|n| is_fabric(n)).count() as u64;
    let leaves = t
        .nodes()
        .iter()
        .filter(|n| is_fabric(n) && n.tier == Some(Tier::Leaf))
        .count()
        .max(1) as u64;
    let p = world as u64;
    let partners = 64 - p.leading_zeros() as u64 + 2;
    let topology = t.nodes().len() as u64 * 300 + t.links().len() as u64 * 100;
    topology + leaves.min(fabric) * fabric * 16 + p * 768 * partners
}

/// Refuses a plan made for another number of ranks than `t` places.
pub(crate) fn check_world(plan: &Plan, t: &Topology) -> Result<(), SimError> {
    Ok(topoccl_topo::cost::check_world(plan, t)?)
}

/// Refuses a run of `world` ranks whose estimate is above `cap` bytes, saying by how much
/// and what to do.
pub fn check_memory(world: u32, t: &Topology, cap: u64) -> Result<(), SimError> {
    let need = estimate_memory(world, t);
    if need > cap {
        return Err(SimError::Invalid(format!(
            "simulating {} ranks on '{}' needs about {:.1} MiB, above the cap of {:.1} MiB; \
             raise --memory-cap or simulate a smaller cluster",
            world,
            t.name(),
            need as f64 / 1048576.0,
            cap as f64 / 1048576.0
        )));
    }
    Ok(())
}
