//! The straggler detector: from each rank's entry time into each collective call, flags
//! ranks persistently late (`straggler`) and ranks that stopped entering calls (`stall`).
//!
//! # Lateness (judged when every rank has entered a call)
//!
//! Entry times are aligned with the caller's per-rank offsets (`t + offset`). For call `c`
//! with aligned times `t_r`: `m = median(t)`, `MAD = median(|t_r − m|)`, the robust scale
//! `s = max(1.4826 · MAD, min_scale_s)` (1.4826·MAD estimates a normal spread; the floor
//! keeps ranks entering within microseconds of each other from making noise significant),
//! and rank `r` is *late* in `c` when `z = (t_r − m) / s > z_threshold` (3.5). Each rank
//! keeps whether it was late in each of its last `window_calls` judged calls (a 64-bit
//! history); once `min_calls` are judged its reading is `Bad` when the late fraction is
//! above `raise_fraction` (0.5: most calls), `Good` at or below `clear_fraction` (0.25),
//! and the `straggler` hysteresis (default 3 calls each way) turns readings, timed at the
//! call's last entry, into alerts. A one-off late call never raises. With fewer than 3
//! ranks nobody can be late (the median sits between the two).
//!
//! # Stopped ranks (judged by [`StragglerDetector::evaluate`])
//!
//! A call that all but at most `stop_max_missing × world` ranks (at least one) have
//! entered is *waiting* on the rest since its last entry. A missing rank has waited for
//! `now − that entry`; above `stop_after_s` (1 s) it reads `Bad` (a `stall` alert naming
//! the rank, the call and the time, dated from when the others were all in), and once
//! it has entered that call, `Good` (resolved, with how long after the others it came),
//! even if it is already being waited on in a later call. The oldest waiting call
//! counts.
//!
//! # Limits
//!
//! `window_calls ≤ 64`. Memory: the entry times of the last `window_calls` calls
//! (`window_calls × world` × 8 bytes) plus O(world) per-rank state and scratch; an entry
//! is O(1) except the one completing a call, O(world); an evaluation is
//! O(window_calls × world). Entries for calls older than the window are dropped and
//! counted ([`StragglerDetector::stale_entries`]).

use serde::{Deserialize, Serialize};

use super::alert::{Alert, AlertKind, Evidence, Metric, Subject};
use super::hysteresis::{HysteresisConfig, Persist, Reading};
use super::{DetectError, Stream};
use crate::matrix::{check_positive, check_range, seconds_to_ns, InvalidField};

/// The most calls a lateness history holds (one bit each in a `u64`).
pub const MAX_WINDOW_CALLS: u32 = 64;

const ABSENT: u64 = u64::MAX;
/// 1.4826 · MAD estimates the standard deviation of normally distributed data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Thresholds of the straggler detector; see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StragglerConfig {
    /// Calls a rank's lateness history spans (1 ..= 64; default 16).
    pub window_calls: u32,
    /// Judged calls needed before a rank is read at all (1 ..= `window_calls`; default 8).
    pub min_calls: u32,
    /// A rank is late in a call when its robust z-score exceeds this (default 3.5).
    pub z_threshold: f64,
    /// Floor of the robust scale, seconds (default 0.001).
    pub min_scale_s: f64,
    /// Bad when the late fraction is above this (0 ≤ · < 1; default 0.5).
    pub raise_fraction: f64,
    /// Good when it is at or below this (0 ≤ · ≤ `raise_fraction`; default 0.25).
    pub clear_fraction: f64,
    /// A rank missing from a call the others entered this long ago is stopped, seconds
    /// (default 1).
    pub stop_after_s: f64,
    /// The largest fraction of the world that may be missing from a call for it to count
    /// as waiting on them (0 < · < 1; default 0.25; at least one rank).
    pub stop_max_missing: f64,
    /// Persistence of straggler alerts, in calls or seconds (default 3 calls each way).
    pub straggler: HysteresisConfig,
}

impl Default for StragglerConfig {
    fn default() -> Self {
        StragglerConfig {
            window_calls: 16,
            min_calls: 8,
            z_threshold: 3.5,
            min_scale_s: 0.001,
            raise_fraction: 0.5,
            clear_fraction: 0.25,
            stop_after_s: 1.0,
            stop_max_missing: 0.25,
            straggler: HysteresisConfig {
                raise_after: Persist::Samples(3),
                clear_after: Persist::Samples(3),
            },
        }
    }
}

