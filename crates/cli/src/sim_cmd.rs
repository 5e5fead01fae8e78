//! `topoccl sim`: run a plan over a topology file in the simulator (flow level, or chunk
//! level as its check), with faults and stragglers, and report where the time goes.
//! All-to-all-v traffic comes from a matrix file or is drawn skewed; `--algo innet` runs
//! the simulator's in-network reduction instead of a plan; `--algo nccl` (and `nccl-ring`,
//! `nccl-tree`, `nvls`, `collnet`) runs the GPU model of NCCL's algorithms on a topology
//! whose file has a `[hardware]` table, where topoccl's plans then run at the same
//! effective rates. `topoccl sim failures` draws fail-stop interruptions.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use topoccl_plan::algo::parse_hier_label;
use topoccl_plan::{
    build, AlgoKind, Algorithm, Collective, CollectiveSpec, DType, Plan, PlanParams,
};
use topoccl_sim::nccl::{self, Choice};
use topoccl_sim::traffic::{self, Skew};
use topoccl_sim::{innet, pipeline, simulate_with, ChunkParams, Engine, Fault, SimReport};
use topoccl_topo::hardware::{read_hardware, Hardware};
use topoccl_topo::plans::{candidates, hierarchies, hierarchy_algorithms, hierarchy_notes};
use topoccl_topo::{Endpoints, Pricer, Router, Topology};

