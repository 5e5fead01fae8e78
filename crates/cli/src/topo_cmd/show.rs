//! `topoccl topo show` and `topoccl topo validate`.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use topoccl_topo::{format, NodeKind, Router, Topology};

use super::summary;
use crate::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    /// A readable summary: counts, link speeds, where ranks sit, the slowest route, and
    /// the structure with identical hosts, racks and pods collapsed (not with --full).
    Text,
    /// topoccl's TOML, every node and link spelled out.
    Toml,
    Json,
    /// Graphviz (`dot -Tsvg`): identical hosts, racks and pods drawn once with their
    /// counts; with --full every node and link.
    Dot,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Topology file (TOML, JSON, or a [generate] description).
    file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: ShowFormat,
    /// Text and DOT: every node and link, not collapsed (a 16k-GPU fabric is 134,507 DOT
    /// lines). TOML and JSON are always complete.
    #[arg(long)]
    full: bool,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Topology file.
    file: PathBuf,
}

pub fn validate(args: ValidateArgs) -> Result<(), CliError> {
    let t = crate::topo_file::load(&args.file)?;
    println!("{}: valid. {}", args.file.display(), summary(&t));
    Ok(())
}

pub fn show(args: ShowArgs) -> Result<(), CliError> {
    super::check_output_dir(args.output.as_deref())?;
    let t = crate::topo_file::load(&args.file)?;
    let text = match (args.format, args.full) {
        (ShowFormat::Text, true) => describe(&t),
        (ShowFormat::Text, false) => describe(&t) + &format::collapsed_text(&format::collapse(&t)),
        (ShowFormat::Toml, _) => format::write_toml(&t),
        (ShowFormat::Json, _) => format::to_json(&t),
        (ShowFormat::Dot, true) => format::to_dot(&t),
        (ShowFormat::Dot, false) => format::to_dot_collapsed(&t, &format::collapse(&t)),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display()))),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// The summary, the link speeds by kind of link, and where ranks sit.
fn describe(t: &Topology) -> String {
    let mut s = format!("{}\n", summary(t));
    let mut speeds: std::collections::BTreeMap<String, (usize, f64, f64)> = Default::default();
    for l in t.links() {
        let (a, b) = (t.node(l.from), t.node(l.to));
        let end = |n: &topoccl_topo::Node| match (n.kind, n.tier) {
            (NodeKind::Switch, Some(tier)) => format!("{tier} switch"),
            (kind, _) => kind.to_string(),
        };
        let e = speeds
            .entry(format!("{} -> {}", end(a), end(b)))
            .or_insert((0, f64::INFINITY, 0.0));
        e.0 += 1;
        e.1 = e.1.min(l.bandwidth);
        e.2 = e.2.max(l.bandwidth);
    }
    s.push_str("links:\n");
    for (kind, (n, lo, hi)) in speeds {
        let range = if lo == hi {
            format!("{:.2} GB/s", lo / 1e9)
        } else {
            format!("{:.2}–{:.2} GB/s", lo / 1e9, hi / 1e9)
        };
        s.push_str(&format!("  {kind:<36} {n:>8}  {range}\n"));
    }
    let p = t.world();
    let show = p.min(8);
    s.push_str(&format!("ranks (first {show} of {p}):\n"));
    for r in 0..show {
        s.push_str(&format!("  rank {r:<6} {}\n", t.node(t.rank_node(r)).name));
    }
    if p > 1 {
        let mut router = Router::new(t);
        if let Ok(route) = router.route(0, p - 1) {
            s.push_str(&format!(
                "route rank 0 -> rank {}: {} hops, {:.2} us, bottleneck {:.2} GB/s\n",
                p - 1,
                route.hops,
                route.latency * 1e6,
                route.bottleneck / 1e9
            ));
        }
    }
    s
}
