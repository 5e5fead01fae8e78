//! `topoccl run`: start N local ranks of a program and supervise them.
//!
//! The launcher hosts the job's rendezvous store, starts every rank in its own process
//! group with the `TOPOCCL_*` environment, copies the ranks' output line by line behind a
//! rank prefix, and stops the whole job as soon as one rank fails, the timeout passes, or
//! the launcher itself is asked to stop (SIGINT/SIGTERM).
//!
//! Other commands that start their own ranks (a benchmark, say) reuse the pieces:
//!
//! ```ignore
//! let store = host_store()?;                       // keep it alive while the ranks run
//! let env = job_env(Some(store.url()), &new_job_id()?);
//! let opts = LaunchOptions { timeout: Some(Duration::from_secs(600)), plain_stdout: Some(0) };
//! let outcome = launch(program, &args, ranks, &env, &opts)?;
//! if let Some(line) = outcome.summary() { eprintln!("{line}"); }
//! std::process::ExitCode::from(outcome.exit_code())
//! ```
//!
//! [`forward_lines`] is the line prefixer on its own, for any reader.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use topoccl::store::TcpStoreServer;

use crate::units::parse_duration;
use crate::CliError;

/// Most ranks one launch starts: beyond this a local launch is a mistake, not a job.
pub const MAX_RANKS: u32 = 4096;
/// Longest line copied in one piece; longer ones are split, so a rank writing binary
/// without newlines costs bounded memory.
pub const MAX_LINE: usize = 64 * 1024;
/// How long ranks get between SIGTERM (or a forwarded signal) and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Exit status of a launch stopped by its timeout, as with coreutils' `timeout`.
pub const TIMEOUT_EXIT_CODE: u8 = 124;

// The environment every rank gets from `launch` (the store and job id via `job_env`).
pub const ENV_RANK: &str = "TOPOCCL_RANK";
pub const ENV_WORLD_SIZE: &str = "TOPOCCL_WORLD_SIZE";
pub const ENV_LOCAL_RANK: &str = "TOPOCCL_LOCAL_RANK";
pub const ENV_LOCAL_WORLD_SIZE: &str = "TOPOCCL_LOCAL_WORLD_SIZE";
pub const ENV_STORE: &str = "TOPOCCL_STORE";
pub const ENV_JOB_ID: &str = "TOPOCCL_JOB_ID";

const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// After the last rank is gone, how long to wait for its output to drain. Bounded because
/// a stray grandchild (`cmd &`) can hold a rank's pipe open long after the rank exits.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// Reader threads only copy bytes; small stacks keep 2 × 4096 of them cheap.
const READER_STACK: usize = 128 * 1024;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of ranks to start (1 to 4096).
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    ranks: u32,
    /// Stop the job if it has not finished after this long (e.g. 90s, 10m, 1h); exit 124.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Do not host a rendezvous store (TOPOCCL_STORE is then not set).
    #[arg(long, hide = true)]
    no_store: bool,
    /// The program every rank runs.
    #[arg(value_name = "PROGRAM")]
    program: OsString,
    /// Arguments for the program (put `--` before PROGRAM if they look like options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
}

/// `topoccl run`: hosts the store, launches, prints why the job failed (if it did) and
/// returns the launch's exit status.
pub fn run(args: RunArgs) -> Result<ExitCode, CliError> {
    check_ranks(args.ranks)?;
    let timeout = args
        .timeout
        .as_deref()
        .map(parse_timeout)
        .transpose()
        .map_err(|e| CliError::usage(format!("--timeout: {e}")))?;
    let store = if args.no_store {
        None
    } else {
        Some(host_store()?)
    };
    let env = job_env(store.as_ref().map(JobStore::url), &new_job_id()?);
    let opts = LaunchOptions {
        timeout,
        plain_stdout: None,
    };
    let outcome = launch(&args.program, &args.args, args.ranks, &env, &opts)?;
    drop(store);
    if let Some(line) = outcome.summary() {
        eprintln!("topoccl run: {line}");
    }
    Ok(ExitCode::from(outcome.exit_code()))
}

fn check_ranks(ranks: u32) -> Result<(), CliError> {
    if ranks == 0 || ranks > MAX_RANKS {
        return Err(CliError::usage(format!(
            "the number of ranks must be between 1 and {MAX_RANKS}, not {ranks}"
        )));
    }
    Ok(())
}