impl StragglerConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if !(1..=MAX_WINDOW_CALLS).contains(&self.window_calls) {
            return Err(InvalidField::new(
                "straggler.window_calls",
                self.window_calls,
                &format!("give 1 to {MAX_WINDOW_CALLS}"),
            ));
        }
        if !(1..=self.window_calls).contains(&self.min_calls) {
            return Err(InvalidField::new(
                "straggler.min_calls",
                self.min_calls,
                &format!("give 1 to window_calls = {}", self.window_calls),
            ));
        }
        check_positive("straggler.z_threshold", self.z_threshold, 1000.0)?;
        check_positive("straggler.min_scale_s", self.min_scale_s, 3600.0)?;
        check_range("straggler.raise_fraction", self.raise_fraction, 0.0, 0.999)?;
        check_range(
            "straggler.clear_fraction",
            self.clear_fraction,
            0.0,
            self.raise_fraction,
        )?;
        check_positive("straggler.stop_after_s", self.stop_after_s, 86_400.0)?;
        check_range(
            "straggler.stop_max_missing",
            self.stop_max_missing,
            0.0,
            0.999,
        )?;
        self.straggler.validate("straggler.straggler")
    }
}

/// One call of the window.
#[derive(Clone, Copy, Debug, Default)]
struct CallSlot {
    seq: u64,
    used: bool,
    present: usize,
    last_entry_ns: u64,
}

/// Per-rank state.
#[derive(Clone, Debug)]
struct RankState {
    offset_ns: i64,
    late_bits: u64,
    judged: u32,
    lateness_s: Option<f64>,
    straggler: Stream,
    stop: Stream,
    stopped_on: Option<(u64, u64)>,
    last_seq: Option<u64>,
    last_entry_ns: u64,
}

/// Flags straggling and stopped ranks; see the module doc.
#[derive(Clone, Debug)]
pub struct StragglerDetector {
    world: usize,
    config: StragglerConfig,
    window: usize,
    max_missing: usize,
    stop_ns: u64,
    times: Vec<u64>,
    calls: Vec<CallSlot>,
    newest: Option<u64>,
    ranks: Vec<RankState>,
    rel: Vec<f64>,
    work: Vec<f64>,
    waiting: Vec<Option<(u64, u64)>>,
    stale_entries: u64,
}

