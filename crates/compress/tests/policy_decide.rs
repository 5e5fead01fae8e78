//! Decisions step by step: warm-up, congestion, cost gate, dwell, breaker, log, errors.

use std::cell::Cell;
use topoccl_compress::policy::{
    BreakerPhase, IfUnknown, Metric, NonFinite, Policy, PolicyError, Reason, ReasonKind, Signals,
    Table, TripCause,
};

/// Compressed communication takes half the uncompressed time: compression pays.
fn pays(_ratio: f64) -> Option<f64> {
    Some(0.5)
}

/// Congested links, uncompressed step time 1 s.
fn congested(step: u64) -> Signals {
    Signals {
        step,
        congestion: Some(0.9),
        uncompressed_time: Some(1.0),
        ..Signals::default()
    }
}

/// The seed's table without dwell, so each rule shows at once.
fn no_dwell() -> Table {
    let mut t = Table::seed();
    t.dwell.min_steps = 0;
    t
}

fn policy(table: Table) -> Policy {
    Policy::new(table).expect("valid table")
}

/// Decides with a paying cost model and returns (ratio, reason kind).
fn run(p: &mut Policy, s: Signals) -> (Option<f64>, ReasonKind) {
    let d = p.decide(&s, pays).expect("valid signals");
    (d.ratio, d.reason.kind())
}

fn with_loss(step: u64, loss: f64) -> Signals {
    Signals {
        loss: Some(loss),
        ..congested(step)
    }
}

fn degraded(step: u64, acc: f64, reference: f64) -> Signals {
    Signals {
        accuracy: Some(acc),
        reference_accuracy: Some(reference),
        ..congested(step)
    }
}

#[test]
fn warmup_schedule_follows_the_loss() {
    let mut p = policy(no_dwell());
    assert_eq!(
        run(&mut p, with_loss(1, 2.0)),
        (Some(0.05), ReasonKind::Compress)
    );
    // A missing loss keeps the phase.
    assert_eq!(
        run(&mut p, congested(2)),
        (Some(0.05), ReasonKind::Compress)
    );
    assert_eq!(
        run(&mut p, with_loss(3, 0.099)),
        (Some(0.02), ReasonKind::Compress)
    );
    assert_eq!(
        run(&mut p, with_loss(4, 0.0099)),
        (None, ReasonKind::WarmupOff)
    );
    assert_eq!(p.state().warmup_phase, 2);
    // Within the 10% band above 0.01: stays off.
    assert_eq!(
        run(&mut p, with_loss(5, 0.0105)),
        (None, ReasonKind::WarmupOff)
    );
    // Above the band: back to 0.02.
    assert_eq!(
        run(&mut p, with_loss(6, 0.0111)),
        (Some(0.02), ReasonKind::Compress)
    );
    // Band above 0.1 is 0.11.
    assert_eq!(
        run(&mut p, with_loss(7, 0.105)),
        (Some(0.02), ReasonKind::Compress)
    );
    assert_eq!(
        run(&mut p, with_loss(8, 0.12)),
        (Some(0.05), ReasonKind::Compress)
    );
    // A loss that drops past two thresholds at once skips the middle phase.
    assert_eq!(
        run(&mut p, with_loss(9, 0.001)),
        (None, ReasonKind::WarmupOff)
    );
    let d = p.log().last().unwrap();
    assert_eq!(
        d.reason,
        Reason::WarmupOff {
            loss: Some(0.001),
            phase: 2
        }
    );
    assert!(d.message.contains("step 9: off"), "{}", d.message);
}

#[test]
fn warmup_can_soften_but_never_strengthen_the_congestion_ratio() {
    let mut t = no_dwell();
    t.warmup.enabled = false;
    let mut p = policy(t.clone());
    assert_eq!(
        run(&mut p, with_loss(1, 2.0)),
        (Some(0.02), ReasonKind::Compress)
    );
    assert_eq!(
        run(&mut p, with_loss(2, 0.001)),
        (Some(0.02), ReasonKind::Compress)
    );

    t.warmup.enabled = true;
    t.congestion.ratio = 0.1;
    let mut p = policy(t);
    assert_eq!(
        run(&mut p, with_loss(1, 2.0)),
        (Some(0.1), ReasonKind::Compress)
    );
}

