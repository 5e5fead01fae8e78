//! The detectors of live monitoring: congested or stalled links ([`congestion`]),
//! straggling or stopped ranks ([`straggler`]), the hysteresis both share so an alert
//! neither flaps nor lingers ([`hysteresis`]), and the [`Alert`] events they emit, ready
//! to become a log line, a Prometheus sample or an Alertmanager payload ([`alert`]).
//!
//! Every input comes from the caller: link figures from a
//! [`LinkMatrix`](crate::matrix::LinkMatrix), in-flight transfers' start times, ranks'
//! entry times into collective calls, and the current time, all in nanoseconds of the
//! caller's clock. Thresholds are configured through serde structs whose `validate`
//! names the field out of range. Each module's doc gives its formulas and limits.

pub mod alert;
pub mod congestion;
pub mod hysteresis;
pub mod straggler;

use thiserror::Error;

use crate::matrix::{InvalidField, MatrixError};

pub use alert::{Alert, AlertKind, AlertState, Evidence, Metric, Subject};
pub use congestion::{CongestionConfig, CongestionDetector, InFlight};
pub use hysteresis::{Hysteresis, HysteresisConfig, Persist, Reading, Transition};
pub use straggler::{StragglerConfig, StragglerDetector};

/// What the detectors refuse.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum DetectError {
    /// A configuration field out of range.
    #[error("detector configuration: {0}")]
    Config(#[from] InvalidField),
    /// A matrix-side refusal (an in-flight transfer to a peer the matrix does not track).
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    /// A world of no ranks.
    #[error("world = 0: a straggler detector needs a world of at least 1 rank")]
    EmptyWorld,
    /// A rank index that is not in the world.
    #[error("{arg} = {rank} is not a rank of this world of {world}: give a rank from 0 to {max}", max = world.saturating_sub(1))]
    RankOutOfRange {
        /// The argument's name.
        arg: &'static str,
        /// The value given.
        rank: usize,
        /// The world size.
        world: usize,
    },
    /// A rank reported entering one call twice.
    #[error("rank {rank} entered call {seq} twice: report each rank's entry into a call once")]
    DuplicateEntry {
        /// The rank.
        rank: usize,
        /// The call's sequence number.
        seq: u64,
    },
}

/// One alert stream (one kind about one subject): its hysteresis and, while firing, its
/// alert with the latest figures.
#[derive(Clone, Debug)]
pub(crate) struct Stream {
    kind: AlertKind,
    subject: Subject,
    keep_firing_evidence: bool,
    hysteresis: Hysteresis,
    current: Option<Alert>,
}

impl Stream {
    /// A cleared stream. With `keep_firing_evidence`, the firing alert follows only `Bad`
    /// readings' evidence and a clear reports that (a stall's longest age rather than the
    /// age of whatever is in flight when it clears); without, both follow the latest.
    pub(crate) fn new(
        kind: AlertKind,
        subject: Subject,
        config: &HysteresisConfig,
        keep_firing_evidence: bool,
    ) -> Stream {
        Stream {
            kind,
            subject,
            keep_firing_evidence,
            hysteresis: Hysteresis::new(config),
            current: None,
        }
    }

    /// The alert firing now, if any.
    pub(crate) fn current(&self) -> Option<&Alert> {
        self.current.as_ref()
    }

    /// Feeds a reading taken at `now_ns` with its evidence; returns the event it caused.
    /// An alert's `since` is `onset_ns` when the caller knows when the condition began
    /// (a stopped rank: when the others were all in), else the first `Bad` reading.
    pub(crate) fn step(
        &mut self,
        reading: Reading,
        now_ns: u64,
        evidence: Vec<Evidence>,
        call: Option<u64>,
        onset_ns: Option<u64>,
    ) -> Option<Alert> {
        let (kind, subject) = (self.kind, self.subject);
        let alert = |state, since_ns, evidence| {
            Alert::new(kind, subject, state, since_ns, now_ns, call, evidence)
        };
        let raised_since = self.current.as_ref().map(|a| a.since_ns);
        match self.hysteresis.update(reading, now_ns) {
            Some(Transition::Raised { since_ns }) => {
                let raised = alert(AlertState::Firing, onset_ns.unwrap_or(since_ns), evidence);
                self.current = Some(raised.clone());
                Some(raised)
            }
            Some(Transition::Cleared { since_ns, .. }) => {
                let since_ns = raised_since.unwrap_or(since_ns);
                let evidence = match self.current.take() {
                    Some(last) if self.keep_firing_evidence => last.evidence,
                    _ => evidence,
                };
                Some(alert(AlertState::Resolved, since_ns, evidence))
            }
            None => {
                let refresh =
                    !evidence.is_empty() && (!self.keep_firing_evidence || reading == Reading::Bad);
                if let (Some(since_ns), true) = (raised_since, refresh) {
                    self.current = Some(alert(AlertState::Firing, since_ns, evidence));
                }
                None
            }
        }
    }
}
