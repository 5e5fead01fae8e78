//! Hysteresis shared by the detectors: an alert raises only after its condition held for
//! `raise_after` and clears only after the condition was clearly false for `clear_after`.
//!
//! Each sample is a [`Reading`]: `Bad` (beyond the raise threshold), `Good` (on the safe
//! side of the clear threshold) or `Marginal` (the dead band between them, or no
//! evidence). A run of `Bad` readings raises; a run of `Good` readings clears; any other
//! reading breaks the run. A run "held for" a [`Persist`] means:
//!
//! * `Samples(n)`: `n` consecutive readings (the n-th one raises or clears);
//! * `Seconds(d)`: the reading at time `now` with `now − first ≥ d`, `first` the time of
//!   the run's first reading (`Seconds(0)` acts on the first reading).
//!
//! Two thresholds (a dead band) and two persistence rules together keep a signal that
//! hovers around one threshold from flapping: every raise is preceded by a run of `Bad`
//! lasting `raise_after` and every clear by a run of `Good` lasting `clear_after`, so at
//! most one raise–clear cycle fits in each `raise_after + clear_after` of a trace.
//! Times running backwards count as no time passed (saturating). State is O(1).

use serde::{Deserialize, Serialize};

use crate::matrix::{check_range, seconds_to_ns, InvalidField};

/// How long a condition must hold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persist {
    /// This many consecutive readings (1 ..= 1 000 000).
    Samples(u32),
    /// This many seconds from the run's first reading (0 ..= 86 400).
    Seconds(f64),
}

impl Persist {
    /// Checks the value, naming `field` when it is out of range.
    pub fn validate(&self, field: &str) -> Result<(), InvalidField> {
        match *self {
            Persist::Samples(n) if (1..=1_000_000).contains(&n) => Ok(()),
            Persist::Samples(n) => Err(InvalidField::new(
                field,
                format!("{{\"samples\": {n}}}"),
                "give samples from 1 to 1000000, or {\"seconds\": s}",
            )),
            Persist::Seconds(s) => check_range(field, s, 0.0, 86_400.0),
        }
    }

    fn rule(&self) -> Rule {
        match *self {
            Persist::Samples(n) => Rule::Samples(n),
            Persist::Seconds(s) if s <= 0.0 => Rule::Nanos(0),
            Persist::Seconds(s) => Rule::Nanos(seconds_to_ns(s)),
        }
    }
}

/// The two persistence rules of one alert.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HysteresisConfig {
    /// How long the condition must hold before the alert raises.
    pub raise_after: Persist,
    /// How long it must be clearly false before the alert clears.
    pub clear_after: Persist,
}

impl HysteresisConfig {
    /// Checks both rules; `section` prefixes the field names in errors.
    pub fn validate(&self, section: &str) -> Result<(), InvalidField> {
        self.raise_after
            .validate(&format!("{section}.raise_after"))?;
        self.clear_after.validate(&format!("{section}.clear_after"))
    }
}

/// One sample of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    /// The condition holds (beyond the raise threshold).
    Bad,
    /// In the dead band, or no evidence: neither raises nor clears, breaks both runs.
    Marginal,
    /// Clearly false (on the safe side of the clear threshold).
    Good,
}

impl Reading {
    fn of(bad: bool, good: bool) -> Reading {
        if bad {
            Reading::Bad
        } else if good {
            Reading::Good
        } else {
            Reading::Marginal
        }
    }

    /// For a figure that is bad when high: `Bad` above `raise_above`, `Good` at or
    /// below `clear_at_or_below` (≤ `raise_above`), `Marginal` between or when NaN.
    pub fn above(value: f64, raise_above: f64, clear_at_or_below: f64) -> Reading {
        Reading::of(value > raise_above, value <= clear_at_or_below)
    }

    /// For a figure that is bad when low: `Bad` below `raise_below`, `Good` at or above
    /// `clear_at_or_above` (≥ `raise_below`), `Marginal` between or when NaN.
    pub fn below(value: f64, raise_below: f64, clear_at_or_above: f64) -> Reading {
        Reading::of(value < raise_below, value >= clear_at_or_above)
    }

    /// Several criteria of one alert: `Bad` if any is, `Good` if all are (and there is at
    /// least one), else `Marginal`.
    pub fn any_bad(readings: impl IntoIterator<Item = Reading>) -> Reading {
        let mut all_good = true;
        let mut seen = false;
        for reading in readings {
            seen = true;
            match reading {
                Reading::Bad => return Reading::Bad,
                Reading::Marginal => all_good = false,
                Reading::Good => {}
            }
        }
        if seen && all_good {
            Reading::Good
        } else {
            Reading::Marginal
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Samples(u32),
    Nanos(u64),
}

impl Rule {
    fn met(&self, run: &Run, now_ns: u64) -> bool {
        match *self {
            Rule::Samples(n) => run.count >= n,
            Rule::Nanos(d) => now_ns.saturating_sub(run.first_ns) >= d,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    first_ns: u64,
    count: u32,
}

/// A state change of a [`Hysteresis`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The alert raised; the condition has held since `since_ns` (its run's first reading).
    Raised {
        /// First reading of the run that raised.
        since_ns: u64,
    },
    /// The alert cleared.
    Cleared {
        /// When the alert's condition began (the `since_ns` of its raise).
        since_ns: u64,
        /// First reading of the run that cleared.
        good_since_ns: u64,
    },
}

/// One alert's state machine; see the module doc.
#[derive(Clone, Debug, PartialEq)]
pub struct Hysteresis {
    raise: Rule,
    clear: Rule,
    run: Option<Run>,
    firing_since: Option<u64>,
}

impl Hysteresis {
    /// A cleared state machine with `config`'s rules (validate the config first; an
    /// unvalidated one still works, with its values taken as given).
    pub fn new(config: &HysteresisConfig) -> Hysteresis {
        Hysteresis {
            raise: config.raise_after.rule(),
            clear: config.clear_after.rule(),
            run: None,
            firing_since: None,
        }
    }

    /// Whether the alert is raised.
    pub fn is_firing(&self) -> bool {
        self.firing_since.is_some()
    }

    /// When the raised alert's condition began.
    pub fn firing_since(&self) -> Option<u64> {
        self.firing_since
    }

    /// Feeds one reading taken at `now_ns`; returns the transition it caused, if any.
    pub fn update(&mut self, reading: Reading, now_ns: u64) -> Option<Transition> {
        let (wanted, rule) = match self.firing_since {
            None => (Reading::Bad, self.raise),
            Some(_) => (Reading::Good, self.clear),
        };
        if reading != wanted {
            self.run = None;
            return None;
        }
        let run = match self.run {
            Some(run) => Run {
                first_ns: run.first_ns,
                count: run.count.saturating_add(1),
            },
            None => Run {
                first_ns: now_ns,
                count: 1,
            },
        };
        if !rule.met(&run, now_ns) {
            self.run = Some(run);
            return None;
        }
        self.run = None;
        match self.firing_since.take() {
            None => {
                self.firing_since = Some(run.first_ns);
                Some(Transition::Raised {
                    since_ns: run.first_ns,
                })
            }
            Some(since_ns) => Some(Transition::Cleared {
                since_ns,
                good_since_ns: run.first_ns,
            }),
        }
    }
}