#[test]
fn congestion_threshold_with_hysteresis_band() {
    let mut p = policy(no_dwell());
    let at = |step, c| Signals {
        congestion: Some(c),
        ..congested(step)
    };
    assert_eq!(run(&mut p, at(1, 0.69)), (None, ReasonKind::NotCongested));
    assert_eq!(run(&mut p, at(2, 0.70)), (None, ReasonKind::NotCongested));
    assert_eq!(run(&mut p, at(3, 0.71)), (Some(0.05), ReasonKind::Compress));
    // Inside the band [0.65, 0.70]: stays on.
    assert_eq!(run(&mut p, at(4, 0.66)), (Some(0.05), ReasonKind::Compress));
    assert_eq!(run(&mut p, at(5, 0.65)), (Some(0.05), ReasonKind::Compress));
    assert_eq!(run(&mut p, at(6, 0.64)), (None, ReasonKind::NotCongested));
    // Inside the band from below: stays off.
    assert_eq!(run(&mut p, at(7, 0.68)), (None, ReasonKind::NotCongested));
    let unknown = Signals {
        congestion: None,
        ..congested(8)
    };
    assert_eq!(run(&mut p, unknown), (None, ReasonKind::CongestionUnknown));

    let mut t = no_dwell();
    t.congestion.if_unknown = IfUnknown::On;
    let mut p = policy(t);
    let d = p
        .decide(
            &Signals {
                congestion: None,
                ..congested(1)
            },
            pays,
        )
        .unwrap();
    assert_eq!(
        d.reason,
        Reason::Compress {
            congestion: None,
            saving: Some(0.5)
        }
    );
}

#[test]
fn cost_gate_keeps_compression_off_on_fast_links() {
    let mut p = policy(no_dwell());
    let asked = Cell::new(None);
    // Fast links: compression saves only 1%, less than the 5% margin.
    let d = p
        .decide(&congested(1), |r| {
            asked.set(Some(r));
            Some(0.99)
        })
        .unwrap();
    assert_eq!(d.ratio, None);
    assert_eq!(asked.get(), Some(0.05), "asked for the candidate ratio");
    assert_eq!(
        d.reason,
        Reason::CostGate {
            ratio: 0.05,
            uncompressed: 1.0,
            compressed: 0.99,
            margin: 0.05
        }
    );
    // Slower with compression.
    let d = p.decide(&congested(2), |_| Some(1.2)).unwrap();
    assert_eq!(d.reason.kind(), ReasonKind::CostGate);
    // Exactly the margin pays.
    let d = p.decide(&congested(3), |_| Some(0.95)).unwrap();
    assert_eq!(d.ratio, Some(0.05));
    // Zero communication time never pays, even with a zero margin.
    let mut t = no_dwell();
    t.cost_gate.margin = 0.0;
    let mut q = policy(t);
    let zero = Signals {
        uncompressed_time: Some(0.0),
        ..congested(1)
    };
    assert_eq!(q.decide(&zero, |_| Some(0.0)).unwrap().ratio, None);
}

#[test]
fn cost_gate_unknown_and_disabled() {
    let mut p = policy(no_dwell());
    let calls = Cell::new(0);
    let count = |_r: f64| {
        calls.set(calls.get() + 1);
        Some(0.1)
    };
    // No uncompressed prediction: the callback is not asked.
    let s = Signals {
        uncompressed_time: None,
        ..congested(1)
    };
    let d = p.decide(&s, count).unwrap();
    assert_eq!(d.reason, Reason::CostUnknown { ratio: 0.05 });
    assert_eq!(calls.get(), 0);
    // The cost model cannot predict this ratio.
    let d = p.decide(&congested(2), |_| None).unwrap();
    assert_eq!(d.reason.kind(), ReasonKind::CostUnknown);
    // Not congested: the callback is not asked either.
    let s = Signals {
        congestion: Some(0.1),
        ..congested(3)
    };
    p.decide(&s, count).unwrap();
    assert_eq!(calls.get(), 0);

    let mut t = no_dwell();
    t.cost_gate.enabled = false;
    let mut p = policy(t);
    let d = p.decide(&congested(1), count).unwrap();
    assert_eq!(d.ratio, Some(0.05));
    assert_eq!(calls.get(), 0);

    let mut t = no_dwell();
    t.cost_gate.if_unknown = IfUnknown::On;
    let mut p = policy(t);
    assert_eq!(p.decide(&congested(1), |_| None).unwrap().ratio, Some(0.05));
}

