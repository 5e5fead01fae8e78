//! Hysteresis: the raise/clear rules, and that a noisy signal hovering at a threshold
//! does not flap.

use proptest::prelude::*;
use topoccl_watch::detect::{Hysteresis, HysteresisConfig, Persist, Reading, Transition};

#[path = "detect_support.rs"]
mod support;
use support::{SplitMix, MS};

fn config(raise: Persist, clear: Persist) -> HysteresisConfig {
    HysteresisConfig {
        raise_after: raise,
        clear_after: clear,
    }
}

#[test]
fn samples_rule_counts_consecutive_readings() {
    let mut h = Hysteresis::new(&config(Persist::Samples(3), Persist::Samples(2)));
    use Reading::*;
    let trace = [
        Bad, Bad, Marginal, Bad, Bad, Bad, Good, Marginal, Good, Good,
    ];
    let got: Vec<_> = trace
        .iter()
        .enumerate()
        .map(|(i, &r)| h.update(r, i as u64 * 10))
        .collect();
    let mut want = vec![None; trace.len()];
    want[5] = Some(Transition::Raised { since_ns: 30 });
    want[9] = Some(Transition::Cleared {
        since_ns: 30,
        good_since_ns: 80,
    });
    assert_eq!(got, want);
    assert!(!h.is_firing());
}

#[test]
fn seconds_rule_measures_from_the_first_reading() {
    let mut h = Hysteresis::new(&config(Persist::Seconds(0.5), Persist::Seconds(1.0)));
    for t in (0..500).step_by(100) {
        assert_eq!(h.update(Reading::Bad, t * MS), None, "at {t} ms");
    }
    assert_eq!(
        h.update(Reading::Bad, 500 * MS),
        Some(Transition::Raised { since_ns: 0 })
    );
    assert_eq!(h.firing_since(), Some(0));
    // Bad and marginal readings while firing do nothing; good ones for 1 s clear.
    assert_eq!(h.update(Reading::Good, 600 * MS), None);
    assert_eq!(h.update(Reading::Marginal, 1700 * MS), None);
    assert_eq!(h.update(Reading::Good, 1800 * MS), None);
    assert_eq!(h.update(Reading::Good, 2700 * MS), None);
    assert_eq!(
        h.update(Reading::Good, 2800 * MS),
        Some(Transition::Cleared {
            since_ns: 0,
            good_since_ns: 1800 * MS
        })
    );
    // Zero seconds acts on the first reading.
    let mut h = Hysteresis::new(&config(Persist::Seconds(0.0), Persist::Seconds(0.0)));
    assert!(h.update(Reading::Bad, 7).is_some());
    assert!(h.update(Reading::Good, 8).is_some());
}

#[test]
fn readings_from_thresholds() {
    assert_eq!(Reading::above(0.8, 0.7, 0.6), Reading::Bad);
    assert_eq!(Reading::above(0.65, 0.7, 0.6), Reading::Marginal);
    assert_eq!(Reading::above(0.6, 0.7, 0.6), Reading::Good);
    assert_eq!(Reading::below(0.4, 0.5, 0.6), Reading::Bad);
    assert_eq!(Reading::below(0.5, 0.5, 0.6), Reading::Marginal);
    assert_eq!(Reading::below(0.6, 0.5, 0.6), Reading::Good);
    assert_eq!(Reading::above(f64::NAN, 0.7, 0.6), Reading::Marginal);
    use Reading::*;
    assert_eq!(Reading::any_bad([Good, Bad, Marginal]), Bad);
    assert_eq!(Reading::any_bad([Good, Marginal]), Marginal);
    assert_eq!(Reading::any_bad([Good, Good]), Good);
    assert_eq!(Reading::any_bad([]), Marginal);
}

#[test]
fn validation_names_the_field() {
    let bad = config(Persist::Samples(0), Persist::Samples(1));
    let err = bad.validate("congestion.congestion").unwrap_err();
    assert_eq!(err.field, "congestion.congestion.raise_after");
    let bad = config(Persist::Samples(1), Persist::Seconds(-1.0));
    let err = bad.validate("x").unwrap_err();
    assert_eq!(err.field, "x.clear_after");
    assert!(err.to_string().contains("x.clear_after = -1"), "{err}");
    let json = r#"{"raise_after": {"seconds": 0.5}, "clear_after": {"samples": 3}}"#;
    let parsed: HysteresisConfig = serde_json::from_str(json).unwrap();
    assert_eq!(parsed, config(Persist::Seconds(0.5), Persist::Samples(3)));
}

