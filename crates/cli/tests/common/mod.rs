//! Shared by the CLI's integration tests.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs the `topoccl` binary with `args` and `env` on top of a clean selection
/// environment (no inherited TOPOCCL_ALGO / RULES / TOPO), echoing its output so a failing
/// test shows what the command said.
pub fn topoccl_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(args)
        .env_remove("TOPOCCL_ALGO")
        .env_remove("TOPOCCL_RULES")
        .env_remove("TOPOCCL_TOPO")
        .envs(env.iter().copied())
        .output()
        .expect("run topoccl");
    eprintln!(
        "topoccl {}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`topoccl_env`] with nothing added.
pub fn topoccl(args: &[&str]) -> Output {
    topoccl_env(args, &[])
}

/// Runs `scripts/NAME.sh` with the `topoccl` binary and a work directory under the test
/// target directory, on a clean selection environment plus `env`, echoing its output.
/// `None` when the script skipped (exit 77: network namespaces cannot be made here), after
/// saying SKIP; panics when it failed.
pub fn netns_script(name: &str, env: &[(&str, &str)]) -> Option<String> {
    let script = format!("{}/../../scripts/{name}.sh", env!("CARGO_MANIFEST_DIR"));
    let work = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_topoccl"))
        .arg(&work)
        .env_remove("TOPOCCL_ALGO")
        .env_remove("TOPOCCL_RULES")
        .env_remove("TOPOCCL_TOPO")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.code() == Some(77) {
        eprintln!("SKIP {name}: {}", stdout.trim());
        return None;
    }
    assert!(out.status.success(), "scripts/{name}.sh failed");
    Some(stdout)
}
