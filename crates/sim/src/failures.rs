//! Fail-stop interruptions of a long job: each device fails independently at a constant
//! rate per device-hour, and any failure stops the whole job (a synchronous collective
//! cannot finish without every rank). The fleet's failures are then a Poisson process of
//! rate devices × rate, drawn as exponential gaps between interruptions; each falls on a
//! device chosen uniformly. A failed device is taken to be replaced at once, so the rate
//! stays the same for the whole run. Seeded: the same arguments give the same events.

use serde::{Deserialize, Serialize};
use topoccl_topo::SplitMix;

use crate::SimError;

/// Most interruptions a draw may expect: the events are kept in memory.
pub const MAX_EXPECTED: f64 = 1e7;

/// One interruption: when, and which device (a rank, when devices are a job's ranks).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interruption {
    /// Hours since the start of the run.
    pub hours: f64,
    pub device: u64,
}

/// The interruptions of one run, with what the rate predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureDraw {
    pub devices: u64,
    pub rate_per_device_hour: f64,
    pub hours: f64,
    pub seed: u64,
    /// devices × rate × hours.
    pub expected: f64,
    /// 1 / (devices × rate): the fleet's mean time between interruptions.
    pub expected_mtbi_hours: f64,
    /// In time order.
    pub events: Vec<Interruption>,
}

impl FailureDraw {
    /// The run's length over the interruptions drawn (`None` without any).
    pub fn drawn_mtbi_hours(&self) -> Option<f64> {
        (!self.events.is_empty()).then(|| self.hours / self.events.len() as f64)
    }
}

/// Draws the interruptions of a run of `hours` hours on `devices` devices that each fail
/// at `rate` per hour.
pub fn draw(devices: u64, rate: f64, hours: f64, seed: u64) -> Result<FailureDraw, SimError> {
    if devices == 0 {
        return Err(SimError::Invalid(
            "the fleet has no devices; give at least one".into(),
        ));
    }
    if !(rate.is_finite() && rate > 0.0) {
        return Err(SimError::Invalid(format!(
            "failure rate {rate}: it must be a positive number of failures per device-hour \
             (e.g. 1e-5)"
        )));
    }
    if !(hours.is_finite() && hours > 0.0) {
        return Err(SimError::Invalid(format!(
            "run length {hours} h: it must be a positive number of hours"
        )));
    }
    let fleet = devices as f64 * rate;
    let expected = fleet * hours;
    if expected > MAX_EXPECTED {
        return Err(SimError::Invalid(format!(
            "{devices} devices at {rate} per device-hour for {hours} h expect {expected:.3e} \
             interruptions, above the {MAX_EXPECTED:.0e} a draw keeps; shorten the run or \
             lower the rate"
        )));
    }
    let mut rng = SplitMix::new(seed);
    let mut events = Vec::new();
    let mut now = 0.0;
    loop {
        now += -rng.unit_open().ln() / fleet;
        if now > hours {
            break;
        }
        events.push(Interruption {
            hours: now,
            device: rng.below(devices),
        });
    }
    Ok(FailureDraw {
        devices,
        rate_per_device_hour: rate,
        hours,
        seed,
        expected,
        expected_mtbi_hours: 1.0 / fleet,
        events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_average_the_expectation_and_seeds_repeat() {
        // 16,384 devices at 1e-5 for 720 h: 117.96 expected per run.
        let runs: Vec<FailureDraw> = (0..400)
            .map(|s| draw(16384, 1e-5, 720.0, s).unwrap())
            .collect();
        let expected = runs[0].expected;
        assert!((expected - 117.964_8).abs() < 1e-3, "{expected}");
        let mean = runs.iter().map(|r| r.events.len() as f64).sum::<f64>() / 400.0;
        // The mean of 400 Poisson counts has a standard deviation of √(118/400) ≈ 0.54.
        assert!((mean - expected).abs() < 2.5, "{mean} vs {expected}");
        let r = &runs[3];
        assert_eq!(r, &draw(16384, 1e-5, 720.0, 3).unwrap());
        assert_ne!(r.events, runs[4].events);
        assert!(r.events.windows(2).all(|w| w[0].hours <= w[1].hours));
        assert!(r
            .events
            .iter()
            .all(|e| e.device < 16384 && e.hours > 0.0 && e.hours <= 720.0));
        assert!((r.expected_mtbi_hours - 1.0 / 0.16384).abs() < 1e-9);
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (d, rate, h, want) in [
            (0, 1e-5, 10.0, "no devices"),
            (8, 0.0, 10.0, "positive number of failures"),
            (8, -1.0, 10.0, "positive number of failures"),
            (8, f64::NAN, 10.0, "positive number of failures"),
            (8, 1e-5, 0.0, "positive number of hours"),
            (8, 1e-5, f64::INFINITY, "positive number of hours"),
            (1 << 40, 1.0, 1e6, "shorten the run"),
        ] {
            let e = draw(d, rate, h, 1).unwrap_err().to_string();
            assert!(e.contains(want), "{d} {rate} {h}: {e}");
        }
    }
}
