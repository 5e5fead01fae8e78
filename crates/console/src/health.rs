//! Green, amber or red for a link's live figures, by the congestion detector's thresholds
//! (`topoccl_watch::detect::CongestionConfig`, its defaults unless given): no thresholds of
//! our own.
//!
//! * red: utilisation above `utilisation_max`, latency above `latency_max_s`, or the
//!   detector holds the link congested;
//! * amber: utilisation above `utilisation_clear` or latency above `latency_clear_s` (the
//!   band where the detector's hysteresis neither raises nor clears);
//! * green: otherwise, including links without figures.

use serde::Serialize;
use topoccl_watch::detect::CongestionConfig;

/// A link's colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Green,
    Amber,
    Red,
}

/// The thresholds the page and the server colour by (sent in `/api/topology`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Thresholds {
    pub utilisation_max: f64,
    pub utilisation_clear: f64,
    pub latency_max_s: f64,
    pub latency_clear_s: f64,
}

impl From<&CongestionConfig> for Thresholds {
    fn from(c: &CongestionConfig) -> Self {
        Thresholds {
            utilisation_max: c.utilisation_max,
            utilisation_clear: c.utilisation_clear,
            latency_max_s: c.latency_max_s,
            latency_clear_s: c.latency_clear_s,
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds::from(&CongestionConfig::default())
    }
}

impl Thresholds {
    /// The colour of a link with these figures (unknown figures are not judged).
    pub fn level(
        &self,
        utilisation: Option<f64>,
        latency_s: Option<f64>,
        congested: bool,
    ) -> Level {
        let u = utilisation.filter(|u| u.is_finite());
        let l = latency_s.filter(|l| l.is_finite());
        if congested
            || u.is_some_and(|u| u > self.utilisation_max)
            || l.is_some_and(|l| l > self.latency_max_s)
        {
            Level::Red
        } else if u.is_some_and(|u| u > self.utilisation_clear)
            || l.is_some_and(|l| l > self.latency_clear_s)
        {
            Level::Amber
        } else {
            Level::Green
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_detectors_defaults_decide() {
        let t = Thresholds::default();
        assert_eq!(t.level(None, None, false), Level::Green);
        assert_eq!(t.level(Some(0.65), None, false), Level::Amber);
        assert_eq!(t.level(Some(0.71), None, false), Level::Red);
        assert_eq!(t.level(None, Some(0.09), false), Level::Amber);
        assert_eq!(t.level(None, Some(0.2), false), Level::Red);
        assert_eq!(t.level(Some(0.1), Some(1e-6), true), Level::Red);
        assert_eq!(t.level(Some(f64::NAN), None, false), Level::Green);
    }

    proptest! {
        #[test]
        fn more_load_is_never_greener(u in 0.0f64..2.0, du in 0.0f64..1.0, l in 0.0f64..0.3, dl in 0.0f64..0.1) {
            let t = Thresholds::default();
            prop_assert!(t.level(Some(u + du), Some(l + dl), false) >= t.level(Some(u), Some(l), false));
        }
    }
}
