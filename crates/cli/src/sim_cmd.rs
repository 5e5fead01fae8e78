//! `topoccl sim`: run a plan over a topology file in the simulator (flow level, or chunk
//! level as its check), with faults and stragglers, and report where the time goes.

use std::path::PathBuf;

use clap::Args;
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, DType, Plan, PlanParams};
use topoccl_sim::{simulate_with, ChunkParams, Engine, Fault, SimReport};
use topoccl_topo::plans::candidates;
use topoccl_topo::{Endpoints, Pricer, Topology};

use crate::compare_cmd::ModelArgs;
use crate::units::parse_bytes;
use crate::CliError;

#[derive(Args, Debug)]
pub struct SimArgs {
    /// Topology file (TOML or JSON, a [generate] description, or a saved link matrix).
    #[arg(long)]
    topo: PathBuf,
    #[arg(long, default_value = "allreduce")]
    collective: String,
    /// Bytes of the whole buffer (nccl-tests convention): 16M, 1G…
    #[arg(long, default_value = "16M")]
    size: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// auto (the cheapest plan by the topology cost), hier (the cheapest hierarchical
    /// one), an algorithm name (ring, rhd, tree, rd, …) or a candidate label from
    /// `plan compare` (topo-ring, mst-tree, hier(ring|rd)).
    #[arg(long, default_value = "auto")]
    algo: String,
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

pub fn run(args: SimArgs) -> Result<(), CliError> {
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
    let (t, placement) = args.model.load(&args.topo)?;
    println!("# placement: {placement}");
    let spec = CollectiveSpec::of_size(collective, t.world(), bytes, dtype);
    let cap =
        parse_bytes(&args.memory_cap).map_err(|e| CliError::usage(format!("--memory-cap: {e}")))?;
    let (label, plan) = choose(&t, &spec, &args.algo, endpoints)?;
    topoccl_sim::check_memory(&plan, &t, cap).map_err(|e| CliError::failed(e.to_string()))?;
    let run = |faults: &[Fault]| {
        simulate_with(&plan, &t, faults, endpoints, engine)
            .map_err(|e| CliError::failed(format!("{}: {e}", args.topo.display())))
    };
    let report = run(&faults)?;
    print!("{}", table(&label, &report));
    let healthy = if args.what_if { Some(run(&[])?) } else { None };
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

fn write(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    std::fs::write(path, text)
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))
}

/// The plan `--algo` asks for, with its label.
fn choose(
    t: &Topology,
    spec: &CollectiveSpec,
    algo: &str,
    endpoints: Endpoints,
) -> Result<(String, Plan), CliError> {
    let plain = algo
        .parse::<Algorithm>()
        .ok()
        .filter(|a| !matches!(a, Algorithm::ParentTree { .. } | Algorithm::Hierarchical(_)));
    if let Some(a) = plain {
        let plan = build(spec.clone(), a, PlanParams::default())
            .map_err(|e| CliError::usage(format!("--algo {algo}: {e}")))?;
        return Ok((algo.to_string(), plan));
    }
    let mut pricer = Pricer::new(t, endpoints);
    let mut all = candidates(&mut pricer, spec, PlanParams::default())
        .map_err(|e| CliError::failed(e.to_string()))?;
    all.sort_by(|a, b| a.cost.total_s.total_cmp(&b.cost.total_s));
    let pick = all.into_iter().find(|c| match algo {
        "auto" => true,
        "hier" => c.label.starts_with("hier("),
        label => c.label == label,
    });
    pick.map(|c| (c.label, c.plan)).ok_or_else(|| {
        CliError::usage(format!(
            "--algo {algo}: no such plan for {} on this topology; use auto, hier, an \
             algorithm name or a label from `topoccl plan compare`",
            spec.collective
        ))
    })
}

fn table(label: &str, r: &SimReport) -> String {
    let ms = |s: f64| s * 1e3;
    let mut s = format!(
        "# {} of {} B on '{}' ({} ranks), plan {label}, {}\n",
        r.collective, r.bytes, r.topology, r.ranks, r.level
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
    s.push_str(&format!(
        "rounds ({} runs of equal rounds; first 12):\n",
        r.rounds.len()
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
