//! Hidden helpers for tests: small programs that run as ranks.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use topoccl::ReduceOp;

use crate::job;
use crate::CliError;

#[derive(Args, Debug)]
pub struct InternalArgs {
    #[command(subcommand)]
    what: Internal,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// All-reduce `count` f32 ones `iters` times, checking every result and reporting
    /// progress; on failure print the error and the ranks it blames (or the wrong
    /// element), and exit 1.
    AllreduceLoop {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        iters: u64,
        /// This rank stops calling (sleeps, outside any call) before iteration
        /// `--hang-at`, for `--hang-secs` seconds: a rank stuck elsewhere.
        #[arg(long)]
        hang_rank: Option<u32>,
        #[arg(long, default_value_t = 0)]
        hang_at: u64,
        #[arg(long, default_value_t = 0)]
        hang_secs: u64,
        /// Milliseconds of "compute" (a sleep, outside any call) after each iteration.
        #[arg(long, default_value_t = 0)]
        compute_ms: u64,
    },
    /// All-reduce `count` f32 ones `iters` times, checking every result; on a failed call,
    /// shrink to the survivors (printing `shrunk failed=A,B world=N epoch=E
    /// recovery_ms=T`, the time from the error to the end of the first call on the shrunk
    /// communicator) and go on; every `grow_every` iterations admit waiting replacements
    /// (`grew world=N`). With `TOPOCCL_JOIN=1`, joins a running job and goes on from
    /// its iteration.
    ElasticLoop {
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1000)]
        iters: u64,
        /// Past `iters`, go on while the world is smaller than this (waiting for a
        /// replacement to join), up to `--max-iters` in all.
        #[arg(long, default_value_t = 0)]
        until_world: u32,
        #[arg(long, default_value_t = 0)]
        max_iters: u64,
        #[arg(long, default_value_t = 0)]
        grow_every: u64,
        #[arg(long, default_value_t = 0)]
        compute_ms: u64,
        /// These world ranks SIGKILL themselves before iteration `--die-at` (a crash).
        #[arg(long, value_delimiter = ',')]
        die_rank: Vec<u32>,
        #[arg(long, default_value_t = 0)]
        die_at: u64,
    },
    /// The workload of `topoccl drill`: all-reduce known inputs `iters` times, checking
    /// every element, and report each step on stdout (`crate::drill_cmd` reads it).
    DrillRank {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        iters: u64,
    },
}

