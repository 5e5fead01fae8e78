//! The congestion detector on synthetic traces (seeded noise): no false alarm on a noisy
//! healthy link, each criterion (throughput, utilisation, latency, overdue transfer)
//! raising and clearing, stale figures holding an alert, configuration checks, and the
//! alert's renderings.

use topoccl_watch::detect::{
    Alert, AlertKind, AlertState, CongestionConfig, CongestionDetector, DetectError, InFlight,
    Metric, Persist, Subject,
};
use topoccl_watch::matrix::{Baseline, Dest, LinkMatrix, MatrixConfig, MatrixError, PeerSpec};

#[path = "detect_support.rs"]
mod support;
use support::{SplitMix, MS, S};

const BASE: f64 = 118e6;

fn matrix(capacity_bps: Option<f64>) -> LinkMatrix {
    let mut m = LinkMatrix::new(0, 4, MatrixConfig::default()).unwrap();
    for peer in 1..4 {
        let spec = PeerSpec {
            group: None,
            baseline: Some(Baseline {
                throughput_bps: BASE,
                latency_s: 50e-6,
            }),
            capacity_bps,
        };
        m.add_peer(peer, spec).unwrap();
    }
    m
}

fn detector() -> CongestionDetector {
    CongestionDetector::new(CongestionConfig::default()).unwrap()
}

/// A matrix, a detector and seeded noise.
struct Rig {
    m: LinkMatrix,
    d: CongestionDetector,
    noise: SplitMix,
}

impl Rig {
    fn new(seed: u64, m: LinkMatrix) -> Rig {
        Rig {
            m,
            d: detector(),
            noise: SplitMix(seed),
        }
    }

    /// Runs `seconds` of traffic to `peer` from `start_ns`: every 100 ms a 1 MiB transfer
    /// at `rate(t)` (±20% noise) and a 4 KiB message taking `latency(t)` (±20%);
    /// evaluates after each.
    fn drive(
        &mut self,
        peer: usize,
        start_ns: u64,
        seconds: u64,
        rate: impl Fn(u64) -> f64,
        latency: impl Fn(u64) -> f64,
    ) -> Vec<Alert> {
        let mut events = Vec::new();
        for tick in 0..seconds * 10 {
            let t = start_ns + tick * 100 * MS;
            let bytes = 1u64 << 20;
            let dur = bytes as f64 / rate(t) * (1.0 + 0.2 * self.noise.symmetric());
            self.m
                .record(peer, bytes, t, t + (dur * 1e9) as u64)
                .unwrap();
            let lat = latency(t) * (1.0 + 0.2 * self.noise.symmetric());
            let sent = t + 50 * MS;
            self.m
                .record(peer, 4096, sent, sent + (lat * 1e9) as u64)
                .unwrap();
            events.extend(self.d.evaluate(&self.m, &[], t + 100 * MS - 1).unwrap());
        }
        events
    }
}

#[test]
fn noisy_healthy_links_raise_nothing() {
    let mut rig = Rig::new(1, matrix(Some(10.0 * BASE)));
    for peer in 1..4 {
        let events = rig.drive(peer, 0, 60, |_| BASE * 0.9, |_| 80e-6);
        assert!(events.is_empty(), "{events:#?}");
    }
    assert_eq!(rig.d.firing().count(), 0);
}

#[test]
fn throughput_drop_raises_within_the_window_and_recovery_clears_once() {
    let mut rig = Rig::new(2, matrix(None));
    let rate = |t: u64| {
        if (10 * S..30 * S).contains(&t) {
            BASE * 0.3
        } else {
            BASE
        }
    };
    let events = rig.drive(2, 0, 50, rate, |_| 60e-6);
    assert_eq!(events.len(), 2, "{events:#?}");
    let raised = &events[0];
    assert_eq!(raised.state, AlertState::Firing);
    assert_eq!(raised.kind, AlertKind::Congestion);
    assert_eq!(
        raised.subject,
        Subject::Link {
            src: 0,
            dest: Dest::Peer(2)
        }
    );
    assert!(raised.at_ns < 12 * S, "raised late: {}", raised.summary);
    assert_eq!(raised.evidence[0].metric, Metric::ThroughputBps);
    assert!(raised.evidence[0].holds());
    let resolved = &events[1];
    assert_eq!(resolved.state, AlertState::Resolved);
    assert!(
        resolved.at_ns > 30 * S && resolved.at_ns < 34 * S,
        "{}",
        resolved.summary
    );
    assert!(!resolved.evidence[0].holds());
}