#[test]
fn breaker_trips_after_exactly_three_bad_steps() {
    let mut p = policy(no_dwell());
    assert_eq!(
        run(&mut p, degraded(118, 0.81, 0.83)).1,
        ReasonKind::Compress
    );
    assert_eq!(
        run(&mut p, degraded(119, 0.81, 0.83)).1,
        ReasonKind::Compress
    );
    let d = p.decide(&degraded(120, 0.81, 0.83), pays).unwrap();
    assert_eq!(d.ratio, None);
    match &d.reason {
        Reason::BreakerTripped {
            cause:
                TripCause::Degradation {
                    metric: Metric::Accuracy,
                    steps: 3,
                    ..
                },
            cooldown: 100,
            retry_at: 220,
        } => {}
        other => panic!("unexpected reason {other:?}"),
    }
    assert_eq!(
        d.message,
        "step 120: off — breaker tripped: accuracy 0.81 vs reference 0.83 (-2.4%) for 3 \
         consecutive steps; off for 100 steps, retry at step 220"
    );
    assert_eq!(p.stats().trips, 1);
}

#[test]
fn two_bad_then_one_good_does_not_trip() {
    let mut p = policy(no_dwell());
    let trace = [0.81, 0.81, 0.83, 0.81, 0.81, 0.825, 0.81, 0.81];
    for (i, acc) in trace.iter().enumerate() {
        let d = p.decide(&degraded(i as u64 + 1, *acc, 0.83), pays).unwrap();
        assert_eq!(d.reason.kind(), ReasonKind::Compress, "step {}", i + 1);
    }
    // 0.825 is within 1% of 0.83, so it was a good step; a third bad one now trips.
    assert_eq!(
        run(&mut p, degraded(9, 0.81, 0.83)).1,
        ReasonKind::BreakerTripped
    );
}

#[test]
fn steps_without_a_comparison_neither_count_nor_reset() {
    let mut p = policy(no_dwell());
    run(&mut p, degraded(1, 0.5, 0.6));
    run(&mut p, congested(2));
    run(&mut p, degraded(3, 0.5, 0.6));
    run(&mut p, congested(4));
    assert_eq!(p.state().breaker.bad_streak, 2);
    assert_eq!(
        run(&mut p, degraded(5, 0.5, 0.6)).1,
        ReasonKind::BreakerTripped
    );
}

#[test]
fn loss_degradation_counts_when_accuracy_is_absent() {
    let mut p = policy(no_dwell());
    let worse = |step| Signals {
        loss: Some(2.08),
        reference_loss: Some(2.0),
        ..congested(step)
    };
    run(&mut p, worse(1));
    run(&mut p, worse(2));
    let d = p.decide(&worse(3), pays).unwrap();
    assert!(
        matches!(
            d.reason,
            Reason::BreakerTripped {
                cause: TripCause::Degradation {
                    metric: Metric::Loss,
                    ..
                },
                ..
            }
        ),
        "{:?}",
        d.reason
    );
    assert!(
        d.message.contains("loss 2.08 vs reference 2 (+4.0%)"),
        "{}",
        d.message
    );
    // Accuracy, when present, wins over the loss: a good accuracy with a worse loss is good.
    let mut p = policy(no_dwell());
    for step in 1..=5 {
        let s = Signals {
            accuracy: Some(0.9),
            reference_accuracy: Some(0.9),
            ..worse(step)
        };
        assert_eq!(run(&mut p, s).1, ReasonKind::Compress);
    }
}

