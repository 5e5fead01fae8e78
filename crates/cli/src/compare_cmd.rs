//! `topoccl plan compare`: every candidate plan for a collective on a topology file,
//! priced on that topology — predicted time, its latency and bandwidth terms, busbw, gap
//! to the lower bound — as a table and, with `--json`, a file.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use topoccl_plan::{Collective, DType};
use topoccl_topo::compare::{compare, random_placement, Comparison};
use topoccl_topo::{Endpoints, Topology};

use crate::units::{parse_bandwidth, parse_bytes, parse_duration};
use crate::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlacementArg {
    /// Ranks where the file puts them.
    AsIs,
    /// Ranks shuffled over the same devices (seeded).
    Random,
}

/// How a topology file is read and priced: where the ranks run, and the endpoints' costs
/// (shared by `plan compare` and `sim`).
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Where the ranks run.
    #[arg(long, value_enum, default_value = "as-is")]
    placement: PlacementArg,
    /// Seed of --placement random and of drawn traffic (printed with the results).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Software overhead per extra message a rank sends in a round (e.g. 2us).
    #[arg(long, default_value = "0s")]
    overhead: String,
    /// Reduction throughput of a rank (e.g. 200GB/s).
    #[arg(long, default_value = "200GB/s")]
    reduce_rate: String,
}

impl ModelArgs {
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn endpoints(&self) -> Result<Endpoints, CliError> {
        let overhead = parse_duration(&self.overhead)
            .map_err(|e| CliError::usage(format!("--overhead: {e}")))?;
        let rate = parse_bandwidth(&self.reduce_rate)
            .map_err(|e| CliError::usage(format!("--reduce-rate: {e}")))?;
        Ok(Endpoints {
            overhead_s: overhead,
            gamma_s_per_byte: 1.0 / rate,
        })
    }

    /// The topology in `path` with the ranks placed as asked, and how they were placed.
    pub fn load(&self, path: &std::path::Path) -> Result<(Topology, String), CliError> {
        let t = crate::topo_file::load(path)?;
        Ok(match self.placement {
            PlacementArg::AsIs => (t, "as in the file".to_string()),
            PlacementArg::Random => (
                random_placement(&t, self.seed).map_err(|e| CliError::failed(e.to_string()))?,
                format!("random, seed {}", self.seed),
            ),
        })
    }
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Topology file (TOML or JSON; see docs/topology-format.md).
    #[arg(long)]
    topo: PathBuf,
    /// The collective.
    #[arg(long, default_value = "allreduce")]
    collective: String,
    /// Bytes of the whole buffer (nccl-tests convention): 16M, 1GiB…
    #[arg(long, default_value = "16M")]
    size: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Also write the comparison as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: CompareArgs) -> Result<(), CliError> {
    let collective: Collective = args.collective.parse()?;
    let dtype: DType = args.dtype.parse()?;
    let bytes = parse_bytes(&args.size).map_err(|e| CliError::usage(format!("--size: {e}")))?;
    let endpoints = args.model.endpoints()?;
    let (t, placement) = args.model.load(&args.topo)?;
    let cmp = compare(&t, collective, bytes, dtype, &placement, endpoints)
        .map_err(|e| CliError::failed(format!("{}: {e}", args.topo.display())))?;
    print!("{}", table(&cmp));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&cmp).expect("a comparison serializes");
        std::fs::write(path, json + "\n")
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

fn table(c: &Comparison) -> String {
    let mut s = format!(
        "# {} of {} B ({}) on '{}': {} ranks, placement {}\n# lower bound {:.3} ms \
         (cuts: each rank's links, each host's and zone's uplinks)\n",
        c.collective,
        c.bytes,
        c.dtype,
        c.topology,
        c.ranks,
        c.placement,
        c.lower_bound_s * 1e3
    );
    s.push_str(&format!(
        "{:<18} {:>5} {:>12} {:>12} {:>12} {:>10} {:>11} {:>8} {:>8}  {}\n",
        "algorithm",
        "aware",
        "time(ms)",
        "latency(ms)",
        "bandw.(ms)",
        "reduce(ms)",
        "busbw(GB/s)",
        "gap",
        "verified",
        "hottest link"
    ));
    for r in &c.rows {
        s.push_str(&format!(
            "{:<18} {:>5} {:>12.3} {:>12.3} {:>12.3} {:>10.3} {:>11.2} {:>8.2} {:>8}  {}\n",
            r.algorithm,
            if r.topology_aware { "yes" } else { "no" },
            r.time_s * 1e3,
            r.latency_s * 1e3,
            r.bandwidth_s * 1e3,
            r.reduction_s * 1e3,
            r.busbw_gbps,
            r.gap,
            match r.verified {
                Some(true) => "yes",
                Some(false) => "FAILED",
                None => "too big",
            },
            r.hottest_link.as_deref().unwrap_or("-")
        ));
    }
    for note in &c.notes {
        s.push_str(&format!("# note: {note}\n"));
    }
    s
}
