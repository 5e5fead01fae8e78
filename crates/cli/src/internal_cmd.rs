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
                let want = comm.world() as f32;
                if let Some(at) = output.iter().position(|&x| x != want) {
                    eprintln!(
                        "error: iteration {i}: element {at} is {}, not {want}",
                        output[at]
                    );
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
