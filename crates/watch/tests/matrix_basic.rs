//! The link matrix: totals, the estimators' formulas, windows, the peer cap with its
//! aggregation, snapshots and the merge of rows.

use proptest::prelude::*;
use topoccl_watch::matrix::{
    Baseline, Dest, LinkMatrix, MatrixConfig, MatrixError, MatrixSnapshot, PeerSpec, WorldMatrix,
};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn spec(throughput_bps: f64) -> PeerSpec {
    PeerSpec {
        group: None,
        baseline: Some(Baseline {
            throughput_bps,
            latency_s: 1e-6,
        }),
        capacity_bps: None,
    }
}

fn matrix(me: usize, world: usize) -> LinkMatrix {
    let mut m = LinkMatrix::new(me, world, MatrixConfig::default()).unwrap();
    for peer in (0..world).filter(|&p| p != me) {
        m.add_peer(peer, spec(1e9)).unwrap();
    }
    m
}

#[test]
fn totals_and_steady_throughput() {
    let mut m = matrix(0, 2);
    // 1 MB in 10 ms, back to back: 100 MB/s.
    for i in 0..200 {
        m.record(1, 1_000_000, i * 10 * MS, (i + 1) * 10 * MS)
            .unwrap();
    }
    let stats = m.link(Dest::Peer(1), 2 * S).unwrap();
    assert_eq!(stats.bytes_total, 200_000_000);
    assert_eq!(stats.transfers_total, 200);
    assert_eq!(stats.throughput_samples, 200);
    assert!((stats.throughput_bps.unwrap() - 1e8).abs() < 1e-3);
    assert_eq!(stats.last_update_ns, Some(2 * S));
    assert!((stats.throughput_ratio().unwrap() - 0.1).abs() < 1e-9);
    assert!(stats.latency_s.is_none(), "no small transfer, no latency");
}

#[test]
fn throughput_mean_runs_on_transfer_time() {
    let config = MatrixConfig {
        throughput_tau_s: 1.0,
        ..MatrixConfig::default()
    };
    let mut m = LinkMatrix::new(0, 2, config).unwrap();
    m.add_peer(1, spec(1e9)).unwrap();
    // 100 MB/s initialises the mean.
    m.record(1, 1_000_000, 0, 10 * MS).unwrap();
    // Then 50 MB/s: 50 transfers of 20 ms = 1 s of transfer time = τ, separated by long
    // idle gaps that must not matter.
    let mut t = 100 * S;
    for _ in 0..50 {
        m.record(1, 1_000_000, t, t + 20 * MS).unwrap();
        t += 7 * S;
    }
    let got = m.link(Dest::Peer(1), t).unwrap().throughput_bps.unwrap();
    let want = 5e7 + 5e7 * (-1.0f64).exp();
    assert!((got - want).abs() / want < 1e-9, "got {got}, want {want}");
}

#[test]
fn latency_is_time_less_wire_time_of_small_transfers() {
    let mut m = LinkMatrix::new(0, 2, MatrixConfig::default()).unwrap();
    m.add_peer(
        1,
        PeerSpec {
            baseline: Some(Baseline {
                throughput_bps: 1e9,
                latency_s: 40e-6,
            }),
            ..PeerSpec::default()
        },
    )
    .unwrap();
    // 1000 B at 1 GB/s = 1 µs on the wire: 51 µs → 50 µs latency.
    m.record(1, 1000, 0, 51_000).unwrap();
    m.record(1, 1000, S, S + 151_000).unwrap();
    let stats = m.link(Dest::Peer(1), 2 * S).unwrap();
    assert!((stats.latency_s.unwrap() - 62.5e-6).abs() < 1e-12);
    assert!((stats.latency_min_s.unwrap() - 50e-6).abs() < 1e-12);
    assert!(
        stats.throughput_bps.is_none(),
        "small transfers are not throughput samples"
    );
}

