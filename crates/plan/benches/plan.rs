//! Criterion benchmarks of the plan core: building a plan and getting its first round, and
//! verifying it, for ring, rhd, tree and hier at 1,024 and 16,384 ranks.
//!
//! The slow measurements (walking every round at 16,384 ranks, verifying at 16,384) and
//! peak memory are in the `scale` bench, which times whole runs itself.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use topoccl_plan::{build, verify, Algorithm, Collective, CollectiveSpec, Hierarchy, PlanParams};

/// 16 MiB of f32 per rank; op counts do not depend on it.
const COUNT: u64 = 4 << 20;

fn algorithms(p: u32) -> Vec<Algorithm> {
    vec![
        Algorithm::Ring,
        Algorithm::Rabenseifner,
        Algorithm::DoubleBinaryTree,
        Algorithm::Hierarchical(Box::new(
            Hierarchy::contiguous(p, 8, Algorithm::Ring, Algorithm::Rabenseifner).unwrap(),
        )),
    ]
}

fn first_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("build_and_first_round");
    for p in [1024u32, 16_384] {
        for algo in algorithms(p) {
            g.bench_with_input(BenchmarkId::new(algo.name(), p), &p, |b, &p| {
                let mut ops = Vec::new();
                b.iter(|| {
                    let spec = CollectiveSpec::new(Collective::AllReduce, p, COUNT);
                    let plan = build(spec, algo.clone(), PlanParams::default()).unwrap();
                    ops.clear();
                    plan.round_ops(0, &mut ops);
                    black_box(ops.len())
                })
            });
        }
    }
    g.finish();
}

fn verification(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    let p = 1024u32;
    // The ring (p² symbolic state, ~9 s a run) is timed by the `scale` bench instead.
    for algo in algorithms(p).into_iter().filter(|a| *a != Algorithm::Ring) {
        let spec = CollectiveSpec::new(Collective::AllReduce, p, COUNT);
        let plan = build(spec, algo.clone(), PlanParams::default()).unwrap();
        g.bench_with_input(BenchmarkId::new(algo.name(), p), &plan, |b, plan| {
            b.iter(|| black_box(verify(plan).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, first_round, verification);
criterion_main!(benches);
