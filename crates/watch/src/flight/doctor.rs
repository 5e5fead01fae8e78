//! `doctor`: lines all ranks' dumps of one communicator up by `collective_seq_id` and
//! says what went wrong, with the evidence.
//!
//! Findings, in the order they are reported:
//!
//! 1. **Never arrived**: the furthest call any rank entered is `hi`; a rank whose last
//!    entry is below `hi` stopped early. The first call such a rank never entered is
//!    reported with the ranks that entered it and how long they waited (from entering to
//!    their end, or to their dump if still inside), each on its own clock. A dump of a
//!    running job (signal, request) catches ranks mid-call, so if the ranks inside that
//!    call all entered it less than [`DoctorConfig::min_wait_ns`] before their dump and none failed, the
//!    call is taken as in flight and not reported.
//! 2. **Mismatch**: the first call number at which ranks entered different calls
//!    (collective, dtype, count or root differ), with the groups of ranks and what each
//!    entered; later mismatching calls are counted.
//! 3. **Failed**: each rank's first failed call with its error (failures of the ranks
//!    waiting in a never-arrived call are shown there instead).
//! 4. **Slow**: lateness of rank r at call s is `late = a_r − median_{q≠r} a_q` over the
//!    ranks that entered s, where `a` is the entry time (`time_created_ns`). Per rank,
//!    `m_r` = median of its lateness; the jitter is 1.4826 × the median over ranks of
//!    each rank's MAD of lateness (a robust σ of ordinary call-to-call noise), and the
//!    threshold `θ = max(min_late_ns, mad_k × jitter)` ([`DoctorConfig`]). A rank with
//!    `m_r > θ` over at least `min_calls` calls is *persistently slow*; otherwise calls
//!    where `late − m_r > θ` are *episodes* (a stall: SIGSTOP, swapping, a long GC), of
//!    which the worst is shown.
//!
//! # Clocks
//!
//! Times in a dump are of its host's clock. When all dumps come from one host (the same
//! `host`), entry times are compared directly. When hosts differ their clocks are not
//! assumed synchronised (NTP leaves milliseconds of skew), so the doctor compares
//! durations only: a call ends on all ranks within a network latency of each other
//! (all-reduce, all-gather, reduce-scatter, all-to-all, barrier synchronise everyone), so
//! a rank that entered late has a shorter duration, and `a_r` above is replaced by
//! `−duration_r` of completed calls. Rooted collectives may end early at some ranks, which
//! blurs this estimate; waits in never-arrived findings are always measured on one clock.
//!
//! # Limits
//!
//! At most [`MAX_FAILED_LISTED`] failed and [`MAX_SLOW_LISTED`] slow findings are listed
//! (the worst first); the number left out is in [`Report::findings_omitted`]. Time and
//! memory grow with the dumps' entries (each at most [`super::MAX_CAPACITY`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::dump::Dump;
use super::entry::{Entry, State};
use super::error::FlightError;
use super::human;
use super::stats::{median, median_mad, median_sorted, median_without, MAD_TO_SIGMA};

/// The most failed-call findings listed.
pub const MAX_FAILED_LISTED: usize = 8;
/// The most slow-rank findings listed.
pub const MAX_SLOW_LISTED: usize = 16;

/// The doctor's thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoctorConfig {
    /// Lateness below this is never reported, ns (default 20 ms).
    pub min_late_ns: u64,
    /// How many robust σ above the jitter lateness must be (default 5).
    pub mad_k: f64,
    /// Fewest compared calls before a rank can be called persistently slow (default 5).
    pub min_calls: usize,
    /// A call that other ranks are still inside for less than this, ns, none of them
    /// failed, is taken as in flight when the dumps were taken, not as one a rank never
    /// arrived at (default 1 s).
    pub min_wait_ns: u64,
}

impl Default for DoctorConfig {
    fn default() -> Self {
        DoctorConfig {
            min_late_ns: 20_000_000,
            mad_k: 5.0,
            min_calls: 5,
            min_wait_ns: 1_000_000_000,
        }
    }
}

