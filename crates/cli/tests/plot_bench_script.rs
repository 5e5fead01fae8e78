//! scripts/plot-bench.py: reads `topoccl bench --json` rows into one series per file,
//! collective and placement (`--series`, no matplotlib needed), refuses files that are not
//! bench output with the file named, and draws a PNG where matplotlib is installed (the
//! test venv, `~/.cache/topoccl-venv` or `$TOPOCCL_VENV`; SKIP otherwise).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/plot-bench.py")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("plot-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `python` runs the script with `args`; `None` when that Python cannot be started.
fn run(python: &str, args: &[&str]) -> Option<Output> {
    Command::new(python).arg(script()).args(args).output().ok()
}

fn row(collective: &str, size: u64, busbw: f64, in_place: bool) -> String {
    let timing = |bw: f64| {
        format!(r#"{{"time_us": 1.0, "algbw_gbps": {bw}, "busbw_gbps": {bw}, "wrong": 0}}"#)
    };
    format!(
        r#"{{"collective": "{collective}", "size_bytes": {size}, "count": 1, "dtype": "f32",
            "op": "sum", "root": -1, "algorithm": "ring", "ranks": 2,
            "out_of_place": {}, "in_place": {}}}"#,
        timing(busbw),
        if in_place {
            timing(busbw / 2.0)
        } else {
            "null".to_string()
        }
    )
}

fn write_bench(path: &Path, rows: &[String]) {
    std::fs::write(path, format!("[{}]", rows.join(",\n"))).unwrap();
}

/// The test venv's Python, if it exists.
fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("TOPOCCL_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/topoccl-venv")))?;
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

#[test]
fn series_errors_and_a_png() {
    let dir = scratch("all");
    let (a, b) = (dir.join("tcp.json"), dir.join("shm.json"));
    write_bench(
        &a,
        &[
            row("all_reduce", 8, 0.5, true),
            row("all_reduce", 1024, 2.0, true),
            row("all_to_all", 8, 0.25, false),
        ],
    );
    write_bench(&b, &[row("all_reduce", 8, 4.0, true)]);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let Some(out) = run("python3", &["--series", a, &format!("{b}=shared memory")]) else {
        eprintln!("SKIP: python3 cannot be started");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "tcp\tall_reduce\tout of place\t8:0.5 1024:2",
            "tcp\tall_reduce\tin place\t8:0.25 1024:1",
            "tcp\tall_to_all\tout of place\t8:0.25",
            "shared memory\tall_reduce\tout of place\t8:4",
            "shared memory\tall_reduce\tin place\t8:2",
        ]
    );
    // One collective, spelled as `topoccl bench` takes it.
    let out = run("python3", &["--series", "--collective", "alltoall", a]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tcp\tall_to_all\tout of place\t8:0.25\n"
    );

    // What is not bench output is refused, naming the file.
    let bad = dir.join("bad.json");
    for (text, says) in [
        ("{\"rows\": []}", "expected a list of rows"),
        ("[{\"size_bytes\": 8}]", "row 0 is not a bench row"),
        ("[1,", "not JSON"),
        ("[]", "no rows"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = run("python3", &["--series", bad.to_str().unwrap()]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(
            err.contains("bad.json") && err.contains(says),
            "{text}: {err}"
        );
    }

    let png = dir.join("busbw.png");
    // A Python without matplotlib says so, naming the package, and draws nothing.
    let has_matplotlib = Command::new("python3")
        .args(["-c", "import matplotlib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_matplotlib {
        let out = run("python3", &["-o", png.to_str().unwrap(), a]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !png.exists(), "{err}");
        assert!(err.contains("needs the Python package matplotlib"), "{err}");
        assert!(err.contains("pip install matplotlib"), "{err}");
    }
    let Some(python) = venv_python() else {
        eprintln!("SKIP: no test venv, so no matplotlib to draw with");
        return;
    };
    let python = python.to_str().unwrap();
    let out = run(python, &["-o", png.to_str().unwrap(), a, b]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("needs the Python package matplotlib") {
        eprintln!("SKIP: the test venv has no matplotlib");
        return;
    }
    assert!(out.status.success(), "{err}");
    let bytes = std::fs::read(&png).expect("a PNG");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
}
