//! Jobs that meet in a real etcd (started per test on free ports; SKIP when no etcd
//! binary is installed): `topoccl run -n 16 --store etcd://...` all-reducing with
//! `bench --check`, ranks under torchrun's environment with `TOPOCCL_STORE=etcd://...`,
//! and an etcd address nobody serves failing within the init deadline, naming it.

#[path = "../../runtime/tests/support/etcd_server.rs"]
mod etcd_server;

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use topoccl::store::{EtcdOptions, EtcdStore};

const BENCH: [&str; 13] = [
    "bench",
    "allreduce",
    "-b",
    "8",
    "-e",
    "64K",
    "-f",
    "16",
    "--iters",
    "2",
    "--warmup",
    "1",
    "--check",
];

/// A `topoccl` command with no launcher variables inherited from the test's environment.
fn topoccl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topoccl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOPOCCL_")
            || k.starts_with("OMPI_")
            || k.starts_with("SLURM_")
            || k.starts_with("MASTER_")
            || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"].contains(&k.as_str())
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOPOCCL_TIMEOUT", "30s")
        .env("TOPOCCL_INIT_TIMEOUT", "60s");
    cmd
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Keys etcd holds under `topoccl/` (every job's).
fn job_keys(server: &EtcdServer) -> u64 {
    let s = EtcdStore::connect_with(
        std::slice::from_ref(&server.client),
        EtcdOptions::default(),
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    s.count_prefix("topoccl/").unwrap()
}

#[test]
fn sixteen_ranks_meet_in_etcd_and_all_reduce() {
    let Some(server) = EtcdServer::start("run16") else {
        return;
    };
    let url = server.url();
    let out = topoccl()
        .args([
            "run",
            "-n",
            "16",
            "--store",
            &url,
            "--timeout",
            "240s",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .args(BENCH)
        .output()
        .unwrap();
    let text = show(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("communicator of 16 ranks created in"),
        "{text}"
    );
    assert!(
        !text.contains("MISMATCH") && !text.contains("FAILED"),
        "{text}"
    );
    // The launcher removed the job's keys once the ranks were gone.
    assert_eq!(job_keys(&server), 0, "{text}");
}

/// torchrun's variables for rank and world, the store from `TOPOCCL_STORE`: no rank
/// hosts anything.
#[test]
fn torchrun_ranks_meet_in_etcd() {
    let Some(server) = EtcdServer::start("torchrun") else {
        return;
    };
    let world = 4;
    let children: Vec<_> = (0..world)
        .map(|rank| {
            topoccl()
                .args(BENCH)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("TORCHELASTIC_RUN_ID", "etcd-torchrun")
                .env("TOPOCCL_STORE", server.url())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", show(&out));
    }
}

/// An etcd address where nothing listens: `topoccl run` and a rank reading
/// `TOPOCCL_STORE` both fail within the init deadline, naming the address and what to do.
#[test]
fn an_etcd_address_nobody_serves_fails_in_time() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = format!("etcd://127.0.0.1:{port}");
    let start = Instant::now();
    let out = topoccl()
        .env("TOPOCCL_INIT_TIMEOUT", "1s")
        .args(["run", "-n", "2", "--store", &url, "--", "true"])
        .output()
        .unwrap();
    let took = start.elapsed();
    let text = show(&out);
    assert!(!out.status.success(), "{text}");
    assert!(took < Duration::from_secs(10), "{took:?} {text}");
    assert!(
        text.contains(&url) && text.contains("check that etcd is running"),
        "{text}"
    );

    let start = Instant::now();
    let out = topoccl()
        .args(BENCH)
        .env("TOPOCCL_INIT_TIMEOUT", "1s")
        .env("TOPOCCL_RANK", "0")
        .env("TOPOCCL_WORLD_SIZE", "2")
        .env("TOPOCCL_STORE", &url)
        .output()
        .unwrap();
    let text = show(&out);
    assert!(!out.status.success(), "{text}");
    assert!(start.elapsed() < Duration::from_secs(10), "{text}");
    assert!(text.contains(&url), "{text}");

    let out = topoccl()
        .args(["run", "-n", "2", "--store", "etcd://nohost", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains("HOST:PORT"), "{}", show(&out));
}
