//! A rank stopped with SIGSTOP for 2 s, in a job launched with `--metrics`: the
//! launcher's watcher names it (a log line, `topoccl_straggler_alerts_total`, and a
//! webhook receiver gets the Alertmanager JSON), and `topoccl doctor` on the flight
//! recorders fetched from `/flight` names it too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};

mod common;
use common::{free_port, Stopped};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use topoccl::metrics::http_get;

/// The pid of the launcher's child running as rank `rank`.
fn rank_pid(launcher: u32, rank: u32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(launcher) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let want = format!("TOPOCCL_RANK={rank}");
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A webhook receiver: every request's body, answered 200.
fn receiver() -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_ok() {
                let _ = tx.send(String::from_utf8_lossy(&body).to_string());
            }
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (addr, rx)
}

#[test]
fn a_rank_stopped_for_two_seconds_is_named_the_straggler() {
    let job_addr = free_port();
    let (hook, posted) = receiver();
    let mut job = Stopped(
        Command::new(env!("CARGO_BIN_EXE_topoccl"))
            .args(["run", "-n", "3", "--timeout", "120s", "--metrics"])
            .arg(job_addr.to_string())
            .arg("--alert-webhook")
            .arg(format!("http://{hook}/api/v2/alerts"))
            .args([
                "--",
                env!("CARGO_BIN_EXE_topoccl"),
                "internal",
                "allreduce-loop",
            ])
            .args([
                "--count",
                "65536",
                "--iters",
                "100000000",
                "--compute-ms",
                "20",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the job"),
    );
    // Rank 2's "iteration done" lines: it computes (sleeps) for 20 ms after each, outside
    // any call, which is where the stop must land to make it late (a rank stopped inside
    // a call delays everyone alike).
    let stdout = job.0.stdout.take().unwrap();
    let (done_tx, done) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if l.starts_with("[2] iteration") {
                let _ = done_tx.send(());
            }
        }
    });
    let stderr = job.0.stderr.take().unwrap();
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    // Running, and seen by the watcher for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        assert!(Instant::now() < deadline, "the job did not start");
        if let Some(p) = rank_pid(job.0.id(), 2) {
            let m = http_get(job_addr, "/metrics", "text/plain", Duration::from_secs(5))
                .unwrap_or_default();
            if m.contains("topoccl_collectives_total{rank=\"2\"") {
                break p;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    while done.try_recv().is_ok() {}
    done.recv_timeout(Duration::from_secs(10))
        .expect("rank 2 goes on iterating");
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(2));

    let mut log = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => log.push(l),
            Err(_) if log.iter().any(|l| l.contains("resolved")) => break,
            Err(_) => {}
        }
    }
    let log = log.join("\n");
    assert!(
        log.contains("rank 2 stopped"),
        "the watcher names rank 2: {log}"
    );
    for other in ["rank 0 stopped", "rank 1 stopped"] {
        assert!(!log.contains(other), "{log}");
    }
    let m = http_get(job_addr, "/metrics", "text/plain", Duration::from_secs(10)).unwrap();
    assert!(
        m.contains("topoccl_straggler_alerts_total{rank=\"2\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("topoccl_straggler_alerts_total{rank=\"0\"} 0"),
        "{m}"
    );
    let first = posted
        .recv_timeout(Duration::from_secs(5))
        .expect("a webhook post");
    let alerts: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(alerts[0]["labels"]["rank"], "2", "{first}");
    assert!(alerts[0]["startsAt"].is_string(), "{first}");

    // The flight recorders, fetched from the launcher, say the same to the doctor.
    let flight = http_get(
        job_addr,
        "/flight",
        "application/json",
        Duration::from_secs(10),
    )
    .unwrap();
    let dumps: Vec<serde_json::Value> = serde_json::from_str(&flight).unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("straggler-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for d in &dumps {
        if d["process_group"]
            .as_str()
            .is_some_and(|g| g.ends_with("/world0"))
        {
            std::fs::write(dir.join(format!("rank-{}.json", d["rank"])), d.to_string()).unwrap();
        }
    }
    drop(job);
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .arg("doctor")
        .arg(&dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "a finding");
    assert!(report.contains("rank 2 straggled"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
