//! The events the detectors emit, and their renderings: a human sentence, a log line,
//! Prometheus exposition lines, and Alertmanager labels, annotations and payload.
//!
//! An [`Alert`] carries what fired (kind, subject), its state (firing or resolved), since
//! when (`since_ns`, the condition's onset) and as of when (`at_ns`), and its evidence:
//! each criterion's observed figure against its threshold, with the baseline where there
//! is one. Figures are in SI units (bytes/s, seconds, fractions); sentences scale them
//! (MB/s, ms, %). Identity for Alertmanager is the label set (`alertname` + subject
//! labels); the state is not a label (Alertmanager reads it from `endsAt`).
//!
//! Times are the caller's nanoseconds; only [`Alert::alertmanager_json`] needs wall-clock
//! time, and takes the offset from the caller's clock to the Unix epoch.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::matrix::Dest;

/// What an alert is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A link achieving too little, carrying too much, or too slow to answer.
    Congestion,
    /// A rank persistently late into collective calls.
    Straggler,
    /// A transfer in flight too long, or a rank that stopped entering calls.
    Stall,
}

impl AlertKind {
    /// The snake-case name (`congestion`, `straggler`, `stall`).
    pub fn name(&self) -> &'static str {
        match self {
            AlertKind::Congestion => "congestion",
            AlertKind::Straggler => "straggler",
            AlertKind::Stall => "stall",
        }
    }

    /// The Alertmanager `alertname`.
    pub fn alertname(&self) -> &'static str {
        match self {
            AlertKind::Congestion => "TopocclCongestion",
            AlertKind::Straggler => "TopocclStraggler",
            AlertKind::Stall => "TopocclStall",
        }
    }

    /// `critical` for stalls (work is blocked), `warning` otherwise.
    pub fn severity(&self) -> &'static str {
        match self {
            AlertKind::Stall => "critical",
            _ => "warning",
        }
    }
}

/// What an alert names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// The link from rank `src` to `dest`.
    Link {
        /// The rank whose view it is.
        src: usize,
        /// Where the link leads.
        dest: Dest,
    },
    /// One rank.
    Rank {
        /// The rank.
        rank: usize,
    },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Link { src, dest } => write!(f, "link {src}→{dest}"),
            Subject::Rank { rank } => write!(f, "rank {rank}"),
        }
    }
}

/// Whether an alert is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// Raised and not yet cleared.
    Firing,
    /// Cleared.
    Resolved,
}

/// The figure a piece of evidence is about; each has a unit and a bad direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Achieved throughput, bytes/s (bad when low); baseline: the probe's throughput.
    ThroughputBps,
    /// Last window's rate over capacity (bad when high); baseline: the capacity, bytes/s.
    Utilisation,
    /// Smoothed latency, seconds (bad when high); baseline: the probe's latency.
    LatencyS,
    /// Age of the most overdue transfer in flight, seconds (bad when high); threshold: its
    /// expected time plus the stall allowance; baseline: its expected time.
    InFlightS,
    /// Fraction of recent calls a rank was late into (bad when high); baseline: the
    /// number of calls judged.
    LateFraction,
    /// A rank's mean lateness behind the median over its late calls, seconds (bad when
    /// high); threshold: the smallest lateness that can count as late.
    LatenessS,
    /// How long a rank has not entered a call all others entered, seconds (bad when high).
    StoppedS,
}

impl Metric {
    /// The snake-case name used in labels and metric names.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::ThroughputBps => "throughput_bps",
            Metric::Utilisation => "utilisation",
            Metric::LatencyS => "latency_seconds",
            Metric::InFlightS => "in_flight_seconds",
            Metric::LateFraction => "late_fraction",
            Metric::LatenessS => "lateness_seconds",
            Metric::StoppedS => "stopped_seconds",
        }
    }

    /// Whether a high value is the bad side.
    pub fn high_is_bad(&self) -> bool {
        !matches!(self, Metric::ThroughputBps)
    }

    /// Whether the figure is itself a duration of the condition.
    fn is_duration(&self) -> bool {
        matches!(self, Metric::InFlightS | Metric::StoppedS)
    }
}

/// One criterion's figures.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What was measured.
    pub metric: Metric,
    /// The figure observed.
    pub observed: f64,
    /// The figure beyond which the criterion trips (in the metric's unit).
    pub threshold: f64,
    /// The reference figure (see [`Metric`]), where there is one.
    pub baseline: Option<f64>,
}