#[test]
fn nan_trips_at_once_even_when_compression_is_off() {
    let mut p = policy(no_dwell());
    let s = Signals {
        gradient_non_finite: true,
        ..congested(1)
    };
    let d = p.decide(&s, pays).unwrap();
    assert!(matches!(
        d.reason,
        Reason::BreakerTripped {
            cause: TripCause::NonFinite {
                signal: NonFinite::Gradient
            },
            ..
        }
    ));
    assert!(
        d.message.contains("NaN/Inf in the gradient"),
        "{}",
        d.message
    );

    for (s, which) in [
        (
            Signals {
                loss: Some(f64::NAN),
                ..congested(1)
            },
            NonFinite::Loss,
        ),
        (
            Signals {
                accuracy: Some(f64::INFINITY),
                ..congested(1)
            },
            NonFinite::Accuracy,
        ),
        (
            Signals {
                residual_norm: Some(f64::NAN),
                ..congested(1)
            },
            NonFinite::ResidualNorm,
        ),
    ] {
        let mut p = policy(no_dwell());
        let d = p.decide(&s, pays).unwrap();
        assert_eq!(
            d.reason,
            Reason::BreakerTripped {
                cause: TripCause::NonFinite { signal: which },
                cooldown: 100,
                retry_at: 101
            }
        );
    }
}

#[test]
fn growing_residual_trips_after_k_steps() {
    let mut p = policy(no_dwell());
    let r = |step: u64, norm: f64| Signals {
        residual_norm: Some(norm),
        ..congested(step)
    };
    // 1, 2, 3, 2 (resets), then 5 growths in a row: 3, 4, 5, 6, 7.
    for (step, norm) in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 2.0), (5, 3.0), (6, 4.0)] {
        assert_eq!(run(&mut p, r(step, norm)).1, ReasonKind::Compress);
    }
    // Steps without a norm leave the streak alone.
    run(&mut p, congested(7));
    assert_eq!(run(&mut p, r(8, 5.0)).1, ReasonKind::Compress);
    assert_eq!(run(&mut p, r(9, 6.0)).1, ReasonKind::Compress);
    let d = p.decide(&r(10, 7.0), pays).unwrap();
    assert!(
        matches!(
            d.reason,
            Reason::BreakerTripped {
                cause: TripCause::ResidualGrowth { steps: 5, .. },
                ..
            }
        ),
        "{:?}",
        d.reason
    );
}

/// Trips the breaker at `step` with a NaN.
fn trip(p: &mut Policy, step: u64) -> Reason {
    let s = Signals {
        gradient_non_finite: true,
        ..congested(step)
    };
    p.decide(&s, pays).unwrap().reason
}

#[test]
fn cooldown_then_cautious_retry_then_recovery() {
    let mut p = policy(Table::seed());
    assert_eq!(run(&mut p, congested(1)).0, Some(0.05));
    let mut t = Table::seed();
    t.warmup.enabled = false;
    let mut p = policy(t);
    assert_eq!(run(&mut p, congested(1)).0, Some(0.02));
    trip(&mut p, 2);
    // Cool-down: off, whatever the signals, and a NaN does not extend it.
    for step in 3..102 {
        let s = Signals {
            gradient_non_finite: step == 50,
            ..congested(step)
        };
        assert_eq!(
            run(&mut p, s),
            (None, ReasonKind::BreakerCooldown),
            "step {step}"
        );
    }
    // Retry at 102: at least the probation ratio 0.05 instead of 0.02.
    let d = p.decide(&congested(102), pays).unwrap();
    assert_eq!(d.ratio, Some(0.05));
    assert_eq!(d.reason, Reason::Probation { until: 152 });
    // Probation ends at 152 without a bad step: normal ratio, back-off reset.
    for step in 103..152 {
        assert_eq!(run(&mut p, congested(step)).1, ReasonKind::Probation);
    }
    assert_eq!(
        run(&mut p, congested(152)),
        (Some(0.02), ReasonKind::Compress)
    );
    assert_eq!(p.state().breaker.phase, BreakerPhase::Closed);
    assert_eq!(p.state().breaker.level, 0);
    // The next trip has the base cool-down again.
    assert!(matches!(
        trip(&mut p, 153),
        Reason::BreakerTripped { cooldown: 100, .. }
    ));
}