/// A duration for `--timeout`: positive, in the units of [`parse_duration`].
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs = parse_duration(s)?;
    if secs <= 0.0 {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{s}' is too long"))
}

/// The job's rendezvous store, served from this process on a free loopback port until
/// dropped. Keep it alive until the ranks are gone.
pub struct JobStore {
    _server: TcpStoreServer,
    url: String,
}

impl JobStore {
    /// `tcp://127.0.0.1:PORT`, the value of `TOPOCCL_STORE`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Hosts a rendezvous store for one job on `127.0.0.1` (local ranks only).
pub fn host_store() -> Result<JobStore, CliError> {
    let server = TcpStoreServer::start("127.0.0.1:0")
        .map_err(|e| CliError::failed(format!("cannot host the job's rendezvous store: {e}")))?;
    let url = format!("tcp://{}", server.local_addr());
    Ok(JobStore {
        _server: server,
        url,
    })
}

/// A fresh job id: 16 hex digits from the OS's random source, so two jobs sharing a store
/// or a file system cannot mistake each other's keys.
pub fn new_job_id() -> Result<String, CliError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| CliError::failed(format!("cannot make a job id: {e}")))?;
    Ok(format!("{:016x}", u64::from_be_bytes(bytes)))
}

/// The job-wide environment for [`launch`]: the store (if any) and the job id.
pub fn job_env(store_url: Option<&str>, job_id: &str) -> Vec<(String, String)> {
    let mut env = Vec::with_capacity(2);
    if let Some(url) = store_url {
        env.push((ENV_STORE.to_string(), url.to_string()));
    }
    env.push((ENV_JOB_ID.to_string(), job_id.to_string()));
    env
}

/// How one rank ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankStatus {
    Exited(i32),
    Signaled {
        signal: i32,
        core_dumped: bool,
    },
    /// The rank could not be waited for (only if something else reaped it).
    Lost,
}

impl RankStatus {
    fn from_exit(status: ExitStatus) -> RankStatus {
        match (status.code(), status.signal()) {
            (Some(code), _) => RankStatus::Exited(code),
            (None, Some(signal)) => RankStatus::Signaled {
                signal,
                core_dumped: status.core_dumped(),
            },
            (None, None) => RankStatus::Lost,
        }
    }

    fn success(self) -> bool {
        self == RankStatus::Exited(0)
    }

    /// What a shell would report: the exit code, or 128 + the signal.
    fn exit_code(self) -> u8 {
        match self {
            RankStatus::Exited(code) => u8::try_from(code).unwrap_or(1),
            RankStatus::Signaled { signal, .. } => signal_exit_code(signal),
            RankStatus::Lost => 1,
        }
    }
}

fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(255)
}

fn signal_name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {signal}"))
}

impl fmt::Display for RankStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RankStatus::Exited(code) => write!(f, "exited with status {code}"),
            RankStatus::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if let Some(name) = signal_hook::low_level::signal_name(signal) {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    f.write_str(", core dumped")?;
                }
                Ok(())
            }
            RankStatus::Lost => f.write_str("could not be waited for"),
        }
    }
}

/// Why a launch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every rank exited with status 0.
    Completed,
    /// This rank was the first to exit non-zero or die by a signal.
    RankFailed { rank: u32, status: RankStatus },
    /// The timeout passed with ranks still running.
    TimedOut { after: Duration },
    /// The launcher received this signal and forwarded it to the ranks.
    Interrupted { signal: i32 },
}

/// The result of [`launch`]; by the time it is returned every rank has been reaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchOutcome {
    pub ending: Ending,
    /// The ranks still running when the job was stopped, which the launcher terminated.
    pub stopped: Vec<u32>,
}

impl LaunchOutcome {
    /// 0 if every rank succeeded; the failed rank's exit code (or 128 + its signal); 124 on
    /// timeout; 128 + the signal when the launcher was interrupted.
    pub fn exit_code(&self) -> u8 {
        match self.ending {
            Ending::Completed => 0,
            Ending::RankFailed { status, .. } => status.exit_code(),
            Ending::TimedOut { .. } => TIMEOUT_EXIT_CODE,
            Ending::Interrupted { signal } => signal_exit_code(signal),
        }
    }

