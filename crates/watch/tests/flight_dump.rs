//! The dump format: round trip, and errors that name the file and position for corrupt,
//! truncated, malformed, foreign and wrong-version input.

use std::borrow::Cow;

use proptest::prelude::*;
use topoccl_watch::flight::{
    Call, Dump, DumpMeta, DumpReason, FlightError, Peers, Ring, FORMAT_VERSION,
};

fn meta(rank: u32) -> DumpMeta {
    DumpMeta {
        job_id: "job-7".to_string(),
        process_group: "world".to_string(),
        rank,
        world_size: 4,
        host: "node-a".to_string(),
        dump_time_ns: 9_000_000_000,
        reason: DumpReason::Timeout,
        detail: Some("call #3 timed out".to_string()),
    }
}

/// A small dump: completed, started, failed and scheduled calls.
fn sample() -> Dump {
    let mut ring = Ring::default();
    for seq in 1..=4u64 {
        let c = Call {
            root: (seq == 2).then_some(0),
            algorithm: Cow::Borrowed("ring"),
            peers: Peers::new(&[1, 3]),
            timeout_ms: 30_000,
            ..Call::new(seq, "topoccl:all_reduce", "f32", 1 << 24, 64 << 20)
        };
        let t = seq * 1_000_000;
        let id = ring.record_start(c, t);
        match seq {
            1 | 2 => {
                ring.mark_started(id, t + 10);
                ring.mark_completed(id, t + 500_123);
            }
            3 => {
                ring.mark_started(id, t + 10);
                ring.mark_failed(id, t + 30_000_000_000, "timeout: peer 2 silent");
            }
            _ => {}
        }
    }
    ring.dump(meta(1))
}

fn parse_err(text: &str) -> FlightError {
    match Dump::parse(text, "dumps/rank1.json") {
        Ok(_) => panic!("parsed {text:?}"),
        Err(e) => e,
    }
}

#[test]
fn round_trip_keeps_everything() -> Result<(), FlightError> {
    let d = sample();
    let json = d.to_json();
    let back = Dump::parse(&json, "rank1.json")?;
    assert_eq!(back.source, "rank1.json");
    assert_eq!(
        Dump {
            source: String::new(),
            ..back
        },
        d
    );
    Ok(())
}

#[test]
fn json_uses_pytorch_field_names() -> Result<(), serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(&sample().to_json())?;
    assert_eq!(v["format"], "topoccl-flight");
    assert_eq!(v["version"], FORMAT_VERSION);
    assert_eq!(v["rank"], 1);
    assert_eq!(v["reason"], "timeout");
    let e = &v["entries"][0];
    for key in [
        "record_id",
        "collective_seq_id",
        "profiling_name",
        "time_created_ns",
        "time_discovered_started_ns",
        "time_discovered_completed_ns",
        "duration_ms",
        "timeout_ms",
        "state",
    ] {
        assert!(e.get(key).is_some(), "entry lacks {key}: {e}");
    }
    assert_eq!(e["profiling_name"], "topoccl:all_reduce");
    assert_eq!(e["state"], "completed");
    assert_eq!(e["peers"], serde_json::json!({"count": 2, "ranks": [1, 3]}));
    assert_eq!(v["entries"][2]["state"], "failed");
    assert_eq!(v["entries"][2]["error"], "timeout: peer 2 silent");
    assert_eq!(v["entries"][3]["state"], "scheduled");
    assert_eq!(v["entries"][1]["root"], 0);
    assert!(v["entries"][0].get("root").is_none());
    Ok(())
}

#[test]
fn one_entry_a_line() {
    let d = sample();
    let json = d.to_json();
    let lines: Vec<&str> = json.lines().collect();
    let entry_lines: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("    {\"record_id\": "))
        .collect();
    assert_eq!(entry_lines.len(), d.entries.len(), "{json}");
    assert!(lines.contains(&"  \"rank\": 1,"), "{json}");
    assert_eq!(lines.last(), Some(&"}"));
    let empty = Ring::default().dump(meta(0)).to_json();
    assert!(empty.contains("\"entries\": []\n}"), "{empty}");
}

/// 1-based line and column of byte `at` in `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1);
    (line, column)
}

#[test]
fn corrupt_dump_names_file_line_and_column() {
    let json = sample().to_json();
    let at = json.find("\"state\"").unwrap_or(0);
    let mut bad = json.clone();
    bad.replace_range(at..at + 1, "#");
    match parse_err(&bad) {
        FlightError::Parse {
            source_name,
            line,
            column,
            what,
            ..
        } => {
            assert_eq!(source_name, "dumps/rank1.json");
            assert_eq!(what, "corrupt");
            let (l, c) = position(&bad, at);
            assert_eq!(line, l);
            assert_eq!(column, c + 1, "serde_json points at the bad character");
        }
        other => panic!("{other:?}"),
    }
    let msg = parse_err(&bad).to_string();
    assert!(msg.starts_with("dumps/rank1.json:"), "{msg}");
    assert!(!msg.contains(" at line "), "position given once: {msg}");
}

