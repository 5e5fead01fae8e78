//! `topoccl drill`: fault drills against a local job. Each drill starts a fresh job of N
//! ranks (the launcher's job id, secret and store; the ranks spawned here so their pids
//! are at hand) running the checked all-reduce of [`crate::drill_rank`], injects one fault
//! at a seeded moment and target, and judges the outcome:
//!
//! | kind | fault | expected |
//! |---|---|---|
//! | `kill` | SIGKILL a rank | fatal: every survivor's error names it |
//! | `stop` | SIGSTOP a rank (SIGCONT once the others ended) | fatal: errors name it, within `TOPOCCL_TIMEOUT` |
//! | `cut` | `drop@A->B:after=SIZE` | fatal: errors name rank A or B |
//! | `latency` | `delay=50us@A->B:after=SIZE` | the job finishes, correct |
//! | `loss` | `loss=1%@A->B:after=SIZE:seed=S` | the job finishes, correct |
//! | `slow` | `rate=20MB/s@A->B:after=SIZE` | the job finishes, correct |
//!
//! Detection time: fault injected (the signal sent, or the runtime's log line saying the
//! rule started acting) → the first rank's error (fatal kinds) or the first iteration
//! ending after it that took over 1.5× the median before it (the others). Times are read
//! on `CLOCK_MONOTONIC`, shared by the processes of a host. Every drill has a bound
//! ([`DRILL_BOUND`]): past it the job is killed and the drill counts a hang. Links are
//! those of the ring all-reduce the workload runs (`r -> r+1 mod N`): others carry nothing.
//! Limits: at most [`MAX_DRILLS`] drills per run (kinds × times).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::drill_rank::monotonic_ns;
use crate::run_cmd::{host_store, job_env, new_job};
use crate::CliError;

/// The kinds, in order.
pub const KINDS: [&str; 6] = ["kill", "stop", "cut", "latency", "loss", "slow"];
/// Most drills one run does.
pub const MAX_DRILLS: u32 = 10_000;
/// Each call's deadline in the drills' jobs (`TOPOCCL_TIMEOUT`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// The heartbeat's period in the drills' jobs (`TOPOCCL_HEARTBEAT`): a stopped rank is
/// judged hung after 10 silent periods, within the call deadline, so the survivors'
/// errors blame it rather than the ranks waiting on it.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// A drill's own bound: past it the job is killed and the drill is a hang.
pub const DRILL_BOUND: Duration = Duration::from_secs(30);
const COUNT: usize = 16384;
const ITERS: u64 = 120;

#[derive(Args, Debug)]
pub struct DrillArgs {
    /// Kinds to run, comma-separated (kill, stop, cut, latency, loss, slow; default all).
    #[arg(long, value_delimiter = ',')]
    kinds: Vec<String>,
    /// Each kind this many times.
    #[arg(long, default_value_t = 1)]
    times: u32,
    /// Ranks of the job (2 to 64).
    #[arg(long, default_value_t = 4)]
    ranks: u32,
    /// Picks the rank, link and moment of every drill.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Target this rank (kill, stop) instead of a seeded one.
    #[arg(long)]
    rank: Option<u32>,
    /// Target this link `A->B` (cut, latency, loss, slow) instead of a seeded one.
    #[arg(long)]
    link: Option<String>,
    /// Print the drills and summary as JSON.
    #[arg(long)]
    json: bool,
    /// An elastic job (`TOPOCCL_ELASTIC=1`): after a fatal fault the survivors shrink
    /// and finish the run; "recovered" then means they all did, with correct results.
    #[arg(long)]
    elastic: bool,
}

/// One drill's result.
#[derive(Debug, Serialize)]
pub struct Drill {
    pub kind: String,
    /// `rank 2` or `link 1->2`.
    pub target: String,
    pub fatal: bool,
    pub detection_s: Option<f64>,
    /// Ranks the errors named.
    pub culprits: Vec<u32>,
    pub culprit_ok: bool,
    pub recovered: bool,
    /// Elastic jobs: the fewest ranks a survivor went on with after its shrink.
    pub continued_with: Option<u32>,
    /// Elastic jobs: links the survivors found dead and routed around (`A-B`).
    pub routed_around: Vec<String>,
    pub data_lost: bool,
    pub hang: bool,
    pub failed: bool,
}

