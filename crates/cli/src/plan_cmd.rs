//! `topoccl plan`: build a plan, optionally verify and price it, and print it as text,
//! JSON or MSCCL XML.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use topoccl_plan::cost::{uniform_cost, UniformNetwork};
use topoccl_plan::msccl::{self, MscclOptions};
use topoccl_plan::{
    algo, build, text, verify, AlgoKind, Algorithm, Collective, CollectiveSpec, CountMatrix, DType,
    Hierarchy, Placement, PlanParams, ReduceOp,
};

use crate::units::{parse_bandwidth, parse_bytes, parse_duration};
use crate::CliError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    MscclXml,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PlanArgs {
    #[command(subcommand)]
    sub: Option<PlanSub>,
    /// The collective: allreduce, allgather, reducescatter, broadcast, reduce, gather,
    /// scatter, alltoall, alltoallv, barrier.
    #[arg(required_unless_present = "list")]
    collective: Option<String>,
    /// List the collectives and the algorithms available for each.
    #[arg(long)]
    list: bool,
    /// Number of ranks.
    #[arg(short = 'n', long, required_unless_present = "list")]
    ranks: Option<u32>,
    /// Algorithm (see --list); default: the first one listed for the collective.
    #[arg(long)]
    algo: Option<String>,
    /// Elements per rank (NCCL convention: per block for all-gather, reduce-scatter,
    /// gather, scatter and all-to-all). Default: a small count that splits evenly.
    #[arg(long, conflicts_with = "total")]
    count: Option<u64>,
    /// Total elements of the larger user buffer (nccl-tests convention); must be a
    /// multiple of the number of ranks for block collectives.
    #[arg(long)]
    total: Option<u64>,
    /// Element type: f32, f64, f16, bf16, i32, i64, u8.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Reduction: sum, prod, min, max, avg.
    #[arg(long, default_value = "sum")]
    op: String,
    /// The root rank of broadcast, reduce, gather and scatter.
    #[arg(long, default_value_t = 0)]
    root: u32,
    /// Pipeline pieces per block.
    #[arg(long, default_value_t = 1, conflicts_with = "chunk_size")]
    chunks: u32,
    /// Pipeline piece size instead of --chunks (e.g. 512KiB, 4MiB): each rank's share of
    /// the buffer is cut into pieces of at most this size.
    #[arg(long)]
    chunk_size: Option<String>,
    /// Channels the data is split across.
    #[arg(long, default_value_t = 1)]
    channels: u16,
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Export for in-place execution (MSCCL XML).
    #[arg(long)]
    in_place: bool,
    /// Prove the plan correct before printing it (summary on stderr).
    #[arg(long)]
    verify: bool,
    /// Text format: print only these ranks.
    #[arg(long, value_delimiter = ',')]
    rank: Vec<u32>,
    /// parent-tree: the parent of every rank, -1 for the root (e.g. -1,0,0,1).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    parents: Vec<i64>,
    /// hier: ranks per group (consecutive ranks form a group).
    #[arg(long)]
    group_size: Option<u32>,
    /// hier: algorithm inside groups (ring or direct).
    #[arg(long, default_value = "ring")]
    intra: String,
    /// hier: all-reduce algorithm across groups.
    #[arg(long, default_value = "rhd")]
    inter: String,
    /// alltoallv: JSON file with the count matrix (rows = senders).
    #[arg(long)]
    matrix: Option<PathBuf>,
    /// Print the analytical cost for this per-message latency (e.g. 5us).
    #[arg(long)]
    alpha: Option<String>,
    /// Link bandwidth for the cost (e.g. 100Gbps, 12.5GB/s).
    #[arg(long, default_value = "100Gbps")]
    bandwidth: String,
    /// Reduction throughput for the cost (e.g. 20GB/s).
    #[arg(long, default_value = "20GB/s")]
    reduce_rate: String,
    /// Write to this file instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum PlanSub {
    /// Price every plan for a collective on a topology file: predicted time, latency and
    /// bandwidth terms, busbw and gap to the lower bound.
    Compare(crate::compare_cmd::CompareArgs),
}

fn list() -> String {
    let mut s = String::from("collective      algorithms\n");
    for c in Collective::ALL {
        s.push_str(&format!("{:<15} {}\n", c.name(), algo::available_names(c)));
    }
    s.push_str("\nalgorithm       what it does\n");
    for e in algo::table() {
        let aliases = if e.aliases.is_empty() {
            String::new()
        } else {
            format!("; also spelled {}", e.aliases.join(", "))
        };
        s.push_str(&format!("{:<15} {}{aliases}\n", e.name, e.summary));
    }
    s.push_str(&format!(
        "\n{} needs --parents; {} needs --group-size (and takes --intra, --inter).\n",
        AlgoKind::ParentTree,
        AlgoKind::Hierarchical
    ));
    s
}

