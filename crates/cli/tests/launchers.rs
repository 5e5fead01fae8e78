//! Ranks started by the launchers people use — torchrun's environment, Slurm's, and a real
//! `mpirun` — form a communicator and compute right (`bench --check`).

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};

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

/// A port nobody listens on right now (the store's rank 0 binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A `topoccl` command with none of the launchers' variables inherited from the test's own
/// environment (CI might itself run under Slurm or a launcher).
fn topoccl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_topoccl"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOPOCCL_")
            || k.starts_with("OMPI_")
            || k.starts_with("SLURM_")
            || ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"].contains(&k.as_str())
            || k.starts_with("MASTER_")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOPOCCL_TIMEOUT", "20s")
        .env("TOPOCCL_INIT_TIMEOUT", "30s");
    cmd
}

fn show(what: &str, out: &Output) -> String {
    let text = format!(
        "{what}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    text
}

/// Rank 0's report: every data row has 0 wrong elements out of and in place.
fn assert_checked(report: &str, ranks: u32) {
    assert!(
        report.contains(&format!("{ranks} ranks")),
        "the report is not for {ranks} ranks"
    );
    let rows: Vec<Vec<&str>> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.len() >= 2, "expected a row per size");
    for r in rows {
        assert_eq!((r[8], r[12]), ("0", "0"), "wrong elements in {r:?}");
    }
}

/// Starts `ranks` processes with `env(rank)` added and waits for all of them.
fn spawn_ranks(ranks: u32, env: impl Fn(u32) -> Vec<(String, String)>) -> Vec<Output> {
    let children: Vec<Child> = (0..ranks)
        .map(|r| {
            topoccl()
                .args(BENCH)
                .envs(env(r))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a rank")
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for a rank"))
        .collect()
}

fn check_job(outputs: &[Output], ranks: u32) {
    for (r, out) in outputs.iter().enumerate() {
        let text = show(&format!("rank {r}"), out);
        assert!(out.status.success(), "rank {r} failed:\n{text}");
    }
    assert_checked(&String::from_utf8_lossy(&outputs[0].stdout), ranks);
}

#[test]
fn torchrun_environment() {
    let port = free_port().to_string();
    let outputs = spawn_ranks(3, |r| {
        [
            ("RANK", r.to_string()),
            ("WORLD_SIZE", "3".into()),
            ("LOCAL_RANK", r.to_string()),
            ("LOCAL_WORLD_SIZE", "3".into()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    });
    check_job(&outputs, 3);
}

#[test]
fn slurm_environment() {
    let port = free_port().to_string();
    let outputs = spawn_ranks(2, |r| {
        [
            ("SLURM_PROCID", r.to_string()),
            ("SLURM_NTASKS", "2".into()),
            ("SLURM_LOCALID", r.to_string()),
            ("MASTER_ADDR", "127.0.0.1".into()),
            ("MASTER_PORT", port.clone()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec()
    });
    check_job(&outputs, 2);
}

/// A real Open MPI job. `.ci/run` installs Open MPI; elsewhere the test says it skips.
#[test]
fn open_mpi_mpirun() {
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIP open_mpi_mpirun: `mpirun` not found (apt-get install openmpi-bin)");
        return;
    }
    let port = free_port();
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "3"])
        .args(["-x", "MASTER_ADDR=127.0.0.1"])
        .args(["-x", &format!("MASTER_PORT={port}")])
        .args([
            "-x",
            "TOPOCCL_TIMEOUT=20s",
            "-x",
            "TOPOCCL_INIT_TIMEOUT=30s",
        ])
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .args(BENCH)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("run mpirun");
    let text = show("mpirun", &out);
    assert!(out.status.success(), "mpirun job failed:\n{text}");
    assert_checked(&String::from_utf8_lossy(&out.stdout), 3);
}