impl DoctorConfig {
    fn validate(&self) -> Result<(), FlightError> {
        if !(self.mad_k.is_finite() && self.mad_k > 0.0) {
            return Err(FlightError::Config {
                field: "mad_k",
                value: self.mad_k.to_string(),
                valid: "a finite number above 0 (default 5)",
            });
        }
        if self.min_calls == 0 {
            return Err(FlightError::Config {
                field: "min_calls",
                value: "0".to_string(),
                valid: "1 or more (default 5)",
            });
        }
        Ok(())
    }
}

/// Which times the slowness analysis compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "basis", rename_all = "snake_case")]
pub enum ClockBasis {
    /// All dumps from one host: entry times compared directly.
    SameHost {
        /// The host.
        host: String,
    },
    /// Dumps from several hosts: durations compared, not absolute times.
    Durations {
        /// How many distinct hosts.
        hosts: usize,
    },
}

/// A call as the doctor names it: `all_reduce 64 MiB f32`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSummary {
    /// The sequence number.
    pub seq: u64,
    /// The collective without the `topoccl:` prefix.
    pub collective: String,
    /// The element type.
    pub dtype: String,
    /// The count argument, elements.
    pub count: u64,
    /// The size, bytes.
    pub size_bytes: u64,
    /// The root of rooted collectives.
    pub root: Option<u32>,
    /// The algorithm.
    pub algorithm: String,
}

impl CallSummary {
    fn of(e: &Entry) -> Self {
        CallSummary {
            seq: e.collective_seq_id,
            collective: e.collective().to_string(),
            dtype: e.dtype.to_string(),
            count: e.count,
            size_bytes: e.size_bytes,
            root: e.root,
            algorithm: e.algorithm.to_string(),
        }
    }
}

impl fmt::Display for CallSummary {
    /// `all_reduce 64 MiB f32`, `broadcast 4 KiB f32 root 3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.collective,
            human::bytes(self.size_bytes),
            self.dtype
        )?;
        if let Some(root) = self.root {
            write!(f, " root {root}")?;
        }
        Ok(())
    }
}

/// A rank that never entered a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Absent {
    /// The rank.
    pub rank: u32,
    /// Its last recorded call, if any.
    pub last_seq: Option<u64>,
    /// That call's state.
    pub last_state: Option<State>,
}

/// A rank inside a call that another rank never entered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// The rank.
    pub rank: u32,
    /// Its state in the call.
    pub state: State,
    /// From entering to its end (or to the dump if still inside), ns of its clock.
    pub waited_ns: u64,
    /// Its error if the call failed.
    pub error: Option<String>,
}

/// Ranks that entered the same call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallGroup {
    /// What they entered.
    pub call: CallSummary,
    /// Who.
    pub ranks: Vec<u32>,
}

/// Persistent lateness or one-off stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowPattern {
    /// Late at most calls (median lateness above the threshold).
    Persistent,
    /// On time mostly, late by far at a few calls.
    Episode,
}

