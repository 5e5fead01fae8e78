//! Property tests over synthetic signal traces (fixed proptest seed, so CI runs the same
//! traces every time): purity, ratio bounds, the cost gate, dwell, the breaker's timing
//! against a reference model, and the log's bookkeeping.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use topoccl_compress::policy::{Policy, Reason, ReasonKind, Signals, Table, TripCause};

/// One step of a synthetic trace, plus the cost model's answer for it.
#[derive(Debug, Clone)]
struct Step {
    signals: Signals,
    /// compressed time = uncompressed time * (factor + ratio / 4).
    factor: f64,
}

fn step_spec() -> impl Strategy<Value = (u64, Signals, f64)> {
    (
        1u64..3,
        prop::option::weighted(0.9, 0.0f64..=1.0),
        prop::option::weighted(0.8, -7.0f64..2.0),
        prop::option::weighted(0.5, (0.5f64..1.0, -0.02f64..0.015)),
        prop::bool::weighted(0.02),
        prop::option::weighted(0.5, 0.0f64..10.0),
        prop::option::weighted(0.9, 0.0f64..2.0),
        0.3f64..1.2,
    )
        .prop_map(
            |(gap, congestion, log_loss, acc, nan, residual, tu, factor)| {
                let (accuracy, reference_accuracy) = match acc {
                    // A relative drop above 1% is bad: about one comparison in seven.
                    Some((r, drop)) => (Some(r * (1.0 - drop)), Some(r)),
                    None => (None, None),
                };
                let signals = Signals {
                    step: 0,
                    loss: log_loss.map(|l| 10f64.powf(l / 2.0)),
                    accuracy,
                    reference_accuracy,
                    congestion,
                    uncompressed_time: tu,
                    gradient_non_finite: nan,
                    residual_norm: residual,
                    ..Signals::default()
                };
                (gap, signals, factor)
            },
        )
}

fn trace(max_len: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step_spec(), 1..max_len).prop_map(|specs| {
        let mut step = 0;
        specs
            .into_iter()
            .map(|(gap, mut signals, factor)| {
                step += gap;
                signals.step = step;
                Step { signals, factor }
            })
            .collect()
    })
}

prop_compose! {
    /// The seed's table with short cool-downs, so 300-step traces see whole breaker cycles.
    fn table()(
        bad in 1u32..5,
        growth in 0u32..6,
        cooldown in 1u64..30,
        extra in 0u64..100,
        probation in 1u64..20,
        dwell in 0u64..15,
        warmup in any::<bool>(),
        margin in 0.0f64..0.5,
    ) -> Table {
        let mut t = Table::seed();
        t.breaker.bad_steps = bad;
        t.breaker.residual_growth_steps = growth;
        t.breaker.cooldown_steps = cooldown;
        t.breaker.max_cooldown_steps = cooldown + extra;
        t.breaker.probation_steps = probation;
        t.dwell.min_steps = dwell;
        t.warmup.enabled = warmup;
        t.cost_gate.margin = margin;
        t
    }
}

fn compressed_time(s: &Step, ratio: f64) -> Option<f64> {
    s.signals
        .uncompressed_time
        .map(|tu| tu * (s.factor + ratio / 4.0))
}

