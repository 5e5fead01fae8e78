//! Pipelining between rounds: each rank starts a round when its own part of the previous
//! one is done, instead of every rank waiting for the slowest (the barrier that the α-β
//! model and [`crate::simulate`] assume).
//!
//! A rank is done with a round when its sends have left, the data sent to it has
//! arrived (a path latency after leaving) and it has reduced what it received. A sender
//! does not wait for its bytes to arrive, so a pipelined chain or tree pays the path
//! latency once per hop of its depth rather than once per round, as the runtime does when
//! it posts the next chunk while the last is in flight. Symmetric plans (rings, rhd) keep
//! every rank in step and take exactly the barrier time.
//!
//! Transfer times are the flow level's, with a round's transfers sharing links as if
//! they started together; ranks that start early or late shift their transfers, they do
//! not re-share bandwidth. Rounds of one class are simulated once, and from a state where
//! every rank is in step, a round that keeps them in step is a single addition — so a
//! 131,072-rank ring costs what its few round classes cost.
//!
//! [`crate::machines`] times the same plans by the runtime's state machines, one per rank
//! on virtual time; on small worlds the two agree (see its notes and the tests).

use rustc_hash::FxHashMap as HashMap;
use topoccl_plan::Plan;
use topoccl_topo::{Endpoints, Topology};

use crate::fault::{self, Fault};

/// Rank-rounds a run may time one rank at a time (rounds × ranks, for plans whose ranks
/// fall out of step): about a minute on one core. A 131,072-rank ring's 262,142 rounds
/// are far past it; its barrier time is what the flow level gives.
pub const MAX_RANK_ROUNDS: u64 = 4_000_000_000;
use crate::flow::{FlowSim, RankTiming};
use crate::SimError;

/// Where every rank stands: all at one time, or each at its own.
enum Clock {
    InStep(f64),
    Ranks(Vec<f64>),
}

/// A round class's timing, and the time it advances ranks that start it in step, when
/// they also finish it in step.
struct ClassTiming {
    timing: RankTiming,
    in_step: Option<Option<f64>>,
}

/// The completion time of `plan` on `t` after `faults` with pipelining between rounds.
pub fn pipelined(
    plan: &Plan,
    t: &Topology,
    faults: &[Fault],
    endpoints: Endpoints,
) -> Result<f64, SimError> {
    crate::check_world(plan, t)?;
    let p = plan.world() as usize;
    let work = plan.rounds() as u64 * p as u64;
    if work > MAX_RANK_ROUNDS {
        return Err(SimError::Invalid(format!(
            "pipelined timing of {} rounds × {p} ranks ({work} rank-rounds) is past the bound \
             of {MAX_RANK_ROUNDS}; time this plan with rounds as barriers (drop --pipelined) \
             or simulate a smaller cluster",
            plan.rounds()
        )));
    }
    let (faulty, stragglers) = fault::apply(t, faults)?;
    let mut clock = if stragglers.late.iter().all(|&l| l == 0.0) {
        Clock::InStep(0.0)
    } else {
        let mut start = stragglers.late.clone();
        start.resize(p, 0.0);
        Clock::Ranks(start)
    };
    let mut sim = FlowSim::new(&faulty, endpoints, stragglers);
    let mut classes: HashMap<u64, ClassTiming> = HashMap::default();
    let mut scratch = Scratch::default();
    for round in 0..plan.rounds() {
        let class = plan.round_class(round);
        let c = match classes.entry(class) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(ClassTiming {
                timing: sim.timed(plan, round)?,
                in_step: None,
            }),
        };
        clock = match clock {
            Clock::InStep(at) => {
                let step = *c.in_step.get_or_insert_with(|| {
                    let mut zero = vec![0.0; p];
                    advance(&mut zero, &c.timing, &mut scratch);
                    in_step(&zero)
                });
                match step {
                    Some(d) => {
                        debug_assert!(d >= 0.0, "an in-step round of {d} s");
                        Clock::InStep(at + d)
                    }
                    None => {
                        let mut ready = vec![at; p];
                        advance(&mut ready, &c.timing, &mut scratch);
                        Clock::Ranks(ready)
                    }
                }
            }
            Clock::Ranks(mut ready) => {
                advance(&mut ready, &c.timing, &mut scratch);
                Clock::Ranks(ready)
            }
        };
    }
    Ok(match clock {
        Clock::InStep(at) => at,
        Clock::Ranks(ready) => ready.into_iter().fold(0.0, f64::max),
    })
}

/// Buffers reused from round to round.
#[derive(Default)]
struct Scratch {
    next: Vec<f64>,
    busy: Vec<bool>,
}

/// Every rank's time after one round, from their times before it (in place).
fn advance(ready: &mut [f64], timing: &RankTiming, scratch: &mut Scratch) {
    let Scratch { next, busy } = scratch;
    next.clear();
    next.extend_from_slice(ready);
    busy.clear();
    busy.resize(ready.len(), false);
    for &(src, dst, done, latency) in &timing.sends {
        debug_assert!(
            done >= 0.0 && latency >= 0.0,
            "transfer time {done}, latency {latency}"
        );
        let left = ready[src as usize] + done;
        let (s, d) = (src as usize, dst as usize);
        next[s] = next[s].max(left);
        next[d] = next[d].max(left + latency);
        busy[s] = true;
        busy[d] = true;
    }
    for (r, own) in timing.own.iter().enumerate() {
        debug_assert!(*own >= 0.0, "rank {r}'s own time {own}");
        if busy[r] || *own > 0.0 {
            next[r] += own;
        }
    }
    // Clocks only move forward.
    debug_assert!(
        ready.iter().zip(next.iter()).all(|(a, b)| b >= a),
        "a rank's clock went back"
    );
    ready.copy_from_slice(next);
}

/// The common time if every rank is at the same one (to floating-point dust).
fn in_step(times: &[f64]) -> Option<f64> {
    let first = *times.first()?;
    let tolerance = 1e-12 * first.abs().max(1e-9);
    times
        .iter()
        .all(|&t| (t - first).abs() <= tolerance)
        .then_some(first)
}
