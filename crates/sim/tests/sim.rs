//! The flow-level simulator against the α-β formulas, max-min sharing, and faults.

mod common;

use common::{ep, plan, switch, two_spines};
use topoccl_plan::cost::{uniform_cost, UniformNetwork};
use topoccl_sim::{simulate, Fault};

#[test]
fn uniform_network_matches_alpha_beta_within_1_percent() {
    let (alpha, bw, gamma) = (5e-6, 12.5e9, 1e-10);
    for p in [2u32, 3, 5, 8, 16] {
        let t = switch(p, alpha, bw);
        for alg in ["ring", "rhd", "tree", "rd"] {
            let plan = plan(alg, p, 1 << 20);
            let sim = simulate(&plan, &t, &[], ep(gamma)).unwrap();
            let ab = uniform_cost(&plan, &UniformNetwork::new(alpha, bw, gamma));
            let rel = (sim.total_s - ab.total_s).abs() / ab.total_s;
            assert!(
                rel < 0.01,
                "p={p} {alg}: sim {} vs α-β {}",
                sim.total_s,
                ab.total_s
            );
        }
    }
}

#[test]
fn flows_share_a_link_fairly() {
    // Two flows cross from leaf 0 to leaf 1 in every step; ECMP halves each over the two
    // spines, so every leaf uplink carries one flow's worth and nothing waits.
    let t = two_spines();
    let plan = plan("ring", 4, 1 << 20);
    let sim = simulate(&plan, &t, &[], ep(0.0)).unwrap();
    let n = (1u64 << 20) as f64 * 4.0;
    // Each step moves n/4 over 10 GB/s host links: 6 steps.
    let expect = 6.0 * (n / 4.0 / 10e9);
    assert!(
        (sim.transfer_s - expect).abs() / expect < 1e-6,
        "{}",
        sim.transfer_s
    );
    // One spine cut off from leaf 0: the uplink left carries both crossings, each at half.
    let down = simulate(
        &plan,
        &t,
        &[Fault::parse("link:leaf0-spine0:down").unwrap()],
        ep(0.0),
    )
    .unwrap();
    assert!(
        (down.transfer_s - 2.0 * expect).abs() / expect < 1e-6,
        "{}",
        down.transfer_s
    );
    assert!(
        down.hottest[0].link.contains("spine1"),
        "{:?}",
        down.hottest[0]
    );
}

#[test]
fn faults_slow_things_down_and_unroutable_ones_are_named() {
    let t = switch(4, 2e-6, 10e9);
    let plan = plan("ring", 4, 1 << 20);
    let base = simulate(&plan, &t, &[], ep(1e-10)).unwrap();
    let f = |s: &str| simulate(&plan, &t, &[Fault::parse(s).unwrap()], ep(1e-10)).unwrap();
    assert!(f("link:h1->sw:degrade=0.1").total_s > 5.0 * base.transfer_s);
    let lat = f("link:h1-sw:latency=50us");
    assert!(
        (lat.latency_s - base.latency_s - 6.0 * 50e-6).abs() < 1e-9,
        "{}",
        lat.latency_s
    );
    assert!((f("rank:2:delay=2ms").total_s - base.total_s - 2e-3).abs() < 1e-9);
    assert!(f("rank:3:reduce=0.5").reduction_s > 1.9 * base.reduction_s);
    let e = simulate(
        &plan,
        &t,
        &[Fault::parse("link:h1-sw:down").unwrap()],
        ep(0.0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("h1 -> sw") && e.contains("disconnected"), "{e}");
    let e = simulate(
        &plan,
        &t,
        &[Fault::parse("link:h1-nowhere:down").unwrap()],
        ep(0.0),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no node 'nowhere'"), "{e}");
}

#[test]
fn bad_fault_specs_are_explained() {
    for (s, want) in [
        ("link:3", "no effect"),
        ("link:1:degrade=2", "(0, 1]"),
        ("link:1:melt", "unknown link effect"),
        ("rank:x:delay=1ms", "rank must be a number"),
        ("disk:1:down", "neither link nor rank"),
        ("link:1:latency=soon", "link:ID:down"),
    ] {
        let e = Fault::parse(s).unwrap_err().to_string();
        assert!(e.contains(want), "{s}: {e}");
    }
}
