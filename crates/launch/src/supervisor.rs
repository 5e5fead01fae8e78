//! What a launcher decides, as a state machine: no processes, no pipes, no clock.
//!
//! A driver tells the [`Supervisor`] what happened — a rank was spawned or could not be, a
//! rank printed a line or closed a stream, a rank exited, the launcher got a signal — and
//! what time it is (a `Duration` since the launch began, passed in with every input). The
//! supervisor answers with [`Action`]s, taken with [`Supervisor::poll_action`]: print a
//! line, signal some ranks, finish. [`Supervisor::next_deadline`] says when to call
//! [`Supervisor::tick`] if nothing else happens first.
//!
//! The job's life:
//!
//! 1. Ranks run. Their lines are printed behind `[rank] ` (rank `plain_stdout`'s stdout
//!    without it).
//! 2. The first rank to exit non-zero or die by a signal, the timeout, or a signal to the
//!    launcher stops the job: every running rank gets SIGTERM (the received signal, when
//!    interrupted), then SIGKILL `kill_grace` later; a second signal skips the grace. A
//!    rank that cannot be spawned stops the job with SIGKILL at once. With
//!    [`Config::dump`], a failed or timed-out job's ranks first get the dump signal and
//!    its grace to write their diagnostics (flight recorders) before the stop.
//! 3. `reap_grace` after SIGKILL the supervisor stops waiting for ranks that are still
//!    there (stuck in the kernel) and finishes, naming them.
//! 4. Once every rank is gone, their output gets `output_grace` to drain (a grandchild may
//!    hold a pipe open); a signal ends the wait at once.
//!
//! Elastic jobs ([`Config::restarts`]) change step 2 for failed ranks: a rank that exits
//! non-zero or dies by a signal leaves the others running (its survivors shrink their
//! communicator) and, while the restart budget lasts, is started again as a replacement
//! ([`Action::Respawn`]: the driver starts it with `TOPOCCL_JOIN=1`, and it joins at the
//! job's next `grow`). The job ends when every rank is gone; it failed (the first loss is
//! named) only if no rank finished successfully. The timeout and signals act as before.
//!
//! So with a timeout every state has a deadline: the launch finishes at the latest
//! `timeout + kill_grace + reap_grace + output_grace` after it began. Why it finished is
//! decided by one rule, [`Supervisor::fail`].
//!
//! Inputs are trusted to follow the processes' lives (spawned before exited, each rank
//! exits once); ones that do not are a driver bug, checked by debug assertions and
//! otherwise ignored. A [`Action::Signal`] never names a rank already reported exited, even
//! one queued before the exit was reported, so a driver that reaps a rank only to report it
//! never signals a pid the system may have reused.

use std::collections::VecDeque;
use std::io::Write;
use std::time::Duration;

use crate::outcome::{Ending, LaunchOutcome, RankStatus};
use crate::{KILL_GRACE, OUTPUT_GRACE, REAP_GRACE};

/// A process id as the driver knows it.
pub type Pid = u32;

/// One of a rank's two output streams, and the launcher's stream it is copied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this line (rank prefix and newline included) to the launcher's stream.
    Print { stream: Stream, line: Vec<u8> },
    /// Send `signal` to each of these ranks (its process group, so whatever it started goes
    /// too). Only ranks not reported exited, in rank order, never empty.
    Signal { signal: i32, ranks: Vec<(u32, Pid)> },
    /// Start rank `rank` again, as a replacement that joins the running job (elastic
    /// jobs only); the driver reports it with [`Supervisor::spawned`] or
    /// [`Supervisor::spawn_failed`].
    Respawn { rank: u32 },
    /// The launch is over; nothing follows.
    Finish(LaunchOutcome),
}

/// How a [`Supervisor`] runs a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Ranks in the job, numbered from 0.
    pub ranks: u32,
    /// Stop the job this long after it began.
    pub timeout: Option<Duration>,
    /// Print this rank's stdout without the rank prefix.
    pub plain_stdout: Option<u32>,
    /// From the stop signal to SIGKILL.
    pub kill_grace: Duration,
    /// From SIGKILL to giving up on ranks that are still there.
    pub reap_grace: Duration,
    /// From the last rank gone to giving up on their output.
    pub output_grace: Duration,
    /// Before stopping a job that failed or timed out: the signal that asks the running
    /// ranks to write their diagnostics (SIGUSR1 for topoccl's flight recorder), and how
    /// long they get before the stop signal. `None`: stop at once.
    pub dump: Option<(i32, Duration)>,
    /// `None`: the first failure stops the job. `Some(n)`: elastic: a failed rank leaves
    /// the others running and is restarted as a replacement, at most `n` times in all.
    pub restarts: Option<u32>,
}