impl Evidence {
    /// Whether the observed figure is beyond the threshold.
    pub fn holds(&self) -> bool {
        if self.metric.high_is_bad() {
            self.observed > self.threshold
        } else {
            self.observed < self.threshold
        }
    }

    fn comparator(&self) -> &'static str {
        match (self.metric.high_is_bad(), self.holds()) {
            (true, true) => ">",
            (true, false) => "≤",
            (false, true) => "<",
            (false, false) => "≥",
        }
    }

    /// The evidence as a clause of a sentence.
    pub fn phrase(&self, state: AlertState, call: Option<u64>) -> String {
        let cmp = self.comparator();
        let (obs, thr) = (self.observed, self.threshold);
        let call = call.map_or_else(|| "its call".to_string(), |seq| format!("call {seq}"));
        match (self.metric, self.baseline) {
            (Metric::ThroughputBps, Some(base)) => {
                let (ratio, limit) = distinct(obs / base, thr / base);
                format!(
                    "{} achieved vs {} baseline ({ratio}× {cmp} {limit}×)",
                    rate(obs),
                    rate(base)
                )
            }
            (Metric::ThroughputBps, None) => {
                format!("{} achieved ({cmp} {})", rate(obs), rate(thr))
            }
            (Metric::Utilisation, cap) => format!(
                "utilisation {} {cmp} {}{}",
                percent(obs),
                percent(thr),
                cap.map_or_else(String::new, |c| format!(" of {} capacity", rate(c)))
            ),
            (Metric::LatencyS, base) => format!(
                "latency {} {cmp} {}{}",
                duration(obs),
                duration(thr),
                base.map_or_else(String::new, |b| format!(" (baseline {})", duration(b)))
            ),
            (Metric::InFlightS, expected) => format!(
                "a transfer in flight for {}{} ({cmp} {})",
                duration(obs),
                expected.map_or_else(String::new, |e| format!(", {} expected", duration(e))),
                duration(thr)
            ),
            (Metric::LateFraction, Some(calls)) => format!(
                "late in {} of the last {} calls ({} {cmp} {})",
                (obs * calls).round(),
                calls,
                percent(obs),
                percent(thr)
            ),
            (Metric::LateFraction, None) => {
                format!(
                    "late in {} of the last calls ({cmp} {})",
                    percent(obs),
                    percent(thr)
                )
            }
            (Metric::LatenessS, _) => format!(
                "{} behind the median when late (late counts from {})",
                duration(obs),
                duration(thr)
            ),
            (Metric::StoppedS, _) => match state {
                AlertState::Firing => format!(
                    "has not entered {call} for {} while all others did ({cmp} {})",
                    duration(obs),
                    duration(thr)
                ),
                AlertState::Resolved => format!(
                    "entered {call} {} after all others ({cmp} {})",
                    duration(obs),
                    duration(thr)
                ),
            },
        }
    }
}

/// An alert event; see the module doc.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// What it names.
    pub subject: Subject,
    /// Firing or resolved.
    pub state: AlertState,
    /// When the condition began, ns.
    pub since_ns: u64,
    /// When this event was emitted (for a resolved alert: when it cleared), ns.
    pub at_ns: u64,
    /// The collective call it concerns (stopped ranks), when there is one.
    pub call: Option<u64>,
    /// The criteria's figures, the tripping ones first.
    pub evidence: Vec<Evidence>,
    /// The human sentence.
    pub summary: String,
}

impl Alert {
    /// An alert with its sentence written from the other fields.
    pub fn new(
        kind: AlertKind,
        subject: Subject,
        state: AlertState,
        since_ns: u64,
        at_ns: u64,
        call: Option<u64>,
        evidence: Vec<Evidence>,
    ) -> Alert {
        let mut alert = Alert {
            kind,
            subject,
            state,
            since_ns,
            at_ns,
            call,
            evidence,
            summary: String::new(),
        };
        alert.summary = alert.sentence();
        alert
    }

    /// How long the condition has lasted (or lasted), seconds.
    pub fn duration_s(&self) -> f64 {
        self.at_ns.saturating_sub(self.since_ns) as f64 / 1e9
    }

