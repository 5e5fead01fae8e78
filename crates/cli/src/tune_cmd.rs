//! `topoccl tune`: grid-searches algorithm × pipeline pieces × channels per message size
//! and writes the winners as a `TOPOCCL_RULES` table (a JSON list of rules, consecutive
//! sizes with the same choice merged, for exactly this world size).
//!
//! With `--topo FILE` the candidates of `plan compare` are priced on that topology
//! (nothing runs); without it, a job of `-n` ranks times the flat algorithms on the live
//! communicator, each size's time being the slowest rank's mean.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use half::{bf16, f16};
use topoccl::select::Rule;
use topoccl::{Communicator, Config, LaunchInfo};
use topoccl_plan::{
    build, Collective, CollectiveSpec, DType, Placement, Plan, PlanParams, ReduceOp,
};
use topoccl_topo::{plans, Endpoints, Pricer, Topology};

use crate::bench_cmd::{size_list, spec_for, time_plan};
use crate::job;
use crate::progress::{self, JobBar, RankReport};
use crate::run_cmd::parse_timeout;
use crate::CliError;

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// Topology file: predict on it instead of measuring a job.
    #[arg(long)]
    topo: Option<PathBuf>,
    /// Ranks of the measuring job (ignored under a launcher and with --topo).
    #[arg(short = 'n', long, default_value_t = 4)]
    ranks: u32,
    /// Collectives to tune, comma-separated.
    #[arg(
        long = "collectives",
        visible_alias = "collective",
        value_name = "COLLECTIVES",
        default_value = "allreduce"
    )]
    collective: String,
    /// Smallest size (bytes; K, M, G suffixes are binary).
    #[arg(short = 'b', long, default_value = "8")]
    minbytes: String,
    /// Largest size.
    #[arg(short = 'e', long, default_value = "64M")]
    maxbytes: String,
    /// Size multiplier between rows.
    #[arg(short = 'f', long, default_value_t = 4)]
    factor: u64,
    /// Data type: f32, f64, f16, bf16, i32, i64, u8.
    #[arg(short = 'd', long, default_value = "f32")]
    dtype: String,
    /// Where to write the table (load it with TOPOCCL_RULES=FILE).
    #[arg(short = 'o', long)]
    output: PathBuf,
    /// Timed calls per candidate (measured tuning).
    #[arg(long, default_value_t = 5)]
    iters: u32,
    /// Untimed calls per candidate first.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Stop the whole job after this long.
    #[arg(long, default_value = "30m")]
    timeout: String,
}

/// Pipeline piece sizes tried: none, 1 MiB, and 256 KiB for larger shares.
const BIG_PIECE: u64 = 1 << 20;
const SMALL_PIECE: u64 = 256 << 10;
const CHANNELS: [u16; 3] = [1, 2, 4];

/// One candidate's time.
#[derive(Clone, Debug)]
struct Trial {
    algo: String,
    piece: Option<u64>,
    channels: u16,
    time_s: f64,
}

impl Trial {
    fn same_choice(&self, o: &Trial) -> bool {
        (&self.algo, self.piece, self.channels) == (&o.algo, o.piece, o.channels)
    }

    fn describe(&self) -> String {
        let piece = self
            .piece
            .map_or_else(|| "whole".to_string(), |p| format!("{} KiB", p >> 10));
        format!("{} / {piece} / {} ch", self.algo, self.channels)
    }
}

/// The winner of one size, and the best plan of another algorithm.
struct Pick {
    bytes: u64,
    best: Trial,
    runner_up: Option<Trial>,
}

fn pick(bytes: u64, mut trials: Vec<Trial>) -> Option<Pick> {
    trials.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
    let best = trials.first()?.clone();
    let runner_up = trials.iter().find(|t| t.algo != best.algo).cloned();
    Some(Pick {
        bytes,
        best,
        runner_up,
    })
}