/// A throughput ratio healthy (0.9) for 20 s, then hovering at the raise threshold 0.5
/// with ±0.05 noise for 40 s, then healthy again for 20 s, read every 10 ms against the
/// dead band 0.5 .. 0.6: a bare threshold flaps hundreds of times; the hysteresis raises
/// once while hovering (the noise never reaches the clear threshold) and clears once
/// after.
#[test]
fn noisy_signal_at_the_threshold_does_not_flap() {
    let mut noise = SplitMix(0x5EED);
    let mut h = Hysteresis::new(&config(Persist::Samples(5), Persist::Seconds(2.0)));
    let (mut ours, mut bare, mut bare_state) = (Vec::new(), 0, false);
    for i in 0..8000u64 {
        let now = i * 10 * MS;
        let mean = if (2000..6000).contains(&i) { 0.5 } else { 0.9 };
        let value = mean + 0.05 * noise.symmetric();
        if (value < 0.5) != bare_state {
            bare_state = !bare_state;
            bare += 1;
        }
        ours.extend(
            h.update(Reading::below(value, 0.5, 0.6), now)
                .map(|t| (now, t)),
        );
    }
    assert!(
        bare > 500,
        "the trace should flap a bare threshold, flapped {bare}"
    );
    assert_eq!(ours.len(), 2, "{ours:?}");
    let (raised_at, raised) = ours[0];
    assert!(matches!(raised, Transition::Raised { .. }));
    assert!(
        (20_000 * MS..21_000 * MS).contains(&raised_at),
        "raised at {raised_at}"
    );
    let (cleared_at, cleared) = ours[1];
    assert!(matches!(cleared, Transition::Cleared { .. }));
    assert_eq!(cleared_at, 62_000 * MS, "clears 2 s into the healthy phase");
}

/// Noise wider than the dead band (±0.15 around 0.55): transitions still come in
/// full-length runs, at most one cycle per raise_after + clear_after.
#[test]
fn noise_wider_than_the_dead_band_is_bounded_by_the_persistence() {
    let mut noise = SplitMix(42);
    let (raise, clear) = (5u32, 5u32);
    let mut h = Hysteresis::new(&config(Persist::Samples(raise), Persist::Samples(clear)));
    let n = 20_000u64;
    let mut transitions = 0;
    let mut bare = 0;
    let mut last_bad = false;
    for i in 0..n {
        let value = 0.55 + 0.15 * noise.symmetric();
        let reading = Reading::below(value, 0.5, 0.6);
        if (reading == Reading::Bad) != last_bad {
            last_bad = !last_bad;
            bare += 1;
        }
        transitions += usize::from(h.update(reading, i).is_some());
    }
    assert!(transitions as u64 <= 2 * n / u64::from(raise + clear) + 1);
    assert!(
        transitions * 20 < bare,
        "hysteresis {transitions} vs bare {bare}"
    );
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        Just(Reading::Bad),
        Just(Reading::Marginal),
        Just(Reading::Good)
    ]
}

fn persist() -> impl Strategy<Value = Persist> {
    prop_oneof![
        (1u32..6).prop_map(Persist::Samples),
        (0u32..50).prop_map(|ms| Persist::Seconds(f64::from(ms) / 1000.0)),
    ]
}

fn met(rule: Persist, count: usize, span_ns: u64) -> bool {
    match rule {
        Persist::Samples(n) => count >= n as usize,
        Persist::Seconds(s) => span_ns >= (s * 1e9).round() as u64,
    }
}

proptest! {
    /// Against a reference that re-reads the whole history at every step: a raise happens
    /// exactly when the trailing run of Bad readings since the last transition meets
    /// raise_after (and names its first reading as `since`), a clear exactly when the
    /// trailing run of Good readings meets clear_after; raises and clears alternate.
    #[test]
    fn transitions_match_the_reference(
        raise in persist(),
        clear in persist(),
        steps in prop::collection::vec((reading(), 0u64..20 * MS), 1..300),
    ) {
        let mut h = Hysteresis::new(&config(raise, clear));
        let mut times = Vec::new();
        let mut readings = Vec::new();
        let mut now = 0u64;
        let mut firing = false;
        let mut last_transition: Option<usize> = None;
        let mut since = 0u64;
        for (i, &(r, dt)) in steps.iter().enumerate() {
            now += dt;
            times.push(now);
            readings.push(r);
            let (wanted, rule) = if firing { (Reading::Good, clear) } else { (Reading::Bad, raise) };
            let floor = last_transition.map_or(0, |t| t + 1);
            let mut j = i + 1;
            while j > floor && readings[j - 1] == wanted {
                j -= 1;
            }
            let run = i + 1 - j;
            let expect = run > 0 && met(rule, run, now - times[j]);
            let got = h.update(r, now);
            if expect {
                last_transition = Some(i);
                let want = if firing {
                    Transition::Cleared { since_ns: since, good_since_ns: times[j] }
                } else {
                    since = times[j];
                    Transition::Raised { since_ns: times[j] }
                };
                firing = !firing;
                prop_assert_eq!(got, Some(want), "step {}", i);
            } else {
                prop_assert_eq!(got, None, "step {}", i);
            }
            prop_assert_eq!(h.is_firing(), firing);
        }
    }
}