    fn verb(&self) -> &'static str {
        let rank = matches!(self.subject, Subject::Rank { .. });
        match (self.kind, self.state, rank) {
            (AlertKind::Congestion, AlertState::Firing, _) => "congested",
            (AlertKind::Congestion, AlertState::Resolved, _) => "no longer congested",
            (AlertKind::Straggler, AlertState::Firing, _) => "straggling",
            (AlertKind::Straggler, AlertState::Resolved, _) => "no longer straggling",
            (AlertKind::Stall, AlertState::Firing, true) => "stopped",
            (AlertKind::Stall, AlertState::Resolved, true) => "resumed",
            (AlertKind::Stall, AlertState::Firing, false) => "stalled",
            (AlertKind::Stall, AlertState::Resolved, false) => "no longer stalled",
        }
    }

    /// The sentence: a firing alert names the criteria that hold (all when none does), a
    /// resolved one every criterion's figures now.
    fn sentence(&self) -> String {
        let firing = self.state == AlertState::Firing;
        let any_holds = self.evidence.iter().any(Evidence::holds);
        let clauses: Vec<String> = self
            .evidence
            .iter()
            .filter(|e| !(firing && any_holds) || e.holds())
            .map(|e| e.phrase(self.state, self.call))
            .collect();
        let clauses = clauses.join("; ");
        let lasted = duration(self.duration_s());
        let self_timed = self
            .evidence
            .first()
            .is_some_and(|e| e.metric.is_duration());
        match self.state {
            AlertState::Firing if self_timed => {
                format!("{} {}: {clauses}", self.subject, self.verb())
            }
            AlertState::Firing => {
                format!("{} {}: {clauses} for {lasted}", self.subject, self.verb())
            }
            AlertState::Resolved => {
                format!("{} {} after {lasted}: {clauses}", self.subject, self.verb())
            }
        }
    }

    /// `[FIRING stall] rank 2 stopped: …` — one line for a log.
    pub fn log_line(&self) -> String {
        let state = match self.state {
            AlertState::Firing => "FIRING",
            AlertState::Resolved => "RESOLVED",
        };
        format!("[{state} {}] {}", self.kind.name(), self.summary)
    }

    /// The identifying labels: `alertname`, `kind`, `severity`, `subject`, and `src` and
    /// `dst` for a link or `rank` for a rank.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".into(), self.kind.alertname().into());
        labels.insert("kind".into(), self.kind.name().into());
        labels.insert("severity".into(), self.kind.severity().into());
        labels.insert("subject".into(), self.subject.to_string());
        match self.subject {
            Subject::Link { src, dest } => {
                labels.insert("src".into(), src.to_string());
                labels.insert("dst".into(), dest.to_string());
            }
            Subject::Rank { rank } => {
                labels.insert("rank".into(), rank.to_string());
            }
        }
        labels
    }

    /// The descriptive annotations: `summary` (the sentence), `state`, `since_ns`,
    /// `at_ns`, `duration_seconds`, `call` where there is one, and for each piece of
    /// evidence `<metric>`, `<metric>_threshold` and `<metric>_baseline`.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut notes = BTreeMap::new();
        notes.insert("summary".into(), self.summary.clone());
        notes.insert("state".into(), self.state_name().into());
        notes.insert("since_ns".into(), self.since_ns.to_string());
        notes.insert("at_ns".into(), self.at_ns.to_string());
        notes.insert("duration_seconds".into(), self.duration_s().to_string());
        if let Some(call) = self.call {
            notes.insert("call".into(), call.to_string());
        }
        for e in &self.evidence {
            let name = e.metric.name();
            notes.insert(name.into(), e.observed.to_string());
            notes.insert(format!("{name}_threshold"), e.threshold.to_string());
            if let Some(base) = e.baseline {
                notes.insert(format!("{name}_baseline"), base.to_string());
            }
        }
        notes
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }

    /// Prometheus exposition lines: `topoccl_alert{labels} 1` (0 when resolved), then
    /// `topoccl_alert_evidence{labels,metric,figure} value` for each figure
    /// (`figure` = `observed`, `threshold`, `baseline`).
    pub fn prometheus_lines(&self) -> Vec<String> {
        let labels = self.labels();
        let firing = matches!(self.state, AlertState::Firing);
        let mut lines = vec![format!(
            "topoccl_alert{{{}}} {}",
            prometheus_labels(&labels, &[]),
            u8::from(firing)
        )];
        for e in &self.evidence {
            let figures = [
                ("observed", Some(e.observed)),
                ("threshold", Some(e.threshold)),
                ("baseline", e.baseline),
            ];
            for (figure, value) in figures {
                if let Some(value) = value {
                    let extra = [("metric", e.metric.name()), ("figure", figure)];
                    lines.push(format!(
                        "topoccl_alert_evidence{{{}}} {}",
                        prometheus_labels(&labels, &extra),
                        prometheus_value(value)
                    ));
                }
            }
        }
        lines
    }

    /// One alert of Alertmanager's `POST /api/v2/alerts` body (send it inside an array):
    /// `labels`, `annotations`, `startsAt` and, once resolved, `endsAt`, in RFC 3339.
    /// `unix_offset_ns` is added to this alert's times to make them Unix nanoseconds
    /// (0 when the caller's clock already is Unix time).
    pub fn alertmanager_json(&self, unix_offset_ns: i64) -> serde_json::Value {
        let unix = |ns: u64| i128::from(ns) + i128::from(unix_offset_ns);
        let mut payload = serde_json::json!({
            "labels": self.labels(),
            "annotations": self.annotations(),
            "startsAt": rfc3339(unix(self.since_ns)),
        });
        if self.state == AlertState::Resolved {
            payload["endsAt"] = serde_json::Value::String(rfc3339(unix(self.at_ns)));
        }
        payload
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.log_line())
    }
}

