//! `topoccl tune`: predicted tables on a topology file, measured tables that a job then
//! loads through `TOPOCCL_RULES`, topology-aware labels in rules, and bad arguments.

mod common;

use std::path::{Path, PathBuf};

use common::topoccl_env as topoccl;

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tune-{name}-{}", std::process::id()))
}

fn rules(path: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn predicted_tune_writes_rules_from_zero() {
    let out_path = scratch("two-sites.json");
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/topologies/two-sites.toml"
    );
    let out = topoccl(
        &[
            "tune",
            "--topo",
            topo,
            "--collective",
            "allreduce,allgather",
            "-o",
            out_path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let r = rules(&out_path);
    for c in ["allreduce", "allgather"] {
        let mine: Vec<_> = r.iter().filter(|r| r["collective"] == c).collect();
        assert_eq!(mine[0]["min_bytes"], 0, "{c}");
        assert!(mine.last().unwrap().get("max_bytes").is_none(), "{c}");
        assert!(mine
            .iter()
            .all(|r| r["min_ranks"] == 64 && r["max_ranks"] == 64));
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("runner-up"));
}

#[test]
fn a_measured_table_drives_a_checked_bench() {
    let table = scratch("measured.json");
    let t = table.to_str().unwrap();
    let out = topoccl(
        &[
            "tune", "-n", "4", "-b", "8", "-e", "1M", "-f", "32", "--iters", "2", "-o", t,
        ],
        &[],
    );
    assert!(out.status.success());
    assert!(!rules(&table).is_empty());
    let out = topoccl(
        &[
            "bench",
            "allreduce",
            "-N",
            "4",
            "-b",
            "8",
            "-e",
            "1M",
            "-f",
            "32",
            "--iters",
            "2",
            "--warmup",
            "1",
            "--check",
        ],
        &[("TOPOCCL_RULES", t)],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("# 0 wrong elements in total"));
}

/// Four ranks on two hosts of two GPUs, a slow link between the hosts.
fn two_hosts() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topo/tests/fixtures/two_hosts_slow_link.toml"
    ))
}

#[test]
fn a_topology_aware_rule_needs_the_topology() {
    let rules_path = scratch("label.json");
    std::fs::write(
        &rules_path,
        r#"[{"collective":"allreduce","algo":"hier(ring|rd)","chunk_bytes":65536}]"#,
    )
    .unwrap();
    let r = rules_path.to_str().unwrap();
    let topo = two_hosts();
    let bench = [
        "bench",
        "allreduce",
        "-N",
        "4",
        "-b",
        "8",
        "-e",
        "256K",
        "-f",
        "64",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--check",
    ];
    let out = topoccl(
        &bench,
        &[
            ("TOPOCCL_RULES", r),
            ("TOPOCCL_TOPO", topo.to_str().unwrap()),
        ],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# 0 wrong elements in total"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l
            .split_whitespace()
            .last()
            .is_some_and(|a| a.starts_with("hier("))),
        "{stdout}"
    );
    // No file and no measured matrix: no topology.
    let out = topoccl(&bench, &[("TOPOCCL_RULES", r), ("TOPOCCL_PROBE", "0")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule 0")
            && stderr.contains("'hier(ring|rd)'")
            && stderr.contains("no topology"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2_naming_the_argument() {
    let o = scratch("bad.json");
    let o = o.to_str().unwrap();
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/topologies/two-sites.toml"
    );
    for (args, needle) in [
        (
            vec!["tune", "--topo", topo, "--collective", "allreduse", "-o", o],
            "--collective",
        ),
        (
            vec!["tune", "--topo", topo, "--collective", "barrier", "-o", o],
            "--collective",
        ),
        (
            vec!["tune", "--topo", topo, "--dtype", "f7", "-o", o],
            "--dtype",
        ),
        (vec!["tune", "--topo", topo, "-b", "1x", "-o", o], "-b"),
        (vec!["tune", "--topo", topo, "-f", "1", "-o", o], "-f"),
        (
            vec!["tune", "--topo", "/nonexistent.toml", "-o", o],
            "/nonexistent.toml",
        ),
        (vec!["tune", "-n", "0", "-o", o], "-n"),
        (vec!["tune", "--topo", topo], "--output"),
    ] {
        let out = topoccl(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
}
