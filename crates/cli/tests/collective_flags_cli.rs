//! `tune` and `selftest` take the collectives under the same names: `--collectives`, and
//! `--collective` as a visible alias, both listed in `--help`.

mod common;

use common::topoccl;
use std::path::Path;

#[test]
fn both_spellings_work_on_both_commands() {
    let topo = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/topologies/dgx-pair.toml"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for flag in ["--collectives", "--collective"] {
        let table = dir.join(format!("flags{flag}-{}.json", std::process::id()));
        let out = topoccl(&[
            "tune",
            "--topo",
            topo,
            flag,
            "allgather",
            "-e",
            "64K",
            "-o",
            table.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{flag}");
        let text = std::fs::read_to_string(&table).unwrap();
        assert!(text.contains("\"allgather\""), "{flag}: {text}");
        let _ = std::fs::remove_file(&table);

        let out = topoccl(&["selftest", "-n", "2", "--counts", "1", flag, "barrier"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{flag}: {stdout}");
        assert!(
            stdout.contains("cases passed on 2 ranks"),
            "{flag}: {stdout}"
        );
    }
    for command in ["tune", "selftest"] {
        let out = topoccl(&[command, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with("--collectives "))
            .unwrap_or_else(|| panic!("{command}: no --collectives in {help}"));
        assert!(line.contains("[alias: --collective]"), "{command}: {line}");
    }
}
