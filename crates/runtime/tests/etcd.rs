//! The etcd store against a real etcd server (started per test on free ports; SKIP when
//! no etcd binary is installed): the store contract (set, get, wait, add, delete,
//! deadlines, limits), counters raced by threads and by processes, lease expiry after a
//! process is killed, and a communicator that meets in etcd.

mod common;
#[path = "support/etcd_server.rs"]
mod etcd_server;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use topoccl::store::{EtcdOptions, EtcdStore, Store, StoreAddr, StoreError, MAX_KEY_LEN};
use topoccl::ReduceOp;

/// Child processes of this test binary run the test named here with these variables.
const CHILD: &str = "TOPOCCL_ETCD_TEST_CHILD";
const CHILD_ADDR: &str = "TOPOCCL_ETCD_TEST_ADDR";

fn soon(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

fn store(server: &EtcdServer) -> EtcdStore {
    EtcdStore::connect_with(
        std::slice::from_ref(&server.client),
        EtcdOptions::default(),
        soon(10_000),
    )
    .expect("connect to etcd")
}

/// Runs this binary's test `test` in a child process, with `CHILD` set to `role`.
fn child(test: &str, role: &str, server: &EtcdServer) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD, role)
        .env(CHILD_ADDR, &server.client)
        .stdin(Stdio::null());
    cmd
}

fn role() -> Option<(String, String)> {
    Some((std::env::var(CHILD).ok()?, std::env::var(CHILD_ADDR).ok()?))
}

#[test]
fn the_store_contract() {
    if role().is_some() {
        return;
    }
    let Some(server) = EtcdServer::start("contract") else {
        return;
    };
    let s = store(&server);
    let other = store(&server);
    assert_ne!(s.lease_id(), other.lease_id());

    s.set("topoccl/j/a", b"1").unwrap();
    s.set("topoccl/j/empty", b"").unwrap();
    assert_eq!(other.try_get("topoccl/j/a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(other.try_get("topoccl/j/empty").unwrap(), Some(vec![]));
    // etcd has no empty key: refused before anything is sent.
    let e = s.set("", b"").unwrap_err().to_string();
    assert!(e.contains("empty key"), "{e}");
    assert_eq!(other.try_get("topoccl/j/absent").unwrap(), None);
    let binary: Vec<u8> = (0..=255).collect();
    s.set("topoccl/j/bin", &binary).unwrap();
    assert_eq!(other.get("topoccl/j/bin", soon(100)).unwrap(), binary);

    // Counters: decimal ASCII, created at 0; a value that is not one is refused.
    assert_eq!(s.add("topoccl/j/n", 40).unwrap(), 40);
    assert_eq!(other.add("topoccl/j/n", 2).unwrap(), 42);
    assert_eq!(s.add("topoccl/j/n", 0).unwrap(), 42);
    assert_eq!(s.try_get("topoccl/j/n").unwrap(), Some(b"42".to_vec()));
    let e = s.add("topoccl/j/bin", 1).unwrap_err().to_string();
    assert!(e.contains("not a counter"), "{e}");

    // get waits for a key set later; wait lists what is still missing at the deadline.
    let setter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(150));
        other.set("topoccl/j/late", b"x").unwrap();
        other
    });
    assert_eq!(s.get("topoccl/j/late", soon(5000)).unwrap(), b"x");
    let _other = setter.join().unwrap();
    let keys: Vec<String> = ["a", "late", "never", "nor"]
        .iter()
        .map(|k| format!("topoccl/j/{k}"))
        .collect();
    let start = Instant::now();
    match s.wait(&keys, start + Duration::from_millis(300)) {
        Err(StoreError::Timeout { missing }) => {
            assert_eq!(missing, vec!["topoccl/j/never", "topoccl/j/nor"])
        }
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1300),
        "{took:?}"
    );
    let start = Instant::now();
    assert!(matches!(
        s.get("topoccl/j/never", start + Duration::from_millis(200)),
        Err(StoreError::Timeout { missing }) if missing == ["topoccl/j/never"]
    ));
    assert!(start.elapsed() < Duration::from_millis(1200));
    s.wait(&keys[..2], soon(0)).unwrap();
    // More keys than one transaction holds.
    let many: Vec<String> = (0..300).map(|i| format!("topoccl/j/many/{i}")).collect();
    for k in &many {
        s.set(k, b"").unwrap();
    }
    s.wait(&many, soon(5000)).unwrap();

    s.delete("topoccl/j/a").unwrap();
    s.delete("topoccl/j/a").unwrap();
    assert_eq!(s.try_get("topoccl/j/a").unwrap(), None);

    // Limits: refused before anything is sent, naming the limit; etcd's own request limit
    // is passed on with what to change.
    let e = s
        .set(&"k".repeat(MAX_KEY_LEN + 1), b"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limit of 4096"), "{e}");
    let e = s
        .set("topoccl/j/big", &vec![0; 2 << 20])
        .unwrap_err()
        .to_string();
    assert!(e.contains("max-request-bytes"), "{e}");

    // The job's prefix goes at the end, and nothing outside it.
    s.set("topoccl/k/other-job", b"1").unwrap();
    let held = s.count_prefix("topoccl/j/").unwrap();
    assert!(held >= 300, "{held}");
    assert_eq!(s.delete_prefix("topoccl/j/").unwrap(), held);
    assert_eq!(s.count_prefix("topoccl/j/").unwrap(), 0);
    assert_eq!(s.try_get("topoccl/j/n").unwrap(), None);
    assert_eq!(
        s.try_get("topoccl/k/other-job").unwrap(),
        Some(b"1".to_vec())
    );
    assert!(s.delete_prefix("").is_err());

    // Revoking the lease removes the keys this store set (and only those).
    s.set("topoccl/k/mine", b"1").unwrap();
    let counter = s.add("topoccl/k/count", 1).unwrap();
    assert_eq!(counter, 1);
    s.revoke().unwrap();
    let fresh = store(&server);
    assert_eq!(fresh.try_get("topoccl/k/mine").unwrap(), None);
    assert_eq!(
        fresh.try_get("topoccl/k/count").unwrap(),
        Some(b"1".to_vec())
    );
    let e = s.set("topoccl/k/after", b"1").unwrap_err().to_string();
    assert!(e.contains("lease") && e.contains("restart the rank"), "{e}");
}

