//! A short measurement at communicator creation: the latency and bandwidth of the links a
//! ring uses, and this machine's reduction rate. Every rank ends with the same figures
//! (the worst over ranks, agreed with an all-reduce), so every rank picks the same
//! algorithm for a call.

use std::time::Instant;

use topoccl_plan::cost::UniformNetwork;
use topoccl_plan::exec::kernels::reduce_into;
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, DType, PlanParams, ReduceOp};

use crate::comm::Communicator;
use crate::error::Result;

const SMALL_REPS: usize = 9;
const LARGE_REPS: usize = 3;
/// Elements of f32 in the bandwidth measurement (4 MiB).
const LARGE: usize = 1 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds per byte of an f32 sum on this core.
fn reduce_rate() -> f64 {
    let mut a = vec![1.0f32; LARGE];
    let b = vec![2.0f32; LARGE];
    let times: Vec<f64> = (0..LARGE_REPS)
        .map(|_| {
            let t = Instant::now();
            reduce_into(ReduceOp::Sum, &mut a, &b);
            t.elapsed().as_secs_f64()
        })
        .collect();
    std::hint::black_box(&a);
    median(times) / (LARGE * 4) as f64
}

/// Measures and agrees on the network model.
pub(crate) fn measure(comm: &mut Communicator) -> Result<UniformNetwork> {
    let p = comm.world();
    let ring = |count: u64| {
        build(
            CollectiveSpec::new(Collective::AllReduce, p, count),
            Algorithm::Ring,
            PlanParams::default(),
        )
    };
    let steps = 2.0 * (p as f64 - 1.0);
    let frac = (p as f64 - 1.0) / p as f64;

    // Latency: a ring all-reduce of one element per rank is 2(p−1) message latencies.
    let small = ring(p as u64)?;
    let input = vec![1.0f32; p as usize];
    let mut out = vec![0.0f32; p as usize];
    comm.run_plan(&small, &input, &mut out)?;
    let mut lat = Vec::with_capacity(SMALL_REPS);
    for _ in 0..SMALL_REPS {
        let t = Instant::now();
        comm.run_plan(&small, &input, &mut out)?;
        lat.push(t.elapsed().as_secs_f64() / steps);
    }
    let alpha = median(lat);

    // Bandwidth: what is left of a large ring all-reduce once latency and reduction are
    // accounted for.
    let gamma = reduce_rate();
    let large = ring(LARGE as u64)?;
    let input = vec![1.0f32; LARGE];
    let mut out = vec![0.0f32; LARGE];
    let bytes = (LARGE * 4) as f64;
    let mut bw = Vec::with_capacity(LARGE_REPS);
    for _ in 0..LARGE_REPS {
        let t = Instant::now();
        comm.run_plan(&large, &input, &mut out)?;
        let wire = (t.elapsed().as_secs_f64() - steps * alpha - frac * bytes * gamma).max(1e-9);
        bw.push(2.0 * frac * bytes / wire);
    }
    let bandwidth = median(bw);

    // Agree on the worst figures: max of latency, per-byte time and reduction time.
    let mine = [alpha, 1.0 / bandwidth, gamma];
    let mut agreed = [0.0f64; 3];
    let spec = CollectiveSpec::new(Collective::AllReduce, p, 3)
        .with_op(ReduceOp::Max)
        .with_dtype(DType::F64);
    let plan = build(spec, Algorithm::Ring, PlanParams::default())?;
    comm.run_plan(&plan, &mine, &mut agreed)?;
    Ok(UniformNetwork::new(agreed[0], 1.0 / agreed[1], agreed[2]))
}
