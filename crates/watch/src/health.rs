//! Peer health from heartbeats, as a sans-IO state machine: one rank's verdict on every
//! rank of its world (alive, dead, hung), from observations its heartbeat shell passes in
//! with the time it read (milliseconds on any monotonic clock).
//!
//! A rank *watches* a bounded set of peers ([`watched_set`]: ring neighbours ±k and up to
//! a cap of its host's ranks): it exchanges beats with those and judges them first-hand.
//! About the others it learns from the beats, which carry the failures their senders know
//! ([`Health::reports`]); such a report is relayed once per beat period by every rank that
//! holds it, so it crosses the ring in ⌈N / (2k)⌉ periods.
//!
//! # Verdicts
//!
//! | state                    | first-hand rule (watched peer)                                                      |
//! |--------------------------|-------------------------------------------------------------------------------------|
//! | `alive`                  | a beat within the last `stopped_after` periods (or not yet that long since start)  |
//! | `left`                   | its last beat said goodbye (its communicator was dropped): not a failure           |
//! | `dead (exited)`          | its heartbeat connection closed, or a connection to it was refused                 |
//! | `dead (unreachable)`     | our beats were not acknowledged (the shell's TCP user timeout), or no connection could be made |
//! | `hung (stopped)`         | no beat for `stopped_after` periods, the connection still open (SIGSTOP)            |
//! | `hung (stuck in call S)` | beats arrive, the peer is inside call S and its bytes moved have not changed for `stuck_after_ms` |
//!
//! Dead is final: a peer once dead stays dead (shrinking relies on it), even if a report
//! of it was relayed. Hung is not: a beat that arrives again (SIGCONT) makes it alive, and
//! a relayed hung report expires `report_ttl` periods after the last beat that carried it.
//! A peer not watched is judged by the reports about it (the worst of the fresh ones);
//! without any it is alive ("no failure reported").
//!
//! A rank waiting in a call for a straggler (a rank that has not entered it) shows as
//! `hung (stuck in call S)` once it waited `stuck_after_ms`: the state describes what it is
//! doing, and the default of that threshold (5 s) is long for this reason.
//!
//! # Bounds
//!
//! Memory is O(world) for the verdict table plus, per peer, at most [`MAX_OBSERVERS`]
//! reports; [`Health::reports`] hands out at most the number asked for (the beat's cap).
//! Detection: exited within one shell poll of the close; stopped within `stopped_after`
//! periods; unreachable within the shell's user timeout; a peer not watched learns each
//! of those at most ⌈N / (2k)⌉ periods later.
//!
//! No I/O, no clock: the shell passes `now_ms` into every method.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A rank (of the world the monitor serves).
pub type Rank = u32;

/// Reports kept per peer (one per observer); further observers are counted but not kept.
pub const MAX_OBSERVERS: usize = 8;

/// Bad arguments to the health machine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HealthError {
    #[error("rank {rank} is not in a world of {world} ranks; ranks are 0..{world}")]
    RankOutOfRange { rank: Rank, world: u32 },
    #[error("{what} must be at least {min} (got {got}); {hint}")]
    TooSmall {
        what: &'static str,
        got: u64,
        min: u64,
        hint: &'static str,
    },
}

/// What a rank can say of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "call")]
pub enum PeerState {
    /// Beats arrive (or, for a peer not watched, no failure was reported).
    Alive,
    /// It said goodbye: its communicator closed normally.
    Left,
    /// Beats stopped with the connection open: the process is stopped (SIGSTOP) or
    /// starved.
    HungStopped,
    /// Beats arrive but it has been inside this call (its sequence number) without moving
    /// a byte for the threshold.
    HungStuck(u64),
    /// Its beats could not be delivered (no acknowledgement, no connection).
    DeadUnreachable,
    /// Its process is gone (heartbeat connection closed or refused).
    DeadExited,
}

impl PeerState {
    /// Whether the state is a failure (dead or hung).
    pub fn is_failed(self) -> bool {
        !matches!(self, PeerState::Alive | PeerState::Left)
    }

    /// Whether the state is final (dead).
    pub fn is_dead(self) -> bool {
        matches!(self, PeerState::DeadExited | PeerState::DeadUnreachable)
    }

    /// Severity for merging reports: dead > hung > left > alive.
    fn severity(self) -> u8 {
        match self {
            PeerState::Alive => 0,
            PeerState::Left => 1,
            PeerState::HungStuck(_) => 2,
            PeerState::HungStopped => 3,
            PeerState::DeadUnreachable => 4,
            PeerState::DeadExited => 5,
        }
    }

