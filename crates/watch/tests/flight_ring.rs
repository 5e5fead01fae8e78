//! The flight recorder's ring: bounds, wrap-around, oldest-first order, updates to
//! overwritten ids ignored; checked against a plain model by proptest.

use std::collections::BTreeMap;

use proptest::prelude::*;
use topoccl_watch::flight::{
    Call, FlightError, Peers, Ring, State, DEFAULT_CAPACITY, MAX_CAPACITY,
};

fn call(seq: u64) -> Call {
    Call::new(seq, "topoccl:all_reduce", "f32", 1024, 4096)
}

#[test]
fn capacity_out_of_range_is_refused_with_the_valid_range() {
    for bad in [0, MAX_CAPACITY + 1] {
        let err = Ring::new(bad).err();
        assert_eq!(
            err,
            Some(FlightError::Capacity {
                given: bad,
                max: MAX_CAPACITY,
                default: DEFAULT_CAPACITY
            })
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains(&bad.to_string()) && msg.contains("1..="),
            "{msg}"
        );
    }
    assert_eq!(Ring::default().capacity(), 2_000);
}

#[test]
fn wraps_oldest_first_and_ignores_overwritten_ids() -> Result<(), FlightError> {
    let mut ring = Ring::new(3)?;
    let ids: Vec<u64> = (0..5)
        .map(|s| ring.record_start(call(s + 10), s * 100))
        .collect();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    assert_eq!(ring.len(), 3);
    assert_eq!(ring.dropped(), 2);
    let held: Vec<u64> = ring.entries().map(|e| e.record_id).collect();
    assert_eq!(held, vec![2, 3, 4]);
    let seqs: Vec<u64> = ring.entries().map(|e| e.collective_seq_id).collect();
    assert_eq!(seqs, vec![12, 13, 14]);

    // Id 1 was overwritten by id 4 (same slot): its update must not touch id 4.
    assert!(!ring.mark_completed(1, 999));
    assert!(!ring.mark_failed(0, 999, "late"));
    assert!(!ring.mark_started(7, 999), "an id never handed out");
    assert_eq!(ring.get(4).map(|e| e.state), Some(State::Scheduled));
    assert!(ring.get(1).is_none());

    assert!(ring.mark_started(4, 450));
    assert!(ring.mark_completed(4, 1_450));
    let e4 = ring.get(4).cloned();
    assert_eq!(e4.as_ref().map(|e| e.state), Some(State::Completed));
    assert_eq!(e4.as_ref().and_then(|e| e.duration_ns()), Some(1_000));
    assert_eq!(e4.as_ref().and_then(|e| e.duration_ms), Some(0.001));
    // A finished call takes no more updates.
    assert!(!ring.mark_failed(4, 2_000, "too late"));
    assert!(!ring.mark_started(4, 2_000));
    assert_eq!(ring.get(4).map(|e| e.state), Some(State::Completed));

    assert!(ring.mark_failed(3, 5_000, format!("timeout after {} ms", 30)));
    let e3 = ring.get(3).cloned();
    assert_eq!(
        e3.as_ref().and_then(|e| e.error.as_deref()),
        Some("timeout after 30 ms")
    );
    // Never started: the duration runs from creation.
    assert_eq!(e3.and_then(|e| e.duration_ns()), Some(5_000 - 300));
    Ok(())
}

#[test]
fn peers_keep_the_first_eight_and_count_all() {
    let all: Vec<u32> = (0..20).collect();
    let p = Peers::new(&all);
    assert_eq!(p.count(), 20);
    assert_eq!(p.listed(), &all[..8]);
    assert_eq!(Peers::new(&[3, 5]).listed(), &[3, 5]);
}

#[derive(Clone, Debug)]
enum Op {
    Record,
    Start(u64),
    Complete(u64),
    Fail(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Record),
        1 => (0u64..80).prop_map(Op::Start),
        1 => (0u64..80).prop_map(Op::Complete),
        1 => (0u64..80).prop_map(Op::Fail),
    ]
}

proptest! {
    /// Against a model that keeps every entry: the ring holds exactly the newest
    /// `capacity` of them, oldest first, with the model's states; ids are 0, 1, 2, …
    #[test]
    fn ring_matches_a_model(capacity in 1usize..12, ops in prop::collection::vec(op(), 0..120)) {
        let mut ring = Ring::new(capacity).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut model: BTreeMap<u64, State> = BTreeMap::new();
        let mut next = 0u64;
        for (t, op) in ops.iter().enumerate() {
            let t = t as u64;
            let held = |id: u64| id < next && next - id <= capacity as u64;
            match *op {
                Op::Record => {
                    let id = ring.record_start(call(t), t);
                    prop_assert_eq!(id, next);
                    model.insert(id, State::Scheduled);
                    next += 1;
                }
                Op::Start(id) => {
                    let ok = held(id) && model.get(&id) == Some(&State::Scheduled);
                    prop_assert_eq!(ring.mark_started(id, t), ok);
                    if ok { model.insert(id, State::Started); }
                }
                Op::Complete(id) | Op::Fail(id) => {
                    let done = matches!(op, Op::Complete(_));
                    let ok = held(id) && model.get(&id).is_some_and(|s| !s.is_final());
                    let applied = if done {
                        ring.mark_completed(id, t)
                    } else {
                        ring.mark_failed(id, t, "x")
                    };
                    prop_assert_eq!(applied, ok);
                    if ok {
                        model.insert(id, if done { State::Completed } else { State::Failed });
                    }
                }
            }
            prop_assert!(ring.len() <= capacity);
        }
        let expect: Vec<(u64, State)> = model
            .iter()
            .rev()
            .take(capacity)
            .rev()
            .map(|(id, s)| (*id, *s))
            .collect();
        let got: Vec<(u64, State)> = ring.entries().map(|e| (e.record_id, e.state)).collect();
        prop_assert_eq!(got, expect);
        prop_assert_eq!(ring.next_id(), next);
        prop_assert_eq!(ring.dropped(), next - ring.len() as u64);
    }
}
