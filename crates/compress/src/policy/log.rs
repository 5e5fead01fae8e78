//! Decisions, their reasons, the bounded decision log and the statistics.
//!
//! Each decision carries a machine-readable [`Reason`] (serialised with a `kind` tag) and a
//! human sentence, e.g. `step 120: off — breaker tripped: accuracy 0.81 vs reference 0.83
//! (-2.4%) for 3 consecutive steps; off for 100 steps, retry at step 220`.
//!
//! Limits: the log keeps the last `capacity` decisions ([`DEFAULT_LOG_CAPACITY`] unless the
//! caller chooses); older ones are dropped, but the count of decisions by
//! [`ReasonKind`] and the number dropped are kept for the whole run (they are a fixed-size
//! map and a counter, so they stay bounded too).

use super::signals::NonFinite;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// Decisions kept by default: at one decision per step, the last 1024 steps.
pub const DEFAULT_LOG_CAPACITY: usize = 1024;

/// The policy's answer for one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The step decided.
    pub step: u64,
    /// The ratio to compress at (the kept fraction, in (0, 1]), or `None`: no compression.
    pub ratio: Option<f64>,
    /// Why.
    pub reason: Reason,
    /// The same, as a sentence.
    pub message: String,
}

impl Decision {
    pub(crate) fn new(step: u64, ratio: Option<f64>, reason: Reason) -> Self {
        let state = match ratio {
            Some(r) => format!("compress at ratio {}", fmt_num(r)),
            None => "off".to_string(),
        };
        let message = format!("step {step}: {state} — {reason}");
        Self {
            step,
            ratio,
            reason,
            message,
        }
    }

    /// True when compression is on.
    pub fn is_on(&self) -> bool {
        self.ratio.is_some()
    }
}

/// Why the policy decided what it did. Variants are listed in precedence order (see
/// [`crate::policy`]); the first rule that says "off" gives the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// The breaker is open: compression off until `retry_at`.
    BreakerCooldown {
        /// First step of the cautious retry.
        retry_at: u64,
    },
    /// The breaker tripped at this step.
    BreakerTripped {
        /// What tripped it.
        cause: TripCause,
        /// Length of this cool-down in steps (after back-off).
        cooldown: u64,
        /// First step of the cautious retry.
        retry_at: u64,
    },
    /// The warm-up schedule is in an "off" phase.
    WarmupOff {
        /// The loss that selected the phase (the last one seen).
        loss: Option<f64>,
        /// The phase index (0 = initial).
        phase: usize,
    },
    /// No congestion figure, and the table says off when unknown.
    CongestionUnknown,
    /// The links are not congested.
    NotCongested {
        /// Measured utilisation.
        congestion: f64,
        /// Utilisation the links must pass to turn compression on.
        threshold: f64,
    },
    /// A prediction is missing, and the table says off when unknown.
    CostUnknown {
        /// The candidate ratio.
        ratio: f64,
    },
    /// Compression does not pay on these links.
    CostGate {
        /// The candidate ratio.
        ratio: f64,
        /// Predicted time without compression, s.
        uncompressed: f64,
        /// Predicted time with compression, s.
        compressed: f64,
        /// Required relative saving.
        margin: f64,
    },
    /// The rules want a switch, but the last switch was too recent.
    Held {
        /// What the rules wanted.
        wanted: ReasonKind,
        /// First step at which the switch may happen.
        until: u64,
    },
    /// Compressing in the cautious retry after a cool-down.
    Probation {
        /// First step after the retry period.
        until: u64,
    },
    /// Compressing: congested, and every rule passes.
    Compress {
        /// Measured utilisation (`None` when unknown and the table says on).
        congestion: Option<f64>,
        /// Relative saving predicted by the cost model, when known.
        saving: Option<f64>,
    },
}

/// What tripped the breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum TripCause {
    /// A NaN or infinity.
    NonFinite {
        /// Where it was seen.
        signal: NonFinite,
    },
    /// Too many consecutive steps worse than the uncompressed reference.
    Degradation {
        /// Which metric was compared.
        metric: Metric,
        /// This step's value.
        value: f64,
        /// The reference's value.
        reference: f64,
        /// Signed relative change `(value - reference) / |reference|`.
        change: f64,
        /// Consecutive bad steps counted.
        steps: u32,
    },
    /// The error-feedback residual kept growing.
    ResidualGrowth {
        /// This step's residual norm.
        norm: f64,
        /// Consecutive growing steps counted.
        steps: u32,
    },
}

/// A compared metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Accuracy (higher is better).
    Accuracy,
    /// Loss (lower is better).
    Loss,
}

/// The kind of a [`Reason`], without its data: the key of the per-reason counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    /// [`Reason::BreakerCooldown`].
    BreakerCooldown,
    /// [`Reason::BreakerTripped`].
    BreakerTripped,
    /// [`Reason::WarmupOff`].
    WarmupOff,
    /// [`Reason::CongestionUnknown`].
    CongestionUnknown,
    /// [`Reason::NotCongested`].
    NotCongested,
    /// [`Reason::CostUnknown`].
    CostUnknown,
    /// [`Reason::CostGate`].
    CostGate,
    /// [`Reason::Held`].
    Held,
    /// [`Reason::Probation`].
    Probation,
    /// [`Reason::Compress`].
    Compress,
}