#[test]
fn utilisation_above_seventy_percent_is_congestion() {
    // Capacity 12 MB/s: 1 MiB and 4 KiB every 100 ms is 10.5 MB/s, 88% utilised.
    let mut rig = Rig::new(3, matrix(Some(12e6)));
    let events = rig.drive(1, 0, 5, |_| BASE, |_| 60e-6);
    assert_eq!(events.len(), 1, "{events:#?}");
    let alert = &events[0];
    assert_eq!(alert.evidence[0].metric, Metric::Utilisation);
    // Window rate: ten 1 MiB transfers and ten 4 KiB messages a second.
    let rate = 10.0 * (1_048_576.0 + 4096.0);
    assert!((alert.evidence[0].observed - rate / 12e6).abs() < 1e-9);
    assert!(
        alert
            .summary
            .contains("utilisation 88% > 70% of 12 MB/s capacity"),
        "{}",
        alert.summary
    );
}

#[test]
fn latency_above_100_ms_is_congestion_and_its_dead_band_holds() {
    let mut rig = Rig::new(4, matrix(None));
    // 150 ms for 10 s, then 90 ms (dead band: neither raises nor clears), then 1 ms.
    let latency = |t: u64| match t {
        t if t < 10 * S => 0.150,
        t if t < 30 * S => 0.090,
        _ => 0.001,
    };
    let events = rig.drive(3, 0, 40, |_| BASE, latency);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].evidence[0].metric, Metric::LatencyS);
    assert!(
        events[0].summary.contains("latency 1"),
        "{}",
        events[0].summary
    );
    assert!(
        events[0].summary.contains("> 100 ms (baseline 50 µs)"),
        "{}",
        events[0].summary
    );
    assert!(
        events[1].at_ns > 30 * S,
        "cleared inside the dead band: {}",
        events[1].summary
    );
}

#[test]
fn overdue_transfer_stalls_its_link_and_the_clear_reports_the_worst_age() {
    let mut m = matrix(None);
    let mut d = detector();
    // 1 MiB expected to take 50 µs + 8.9 ms at baseline: overdue from 108.9 ms.
    let transfer = InFlight {
        peer: 1,
        bytes: 1 << 20,
        started_ns: 0,
    };
    assert!(d.evaluate(&m, &[transfer], 100 * MS).unwrap().is_empty());
    let events = d.evaluate(&m, &[transfer], 150 * MS).unwrap();
    assert_eq!(events.len(), 1, "{events:#?}");
    let stall = &events[0];
    assert_eq!(
        (stall.kind, stall.state),
        (AlertKind::Stall, AlertState::Firing)
    );
    assert_eq!(
        stall.summary,
        "link 0→1 stalled: a transfer in flight for 150 ms, 8.9 ms expected (> 109 ms)"
    );
    assert_eq!(stall.labels()["severity"], "critical");
    assert!(d.evaluate(&m, &[transfer], 700 * MS).unwrap().is_empty());
    assert_eq!(d.firing().next().unwrap().evidence[0].observed, 0.7);
    // It completes; a fresh transfer in flight is not overdue; clear 0.5 s later.
    m.record(1, 1 << 20, 0, 710 * MS).unwrap();
    let fresh = InFlight {
        peer: 1,
        bytes: 1 << 20,
        started_ns: 800 * MS,
    };
    assert!(d.evaluate(&m, &[fresh], 805 * MS).unwrap().is_empty());
    let events = d.evaluate(&m, &[], 1305 * MS).unwrap();
    // 1 MiB in 710 ms is 1.5 MB/s: the link is congested as well, from 805 ms.
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.state)).collect();
    assert_eq!(
        kinds,
        [
            (AlertKind::Congestion, AlertState::Firing),
            (AlertKind::Stall, AlertState::Resolved)
        ]
    );
    let events = &events[1..];
    assert_eq!(events[0].state, AlertState::Resolved);
    assert_eq!(
        events[0].evidence[0].observed, 0.7,
        "the worst age, not the fresh one's"
    );
    assert!(
        events[0]
            .summary
            .starts_with("link 0→1 no longer stalled after 1.2 s"),
        "{}",
        events[0].summary
    );
}

