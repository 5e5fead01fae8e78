//! `topoccl bench`: collective performance in the nccl-tests layout.
//!
//! The flags are nccl-tests' (`-b -e -f -n -w -c -a -z -d -o -r`); the rank count is
//! `-N`/`--ranks` (`-np` as in mpirun). For each size from `-b` to `-e` (multiplied by
//! `-f`), every rank runs `-w` calls, then times `-n` calls out of place and in place; the
//! time reported is, by `-a`, rank 0's, the average over ranks (default, as nccl-tests),
//! the fastest or the slowest rank's mean time. algbw = size / time; busbw = algbw × the
//! collective's bus factor (`Collective::bus_factor`, shared with `plan compare` and the
//! simulator): 2(n−1)/n for all-reduce, (n−1)/n for all-gather, reduce-scatter,
//! all-to-all(-v), gather and scatter, 1 for broadcast and reduce. `size` is the bytes of
//! the larger user buffer. With `-c 1` (the default), one more call of each placement
//! runs on fresh data and every element is compared with the reference executor
//! (`#wrong` counts the elements that differ, summed over ranks). With `--time-split`,
//! `--iters` more out-of-place calls are measured part by part (copy, reduce, wait,
//! other: `topoccl::TimeSplit`) and each rank's split is printed under the row.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use half::{bf16, f16};
use serde::Serialize;
use topoccl::{Communicator, Config, Dtype, LaunchInfo, TimeSplit, TransportKind};
use topoccl_plan::exec::execute;
use topoccl_plan::exec::kernels::Element;
use topoccl_plan::{Collective, CollectiveSpec, DType, Placement, ReduceOp};

use crate::job;
use crate::run_cmd::parse_timeout;
use crate::units::parse_bytes;
use crate::CliError;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A collective (allreduce, allgather, reducescatter, broadcast, reduce, alltoall,
    /// gather, scatter) or `all`.
    collective: String,
    /// Ranks to launch (ignored under a launcher); `-np N` works too, as in mpirun.
    #[arg(short = 'N', long, default_value_t = 4)]
    ranks: u32,
    /// Smallest size (bytes; K, M, G suffixes are binary).
    #[arg(short = 'b', long, default_value = "8")]
    minbytes: String,
    /// Largest size.
    #[arg(short = 'e', long, default_value = "64M")]
    maxbytes: String,
    /// Size multiplier between rows.
    #[arg(short = 'f', long, default_value_t = 2)]
    factor: u64,
    /// Data type: f32 (float), f64, f16, bf16, i32, i64, u8.
    #[arg(short = 'd', long, default_value = "f32")]
    dtype: String,
    /// Reduction: sum, prod, min, max, avg.
    #[arg(short = 'o', long, default_value = "sum")]
    op: String,
    /// Root of rooted collectives.
    #[arg(short = 'r', long, default_value_t = 0)]
    root: u32,
    /// Force an algorithm (as TOPOCCL_ALGO does); default: chosen by cost per size.
    #[arg(long)]
    algo: Option<String>,
    #[command(flatten)]
    watch: crate::job_metrics::WatchArgs,
    /// Compress the all-reduce (f32 only) with this codec and time it beside the plain
    /// one: fp16, bf16, int8, int4, 1bit, topk:R, randk:R, rp:R, powersgd:RANK.
    #[arg(long, value_name = "CODEC")]
    compress: Option<String>,
    /// With --compress: error feedback (a residual per tensor, decay 0.8), 1 or 0; 1-bit
    /// always has it.
    #[arg(long, value_name = "0|1", default_value = "1", value_parser = parse_switch)]
    feedback: bool,
    /// Timed calls per size and placement (nccl-tests' -n).
    #[arg(short = 'n', long, default_value_t = 20)]
    iters: u32,
    /// Untimed calls first (nccl-tests' -w).
    #[arg(
        short = 'w',
        long = "warmup_iters",
        visible_alias = "warmup",
        default_value_t = 5
    )]
    warmup: u32,
    /// Check every result against the reference executor: 1 (the default, as in
    /// nccl-tests) or 0; `--check` alone means 1.
    #[arg(short = 'c', long, value_name = "0|1", default_value = "1", num_args = 0..=1,
          default_missing_value = "1", value_parser = parse_switch)]
    check: bool,
    /// Which time a row reports (nccl-tests' -a): 0 rank 0's, 1 the average over ranks,
    /// 2 the fastest rank's, 3 the slowest rank's; each rank's own is its mean over the
    /// timed calls.
    #[arg(short = 'a', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=3))]
    average: u8,
    /// Blocking calls (nccl-tests' -z): topoccl's calls always complete before the next
    /// starts, so 0 and 1 run alike.
    #[arg(short = 'z', long, value_name = "0|1", default_value = "1", value_parser = parse_switch)]
    blocking: bool,
    /// nccl-tests' GPUs per thread: refused (ranks are processes here; use -N).
    #[arg(short = 'g', hide = true)]
    gpus: Option<String>,
    /// nccl-tests' threads per process: refused (ranks are processes here; use -N).
    #[arg(short = 't', hide = true)]
    threads: Option<String>,
    /// Also show where each rank's time goes (copy, reduce, wait, other) under every row,
    /// from `--iters` more out-of-place calls measured apart from the timed ones.
    #[arg(long)]
    time_split: bool,
    /// Also write the rows as JSON to this file (rank 0).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Stop the whole job after this long.
    #[arg(long, default_value = "30m")]
    timeout: String,
}

