//! The chunk level against the α-β formulas, exact store-and-forward cases, and the flow
//! level on medium fat-trees.

mod common;

use common::{ep, plan, switch, two_spines};
use topoccl_plan::cost::{uniform_cost, UniformNetwork};
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, DType, Plan, PlanParams};
use topoccl_sim::{simulate, simulate_chunks, ChunkParams, Fault};
use topoccl_topo::compare::random_placement;
use topoccl_topo::gen::{generate, Fabric, HostSpec};
use topoccl_topo::plans::{hierarchy, levels, Locality};
use topoccl_topo::{Endpoints, Router, Topology};

#[test]
fn uniform_network_matches_alpha_beta_within_1_percent_for_large_messages() {
    let (alpha, bw, gamma) = (5e-6, 12.5e9, 1e-10);
    for p in [2u32, 3, 5, 8, 16] {
        let t = switch(p, alpha, bw);
        for alg in ["ring", "rhd", "tree", "rd"] {
            let plan = plan(alg, p, 1 << 22);
            let sim = simulate_chunks(&plan, &t, &[], ep(gamma), ChunkParams::default()).unwrap();
            let ab = uniform_cost(&plan, &UniformNetwork::new(alpha, bw, gamma));
            let rel = (sim.total_s - ab.total_s).abs() / ab.total_s;
            assert!(
                rel < 0.01,
                "p={p} {alg}: chunk level {} vs α-β {}",
                sim.total_s,
                ab.total_s
            );
        }
    }
}

#[test]
fn one_chunk_is_stored_then_forwarded() {
    // Two ranks, one switch: each of the ring's two rounds moves half the buffer over two
    // links; whole, it is on the wire twice; cut, once plus a chunk.
    let (alpha, bw) = (2e-6, 10e9);
    let t = switch(2, alpha, bw);
    let plan = plan("ring", 2, 1 << 20);
    let half = (1u64 << 21) as f64 / bw;
    let whole = simulate_chunks(&plan, &t, &[], ep(0.0), ChunkParams::fixed(1 << 30)).unwrap();
    assert!(
        (whole.transfer_s - 2.0 * 2.0 * half).abs() < 1e-12,
        "{whole:?}"
    );
    assert!((whole.latency_s - 2.0 * alpha).abs() < 1e-12);
    // Adaptive: the fill (one chunk on the second link) is the allowed share of the round.
    let fine = simulate_chunks(&plan, &t, &[], ep(0.0), ChunkParams::default()).unwrap();
    let expect = 2.0 * half * (1.0 + ChunkParams::FILL);
    assert!((fine.transfer_s / expect - 1.0).abs() < 1e-4, "{fine:?}");
    assert_eq!(fine.level, "chunk level, adaptive chunks");
    assert_eq!(
        fine,
        simulate_chunks(&plan, &t, &[], ep(0.0), ChunkParams::default()).unwrap()
    );
}

#[test]
fn chunks_take_every_ecmp_path_and_avoid_a_cut_one() {
    // As at the flow level: two crossings per step, each halved over the two spines.
    let t = two_spines();
    let plan = plan("ring", 4, 1 << 20);
    let expect = 6.0 * ((1u64 << 20) as f64 / 10e9);
    let sim = simulate_chunks(&plan, &t, &[], ep(0.0), ChunkParams::default()).unwrap();
    assert!(
        (sim.transfer_s / expect - 1.0).abs() < 0.01,
        "{}",
        sim.transfer_s
    );
    let down = [Fault::parse("link:leaf0-spine0:down").unwrap()];
    let sim = simulate_chunks(&plan, &t, &down, ep(0.0), ChunkParams::default()).unwrap();
    assert!(
        (sim.transfer_s / (2.0 * expect) - 1.0).abs() < 0.01,
        "{}",
        sim.transfer_s
    );
    assert!(
        sim.hottest[0].link.contains("spine1"),
        "{:?}",
        sim.hottest[0]
    );
}

#[test]
fn runs_above_the_event_bound_are_refused() {
    let t = switch(16, 1e-6, 10e9);
    let plan = plan("ring", 16, 1 << 24);
    let params = ChunkParams {
        chunk_bytes: Some(64),
        max_events: 1_000_000,
    };
    let e = simulate_chunks(&plan, &t, &[], ep(0.0), params)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("would create 4194304 chunk events")
            && e.contains("limit of 1000000")
            && e.contains("use the flow level or a bigger --chunk size"),
        "{e}"
    );
}

/// A 2-tier fat-tree of hosts with 8 GPUs, 1us hops, leaves `oversub`:1.
fn fat_tree(hosts: u32, oversub: f64) -> Topology {
    let f = Fabric::FatTree {
        hosts,
        tiers: 2,
        radix: None,
        oversub_leaf: oversub,
        oversub_spine: 1.0,
        bandwidth: None,
        latency: "1us".into(),
        host: HostSpec::with_gpus(8),
        in_network_reduction: false,
    };
    generate(&f).unwrap().build().unwrap()
}

/// All-reduce by ring, rhd, tree and the hierarchy over hosts and leaves with rhd on top.
fn allreduce_plans(t: &Topology, bytes: u64) -> Vec<(String, Plan)> {
    let spec = CollectiveSpec::of_size(Collective::AllReduce, t.world(), bytes, DType::F32);
    let loc = Locality::of(&mut Router::new(t)).unwrap();
    let hier = hierarchy(&levels(&loc), &Algorithm::Ring, &Algorithm::Rabenseifner).unwrap();
    ["ring", "rhd", "tree"]
        .iter()
        .map(|a| (a.to_string(), a.parse::<Algorithm>().unwrap()))
        .chain([("hier(ring|rhd)".to_string(), hier)])
        .map(|(label, alg)| {
            (
                label,
                build(spec.clone(), alg, PlanParams::default()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chunk_level_agrees_with_flow_level_on_a_256_rank_fat_tree() {
    let ep = Endpoints::default();
    let degraded = vec![Fault::parse("link:leaf0-spine0:degrade=0.25").unwrap()];
    let mut report = String::new();
    let mut worst: f64 = 0.0;
    for (name, t, faults) in [
        ("non-blocking", fat_tree(32, 1.0), vec![]),
        ("4:1 leaves", fat_tree(32, 4.0), vec![]),
        // Ranks scattered: most transfers cross the oversubscribed uplinks.
        (
            "4:1, random placement",
            random_placement(&fat_tree(32, 4.0), 1).unwrap(),
            vec![],
        ),
        ("leaf0-spine0 at 25%", fat_tree(32, 1.0), degraded),
    ] {
        assert_eq!(t.world(), 256);
        for mib in [1, 16] {
            for (label, plan) in allreduce_plans(&t, mib << 20) {
                let flow = simulate(&plan, &t, &faults, ep).unwrap();
                let chunk =
                    simulate_chunks(&plan, &t, &faults, ep, ChunkParams::default()).unwrap();
                let off = chunk.total_s / flow.total_s - 1.0;
                report += &format!(
                    "{name:>21} {mib:>2} MiB {label:>14}: flow {:.4} ms, chunk {:.4} ms, {:+.2}%\n",
                    flow.total_s * 1e3,
                    chunk.total_s * 1e3,
                    off * 100.0
                );
                worst = worst.max(off.abs());
            }
        }
    }
    eprint!("{report}");
    assert!(worst <= 0.05, "{report}");
}
