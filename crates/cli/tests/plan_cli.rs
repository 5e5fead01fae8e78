//! The `topoccl plan` command: listing, formats, and clear errors on bad input.

use std::process::{Command, Output};

fn topoccl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_topoccl"))
        .args(args)
        .output()
        .expect("run topoccl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn list_shows_every_collective() {
    let o = topoccl(&["plan", "--list"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for c in [
        "allreduce",
        "allgather",
        "reducescatter",
        "broadcast",
        "reduce",
        "gather",
        "scatter",
        "alltoall",
        "alltoallv",
        "barrier",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(c)),
            "{c} missing in:\n{out}"
        );
    }
    assert!(out.contains("ring, rd, rhd, tree"), "{out}");
    // Each algorithm described once, with the other spellings it accepts.
    assert!(
        out.lines()
            .any(|l| l.starts_with("rhd ") && l.contains("also spelled rabenseifner")),
        "{out}"
    );
}

#[test]
fn json_round_trips_and_verifies() {
    let o = topoccl(&[
        "plan",
        "allreduce",
        "-n",
        "5",
        "--algo",
        "rhd",
        "--format",
        "json",
        "--verify",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("verified"), "{}", stderr(&o));
    let doc: topoccl_plan::PlanDoc = serde_json::from_slice(&o.stdout).expect("valid plan json");
    let plan = topoccl_plan::Plan::from_doc(doc).expect("plan from json");
    topoccl_plan::verify(&plan).expect("the JSON plan verifies");
}

#[test]
fn text_and_cost() {
    let o = topoccl(&[
        "plan",
        "allreduce",
        "-n",
        "4",
        "--count",
        "1024",
        "--alpha",
        "5us",
        "--rank",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("rank 0:") && !out.contains("rank 1:"), "{out}");
    // The cost comes second, right under the heading, not after every op.
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("# allreduce world=4"), "{out}");
    assert!(lines[1].starts_with("# cost:"), "{out}");
    assert!(lines[2].starts_with("rank 0:"), "{out}");
    assert_eq!(out.matches("# cost:").count(), 1, "{out}");
}

/// The README's all-to-all-v example runs on the matrix shipped in examples/.
#[test]
fn the_shipped_alltoallv_matrix() {
    let matrix = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/alltoallv-counts.json"
    );
    let o = topoccl(&[
        "plan",
        "alltoallv",
        "-n",
        "3",
        "--matrix",
        matrix,
        "--verify",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("verified: alltoallv world=3"),
        "{}",
        stderr(&o)
    );
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains("--matrix examples/alltoallv-counts.json"),
        "the README points at the shipped file"
    );
}

/// Each bad input: a non-zero exit, no panic, and a message that names the problem and
/// what is allowed.
#[test]
fn bad_input_gets_clear_errors() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["plan", "allreduce", "-n", "0"], &["world size is 0"]),
        (
            &["plan", "broadcast", "-n", "4", "--root", "4"],
            &["root 4 is out of range", "0..=3"],
        ),
        (
            &["plan", "reducescatter", "-n", "4", "--total", "10"],
            &["10 is not a multiple of the world size 4"],
        ),
        (
            &["plan", "allreduce", "-n", "4", "--algo", "bruck"],
            &["'bruck' is not available for allreduce", "ring"],
        ),
        (
            &["plan", "allreduce", "-n", "4", "--algo", "quantum"],
            &["unknown algorithm", "rhd"],
        ),
        (
            &["plan", "allreduc", "-n", "4"],
            &["unknown collective", "allreduce"],
        ),
        (
            &["plan", "allreduce", "-n", "4", "--dtype", "f8"],
            &["unknown data type", "bf16"],
        ),
        (
            &[
                "plan",
                "allreduce",
                "-n",
                "4",
                "--algo",
                "parent-tree",
                "--parents",
                "-1,0,1",
            ],
            &["3 entries for a world of 4"],
        ),
        (
            &[
                "plan",
                "allreduce",
                "-n",
                "6",
                "--algo",
                "hier",
                "--group-size",
                "4",
            ],
            &["does not divide"],
        ),
        (&["plan", "alltoallv", "-n", "3"], &["--matrix"]),
        (
            &["plan", "broadcast", "-n", "4", "--format", "msccl-xml"],
            &["broadcast is none of them"],
        ),
        (
            &["plan", "allreduce", "-n", "4", "--chunks", "0"],
            &["chunks", "1..="],
        ),
    ];
    for (args, needles) in cases {
        let o = topoccl(args);
        let err = stderr(&o);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: expected {n:?} in: {err}");
        }
    }
}

#[test]
fn alltoallv_matrix_shape_errors() {
    let dir = std::env::temp_dir().join(format!("topoccl-a2av-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "[[1,2,3],[4,5],[6,7,8]]").unwrap();
    let o = topoccl(&[
        "plan",
        "alltoallv",
        "-n",
        "3",
        "--matrix",
        bad.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("row 1 has 2 entries"), "{}", stderr(&o));
    let good = dir.join("good.json");
    std::fs::write(&good, "[[0,2,3],[4,0,1],[6,7,0]]").unwrap();
    let o = topoccl(&[
        "plan",
        "alltoallv",
        "-n",
        "3",
        "--matrix",
        good.to_str().unwrap(),
        "--verify",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}