#[derive(Debug, Serialize)]
struct Summary {
    drills: usize,
    failures: usize,
    hangs: usize,
    wrong_culprit: usize,
    data_lost: usize,
    per_kind: Vec<(String, usize)>,
    median_detection_s: Option<f64>,
    max_detection_s: Option<f64>,
    call_timeout_s: f64,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Checks the arguments before anything starts: kinds, rank, link.
/// A link `from -> to` of the ring.
type Link = (u32, u32);

fn check(args: &DrillArgs) -> Result<(Vec<String>, Option<Link>), CliError> {
    let kinds: Vec<String> = if args.kinds.is_empty() {
        KINDS.iter().map(|k| k.to_string()).collect()
    } else {
        args.kinds.iter().map(|k| k.trim().to_string()).collect()
    };
    for k in &kinds {
        if !KINDS.contains(&k.as_str()) {
            return Err(CliError::usage(format!(
                "--kinds: unknown kind '{k}'; use {}",
                KINDS.join(", ")
            )));
        }
    }
    if !(2..=64).contains(&args.ranks) {
        return Err(CliError::usage(format!(
            "--ranks: {} is out of range; use 2 to 64",
            args.ranks
        )));
    }
    if args.times == 0 || (args.times as u64) * kinds.len() as u64 > u64::from(MAX_DRILLS) {
        return Err(CliError::usage(format!(
            "--times: {} drills per kind; use 1 to {} in all",
            args.times, MAX_DRILLS
        )));
    }
    if let Some(r) = args.rank {
        if r >= args.ranks {
            return Err(CliError::usage(format!(
                "--rank: rank {r} is not in the job; use 0 to {}",
                args.ranks - 1
            )));
        }
    }
    let n = args.ranks;
    let ring = || {
        (0..n)
            .map(|r| format!("{r}->{}", (r + 1) % n))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let link = match &args.link {
        None => None,
        Some(l) => {
            let parsed = l.split_once("->").and_then(|(a, b)| {
                Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
            });
            match parsed {
                Some((a, b)) if a < n && b == (a + 1) % n => Some((a, b)),
                _ => {
                    return Err(CliError::usage(format!(
                        "--link: '{l}' is not a link of the drill's ring all-reduce; use one of {}",
                        ring()
                    )))
                }
            }
        }
    };
    Ok((kinds, link))
}

/// `topoccl drill`.
pub fn run(args: DrillArgs) -> Result<ExitCode, CliError> {
    let (kinds, link) = check(&args)?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find this program's path: {e}")))?;
    let mut rng = args.seed;
    let mut drills = Vec::new();
    for kind in &kinds {
        for _ in 0..args.times {
            let rank = args
                .rank
                .unwrap_or((splitmix(&mut rng) % u64::from(args.ranks)) as u32);
            let l = link.unwrap_or_else(|| {
                let a = (splitmix(&mut rng) % u64::from(args.ranks)) as u32;
                (a, (a + 1) % args.ranks)
            });
            // The moment: an iteration in the second quarter of the run.
            let at_iter = ITERS / 4 + splitmix(&mut rng) % (ITERS / 4);
            let seed = splitmix(&mut rng);
            let d = one(&exe, kind, args.ranks, rank, l, at_iter, seed, args.elastic)?;
            if !args.json {
                println!(
                    "{:<8} {:<10} detect {:>9} culprits {:<6} {} recovered {}{} data_lost {} hang {}{}",
                    d.kind,
                    d.target,
                    d.detection_s
                        .map_or("-".into(), |s| format!("{:.1}ms", s * 1e3)),
                    d.culprits
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    if d.culprit_ok { "right" } else { "WRONG" },
                    d.recovered,
                    match (d.continued_with, d.routed_around.is_empty()) {
                        (Some(w), true) => format!(" (on {w} ranks)"),
                        (Some(w), false) => {
                            format!(" (on {w} ranks, around {})", d.routed_around.join(","))
                        }
                        (None, _) => String::new(),
                    },
                    d.data_lost,
                    d.hang,
                    if d.failed { "  FAIL" } else { "" }
                );
            }
            drills.push(d);
        }
    }
    let s = summarize(&kinds, &drills);
    if args.json {
        let v = serde_json::json!({ "drills": drills, "summary": s });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "{} drills, {} failed ({} hangs, {} wrong culprits, {} with data lost); detection median {} max {} (call deadline {:.1} s)",
            s.drills,
            s.failures,
            s.hangs,
            s.wrong_culprit,
            s.data_lost,
            s.median_detection_s
                .map_or("-".into(), |x| format!("{:.1}ms", x * 1e3)),
            s.max_detection_s
                .map_or("-".into(), |x| format!("{:.1}ms", x * 1e3)),
            s.call_timeout_s
        );
    }
    Ok(if s.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn summarize(kinds: &[String], drills: &[Drill]) -> Summary {
    let mut det: Vec<f64> = drills.iter().filter_map(|d| d.detection_s).collect();
    det.sort_by(f64::total_cmp);
    Summary {
        drills: drills.len(),
        failures: drills.iter().filter(|d| d.failed).count(),
        hangs: drills.iter().filter(|d| d.hang).count(),
        wrong_culprit: drills.iter().filter(|d| !d.culprit_ok).count(),
        data_lost: drills.iter().filter(|d| d.data_lost).count(),
        per_kind: kinds
            .iter()
            .map(|k| (k.clone(), drills.iter().filter(|d| &d.kind == k).count()))
            .collect(),
        median_detection_s: det.get(det.len() / 2).copied(),
        max_detection_s: det.last().copied(),
        call_timeout_s: CALL_TIMEOUT.as_secs_f64(),
    }
}

/// A line from a rank (or the runtime's log) and when it arrived.
enum Event {
    Out(u32, String),
    Err(String, u64),
}

/// Runs one drill.
#[allow(clippy::too_many_arguments)]
fn one(
    exe: &std::path::Path,
    kind: &str,
    n: u32,
    rank: u32,
    (a, b): (u32, u32),
    at_iter: u64,
    seed: u64,
    elastic: bool,
) -> Result<Drill, CliError> {
    let fatal = matches!(kind, "kill" | "stop" | "cut");
    // Bytes a ring link carries per iteration: 2 (N-1)/N of the buffer.
    let per_iter = 2 * (n as u64 - 1) * (COUNT as u64 * 4) / n as u64;
    let after = per_iter * at_iter;
    let rule = match kind {
        "cut" => format!("drop@{a}->{b}:after={after}"),
        "latency" => format!("delay=50us@{a}->{b}:after={after}"),
        "loss" => format!("loss=1%@{a}->{b}:after={after}:seed={seed}"),
        "slow" => format!("rate=20MB/s@{a}->{b}:after={after}"),
        _ => String::new(),
    };
    let target = if matches!(kind, "kill" | "stop") {
        format!("rank {rank}")
    } else {
        format!("link {a}->{b}")
    };
    let job = new_job()?;
    let store = host_store(&job)?;
    let mut env = job_env(Some(store.url()), &job);
    env.extend([
        (
            "TOPOCCL_TIMEOUT".into(),
            format!("{}ms", CALL_TIMEOUT.as_millis()),
        ),
        (
            "TOPOCCL_HEARTBEAT".into(),
            format!("{}ms", HEARTBEAT.as_millis()),
        ),
        ("TOPOCCL_PROBE".into(), "0".into()),
        ("TOPOCCL_ALGO".into(), "allreduce:ring".into()),
        ("TOPOCCL_FAULTS".into(), rule),
        ("TOPOCCL_ELASTIC".into(), u8::from(elastic).to_string()),
        ("TOPOCCL_WORLD_SIZE".into(), n.to_string()),
        ("TOPOCCL_LOCAL_WORLD_SIZE".into(), n.to_string()),
    ]);
    let (tx, rx) = mpsc::channel();
    let mut kids: Vec<Child> = Vec::new();
    for r in 0..n {
        let child = Command::new(exe)
            .args(["internal", "drill-rank", "--count"])
            .arg(COUNT.to_string())
            .args(["--iters", &ITERS.to_string()])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("TOPOCCL_RANK", r.to_string())
            .env("TOPOCCL_LOCAL_RANK", r.to_string())
            .env_remove("TOPOCCL_RULES")
            .env_remove("TOPOCCL_TOPO")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                for k in &mut kids {
                    let _ = k.kill();
                    let _ = k.wait();
                }
                return Err(CliError::failed(format!("cannot start rank {r}: {e}")));
            }
        };
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(Event::Out(r, l));
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    let _ = tx.send(Event::Err(l, monotonic_ns()));
                }
            });
        }
        kids.push(child);
    }
    drop(tx);
    let start = Instant::now();
    let mut injected: Option<u64> = None;
    let mut stopped = false;
    let mut errors: Vec<(u32, u64, Vec<u32>)> = Vec::new();
    let mut iters: Vec<(u64, u64)> = Vec::new(); // (end, duration)
    let mut data_lost = false;
    let mut done = 0u32;
    let mut continued_with: Option<u32> = None;
    let mut routed_around: BTreeSet<String> = BTreeSet::new();
    let mut exited = vec![false; n as usize];
    let mut hang = false;
    loop {
        if start.elapsed() > DRILL_BOUND {
            hang = true;
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Out(r, l)) => {
                if let Some(rest) = l.strip_prefix("it ") {
                    let v: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                    if let [k, end, dur] = v[..] {
                        iters.push((end, dur));
                        if injected.is_none() && r == rank && k + 1 == at_iter {
                            let pid = kids[rank as usize].id() as i32;
                            let sig = match kind {
                                "kill" => Some(libc::SIGKILL),
                                "stop" => Some(libc::SIGSTOP),
                                _ => None,
                            };
                            if let Some(sig) = sig {
                                // SAFETY: a signal to a child of this process, not reaped.
                                unsafe { libc::kill(pid, sig) };
                                injected = Some(monotonic_ns());
                                stopped = sig == libc::SIGSTOP;
                            }
                        }
                    }
                } else if let Some(rest) = l.strip_prefix("drill-error at=") {
                    let mut parts = rest.splitn(3, ' ');
                    let at = parts.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                    let culprits = parts
                        .next()
                        .and_then(|c| c.strip_prefix("culprits="))
                        .map(|c| c.split(',').filter_map(|x| x.parse().ok()).collect())
                        .unwrap_or_default();
                    errors.push((r, at, culprits));
                } else if let Some(rest) = l.strip_prefix("drill-shrunk ") {
                    for field in rest.split(' ') {
                        if let Some(w) = field.strip_prefix("world=").and_then(|w| w.parse().ok()) {
                            continued_with = Some(continued_with.map_or(w, |c: u32| c.min(w)));
                        }
                        if let Some(d) = field.strip_prefix("dead=") {
                            routed_around
                                .extend(d.split(',').filter(|x| !x.is_empty()).map(String::from));
                        }
                    }
                } else if l.starts_with("drill-wrong") {
                    data_lost = true;
                } else if l.starts_with("drill-done") {
                    done += 1;
                }
            }
            Ok(Event::Err(l, at)) => {
                if injected.is_none() && l.contains("acts on the link") {
                    injected = Some(at);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        for (r, k) in kids.iter_mut().enumerate() {
            if !exited[r] && matches!(k.try_wait(), Ok(Some(_))) {
                exited[r] = true;
            }
        }
        // The stopped rank goes on once every other rank has ended.
        if stopped
            && exited
                .iter()
                .enumerate()
                .all(|(r, e)| *e || r as u32 == rank)
        {
            // SAFETY: as above.
            unsafe { libc::kill(kids[rank as usize].id() as i32, libc::SIGCONT) };
            stopped = false;
        }
    }
    for k in &mut kids {
        if stopped {
            // SAFETY: as above.
            unsafe { libc::kill(k.id() as i32, libc::SIGCONT) };
        }
        let _ = k.kill();
        let _ = k.wait();
    }
    drop(store);
    let victim: BTreeSet<u32> = if matches!(kind, "kill" | "stop") {
        [rank].into()
    } else {
        [a, b].into()
    };
    // What the survivors said: a killed or stopped rank's own view is no evidence.
    let named: BTreeSet<u32> = errors
        .iter()
        .filter(|e| !(matches!(kind, "kill" | "stop") && e.0 == rank))
        .flat_map(|e| e.2.clone())
        .collect();
    let survivors = if matches!(kind, "kill" | "stop") {
        n - 1
    } else {
        n
    };
    let (detection_s, culprit_ok, recovered) = if fatal {
        let first = errors.iter().map(|e| e.1).min();
        let det = match (injected, first) {
            (Some(t0), Some(t)) => Some(t.saturating_sub(t0) as f64 / 1e9),
            _ => None,
        };
        let ok = !named.is_empty() && named.is_subset(&victim);
        // Elastic: the survivors finished every iteration on the shrunk communicator
        // (for a cut link: all of them, around the link).
        let kept = continued_with.is_none_or(|w| w >= survivors);
        (
            det,
            ok,
            ok && !hang && (!elastic || (done >= survivors && kept)),
        )
    } else {
        let det = injected.and_then(|t0| {
            let mut before: Vec<u64> = iters.iter().filter(|i| i.0 < t0).map(|i| i.1).collect();
            before.sort_unstable();
            let med = *before.get(before.len() / 2)?;
            let first = iters
                .iter()
                .filter(|i| i.0 >= t0 && i.1 * 2 > med * 3)
                .map(|i| i.0)
                .min()?;
            Some((first - t0) as f64 / 1e9)
        });
        (det, named.is_empty(), done == n && !data_lost)
    };
    let failed = hang || data_lost || !culprit_ok || !recovered;
    Ok(Drill {
        kind: kind.to_string(),
        target,
        fatal,
        detection_s,
        culprits: named.into_iter().collect(),
        culprit_ok,
        recovered,
        continued_with,
        routed_around: routed_around.into_iter().collect(),
        data_lost,
        hang,
        failed,
    })
}
