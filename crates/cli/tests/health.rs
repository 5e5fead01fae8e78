//! Heartbeats between real processes: a rank stopped with SIGSTOP is hung in the others'
//! view (`topoccl status` on a rank's metrics endpoint) and alive again after SIGCONT; a
//! SIGKILLed one is dead (exited), named by the ranks that watched it; the launcher's
//! `/health` merges every rank's view; a link stalled inside a rack fails its call within
//! the rack's progress deadline, naming the link. Detection times are printed (the figures
//! in docs/reliability.md).

mod common;

use common::{free_port, start_store, Proc, Stopped};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const WORLD: u32 = 3;

fn status(addr: &str) -> (Option<i32>, serde_json::Value, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["status", addr, "--json", "--timeout", "3s"])
        .output()
        .expect("run topoccl status");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn state_of(json: &serde_json::Value, rank: u64) -> String {
    json["ranks"][rank as usize]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Polls `topoccl status addr` until rank `rank` is in `want`; returns how long it took.
fn wait_state(
    addr: &str,
    rank: u64,
    want: &str,
    within: Duration,
) -> (Duration, serde_json::Value) {
    let start = Instant::now();
    loop {
        let (_, json, err) = status(addr);
        if state_of(&json, rank) == want {
            return (start.elapsed(), json);
        }
        assert!(
            start.elapsed() < within,
            "rank {rank} never became {want:?} within {within:?}: {json} {err}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: a signal to a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn stopped_ranks_are_hung_then_alive_and_killed_ones_dead() {
    let (_store, url) = start_store(&[]);
    let ports: Vec<String> = (0..WORLD).map(|_| free_port().to_string()).collect();
    let ranks: Vec<Proc> = (0..WORLD)
        .map(|r| {
            Proc(
                Command::new(env!("CARGO_BIN_EXE_topoccl"))
                    // One call, then a long "compute": failures land outside calls.
                    .args(["internal", "allreduce-loop", "--count", "1024"])
                    .args(["--iters", "2", "--compute-ms", "60000"])
                    .env("TOPOCCL_RANK", r.to_string())
                    .env("TOPOCCL_WORLD_SIZE", WORLD.to_string())
                    .env("TOPOCCL_STORE", &url)
                    .env("TOPOCCL_JOB_ID", "health-test")
                    .env("TOPOCCL_SECRET", "health-secret")
                    .env("TOPOCCL_METRICS", &ports[r as usize])
                    .env("TOPOCCL_PROBE", "0")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a rank"),
            )
        })
        .collect();
    let ask = &ports[0];
    // Everyone alive, as rank 0 sees it.
    let start = Instant::now();
    loop {
        let (code, json, _) = status(ask);
        if code == Some(0) && (0..WORLD as u64).all(|r| state_of(&json, r) == "alive") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never all alive: {json}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    signal(ranks[1].0.id(), libc::SIGSTOP);
    let (took, json) = wait_state(ask, 1, "hung (stopped)", Duration::from_secs(10));
    eprintln!(
        "SIGSTOP → hung (stopped) seen by rank 0 in {} ms",
        took.as_millis()
    );
    assert!(took < Duration::from_millis(1_000 + 1_000), "{took:?}");
    assert_eq!(
        json["ranks"][1]["said_by"],
        serde_json::json!([0]),
        "{json}"
    );
    let (code, ..) = status(ask);
    assert_eq!(code, Some(1), "a hung rank is a failure");

    signal(ranks[1].0.id(), libc::SIGCONT);
    let (took, _) = wait_state(ask, 1, "alive", Duration::from_secs(10));
    eprintln!("SIGCONT → alive in {} ms", took.as_millis());

    let killed = Instant::now();
    signal(ranks[2].0.id(), libc::SIGKILL);
    let (_, json) = wait_state(ask, 2, "dead (exited)", Duration::from_secs(10));
    let took = killed.elapsed();
    eprintln!("SIGKILL → dead (exited) in {} ms", took.as_millis());
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        json["ranks"][2]["said_by"],
        serde_json::json!([0]),
        "{json}"
    );
    // Rank 1 says so too.
    let (_, json, _) = status(&ports[1]);
    assert_eq!(state_of(&json, 2), "dead (exited)", "{json}");
    drop(ranks);
}

#[test]
fn the_launchers_health_page_merges_every_rank_and_a_wrong_address_is_named() {
    let job_addr = free_port().to_string();
    let _job = Stopped(
        Command::new(env!("CARGO_BIN_EXE_topoccl"))
            .args([
                "run",
                "-n",
                "3",
                "--timeout",
                "120s",
                "--metrics",
                &job_addr,
            ])
            .args([
                "--",
                env!("CARGO_BIN_EXE_topoccl"),
                "internal",
                "allreduce-loop",
            ])
            .args(["--count", "1024", "--iters", "2", "--compute-ms", "60000"])
            .env("TOPOCCL_PROBE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the job"),
    );
    let start = Instant::now();
    loop {
        let (code, json, _) = status(&job_addr);
        let ranks = json["ranks"].as_array().cloned().unwrap_or_default();
        if code == Some(0)
            && ranks.len() == 3
            && ranks
                .iter()
                .all(|r| r["answered"] == true && r["state"] == "alive")
        {
            // Every rank is watched by both others (one host, three ranks).
            assert!(
                ranks
                    .iter()
                    .all(|r| r["said_by"].as_array().unwrap().len() == 2),
                "{json}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never all alive: {json}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing listens there.
    let nobody = free_port().to_string();
    let (code, _, err) = status(&nobody);
    assert_eq!(code, Some(2));
    assert!(err.contains(&nobody) && err.contains("--metrics"), "{err}");
}

/// Four ranks, two racks: ranks 0 and 1 on hosts h0 and h1 of rack 0, ranks 2 and 3 on
/// rack 1; the flat ring passes 0 → 1.
fn racks_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = String::from(
        "name = \"two-racks\"\nranks = [\"h0\", \"h1\", \"h2\", \"h3\"]\n\n[[node]]\nname = \
         \"leaf0\"\nkind = \"switch\"\ntier = \"leaf\"\n\n[[node]]\nname = \"leaf1\"\nkind = \
         \"switch\"\ntier = \"leaf\"\n\n[[link]]\na = \"leaf0\"\nb = \"leaf1\"\nbandwidth = \
         \"8Gbps\"\nlatency = \"20us\"\n",
    );
    for h in 0..4 {
        text.push_str(&format!(
            "\n[[node]]\nname = \"h{h}\"\nkind = \"host\"\n\n[[link]]\na = \"h{h}\"\nb = \
             \"leaf{}\"\nbandwidth = \"8Gbps\"\nlatency = \"20us\"\n",
            h / 2
        ));
    }
    let path = dir.join("racks.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_link_stalled_inside_a_rack_fails_within_the_racks_deadline_naming_it() {
    let dir = std::env::temp_dir().join(format!("topoccl-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topo = racks_file(&dir);
    let began = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["run", "-n", "4", "--timeout", "120s", "--"])
        .args([env!("CARGO_BIN_EXE_topoccl"), "internal", "allreduce-loop"])
        .args(["--count", "4096", "--iters", "5"])
        .env("TOPOCCL_TOPO", &topo)
        .env("TOPOCCL_PROBE", "0")
        .env("TOPOCCL_ALGO", "allreduce:ring")
        .env("TOPOCCL_FAULTS", "stall@rank0->rank1")
        .env("TOPOCCL_PROGRESS_DEADLINE", "on")
        .env("TOPOCCL_TIMEOUT", "30s")
        .output()
        .expect("run the job");
    let took = began.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    // The ends of the link name it, at the rack's deadline.
    let line = err
        .lines()
        .find(|l| l.contains("moved no byte for"))
        .unwrap_or_else(|| panic!("no stalled link named: {err}"));
    assert!(
        line.contains("rank 0 to rank 1 (rack)") || line.contains("rank 1 to rank 0 (rack)"),
        "{line}"
    );
    assert!(line.contains("progress deadline 200 ms"), "{line}");
    let ms: u64 = line
        .split("moved no byte for ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("the stalled time");
    eprintln!("stall inside a rack failed after {ms} ms without progress (job {took:?}): {line}");
    assert!((200..200 + 300).contains(&ms), "{line}");
    // Well inside the whole-call deadline.
    assert!(took < Duration::from_secs(25), "{took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
