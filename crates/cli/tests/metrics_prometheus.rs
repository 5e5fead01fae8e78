//! A job's metrics scraped by a real Prometheus server: `topoccl run --metrics ADDR`
//! serves every rank's metrics at one address; Prometheus (Debian's `prometheus`
//! package) scrapes it every second, and its query API must return every rank's series.
//! The text also passes `promtool check metrics`. Says SKIP without `prometheus`.

use std::net::SocketAddr;

mod common;
use common::{free_port, Stopped};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use topoccl::metrics::{http_get, PROMETHEUS_TEXT};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The Prometheus query API's answer for `query`, as JSON.
fn query(prometheus: SocketAddr, query: &str) -> serde_json::Value {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    http_get(
        prometheus,
        &format!("/api/v1/query?query={q}"),
        "application/json",
        Duration::from_secs(5),
    )
    .ok()
    .and_then(|body| serde_json::from_str(&body).ok())
    .unwrap_or(serde_json::Value::Null)
}

/// The `rank` labels of a query's series whose value satisfies `pred`.
fn ranks_where(v: &serde_json::Value, pred: impl Fn(f64) -> bool) -> Vec<String> {
    let mut ranks: Vec<String> = v["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["value"][1]
                .as_str()
                .and_then(|x| x.parse::<f64>().ok())
                .is_some_and(&pred)
        })
        .filter_map(|s| s["metric"]["rank"].as_str().map(str::to_string))
        .collect();
    ranks.sort();
    ranks.dedup();
    ranks
}

