//! Pipelining between rounds: symmetric plans keep the barrier time; a pipelined chain
//! pays the path latency once per hop instead of once per round.

mod common;

use common::{ep, plan, switch};
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};
use topoccl_sim::machines;
use topoccl_sim::pipeline::pipelined;
use topoccl_sim::{simulate, Fault};
use topoccl_topo::Endpoints;

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

/// `hosts` hosts of `gpus` ranks on one leaf switch: fast links inside a host, a slower
/// NIC per host, so plans that mix the two fall out of step.
fn hosts(hosts: u32, gpus: u32) -> topoccl_topo::Topology {
    use topoccl_topo::{NodeKind, Tier, TopologyBuilder};
    let mut b = TopologyBuilder::new("hosts");
    let leaf = b.switch("leaf", Tier::Leaf).unwrap();
    let mut rank = 0;
    for h in 0..hosts {
        let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
        let nvs = b
            .device(format!("h{h}/nvs"), NodeKind::Switch, host)
            .unwrap();
        let nic = b.device(format!("h{h}/nic"), NodeKind::Nic, host).unwrap();
        b.connect(nvs, nic, 50e9, 1e-6).unwrap();
        b.connect(nic, leaf, 12.5e9, 2e-6).unwrap();
        for g in 0..gpus {
            let gpu = b
                .device(format!("h{h}/gpu{g}"), NodeKind::Accelerator, host)
                .unwrap();
            b.connect(gpu, nvs, 200e9, 0.3e-6).unwrap();
            b.place(rank, gpu).unwrap();
            rank += 1;
        }
    }
    b.build().unwrap()
}

/// Every algorithm the registry builds without arguments, for every collective, plus
/// hierarchies: a mix of in-step and out-of-step plans.
fn plans_for(p: u32, per_host: u32) -> Vec<(String, topoccl_plan::Plan)> {
    use topoccl_plan::{available, CountMatrix, Hierarchy};
    let mut out = Vec::new();
    for c in Collective::ALL {
        let spec = match c {
            Collective::Barrier => CollectiveSpec::new(c, p, 0),
            Collective::AllToAllV => {
                // Uneven counts: rank i sends (i + 2j) mod 5 + 1 thousand elements to j.
                let rows: Vec<Vec<u64>> = (0..p as u64)
                    .map(|i| {
                        (0..p as u64)
                            .map(|j| ((i + 2 * j) % 5 + 1) * 1000)
                            .collect()
                    })
                    .collect();
                CollectiveSpec::all_to_all_v(CountMatrix::from_rows(&rows).unwrap())
            }
            _ => CollectiveSpec::new(c, p, 300_000).with_root(p / 3),
        };
        for kind in available(c) {
            let Ok(alg) = kind.algorithm() else {
                continue;
            };
            let name = kind.name();
            for params in [
                PlanParams::default(),
                PlanParams::default().with_chunks(4),
                PlanParams::default().with_channels(2),
            ] {
                if let Ok(plan) = build(spec.clone(), alg.clone(), params) {
                    let label = format!(
                        "{c} {name} chunks {} channels {}",
                        params.chunks, params.channels
                    );
                    out.push((label, plan));
                }
            }
        }
    }
    if p % per_host == 0 && p > per_host {
        for top in [Algorithm::Ring, Algorithm::RecursiveDoubling] {
            let h = Hierarchy::contiguous(p, per_host, Algorithm::Ring, top).unwrap();
            let spec = CollectiveSpec::new(Collective::AllReduce, p, 300_000);
            let plan = build(
                spec,
                Algorithm::Hierarchical(Box::new(h)),
                PlanParams::default(),
            )
            .unwrap();
            out.push((format!("hier {}", plan.algorithm().label()), plan));
        }
    }
    out
}

/// The cross-check: one `RankMachine` per rank on virtual time (a window of one round)
/// gives the pipelined mode's completion time, to floating-point rounding (bit for bit
/// in most cases; a few ulps where the pipelined mode advances in-step rounds in one
/// addition), for every algorithm and collective, pipelined into pieces and on two
/// channels, on worlds of 2 to 16 ranks, with reductions, per-peer overhead, a late rank
/// and a slow reducer.
#[test]
fn rank_machines_on_virtual_time_agree_with_the_pipelined_mode() {
    let endpoints = Endpoints {
        overhead_s: 1e-6,
        gamma_s_per_byte: 2e-11,
    };
    let faults = [
        Fault::parse("rank:1:delay=30us").unwrap(),
        Fault::parse("rank:0:reduce=0.5").unwrap(),
    ];
    let (mut checked, mut out_of_step) = (0, 0);
    for (p, per_host) in [
        (2u32, 1u32),
        (3, 1),
        (4, 2),
        (5, 1),
        (8, 4),
        (12, 4),
        (13, 1),
        (16, 4),
    ] {
        let t = hosts(p / per_host, per_host);
        for faults in [&[][..], &faults[..]] {
            for (label, plan) in plans_for(p, per_host) {
                let piped = pipelined(&plan, &t, faults, endpoints).unwrap();
                let by_machines = machines::pipelined(&plan, &t, faults, endpoints)
                    .unwrap_or_else(|e| panic!("{p} ranks, {label}: {e}"));
                // Bit for bit where ranks are timed one by one; rounds the pipelined mode
                // advances in step by one addition may differ in the last few bits.
                assert!(
                    (by_machines - piped).abs() <= 1e-12 * piped,
                    "{p} ranks, {label}, {} faults: machines {by_machines} pipelined {piped}",
                    faults.len()
                );
                let barrier = simulate(&plan, &t, faults, endpoints).unwrap().total_s;
                if piped < barrier * (1.0 - 1e-6) {
                    out_of_step += 1;
                }
                checked += 1;
            }
        }
    }
    // The check covers plans whose ranks really run out of step, not only barrier-like ones.
    assert!(
        checked > 1000 && out_of_step > 300,
        "{checked} plans, {out_of_step} out of step"
    );
}

#[test]
fn the_machine_cross_check_refuses_large_worlds() {
    let p = 1100;
    let t = switch(p, 5e-6, 12.5e9);
    // A ring all-reduce moves p transfers in each of its 2(p − 1) rounds.
    let e = machines::pipelined(&plan("ring", p, 1 << 20), &t, &[], ep(0.0)).unwrap_err();
    assert!(e.to_string().contains("transfers"), "{e}");
}
