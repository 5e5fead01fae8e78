//! The conformance matrix across real processes on loopback: every collective × each of
//! its algorithms × data types × world sizes 1, 2, 3, 4, 5, 8 × sizes 0, 1, 7 and 1 MiB + 3
//! elements (both placements), each rank's output equal to the reference executor's bit
//! for bit. `topoccl selftest` launches the ranks through `topoccl run`. The ranks share
//! one host, so the default transport is shared memory; some worlds run again over TCP.

use std::process::Command;

fn selftest(world: u32) {
    selftest_over(world, "auto");
}

fn selftest_over(world: u32, transport: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["selftest", "-n", &world.to_string(), "--timeout", "10m"])
        .env("TOPOCCL_TIMEOUT", "120s")
        .env("TOPOCCL_TRANSPORT", transport)
        .output()
        .expect("run topoccl selftest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "world {world} over {transport}: {stdout}\n{}",
        stderr.lines().take(30).collect::<Vec<_>>().join("\n")
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("selftest:"))
        .unwrap_or_else(|| panic!("no summary in: {stdout}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() >= 2 && nums[0] == nums[1] && nums[0] > 1000,
        "{line}"
    );
    assert!(line.contains(&format!("on {world} ranks")), "{line}");
}

#[test]
fn world_1() {
    selftest(1);
}

#[test]
fn world_2() {
    selftest(2);
}

#[test]
fn world_3() {
    selftest(3);
}

#[test]
fn world_4() {
    selftest(4);
}

#[test]
fn world_5() {
    selftest_over(5, "shm");
}

#[test]
fn world_5_tcp() {
    selftest_over(5, "tcp");
}

#[test]
fn world_2_tcp() {
    selftest_over(2, "tcp");
}

#[test]
fn world_8() {
    selftest(8);
}
