//! Failures end calls with a typed error naming the rank at fault, within the deadline
//! plus a small margin — never a hang or a panic. Ranks are threads here (over real
//! loopback sockets); a fake peer speaks the wire protocol by hand to misbehave. The
//! process-killing tests are in the CLI crate (`kill.rs`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use topoccl::auth::{JobKey, Use};
use topoccl::store::Store;
use topoccl::wire::{encode_ack, Header, Kind, HELLO_LEN, HELLO_MAC_AT};
use topoccl::{Communicator, Config, Error, ReduceOp};

fn cfg(timeout_ms: u64) -> Config {
    Config {
        timeout: Duration::from_millis(timeout_ms),
        init_timeout: Duration::from_millis(timeout_ms.max(2000)),
        probe: false,
        // Several tests play rank 1 by hand (a bare address, no heartbeat listener): the
        // data path's failures are under test here, heartbeats in `health`'s own tests.
        heartbeat: None,
        ..Config::default()
    }
}

fn init(
    store: &Arc<dyn Store>,
    rank: u32,
    world: u32,
    cfg: Config,
) -> topoccl::Result<Communicator> {
    Communicator::with_store(store.clone(), rank, world, "test", "world", cfg)
}

fn all_reduce(c: &mut Communicator) -> topoccl::Result<()> {
    let input = vec![1.0f32; 4096];
    let mut out = vec![0.0f32; 4096];
    c.all_reduce(&input, &mut out, ReduceOp::Sum)
}

#[test]
fn a_rank_that_never_calls_is_named_by_everyone() {
    let store = common::mem_store();
    let world = 3;
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let store = store.clone();
            thread::spawn(move || {
                let mut c = init(&store, r, world, cfg(1000)).unwrap();
                if r == 2 {
                    thread::sleep(Duration::from_secs(4));
                    return None;
                }
                let t = Instant::now();
                let e = all_reduce(&mut c).unwrap_err();
                Some((e, t.elapsed()))
            })
        })
        .collect();
    for (r, h) in handles.into_iter().enumerate() {
        if let Some((e, took)) = h.join().unwrap() {
            assert_eq!(e.culprits(), vec![2], "rank {r}: {e}");
            assert!(took < Duration::from_millis(2600), "rank {r} took {took:?}");
            assert!(e.to_string().contains("rank 2"), "rank {r}: {e}");
        }
    }
}

#[test]
fn mismatched_collectives_are_reported_not_mixed() {
    let store = common::mem_store();
    let handles: Vec<_> = (0..2u32)
        .map(|r| {
            let store = store.clone();
            thread::spawn(move || {
                let mut c = init(&store, r, 2, cfg(3000)).unwrap();
                let mut buf = vec![r as f32; 256];
                let e = if r == 0 {
                    all_reduce(&mut c).unwrap_err()
                } else {
                    c.broadcast(&mut buf, 0).unwrap_err()
                };
                e.to_string()
            })
        })
        .collect();
    let msgs: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        msgs.iter().any(|m| m.contains("mismatched")
            && m.contains("allreduce")
            && m.contains("broadcast")),
        "{msgs:?}"
    );
}