    /// The one-byte code of the state on the wire (beats' report lists), without the call.
    pub fn code(self) -> u8 {
        self.severity()
    }

    /// The state of a wire code (`call` for [`PeerState::HungStuck`]); `None` for an
    /// unknown code.
    pub fn from_code(code: u8, call: u64) -> Option<PeerState> {
        Some(match code {
            0 => PeerState::Alive,
            1 => PeerState::Left,
            2 => PeerState::HungStuck(call),
            3 => PeerState::HungStopped,
            4 => PeerState::DeadUnreachable,
            5 => PeerState::DeadExited,
            _ => return None,
        })
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::Alive => f.write_str("alive"),
            PeerState::Left => f.write_str("left"),
            PeerState::HungStopped => f.write_str("hung (stopped)"),
            PeerState::HungStuck(s) => write!(f, "hung (stuck in call {s})"),
            PeerState::DeadUnreachable => f.write_str("dead (unreachable)"),
            PeerState::DeadExited => f.write_str("dead (exited)"),
        }
    }
}

/// The call a rank is inside: its communicator (a hash of its name) and sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallId {
    pub comm: u32,
    pub seq: u64,
}

/// A rank's progress counters, as its beats carry them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Calls completed (all its communicators).
    pub calls_completed: u64,
    /// The call in flight, if any.
    pub in_call: Option<CallId>,
    /// Bytes it moved (sent and received) in all.
    pub bytes: u64,
    /// Whether, in the call in flight, it has a transfer with the receiver of the beat
    /// posted and not finished.
    pub waiting_on_you: bool,
}

/// Thresholds of the verdicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// The beat period.
    pub period_ms: u64,
    /// Periods without a beat before a watched peer is hung (stopped).
    pub stopped_after: u32,
    /// Time inside one call without a byte moved before a peer is hung (stuck).
    pub stuck_after_ms: u64,
    /// Periods a relayed report stays without being carried again.
    pub report_ttl: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            period_ms: 100,
            stopped_after: 10,
            stuck_after_ms: 5_000,
            report_ttl: 10,
        }
    }
}

impl HealthConfig {
    /// Checks the thresholds (each must be at least 1).
    pub fn check(&self) -> Result<(), HealthError> {
        let min1 = |what, got: u64, hint| {
            if got == 0 {
                Err(HealthError::TooSmall {
                    what,
                    got,
                    min: 1,
                    hint,
                })
            } else {
                Ok(())
            }
        };
        min1(
            "period_ms",
            self.period_ms,
            "a beat period of 0 means no beats: turn the monitor off instead",
        )?;
        min1(
            "stopped_after",
            self.stopped_after.into(),
            "count of beat periods",
        )?;
        min1("stuck_after_ms", self.stuck_after_ms, "milliseconds")?;
        min1(
            "report_ttl",
            self.report_ttl.into(),
            "count of beat periods",
        )
    }

    fn stopped_window(&self) -> u64 {
        self.period_ms.saturating_mul(self.stopped_after.into())
    }
}

/// What the shell saw, about one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A beat with its counters arrived (already authenticated).
    Beat(Progress),
    /// Its last beat said goodbye.
    Goodbye,
    /// Its heartbeat connection closed (end of stream or reset), or dialling it was
    /// refused: the process is gone.
    Closed,
    /// Our beats were not acknowledged in time, or no connection could be made.
    Unreachable,
}

/// A failure one rank tells others about, carried in beats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The failed rank.
    pub rank: Rank,
    /// What it is.
    pub state: PeerState,
    /// The rank that judged it first-hand.
    pub observer: Rank,
}

/// One rank's verdict on one rank, with who says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub rank: Rank,
    pub state: PeerState,
    /// When the state began (the caller's clock, ms).
    pub since_ms: u64,
    /// The ranks whose first-hand judgement it is (this rank for a watched peer).
    pub by: Vec<Rank>,
    /// What the judgement rests on, in words.
    pub detail: String,
}

/// First-hand state of a watched peer.
#[derive(Clone, Debug)]
struct Watched {
    state: PeerState,
    since_ms: u64,
    last_beat_ms: u64,
    progress: Option<Progress>,
    /// When its bytes or call last changed.
    moved_ms: u64,
    detail: String,
}