const ALL: [Collective; 8] = [
    Collective::AllReduce,
    Collective::AllGather,
    Collective::ReduceScatter,
    Collective::Broadcast,
    Collective::Reduce,
    Collective::AllToAll,
    Collective::Gather,
    Collective::Scatter,
];

fn nccl_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F64 => "double",
        DType::F16 => "half",
        DType::BF16 => "bfloat16",
        DType::I32 => "int32",
        DType::I64 => "int64",
        DType::U8 => "uint8",
    }
}

/// One placement's measurement.
#[derive(Clone, Copy, Debug, Serialize)]
struct Timing {
    time_us: f64,
    algbw_gbps: f64,
    busbw_gbps: f64,
    /// `None` without `--check`.
    wrong: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Row {
    collective: Collective,
    size_bytes: u64,
    count: u64,
    dtype: DType,
    op: ReduceOp,
    root: i64,
    algorithm: String,
    ranks: u32,
    out_of_place: Timing,
    in_place: Option<Timing>,
    /// With `--split`: each rank's time per out-of-place call, by part.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    split: Vec<RankSplit>,
}

/// One rank's [`TimeSplit`] per call, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
struct RankSplit {
    rank: u32,
    copy_us: f64,
    reduce_us: f64,
    wait_us: f64,
    other_us: f64,
}

impl RankSplit {
    const FIELDS: usize = 4;

    fn of(rank: u32, s: &TimeSplit) -> RankSplit {
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / s.calls.max(1) as f64;
        RankSplit {
            rank,
            copy_us: per(s.copy),
            reduce_us: per(s.reduce),
            wait_us: per(s.wait),
            other_us: per(s.other()),
        }
    }

    fn to_array(self) -> [f64; Self::FIELDS] {
        [self.copy_us, self.reduce_us, self.wait_us, self.other_us]
    }

    fn from_array(rank: u32, a: &[f64]) -> RankSplit {
        RankSplit {
            rank,
            copy_us: a[0],
            reduce_us: a[1],
            wait_us: a[2],
            other_us: a[3],
        }
    }