/// The parameter grid for `spec`: pieces × channels (up to `max_channels`), duplicates
/// (pieces larger than the message) dropped.
fn grid(spec: &CollectiveSpec, max_channels: u16) -> Vec<(Option<u64>, u16, PlanParams)> {
    let share = spec.size_bytes() / spec.world.max(1) as u64;
    let mut pieces = vec![None, Some(BIG_PIECE)];
    if share > 2 * SMALL_PIECE {
        pieces.push(Some(SMALL_PIECE));
    }
    let mut out: Vec<(Option<u64>, u16, PlanParams)> = Vec::new();
    for ch in CHANNELS.into_iter().filter(|&c| c <= max_channels) {
        for piece in &pieces {
            let mut params = PlanParams::default().with_channels(ch);
            if let Some(p) = piece {
                params = params.with_chunk_bytes(spec, *p);
            }
            if !out.iter().any(|(_, _, q)| *q == params) {
                out.push((*piece, ch, params));
            }
        }
    }
    out
}

/// Consecutive sizes with the same choice become one rule: the first open from 0, the
/// last open-ended, each up to (excluding) the next rule's first size.
fn rules(c: Collective, world: u32, picks: &[Pick]) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut last: Option<&Trial> = None;
    for p in picks {
        if last.is_some_and(|t| t.same_choice(&p.best)) {
            continue;
        }
        if let Some(prev) = out.last_mut() {
            prev.max_bytes = Some(p.bytes);
        }
        out.push(Rule {
            collective: c.name().to_string(),
            min_bytes: if out.is_empty() { 0 } else { p.bytes },
            max_bytes: None,
            min_ranks: Some(world),
            max_ranks: Some(world),
            algo: p.best.algo.clone(),
            chunk_bytes: p.best.piece,
            channels: (p.best.channels > 1).then_some(p.best.channels),
        });
        last = Some(&p.best);
    }
    out
}