impl Config {
    /// `ranks` ranks, no timeout, the crate's graces.
    pub fn new(ranks: u32) -> Config {
        Config {
            ranks,
            timeout: None,
            plain_stdout: None,
            kill_grace: KILL_GRACE,
            reap_grace: REAP_GRACE,
            output_grace: OUTPUT_GRACE,
            dump: None,
            restarts: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Not spawned (yet, or ever if spawning stopped).
    Waiting,
    Running(Pid),
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing has gone wrong.
    Running,
    /// The job failed; the dump signal went out; the stop signal follows at `stop_at`.
    Dumping {
        stop_at: Duration,
    },
    /// The stop signal went out; SIGKILL follows at `kill_at`.
    Stopping {
        kill_at: Duration,
    },
    /// SIGKILL went out; ranks still there at `give_up_at` are given up on.
    Killed {
        give_up_at: Duration,
    },
    Finished,
}

/// The supervisor of one launch. See the [module docs](self).
#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    /// Width of the rank numbers in prefixes.
    width: usize,
    life: Vec<Life>,
    /// Per rank, whether its current process's stdout and stderr are still open.
    open: Vec<[bool; 2]>,
    /// Per rank, which process is its current one (0 for the first; a replacement of an
    /// elastic job counts up): a stream's events say which process they come from.
    lives: Vec<u32>,
    /// Streams of earlier processes of a rank still open when it was started again
    /// (rank, life, open): their last lines may come after the replacement's first.
    stale: Vec<(u32, u32, [bool; 2])>,
    /// Open streams in all, stale ones included.
    open_streams: usize,
    running: usize,
    /// Every rank that will ever run has been spawned.
    spawn_over: bool,
    ending: Option<Ending>,
    phase: Phase,
    /// The signal the stop sent last: ranks spawned during the stop get it too.
    stop_signal: i32,
    stopped: Vec<u32>,
    /// Ranks found suspended (stopped by a signal or held by a debugger) when the job
    /// failed: what the others were most likely waiting for.
    suspended: Vec<u32>,
    drain_until: Option<Duration>,
    actions: VecDeque<Action>,
    /// Elastic jobs: restarts left, respawns asked for and not yet reported, the first
    /// rank lost, and whether any rank finished successfully.
    restarts_left: u32,
    respawning: u32,
    first_loss: Option<Ending>,
    succeeded: bool,
}

impl Supervisor {
    pub fn new(config: Config) -> Supervisor {
        let n = config.ranks as usize;
        Supervisor {
            width: config.ranks.saturating_sub(1).to_string().len(),
            life: vec![Life::Waiting; n],
            open: vec![[false; 2]; n],
            lives: vec![0; n],
            stale: Vec::new(),
            open_streams: 0,
            running: 0,
            spawn_over: n == 0,
            ending: None,
            phase: Phase::Running,
            stop_signal: libc::SIGTERM,
            stopped: Vec::new(),
            suspended: Vec::new(),
            drain_until: None,
            actions: VecDeque::new(),
            restarts_left: config.restarts.unwrap_or(0),
            respawning: 0,
            first_loss: None,
            succeeded: false,
            config,
        }
    }