#[test]
fn stale_figures_keep_an_alert_until_fresh_evidence() {
    let mut rig = Rig::new(5, matrix(None));
    let events = rig.drive(1, 0, 5, |_| BASE * 0.2, |_| 60e-6);
    assert_eq!(events.len(), 1);
    // No traffic for a minute: still firing, nothing emitted.
    for tick in 1..=600 {
        assert!(rig
            .d
            .evaluate(&rig.m, &[], 5 * S + tick * 100 * MS)
            .unwrap()
            .is_empty());
    }
    assert_eq!(rig.d.firing().count(), 1);
    // Healthy traffic again clears it.
    let events = rig.drive(1, 70 * S, 5, |_| BASE, |_| 60e-6);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].state, AlertState::Resolved);
    assert_eq!(rig.d.firing().count(), 0);
}

#[test]
fn aggregated_links_are_judged_and_named_by_group() {
    let config = MatrixConfig {
        max_peers: 1,
        ..MatrixConfig::default()
    };
    let mut m = LinkMatrix::new(0, 8, config).unwrap();
    for peer in 1..8 {
        let spec = PeerSpec {
            group: Some(peer as u32 / 4),
            baseline: Some(Baseline {
                throughput_bps: BASE,
                latency_s: 50e-6,
            }),
            capacity_bps: None,
        };
        m.add_peer(peer, spec).unwrap();
    }
    let mut rig = Rig::new(6, m);
    let events = rig.drive(5, 0, 3, |_| BASE * 0.1, |_| 60e-6);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        events[0].subject,
        Subject::Link {
            src: 0,
            dest: Dest::Group(1)
        }
    );
    assert!(
        events[0].summary.starts_with("link 0→group 1 congested"),
        "{}",
        events[0].summary
    );
    assert_eq!(events[0].labels()["dst"], "group 1");
}

