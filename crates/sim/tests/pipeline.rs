//! Pipelining between rounds: symmetric plans keep the barrier time; a pipelined chain
//! pays the path latency once per hop instead of once per round.

mod common;

use common::{ep, plan, switch};
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};
use topoccl_sim::pipeline::pipelined;
use topoccl_sim::{simulate, Fault};

#[test]
fn symmetric_plans_take_the_barrier_time() {
    let t = switch(8, 5e-6, 12.5e9);
    for alg in ["ring", "rhd", "rd"] {
        let p = plan(alg, 8, 1 << 20);
        let barrier = simulate(&p, &t, &[], ep(1e-10)).unwrap().total_s;
        let piped = pipelined(&p, &t, &[], ep(1e-10)).unwrap();
        assert!(
            (piped - barrier).abs() <= 1e-9 * barrier,
            "{alg}: pipelined {piped} barrier {barrier}"
        );
    }
}

#[test]
fn a_chunked_chain_pays_latency_per_hop_not_per_round() {
    let (p, k, alpha, bw) = (8u32, 16u32, 20e-6, 12.5e9);
    let t = switch(p, alpha, bw);
    let bytes = 4u64 << 20;
    let spec = CollectiveSpec::new(Collective::Broadcast, p, bytes / 4);
    let chain = build(spec, Algorithm::Ring, PlanParams::default().with_chunks(k)).unwrap();
    let barrier = simulate(&chain, &t, &[], ep(0.0)).unwrap().total_s;
    let piped = pipelined(&chain, &t, &[], ep(0.0)).unwrap();
    let step = bytes as f64 / k as f64 / bw;
    // Rounds as barriers: every one of the p − 1 + k − 1 rounds pays α and a chunk.
    let rounds = (p - 1 + k - 1) as f64;
    assert!(
        (barrier / (rounds * (alpha + step)) - 1.0).abs() < 0.01,
        "{barrier}"
    );
    // Pipelined: the root streams its k chunks back to back; the last one then crosses
    // p − 1 hops, each a chunk time and α.
    let ideal = (k - 1) as f64 * step + (p - 1) as f64 * (alpha + step);
    assert!(
        (piped / ideal - 1.0).abs() < 0.01,
        "pipelined {piped} ideal {ideal}"
    );
    assert!(piped < barrier);
}

#[test]
fn a_late_rank_delays_only_what_depends_on_it() {
    let t = switch(8, 5e-6, 12.5e9);
    let p = plan("ring", 8, 1 << 20);
    let healthy = pipelined(&p, &t, &[], ep(0.0)).unwrap();
    let late = Fault::parse("rank:3:delay=1ms").unwrap();
    let with = pipelined(&p, &t, &[late], ep(0.0)).unwrap();
    // A ring waits for every rank each step, so the delay reaches the end whole.
    assert!((with - healthy - 1e-3).abs() < 1e-9, "{with} vs {healthy}");
}