    /// One line saying why the job failed; `None` if it succeeded.
    pub fn summary(&self) -> Option<String> {
        let stopped = |s: &str| {
            if self.stopped.is_empty() {
                String::new()
            } else {
                format!("; {s} {}", describe_ranks(&self.stopped))
            }
        };
        match &self.ending {
            Ending::Completed => None,
            Ending::RankFailed { rank, status } => Some(format!(
                "rank {rank} failed first: {status}{}",
                stopped("stopped")
            )),
            Ending::TimedOut { after } => Some(format!(
                "timed out after {} s; {} still running",
                after.as_secs_f64(),
                describe_ranks(&self.stopped)
            )),
            Ending::Interrupted { signal } => Some(format!(
                "interrupted by {}{}",
                signal_name(*signal),
                stopped("stopped")
            )),
        }
    }
}

/// "rank 3", "ranks 0, 1, 3", "ranks 0-1023, 1025-4095": runs of three or more are
/// ranges so that a 4096-rank job still fits on a line.
fn describe_ranks(ranks: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{}-{}", ranks[i], ranks[j]));
        } else {
            parts.extend(ranks[i..=j].iter().map(u32::to_string));
        }
        i = j + 1;
    }
    let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
    format!("{noun} {}", parts.join(", "))
}

/// `[R] ` with R right-aligned to the width of the largest rank, so columns line up.
pub fn rank_prefix(rank: u32, ranks: u32) -> String {
    let width = ranks.saturating_sub(1).to_string().len();
    format!("[{rank:>width$}] ")
}

/// Copies `src` to `emit` one line at a time, each as `prefix`, the line, and a newline
/// (added to a final unterminated line). Lines longer than [`MAX_LINE`] bytes are split.
/// `emit` gets a whole line per call, so a caller that writes it under a lock keeps lines
/// from different sources from interleaving. Once `emit` fails (a closed stdout) the rest
/// is read and dropped, so the writer never blocks on a full pipe. Returns when `src` ends
/// or fails to read.
pub fn forward_lines<R: Read>(
    src: R,
    prefix: &[u8],
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(16 * 1024, src);
    let start = prefix.len();
    let mut line = Vec::with_capacity(start + 256);
    line.extend_from_slice(prefix);
    let mut sink_open = true;
    let mut flush = |line: &mut Vec<u8>| {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        if sink_open && emit(line).is_err() {
            sink_open = false;
        }
        line.truncate(start);
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if line.len() > start {
                    flush(&mut line);
                }
                return Err(e);
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE - (line.len() - start);
        // One byte past the room so that a line of exactly MAX_LINE bytes keeps its newline.
        let window = &buf[..buf.len().min(room + 1)];
        let (used, complete) = match window.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            // Split a full line only once the next byte is known not to be its newline.
            None => {
                let used = buf.len().min(room);
                (used, used == room && buf.len() > room)
            }
        };
        line.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if complete {
            flush(&mut line);
        }
    }
    if line.len() > start {
        flush(&mut line);
    }
    Ok(())
}

fn emit_stdout(line: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line)?;
    out.flush()
}

fn emit_stderr(line: &[u8]) -> io::Result<()> {
    io::stderr().lock().write_all(line)
}

/// SIGINT/SIGTERM as seen by [`launch`]. Installed once per process: while no launch runs
/// the signals keep their default action (terminate); during one they are only recorded,
/// for the supervision loop to forward.
struct SignalWatch {
    received: Arc<AtomicUsize>,
    idle: Arc<AtomicBool>,
}

static SIGNALS: OnceLock<Result<SignalWatch, String>> = OnceLock::new();
/// Launches take turns: the signal watch and the process's stdout are shared.
static LAUNCH_LOCK: Mutex<()> = Mutex::new(());

impl SignalWatch {
    fn install() -> Result<SignalWatch, String> {
        let received = Arc::new(AtomicUsize::new(0));
        let idle = Arc::new(AtomicBool::new(true));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_conditional_default(signal, Arc::clone(&idle))
                .and_then(|_| {
                    signal_hook::flag::register_usize(
                        signal,
                        Arc::clone(&received),
                        signal as usize,
                    )
                })
                .map_err(|e| format!("cannot watch {}: {e}", signal_name(signal)))?;
        }
        Ok(SignalWatch { received, idle })
    }

    fn arm() -> Result<ArmedSignals, CliError> {
        let watch = SIGNALS
            .get_or_init(SignalWatch::install)
            .as_ref()
            .map_err(|e| CliError::failed(e.clone()))?;
        watch.received.store(0, Ordering::SeqCst);
        watch.idle.store(false, Ordering::SeqCst);
        Ok(ArmedSignals(watch))
    }
}

