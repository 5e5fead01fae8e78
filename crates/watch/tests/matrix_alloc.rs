//! `LinkMatrix::record` allocates nothing once its peers are added: a counting global
//! allocator watches 100 000 records on the test's thread.

#[path = "alloc_support.rs"]
mod alloc_support;

use alloc_support::{allocations_in, Counting};
use topoccl_watch::matrix::{Baseline, LinkMatrix, MatrixConfig, PeerSpec};

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
    let mut t = 0u64;
    let ((), allocations) = allocations_in(|| {
        for i in 0..100_000u64 {
            let peer = 1 + (i as usize * 7) % 63;
            let bytes = if i % 3 == 0 { 512 } else { 1 << 20 };
            m.record(peer, bytes, t, t + 50_000 + i % 1000).unwrap();
            t += 60_000;
        }
    });
    assert_eq!(allocations, 0, "record allocated");
    assert!(m.links(t).map(|(_, s)| s.transfers_total).sum::<u64>() == 100_000);
}
