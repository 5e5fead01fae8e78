//! The adaptive compression policy: decides, step by step, whether to compress gradients
//! and at what ratio, with a safety breaker. Codec-agnostic: a decision is an
//! `Option<f64>` ratio (the kept fraction in (0, 1]; `None` = off) plus a reason; a codec
//! without a ratio (int8, ...) only looks at on/off.
//!
//! Pure and deterministic: [`step`] computes the next [`State`] and the [`Decision`] from
//! the rule [`Table`], the current state and the step's [`Signals`] (and the caller's cost
//! predictions); [`Policy`] wraps it with the decision log and statistics. No clock, no
//! randomness, no I/O; the same signal trace gives the same decisions and log.
//!
//! # Use
//!
//! ```
//! use topoccl_compress::policy::{Policy, Signals, Table};
//!
//! let table = Table::from_toml("[congestion]\nthreshold = 0.8\n")?;
//! let mut policy = Policy::new(table)?;
//! let signals = Signals {
//!     step: 1,
//!     loss: Some(2.3),
//!     congestion: Some(0.93),
//!     uncompressed_time: Some(0.120),
//!     ..Signals::default()
//! };
//! // The cost model's prediction at the candidate ratio: here, linear in the ratio.
//! let decision = policy.decide(&signals, |ratio| Some(0.020 + 0.1 * ratio))?;
//! assert_eq!(decision.ratio, Some(0.05)); // warm-up: 5% while the loss is >= 0.1
//! assert_eq!(
//!     decision.message,
//!     "step 1: compress at ratio 0.05 — links congested: utilisation 0.93; predicted saving +79.2%"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rule order (precedence)
//!
//! For each step, the first rule that says "off" gives the decision and its [`Reason`]:
//!
//! 1. **Breaker open** (cool-down after a trip): off until the retry step. Signals are not
//!    checked during the cool-down, so a NaN then does not extend it.
//! 2. **Breaker trip**, checked in order: NaN/Inf (in the gradient, loss, accuracy or
//!    residual norm) at once; accuracy (else loss) degradation against the uncompressed
//!    reference for `breaker.bad_steps` consecutive steps; a residual norm growing for
//!    `breaker.residual_growth_steps` steps. A trip turns compression off at this very
//!    step and starts the cool-down (see [`breaker`] for the back-off and the retry).
//! 3. **Warm-up** phase "off" (seed: loss below 0.01).
//! 4. **Congestion**: off unless the links are congested (seed: utilisation above 0.70);
//!    an unknown utilisation follows `congestion.if_unknown`.
//! 5. **Cost gate**: off unless the predicted step-communication time with compression at
//!    the candidate ratio is at most `(1 - cost_gate.margin)` times the uncompressed one
//!    (and strictly smaller). It comes last because it needs the candidate ratio from
//!    rules 3–4, and so the cost model is asked only when everything else passes; the
//!    `compressed_time` callback is called at most once per step, and not at all when
//!    `Signals::uncompressed_time` is `None`.
//! 6. **Dwell** (anti-flapping) may hold the previous on/off state against rules 3–5 (never
//!    against 1–2: safety first).
//! 7. Otherwise **on**, at `ratio = max(congestion.ratio, warm-up phase ratio)`: the
//!    warm-up can only soften compression, never make it stronger than the congestion
//!    rule (seed: 0.05 while the loss is >= 0.1, then 0.02). In the breaker's probation
//!    the ratio is also at least `breaker.probation_ratio` (seed 0.05).
//!
//! # Hysteresis (no flapping)
//!
//! * Congestion: compression turns on when utilisation is *above* `congestion.threshold`
//!   and turns off only when it falls *below* `threshold - congestion.hysteresis` (seed:
//!   on above 0.70, off below 0.65); in between the previous state holds.
//! * Warm-up: a later phase starts as soon as the loss is below its `below_loss`; going
//!   back to an earlier phase needs the loss to reach `below_loss + |below_loss| *
//!   warmup.loss_hysteresis` (seed: 10%). The phase is the number of leading thresholds
//!   the loss is under, so a loss that jumps skips phases.
//! * Dwell: after the rules switch compression on or off, they cannot switch it back
//!   before `dwell.min_steps` steps have passed (seed: 10); the step is logged as
//!   [`Reason::Held`]. A ratio change while on is not a switch. So two rule-driven
//!   switches are always at least `dwell.min_steps` steps apart.
//!
//! Missing signals: a missing loss keeps the warm-up phase; a missing congestion figure or
//! cost prediction follows the table's `if_unknown` (seed: off); missing accuracy/loss
//! comparisons leave the breaker's count unchanged.

pub mod breaker;
pub mod log;
pub mod signals;
pub mod table;