fn algorithm(args: &PlanArgs, collective: Collective, world: u32) -> Result<Algorithm, CliError> {
    let kind = match &args.algo {
        Some(name) => name.parse::<AlgoKind>()?,
        None => algo::available(collective)[0],
    };
    Ok(match kind {
        AlgoKind::ParentTree => {
            if args.parents.is_empty() {
                return Err(CliError::usage(
                    "--algo parent-tree needs --parents, one parent per rank, -1 for the root",
                ));
            }
            let parents = args
                .parents
                .iter()
                .map(|&p| match p {
                    -1 => Ok(None),
                    p if p >= 0 && p <= u32::MAX as i64 => Ok(Some(p as u32)),
                    p => Err(CliError::usage(format!(
                        "--parents: {p} is not a rank (use -1 for the root)"
                    ))),
                })
                .collect::<Result<_, _>>()?;
            Algorithm::ParentTree { parents }
        }
        AlgoKind::Hierarchical => {
            let size = args.group_size.ok_or_else(|| {
                CliError::usage("--algo hier needs --group-size (ranks per group)")
            })?;
            Algorithm::Hierarchical(Box::new(Hierarchy::contiguous(
                world,
                size,
                args.intra.parse()?,
                args.inter.parse()?,
            )?))
        }
        plain => plain.algorithm()?,
    })
}

fn spec(args: &PlanArgs, collective: Collective, world: u32) -> Result<CollectiveSpec, CliError> {
    let mut spec = if collective == Collective::AllToAllV {
        let path = args.matrix.as_ref().ok_or_else(|| {
            CliError::usage("alltoallv needs --matrix FILE (a JSON array of rows of counts)")
        })?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
        let rows: Vec<Vec<u64>> = serde_json::from_str(&text).map_err(|e| {
            CliError::usage(format!(
                "{}: not a JSON array of arrays of counts: {e}",
                path.display()
            ))
        })?;
        let spec = CollectiveSpec::all_to_all_v(CountMatrix::from_rows(&rows)?);
        if spec.world != world {
            return Err(CliError::usage(format!(
                "the matrix in {} is {}×{} but --ranks is {world}",
                path.display(),
                spec.world,
                spec.world
            )));
        }
        spec
    } else if let Some(total) = args.total {
        CollectiveSpec::from_total(collective, world, total)?
    } else {
        let linear = matches!(
            collective,
            Collective::AllReduce | Collective::Broadcast | Collective::Reduce
        );
        let natural = if collective == Collective::Barrier {
            0
        } else if linear {
            2 * world as u64 * args.chunks as u64 * args.channels as u64
        } else {
            args.chunks as u64 * args.channels as u64
        };
        CollectiveSpec::new(collective, world, args.count.unwrap_or(natural))
    };
    spec.root = args.root;
    spec.dtype = args.dtype.parse::<DType>()?;
    spec.op = args.op.parse::<ReduceOp>()?;
    Ok(spec)
}

pub fn run(args: PlanArgs) -> Result<(), CliError> {
    if let Some(PlanSub::Compare(a)) = args.sub {
        return crate::compare_cmd::run(a);
    }
    if args.list {
        print!("{}", list());
        return Ok(());
    }
    let collective: Collective = args
        .collective
        .as_deref()
        .expect("clap requires a collective without --list")
        .parse()?;
    let world = args.ranks.expect("clap requires --ranks without --list");
    let spec = spec(&args, collective, world)?;
    let algorithm = algorithm(&args, collective, world)?;
    let mut params = PlanParams::default()
        .with_chunks(args.chunks)
        .with_channels(args.channels);
    if let Some(size) = &args.chunk_size {
        params = params.with_chunk_bytes(&spec, parse_bytes(size).map_err(CliError::usage)?);
    }
    let plan = build(spec, algorithm, params)?;

    if args.verify {
        let report =
            verify(&plan).map_err(|e| CliError::failed(format!("verification failed: {e}")))?;
        eprintln!(
            "verified: {} — {} ops, {} messages; out of place{}",
            plan.spec().describe(),
            report.out_of_place.ops,
            report.out_of_place.messages,
            if report.in_place.is_some() {
                " and in place"
            } else {
                ""
            }
        );
    }
    let out = match args.format {
        Format::Text => {
            let rendered = text::render(&plan, (!args.rank.is_empty()).then_some(&args.rank[..]));
            // The cost goes right under the plan's heading, before thousands of op lines.
            let heading = rendered.find('\n').map_or(rendered.len(), |i| i + 1);
            let mut s = rendered[..heading].to_string();
            if let Some(alpha) = &args.alpha {
                let net = UniformNetwork::new(
                    parse_duration(alpha).map_err(CliError::usage)?,
                    parse_bandwidth(&args.bandwidth).map_err(CliError::usage)?,
                    1.0 / parse_bandwidth(&args.reduce_rate).map_err(CliError::usage)?,
                );
                let c = uniform_cost(&plan, &net);
                s.push_str(&format!(
                    "# cost: {:.3} us = latency {:.3} + bandwidth {:.3} + reduction {:.3} \
                     ({} rounds with traffic)\n",
                    c.total_s * 1e6,
                    c.latency_s * 1e6,
                    c.bandwidth_s * 1e6,
                    c.reduction_s * 1e6,
                    c.rounds_with_traffic
                ));
            }
            s.push_str(&rendered[heading..]);
            s
        }
        Format::Json => {
            let doc = plan.materialize()?;
            serde_json::to_string_pretty(&doc).expect("plans serialise") + "\n"
        }
        Format::MscclXml => {
            let opts = MscclOptions {
                name: format!(
                    "topoccl-{}-{}",
                    plan.algorithm().name(),
                    plan.spec().collective
                ),
                placement: if args.in_place {
                    Placement::InPlace
                } else {
                    Placement::OutOfPlace
                },
                ..MscclOptions::default()
            };
            msccl::to_xml(&plan, &opts)?
        }
    };
    match &args.output {
        Some(path) => std::fs::write(path, out)
            .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?,
        None => print!("{out}"),
    }
    Ok(())
}