/// A relayed report: what, and when a beat last carried it.
#[derive(Clone, Copy, Debug)]
struct Heard {
    state: PeerState,
    since_ms: u64,
    refreshed_ms: u64,
}

/// One rank's health view of its world.
#[derive(Clone, Debug)]
pub struct Health {
    me: Rank,
    world: u32,
    cfg: HealthConfig,
    started_ms: u64,
    watched: BTreeMap<Rank, Watched>,
    /// Per peer not judged first-hand: reports by observer (at most [`MAX_OBSERVERS`]).
    heard: BTreeMap<Rank, BTreeMap<Rank, Heard>>,
}

/// The peers `me` watches: ring neighbours up to `k` away on each side, and up to
/// `host_cap` other ranks of its host (`hosts[r]` names rank r's host; nearest in rank
/// order first). Symmetric when `host_cap` covers the host: if a watches b, b watches a.
/// Sorted, without `me`, at most 2k + host_cap ranks.
pub fn watched_set(me: Rank, hosts: &[u64], k: u32, host_cap: usize) -> Vec<Rank> {
    let n = hosts.len() as u64;
    let mut out: Vec<Rank> = Vec::new();
    if n <= 1 || u64::from(me) >= n {
        return out;
    }
    for d in 1..=u64::from(k).min(n - 1) {
        out.push(((u64::from(me) + d) % n) as Rank);
        out.push(((u64::from(me) + n - d % n) % n) as Rank);
    }
    let mine = hosts[me as usize];
    let mut same: Vec<Rank> = (0..n as Rank)
        .filter(|&r| r != me && hosts[r as usize] == mine)
        .collect();
    same.sort_by_key(|&r| (r.abs_diff(me), r));
    out.extend(same.into_iter().take(host_cap));
    out.retain(|&r| r != me);
    out.sort_unstable();
    out.dedup();
    out
}

impl Health {
    /// A view for rank `me` of `world`, watching `watched` (first-hand) from `now_ms`.
    pub fn new(
        me: Rank,
        world: u32,
        watched: &[Rank],
        cfg: HealthConfig,
        now_ms: u64,
    ) -> Result<Health, HealthError> {
        cfg.check()?;
        for &r in std::iter::once(&me).chain(watched) {
            if r >= world {
                return Err(HealthError::RankOutOfRange { rank: r, world });
            }
        }
        let watched = watched
            .iter()
            .filter(|&&r| r != me)
            .map(|&r| {
                (
                    r,
                    Watched {
                        state: PeerState::Alive,
                        since_ms: now_ms,
                        last_beat_ms: now_ms,
                        progress: None,
                        moved_ms: now_ms,
                        detail: "met at creation; no beat yet".into(),
                    },
                )
            })
            .collect();
        Ok(Health {
            me,
            world,
            cfg,
            started_ms: now_ms,
            watched,
            heard: BTreeMap::new(),
        })
    }

    /// The thresholds.
    pub fn config(&self) -> HealthConfig {
        self.cfg
    }

    /// The peers judged first-hand.
    pub fn watched(&self) -> Vec<Rank> {
        self.watched.keys().copied().collect()
    }

    /// Feeds what the shell saw of `peer` at `now_ms`. Observations about ranks not
    /// watched (or out of range) are ignored.
    pub fn observe(&mut self, now_ms: u64, peer: Rank, what: Observation) {
        let Some(w) = self.watched.get_mut(&peer) else {
            return;
        };
        if w.state.is_dead() {
            return;
        }
        let set = |w: &mut Watched, s: PeerState, detail: String| {
            if w.state != s {
                w.state = s;
                w.since_ms = now_ms;
            }
            w.detail = detail;
        };
        match what {
            Observation::Beat(p) => {
                w.last_beat_ms = w.last_beat_ms.max(now_ms);
                let moved = w
                    .progress
                    .is_none_or(|old| old.bytes != p.bytes || old.in_call != p.in_call);
                if moved {
                    w.moved_ms = now_ms;
                }
                w.progress = Some(p);
                if w.state != PeerState::Left {
                    set(w, PeerState::Alive, "beats arrive".into());
                }
                // Stuck is judged by `tick` from the counters.
                Self::judge_stuck(&self.cfg, w, now_ms);
            }
            Observation::Goodbye => set(w, PeerState::Left, "said goodbye".into()),
            Observation::Closed if w.state == PeerState::Left => {}
            Observation::Closed => set(
                w,
                PeerState::DeadExited,
                "its heartbeat connection closed or was refused".into(),
            ),
            Observation::Unreachable if w.state == PeerState::Left => {}
            Observation::Unreachable => set(
                w,
                PeerState::DeadUnreachable,
                "our beats were not acknowledged in time".into(),
            ),
        }
    }

