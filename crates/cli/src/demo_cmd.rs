//! `topoccl demo`: a job to look at. Starts N local ranks running a training-like loop
//! (per step: "compute", a pause; then an all-reduce of each gradient bucket, largest
//! first, as data-parallel training does after the backward pass), serves the job's
//! metrics and live matrix (as `--metrics` does), and the console over the demo's
//! topology and the job, on loopback; prints the console's URL. Ctrl-C (or
//! `--duration` / `--iterations`) stops the ranks, then everything.
//!
//! The demo's topology: one host per rank (`h0`, `h1`, …), two hosts per rack (`rack0`,
//! …, a leaf switch each), the leaves under one spine; rank `r` is on host `hr`. Every
//! rank really runs on this machine, so the figures are those of local transfers drawn
//! on that cluster.
//!
//! Inside the job (the launcher's environment set) the same command is one rank's loop.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use topoccl::ReduceOp;
use topoccl_console::server::{run_blocking, Config};
use topoccl_plan::units::{parse_bytes, parse_duration};

use crate::run_cmd::{host_store, job_env, launch, new_job, LaunchOptions};
use crate::CliError;

/// The most ranks the demo starts (all on this machine).
pub const MAX_RANKS: u32 = 64;
/// The most gradient buckets, and the largest one.
pub const MAX_BUCKETS: usize = 16;
pub const MAX_BUCKET_BYTES: u64 = 256 << 20;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Local ranks to start (2 to 64).
    #[arg(short = 'n', long = "ranks", default_value_t = 4)]
    ranks: u32,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_name = "DURATION")]
    duration: Option<String>,
    /// Stop after this many training steps; default: until Ctrl-C.
    #[arg(long, value_name = "N")]
    iterations: Option<u64>,
    /// The gradient buckets all-reduced each step, comma-separated sizes (f32).
    #[arg(long, default_value = "25MiB,8MiB,1MiB", value_name = "SIZE,...")]
    buckets: String,
    /// Milliseconds of "compute" (a pause) per step before the all-reduces.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    compute_ms: u64,
    /// Where the console listens (loopback; port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// The checked settings.
#[derive(Debug, PartialEq)]
struct Settings {
    ranks: u32,
    duration: Option<Duration>,
    iterations: Option<u64>,
    /// Elements (f32) per bucket.
    buckets: Vec<usize>,
    compute: Duration,
}

fn settings(a: &DemoArgs) -> Result<Settings, CliError> {
    if !(2..=MAX_RANKS).contains(&a.ranks) {
        return Err(CliError::usage(format!(
            "--ranks {}: the demo starts 2 to {MAX_RANKS} local ranks",
            a.ranks
        )));
    }
    if !a.listen.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "--listen {}: the demo's console is for this machine only; give a loopback \
             address (127.0.0.1:PORT), or run `topoccl console` yourself with --token",
            a.listen
        )));
    }
    let duration = a
        .duration
        .as_deref()
        .map(|d| {
            parse_duration(d)
                .ok()
                .filter(|s| *s > 0.0)
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "--duration {d}: a positive duration like 30s, 5m or 1h"
                    ))
                })
        })
        .transpose()?;
    if a.iterations == Some(0) {
        return Err(CliError::usage("--iterations 0: give at least 1 step"));
    }
    let mut buckets = Vec::new();
    for s in a.buckets.split(',').map(str::trim) {
        let bytes = parse_bytes(s).map_err(|e| {
            CliError::usage(format!("--buckets: '{s}' is not a size like 25MiB: {e}"))
        })?;
        if !(4..=MAX_BUCKET_BYTES).contains(&bytes) {
            return Err(CliError::usage(format!(
                "--buckets: '{s}' must be 4 B to {} MiB",
                MAX_BUCKET_BYTES >> 20
            )));
        }
        buckets.push((bytes / 4) as usize);
    }
    if buckets.len() > MAX_BUCKETS {
        return Err(CliError::usage(format!(
            "--buckets: {} buckets; at most {MAX_BUCKETS}",
            buckets.len()
        )));
    }
    Ok(Settings {
        ranks: a.ranks,
        duration,
        iterations: a.iterations,
        buckets,
        compute: Duration::from_millis(a.compute_ms),
    })
}

