//! The straggler detector on synthetic call-entry traces (seeded noise): a persistent
//! straggler is flagged and named, one-off lateness is not, a rank stopped for 2 s is
//! flagged with its call and duration and resolved when it resumes, clock offsets are
//! honoured, and bad input is refused with a clear error.

use topoccl_watch::detect::{
    Alert, AlertKind, AlertState, DetectError, Metric, StragglerConfig, StragglerDetector, Subject,
};

#[path = "detect_support.rs"]
mod support;
use support::{SplitMix, MS, S};

/// Feeds `entries` (`(seq, rank, t_ns)`) in time order, evaluating every 50 ms in
/// between; returns every event with the time it came out.
fn run(detector: &mut StragglerDetector, mut entries: Vec<(u64, usize, u64)>) -> Vec<(u64, Alert)> {
    entries.sort_by_key(|&(seq, rank, t)| (t, seq, rank));
    let mut events = Vec::new();
    let mut tick = 0u64;
    for (seq, rank, t) in entries {
        while tick < t {
            events.extend(detector.evaluate(tick).into_iter().map(|a| (tick, a)));
            tick += 50 * MS;
        }
        let out = detector.enter(seq, rank, t).unwrap();
        events.extend(out.into_iter().map(|a| (t, a)));
    }
    events
}

/// `calls` calls 100 ms apart; each rank enters within 2 ms of the call's start, plus
/// `extra(seq, rank)`.
fn trace(
    world: usize,
    calls: u64,
    seed: u64,
    extra: impl Fn(u64, usize) -> u64,
) -> Vec<(u64, usize, u64)> {
    let mut noise = SplitMix(seed);
    let mut entries = Vec::new();
    for seq in 0..calls {
        for rank in 0..world {
            let jitter = (noise.unit() * 2e6) as u64;
            entries.push((seq, rank, seq * 100 * MS + jitter + extra(seq, rank)));
        }
    }
    entries
}

fn detector(world: usize) -> StragglerDetector {
    StragglerDetector::new(world, StragglerConfig::default()).unwrap()
}

fn summaries(events: &[(u64, Alert)]) -> Vec<String> {
    events.iter().map(|(_, a)| a.log_line()).collect()
}

#[test]
fn persistent_straggler_is_flagged_and_named_then_cleared() {
    let mut d = detector(8);
    let late = |seq: u64, rank: usize| {
        if rank == 5 && (10..60).contains(&seq) {
            30 * MS
        } else {
            0
        }
    };
    let events = run(&mut d, trace(8, 100, 11, late));
    let lines = summaries(&events);
    assert_eq!(events.len(), 2, "{lines:#?}");
    let (at, raised) = &events[0];
    assert_eq!(
        (raised.kind, raised.state),
        (AlertKind::Straggler, AlertState::Firing)
    );
    assert_eq!(raised.subject, Subject::Rank { rank: 5 });
    // Late from call 10: most of the last 16 from call 18 on, then 3 calls of hysteresis.
    assert!((18 * 100 * MS..24 * 100 * MS).contains(at), "{}", lines[0]);
    assert_eq!(raised.evidence[0].metric, Metric::LateFraction);
    assert!(raised.evidence[0].observed > 0.5);
    assert_eq!(raised.evidence[1].metric, Metric::LatenessS);
    assert!(
        (raised.evidence[1].observed - 0.030).abs() < 0.002,
        "{:?}",
        raised.evidence[1]
    );
    assert!(
        raised.summary.starts_with("rank 5 straggling: late in "),
        "{}",
        raised.summary
    );
    assert!(
        raised.summary.contains("of the last 16 calls"),
        "{}",
        raised.summary
    );
    assert!(
        raised.summary.contains("ms behind the median"),
        "{}",
        raised.summary
    );
    let (at, resolved) = &events[1];
    assert_eq!(resolved.state, AlertState::Resolved);
    assert!(*at > 60 * 100 * MS, "{}", lines[1]);
    assert_eq!(d.firing().count(), 0);
    assert_eq!(d.late_history(5), Some((0, 16)));
}

#[test]
fn one_off_and_scattered_lateness_is_not_flagged() {
    let mut d = detector(8);
    // Rank 2 is 500 ms late once; rank 4 is 40 ms late in every fourth call.
    let late = |seq: u64, rank: usize| match (seq, rank) {
        (30, 2) => 500 * MS,
        (s, 4) if s % 4 == 0 => 40 * MS,
        _ => 0,
    };
    let events = run(&mut d, trace(8, 200, 12, late));
    assert!(events.is_empty(), "{:#?}", summaries(&events));
    let (late4, judged4) = d.late_history(4).unwrap();
    assert_eq!(judged4, 16);
    assert_eq!(late4, 4, "every fourth call was late");
}

