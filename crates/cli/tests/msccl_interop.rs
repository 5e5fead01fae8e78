//! `topoccl plan --format msccl-xml` produces XML that an independent MSCCL interpreter
//! (tools/msccl_interp.py, written from the format's documentation and the MSCCL executor's
//! rules, sharing no code with the exporter) accepts in strict mode and that computes the
//! collective under randomised thread-block scheduling.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Some("python3")
    } else {
        eprintln!("SKIP: python3 is not installed; the MSCCL interoperability check needs it");
        None
    }
}

fn export(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(["plan"])
        .args(args)
        .args(["--format", "msccl-xml"])
        .output()
        .expect("run topoccl");
    assert!(
        out.status.success(),
        "topoccl plan {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 xml")
}

/// Runs the interpreter on `xml`; returns (exit code, output).
fn interpret(py: &str, xml: &str) -> (i32, String) {
    let mut child = Command::new(py)
        .arg(repo_root().join("tools/msccl_interp.py"))
        .args(["-", "--strict", "--trials", "12", "--seed", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start interpreter");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(xml.as_bytes())
        .expect("feed xml");
    let out = child.wait_with_output().expect("interpreter output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn exported_plans_run_in_an_independent_msccl_interpreter() {
    let Some(py) = python() else { return };
    let cases: &[&[&str]] = &[
        &["allreduce", "--ranks", "8", "--algo", "ring"],
        &["allreduce", "--ranks", "8", "--algo", "rhd"],
        &["allreduce", "--ranks", "8", "--algo", "tree"],
        &["allgather", "--ranks", "8", "--algo", "ring"],
        &["reducescatter", "--ranks", "8", "--algo", "ring"],
        &[
            "allreduce",
            "--ranks",
            "8",
            "--algo",
            "ring",
            "--chunks",
            "2",
            "--in-place",
        ],
        &["allreduce", "--ranks", "6", "--algo", "rhd", "--in-place"],
        &[
            "allreduce",
            "--ranks",
            "7",
            "--algo",
            "tree",
            "--chunks",
            "3",
        ],
        &["allreduce", "--ranks", "8", "--algo", "rd"],
        &["allgather", "--ranks", "5", "--algo", "bruck", "--in-place"],
        &[
            "reducescatter",
            "--ranks",
            "4",
            "--algo",
            "ring",
            "--in-place",
        ],
        &["alltoall", "--ranks", "5", "--algo", "pairwise"],
    ];
    for args in cases {
        let xml = export(args);
        let (code, text) = interpret(py, &xml);
        assert_eq!(code, 0, "{args:?}: interpreter said: {text}");
        assert!(text.starts_with("ok:"), "{args:?}: {text}");
    }
}

#[test]
fn the_interpreter_catches_a_missing_dependency() {
    let Some(py) = python() else { return };
    let xml = export(&["allreduce", "--ranks", "8", "--algo", "ring"]);
    // Drop every cross-thread-block dependency: sends may now race ahead of reductions.
    let mut broken = String::new();
    for line in xml.lines() {
        let mut l = line.to_string();
        if let (Some(a), Some(b)) = (l.find("depid=\""), l.find(" hasdep=")) {
            l.replace_range(a..b, "depid=\"-1\" deps=\"-1\"");
        }
        broken.push_str(&l);
        broken.push('\n');
    }
    assert_ne!(broken, xml);
    let (code, text) = interpret(py, &broken);
    assert_eq!(code, 1, "expected a wrong result, got: {text}");
    assert!(text.contains("wrong result"), "{text}");
}

/// The interpreter's own tests: hand-written correct and broken algorithms (races,
/// deadlocks, size mismatches, dependency rules) that it must accept or refuse.
#[test]
fn interpreter_self_tests() {
    let Some(py) = python() else { return };
    let out = Command::new(py)
        .args(["-m", "unittest", "tools/test_msccl_interp.py"])
        .current_dir(repo_root())
        .output()
        .expect("run the interpreter's tests");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