/// One thing the doctor found, with its evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// Ranks that never entered call `seq` which others entered.
    NeverArrived {
        /// The first call number some ranks never entered.
        seq: u64,
        /// The call, as the ranks that entered it recorded it (`None` if no ring still
        /// holds it).
        call: Option<CallSummary>,
        /// The furthest call number any rank entered.
        furthest_seq: u64,
        /// The ranks that never entered it.
        absent: Vec<Absent>,
        /// The ranks inside it.
        waiting: Vec<Waiting>,
    },
    /// Ranks that entered different calls under the same number.
    Mismatch {
        /// The first mismatching call number.
        seq: u64,
        /// What each group of ranks entered (smallest group first).
        groups: Vec<CallGroup>,
        /// Which fields differ: `collective`, `dtype`, `count`, `root`.
        differs: Vec<String>,
        /// How many later call numbers mismatch too.
        later: u64,
    },
    /// A rank's first failed call.
    Failed {
        /// The rank.
        rank: u32,
        /// The call.
        call: CallSummary,
        /// Its error text.
        error: String,
    },
    /// A rank entering calls late.
    Slow {
        /// The rank.
        rank: u32,
        /// Persistent or episodes.
        pattern: SlowPattern,
        /// Calls compared with other ranks.
        calls_compared: u64,
        /// Calls at which it was late beyond the threshold.
        calls_late: u64,
        /// Its median lateness, ns.
        median_late_ns: f64,
        /// Its worst lateness, ns.
        worst_late_ns: f64,
        /// The call of the worst lateness.
        worst_call: CallSummary,
        /// The threshold applied, ns.
        threshold_ns: f64,
        /// Its median call duration, ns.
        median_duration_ns: Option<f64>,
        /// The other ranks' median call duration, ns.
        others_median_duration_ns: Option<f64>,
    },
}

/// What the doctor found (see the module doc); `Display` prints a human summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The job.
    pub job_id: String,
    /// The communicator.
    pub process_group: String,
    /// Its number of ranks.
    pub world_size: u32,
    /// The ranks with a dump.
    pub ranks: Vec<u32>,
    /// The ranks without one.
    pub missing_ranks: Vec<u32>,
    /// The lowest and highest call numbers in any dump.
    pub seq_range: Option<(u64, u64)>,
    /// How many call numbers at least two ranks recorded.
    pub calls_compared: u64,
    /// Which times were compared.
    pub clock: ClockBasis,
    /// The findings, in the order of the module doc.
    pub findings: Vec<Finding>,
    /// Findings beyond the caps, not listed.
    pub findings_omitted: u64,
}

impl Report {
    /// Whether all ranks dumped and nothing was found.
    pub fn all_agree(&self) -> bool {
        self.missing_ranks.is_empty() && self.findings.is_empty()
    }
}

/// [`doctor_with`] the default thresholds.
pub fn doctor(dumps: &[Dump]) -> Result<Report, FlightError> {
    doctor_with(dumps, &DoctorConfig::default())
}

/// Analyses the dumps of one job's communicator, one per rank (see the module doc).
/// Refuses dumps of different jobs, communicators or world sizes, and two dumps of one
/// rank; ranks without a dump are listed as missing.
pub fn doctor_with(dumps: &[Dump], config: &DoctorConfig) -> Result<Report, FlightError> {
    config.validate()?;
    let ranks = check_set(dumps)?;
    let first = ranks[0];
    let present: Vec<u32> = ranks.iter().map(|d| d.rank).collect();
    let present_set: BTreeSet<u32> = present.iter().copied().collect();
    let missing_ranks = (0..first.world_size)
        .filter(|r| !present_set.contains(r))
        .collect();
    let hosts: BTreeSet<&str> = ranks.iter().map(|d| d.host.as_str()).collect();
    let clock = match hosts.iter().next() {
        Some(host) if hosts.len() == 1 => ClockBasis::SameHost {
            host: host.to_string(),
        },
        _ => ClockBasis::Durations { hosts: hosts.len() },
    };
    let calls = line_up(&ranks);
    let seq_range = calls
        .first_key_value()
        .map(|(&s, _)| s)
        .zip(calls.last_key_value().map(|(&s, _)| s));
    let calls_compared = calls.values().filter(|c| c.len() >= 2).count() as u64;

    let mut findings = Vec::new();
    let mut omitted = 0u64;
    let never = never_arrived(&ranks, &calls, config);
    let waiting_seq = match &never {
        Some(Finding::NeverArrived { seq, .. }) => Some(*seq),
        _ => None,
    };
    findings.extend(never);
    findings.extend(mismatch(&ranks, &calls));
    let failed = failures(&ranks, waiting_seq);
    omitted += failed.len().saturating_sub(MAX_FAILED_LISTED) as u64;
    findings.extend(failed.into_iter().take(MAX_FAILED_LISTED));
    let slow = slow_ranks(&ranks, &calls, &clock, config);
    omitted += slow.len().saturating_sub(MAX_SLOW_LISTED) as u64;
    findings.extend(slow.into_iter().take(MAX_SLOW_LISTED));

    Ok(Report {
        job_id: first.job_id.clone(),
        process_group: first.process_group.clone(),
        world_size: first.world_size,
        ranks: present,
        missing_ranks,
        seq_range,
        calls_compared,
        clock,
        findings,
        findings_omitted: omitted,
    })
}