/// The demo's topology file (see the module doc).
pub fn topology_text(ranks: u32) -> String {
    let racks = ranks.div_ceil(2);
    let mut t = String::from(
        "# Written by `topoccl demo`: one host per rank, two hosts per rack.\n\
         name = \"demo\"\n",
    );
    let hosts: Vec<String> = (0..ranks).map(|r| format!("\"h{r}\"")).collect();
    t += &format!("ranks = [{}]\n", hosts.join(", "));
    let node = |name: &str, kind: &str, extra: &str| {
        format!("\n[[node]]\nname = \"{name}\"\nkind = \"{kind}\"\n{extra}")
    };
    let link = |a: &str, b: &str, bw: &str| {
        format!("\n[[link]]\na = \"{a}\"\nb = \"{b}\"\nbandwidth = \"{bw}\"\nlatency = \"2us\"\n")
    };
    t += &node("spine0", "switch", "tier = \"spine\"\n");
    for k in 0..racks {
        let leaf = format!("leaf{k}");
        t += &node(&leaf, "switch", "tier = \"leaf\"\n");
        t += &link(&leaf, "spine0", "800Gbps");
    }
    for r in 0..ranks {
        let h = format!("h{r}");
        t += &node(&h, "host", &format!("zone = \"rack{}\"\n", r / 2));
        t += &link(&h, &format!("leaf{}", r / 2), "400Gbps");
    }
    t
}

