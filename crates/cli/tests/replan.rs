//! The closed loop, end to end: 4 ranks on two modelled racks run a long all-reduce loop
//! (every result checked); mid-run every link between the racks is throttled by fault
//! injection. The ranks whose links slow down raise congestion alerts, ask for a re-plan
//! on their frames, and every rank re-plans after the same call, with the trunk of the
//! model lowered; the job goes on and finishes with correct results.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

mod common;
use common::free_port;

/// Two racks joined by one trunk; ranks alternate racks (rank 0 rack 0, rank 1 rack 1, …).
const RACKS: &str = r#"
name = "two-racks"
ranks = ["h0", "h2", "h1", "h3"]

[[node]]
name = "leaf0"
kind = "switch"
tier = "leaf"

[[node]]
name = "leaf1"
kind = "switch"
tier = "leaf"

[[link]]
a = "leaf0"
b = "leaf1"
bandwidth = "8Gbps"
latency = "20us"
"#;

fn topology_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = RACKS.to_string();
    for h in 0..4 {
        text.push_str(&format!(
            "\n[[node]]\nname = \"h{h}\"\nkind = \"host\"\nzone = \"rack{}\"\n\n[[link]]\na = \"h{h}\"\nb = \"leaf{}\"\nbandwidth = \"8Gbps\"\nlatency = \"20us\"\n",
            h / 2,
            h / 2
        ));
    }
    let path = dir.join("racks.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_rank_replans_at_the_same_call_around_a_slowed_trunk() {
    let dir = std::env::temp_dir().join(format!("topoccl-replan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = topology_file(&dir);
    // Ranks 0 and 2 are in rack 0, 1 and 3 in rack 1: every pair across is throttled once
    // 16 MB have left on it (links first used later are slow from their first byte).
    let mut faults = Vec::new();
    for a in [0, 2] {
        for b in [1, 3] {
            faults.push(format!("rate=15MB/s@{a}->{b}:after=16MB"));
            faults.push(format!("rate=15MB/s@{b}->{a}:after=16MB"));
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["run", "-n", "4", "--timeout", "150s", "--metrics"])
        .arg(free_port().to_string())
        .args([
            "--",
            env!("CARGO_BIN_EXE_topoccl"),
            "internal",
            "allreduce-loop",
        ])
        .args(["--count", "262144", "--iters", "100"])
        .env("TOPOCCL_TOPO", &topo)
        .env("TOPOCCL_TRANSPORT", "tcp")
        .env("TOPOCCL_FAULTS", faults.join(";"))
        .env("TOPOCCL_LOG", "warn")
        .env_remove("TOPOCCL_ALGO")
        .env_remove("TOPOCCL_RULES")
        .env_remove("TOPOCCL_REPLAN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the job");
    let _ = std::fs::remove_dir_all(&dir);
    let log = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the job failed:\n{log}\n{stdout}");
    // Every rank checked all 100 results.
    assert_eq!(
        stdout.matches("iteration 99 done").count(),
        4,
        "{stdout}\n{log}"
    );
    // "rank R: re-plan after call #N (asked by …): links lowered: …"
    let mut first: BTreeMap<u32, u64> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("re-plan after call #")) {
        let rank: u32 = line
            .split("rank ")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rank in {line}"));
        let call: u64 = line
            .split("re-plan after call #")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no call in {line}"));
        first.entry(rank).or_insert(call);
    }
    assert_eq!(first.len(), 4, "every rank re-plans:\n{log}");
    let calls: Vec<u64> = first.values().copied().collect();
    assert!(
        calls.iter().all(|&c| c == calls[0]),
        "at the same call: {first:?}\n{log}"
    );
    let replan = log
        .lines()
        .find(|l| l.contains("re-plan after call #") && l.contains("links lowered"))
        .unwrap_or_else(|| panic!("a re-plan lowers links:\n{log}"));
    assert!(
        replan.contains("leaf0 -> leaf1") || replan.contains("leaf1 -> leaf0"),
        "the trunk is the link lowered: {replan}"
    );
}
