//! `topoccl topo validate` on small broken topology files: every mistake in a `[generate]`
//! table is reported at its own `file:line:column`, not at the table's header, with what
//! is allowed (valid keys, valid kinds, how numbers are written).

mod common;

use common::topoccl;
use std::fs;
use std::path::{Path, PathBuf};

/// A fresh directory for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("topo-errors-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` as `dir/file`, validates it, and checks that it is refused with
/// `error: FILE:LOCATION: ` then every one of `parts`.
#[track_caller]
fn refused(dir: &Path, file: &str, text: &str, location: &str, parts: &[&str]) {
    let path = dir.join(file);
    fs::write(&path, text).unwrap();
    let out = topoccl(&["topo", "validate", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let prefix = format!("error: {}:{location}: ", path.display());
    assert!(err.starts_with(&prefix), "expected '{prefix}…', got: {err}");
    for p in parts {
        assert!(err.contains(p), "'{p}' missing from: {err}");
    }
}

const HEAD: &str = "name = \"x\"\n[generate]\nkind = \"switch\"\n";

#[test]
fn generate_errors_name_the_key() {
    let dir = scratch("generate");
    refused(
        &dir,
        "bad-type.toml",
        &format!("{HEAD}hosts = \"four\"\n"),
        "4:9",
        &["[generate] hosts: invalid type: string \"four\", expected u32"],
    );
    refused(
        &dir,
        "unknown-key.toml",
        &format!("{HEAD}hosts = 4\nhostz = 4\n"),
        "5:1",
        &[
            "unknown field `hostz`",
            "`hosts`, `bandwidth`, `latency`, `host`, `in_network_reduction`",
        ],
    );
    refused(
        &dir,
        "number.toml",
        &format!("{HEAD}hosts = 4x\n"),
        "4:9",
        &["`4x` is not a number", "quoted strings (\"100Gbps\""],
    );
    refused(
        &dir,
        "unquoted-unit.toml",
        &format!("{HEAD}hosts = 4\nbandwidth =   100Gbps\n"),
        "5:15",
        &["`100Gbps` is not a number"],
    );
    refused(
        &dir,
        "kind.toml",
        "[generate]\nhosts = 4\n  kind = \"swotch\"\n",
        "3:10",
        &[
            "unknown variant `swotch`",
            "`fat-tree`, `rail`, `switch`, `multi-zone`",
        ],
    );
    refused(
        &dir,
        "no-kind.toml",
        "name = \"x\"\n\n[generate]\nhosts = 4\n",
        "3:1",
        &["has no `kind`", "`fat-tree`, `rail`"],
    );
    refused(
        &dir,
        "missing.toml",
        "name = \"x\"\n[generate]\nkind = \"rail\"\n",
        "2:1",
        &["missing field `hosts`"],
    );
    refused(
        &dir,
        "host.toml",
        "[generate]\nkind = \"fat-tree\"\nhosts = 4\n\n[generate.host]\ncpus = 2\ngpus = 8\n",
        "7:1",
        &["[generate.host] unknown field `gpus`", "`gpus_per_host`"],
    );
    refused(
        &dir,
        "host-value.toml",
        "[generate]\nkind = \"fat-tree\"\nhosts = 4\nhost = { gpus_per_host = -8 }\n",
        "4:26",
        &["[generate.host] gpus_per_host: invalid value: integer `-8`"],
    );
}

/// What the generator refuses in values that read well (an odd radix, a bandwidth it
/// cannot parse) is reported at the value too.
#[test]
fn generator_errors_name_the_value() {
    let dir = scratch("generator");
    refused(
        &dir,
        "radix.toml",
        "[generate]\nkind = \"fat-tree\"\nhosts = 4\nradix =  7\n",
        "4:10",
        &["radix is 7", "must be even"],
    );
    refused(
        &dir,
        "nvlink.toml",
        "[generate]\nkind = \"fat-tree\"\nhosts = 4\n[generate.host]\nnvlink_bandwidth = \"x\"\n",
        "5:20",
        &["nvlink_bandwidth: 'x' does not start with a number"],
    );
    refused(
        &dir,
        "zones.toml",
        "\n[generate]\nkind = \"multi-zone\"\nzones = 1\nhosts_per_zone = 2\n",
        "4:9",
        &["needs at least 2 zones"],
    );
}

#[test]
fn other_entries_have_columns_too() {
    let dir = scratch("entries");
    let nodes = "ranks = [\"h\"]\n[[node]]\nname = \"h\"\nkind = \"host\"\n";
    refused(
        &dir,
        "node.toml",
        &format!("{nodes}[[node]]\nname = \"s\"\nkind =  \"swich\"\n"),
        "7:9",
        &["unknown node kind 'swich'"],
    );
    refused(
        &dir,
        "link.toml",
        &format!(
            "{nodes}[[node]]\nname = \"s\"\nkind = \"switch\"\n[[link]]\na = \"h\"\nb = \"s\"\n\
             bandwidth = 1e9\nlatency = 1.5.2\n"
        ),
        "12:11",
        &["`1.5.2` is not a number"],
    );
}