pub fn run(args: DemoArgs) -> Result<ExitCode, CliError> {
    let s = settings(&args)?;
    if crate::job::in_job() {
        return rank_loop(&s);
    }
    let text = topology_text(s.ranks);
    let topology = topoccl_topo::format::read(&text, "demo.toml")
        .map_err(|e| CliError::failed(format!("the demo's topology: {e}")))?;

    if !topoccl_console::server::assets_built() {
        eprintln!(
            "note: this binary carries no console page; build it with scripts/build-console.sh, \
             then rebuild (the JSON API works without it)"
        );
    }
    let job = new_job()?;
    let store = host_store(&job)?;
    let mut env = job_env(Some(store.url()), &job);
    let metrics = crate::job_metrics::serve("127.0.0.1:0", store.url(), &job, s.ranks, None)?;
    env.push(crate::job_metrics::rank_env());

    let config = Config {
        topology: Some(Ok(Arc::new(topology))),
        job: vec![metrics],
        token: None,
        allow_what_if: true,
        trace: None,
        poll_every: Duration::from_millis(500),
    };
    let listen = args.listen;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-console".into())
        .spawn(move || {
            let res = run_blocking(listen, config, |addr| {
                let _ = tx.send(Ok(addr));
            });
            if let Err(e) = res {
                eprintln!("topoccl demo: the console stopped: {e}");
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| CliError::failed(format!("cannot start the console: {e}")))?;
    let addr = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return Err(CliError::failed(format!("console on {listen}: {e}"))),
        Err(_) => return Err(CliError::failed("the console did not start within 10 s")),
    };
    let bounds = match (s.iterations, s.duration) {
        (None, None) => "until Ctrl-C".to_string(),
        (Some(n), None) => format!("for {n} steps (or until Ctrl-C)"),
        (None, Some(d)) => format!("for {:.0} s (or until Ctrl-C)", d.as_secs_f64()),
        (Some(n), Some(d)) => format!("for {n} steps or {:.0} s", d.as_secs_f64()),
    };
    println!("console: http://{addr}/");
    println!(
        "demo: {} ranks all-reducing {} bucket(s) per step {bounds}; the job's metrics at \
         http://{metrics}/metrics",
        s.ranks,
        s.buckets.len()
    );
    let _ = std::io::stdout().flush();

    let exe = std::env::current_exe()
        .map_err(|e| CliError::failed(format!("cannot find this program's path: {e}")))?;
    let rank_args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let opts = LaunchOptions {
        // A bounded demo that overruns by a minute is stuck: stop it.
        timeout: s.duration.map(|d| d + Duration::from_secs(60)),
        plain_stdout: Some(0),
        dump: Some(crate::run_cmd::DUMP),
        restarts: None,
    };
    let outcome = launch(exe.as_os_str(), &rank_args, s.ranks, &env, &opts)?;
    drop(store);
    let code = outcome.exit_code();
    // Ctrl-C is how an unbounded demo ends: not a failure.
    if code == 128 + 2 {
        println!("demo: stopped");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(line) = outcome.summary() {
        eprintln!("topoccl demo: {line}");
    }
    Ok(ExitCode::from(code))
}

/// One rank's training-like loop (see the module doc); rank 0 reports every few steps.
fn rank_loop(s: &Settings) -> Result<ExitCode, CliError> {
    let mut comm = crate::job::communicator()?;
    let rank = comm.rank();
    let world = comm.world() as f32;
    let mut grads: Vec<Vec<f32>> = s.buckets.iter().map(|&n| vec![0.0; n]).collect();
    let started = Instant::now();
    let mut step: u64 = 0;
    loop {
        if s.iterations.is_some_and(|n| step >= n)
            || s.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        std::thread::sleep(s.compute);
        let t = Instant::now();
        for g in grads.iter_mut() {
            // Each rank's "gradient": its rank + 1 everywhere; the average is known.
            g.fill((rank + 1) as f32);
            comm.all_reduce_in_place(g, ReduceOp::Sum)
                .map_err(|e| CliError::failed(format!("step {step}: {e}")))?;
            let want = world * (world + 1.0) / 2.0;
            if let Some(at) = g.iter().position(|&x| x != want) {
                return Err(CliError::failed(format!(
                    "step {step}: element {at} is {}, not {want}",
                    g[at]
                )));
            }
        }
        if rank == 0 && step % 20 == 0 {
            println!(
                "step {step}: all-reduce of {} bucket(s) in {:.1} ms",
                grads.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            let _ = std::io::stdout().flush();
        }
        step += 1;
    }
    if rank == 0 {
        println!("demo: {step} steps done");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        settings(&cli.demo).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_bounds() {
        let s = parse(&[]).expect("defaults");
        assert_eq!(s.ranks, 4);
        assert_eq!(s.buckets, vec![25 << 18, 8 << 18, 1 << 18]);
        assert_eq!((s.duration, s.iterations), (None, None));
        let s = parse(&[
            "--duration",
            "30s",
            "--iterations",
            "5",
            "--buckets",
            "1KiB",
        ])
        .expect("bounded");
        assert_eq!(s.duration, Some(Duration::from_secs(30)));
        assert_eq!(s.iterations, Some(5));
        assert_eq!(s.buckets, vec![256]);
    }

    #[test]
    fn bad_input_names_the_option() {
        for (args, says) in [
            (vec!["--ranks", "1"], "--ranks 1"),
            (vec!["--duration", "0s"], "--duration 0s"),
            (vec!["--duration", "soon"], "--duration soon"),
            (vec!["--iterations", "0"], "--iterations 0"),
            (vec!["--buckets", "lots"], "'lots'"),
            (vec!["--buckets", "1GiB"], "'1GiB'"),
            (vec!["--listen", "0.0.0.0:0"], "loopback"),
        ] {
            let e = parse(&args).expect_err("refused");
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_topology_reads_back_with_one_host_per_rank() {
        for ranks in [2, 3, 4, 9] {
            let t = topoccl_topo::format::read(&topology_text(ranks), "demo.toml")
                .expect("a valid topology");
            assert_eq!(t.world(), ranks);
            let hosts: std::collections::BTreeSet<_> = (0..ranks).map(|r| t.rank_host(r)).collect();
            assert_eq!(hosts.len(), ranks as usize);
        }
    }
}