pub use breaker::{BreakerPhase, BreakerState};
pub use log::{
    Decision, DecisionLog, Metric, Reason, ReasonKind, Stats, TripCause, DEFAULT_LOG_CAPACITY,
};
pub use signals::{NonFinite, PolicyError, Signals};
pub use table::{
    BreakerRule, CongestionRule, CostGateRule, DwellRule, Format, IfUnknown, PhaseRatio, Table,
    TableError, WarmupPhase, WarmupRule,
};

use breaker::Verdict;
use serde::{Deserialize, Serialize};

/// The policy's explicit state between steps (everything a decision depends on besides
/// the table and the step's signals).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Last step decided.
    pub last_step: Option<u64>,
    /// Current warm-up phase (0 = initial ratio; `i + 1` = `warmup.phases[i]`).
    pub warmup_phase: usize,
    /// Last finite loss seen.
    pub last_loss: Option<f64>,
    /// Congestion state after the hysteresis band.
    pub congested: bool,
    /// The last decision's ratio (`None` = off).
    pub ratio: Option<f64>,
    /// Step of the last on/off switch.
    pub last_switch: Option<u64>,
    /// The breaker.
    pub breaker: BreakerState,
}

/// The adaptive policy: table, state, decision log and statistics.
/// Serialisable for dumps and metrics; not deserialisable, so that every policy is built
/// through a validated table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    table: Table,
    state: State,
    log: DecisionLog,
    stats: Stats,
}

impl Default for Policy {
    /// The seed's rules ([`Table::seed`]) with a log of [`DEFAULT_LOG_CAPACITY`].
    fn default() -> Self {
        Self::build(Table::seed(), DEFAULT_LOG_CAPACITY)
    }
}

impl Policy {
    /// A policy with this table (validated) and a log of [`DEFAULT_LOG_CAPACITY`].
    pub fn new(table: Table) -> Result<Self, PolicyError> {
        Self::with_log_capacity(table, DEFAULT_LOG_CAPACITY)
    }

    /// A policy with this table (validated) keeping the last `capacity` (>= 1) decisions.
    pub fn with_log_capacity(table: Table, capacity: usize) -> Result<Self, PolicyError> {
        table.validate()?;
        if capacity == 0 {
            return Err(PolicyError::LogCapacity { capacity });
        }
        Ok(Self::build(table, capacity))
    }

    fn build(table: Table, capacity: usize) -> Self {
        Self {
            table,
            state: State::default(),
            log: DecisionLog::new(capacity),
            stats: Stats::default(),
        }
    }

    /// The rule table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The state after the last decision.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The decision log.
    pub fn log(&self) -> &DecisionLog {
        &self.log
    }

    /// The statistics.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Decides step `signals.step`. `compressed_time(ratio)` returns the cost model's
    /// predicted step-communication time (seconds) with compression at `ratio`, or `None`
    /// when it cannot predict; it is called at most once, for the candidate ratio (see the
    /// module documentation). The decision is logged, counted and returned. On error
    /// nothing changes.
    pub fn decide<F>(
        &mut self,
        signals: &Signals,
        compressed_time: F,
    ) -> Result<Decision, PolicyError>
    where
        F: FnMut(f64) -> Option<f64>,
    {
        let (next, decision) = step(&self.table, &self.state, signals, compressed_time)?;
        self.state = next;
        self.stats.steps += 1;
        if decision.is_on() {
            self.stats.compressed += 1;
        } else {
            self.stats.off += 1;
        }
        if decision.reason.kind() == ReasonKind::BreakerTripped {
            self.stats.trips += 1;
        }
        self.log.push(decision.clone());
        Ok(decision)
    }
}

/// The pure core of [`Policy::decide`]: the next state and the decision, from the table
/// (assumed valid: see [`Table::validate`]), the current state and the step's signals.
/// No log, no statistics; [`Policy`] adds those.
pub fn step<F>(
    table: &Table,
    state: &State,
    signals: &Signals,
    mut compressed_time: F,
) -> Result<(State, Decision), PolicyError>
where
    F: FnMut(f64) -> Option<f64>,
{
    signals.validate(state.last_step)?;
    let step = signals.step;
    let mut next = state.clone();
    next.last_step = Some(step);
    if let Some(loss) = signals.loss.filter(|l| l.is_finite()) {
        next.last_loss = Some(loss);
        next.warmup_phase = warmup_phase(&table.warmup, next.warmup_phase, loss);
    }
    if let Some(c) = signals.congestion {
        next.congested = congested(&table.congestion, next.congested, c);
    }

    let (ratio, reason) = match next.breaker.step(&table.breaker, signals) {
        Verdict::Cooldown { retry_at } => (None, Reason::BreakerCooldown { retry_at }),
        Verdict::Tripped {
            cause,
            cooldown,
            retry_at,
        } => (
            None,
            Reason::BreakerTripped {
                cause,
                cooldown,
                retry_at,
            },
        ),
        Verdict::Pass { probation } => {
            let (ratio, reason) = rules(table, &next, signals, probation, &mut compressed_time)?;
            hold_for_dwell(table, &next, step, ratio, reason)
        }
    };
    if ratio.is_some() != next.ratio.is_some() {
        next.last_switch = Some(step);
    }
    next.ratio = ratio;
    Ok((next, Decision::new(step, ratio, reason)))
}

