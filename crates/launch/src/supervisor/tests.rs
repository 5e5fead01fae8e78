//! The supervisor driven by hand: every decision a launcher makes, without a process.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::outcome::RankStatus::{Exited, Signaled};
use crate::TIMEOUT_EXIT_CODE;

const SIGINT: i32 = libc::SIGINT;
const SIGTERM: i32 = libc::SIGTERM;
const SIGKILL: i32 = libc::SIGKILL;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pid(rank: u32) -> Pid {
    1000 + rank
}

fn killed(signal: i32) -> RankStatus {
    Signaled {
        signal,
        core_dumped: false,
    }
}

/// A supervisor of `ranks` ranks, all spawned at time 0.
fn started(config: Config) -> Supervisor {
    let ranks = config.ranks;
    let mut s = Supervisor::new(config);
    for r in 0..ranks {
        s.spawned(r, pid(r), ms(0));
    }
    s
}

fn actions(s: &mut Supervisor) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn signal(signal: i32, ranks: &[u32]) -> Action {
    Action::Signal {
        signal,
        ranks: ranks.iter().map(|&r| (r, pid(r))).collect(),
    }
}

/// Rank `rank` exits with `status` and its streams close, at `now`.
fn ends(s: &mut Supervisor, rank: u32, status: RankStatus, now: Duration) {
    s.exited(rank, status, now);
    s.closed(rank, Stream::Stdout, now);
    s.closed(rank, Stream::Stderr, now);
}

fn finished(s: &mut Supervisor) -> LaunchOutcome {
    match actions(s).pop() {
        Some(Action::Finish(outcome)) => {
            assert!(s.is_finished());
            outcome
        }
        other => panic!("not finished: {other:?}"),
    }
}

#[test]
fn all_ranks_succeeding_exits_zero() {
    let mut s = started(Config::new(3));
    assert_eq!(s.next_deadline(), None, "no deadline while all is well");
    for r in 0..3 {
        ends(&mut s, r, Exited(0), ms(10 * u64::from(r)));
    }
    let all = actions(&mut s);
    assert_eq!(all.len(), 1, "{all:?}");
    let Action::Finish(outcome) = &all[0] else {
        panic!("{all:?}")
    };
    assert_eq!(outcome.ending, Ending::Completed);
    assert!(outcome.stopped.is_empty() && outcome.unreaped.is_empty());
    assert_eq!((outcome.exit_code(), outcome.summary()), (0, None));
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn the_first_failure_stops_the_job() {
    let mut s = started(Config::new(4));
    s.exited(1, Exited(3), ms(50));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 2, 3])]);
    assert_eq!(s.next_deadline(), Some(ms(50) + KILL_GRACE));
    // The others die of the SIGTERM: consequences, not culprits.
    for r in [0, 2, 3] {
        ends(&mut s, r, killed(SIGTERM), ms(60));
    }
    s.closed(1, Stream::Stdout, ms(60));
    s.closed(1, Stream::Stderr, ms(60));
    let outcome = finished(&mut s);
    assert_eq!(
        outcome.ending,
        Ending::RankFailed {
            rank: 1,
            status: Exited(3)
        }
    );
    assert_eq!(outcome.exit_code(), 3);
    assert_eq!(
        outcome.summary().unwrap(),
        "rank 1 failed first: exited with status 3; stopped ranks 0, 2, 3"
    );
}

#[test]
fn a_rank_suspended_when_the_first_failure_comes_is_named_before_it() {
    let mut s = started(Config::new(4));
    // Rank 3 was stopped (SIGSTOP); rank 2 gave up waiting for it.
    assert!(!s.has_failed());
    s.suspended(&[3]);
    s.exited(2, Exited(1), ms(50));
    assert!(s.has_failed());
    // Later looks change nothing: the first failure's picture stands.
    s.suspended(&[0, 1]);
    for r in [0, 1, 3] {
        ends(&mut s, r, killed(SIGTERM), ms(60));
    }
    s.closed(2, Stream::Stdout, ms(60));
    s.closed(2, Stream::Stderr, ms(60));
    let outcome = finished(&mut s);
    assert_eq!(outcome.suspended, [3]);
    assert_eq!(outcome.exit_code(), 1);
    assert!(
        outcome.summary().unwrap().starts_with(
            "rank 3 was suspended (SIGSTOP or a debugger) and made no progress, so the others \
             could not go on; rank 2 failed first: exited with status 1"
        ),
        "{}",
        outcome.summary().unwrap()
    );
}

