//! scripts/readme-check.sh on small made-up READMEs: it runs the ```sh and ```bash blocks
//! in order in a scratch copy of the repository with `topoccl` on PATH, never runs a block
//! marked `<!-- readme-check: skip -->` and lists it, passes over other fences, and stops
//! at the first failing block, naming its line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("readme-check-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the script on `readme` (written to a scratch file) with this build's topoccl;
/// `None` where bash or git is missing.
fn check(name: &str, readme: &str) -> Option<(Output, String, PathBuf)> {
    let dir = scratch(name);
    let path = dir.join("README.md");
    std::fs::write(&path, readme).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/readme-check.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(["--bin", env!("CARGO_BIN_EXE_topoccl"), "--timeout", "60"])
        .arg(&path)
        .env("TMPDIR", &dir)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("git: command not found") || text.contains("not a git repository") {
        return None;
    }
    Some((out, text, dir))
}

const PASSING: &str = r#"# A project

```sh
topoccl plan --list > list.txt          # blocks run in a copy of the repository
test -f examples/topologies/dgx-pair.toml
```

Output is not run:

```
exit 1
```

```python
raise SystemExit(1)
```

<!-- readme-check: skip (would fail) -->

```bash
echo "this block must not run" > ran.txt
exit 1
```

```bash
grep -q allreduce list.txt              # what an earlier block wrote is still there
```
"#;

#[test]
fn runs_blocks_in_order_and_lists_the_skipped() {
    let Some((out, text, dir)) = check("pass", PASSING) else {
        eprintln!("SKIP: bash or git missing");
        return;
    };
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("readme-check: 2 blocks ran and passed; 1 skipped"),
        "{text}"
    );
    assert!(
        text.contains("skipped README.md:20: echo \"this block must not run\""),
        "{text}"
    );
    assert!(
        text.contains("== README.md:3: topoccl plan --list"),
        "{text}"
    );
    assert!(
        text.contains("== README.md:25: grep -q allreduce"),
        "{text}"
    );
    // The copy is gone, and nothing was written next to the README.
    assert!(!dir.join("ran.txt").exists() && !dir.join("list.txt").exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "README.md")
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn stops_at_the_first_failing_block_naming_its_line() {
    let readme = "Intro\n\n```sh\ntrue\n```\n\n```sh\ntopoccl plan allreduce -n 0\n```\n\n\
                  ```sh\ntouch never.txt\n```\n";
    let Some((out, text, _)) = check("fail", readme) else {
        eprintln!("SKIP: bash or git missing");
        return;
    };
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAILED: the block at README.md:7 (exit status 2): topoccl plan allreduce"),
        "{text}"
    );
    assert!(
        !text.contains("README.md:11"),
        "ran past the failure: {text}"
    );
    // A failing command in the middle of a block fails the block (bash -e).
    let readme = "```bash\nfalse\necho after\n```\n";
    let (out, text, _) = check("middle", readme).unwrap();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("after"), "{text}");
    let (out, text, _) = check("unclosed", "```sh\ntrue\n").unwrap();
    assert!(
        !out.status.success() && text.contains("unclosed code fence"),
        "{text}"
    );
}