    /// `#   split rank 0: copy 12.0 us (40%), ...`, a comment under the row.
    fn line(&self) -> String {
        let parts = self.to_array();
        let total: f64 = parts.iter().sum();
        let named: Vec<String> = ["copy", "reduce", "wait", "other"]
            .iter()
            .zip(parts)
            .map(|(name, us)| {
                format!(
                    "{name} {us:.1} us ({:.0}%)",
                    100.0 * us / total.max(f64::MIN_POSITIVE)
                )
            })
            .collect();
        format!(
            "#   split rank {} per call: {}",
            self.rank,
            named.join(", ")
        )
    }
}

/// The spec for a row of `bytes` (the larger user buffer), rounded down to what the
/// collective can split evenly.
pub(crate) fn spec_for(
    c: Collective,
    world: u32,
    bytes: u64,
    dtype: DType,
    op: ReduceOp,
    root: u32,
) -> CollectiveSpec {
    CollectiveSpec::of_size(c, world, bytes, dtype)
        .with_op(op)
        .with_root(root)
}

/// Deterministic data: every rank can compute every rank's input for `--check`.
fn data<T: Element>(spec: &CollectiveSpec, rank: u32, salt: u64) -> Vec<T> {
    let n = spec.input_len(rank) as usize;
    (0..n)
        .map(|i| {
            let x = (i as u64)
                .wrapping_mul(2654435761)
                .wrapping_add(rank as u64 * 97 + salt)
                % 251;
            T::from_i64(x as i64 - 125)
        })
        .collect()
}

struct Ctx<'a> {
    comm: &'a mut Communicator,
    args: &'a BenchArgs,
}

