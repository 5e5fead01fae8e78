//! `topoccl sim` beyond one plan's shape: skewed all-to-all-v traffic, in-network
//! reduction, fail-stop interruptions, and topologies whose ranks cannot all meet.

mod common;

use std::path::{Path, PathBuf};

use common::topoccl;

fn example(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/topologies/").to_string() + name
}

fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The number after `prefix` on the first line that starts with it.
fn number(out: &std::process::Output, prefix: &str) -> f64 {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no '{prefix}' line"))
}

fn sim(args: &[&str]) -> std::process::Output {
    topoccl(&[&["sim"], args].concat())
}

/// 8 one-GPU hosts on a 2-tier fat-tree of 100 Gbps links whose switches all reduce;
/// PCIe is fast, so the network links are the bottleneck.
fn sharp_fat_tree() -> String {
    let path = tmp("sharp-fat-tree.toml");
    let out = topoccl(&[
        "topo",
        "gen",
        "fat-tree",
        "--hosts",
        "8",
        "--radix",
        "4",
        "--gpus-per-host",
        "1",
        "--bandwidth",
        "100Gbps",
        "--pcie-bandwidth",
        "1000GB/s",
        "--in-network-reduction",
        "-o",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("in_network_reduction = true"));
    path.to_str().unwrap().to_string()
}

#[test]
fn skewed_all_to_all_v_is_slower_than_an_even_one_of_the_same_total() {
    let topo = sharp_fat_tree();
    let run = |skew: &str| {
        let out = sim(&[
            "--topo",
            &topo,
            "--collective",
            "alltoallv",
            "--skew",
            skew,
            "--size",
            "64M",
            "--seed",
            "5",
            "--algo",
            "pairwise",
        ]);
        assert!(out.status.success());
        assert!(stdout(&out).contains("# seed: 5"));
        assert!(stdout(&out).contains("# traffic: 64.00 MiB in all"));
        out
    };
    let (even, hot) = (run("0"), run("1.2"));
    assert!(stdout(&even).contains("(1.00× the mean)"));
    assert!(number(&hot, "time ") > 1.5 * number(&even, "time "));
    assert_eq!(stdout(&run("1.2")), stdout(&hot));
    // The same even matrix from a file: 64 MiB over 8×8 pairs, 1 MiB each.
    let file = tmp("even.csv");
    let row = ["1MiB"; 8].join(", ");
    std::fs::write(
        &file,
        format!("# bytes, row to column\n{}\n", vec![row; 8].join("\n")),
    )
    .unwrap();
    let from_file = sim(&[
        "--topo",
        &topo,
        "--collective",
        "alltoallv",
        "--traffic",
        file.to_str().unwrap(),
        "--algo",
        "pairwise",
    ]);
    assert!(from_file.status.success());
    assert_eq!(number(&from_file, "time "), number(&even, "time "));
}

#[test]
fn traffic_files_are_checked_at_their_line_and_column() {
    let topo = sharp_fat_tree();
    let row = |cells: &[&str]| cells.join(" ");
    let good = row(&["4"; 8]);
    let cases: [(String, &str); 4] = [
        (
            format!("{good}\n4 4 4 lots 4 4 4 4\n"),
            ":2:7: 'lots' is not a byte count",
        ),
        (
            format!("{good}\n4 4\n"),
            ":2:1: row 1 has 2 entries; expected 8",
        ),
        (
            format!("{good}\n{good}\n"),
            ":2: 2 rows; expected 8, one per sending rank (the topology places 8 ranks)",
        ),
        (
            format!("{good}\n4 4 4 4 4 4 4 3\n"),
            ":2:15: 3 bytes is not a whole number of f32 elements",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = tmp(&format!("bad-traffic-{i}.txt"));
        std::fs::write(&file, text).unwrap();
        let path = file.to_str().unwrap();
        let out = sim(&[
            "--topo",
            &topo,
            "--collective",
            "alltoallv",
            "--traffic",
            path,
        ]);
        assert_eq!(out.status.code(), Some(2), "{want}");
        assert!(stderr(&out).contains(&format!("{path}{want}")), "{want}");
    }
    for (args, want) in [
        (&["--collective", "alltoallv"][..], "--traffic FILE"),
        (&["--skew", "1"][..], "add --collective alltoallv"),
        (
            &["--collective", "alltoallv", "--skew", "-1"][..],
            "Zipf exponent",
        ),
        (
            &["--collective", "alltoallv", "--traffic", "/nonexistent.csv"][..],
            "cannot read --traffic /nonexistent.csv",
        ),
    ] {
        let out = sim(&[&["--topo", &topo][..], args].concat());
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}");
    }
}

#[test]
fn in_network_all_reduce_reaches_twice_the_ring_bus_bandwidth() {
    let topo = sharp_fat_tree();
    let run = |algo: &str| {
        let out = sim(&["--topo", &topo, "--size", "1G", "--algo", algo]);
        assert!(out.status.success(), "{algo}");
        out
    };
    let (ring, innet, auto) = (run("ring"), run("innet"), run("auto"));
    // Each rank's link carries n up and n down at once: time n/B, so busbw =
    // n/t · 2(p−1)/p = B · 2·7/8 = 21.875 GB/s, where a ring stays below B = 12.5.
    let busbw = number(&innet, "busbw ");
    assert!((busbw - 21.875).abs() < 0.05, "{busbw}");
    assert!(number(&ring, "busbw ") < 12.5);
    assert!(number(&innet, "time ") * 1.7 < number(&ring, "time "));
    assert!(stdout(&innet).contains("not a plan"));
    assert!(stdout(&innet).contains("plan innet (root spine0)"));
    assert_eq!(stdout(&auto), stdout(&innet));
    for (args, want) in [
        (
            vec!["--topo".to_string(), example("two-sites.toml")],
            "no switch in 'two-sites' reduces in the network",
        ),
        (
            vec![
                "--topo".to_string(),
                topo.clone(),
                "--collective".into(),
                "broadcast".into(),
            ],
            "not broadcast",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sim(&[&args[..], &["--algo", "innet"]].concat());
        assert_eq!(out.status.code(), Some(2), "{want}");
        assert!(stderr(&out).contains("--algo innet: "), "{want}");
        assert!(stderr(&out).contains(want), "{want}");
    }
}

#[test]
fn failures_follow_the_rate_and_the_seed() {
    let args = |seed: &str| {
        vec![
            "sim",
            "failures",
            "--devices",
            "16384",
            "--rate",
            "1e-5",
            "--hours",
            "720",
            "--seed",
            seed,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let draw = |seed: u64| {
        let a = args(&seed.to_string());
        let out = topoccl(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success());
        assert!(stdout(&out).contains(&format!("# seed: {seed}\n")));
        out
    };
    let first = draw(11);
    assert_eq!(number(&first, "expected interruptions "), 117.96);
    assert_eq!(stdout(&draw(11)), stdout(&first));
    assert_ne!(stdout(&draw(12)), stdout(&first));
    assert!(stdout(&first).contains("(one every 6.104 h)"));
    // 30 runs of a Poisson count with mean 117.96: the mean's deviation is about 2.
    let mean = (0..30)
        .map(|s| number(&draw(s), "drawn interruptions "))
        .sum::<f64>()
        / 30.0;
    assert!((mean - 117.96).abs() < 8.0, "{mean}");
    let topo = example("dgx-pair.toml");
    let named = topoccl(&[
        "sim", "failures", "--topo", &topo, "--rate", "0.5", "--hours", "10", "--seed", "3",
    ]);
    assert!(named.status.success());
    assert!(stdout(&named).contains("# 16 devices"));
    assert!(stdout(&named).contains(" on h1/gpu") || stdout(&named).contains(" on h0/gpu"));
    assert!(stdout(&named).contains("(host h"));
    for (bad, want) in [
        (
            vec!["--devices", "8", "--rate", "0", "--hours", "1"],
            "positive number of failures",
        ),
        (
            vec!["--devices", "8", "--rate", "1e-5", "--hours", "-2"],
            "positive number of hours",
        ),
        (
            vec!["--devices", "0", "--rate", "1e-5", "--hours", "2"],
            "no devices",
        ),
        (
            vec!["--rate", "1e-5", "--hours", "2"],
            "--devices N, or --topo FILE",
        ),
        (
            vec![
                "--topo",
                &topo,
                "--devices",
                "5",
                "--rate",
                "1e-5",
                "--hours",
                "2",
            ],
            "the topology places 16 ranks",
        ),
    ] {
        let out = topoccl(&[&["sim", "failures"][..], &bad].concat());
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr(&out).contains(want), "{bad:?}");
    }
}

#[test]
fn ranks_that_cannot_reach_each_other_are_refused_not_simulated() {
    let node = |name: &str, kind: &str| format!("[[node]]\nname = \"{name}\"\nkind = \"{kind}\"\n");
    let link = |a: &str, b: &str, directed: bool| {
        format!(
            "[[link]]\na = \"{a}\"\nb = \"{b}\"\nbandwidth = \"10Gbps\"\nlatency = \"1us\"\n\
             directed = {directed}\n"
        )
    };
    let head = format!(
        "ranks = [\"a\", \"b\", \"c\"]\n{}{}{}{}{}{}",
        node("sw", "switch"),
        node("a", "host"),
        node("b", "host"),
        node("c", "host"),
        link("a", "sw", false),
        link("b", "sw", false)
    );
    // c has no link at all; then c only sends (a directed link toward the switch).
    for (extra, want) in [
        (
            String::new(),
            "disconnected ranks: rank 2 (on 'c') cannot be reached from rank 0",
        ),
        (
            link("c", "sw", true),
            "disconnected ranks: rank 2 (on 'c') cannot be reached from rank 0",
        ),
    ] {
        let file = tmp("cut-off.toml");
        std::fs::write(&file, format!("{head}{extra}")).unwrap();
        let out = sim(&["--topo", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        let e = stderr(&out);
        assert!(e.contains(want) && e.contains("cut-off.toml:1:"), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}
