//! Replays the recorded trace `data/congestion_drop.json` (its `scenario` field says how
//! it was made; `detect_support::drop_trace` makes it) through the matrix and the
//! congestion detector as the runtime would: record each transfer when it ends, evaluate
//! every 100 ms.
//!
//! Regenerate the file after changing the scenario with
//! `cargo test -p topoccl-watch --test detect_recorded -- --ignored regenerate`.

use topoccl_watch::detect::{
    Alert, AlertKind, AlertState, CongestionConfig, CongestionDetector, Subject,
};
use topoccl_watch::matrix::{Baseline, Dest, LinkMatrix, MatrixConfig, PeerSpec};

#[path = "detect_support.rs"]
mod support;
use support::{drop_trace, Trace, S};

const RECORDED: &str = include_str!("data/congestion_drop.json");
const PATH: &str = "tests/data/congestion_drop.json";

fn replay(trace: &Trace) -> Vec<Alert> {
    let mut matrix = LinkMatrix::new(trace.rank, trace.world, MatrixConfig::default()).unwrap();
    let baseline = Baseline {
        throughput_bps: trace.baseline_throughput_bps,
        latency_s: trace.baseline_latency_s,
    };
    for peer in (0..trace.world).filter(|&p| p != trace.rank) {
        let spec = PeerSpec {
            baseline: Some(baseline),
            ..PeerSpec::default()
        };
        matrix.add_peer(peer, spec).unwrap();
    }
    let mut detector = CongestionDetector::new(CongestionConfig::default()).unwrap();
    let mut events = Vec::new();
    let mut next = 0;
    let mut now = trace.evaluate_every_ns;
    while now <= trace.end_ns {
        while let Some(&[peer, bytes, start, end]) = trace.transfers.get(next) {
            if end > now {
                break;
            }
            matrix.record(peer as usize, bytes, start, end).unwrap();
            next += 1;
        }
        events.extend(detector.evaluate(&matrix, &[], now).unwrap());
        now += trace.evaluate_every_ns;
    }
    events
}

#[test]
fn the_recorded_file_is_the_documented_scenario() {
    let recorded: Trace = serde_json::from_str(RECORDED).unwrap();
    assert_eq!(
        recorded,
        drop_trace(),
        "regenerate {PATH} (see this file's doc)"
    );
}

#[test]
fn drop_to_five_percent_raises_then_recovery_resolves() {
    let trace: Trace = serde_json::from_str(RECORDED).unwrap();
    let events = replay(&trace);
    let lines: Vec<String> = events.iter().map(Alert::log_line).collect();
    assert_eq!(events.len(), 2, "{lines:#?}");
    let (raised, resolved) = (&events[0], &events[1]);
    let link = Subject::Link {
        src: 0,
        dest: Dest::Peer(3),
    };
    assert_eq!(
        (raised.kind, raised.subject, raised.state),
        (AlertKind::Congestion, link, AlertState::Firing)
    );
    assert!(
        raised.at_ns > 10 * S && raised.at_ns <= 13 * S,
        "{}",
        lines[0]
    );
    assert!(raised.since_ns >= 10 * S && raised.since_ns < raised.at_ns);
    assert!(
        raised.summary.starts_with("link 0→3 congested: "),
        "{}",
        lines[0]
    );
    assert!(
        raised.summary.contains("vs 118 MB/s baseline"),
        "{}",
        lines[0]
    );
    assert!(raised.summary.contains("< 0.5×)"), "{}", lines[0]);
    let ratio = raised.evidence[0].observed / raised.evidence[0].baseline.unwrap();
    assert!(ratio < 0.5 && ratio > 0.05, "ratio {ratio}");

    assert_eq!(
        (resolved.kind, resolved.subject, resolved.state),
        (AlertKind::Congestion, link, AlertState::Resolved)
    );
    assert_eq!(resolved.since_ns, raised.since_ns);
    assert!(
        resolved.at_ns > 18 * S && resolved.at_ns <= 22 * S,
        "{}",
        lines[1]
    );
    assert!(
        resolved
            .summary
            .starts_with("link 0→3 no longer congested after"),
        "{}",
        lines[1]
    );
}

#[test]
#[ignore = "writes tests/data/congestion_drop.json"]
fn regenerate() {
    // The header pretty-printed, then one transfer per line.
    let trace = drop_trace();
    let header = Trace {
        transfers: Vec::new(),
        ..trace.clone()
    };
    let header = serde_json::to_string_pretty(&header).unwrap();
    let rows: Vec<String> = trace
        .transfers
        .iter()
        .map(|t| format!("    [{}, {}, {}, {}]", t[0], t[1], t[2], t[3]))
        .collect();
    let json = header.replace(
        "\"transfers\": []",
        &format!("\"transfers\": [\n{}\n  ]", rows.join(",\n")),
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(PATH);
    std::fs::write(path, json + "\n").unwrap();
}