#[test]
fn prometheus_scrapes_a_running_job() {
    if !have("prometheus") {
        eprintln!("SKIP: `prometheus` is not installed (apt-get install prometheus)");
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let job_addr = free_port();
    // A job that runs until stopped: a long benchmark of small all-reduces.
    let job = Stopped(
        Command::new(env!("CARGO_BIN_EXE_topoccl"))
            .args(["run", "-n", "2", "--timeout", "120s", "--metrics"])
            .arg(job_addr.to_string())
            .args(["--", env!("CARGO_BIN_EXE_topoccl"), "bench", "allreduce"])
            .args(["-b", "8", "-e", "64K", "-n", "1000000", "-w", "1"])
            .env_remove("TOPOCCL_ALGO")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the job"),
    );
    let prom_addr = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: topoccl\n    static_configs:\n      \
             - targets: ['{job_addr}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Stopped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let both = vec!["0".to_string(), "1".to_string()];
    let (mut calls, mut up) = (vec![], vec![]);
    while Instant::now() < deadline {
        calls = ranks_where(&query(prom_addr, "topoccl_collectives_total"), |v| v > 0.0);
        up = ranks_where(&query(prom_addr, "topoccl_rank_up"), |v| v == 1.0);
        if calls == both && up == both {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(calls, both, "every rank's calls reach Prometheus");
    assert_eq!(up, both, "every rank's endpoint answers the launcher");
    let scraped = query(prom_addr, "up{job=\"topoccl\"}");
    assert_eq!(scraped["data"]["result"][0]["value"][1], "1", "{scraped}");
    // Histograms arrive with their buckets, under bounded labels.
    let buckets = query(
        prom_addr,
        "sum by (size) (topoccl_collective_duration_seconds_bucket{le=\"+Inf\"})",
    );
    let sizes: Vec<&str> = buckets["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["metric"]["size"].as_str())
        .collect();
    assert!(
        !sizes.is_empty() && sizes.iter().all(|s| s.ends_with('B')),
        "{sizes:?}"
    );

    // The text a plain client gets passes promtool's lint.
    let text = http_get(job_addr, "/metrics", "text/plain", Duration::from_secs(5)).unwrap();
    assert!(
        text.contains("topoccl_oldest_call_in_flight_seconds{rank=\"1\"}"),
        "{text}"
    );
    if have("promtool") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The job's flight recorders on request: one dump per rank's communicator.
    let flight = http_get(
        job_addr,
        "/flight",
        "application/json",
        Duration::from_secs(5),
    )
    .unwrap();
    let dumps: Vec<serde_json::Value> = serde_json::from_str(&flight).expect("a JSON array");
    let mut ranks: Vec<u64> = dumps.iter().filter_map(|d| d["rank"].as_u64()).collect();
    ranks.sort();
    assert_eq!(ranks, [0, 1], "{flight}");
    for d in &dumps {
        let parsed = topoccl::FlightDump::parse(&d.to_string(), "/flight").expect("a valid dump");
        assert_eq!(parsed.reason, topoccl::DumpReason::Request);
        assert!(!parsed.entries.is_empty());
    }
    // Another path is a 404; the content type says which format was sent.
    assert!(http_get(job_addr, "/nope", "text/plain", Duration::from_secs(5)).is_err());
    assert!(PROMETHEUS_TEXT.starts_with("text/plain; version=0.0.4"));
    drop(job);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The alerting rules shipped in deploy/prometheus pass `promtool check rules`, and their
/// unit tests (`promtool test rules`: each alert fires on its series, and only then) pass.
#[test]
fn shipped_alerting_rules_check_and_pass_their_tests() {
    if !have("promtool") {
        eprintln!("SKIP: `promtool` is not installed (apt-get install prometheus)");
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [
        ["check", "rules", "topoccl-rules.yml"],
        ["test", "rules", "topoccl-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A 2-rank all-reduce loop of `size` with metrics on and `faults` injected, its stderr
/// collected by the returned thread (until the job is stopped).
fn watched_job(
    faults: &str,
    size: &str,
) -> (SocketAddr, Stopped, std::thread::JoinHandle<Vec<String>>) {
    let job_addr = free_port();
    let job = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["run", "-n", "2", "--timeout", "120s", "--metrics"])
        .arg(job_addr.to_string())
        .args(["--", env!("CARGO_BIN_EXE_topoccl"), "bench", "allreduce"])
        .args(["-b", size, "-e", size, "-n", "100000", "-w", "1", "-c", "0"])
        .env("TOPOCCL_FAULTS", faults)
        .env_remove("TOPOCCL_ALGO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the job");
    let mut job = Stopped(job);
    let stderr = job.0.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    (job_addr, job, lines)
}

/// The job's metrics once they contain `needle`, or as they were after 60 s.
fn metrics_once(job_addr: SocketAddr, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = http_get(job_addr, "/metrics", "text/plain", Duration::from_secs(5))
            .unwrap_or_default();
        if text.contains(needle) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    text
}

/// The live links: a link throttled mid-run (fault injection: 1→0 drops to 20 MB/s after
/// 400 MB) is held congested by rank 1's detector, in the metrics and in a log line,
/// against the baseline the link achieved before. Needs no Prometheus.
#[test]
fn a_link_slowed_mid_run_is_flagged_congested() {
    let (job_addr, job, lines) = watched_job("rate=20MB/s@1->0:after=400MB", "4M");
    let text = metrics_once(job_addr, "topoccl_link_congested{rank=\"1\",peer=\"0\"} 1");
    assert!(
        text.contains("topoccl_link_congested{rank=\"1\",peer=\"0\"} 1"),
        "{text}"
    );
    assert!(text.contains("topoccl_alerts_total{rank=\"1\",kind=\"congestion\"}"));
    // The launcher's live communication matrix says the same, as JSON.
    let matrix = http_get(
        job_addr,
        "/matrix",
        "application/json",
        Duration::from_secs(5),
    )
    .expect("GET /matrix");
    let views: serde_json::Value = serde_json::from_str(&matrix).expect("JSON");
    let links = |rank: u64| -> Vec<serde_json::Value> {
        views
            .as_array()
            .expect("an array")
            .iter()
            .filter(|v| v["rank"] == rank)
            .flat_map(|v| v["links"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let out = links(1)
        .into_iter()
        .find(|l| l["direction"] == "out" && l["peer"] == "0")
        .unwrap_or_else(|| panic!("rank 1's link to 0 in {matrix}"));
    assert_eq!(out["congested"], true, "{out}");
    assert!(
        out["stats"]["bytes_total"].as_u64().unwrap_or(0) > 400_000_000,
        "{out}"
    );
    assert!(
        links(0)
            .iter()
            .any(|l| l["direction"] == "in" && l["peer"] == "1"),
        "rank 0 sees what it receives from 1: {matrix}"
    );
    drop(job);
    let log = lines.join().expect("the reader").join("\n");
    assert!(
        log.contains("[FIRING congestion] link 1→0 congested"),
        "the alert is logged: {log}"
    );
}

/// A stall is seen while it lasts: one frame from rank 1 to 0 is held back for 1.5 s
/// (fault injection, after 100 MB); rank 1's watch, looking in the middle of the call,
/// raises a `stall` alert on link 1→0 (logged and counted), and the job goes on.
#[test]
fn a_transfer_held_back_is_flagged_as_a_stall_while_it_lasts() {
    let (job_addr, job, lines) = watched_job("delay=1500ms@1->0:after=100MB:once", "1M");
    let needle = "topoccl_alerts_total{rank=\"1\",kind=\"stall\"}";
    let text = metrics_once(job_addr, needle);
    assert!(text.contains(needle), "{text}");
    // The job goes on: its calls keep completing after the stall.
    let count = |t: &str| -> f64 {
        t.lines()
            .filter(|l| l.starts_with("topoccl_collectives_total{rank=\"0\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = count(&text);
    std::thread::sleep(Duration::from_secs(2));
    let after = count(
        &http_get(job_addr, "/metrics", "text/plain", Duration::from_secs(5)).unwrap_or_default(),
    );
    assert!(
        after > before,
        "calls went on after the stall: {before} then {after}"
    );
    drop(job);
    let log = lines.join().expect("the reader").join("\n");
    assert!(
        log.contains("[FIRING stall] link 1→0"),
        "the stall is logged while it lasts: {log}"
    );
}