struct ArmedSignals(&'static SignalWatch);

impl ArmedSignals {
    /// The signal received since the last call, if any.
    fn take(&self) -> Option<i32> {
        match self.0.received.swap(0, Ordering::SeqCst) {
            0 => None,
            s => i32::try_from(s).ok(),
        }
    }
}

impl Drop for ArmedSignals {
    fn drop(&mut self) {
        self.0.idle.store(true, Ordering::SeqCst);
    }
}

struct Rank {
    child: Child,
    pid: libc::pid_t,
    status: Option<RankStatus>,
}

impl Rank {
    /// Signals the rank's process group, so that whatever the rank started goes too.
    /// Only called before the rank is reaped, so its pid cannot have been reused.
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let group = unsafe { libc::kill(-self.pid, signal) };
        if group != 0 {
            // The rank moved itself to another group; it still has its own pid.
            // SAFETY: as above.
            unsafe { libc::kill(self.pid, signal) };
        }
    }
}

/// How [`launch`] runs a job.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Stop the job after this long.
    pub timeout: Option<Duration>,
    /// Copy this rank's stdout without the rank prefix (a report the rank prints for
    /// the whole job, like a benchmark table).
    pub plain_stdout: Option<u32>,
}

/// Starts `ranks` copies of `program args` and supervises them until all are gone.
///
/// Every rank gets `extra_env` (see [`job_env`]) and then `TOPOCCL_RANK`,
/// `TOPOCCL_WORLD_SIZE`, `TOPOCCL_LOCAL_RANK` and `TOPOCCL_LOCAL_WORLD_SIZE`; stdin is
/// `/dev/null`; stdout and stderr are copied to the launcher's behind [`rank_prefix`].
/// Each rank leads its own process group and, on Linux, is killed if the launcher dies.
///
/// The first rank to exit non-zero or die by a signal, `opts.timeout`, or a SIGINT/SIGTERM
/// to this process stops the job: the running ranks get SIGTERM (the received signal, when
/// interrupted) and, [`KILL_GRACE`] later, SIGKILL; a second signal skips the grace.
///
/// Errors: a bad rank count or a program that cannot be started (usage, exit 2); failing
/// to start a later rank (exit 1). Ranks already started are killed before returning.
/// One launch runs at a time per process; concurrent calls wait their turn.
pub fn launch(
    program: &OsStr,
    args: &[OsString],
    ranks: u32,
    extra_env: &[(String, String)],
    opts: &LaunchOptions,
) -> Result<LaunchOutcome, CliError> {
    let timeout = opts.timeout;
    check_ranks(ranks)?;
    let _turn = LAUNCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Before spawning, so that a Ctrl-C from here on stops the ranks instead of orphaning
    // them.
    let signals = SignalWatch::arm()?;
    let (output_open, output_done) = mpsc::channel::<()>();
    let mut started: Vec<Rank> = Vec::with_capacity(ranks as usize);
    for rank in 0..ranks {
        let plain = opts.plain_stdout == Some(rank);
        match spawn_rank(program, args, rank, ranks, extra_env, plain, &output_open) {
            Ok(r) => started.push(r),
            Err(e) => {
                for r in &started {
                    r.signal(libc::SIGKILL);
                }
                for r in &mut started {
                    let _ = r.child.wait();
                }
                drop(output_open);
                drain_output(&output_done);
                return Err(e);
            }
        }
    }
    drop(output_open);
    let outcome = supervise(&mut started, &signals, timeout);
    drain_output(&output_done);
    Ok(outcome)
}

/// Waits (bounded) until every output reader has finished, so the launcher's own last
/// line comes after the ranks' output.
fn drain_output(done: &mpsc::Receiver<()>) {
    let deadline = Instant::now() + OUTPUT_GRACE;
    // Each reader holds a sender; the channel disconnects when the last one ends.
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match done.recv_timeout(left) {
            Ok(()) => continue,
            Err(_) => break,
        }
    }
}