    /// Rank `rank` runs as process `pid`, with both streams open. Ranks are spawned in
    /// order; the last one ends spawning. A rank spawned while the job is stopping gets the
    /// stop's signal at once.
    pub fn spawned(&mut self, rank: u32, pid: Pid, now: Duration) {
        let r = rank as usize;
        let waiting = self.life.get(r) == Some(&Life::Waiting);
        let respawn = self.spawn_over && waiting && self.respawning > 0;
        let expected = waiting && (!self.spawn_over || respawn);
        debug_assert!(expected, "rank {rank} spawned out of turn");
        if !expected || self.phase == Phase::Finished {
            return;
        }
        if respawn {
            self.respawning -= 1;
            self.life[r] = Life::Running(pid);
            if self.open[r] != [false; 2] {
                self.stale.push((rank, self.lives[r], self.open[r]));
            }
            self.lives[r] += 1;
            self.open[r] = [true; 2];
            self.open_streams += 2;
            self.running += 1;
            if matches!(self.phase, Phase::Stopping { .. } | Phase::Killed { .. }) {
                self.push_signal(self.stop_signal, vec![(rank, pid)]);
            }
            self.advance(now);
            return;
        }
        self.life[r] = Life::Running(pid);
        self.open[r] = [true; 2];
        self.open_streams += 2;
        self.running += 1;
        if rank + 1 == self.config.ranks {
            self.spawn_over = true;
        }
        if matches!(self.phase, Phase::Stopping { .. } | Phase::Killed { .. }) {
            self.stopped.push(rank);
            self.push_signal(self.stop_signal, vec![(rank, pid)]);
        }
        self.advance(now);
    }

    /// Rank `rank` could not be started; no later rank will be. The ranks already running
    /// are killed without grace.
    pub fn spawn_failed(&mut self, rank: u32, now: Duration) {
        if self.phase == Phase::Finished {
            return;
        }
        if self.spawn_over && self.respawning > 0 {
            // A replacement that could not start: the job goes on without it.
            self.respawning -= 1;
            self.note(format!(
                "[launcher] rank {rank}: its replacement could not be started"
            ));
            self.advance(now);
            return;
        }
        self.spawn_over = true;
        if let Phase::Stopping { kill_at } = &mut self.phase {
            *kill_at = now;
        }
        self.fail(Ending::NotStarted { rank }, libc::SIGKILL, now);
        self.advance(now);
    }

    /// Which process of `rank` is its current one: 0 for the first, one more for each
    /// replacement started ([`Supervisor::output_of`]).
    pub fn life(&self, rank: u32) -> u32 {
        self.lives.get(rank as usize).copied().unwrap_or(0)
    }

    /// The open flags of `rank`'s process `life`, if it has streams still tracked.
    fn streams_of(&mut self, rank: u32, life: u32) -> Option<&mut [bool; 2]> {
        if self.lives.get(rank as usize) == Some(&life) {
            return self.open.get_mut(rank as usize);
        }
        self.stale
            .iter_mut()
            .find(|(r, l, _)| *r == rank && *l == life)
            .map(|(_, _, open)| open)
    }

    /// Rank `rank`'s current process wrote `line` (without its newline) to `stream`.
    pub fn output(&mut self, rank: u32, stream: Stream, line: &[u8], now: Duration) {
        self.output_of(rank, self.life(rank), stream, line, now);
    }

    /// Process `life` of rank `rank` wrote `line` (without its newline) to `stream`.
    pub fn output_of(&mut self, rank: u32, life: u32, stream: Stream, line: &[u8], now: Duration) {
        let open = self
            .streams_of(rank, life)
            .is_some_and(|o| o[stream.index()]);
        if open && self.phase != Phase::Finished {
            let mut text = Vec::with_capacity(self.width + 4 + line.len());
            if !(stream == Stream::Stdout && self.config.plain_stdout == Some(rank)) {
                let width = self.width;
                // Writing to a Vec cannot fail.
                let _ = write!(text, "[{rank:>width$}] ");
            }
            text.extend_from_slice(line);
            text.push(b'\n');
            self.actions.push_back(Action::Print { stream, line: text });
        }
        self.advance(now);
    }

    /// Rank `rank`'s current process's `stream` ended (the pipe closed, or reading it
    /// failed).
    pub fn closed(&mut self, rank: u32, stream: Stream, now: Duration) {
        self.closed_of(rank, self.life(rank), stream, now);
    }

    /// Process `life` of rank `rank` ended `stream`. The end of a replaced process's
    /// stream never closes its replacement's.
    pub fn closed_of(&mut self, rank: u32, life: u32, stream: Stream, now: Duration) {
        if let Some(open) = self.streams_of(rank, life) {
            if std::mem::replace(&mut open[stream.index()], false) {
                self.open_streams -= 1;
            }
        }
        self.stale.retain(|(_, _, open)| *open != [false; 2]);
        self.advance(now);
    }