#[test]
fn configuration_errors_name_the_field() {
    let cases: Vec<(CongestionConfig, &str)> = vec![
        (
            CongestionConfig {
                throughput_ratio: 1.5,
                ..Default::default()
            },
            "congestion.throughput_ratio = 1.5",
        ),
        (
            CongestionConfig {
                throughput_clear_ratio: 0.4,
                ..Default::default()
            },
            "congestion.throughput_clear_ratio = 0.4",
        ),
        (
            CongestionConfig {
                utilisation_max: 0.0,
                ..Default::default()
            },
            "congestion.utilisation_max = 0",
        ),
        (
            CongestionConfig {
                utilisation_clear: 0.8,
                ..Default::default()
            },
            "congestion.utilisation_clear = 0.8",
        ),
        (
            CongestionConfig {
                latency_max_s: f64::INFINITY,
                ..Default::default()
            },
            "congestion.latency_max_s = inf",
        ),
        (
            CongestionConfig {
                stall_after_s: -1.0,
                ..Default::default()
            },
            "congestion.stall_after_s = -1",
        ),
        (
            CongestionConfig {
                congestion: topoccl_watch::detect::HysteresisConfig {
                    raise_after: Persist::Samples(0),
                    clear_after: Persist::Samples(1),
                },
                ..Default::default()
            },
            "congestion.congestion.raise_after",
        ),
    ];
    for (config, want) in cases {
        let err = CongestionDetector::new(config).unwrap_err();
        assert!(matches!(err, DetectError::Config(_)));
        let text = err.to_string();
        assert!(text.contains(want), "{text} lacks {want}");
        assert!(text.contains("give "), "{text} does not say what to do");
    }
    // Partial JSON takes defaults; unknown fields are refused.
    let config: CongestionConfig = serde_json::from_str(r#"{"throughput_ratio": 0.3}"#).unwrap();
    assert_eq!(config.throughput_ratio, 0.3);
    assert_eq!(config.utilisation_max, 0.70);
    let err = serde_json::from_str::<CongestionConfig>(r#"{"treshold": 1}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `treshold`"),
        "{err}"
    );
}

#[test]
fn in_flight_transfers_to_untracked_peers_are_refused() {
    let m = LinkMatrix::new(0, 4, MatrixConfig::default()).unwrap();
    let mut d = detector();
    let err = d
        .evaluate(
            &m,
            &[InFlight {
                peer: 2,
                bytes: 1,
                started_ns: 0,
            }],
            1,
        )
        .unwrap_err();
    assert_eq!(
        err,
        DetectError::Matrix(MatrixError::UnknownPeer { peer: 2 })
    );
    assert!(err.to_string().contains("call add_peer(2"), "{err}");
}

#[test]
fn alert_renders_as_log_line_prometheus_and_alertmanager() {
    let mut rig = Rig::new(7, matrix(None));
    let events = rig.drive(3, 0, 3, |_| 41e6, |_| 60e-6);
    let alert = &events[0];
    assert!(
        alert
            .log_line()
            .starts_with("[FIRING congestion] link 0→3 congested: "),
        "{}",
        alert.log_line()
    );
    assert_eq!(alert.to_string(), alert.log_line());

    let labels = alert.labels();
    let keys: Vec<&str> = labels.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["alertname", "dst", "kind", "severity", "src", "subject"]
    );
    assert_eq!(labels["alertname"], "TopocclCongestion");
    assert_eq!(labels["subject"], "link 0→3");
    assert_eq!((labels["src"].as_str(), labels["dst"].as_str()), ("0", "3"));

    let notes = alert.annotations();
    assert_eq!(notes["summary"], alert.summary);
    assert_eq!(notes["state"], "firing");
    assert_eq!(notes["throughput_bps_baseline"], "118000000");
    assert_eq!(notes["throughput_bps_threshold"], "59000000");

    let lines = alert.prometheus_lines();
    assert_eq!(
        lines[0],
        "topoccl_alert{alertname=\"TopocclCongestion\",dst=\"3\",kind=\"congestion\",severity=\"warning\",src=\"0\",subject=\"link 0→3\"} 1"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("metric=\"throughput_bps\",figure=\"baseline\"} 118000000")),
        "{lines:#?}"
    );

    let payload = alert.alertmanager_json(1_767_225_600 * S as i64); // 2026-01-01
    assert_eq!(payload["labels"]["alertname"], "TopocclCongestion");
    assert_eq!(payload["annotations"]["summary"], alert.summary.as_str());
    assert!(payload["startsAt"]
        .as_str()
        .unwrap()
        .starts_with("2026-01-01T00:00:0"));
    assert!(payload.get("endsAt").is_none());

    let json = serde_json::to_string(alert).unwrap();
    assert_eq!(&serde_json::from_str::<Alert>(&json).unwrap(), alert);
    assert!(json.contains("\"kind\":\"congestion\""), "{json}");
    assert!(json.contains("\"state\":\"firing\""), "{json}");
}

#[test]
fn resolved_alert_payload_carries_ends_at() {
    let alert = Alert::new(
        AlertKind::Congestion,
        Subject::Link {
            src: 0,
            dest: Dest::Peer(3),
        },
        AlertState::Resolved,
        2 * S,
        4_100 * MS,
        None,
        vec![],
    );
    let payload = alert.alertmanager_json(0);
    assert_eq!(payload["startsAt"], "1970-01-01T00:00:02.000Z");
    assert_eq!(payload["endsAt"], "1970-01-01T00:00:04.100Z");
    assert_eq!(alert.prometheus_lines(), [
        "topoccl_alert{alertname=\"TopocclCongestion\",dst=\"3\",kind=\"congestion\",severity=\"warning\",src=\"0\",subject=\"link 0→3\"} 0"
    ]);
}
