//! The safety breaker: a three-state machine (closed, open, probation) that turns
//! compression off when training goes wrong.
//!
//! Trip causes, checked in this order every step while the breaker is closed or in
//! probation:
//! 1. a NaN/Inf in the gradient, loss, accuracy or residual norm: trips at once;
//! 2. degradation against the uncompressed reference for `bad_steps` consecutive steps
//!    (1 step in probation). A step is *bad* when the relative accuracy change
//!    `(acc - ref) / |ref|` is below `-max_accuracy_drop`, or, when either accuracy is
//!    missing, the relative loss change `(loss - ref) / |ref|` is above `max_loss_rise`
//!    (with `|ref| = 0` the plain difference is used). A step with a comparison that is
//!    not bad resets the count; a step without any comparison leaves it unchanged, so
//!    "consecutive" means consecutive among the steps that carry a comparison.
//!    Steps are compared whether or not compression was on at that step: a run that
//!    drifted under compression keeps the blame after the rules turned compression off;
//! 3. the error-feedback residual norm strictly greater than at the previous step that
//!    reported one, `residual_growth_steps` times in a row (same count in probation: the
//!    residual legitimately grows for a few steps after compression resumes).
//!
//! On a trip: compression is off for the cool-down `min(cooldown_steps * 2^(n-1),
//! max_cooldown_steps)` steps, where `n` counts the trips since the last completed
//! probation (exponential back-off, bounded); the retry starts at `trip step + cool-down`.
//! While open the signals are not checked (compression is off anyway), but the residual
//! norm is still recorded so growth is measured against fresh values.
//!
//! Probation: the `probation_steps` steps from the first step at or after the retry
//! step. The ratio is at least `probation_ratio` (the cautious retry: never stronger than
//! that, default 0.05 = the warm-up's mildest ratio), and a single bad step trips again.
//! A probation that ends without a trip closes the breaker and resets the back-off.

use super::log::{Metric, TripCause};
use super::signals::Signals;
use super::table::BreakerRule;
use serde::{Deserialize, Serialize};

/// Where the breaker's state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum BreakerPhase {
    /// Normal operation.
    Closed,
    /// Tripped: compression off until `retry_at`.
    Open {
        /// First step of the retry.
        retry_at: u64,
    },
    /// Cautious retry until `until` (exclusive).
    Probation {
        /// First step after the retry period.
        until: u64,
    },
}

/// The breaker's whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerState {
    /// The state machine's position.
    pub phase: BreakerPhase,
    /// Trips since the last completed probation (the back-off exponent).
    pub level: u32,
    /// Consecutive bad steps so far.
    pub bad_streak: u32,
    /// Consecutive steps of growing residual so far.
    pub growth_streak: u32,
    /// Last residual norm reported.
    pub last_residual: Option<f64>,
}

impl Default for BreakerState {
    fn default() -> Self {
        Self {
            phase: BreakerPhase::Closed,
            level: 0,
            bad_streak: 0,
            growth_streak: 0,
            last_residual: None,
        }
    }
}

/// The breaker's answer for one step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Open: compression off.
    Cooldown { retry_at: u64 },
    /// Tripped at this step.
    Tripped {
        cause: TripCause,
        cooldown: u64,
        retry_at: u64,
    },
    /// The rules decide; `probation` is the end of the retry period when in one.
    Pass { probation: Option<u64> },
}

/// One step's comparison against the reference.
struct Comparison {
    metric: Metric,
    value: f64,
    reference: f64,
    change: f64,
    bad: bool,
}

/// Signed relative change of `value` against `reference`.
fn relative_change(value: f64, reference: f64) -> f64 {
    let diff = value - reference;
    if reference == 0.0 {
        diff
    } else {
        diff / reference.abs()
    }
}

fn compare(rule: &BreakerRule, s: &Signals) -> Option<Comparison> {
    let (metric, value, reference) = match (s.accuracy, s.reference_accuracy) {
        (Some(a), Some(r)) => (Metric::Accuracy, a, r),
        _ => match (s.loss, s.reference_loss) {
            (Some(l), Some(r)) => (Metric::Loss, l, r),
            _ => return None,
        },
    };
    let change = relative_change(value, reference);
    let bad = match metric {
        Metric::Accuracy => change < -rule.max_accuracy_drop,
        Metric::Loss => change > rule.max_loss_rise,
    };
    Some(Comparison {
        metric,
        value,
        reference,
        change,
        bad,
    })
}

/// Cool-down after the `level`-th consecutive trip (level >= 1).
pub(crate) fn cooldown_for(rule: &BreakerRule, level: u32) -> u64 {
    let factor = 1u64
        .checked_shl(level.saturating_sub(1))
        .unwrap_or(u64::MAX);
    rule.cooldown_steps
        .saturating_mul(factor)
        .min(rule.max_cooldown_steps)
}

impl BreakerState {
    /// Advances the machine by one step (see the module documentation).
    pub(crate) fn step(&mut self, rule: &BreakerRule, s: &Signals) -> Verdict {
        let step = s.step;
        match self.phase {
            BreakerPhase::Open { retry_at } if step < retry_at => {
                self.record_residual(s);
                self.growth_streak = 0;
                return Verdict::Cooldown { retry_at };
            }
            BreakerPhase::Open { .. } => {
                self.phase = BreakerPhase::Probation {
                    until: step.saturating_add(rule.probation_steps),
                };
            }
            BreakerPhase::Probation { until } if step >= until => {
                self.phase = BreakerPhase::Closed;
                self.level = 0;
            }
            _ => {}
        }
        let probation = match self.phase {
            BreakerPhase::Probation { until } => Some(until),
            _ => None,
        };

        if let Some(signal) = s.non_finite() {
            return self.trip(rule, step, TripCause::NonFinite { signal });
        }

        let grown = self.record_residual(s);
        if let Some(c) = compare(rule, s) {
            if c.bad {
                self.bad_streak = self.bad_streak.saturating_add(1);
                let needed = if probation.is_some() {
                    1
                } else {
                    rule.bad_steps
                };
                if self.bad_streak >= needed {
                    let cause = TripCause::Degradation {
                        metric: c.metric,
                        value: c.value,
                        reference: c.reference,
                        change: c.change,
                        steps: self.bad_streak,
                    };
                    return self.trip(rule, step, cause);
                }
            } else {
                self.bad_streak = 0;
            }
        }
        if let Some(norm) = grown {
            if rule.residual_growth_steps > 0 && self.growth_streak >= rule.residual_growth_steps {
                let cause = TripCause::ResidualGrowth {
                    norm,
                    steps: self.growth_streak,
                };
                return self.trip(rule, step, cause);
            }
        }
        Verdict::Pass { probation }
    }

    /// Records a finite residual norm and updates the growth streak; returns the norm.
    fn record_residual(&mut self, s: &Signals) -> Option<f64> {
        let norm = s.residual_norm.filter(|r| r.is_finite())?;
        if let Some(prev) = self.last_residual {
            if norm > prev {
                self.growth_streak = self.growth_streak.saturating_add(1);
            } else {
                self.growth_streak = 0;
            }
        }
        self.last_residual = Some(norm);
        Some(norm)
    }

    fn trip(&mut self, rule: &BreakerRule, step: u64, cause: TripCause) -> Verdict {
        self.level = self.level.saturating_add(1);
        let cooldown = cooldown_for(rule, self.level);
        let retry_at = step.saturating_add(cooldown);
        self.phase = BreakerPhase::Open { retry_at };
        self.bad_streak = 0;
        self.growth_streak = 0;
        Verdict::Tripped {
            cause,
            cooldown,
            retry_at,
        }
    }
}
