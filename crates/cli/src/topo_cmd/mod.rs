//! `topoccl topo`: write descriptions of standard fabrics (`gen`), describe the local
//! machine (`discover`), check and show topology files (`validate`, `show`).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use topoccl_topo::{NodeKind, Tier, Topology};

use crate::units::plural;
use crate::CliError;

mod discover;
mod gen;
mod measure;
mod show;

#[derive(Subcommand, Debug)]
pub enum TopoCmd {
    /// Write a standard fabric (fat-tree, rail, switch, multi-zone) as a generator file.
    ///
    /// A small TOML (or JSON) generator description, with a one-line summary on stderr.
    #[command(subcommand)]
    Gen(gen::GenCmd),
    /// Find this machine's CPUs, NUMA nodes, NICs, InfiniBand ports and GPUs.
    ///
    /// Prints what was and was not found, optionally the topology as JSON.
    Discover(discover::DiscoverArgs),
    /// Measure latency and bandwidth between every pair of N ranks.
    ///
    /// Prints the matrix and saves it as JSON (usable as TOPOCCL_TOPO).
    Measure(measure::MeasureArgs),
    /// Show what a topology file holds, collapsed, in full, or exported (--format).
    ///
    /// Text and DOT collapse identical hosts, racks and pods into counts unless --full is
    /// given; TOML and JSON write every node and link.
    Show(show::ShowArgs),
    /// Check a topology file: a summary when valid, the line, column and reason when not.
    ///
    /// Exits 0 when the file is valid.
    Validate(show::ValidateArgs),
}

pub fn run(cmd: TopoCmd) -> Result<ExitCode, CliError> {
    if let TopoCmd::Measure(args) = cmd {
        return measure::run(args);
    }
    match cmd {
        TopoCmd::Measure(_) => unreachable!("handled above"),
        TopoCmd::Gen(cmd) => gen::run(cmd),
        TopoCmd::Discover(args) => discover::run(args),
        TopoCmd::Show(args) => show::show(args),
        TopoCmd::Validate(args) => show::validate(args),
    }
    .map(|()| ExitCode::SUCCESS)
}

/// One line: hosts, ranks, switches per tier, links.
fn summary(t: &Topology) -> String {
    let count = |kind: NodeKind, tier: Option<Tier>| {
        t.nodes()
            .iter()
            .filter(|n| n.kind == kind && n.tier == tier)
            .count()
    };
    let tiers: Vec<String> = Tier::ALL
        .into_iter()
        .map(|tier| (tier, count(NodeKind::Switch, Some(tier))))
        .filter(|&(_, n)| n > 0)
        .map(|(tier, n)| format!("{n} {tier}"))
        .collect();
    format!(
        "{}: {}, {}, switches: {}; {} nodes, {} links",
        t.name(),
        plural(count(NodeKind::Host, None), "host"),
        plural(t.world() as usize, "rank"),
        if tiers.is_empty() {
            "none".to_string()
        } else {
            tiers.join(", ")
        },
        t.nodes().len(),
        t.links().len()
    )
}

/// Refuses an output path whose directory does not exist, before any work is done.
fn check_output_dir(path: Option<&Path>) -> Result<(), CliError> {
    let Some(dir) = path.and_then(Path::parent) else {
        return Ok(());
    };
    if !dir.as_os_str().is_empty() && !dir.is_dir() {
        return Err(CliError::usage(format!(
            "-o {}: directory {} does not exist",
            path.unwrap_or(dir).display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `text` to `path`, or to standard output.
fn emit(path: Option<&Path>, text: &str) -> Result<(), CliError> {
    match path {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