impl Ctx<'_> {
    fn time<T: Dtype>(
        &mut self,
        spec: &CollectiveSpec,
        placement: Placement,
    ) -> Result<f64, CliError> {
        let plan = self.comm.plan_for(spec)?;
        time_plan::<T>(
            self.comm,
            &plan,
            placement,
            self.args.warmup,
            self.args.iters,
        )
    }

    /// Every rank's split of `--iters` out-of-place calls (after one warm-up call).
    fn split<T: Dtype>(&mut self, spec: &CollectiveSpec) -> Result<Vec<RankSplit>, CliError> {
        let plan = self.comm.plan_for(spec)?;
        let (_, split) = timed_calls::<T>(
            self.comm,
            &plan,
            Placement::OutOfPlace,
            1,
            self.args.iters,
            true,
        )?;
        let mine = RankSplit::of(self.comm.rank(), &split.unwrap_or_default()).to_array();
        let mut all = vec![0.0f64; mine.len() * self.comm.world() as usize];
        self.comm.all_gather(&mine, &mut all)?;
        Ok(all
            .chunks(RankSplit::FIELDS)
            .enumerate()
            .map(|(r, a)| RankSplit::from_array(r as u32, a))
            .collect())
    }

    /// Elements of this rank's result that differ from the reference executor's.
    fn wrong<T: Dtype>(
        &mut self,
        spec: &CollectiveSpec,
        placement: Placement,
    ) -> Result<u64, CliError> {
        let rank = self.comm.rank();
        let plan = self.comm.plan_for(spec)?;
        let inputs: Vec<Vec<T>> = (0..spec.world).map(|r| data(spec, r, 1)).collect();
        let want = execute(&plan, placement, &inputs)
            .map_err(|e| CliError::failed(format!("reference executor: {e}")))?;
        let input = &inputs[rank as usize];
        let got = match placement {
            Placement::OutOfPlace => {
                let mut out = vec![T::default(); spec.output_len(rank) as usize];
                self.comm.run_plan(&plan, input, &mut out)?;
                out
            }
            Placement::InPlace => {
                let mut buf = in_place_buffer(spec, rank, input);
                self.comm.run_plan_in_place(&plan, &mut buf)?;
                match spec.in_place_alias(rank) {
                    Some(a) if a.inner == topoccl_plan::Buf::Output => {
                        let at = a.offset as usize;
                        buf[at..at + spec.output_len(rank) as usize].to_vec()
                    }
                    _ => {
                        buf.truncate(spec.output_len(rank) as usize);
                        buf
                    }
                }
            }
        };
        Ok(got
            .iter()
            .zip(&want[rank as usize])
            .filter(|(a, b)| bytemuck::bytes_of(*a) != bytemuck::bytes_of(*b))
            .count() as u64
            + (got.len() as u64).abs_diff(want[rank as usize].len() as u64))
    }

    fn row<T: Dtype>(&mut self, spec: &CollectiveSpec) -> Result<Row, CliError> {
        let p = self.comm.world();
        let with_in_place = spec.collective.has_in_place();
        let mut times = vec![self.time::<T>(spec, Placement::OutOfPlace)?];
        if with_in_place {
            times.push(self.time::<T>(spec, Placement::InPlace)?);
        }
        let mut wrong = vec![0.0f64; times.len()];
        if self.args.check {
            wrong[0] = self.wrong::<T>(spec, Placement::OutOfPlace)? as f64;
            if with_in_place {
                wrong[1] = self.wrong::<T>(spec, Placement::InPlace)? as f64;
            }
        }
        // Every rank's times, combined as -a says; wrong elements summed.
        let mut all = vec![0.0f64; times.len() * p as usize];
        self.comm.all_gather(&times, &mut all)?;
        let reported: Vec<f64> = (0..times.len())
            .map(|i| {
                let per_rank: Vec<f64> = all.chunks(times.len()).map(|t| t[i]).collect();
                combine(self.args.average, &per_rank)
            })
            .collect();
        let mut total_wrong = vec![0.0f64; wrong.len()];
        self.comm
            .all_reduce(&wrong, &mut total_wrong, ReduceOp::Sum)?;
        let bytes = spec.size_bytes();
        let timing = |i: usize| {
            let bw = spec.bandwidth(reported[i]);
            Timing {
                time_us: reported[i] * 1e6,
                algbw_gbps: bw.algbw_gbps,
                busbw_gbps: bw.busbw_gbps,
                wrong: self.args.check.then_some(total_wrong[i] as u64),
            }
        };
        let split = if self.args.time_split {
            self.split::<T>(spec)?
        } else {
            Vec::new()
        };
        let plan = self.comm.plan_for(spec)?;
        Ok(Row {
            collective: spec.collective,
            size_bytes: bytes,
            count: bytes / spec.dtype.size() as u64,
            dtype: spec.dtype,
            op: spec.op,
            root: if spec.collective.rooted() {
                spec.root as i64
            } else {
                -1
            },
            algorithm: describe_plan(&plan),
            ranks: p,
            out_of_place: timing(0),
            in_place: with_in_place.then(|| timing(1)),
            split,
        })
    }
}

/// This rank's mean time of `iters` calls of `plan` (at least one) after `warmup` untimed
/// ones and a barrier, so that every rank starts the timed calls together.
pub(crate) fn time_plan<T: Dtype>(
    comm: &mut Communicator,
    plan: &topoccl_plan::Plan,
    placement: Placement,
    warmup: u32,
    iters: u32,
) -> Result<f64, CliError> {
    timed_calls::<T>(comm, plan, placement, warmup, iters, false).map(|(t, _)| t)
}

/// [`time_plan`], and with `split` where the timed calls' time went.
fn timed_calls<T: Dtype>(
    comm: &mut Communicator,
    plan: &topoccl_plan::Plan,
    placement: Placement,
    warmup: u32,
    iters: u32,
    split: bool,
) -> Result<(f64, Option<TimeSplit>), CliError> {
    let spec = plan.spec();
    let rank = comm.rank();
    let input: Vec<T> = data(spec, rank, 0);
    let mut output = vec![T::default(); spec.output_len(rank) as usize];
    let mut inplace = in_place_buffer(spec, rank, &input);
    let mut call = |comm: &mut Communicator| -> topoccl::Result<()> {
        match placement {
            Placement::OutOfPlace => comm.run_plan(plan, &input, &mut output),
            Placement::InPlace => comm.run_plan_in_place(plan, &mut inplace),
        }
    };
    for _ in 0..warmup {
        call(comm)?;
    }
    comm.barrier()?;
    comm.measure_time_split(split);
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        call(comm)?;
    }
    let elapsed = t.elapsed().as_secs_f64() / iters.max(1) as f64;
    let measured = comm.take_time_split();
    comm.measure_time_split(false);
    Ok((elapsed, measured))
}