fn spawn_rank(
    program: &OsStr,
    args: &[OsString],
    rank: u32,
    ranks: u32,
    extra_env: &[(String, String)],
    plain_stdout: bool,
    output_open: &mpsc::Sender<()>,
) -> Result<Rank, CliError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(extra_env.iter().map(|(k, v)| (k, v)))
        .env(ENV_RANK, rank.to_string())
        .env(ENV_WORLD_SIZE, ranks.to_string())
        .env(ENV_LOCAL_RANK, rank.to_string())
        .env(ENV_LOCAL_WORLD_SIZE, ranks.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    #[cfg(target_os = "linux")]
    die_with_launcher(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        let shown = program.to_string_lossy();
        match e.kind() {
            io::ErrorKind::NotFound => {
                CliError::usage(format!("cannot start '{shown}': no such program"))
            }
            io::ErrorKind::PermissionDenied => CliError::usage(format!(
                "cannot start '{shown}': permission denied (is it an executable file?)"
            )),
            _ => CliError::failed(format!("cannot start rank {rank} ('{shown}'): {e}")),
        }
    })?;
    let pid = libc::pid_t::try_from(child.id()).expect("pids fit in pid_t");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut r = Rank {
        child,
        pid,
        status: None,
    };
    let prefix = rank_prefix(rank, ranks).into_bytes();
    let out_prefix = if plain_stdout {
        Vec::new()
    } else {
        prefix.clone()
    };
    let readers = start_reader(stdout, out_prefix, emit_stdout, output_open.clone())
        .and_then(|()| start_reader(stderr, prefix, emit_stderr, output_open.clone()));
    if let Err(e) = readers {
        r.signal(libc::SIGKILL);
        let _ = r.child.wait();
        return Err(CliError::failed(format!(
            "cannot start an output reader for rank {rank}: {e}"
        )));
    }
    Ok(r)
}

/// Copies one pipe of a rank on its own thread. The thread holds `open` until the pipe
/// ends, which is how [`drain_output`] knows when all output is out.
fn start_reader(
    src: impl Read + Send + 'static,
    prefix: Vec<u8>,
    emit: fn(&[u8]) -> io::Result<()>,
    open: mpsc::Sender<()>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("topoccl-run-output".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            let _open = open;
            // A read error ends this rank's output; the rank itself is supervised apart.
            let _ = forward_lines(src, &prefix, emit);
        })
        .map(drop)
}

