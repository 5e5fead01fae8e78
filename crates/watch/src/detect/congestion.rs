//! The congestion detector: judges each link of a [`LinkMatrix`] on every evaluation and
//! raises a `congestion` alert on a link that is slow, full or slow to answer, and a
//! `stall` alert on a link with a transfer in flight too long.
//!
//! # Criteria (each skipped when its figures are unknown)
//!
//! * throughput: bad when `achieved < throughput_ratio × baseline` (default 0.5×), good
//!   from `throughput_clear_ratio × baseline` (0.6×);
//! * utilisation (`last window's rate / capacity`): bad above `utilisation_max` (0.70),
//!   good at or below `utilisation_clear` (0.60);
//! * latency (smoothed, small transfers): bad above `latency_max_s` (100 ms), good at or
//!   below `latency_clear_s` (80 ms).
//!
//! The link's reading is `Bad` if any criterion is, `Good` if every known one is, else
//! `Marginal`; the [`Hysteresis`](super::Hysteresis) of `congestion` (default: raise after 0.5 s, clear after
//! 2 s) turns readings into alerts. Throughput and latency figures older than
//! `stale_after_s` are not judged, so a link the runtime stopped using after an alert keeps
//! its alert until fresh evidence (traffic or a re-probe) clears it, rather than resolving
//! for lack of traffic and drawing the traffic back.
//!
//! Stall: the caller lists its transfers in flight ([`InFlight`]). A transfer of `b`
//! bytes is expected to take `L + b/B` on its link's baseline (0 without one); one in
//! flight for longer than that plus `stall_after_s` (100 ms) is *overdue*. A link with an
//! overdue transfer reads `Bad`, else `Good`, through the `stall` hysteresis (raise at
//! once, clear after 0.5 s); the evidence is the most overdue transfer's age against its
//! expected time. A resolved stall reports the figures of its last `Bad` reading. (Age
//! alone would call every large transfer a stall.)
//!
//! Memory: one state per link of the matrix (bounded by the matrix's caps), one scratch
//! slot per link; an evaluation is O(links + in-flight transfers).

use serde::{Deserialize, Serialize};

use super::alert::{Alert, AlertKind, Evidence, Metric, Subject};
use super::hysteresis::{HysteresisConfig, Persist, Reading};
use super::{DetectError, Stream};
use crate::matrix::{
    check_positive, check_range, seconds_to_ns, Dest, InvalidField, LinkMatrix, LinkStats,
    MatrixError,
};

/// Thresholds of the congestion detector; see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CongestionConfig {
    /// Bad below this fraction of the baseline throughput (0 < k ≤ 1; default 0.5).
    pub throughput_ratio: f64,
    /// Good from this fraction (k ≤ · ≤ 10; default 0.6).
    pub throughput_clear_ratio: f64,
    /// Bad above this utilisation (0 < · ≤ 10; default 0.70).
    pub utilisation_max: f64,
    /// Good at or below this utilisation (0 ≤ · ≤ `utilisation_max`; default 0.60).
    pub utilisation_clear: f64,
    /// Bad above this latency, seconds (0 < · ≤ 3600; default 0.1).
    pub latency_max_s: f64,
    /// Good at or below this latency, seconds (0 ≤ · ≤ `latency_max_s`; default 0.08).
    pub latency_clear_s: f64,
    /// A transfer in flight longer than this stalls its link, seconds (default 0.1).
    pub stall_after_s: f64,
    /// Throughput and latency figures older than this are not judged, seconds
    /// (default 5).
    pub stale_after_s: f64,
    /// Persistence of congestion alerts (default: raise after 0.5 s, clear after 2 s).
    pub congestion: HysteresisConfig,
    /// Persistence of stall alerts (default: raise on 1 sample, clear after 0.5 s).
    pub stall: HysteresisConfig,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        CongestionConfig {
            throughput_ratio: 0.5,
            throughput_clear_ratio: 0.6,
            utilisation_max: 0.70,
            utilisation_clear: 0.60,
            latency_max_s: 0.100,
            latency_clear_s: 0.080,
            stall_after_s: 0.100,
            stale_after_s: 5.0,
            congestion: HysteresisConfig {
                raise_after: Persist::Seconds(0.5),
                clear_after: Persist::Seconds(2.0),
            },
            stall: HysteresisConfig {
                raise_after: Persist::Samples(1),
                clear_after: Persist::Seconds(0.5),
            },
        }
    }
}

impl CongestionConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), InvalidField> {
        check_positive("congestion.throughput_ratio", self.throughput_ratio, 1.0)?;
        check_range(
            "congestion.throughput_clear_ratio",
            self.throughput_clear_ratio,
            self.throughput_ratio,
            10.0,
        )?;
        check_positive("congestion.utilisation_max", self.utilisation_max, 10.0)?;
        check_range(
            "congestion.utilisation_clear",
            self.utilisation_clear,
            0.0,
            self.utilisation_max,
        )?;
        check_positive("congestion.latency_max_s", self.latency_max_s, 3600.0)?;
        check_range(
            "congestion.latency_clear_s",
            self.latency_clear_s,
            0.0,
            self.latency_max_s,
        )?;
        check_positive("congestion.stall_after_s", self.stall_after_s, 3600.0)?;
        check_positive("congestion.stale_after_s", self.stale_after_s, 86_400.0)?;
        self.congestion.validate("congestion.congestion")?;
        self.stall.validate("congestion.stall")
    }
}

/// A transfer the caller has in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The peer it goes to or comes from.
    pub peer: usize,
    /// Its size, bytes.
    pub bytes: u64,
    /// When it started, ns.
    pub started_ns: u64,
}