#[test]
fn a_rank_killed_by_a_signal_fails_the_job_with_128_plus_the_signal() {
    let mut s = started(Config::new(2));
    s.exited(1, killed(SIGKILL), ms(5));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0])]);
    ends(&mut s, 0, Exited(0), ms(6));
    s.closed(1, Stream::Stdout, ms(6));
    s.closed(1, Stream::Stderr, ms(6));
    let outcome = finished(&mut s);
    assert_eq!(outcome.exit_code(), 137);
    assert_eq!(
        outcome.summary().unwrap(),
        "rank 1 failed first: killed by signal 9 (SIGKILL); stopped rank 0"
    );
}

#[test]
fn the_first_failure_reported_is_blamed_when_several_die() {
    let mut s = started(Config::new(4));
    // Two ranks found dead in one look, reported in rank order: the lower is named.
    s.exited(0, Exited(1), ms(10));
    s.exited(2, Exited(2), ms(10));
    // A later, different failure changes nothing either.
    s.exited(3, killed(libc::SIGSEGV), ms(20));
    // The stop's SIGTERM, not yet carried out, no longer names the ranks since gone.
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[1])]);
    ends(&mut s, 1, Exited(0), ms(30));
    for r in [0, 2, 3] {
        s.closed(r, Stream::Stdout, ms(30));
        s.closed(r, Stream::Stderr, ms(30));
    }
    let outcome = finished(&mut s);
    assert_eq!(
        outcome.ending,
        Ending::RankFailed {
            rank: 0,
            status: Exited(1)
        }
    );
    assert_eq!(outcome.stopped, [1, 2, 3], "running when the stop began");
    assert_eq!(outcome.exit_code(), 1);
}

#[test]
fn grace_then_kill() {
    let mut s = started(Config::new(3));
    s.exited(0, Exited(1), ms(100));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[1, 2])]);
    let kill_at = ms(100) + KILL_GRACE;
    assert_eq!(s.next_deadline(), Some(kill_at));
    // Rank 1 obeys; rank 2 ignores SIGTERM.
    ends(&mut s, 1, killed(SIGTERM), ms(200));
    s.tick(kill_at - ms(1));
    assert_eq!(actions(&mut s), []);
    s.tick(kill_at);
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[2])]);
    // SIGKILL goes out once.
    s.tick(kill_at + ms(1));
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.next_deadline(), Some(kill_at + REAP_GRACE));
    ends(&mut s, 2, killed(SIGKILL), kill_at + ms(2));
    s.closed(0, Stream::Stdout, kill_at + ms(2));
    s.closed(0, Stream::Stderr, kill_at + ms(2));
    let outcome = finished(&mut s);
    assert_eq!(outcome.stopped, [1, 2]);
    assert_eq!(outcome.exit_code(), 1);
}

#[test]
fn signals_are_forwarded_and_a_second_one_skips_the_grace() {
    let mut s = started(Config::new(2));
    s.signal(SIGINT, ms(40));
    assert_eq!(actions(&mut s), [signal(SIGINT, &[0, 1])]);
    s.signal(SIGINT, ms(41));
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[0, 1])]);
    // A third changes nothing more.
    s.signal(SIGTERM, ms(42));
    assert_eq!(actions(&mut s), []);
    ends(&mut s, 0, killed(SIGINT), ms(43));
    ends(&mut s, 1, killed(SIGKILL), ms(43));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::Interrupted { signal: SIGINT });
    assert_eq!(outcome.exit_code(), 130);
    assert_eq!(
        outcome.summary().unwrap(),
        "interrupted by SIGINT; stopped ranks 0, 1"
    );
}