#[test]
fn probation_trips_on_the_first_bad_step_and_backs_off_exponentially() {
    let mut p = policy(no_dwell());
    trip(&mut p, 1);
    assert_eq!(
        p.state().breaker.phase,
        BreakerPhase::Open { retry_at: 101 }
    );
    assert_eq!(run(&mut p, congested(101)).1, ReasonKind::Probation);
    // A single bad step in probation trips again, with a doubled cool-down.
    let d = p.decide(&degraded(102, 0.5, 0.6), pays).unwrap();
    assert!(
        matches!(
            d.reason,
            Reason::BreakerTripped {
                cause: TripCause::Degradation { steps: 1, .. },
                cooldown: 200,
                retry_at: 302
            }
        ),
        "{:?}",
        d.reason
    );
    // Repeated trips: 400, 800, 1600, then bounded at 1600.
    let mut step = 302;
    for expected in [400, 800, 1600, 1600, 1600] {
        match trip(&mut p, step) {
            Reason::BreakerTripped {
                cooldown, retry_at, ..
            } => {
                assert_eq!(cooldown, expected);
                step = retry_at;
            }
            other => panic!("expected a trip at {step}, got {other:?}"),
        }
    }
    assert_eq!(p.stats().trips, 7);
}

#[test]
fn dwell_prevents_flapping_but_not_the_breaker() {
    let mut p = policy(Table::seed());
    let mut switches = Vec::new();
    let mut last = None;
    for step in 1..=100u64 {
        let c = if step % 2 == 0 { 0.9 } else { 0.3 };
        let s = Signals {
            congestion: Some(c),
            ..congested(step)
        };
        let d = p.decide(&s, pays).unwrap();
        if last.is_some() && last != Some(d.is_on()) {
            switches.push(step);
        }
        last = Some(d.is_on());
    }
    assert!(!switches.is_empty());
    for w in switches.windows(2) {
        assert!(w[1] - w[0] >= 10, "switches too close: {switches:?}");
    }
    assert!(p.log().count(ReasonKind::Held) > 0);

    // On at step 1; a NaN at step 2 turns it off at once despite the dwell.
    let mut p = policy(Table::seed());
    assert!(p.decide(&congested(1), pays).unwrap().is_on());
    assert_eq!(
        trip(&mut p, 2).kind(),
        ReasonKind::BreakerTripped,
        "the breaker ignores the dwell"
    );
    // Held keeps the previous ratio and says what the rules wanted.
    let mut p = policy(Table::seed());
    p.decide(&congested(1), pays).unwrap();
    let calm = Signals {
        congestion: Some(0.1),
        ..congested(2)
    };
    let d = p.decide(&calm, pays).unwrap();
    assert_eq!(d.ratio, Some(0.05));
    assert_eq!(
        d.reason,
        Reason::Held {
            wanted: ReasonKind::NotCongested,
            until: 11
        }
    );
}

#[test]
fn log_is_bounded_and_counts_everything() {
    let mut p = Policy::with_log_capacity(no_dwell(), 5).unwrap();
    for step in 1..=20 {
        let c = if step <= 12 { 0.9 } else { 0.1 };
        let s = Signals {
            congestion: Some(c),
            ..congested(step)
        };
        p.decide(&s, pays).unwrap();
    }
    let log = p.log();
    assert_eq!(log.capacity(), 5);
    assert_eq!(log.entries().len(), 5);
    assert_eq!(log.dropped(), 15);
    let steps: Vec<u64> = log.entries().map(|d| d.step).collect();
    assert_eq!(steps, vec![16, 17, 18, 19, 20]);
    assert_eq!(log.count(ReasonKind::Compress), 12);
    assert_eq!(log.count(ReasonKind::NotCongested), 8);
    assert_eq!(log.counts().values().sum::<u64>(), 20);
    let stats = p.stats();
    assert_eq!(
        (stats.steps, stats.compressed, stats.off, stats.trips),
        (20, 12, 8, 0)
    );

    let json = serde_json::to_value(log).unwrap();
    assert_eq!(json["entries"][0]["reason"]["kind"], "not_congested");
    assert_eq!(json["counts"]["compress"], 12);
    let back: topoccl_compress::policy::DecisionLog = serde_json::from_value(json).unwrap();
    assert_eq!(&back, log);
}