/// Validates each dump and that they belong together; returns them sorted by rank.
fn check_set(dumps: &[Dump]) -> Result<Vec<&Dump>, FlightError> {
    let first = dumps.first().ok_or(FlightError::NoDumps)?;
    let mut by_rank: BTreeMap<u32, &Dump> = BTreeMap::new();
    for d in dumps {
        d.validate()?;
        let fields: [(&'static str, String, String); 3] = [
            ("job_id", first.job_id.clone(), d.job_id.clone()),
            (
                "process_group",
                first.process_group.clone(),
                d.process_group.clone(),
            ),
            (
                "world_size",
                first.world_size.to_string(),
                d.world_size.to_string(),
            ),
        ];
        for (field, first_value, other_value) in fields {
            if first_value != other_value {
                return Err(FlightError::Mixed {
                    field,
                    first_source: first.source_label(),
                    first_value,
                    other_source: d.source_label(),
                    other_value,
                });
            }
        }
        if let Some(prev) = by_rank.insert(d.rank, d) {
            return Err(FlightError::DuplicateRank {
                rank: d.rank,
                first_source: prev.source_label(),
                other_source: d.source_label(),
            });
        }
    }
    Ok(by_rank.into_values().collect())
}

/// Every recorded call number with the ranks' entries for it: `(index into ranks,
/// entry)`, in rank order.
type LinedUp<'a> = BTreeMap<u64, Vec<(usize, &'a Entry)>>;

/// Lines the dumps (sorted by rank) up by sequence number.
fn line_up<'a>(ranks: &[&'a Dump]) -> LinedUp<'a> {
    let mut calls: LinedUp<'a> = BTreeMap::new();
    for (i, d) in ranks.iter().enumerate() {
        for e in &d.entries {
            calls.entry(e.collective_seq_id).or_default().push((i, e));
        }
    }
    calls
}

