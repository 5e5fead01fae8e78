//! `LinkMatrix::record` allocates nothing once its peers are added: a counting global
//! allocator watches 100 000 records (this binary holds this one test only, so no other
//! thread allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use topoccl_watch::matrix::{Baseline, LinkMatrix, MatrixConfig, PeerSpec};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn record_does_not_allocate_after_warm_up() {
    let config = MatrixConfig {
        max_peers: 4,
        max_groups: 2,
        ..MatrixConfig::default()
    };
    let mut m = LinkMatrix::new(0, 64, config).unwrap();
    for peer in 1..64 {
        let spec = PeerSpec {
            group: Some(peer as u32 % 3),
            baseline: Some(Baseline {
                throughput_bps: 1e9,
                latency_s: 1e-6,
            }),
            capacity_bps: Some(2e9),
        };
        m.add_peer(peer, spec).unwrap();
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut t = 0u64;
    for i in 0..100_000u64 {
        let peer = 1 + (i as usize * 7) % 63;
        let bytes = if i % 3 == 0 { 512 } else { 1 << 20 };
        m.record(peer, bytes, t, t + 50_000 + i % 1000).unwrap();
        t += 60_000;
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "record allocated");
    assert!(m.links(t).map(|(_, s)| s.transfers_total).sum::<u64>() == 100_000);
}
