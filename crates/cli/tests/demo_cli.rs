//! `topoccl demo`, started as a newcomer starts it: the console's URL is printed, its
//! `/api/links` and `/api/calls` fill with the running job's live figures and calls,
//! Ctrl-C stops everything cleanly, `--iterations` bounds it, and bad options are refused.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;

/// `GET path` over HTTP/1.0: the body of a 200, else `None`.
fn get(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

fn wait_for(
    addr: SocketAddr,
    path: &str,
    until: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(60) {
        if let Some(v) = get(addr, path) {
            if until(&v) {
                return v;
            }
            last = Some(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{path} never showed live data: {last:?}");
}

#[test]
fn the_demo_shows_a_live_job_and_stops_on_ctrl_c() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["demo", "--duration", "120s", "--buckets", "2MiB,512KiB"])
        .args(["--compute-ms", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the demo");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let demo = Proc(child);
    let mut line = String::new();
    out.read_line(&mut line).expect("the console's URL");
    let url = line
        .trim()
        .strip_prefix("console: http://")
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let addr: SocketAddr = url.trim_end_matches('/').parse().expect("an address");
    assert!(addr.ip().is_loopback());
    // The rest of the output, read as it comes (the ranks' lines).
    let rest = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = out.read_to_string(&mut all);
        all
    });

    let topo = get(addr, "/api/topology").expect("the demo's topology");
    assert_eq!(topo["world"], 4);
    let links = wait_for(addr, "/api/links", |v| {
        v["job"]["ranks_up"] == 4
            && v["edges"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["bytes"].as_u64().is_some_and(|b| b > 1 << 20))
            })
    });
    let pairs = links["pairs"].as_array().expect("pairs");
    assert!(pairs.len() >= 4, "every rank sends: {links}");
    assert!(links["edges"]
        .as_array()
        .is_some_and(|e| e.iter().all(|e| e["level"].is_string())));
    let calls = wait_for(addr, "/api/calls", |v| {
        v["timeline"]["tracks"].as_array().is_some_and(|t| {
            t.len() >= 4
                && t.iter().all(|t| {
                    t["spans"]
                        .as_array()
                        .is_some_and(|s| s.iter().any(|s| s["name"] == "topoccl:all_reduce"))
                })
        })
    });
    assert_eq!(calls["timeline"]["source"], "flight");

    // Ctrl-C: the ranks stop, then the demo, with success.
    let mut demo = demo;
    let pid = demo.0.id() as i32;
    // SAFETY: sends a signal to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = demo.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the demo did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let rest = rest.join().expect("the output");
    assert!(rest.contains("step 0:"), "{rest}");
    assert!(rest.contains("demo: stopped"), "{rest}");
    assert!(get(addr, "/api/links").is_none(), "the console stopped too");
}

#[test]
fn iterations_bound_the_demo() {
    let out = common::topoccl(&[
        "demo",
        "-n",
        "2",
        "--iterations",
        "3",
        "--buckets",
        "64KiB",
        "--compute-ms",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo: 3 steps done"), "{stdout}");
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let out = common::topoccl(&["demo", "--buckets", "2GiB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--buckets"));
}
