//! `topoccl store`'s per-job quotas and idle timeout, with real processes and sockets: an
//! over-quota write is refused with an error that names the job, the quota and the flag
//! that raises it; an idle client is closed, but a rank blocked waiting for the others
//! (longer than the idle timeout) is not, and a job whose ranks' connections were closed
//! while idle carries on.

mod common;

use common::{start_store_with, Proc};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use topoccl::auth::JobKey;
use topoccl::store::{Store, TcpStore};

const SECRET: &str = "a secret for the store-limits test";

fn soon(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

fn client(addr: &str) -> TcpStore {
    TcpStore::connect_with(addr, Some(JobKey::from_secret(SECRET.as_bytes())), soon(10)).unwrap()
}

#[test]
fn over_quota_writes_are_refused_naming_job_quota_and_flag() {
    let (_store, url) = start_store_with(
        &["--job-max-keys", "8", "--job-max-bytes", "4096"],
        &[("TOPOCCL_SECRET", SECRET)],
    );
    let c = client(url.strip_prefix("tcp://").unwrap());
    for k in 0..8 {
        c.set(&format!("topoccl/hog/k{k}"), b"v").unwrap();
    }
    let e = c.set("topoccl/hog/k8", b"v").unwrap_err().to_string();
    assert!(
        e.contains("job 'hog'") && e.contains("8 keys") && e.contains("--job-max-keys"),
        "{e}"
    );
    let e = c.set("topoccl/hog/k0", &[7; 5000]).unwrap_err().to_string();
    assert!(
        e.contains("job 'hog'") && e.contains("quota of 4096") && e.contains("--job-max-bytes"),
        "{e}"
    );
    // Another job sharing the store is not held back.
    for k in 0..8 {
        c.set(&format!("topoccl/neighbour/k{k}"), &[1; 400])
            .unwrap();
    }
}

#[test]
fn out_of_range_settings_stop_the_store_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["store", "--listen", "127.0.0.1:0", "--job-max-keys", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--job-max-keys") && err.contains("allowed"),
        "{err}"
    );
}

/// Opens a connection to a store without a secret and passes its hello (zeros as proof).
fn raw_client(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 11 + 16];
    (&s).read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"TOPOSTOR");
    let mut hello = b"TOPOSTOR".to_vec();
    hello.extend_from_slice(&greeting[8..10]);
    hello.extend_from_slice(&[0; 32]);
    (&s).write_all(&hello).unwrap();
    let mut welcome = [9u8; 1];
    (&s).read_exact(&mut welcome).unwrap();
    assert_eq!(welcome, [0]);
    s
}

#[test]
fn idle_clients_are_closed_but_waiting_ranks_are_not() {
    let (_store, url) = start_store_with(&["--idle-timeout", "1"], &[]);
    let addr = url.strip_prefix("tcp://").unwrap().to_string();
    // An idle connection is closed after about a second.
    let idle = raw_client(&addr);
    let t = Instant::now();
    let mut rest = Vec::new();
    let _ = (&idle).read_to_end(&mut rest);
    assert!(
        t.elapsed() >= Duration::from_millis(800) && t.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t.elapsed()
    );

    // Rank 0 starts alone and waits for rank 1 for 3 s, three idle timeouts: its wait is
    // not idleness. Both then run many all-reduces, their store connections idle and
    // closed meanwhile, and finish with correct results.
    let rank = |r: u32| {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_topoccl"))
                .args([
                    "internal",
                    "allreduce-loop",
                    "--count",
                    "4096",
                    "--iters",
                    "300",
                ])
                .args(["--compute-ms", "10"])
                .env("TOPOCCL_RANK", r.to_string())
                .env("TOPOCCL_WORLD_SIZE", "2")
                .env("TOPOCCL_STORE", &url)
                .env("TOPOCCL_JOB_ID", "idle-test")
                .env("TOPOCCL_SECRET", SECRET)
                .env("TOPOCCL_TRANSPORT", "tcp")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let mut r0 = rank(0);
    thread::sleep(Duration::from_secs(3));
    assert!(r0.0.try_wait().unwrap().is_none(), "rank 0 gave up waiting");
    let mut r1 = rank(1);
    for (r, p) in [(0, &mut r0), (1, &mut r1)] {
        let until = soon(120);
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "rank {r} never finished");
            thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        let _ = p.0.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "rank {r}: {status}: {err}");
    }
}