#[test]
fn sigterm_to_the_launcher_is_143() {
    let mut s = started(Config::new(2));
    s.signal(SIGTERM, ms(1));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 1])]);
    ends(&mut s, 0, killed(SIGTERM), ms(2));
    ends(&mut s, 1, killed(SIGTERM), ms(2));
    let outcome = finished(&mut s);
    assert_eq!(outcome.exit_code(), 143);
    assert_eq!(
        outcome.summary().unwrap(),
        "interrupted by SIGTERM; stopped ranks 0, 1"
    );
}

#[test]
fn a_failure_during_an_interrupt_is_a_consequence() {
    let mut s = started(Config::new(2));
    s.signal(SIGINT, ms(1));
    ends(&mut s, 0, Exited(1), ms(2));
    ends(&mut s, 1, Exited(0), ms(2));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::Interrupted { signal: SIGINT });
}

#[test]
fn the_timeout_stops_the_ranks_still_running() {
    let mut config = Config::new(3);
    config.timeout = Some(ms(300));
    let mut s = started(config);
    assert_eq!(s.next_deadline(), Some(ms(300)));
    ends(&mut s, 1, Exited(0), ms(10));
    s.tick(ms(299));
    assert_eq!(actions(&mut s), []);
    s.tick(ms(300));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 2])]);
    ends(&mut s, 0, killed(SIGTERM), ms(310));
    ends(&mut s, 2, killed(SIGTERM), ms(310));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::TimedOut { after: ms(300) });
    assert_eq!(outcome.exit_code(), TIMEOUT_EXIT_CODE);
    assert_eq!(
        outcome.summary().unwrap(),
        "timed out after 0.3 s; ranks 0, 2 still running"
    );
}

#[test]
fn a_failure_seen_at_the_timeout_is_blamed_before_it() {
    let mut config = Config::new(2);
    config.timeout = Some(ms(300));
    let mut s = started(config);
    s.exited(0, Exited(7), ms(300));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[1])]);
    ends(&mut s, 1, killed(SIGTERM), ms(301));
    s.closed(0, Stream::Stdout, ms(301));
    s.closed(0, Stream::Stderr, ms(301));
    assert_eq!(finished(&mut s).exit_code(), 7);
}

#[test]
fn no_timeout_once_every_rank_is_gone() {
    let mut config = Config::new(1);
    config.timeout = Some(ms(100));
    let mut s = started(config);
    s.exited(0, Exited(0), ms(50));
    // Its output still drains; the timeout has nothing left to stop.
    assert_eq!(s.next_deadline(), Some(ms(50) + OUTPUT_GRACE));
    s.tick(ms(100));
    assert_eq!(actions(&mut s), []);
    s.closed(0, Stream::Stdout, ms(120));
    s.closed(0, Stream::Stderr, ms(120));
    assert_eq!(finished(&mut s).ending, Ending::Completed);
}

#[test]
fn output_is_prefixed_and_rank_plain_stdout_is_not() {
    let mut config = Config::new(11);
    config.plain_stdout = Some(0);
    let mut s = started(config);
    s.output(3, Stream::Stdout, b"hello", ms(1));
    s.output(10, Stream::Stderr, b"", ms(1));
    s.output(0, Stream::Stdout, b"# report", ms(1));
    s.output(0, Stream::Stderr, b"warning", ms(1));
    let print = |stream, line: &[u8]| Action::Print {
        stream,
        line: line.to_vec(),
    };
    assert_eq!(
        actions(&mut s),
        [
            print(Stream::Stdout, b"[ 3] hello\n"),
            print(Stream::Stderr, b"[10] \n"),
            print(Stream::Stdout, b"# report\n"),
            print(Stream::Stderr, b"[ 0] warning\n"),
        ]
    );
    // Nothing from a closed stream or a rank that does not exist.
    s.closed(3, Stream::Stdout, ms(2));
    s.output(3, Stream::Stdout, b"late", ms(2));
    s.output(11, Stream::Stdout, b"who", ms(2));
    assert_eq!(actions(&mut s), []);
    // Output of a rank that has exited is still printed (its pipe is still open).
    s.exited(4, Exited(0), ms(3));
    s.output(4, Stream::Stdout, b"bye", ms(3));
    assert_eq!(actions(&mut s), [print(Stream::Stdout, b"[ 4] bye\n")]);
}