/// Threads with a store each, and threads sharing one, add to one counter: every add
/// lands once, and every caller sees a distinct value.
#[test]
fn adds_raced_by_threads_are_atomic() {
    if role().is_some() {
        return;
    }
    let Some(server) = EtcdServer::start("threads") else {
        return;
    };
    let shared = Arc::new(store(&server));
    let (threads, adds) = (8, 40);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let own = (t % 2 == 0).then(|| store(&server));
            let shared = shared.clone();
            thread::spawn(move || {
                let s: &dyn Store = match &own {
                    Some(o) => o,
                    None => &*shared,
                };
                (0..adds)
                    .map(|_| s.add("topoccl/race/n", 1).unwrap())
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    let mut seen: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    seen.sort_unstable();
    let expected: Vec<i64> = (1..=threads * adds).collect();
    assert_eq!(seen, expected);
}

/// Processes add to one counter at once (each a child process of this test).
#[test]
fn adds_raced_by_processes_are_atomic() {
    if let Some((role, addr)) = role() {
        if role == "adder" {
            let s = EtcdStore::connect_with(&[addr], EtcdOptions::default(), soon(10_000)).unwrap();
            let got: Vec<String> = (0..25)
                .map(|_| s.add("topoccl/procs/n", 1).unwrap().to_string())
                .collect();
            println!("GOT {}", got.join(" "));
        }
        return;
    }
    let Some(server) = EtcdServer::start("processes") else {
        return;
    };
    let children: Vec<_> = (0..4)
        .map(|_| {
            child("adds_raced_by_processes_are_atomic", "adder", &server)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split("GOT ").nth(1))
            .unwrap_or_else(|| panic!("no GOT line: {text}"));
        seen.extend(line.split(' ').map(|v| v.parse::<i64>().unwrap()));
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=100).collect::<Vec<i64>>());
}

/// A process's keys live while it does (its lease kept alive well past the TTL), and
/// vanish within the TTL (and a second's slack) after it is killed.
#[test]
fn a_killed_process_keys_vanish_after_the_lease_ttl() {
    if let Some((role, addr)) = role() {
        if role == "holder" {
            let opts = EtcdOptions {
                lease_ttl: Duration::from_secs(2),
                ..Default::default()
            };
            let s = EtcdStore::connect_with(&[addr], opts, soon(10_000)).unwrap();
            s.set("topoccl/lease/addr/1", b"alive").unwrap();
            thread::sleep(Duration::from_secs(60));
        }
        return;
    }
    let Some(server) = EtcdServer::start("lease") else {
        return;
    };
    let s = store(&server);
    let mut holder = child(
        "a_killed_process_keys_vanish_after_the_lease_ttl",
        "holder",
        &server,
    )
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    s.get("topoccl/lease/addr/1", soon(20_000)).unwrap();
    // Two TTLs with the holder alive: the keepalives hold the key.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        s.try_get("topoccl/lease/addr/1").unwrap(),
        Some(b"alive".to_vec())
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed = Instant::now();
    while s.try_get("topoccl/lease/addr/1").unwrap().is_some() {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "the key outlived its 2 s lease by more than 1 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "key gone {:.2} s after the kill (TTL 2 s)",
        killed.elapsed().as_secs_f64()
    );
}

/// etcd stopping under a waiting rank: the wait ends by its deadline, saying etcd does
/// not answer.
#[test]
fn a_dead_etcd_fails_waits_by_their_deadline() {
    if role().is_some() {
        return;
    }
    let Some(mut server) = EtcdServer::start("dead") else {
        return;
    };
    let s = store(&server);
    s.set("topoccl/d/a", b"1").unwrap();
    server.kill();
    let start = Instant::now();
    let e = s
        .wait(
            &["topoccl/d/b".to_string()],
            start + Duration::from_millis(500),
        )
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&server.url()), "{e}");
}

/// Ranks that are threads meet in etcd (through `StoreAddr`, as `TOPOCCL_STORE` does) and
/// all-reduce.
#[test]
fn a_communicator_meets_in_etcd() {
    if role().is_some() {
        return;
    }
    let Some(server) = EtcdServer::start("comm") else {
        return;
    };
    let addr: StoreAddr = server.url().parse().unwrap();
    assert_eq!(addr.to_string(), server.url());
    let world = 4;
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let addr = addr.clone();
            thread::spawn(move || {
                let store = addr.open(None, soon(10_000)).unwrap();
                let mut comm = topoccl::Communicator::with_store(
                    store,
                    rank,
                    world,
                    "etcdjob",
                    "world",
                    topoccl::Config::default(),
                )
                .unwrap();
                let mut v = vec![rank as f32 + 1.0; 1000];
                comm.all_reduce_in_place(&mut v, ReduceOp::Sum).unwrap();
                v
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().iter().all(|&x| x == 10.0));
    }
    let s = store(&server);
    assert!(s.delete_prefix("topoccl/etcdjob/").unwrap() >= world as u64);
}
