//! Rendezvous stores through the public interface: every implementation against the same
//! behavioural checks, plus what is specific to each (connection handling for TCP,
//! several processes sharing a directory for files).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use topoccl::store::{
    FileStore, MemStore, Store, StoreAddr, StoreError, TcpStore, TcpStoreServer, MAX_KEY_LEN,
    MAX_VALUE_LEN,
};

/// Slack allowed on top of a deadline before a timed-out call must have returned.
const MARGIN: Duration = Duration::from_millis(500);
/// Children of this test binary read their role from these variables.
const CHILD_DIR_ENV: &str = "TOPOCCL_STORE_TEST_CHILD_DIR";
const CHILD_ID_ENV: &str = "TOPOCCL_STORE_TEST_CHILD_ID";
const CHILD_SERVE_ENV: &str = "TOPOCCL_STORE_TEST_SERVE";
const ADDS_PER_WORKER: i64 = 40;

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        TempDir(std::env::temp_dir().join(format!(
            "topoccl-store-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store of either kind, with whatever keeps it alive.
struct Fixture {
    store: Arc<dyn Store>,
    /// Opens another client of the same store.
    reopen: Box<dyn Fn() -> Arc<dyn Store> + Send + Sync>,
    _server: Option<TcpStoreServer>,
    _dir: Option<TempDir>,
}

fn tcp_fixture() -> Fixture {
    let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
    let addr = server.local_addr().to_string();
    let open =
        move || -> Arc<dyn Store> { Arc::new(TcpStore::connect(&addr, soon(5000)).unwrap()) };
    Fixture {
        store: open(),
        reopen: Box::new(open),
        _server: Some(server),
        _dir: None,
    }
}

fn file_fixture() -> Fixture {
    let dir = TempDir::new("fixture");
    let path = dir.0.clone();
    let open = move || -> Arc<dyn Store> { Arc::new(FileStore::new(path.clone()).unwrap()) };
    Fixture {
        store: open(),
        reopen: Box::new(open),
        _server: None,
        _dir: Some(dir),
    }
}

/// Every "client" of an in-memory store is the store itself.
fn mem_fixture() -> Fixture {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let same = store.clone();
    Fixture {
        store,
        reopen: Box::new(move || same.clone()),
        _server: None,
        _dir: None,
    }
}

// ---------------------------------------------------------------------------------------
// Behaviour every store shares

fn check_many_waiters_all_wake(f: Fixture, waiters: usize) {
    let start = Barrier::new(waiters + 1);
    let t0 = Instant::now();
    thread::scope(|s| {
        let handles: Vec<_> = (0..waiters)
            .map(|i| {
                let store = f.store.clone();
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    if i % 2 == 0 {
                        store.get("go", soon(8000))
                    } else {
                        store
                            .wait(&["go".to_string()], soon(8000))
                            .and_then(|()| store.get("go", soon(1000)))
                    }
                })
            })
            .collect();
        start.wait();
        thread::sleep(Duration::from_millis(100));
        // The setter shares the waiters' client: their waits must not hold it up.
        f.store.set("go", b"now").unwrap();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), b"now");
        }
    });
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

fn check_get_blocks_until_set(f: Fixture) {
    let other = (f.reopen)();
    let t0 = Instant::now();
    let setter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        other.set("late", b"value").unwrap();
    });
    assert_eq!(f.store.try_get("late").unwrap(), None);
    assert_eq!(f.store.get("late", soon(5000)).unwrap(), b"value");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(140),
        "returned before the set: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    setter.join().unwrap();
}

fn check_wait_timeout_lists_missing(f: Fixture) {
    f.store.set("present", b"1").unwrap();
    let keys: Vec<String> = ["present", "missing/a", "missing/b"]
        .map(String::from)
        .to_vec();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_millis(300);
    let e = f.store.wait(&keys, deadline).unwrap_err();
    let took = t0.elapsed();
    assert_eq!(
        e,
        StoreError::Timeout {
            missing: vec!["missing/a".into(), "missing/b".into()]
        }
    );
    assert!(e.to_string().contains("missing/a"), "{e}");
    assert!(
        took >= Duration::from_millis(290),
        "gave up early: {took:?}"
    );
    assert!(took <= Duration::from_millis(300) + MARGIN, "{took:?}");

    let t0 = Instant::now();
    let e = f.store.get("missing/c", soon(200)).unwrap_err();
    assert_eq!(
        e,
        StoreError::Timeout {
            missing: vec!["missing/c".into()]
        }
    );
    assert!(t0.elapsed() <= Duration::from_millis(200) + MARGIN);
    // A deadline already passed still answers, at once.
    let t0 = Instant::now();
    f.store.wait(&keys[..1], Instant::now()).unwrap();
    assert!(matches!(
        f.store.get("missing/c", Instant::now()),
        Err(StoreError::Timeout { .. })
    ));
    assert!(t0.elapsed() < MARGIN);
}