#[test]
fn output_drains_for_a_bounded_time_after_the_last_rank() {
    let mut s = started(Config::new(2));
    ends(&mut s, 0, Exited(0), ms(10));
    s.exited(1, Exited(0), ms(20));
    // Rank 1's stdout is held open by something it started.
    s.closed(1, Stream::Stderr, ms(20));
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.next_deadline(), Some(ms(20) + OUTPUT_GRACE));
    s.output(1, Stream::Stdout, b"from a grandchild", ms(30));
    assert_eq!(actions(&mut s).len(), 1);
    s.tick(ms(20) + OUTPUT_GRACE - ms(1));
    assert_eq!(actions(&mut s), []);
    s.tick(ms(20) + OUTPUT_GRACE);
    assert_eq!(finished(&mut s).ending, Ending::Completed);
    // Nothing after the end.
    s.output(1, Stream::Stdout, b"later", ms(5000));
    s.signal(SIGINT, ms(5000));
    s.tick(ms(9000));
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn a_signal_while_output_drains_ends_the_wait() {
    let mut s = started(Config::new(1));
    s.exited(0, Exited(0), ms(10));
    s.signal(SIGINT, ms(11));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::Completed, "the job had succeeded");
}

#[test]
fn ranks_still_there_after_sigkill_are_given_up_on() {
    let mut config = Config::new(3);
    config.timeout = Some(ms(100));
    let mut s = started(config);
    s.tick(ms(100));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 1, 2])]);
    ends(&mut s, 0, killed(SIGTERM), ms(110));
    let kill_at = ms(100) + KILL_GRACE;
    s.tick(kill_at);
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[1, 2])]);
    ends(&mut s, 1, killed(SIGKILL), kill_at + ms(1));
    s.tick(kill_at + REAP_GRACE - ms(1));
    assert_eq!(actions(&mut s), []);
    assert_eq!(s.next_deadline(), Some(kill_at + REAP_GRACE));
    s.tick(kill_at + REAP_GRACE);
    let outcome = finished(&mut s);
    assert_eq!(outcome.unreaped, [2]);
    assert_eq!(outcome.exit_code(), TIMEOUT_EXIT_CODE);
    assert_eq!(
        outcome.summary().unwrap(),
        "timed out after 0.1 s; ranks 0-2 still running; rank 2 still there 5 s after SIGKILL"
    );
}

#[test]
fn a_rank_that_cannot_start_kills_the_others_at_once() {
    let mut s = Supervisor::new(Config::new(4));
    s.spawned(0, pid(0), ms(0));
    s.spawned(1, pid(1), ms(1));
    s.spawn_failed(2, ms(2));
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[0, 1])]);
    assert_eq!(s.next_deadline(), Some(ms(2) + REAP_GRACE));
    ends(&mut s, 0, killed(SIGKILL), ms(3));
    ends(&mut s, 1, killed(SIGKILL), ms(3));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::NotStarted { rank: 2 });
    assert_eq!(outcome.stopped, [0, 1]);
    assert_eq!(outcome.exit_code(), 1);
}

#[test]
fn the_first_rank_not_starting_ends_at_once() {
    let mut s = Supervisor::new(Config::new(4));
    s.spawn_failed(0, ms(0));
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::NotStarted { rank: 0 });
    assert!(outcome.stopped.is_empty());
}

#[test]
fn a_spawn_failure_while_stopping_skips_the_grace() {
    let mut s = Supervisor::new(Config::new(3));
    s.spawned(0, pid(0), ms(0));
    s.signal(SIGTERM, ms(1));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0])]);
    s.spawn_failed(1, ms(2));
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[0])]);
    ends(&mut s, 0, killed(SIGKILL), ms(3));
    assert_eq!(
        finished(&mut s).ending,
        Ending::Interrupted { signal: SIGTERM }
    );
}