/// The most overdue transfer of a link: its age and expected time, seconds.
#[derive(Clone, Copy, Debug)]
struct Overdue {
    age_s: f64,
    expected_s: f64,
}

/// Per-link state.
#[derive(Clone, Debug)]
struct LinkState {
    dest: Dest,
    congestion: Stream,
    stall: Stream,
}

/// Judges a [`LinkMatrix`]'s links; see the module doc.
#[derive(Clone, Debug)]
pub struct CongestionDetector {
    config: CongestionConfig,
    stale_ns: u64,
    links: Vec<LinkState>,
    worst: Vec<Option<Overdue>>,
}

impl CongestionDetector {
    /// A detector with `config`, validated.
    pub fn new(config: CongestionConfig) -> Result<CongestionDetector, DetectError> {
        config.validate()?;
        Ok(CongestionDetector {
            stale_ns: seconds_to_ns(config.stale_after_s),
            config,
            links: Vec::new(),
            worst: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CongestionConfig {
        &self.config
    }

    /// Judges every link of `matrix` as of `now_ns`, with the caller's transfers in
    /// flight; returns the alerts raised or resolved by this evaluation.
    pub fn evaluate(
        &mut self,
        matrix: &LinkMatrix,
        in_flight: &[InFlight],
        now_ns: u64,
    ) -> Result<Vec<Alert>, DetectError> {
        self.worst.clear();
        self.worst.resize(matrix.len(), None);
        for transfer in in_flight {
            let index = matrix
                .link_index(transfer.peer)
                .ok_or(MatrixError::UnknownPeer {
                    peer: transfer.peer,
                })?;
            let expected_s = matrix.baseline_at(index).map_or(0.0, |base| {
                base.latency_s + transfer.bytes as f64 / base.throughput_bps
            });
            let age_s = now_ns.saturating_sub(transfer.started_ns) as f64 / 1e9;
            let worst = &mut self.worst[index];
            if worst.is_none_or(|w| age_s - expected_s > w.age_s - w.expected_s) {
                *worst = Some(Overdue { age_s, expected_s });
            }
        }
        let src = matrix.rank();
        let mut events = Vec::new();
        for (index, (dest, stats)) in matrix.links(now_ns).enumerate() {
            if self.links.get(index).is_none_or(|state| state.dest != dest) {
                let subject = Subject::Link { src, dest };
                let fresh = LinkState {
                    dest,
                    congestion: Stream::new(
                        AlertKind::Congestion,
                        subject,
                        &self.config.congestion,
                        false,
                    ),
                    stall: Stream::new(AlertKind::Stall, subject, &self.config.stall, true),
                };
                self.links.truncate(index);
                self.links.push(fresh);
            }
            let (reading, evidence) = self.congestion_reading(&stats, now_ns);
            let state = &mut self.links[index];
            events.extend(state.congestion.step(reading, now_ns, evidence, None, None));
            let (reading, evidence) = match self.worst[index] {
                None => (Reading::Good, Vec::new()),
                Some(Overdue { age_s, expected_s }) => {
                    let limit = expected_s + self.config.stall_after_s;
                    let evidence = Evidence {
                        metric: Metric::InFlightS,
                        observed: age_s,
                        threshold: limit,
                        baseline: Some(expected_s),
                    };
                    (Reading::above(age_s, limit, limit), vec![evidence])
                }
            };
            events.extend(state.stall.step(reading, now_ns, evidence, None, None));
        }
        Ok(events)
    }

    /// The link's congestion reading and its evidence, tripping criteria first.
    fn congestion_reading(&self, stats: &LinkStats, now_ns: u64) -> (Reading, Vec<Evidence>) {
        let c = &self.config;
        let fresh = |t: Option<u64>| t.is_some_and(|t| now_ns.saturating_sub(t) <= self.stale_ns);
        let mut judged: Vec<(Reading, Evidence)> = Vec::with_capacity(3);
        if let (Some(achieved), Some(base), true) = (
            stats.throughput_bps,
            stats.baseline,
            fresh(stats.last_throughput_ns),
        ) {
            let ratio = achieved / base.throughput_bps;
            judged.push((
                Reading::below(ratio, c.throughput_ratio, c.throughput_clear_ratio),
                Evidence {
                    metric: Metric::ThroughputBps,
                    observed: achieved,
                    threshold: c.throughput_ratio * base.throughput_bps,
                    baseline: Some(base.throughput_bps),
                },
            ));
        }
        if let Some(utilisation) = stats.utilisation() {
            judged.push((
                Reading::above(utilisation, c.utilisation_max, c.utilisation_clear),
                Evidence {
                    metric: Metric::Utilisation,
                    observed: utilisation,
                    threshold: c.utilisation_max,
                    baseline: stats.capacity_bps,
                },
            ));
        }
        if let (Some(latency), true) = (stats.latency_s, fresh(stats.last_latency_ns)) {
            judged.push((
                Reading::above(latency, c.latency_max_s, c.latency_clear_s),
                Evidence {
                    metric: Metric::LatencyS,
                    observed: latency,
                    threshold: c.latency_max_s,
                    baseline: stats.baseline.map(|b| b.latency_s),
                },
            ));
        }
        let reading = Reading::any_bad(judged.iter().map(|(r, _)| *r));
        judged.sort_by_key(|(r, _)| *r != Reading::Bad);
        (reading, judged.into_iter().map(|(_, e)| e).collect())
    }

    /// The alerts firing now, with the figures of the last evaluation.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> + '_ {
        self.links
            .iter()
            .flat_map(|state| [state.congestion.current(), state.stall.current()])
            .flatten()
    }
}