pub fn run(args: InternalArgs) -> Result<ExitCode, CliError> {
    match args.what {
        Internal::ElasticLoop {
            count,
            iters,
            until_world,
            max_iters,
            grow_every,
            compute_ms,
            die_rank,
            die_at,
        } => elastic_loop(
            count,
            (iters, until_world, max_iters.max(iters)),
            grow_every,
            compute_ms,
            &die_rank,
            die_at,
        ),
        Internal::DrillRank { count, iters } => crate::drill_rank::run(count, iters),
        Internal::AllreduceLoop {
            count,
            iters,
            hang_rank,
            hang_at,
            hang_secs,
            compute_ms,
        } => {
            let mut comm = job::communicator()?;
            let input = vec![1.0f32; count];
            let mut output = vec![0.0f32; count];
            for i in 0..iters {
                if hang_rank == Some(comm.rank()) && i == hang_at {
                    std::thread::sleep(std::time::Duration::from_secs(hang_secs));
                }
                if let Err(e) = comm.all_reduce(&input, &mut output, ReduceOp::Sum) {
                    let blamed: Vec<String> = e.culprits().iter().map(|r| r.to_string()).collect();
                    eprintln!("error: {e}");
                    eprintln!("culprits: {}", blamed.join(","));
                    return Ok(ExitCode::from(1));
                }
                if !sums_of_ones(&output, comm.world(), i) {
                    return Ok(ExitCode::from(1));
                }
                println!("iteration {i} done");
                if compute_ms > 0 {
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                    std::thread::sleep(std::time::Duration::from_millis(compute_ms));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The iteration every rank continues from: the furthest any rank got (a call can
/// complete on some ranks and fail on others), or, for a replacement, the members'.
fn agree_iteration(comm: &mut topoccl::Communicator, i: u64) -> topoccl::Result<u64> {
    let mut v = [i as i64];
    comm.all_reduce_in_place(&mut v, ReduceOp::Max)?;
    Ok(v[0].max(0) as u64)
}

/// `(iters, until_world, max_iters)`: see `Internal::ElasticLoop`.
fn elastic_loop(
    count: usize,
    (iters, until_world, max_iters): (u64, u32, u64),
    grow_every: u64,
    compute_ms: u64,
    die_rank: &[u32],
    die_at: u64,
) -> Result<ExitCode, CliError> {
    use std::io::Write;
    use std::time::Instant;
    let fail = |e: topoccl::Error| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(1))
    };
    let mut comm = job::communicator()?;
    println!("pid {}", std::process::id());
    let me = comm.world_rank(comm.rank()).unwrap_or(comm.rank());
    let joined = comm.epoch() > 0;
    let mut i = 0;
    // The iteration whose grow this rank took part in (a replacement: the one it joined at).
    let mut grown_at = None;
    if joined {
        match agree_iteration(&mut comm, 0) {
            Ok(at) => i = at,
            Err(e) => return fail(e),
        }
        grown_at = Some(i);
        println!(
            "joined as rank {} of {} at iteration {i}",
            comm.rank(),
            comm.world()
        );
    }
    let mut output = vec![0.0f32; count];
    let input = vec![1.0f32; count];
    // Every member sees the same world after a grow, so all stop at the same iteration.
    while i < iters || (comm.world() < until_world && i < max_iters) {
        if i == die_at && die_rank.contains(&me) && !joined {
            let _ = std::io::stdout().flush();
            // SAFETY: kill(2) with this process's own id touches no memory.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if grow_every > 0 && i > 0 && i % grow_every == 0 && grown_at != Some(i) {
            grown_at = Some(i);
            match comm.grow() {
                Ok(Some(mut grown)) => {
                    if let Err(e) = agree_iteration(&mut grown, i) {
                        return fail(e);
                    }
                    println!("grew world={}", grown.world());
                    comm = grown;
                }
                Ok(None) => {}
                Err(e) => return fail(e),
            }
        }
        if let Err(e) = comm.all_reduce(&input, &mut output, ReduceOp::Sum) {
            let detected = Instant::now();
            eprintln!("call failed at iteration {i}: {e}");
            let shrunk = match comm.shrink() {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            comm = shrunk.comm;
            // The first call on the shrunk communicator: agreeing where to go on.
            i = match agree_iteration(&mut comm, i) {
                Ok(at) => at,
                Err(e) => return fail(e),
            };
            let failed: Vec<String> = shrunk.failed.iter().map(|r| r.to_string()).collect();
            println!(
                "shrunk failed={} world={} epoch={} recovery_ms={:.1}",
                failed.join(","),
                comm.world(),
                shrunk.epoch,
                detected.elapsed().as_secs_f64() * 1e3
            );
            continue;
        }
        if !sums_of_ones(&output, comm.world(), i) {
            return Ok(ExitCode::from(1));
        }
        println!("iteration {i} done");
        let _ = std::io::stdout().flush();
        if compute_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(compute_ms));
        }
        i += 1;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether every element of an all-reduce of ones over `world` ranks is `world`; else
/// prints the first wrong element of iteration `i`.
fn sums_of_ones(output: &[f32], world: u32, i: u64) -> bool {
    let want = world as f32;
    match output.iter().position(|&x| x != want) {
        Some(at) => {
            eprintln!(
                "error: iteration {i}: element {at} is {}, not {want}",
                output[at]
            );
            false
        }
        None => true,
    }
}
