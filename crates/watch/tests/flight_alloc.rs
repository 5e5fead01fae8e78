//! The ring's hot path allocates nothing once the ring is full: recording, starting and
//! completing a call with static names only overwrite a slot. Counted with a global
//! allocator, on the test's thread only.

#[path = "alloc_support.rs"]
mod alloc_support;

use std::borrow::Cow;

use alloc_support::{allocations_in, Counting};
use topoccl_watch::flight::{Call, Peers, Ring};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn full_ring_records_without_allocating() {
    let mut ring = Ring::new(64).unwrap_or_default();
    let step = |ring: &mut Ring, seq: u64| {
        let call = Call {
            root: Some(0),
            algorithm: Cow::Borrowed("tree"),
            peers: Peers::new(&[1, 2, 3]),
            timeout_ms: 600_000,
            ..Call::new(seq, "topoccl:broadcast", "bf16", 4096, 8192)
        };
        let id = ring.record_start(call, seq * 10);
        ring.mark_started(id, seq * 10 + 1);
        ring.mark_completed(id, seq * 10 + 5);
    };
    for seq in 0..64 {
        step(&mut ring, seq);
    }
    let ((), allocations) = allocations_in(|| {
        for seq in 64..10_064 {
            step(&mut ring, seq);
        }
    });
    assert_eq!(allocations, 0, "allocations on the hot path");
    assert_eq!(ring.len(), 64);
    // The counter works: a failure's owned text allocates.
    let ((), allocations) = allocations_in(|| {
        let id = ring.record_start(Call::new(1, "topoccl:barrier", "u8", 0, 0), 0);
        ring.mark_failed(id, 1, format!("peer {} lost", 3));
    });
    assert!(allocations > 0);
}
