//! [`launch`]: the [`Supervisor`] run on real processes.
//!
//! The driver owns everything the supervisor must not: the children, their pipes, the
//! clock and the signals. Each pipe is read on its own small thread that cuts lines and
//! sends them into one bounded channel; SIGINT/SIGTERM arrive on the same channel. The loop
//! waits on that channel until the supervisor's next deadline, looks for exited ranks
//! (`waitpid` without blocking) every [`EXIT_POLL`] and as soon as a rank closes a pipe,
//! hands everything to the supervisor and carries out its actions. A rank is reaped only
//! to be reported at once, and the supervisor never asks to signal a rank reported gone,
//! so no signal can reach a reused pid.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use crate::lines::read_lines;
use crate::outcome::{LaunchOutcome, RankStatus};
use crate::signals::SignalForwarder;
use crate::supervisor::{Action, Config, Pid, Stream, Supervisor};
use crate::{
    check_ranks, LaunchError, ENV_LOCAL_RANK, ENV_LOCAL_WORLD_SIZE, ENV_RANK, ENV_WORLD_SIZE,
};

/// How often the loop looks for ranks that exited without closing their pipes (a
/// grandchild holds them open).
pub const EXIT_POLL: Duration = Duration::from_millis(10);
/// Lines (and other events) in flight from the readers to the loop: at most this many
/// lines of [`crate::MAX_LINE`] bytes are buffered; a full queue blocks the readers, and
/// so the ranks' writes, until the loop catches up.
const EVENT_QUEUE: usize = 256;
/// Events handled between two rounds of actions.
const EVENT_BATCH: usize = 256;
/// Reader threads only copy bytes; small stacks keep 2 × 4096 of them cheap.
const READER_STACK: usize = 128 * 1024;

/// How [`launch`] runs a job.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Stop the job after this long.
    pub timeout: Option<Duration>,
    /// Copy this rank's stdout without the rank prefix (a report the rank prints for
    /// the whole job, like a benchmark table).
    pub plain_stdout: Option<u32>,
    /// See [`Config::dump`](crate::supervisor::Config::dump).
    pub dump: Option<(i32, Duration)>,
    /// Elastic: see [`Config::restarts`](crate::supervisor::Config::restarts). A restarted
    /// rank gets [`ENV_JOIN`]`=1` besides its usual environment.
    pub restarts: Option<u32>,
}

/// Set to `1` for a rank restarted as a replacement (elastic launches).
pub const ENV_JOIN: &str = "TOPOCCL_JOIN";

/// What the readers and the signal forwarder tell the loop.
#[derive(Debug)]
pub(crate) enum Event {
    /// `life`: which process of the rank (`Supervisor::life`) wrote it.
    Line {
        rank: u32,
        life: u32,
        stream: Stream,
        line: Vec<u8>,
    },
    Closed {
        rank: u32,
        life: u32,
        stream: Stream,
    },
    Signal(i32),
}

