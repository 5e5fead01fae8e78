//! The per-step signals the caller passes to the policy, their validation, and the
//! policy's error type.
//!
//! Timing convention: the signals given for step `s` are the latest observations available
//! before step `s`'s gradient exchange (loss and accuracy of the last evaluated step, the
//! current link utilisation, whether the gradient about to be exchanged holds a NaN/Inf,
//! the codec's current error-feedback residual norm); the decision applies to step `s`'s
//! exchange.
//!
//! A non-finite loss, accuracy or residual norm is not an input error: it is a divergence
//! signal and trips the breaker like a NaN in the gradient. Out-of-range values that can
//! only come from a caller bug (a utilisation of 1.7, a negative time) are errors.

use super::table::TableError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What the caller knows at one step. Build with struct-update syntax:
/// `Signals { step: 7, congestion: Some(0.8), ..Signals::default() }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Training step; strictly increasing from one decision to the next (gaps allowed).
    pub step: u64,
    /// Training loss, when measured.
    pub loss: Option<f64>,
    /// Accuracy (any scale where higher is better), when measured.
    pub accuracy: Option<f64>,
    /// Loss of the uncompressed reference at the same step, when known.
    pub reference_loss: Option<f64>,
    /// Accuracy of the uncompressed reference at the same step, when known.
    pub reference_accuracy: Option<f64>,
    /// Maximum utilisation (0..=1) of the links the plan uses, when measured.
    pub congestion: Option<f64>,
    /// The cost model's predicted step-communication time without compression, seconds.
    /// The time with compression is asked through the `compressed_time` callback of
    /// [`super::Policy::decide`], for the candidate ratio only.
    pub uncompressed_time: Option<f64>,
    /// True when a NaN or an infinity was seen in the gradient. It trips the breaker at
    /// once, so with dynamic loss scaling report only values that reach the exchange, not
    /// the overflow steps the scaler skips.
    pub gradient_non_finite: bool,
    /// Norm of the codec's error-feedback residual, when the codec keeps one.
    pub residual_norm: Option<f64>,
}

/// Why the policy could not be built or could not decide a step. A failed `decide` leaves
/// the policy's state, log and statistics unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolicyError {
    /// The rule table is invalid.
    #[error(transparent)]
    Table(#[from] TableError),
    /// Steps must increase strictly.
    #[error(
        "signal `step` = {step} is not after the last decided step {last}: \
         pass one Signals per step with increasing step numbers"
    )]
    StepNotIncreasing {
        /// The step passed.
        step: u64,
        /// The last step decided.
        last: u64,
    },
    /// A signal is outside its range.
    #[error("signal `{name}` = {value}: expected {expected}")]
    SignalOutOfRange {
        /// The field of [`Signals`].
        name: &'static str,
        /// The value passed.
        value: f64,
        /// What is accepted.
        expected: &'static str,
    },
    /// The `compressed_time` callback returned an impossible time.
    #[error(
        "compressed_time({ratio}) returned {value}: expected a finite time >= 0 seconds, \
         or None when the cost model cannot predict it"
    )]
    BadPrediction {
        /// The ratio asked for.
        ratio: f64,
        /// The value returned.
        value: f64,
    },
    /// The decision log needs room for at least one entry.
    #[error("log capacity {capacity}: expected at least 1 entry")]
    LogCapacity {
        /// The capacity asked for.
        capacity: usize,
    },
}

impl Signals {
    /// Checks the caller-bug ranges (see the module documentation); `last` is the last
    /// decided step.
    pub fn validate(&self, last: Option<u64>) -> Result<(), PolicyError> {
        if let Some(last) = last {
            if self.step <= last {
                return Err(PolicyError::StepNotIncreasing {
                    step: self.step,
                    last,
                });
            }
        }
        if let Some(c) = self.congestion {
            if !(0.0..=1.0).contains(&c) {
                return Err(out_of_range(
                    "congestion",
                    c,
                    "a link utilisation in [0, 1]",
                ));
            }
        }
        check_time("uncompressed_time", self.uncompressed_time)?;
        if let Some(r) = self.residual_norm {
            if r < 0.0 {
                return Err(out_of_range(
                    "residual_norm",
                    r,
                    "a norm >= 0 (NaN/Inf trips the breaker instead)",
                ));
            }
        }
        for (name, v) in [
            ("reference_loss", self.reference_loss),
            ("reference_accuracy", self.reference_accuracy),
        ] {
            if let Some(v) = v {
                if !v.is_finite() {
                    return Err(out_of_range(
                        name,
                        v,
                        "a finite reference value, or None when unknown",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The first divergence signal of this step, if any, in the order: gradient, loss,
    /// accuracy, residual norm.
    pub fn non_finite(&self) -> Option<NonFinite> {
        let bad = |v: Option<f64>| v.is_some_and(|v| !v.is_finite());
        if self.gradient_non_finite {
            Some(NonFinite::Gradient)
        } else if bad(self.loss) {
            Some(NonFinite::Loss)
        } else if bad(self.accuracy) {
            Some(NonFinite::Accuracy)
        } else if bad(self.residual_norm) {
            Some(NonFinite::ResidualNorm)
        } else {
            None
        }
    }
}

/// Which signal held a NaN or an infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// The gradient.
    Gradient,
    /// The loss.
    Loss,
    /// The accuracy.
    Accuracy,
    /// The error-feedback residual norm.
    ResidualNorm,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NonFinite::Gradient => "NaN/Inf in the gradient",
            NonFinite::Loss => "non-finite loss",
            NonFinite::Accuracy => "non-finite accuracy",
            NonFinite::ResidualNorm => "non-finite residual norm",
        })
    }
}

fn out_of_range(name: &'static str, value: f64, expected: &'static str) -> PolicyError {
    PolicyError::SignalOutOfRange {
        name,
        value,
        expected,
    }
}

fn check_time(name: &'static str, t: Option<f64>) -> Result<(), PolicyError> {
    match t {
        Some(t) if !(t.is_finite() && t >= 0.0) => Err(out_of_range(
            name,
            t,
            "a finite time >= 0 seconds, or None when unknown",
        )),
        _ => Ok(()),
    }
}

/// Checks a `compressed_time` callback answer.
pub(crate) fn check_prediction(ratio: f64, t: Option<f64>) -> Result<Option<f64>, PolicyError> {
    match t {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            Err(PolicyError::BadPrediction { ratio, value: v })
        }
        other => Ok(other),
    }
}
