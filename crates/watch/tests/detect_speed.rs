//! Timings of the hot paths, for the record (ignored by default; they read the clock):
//! `cargo test -p topoccl-watch --test detect_speed -- --ignored --nocapture`
//! (the test profile builds with optimisations).

use std::hint::black_box;
use std::time::Instant;

use topoccl_watch::detect::{
    CongestionConfig, CongestionDetector, StragglerConfig, StragglerDetector,
};
use topoccl_watch::matrix::{Baseline, LinkMatrix, MatrixConfig, PeerSpec};

fn matrix(world: usize) -> LinkMatrix {
    let mut m = LinkMatrix::new(0, world, MatrixConfig::default()).unwrap();
    for peer in 1..world {
        let spec = PeerSpec {
            group: Some((peer / 64) as u32),
            baseline: Some(Baseline {
                throughput_bps: 1e10,
                latency_s: 5e-6,
            }),
            capacity_bps: Some(2.5e10),
        };
        m.add_peer(peer, spec).unwrap();
    }
    m
}

#[test]
#[ignore = "timing"]
fn timings() {
    let world = 4096;
    let mut m = matrix(world);
    let n = 2_000_000u64;
    let clock = Instant::now();
    for i in 0..n {
        let peer = 1 + (i as usize * 7919) % (world - 1);
        let bytes = if i % 4 == 0 { 1024 } else { 4 << 20 };
        let t = i * 10_000;
        m.record(black_box(peer), bytes, t, t + 9_000).unwrap();
    }
    let per_record = clock.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "LinkMatrix::record, world {world}, {} links: {per_record:.1} ns",
        m.len()
    );

    let mut d = CongestionDetector::new(CongestionConfig::default()).unwrap();
    let evals = 10_000u64;
    let clock = Instant::now();
    for i in 0..evals {
        black_box(d.evaluate(&m, &[], n * 10_000 + i * 1_000_000).unwrap());
    }
    let per_eval = clock.elapsed().as_nanos() as f64 / evals as f64 / 1e3;
    println!(
        "CongestionDetector::evaluate, {} links: {per_eval:.1} µs",
        m.len()
    );

    for world in [64usize, 1024, 16_384] {
        let mut s = StragglerDetector::new(world, StragglerConfig::default()).unwrap();
        let calls = (2_000_000 / world).max(20) as u64;
        let clock = Instant::now();
        for seq in 0..calls {
            for rank in 0..world {
                let t = seq * 100_000_000 + (rank as u64 * 7919) % 1_000_000;
                black_box(s.enter(seq, rank, t).unwrap());
            }
            black_box(s.evaluate(seq * 100_000_000 + 50_000_000));
        }
        let per_call = clock.elapsed().as_nanos() as f64 / calls as f64 / 1e3;
        println!(
            "StragglerDetector, world {world}: {per_call:.1} µs per call (all entries, judging, one evaluate), {:.1} ns per entry",
            per_call * 1e3 / world as f64
        );
    }
}
