//! The flight recorder end to end: a rank stops calling (stuck outside any call); the
//! others time out and write their dumps; the launcher asks the stuck rank for its dump
//! (SIGUSR1) before stopping it; `topoccl doctor` reads the three dumps and names the rank
//! that never arrived. Also: a dump directory with a corrupt file, and dumps of two jobs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("flight-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn doctor(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .arg("doctor")
        .arg(dir)
        .output()
        .expect("run topoccl doctor");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    eprintln!("doctor {}\n--- stdout\n{o}--- stderr\n{e}", dir.display());
    (out.status.code().unwrap_or(-1), o, e)
}

/// Runs the stuck-rank job with its dumps in `flight`; returns the job's dump directory.
fn stuck_rank_job(flight: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["run", "-n", "3", "--timeout", "60s", "--"])
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .args([
            "internal",
            "allreduce-loop",
            "--count",
            "256",
            "--iters",
            "20",
        ])
        .args(["--hang-rank", "2", "--hang-at", "5", "--hang-secs", "30"])
        .env("TOPOCCL_TIMEOUT", "2s")
        .env("TOPOCCL_FLIGHT_DIR", flight)
        .env_remove("TOPOCCL_FLIGHT_ENTRIES")
        .output()
        .expect("run the job");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("job stderr:\n{stderr}");
    assert!(!out.status.success(), "the job must fail");
    let jobs: Vec<PathBuf> = std::fs::read_dir(flight)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(jobs.len(), 1, "one job's directory: {jobs:?}");
    jobs[0].clone()
}

#[test]
fn doctor_names_the_rank_that_never_arrived() {
    let flight = scratch("stuck");
    let job = stuck_rank_job(&flight);
    // Dumps are written to a temporary name and renamed; a rank stopped mid-write (the
    // launcher's SIGTERM follows SIGUSR1 by a second) may leave its temporary file.
    let dumps: Vec<String> = std::fs::read_dir(&job)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert_eq!(
        dumps.len(),
        3,
        "every rank dumped (the stuck one on SIGUSR1): {dumps:?}"
    );
    let (code, stdout, _) = doctor(&job);
    assert_eq!(code, 1, "a finding exits 1");
    assert!(
        stdout.contains("rank 2 never arrived"),
        "the stuck rank is named: {stdout}"
    );

    // A corrupt dump is an error naming the file and the position; exit 2.
    let bad = scratch("corrupt");
    for d in &dumps {
        std::fs::copy(job.join(d), bad.join(d)).unwrap();
    }
    let victim = bad.join(&dumps[0]);
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, &text[..text.len() / 2]).unwrap();
    let (code, _, stderr) = doctor(&bad);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&dumps[0]) && stderr.contains(':'),
        "names the file and where: {stderr}"
    );

    // Dumps of two jobs are refused.
    let mixed = scratch("mixed");
    let other = stuck_rank_job(&scratch("stuck-again"));
    std::fs::copy(job.join(&dumps[0]), mixed.join("a.json")).unwrap();
    let first_other = std::fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    std::fs::copy(first_other, mixed.join("b.json")).unwrap();
    let (code, _, stderr) = doctor(&mixed);
    assert_eq!(code, 2);
    assert!(stderr.contains("job_id"), "says the jobs differ: {stderr}");
}