fn describe_plan(plan: &topoccl_plan::Plan) -> String {
    let p = plan.params();
    let mut s = plan.algorithm().label();
    if p.chunks > 1 {
        s.push_str(&format!("/{}", p.chunks));
    }
    if p.channels > 1 {
        s.push_str(&format!("x{}", p.channels));
    }
    s
}

/// The single user buffer of an in-place call, with this rank's input where the
/// collective's in-place layout puts it.
fn in_place_buffer<T: Dtype>(spec: &CollectiveSpec, rank: u32, input: &[T]) -> Vec<T> {
    match spec.in_place_alias(rank) {
        Some(a) if a.inner == topoccl_plan::Buf::Input => {
            let mut buf = vec![T::default(); spec.output_len(rank) as usize];
            buf[a.offset as usize..a.offset as usize + input.len()].copy_from_slice(input);
            buf
        }
        _ => {
            let mut buf = input.to_vec();
            buf.resize(
                spec.input_len(rank).max(spec.output_len(rank)) as usize,
                T::default(),
            );
            buf
        }
    }
}

fn fmt_timing(t: &Option<Timing>) -> String {
    match t {
        None => format!("{:>10} {:>7} {:>7} {:>6}", "-", "-", "-", "-"),
        Some(t) => format!(
            "{:>10.2} {:>7.2} {:>7.2} {:>6}",
            t.time_us,
            t.algbw_gbps,
            t.busbw_gbps,
            t.wrong
                .map(|w| w.to_string())
                .unwrap_or_else(|| "N/A".into())
        ),
    }
}

/// The header line saying which transport carries each class of peers (ranks on one host,
/// ranks on different hosts), job-wide: every rank's view is gathered, so a pair that fell
/// back from shared memory to TCP shows.
fn transport_line(comm: &mut Communicator) -> Result<String, CliError> {
    let (rank, world) = (comm.rank(), comm.world());
    let mine: Vec<i32> = comm
        .transports()
        .iter()
        .enumerate()
        .map(|(p, k)| match k {
            _ if p as u32 == rank => -1,
            TransportKind::Tcp => 0,
            TransportKind::Shm => 1,
        })
        .collect();
    let mut all = vec![0i32; (world * world) as usize];
    comm.all_gather(&mine, &mut all)
        .map_err(|e| CliError::failed(format!("gathering the transports: {e}")))?;
    let hosts: Vec<&str> = (0..world).map(|r| comm.host_of(r).unwrap_or("?")).collect();
    let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
    for (r, h) in hosts.iter().enumerate() {
        match groups.iter_mut().find(|g| g.0 == *h) {
            Some(g) => g.1.push(r as u32),
            None => groups.push((h, vec![r as u32])),
        }
    }
    // [same host, other hosts] × [tcp, shm] pair counts.
    let mut pairs = [[0u64; 2]; 2];
    for a in 0..world as usize {
        for b in 0..world as usize {
            let k = all[a * world as usize + b];
            if a != b && k >= 0 {
                pairs[usize::from(hosts[a] != hosts[b])][k as usize] += 1;
            }
        }
    }
    let class = |c: [u64; 2]| -> String {
        let named: Vec<String> = [TransportKind::Tcp, TransportKind::Shm]
            .iter()
            .zip(c)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{} ({n} directed pairs)", k.name()))
            .collect();
        if named.is_empty() {
            "none".into()
        } else {
            named.join(", ")
        }
    };
    let layout: Vec<String> = groups
        .iter()
        .map(|(_, ranks)| format!("[{}]", rank_list(ranks)))
        .collect();
    let mut line = format!(
        "# transport: same host {}; other hosts {}; {} host(s): {}",
        class(pairs[0]),
        class(pairs[1]),
        groups.len(),
        layout.join(" ")
    );
    for (peer, why) in comm.transport_fallbacks() {
        line += &format!("\n# transport: rank {rank} -> rank {peer} uses tcp: {why}");
    }
    Ok(line)
}

