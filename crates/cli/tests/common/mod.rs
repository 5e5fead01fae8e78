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
