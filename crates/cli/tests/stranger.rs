//! A stranger on the same machine, acting as the security review did, step by step,
//! against a running job of two ranks (real processes, a real store, TCP between them)
//! whose store and ranks share a secret the stranger does not have. It knows everything
//! else: the store's address, the job id, the ranks' ports, the wire format.
//!
//! It cannot read the secret (or anything) from the store, cannot write or delete keys,
//! cannot join as a rank, cannot abort the job, cannot exhaust a rank's descriptors with
//! idle connections; the job finishes with correct results. Nor can it keep a job out of
//! its store, or make the store grow, by flooding it with idle connections and large
//! writes without the secret before the job starts.

mod common;

use common::{start_store, Proc};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use topoccl::auth::JobKey;
use topoccl::store::{Store, StoreError, TcpStore};
use topoccl::wire::{self, AbortNotice, Header, Hello, Kind, Purpose, ACK_FIXED_LEN};

const SECRET: &str = "the job's own secret, which the stranger never sees";
const JOB: &str = "stranger-test";

/// Descriptors a rank may hold: far fewer than the stranger opens.
const RANK_FILES: u32 = 64;
/// Idle connections the stranger opens to each of a rank's ports.
const FLOOD: usize = 150;

fn start_rank(
    rank: u32,
    store: &str,
    iters: u32,
    progress: mpsc::Sender<u32>,
) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(r#"ulimit -n {RANK_FILES} && exec "$0" "$@""#),
            env!("CARGO_BIN_EXE_topoccl"),
        ])
        .args([
            "internal",
            "allreduce-loop",
            "--count",
            "65536",
            "--iters",
            &iters.to_string(),
        ])
        .env("TOPOCCL_RANK", rank.to_string())
        .env("TOPOCCL_WORLD_SIZE", "2")
        .env("TOPOCCL_STORE", store)
        .env("TOPOCCL_JOB_ID", JOB)
        .env("TOPOCCL_SECRET", SECRET)
        .env("TOPOCCL_TRANSPORT", "tcp")
        .env("TOPOCCL_TIMEOUT", "20s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a rank");
    let rx = common::watch_rank(&mut child, rank, progress);
    (Proc(child), rx)
}

