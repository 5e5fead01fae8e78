//! `topoccl bench`: the nccl-tests layout, `--check` against the reference executor,
//! JSON output, running inside another launcher, and clear errors on bad input.

mod common;

use common::topoccl;

/// The data rows (not `#` comments) of a bench table, split into columns.
fn rows(stdout: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[test]
fn allreduce_sweep_is_checked_and_written_as_json() {
    let json = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-rows-{}.json", std::process::id()));
    let json_arg = json.to_str().unwrap();
    let out = topoccl(&[
        "bench",
        "allreduce",
        "-N",
        "3",
        "-b",
        "8",
        "-e",
        "1M",
        "-f",
        "8",
        "--iters",
        "2",
        "--warmup",
        "1",
        "--check",
        "--json",
        json_arg,
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for col in [
        "size", "count", "type", "redop", "root", "algbw", "busbw", "#wrong",
    ] {
        assert!(stdout.contains(col), "missing column {col}");
    }
    assert!(stdout.contains("# 0 wrong elements in total"));
    let rows = rows(&out.stdout);
    // 8 B, 64 B, 512 B, 4 KiB, 32 KiB, 256 KiB (and 2 MiB > 1 MiB is not run).
    let sizes: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(sizes, [8, 64, 512, 4096, 32768, 262144]);
    for r in &rows {
        // size count type redop root | time algbw busbw #wrong | same in place | algo
        assert_eq!(r.len(), 14, "row {r:?}");
        assert_eq!(
            r[1].parse::<u64>().unwrap() * 4,
            r[0].parse::<u64>().unwrap()
        );
        assert_eq!(r[2], "float");
        assert_eq!(r[3], "sum");
        assert_eq!(r[4], "-1");
        assert_eq!(r[8], "0");
        assert_eq!(r[12], "0");
        let time: f64 = r[5].parse().unwrap();
        let algbw: f64 = r[6].parse().unwrap();
        let busbw: f64 = r[7].parse().unwrap();
        assert!(time > 0.0);
        // All-reduce's bus factor with 3 ranks is 2·2/3 (printed to two decimals).
        assert!((busbw - algbw * 4.0 / 3.0).abs() <= 0.011, "row {r:?}");
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let list = parsed.as_array().unwrap();
    assert_eq!(list.len(), rows.len());
    assert_eq!(list[0]["ranks"], 3);
    assert_eq!(list[0]["out_of_place"]["wrong"], 0);
    let _ = std::fs::remove_file(&json);
}

#[test]
fn all_collectives_with_a_forced_dtype_and_root() {
    let out = topoccl(&[
        "bench", "all", "-N", "2", "-b", "1K", "-e", "2K", "-d", "bf16", "-o", "max", "-r", "1",
        "--iters", "1", "--warmup", "0", "--check",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for c in [
        "allreduce",
        "allgather",
        "reducescatter",
        "broadcast",
        "reduce",
        "alltoall",
        "gather",
        "scatter",
    ] {
        assert!(
            stdout.contains(&format!("# topoccl bench {c}: 2 ranks")),
            "no table for {c}"
        );
    }
    let rows = rows(&out.stdout);
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|r| r[2] == "bfloat16"));
    // Rooted collectives print their root; the others -1.
    assert!(rows.iter().any(|r| r[4] == "1"));
    // The reduction where there is one, `none` elsewhere (as nccl-tests prints).
    let redops: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(
        redops.iter().filter(|&&o| o == "max").count(),
        6,
        "{redops:?}"
    );
    assert_eq!(
        redops.iter().filter(|&&o| o == "none").count(),
        10,
        "{redops:?}"
    );
    assert!(stdout.contains("# 0 wrong elements in total"));
}

#[test]
fn runs_inside_an_existing_launcher() {
    let exe = env!("CARGO_BIN_EXE_topoccl");
    let out = topoccl(&[
        "run",
        "-n",
        "2",
        "--",
        exe,
        "bench",
        "broadcast",
        "-b",
        "4K",
        "-e",
        "4K",
        "--iters",
        "2",
        "--check",
        "--algo",
        "broadcast:binomial",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Under `topoccl run` the table comes from rank 0 with its prefix; the world is the
    // launcher's (2), not bench's default of 4.
    assert!(stdout.contains("broadcast: 2 ranks"), "{stdout}");
    assert!(stdout.contains("binomial"));
    assert!(stdout.contains("0 wrong elements in total"));
}

#[test]
fn bad_arguments_are_usage_errors() {
    for (args, needle) in [
        (
            &["bench", "barrier", "-N", "2"][..],
            "one buffer size per row, which barrier does not have",
        ),
        (
            &["bench", "alltoallv", "-N", "2"][..],
            "it measures allreduce, allgather",
        ),
        // An unknown name lists what bench measures, `all` included.
        (&["bench", "allredux", "-N", "2"][..], "scatter or all"),
        (
            &["bench", "allreduce", "-N", "2", "-b", "1M", "-e", "1K"][..],
            "-b ≤ -e",
        ),
        (&["bench", "allreduce", "-N", "2", "-f", "1"][..], "-f ≥ 2"),
        (&["bench", "allreduce", "-N", "2", "-d", "f128"][..], "f128"),
        (&["bench", "frobnicate", "-N", "2"][..], "frobnicate"),
        (&["bench", "allreduce", "-N", "0"][..], "rank"),
        // nccl-tests' GPU options name what to use instead.
        (
            &["bench", "allreduce", "-g", "8"][..],
            "give their number with -N",
        ),
        (&["bench", "allreduce", "-c", "2"][..], "not 0 or 1"),
        (&["bench", "allreduce", "-a", "4"][..], "-a"),
        // A root outside the world is refused before any rank starts.
        (
            &["bench", "broadcast", "-N", "2", "-r", "5", "-e", "8"][..],
            "-r 5 is out of range for -N 2",
        ),
    ] {
        let out = topoccl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn nccl_tests_spellings_and_output() {
    // -np as mpirun, -n iterations, -w warm-up, -c 0 (no #wrong), -a 3.
    let out = topoccl(&[
        "bench", "alltoall", "-np", "3", "-n", "3", "-w", "1", "-c", "0", "-a", "3", "-b", "1K",
        "-e", "2K",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "# topoccl bench alltoall: 3 ranks, iters 3 warmup 1, time: the slowest rank's mean, \
             check 0, algorithm chosen by cost per size"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("in-place columns are -"), "{stdout}");
    assert!(stdout.contains("   none "), "{stdout}");
    assert!(stdout.contains("N/A"), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("# Avg bus bandwidth    : "),
        "{stdout}"
    );
    // Checking is on by default, as in nccl-tests; rules are named in the header.
    let out = common::topoccl_env(
        &["bench", "allreduce", "-N", "2", "-n", "2", "-e", "64"],
        &[(
            "TOPOCCL_RULES",
            r#"[{"collective":"allreduce","algo":"ring"}]"#,
        )],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 wrong elements in total"), "{stdout}");
    assert!(
        stdout.contains("algorithm from TOPOCCL_RULES (inline JSON) where a rule matches"),
        "{stdout}"
    );
}

#[test]
fn every_collective_is_right_over_shared_memory_only() {
    let out = common::topoccl_env(
        &[
            "bench", "all", "-N", "4", "-b", "8", "-e", "256K", "-f", "32", "--iters", "2",
            "--check",
        ],
        &[("TOPOCCL_TRANSPORT", "shm")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("# transport: same host shm (12 directed pairs); other hosts none"),
        "{stdout}"
    );
    let rows = rows(&out.stdout);
    assert!(rows.len() >= 8, "{stdout}");
    for row in &rows {
        // #wrong out of place and in place (the 9th and 13th columns; `-` where a
        // collective has no in-place form).
        assert_eq!(row[8], "0", "{row:?}");
        assert!(row[12] == "0" || row[12] == "-", "{row:?}");
    }
}

#[test]
fn bad_transport_settings_are_clear_errors() {
    for (key, value, needle) in [
        ("TOPOCCL_FAULTS", "delay=5ms@rank1->x", "character"),
        ("TOPOCCL_FAULTS", "explode@1", "explode"),
        ("TOPOCCL_TRANSPORT", "carrier-pigeon", "carrier-pigeon"),
        ("TOPOCCL_SHM_RING", "1K", "TOPOCCL_SHM_RING"),
    ] {
        let out = common::topoccl_env(
            &["bench", "allreduce", "-N", "2", "-e", "8", "--iters", "1"],
            &[(key, value)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(needle),
            "{key}={value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{key}={value}: {stderr}");
    }
}

#[test]
fn time_split_shows_every_rank_under_every_row() {
    let json = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-split-{}.json", std::process::id()));
    let out = topoccl(&[
        "bench",
        "allreduce",
        "-N",
        "2",
        "-b",
        "64K",
        "-e",
        "1M",
        "-f",
        "16",
        "--iters",
        "3",
        "--time-split",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let splits: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("#   split rank"))
        .collect();
    // Two sizes × two ranks, each rank named, each part in microseconds.
    assert_eq!(splits.len(), 4, "{stdout}");
    for (i, line) in splits.iter().enumerate() {
        assert!(
            line.starts_with(&format!("#   split rank {} per call: copy ", i % 2)),
            "{line}"
        );
        for part in ["copy", "reduce", "wait", "other"] {
            assert!(
                line.contains(&format!(", {part} ")) || line.contains(&format!(": {part} ")),
                "{line}"
            );
        }
    }
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    for row in rows.as_array().unwrap() {
        let split = row["split"].as_array().expect("a split per row");
        assert_eq!(split.len(), 2, "{row}");
        for s in split {
            // An all-reduce of 64 KiB or more moves bytes and reduces them on every rank.
            assert!(s["copy_us"].as_f64().unwrap() > 0.0, "{s}");
            assert!(s["reduce_us"].as_f64().unwrap() > 0.0, "{s}");
        }
    }
}

#[test]
fn compressed_allreduce_is_timed_beside_the_plain_one() {
    let json = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-compress-{}.json", std::process::id()));
    let out = topoccl(&[
        "bench",
        "allreduce",
        "-N",
        "2",
        "-b",
        "64K",
        "-e",
        "64K",
        "-n",
        "3",
        "-w",
        "1",
        "--compress",
        "int8",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &rows[0];
    assert_eq!(row["size_bytes"], 65536);
    assert_eq!(row["codec"], "int8");
    let wire = row["wire_bytes"].as_u64().unwrap();
    assert!(wire * 3 < 65536, "int8 sends about a quarter: {row}");
    assert!(row["rel_error"].as_f64().unwrap() < 0.01, "{row}");
    assert!(row["plain_time_us"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(&json);
    // Refused before any rank starts: an unknown codec (the choices listed), and a
    // collective other than all-reduce.
    let bad = topoccl(&["bench", "allreduce", "--compress", "zip"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("int8"));
    let bad = topoccl(&["bench", "allgather", "--compress", "int8"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("allreduce"));
}