use crate::compare_cmd::ModelArgs;
use crate::units::{human_bytes, parse_bytes};
use crate::CliError;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimArgs {
    #[command(subcommand)]
    what: Option<SimCmd>,
    /// Topology file (TOML or JSON, a [generate] description, or a saved link matrix).
    #[arg(long, required = true)]
    topo: Option<PathBuf>,
    /// The collective: allreduce, allgather, reducescatter, broadcast, reduce, gather,
    /// scatter, alltoall, alltoallv.
    #[arg(long, default_value = "allreduce")]
    collective: String,
    /// Bytes of the whole buffer (nccl-tests convention): 16M, 1G…; with --skew, the
    /// all-to-all-v's bytes in all.
    #[arg(long, default_value = "16M")]
    size: String,
    /// Element type: f32, f64, f16, bf16, i32, i64, u8.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// auto (the cheapest plan by the topology cost, or innet where it is faster), hier
    /// (the cheapest hierarchical one), an algorithm name (ring, rhd, tree, rd, …), a
    /// candidate label from `plan compare` (topo-ring, mst-tree, hier(ring|rd)), innet
    /// (in-network reduction by the switches marked in_network_reduction), or NCCL's
    /// algorithms in the GPU model (the file needs a [hardware] table): nccl (what NCCL's
    /// tuning would pick), nccl-ring, nccl-tree, nvls, collnet.
    #[arg(long, default_value = "auto")]
    algo: String,
    /// alltoallv: the traffic matrix, one row per sending rank of its bytes to each rank
    /// (commas or spaces; units such as 4MiB allowed; # comments).
    #[arg(long, conflicts_with_all = ["skew", "size"])]
    traffic: Option<PathBuf>,
    /// alltoallv: draw the matrix with hot experts, Zipf exponent S (0 = even, 1 = a few
    /// hot ones), --size bytes in all, seeded by --seed.
    #[arg(long, allow_negative_numbers = true)]
    skew: Option<f64>,
    /// A fault, repeatable: link:ID:down, link:ID:degrade=0.1, link:ID:latency=50us
    /// (ID: a link number, A->B, or A-B for both directions).
    #[arg(long)]
    fault: Vec<String>,
    /// A straggler, repeatable: rank:R:delay=2ms or rank:R:reduce=0.5.
    #[arg(long)]
    straggler: Vec<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Also run without the faults and stragglers and report the difference (the same
    /// plan both times).
    #[arg(long)]
    what_if: bool,
    /// Simulate chunk by chunk (store and forward through FIFO links) instead of as flows
    /// sharing links max-min fairly: slower, for small and medium runs, to check the flow
    /// level.
    #[arg(long)]
    chunk_level: bool,
    /// Also time the run with pipelining between rounds: each rank starts a round when
    /// its own part of the previous one is done, instead of all waiting for the slowest.
    #[arg(long, conflicts_with = "chunk_level")]
    pipelined: bool,
    /// Build the plan pipelined, each block cut into this many pieces, as the runtime
    /// does for large buffers (`topoccl plan --chunks`; the runtime's algorithm column
    /// shows it after a slash: `parent-tree/16`). Default 1: unpipelined.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pipeline_chunks: u32,
    /// Chunk size at the chunk level (default: adaptive, about 256 chunks per transfer
    /// between 1 KiB and 64 KiB).
    #[arg(long, requires = "chunk_level")]
    chunk: Option<String>,
    /// Refuse runs estimated to need more memory than this.
    #[arg(long, default_value = "4GiB")]
    memory_cap: String,
    /// Write a Chrome trace (trace-event JSON, for chrome://tracing or Perfetto) of the
    /// run here.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Also write the report as JSON here (with --what-if: both reports).
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum SimCmd {
    /// Draw fail-stop interruptions of a long run: devices failing at a rate per
    /// device-hour (a Poisson process over the fleet), seeded.
    Failures(crate::failures_cmd::FailuresArgs),
}

/// What runs: a plan, the switches' in-network reduction, or NCCL in the GPU model.
enum Chosen {
    Plan(Plan),
    InNetwork,
    Nccl(Choice),
}

pub fn run(args: SimArgs) -> Result<(), CliError> {
    if let Some(SimCmd::Failures(f)) = args.what {
        return crate::failures_cmd::run(f);
    }
    let topo = args.topo.as_deref().expect("clap requires --topo");
    let collective: Collective = args.collective.parse()?;
    let dtype: DType = args.dtype.parse()?;
    let bytes = parse_bytes(&args.size).map_err(|e| CliError::usage(format!("--size: {e}")))?;
    let endpoints = args.model.endpoints()?;
    let faults = args
        .fault
        .iter()
        .chain(&args.straggler)
        .map(|s| Fault::parse(s).map_err(|e| CliError::usage(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = if args.chunk_level {
        let chunk_bytes = match &args.chunk {
            None => None,
            Some(c) => match parse_bytes(c) {
                Ok(0) => return Err(CliError::usage("--chunk: a chunk holds at least one byte")),
                Ok(b) => Some(b),
                Err(e) => return Err(CliError::usage(format!("--chunk: {e}"))),
            },
        };
        Engine::Chunk(ChunkParams {
            chunk_bytes,
            ..ChunkParams::default()
        })
    } else {
        Engine::Flow
    };
    let (raw, placement) = args.model.load(topo)?;
    println!("# placement: {placement}");
    let hardware = hardware_of(topo)?;
    let mut endpoints = endpoints;
    // With its hardware known, plans run at the rates protocols reach on it, as NCCL's do.
    let t = match hardware.as_ref().filter(|h| h.gpu.is_some()) {
        Some(hw) => {
            let e = nccl::effective_topology(&raw, Some(hw))
                .map_err(|err| CliError::usage(format!("{}: {err}", topo.display())))?;
            println!(
                "# rates: NVLink and NIC ports at the protocol efficiency of {}{} \
                 (crates/sim/src/hw.rs)",
                hw.gpu.as_deref().unwrap_or(""),
                hw.nic
                    .as_deref()
                    .map(|n| format!(" / {n}"))
                    .unwrap_or_default()
            );
            if endpoints.gamma_s_per_byte == Endpoints::default().gamma_s_per_byte {
                // The default reduction rate gives way to the GPU's own.
                let gpu = nccl::Cluster::of(&raw, Some(hw))
                    .map_err(|err| CliError::usage(format!("{}: {err}", topo.display())))?
                    .gpu;
                endpoints.gamma_s_per_byte = 1.0 / gpu.reduce_bps;
                println!(
                    "# reduction: {:.0} GB/s, the {} HBM bandwidth over 3 (--reduce-rate to change)",
                    gpu.reduce_bps / 1e9,
                    gpu.name
                );
            }
            e
        }
        None => raw.clone(),
    };
    let spec = match collective {
        Collective::AllToAllV => all_to_all_v(&args, t.world(), bytes, dtype)?,
        _ if args.traffic.is_some() || args.skew.is_some() => {
            return Err(CliError::usage(
                "--traffic and --skew give all-to-all-v traffic; add --collective alltoallv",
            ))
        }
        _ => CollectiveSpec::of_size(collective, t.world(), bytes, dtype),
    };
    let cap =
        parse_bytes(&args.memory_cap).map_err(|e| CliError::usage(format!("--memory-cap: {e}")))?;
    // Before any plan is built: choosing one (`--algo auto`) prices every candidate.
    topoccl_sim::check_memory(t.world(), &t, cap).map_err(|e| CliError::failed(e.to_string()))?;
    let params = PlanParams::default().with_chunks(args.pipeline_chunks);
    let long = t.world() >= LONG_WORLD;
    let (label, chosen) = stage(long, "choosing the plan", || {
        choose(
            &t,
            &raw,
            &spec,
            &args.algo,
            endpoints,
            params,
            hardware.as_ref(),
        )
    })?;
    if label.starts_with("hier(") {
        // A hierarchy over fewer levels than the topology has says which it left out.
        for note in hierarchy_notes(&mut Router::new(&t), &spec)
            .map_err(|e| CliError::failed(e.to_string()))?
        {
            println!("# note: {note}");
        }
    }
    if matches!(chosen, Chosen::Nccl(_))
        && (args.chunk_level || !faults.is_empty() || args.pipelined || args.what_if)
    {
        return Err(CliError::usage(format!(
            "--algo {}: the GPU model of NCCL's algorithms is analytical, without links to \
             fault or chunks to queue; drop --chunk-level, --pipelined, --what-if, --fault and \
             --straggler, or pick a topoccl plan with --algo",
            args.algo
        )));
    }
    if matches!(chosen, Chosen::InNetwork) && args.chunk_level {
        return Err(CliError::usage(
            "--chunk-level: in-network reduction is a traffic pattern of the flow level, not a \
             plan the chunk level can run; drop --chunk-level or pick a plan with --algo",
        ));
    }
    let run = |faults: &[Fault]| {
        let mut report = match &chosen {
            Chosen::Plan(plan) => simulate_with(plan, &t, faults, endpoints, engine),
            Chosen::InNetwork => innet::simulate(&spec, &t, faults),
            Chosen::Nccl(choice) => nccl::simulate(&spec, &raw, hardware.as_ref(), *choice),
        }
        .map_err(|e| CliError::failed(format!("{}: {e}", topo.display())))?;
        if let (true, Chosen::Plan(plan)) = (args.pipelined, &chosen) {
            let s = pipeline::pipelined(plan, &t, faults, endpoints)
                .map_err(|e| CliError::failed(format!("{}: {e}", topo.display())))?;
            report.pipelined_s = Some(s);
        }
        Ok::<_, CliError>(report)
    };
    let report = stage(long, "simulating", || run(&faults))?;
    let label = match &chosen {
        // As `topoccl bench` names a pipelined plan.
        Chosen::Plan(plan) if plan.params().chunks > 1 => {
            format!("{label}/{}", plan.params().chunks)
        }
        Chosen::Plan(_) => label,
        Chosen::InNetwork => {
            println!(
                "# in-network reduction: the switches reduce and multicast; a traffic \
                 pattern of the simulator, not a plan"
            );
            report.algorithm.clone()
        }
        Chosen::Nccl(_) => {
            println!(
                "# NCCL's algorithms in the GPU model: latency per step and protocol, rates \
                 at the protocol's share (crates/sim/src/hw.rs)"
            );
            report.algorithm.clone()
        }
    };
    print!("{}", table(&label, &report, &size_text(&spec)));
    let healthy = if args.what_if {
        Some(stage(long, "simulating without the faults", || run(&[]))?)
    } else {
        None
    };
    if let Some(h) = &healthy {
        let extra = report.total_s - h.total_s;
        println!(
            "what-if: without the faults {:.3} ms; they cost {:+.3} ms ({:+.1}%)",
            h.total_s * 1e3,
            extra * 1e3,
            if h.total_s > 0.0 {
                extra / h.total_s * 100.0
            } else {
                0.0
            }
        );
    }
    if let Some(path) = &args.trace {
        let trace = topoccl_sim::chrome_trace(&report);
        write(
            path,
            &serde_json::to_string(&trace).expect("a trace serializes"),
        )?;
    }
    if let Some(path) = &args.json {
        let value = match &healthy {
            Some(h) => serde_json::json!({"with_faults": report, "without_faults": h}),
            None => serde_json::to_value(&report).expect("a report serializes"),
        };
        let json = serde_json::to_string_pretty(&value).expect("a report serializes") + "\n";
        write(path, &json)?;
    }
    Ok(())
}

/// Ranks from which a simulation shows a spinner while it chooses and runs (on a
/// terminal only): below, every stage takes well under a second.
const LONG_WORLD: u32 = 256;

/// Runs `f`, showing `what` on a spinner meanwhile when the run is `long`; the spinner is
/// gone before anything is printed.
fn stage<T>(long: bool, what: &str, f: impl FnOnce() -> T) -> T {
    let spinner = if long {
        crate::progress::spinner("sim")
    } else {
        indicatif::ProgressBar::hidden()
    };
    spinner.set_message(what.to_string());
    let out = f();
    spinner.finish_and_clear();
    out
}

/// The call's size for the report: the buffer (`16 MiB`), or for an all-to-all-v the
/// bytes in all and the busiest sender's.
fn size_text(spec: &CollectiveSpec) -> String {
    match spec.collective {
        Collective::AllToAllV => format!(
            "{} in all (busiest sender {})",
            human_bytes(Skew::of(spec).total),
            human_bytes(spec.size_bytes())
        ),
        _ => human_bytes(spec.size_bytes()),
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

/// The all-to-all-v `--traffic` or `--skew` describes, its skew printed.
fn all_to_all_v(
    args: &SimArgs,
    world: u32,
    bytes: u64,
    dtype: DType,
) -> Result<CollectiveSpec, CliError> {
    let spec = match (&args.traffic, args.skew) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("cannot read --traffic {}: {e}", path.display()))
            })?;
            traffic::parse(&text, &path.display().to_string(), world, dtype)
        }
        (None, Some(skew)) => {
            println!("# seed: {}", args.model.seed());
            traffic::hot_experts(world, bytes, dtype, skew, args.model.seed())
        }
        (None, None) => {
            return Err(CliError::usage(
                "alltoallv needs its traffic: --traffic FILE (a matrix of bytes) or --skew S \
                 (hot experts, --size in all)",
            ))
        }
    }
    .map_err(|e| CliError::usage(e.to_string()))?;
    let s = Skew::of(&spec);
    let mib = |b: f64| b / 1048576.0;
    let (into, from) = (s.busiest_receiver, s.busiest_sender);
    println!(
        "# traffic: {:.2} MiB in all, {:.2} MiB per rank on average; busiest receiver rank \
         {} takes {:.2} MiB ({:.2}× the mean), busiest sender rank {} sends {:.2} MiB \
         ({:.2}×)",
        mib(s.total as f64),
        mib(s.mean),
        into.0,
        mib(into.1 as f64),
        s.ratio(into.1),
        from.0,
        mib(from.1 as f64),
        s.ratio(from.1)
    );
    Ok(spec)
}

/// The `[hardware]` table of the topology file at `path`, if it has one.
fn hardware_of(path: &std::path::Path) -> Result<Option<Hardware>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read --topo {}: {e}", path.display())))?;
    read_hardware(&text, &path.display().to_string()).map_err(|e| CliError::usage(e.to_string()))
}

/// What `--algo` asks for, with its label; NCCL's algorithms are judged on `raw`, the
/// topology as written (`t` may hold effective rates already).
fn choose(
    t: &Topology,
    raw: &Topology,
    spec: &CollectiveSpec,
    algo: &str,
    endpoints: Endpoints,
    params: PlanParams,
    hardware: Option<&Hardware>,
) -> Result<(String, Chosen), CliError> {
    if let Some(choice) = Choice::parse(algo) {
        nccl::simulate(spec, raw, hardware, choice)
            .map_err(|e| CliError::usage(format!("--algo {algo}: {e}")))?;
        return Ok((algo.to_string(), Chosen::Nccl(choice)));
    }
    if algo == innet::NAME {
        innet::simulate(spec, t, &[]).map_err(|e| CliError::usage(format!("--algo innet: {e}")))?;
        return Ok((algo.to_string(), Chosen::InNetwork));
    }
    // A name that is enough on its own (trees and hierarchies come from the topology).
    if let Ok(a) = algo.parse::<Algorithm>() {
        let plan = build(spec.clone(), a, params)
            .map_err(|e| CliError::usage(format!("--algo {algo}: {e}")))?;
        return Ok((algo.to_string(), Chosen::Plan(plan)));
    }
    if parse_hier_label(algo).is_some() {
        let mut router = Router::new(t);
        let found = hierarchy_algorithms(&mut router, spec)
            .map_err(|e| CliError::failed(e.to_string()))?
            .into_iter()
            .find(|(label, _)| label == algo);
        if let Some((label, alg)) = found {
            let plan = build(spec.clone(), alg, params)
                .map_err(|e| CliError::usage(format!("--algo {algo}: {e}")))?;
            return Ok((label, Chosen::Plan(plan)));
        }
    }
    let mut pricer = Pricer::new(t, endpoints);
    // `hier` alone: the best of the hierarchies the topology allows.
    let any_hierarchy = algo == AlgoKind::Hierarchical.name();
    let priced = if any_hierarchy {
        hierarchies(&mut pricer, spec, params)
    } else {
        candidates(&mut pricer, spec, params)
    };
    let mut all = priced.map_err(|e| CliError::failed(e.to_string()))?;
    all.sort_by(|a, b| a.cost.total_s.total_cmp(&b.cost.total_s));
    let pick = all.into_iter().find(|c| {
        if any_hierarchy {
            parse_hier_label(&c.label).is_some()
        } else {
            algo == "auto" || c.label == algo
        }
    });
    if algo == "auto" && innet::supports(spec.collective) {
        // The tree's time on the healthy network against the best plan's price there.
        if let Ok(r) = innet::simulate(spec, t, &[]) {
            if pick.as_ref().is_none_or(|c| r.total_s < c.cost.total_s) {
                return Ok((innet::NAME.to_string(), Chosen::InNetwork));
            }
        }
    }
    let Some(c) = pick else {
        let mut why = String::new();
        if algo.starts_with("hier") {
            let notes = hierarchy_notes(&mut Router::new(t), spec)
                .map_err(|e| CliError::failed(e.to_string()))?;
            for note in notes {
                why.push_str(&format!(" ({note})"));
            }
        }
        return Err(CliError::usage(format!(
            "--algo {algo}: no such plan for {} on this topology{why}; use auto, hier, innet, \
             nccl, nccl-ring, nccl-tree, nvls, collnet, an algorithm name or a label from \
             `topoccl plan compare`",
            spec.collective
        )));
    };
    Ok((c.label, Chosen::Plan(c.plan)))
}

/// The report for people; `size` says how big the call is ([`size_text`]).
fn table(label: &str, r: &SimReport, size: &str) -> String {
    let ms = |s: f64| s * 1e3;
    let mut s = format!(
        "# {} of {size} on '{}' ({} ranks), plan {label}, {}\n",
        r.collective, r.topology, r.ranks, r.level
    );
    for f in &r.faults {
        s.push_str(&format!("# fault: {f}\n"));
    }
    s.push_str(&format!(
        "time {:.3} ms = transfers {:.3} + latency {:.3} + reduction {:.3} + late start {:.3}\n\
         busbw {:.2} GB/s; lower bound {:.3} ms, gap {:.2}×\n",
        ms(r.total_s),
        ms(r.transfer_s),
        ms(r.latency_s),
        ms(r.reduction_s),
        ms(r.start_delay_s),
        r.busbw_gbps,
        ms(r.lower_bound_s),
        r.gap
    ));
    if let Some(p) = r.pipelined_s {
        s.push_str(&format!(
            "pipelined {:.3} ms (ranks start a round when their own previous one is done; \
             {:+.1}% against rounds as barriers)\n",
            ms(p),
            if r.total_s > 0.0 {
                (p / r.total_s - 1.0) * 100.0
            } else {
                0.0
            }
        ));
    }
    s.push_str(&format!(
        "rounds ({} of equal rounds; first 12):\n",
        crate::units::plural(r.rounds.len(), "run")
    ));
    s.push_str("   first  rounds   each(ms)  transfer(ms)  latency(ms)  reduce(ms)\n");
    for run in r.rounds.iter().take(12) {
        s.push_str(&format!(
            "{:>8} {:>7} {:>10.4} {:>13.4} {:>12.4} {:>11.4}\n",
            run.first,
            run.rounds,
            ms(run.each_s),
            ms(run.transfer_s),
            ms(run.latency_s),
            ms(run.reduction_s)
        ));
    }
    s.push_str("hottest links (busy share of the collective's time):\n");
    for l in &r.hottest {
        s.push_str(&format!("  {:>6.1}%  {}\n", l.utilisation * 100.0, l.link));
    }
    s
}
