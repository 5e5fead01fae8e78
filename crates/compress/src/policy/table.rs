//! The rule table of the adaptive policy: thresholds, ratios and breaker settings, with the
//! seed's rules as the default, parsed from TOML or JSON text and validated.
//!
//! Owns: the table types ([`Table`] and its sections), their defaults ([`Table::seed`]),
//! parsing ([`Table::from_toml`], [`Table::from_json`]) and validation
//! ([`Table::validate`]). It reads no files: the caller passes the text in.
//!
//! Every section and every key is optional; a missing one takes the seed's value, so a
//! table may override a single threshold. Unknown keys are rejected by name (a misspelt
//! key would otherwise silently keep the seed's value). Errors name the key (as a dotted
//! path such as `congestion.ratio` or `warmup.phases[1].below_loss`), the value, and the
//! accepted range; TOML errors also give the line and quote it.
//!
//! A *ratio* is the kept fraction of the gradient, in (0, 1]: 0.02 sends 2% of the
//! gradient's size. Smaller is stronger compression. Codecs without a ratio (int8, ...)
//! only use whether a ratio is present (compression on) or not (off).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use thiserror::Error;

/// The whole rule table. See the module documentation of [`crate::policy`] for how the
/// rules combine and in which order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Table {
    /// When the links are congested enough to compress, and how hard.
    pub congestion: CongestionRule,
    /// The warm-up schedule: the ratio by training loss.
    pub warmup: WarmupRule,
    /// Compress only where the cost model predicts it pays.
    pub cost_gate: CostGateRule,
    /// The safety breaker.
    pub breaker: BreakerRule,
    /// Minimum time between on/off switches made by the rules (anti-flapping).
    pub dwell: DwellRule,
}

/// The congestion trigger: compress when the most utilised link of the plan passes
/// `threshold`; stop when it falls below `threshold - hysteresis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CongestionRule {
    /// Utilisation (0..1) above which compression turns on. Seed: 0.70.
    pub threshold: f64,
    /// Ratio while congested, in (0, 1]. It is also the strongest compression the policy
    /// ever applies: the warm-up can only soften it. Seed: 0.02.
    pub ratio: f64,
    /// Width of the hysteresis band below `threshold`: once on, compression stays on until
    /// utilisation drops below `threshold - hysteresis`. In [0, threshold]. Seed: 0.05.
    pub hysteresis: f64,
    /// What to do when the caller has no congestion figure for a step. Seed: `off`.
    pub if_unknown: IfUnknown,
}

/// The warm-up schedule: phase 0 uses `initial_ratio`; phase `i + 1` starts once the loss
/// is below `phases[i].below_loss` and uses `phases[i].ratio`. `below_loss` strictly
/// decreases along `phases`. Going back to an earlier phase needs the loss to climb to
/// `below_loss * (1 + loss_hysteresis)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmupRule {
    /// When false the schedule is ignored and the congestion rule alone sets the ratio.
    pub enabled: bool,
    /// Ratio (or off) before the first phase's loss is reached. Seed: 0.05.
    pub initial_ratio: PhaseRatio,
    /// Later phases, by decreasing loss. Seed: 0.02 below 0.1, off below 0.01.
    pub phases: Vec<WarmupPhase>,
    /// Relative hysteresis band on the loss thresholds when the loss climbs back, >= 0.
    /// Seed: 0.10.
    pub loss_hysteresis: f64,
}

/// One warm-up phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupPhase {
    /// The phase starts once the loss is strictly below this value.
    pub below_loss: f64,
    /// The ratio in this phase, or off (`"off"` in the text).
    pub ratio: PhaseRatio,
}

/// A warm-up phase's setting: a ratio in (0, 1], or off (written `"off"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PhaseRatio {
    /// Compress at this ratio.
    Ratio(f64),
    /// No compression in this phase.
    Off,
}

/// The cost gate: compress only when the predicted step-communication time with
/// compression is at most `(1 - margin)` times the time without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostGateRule {
    /// When false, the gate always passes. Seed: true.
    pub enabled: bool,
    /// Required relative saving, in [0, 1). Seed: 0.05 (5%).
    pub margin: f64,
    /// What to do when either prediction is missing. Seed: `off`.
    pub if_unknown: IfUnknown,
}

