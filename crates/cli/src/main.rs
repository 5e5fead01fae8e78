//! The `topoccl` command line. Thin: it parses arguments, reads and writes files, and calls
//! the libraries.

use std::fmt;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod plan_cmd;
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Build a collective's schedule; print it as text, JSON or MSCCL XML.
    Plan(plan_cmd::PlanArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code)
        }
    }
}