fn never_arrived(ranks: &[&Dump], calls: &LinedUp<'_>, config: &DoctorConfig) -> Option<Finding> {
    let lowest = *calls.first_key_value()?.0;
    let furthest = *calls.last_key_value()?.0;
    let last = |d: &Dump| d.entries.last().map(|e| e.collective_seq_id);
    // The first call each lagging rank never entered; a rank that recorded nothing never
    // entered the earliest call any ring holds.
    let next_of = |d: &Dump| last(d).map_or(lowest, |s| s.saturating_add(1));
    let seq = ranks
        .iter()
        .filter(|d| last(d).is_none_or(|s| s < furthest))
        .map(|d| next_of(d))
        .min()?;
    let mut absent = Vec::new();
    let mut waiting = Vec::new();
    let mut call = None;
    let inside = calls.get(&seq).map_or(&[][..], Vec::as_slice);
    for (i, d) in ranks.iter().enumerate() {
        let entry = inside
            .binary_search_by_key(&i, |&(j, _)| j)
            .ok()
            .map(|k| inside[k].1);
        match entry {
            Some(e) => {
                call.get_or_insert_with(|| CallSummary::of(e));
                let end = e.time_discovered_completed_ns.unwrap_or(d.dump_time_ns);
                waiting.push(Waiting {
                    rank: d.rank,
                    state: e.state,
                    waited_ns: end.saturating_sub(e.time_created_ns),
                    error: e.error.as_deref().map(str::to_string),
                });
            }
            None if next_of(d) == seq => absent.push(Absent {
                rank: d.rank,
                last_seq: last(d),
                last_state: d.entries.last().map(|e| e.state),
            }),
            // Passed it, but its ring no longer holds it.
            None => {}
        }
    }
    // A dump of a running job catches ranks mid-call: a call the others are still inside
    // since less than `min_wait_ns`, none failed, is in flight, not missing a rank.
    let in_flight = |w: &Waiting| !w.state.is_final() && w.waited_ns < config.min_wait_ns;
    if !waiting.is_empty() && waiting.iter().all(in_flight) {
        return None;
    }
    // Dumps of a running job are taken one after another: a lagging rank dumped before
    // the others had been inside the call for `min_wait_ns` had no time to arrive, so its
    // absence proves nothing (on one host, where the times compare).
    let one_host = ranks.iter().all(|d| d.host == ranks[0].host);
    let entered = inside.iter().map(|(_, e)| e.time_created_ns).min();
    if let (true, Some(entered)) = (one_host, entered) {
        let early = |a: &Absent| {
            ranks.iter().any(|d| {
                d.rank == a.rank && d.dump_time_ns < entered.saturating_add(config.min_wait_ns)
            })
        };
        if !absent.is_empty() && absent.iter().all(early) {
            return None;
        }
    }
    Some(Finding::NeverArrived {
        seq,
        call,
        furthest_seq: furthest,
        absent,
        waiting,
    })
}

/// What every rank must agree on for one call number.
type Signature<'a> = (&'a str, &'a str, u64, Option<u32>);

fn signature(e: &Entry) -> Signature<'_> {
    (&e.profiling_name, &e.dtype, e.count, e.root)
}

fn mismatch(ranks: &[&Dump], calls: &LinedUp<'_>) -> Option<Finding> {
    let mut first: Option<(u64, Vec<CallGroup>, Vec<String>)> = None;
    let mut later = 0u64;
    for (&seq, inside) in calls {
        let (mut groups, _) = group_ranks(
            inside
                .iter()
                .map(|&(i, e)| (signature(e), (ranks[i].rank, e))),
            usize::MAX,
        );
        if groups.len() < 2 {
            continue;
        }
        if first.is_some() {
            later += 1;
            continue;
        }
        let field_names = ["collective", "dtype", "count", "root"];
        let differs: [bool; 4] = [
            groups.iter().any(|g| g.0 .0 != groups[0].0 .0),
            groups.iter().any(|g| g.0 .1 != groups[0].0 .1),
            groups.iter().any(|g| g.0 .2 != groups[0].0 .2),
            groups.iter().any(|g| g.0 .3 != groups[0].0 .3),
        ];
        let differs = field_names
            .iter()
            .zip(differs)
            .filter(|(_, d)| *d)
            .map(|(n, _)| n.to_string())
            .collect();
        groups.sort_by_key(|g| (g.1.len(), g.1[0].0));
        let groups = groups
            .into_iter()
            .map(|(_, members)| CallGroup {
                call: CallSummary::of(members[0].1),
                ranks: members.iter().map(|m| m.0).collect(),
            })
            .collect();
        first = Some((seq, groups, differs));
    }
    first.map(|(seq, groups, differs)| Finding::Mismatch {
        seq,
        groups,
        differs,
        later,
    })
}

fn failures(ranks: &[&Dump], skip_seq: Option<u64>) -> Vec<Finding> {
    ranks
        .iter()
        .filter_map(|d| {
            let e = d
                .entries
                .iter()
                .find(|e| e.state == State::Failed && Some(e.collective_seq_id) != skip_seq)?;
            Some(Finding::Failed {
                rank: d.rank,
                call: CallSummary::of(e),
                error: e.error.as_deref().unwrap_or("(no error text)").to_string(),
            })
        })
        .collect()
}