/// Ranks as ranges: 0-3,6,8-9.
fn rank_list(ranks: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ranks[i].to_string()
        } else {
            format!("{}-{}", ranks[i], ranks[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn print_header(c: Collective, world: u32, args: &BenchArgs, source: &str) {
    println!(
        "# topoccl bench {c}: {world} ranks, iters {} warmup {}, time: {}, check {}, \
         algorithm {}",
        args.iters,
        args.warmup,
        average_name(args.average),
        u8::from(args.check),
        source
    );
    if !c.has_in_place() {
        println!("# in-place: {c} has no in-place form, so its in-place columns are -");
    }
    println!("#{:>52}   {:^32}   {:^32}", "", "out-of-place", "in-place");
    println!(
        "#{:>11} {:>12} {:>8} {:>6} {:>6} {:>10} {:>7} {:>7} {:>6} {:>10} {:>7} {:>7} {:>6}  algo",
        "size",
        "count",
        "type",
        "redop",
        "root",
        "time",
        "algbw",
        "busbw",
        "#wrong",
        "time",
        "algbw",
        "busbw",
        "#wrong"
    );
    println!(
        "#{:>11} {:>12} {:>8} {:>6} {:>6} {:>10} {:>7} {:>7} {:>6} {:>10} {:>7} {:>7} {:>6}",
        "(B)",
        "(elements)",
        "",
        "",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        ""
    );
}

/// `0` or `1` (nccl-tests' switches), or a word for them.
fn parse_switch(v: &str) -> Result<bool, String> {
    match v {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(format!("'{v}' is not 0 or 1")),
    }
}

/// How `-a` combines the ranks' times, as nccl-tests does.
fn combine(average: u8, times: &[f64]) -> f64 {
    match average {
        0 => times[0],
        2 => times.iter().copied().fold(f64::INFINITY, f64::min),
        3 => times.iter().copied().fold(0.0, f64::max),
        _ => times.iter().sum::<f64>() / times.len() as f64,
    }
}

fn average_name(average: u8) -> &'static str {
    match average {
        0 => "rank 0's mean",
        2 => "the fastest rank's mean",
        3 => "the slowest rank's mean",
        _ => "the ranks' means averaged",
    }
}

/// Where the algorithm of each row comes from, for the header: the settings the
/// communicator was made with (`--algo` having replaced `TOPOCCL_ALGO`).
fn algorithm_source(cfg: &Config, from_flag: bool) -> String {
    let otherwise = match &cfg.algo {
        Some(a) if from_flag => format!("{a} (--algo)"),
        Some(a) => format!("{a} (TOPOCCL_ALGO)"),
        None => "chosen by cost per size".into(),
    };
    match &cfg.rules {
        Some(r) => {
            let r = if cfg.rules_inline() { "inline JSON" } else { r };
            format!("from TOPOCCL_RULES ({r}) where a rule matches, else {otherwise}")
        }
        None => otherwise,
    }
}

/// The sizes of a sweep from `-b` to `-e` by `-f`.
pub(crate) fn size_list(min: &str, max: &str, factor: u64) -> Result<Vec<u64>, CliError> {
    let min = parse_bytes(min).map_err(|e| CliError::usage(format!("-b: {e}")))?;
    let max = parse_bytes(max).map_err(|e| CliError::usage(format!("-e: {e}")))?;
    if min > max || factor < 2 {
        return Err(CliError::usage(format!(
            "sizes go from -b {min} to -e {max} by -f {factor}: need -b ≤ -e and -f ≥ 2"
        )));
    }
    let mut sizes = Vec::new();
    let mut b = min.max(1);
    while b <= max {
        sizes.push(b);
        b = match b.checked_mul(factor) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(sizes)
}

pub fn run(args: BenchArgs) -> Result<ExitCode, CliError> {
    let collectives: Vec<Collective> = if args.collective == "all" {
        ALL.to_vec()
    } else {
        let measured = || format!("{} or all", ALL.map(|c| c.name()).join(", "));
        let c: Collective = args.collective.parse().map_err(|_| {
            CliError::usage(format!(
                "unknown collective '{}'; bench measures {}",
                args.collective,
                measured()
            ))
        })?;
        if matches!(c, Collective::Barrier | Collective::AllToAllV) {
            // All-to-all-v's sizes are a matrix, not one size per row of the table.
            return Err(CliError::usage(format!(
                "bench times one buffer size per row, which {c} does not have; it measures {}",
                measured()
            )));
        }
        vec![c]
    };
    for (flag, given) in [
        ("-g (GPUs per thread)", &args.gpus),
        ("-t (threads per process)", &args.threads),
    ] {
        if given.is_some() {
            return Err(CliError::usage(format!(
                "{flag} is an nccl-tests option for GPUs; topoccl's ranks are processes: \
                 give their number with -N (or -np)"
            )));
        }
    }
    let dtype: DType = args.dtype.parse()?;
    let op: ReduceOp = args.op.parse()?;
    let sizes = size_list(&args.minbytes, &args.maxbytes, args.factor)?;
    if let Some(codec) = &args.compress {
        if collectives != [Collective::AllReduce] || dtype != DType::F32 || op != ReduceOp::Sum {
            return Err(CliError::usage(
                "--compress times allreduce of f32 with sum (-d f32 -o sum)".to_string(),
            ));
        }
        topoccl::compressed::Compressor::new(codec, args.feedback)
            .map_err(|e| CliError::usage(format!("--compress {codec}: {e}")))?;
    }
    if !job::in_job() {
        let limit = parse_timeout(&args.timeout).map_err(CliError::usage)?;
        // What can be checked before any rank starts is.
        if args.root >= args.ranks {
            return Err(CliError::usage(format!(
                "-r {} is out of range for -N {} ranks (roots are 0 to {})",
                args.root,
                args.ranks,
                args.ranks.saturating_sub(1)
            )));
        }
        // Rank 0's stderr is a pipe here: the launching process draws the bar.
        let _bar = crate::progress::JobBar::start("bench");
        return job::relaunch(args.ranks, Some(limit), Some(&args.watch));
    }
    let info = LaunchInfo::from_env().map_err(|e| CliError::failed(e.to_string()))?;
    let mut cfg = Config::from_env().map_err(|e| CliError::usage(e.to_string()))?;
    if let Some(a) = &args.algo {
        cfg.algo = Some(a.clone());
    }
    let source = algorithm_source(&cfg, args.algo.is_some());
    let started = Instant::now();
    let mut comm = Communicator::init(info, cfg)
        .map_err(|e| CliError::failed(format!("cannot create the communicator: {e}")))?;
    let mut init_s = [started.elapsed().as_secs_f64()];
    comm.all_reduce_in_place(&mut init_s, ReduceOp::Max)
        .map_err(|e| CliError::failed(e.to_string()))?;
    let world = comm.world();
    if comm.rank() == 0 {
        let net = comm.network();
        println!(
            "# communicator of {world} ranks created in {:.1} ms (slowest rank: rendezvous, connections, probe); \
             probe: alpha {:.1} us, bandwidth {:.2} GB/s",
            init_s[0] * 1e3,
            net.alpha_s * 1e6,
            net.bandwidth_bytes_per_s / 1e9
        );
    }
    let transports = transport_line(&mut comm)?;
    if comm.rank() == 0 {
        println!("{transports}");
    }
    if args.root >= world {
        return Err(CliError::usage(format!(
            "root {} is out of range for {world} ranks",
            args.root
        )));
    }
    if let Some(codec) = &args.compress {
        let rows = crate::bench_compress::sweep(
            &mut comm,
            codec,
            args.feedback,
            &sizes,
            args.warmup,
            args.iters,
        )?;
        if let (0, Some(path)) = (comm.rank(), &args.json) {
            let text = serde_json::to_string_pretty(&rows).expect("rows serialise");
            std::fs::write(path, text)
                .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let steps = (collectives.len() * sizes.len()) as u64;
    let progress = (comm.rank() == 0 && std::io::stderr().is_terminal())
        .then(|| indicatif::ProgressBar::new(steps).with_message("bench"));
    let mut report = crate::progress::RankReport::from_env(comm.rank());
    let mut step = 0u64;
    let mut rows = Vec::new();
    for c in collectives {
        if comm.rank() == 0 {
            print_header(c, world, &args, &source);
        }
        let mut last = None;
        for &bytes in &sizes {
            let spec = spec_for(c, world, bytes, dtype, op, args.root);
            let size = spec.size_bytes();
            if let Some(p) = &progress {
                p.inc(1);
            }
            report.report(step, steps, &format!("{c} {bytes} B"));
            step += 1;
            if last == Some(size) {
                continue;
            }
            last = Some(size);
            let mut ctx = Ctx {
                comm: &mut comm,
                args: &args,
            };
            let row = match dtype {
                DType::F32 => ctx.row::<f32>(&spec),
                DType::F64 => ctx.row::<f64>(&spec),
                DType::F16 => ctx.row::<f16>(&spec),
                DType::BF16 => ctx.row::<bf16>(&spec),
                DType::I32 => ctx.row::<i32>(&spec),
                DType::I64 => ctx.row::<i64>(&spec),
                DType::U8 => ctx.row::<u8>(&spec),
            }?;
            if comm.rank() == 0 {
                let line = format!(
                    " {:>11} {:>12} {:>8} {:>6} {:>6} {} {}  {}",
                    row.size_bytes,
                    row.count,
                    nccl_type(row.dtype),
                    if row.collective.reduces() {
                        row.op.name()
                    } else {
                        "none"
                    },
                    row.root,
                    fmt_timing(&Some(row.out_of_place)),
                    fmt_timing(&row.in_place),
                    row.algorithm
                );
                let mut text = line;
                for s in &row.split {
                    text += &format!("\n{}", s.line());
                }
                match &progress {
                    Some(p) => p.println(text),
                    None => println!("{text}"),
                }
            }
            rows.push(row);
        }
    }
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    report.finish(steps);
    let wrong: u64 = rows
        .iter()
        .flat_map(|r| [Some(r.out_of_place), r.in_place])
        .flatten()
        .filter_map(|t| t.wrong)
        .sum();
    if comm.rank() == 0 {
        let busbw: Vec<f64> = rows
            .iter()
            .flat_map(|r| [Some(r.out_of_place), r.in_place])
            .flatten()
            .map(|t| t.busbw_gbps)
            .collect();
        if args.check {
            println!("# {} wrong elements in total", wrong);
        }
        if !busbw.is_empty() {
            println!(
                "# Avg bus bandwidth    : {:.4} GB/s",
                busbw.iter().sum::<f64>() / busbw.len() as f64
            );
        }
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&rows).expect("rows serialise");
            std::fs::write(path, text)
                .map_err(|e| CliError::failed(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    Ok(if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

impl From<topoccl::Error> for CliError {
    fn from(e: topoccl::Error) -> Self {
        CliError::failed(e.to_string())
    }
}