#[test]
fn a_rank_spawned_while_stopping_gets_the_stop_signal() {
    let mut s = Supervisor::new(Config::new(3));
    s.spawned(0, pid(0), ms(0));
    s.signal(SIGINT, ms(1));
    assert_eq!(actions(&mut s), [signal(SIGINT, &[0])]);
    s.spawned(1, pid(1), ms(2));
    assert_eq!(actions(&mut s), [signal(SIGINT, &[1])]);
    s.tick(ms(1) + KILL_GRACE);
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[0, 1])]);
    s.spawned(2, pid(2), ms(1) + KILL_GRACE);
    assert_eq!(actions(&mut s), [signal(SIGKILL, &[2])]);
    for r in 0..3 {
        ends(&mut s, r, killed(SIGKILL), ms(1) + KILL_GRACE);
    }
    assert_eq!(finished(&mut s).stopped, [0, 1, 2]);
}

#[test]
fn a_queued_signal_never_reaches_a_rank_reported_exited() {
    let mut s = started(Config::new(3));
    s.signal(SIGTERM, ms(1));
    // The driver reaps rank 1 before carrying out the signal: its pid may be reused.
    s.exited(1, killed(SIGTERM), ms(1));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 2])]);
    s.tick(ms(1) + KILL_GRACE);
    s.exited(0, killed(SIGTERM), ms(1) + KILL_GRACE);
    s.exited(2, killed(SIGTERM), ms(1) + KILL_GRACE);
    // The SIGKILL action lost both ranks, so it is gone.
    assert!(actions(&mut s)
        .iter()
        .all(|a| !matches!(a, Action::Signal { .. })));
}

// ---- Any sequence of events: the invariants hold and the launch always ends. ----

#[derive(Clone, Debug)]
enum Event {
    /// A rank (index modulo the world) exits: 0 success, 1 status 1, 2 killed by SIGKILL.
    Exit(u32, u8),
    Signal(bool),
    Line(u32, bool),
    Close(u32, bool),
    Wait(u16),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..8u32, 0..3u8).prop_map(|(r, k)| Event::Exit(r, k)),
        any::<bool>().prop_map(Event::Signal),
        (0..8u32, any::<bool>()).prop_map(|(r, e)| Event::Line(r, e)),
        (0..8u32, any::<bool>()).prop_map(|(r, e)| Event::Close(r, e)),
        (0..5000u16).prop_map(Event::Wait),
    ]
}

/// A driver that checks every action against what it knows of its processes.
struct World {
    s: Supervisor,
    now: Duration,
    alive: Vec<bool>,
    /// The first cause, as the rule says it must be, and the ranks running then.
    expected: Option<(Ending, Vec<u32>)>,
    outcome: Option<LaunchOutcome>,
    kills: Vec<u32>,
}

impl World {
    fn alive_ranks(&self) -> Vec<u32> {
        (0u32..)
            .zip(&self.alive)
            .filter(|(_, a)| **a)
            .map(|(r, _)| r)
            .collect()
    }

    fn blame(&mut self, cause: Ending) {
        if self.expected.is_none() {
            self.expected = Some((cause, self.alive_ranks()));
        }
    }

    /// Carries out the actions, checking them.
    fn act(&mut self) {
        while let Some(a) = self.s.poll_action() {
            assert!(self.outcome.is_none(), "{a:?} after the finish");
            match a {
                Action::Print { line, .. } => assert_eq!(line.last(), Some(&b'\n')),
                Action::Signal { signal, ranks } => {
                    assert!(!ranks.is_empty());
                    for (r, p) in ranks {
                        assert!(self.alive[r as usize], "signal to rank {r}, already gone");
                        assert_eq!(p, pid(r));
                        if signal == SIGKILL {
                            self.kills[r as usize] += 1;
                        }
                    }
                }
                Action::Respawn { rank } => panic!("rank {rank} respawned in a job not elastic"),
                Action::Finish(outcome) => self.outcome = Some(outcome),
            }
        }
        if let Some(deadline) = self.s.next_deadline() {
            assert!(deadline > self.now, "a deadline already past: {deadline:?}");
        }
    }