/// One rank's lateness at one call.
struct Late<'a> {
    entry: &'a Entry,
    late_ns: f64,
}

fn slow_ranks(
    ranks: &[&Dump],
    calls: &LinedUp<'_>,
    clock: &ClockBasis,
    config: &DoctorConfig,
) -> Vec<Finding> {
    let same_host = matches!(clock, ClockBasis::SameHost { .. });
    let mut late: Vec<Vec<Late<'_>>> = ranks.iter().map(|_| Vec::new()).collect();
    let mut at_seq: Vec<(i128, usize, &Entry)> = Vec::with_capacity(ranks.len());
    let mut sorted: Vec<f64> = Vec::with_capacity(ranks.len());
    for inside in calls.values() {
        at_seq.clear();
        for &(i, e) in inside {
            // Same host: entry times. Several hosts: minus the duration (a later entry
            // means a shorter wait). Integers, so that the differences below are exact.
            let a = if same_host {
                Some(i128::from(e.time_created_ns))
            } else {
                e.duration_ns()
                    .filter(|_| e.state == State::Completed)
                    .map(|d| -i128::from(d))
            };
            if let Some(a) = a {
                at_seq.push((a, i, e));
            }
        }
        if at_seq.len() < 2 {
            continue;
        }
        at_seq.sort_by_key(|x| x.0);
        let base = at_seq[0].0;
        sorted.clear();
        // Relative to the earliest: exact in f64 below 2^53 ns (104 days).
        sorted.extend(at_seq.iter().map(|x| (x.0 - base) as f64));
        for (k, &(_, i, entry)) in at_seq.iter().enumerate() {
            if let Some(m) = median_without(&sorted, k) {
                late[i].push(Late {
                    entry,
                    late_ns: sorted[k] - m,
                });
            }
        }
    }

    let mads: Vec<f64> = late
        .iter()
        .filter(|l| l.len() >= 2)
        .filter_map(|l| median_mad(&mut l.iter().map(|x| x.late_ns).collect::<Vec<_>>()))
        .map(|(_, mad)| mad)
        .collect();
    let jitter = MAD_TO_SIGMA * median(&mut mads.clone()).unwrap_or(0.0);
    let threshold = (config.min_late_ns as f64).max(config.mad_k * jitter);

    let durations: Vec<Option<f64>> = ranks.iter().map(|d| median_duration(d)).collect();
    let mut sorted_durations: Vec<f64> = durations.iter().flatten().copied().collect();
    sorted_durations.sort_by(f64::total_cmp);
    // The median of the other ranks' durations: drop one copy of rank i's own value.
    let others_median = |own: Option<f64>| match own {
        Some(d) => {
            let at = sorted_durations.partition_point(|x| x.total_cmp(&d).is_lt());
            median_without(&sorted_durations, at)
        }
        None => median_sorted(&sorted_durations),
    };
    let mut found: Vec<Finding> = Vec::new();
    for (i, l) in late.iter().enumerate() {
        let Some(m) = median(&mut l.iter().map(|x| x.late_ns).collect::<Vec<_>>()) else {
            continue;
        };
        let persistent = l.len() >= config.min_calls && m > threshold;
        let is_late = |x: &Late| {
            if persistent {
                x.late_ns > threshold
            } else {
                x.late_ns > threshold && x.late_ns - m > threshold
            }
        };
        let calls_late = l.iter().filter(|x| is_late(x)).count() as u64;
        if calls_late == 0 {
            continue;
        }
        let Some(worst) = l.iter().max_by(|a, b| a.late_ns.total_cmp(&b.late_ns)) else {
            continue;
        };
        found.push(Finding::Slow {
            rank: ranks[i].rank,
            pattern: if persistent {
                SlowPattern::Persistent
            } else {
                SlowPattern::Episode
            },
            calls_compared: l.len() as u64,
            calls_late,
            median_late_ns: m,
            worst_late_ns: worst.late_ns,
            worst_call: CallSummary::of(worst.entry),
            threshold_ns: threshold,
            median_duration_ns: durations[i],
            others_median_duration_ns: others_median(durations[i]),
        });
    }
    found.sort_by(|a, b| worst_of(b).total_cmp(&worst_of(a)));
    found
}

