//! The rank program of `topoccl drill` (`topoccl internal drill-rank`): a checked
//! all-reduce loop. Rank r's element i at iteration k is `(r + 1) * ((i + k) % 7 + 1)`,
//! small integers whose sum is exact in f32, so every element of every result is compared
//! with the known answer. It reports on stdout, one line per event, with times on the
//! host's monotonic clock (the drill reads the same clock):
//!
//! ```text
//! it K END_NS DUR_NS                       iteration K finished, correct
//! drill-error at=NS culprits=A,B msg=…     a call failed (culprits may be empty)
//! drill-wrong iter=K elem=I got=X want=Y   a result was wrong: data lost
//! drill-done iters=N                       the loop finished
//! ```
//!
//! On a failure the rank goes to [`recover`], the one place where an elastic mode
//! (`Communicator::shrink()`, survivors going on) plugs in; today it stops the rank.

use std::io::Write;
use std::process::ExitCode;

use topoccl::{Communicator, ReduceOp};

use crate::job;
use crate::CliError;

/// Nanoseconds on `CLOCK_MONOTONIC`: the same clock in every process of the host.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Rank `rank`'s input element `i` at iteration `k`.
pub fn input(rank: u32, i: usize, k: u64) -> f32 {
    ((rank + 1) * (((i as u64 + k) % 7) as u32 + 1)) as f32
}

/// The sum over `world` ranks of [`input`]: `world (world + 1) / 2 * ((i + k) % 7 + 1)`.
pub fn expected(world: u32, i: usize, k: u64) -> f32 {
    (world * (world + 1) / 2 * (((i as u64 + k) % 7) as u32 + 1)) as f32
}

/// What a rank does after a failed call.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Stop with the error (exit 1): the job ends, the culprit named.
    Stop,
}

/// The recovery path after `err`: where survivors will shrink the communicator and go on
/// once `Communicator::shrink()` exists. Today every failure stops the rank.
pub fn recover(_comm: &mut Communicator, _err: &topoccl::Error) -> Recovery {
    Recovery::Stop
}

/// Runs the loop; exit 0 when every iteration was correct, 1 on a failure or wrong data.
pub fn run(count: usize, iters: u64) -> Result<ExitCode, CliError> {
    let mut comm = job::communicator()?;
    let (rank, world) = (comm.rank(), comm.world());
    let mut inp = vec![0f32; count];
    let mut out = vec![0f32; count];
    let stdout = std::io::stdout();
    for k in 0..iters {
        for (i, x) in inp.iter_mut().enumerate() {
            *x = input(rank, i, k);
        }
        let t0 = monotonic_ns();
        if let Err(e) = comm.all_reduce(&inp, &mut out, ReduceOp::Sum) {
            let at = monotonic_ns();
            let c: Vec<String> = e.culprits().iter().map(|r| r.to_string()).collect();
            let mut o = stdout.lock();
            let _ = writeln!(o, "drill-error at={at} culprits={} msg={e}", c.join(","));
            let _ = o.flush();
            match recover(&mut comm, &e) {
                Recovery::Stop => return Ok(ExitCode::from(1)),
            }
        }
        let t1 = monotonic_ns();
        if let Some(i) = (0..count).find(|&i| out[i] != expected(world, i, k)) {
            let mut o = stdout.lock();
            let want = expected(world, i, k);
            let _ = writeln!(
                o,
                "drill-wrong iter={k} elem={i} got={} want={want}",
                out[i]
            );
            let _ = o.flush();
            return Ok(ExitCode::from(1));
        }
        let mut o = stdout.lock();
        let _ = writeln!(o, "it {k} {t1} {}", t1 - t0);
        let _ = o.flush();
    }
    println!("drill-done iters={iters}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_is_the_exact_sum_of_the_inputs() {
        for world in [1, 2, 4, 8] {
            for k in 0..9 {
                for i in 0..20 {
                    let sum: f32 = (0..world).map(|r| input(r, i, k)).sum();
                    assert_eq!(sum, expected(world, i, k), "world {world} k {k} i {i}");
                }
            }
        }
    }
}
