//! `topoccl sim`: a plan over a topology file, with faults; bad faults explained.

mod common;

use common::topoccl;

fn example(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/topologies/").to_string() + name
}

/// The simulated time in ms from the report's `time … ms` line.
fn time_ms(stdout: &[u8]) -> f64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("time "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a time line")
}

/// `topoccl sim` of a 64 MiB all-reduce by the best hierarchy on `topo`, plus `extra`.
fn sim_hier(topo: &str, extra: &[&str]) -> std::process::Output {
    let args = ["sim", "--topo", topo, "--size", "64M", "--algo", "hier"];
    topoccl(&[&args[..], extra].concat())
}

#[test]
fn faults_change_the_time_and_cuts_are_named() {
    let topo = example("two-sites.toml");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (json, trace) = (dir.join("sim-report.json"), dir.join("sim-trace.json"));
    let base = sim_hier(
        &topo,
        &[
            "--json",
            json.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
        ],
    );
    assert!(base.status.success());
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    // The round slices tile the whole simulated time.
    let end = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["tid"] == 1)
        .map(|e| e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["ranks"], 64);
    assert!((end / 1e3 - time_ms(&base.stdout)).abs() < 1e-3 * time_ms(&base.stdout));
    let slow = sim_hier(
        &topo,
        &["--fault", "link:zone0/gateway-zone1/gateway:degrade=0.1"],
    );
    assert!(slow.status.success());
    assert!(time_ms(&slow.stdout) > 5.0 * time_ms(&base.stdout));
    let what_if = sim_hier(
        &topo,
        &[
            "--fault",
            "link:zone0/gateway-zone1/gateway:degrade=0.1",
            "--what-if",
        ],
    );
    assert!(String::from_utf8_lossy(&what_if.stdout).contains("what-if: without the faults"));
    let late = sim_hier(&topo, &["--straggler", "rank:5:delay=3ms"]);
    assert!((time_ms(&late.stdout) - time_ms(&base.stdout) - 3.0).abs() < 1e-3);
    let cut = topoccl(&[
        "sim",
        "--topo",
        &topo,
        "--fault",
        "link:zone0/gateway-zone1/gateway:down",
    ]);
    assert_eq!(cut.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cut.stderr).contains("zone0/gateway -> zone1/gateway"));
    for bad in [
        "link:zone0/gateway-nowhere:down",
        "link:0:degrade=3",
        "rank:x:delay=1ms",
    ] {
        let out = topoccl(&["sim", "--topo", &topo, "--fault", bad]);
        assert!(!out.status.success(), "{bad}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("panicked"),
            "{bad}"
        );
    }
    let out = topoccl(&["sim", "--topo", &topo, "--memory-cap", "100KiB"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the cap of 0.1 MiB"));
    let out = topoccl(&["sim", "--topo", &topo, "--algo", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn choosing_the_algorithm_respects_the_memory_cap_before_it_starts() {
    // Pricing every candidate for 131,072 ranks took over 6 GiB and 2 minutes before the
    // cap was looked at; now the cap is checked first, as for a named algorithm.
    let topo = example("fat-tree-128k.toml");
    let t = std::time::Instant::now();
    let out = topoccl(&[
        "sim",
        "--topo",
        &topo,
        "--algo",
        "auto",
        "--memory-cap",
        "50M",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("above the cap of 50.0 MiB"));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn chunk_level_checks_the_flow_level() {
    let topo = example("two-sites.toml");
    let sim = |extra: &[&str]| {
        let mut args = vec!["sim", "--topo", &topo, "--size", "16M", "--algo", "hier"];
        args.extend_from_slice(extra);
        topoccl(&args)
    };
    let flow = sim(&[]);
    assert!(String::from_utf8_lossy(&flow.stdout).contains(", flow level\n"));
    let chunk = sim(&["--chunk-level"]);
    assert!(chunk.status.success());
    assert!(String::from_utf8_lossy(&chunk.stdout).contains(", chunk level, adaptive chunks\n"));
    let ratio = time_ms(&chunk.stdout) / time_ms(&flow.stdout);
    assert!((ratio - 1.0).abs() < 0.05, "{ratio}");
    let fixed = sim(&["--chunk-level", "--chunk", "256KiB"]);
    assert!(String::from_utf8_lossy(&fixed.stdout).contains(", chunk level, 256 KiB chunks\n"));
    let huge = sim(&["--chunk-level", "--chunk", "1"]);
    assert_eq!(huge.status.code(), Some(1));
    let e = String::from_utf8_lossy(&huge.stderr);
    assert!(
        e.contains("above the limit of 50000000") && e.contains("bigger --chunk size"),
        "{e}"
    );
    assert_eq!(sim(&["--chunk", "64KiB"]).status.code(), Some(2));
    assert_eq!(
        sim(&["--chunk-level", "--chunk", "0"]).status.code(),
        Some(2)
    );
}

#[test]
fn pipelined_timing_is_reported_beside_the_barrier_time() {
    let topo = example("fat-tree-1k.toml");
    let out = topoccl(&["sim", "--topo", &topo, "--algo", "ring", "--pipelined"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let piped: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("pipelined "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a pipelined line");
    // A ring's steps wait only for their neighbour, not for the slowest hop of each step.
    assert!(piped > 0.0 && piped < time_ms(&out.stdout), "{text}");
    let both = topoccl(&["sim", "--topo", &topo, "--pipelined", "--chunk-level"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn plans_can_be_simulated_pipelined_in_pieces() {
    let topo = example("fat-tree-1k.toml");
    let run = |chunks: &str| {
        let out = topoccl(&[
            "sim",
            "--topo",
            &topo,
            "--collective",
            "broadcast",
            "--size",
            "64M",
            "--algo",
            "ring",
            "--pipeline-chunks",
            chunks,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        time_ms(&out.stdout)
    };
    // A chain moving the whole buffer hop by hop against one cut in 64 pieces.
    let (whole, pieces) = (run("1"), run("64"));
    assert!(
        pieces < whole / 10.0,
        "whole {whole} ms, in pieces {pieces} ms"
    );
    let zero = topoccl(&["sim", "--topo", &topo, "--pipeline-chunks", "0"]);
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn a_reader_that_goes_away_ends_the_report_quietly() {
    // `topoccl sim … | head -1`: the report outlives its reader.
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args([
            "sim",
            "--topo",
            &example("fat-tree-16k.toml"),
            "--size",
            "16M",
        ])
        .args(["--algo", "rhd"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start topoccl sim");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('#'), "{first}");
    child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
}
