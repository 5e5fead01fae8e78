//! Topology files in use: `topo show` / `validate`, `plan compare` (including the
//! 16,384-GPU acceptance case), `topo measure`, and a job that runs topology-aware plans
//! given by `TOPOCCL_TOPO` and gets right answers.

mod common;

use std::path::{Path, PathBuf};

use common::topoccl_env as topoccl;

fn example(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/topologies/").to_string() + name
}

fn scratch(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// Data rows of a compare table: (algorithm, aware, time ms, latency ms, verified).
fn rows(stdout: &[u8]) -> Vec<(String, bool, f64, f64, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("algorithm"))
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            let f = |i: usize| c[i].parse::<f64>().unwrap();
            (
                c[0].to_string(),
                c[1] == "yes",
                f(2),
                f(3),
                c[8].to_string(),
            )
        })
        .collect()
}

#[test]
fn the_16k_fat_tree_wants_a_topology_aware_plan() {
    let json = scratch("compare16k.json");
    let out = topoccl(
        &[
            "plan",
            "compare",
            "--topo",
            &example("fat-tree-16k.toml"),
            "--size",
            "16M",
            "--placement",
            "random",
            "--seed",
            "3",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let rows = rows(&out.stdout);
    let ring = rows
        .iter()
        .find(|r| r.0 == "ring")
        .expect("a flat ring row");
    assert!(ring.3 > 100.0, "flat ring latency term {} ms", ring.3);
    let best_aware = rows
        .iter()
        .filter(|r| r.1)
        .map(|r| r.2)
        .fold(f64::INFINITY, f64::min);
    assert!(
        ring.2 >= 10.0 * best_aware,
        "flat ring {} ms vs best topology-aware {best_aware} ms",
        ring.2
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["ranks"], 16384);
    assert_eq!(doc["rows"].as_array().unwrap().len(), rows.len());
}

#[test]
fn small_topologies_compare_with_verified_plans() {
    for file in ["dgx-pair.toml", "two-sites.toml"] {
        let out = topoccl(
            &["plan", "compare", "--topo", &example(file), "--size", "4M"],
            &[],
        );
        assert!(out.status.success());
        let rows = rows(&out.stdout);
        assert!(rows.len() >= 8, "{file}: {} rows", rows.len());
        assert!(rows.iter().all(|r| r.4 == "yes"), "{file}: unverified rows");
        assert!(
            rows[0].1,
            "{file}: the fastest plan should be topology-aware: {}",
            rows[0].0
        );
    }
}

#[test]
fn show_validate_and_their_errors() {
    let out = topoccl(&["topo", "show", &example("fat-tree-1k.toml")], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("1024 ranks"));
    for format in ["toml", "json", "dot"] {
        let path = scratch(&format!("show.{format}"));
        let out = topoccl(
            &[
                "topo",
                "show",
                &example("dgx-pair.toml"),
                "--format",
                format,
                "-o",
                path.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success());
        if format != "dot" {
            // What show writes reads back as the same topology.
            let out = topoccl(&["topo", "validate", path.to_str().unwrap()], &[]);
            assert!(String::from_utf8_lossy(&out.stdout).contains("16 ranks"));
        }
    }
    let bad = scratch("bad.toml");
    std::fs::write(&bad, "name = \"x\"\n[[node]]\nname = \"a\"\nkind = \"host\"\n[[node]]\nname = \"a\"\nkind = \"host\"\n").unwrap();
    let out = topoccl(&["topo", "validate", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":6:") && err.contains("duplicate node id 'a'"),
        "{err}"
    );
    let out = topoccl(&["plan", "compare", "--topo", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = topoccl(
        &[
            "plan",
            "compare",
            "--topo",
            &example("dgx-pair.toml"),
            "--size",
            "lots",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
}

/// A 4-rank job on one machine told (by a topology file) that its ranks sit on two hosts
/// with a slow link between them: the runtime runs the topology-aware plan it picks, and
/// every collective still computes right.
#[test]
fn a_job_runs_topology_aware_plans_from_a_file() {
    let topo = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../topo/tests/fixtures/two_hosts_slow_link.toml"
    ));
    let out = topoccl(
        &[
            "bench", "all", "-N", "4", "-b", "8", "-e", "1M", "-f", "32", "--iters", "2",
            "--warmup", "1", "--check",
        ],
        &[("TOPOCCL_TOPO", topo.to_str().unwrap())],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# 0 wrong elements in total"), "{stdout}");
    // Large all-reduces (the first table) go hierarchical: the model sees the slow cut
    // between the hosts.
    let big = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("262144 ") && l.contains(" -1 "))
        .expect("a 256 KiB all-reduce row");
    // Named by its label, as `plan compare` names it: hier(intra|top).
    let algo = big.split_whitespace().last().unwrap_or("");
    assert!(algo.starts_with("hier(") && algo.ends_with(')'), "{big}");
    let out = topoccl(
        &["bench", "allreduce", "-N", "3"],
        &[("TOPOCCL_TOPO", topo.to_str().unwrap())],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("places 4 ranks but this job has 3"));
}

#[test]
fn measure_saves_a_matrix_that_serves_as_a_topology() {
    let path = scratch("matrix.json");
    let out = topoccl(
        &["topo", "measure", "-n", "3", "-o", path.to_str().unwrap()],
        &[],
    );
    assert!(out.status.success());
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(m["bandwidth"].as_array().unwrap().len(), 3);
    assert!(m["bandwidth"][0][1].as_f64().unwrap() > 0.0);
    let out = topoccl(
        &[
            "bench",
            "allreduce",
            "-N",
            "3",
            "-b",
            "8",
            "-e",
            "64K",
            "-f",
            "64",
            "--iters",
            "2",
            "--check",
        ],
        &[("TOPOCCL_TOPO", path.to_str().unwrap())],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("# 0 wrong elements in total"));
}

#[test]
fn levels_of_unequal_size_are_named_where_hierarchies_are_offered() {
    // Five hosts of two GPUs under radix-8 leaves: racks of 2, 2 and 1 hosts.
    let topo = scratch("uneven-racks.toml");
    let gen = topoccl(
        &[
            "topo",
            "gen",
            "fat-tree",
            "--hosts",
            "5",
            "--gpus-per-host",
            "2",
            "--radix",
            "8",
            "-o",
            topo.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let note = "# note: the leaf level is left out of hierarchical plans: its 3 groups hold \
                2 × 4 and 1 × 2 ranks";
    let compare = topoccl(&["plan", "compare", "--topo", topo.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&compare.stdout);
    assert!(
        compare.status.success() && stdout.contains(note),
        "{stdout}"
    );
    // The hierarchy over hosts is still there, and the simulator says what it left out.
    assert!(rows(&compare.stdout)
        .iter()
        .any(|r| r.0.starts_with("hier(")));
    let sim = topoccl(
        &["sim", "--topo", topo.to_str().unwrap(), "--algo", "hier"],
        &[],
    );
    let stdout = String::from_utf8_lossy(&sim.stdout);
    assert!(sim.status.success() && stdout.contains(note), "{stdout}");
    std::fs::remove_file(&topo).ok();
}