    fn exit(&mut self, rank: u32, status: RankStatus) {
        self.alive[rank as usize] = false;
        if !status.success() {
            self.blame(Ending::RankFailed { rank, status });
        }
        self.s.exited(rank, status, self.now);
    }
}

/// `lazy`: the driver carries out actions only when time passes, so exits are often
/// reported while signals naming those ranks are still queued.
fn run(n: u32, timeout: Option<u16>, fail_at: Option<u32>, lazy: bool, events: &[Event]) {
    let mut config = Config::new(n);
    config.timeout = timeout.map(|t| ms(u64::from(t)));
    let mut w = World {
        s: Supervisor::new(config.clone()),
        now: ms(0),
        alive: vec![false; n as usize],
        expected: None,
        outcome: None,
        kills: vec![0; n as usize],
    };
    let spawned = fail_at.map_or(n, |f| f.min(n - 1));
    for r in 0..spawned {
        w.alive[r as usize] = true;
        w.s.spawned(r, pid(r), w.now);
        w.act();
    }
    if spawned < n {
        w.blame(Ending::NotStarted { rank: spawned });
        w.s.spawn_failed(spawned, w.now);
        w.act();
    }
    let stream = |e: bool| if e { Stream::Stderr } else { Stream::Stdout };
    for e in events {
        let draining = w.alive.iter().all(|a| !a);
        match *e {
            Event::Exit(r, kind) => {
                let r = r % n;
                if w.alive[r as usize] {
                    let status = [Exited(0), Exited(1), killed(SIGKILL)][kind as usize];
                    w.exit(r, status);
                }
            }
            Event::Signal(int) => {
                let sig = if int { SIGINT } else { SIGTERM };
                if !draining {
                    w.blame(Ending::Interrupted { signal: sig });
                }
                w.s.signal(sig, w.now);
            }
            Event::Line(r, e) => w.s.output(r % n, stream(e), b"x", w.now),
            Event::Close(r, e) => {
                if r % n < spawned {
                    w.s.closed(r % n, stream(e), w.now);
                }
            }
            Event::Wait(t) => {
                w.now += ms(u64::from(t));
                if let Some(after) = config.timeout {
                    if !draining && w.now >= after {
                        w.blame(Ending::TimedOut { after });
                    }
                }
                w.s.tick(w.now);
            }
        }
        if !lazy || matches!(e, Event::Wait(_)) {
            w.act();
        }
        if w.outcome.is_some() {
            break;
        }
    }
    w.act();
    // From here the ranks ignore everything: with a stop under way or a timeout, ticks
    // alone must end the launch, in bounded time.
    let stop_bound = config.kill_grace + config.reap_grace + config.output_grace;
    let bound = match (&w.expected, config.timeout) {
        (Some(_), _) => Some(w.now + stop_bound),
        (None, Some(t)) => Some(w.now.max(t) + stop_bound),
        (None, None) => None,
    };
    if let Some(bound) = bound {
        for _ in 0..5 {
            if w.outcome.is_some() {
                break;
            }
            let at = w.s.next_deadline().expect("a deadline while unfinished");
            assert!(at <= bound, "{at:?} beyond {bound:?}");
            if let Some(after) = config.timeout {
                if w.expected.is_none() && w.alive.iter().any(|a| *a) && at >= after {
                    w.blame(Ending::TimedOut { after });
                }
            }
            w.now = at;
            w.s.tick(at);
            w.act();
        }
    } else if w.outcome.is_none() {
        // Nothing went wrong: the ranks finish well and the output drains.
        for r in 0..spawned {
            if w.alive[r as usize] {
                w.exit(r, Exited(0));
                w.act();
            }
        }
        let at = w.s.next_deadline();
        w.now = at.unwrap_or(w.now);
        w.s.tick(w.now);
        w.act();
    }
    let outcome = w.outcome.expect("the launch ended");
    assert!(w.s.is_finished() && w.s.next_deadline().is_none());
    assert!(
        w.kills.iter().all(|&k| k <= 1),
        "SIGKILL twice: {:?}",
        w.kills
    );
    match w.expected {
        Some((ending, running)) => {
            assert_eq!(outcome.ending, ending);
            // Ranks spawned later join the stop; all of them were running at some point.
            assert!(running.iter().all(|r| outcome.stopped.contains(r)));
            if let Ending::RankFailed { rank, .. } = ending {
                assert!(!outcome.stopped.contains(&rank));
            }
        }
        None => {
            assert_eq!(outcome.ending, Ending::Completed);
            assert!(outcome.stopped.is_empty() && outcome.unreaped.is_empty());
            assert_eq!(outcome.exit_code(), 0);
        }
    }
    assert!(outcome.unreaped.iter().all(|&r| w.alive[r as usize]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_events_keep_the_invariants_and_end(
        n in 1..6u32,
        timeout in proptest::option::of(1..3000u16),
        fail_at in proptest::option::weighted(0.2, 0..6u32),
        lazy in any::<bool>(),
        events in proptest::collection::vec(event(), 0..40),
    ) {
        run(n, timeout, fail_at, lazy, &events);
    }
}

#[test]
fn a_failed_job_asks_for_dumps_before_the_stop() {
    const SIGUSR1: i32 = libc::SIGUSR1;
    let mut s = started(Config {
        dump: Some((SIGUSR1, ms(1000))),
        ..Config::new(3)
    });
    ends(&mut s, 1, Exited(3), ms(100));
    // The others are asked to dump, and stopped only after the grace.
    assert_eq!(actions(&mut s), [signal(SIGUSR1, &[0, 2])]);
    assert_eq!(s.next_deadline(), Some(ms(1100)));
    s.tick(ms(1099));
    assert_eq!(actions(&mut s), []);
    s.tick(ms(1100));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 2])]);
    assert_eq!(s.next_deadline(), Some(ms(1100) + KILL_GRACE));
    ends(&mut s, 0, killed(SIGTERM), ms(1200));
    ends(&mut s, 2, killed(SIGTERM), ms(1200));
    let outcome = finished(&mut s);
    assert_eq!(
        outcome.ending,
        Ending::RankFailed {
            rank: 1,
            status: Exited(3)
        },
        "the dump changes nothing about who is blamed"
    );
}

