//! `topoccl selftest`: run the conformance matrix — every collective × algorithm × data
//! type × size × placement — across N ranks, each rank checking its output bit for bit
//! against the reference executor.

use std::process::ExitCode;

use clap::Args;

use topoccl::selftest::{run_all_with, Case, Outcome};
use topoccl::Communicator;

use crate::job;
use crate::progress::{JobBar, RankReport};
use crate::run_cmd::parse_timeout;
use crate::CliError;

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Ranks to launch (ignored when already running under a launcher).
    #[arg(short = 'n', long, default_value_t = 4)]
    ranks: u32,
    /// Elements per rank to test, comma-separated (default: 0, 1, 7 and 1 MiB + 3).
    #[arg(long, value_delimiter = ',')]
    counts: Vec<u64>,
    /// Only these collectives (comma-separated names).
    #[arg(long, visible_alias = "collective", value_delimiter = ',')]
    collectives: Vec<String>,
    /// Seed of the test data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop the whole job after this long.
    #[arg(long, default_value = "20m")]
    timeout: String,
}

pub fn run(args: SelftestArgs) -> Result<ExitCode, CliError> {
    if !job::in_job() {
        let limit = parse_timeout(&args.timeout).map_err(CliError::usage)?;
        let _bar = JobBar::start("selftest");
        return job::relaunch(args.ranks, Some(limit), None);
    }
    let mut comm = job::communicator()?;
    let mut wanted = Vec::new();
    for name in &args.collectives {
        wanted.push(name.parse::<topoccl::Collective>()?);
    }
    let counts = (!args.counts.is_empty()).then_some(&args.counts[..]);
    let cases: Vec<_> = topoccl::selftest::cases(comm.world(), counts)
        .into_iter()
        .filter(|c| wanted.is_empty() || wanted.contains(&c.spec.collective))
        .collect();
    let outcome = run_all(&mut comm, &cases, args.seed);
    for f in &outcome.failed {
        eprintln!("FAIL {f}");
    }
    if comm.rank() == 0 || !outcome.failed.is_empty() {
        println!(
            "selftest: {} of {} cases passed on {} ranks in {:.1} s{}",
            outcome.passed,
            cases.len(),
            comm.world(),
            outcome.elapsed.as_secs_f64(),
            if outcome.failed.is_empty() {
                ""
            } else {
                " — FAILURES above"
            }
        );
    }
    Ok(if outcome.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `topoccl::selftest::run_all` with a progress report as every case starts.
fn run_all(comm: &mut Communicator, cases: &[Case], seed: u64) -> Outcome {
    let mut report = RankReport::from_env(comm.rank());
    let total = cases.len() as u64;
    let out = run_all_with(comm, cases, seed, |i, case| {
        report.report(i as u64, total, &case.describe())
    });
    report.finish(total);
    out
}
