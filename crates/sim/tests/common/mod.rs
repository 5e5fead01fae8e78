//! Shared by the simulator's integration tests: small topologies with known answers.

#![allow(dead_code)]

use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};
use topoccl_topo::{Endpoints, NodeKind, Tier, Topology, TopologyBuilder};

/// p hosts on one switch: the textbook network (α split over the two hops).
pub fn switch(p: u32, alpha: f64, bw: f64) -> Topology {
    let mut b = TopologyBuilder::new("switch");
    let sw = b.switch("sw", Tier::Leaf).unwrap();
    for i in 0..p {
        let h = b.node(format!("h{i}"), NodeKind::Host).unwrap();
        b.connect(h, sw, bw, alpha / 2.0).unwrap();
        b.place(i, h).unwrap();
    }
    b.build().unwrap()
}

/// Two leaves of two hosts each, joined by two spines; ranks alternate leaves, so every
/// ring step crosses between them twice in each direction.
pub fn two_spines() -> Topology {
    let mut b = TopologyBuilder::new("two-spines");
    let leaves: Vec<_> = (0..2)
        .map(|i| b.switch(format!("leaf{i}"), Tier::Leaf).unwrap())
        .collect();
    for s in 0..2 {
        let sp = b.switch(format!("spine{s}"), Tier::Spine).unwrap();
        for &l in &leaves {
            b.connect(l, sp, 10e9, 1e-6).unwrap();
        }
    }
    for h in 0..4u32 {
        let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
        b.connect(host, leaves[h as usize % 2], 10e9, 1e-6).unwrap();
        b.place(h, host).unwrap();
    }
    b.build().unwrap()
}

pub fn plan(alg: &str, p: u32, count: u64) -> topoccl_plan::Plan {
    let spec = CollectiveSpec::new(Collective::AllReduce, p, count);
    build(
        spec,
        alg.parse::<Algorithm>().unwrap(),
        PlanParams::default(),
    )
    .unwrap()
}

pub fn ep(gamma: f64) -> Endpoints {
    Endpoints {
        overhead_s: 0.0,
        gamma_s_per_byte: gamma,
    }
}
