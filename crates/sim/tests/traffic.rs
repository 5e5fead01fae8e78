//! Traffic beyond one plan's shape: uneven all-to-all-v matrices and in-network reduction.

use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, DType, PlanParams};
use topoccl_sim::{innet, simulate, traffic, Fault};
use topoccl_topo::gen::{generate, Fabric};
use topoccl_topo::{Endpoints, NodeKind, Tier, Topology, TopologyBuilder};

fn fabric(json: &str) -> Topology {
    let f: Fabric = serde_json::from_str(json).unwrap();
    generate(&f).unwrap().build().unwrap()
}

/// 8 one-GPU hosts on a 2-tier fat-tree (4 leaves, 2 spines) of 100 Gbps links; PCIe is
/// made fast so that the network links are the bottleneck. `reduce` marks every fabric
/// switch as reducing.
fn fat_tree(reduce: bool) -> Topology {
    fabric(&format!(
        r#"{{"kind": "fat-tree", "hosts": 8, "radix": 4, "bandwidth": "100Gbps",
            "in_network_reduction": {reduce},
            "host": {{"gpus_per_host": 1, "pcie_bandwidth": "1000GB/s"}}}}"#
    ))
}

const LINK: f64 = 12.5e9;

fn ep() -> Endpoints {
    Endpoints {
        overhead_s: 0.0,
        gamma_s_per_byte: 1.0 / 200e9,
    }
}

fn spec(c: Collective, bytes: u64) -> CollectiveSpec {
    CollectiveSpec::of_size(c, 8, bytes, DType::F32)
}

#[test]
fn innet_all_reduce_moves_n_each_way_and_beats_the_ring() {
    let t = fat_tree(true);
    let n = 1u64 << 30;
    let sharp = innet::simulate(&spec(Collective::AllReduce, n), &t, &[]).unwrap();
    // Every tree link carries n one way and n the other: n / B, so busbw is
    // B·2(p−1)/p — twice what a ring can reach on the same links.
    let expect = n as f64 / LINK;
    assert!(
        (sharp.transfer_s - expect).abs() / expect < 1e-9,
        "{}",
        sharp.transfer_s
    );
    let busbw = LINK * 2.0 * 7.0 / 8.0 / 1e9;
    assert!(
        (sharp.busbw_gbps - busbw).abs() / busbw < 0.001,
        "{}",
        sharp.busbw_gbps
    );
    // Up GPU→NIC→leaf→spine and down again, 1 µs a hop.
    assert!(
        (sharp.latency_s - 6e-6).abs() < 1e-12,
        "{}",
        sharp.latency_s
    );
    assert!(
        sharp.algorithm.starts_with("innet (root spine"),
        "{}",
        sharp.algorithm
    );
    assert!(sharp.gap >= 1.0 && sharp.gap < 1.01, "{}", sharp.gap);
    let ring = build(
        spec(Collective::AllReduce, n),
        Algorithm::Ring,
        PlanParams::default(),
    )
    .unwrap();
    let ring = simulate(&ring, &t, &[], ep()).unwrap();
    assert!(
        ring.total_s > 1.7 * sharp.total_s,
        "ring {} innet {}",
        ring.total_s,
        sharp.total_s
    );
    assert!(ring.busbw_gbps < 12.5, "{}", ring.busbw_gbps);
}

#[test]
fn innet_gathers_and_scatters_at_link_speed() {
    let t = fat_tree(true);
    let n = 1u64 << 30;
    for c in [Collective::AllGather, Collective::ReduceScatter] {
        let r = innet::simulate(&spec(c, n), &t, &[]).unwrap();
        // The whole buffer crosses each rank's link once (down for all-gather, up for
        // reduce-scatter): busbw B·(p−1)/p, as a ring's.
        let busbw = LINK * 7.0 / 8.0 / 1e9;
        assert!((r.busbw_gbps - busbw).abs() / busbw < 0.001, "{c}: {r:?}");
    }
}