    fn judge_stuck(cfg: &HealthConfig, w: &mut Watched, now_ms: u64) {
        let Some(p) = w.progress else { return };
        let stuck = match p.in_call {
            Some(c) if now_ms.saturating_sub(w.moved_ms) >= cfg.stuck_after_ms => Some(c.seq),
            _ => None,
        };
        match (stuck, w.state) {
            (Some(seq), PeerState::Alive) => {
                w.state = PeerState::HungStuck(seq);
                w.since_ms = now_ms;
                w.detail = format!(
                    "inside call {seq} without moving a byte for {} ms",
                    now_ms.saturating_sub(w.moved_ms)
                );
            }
            (None, PeerState::HungStuck(_)) => {
                w.state = PeerState::Alive;
                w.since_ms = now_ms;
                w.detail = "moving again".into();
            }
            _ => {}
        }
    }

    /// Feeds the failures a beat from `from` carried at `now_ms` (its sender's
    /// [`Health::reports`]). Reports about this rank, about peers this rank watches, or
    /// out of range are ignored; a report of `alive` withdraws the observer's earlier one.
    pub fn heard(&mut self, now_ms: u64, from: Rank, reports: &[Report]) {
        let _ = from;
        for r in reports {
            if r.rank == self.me
                || r.rank >= self.world
                || r.observer >= self.world
                || self.watched.contains_key(&r.rank)
            {
                continue;
            }
            let by = self.heard.entry(r.rank).or_default();
            if r.state == PeerState::Alive {
                by.remove(&r.observer);
                continue;
            }
            let room = by.len() < MAX_OBSERVERS;
            match by.get_mut(&r.observer) {
                Some(h) => {
                    if h.state != r.state && !h.state.is_dead() {
                        h.state = r.state;
                        h.since_ms = now_ms;
                    }
                    h.refreshed_ms = now_ms;
                }
                None if room => {
                    by.insert(
                        r.observer,
                        Heard {
                            state: r.state,
                            since_ms: now_ms,
                            refreshed_ms: now_ms,
                        },
                    );
                }
                None => {}
            }
        }
    }

    /// Advances time: watched peers silent for `stopped_after` periods become hung
    /// (stopped), peers without progress inside a call hung (stuck), and relayed hung
    /// reports not carried for `report_ttl` periods expire.
    pub fn tick(&mut self, now_ms: u64) {
        let window = self.cfg.stopped_window();
        for w in self.watched.values_mut() {
            if w.state.is_dead() || w.state == PeerState::Left {
                continue;
            }
            let silent = now_ms.saturating_sub(w.last_beat_ms);
            if silent >= window {
                if w.state != PeerState::HungStopped {
                    w.state = PeerState::HungStopped;
                    w.since_ms = now_ms;
                }
                w.detail = format!("no beat for {silent} ms, its connection open");
            } else {
                if w.state == PeerState::HungStopped {
                    w.state = PeerState::Alive;
                    w.since_ms = now_ms;
                    w.detail = "beats arrive again".into();
                }
                Self::judge_stuck(&self.cfg, w, now_ms);
            }
        }
        let ttl = self
            .cfg
            .period_ms
            .saturating_mul(self.cfg.report_ttl.into());
        for by in self.heard.values_mut() {
            by.retain(|_, h| h.state.is_dead() || now_ms.saturating_sub(h.refreshed_ms) < ttl);
        }
        self.heard.retain(|_, by| !by.is_empty());
    }