#[test]
fn noise_alone_flags_nobody() {
    let mut d = detector(64);
    let events = run(&mut d, trace(64, 300, 13, |_, _| 0));
    assert!(events.is_empty(), "{:#?}", summaries(&events));
}

#[test]
fn sigstop_of_two_seconds_is_detected_named_and_resolved() {
    let world = 8;
    let mut d = detector(world);
    // Blocking collectives: call k + 1 starts 100 ms after everyone entered call k.
    // Rank 6 is stopped for 2 s just before entering call 30.
    let mut noise = SplitMix(14);
    let mut entries = Vec::new();
    let mut start = 0u64;
    for seq in 0..60u64 {
        let mut last = 0;
        for rank in 0..world {
            let stop = if seq == 30 && rank == 6 { 2 * S } else { 0 };
            let t = start + (noise.unit() * 2e6) as u64 + stop;
            last = last.max(t);
            entries.push((seq, rank, t));
        }
        start = last + 100 * MS;
    }
    let others_in = entries
        .iter()
        .filter(|&&(seq, rank, _)| seq == 30 && rank != 6)
        .map(|&(_, _, t)| t)
        .max()
        .unwrap();
    let rank6_in = entries
        .iter()
        .find(|&&(seq, rank, _)| seq == 30 && rank == 6)
        .unwrap()
        .2;
    let events = run(&mut d, entries);
    let lines = summaries(&events);
    assert_eq!(events.len(), 2, "{lines:#?}");
    let (at, stopped) = &events[0];
    assert_eq!(
        (stopped.kind, stopped.state),
        (AlertKind::Stall, AlertState::Firing)
    );
    assert_eq!(stopped.subject, Subject::Rank { rank: 6 });
    assert_eq!(stopped.call, Some(30));
    assert_eq!(stopped.since_ns, others_in, "since the others were all in");
    assert!(
        *at > others_in + S && *at <= others_in + S + 50 * MS,
        "{}",
        lines[0]
    );
    assert!(
        stopped.summary.starts_with(
            "rank 6 stopped: has not entered call 30 for 1.0 s while all others did (> 1.0 s)"
        ),
        "{}",
        stopped.summary
    );
    assert_eq!(stopped.labels()["rank"], "6");
    assert_eq!(stopped.labels()["severity"], "critical");
    let (at, resumed) = &events[1];
    assert_eq!(
        (resumed.kind, resumed.state),
        (AlertKind::Stall, AlertState::Resolved)
    );
    assert!(*at >= rank6_in && *at < rank6_in + 50 * MS, "{}", lines[1]);
    let waited = resumed.evidence[0].observed;
    assert!((waited - (rank6_in - others_in) as f64 / 1e9).abs() < 1e-9);
    assert!((waited - 2.0).abs() < 0.005, "stopped {waited} s");
    assert!(
        resumed
            .summary
            .starts_with("rank 6 resumed after 2.0 s: entered call 30 2.0 s after all others"),
        "{}",
        resumed.summary
    );
}

#[test]
fn resumed_rank_already_waited_on_in_the_next_call_is_resolved_with_its_own_delay() {
    let mut d = detector(4);
    for rank in 0..3 {
        d.enter(30, rank, 0).unwrap();
    }
    let events = d.evaluate(1500 * MS);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].state, events[0].call),
        (AlertState::Firing, Some(30))
    );
    // Rank 3 enters call 30 at 1.8 s; the others are into call 31 at 1.9 s and it is not
    // yet: it resumed, and the alert says 1.8 s, not its time in call 31.
    d.enter(30, 3, 1800 * MS).unwrap();
    for rank in 0..3 {
        d.enter(31, rank, 1900 * MS).unwrap();
    }
    let events = d.evaluate(2000 * MS);
    assert_eq!(events.len(), 1, "{:#?}", events);
    let resumed = &events[0];
    assert_eq!(
        (resumed.state, resumed.call),
        (AlertState::Resolved, Some(30))
    );
    assert_eq!(resumed.evidence[0].observed, 1.8);
    assert_eq!(resumed.since_ns, 0);
    assert_eq!(d.firing().count(), 0);
}

#[test]
fn a_call_most_ranks_have_not_entered_waits_on_nobody() {
    let mut d = detector(8);
    // Only 3 of 8 entered call 0, 5 s ago: that is not a stop of the other five.
    for rank in 0..3 {
        assert!(d.enter(0, rank, 0).unwrap().is_empty());
    }
    assert!(d.evaluate(5 * S).is_empty());
    // With 7 of 8 in, the eighth is waited on.
    for rank in 3..7 {
        d.enter(0, rank, 0).unwrap();
    }
    let events = d.evaluate(5 * S);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].subject, Subject::Rank { rank: 7 });
}

