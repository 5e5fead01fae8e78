//! The analytical cost of generated plans matches the textbook formulas within 1%.

use topoccl_plan::cost::{uniform_cost, UniformNetwork};
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, PlanParams};

const ALPHA: f64 = 5e-6;
const BW: f64 = 12.5e9;
const GAMMA: f64 = 1.0 / 20e9;

fn net() -> UniformNetwork {
    UniformNetwork::new(ALPHA, BW, GAMMA)
}

fn predicted(c: Collective, p: u32, count: u64, algo: Algorithm) -> f64 {
    let spec = CollectiveSpec::new(c, p, count);
    let plan = build(spec, algo, PlanParams::default()).unwrap();
    uniform_cost(&plan, &net()).total_s
}

fn close(what: &str, got: f64, want: f64) {
    let err = (got - want).abs() / want;
    assert!(
        err <= 0.01,
        "{what}: predicted {got:.6e} s, textbook {want:.6e} s ({:.2}% off)",
        err * 100.0
    );
}

fn lg(p: u32) -> f64 {
    (p as f64).log2().ceil()
}

#[test]
fn ring_allreduce() {
    for p in [2u32, 3, 8, 13, 64, 256] {
        for n in [p as u64 * 1024, p as u64 * 1_000_003] {
            let bytes = n as f64 * 4.0;
            let pf = p as f64;
            let want = 2.0 * (pf - 1.0) * ALPHA
                + 2.0 * (pf - 1.0) / pf * bytes / BW
                + (pf - 1.0) / pf * bytes * GAMMA;
            close(
                &format!("ring allreduce p={p} n={n}"),
                predicted(Collective::AllReduce, p, n, Algorithm::Ring),
                want,
            );
        }
    }
}

#[test]
fn rabenseifner_allreduce() {
    for p in [2u32, 4, 16, 128] {
        let n = p as u64 * 4096;
        let bytes = n as f64 * 4.0;
        let pf = p as f64;
        let want = 2.0 * lg(p) * ALPHA
            + 2.0 * (pf - 1.0) / pf * bytes / BW
            + (pf - 1.0) / pf * bytes * GAMMA;
        close(
            &format!("rhd allreduce p={p}"),
            predicted(Collective::AllReduce, p, n, Algorithm::Rabenseifner),
            want,
        );
    }
}

#[test]
fn binomial_broadcast() {
    for p in [2u32, 4, 32, 1024] {
        let n = 1 << 20;
        let bytes = n as f64 * 4.0;
        let want = lg(p) * (ALPHA + bytes / BW);
        close(
            &format!("binomial broadcast p={p}"),
            predicted(Collective::Broadcast, p, n, Algorithm::Binomial),
            want,
        );
    }
}

#[test]
fn bruck_allgather() {
    for p in [2u32, 5, 8, 100, 1024] {
        let c = 4096;
        let total = (p as u64 * c) as f64 * 4.0;
        let pf = p as f64;
        let want = lg(p) * ALPHA + (pf - 1.0) / pf * total / BW;
        close(
            &format!("bruck allgather p={p}"),
            predicted(Collective::AllGather, p, c, Algorithm::Bruck),
            want,
        );
    }
}

#[test]
fn ring_symmetry_prices_huge_worlds_quickly() {
    // 16,384 ranks: every reduce-scatter round is one class, every all-gather round another.
    let p = 16_384;
    let n = p as u64 * 256;
    let bytes = n as f64 * 4.0;
    let pf = p as f64;
    let want = 2.0 * (pf - 1.0) * ALPHA
        + 2.0 * (pf - 1.0) / pf * bytes / BW
        + (pf - 1.0) / pf * bytes * GAMMA;
    close(
        "ring allreduce p=16384",
        predicted(Collective::AllReduce, p, n, Algorithm::Ring),
        want,
    );
}