fn worst_of(f: &Finding) -> f64 {
    match f {
        Finding::Slow { worst_late_ns, .. } => *worst_late_ns,
        _ => 0.0,
    }
}

/// The median duration of a dump's completed calls, ns.
fn median_duration(d: &Dump) -> Option<f64> {
    let mut v: Vec<f64> = d
        .entries
        .iter()
        .filter(|e| e.state == State::Completed)
        .filter_map(|e| e.duration_ns().map(|n| n as f64))
        .collect();
    median(&mut v)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job {:?}, communicator {:?}: dumps from {} of {} ranks",
            self.job_id,
            self.process_group,
            self.ranks.len(),
            self.world_size
        )?;
        if let Some((lo, hi)) = self.seq_range {
            write!(f, ", calls #{lo}..#{hi} ({} compared)", self.calls_compared)?;
        }
        match &self.clock {
            ClockBasis::SameHost { host } => {
                writeln!(f, "; one host ({host}): entry times compared")?
            }
            ClockBasis::Durations { hosts } => {
                writeln!(f, "; {hosts} hosts: durations compared, clocks not trusted")?
            }
        }
        if !self.missing_ranks.is_empty() {
            writeln!(f, "no dump from {}", human::ranks(&self.missing_ranks))?;
        }
        for finding in &self.findings {
            write!(f, "{finding}")?;
        }
        if self.findings_omitted > 0 {
            writeln!(f, "({} more findings not listed)", self.findings_omitted)?;
        }
        if self.findings.is_empty() {
            if self.missing_ranks.is_empty() {
                writeln!(f, "all ranks agree")?;
            } else {
                writeln!(f, "all ranks with a dump agree")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Finding {
    /// A headline and indented evidence lines, each ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NeverArrived {
                seq,
                call,
                furthest_seq,
                absent,
                waiting,
            } => {
                let absent_ranks: Vec<u32> = absent.iter().map(|a| a.rank).collect();
                write!(
                    f,
                    "{} never arrived at call #{seq}",
                    human::ranks(&absent_ranks)
                )?;
                match call {
                    Some(c) => write!(f, " ({c})")?,
                    None => write!(f, " (no ring holds it any more)")?,
                }
                if !waiting.is_empty() {
                    let ranks: Vec<u32> = waiting.iter().map(|w| w.rank).collect();
                    let span = wait_span(waiting.iter().map(|w| w.waited_ns));
                    write!(f, "; {} waited {span}", human::ranks(&ranks))?;
                }
                writeln!(f)?;
                let (absent_groups, absent_more) = group_ranks(
                    absent.iter().map(|a| ((a.last_seq, a.last_state), a.rank)),
                    MAX_EVIDENCE_LINES,
                );
                for ((last_seq, last_state), ranks) in absent_groups {
                    match (last_seq, last_state) {
                        (Some(s), Some(state)) => writeln!(
                            f,
                            "  {}: last call #{s} ({state}); others reached #{furthest_seq}",
                            human::ranks(&ranks)
                        )?,
                        _ => writeln!(f, "  {}: recorded no calls", human::ranks(&ranks))?,
                    }
                }
                let (waiting_groups, waiting_more) = group_ranks(
                    waiting
                        .iter()
                        .map(|w| ((w.state, w.error.as_deref()), w.rank)),
                    MAX_EVIDENCE_LINES,
                );
                for ((state, error), ranks) in waiting_groups {
                    let waits = waiting
                        .iter()
                        .filter(|w| ranks.contains(&w.rank))
                        .map(|w| w.waited_ns);
                    let span = wait_span(waits);
                    write!(f, "  {}: ", human::ranks(&ranks))?;
                    match state {
                        State::Completed | State::Failed => write!(f, "{state} after {span}")?,
                        State::Scheduled | State::Started => {
                            write!(f, "still inside ({state}) after {span}, at the dump")?
                        }
                    }
                    if let Some(e) = error {
                        write!(f, ": {e}")?;
                    }
                    writeln!(f)?;
                }
                if absent_more + waiting_more > 0 {
                    writeln!(f, "  ({} more ranks not shown)", absent_more + waiting_more)?;
                }
                Ok(())
            }
            Finding::Mismatch {
                seq,
                groups,
                differs,
                later,
            } => {
                writeln!(
                    f,
                    "ranks entered different calls at #{seq} ({} differ{}):",
                    differs.join(", "),
                    if differs.len() == 1 { "s" } else { "" }
                )?;
                for g in groups {
                    writeln!(
                        f,
                        "  {} entered {} (count {})",
                        human::ranks(&g.ranks),
                        g.call,
                        g.call.count
                    )?;
                }
                if *later > 0 {
                    writeln!(f, "  and {later} later calls differ too")?;
                }
                Ok(())
            }
            Finding::Failed { rank, call, error } => {
                writeln!(f, "rank {rank} failed call #{} ({call}): {error}", call.seq)
            }
            Finding::Slow {
                rank,
                pattern,
                calls_compared,
                calls_late,
                median_late_ns,
                worst_late_ns,
                worst_call,
                threshold_ns,
                median_duration_ns,
                others_median_duration_ns,
            } => {
                match pattern {
                    SlowPattern::Persistent => writeln!(
                        f,
                        "rank {rank} is persistently slow: entered {calls_late} of \
                         {calls_compared} calls late, median {} late, worst {} at call #{} ({})",
                        human::duration(*median_late_ns),
                        human::duration(*worst_late_ns),
                        worst_call.seq,
                        worst_call
                    )?,
                    SlowPattern::Episode => writeln!(
                        f,
                        "rank {rank} straggled: entered call #{} ({}) {} late; late at \
                         {calls_late} of {calls_compared} calls, otherwise on time (median {})",
                        worst_call.seq,
                        worst_call,
                        human::duration(*worst_late_ns),
                        human::duration(*median_late_ns)
                    )?,
                }
                write!(f, "  threshold {}", human::duration(*threshold_ns))?;
                if let Some((own, others)) = median_duration_ns.zip(*others_median_duration_ns) {
                    write!(
                        f,
                        "; its calls took {} (median) against {} on the other ranks",
                        human::duration(own),
                        human::duration(others)
                    )?;
                }
                writeln!(f)
            }
        }
    }
}

/// Items (ranks) grouped by `key`, groups in order of first appearance, at most
/// `max_groups` groups; returns them and how many items fitted none.
fn group_ranks<K: PartialEq, T>(
    items: impl Iterator<Item = (K, T)>,
    max_groups: usize,
) -> (Vec<(K, Vec<T>)>, usize) {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    let mut overflow = 0;
    for (key, rank) in items {
        let full = groups.len() >= max_groups;
        match groups.iter_mut().find(|g| g.0 == key) {
            Some(g) => g.1.push(rank),
            None if !full => groups.push((key, vec![rank])),
            None => overflow += 1,
        }
    }
    (groups, overflow)
}

/// The most evidence lines a never-arrived finding prints per list.
const MAX_EVIDENCE_LINES: usize = 8;

/// `30.2 s`, or `29.8 s to 30.2 s` when the waits differ by more than a tenth.
fn wait_span(waits: impl Iterator<Item = u64> + Clone) -> String {
    let lo = waits.clone().min().unwrap_or(0);
    let hi = waits.max().unwrap_or(0);
    if hi - lo > hi / 10 {
        format!(
            "{} to {}",
            human::duration(lo as f64),
            human::duration(hi as f64)
        )
    } else {
        human::duration(hi as f64)
    }
}
