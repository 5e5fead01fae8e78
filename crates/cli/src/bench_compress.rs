//! `topoccl bench allreduce --compress CODEC`: compressed all-reduce of f32 beside the
//! plain one, size by size, in the same job.
//!
//! Columns: size and count as nccl-tests counts them; the codec; bytes this rank put on
//! the wire per call and the ratio to the plain call's `4·count`; the compressed call's
//! time (µs, the slowest rank's mean) with its *effective* algbw and busbw (the
//! uncompressed bytes over that time, nccl-tests' bus factor); the relative error of the
//! result against the plain all-reduce's (‖compressed − exact‖ / ‖exact‖, one call with
//! error feedback state as it stands); the plain call's time and the speed-up; the
//! passes over the gradient's memory that encoding and decoding take (the codec's
//! figures, decoding once per rank's frame for codecs that all-gather frames).

use std::time::Instant;

use topoccl::compressed::Compressor;
use topoccl::{Collective, CollectiveSpec, Communicator, ReduceOp};

use crate::CliError;

/// One row of the table, also written with `--json`.
#[derive(serde::Serialize)]
pub struct CompressedRow {
    pub size_bytes: u64,
    pub count: u64,
    pub codec: String,
    pub wire_bytes: u64,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
    pub rel_error: f64,
    pub plain_time_us: f64,
    pub memory_passes: f64,
}

/// The slowest rank's mean of `iters` calls of `call` after `warmup` untimed ones.
fn timed(
    comm: &mut Communicator,
    warmup: u32,
    iters: u32,
    mut call: impl FnMut(&mut Communicator) -> Result<(), CliError>,
) -> Result<f64, CliError> {
    for _ in 0..warmup {
        call(comm)?;
    }
    comm.barrier()?;
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        call(comm)?;
    }
    let mut mean = [t.elapsed().as_secs_f64() / f64::from(iters.max(1))];
    comm.all_reduce_in_place(&mut mean, ReduceOp::Max)?;
    Ok(mean[0])
}

/// Runs the sweep and prints the table on rank 0; returns the rows.
pub fn sweep(
    comm: &mut Communicator,
    codec: &str,
    feedback: bool,
    sizes: &[u64],
    warmup: u32,
    iters: u32,
) -> Result<Vec<CompressedRow>, CliError> {
    let mut c = Compressor::new(codec, feedback).map_err(|e| CliError::usage(e.to_string()))?;
    let world = comm.world();
    let rank = comm.rank();
    if rank == 0 {
        println!(
            "# topoccl bench allreduce --compress {}: {world} ranks, iters {iters} warmup {warmup}, \
             error feedback {}; effective bandwidth counts the uncompressed bytes",
            c.spec(),
            if feedback { "on" } else { "off" }
        );
        println!(
            "# {:>10} {:>12} {:>10} {:>12} {:>7} {:>10} {:>7} {:>7} {:>9} {:>10} {:>8} {:>6}",
            "size(B)",
            "count",
            "codec",
            "wire(B)",
            "ratio",
            "time(us)",
            "algbw",
            "busbw",
            "rel.err",
            "plain(us)",
            "speedup",
            "passes"
        );
    }
    let mut rows = Vec::new();
    let mut last = None;
    for &bytes in sizes {
        let count = (bytes / 4).max(1);
        if last == Some(count) {
            continue;
        }
        last = Some(count);
        let n = count as usize;
        // Gradient-like data: different on every rank, signs mixed.
        let grad: Vec<f32> = (0..n)
            .map(|i| {
                let x = (i as u64)
                    .wrapping_mul(2654435761)
                    .wrapping_add(u64::from(rank) * 97);
                ((x % 2001) as f32 - 1000.0) / 1000.0
            })
            .collect();
        let mut exact = vec![0.0f32; n];
        let mut out = vec![0.0f32; n];
        let plain = timed(comm, warmup, iters, |comm| {
            comm.all_reduce(&grad, &mut exact, ReduceOp::Sum)?;
            Ok(())
        })?;
        let mut wire = 0;
        let time = timed(comm, warmup, iters, |comm| {
            wire = comm
                .all_reduce_compressed(&mut c, &grad, &mut out, bytes)
                .map_err(CliError::from)?
                .wire_bytes;
            Ok(())
        })?;
        let norm = exact
            .iter()
            .map(|x| f64::from(*x).powi(2))
            .sum::<f64>()
            .sqrt();
        let diff = exact
            .iter()
            .zip(&out)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let spec = CollectiveSpec::new(Collective::AllReduce, world, count);
        let bw = spec.bandwidth(time);
        let row = CompressedRow {
            size_bytes: count * 4,
            count,
            codec: c.spec().to_string(),
            wire_bytes: wire,
            time_us: time * 1e6,
            algbw_gbps: bw.algbw_gbps,
            busbw_gbps: bw.busbw_gbps,
            rel_error: if norm > 0.0 { diff / norm } else { 0.0 },
            plain_time_us: plain * 1e6,
            memory_passes: {
                let (enc, dec) = c.spec().memory_passes();
                let frames = if c.spec().is_linear() {
                    1.0
                } else {
                    f64::from(world)
                };
                enc + dec * frames
            },
        };
        if rank == 0 {
            println!(
                "  {:>10} {:>12} {:>10} {:>12} {:>7.3} {:>10.1} {:>7.2} {:>7.2} {:>9.2e} {:>10.1} {:>7.2}x {:>6.1}",
                row.size_bytes,
                row.count,
                row.codec,
                row.wire_bytes,
                row.wire_bytes as f64 / row.size_bytes as f64,
                row.time_us,
                row.algbw_gbps,
                row.busbw_gbps,
                row.rel_error,
                row.plain_time_us,
                row.plain_time_us / row.time_us,
                row.memory_passes
            );
        }
        rows.push(row);
    }
    Ok(rows)
}