impl StragglerDetector {
    /// A detector for a world of `world` ranks with `config`, validated.
    pub fn new(world: usize, config: StragglerConfig) -> Result<StragglerDetector, DetectError> {
        config.validate()?;
        if world == 0 {
            return Err(DetectError::EmptyWorld);
        }
        let window = config.window_calls as usize;
        let stop_rule = HysteresisConfig {
            raise_after: Persist::Samples(1),
            clear_after: Persist::Samples(1),
        };
        let ranks = (0..world)
            .map(|rank| {
                let subject = Subject::Rank { rank };
                RankState {
                    offset_ns: 0,
                    late_bits: 0,
                    judged: 0,
                    lateness_s: None,
                    straggler: Stream::new(AlertKind::Straggler, subject, &config.straggler, false),
                    stop: Stream::new(AlertKind::Stall, subject, &stop_rule, false),
                    stopped_on: None,
                    last_seq: None,
                    last_entry_ns: 0,
                }
            })
            .collect();
        Ok(StragglerDetector {
            world,
            max_missing: ((config.stop_max_missing * world as f64).floor() as usize).max(1),
            stop_ns: seconds_to_ns(config.stop_after_s),
            window,
            config,
            times: vec![ABSENT; window * world],
            calls: vec![CallSlot::default(); window],
            newest: None,
            ranks,
            rel: vec![0.0; world],
            work: vec![0.0; world],
            waiting: vec![None; world],
            stale_entries: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &StragglerConfig {
        &self.config
    }

    fn check_rank(&self, arg: &'static str, rank: usize) -> Result<(), DetectError> {
        if rank < self.world {
            Ok(())
        } else {
            Err(DetectError::RankOutOfRange {
                arg,
                rank,
                world: self.world,
            })
        }
    }

    /// Sets the offset added to `rank`'s entry times to align its clock (default 0).
    pub fn set_offset(&mut self, rank: usize, offset_ns: i64) -> Result<(), DetectError> {
        self.check_rank("rank", rank)?;
        self.ranks[rank].offset_ns = offset_ns;
        Ok(())
    }

    /// Entries dropped because their call was older than the window.
    pub fn stale_entries(&self) -> u64 {
        self.stale_entries
    }

    /// `(late, judged)`: of `rank`'s last judged calls (at most `window_calls`), how many
    /// it was late into.
    pub fn late_history(&self, rank: usize) -> Option<(u32, u32)> {
        let state = self.ranks.get(rank)?;
        Some((state.late_bits.count_ones(), state.judged))
    }

    /// Reports that `rank` entered call `seq` at `t_ns` (its own clock); returns the
    /// straggler alerts raised or resolved when this entry completes the call.
    pub fn enter(&mut self, seq: u64, rank: usize, t_ns: u64) -> Result<Vec<Alert>, DetectError> {
        self.check_rank("rank", rank)?;
        let window = self.window as u64;
        if self
            .newest
            .is_some_and(|newest| seq.saturating_add(window) <= newest)
        {
            self.stale_entries = self.stale_entries.saturating_add(1);
            return Ok(Vec::new());
        }
        self.newest = Some(self.newest.map_or(seq, |newest| newest.max(seq)));
        let slot = (seq % window) as usize;
        let row = slot * self.world;
        if !self.calls[slot].used || self.calls[slot].seq != seq {
            self.calls[slot] = CallSlot {
                seq,
                used: true,
                present: 0,
                last_entry_ns: 0,
            };
            self.times[row..row + self.world].fill(ABSENT);
        }
        if self.times[row + rank] != ABSENT {
            return Err(DetectError::DuplicateEntry { rank, seq });
        }
        let state = &mut self.ranks[rank];
        let aligned = t_ns.saturating_add_signed(state.offset_ns).min(ABSENT - 1);
        self.times[row + rank] = aligned;
        if state.last_seq.is_none_or(|last| seq >= last) {
            state.last_seq = Some(seq);
            state.last_entry_ns = aligned;
        }
        let call = &mut self.calls[slot];
        call.present += 1;
        call.last_entry_ns = call.last_entry_ns.max(aligned);
        if call.present == self.world {
            Ok(self.judge(slot))
        } else {
            Ok(Vec::new())
        }
    }

    /// Judges the complete call in `slot`: lateness of every rank, then their readings.
    fn judge(&mut self, slot: usize) -> Vec<Alert> {
        let row = &self.times[slot * self.world..(slot + 1) * self.world];
        let now_ns = self.calls[slot].last_entry_ns;
        let first = row.iter().copied().min().unwrap_or(0);
        for (rel, &t) in self.rel.iter_mut().zip(row) {
            *rel = (t - first) as f64 / 1e9;
        }
        self.work.copy_from_slice(&self.rel);
        let median_s = median(&mut self.work);
        for (dev, rel) in self.work.iter_mut().zip(&self.rel) {
            *dev = (rel - median_s).abs();
        }
        let scale = (MAD_TO_SIGMA * median(&mut self.work)).max(self.config.min_scale_s);
        let window_mask = match self.window {
            64 => u64::MAX,
            w => (1u64 << w) - 1,
        };
        let gain = 2.0 / (self.window as f64 + 1.0);
        let c = &self.config;
        let mut events = Vec::new();
        for (state, rel) in self.ranks.iter_mut().zip(&self.rel) {
            let lateness = rel - median_s;
            let late = lateness / scale > c.z_threshold;
            state.late_bits = ((state.late_bits << 1) | u64::from(late)) & window_mask;
            state.judged = (state.judged + 1).min(c.window_calls);
            if late {
                state.lateness_s = Some(
                    state
                        .lateness_s
                        .map_or(lateness, |mean| mean + gain * (lateness - mean)),
                );
            }
            let fraction = f64::from(state.late_bits.count_ones()) / f64::from(state.judged);
            let reading = if state.judged < c.min_calls {
                Reading::Marginal
            } else {
                Reading::above(fraction, c.raise_fraction, c.clear_fraction)
            };
            let mut evidence = vec![Evidence {
                metric: Metric::LateFraction,
                observed: fraction,
                threshold: c.raise_fraction,
                baseline: Some(f64::from(state.judged)),
            }];
            if let Some(mean) = state.lateness_s {
                evidence.push(Evidence {
                    metric: Metric::LatenessS,
                    observed: mean,
                    threshold: c.z_threshold * c.min_scale_s,
                    baseline: None,
                });
            }
            events.extend(state.straggler.step(reading, now_ns, evidence, None, None));
        }
        events
    }

    /// Judges stopped ranks as of `now_ns` (aligned clock); returns the stall alerts
    /// raised or resolved.
    pub fn evaluate(&mut self, now_ns: u64) -> Vec<Alert> {
        let window = self.window as u64;
        let newest = self.newest.unwrap_or(0);
        self.waiting.fill(None);
        let mut order: Vec<usize> = (0..self.window)
            .filter(|&slot| {
                let call = &self.calls[slot];
                call.used
                    && call.seq.saturating_add(window) > newest
                    && call.present < self.world
                    && call.present + self.max_missing >= self.world
            })
            .collect();
        order.sort_by_key(|&slot| self.calls[slot].seq);
        for slot in order {
            let call = self.calls[slot];
            let row = &self.times[slot * self.world..(slot + 1) * self.world];
            for (rank, &t) in row.iter().enumerate() {
                let behind = self.ranks[rank].last_seq.is_none_or(|last| last < call.seq);
                if t == ABSENT && behind && self.waiting[rank].is_none() {
                    self.waiting[rank] = Some((call.seq, call.last_entry_ns));
                }
            }
        }
        let limit_s = self.config.stop_after_s;
        let stopped_for = |waited_ns: u64| Evidence {
            metric: Metric::StoppedS,
            observed: waited_ns as f64 / 1e9,
            threshold: limit_s,
            baseline: None,
        };
        let (world, calls, times) = (self.world, &self.calls, &self.times);
        // When `rank` entered call `seq`, while the window still holds it.
        let entry = |seq: u64, rank: usize| {
            let slot = (seq % window) as usize;
            let held = calls[slot].used && calls[slot].seq == seq;
            held.then(|| times[slot * world + rank])
                .filter(|&t| t != ABSENT)
        };
        let mut events = Vec::new();
        for (rank, (state, waiting)) in self.ranks.iter_mut().zip(&self.waiting).enumerate() {
            let waited_ns = waiting.map(|(_, since_ns)| now_ns.saturating_sub(since_ns));
            let resumed = state
                .stopped_on
                .filter(|&(seq, _)| state.last_seq.is_some_and(|last| last >= seq));
            let (reading, evidence, call, onset) = match (*waiting, waited_ns, resumed) {
                (Some((seq, since_ns)), Some(waited), _) if waited > self.stop_ns => {
                    state.stopped_on = Some((seq, since_ns));
                    let evidence = vec![stopped_for(waited)];
                    (Reading::Bad, evidence, Some(seq), Some(since_ns))
                }
                (_, _, Some((seq, since_ns))) => {
                    // It entered the call it was stopped on: how long after the others.
                    state.stopped_on = None;
                    let entered = entry(seq, rank).unwrap_or(state.last_entry_ns);
                    let evidence = vec![stopped_for(entered.saturating_sub(since_ns))];
                    (Reading::Good, evidence, Some(seq), None)
                }
                (Some((seq, since_ns)), Some(waited), None) => {
                    let evidence = vec![stopped_for(waited)];
                    (Reading::Marginal, evidence, Some(seq), Some(since_ns))
                }
                _ => (Reading::Good, Vec::new(), None, None),
            };
            events.extend(state.stop.step(reading, now_ns, evidence, call, onset));
        }
        events
    }

    /// The alerts firing now (straggling and stopped ranks), with their latest figures.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> + '_ {
        self.ranks
            .iter()
            .flat_map(|state| [state.straggler.current(), state.stop.current()])
            .flatten()
    }
}

/// The median of `values` (reordered), the mean of the middle two for an even count;
/// 0 for none.
fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (lower, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let below = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (below + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [7.0]), 7.0);
        assert_eq!(median(&mut []), 0.0);
    }
}