#[test]
fn clock_offsets_align_entries() {
    // Rank 3's clock runs 50 ms ahead: unaligned it looks like a straggler.
    let skewed = |_: u64, rank: usize| if rank == 3 { 50 * MS } else { 0 };
    let mut raw = detector(8);
    let events = run(&mut raw, trace(8, 40, 15, skewed));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.subject, Subject::Rank { rank: 3 });
    let mut aligned = detector(8);
    aligned.set_offset(3, -50 * MS as i64).unwrap();
    let events = run(&mut aligned, trace(8, 40, 15, skewed));
    assert!(events.is_empty(), "{:#?}", summaries(&events));
}

#[test]
fn two_ranks_cannot_tell_who_is_late() {
    let mut d = detector(2);
    let events = run(
        &mut d,
        trace(2, 50, 16, |_, rank| if rank == 1 { 30 * MS } else { 0 }),
    );
    assert!(events.is_empty());
}

#[test]
fn bad_input_is_refused_and_old_calls_dropped() {
    let mut d = detector(4);
    let err = d.enter(0, 4, 0).unwrap_err();
    assert_eq!(
        err,
        DetectError::RankOutOfRange {
            arg: "rank",
            rank: 4,
            world: 4
        }
    );
    assert!(err.to_string().contains("give a rank from 0 to 3"), "{err}");
    d.enter(7, 1, 0).unwrap();
    let err = d.enter(7, 1, 5).unwrap_err();
    assert_eq!(err, DetectError::DuplicateEntry { rank: 1, seq: 7 });
    assert!(
        err.to_string().contains("rank 1 entered call 7 twice"),
        "{err}"
    );
    assert!(d.set_offset(9, 0).is_err());
    // Window of 16: call 100 makes calls up to 84 too old.
    d.enter(100, 0, 0).unwrap();
    d.enter(84, 0, 0).unwrap();
    d.enter(85, 0, 0).unwrap();
    assert_eq!(d.stale_entries(), 1);
    assert_eq!(
        StragglerDetector::new(0, StragglerConfig::default()).unwrap_err(),
        DetectError::EmptyWorld
    );
}

#[test]
fn configuration_errors_name_the_field() {
    let cases: Vec<(StragglerConfig, &str)> = vec![
        (
            StragglerConfig {
                window_calls: 65,
                ..Default::default()
            },
            "straggler.window_calls = 65",
        ),
        (
            StragglerConfig {
                min_calls: 17,
                ..Default::default()
            },
            "straggler.min_calls = 17",
        ),
        (
            StragglerConfig {
                z_threshold: 0.0,
                ..Default::default()
            },
            "straggler.z_threshold = 0",
        ),
        (
            StragglerConfig {
                clear_fraction: 0.6,
                ..Default::default()
            },
            "straggler.clear_fraction = 0.6",
        ),
        (
            StragglerConfig {
                raise_fraction: 1.0,
                ..Default::default()
            },
            "straggler.raise_fraction = 1",
        ),
        (
            StragglerConfig {
                stop_after_s: f64::NAN,
                ..Default::default()
            },
            "straggler.stop_after_s = NaN",
        ),
        (
            StragglerConfig {
                stop_max_missing: 1.0,
                ..Default::default()
            },
            "straggler.stop_max_missing = 1",
        ),
    ];
    for (config, want) in cases {
        let err = StragglerDetector::new(8, config).unwrap_err();
        assert!(err.to_string().contains(want), "{err} lacks {want}");
    }
    let config: StragglerConfig = serde_json::from_str(r#"{"window_calls": 32, "straggler": {"raise_after": {"seconds": 1.5}, "clear_after": {"samples": 4}}}"#).unwrap();
    assert_eq!(config.window_calls, 32);
    assert!(StragglerDetector::new(8, config).is_ok());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Whatever the world (3 to 24 ranks), the noise and which rank straggles: a rank
        /// 20 ms or more late into every call is flagged, and it alone.
        #[test]
        fn the_straggler_and_only_it_is_flagged(
            world in 3usize..24,
            pick in 0usize..1000,
            late_ms in 20u64..200,
            seed in any::<u64>(),
        ) {
            let straggler = pick % world;
            let mut d = detector(world);
            let late = |_: u64, rank: usize| if rank == straggler { late_ms * MS } else { 0 };
            let events = run(&mut d, trace(world, 40, seed, late));
            prop_assert_eq!(events.len(), 1, "{:#?}", summaries(&events));
            prop_assert_eq!(events[0].1.subject, Subject::Rank { rank: straggler });
            prop_assert_eq!(events[0].1.kind, AlertKind::Straggler);
        }

        /// Without a straggler, jitter alone (up to 2 ms) flags nobody.
        #[test]
        fn jitter_alone_flags_nobody(world in 1usize..24, seed in any::<u64>()) {
            let mut d = detector(world);
            let events = run(&mut d, trace(world, 40, seed, |_, _| 0));
            prop_assert!(events.is_empty(), "{:#?}", summaries(&events));
        }
    }
}