#[test]
fn the_dump_grace_ends_early_when_ranks_are_gone_or_the_launcher_is_interrupted() {
    const SIGUSR1: i32 = libc::SIGUSR1;
    let config = Config {
        dump: Some((SIGUSR1, ms(1000))),
        timeout: Some(ms(50)),
        ..Config::new(2)
    };
    // The timeout asks for dumps too; ranks that exit after dumping end the wait.
    let mut s = started(config.clone());
    s.tick(ms(50));
    assert_eq!(actions(&mut s), [signal(SIGUSR1, &[0, 1])]);
    ends(&mut s, 0, killed(SIGUSR1), ms(60));
    ends(&mut s, 1, killed(SIGUSR1), ms(60));
    assert_eq!(finished(&mut s).ending, Ending::TimedOut { after: ms(50) });
    // A signal to the launcher while they dump stops them at once.
    let mut s = started(config.clone());
    s.tick(ms(50));
    assert_eq!(actions(&mut s), [signal(SIGUSR1, &[0, 1])]);
    s.signal(SIGINT, ms(70));
    assert_eq!(actions(&mut s), [signal(SIGTERM, &[0, 1])]);
    // Ctrl-C itself is not a failure to diagnose: no dump signal.
    let mut s = started(config);
    s.signal(SIGINT, ms(10));
    assert_eq!(actions(&mut s), [signal(SIGINT, &[0, 1])]);
}