#[test]
fn truncated_dump_says_truncated_at_the_end() {
    let json = sample().to_json();
    let cut = &json[..json.len() * 2 / 3];
    match parse_err(cut) {
        FlightError::Parse { what, line, .. } => {
            assert_eq!(what, "truncated");
            assert_eq!(line, cut.lines().count());
        }
        other => panic!("{other:?}"),
    }
    assert!(parse_err("").to_string().contains("dumps/rank1.json:1:0"));
}

#[test]
fn malformed_field_is_named_with_position() {
    let json = sample()
        .to_json()
        .replace("\"rank\": 1,", "\"rank\": \"one\",");
    let (rank_line, _) = position(&json, json.find("\"one\"").unwrap_or(0));
    let err = parse_err(&json);
    let msg = err.to_string();
    assert!(
        matches!(err, FlightError::Parse { what: "malformed", line, .. } if line == rank_line),
        "{msg}"
    );
    assert!(msg.contains("dumps/rank1.json:"), "{msg}");
    let json = sample()
        .to_json()
        .replace("\"state\": \"completed\"", "\"state\": \"done\"");
    let msg = parse_err(&json).to_string();
    assert!(msg.contains("done") && msg.contains("completed"), "{msg}");
}

#[test]
fn wrong_version_and_foreign_json_are_refused_clearly() {
    let json = sample().to_json().replace(
        &format!("\"version\": \"{FORMAT_VERSION}\""),
        "\"version\": \"2.4\"",
    );
    let err = parse_err(&json);
    assert_eq!(
        err,
        FlightError::Version {
            source_name: "dumps/rank1.json".to_string(),
            found: "2.4".to_string(),
            supported: 1
        }
    );
    assert!(err.to_string().contains("1.x"), "{err}");
    // A minor bump (added fields) is read.
    let newer = sample()
        .to_json()
        .replace(
            &format!("\"version\": \"{FORMAT_VERSION}\""),
            "\"version\": \"1.7\"",
        )
        .replacen('{', "{\"added_later\": true,", 1);
    assert!(Dump::parse(&newer, "x").is_ok());

    let pytorch = r#"{"version": "2.4", "pg_config": {}, "entries": []}"#;
    let err = parse_err(pytorch);
    assert!(matches!(err, FlightError::NotADump { ref found, .. } if found == "missing"));
    assert!(err.to_string().contains("fr_trace"), "{err}");
}

#[test]
fn contradictory_fields_are_refused() {
    let mut d = sample();
    d.rank = 4;
    let err = Dump::parse(&d.to_json(), "r4.json").err();
    assert!(
        matches!(&err, Some(FlightError::Invalid { source_name, problem })
            if source_name == "r4.json" && problem.contains("rank 4") && problem.contains("world_size 4")),
        "{err:?}"
    );
    let mut d = sample();
    d.entries.swap(1, 2);
    let err = Dump::parse(&d.to_json(), "r1.json")
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("entries[2] has record_id 1 after 2")));
    let mut d = sample();
    d.capacity = 2;
    assert!(Dump::parse(&d.to_json(), "r1.json").is_err());
}

fn arb_call() -> impl Strategy<Value = Call> {
    (
        "[a-z_]{1,12}",
        prop::sample::select(vec!["f32", "bf16", "u8", "i64"]),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(0u32..64),
        ".{0,8}",
        prop::collection::vec(0u32..1024, 0..12),
        any::<u64>(),
    )
        .prop_map(
            |(name, dtype, count, size, root, algo, peers, timeout)| Call {
                root,
                algorithm: Cow::Owned(algo),
                peers: Peers::new(&peers),
                timeout_ms: timeout,
                ..Call::new(0, format!("topoccl:{name}"), dtype, count, size)
            },
        )
}

proptest! {
    /// Any recorded history reads back equal.
    #[test]
    fn any_ring_round_trips(
        capacity in 1usize..10,
        calls in prop::collection::vec((arb_call(), 0u8..4, 0u64..1 << 40, ".{0,20}"), 0..16),
    ) {
        let mut ring = Ring::new(capacity).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (seq, (mut c, fate, t, why)) in calls.into_iter().enumerate() {
            c.collective_seq_id = seq as u64 * 3;
            let id = ring.record_start(c, t);
            if fate >= 1 { ring.mark_started(id, t + 5); }
            if fate == 2 { ring.mark_completed(id, t + 12_345_678); }
            if fate == 3 { ring.mark_failed(id, t + 7, why); }
        }
        let d = ring.dump(meta(2));
        let back = Dump::parse(&d.to_json(), "p.json").map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Dump { source: String::new(), ..back }, d);
    }

    /// Every strict prefix of a dump is refused as truncated (or corrupt, inside a
    /// number or literal), naming the file, never a panic.
    #[test]
    fn every_prefix_is_refused(cut in 0usize..10_000) {
        let json = sample().to_json();
        let cut = cut % json.len();
        if json.is_char_boundary(cut) {
            let err = Dump::parse(&json[..cut], "cut.json");
            prop_assert!(err.is_err());
            let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
            prop_assert!(msg.starts_with("cut.json"), "{}", msg);
        }
    }
}