/// Starts `ranks` copies of `program args` and supervises them until all are gone.
///
/// Every rank gets `extra_env` and then `TOPOCCL_RANK`, `TOPOCCL_WORLD_SIZE`,
/// `TOPOCCL_LOCAL_RANK` and `TOPOCCL_LOCAL_WORLD_SIZE`; stdin is `/dev/null`; stdout and
/// stderr are copied to the launcher's behind [`crate::rank_prefix`], a line at a time.
/// Each rank leads its own process group and, on Linux, is killed if the launcher dies.
///
/// The first rank to exit non-zero or die by a signal, `opts.timeout` (counted from the
/// call), or a SIGINT/SIGTERM to this process stops the job: the running ranks get SIGTERM
/// (the received signal, when interrupted) and, [`crate::KILL_GRACE`] later, SIGKILL; a
/// second signal skips the grace. See [`crate::supervisor`] for every rule.
///
/// Errors: a bad rank count, a program that cannot be started, or failing to start a later
/// rank or its output readers; ranks already started are killed and reaped first. Launches
/// may run concurrently in one process; each forwards the signals to its own ranks.
pub fn launch(
    program: &OsStr,
    args: &[OsString],
    ranks: u32,
    extra_env: &[(String, String)],
    opts: &LaunchOptions,
) -> Result<LaunchOutcome, LaunchError> {
    check_ranks(ranks)?;
    let (events_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
    // Before spawning, so that a Ctrl-C from here on stops the ranks instead of orphaning
    // them.
    let signals = SignalForwarder::start(events_tx.clone())?;
    let start = Instant::now();
    let mut sup = Supervisor::new(Config {
        timeout: opts.timeout,
        plain_stdout: opts.plain_stdout,
        dump: opts.dump,
        restarts: opts.restarts,
        ..Config::new(ranks)
    });
    let mut children: Vec<Option<Child>> = Vec::with_capacity(ranks as usize);
    let mut error = None;
    for rank in 0..ranks {
        let mut child = match spawn_rank(program, args, rank, ranks, extra_env) {
            Ok(child) => child,
            Err(e) => {
                sup.spawn_failed(rank, start.elapsed());
                error = Some(e);
                break;
            }
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        sup.spawned(rank, child.id(), start.elapsed());
        children.push(Some(child));
        let readers = start_reader(stdout, (rank, 0), Stream::Stdout, events_tx.clone())
            .map_err(|e| (Stream::Stdout, e))
            .and_then(|()| {
                start_reader(stderr, (rank, 0), Stream::Stderr, events_tx.clone())
                    .map_err(|e| (Stream::Stderr, e))
            });
        if let Err((stream, source)) = readers {
            // Nobody reads this stream or the ones after it: closed, for the supervisor.
            let now = start.elapsed();
            sup.closed(rank, stream, now);
            if stream == Stream::Stdout {
                sup.closed(rank, Stream::Stderr, now);
            }
            sup.spawn_failed(rank, now);
            error = Some(LaunchError::Reader { rank, source });
            break;
        }
    }
    // Elastic launches start replacements from the loop: they need the pieces here.
    let respawner = opts.restarts.map(|_| Respawner {
        program,
        args,
        ranks,
        extra_env,
        events: events_tx.clone(),
    });
    drop(events_tx);
    let outcome = supervise(&mut sup, &mut children, events, start, respawner.as_ref());
    // The event receiver is gone now, as the forwarder's drop needs.
    drop(signals);
    match error {
        Some(e) => Err(e),
        None => Ok(outcome),
    }
}

/// Runs the loop until the supervisor finishes. Takes the receiver so that it is dropped
/// on return: readers blocked on a full queue then give up and drain their pipes quietly.
fn supervise(
    sup: &mut Supervisor,
    children: &mut [Option<Child>],
    events: Receiver<Event>,
    start: Instant,
    respawner: Option<&Respawner<'_>>,
) -> LaunchOutcome {
    let mut sinks = Sinks::default();
    let mut next_look = Duration::ZERO;
    loop {
        let now = start.elapsed();
        if now >= next_look {
            look_for_exits(sup, children, now);
            next_look = now + EXIT_POLL;
        }
        sup.tick(now);
        while let Some(action) = sup.poll_action() {
            match action {
                Action::Print { stream, line } => sinks.print(stream, &line),
                Action::Signal { signal, ranks } => {
                    for (rank, pid) in ranks {
                        debug_assert!(children[rank as usize].is_some(), "rank {rank} reaped");
                        signal_rank(pid, signal);
                    }
                }
                Action::Respawn { rank } => {
                    let now = start.elapsed();
                    let life = sup.life(rank) + 1;
                    match respawner.map(|r| r.spawn(rank, life)) {
                        Some(Ok(child)) => {
                            sup.spawned(rank, child.id(), now);
                            if let Some(slot) = children.get_mut(rank as usize) {
                                *slot = Some(child);
                            }
                        }
                        Some(Err(_)) | None => sup.spawn_failed(rank, now),
                    }
                }
                Action::Finish(outcome) => return outcome,
            }
        }
        let any_running = children.iter().any(Option::is_some);
        let wake = match (sup.next_deadline(), any_running) {
            (Some(d), true) => d.min(next_look),
            (Some(d), false) => d,
            (None, true) => next_look,
            // Nothing to wait for but events (output of a job without deadlines, which
            // cannot be: with no rank running the output drain has one).
            (None, false) => now + EXIT_POLL,
        };
        let wait = wake.saturating_sub(start.elapsed());
        let first = match events.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            // Cannot happen while the signal forwarder holds a sender; wait as asked.
            Err(RecvTimeoutError::Disconnected) => {
                thread::sleep(wait);
                continue;
            }
        };
        let mut event = Some(first);
        for _ in 0..EVENT_BATCH {
            let Some(e) = event.take().or_else(|| events.try_recv().ok()) else {
                break;
            };
            let now = start.elapsed();
            match e {
                Event::Line {
                    rank,
                    life,
                    stream,
                    line,
                } => sup.output_of(rank, life, stream, &line, now),
                Event::Closed { rank, life, stream } => {
                    // A closed pipe usually means its rank has exited: look now.
                    next_look = Duration::ZERO;
                    sup.closed_of(rank, life, stream, now);
                }
                Event::Signal(signal) => sup.signal(signal, now),
            }
        }
    }
}

/// Reaps every rank that has exited and reports it. Ranks are looked at in rank order, so
/// when several have died since the last look, the lowest is reported first.
fn look_for_exits(sup: &mut Supervisor, children: &mut [Option<Child>], now: Duration) {
    for rank in 0..children.len() {
        let Some(child) = &mut children[rank] else {
            continue;
        };
        let status = match child.try_wait() {
            Ok(Some(status)) => rank_status(status),
            Ok(None) => continue,
            Err(_) => RankStatus::Lost,
        };
        children[rank] = None;
        if !status.success() && !sup.has_failed() {
            sup.suspended(&suspended_ranks(children));
        }
        sup.exited(rank as u32, status, now);
    }
}

/// The running ranks that are suspended: stopped by a signal (`SIGSTOP`, `SIGTSTP`) or
/// held by a debugger, as `/proc/PID/stat` says (state `T` or `t`).
fn suspended_ranks(children: &[Option<Child>]) -> Vec<u32> {
    (0u32..)
        .zip(children)
        .filter_map(|(rank, c)| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.as_ref()?.id())).ok()?;
            // The state follows the command name, which is in parentheses and may hold any
            // character: read after the last ')'.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            matches!(state, "T" | "t").then_some(rank)
        })
        .collect()
}