/// Has the kernel kill the rank when the launcher dies (even by SIGKILL), so that ranks
/// are never left holding a GPU or a port with nobody supervising them.
#[cfg(target_os = "linux")]
fn die_with_launcher(cmd: &mut Command) {
    let launcher = libc::pid_t::try_from(std::process::id()).expect("pids fit in pid_t");
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls
    // are allowed: prctl, getppid and _exit are; last_os_error only reads errno.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The launcher may have died before prctl took effect.
            if libc::getppid() != launcher {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Waits for every rank, stopping the rest once the job has failed, timed out or been
/// interrupted.
fn supervise(
    ranks: &mut [Rank],
    signals: &ArmedSignals,
    timeout: Option<Duration>,
) -> LaunchOutcome {
    let deadline = timeout.map(|t| (Instant::now() + t, t));
    let mut ending: Option<Ending> = None;
    let mut stopped = Vec::new();
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        let mut running = Vec::new();
        for (rank, r) in (0u32..).zip(ranks.iter_mut()) {
            if r.status.is_some() {
                continue;
            }
            let status = match r.child.try_wait() {
                Ok(Some(status)) => RankStatus::from_exit(status),
                Ok(None) => {
                    running.push(rank);
                    continue;
                }
                Err(_) => RankStatus::Lost,
            };
            r.status = Some(status);
            if ending.is_none() && !status.success() {
                ending = Some(Ending::RankFailed { rank, status });
            }
        }
        if running.is_empty() {
            break;
        }
        let now = Instant::now();
        let received = signals.take();
        let mut stop_with = None;
        if kill_at.is_none() {
            if let Some(signal) = received {
                ending.get_or_insert(Ending::Interrupted { signal });
                stop_with = Some(signal);
            } else if ending.is_some() {
                stop_with = Some(libc::SIGTERM);
            } else if let Some((_, after)) = deadline.filter(|(at, _)| now >= *at) {
                ending = Some(Ending::TimedOut { after });
                stop_with = Some(libc::SIGTERM);
            }
        } else if received.is_some() {
            // Asked again while stopping: don't wait out the grace.
            kill_at = Some(now);
        }
        if let Some(signal) = stop_with {
            for &rank in &running {
                ranks[rank as usize].signal(signal);
            }
            stopped = running.clone();
            kill_at = Some(now + KILL_GRACE);
        }
        if !killed && kill_at.is_some_and(|at| now >= at) {
            for &rank in &running {
                ranks[rank as usize].signal(libc::SIGKILL);
            }
            killed = true;
        }
        thread::sleep(POLL_INTERVAL);
    }
    LaunchOutcome {
        ending: ending.unwrap_or(Ending::Completed),
        stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(input: &[u8], prefix: &str) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        forward_lines(input, prefix.as_bytes(), |l| {
            lines.push(l.to_vec());
            Ok(())
        })
        .unwrap();
        lines
    }

    #[test]
    fn lines_get_the_prefix_and_a_final_newline() {
        assert_eq!(
            forwarded(b"a\nbc\n\nlast", "[1] "),
            vec![
                b"[1] a\n".to_vec(),
                b"[1] bc\n".to_vec(),
                b"[1] \n".to_vec(),
                b"[1] last\n".to_vec()
            ]
        );
        assert!(forwarded(b"", "[0] ").is_empty());
    }

    #[test]
    fn long_lines_are_split() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        let lines = forwarded(&input, "[0] ");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 4 + MAX_LINE + 1);
        assert_eq!(lines[2], [&b"[0] "[..], &[b'x'; 10][..], b"\n"].concat());
        // Exactly MAX_LINE bytes and its newline stay one line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(forwarded(&exact, "").len(), 1);
    }

    /// Hands out at most `step` bytes per read, as a pipe may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn lines_survive_any_read_sizes() {
        let mut input = b"one\ntwo\n".to_vec();
        input.extend(vec![b'z'; MAX_LINE]);
        input.extend_from_slice(b"\nthree");
        for step in [1, 3, 4096, MAX_LINE - 1, MAX_LINE, MAX_LINE + 1] {
            let mut lines = Vec::new();
            let src = Trickle { data: &input, step };
            forward_lines(src, b"> ", |l| {
                lines.push(l.to_vec());
                Ok(())
            })
            .unwrap();
            assert_eq!(lines.len(), 4, "step {step}");
            assert_eq!(lines[1], b"> two\n");
            assert_eq!(lines[2].len(), 2 + MAX_LINE + 1, "step {step}");
            assert_eq!(lines[3], b"> three\n");
        }
    }

    #[test]
    fn a_closed_sink_still_drains() {
        let mut calls = 0;
        forward_lines(&b"a\nb\nc\n"[..], b"", |_| {
            calls += 1;
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn prefixes_align() {
        assert_eq!(rank_prefix(0, 1), "[0] ");
        assert_eq!(rank_prefix(3, 10), "[3] ");
        assert_eq!(rank_prefix(3, 11), "[ 3] ");
        assert_eq!(rank_prefix(10, 11), "[10] ");
        assert_eq!(rank_prefix(7, 4096), "[   7] ");
    }

    #[test]
    fn rank_lists() {
        assert_eq!(describe_ranks(&[3]), "rank 3");
        assert_eq!(describe_ranks(&[0, 1, 3]), "ranks 0, 1, 3");
        assert_eq!(
            describe_ranks(&[0, 1, 2, 3, 5, 7, 8, 9]),
            "ranks 0-3, 5, 7-9"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_timeout("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_timeout("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_timeout("5").unwrap(), Duration::from_secs(5));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(parse_timeout("1e300h").is_err());
    }

    #[test]
    fn summaries_and_codes() {
        let failed = LaunchOutcome {
            ending: Ending::RankFailed {
                rank: 2,
                status: RankStatus::Signaled {
                    signal: 9,
                    core_dumped: false,
                },
            },
            stopped: vec![0, 1, 3],
        };
        assert_eq!(
            failed.summary().unwrap(),
            "rank 2 failed first: killed by signal 9 (SIGKILL); stopped ranks 0, 1, 3"
        );
        assert_eq!(failed.exit_code(), 137);
        let timed_out = LaunchOutcome {
            ending: Ending::TimedOut {
                after: Duration::from_secs(90),
            },
            stopped: vec![0, 3],
        };
        assert_eq!(
            timed_out.summary().unwrap(),
            "timed out after 90 s; ranks 0, 3 still running"
        );
        assert_eq!(timed_out.exit_code(), TIMEOUT_EXIT_CODE);
        let done = LaunchOutcome {
            ending: Ending::Completed,
            stopped: vec![],
        };
        assert_eq!((done.summary(), done.exit_code()), (None, 0));
        assert_eq!(RankStatus::Exited(3).to_string(), "exited with status 3");
    }
}