#[test]
fn switches_that_only_forward_carry_every_stream() {
    // Only the leaves reduce: the root is a leaf, and the three other leaves' reduced
    // streams meet at a spine that forwards all three to it.
    let mut b = fat_tree(false).to_builder();
    for id in 0..b.nodes().len() as u32 {
        if b.nodes()[id as usize].tier == Some(topoccl_topo::Tier::Leaf) {
            b.node_mut(id).in_network_reduction = true;
        }
    }
    let t = b.build().unwrap();
    let n = 1u64 << 30;
    let r = innet::simulate(&spec(Collective::AllReduce, n), &t, &[]).unwrap();
    let expect = 3.0 * n as f64 / LINK;
    assert!(
        (r.transfer_s - expect).abs() / expect < 1e-9,
        "{}",
        r.transfer_s
    );
    assert!(
        r.algorithm.starts_with("innet (root leaf"),
        "{}",
        r.algorithm
    );
    assert!(r.hottest[0].link.contains("spine"), "{:?}", r.hottest[0]);
}

#[test]
fn innet_reroutes_around_faults_and_refuses_what_it_cannot_do() {
    let t = fat_tree(true);
    let n = 1u64 << 30;
    let base = innet::simulate(&spec(Collective::AllReduce, n), &t, &[]).unwrap();
    let late = innet::simulate(
        &spec(Collective::AllReduce, n),
        &t,
        &[Fault::parse("rank:3:delay=2ms").unwrap()],
    )
    .unwrap();
    assert!((late.total_s - base.total_s - 2e-3).abs() < 1e-12);
    let slow = innet::simulate(
        &spec(Collective::AllReduce, n),
        &t,
        &[Fault::parse("link:h0/nic0-leaf0:degrade=0.5").unwrap()],
    )
    .unwrap();
    assert!((slow.transfer_s - 2.0 * base.transfer_s).abs() < 1e-9 * base.transfer_s);
    let e = innet::simulate(&spec(Collective::AllReduce, n), &fat_tree(false), &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no switch in") && e.contains("in_network_reduction"),
        "{e}"
    );
    let e = innet::simulate(&spec(Collective::Broadcast, n), &t, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not broadcast"), "{e}");
    assert!(innet::supports(Collective::AllReduce) && !innet::supports(Collective::AllToAll));
    // The only reducing switch hangs off rank 1's host: rank 0 would reach it through
    // rank 1, which carries no one else's traffic.
    let mut b = TopologyBuilder::new("behind-a-rank");
    let sw = b.switch("sw", Tier::Leaf).unwrap();
    let sharp = b.switch("sharp", Tier::Leaf).unwrap();
    b.node_mut(sharp).in_network_reduction = true;
    let hosts: Vec<_> = (0..2)
        .map(|h| {
            let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
            b.connect(host, sw, LINK, 1e-6).unwrap();
            b.place(h, host).unwrap();
            host
        })
        .collect();
    b.connect(hosts[1], sharp, LINK, 1e-6).unwrap();
    let t = b.build().unwrap();
    let spec = CollectiveSpec::of_size(Collective::AllReduce, 2, n, DType::F32);
    let e = innet::simulate(&spec, &t, &[]).unwrap_err().to_string();
    assert!(
        e.contains("rank 0 (on 'h0') and 'sharp' cannot reach each other"),
        "{e}"
    );
}

#[test]
fn a_skewed_all_to_all_v_takes_longer_than_an_even_one() {
    let t = fabric(r#"{"kind": "switch", "hosts": 8, "bandwidth": "100Gbps"}"#);
    let total = 64u64 << 20;
    let run = |skew: f64| {
        let spec = traffic::hot_experts(8, total, DType::F32, skew, 42).unwrap();
        let plan = build(spec.clone(), Algorithm::Pairwise, PlanParams::default()).unwrap();
        (
            simulate(&plan, &t, &[], ep()).unwrap(),
            traffic::Skew::of(&spec),
        )
    };
    let (even, even_skew) = run(0.0);
    let (hot, hot_skew) = run(1.2);
    assert_eq!(even_skew.total, hot_skew.total);
    assert!((even_skew.factor() - 1.0).abs() < 1e-9);
    assert!(hot_skew.factor() > 2.0, "{hot_skew:?}");
    assert!(
        hot.total_s > 1.5 * even.total_s,
        "hot {} even {}",
        hot.total_s,
        even.total_s
    );
    // An even exchange is pairwise's best case: its bound is the exchange over a link.
    let per_rank = total as f64 / 8.0 * 7.0 / 8.0;
    assert!((even.lower_bound_s - per_rank / LINK).abs() < 1e-12);
    assert!(hot.gap >= 1.0 && even.gap >= 1.0);
}