fn print_summary(c: Collective, world: u32, how: &str, picks: &[Pick]) {
    println!("# topoccl tune {c}: {world} ranks, {how} time of each candidate");
    println!(
        "#{:>11}  {:<32} {:>12}  {:<32} {:>8}",
        "size(B)", "chosen (algo / pieces / channels)", "time(us)", "runner-up", "slower"
    );
    for p in picks {
        let (other, slower) = match &p.runner_up {
            Some(r) => (
                r.describe(),
                format!("{:+.1}%", (r.time_s / p.best.time_s - 1.0) * 100.0),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        println!(
            " {:>11}  {:<32} {:>12.2}  {:<32} {:>8}",
            p.bytes,
            p.best.describe(),
            p.best.time_s * 1e6,
            other,
            slower
        );
    }
}

fn write_table(path: &PathBuf, rules: &[Rule]) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(rules).expect("rules serialise");
    std::fs::write(path, text + "\n")
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
    println!(
        "# {} written to {} (use: TOPOCCL_RULES={})",
        crate::units::plural(rules.len(), "rule"),
        path.display(),
        path.display()
    );
    Ok(())
}

fn parse_collectives(list: &str) -> Result<Vec<Collective>, CliError> {
    list.split(',')
        .map(str::trim)
        .map(|name| {
            let c: Collective = name
                .parse()
                .map_err(|e| CliError::usage(format!("--collectives: {e}")))?;
            if matches!(c, Collective::Barrier | Collective::AllToAllV) {
                return Err(CliError::usage(format!(
                    "--collectives: {c} has no message size to tune"
                )));
            }
            Ok(c)
        })
        .collect()
}

/// What both modes need, checked before any work.
struct Setup {
    collectives: Vec<Collective>,
    dtype: DType,
    sizes: Vec<u64>,
}

fn setup(args: &TuneArgs) -> Result<Setup, CliError> {
    Ok(Setup {
        collectives: parse_collectives(&args.collective)?,
        dtype: args
            .dtype
            .parse()
            .map_err(|e| CliError::usage(format!("--dtype: {e}")))?,
        sizes: size_list(&args.minbytes, &args.maxbytes, args.factor)?,
    })
}

/// Each distinct call shape of the sweep (small sizes can round to the same buffer).
fn specs(c: Collective, world: u32, s: &Setup) -> Vec<CollectiveSpec> {
    let mut out: Vec<CollectiveSpec> = Vec::new();
    for &b in &s.sizes {
        let spec = spec_for(c, world, b, s.dtype, ReduceOp::Sum, 0);
        let fresh = out
            .last()
            .is_none_or(|l| l.size_bytes() != spec.size_bytes());
        if spec.count > 0 && fresh {
            out.push(spec);
        }
    }
    out
}

pub fn run(args: TuneArgs) -> Result<ExitCode, CliError> {
    let s = setup(&args)?;
    if let Some(path) = &args.topo {
        let t = crate::topo_file::load(path)?;
        return predicted(&t, &s, &args.output).map(|()| ExitCode::SUCCESS);
    }
    if args.ranks == 0 {
        return Err(CliError::usage("-n: need at least one rank"));
    }
    if args.iters == 0 {
        return Err(CliError::usage("--iters: need at least one timed call"));
    }
    if !job::in_job() {
        let limit = parse_timeout(&args.timeout).map_err(CliError::usage)?;
        let _bar = JobBar::start("tune");
        return job::relaunch(args.ranks, Some(limit), None);
    }
    measured(&args, &s).map(|()| ExitCode::SUCCESS)
}

/// Every call shape the sweep tunes, collective by collective.
fn sweep(world: u32, s: &Setup) -> Vec<(Collective, Vec<CollectiveSpec>)> {
    s.collectives
        .iter()
        .map(|&c| (c, specs(c, world, s)))
        .collect()
}

/// `allreduce 1 MiB`: the step a progress bar shows.
fn step_name(spec: &CollectiveSpec) -> String {
    format!(
        "{} {}",
        spec.collective,
        crate::units::human_bytes(spec.size_bytes())
    )
}

fn predicted(t: &Topology, s: &Setup, output: &PathBuf) -> Result<(), CliError> {
    let world = t.world();
    let mut pricer = Pricer::new(t, Endpoints::default());
    let mut table = Vec::new();
    let sweep = sweep(world, s);
    let bar = progress::bar(sweep.iter().map(|(_, v)| v.len() as u64).sum(), "tune");
    for (c, specs) in sweep {
        let mut picks = Vec::new();
        for spec in specs {
            bar.set_message(step_name(&spec));
            let mut trials = Vec::new();
            for (piece, channels, params) in grid(&spec, 4) {
                let cands = plans::candidates(&mut pricer, &spec, params)
                    .map_err(|e| CliError::failed(format!("{}: {e}", t.name())))?;
                trials.extend(cands.into_iter().map(|cand| Trial {
                    algo: cand.label,
                    piece,
                    channels,
                    time_s: cand.cost.total_s,
                }));
            }
            picks.extend(pick(spec.size_bytes(), trials));
            bar.inc(1);
        }
        bar.suspend(|| print_summary(c, world, "predicted", &picks));
        table.extend(rules(c, world, &picks));
    }
    write_table(output, &table)
}

fn measured(args: &TuneArgs, s: &Setup) -> Result<(), CliError> {
    let info = LaunchInfo::from_env().map_err(|e| CliError::failed(e.to_string()))?;
    let cfg = Config::from_env().map_err(|e| CliError::usage(e.to_string()))?;
    // More channels than data streams share streams: no gain to measure.
    let streams = cfg.streams;
    let mut comm = Communicator::init(info, cfg)
        .map_err(|e| CliError::failed(format!("cannot create the communicator: {e}")))?;
    let world = comm.world();
    let mut table = Vec::new();
    let sweep = sweep(world, s);
    let total: u64 = sweep.iter().map(|(_, v)| v.len() as u64).sum();
    let mut report = RankReport::from_env(comm.rank());
    let mut done = 0;
    let mut summaries = Vec::new();
    for (c, specs) in sweep {
        let mut picks = Vec::new();
        for spec in specs {
            report.report(done, total, &step_name(&spec));
            let trials = measure_size(&mut comm, &spec, streams, args)?;
            picks.extend(pick(spec.size_bytes(), trials));
            done += 1;
        }
        table.extend(rules(c, world, &picks));
        summaries.push((c, picks));
    }
    // Printed once the launcher's bar is gone.
    report.finish(total);
    for (c, picks) in summaries {
        if comm.rank() == 0 {
            print_summary(
                c,
                world,
                "measured (slowest rank's mean; flat algorithms only, `tune --topo FILE` \
                 prices topology-aware plans)",
                &picks,
            );
        }
    }
    if comm.rank() == 0 {
        write_table(&args.output, &table)?;
    }
    Ok(())
}

/// Times every flat algorithm × grid point on every rank; the slowest rank's mean of
/// each, agreed by an all-reduce so that every rank picks alike.
fn measure_size(
    comm: &mut Communicator,
    spec: &CollectiveSpec,
    streams: u16,
    args: &TuneArgs,
) -> Result<Vec<Trial>, CliError> {
    let mut trials = Vec::new();
    let mut times = Vec::new();
    for algo in topoccl_plan::algo::flat(spec) {
        for (piece, channels, params) in grid(spec, streams) {
            let Ok(plan) = build(spec.clone(), algo.clone(), params) else {
                continue;
            };
            times.push(time_any(comm, &plan, args.warmup, args.iters)?);
            trials.push(Trial {
                algo: algo.name().to_string(),
                piece,
                channels,
                time_s: 0.0,
            });
        }
    }
    let mut slowest = vec![0.0f64; times.len()];
    comm.all_reduce(&times, &mut slowest, ReduceOp::Max)?;
    for (t, s) in trials.iter_mut().zip(slowest) {
        t.time_s = s;
    }
    Ok(trials)
}

fn time_any(
    comm: &mut Communicator,
    plan: &Plan,
    warmup: u32,
    iters: u32,
) -> Result<f64, CliError> {
    let p = Placement::OutOfPlace;
    match plan.spec().dtype {
        DType::F32 => time_plan::<f32>(comm, plan, p, warmup, iters),
        DType::F64 => time_plan::<f64>(comm, plan, p, warmup, iters),
        DType::F16 => time_plan::<f16>(comm, plan, p, warmup, iters),
        DType::BF16 => time_plan::<bf16>(comm, plan, p, warmup, iters),
        DType::I32 => time_plan::<i32>(comm, plan, p, warmup, iters),
        DType::I64 => time_plan::<i64>(comm, plan, p, warmup, iters),
        DType::U8 => time_plan::<u8>(comm, plan, p, warmup, iters),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(algo: &str, piece: Option<u64>, time_s: f64) -> Trial {
        Trial {
            algo: algo.into(),
            piece,
            channels: 1,
            time_s,
        }
    }

    #[test]
    fn consecutive_equal_choices_merge_into_half_open_ranges() {
        let picks: Vec<Pick> = [(8, "rd"), (32, "rd"), (128, "ring"), (512, "rd")]
            .into_iter()
            .map(|(b, a)| pick(b, vec![trial(a, None, 1.0), trial("tree", None, 2.0)]).unwrap())
            .collect();
        let r = rules(Collective::AllReduce, 4, &picks);
        let ranges: Vec<_> = r
            .iter()
            .map(|r| (r.min_bytes, r.max_bytes, r.algo.as_str()))
            .collect();
        assert_eq!(
            ranges,
            [
                (0, Some(128), "rd"),
                (128, Some(512), "ring"),
                (512, None, "rd")
            ]
        );
        assert!(r
            .iter()
            .all(|r| r.min_ranks == Some(4) && r.max_ranks == Some(4)));
    }

    #[test]
    fn the_runner_up_is_another_algorithm() {
        let p = pick(
            8,
            vec![
                trial("ring", Some(1 << 20), 1.1),
                trial("ring", None, 1.0),
                trial("rd", None, 1.5),
            ],
        )
        .unwrap();
        assert_eq!((p.best.algo.as_str(), p.best.piece), ("ring", None));
        assert_eq!(p.runner_up.unwrap().algo, "rd");
    }
}