/// The TCP ports process `pid` listens on (its sockets' inodes, found in /proc/net).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, state 0A = LISTEN, inode.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn a_stranger_cannot_read_join_or_abort_a_job_and_it_finishes_correctly() {
    let (_store, url) = start_store(&[("TOPOCCL_SECRET", SECRET)]);
    let addr = url.strip_prefix("tcp://").unwrap();
    let (tx, progress) = mpsc::channel();
    let mut ranks: Vec<(Proc, mpsc::Receiver<String>)> = (0..2)
        .map(|r| start_rank(r, &url, 6000, tx.clone()))
        .collect();
    for _ in 0..2 {
        progress
            .recv_timeout(Duration::from_secs(60))
            .expect("the ranks never got going");
    }

    // 1. The store: without the secret (or with a guess) no request is served, so the
    //    stranger reads nothing (no secret, no endpoints) and writes or deletes nothing.
    for guess in [None, Some(JobKey::from_secret(b"a guess"))] {
        let e = TcpStore::connect_with(addr, guess, Instant::now() + Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("refused this client")),
            "{e}"
        );
    }
    // The job's own clients still are.
    let job = TcpStore::connect_with(
        addr,
        Some(JobKey::from_secret(SECRET.as_bytes())),
        Instant::now() + Duration::from_secs(5),
    )
    .unwrap();
    let secret_key = format!("topoccl/{JOB}/world0/secret");
    assert_eq!(
        job.try_get(&secret_key).unwrap(),
        None,
        "the secret rests in the store"
    );

    // 2. Rank 1's listener: a hello claiming to be rank 0 with a guessed MAC is refused,
    //    and an abort notice sent after it reaches nobody.
    let namespace = format!("topoccl/{JOB}/world0");
    // Rank 1's heartbeat listener (published in the store) speaks no handshake: a stranger's
    // bytes there are not a beat under the job's key, and it closes without an answer.
    let hb = job
        .try_get(&format!("{namespace}/hb/1"))
        .unwrap()
        .expect("rank 1's heartbeat address");
    let hb: serde_json::Value = serde_json::from_slice(&hb).unwrap();
    let hb_port: u16 = hb["addr"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a heartbeat port");
    let ports = listening_ports(ranks[1].0 .0.id());
    assert!(ports.contains(&hb_port), "{ports:?} {hb_port}");
    let ports: Vec<u16> = ports.into_iter().filter(|&p| p != hb_port).collect();
    assert!(!ports.is_empty(), "rank 1 listens on no TCP port");
    {
        let mut s = TcpStream::connect(("127.0.0.1", hb_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"TCHB\x01\x00\x00\x00 not a beat under the job's key, padded to its length ....................................").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "the heartbeat listener answered a stranger"
        );
    }
    for port in ports {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let hello = Hello {
            purpose: Purpose::Control,
            stream: 0,
            world: 2,
            rank: 0,
            target: 1,
            job: wire::fnv1a(JOB.as_bytes(), wire::FNV_OFFSET),
            comm: wire::fnv1a(namespace.as_bytes(), wire::FNV_OFFSET),
            mac: [0x5a; 32],
        };
        s.write_all(&hello.encode()).unwrap();
        let mut ack = Vec::new();
        let _ = s.read_to_end(&mut ack);
        assert!(ack.len() > ACK_FIXED_LEN, "no answer from port {port}");
        let (refused, _) = wire::decode_ack_head(ack[..ACK_FIXED_LEN].try_into().unwrap()).unwrap();
        let reason = String::from_utf8_lossy(&ack[ACK_FIXED_LEN..]);
        assert!(
            refused && reason.contains("wrong secret"),
            "port {port}: {reason}"
        );
        let notice = AbortNotice {
            origin: 0,
            culprit: Some(0),
            reason: "forged by a stranger".into(),
        }
        .encode();
        let header = Header {
            kind: Kind::Abort,
            collective: None,
            dtype: topoccl::DType::U8,
            op: topoccl::ReduceOp::Sum,
            channel: 0,
            link_seq: 0,
            seq: 0,
            count: 0,
            len: notice.len() as u64,
            fingerprint: 0,
            root: 0,
            flags: 0,
        };
        let _ = s.write_all(&header.encode());
        let _ = s.write_all(&notice);
    }
    // 3. Idle connections, far more than a rank has descriptors: the rank closes the
    //    oldest of them to make room rather than failing its job. (Not on the heartbeat
    //    listeners: they keep at most 2 × watched + 8 connections and close the rest, but
    //    out of descriptors they stop accepting and their backlog fills, so the flood
    //    would wait on connects there instead of testing the data listener's rule.)
    let hb_ports: Vec<u16> = (0..2)
        .filter_map(|r| job.try_get(&format!("{namespace}/hb/{r}")).ok().flatten())
        .filter_map(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
        .filter_map(|v| v["addr"].as_str()?.rsplit(':').next()?.parse().ok())
        .collect();
    assert_eq!(hb_ports.len(), 2);
    let mut idle = Vec::new();
    for (p, _) in &ranks {
        for port in listening_ports(p.0.id())
            .into_iter()
            .filter(|p| !hb_ports.contains(p))
        {
            for _ in 0..FLOOD {
                if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                    idle.push(s);
                }
            }
        }
    }
    assert!(
        idle.len() >= FLOOD,
        "the flood opened {} connections",
        idle.len()
    );
    thread::sleep(Duration::from_millis(200));
    for (r, (p, _)) in ranks.iter_mut().enumerate() {
        assert!(
            p.0.try_wait().unwrap().is_none(),
            "rank {r} finished before the stranger was done: make the job longer ({:?})",
            p.0.try_wait()
        );
    }

    // 4. The job goes on and finishes with correct results (each rank checks every one).
    finish(&mut ranks);
}

