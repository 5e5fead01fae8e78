//! Cables that lose bandwidth to traffic the other way (`Link::duplex` < 1), at both
//! levels.

mod common;

use common::{ep, plan, switch};
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};
use topoccl_sim::{simulate, simulate_chunks, ChunkParams, SimReport};
use topoccl_topo::Topology;

/// `t` with every link at `duplex`.
fn half(t: &Topology, duplex: f64) -> Topology {
    let mut b = t.to_builder();
    for l in 0..t.links().len() as u32 {
        b.set_duplex(l, duplex).unwrap();
    }
    b.build().unwrap()
}

fn both(plan: &topoccl_plan::Plan, t: &Topology) -> (SimReport, SimReport) {
    (
        simulate(plan, t, &[], ep(0.0)).unwrap(),
        simulate_chunks(plan, t, &[], ep(0.0), ChunkParams::default()).unwrap(),
    )
}

#[test]
fn traffic_both_ways_runs_at_the_duplex_share() {
    // Two ranks' ring all-reduce sends the same bytes each way in every round.
    let full = switch(2, 0.0, 1e9);
    let plan = plan("ring", 2, 1 << 22);
    let (flow_full, chunk_full) = both(&plan, &full);
    let (flow, chunk) = both(&plan, &half(&full, 0.8));
    let expect = flow_full.transfer_s / 0.8;
    assert!(
        (flow.transfer_s - expect).abs() / expect < 1e-9,
        "flow {} vs {expect}",
        flow.transfer_s
    );
    let expect = chunk_full.transfer_s / 0.8;
    assert!(
        (chunk.transfer_s - expect).abs() / expect < 0.02,
        "chunk {} vs {expect}",
        chunk.transfer_s
    );
}

#[test]
fn traffic_one_way_keeps_the_whole_link() {
    let full = switch(2, 1e-6, 1e9);
    let spec = CollectiveSpec::new(Collective::Broadcast, 2, 1 << 22);
    let plan = build(spec, Algorithm::Binomial, PlanParams::default()).unwrap();
    let (flow_full, chunk_full) = both(&plan, &full);
    let (flow, chunk) = both(&plan, &half(&full, 0.5));
    assert_eq!(flow.total_s, flow_full.total_s);
    assert_eq!(chunk.total_s, chunk_full.total_s);
}

#[test]
fn a_duplex_share_outside_0_to_1_is_refused() {
    let t = switch(2, 0.0, 1e9);
    let mut b = t.to_builder();
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let e = b.set_duplex(0, bad).unwrap_err().to_string();
        assert!(e.contains("h0 -> sw") && e.contains("at most 1"), "{e}");
    }
}
