//! A rank SIGKILLed in the middle of a 64 MiB all-reduce: the three others return an error
//! naming it within their deadline (3 s) + 1 s, many times in a row, without a hang — over
//! shared memory and over TCP — and the job leaves nothing in `/dev/shm`.

mod common;

use common::start_store;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const WORLD: u32 = 4;
/// 64 MiB of f32.
const COUNT: &str = "16777216";

struct Rank {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Rank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_rank(
    rank: u32,
    store: &str,
    job: &str,
    transport: &str,
    progress: mpsc::Sender<u32>,
) -> Rank {
    let mut child = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args([
            "internal",
            "allreduce-loop",
            "--count",
            COUNT,
            "--iters",
            "100000",
        ])
        .env("TOPOCCL_RANK", rank.to_string())
        .env("TOPOCCL_WORLD_SIZE", WORLD.to_string())
        .env("TOPOCCL_STORE", store)
        .env("TOPOCCL_JOB_ID", job)
        .env("TOPOCCL_TIMEOUT", "3s")
        .env("TOPOCCL_TRANSPORT", transport)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a rank");
    let rx = common::watch_rank(&mut child, rank, progress);
    Rank { child, stderr: rx }
}

/// What `/dev/shm` holds now.
fn dev_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn killed_rank_is_named_by_every_survivor_over_shm() {
    kill_repeatedly("shm", 12);
}

#[test]
fn killed_rank_is_named_by_every_survivor_over_tcp() {
    kill_repeatedly("tcp", 8);
}

fn kill_repeatedly(transport: &str, reps: u32) {
    let (_store, url) = start_store(&[]);
    let before = dev_shm();
    for rep in 0..reps {
        let job = format!("kill-{transport}-{rep}-{}", std::process::id());
        let (tx, progress) = mpsc::channel();
        let mut ranks: Vec<Rank> = (0..WORLD)
            .map(|r| start_rank(r, &url, &job, transport, tx.clone()))
            .collect();
        // Wait until every rank has finished an iteration: they are in the loop.
        let mut seen = [false; WORLD as usize];
        let until = Instant::now() + Duration::from_secs(60);
        while !seen.iter().all(|s| *s) {
            let r = progress
                .recv_timeout(until.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{transport} rep {rep}: ranks never got going"));
            seen[r as usize] = true;
        }
        // Land at different points of a collective each time.
        thread::sleep(Duration::from_millis(17 * rep as u64 % 150));
        let victim = rep % WORLD;
        ranks[victim as usize].child.kill().unwrap();
        let killed = Instant::now();
        for (r, rank) in ranks.iter_mut().enumerate() {
            if r as u32 == victim {
                rank.child.wait().unwrap();
                continue;
            }
            let status = loop {
                if let Some(s) = rank.child.try_wait().unwrap() {
                    break s;
                }
                if killed.elapsed() > Duration::from_secs(10) {
                    let _ = rank.child.kill();
                    panic!("rep {rep}: rank {r} still running 10 s after rank {victim} was killed");
                }
                thread::sleep(Duration::from_millis(5));
            };
            let took = killed.elapsed();
            let err = rank
                .stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            assert_eq!(
                status.code(),
                Some(1),
                "{transport} rep {rep} rank {r}: {err}"
            );
            let culprits = err
                .lines()
                .find_map(|l| l.strip_prefix("culprits: "))
                .unwrap_or("");
            assert_eq!(
                culprits,
                victim.to_string(),
                "{transport} rep {rep}: rank {r} blamed '{culprits}', not the killed rank {victim}: {err}"
            );
            assert!(
                took < Duration::from_secs(4),
                "{transport} rep {rep}: rank {r} took {took:?} to report rank {victim}: {err}"
            );
        }
        let left: Vec<String> = dev_shm()
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        assert!(
            left.is_empty(),
            "{transport} rep {rep}: the job left {left:?} in /dev/shm"
        );
    }
}