    /// This rank's verdict on `rank` (itself: alive).
    pub fn verdict(&self, rank: Rank) -> Verdict {
        if let Some(w) = self.watched.get(&rank) {
            return Verdict {
                rank,
                state: w.state,
                since_ms: w.since_ms,
                by: vec![self.me],
                detail: w.detail.clone(),
            };
        }
        if rank == self.me {
            return Verdict {
                rank,
                state: PeerState::Alive,
                since_ms: self.started_ms,
                by: vec![self.me],
                detail: "this rank".into(),
            };
        }
        let Some(by) = self.heard.get(&rank).filter(|b| !b.is_empty()) else {
            return Verdict {
                rank,
                state: PeerState::Alive,
                since_ms: self.started_ms,
                by: Vec::new(),
                detail: "not watched by this rank; no failure reported".into(),
            };
        };
        let worst = by
            .values()
            .map(|h| h.state)
            .max_by_key(|s| s.severity())
            .unwrap_or(PeerState::Alive);
        let agree: Vec<Rank> = by
            .iter()
            .filter(|(_, h)| h.state == worst)
            .map(|(&o, _)| o)
            .collect();
        let since_ms = by
            .values()
            .filter(|h| h.state == worst)
            .map(|h| h.since_ms)
            .min()
            .unwrap_or(self.started_ms);
        let names: Vec<String> = agree.iter().map(|r| r.to_string()).collect();
        Verdict {
            rank,
            state: worst,
            since_ms,
            detail: format!("reported by rank {}", names.join(", ")),
            by: agree,
        }
    }

    /// Verdicts on every rank of the world, in rank order.
    pub fn verdicts(&self) -> Vec<Verdict> {
        (0..self.world).map(|r| self.verdict(r)).collect()
    }

    /// Ranks believed dead or hung now, in order.
    pub fn failed(&self) -> Vec<Rank> {
        (0..self.world)
            .filter(|&r| self.verdict(r).state.is_failed())
            .collect()
    }

    /// The failures to carry in the next beat, at most `max`: first-hand ones first (by
    /// rank), then relayed ones (dead before hung, by rank), each with its observer.
    pub fn reports(&self, max: usize) -> Vec<Report> {
        let mut own: Vec<Report> = self
            .watched
            .iter()
            .filter(|(_, w)| w.state.is_failed())
            .map(|(&rank, w)| Report {
                rank,
                state: w.state,
                observer: self.me,
            })
            .collect();
        let mut relayed: Vec<Report> = self
            .heard
            .iter()
            .flat_map(|(&rank, by)| {
                by.iter().map(move |(&observer, h)| Report {
                    rank,
                    state: h.state,
                    observer,
                })
            })
            .collect();
        relayed.sort_by_key(|r| (std::cmp::Reverse(r.state.severity()), r.rank, r.observer));
        own.extend(relayed);
        own.truncate(max);
        own
    }

    /// A watched peer's last counters and when its last beat came; `None` before its
    /// first beat or for a peer not watched.
    pub fn progress(&self, peer: Rank) -> Option<(Progress, u64)> {
        let w = self.watched.get(&peer)?;
        Some((w.progress?, w.last_beat_ms))
    }
}

/// A job-wide verdict on one rank, merged from every rank's view (`topoccl status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    pub rank: Rank,
    /// The worst state any view holds of it (dead > hung > left > alive).
    pub state: PeerState,
    /// The ranks that judged it so first-hand (for alive: those that watch it).
    pub said_by: Vec<Rank>,
    /// Whether its own view was among those merged (a stopped or dead rank's is not).
    pub answered: bool,
    /// The detail of the first view that holds the state.
    pub detail: String,
}

