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
//! drill-shrunk at=NS failed=A,B world=N dead=A-B,…  survivors agreed and go on (elastic
//!                                              jobs), avoiding the dead links
//! drill-done iters=N                       the loop finished
//! ```
//!
//! On a failure the rank goes to [`recover`]: in an elastic job (`TOPOCCL_ELASTIC=1`)
//! the survivors shrink the communicator, agree on the earliest iteration any of them
//! still owes (the failed call may have completed on some ranks), and go on from there
//! on the new communicator (inputs and the expected sums follow the new ranks and world);
//! otherwise the rank stops.

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

/// The most times one rank shrinks in a drill: a fault that acts again on the new
/// communicator's connections (a cut link) must not loop.
const MAX_SHRINKS: u32 = 3;

/// What a rank does after a failed call.
pub enum Recovery {
    /// Stop with the error (exit 1): the job ends, the culprit named.
    Stop,
    /// Go on with the survivors' communicator.
    Continue(Box<Communicator>),
}

/// The recovery path after a failed call: in an elastic job, shrink to the survivors
/// (printing `drill-shrunk`); a rank the others left out, or any other job, stops.
pub fn recover(comm: &mut Communicator) -> Recovery {
    if !comm.config().elastic {
        return Recovery::Stop;
    }
    match comm.shrink() {
        Ok(s) => {
            let failed: Vec<String> = s.failed.iter().map(|r| r.to_string()).collect();
            let dead: Vec<String> = s
                .dead_links
                .iter()
                .map(|(a, b)| format!("{a}-{b}"))
                .collect();
            println!(
                "drill-shrunk at={} failed={} world={} dead={}",
                monotonic_ns(),
                failed.join(","),
                s.comm.world(),
                dead.join(",")
            );
            Recovery::Continue(Box::new(s.comm))
        }
        Err(e) => {
            eprintln!("shrink failed: {e}");
            Recovery::Stop
        }
    }
}

/// Prints a failed call's `drill-error` line.
fn report(stdout: &std::io::Stdout, e: &topoccl::Error) {
    let at = monotonic_ns();
    let c: Vec<String> = e.culprits().iter().map(|r| r.to_string()).collect();
    let mut o = stdout.lock();
    let _ = writeln!(o, "drill-error at={at} culprits={} msg={e}", c.join(","));
    let _ = o.flush();
}

/// Runs the loop; exit 0 when every iteration was correct, 1 on a failure or wrong data.
pub fn run(count: usize, iters: u64) -> Result<ExitCode, CliError> {
    let mut comm = job::communicator()?;
    let (mut rank, mut world) = (comm.rank(), comm.world());
    let mut inp = vec![0f32; count];
    let mut out = vec![0f32; count];
    let stdout = std::io::stdout();
    let (mut k, mut shrinks) = (0, 0);
    while k < iters {
        for (i, x) in inp.iter_mut().enumerate() {
            *x = input(rank, i, k);
        }
        let t0 = monotonic_ns();
        if let Err(e) = comm.all_reduce(&inp, &mut out, ReduceOp::Sum) {
            report(&stdout, &e);
            // Shrink, then agree where to go on; a failure of that agreement (the new
            // communicator met the fault too) shrinks again, up to MAX_SHRINKS in all.
            loop {
                let c = match recover(&mut comm) {
                    Recovery::Continue(c) if shrinks < MAX_SHRINKS => c,
                    _ => return Ok(ExitCode::from(1)),
                };
                comm = *c;
                (rank, world) = (comm.rank(), comm.world());
                shrinks += 1;
                // The failed call may have completed on some ranks and not on others:
                // go on together from the earliest iteration any survivor still owes.
                let mut at = [k as f64];
                match comm.all_reduce_in_place(&mut at, ReduceOp::Min) {
                    Ok(()) => {
                        k = at[0] as u64;
                        break;
                    }
                    Err(e) => report(&stdout, &e),
                }
            }
            continue;
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
        k += 1;
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