/// Runs a trace; returns the policy and every decision (the log may be shorter).
fn play(table: &Table, trace: &[Step]) -> (Policy, Vec<topoccl_compress::policy::Decision>) {
    let mut p = Policy::with_log_capacity(table.clone(), 64).expect("valid table");
    let decisions = trace
        .iter()
        .map(|s| {
            p.decide(&s.signals, |r| compressed_time(s, r))
                .expect("valid signals")
        })
        .collect();
    (p, decisions)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x5eed_c0de),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Decisions are a pure function of the table and the trace.
    #[test]
    fn same_trace_same_decisions(t in table(), tr in trace(300)) {
        let (a, da) = play(&t, &tr);
        let (b, db) = play(&t, &tr);
        prop_assert_eq!(&da, &db);
        prop_assert_eq!(&a, &b);
    }

    /// Ratios stay in (0, 1], never stronger than the congestion rule, and at least the
    /// probation floor in probation; compression only where the cost gate passes.
    #[test]
    fn ratios_and_cost_gate_hold(t in table(), tr in trace(300)) {
        let (_, ds) = play(&t, &tr);
        for (d, s) in ds.iter().zip(&tr) {
            if let Some(r) = d.ratio {
                prop_assert!(r > 0.0 && r <= 1.0);
                prop_assert!(r >= t.congestion.ratio);
                if let Reason::Probation { .. } = d.reason {
                    prop_assert!(r >= t.breaker.probation_ratio);
                }
                if matches!(d.reason.kind(), ReasonKind::Compress | ReasonKind::Probation) {
                    let tu = s.signals.uncompressed_time.expect("gate needs a prediction");
                    let tc = compressed_time(s, r).expect("prediction");
                    prop_assert!(tc < tu && tu - tc >= t.cost_gate.margin * tu);
                    prop_assert!(s.signals.congestion.is_some_and(|c| c >= 0.65));
                }
            }
        }
    }

    /// Two switches are at least `dwell.min_steps` apart unless the breaker forces one.
    #[test]
    fn no_flapping(t in table(), tr in trace(300)) {
        let (_, ds) = play(&t, &tr);
        let mut last_switch: Option<u64> = None;
        let mut on = false;
        for d in &ds {
            if d.is_on() != on {
                if d.reason.kind() != ReasonKind::BreakerTripped {
                    if let Some(prev) = last_switch {
                        prop_assert!(d.step - prev >= t.dwell.min_steps,
                            "switch at {} after {}: {}", d.step, prev, d.message);
                    }
                }
                last_switch = Some(d.step);
                on = d.is_on();
            }
        }
    }

    /// After a trip, compression is off until the retry step, the cool-down is within
    /// its bounds, and a NaN outside a cool-down always trips at once.
    #[test]
    fn breaker_cooldown_and_nan(t in table(), tr in trace(300)) {
        let (_, ds) = play(&t, &tr);
        let mut open_until: Option<u64> = None;
        for (d, s) in ds.iter().zip(&tr) {
            let cooling = open_until.is_some_and(|r| d.step < r);
            if cooling {
                prop_assert_eq!(d.reason.kind(), ReasonKind::BreakerCooldown);
                prop_assert!(d.ratio.is_none());
            } else if s.signals.gradient_non_finite {
                let is_nan_trip = matches!(
                    d.reason,
                    Reason::BreakerTripped { cause: TripCause::NonFinite { .. }, .. }
                );
                prop_assert!(is_nan_trip, "{}", d.message);
            }
            if let Reason::BreakerTripped { cooldown, retry_at, .. } = d.reason {
                prop_assert!(!cooling);
                prop_assert!(cooldown >= t.breaker.cooldown_steps);
                prop_assert!(cooldown <= t.breaker.max_cooldown_steps);
                prop_assert_eq!(retry_at, d.step + cooldown);
                open_until = Some(retry_at);
            }
        }
    }

    /// The first degradation trip comes exactly when a reference model's streak of bad
    /// comparisons reaches `bad_steps` (no NaN, no residual in these traces).
    #[test]
    fn degradation_trip_matches_a_streak_model(
        bad_steps in 1u32..6,
        pattern in prop::collection::vec(prop::option::of(any::<bool>()), 1..60),
    ) {
        let mut t = Table::seed();
        t.breaker.bad_steps = bad_steps;
        let mut p = Policy::new(t).expect("valid table");
        let mut streak = 0;
        let mut expected = None;
        for (i, bad) in pattern.iter().enumerate() {
            match bad {
                Some(true) => streak += 1,
                Some(false) => streak = 0,
                None => {}
            }
            if streak >= bad_steps && expected.is_none() {
                expected = Some(i as u64 + 1);
            }
        }
        let mut first_trip = None;
        for (i, bad) in pattern.iter().enumerate() {
            let (accuracy, reference_accuracy) = match bad {
                Some(true) => (Some(0.80), Some(0.83)),
                Some(false) => (Some(0.83), Some(0.83)),
                None => (None, None),
            };
            let s = Signals {
                step: i as u64 + 1,
                accuracy,
                reference_accuracy,
                congestion: Some(0.9),
                uncompressed_time: Some(1.0),
                ..Signals::default()
            };
            let d = p.decide(&s, |_| Some(0.5)).expect("valid signals");
            if d.reason.kind() == ReasonKind::BreakerTripped {
                first_trip = Some(d.step);
                break;
            }
        }
        prop_assert_eq!(first_trip, expected);
    }

    /// The log keeps the last decisions up to its cap; counts and statistics cover all.
    #[test]
    fn log_bookkeeping(t in table(), tr in trace(300)) {
        let (p, ds) = play(&t, &tr);
        let log = p.log();
        let kept: Vec<_> = log.entries().cloned().collect();
        prop_assert!(kept.len() <= 64);
        prop_assert_eq!(&kept[..], &ds[ds.len() - kept.len()..]);
        prop_assert_eq!(log.dropped() as usize, ds.len() - kept.len());
        prop_assert_eq!(log.counts().values().sum::<u64>(), ds.len() as u64);
        let st = p.stats();
        prop_assert_eq!(st.steps, ds.len() as u64);
        prop_assert_eq!(st.compressed, ds.iter().filter(|d| d.is_on()).count() as u64);
        prop_assert_eq!(st.compressed + st.off, st.steps);
        prop_assert_eq!(st.trips, log.count(ReasonKind::BreakerTripped));
    }
}
