//! A short measurement at communicator creation: the latency and bandwidth of the links a
//! ring uses, and this machine's reduction rate. Every rank ends with the same figures
//! (the worst over ranks, agreed with an all-reduce), so every rank picks the same
//! algorithm for a call.

use std::time::Instant;

use topoccl_plan::cost::UniformNetwork;
use topoccl_plan::exec::kernels::reduce_into;
use topoccl_plan::{
    build, Algorithm, Collective, CollectiveSpec, DType, PlanParams, Rank, ReduceOp,
};
use topoccl_topo::matrix::LinkMatrix;

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

/// Ping-pongs per pair for the latency (the median counts).
const PINGS: usize = 5;
/// Bytes each way per pair for the bandwidth: enough to fill a slow link's pipe, small
/// enough that p−1 rounds stay short.
const MATRIX_BYTES: usize = 256 << 10;
/// Transfers per pair and direction for the bandwidth (the fastest counts).
const BW_TRIES: usize = 3;

/// The time the bytes of a transfer took on the wire: the transfer timed to its ack less
/// one round trip, but never less than half the timed transfer, so a round trip as long
/// as the transfer (noise) cannot make the link look infinitely fast.
fn wire_time(timed: f64, rtt: f64) -> f64 {
    (timed - rtt).max(timed / 2.0).max(1e-9)
}

/// The partner of `rank` in round `round` of a round-robin tournament over `p` ranks (the
/// circle method; with odd p one rank sits each round out): every pair meets exactly once
/// in `rounds(p)` rounds, and no rank is in two pairs of a round, so no link is measured
/// while another measurement loads it from the same rank.
fn partner(rank: Rank, round: u32, p: u32) -> Option<Rank> {
    // Ranks 0..n−1 sit on a circle, rank n−1 (a phantom when p is odd) in its centre; in
    // round k the centre meets k and the others pair across k: r with 2k − r.
    let n = p + p % 2;
    let fixed = n - 1;
    if fixed == 0 {
        return None;
    }
    let k = round % fixed;
    let q = if rank == fixed {
        k
    } else if rank == k {
        fixed
    } else {
        (2 * k + fixed - rank % fixed) % fixed
    };
    (q < p && q != rank).then_some(q)
}

fn rounds(p: u32) -> u32 {
    p + p % 2 - 1
}

/// Measures latency and bandwidth between every pair of ranks and shares the matrix, so
/// every rank holds the same one. The machine of each rank is its listening address.
pub(crate) fn measure_matrix(comm: &mut Communicator, hosts: Vec<String>) -> Result<LinkMatrix> {
    let p = comm.world();
    let me = comm.rank();
    let mut lat = vec![0.0f64; p as usize];
    let mut bw = vec![0.0f64; p as usize];
    let ping = [0u8; 1];
    let mut pong = [0u8; 1];
    let big = vec![0u8; MATRIX_BYTES];
    let mut sink = vec![0u8; MATRIX_BYTES];
    for round in 0..rounds(p) {
        let Some(peer) = partner(me, round, p) else {
            continue;
        };
        let lead = me < peer;
        // Latency: ping-pongs, led by the lower rank; both ends time the round trip.
        let mut rtts = Vec::with_capacity(PINGS);
        for _ in 0..PINGS {
            let t = Instant::now();
            if lead {
                comm.send(&ping, peer)?;
                comm.recv(&mut pong, peer)?;
            } else {
                comm.recv(&mut pong, peer)?;
                comm.send(&ping, peer)?;
            }
            rtts.push(t.elapsed().as_secs_f64());
        }
        lat[peer as usize] = median(rtts.clone()) / 2.0;
        // Bandwidth, one direction at a time: the sender times until the receiver's ack,
        // and takes off one round trip. Both are the fastest of their tries: scheduling
        // noise (ranks sharing cores) only ever adds time, and a median round trip taken
        // off a fast transfer could leave nothing (or less than nothing) of it.
        let rtt = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        for sender_leads in [true, false] {
            if lead == sender_leads {
                let mut best = f64::INFINITY;
                for _ in 0..BW_TRIES {
                    let t = Instant::now();
                    comm.send(&big, peer)?;
                    comm.recv(&mut pong, peer)?;
                    best = best.min(t.elapsed().as_secs_f64());
                }
                bw[peer as usize] = MATRIX_BYTES as f64 / wire_time(best, rtt);
            } else {
                for _ in 0..BW_TRIES {
                    comm.recv(&mut sink, peer)?;
                    comm.send(&ping, peer)?;
                }
            }
        }
    }
    let mine: Vec<f64> = lat.iter().chain(&bw).copied().collect();
    let mut all = vec![0.0f64; 2 * (p * p) as usize];
    comm.all_gather(&mine, &mut all)?;
    let row = |r: usize, off: usize| all[r * 2 * p as usize + off..][..p as usize].to_vec();
    Ok(LinkMatrix {
        hosts,
        latency: (0..p as usize).map(|r| row(r, 0)).collect(),
        bandwidth: (0..p as usize).map(|r| row(r, p as usize)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_as_long_as_the_transfer_does_not_make_the_link_infinite() {
        assert_eq!(wire_time(100e-6, 10e-6), 90e-6);
        assert_eq!(wire_time(100e-6, 126e-6), 50e-6);
        assert_eq!(wire_time(0.0, 0.0), 1e-9);
    }

    #[test]
    fn every_pair_meets_once() {
        for p in 1..=17u32 {
            let mut met = std::collections::HashSet::new();
            for round in 0..rounds(p) {
                let mut busy = std::collections::HashSet::new();
                for r in 0..p {
                    if let Some(q) = partner(r, round, p) {
                        assert_eq!(partner(q, round, p), Some(r), "p={p} round={round}");
                        assert!(busy.insert(r));
                        met.insert((r.min(q), r.max(q)));
                    }
                }
            }
            assert_eq!(met.len() as u32, p * (p.saturating_sub(1)) / 2, "p={p}");
        }
    }
}