/// The safety breaker. See [`crate::policy`] for the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerRule {
    /// Consecutive degraded steps that trip the breaker, >= 1. Seed: 3.
    pub bad_steps: u32,
    /// Relative accuracy drop against the uncompressed reference that makes a step bad,
    /// in (0, 1). Seed: 0.01 (1%).
    pub max_accuracy_drop: f64,
    /// Relative loss rise against the reference that makes a step bad when no accuracy is
    /// known, > 0. Seed: 0.01 (1%).
    pub max_loss_rise: f64,
    /// Consecutive steps of strictly growing error-feedback residual norm that trip the
    /// breaker; 0 disables this check. Seed: 5.
    pub residual_growth_steps: u32,
    /// Steps compression stays off after the first trip, >= 1. Seed: 100.
    pub cooldown_steps: u64,
    /// Bound of the exponential back-off of the cool-down, >= `cooldown_steps`.
    /// Seed: 1600 (four doublings).
    pub max_cooldown_steps: u64,
    /// Steps of cautious retry after a cool-down, >= 1. Seed: 50.
    pub probation_steps: u64,
    /// Mildest-compression floor during the retry: the ratio is at least this, in (0, 1].
    /// Seed: 0.05 (the warm-up's initial ratio).
    pub probation_ratio: f64,
}

/// Anti-flapping: after the rules switch compression on or off, they cannot switch it back
/// for `min_steps` steps. The breaker is not bound by this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DwellRule {
    /// Minimum steps between rule-driven switches; 0 disables. Seed: 10.
    pub min_steps: u64,
}

/// What a rule answers when its input signal is missing for a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfUnknown {
    /// Keep compression off.
    Off,
    /// Let the rule pass (compression may go on).
    On,
}

/// Which text format a table came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML text.
    Toml,
    /// JSON text.
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// A table that cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TableError {
    /// The text is not valid TOML/JSON, has a value of the wrong type, or has an unknown
    /// key (the message names it and lists the valid ones).
    #[error("policy table ({format}){}: {message}{}", at(*.line, *.column), quote(.text))]
    Syntax {
        /// Format of the text.
        format: Format,
        /// 1-based line, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        /// The offending line of text, when known.
        text: Option<String>,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or inconsistent with another key.
    #[error("policy table key `{key}` = {value}{}: expected {expected}", line_note(*.line))]
    Invalid {
        /// Dotted path of the key, e.g. `congestion.ratio` or `warmup.phases[0].ratio`.
        key: String,
        /// 1-based line of the key in TOML text, when known.
        line: Option<usize>,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

fn at(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

fn line_note(line: Option<usize>) -> String {
    line.map_or(String::new(), |l| format!(" (line {l})"))
}

fn quote(text: &Option<String>) -> String {
    match text {
        Some(t) => format!(" (in `{}`)", t.trim()),
        None => String::new(),
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::seed()
    }
}

impl Default for CongestionRule {
    fn default() -> Self {
        Self {
            threshold: 0.70,
            ratio: 0.02,
            hysteresis: 0.05,
            if_unknown: IfUnknown::Off,
        }
    }
}

impl Default for WarmupRule {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_ratio: PhaseRatio::Ratio(0.05),
            phases: vec![
                WarmupPhase {
                    below_loss: 0.1,
                    ratio: PhaseRatio::Ratio(0.02),
                },
                WarmupPhase {
                    below_loss: 0.01,
                    ratio: PhaseRatio::Off,
                },
            ],
            loss_hysteresis: 0.10,
        }
    }
}

impl Default for CostGateRule {
    fn default() -> Self {
        Self {
            enabled: true,
            margin: 0.05,
            if_unknown: IfUnknown::Off,
        }
    }
}

impl Default for BreakerRule {
    fn default() -> Self {
        Self {
            bad_steps: 3,
            max_accuracy_drop: 0.01,
            max_loss_rise: 0.01,
            residual_growth_steps: 5,
            cooldown_steps: 100,
            max_cooldown_steps: 1600,
            probation_steps: 50,
            probation_ratio: 0.05,
        }
    }
}

impl Default for DwellRule {
    fn default() -> Self {
        Self { min_steps: 10 }
    }
}

impl PhaseRatio {
    /// The ratio, or `None` when off.
    pub fn ratio(self) -> Option<f64> {
        match self {
            PhaseRatio::Ratio(r) => Some(r),
            PhaseRatio::Off => None,
        }
    }
}

impl Serialize for PhaseRatio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PhaseRatio::Ratio(r) => s.serialize_f64(*r),
            PhaseRatio::Off => s.serialize_str("off"),
        }
    }
}