fn rank_status(status: ExitStatus) -> RankStatus {
    match (status.code(), status.signal()) {
        (Some(code), _) => RankStatus::Exited(code),
        (None, Some(signal)) => RankStatus::Signaled {
            signal,
            core_dumped: status.core_dumped(),
        },
        (None, None) => RankStatus::Lost,
    }
}

/// Signals the rank's process group, so that whatever the rank started goes too.
fn signal_rank(pid: Pid, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let group = unsafe { libc::kill(-pid, signal) };
    if group != 0 {
        // The rank moved itself to another group; it still has its own pid.
        // SAFETY: as above.
        unsafe { libc::kill(pid, signal) };
    }
}

/// The launcher's stdout and stderr. Once a write fails (a closed pipe) that stream's
/// lines are dropped, so the ranks never block on a reader that went away.
#[derive(Default)]
struct Sinks {
    closed: [bool; 2],
}

impl Sinks {
    fn print(&mut self, stream: Stream, line: &[u8]) {
        let i = stream.index();
        if self.closed[i] {
            return;
        }
        let written = match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line).and_then(|()| out.flush())
            }
            Stream::Stderr => io::stderr().lock().write_all(line),
        };
        self.closed[i] = written.is_err();
    }
}

/// What an elastic launch needs to start a replacement from the loop.
struct Respawner<'a> {
    program: &'a OsStr,
    args: &'a [OsString],
    ranks: u32,
    extra_env: &'a [(String, String)],
    events: SyncSender<Event>,
}

impl Respawner<'_> {
    /// Starts `rank` again with `TOPOCCL_JOIN=1`, its output read as the first one's was
    /// and tagged as its process `life`.
    fn spawn(&self, rank: u32, life: u32) -> Result<Child, LaunchError> {
        let mut env = self.extra_env.to_vec();
        env.push((ENV_JOIN.to_string(), "1".to_string()));
        let mut child = spawn_rank(self.program, self.args, rank, self.ranks, &env)?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for (pipe, stream) in [
            (Box::new(stdout) as Box<dyn Read + Send>, Stream::Stdout),
            (Box::new(stderr), Stream::Stderr),
        ] {
            if let Err(source) = start_reader(pipe, (rank, life), stream, self.events.clone()) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Reader { rank, source });
            }
        }
        Ok(child)
    }
}

fn spawn_rank(
    program: &OsStr,
    args: &[OsString],
    rank: u32,
    ranks: u32,
    extra_env: &[(String, String)],
) -> Result<Child, LaunchError> {
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
    cmd.spawn().map_err(|source| LaunchError::Spawn {
        rank,
        program: program.to_string_lossy().into_owned(),
        source,
    })
}

/// Copies one pipe of a rank, a line per event, on its own thread; says when the pipe has
/// ended. Once the loop is gone the rest is read and dropped.
fn start_reader(
    src: impl Read + Send + 'static,
    (rank, life): (u32, u32),
    stream: Stream,
    events: SyncSender<Event>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("topoccl-launch-output".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            let mut listening = true;
            // A read error ends this stream; the rank itself is supervised apart.
            let _ = read_lines(src, |line| {
                if listening {
                    let line = line.to_vec();
                    let e = Event::Line {
                        rank,
                        life,
                        stream,
                        line,
                    };
                    listening = events.send(e).is_ok();
                }
            });
            let _ = events.send(Event::Closed { rank, life, stream });
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