fn check_add_atomic(f: Fixture, clients: usize, threads_per_client: usize) {
    let stores: Vec<Arc<dyn Store>> = (0..clients).map(|_| (f.reopen)()).collect();
    let mut got: Vec<i64> = thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .flat_map(|st| (0..threads_per_client).map(move |_| st.clone()))
            .map(|st| {
                s.spawn(move || {
                    (0..ADDS_PER_WORKER)
                        .map(|_| st.add("counter", 1).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    got.sort_unstable();
    let n = (clients * threads_per_client) as i64 * ADDS_PER_WORKER;
    assert_eq!(
        got,
        (1..=n).collect::<Vec<_>>(),
        "every add saw a distinct value"
    );
    assert_eq!(
        f.store.get("counter", soon(1000)).unwrap(),
        n.to_string().as_bytes()
    );
    assert_eq!(f.store.add("counter", -n).unwrap(), 0);
}

fn check_limits(f: Fixture) {
    let long_key = "k".repeat(MAX_KEY_LEN + 1);
    let max_key = "k".repeat(MAX_KEY_LEN);
    let is_protocol = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Protocol(_)));
    assert!(is_protocol(f.store.set(&long_key, b"v")));
    assert!(is_protocol(f.store.try_get(&long_key).map(drop)));
    assert!(is_protocol(f.store.get(&long_key, soon(100)).map(drop)));
    assert!(is_protocol(
        f.store.wait(std::slice::from_ref(&long_key), soon(100))
    ));
    assert!(is_protocol(f.store.add(&long_key, 1).map(drop)));
    assert!(is_protocol(f.store.delete(&long_key)));
    let too_big = vec![1u8; MAX_VALUE_LEN + 1];
    let e = f.store.set("big", &too_big).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    // The largest key and value are accepted.
    let biggest = vec![7u8; MAX_VALUE_LEN];
    f.store.set(&max_key, &biggest).unwrap();
    assert_eq!(f.store.get(&max_key, soon(5000)).unwrap(), biggest);
    f.store.delete(&max_key).unwrap();
}

fn check_unicode_and_odd_keys(f: Fixture) {
    for key in [
        "",
        "rank/0/addr",
        "../../etc/passwd",
        "ключ 🔑",
        "a\0b",
        ".",
    ] {
        f.store.set(key, key.as_bytes()).unwrap();
    }
    for key in [
        "",
        "rank/0/addr",
        "../../etc/passwd",
        "ключ 🔑",
        "a\0b",
        ".",
    ] {
        assert_eq!(
            f.store.try_get(key).unwrap().unwrap(),
            key.as_bytes(),
            "{key:?}"
        );
    }
}

#[test]
fn tcp_many_waiters_all_wake() {
    check_many_waiters_all_wake(tcp_fixture(), 64);
}

#[test]
fn file_many_waiters_all_wake() {
    check_many_waiters_all_wake(file_fixture(), 16);
}

#[test]
fn tcp_get_blocks_until_set() {
    check_get_blocks_until_set(tcp_fixture());
}

#[test]
fn file_get_blocks_until_set() {
    check_get_blocks_until_set(file_fixture());
}

#[test]
fn tcp_wait_timeout_lists_missing() {
    check_wait_timeout_lists_missing(tcp_fixture());
}

#[test]
fn file_wait_timeout_lists_missing() {
    check_wait_timeout_lists_missing(file_fixture());
}

#[test]
fn tcp_add_is_atomic() {
    check_add_atomic(tcp_fixture(), 4, 4);
}

#[test]
fn file_add_is_atomic_across_instances() {
    check_add_atomic(file_fixture(), 4, 2);
}

#[test]
fn tcp_limits_are_enforced() {
    check_limits(tcp_fixture());
}

#[test]
fn file_limits_are_enforced() {
    check_limits(file_fixture());
}

#[test]
fn tcp_odd_keys() {
    check_unicode_and_odd_keys(tcp_fixture());
}

#[test]
fn file_odd_keys() {
    check_unicode_and_odd_keys(file_fixture());
}

#[test]
fn mem_many_waiters_all_wake() {
    check_many_waiters_all_wake(mem_fixture(), 64);
}

#[test]
fn mem_get_blocks_until_set() {
    check_get_blocks_until_set(mem_fixture());
}

#[test]
fn mem_wait_timeout_lists_missing() {
    check_wait_timeout_lists_missing(mem_fixture());
}

#[test]
fn mem_add_is_atomic() {
    check_add_atomic(mem_fixture(), 1, 8);
}

#[test]
fn mem_limits_are_enforced() {
    check_limits(mem_fixture());
}

#[test]
fn mem_odd_keys() {
    check_unicode_and_odd_keys(mem_fixture());
}

// ---------------------------------------------------------------------------------------
// TCP connections

/// An address where nothing listens (just now).
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn tcp_connect_retries_until_the_server_appears() {
    let addr = free_addr();
    let t0 = Instant::now();
    let client = {
        let addr = addr.clone();
        thread::spawn(move || TcpStore::connect(&addr, soon(5000)))
    };
    thread::sleep(Duration::from_millis(300));
    let _server = TcpStoreServer::start(&addr).unwrap();
    let store = client.join().unwrap().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(290));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    store.set("k", b"v").unwrap();
    assert_eq!(store.try_get("k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn tcp_connect_gives_up_at_the_deadline_naming_the_address() {
    let addr = free_addr();
    let t0 = Instant::now();
    let e = TcpStore::connect(&addr, soon(300)).unwrap_err();
    assert!(t0.elapsed() >= Duration::from_millis(290));
    assert!(
        t0.elapsed() <= Duration::from_millis(300) + MARGIN,
        "{:?}",
        t0.elapsed()
    );
    match &e {
        StoreError::Unreachable { addr: a, reason } => {
            assert_eq!(a, &addr);
            assert!(reason.contains("refused"), "{reason}");
        }
        other => panic!("expected Unreachable, got {other}"),
    }
    assert!(e.to_string().contains(&addr));
}

#[test]
fn tcp_server_drop_wakes_waiters_with_unreachable_and_frees_the_port() {
    let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let store = Arc::new(TcpStore::connect(&addr.to_string(), soon(5000)).unwrap());
    let waiters: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            thread::spawn(move || {
                let t0 = Instant::now();
                let r = if i % 2 == 0 {
                    store.get("never", soon(30_000)).map(drop)
                } else {
                    store.wait(&["never".to_string()], soon(30_000))
                };
                (r, t0.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    drop(server);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t0.elapsed()
    );
    for w in waiters {
        let (r, took) = w.join().unwrap();
        assert!(took < Duration::from_secs(3), "waiter woke after {took:?}");
        match r {
            Err(StoreError::Unreachable { reason, .. }) => {
                assert!(reason.contains("closed the connection"), "{reason}")
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    // The port is free again, and later calls fail fast rather than hang.
    let again = TcpStoreServer::start(&addr.to_string()).unwrap();
    drop(again);
    assert!(matches!(
        store.try_get("x"),
        Err(StoreError::Unreachable { .. })
    ));
}

/// Run as a child process: serves a TCP store, prints its address, and lingers until
/// killed (or a bound passes, so a stray child cannot outlive the test run for long).
#[test]
fn tcp_serve_child() {
    if std::env::var_os(CHILD_SERVE_ENV).is_none() {
        return;
    }
    let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
    println!("STORE-ADDR {}", server.local_addr());
    thread::sleep(Duration::from_secs(20));
}

#[test]
fn tcp_server_process_killed_while_clients_wait() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "tcp_serve_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SERVE_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The harness may have printed the test's name on the same line.
            if let Some((_, a)) = line.split_once("STORE-ADDR ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            panic!("child server did not start: {e}");
        }
    };
    let store = TcpStore::connect(&addr, soon(5000)).unwrap();
    store.set("k", b"v").unwrap();
    let waiter = thread::spawn(move || {
        let t0 = Instant::now();
        (store.get("never", soon(30_000)), t0.elapsed())
    });
    thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    let _ = child.wait();
    let (r, took) = waiter.join().unwrap();
    assert!(matches!(r, Err(StoreError::Unreachable { .. })), "{r:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn tcp_wait_for_many_keys() {
    let f = tcp_fixture();
    let keys: Vec<String> = (0..2000).map(|i| format!("rank/{i}/addr")).collect();
    let other = (f.reopen)();
    let setter = {
        let keys = keys.clone();
        thread::spawn(move || {
            for k in keys.iter().rev() {
                other.set(k, b"x").unwrap();
            }
        })
    };
    f.store.wait(&keys, soon(8000)).unwrap();
    setter.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// File store across processes

/// Run as a child process: adds to the shared counter and records what it saw.
#[test]
fn file_add_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let id = std::env::var(CHILD_ID_ENV).unwrap();
    let store = FileStore::new(PathBuf::from(dir)).unwrap();
    let seen: Vec<String> = (0..ADDS_PER_WORKER)
        .map(|_| store.add("shared-counter", 1).unwrap().to_string())
        .collect();
    store
        .set(&format!("seen/{id}"), seen.join(",").as_bytes())
        .unwrap();
}

#[test]
fn file_add_is_atomic_across_processes() {
    const CHILDREN: usize = 3;
    let dir = TempDir::new("procs");
    let store = FileStore::new(dir.0.clone()).unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args(["file_add_child", "--exact", "--test-threads=1", "-q"])
                .env(CHILD_DIR_ENV, &dir.0)
                .env(CHILD_ID_ENV, i.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // This process competes too.
    let mut seen: Vec<i64> = (0..ADDS_PER_WORKER)
        .map(|_| store.add("shared-counter", 1).unwrap())
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child process failed");
    }
    let keys: Vec<String> = (0..CHILDREN).map(|i| format!("seen/{i}")).collect();
    store.wait(&keys, soon(1000)).unwrap();
    for k in &keys {
        let v = store.try_get(k).unwrap().unwrap();
        seen.extend(
            std::str::from_utf8(&v)
                .unwrap()
                .split(',')
                .map(|s| s.parse::<i64>().unwrap()),
        );
    }
    let n = (CHILDREN as i64 + 1) * ADDS_PER_WORKER;
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "two adds returned the same value"
    );
    assert_eq!(distinct, (1..=n).collect::<HashSet<_>>());
    assert_eq!(
        store.try_get("shared-counter").unwrap().unwrap(),
        n.to_string().as_bytes()
    );
}

// ---------------------------------------------------------------------------------------
// Addresses

#[test]
fn store_addr_parsing() {
    assert_eq!(
        "tcp://10.0.0.1:29500".parse::<StoreAddr>().unwrap(),
        StoreAddr::Tcp("10.0.0.1:29500".into())
    );
    assert_eq!(
        "tcp://[::1]:29500".parse::<StoreAddr>().unwrap(),
        StoreAddr::Tcp("[::1]:29500".into())
    );
    assert_eq!(
        "file:///shared/job-7".parse::<StoreAddr>().unwrap(),
        StoreAddr::File(PathBuf::from("/shared/job-7"))
    );
    for s in ["tcp://10.0.0.1:29500", "file:///shared/job-7"] {
        assert_eq!(s.parse::<StoreAddr>().unwrap().to_string(), s);
    }
    for bad in [
        "tcp://",
        "tcp://host",
        "file://",
        "http://x:1",
        "10.0.0.1:29500",
        "",
    ] {
        let e = bad.parse::<StoreAddr>().unwrap_err();
        assert!(matches!(e, StoreError::Protocol(_)), "{bad}: {e}");
    }
}

#[test]
fn store_addr_opens_both_kinds() {
    let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
    let tcp: StoreAddr = format!("tcp://{}", server.local_addr()).parse().unwrap();
    let a = tcp.open(None, soon(5000)).unwrap();
    a.set("k", b"tcp").unwrap();
    assert_eq!(
        tcp.open(None, soon(5000)).unwrap().try_get("k").unwrap(),
        Some(b"tcp".to_vec())
    );

    let dir = TempDir::new("addr");
    let file: StoreAddr = format!("file://{}", dir.0.display()).parse().unwrap();
    file.open(None, soon(1000))
        .unwrap()
        .set("k", b"file")
        .unwrap();
    assert_eq!(
        file.open(None, soon(1000)).unwrap().try_get("k").unwrap(),
        Some(b"file".to_vec())
    );

    // A malformed TCP address fails at once instead of retrying until the deadline.
    let t0 = Instant::now();
    let bad: StoreAddr = "tcp://host:notaport".parse().unwrap();
    assert!(matches!(
        bad.open(None, soon(5000)),
        Err(StoreError::Protocol(_))
    ));
    assert!(t0.elapsed() < Duration::from_secs(1));
}