    /// Whether the job has failed (a rank, the timeout or a signal ended it): a launcher
    /// looks for suspended ranks ([`Supervisor::suspended`]) before reporting the first
    /// failure.
    pub fn has_failed(&self) -> bool {
        self.ending.is_some()
    }

    /// These running ranks are suspended (stopped by `SIGSTOP` or held by a debugger) as
    /// the first failure is about to be reported: the summary names them, since the
    /// others most likely failed waiting for them. Ignored once the job has failed.
    pub fn suspended(&mut self, ranks: &[u32]) {
        if self.ending.is_none() {
            self.suspended = ranks.to_vec();
        }
    }

    /// Rank `rank` exited (and was reaped) with `status`.
    pub fn exited(&mut self, rank: u32, status: RankStatus, now: Duration) {
        let r = rank as usize;
        let running = matches!(self.life.get(r), Some(Life::Running(_)));
        debug_assert!(running, "rank {rank} exited without running");
        if !running || self.phase == Phase::Finished {
            return;
        }
        self.life[r] = Life::Gone;
        self.running -= 1;
        // Its pid may be reused from now on: no signal still queued may reach it.
        self.actions.retain_mut(|a| match a {
            Action::Signal { ranks, .. } => {
                ranks.retain(|&(q, _)| q != rank);
                !ranks.is_empty()
            }
            _ => true,
        });
        if status.success() {
            self.succeeded = true;
        } else if self.config.restarts.is_some() && self.phase == Phase::Running {
            self.lose(rank, status);
        } else {
            self.fail(Ending::RankFailed { rank, status }, libc::SIGTERM, now);
        }
        self.advance(now);
    }

    /// An elastic job lost `rank`: the others go on; a replacement starts while the
    /// budget lasts.
    fn lose(&mut self, rank: u32, status: RankStatus) {
        self.note(format!(
            "[launcher] rank {rank} {status}; the other ranks go on (elastic)"
        ));
        self.first_loss
            .get_or_insert(Ending::RankFailed { rank, status });
        if self.restarts_left > 0 {
            self.restarts_left -= 1;
            self.respawning += 1;
            self.life[rank as usize] = Life::Waiting;
            self.note(format!(
                "[launcher] restarting rank {rank} as a replacement that joins the job ({} \
                 restart(s) left)",
                self.restarts_left
            ));
            self.actions.push_back(Action::Respawn { rank });
        }
    }

    /// A line of the launcher's own on its stderr.
    fn note(&mut self, text: String) {
        let mut line = text.into_bytes();
        line.push(b'\n');
        self.actions.push_back(Action::Print {
            stream: Stream::Stderr,
            line,
        });
    }

    /// The launcher received `signal` (SIGINT, SIGTERM): forwarded to the ranks; while
    /// they are already stopping, SIGKILL at once; once they are all gone, the launch stops
    /// waiting for their output.
    pub fn signal(&mut self, signal: i32, now: Duration) {
        match self.phase {
            Phase::Finished => return,
            _ if self.draining() => {
                self.finish();
                return;
            }
            Phase::Running => self.fail(Ending::Interrupted { signal }, signal, now),
            Phase::Dumping { ref mut stop_at } => *stop_at = now,
            Phase::Stopping { ref mut kill_at } => *kill_at = now,
            Phase::Killed { .. } => {}
        }
        self.advance(now);
    }

    /// Time passed: acts on the deadlines that are due.
    pub fn tick(&mut self, now: Duration) {
        self.advance(now);
    }

