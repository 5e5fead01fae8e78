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
    },
}

pub fn run(args: InternalArgs) -> Result<ExitCode, CliError> {
    match args.what {
        Internal::AllreduceLoop { count, iters } => {
            let mut comm = job::communicator()?;
            let input = vec![1.0f32; count];
            let mut output = vec![0.0f32; count];
            for i in 0..iters {
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
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