impl Reason {
    /// The reason's kind.
    pub fn kind(&self) -> ReasonKind {
        match self {
            Reason::BreakerCooldown { .. } => ReasonKind::BreakerCooldown,
            Reason::BreakerTripped { .. } => ReasonKind::BreakerTripped,
            Reason::WarmupOff { .. } => ReasonKind::WarmupOff,
            Reason::CongestionUnknown => ReasonKind::CongestionUnknown,
            Reason::NotCongested { .. } => ReasonKind::NotCongested,
            Reason::CostUnknown { .. } => ReasonKind::CostUnknown,
            Reason::CostGate { .. } => ReasonKind::CostGate,
            Reason::Held { .. } => ReasonKind::Held,
            Reason::Probation { .. } => ReasonKind::Probation,
            Reason::Compress { .. } => ReasonKind::Compress,
        }
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReasonKind::BreakerCooldown => "breaker cool-down",
            ReasonKind::BreakerTripped => "breaker tripped",
            ReasonKind::WarmupOff => "warm-up phase off",
            ReasonKind::CongestionUnknown => "congestion unknown",
            ReasonKind::NotCongested => "links not congested",
            ReasonKind::CostUnknown => "cost prediction unknown",
            ReasonKind::CostGate => "compression does not pay",
            ReasonKind::Held => "held",
            ReasonKind::Probation => "cautious retry",
            ReasonKind::Compress => "congested",
        })
    }
}

/// Formats a number with up to 4 significant decimals, without trailing zeros.
fn fmt_num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn fmt_pct(change: f64) -> String {
    format!("{:+.1}%", change * 100.0)
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::BreakerCooldown { retry_at } => {
                write!(f, "breaker cool-down; retry at step {retry_at}")
            }
            Reason::BreakerTripped {
                cause,
                cooldown,
                retry_at,
            } => write!(
                f,
                "breaker tripped: {cause}; off for {cooldown} steps, retry at step {retry_at}"
            ),
            Reason::WarmupOff { loss, phase } => match loss {
                Some(l) => write!(f, "warm-up phase {phase} is off (loss {})", fmt_num(*l)),
                None => write!(f, "warm-up phase {phase} is off"),
            },
            Reason::CongestionUnknown => {
                write!(f, "no congestion figure (table: off when unknown)")
            }
            Reason::NotCongested {
                congestion,
                threshold,
            } => write!(
                f,
                "links not congested: utilisation {} (compression turns on above {})",
                fmt_num(*congestion),
                fmt_num(*threshold)
            ),
            Reason::CostUnknown { ratio } => write!(
                f,
                "no cost prediction for ratio {} (table: off when unknown)",
                fmt_num(*ratio)
            ),
            Reason::CostGate {
                ratio,
                uncompressed,
                compressed,
                margin,
            } => write!(
                f,
                "compression does not pay: predicted {} s at ratio {} vs {} s uncompressed \
                 (needs a {} saving)",
                fmt_num(*compressed),
                fmt_num(*ratio),
                fmt_num(*uncompressed),
                fmt_pct(*margin).trim_start_matches('+')
            ),
            Reason::Held { wanted, until } => write!(
                f,
                "held: the rules say \"{wanted}\" but the last switch was recent; \
                 may switch at step {until}"
            ),
            Reason::Probation { until } => {
                write!(f, "cautious retry after a breaker trip until step {until}")
            }
            Reason::Compress { congestion, saving } => {
                match congestion {
                    Some(c) => write!(f, "links congested: utilisation {}", fmt_num(*c))?,
                    None => write!(f, "congestion unknown (table: on when unknown)")?,
                }
                match saving {
                    Some(s) => write!(f, "; predicted saving {}", fmt_pct(*s)),
                    None => Ok(()),
                }
            }
        }
    }
}

impl fmt::Display for TripCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TripCause::NonFinite { signal } => write!(f, "{signal}"),
            TripCause::Degradation {
                metric,
                value,
                reference,
                change,
                steps,
            } => write!(
                f,
                "{} {} vs reference {} ({}) for {steps} consecutive step{}",
                match metric {
                    Metric::Accuracy => "accuracy",
                    Metric::Loss => "loss",
                },
                fmt_num(*value),
                fmt_num(*reference),
                fmt_pct(*change),
                if *steps == 1 { "" } else { "s" }
            ),
            TripCause::ResidualGrowth { norm, steps } => write!(
                f,
                "error-feedback residual norm grew for {steps} consecutive steps (now {})",
                fmt_num(*norm)
            ),
        }
    }
}

/// The bounded decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionLog {
    capacity: usize,
    entries: VecDeque<Decision>,
    dropped: u64,
    counts: BTreeMap<ReasonKind, u64>,
}

impl DecisionLog {
    /// An empty log keeping at most `capacity` (>= 1, checked by the policy) decisions.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: VecDeque::with_capacity(capacity.min(DEFAULT_LOG_CAPACITY)),
            dropped: 0,
            counts: BTreeMap::new(),
        }
    }

    pub(crate) fn push(&mut self, d: Decision) {
        *self.counts.entry(d.reason.kind()).or_insert(0) += 1;
        // `while`: a log deserialised with more entries than its capacity shrinks back.
        while self.entries.len() >= self.capacity.max(1) {
            self.entries.pop_front();
            self.dropped += 1;
        }
        self.entries.push_back(d);
    }

    /// The kept decisions, oldest first.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Decision> + DoubleEndedIterator {
        self.entries.iter()
    }

    /// The most recent decision.
    pub fn last(&self) -> Option<&Decision> {
        self.entries.back()
    }

    /// How many decisions the log keeps at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Decisions dropped from the front because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Count of all decisions ever made, by reason kind (kinds never seen are absent).
    pub fn counts(&self) -> &BTreeMap<ReasonKind, u64> {
        &self.counts
    }

    /// Count of all decisions ever made with this reason kind.
    pub fn count(&self, kind: ReasonKind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }
}

/// Running statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Decisions made.
    pub steps: u64,
    /// Steps with compression on.
    pub compressed: u64,
    /// Steps with compression off.
    pub off: u64,
    /// Breaker trips.
    pub trips: u64,
}