fn prometheus_labels(labels: &BTreeMap<String, String>, extra: &[(&str, &str)]) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra.iter().copied())
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn prometheus_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        value.to_string()
    }
}

/// Two significant-ish digits: no decimals from 10 up, one below.
fn scaled(value: f64, unit: &str) -> String {
    if value.abs() >= 10.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// Bytes per second in decimal units (`41 MB/s`).
pub(crate) fn rate(bps: f64) -> String {
    let units = [(1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")];
    match units.iter().find(|(scale, _)| bps.abs() >= *scale) {
        Some((scale, unit)) => scaled(bps / scale, unit),
        None => scaled(bps, "B/s"),
    }
}

/// Seconds as `2.1 s`, `140 ms` or `35 µs`.
pub(crate) fn duration(seconds: f64) -> String {
    if seconds.abs() >= 1.0 {
        format!("{seconds:.1} s")
    } else if seconds.abs() >= 1e-3 {
        scaled(seconds * 1e3, "ms")
    } else {
        scaled(seconds * 1e6, "µs")
    }
}

/// A fraction as a whole percentage (`82%`).
fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// Up to `decimals` decimals, trailing zeros dropped (`0.35`, `0.5`, `1`).
fn number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// Two figures with two decimals, or as many more (up to six) as it takes for them not
/// to read the same when they differ (`0.498` vs `0.5`, not `0.5` vs `0.5`).
fn distinct(value: f64, limit: f64) -> (String, String) {
    let mut decimals = 2;
    loop {
        let (a, b) = (number(value, decimals), number(limit, decimals));
        if a != b || value == limit || decimals >= 6 {
            return (a, b);
        }
        decimals += 1;
    }
}

/// RFC 3339 UTC with milliseconds, clamped to years 1970 ..= 9999.
fn rfc3339(unix_ns: i128) -> String {
    const MAX_NS: i128 = 253_402_300_799_999_999_999; // 9999-12-31T23:59:59.999…
    let ns = unix_ns.clamp(0, MAX_NS);
    let secs = ns / 1_000_000_000;
    let millis = (ns % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123_000_000), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339(1_798_761_599_000_000_000),
            "2026-12-31T23:59:59.000Z"
        );
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn units_scale() {
        assert_eq!(rate(41e6), "41 MB/s");
        assert_eq!(rate(118.4e6), "118 MB/s");
        assert_eq!(rate(2.5e9), "2.5 GB/s");
        assert_eq!(rate(12.0), "12 B/s");
        assert_eq!(duration(2.1), "2.1 s");
        assert_eq!(duration(0.14), "140 ms");
        assert_eq!(duration(35e-6), "35 µs");
        assert_eq!(number(0.35, 2), "0.35");
        assert_eq!(number(0.5, 2), "0.5");
        assert_eq!(number(1.0, 2), "1");
        assert_eq!(number(120.0, 0), "120");
        assert_eq!(distinct(0.35, 0.5), ("0.35".into(), "0.5".into()));
        assert_eq!(distinct(0.4981, 0.5), ("0.498".into(), "0.5".into()));
        assert_eq!(distinct(0.5, 0.5), ("0.5".into(), "0.5".into()));
        assert_eq!(percent(0.823), "82%");
    }
}