#[test]
fn windows_close_on_the_next_transfer_or_by_time() {
    let config = MatrixConfig {
        window_s: 1.0,
        ..MatrixConfig::default()
    };
    let mut m = LinkMatrix::new(0, 2, config).unwrap();
    m.add_peer(
        1,
        PeerSpec {
            capacity_bps: Some(1e8),
            ..spec(1e9)
        },
    )
    .unwrap();
    assert!(m.link(Dest::Peer(1), 0).unwrap().window.is_none());
    // Window 0: two 10 MB transfers of 100 ms each, one small one.
    m.record(1, 10_000_000, 100 * MS, 200 * MS).unwrap();
    m.record(1, 10_000_000, 500 * MS, 600 * MS).unwrap();
    m.record(1, 100, 700 * MS, 701 * MS).unwrap();
    assert!(m.link(Dest::Peer(1), 900 * MS).unwrap().window.is_none());
    // As of window 1, window 0 is the last complete one.
    let w = m.link(Dest::Peer(1), 1500 * MS).unwrap().window.unwrap();
    assert_eq!(
        (w.start_ns, w.end_ns, w.bytes, w.transfers),
        (0, S, 20_000_100, 3)
    );
    assert!((w.rate_bps - 20_000_100.0).abs() < 1e-6);
    assert!((w.throughput_bps.unwrap() - 1e8).abs() < 1e-3);
    let util = m
        .link(Dest::Peer(1), 1500 * MS)
        .unwrap()
        .utilisation()
        .unwrap();
    assert!((util - 0.200001).abs() < 1e-9);
    // A transfer in window 1 closes window 0 for good.
    m.record(1, 5_000_000, 1100 * MS, 1200 * MS).unwrap();
    let w = m.link(Dest::Peer(1), 1500 * MS).unwrap().window.unwrap();
    assert_eq!(w.bytes, 20_000_100);
    let w = m.link(Dest::Peer(1), 2500 * MS).unwrap().window.unwrap();
    assert_eq!((w.start_ns, w.bytes), (S, 5_000_000));
    // Two windows later with no traffic: the last window is empty.
    let w = m.link(Dest::Peer(1), 3500 * MS).unwrap().window.unwrap();
    assert_eq!((w.start_ns, w.bytes, w.rate_bps), (2 * S, 0, 0.0));
    assert!(w.throughput_bps.is_none());
    // A transfer ending three windows on: the recorded last window is the empty one.
    m.record(1, 1_000_000, 4100 * MS, 4200 * MS).unwrap();
    let w = m.link(Dest::Peer(1), 4500 * MS).unwrap().window.unwrap();
    assert_eq!((w.start_ns, w.bytes), (3 * S, 0));
}

#[test]
fn peers_beyond_the_cap_are_aggregated_by_level() {
    let config = MatrixConfig {
        max_peers: 8,
        max_groups: 4,
        ..MatrixConfig::default()
    };
    let world = 10_000;
    let mut m = LinkMatrix::new(0, world, config).unwrap();
    for peer in 1..world {
        let dest = m
            .add_peer(
                peer,
                PeerSpec {
                    group: Some((peer / 100) as u32),
                    baseline: Some(Baseline {
                        throughput_bps: peer as f64,
                        latency_s: 0.0,
                    }),
                    capacity_bps: Some(peer as f64),
                },
            )
            .unwrap();
        let want = match peer {
            1..=8 => Dest::Peer(peer),
            9..=399 => Dest::Group((peer / 100) as u32),
            _ => Dest::Other,
        };
        assert_eq!(dest, want, "peer {peer}");
        assert_eq!(m.dest_of(peer), Some(want));
    }
    assert_eq!(m.len(), 8 + 4 + 1);
    let mut total = 0u64;
    for peer in 1..world {
        m.record(peer, peer as u64, 0, 1000).unwrap();
        total += peer as u64;
    }
    let links: Vec<_> = m.links(1000).collect();
    assert_eq!(links.len(), 13);
    assert_eq!(links.iter().map(|(_, s)| s.bytes_total).sum::<u64>(), total);
    assert_eq!(
        links.iter().map(|(_, s)| u64::from(s.members)).sum::<u64>(),
        9_999
    );
    // Group 0 holds peers 9..=99: mean baseline 54, largest capacity 99.
    let g0 = m.link(Dest::Group(0), 1000).unwrap();
    assert_eq!(g0.members, 91);
    assert!((g0.baseline.unwrap().throughput_bps - 54.0).abs() < 1e-9);
    assert_eq!(g0.capacity_bps, Some(99.0));
    assert_eq!(m.link(Dest::Other, 1000).unwrap().members, 9_600);
}