/// Creating a world of 2 whose ranks hold different secrets (`base` otherwise, probes
/// on): each rank's error and how long its creation took.
fn create_with_wrong_secret(base: Config) -> Vec<(Error, Duration)> {
    let store = common::mem_store();
    let handles: Vec<_> = (0..2u32)
        .map(|r| {
            let store = store.clone();
            let cfg = Config {
                secret: Some(if r == 0 { "alpha" } else { "beta" }.into()),
                probe: true,
                ..base.clone()
            };
            thread::spawn(move || {
                let t = Instant::now();
                let e = init(&store, r, 2, cfg).unwrap_err();
                (e, t.elapsed())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn wrong_secret_is_refused_and_named() {
    let errs: Vec<Error> = create_with_wrong_secret(cfg(1500))
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    // Rank 0 dials and is refused by rank 1; rank 1 waits and learns why from the refusal.
    assert!(
        matches!(&errs[0], Error::Handshake { rank: 1, reason } if reason.contains("wrong secret")),
        "{}",
        errs[0]
    );
    assert_eq!(errs[1].culprits(), vec![0], "{}", errs[1]);
    assert!(errs[1].to_string().contains("wrong secret"), "{}", errs[1]);
}

#[test]
fn creation_is_bounded_by_the_init_timeout_not_the_call_timeout() {
    let outcomes = create_with_wrong_secret(Config {
        timeout: Duration::from_secs(60),
        init_timeout: Duration::from_secs(2),
        ..Config::default()
    });
    for (r, (e, took)) in outcomes.into_iter().enumerate() {
        // The probes at creation wait on the 2 s of creation, not the 60 s of a call.
        assert!(took < Duration::from_secs(4), "rank {r}: {took:?}: {e}");
        assert!(e.to_string().contains("wrong secret"), "rank {r}: {e}");
        if let Error::Timeout { .. } = e {
            assert!(
                e.to_string().contains("TOPOCCL_INIT_TIMEOUT"),
                "rank {r}: {e}"
            );
        }
    }
}

/// The secret of the jobs with a fake peer: it is a rank of the job that misbehaves.
const FAKE_SECRET: &str = "fake peer's job";

/// A rank 1 that accepts rank 0's connections (proving [`FAKE_SECRET`]), then does
/// `misbehave` on the data connection (stream 0).
fn fake_peer(
    store: &Arc<dyn Store>,
    misbehave: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
) -> thread::JoinHandle<()> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    store
        .set("topoccl/test/world/addr/1", addr.to_string().as_bytes())
        .unwrap();
    thread::spawn(move || {
        let mut conns = Vec::new();
        // Control connection, then one data connection.
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let key = JobKey::from_secret(FAKE_SECRET.as_bytes());
            let mac = key.mac(Use::PeerAck, &[&hello[HELLO_MAC_AT..]]);
            s.write_all(&encode_ack(&Ok(mac))).unwrap();
            conns.push(s);
        }
        misbehave(&mut conns[1]);
        thread::sleep(Duration::from_millis(300));
    })
}

fn run_against_fake(
    misbehave: impl FnOnce(&mut std::net::TcpStream) + Send + 'static,
) -> (Error, Duration) {
    let store = common::mem_store();
    let fake = fake_peer(&store, misbehave);
    let config = Config {
        secret: Some(FAKE_SECRET.into()),
        ..cfg(5000)
    };
    let mut c = init(&store, 0, 2, config).unwrap();
    let t = Instant::now();
    let e = all_reduce(&mut c).unwrap_err();
    fake.join().unwrap();
    (e, t.elapsed())
}

#[test]
fn garbage_frame() {
    let (e, took) = run_against_fake(|s| {
        s.write_all(&[0xAB; 56]).unwrap();
    });
    assert!(
        matches!(&e, Error::PeerFailed { rank: 1, reason, .. } if reason.contains("malformed frame")),
        "{e}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn truncated_frame() {
    let (e, took) = run_against_fake(|s| {
        let h = Header {
            kind: Kind::Data,
            collective: Some(topoccl::Collective::AllReduce),
            dtype: topoccl::DType::F32,
            op: ReduceOp::Sum,
            channel: 0,
            link_seq: 0,
            seq: 1,
            count: 4096,
            len: 8192,
            fingerprint: 0,
            root: 0,
            flags: 0,
        };
        s.write_all(&h.encode()).unwrap();
        s.write_all(&[0u8; 100]).unwrap();
        s.shutdown(std::net::Shutdown::Both).unwrap();
    });
    // The fingerprint is wrong too; whichever the rank reads first, it names rank 1.
    assert_eq!(e.culprits().first().copied().or(Some(1)), Some(1), "{e}");
    assert!(
        e.to_string().contains("rank 1") || e.to_string().contains("mismatched"),
        "{e}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn peer_closes_its_connection() {
    let (e, took) = run_against_fake(|s| {
        s.shutdown(std::net::Shutdown::Both).unwrap();
    });
    assert!(
        matches!(&e, Error::PeerFailed { rank: 1, reason, .. } if reason.contains("closed")),
        "{e}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn connection_refused() {
    let store = common::mem_store();
    // Rank 1's published address has nobody listening.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    store
        .set(
            "topoccl/test/world/addr/1",
            format!("127.0.0.1:{port}").as_bytes(),
        )
        .unwrap();
    let mut c = init(&store, 0, 2, cfg(3000)).unwrap();
    let e = all_reduce(&mut c).unwrap_err();
    assert!(
        matches!(&e, Error::PeerFailed { rank: 1, reason, .. } if reason.contains("cannot connect")),
        "{e}"
    );
}

#[test]
fn rendezvous_that_never_completes() {
    let store = common::mem_store();
    let handles: Vec<_> = (0..2u32)
        .map(|r| {
            let store = store.clone();
            thread::spawn(move || {
                let t = Instant::now();
                let e = init(&store, r, 3, cfg(1000)).unwrap_err();
                (e, t.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (e, took) = h.join().unwrap();
        assert!(
            matches!(&e, Error::Rendezvous(m) if m.contains("ranks 2 never arrived")),
            "{e}"
        );
        assert!(took < Duration::from_millis(2500), "{took:?}");
    }
}

#[test]
fn abort_returns_promptly_during_a_call() {
    let store = common::mem_store();
    let s1 = store.clone();
    let idle = thread::spawn(move || {
        let _c = init(&s1, 1, 2, cfg(30_000)).unwrap();
        thread::sleep(Duration::from_secs(3));
    });
    let mut c = init(&store, 0, 2, cfg(30_000)).unwrap();
    let handle = c.abort_handle();
    let aborter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        handle.abort();
        at
    });
    let e = all_reduce(&mut c).unwrap_err();
    let returned = Instant::now();
    let aborted_at = aborter.join().unwrap();
    assert!(matches!(e, Error::CommAborted(_)), "{e}");
    assert!(returned.duration_since(aborted_at) < Duration::from_millis(200));
    // Later calls fail at once.
    assert!(matches!(all_reduce(&mut c), Err(Error::CommAborted(_))));
    idle.join().unwrap();
}

#[test]
fn a_stranger_listening_at_a_ranks_address_is_not_taken_for_it() {
    // Something that accepts the hello but cannot prove the secret (it never sees it:
    // only a MAC travels).
    let store = common::mem_store();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    store
        .set("topoccl/test/world/addr/1", addr.to_string().as_bytes())
        .unwrap();
    let stranger = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; HELLO_LEN];
        s.read_exact(&mut hello).unwrap();
        // Not the secret in the hello: a MAC of it, which is no use as a key.
        let guess = JobKey::from_secret(&hello[HELLO_MAC_AT..]);
        let mac = guess.mac(Use::PeerAck, &[&hello[HELLO_MAC_AT..]]);
        let _ = s.write_all(&encode_ack(&Ok(mac)));
        thread::sleep(Duration::from_millis(300));
    });
    let config = Config {
        secret: Some("the job's".into()),
        ..cfg(3000)
    };
    let mut c = init(&store, 0, 2, config).unwrap();
    let e = all_reduce(&mut c).unwrap_err();
    stranger.join().unwrap();
    assert!(
        matches!(&e, Error::Handshake { rank: 1, reason } if reason.contains("without proof of this job's secret")),
        "{e}"
    );
}
