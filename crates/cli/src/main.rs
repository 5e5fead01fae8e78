//! The `topoccl` command line. Thin: it parses arguments, reads and writes files, and calls
//! the libraries.

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench_cmd;
mod bench_compress;
mod compare_cmd;
mod console_cmd;
mod demo_cmd;
mod doctor_cmd;
mod drill_cmd;
mod drill_rank;
mod failures_cmd;
mod internal_cmd;
mod job;
mod job_metrics;
mod plan_cmd;
mod progress;
mod run_cmd;
mod selftest_cmd;
mod sim_cmd;
mod status_cmd;
mod store_cmd;
mod topo_cmd;
mod topo_file;
mod tune_cmd;
mod units;

#[derive(Parser, Debug)]
#[command(
    name = "topoccl",
    version,
    about = "Topology-aware collective communication: plan, verify and export collectives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Build a collective's schedule; print it as text, JSON or MSCCL XML.
    Plan(plan_cmd::PlanArgs),
    /// Start N local ranks of a program and supervise them (rank-prefixed output; the
    /// first failure stops the job, unless --elastic).
    Run(run_cmd::RunArgs),
    /// Measure collectives across N ranks (nccl-tests layout: size, count, type, redop,
    /// root, time, algbw, busbw, #wrong out of place and in place).
    Bench(bench_cmd::BenchArgs),
    /// Check the runtime: every collective × algorithm × dtype × size across N ranks,
    /// compared bit for bit with the reference executor.
    Selftest(selftest_cmd::SelftestArgs),
    /// Simulate a collective on a topology file (flow level: max-min fair link sharing,
    /// round by round), with faults and stragglers; `sim failures` draws interruptions.
    Sim(sim_cmd::SimArgs),
    /// Grid-search algorithm × pipeline pieces × channels per message size, predicted on
    /// a topology file (--topo) or measured on N ranks; write a TOPOCCL_RULES table.
    Tune(tune_cmd::TuneArgs),
    /// Read the ranks' flight-recorder dumps and say who never arrived, who entered a
    /// different call, who failed and who is slow.
    Doctor(doctor_cmd::DoctorArgs),
    /// Host a standalone rendezvous store (TOPOCCL_STORE=tcp://HOST:PORT).
    Store(store_cmd::StoreArgs),
    Status(status_cmd::StatusArgs),
    /// Cluster topologies: generate, discover, measure, show and validate them.
    #[command(subcommand)]
    Topo(topo_cmd::TopoCmd),
    /// A web page over a topology file and a running job: links coloured by live load,
    /// timelines, alerts, what-ifs.
    Console(console_cmd::ConsoleArgs),
    /// A job to look at: N local ranks running a training-like loop, and the console over
    /// it (prints the URL; Ctrl-C stops everything).
    Demo(demo_cmd::DemoArgs),
    /// Fault drills against a local job: kill or stop a rank, cut a link, add latency,
    /// lose packets, slow a link; per drill the detection time, the culprit named,
    /// recovery, data loss and hangs (exit 1 on a hang, a wrong result or a wrong culprit).
    Drill(drill_cmd::DrillArgs),
    #[command(hide = true)]
    Internal(internal_cmd::InternalArgs),
}

/// A failure the user can act on: a usage problem (exit 2) or a failed operation (exit 1).
#[derive(Debug)]
pub struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 2,
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<topoccl_plan::PlanError> for CliError {
    fn from(e: topoccl_plan::PlanError) -> Self {
        CliError::usage(e.to_string())
    }
}

/// Lets a command that only prints end quietly when its reader goes away (`topoccl sim
/// … | head`), as Unix tools do, instead of panicking on the failed write: Rust ignores
/// SIGPIPE by default. Not for commands that talk to peers, where a closed socket must be
/// an error the runtime names rather than a signal that kills the rank.
fn die_on_closed_stdout() {
    // SAFETY: sets a signal's disposition to its default before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `topoccl bench -np N`, as mpirun spells the rank count, is `--ranks N` (only for
/// `bench`, whose other flags are nccl-tests'; `run`'s program arguments are left alone).
fn mpirun_spellings(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.collect();
    if args.get(1).is_some_and(|a| a == "bench") {
        for a in args.iter_mut().skip(2).take_while(|a| *a != "--") {
            if a == "-np" {
                *a = "--ranks".into();
            }
        }
    }
    args
}

/// Log lines of the libraries (warnings by default: alerts, flight-recorder dumps, a job
/// without a secret) on stderr; `TOPOCCL_LOG` takes `tracing`'s filter syntax
/// (`info`, `topoccl=debug`).
fn start_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOPOCCL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .try_init();
}

fn main() -> ExitCode {
    start_logging();
    let cli = Cli::parse_from(mpirun_spellings(std::env::args_os()));
    if matches!(
        cli.command,
        Command::Plan(_) | Command::Sim(_) | Command::Topo(_)
    ) {
        die_on_closed_stdout();
    }
    let result = match cli.command {
        Command::Plan(args) => plan_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Run(args) => run_cmd::run(args),
        Command::Selftest(args) => selftest_cmd::run(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Tune(args) => tune_cmd::run(args),
        Command::Sim(args) => sim_cmd::run(args).map(|()| ExitCode::SUCCESS),
        Command::Store(args) => store_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Doctor(args) => doctor_cmd::run(args),
        Command::Topo(cmd) => topo_cmd::run(cmd),
        Command::Console(args) => console_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Drill(args) => drill_cmd::run(args),
        Command::Internal(args) => internal_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code)
        }
    }
}