/// The warm-up phase for `loss`, given the current phase (see "Hysteresis").
fn warmup_phase(rule: &WarmupRule, current: usize, loss: f64) -> usize {
    rule.phases
        .iter()
        .enumerate()
        .take_while(|&(i, p)| {
            // Phase `i + 1` is already reached when `i < current`: it keeps the band.
            let threshold = if i < current {
                p.below_loss + p.below_loss.abs() * rule.loss_hysteresis
            } else {
                p.below_loss
            };
            loss < threshold
        })
        .count()
}

/// The setting of warm-up phase `phase`.
fn phase_setting(rule: &WarmupRule, phase: usize) -> PhaseRatio {
    match phase.checked_sub(1) {
        None => rule.initial_ratio,
        Some(i) => rule.phases.get(i).map_or(rule.initial_ratio, |p| p.ratio),
    }
}

/// The congestion state after utilisation `c` (see "Hysteresis").
fn congested(rule: &CongestionRule, was: bool, c: f64) -> bool {
    if was {
        c >= rule.threshold - rule.hysteresis
    } else {
        c > rule.threshold
    }
}

/// Rules 3–5 and 7 of the module documentation.
fn rules<F>(
    table: &Table,
    state: &State,
    s: &Signals,
    probation: Option<u64>,
    compressed_time: &mut F,
) -> Result<(Option<f64>, Reason), PolicyError>
where
    F: FnMut(f64) -> Option<f64>,
{
    let warm = if table.warmup.enabled {
        match phase_setting(&table.warmup, state.warmup_phase) {
            PhaseRatio::Off => {
                let reason = Reason::WarmupOff {
                    loss: state.last_loss,
                    phase: state.warmup_phase,
                };
                return Ok((None, reason));
            }
            PhaseRatio::Ratio(r) => Some(r),
        }
    } else {
        None
    };

    let congestion = match s.congestion {
        None => match table.congestion.if_unknown {
            IfUnknown::Off => return Ok((None, Reason::CongestionUnknown)),
            IfUnknown::On => None,
        },
        Some(c) if !state.congested => {
            let reason = Reason::NotCongested {
                congestion: c,
                threshold: table.congestion.threshold,
            };
            return Ok((None, reason));
        }
        Some(c) => Some(c),
    };

    let mut ratio = warm.map_or(table.congestion.ratio, |w| w.max(table.congestion.ratio));
    if probation.is_some() {
        ratio = ratio.max(table.breaker.probation_ratio);
    }

    let gate = &table.cost_gate;
    let saving = if gate.enabled {
        let prediction = match s.uncompressed_time {
            Some(tu) => {
                signals::check_prediction(ratio, compressed_time(ratio))?.map(|tc| (tu, tc))
            }
            None => None,
        };
        match prediction {
            Some((tu, tc)) => {
                let pays = tc < tu && tu - tc >= gate.margin * tu;
                if !pays {
                    let reason = Reason::CostGate {
                        ratio,
                        uncompressed: tu,
                        compressed: tc,
                        margin: gate.margin,
                    };
                    return Ok((None, reason));
                }
                Some((tu - tc) / tu)
            }
            None => match gate.if_unknown {
                IfUnknown::Off => return Ok((None, Reason::CostUnknown { ratio })),
                IfUnknown::On => None,
            },
        }
    } else {
        None
    };

    let reason = match probation {
        Some(until) => Reason::Probation { until },
        None => Reason::Compress { congestion, saving },
    };
    Ok((Some(ratio), reason))
}

/// Rule 6: keeps the previous on/off state when the rules want a switch too soon after
/// the last one.
fn hold_for_dwell(
    table: &Table,
    state: &State,
    step: u64,
    ratio: Option<f64>,
    reason: Reason,
) -> (Option<f64>, Reason) {
    let switching = ratio.is_some() != state.ratio.is_some();
    let until = state
        .last_switch
        .map(|s| s.saturating_add(table.dwell.min_steps));
    match until {
        Some(until) if switching && step < until => (
            state.ratio,
            Reason::Held {
                wanted: reason.kind(),
                until,
            },
        ),
        _ => (ratio, reason),
    }
}