    /// The next action to carry out, in order; `None` when there is nothing to do now.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Supervisor::tick`] must be called if no other input comes first; `None`
    /// while no deadline is pending (no timeout and every rank healthy, or finished).
    pub fn next_deadline(&self) -> Option<Duration> {
        let phase = match self.phase {
            Phase::Finished => return None,
            Phase::Running if self.running > 0 => self.config.timeout,
            Phase::Running => None,
            Phase::Dumping { stop_at } => (self.running > 0).then_some(stop_at),
            Phase::Stopping { kill_at } => (self.running > 0).then_some(kill_at),
            Phase::Killed { give_up_at } => (self.running > 0).then_some(give_up_at),
        };
        let drain = self.drain_until.filter(|_| self.draining());
        match (phase, drain) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether [`Action::Finish`] has been queued.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The one rule for why a launch ends: **the first cause the supervisor learns of is
    /// the one reported** — a rank exiting non-zero or dying by a signal, a signal to the
    /// launcher, the timeout, a rank that could not be started. Everything after it (ranks
    /// dying of the stop, later failures, a second signal) is a consequence and blamed on
    /// nothing. Exits are learned in the order the driver reports them, so when several
    /// ranks die between two looks the driver takes, the first one it reports is named.
    ///
    /// The first cause also starts the stop: the running ranks get `signal`, and SIGKILL
    /// after the grace (at once if `signal` is SIGKILL).
    ///
    /// A failed rank or the timeout, with [`Config::dump`], sends the dump signal first.
    fn fail(&mut self, cause: Ending, signal: i32, now: Duration) {
        let dump = match cause {
            Ending::RankFailed { .. } | Ending::TimedOut { .. } => self.config.dump,
            _ => None,
        };
        if self.ending.is_none() {
            self.ending = Some(cause);
        }
        if self.phase == Phase::Running {
            self.stopped = self.running_ranks().map(|(r, _)| r).collect();
            self.stop_signal = signal;
            if let Some((dump_signal, grace)) = dump.filter(|_| signal != libc::SIGKILL) {
                self.push_signal(dump_signal, self.running_ranks().collect());
                self.phase = Phase::Dumping {
                    stop_at: now + grace,
                };
                return;
            }
            self.push_signal(signal, self.running_ranks().collect());
            self.phase = if signal == libc::SIGKILL {
                Phase::Killed {
                    give_up_at: now + self.config.reap_grace,
                }
            } else {
                Phase::Stopping {
                    kill_at: now + self.config.kill_grace,
                }
            };
        }
    }

    /// Acts on whatever is due at `now`.
    fn advance(&mut self, now: Duration) {
        match self.phase {
            Phase::Finished => return,
            Phase::Running => {
                if let Some(after) = self.config.timeout {
                    if self.running > 0 && now >= after {
                        self.fail(Ending::TimedOut { after }, libc::SIGTERM, now);
                    }
                }
            }
            Phase::Dumping { stop_at } => {
                if self.running > 0 && now >= stop_at {
                    self.push_signal(self.stop_signal, self.running_ranks().collect());
                    self.phase = Phase::Stopping {
                        kill_at: now + self.config.kill_grace,
                    };
                }
            }
            Phase::Stopping { kill_at } => {
                if self.running > 0 && now >= kill_at {
                    self.stop_signal = libc::SIGKILL;
                    self.push_signal(libc::SIGKILL, self.running_ranks().collect());
                    self.phase = Phase::Killed {
                        give_up_at: now + self.config.reap_grace,
                    };
                }
            }
            Phase::Killed { give_up_at } => {
                if self.running > 0 && now >= give_up_at {
                    self.finish();
                    return;
                }
            }
        }
        if self.draining() {
            let until = *self
                .drain_until
                .get_or_insert(now + self.config.output_grace);
            if self.open_streams == 0 || now >= until {
                self.finish();
            }
        }
    }

    /// Every rank that will run has run and is gone: only output is left.
    fn draining(&self) -> bool {
        self.spawn_over && self.running == 0 && self.respawning == 0
    }

    fn running_ranks(&self) -> impl Iterator<Item = (u32, Pid)> + '_ {
        (0u32..).zip(&self.life).filter_map(|(r, l)| match *l {
            Life::Running(pid) => Some((r, pid)),
            _ => None,
        })
    }

    fn push_signal(&mut self, signal: i32, ranks: Vec<(u32, Pid)>) {
        if !ranks.is_empty() {
            self.actions.push_back(Action::Signal { signal, ranks });
        }
    }

    fn finish(&mut self) {
        let outcome = LaunchOutcome {
            ending: self
                .ending
                .clone()
                .unwrap_or_else(|| match &self.first_loss {
                    Some(loss) if !self.succeeded => loss.clone(),
                    _ => Ending::Completed,
                }),
            stopped: std::mem::take(&mut self.stopped),
            suspended: std::mem::take(&mut self.suspended),
            unreaped: self.running_ranks().map(|(r, _)| r).collect(),
        };
        self.phase = Phase::Finished;
        self.actions.push_back(Action::Finish(outcome));
    }
}

#[cfg(test)]
mod tests;