/// Elastic: the job's actions other than printed lines.
fn non_print(s: &mut Supervisor) -> Vec<Action> {
    actions(s)
        .into_iter()
        .filter(|a| !matches!(a, Action::Print { .. }))
        .collect()
}

#[test]
fn an_elastic_job_keeps_its_survivors_and_restarts_within_its_budget() {
    let mut s = started(Config {
        restarts: Some(1),
        ..Config::new(4)
    });
    ends(&mut s, 2, killed(SIGKILL), ms(5));
    // Nobody is signalled; rank 2 is started again.
    assert_eq!(non_print(&mut s), vec![Action::Respawn { rank: 2 }]);
    s.spawned(2, pid(2) + 100, ms(6));
    // The budget is spent: the next loss is only noted.
    ends(&mut s, 1, killed(SIGKILL), ms(7));
    assert_eq!(non_print(&mut s), vec![]);
    for r in [0, 2, 3] {
        ends(&mut s, r, Exited(0), ms(20));
    }
    let outcome = finished(&mut s);
    assert_eq!(outcome.ending, Ending::Completed);
    assert_eq!(outcome.exit_code(), 0);
}

#[test]
fn a_replaced_process_closing_its_pipes_late_does_not_silence_its_replacement() {
    let mut s = started(Config {
        restarts: Some(1),
        ..Config::new(2)
    });
    // Rank 1 is reaped and started again before its first process's pipes are seen to
    // close (the readers' events come after the exit's).
    s.exited(1, killed(SIGKILL), ms(5));
    assert_eq!(non_print(&mut s), vec![Action::Respawn { rank: 1 }]);
    assert_eq!(s.life(1), 0);
    s.spawned(1, pid(1) + 100, ms(6));
    assert_eq!(s.life(1), 1);
    s.output_of(1, 0, Stream::Stdout, b"last words", ms(7));
    s.closed_of(1, 0, Stream::Stdout, ms(7));
    s.closed_of(1, 0, Stream::Stderr, ms(7));
    s.output_of(1, 1, Stream::Stdout, b"joined", ms(8));
    let printed: Vec<Vec<u8>> = actions(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Print { line, .. } => Some(line),
            _ => None,
        })
        .collect();
    assert!(
        printed.contains(&b"[1] last words\n".to_vec()),
        "{printed:?}"
    );
    assert!(printed.contains(&b"[1] joined\n".to_vec()), "{printed:?}");
    // The job ends once the replacement's own streams close.
    ends(&mut s, 0, Exited(0), ms(20));
    s.exited(1, Exited(0), ms(21));
    s.closed_of(1, 1, Stream::Stdout, ms(21));
    s.closed_of(1, 1, Stream::Stderr, ms(21));
    assert_eq!(finished(&mut s).ending, Ending::Completed);
}

#[test]
fn an_elastic_job_with_no_rank_succeeding_names_its_first_loss() {
    let mut s = started(Config {
        restarts: Some(0),
        ..Config::new(2)
    });
    ends(&mut s, 1, Exited(3), ms(5));
    ends(&mut s, 0, Exited(4), ms(6));
    let outcome = finished(&mut s);
    assert_eq!(
        outcome.ending,
        Ending::RankFailed {
            rank: 1,
            status: Exited(3)
        }
    );
}

#[test]
fn a_replacement_that_cannot_start_leaves_the_job_running() {
    let mut s = started(Config {
        restarts: Some(3),
        ..Config::new(2)
    });
    ends(&mut s, 1, killed(SIGKILL), ms(5));
    assert_eq!(non_print(&mut s), vec![Action::Respawn { rank: 1 }]);
    s.spawn_failed(1, ms(6));
    assert!(!s.is_finished());
    ends(&mut s, 0, Exited(0), ms(9));
    assert_eq!(finished(&mut s).ending, Ending::Completed);
}

#[test]
fn without_elastic_the_first_failure_still_stops_the_job() {
    let mut s = started(Config::new(3));
    ends(&mut s, 1, killed(SIGKILL), ms(5));
    assert_eq!(non_print(&mut s), vec![signal(SIGTERM, &[0, 2])]);
}