/// Waits for every rank to exit and checks that each succeeded, blamed on no forgery.
fn finish(ranks: &mut [(Proc, mpsc::Receiver<String>)]) {
    for (r, (p, err)) in ranks.iter_mut().enumerate() {
        let until = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "rank {r} never finished");
            thread::sleep(Duration::from_millis(20));
        };
        let err = err.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
        assert!(status.success(), "rank {r}: {status}: {err}");
        assert!(!err.contains("forged"), "rank {r}: {err}");
    }
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    kb * 1024
}

/// Idle connections the stranger opens to the store: more than it takes from one address.
const STORE_FLOOD: usize = 400;
/// Large writes the stranger tries, each a SET of a 16 MiB value.
const BIG_WRITES: usize = 32;

#[test]
fn a_stranger_flooding_the_store_cannot_keep_a_job_out_or_grow_the_store() {
    let (store, url) = start_store(&[("TOPOCCL_SECRET", SECRET)]);
    let addr = url.strip_prefix("tcp://").unwrap();
    let before = rss(store.0.id());

    // 1. Large writes without the secret: the store reads the hello, refuses it and
    //    closes before reading a request, so none of the bytes is kept.
    let value = vec![0x42u8; 16 << 20];
    let key = format!("topoccl/{JOB}/world0/addr/0");
    let mut frame = Vec::with_capacity(value.len() + 64);
    let body_len = 1 + 4 + key.len() + 4 + value.len();
    frame.extend_from_slice(&(body_len as u32).to_be_bytes());
    frame.push(1); // SET
    frame.extend_from_slice(&(key.len() as u32).to_be_bytes());
    frame.extend_from_slice(key.as_bytes());
    frame.extend_from_slice(&(value.len() as u32).to_be_bytes());
    frame.extend_from_slice(&value);
    let mut refused = 0;
    for _ in 0..BIG_WRITES {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut greeting = [0u8; 11 + 16];
        s.read_exact(&mut greeting).unwrap();
        let mut hello = greeting[..10].to_vec();
        hello.extend_from_slice(&[0x5a; 32]);
        s.write_all(&hello).unwrap();
        // The frame cannot all go: the store stopped reading.
        if s.write_all(&frame).is_err() {
            refused += 1;
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        if !answer.is_empty() {
            assert_eq!(answer[0], 1, "the store welcomed a stranger");
        }
    }
    assert!(refused > 0, "every 16 MiB write went through");

    // 2. Idle connections that never say hello, more than the store takes from one
    //    address; they stay open while the job starts.
    let mut idle = Vec::new();
    for _ in 0..STORE_FLOOD {
        if let Ok(s) = TcpStream::connect(addr) {
            idle.push(s);
        }
    }
    assert!(idle.len() >= STORE_FLOOD / 2, "opened {}", idle.len());
    thread::sleep(Duration::from_millis(200));
    let grown = rss(store.0.id()).saturating_sub(before);
    assert!(grown < 64 << 20, "the store grew by {grown} bytes");

    // 3. The job's ranks (from the same address as the stranger) get into the store once
    //    the idle connections are past their hello deadline, and finish correctly.
    let (tx, progress) = mpsc::channel();
    let start = Instant::now();
    let mut ranks: Vec<(Proc, mpsc::Receiver<String>)> = (0..2)
        .map(|r| start_rank(r, &url, 200, tx.clone()))
        .collect();
    for _ in 0..2 {
        progress
            .recv_timeout(Duration::from_secs(60))
            .expect("the ranks never got going");
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the ranks took {:?} to get in",
        start.elapsed()
    );
    finish(&mut ranks);
    drop(idle);
    let grown = rss(store.0.id()).saturating_sub(before);
    assert!(grown < 64 << 20, "the store grew by {grown} bytes");
}
