//! Progress bars of `selftest`, `tune` and `sim` are drawn only on a terminal: run by the
//! tests (stderr a pipe) the commands write no bar, no control characters and no report
//! file; a rank asked for reports (TOPOCCL_PROGRESS_FILE, as the launching process sets it
//! on a terminal) writes its last step there.

mod common;

use common::{example, topoccl, topoccl_env};
use std::path::{Path, PathBuf};
use std::process::Output;

fn scratch(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("progress-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Checks that `out` succeeded and that its stderr holds no drawing: no carriage return,
/// no escape sequence, no bar.
#[track_caller]
fn quiet(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}') && !err.contains("[="),
        "drawing on stderr: {err:?}"
    );
    err
}

#[test]
fn selftest_without_a_terminal_draws_nothing_and_asks_for_no_reports() {
    let file = scratch("selftest");
    let file_env = file.to_str().unwrap();
    let out = topoccl_env(
        &[
            "selftest",
            "-n",
            "2",
            "--counts",
            "1",
            "--collectives",
            "allreduce",
        ],
        &[("TOPOCCL_PROGRESS_FILE", file_env)],
    );
    let err = quiet(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cases passed on 2 ranks"), "{stdout}");
    // Only the launcher's own lines, if any, and never a rank's line about progress.
    assert!(!err.contains("selftest ["), "{err}");
    assert!(
        !file.exists(),
        "a launcher without a terminal must not pass the report file on"
    );
}

#[test]
fn a_rank_asked_for_reports_writes_its_last_step() {
    let file = scratch("rank");
    let out = topoccl_env(
        &[
            "run",
            "-n",
            "2",
            "--",
            env!("CARGO_BIN_EXE_topoccl"),
            "selftest",
            "--counts",
            "1",
            "--collectives",
            "allreduce",
        ],
        &[("TOPOCCL_PROGRESS_FILE", file.to_str().unwrap())],
    );
    quiet(&out);
    let report = std::fs::read_to_string(&file).expect("rank 0 wrote a report");
    let words: Vec<&str> = report.split_whitespace().collect();
    assert!(
        words.len() == 3 && words[0] == words[1] && words[2] == "done",
        "{report:?}"
    );
    assert!(words[0].parse::<u64>().unwrap() > 0, "{report:?}");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn tune_and_a_large_sim_draw_nothing() {
    let table = scratch("tune.json");
    let out = topoccl(&[
        "tune",
        "--topo",
        &example("dgx-pair.toml"),
        "-e",
        "1M",
        "-o",
        table.to_str().unwrap(),
    ]);
    assert_eq!(quiet(&out), "");
    assert!(table.exists());
    let _ = std::fs::remove_file(&table);
    // 1,024 ranks: above the size where a terminal would show a spinner.
    let out = topoccl(&[
        "sim",
        "--topo",
        &example("fat-tree-1k.toml"),
        "--size",
        "1M",
        "--algo",
        "ring",
    ]);
    assert_eq!(quiet(&out), "");
}