#[test]
fn refusals_name_the_argument() {
    let err = LinkMatrix::new(
        0,
        4,
        MatrixConfig {
            max_peers: 0,
            ..MatrixConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("matrix.max_peers = 0"), "{err}");
    let err = LinkMatrix::new(
        0,
        4,
        MatrixConfig {
            window_s: f64::NAN,
            ..MatrixConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("matrix.window_s = NaN"), "{err}");
    let err = LinkMatrix::new(
        0,
        4,
        MatrixConfig {
            latency_gain: 1.5,
            ..MatrixConfig::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("matrix.latency_gain"), "{err}");
    assert_eq!(
        LinkMatrix::new(4, 4, MatrixConfig::default()).unwrap_err(),
        MatrixError::RankOutOfRange {
            arg: "me",
            rank: 4,
            world: 4
        }
    );
    assert_eq!(
        LinkMatrix::new(0, 0, MatrixConfig::default()).unwrap_err(),
        MatrixError::EmptyWorld
    );

    let mut m = LinkMatrix::new(0, 4, MatrixConfig::default()).unwrap();
    assert_eq!(
        m.add_peer(0, PeerSpec::default()),
        Err(MatrixError::SelfPeer { peer: 0 })
    );
    let err = m.add_peer(9, PeerSpec::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("peer = 9 is not a rank of this world of 4"),
        "{err}"
    );
    let err = m.add_peer(1, spec(-1.0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.baseline.throughput_bps = -1"),
        "{err}"
    );
    m.add_peer(1, PeerSpec::default()).unwrap();
    assert_eq!(
        m.add_peer(1, PeerSpec::default()),
        Err(MatrixError::DuplicatePeer { peer: 1 })
    );
    assert_eq!(
        m.record(2, 1, 0, 1),
        Err(MatrixError::UnknownPeer { peer: 2 })
    );
    assert_eq!(
        m.record(1, 1, 10, 5),
        Err(MatrixError::EndBeforeStart {
            start_ns: 10,
            end_ns: 5
        })
    );
    assert!(m.record(7, 1, 0, 1).is_err());
    // A refused record leaves the figures untouched.
    assert_eq!(m.link(Dest::Peer(1), 0).unwrap().transfers_total, 0);
}

#[test]
fn snapshot_round_trips_through_json() {
    let mut m = matrix(1, 4);
    m.record(0, 10_000_000, 0, 100 * MS).unwrap();
    m.record(3, 100, 0, 10_000).unwrap();
    let snap = m.snapshot(3 * S);
    assert_eq!(
        snap.links.iter().map(|l| l.dest).collect::<Vec<_>>(),
        [Dest::Peer(0), Dest::Peer(2), Dest::Peer(3)]
    );
    let json = serde_json::to_string(&snap).unwrap();
    assert!(json.contains("\"bytes_total\":10000000"), "{json}");
    assert!(json.contains("\"dest\":{\"peer\":3}"), "{json}");
    let back: MatrixSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
}

#[test]
fn rows_merge_into_the_world_matrix() {
    let world = 4;
    let mut rows = Vec::new();
    for me in [0, 1, 3] {
        let mut m = matrix(me, world);
        for peer in (0..world).filter(|&p| p != me) {
            let bytes = (10 * me + peer) as u64 * 1_000_000;
            m.record(peer, bytes, 0, 10 * MS).unwrap();
        }
        rows.push(m.snapshot(S));
    }
    let merged = WorldMatrix::merge(&rows).unwrap();
    assert_eq!(merged.ranks, [0, 1, 3]);
    assert_eq!(merged.missing_ranks(), [2]);
    assert_eq!(merged.links.len(), 9);
    assert_eq!(merged.get(3, 1).unwrap().bytes_total, 31_000_000);
    assert_eq!(merged.get(0, 2).unwrap().bytes_total, 2_000_000);
    assert!(merged.get(2, 0).is_none());
    assert!(merged.get(0, 0).is_none());
    let dense = merged.dense(|s| s.bytes_total / 1_000_000).unwrap();
    assert_eq!(dense[1], [Some(10), None, Some(12), Some(13)]);
    assert_eq!(dense[2], [None, None, None, None]);
    let json = serde_json::to_string(&merged).unwrap();
    assert_eq!(serde_json::from_str::<WorldMatrix>(&json).unwrap(), merged);

    let mut twice = rows.clone();
    twice.push(rows[1].clone());
    assert_eq!(
        WorldMatrix::merge(&twice),
        Err(MatrixError::DuplicateRow { rank: 1 })
    );
    let mut other = rows.clone();
    other[2].world = 5;
    let err = WorldMatrix::merge(&other).unwrap_err();
    assert_eq!(
        err,
        MatrixError::WorldMismatch {
            rank: 3,
            expected: 4,
            found: 5
        }
    );
    assert!(err.to_string().contains("merge rows of one world"));
    assert_eq!(WorldMatrix::merge(&[]), Err(MatrixError::NoRows));
    let mut huge = merged.clone();
    huge.world = 5000;
    assert!(matches!(
        huge.dense(|s| s.bytes_total),
        Err(MatrixError::TooLargeForDense { .. })
    ));
}

proptest! {
    /// Whatever the traffic and the caps: every byte and transfer is counted exactly once,
    /// no more links exist than the caps allow, and each throughput mean lies within its
    /// link's bulk samples.
    #[test]
    fn every_byte_counted_once_within_caps(
        max_peers in 1usize..6,
        max_groups in 0usize..4,
        groups in prop::collection::vec(prop::option::of(0u32..5), 19),
        transfers in prop::collection::vec((1usize..20, 0u64..10_000_000, 0u64..10 * S, 1u64..S), 1..200),
    ) {
        let config = MatrixConfig { max_peers, max_groups, ..MatrixConfig::default() };
        let mut m = LinkMatrix::new(0, 20, config).unwrap();
        for (i, group) in groups.iter().enumerate() {
            m.add_peer(i + 1, PeerSpec { group: *group, ..spec(1e9) }).unwrap();
        }
        prop_assert!(m.len() <= max_peers + max_groups + 1);
        let mut bounds = std::collections::HashMap::new();
        let mut total = 0u64;
        for &(peer, bytes, start, dur) in &transfers {
            m.record(peer, bytes, start, start + dur).unwrap();
            total += bytes;
            if bytes > MatrixConfig::default().small_transfer_bytes {
                let rate = bytes as f64 * 1e9 / dur as f64;
                let e = bounds.entry(m.dest_of(peer).unwrap()).or_insert((f64::MAX, 0.0f64));
                *e = (e.0.min(rate), e.1.max(rate));
            }
        }
        let links: Vec<_> = m.links(20 * S).collect();
        prop_assert_eq!(links.iter().map(|(_, s)| s.bytes_total).sum::<u64>(), total);
        prop_assert_eq!(links.iter().map(|(_, s)| s.transfers_total).sum::<u64>(), transfers.len() as u64);
        for (dest, stats) in &links {
            match (stats.throughput_bps, bounds.get(dest)) {
                (Some(mean), Some(&(lo, hi))) => {
                    prop_assert!(mean >= lo * (1.0 - 1e-9) && mean <= hi * (1.0 + 1e-9));
                }
                (None, None) => {}
                other => prop_assert!(false, "mean and samples disagree: {:?}", other),
            }
        }
    }
}

#[test]
fn a_baseline_set_later_is_what_the_link_is_judged_against() {
    use topoccl_watch::matrix::{Baseline, Dest, LinkMatrix, MatrixConfig, PeerSpec};
    let mut m = LinkMatrix::new(0, 3, MatrixConfig::default()).unwrap();
    m.add_peer(1, PeerSpec::default()).unwrap();
    assert_eq!(m.link(Dest::Peer(1), 0).unwrap().baseline, None);
    let learned = Baseline {
        throughput_bps: 2e8,
        latency_s: 1e-5,
    };
    m.set_baseline(Dest::Peer(1), learned).unwrap();
    assert_eq!(m.link(Dest::Peer(1), 0).unwrap().baseline, Some(learned));
    let bad = Baseline {
        throughput_bps: -1.0,
        latency_s: 0.0,
    };
    let e = m.set_baseline(Dest::Peer(1), bad).unwrap_err().to_string();
    assert!(e.contains("throughput_bps"), "{e}");
    assert!(
        m.set_baseline(Dest::Peer(2), learned).is_err(),
        "peer 2 was never added"
    );
}