#[test]
fn trip_reason_serialises_with_its_cause() {
    let mut p = policy(no_dwell());
    trip(&mut p, 7);
    let json = serde_json::to_value(p.log().last().unwrap()).unwrap();
    assert_eq!(json["reason"]["kind"], "breaker_tripped");
    assert_eq!(json["reason"]["cause"]["cause"], "non_finite");
    assert_eq!(json["reason"]["cause"]["signal"], "gradient");
    assert_eq!(json["reason"]["retry_at"], 107);
    assert_eq!(json["ratio"], serde_json::Value::Null);
}

#[test]
fn bad_signals_are_errors_and_change_nothing() {
    let mut p = policy(no_dwell());
    p.decide(&congested(5), pays).unwrap();
    let before = p.clone();
    let cases: Vec<(Signals, &str)> = vec![
        (congested(5), "step"),
        (congested(4), "step"),
        (
            Signals {
                congestion: Some(1.5),
                ..congested(6)
            },
            "congestion",
        ),
        (
            Signals {
                congestion: Some(f64::NAN),
                ..congested(6)
            },
            "congestion",
        ),
        (
            Signals {
                uncompressed_time: Some(-1.0),
                ..congested(6)
            },
            "uncompressed_time",
        ),
        (
            Signals {
                residual_norm: Some(-0.5),
                ..congested(6)
            },
            "residual_norm",
        ),
        (
            Signals {
                reference_accuracy: Some(f64::NAN),
                ..congested(6)
            },
            "reference_accuracy",
        ),
    ];
    for (s, name) in cases {
        let e = p.decide(&s, pays).unwrap_err();
        assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
        assert_eq!(p, before);
    }
    let e = p.decide(&congested(6), |_| Some(f64::NAN)).unwrap_err();
    assert!(matches!(e, PolicyError::BadPrediction { ratio, .. } if ratio == 0.05));
    assert!(e.to_string().contains("compressed_time(0.05)"), "{e}");
    assert_eq!(p, before);
}

#[test]
fn same_trace_same_log() {
    let trace: Vec<Signals> = (1..=300u64)
        .map(|step| Signals {
            loss: Some(1.0 / step as f64),
            accuracy: Some(0.8),
            reference_accuracy: Some(if step % 7 < 4 { 0.83 } else { 0.8 }),
            congestion: Some(((step * 37) % 100) as f64 / 100.0),
            residual_norm: Some(((step * 13) % 17) as f64),
            gradient_non_finite: step == 250,
            ..congested(step)
        })
        .collect();
    let run_all = || {
        let mut p = Policy::default();
        for s in &trace {
            p.decide(s, |r| Some(0.2 + r)).unwrap();
        }
        p
    };
    let (a, b) = (run_all(), run_all());
    assert_eq!(a, b);
    assert_eq!(
        serde_json::to_string(a.log()).unwrap(),
        serde_json::to_string(b.log()).unwrap()
    );
    assert!(a.stats().trips > 0 && a.stats().compressed > 0);
}

#[test]
fn step_is_the_pure_core_of_decide() {
    use topoccl_compress::policy::{step, State};
    let t = no_dwell();
    let mut p = policy(t.clone());
    let mut state = State::default();
    let trace = [
        congested(1),
        degraded(2, 0.5, 0.6),
        with_loss(3, 0.05),
        degraded(4, 0.5, 0.6),
        degraded(5, 0.5, 0.6),
        congested(6),
    ];
    for s in &trace {
        let (next, d) = step(&t, &state, s, pays).unwrap();
        // Calling it again on the same state gives the same answer: no hidden state.
        assert_eq!(
            step(&t, &state, s, pays).unwrap(),
            (next.clone(), d.clone())
        );
        assert_eq!(p.decide(s, pays).unwrap(), d);
        assert_eq!(p.state(), &next);
        state = next;
    }
    assert_eq!(p.stats().trips, 1);
}