/// Merges the views of the ranks that answered (`(observer, its verdicts)`) into one
/// verdict per rank of a world of `world`. Verdicts on ranks out of range are ignored.
pub fn merge(world: u32, views: &[(Rank, Vec<Verdict>)]) -> Vec<Merged> {
    let mut out: Vec<Merged> = (0..world)
        .map(|rank| Merged {
            rank,
            state: PeerState::Alive,
            said_by: Vec::new(),
            answered: views.iter().any(|(o, _)| *o == rank),
            detail: String::new(),
        })
        .collect();
    for (observer, verdicts) in views {
        for v in verdicts {
            let Some(m) = out.get_mut(v.rank as usize) else {
                continue;
            };
            if v.rank == *observer || v.by.is_empty() {
                continue;
            }
            let worse = v.state.severity() > m.state.severity();
            if worse {
                m.state = v.state;
                m.said_by.clear();
                m.detail = v.detail.clone();
            }
            if worse || v.state.severity() == m.state.severity() {
                if m.detail.is_empty() {
                    m.detail = v.detail.clone();
                }
                m.said_by.extend(v.by.iter().copied());
            }
        }
    }
    for m in &mut out {
        m.said_by.sort_unstable();
        m.said_by.dedup();
        m.said_by.truncate(MAX_OBSERVERS * 4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn beat(bytes: u64, call: Option<u64>) -> Observation {
        Observation::Beat(Progress {
            calls_completed: 0,
            in_call: call.map(|seq| CallId { comm: 7, seq }),
            bytes,
            waiting_on_you: false,
        })
    }

    fn health(watched: &[Rank]) -> Health {
        Health::new(0, 8, watched, HealthConfig::default(), 1_000).unwrap()
    }

    #[test]
    fn the_watched_set_is_ring_neighbours_and_host_ranks_and_symmetric() {
        // Two hosts of four ranks each.
        let hosts = [0, 0, 0, 0, 1, 1, 1, 1];
        assert_eq!(watched_set(0, &hosts, 1, 8), vec![1, 2, 3, 7]);
        assert_eq!(watched_set(5, &hosts, 1, 1), vec![4, 6]);
        assert_eq!(watched_set(0, &[0], 2, 8), Vec::<Rank>::new());
        assert_eq!(watched_set(0, &[0, 1], 3, 0), vec![1]);
        for k in 0..4 {
            for me in 0..8u32 {
                for p in watched_set(me, &hosts, k, 8) {
                    assert!(watched_set(p, &hosts, k, 8).contains(&me), "{me} {p} k={k}");
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_naming_them() {
        let e = Health::new(9, 8, &[], HealthConfig::default(), 0).unwrap_err();
        assert!(e.to_string().contains("rank 9"), "{e}");
        let e = Health::new(0, 8, &[8], HealthConfig::default(), 0).unwrap_err();
        assert!(e.to_string().contains("rank 8"), "{e}");
        let cfg = HealthConfig {
            period_ms: 0,
            ..Default::default()
        };
        let e = Health::new(0, 8, &[1], cfg, 0).unwrap_err();
        assert!(e.to_string().contains("period_ms"), "{e}");
    }

    #[test]
    fn a_closed_connection_is_dead_and_stays_dead() {
        let mut h = health(&[1, 7]);
        h.observe(1_050, 1, beat(10, None));
        h.observe(1_100, 1, Observation::Closed);
        let v = h.verdict(1);
        assert_eq!(v.state, PeerState::DeadExited);
        assert_eq!(v.since_ms, 1_100);
        assert_eq!(v.by, vec![0]);
        // A stray beat afterwards changes nothing.
        h.observe(1_150, 1, beat(20, None));
        h.tick(9_000);
        assert_eq!(h.verdict(1).state, PeerState::DeadExited);
        assert_eq!(h.failed(), vec![1, 7]); // 7 never beat: hung by now
        assert_eq!(h.verdict(7).state, PeerState::HungStopped);
    }

    #[test]
    fn silence_with_the_connection_open_is_hung_and_a_beat_revives() {
        let mut h = health(&[1]);
        for t in (1_000..2_000).step_by(100) {
            h.observe(t, 1, beat(t, None));
            h.tick(t);
        }
        assert_eq!(h.verdict(1).state, PeerState::Alive);
        // Stopped after its beat at 1 900: hung once 10 periods passed.
        h.tick(2_899);
        assert_eq!(h.verdict(1).state, PeerState::Alive);
        h.tick(2_900);
        assert_eq!(h.verdict(1).state, PeerState::HungStopped);
        assert_eq!(h.verdict(1).since_ms, 2_900);
        assert_eq!(h.failed(), vec![1]);
        h.observe(5_000, 1, beat(5_000, None));
        h.tick(5_000);
        assert_eq!(h.verdict(1).state, PeerState::Alive);
        assert!(h.failed().is_empty());
    }

    #[test]
    fn unreachable_and_goodbye() {
        let mut h = health(&[1, 2]);
        h.observe(1_200, 1, Observation::Unreachable);
        assert_eq!(h.verdict(1).state, PeerState::DeadUnreachable);
        h.observe(1_200, 2, Observation::Goodbye);
        h.observe(1_300, 2, Observation::Closed);
        h.tick(10_000);
        assert_eq!(h.verdict(2).state, PeerState::Left);
        assert_eq!(h.failed(), vec![1]);
    }

    #[test]
    fn inside_a_call_without_progress_is_stuck_until_bytes_move() {
        let mut h = health(&[1]);
        let mut t = 1_000;
        while t <= 6_000 {
            h.observe(t, 1, beat(500, Some(42)));
            h.tick(t);
            t += 100;
        }
        assert_eq!(h.verdict(1).state, PeerState::HungStuck(42));
        assert_eq!(h.verdict(1).state.to_string(), "hung (stuck in call 42)");
        h.observe(t, 1, beat(501, Some(42)));
        assert_eq!(h.verdict(1).state, PeerState::Alive);
        // Outside any call nothing is stuck, however long the counters sleep.
        let mut h = health(&[1]);
        for t in (1_000..20_000).step_by(100) {
            h.observe(t, 1, beat(0, None));
            h.tick(t);
        }
        assert_eq!(h.verdict(1).state, PeerState::Alive);
    }

    #[test]
    fn reports_spread_to_ranks_that_do_not_watch_and_hung_ones_expire() {
        let mut a = health(&[1]);
        a.tick(2_000);
        assert_eq!(a.verdict(1).state, PeerState::HungStopped);
        let carried = a.reports(16);
        assert_eq!(
            carried,
            vec![Report {
                rank: 1,
                state: PeerState::HungStopped,
                observer: 0
            }]
        );
        // Rank 4 does not watch 1: it learns from rank 0's beat.
        let mut b = Health::new(4, 8, &[3, 5], HealthConfig::default(), 1_000).unwrap();
        b.heard(2_050, 0, &carried);
        let v = b.verdict(1);
        assert_eq!((v.state, v.by.clone()), (PeerState::HungStopped, vec![0]));
        assert!(v.detail.contains("rank 0"), "{}", v.detail);
        // It relays it.
        assert_eq!(b.reports(16), carried);
        // Not carried again: it expires after report_ttl periods.
        b.tick(2_050 + 999);
        assert_eq!(b.verdict(1).state, PeerState::HungStopped);
        b.tick(2_050 + 1_000);
        assert_eq!(b.verdict(1).state, PeerState::Alive);
        // Dead reports never expire; reports about watched peers or itself are ignored.
        b.heard(
            3_100,
            0,
            &[
                Report {
                    rank: 2,
                    state: PeerState::DeadExited,
                    observer: 1,
                },
                Report {
                    rank: 3,
                    state: PeerState::DeadExited,
                    observer: 2,
                },
                Report {
                    rank: 4,
                    state: PeerState::DeadExited,
                    observer: 2,
                },
            ],
        );
        b.tick(99_000);
        assert_eq!(b.verdict(2).state, PeerState::DeadExited);
        assert_eq!(b.verdict(3).state, PeerState::HungStopped); // its own: silent since 1 000
        assert_eq!(b.verdict(4).state, PeerState::Alive);
    }

    #[test]
    fn reports_are_bounded_first_hand_first() {
        let mut h = Health::new(0, 64, &[1, 2, 3], HealthConfig::default(), 0).unwrap();
        h.observe(10, 2, Observation::Closed);
        let many: Vec<Report> = (10..60)
            .map(|r| Report {
                rank: r,
                state: PeerState::HungStopped,
                observer: 5,
            })
            .collect();
        h.heard(10, 5, &many);
        let out = h.reports(16);
        assert_eq!(out.len(), 16);
        assert_eq!(out[0].rank, 2);
        assert_eq!(out[0].observer, 0);
        // Observers per peer are capped.
        let mut h = health(&[1]);
        for o in 0..20 {
            h.heard(
                10,
                o,
                &[Report {
                    rank: 5,
                    state: PeerState::DeadExited,
                    observer: o % 8,
                }],
            );
        }
        assert!(h.verdict(5).by.len() <= MAX_OBSERVERS);
    }

    #[test]
    fn state_codes_round_trip() {
        for s in [
            PeerState::Alive,
            PeerState::Left,
            PeerState::HungStopped,
            PeerState::HungStuck(9),
            PeerState::DeadUnreachable,
            PeerState::DeadExited,
        ] {
            assert_eq!(PeerState::from_code(s.code(), 9), Some(s));
        }
        assert_eq!(PeerState::from_code(6, 0), None);
    }

    /// A synthetic timeline: per step, a time advance and an event about a peer.
    fn timeline() -> impl Strategy<Value = Vec<(u64, u8, Rank)>> {
        proptest::collection::vec((0u64..400, 0u8..6, 1u32..4), 0..200)
    }

    #[test]
    fn merged_views_name_the_worst_state_and_who_saw_it() {
        let v = |rank, state, by: Vec<Rank>| Verdict {
            rank,
            state,
            since_ms: 0,
            by,
            detail: format!("{state}"),
        };
        let views = vec![
            (
                0,
                vec![
                    v(0, PeerState::Alive, vec![0]),
                    v(1, PeerState::HungStopped, vec![0]),
                    v(2, PeerState::Alive, vec![0]),
                ],
            ),
            (
                2,
                vec![
                    v(0, PeerState::Alive, vec![2]),
                    v(1, PeerState::HungStopped, vec![2]),
                    v(2, PeerState::Alive, vec![2]),
                ],
            ),
        ];
        let m = merge(3, &views);
        assert_eq!(m[1].state, PeerState::HungStopped);
        assert_eq!(m[1].said_by, vec![0, 2]);
        assert!(!m[1].answered);
        assert!(m[0].answered && m[2].answered);
        assert_eq!(
            (m[0].state, m[0].said_by.clone()),
            (PeerState::Alive, vec![2])
        );
        // A dead claim outranks a hung one, relayed claims name their observers.
        let views = vec![
            (0, vec![v(1, PeerState::HungStopped, vec![0])]),
            (
                3,
                vec![
                    v(1, PeerState::DeadExited, vec![2]),
                    v(7, PeerState::DeadExited, vec![2]),
                ],
            ),
        ];
        let m = merge(4, &views);
        assert_eq!(
            (m[1].state, m[1].said_by.clone()),
            (PeerState::DeadExited, vec![2])
        );
        assert_eq!(m.len(), 4);
    }

    proptest! {
        /// Whatever happens: dead is final; a peer heard within the stopped window and
        /// not dead, left or stuck is alive; verdicts never panic and name valid ranks.
        #[test]
        fn verdicts_follow_the_rules(steps in timeline()) {
            let cfg = HealthConfig::default();
            let mut h = Health::new(0, 4, &[1, 2, 3], cfg, 0).unwrap();
            let mut now = 0u64;
            let mut dead_at: BTreeMap<Rank, PeerState> = BTreeMap::new();
            let mut last_beat: BTreeMap<Rank, u64> = (1..4).map(|r| (r, 0)).collect();
            let mut left: BTreeMap<Rank, bool> = BTreeMap::new();
            for (dt, what, peer) in steps {
                now += dt;
                let obs = match what {
                    0 | 1 => beat(now, if what == 1 { Some(3) } else { None }),
                    2 => Observation::Closed,
                    3 => Observation::Unreachable,
                    4 => Observation::Goodbye,
                    _ => { h.tick(now); continue; }
                };
                let was = h.verdict(peer).state;
                h.observe(now, peer, obs);
                h.tick(now);
                if let Observation::Beat(_) = obs {
                    if !was.is_dead() { last_beat.insert(peer, now); }
                }
                if obs == Observation::Goodbye && !was.is_dead() { left.insert(peer, true); }
                for r in 1..4u32 {
                    let s = h.verdict(r).state;
                    if let Some(d) = dead_at.get(&r) {
                        prop_assert_eq!(s, *d);
                    }
                    if s.is_dead() { dead_at.entry(r).or_insert(s); }
                    let fresh = now - last_beat[&r] < cfg.stopped_window();
                    if !s.is_dead() && !left.get(&r).copied().unwrap_or(false) && fresh {
                        prop_assert!(matches!(s, PeerState::Alive | PeerState::HungStuck(_)), "{r}: {s}");
                    }
                    if !s.is_dead() && s != PeerState::Left && !fresh {
                        prop_assert_eq!(s, PeerState::HungStopped);
                    }
                }
                let failed = h.failed();
                prop_assert!(failed.iter().all(|&r| r < 4 && r != 0));
            }
        }

        /// Relayed reports of any shape never panic, stay bounded, and never override a
        /// first-hand verdict.
        #[test]
        fn relayed_reports_are_bounded(reports in proptest::collection::vec(
            (0u32..100, 0u8..6, 0u32..100), 0..300)) {
            let mut h = Health::new(0, 64, &[1, 63], HealthConfig::default(), 0).unwrap();
            let reports: Vec<Report> = reports.into_iter().filter_map(|(rank, code, observer)| {
                Some(Report { rank, state: PeerState::from_code(code, 1)?, observer })
            }).collect();
            h.heard(5, 2, &reports);
            prop_assert!(h.reports(16).len() <= 16);
            prop_assert_eq!(h.verdict(1).state, PeerState::Alive);
            for v in h.verdicts() {
                prop_assert!(v.by.len() <= MAX_OBSERVERS);
                prop_assert!(v.rank < 64);
            }
        }
    }
}