impl<'de> Deserialize<'de> for PhaseRatio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PhaseRatio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ratio in (0, 1] or the string \"off\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PhaseRatio, E> {
                Ok(PhaseRatio::Ratio(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PhaseRatio, E> {
                Ok(PhaseRatio::Ratio(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PhaseRatio, E> {
                Ok(PhaseRatio::Ratio(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PhaseRatio, E> {
                if v == "off" {
                    Ok(PhaseRatio::Off)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A validation failure before the TOML line is looked up.
struct Invalid {
    key: String,
    value: String,
    expected: String,
}

fn invalid(key: impl Into<String>, value: impl fmt::Display, expected: &str) -> Invalid {
    Invalid {
        key: key.into(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

const RATIO_RANGE: &str =
    "a ratio in (0, 1]: the kept fraction of the gradient (0.02 keeps 2%; 1 keeps all)";

fn check_ratio(key: &str, v: f64) -> Result<(), Invalid> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(())
    } else {
        Err(invalid(key, v, RATIO_RANGE))
    }
}

fn check_range(key: &str, v: f64, ok: bool, expected: &str) -> Result<(), Invalid> {
    if v.is_finite() && ok {
        Ok(())
    } else {
        Err(invalid(key, v, expected))
    }
}

impl Table {
    /// The seed's rules: compress at ratio 0.02 above 70% link utilisation; warm-up 0.05,
    /// then 0.02 once the loss is below 0.1, off once below 0.01; breaker after 3 steps
    /// losing more than 1% accuracy. The remaining values are this project's choices and
    /// are documented on each field.
    pub fn seed() -> Self {
        Self {
            congestion: CongestionRule::default(),
            warmup: WarmupRule::default(),
            cost_gate: CostGateRule::default(),
            breaker: BreakerRule::default(),
            dwell: DwellRule::default(),
        }
    }

    /// Parses and validates a table from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, TableError> {
        let table: Table = toml::from_str(text).map_err(|e| {
            let (line, column, line_text) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (
                        Some(l),
                        Some(c),
                        text.lines().nth(l - 1).map(str::to_string),
                    )
                }
                None => (None, None, None),
            };
            TableError::Syntax {
                format: Format::Toml,
                line,
                column,
                text: line_text,
                message: e.message().trim().to_string(),
            }
        })?;
        table.check().map_err(|inv| {
            let line = toml_line_of(text, &table_key_path(&inv.key));
            into_error(inv, line)
        })?;
        Ok(table)
    }

    /// Parses and validates a table from JSON text.
    pub fn from_json(text: &str) -> Result<Self, TableError> {
        let table: Table = serde_json::from_str(text).map_err(|e| TableError::Syntax {
            format: Format::Json,
            line: Some(e.line()),
            column: Some(e.column()),
            text: text
                .lines()
                .nth(e.line().saturating_sub(1))
                .map(str::to_string),
            message: strip_json_position(&e.to_string()),
        })?;
        table.check().map_err(|inv| into_error(inv, None))?;
        Ok(table)
    }

    /// Renders the table as TOML text that [`Table::from_toml`] reads back unchanged.
    pub fn to_toml(&self) -> Result<String, TableError> {
        toml::to_string(self).map_err(|e| TableError::Syntax {
            format: Format::Toml,
            line: None,
            column: None,
            text: None,
            message: e.to_string(),
        })
    }

    /// Checks every range and ordering rule; the error names the first offending key.
    pub fn validate(&self) -> Result<(), TableError> {
        self.check().map_err(|inv| into_error(inv, None))
    }

    fn check(&self) -> Result<(), Invalid> {
        let c = &self.congestion;
        check_range(
            "congestion.threshold",
            c.threshold,
            (0.0..1.0).contains(&c.threshold),
            "a link utilisation in [0, 1)",
        )?;
        check_ratio("congestion.ratio", c.ratio)?;
        check_range(
            "congestion.hysteresis",
            c.hysteresis,
            c.hysteresis >= 0.0 && c.hysteresis <= c.threshold,
            "a band in [0, congestion.threshold]",
        )?;

        let w = &self.warmup;
        if let PhaseRatio::Ratio(r) = w.initial_ratio {
            check_ratio("warmup.initial_ratio", r)?;
        }
        let mut previous: Option<f64> = None;
        for (i, p) in w.phases.iter().enumerate() {
            let key = format!("warmup.phases[{i}].below_loss");
            match previous {
                Some(prev) => check_range(
                    &key,
                    p.below_loss,
                    p.below_loss < prev,
                    &format!("a finite loss below the previous phase's {prev} (phases go by decreasing loss)"),
                )?,
                None => check_range(&key, p.below_loss, true, "a finite loss")?,
            }
            previous = Some(p.below_loss);
            if let PhaseRatio::Ratio(r) = p.ratio {
                check_ratio(&format!("warmup.phases[{i}].ratio"), r)?;
            }
        }
        check_range(
            "warmup.loss_hysteresis",
            w.loss_hysteresis,
            w.loss_hysteresis >= 0.0,
            "a relative band >= 0 (0.1 = 10%)",
        )?;

        let g = &self.cost_gate;
        check_range(
            "cost_gate.margin",
            g.margin,
            (0.0..1.0).contains(&g.margin),
            "a relative saving in [0, 1) (0.05 = compressed must be 5% faster)",
        )?;

        let b = &self.breaker;
        if b.bad_steps == 0 {
            return Err(invalid("breaker.bad_steps", 0, "at least 1 step"));
        }
        check_range(
            "breaker.max_accuracy_drop",
            b.max_accuracy_drop,
            b.max_accuracy_drop > 0.0 && b.max_accuracy_drop < 1.0,
            "a relative drop in (0, 1) (0.01 = 1%)",
        )?;
        check_range(
            "breaker.max_loss_rise",
            b.max_loss_rise,
            b.max_loss_rise > 0.0,
            "a relative rise > 0 (0.01 = 1%)",
        )?;
        if b.cooldown_steps == 0 {
            return Err(invalid("breaker.cooldown_steps", 0, "at least 1 step"));
        }
        if b.max_cooldown_steps < b.cooldown_steps {
            return Err(invalid(
                "breaker.max_cooldown_steps",
                b.max_cooldown_steps,
                &format!("at least breaker.cooldown_steps ({})", b.cooldown_steps),
            ));
        }
        if b.probation_steps == 0 {
            return Err(invalid("breaker.probation_steps", 0, "at least 1 step"));
        }
        check_ratio("breaker.probation_ratio", b.probation_ratio)?;
        Ok(())
    }
}

fn into_error(inv: Invalid, line: Option<usize>) -> TableError {
    TableError::Invalid {
        key: inv.key,
        line,
        value: inv.value,
        expected: inv.expected,
    }
}

/// One step of a dotted key path: a table key or an array index.
enum PathPart {
    Key(String),
    Index(usize),
}

/// Splits `warmup.phases[1].ratio` into `warmup`, `phases`, `1`, `ratio`.
fn table_key_path(key: &str) -> Vec<PathPart> {
    let mut parts = Vec::new();
    for segment in key.split('.') {
        let mut pieces = segment.split('[');
        if let Some(name) = pieces.next() {
            parts.push(PathPart::Key(name.to_string()));
        }
        for idx in pieces {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                parts.push(PathPart::Index(i));
            }
        }
    }
    parts
}

/// The 1-based line where the key's value sits in the TOML text, if the key is present
/// (a key that took the seed's default has no line).
fn toml_line_of(text: &str, path: &[PathPart]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let root = toml::de::DeValue::Table(doc.into_inner());
    let mut node = &root;
    let mut span = None;
    for part in path {
        let next = match part {
            PathPart::Key(k) => node.get(k.as_str())?,
            PathPart::Index(i) => node.get(*i)?,
        };
        span = Some(next.span());
        node = next.get_ref();
    }
    span.map(|s| line_col(text, s.start).0)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// serde_json appends " at line L column C"; the error carries them separately.
fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
