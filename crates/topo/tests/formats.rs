//! Topology formats: round trips, fixtures, located errors, and robustness to garbage.

use std::path::PathBuf;

use proptest::prelude::*;
use topoccl_topo::format::{
    parse_nvidia_smi_gpus, parse_nvidia_smi_topo, read_json, read_nccl_xml, read_nvidia_smi_topo,
    read_toml, read_toml_builder, to_dot, to_json, write_toml, SmiGpu, SmiPath,
};
use topoccl_topo::{NodeKind, Tier, Topology, TopologyBuilder};

fn fixture(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pair() -> Topology {
    read_toml(&fixture("dgx_pair.toml"), "dgx_pair.toml").unwrap()
}

fn dgx_xml() -> Topology {
    read_nccl_xml(&fixture("nccl_topo_dgx_a100.xml"), "dgx.xml", "dgx0").unwrap()
}

fn dgx_smi() -> Topology {
    let text = fixture("nvidia_smi_topo_dgx_a100.txt");
    read_nvidia_smi_topo(&text, "dgx.txt", "dgx0").unwrap()
}

/// Same name, nodes (ids included), links (ids included) and ranks.
fn assert_same(a: &Topology, b: &Topology) {
    assert_eq!(a.name(), b.name());
    assert_eq!(a.nodes(), b.nodes());
    assert_eq!(a.links(), b.links());
    assert_eq!(a.rank_nodes(), b.rank_nodes());
}

/// Same as [`assert_same`], but links compared as a multiset.
fn assert_same_links_unordered(a: &Topology, b: &Topology) {
    let sorted = |t: &Topology| {
        let mut l: Vec<_> = t
            .links()
            .iter()
            .map(|l| {
                let bits = (
                    l.bandwidth.to_bits(),
                    l.latency.to_bits(),
                    l.duplex.to_bits(),
                );
                (l.from, l.to, bits)
            })
            .collect();
        l.sort();
        l
    };
    assert_eq!(a.nodes(), b.nodes());
    assert_eq!(sorted(a), sorted(b));
    assert_eq!(a.rank_nodes(), b.rank_nodes());
}

fn bandwidth(t: &Topology, from: &str, to: &str) -> f64 {
    let (f, z) = (t.find(from).unwrap(), t.find(to).unwrap());
    let l = t
        .out_links(f)
        .iter()
        .map(|&l| t.link(l))
        .find(|l| l.to == z);
    l.unwrap_or_else(|| panic!("no link {from} -> {to}"))
        .bandwidth
}

/// The message of a failed read, checked to start with `origin:line: ` or
/// `origin:line:column: `.
#[track_caller]
fn err_at(result: Result<Topology, topoccl_topo::TopoError>, origin: &str, line: usize) -> String {
    let e = result.expect_err("the input should be refused").to_string();
    let prefix = format!("{origin}:{line}:");
    let rest = e.strip_prefix(&prefix);
    let column = rest.map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit()));
    let located = match (rest, column) {
        (Some(r), Some(c)) if r.starts_with(' ') => c.starts_with(' '),
        (Some(_), Some(c)) => c.starts_with(": "),
        _ => false,
    };
    assert!(located, "expected '{prefix}[column:] …', got: {e}");
    e
}

#[track_caller]
fn assert_has(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(message.contains(p), "'{p}' missing from: {message}");
    }
}

// ---------------------------------------------------------------- TOML

#[test]
fn toml_fixture_reads() {
    let t = pair();
    assert_eq!(t.name(), "dgx-pair");
    assert_eq!(t.nodes().len(), 11);
    assert_eq!(t.links().len(), 21);
    assert_eq!(t.world(), 4);
    assert_eq!(t.node(t.rank_node(2)).name, "h1/gpu0");
    assert_eq!(t.node(t.rank_host(3)).name, "h1");
    let leaf = t.node(t.find("leaf0").unwrap());
    assert_eq!(leaf.tier, Some(Tier::Leaf));
    assert!(leaf.in_network_reduction);
    let gpu = t.node(t.find("h0/gpu0").unwrap());
    assert_eq!(gpu.kind, NodeKind::Accelerator);
    assert_eq!(
        t.node(t.find("h0").unwrap()).zone.as_deref(),
        Some("site-a")
    );
    assert_eq!(bandwidth(&t, "h0/gpu0", "h0/nvswitch"), 300e9);
    assert_eq!(bandwidth(&t, "leaf0", "h1/nic0"), 25e9);
    assert_eq!(bandwidth(&t, "h0/nic0", "h1/nic0"), 1.25e9);
    assert!(t.find("h1/nic0").is_some_and(|n| t
        .out_links(n)
        .iter()
        .all(|&l| t.node(t.link(l).to).name != "h0/nic0")));
}

#[test]
fn toml_round_trips() {
    let t = pair();
    let text = write_toml(&t);
    assert_same(&t, &read_toml(&text, "again.toml").unwrap());
    // 10 cables and 1 directed link.
    assert_eq!(text.matches("[[link]]").count(), 11);
    assert_eq!(text.matches("directed = true").count(), 1);
    assert!(text.contains("bandwidth = \"300GB/s\""), "{text}");
    assert!(text.contains("latency = \"0.5us\""), "{text}");
    assert!(text.contains("bandwidth = \"25GB/s\""), "{text}");
    for imported in [dgx_xml(), dgx_smi()] {
        let again = read_toml(&write_toml(&imported), "x.toml").unwrap();
        assert_same(&imported, &again);
    }
}

/// Awkward names and numbers, and opposite links that are not next to each other.
fn odd() -> Topology {
    let mut b = TopologyBuilder::new("odd \"one\" \\ ü");
    let h = b.node("host \"a\"", NodeKind::Host).unwrap();
    let g0 = b.device("a/gpu\\0", NodeKind::Accelerator, h).unwrap();
    let g1 = b.device("a/gpü1\n", NodeKind::Accelerator, h).unwrap();
    let sw = b.switch("sw", Tier::Spine).unwrap();
    b.link(g0, g1, 10.0 / 3.0, 1.0 / 7.0).unwrap();
    b.link(g0, sw, 1e10, 0.0).unwrap();
    b.link(g1, g0, 10.0 / 3.0, 1.0 / 7.0).unwrap();
    b.link(sw, g0, 1e10, 0.0).unwrap();
    b.connect(g1, sw, 12_345_678_901.234, 3.3e-6).unwrap();
    b.place_all([g1, g0]).unwrap();
    b.build().unwrap()
}

#[test]
fn toml_round_trips_odd_values_and_names() {
    let t = odd();
    let text = write_toml(&t);
    let again = read_toml(&text, "odd.toml").unwrap();
    assert_eq!(again.name(), t.name());
    // The pairs were not adjacent, so only the multiset of links is kept.
    assert_same_links_unordered(&t, &again);
    assert_eq!(text.matches("[[link]]").count(), 3, "{text}");
    // And what was read once writes the same again.
    assert_eq!(write_toml(&again), text);
}

#[test]
fn toml_rank_tables_and_forward_hosts() {
    let text = r#"
[[rank]]
rank = 1
node = "g1"

[[rank]]
rank = 0
node = "g0"

[[node]]
name = "g0"
kind = "accelerator"
host = "h"

[[node]]
name = "g1"
kind = "gpu"
host = "h"

[[node]]
name = "h"
kind = "host"

[[link]]
a = "g0"
b = "g1"
bandwidth = 5e9
latency = 0
"#;
    let t = read_toml(text, "dir/two.toml").unwrap();
    assert_eq!(t.name(), "two");
    assert_eq!(t.node(t.rank_node(0)).name, "g0");
    assert_eq!(t.node(t.rank_host(1)).name, "h");
    assert_eq!(t.links()[0].bandwidth, 5e9);
}

#[test]
fn toml_builder_takes_more() {
    let mut b = read_toml_builder(&fixture("dgx_pair.toml"), "p.toml").unwrap();
    let h2 = b.node("h2", NodeKind::Host).unwrap();
    let g = b.device("h2/gpu0", NodeKind::Accelerator, h2).unwrap();
    let leaf = b.find("leaf0").unwrap();
    b.connect(g, leaf, 25e9, 2e-6).unwrap();
    b.place(4, g).unwrap();
    assert_eq!(b.build().unwrap().world(), 5);
}

/// A valid file to break one line at a time: line numbers in comments.
const BASE: &str = r#"name = "t"
ranks = ["h/g0", "h/g1"]

[[node]]
name = "h"
kind = "host"

[[node]]
name = "h/g0"
kind = "gpu"
host = "h"

[[node]]
name = "h/g1"
kind = "gpu"
host = "h"

[[link]]
a = "h/g0"
b = "h/g1"
bandwidth = "100Gbps"
latency = "2us"
"#;
// Lines: 2 ranks, 4 [[node]], 5 name h, 9 name h/g0, 10 kind, 11 host, 13 [[node]],
// 14 name h/g1, 18 [[link]], 19 a, 20 b, 21 bandwidth, 22 latency.

fn base_with(line: usize, replacement: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines[line - 1] = replacement;
    lines.join("\n") + "\n"
}

#[track_caller]
fn toml_err(text: &str, line: usize, parts: &[&str]) {
    let e = err_at(read_toml(text, "t.toml"), "t.toml", line);
    assert_has(&e, parts);
}

#[test]
fn toml_base_is_valid() {
    assert_eq!(read_toml(BASE, "t.toml").unwrap().world(), 2);
}

#[test]
fn toml_syntax_and_key_errors() {
    toml_err(&base_with(10, "kind = \"gpu"), 10, &["string"]);
    toml_err(&base_with(10, "kind = = 3"), 10, &[]);
    toml_err(
        &base_with(11, "colour = \"red\""),
        11,
        &["unknown field `colour`", "`kind`"],
    );
    toml_err(&base_with(1, "nmae = \"t\""), 1, &["unknown field `nmae`"]);
    toml_err(&base_with(22, ""), 18, &["missing field `latency`"]);
    toml_err(&base_with(5, "name = 5"), 5, &["invalid type"]);
}

#[test]
fn toml_kind_and_tier_errors() {
    toml_err(
        &base_with(10, "kind = \"tpu\""),
        10,
        &[
            "unknown node kind 'tpu'",
            "host, accelerator (or gpu), cpu, nic, switch",
        ],
    );
    let switch = base_with(6, "kind = \"switch\"\ntier = \"spline\"");
    toml_err(
        &switch,
        7,
        &["unknown switch tier 'spline'", "host, leaf, spine or core"],
    );
    toml_err(
        &base_with(10, "kind = \"gpu\"\ntier = \"leaf\""),
        11,
        &[
            "'h/g0' is of kind accelerator but has a tier",
            "only switches",
        ],
    );
    toml_err(
        &base_with(10, "kind = \"gpu\"\nin_network_reduction = true"),
        11,
        &["only switches"],
    );
}

#[test]
fn toml_reference_errors() {
    toml_err(
        &base_with(14, "name = \"h/g0\""),
        14,
        &["duplicate node id 'h/g0'", "line 9"],
    );
    toml_err(
        &base_with(20, "b = \"h/g9\""),
        20,
        &["unknown node 'h/g9'", "endpoint `b`"],
    );
    toml_err(
        &base_with(11, "host = \"hh\""),
        11,
        &["unknown node 'hh'", "host of node 'h/g0'"],
    );
    toml_err(
        &base_with(11, "host = \"h/g1\""),
        11,
        &["names host 'h/g1', which is of kind accelerator"],
    );
    toml_err(
        &base_with(2, "ranks = [\"h/g0\",\n  \"h/gx\"]"),
        3,
        &["unknown node 'h/gx'", "rank 1"],
    );
    toml_err(
        &base_with(20, "b = \"h/g0\""),
        19,
        &["joins a node to itself"],
    );
}

#[test]
fn toml_duplex_reads_and_is_checked() {
    let t = read_toml(&base_with(22, "latency = \"2us\"\nduplex = 0.9"), "t.toml").unwrap();
    assert!(t.links().iter().all(|l| l.duplex == 0.9));
    assert!(write_toml(&t).contains("duplex = 0.9\n"));
    for value in ["0", "1.5", "-0.2"] {
        toml_err(
            &base_with(22, &format!("latency = \"2us\"\nduplex = {value}")),
            23,
            &["h/g0 -> h/g1", &format!("duplex {value}"), "at most 1"],
        );
    }
    toml_err(
        &base_with(22, "latency = \"2us\"\nduplex = \"half\""),
        23,
        &["invalid type"],
    );
}

#[test]
fn toml_quantity_errors() {
    for (value, parts) in [
        ("\"0Gbps\"", &["must be positive"][..]),
        ("0", &["not positive", "100Gbps"][..]),
        ("-5", &["not positive"][..]),
        ("\"-3Gbps\"", &["'-3Gbps' is negative", "25GB/s"][..]),
        ("\"fast\"", &["does not start with a number", "bytes/s"][..]),
        ("\"10 furlongs\"", &["unknown bandwidth unit", "Gbps"][..]),
        ("true", &["bandwidth is a boolean"][..]),
        ("nan", &["not positive"][..]),
    ] {
        toml_err(&base_with(21, &format!("bandwidth = {value}")), 21, parts);
    }
    for (value, parts) in [
        (
            "\"-2us\"",
            &["latency '-2us' is negative", "zero or more"][..],
        ),
        ("-1.0", &["latency -1.0 is negative"][..]),
        ("\"2 parsecs\"", &["unknown time unit"][..]),
        ("inf", &["not finite"][..]),
    ] {
        toml_err(&base_with(22, &format!("latency = {value}")), 22, parts);
    }
    // Finite but absurd: refused with the range, not saturated later.
    let e = read_toml(&base_with(22, "latency = \"1e300s\""), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be from 0 to 60 s"), "{e}");
    let e = read_toml(&base_with(21, "bandwidth = 1e308"), "t.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be from 1 to 1000000000000000 B/s"), "{e}");
    // Errors name the link.
    toml_err(&base_with(21, "bandwidth = 0"), 21, &["link h/g0 - h/g1"]);
}

const RANKED: &str = r#"[[node]]
name = "h"
kind = "host"

[[node]]
name = "a"
kind = "gpu"
host = "h"

[[node]]
name = "b"
kind = "gpu"
host = "h"

[[link]]
a = "a"
b = "b"
bandwidth = "1GB/s"
latency = "1us"
"#;
// RANKED is 19 lines; rank tables appended start at line 20.

fn ranked(ranks: &[(i64, &str)]) -> String {
    let mut s = RANKED.to_string();
    for (r, n) in ranks {
        s.push_str(&format!("\n[[rank]]\nrank = {r}\nnode = \"{n}\"\n"));
    }
    s
}

#[test]
fn toml_rank_errors() {
    // Tables start at lines 21, 25, 29 (header), rank at +1, node at +2.
    toml_err(
        &ranked(&[(0, "a"), (0, "b")]),
        26,
        &["rank 0 is placed twice", "'a' (line 23)"],
    );
    toml_err(
        &ranked(&[(0, "a"), (2, "b")]),
        26,
        &["rank 1 is missing", "rank 2"],
    );
    toml_err(
        &ranked(&[(1, "a"), (7, "b")]),
        22,
        &["rank 0 is missing", "rank 1"],
    );
    toml_err(
        &ranked(&[(0, "a"), (-1, "b")]),
        26,
        &["rank -1", "start at 0"],
    );
    toml_err(
        &ranked(&[(0, "a"), (1, "a")]),
        27,
        &["ranks 0 (line 23) and 1", "'a'"],
    );
    toml_err(
        &ranked(&[(0, "a"), (1, "zz")]),
        27,
        &["unknown node 'zz'", "rank 1"],
    );
    let both = format!("ranks = [\"a\"]\n{}", ranked(&[(0, "a")]));
    toml_err(&both, 22, &["ranks are given twice", "line 1"]);
    let none = read_toml(RANKED, "r.toml").unwrap_err().to_string();
    assert!(none.starts_with("r.toml: no ranks are placed"), "{none}");
}

#[test]
fn toml_disconnected_rank_points_at_its_entry() {
    let mut text = ranked(&[(0, "a"), (1, "b"), (2, "c")]);
    text.push_str("\n[[node]]\nname = \"c\"\nkind = \"gpu\"\n");
    // The third table's node line: 21 + 4 + 4 + 2.
    toml_err(&text, 31, &["disconnected ranks: rank 2", "'c'"]);
}

// ---------------------------------------------------------------- JSON

#[test]
fn json_round_trips() {
    for t in [pair(), dgx_xml(), dgx_smi()] {
        let text = to_json(&t);
        assert_same(&t, &read_json(&text, "t.json").unwrap());
    }
    let text = to_json(&pair());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["links"][0]["from"], "h0/gpu0");
    assert_eq!(v["links"][0]["to"], "h0/nvswitch");
    assert_eq!(v["links"][0]["bandwidth"], 300e9);
    assert_eq!(v["ranks"][3], "h1/gpu1");
    assert_eq!(v["nodes"][1]["host"], "h0");
    assert_eq!(v["nodes"][1]["kind"], "accelerator");
}

#[test]
fn json_errors() {
    let text = to_json(&pair());
    let broken = text.replacen("\"to\": \"h0/nvswitch\"", "\"to\": \"h0/nowhere\"", 1);
    let e = read_json(&broken, "p.json").unwrap_err().to_string();
    assert_has(&e, &["p.json: links[0].to: unknown node 'h0/nowhere'"]);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.contains("\"zone\"")).unwrap();
    let mut bad = lines.clone();
    bad[at] = "      \"zone\": site-a,";
    let e = err_at(read_json(&bad.join("\n"), "p.json"), "p.json", at + 1);
    assert_has(&e, &["expected value"]);
    let unknown = text.replacen(
        "\"name\": \"dgx-pair\"",
        "\"name\": \"x\", \"colour\": 1",
        1,
    );
    let e = err_at(read_json(&unknown, "p.json"), "p.json", 2);
    assert_has(&e, &["unknown field `colour`"]);
    let kind = text.replacen("\"kind\": \"host\"", "\"kind\": \"tpu\"", 1);
    let e = read_json(&kind, "p.json").unwrap_err().to_string();
    assert_has(&e, &["p.json: nodes[0]: unknown node kind 'tpu'"]);
    let reducing_host = text.replacen(
        "\"kind\": \"host\"",
        "\"kind\": \"host\", \"in_network_reduction\": true",
        1,
    );
    let e = read_json(&reducing_host, "p.json").unwrap_err().to_string();
    assert_has(
        &e,
        &["p.json: nodes[0]: node 'h0' is a host", "only switches"],
    );
}

// ---------------------------------------------------------------- DOT

#[test]
fn dot_has_clusters_ranks_and_cables() {
    let dot = to_dot(&pair());
    assert!(dot.starts_with("digraph \"dgx-pair\" {"), "{dot}");
    assert_has(
        &dot,
        &[
            "subgraph \"cluster_h0\" {",
            "subgraph \"cluster_h1\" {",
            "label=\"h0 (site-a)\";",
            "\"h0/gpu0\" [label=\"h0/gpu0\\nrank 0\"",
            "\"h1/gpu1\" [label=\"h1/gpu1\\nrank 3\"",
            "{ rank=same;",
            "\"leaf0\" [label=\"leaf0\\nleaf switch, in-network reduction\", shape=diamond]",
            "\"h0/gpu0\" -> \"h0/nvswitch\" [dir=none, label=\"300 GB/s\\n500 ns\"];",
            "\"h0/nic0\" -> \"leaf0\" [dir=none, label=\"25 GB/s\\n2 us\"];",
            "\"h0/nic0\" -> \"h1/nic0\" [label=\"1.25 GB/s\\n10 us\"];",
        ],
    );
    // Cables are one edge each: 10 cables + 1 directed link.
    assert_eq!(dot.matches(" -> ").count(), 11);
    // The host switch is drawn inside its host's cluster, before the cluster closes.
    let cluster = &dot[dot.find("cluster_h0").unwrap()..dot.find("cluster_h1").unwrap()];
    assert!(cluster.contains("\"h0/nvswitch\""), "{cluster}");
    assert!(!cluster.contains("\"leaf0\""), "{cluster}");
}

#[test]
fn dot_is_accepted_by_graphviz() {
    let available = std::process::Command::new("dot").arg("-V").output().is_ok();
    if !available {
        println!("SKIP: graphviz `dot` is not installed");
        return;
    }
    for t in [pair(), dgx_xml(), dgx_smi(), odd()] {
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(to_dot(&t).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }
}

// ---------------------------------------------------------------- NCCL XML

#[test]
fn nccl_dgx_a100_imports() {
    let t = dgx_xml();
    // host, 2 CPUs, 4 PCIe switches, 8 GPUs, 8 NICs, 1 NVSwitch.
    assert_eq!(t.nodes().len(), 24);
    // Cables: CPU-CPU 1, CPU-switch 4, GPU-switch 8, NIC-switch 8, GPU-NVSwitch 8.
    assert_eq!(t.links().len(), 2 * 29);
    assert_eq!(t.world(), 8);
    for r in 0..8 {
        assert_eq!(t.node(t.rank_node(r)).name, format!("dgx0/gpu{r}"));
        assert_eq!(t.node(t.rank_host(r)).name, "dgx0");
    }
    let count = |k: NodeKind| t.nodes().iter().filter(|n| n.kind == k).count();
    assert_eq!(count(NodeKind::Cpu), 2);
    assert_eq!(count(NodeKind::Switch), 5);
    assert_eq!(count(NodeKind::Nic), 8);
    let nvs = t.node(t.find("dgx0/nvswitch").unwrap());
    assert_eq!(nvs.tier, Some(Tier::Host));
    assert_eq!(bandwidth(&t, "dgx0/gpu3", "dgx0/nvswitch"), 300e9);
    assert_eq!(bandwidth(&t, "dgx0/nvswitch", "dgx0/gpu3"), 300e9);
    assert_eq!(
        bandwidth(&t, "dgx0/gpu0", "dgx0/pci0000:01:00.0"),
        16.0 * 1.969e9
    );
    assert_eq!(
        bandwidth(&t, "dgx0/pci0000:01:00.0", "dgx0/cpu0"),
        16.0 * 1.969e9
    );
    assert_eq!(bandwidth(&t, "dgx0/mlx5_0", "dgx0/pci0000:01:00.0"), 25e9);
    assert_eq!(
        bandwidth(&t, "dgx0/pci0000:b1:00.0", "dgx0/cpu1"),
        16.0 * 1.969e9
    );
    assert_eq!(bandwidth(&t, "dgx0/cpu0", "dgx0/cpu1"), 40e9);
}

#[test]
fn nccl_pcie_pair_imports() {
    let text = fixture("nccl_topo_pcie_2gpu.xml");
    let t = read_nccl_xml(&text, "ws.xml", "ws").unwrap();
    assert_eq!(t.nodes().len(), 6);
    assert_eq!(t.links().len(), 8);
    assert_eq!(t.world(), 2);
    assert_eq!(t.node(t.rank_node(1)).name, "ws/gpu1");
    assert_eq!(
        bandwidth(&t, "ws/gpu0", "ws/pci0000:16:00.0"),
        16.0 * 0.985e9
    );
    assert_eq!(
        bandwidth(&t, "ws/gpu1", "ws/pci0000:16:00.0"),
        8.0 * 0.985e9
    );
    assert_eq!(bandwidth(&t, "ws/eth0", "ws/cpu0"), 3.125e9);
    assert!(t.find("ws/nvswitch").is_none());
}

const NVLINKED: &str = r#"<system version="1">
  <cpu numaid="0">
    <pci busid="0000:01:00.0" class="0x030200" link_speed="16 GT/s" link_width="0">
      <gpu dev="0" sm="70" rank="9" gdr="1">
        <nvlink target="0000:02:00.0" count="2" tclass="0x030200"/>
        <nvlink target="0000:02:00.0" count="1" tclass="0x030200"/>
      </gpu>
    </pci>
    <pci busid="0000:02:00.0" class="0x030200" link_speed="Unknown" link_width="16">
      <gpu dev="1" sm="70" rank="8" gdr="1">
        <nvlink target="0000:01:00.0" count="3" tclass="0x030200"/>
        <c2c bw="0" count="0"/>
      </gpu>
    </pci>
    <pci busid="0000:03:00.0" class="0x010802" link_speed="8.0 GT/s PCIe" link_width="4"/>
  </cpu>
</system>
"#;

#[test]
fn nccl_direct_nvlinks_and_fallbacks() {
    let t = read_nccl_xml(NVLINKED, "nv.xml", "v").unwrap();
    // host, cpu, 2 GPUs (the NVMe device is left out).
    assert_eq!(t.nodes().len(), 4);
    // Ranks 8 and 9 become 0 and 1, in rank order.
    assert_eq!(t.node(t.rank_node(0)).name, "v/gpu1");
    assert_eq!(t.node(t.rank_node(1)).name, "v/gpu0");
    assert_eq!(bandwidth(&t, "v/gpu0", "v/gpu1"), 3.0 * 20e9);
    assert_eq!(bandwidth(&t, "v/gpu1", "v/gpu0"), 3.0 * 20e9);
    // link_width 0 means 16 lanes; an unknown speed means 8 GT/s.
    assert_eq!(bandwidth(&t, "v/gpu0", "v/cpu0"), 16.0 * 1.969e9);
    assert_eq!(bandwidth(&t, "v/gpu1", "v/cpu0"), 16.0 * 0.985e9);
    // The two NVLink directions merge into one cable when written.
    let text = write_toml(&t);
    assert_eq!(text.matches("[[link]]").count(), 3, "{text}");
    assert_same_links_unordered(&t, &read_toml(&text, "nv.toml").unwrap());
}

#[track_caller]
fn xml_err(text: &str, line: usize, parts: &[&str]) {
    let e = err_at(read_nccl_xml(text, "n.xml", "v"), "n.xml", line);
    assert_has(&e, parts);
}

#[test]
fn nccl_errors_are_located() {
    xml_err(
        &NVLINKED.replace(
            "</gpu>\n    </pci>\n    <pci busid=\"0000:02",
            "</pci>\n    <pci busid=\"0000:02",
        ),
        7,
        &["malformed XML"],
    );
    xml_err(
        &NVLINKED.replace("dev=\"1\" ", ""),
        10,
        &["<gpu> has no `dev` attribute"],
    );
    xml_err(
        &NVLINKED.replace("sm=\"70\" rank=\"8\"", "sm=\"seventy\" rank=\"8\""),
        10,
        &["sm=\"seventy\"", "compute capability"],
    );
    xml_err(
        &NVLINKED.replace("target=\"0000:01:00.0\"", "target=\"0000:99:00.0\""),
        11,
        &["\"0000:99:00.0\"", "no GPU", "0x068000"],
    );
    xml_err(
        &NVLINKED.replace("link_speed=\"16 GT/s\"", "link_speed=\"20 GT/s\""),
        3,
        &["link_speed=\"20 GT/s\"", "2.5, 5, 8, 16, 32 or 64"],
    );
    xml_err(
        &NVLINKED.replace("link_width=\"16\"", ""),
        9,
        &["no `link_width`"],
    );
    xml_err(
        &NVLINKED.replace("rank=\"8\"", "rank=\"9\""),
        10,
        &["rank 9 is on two GPUs", "line 4", "line 10"],
    );
    xml_err(
        &NVLINKED.replace("dev=\"1\"", "dev=\"0\""),
        10,
        &["duplicate node id 'v/gpu0'"],
    );
    xml_err(
        &NVLINKED.replace("count=\"3\"", "count=\"0\""),
        11,
        &["count=\"0\""],
    );
    xml_err(&NVLINKED.replace("numaid=\"0\"", ""), 2, &["no `numaid`"]);
    xml_err(
        "<topology/>",
        1,
        &["root element is <topology>", "<system>"],
    );
    xml_err(
        "<system>\n<cpu numaid=\"0\">\n<gpu dev=\"0\" sm=\"80\"/></cpu></system>",
        3,
        &["inside the <pci>"],
    );
    xml_err(
        "<system>\n <cpu numaid=\"0\"><nic>\n<net name=\"ib0\" speed=\"0\"/></nic></cpu></system>",
        3,
        &["speed 0"],
    );
    let e = read_nccl_xml("<system/>", "n.xml", "v")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("n.xml: no ranks are placed"), "{e}");
}

// ---------------------------------------------------------------- nvidia-smi

#[test]
fn smi_dgx_a100_imports() {
    let t = dgx_smi();
    assert_eq!(t.nodes().len(), 13);
    assert_eq!(t.links().len(), 12 * 11);
    assert_eq!(t.world(), 8);
    assert_eq!(t.node(t.rank_node(7)).name, "dgx0/gpu7");
    let nic = t.node(t.find("dgx0/mlx5_3").unwrap());
    assert_eq!(nic.kind, NodeKind::Nic);
    assert_eq!(bandwidth(&t, "dgx0/gpu0", "dgx0/gpu7"), 300e9);
    assert_eq!(bandwidth(&t, "dgx0/gpu0", "dgx0/mlx5_0"), 20e9);
    assert_eq!(bandwidth(&t, "dgx0/mlx5_0", "dgx0/gpu2"), 12e9);
    assert_eq!(bandwidth(&t, "dgx0/gpu0", "dgx0/mlx5_3"), 8e9);
}

#[test]
fn smi_workstation_imports() {
    let text = fixture("nvidia_smi_topo_workstation.txt");
    let t = read_nvidia_smi_topo(&text, "ws.txt", "ws").unwrap();
    assert_eq!(t.nodes().len(), 5);
    assert_eq!(t.links().len(), 12);
    assert_eq!(t.world(), 4);
    assert_eq!(bandwidth(&t, "ws/gpu0", "ws/gpu1"), 24e9);
    assert_eq!(bandwidth(&t, "ws/gpu3", "ws/gpu2"), 16e9);
    assert_eq!(bandwidth(&t, "ws/gpu1", "ws/gpu2"), 8e9);
    let lat = t
        .links()
        .iter()
        .find(|l| l.bandwidth == 8e9)
        .unwrap()
        .latency;
    assert_eq!(lat, 5e-6);
}

#[track_caller]
fn smi_err(text: &str, line: usize, parts: &[&str]) {
    let e = err_at(read_nvidia_smi_topo(text, "s.txt", "w"), "s.txt", line);
    assert_has(&e, parts);
}

#[test]
fn smi_errors_are_located() {
    let base = fixture("nvidia_smi_topo_workstation.txt");
    smi_err(
        &base.replacen("PHB", "NVX", 1),
        4,
        &["unknown entry 'NVX' from GPU2 to GPU3", "NV<links>"],
    );
    smi_err(
        &base.replacen("PIX     SYS     SYS", "PIX     SYS", 1),
        2,
        &["row 'GPU0' has 3 entries", "4 devices"],
    );
    smi_err(
        &base.replacen("GPU2    SYS", "GPU9    SYS", 1),
        4,
        &["row 3 is 'GPU9'", "'GPU2'"],
    );
    smi_err(
        &base.replacen(" X      PIX", "PIX     PIX", 1),
        2,
        &["entry 'PIX' from GPU0 to GPU0"],
    );
    smi_err(&base.replacen("PIX", "NV0", 1), 2, &["unknown entry 'NV0'"]);
    let short: Vec<&str> = base.lines().filter(|l| !l.starts_with("GPU3")).collect();
    smi_err(&short.join("\n"), 1, &["lists 4 devices but 3 rows follow"]);
    let extra = base.replacen(
        "\n\nLegend",
        "\nGPU4    SYS     SYS     SYS     SYS      X\n\nLegend",
        1,
    );
    smi_err(&extra, 6, &["row 'GPU4' has no column"]);
    smi_err("\n\nLegend:\n", 3, &["expected the header row"]);
    let e = read_nvidia_smi_topo("", "s.txt", "w")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("s.txt: empty"), "{e}");
}

#[test]
fn smi_parses_to_a_typed_matrix() {
    let m = parse_nvidia_smi_topo(&fixture("nvidia_smi_topo_dgx_a100.txt"), "dgx.txt").unwrap();
    let devices = m.devices();
    assert_eq!(devices.len(), 12);
    assert_eq!(devices[7].label, "GPU7");
    assert_eq!(devices[7].gpu, Some(7));
    assert_eq!(devices[7].name, "gpu7");
    assert_eq!(devices[7].line, 9, "rows follow the header on line 1");
    assert_eq!(devices[8].gpu, None);
    assert_eq!(devices[8].name, "mlx5_0", "named by the NIC legend");
    assert_eq!(m.path(0, 0), SmiPath::Same);
    assert_eq!(m.path(0, 7), SmiPath::NvLink(12));
    assert_eq!(m.path(0, 8), SmiPath::Pxb);
    assert_eq!(m.path(8, 2), SmiPath::Node);
    assert_eq!(m.path(0, 11), SmiPath::Sys);

    // Old drivers: NICs head their columns by name, SOC for SYS, no legend.
    let old = "GPU0 GPU1 mlx5_0 CPU Affinity\nGPU0 X NV2 PHB 0-7\nGPU1 NV2 X SOC 0-7\n\
               mlx5_0 PHB SOC X\n";
    let m = parse_nvidia_smi_topo(old, "old.txt").unwrap();
    assert_eq!(m.devices()[2].name, "mlx5_0");
    assert_eq!(m.path(1, 2), SmiPath::Sys);
}

#[track_caller]
fn smi_parse_err(text: &str, line: usize, parts: &[&str]) {
    let e = parse_nvidia_smi_topo(text, "p.txt").expect_err("the input should be refused");
    let e = e.to_string();
    let prefix = format!("p.txt:{line}: ");
    assert!(e.starts_with(&prefix), "expected '{prefix}…', got: {e}");
    assert_has(&e, parts);
}

#[test]
fn smi_parse_errors_name_the_line() {
    let base = fixture("nvidia_smi_topo_workstation.txt");
    smi_parse_err(
        &base.replacen("PHB", "NVX", 1),
        4,
        &["unknown entry 'NVX' from GPU2 to GPU3"],
    );
    smi_parse_err(&base.replacen("PIX", "NV0", 1), 2, &["unknown entry 'NV0'"]);
    smi_parse_err(
        "\n\nGPU1 GPU01\n",
        3,
        &["'GPU1' and 'GPU01' both name GPU 1"],
    );
    smi_parse_err(
        "GPU0 GPU99999999999\n",
        1,
        &["column 'GPU99999999999': GPU index out of range"],
    );
    smi_parse_err("GPU0 GPU0\n", 1, &["device 'GPU0' heads two columns"]);
    smi_parse_err("GPU0 GPU1\nGPU0 X\n", 2, &["row 'GPU0' has 1 entries"]);
    smi_parse_err(
        "GPU0 GPU1\nGPU0 X NV1\n",
        1,
        &["2 devices but 1 rows follow"],
    );
    smi_parse_err(
        "WARNING: infoROM is corrupted\n",
        1,
        &["expected the header row"],
    );
    let e = parse_nvidia_smi_topo(" \n\t\n", "p.txt").unwrap_err();
    assert!(e.to_string().starts_with("p.txt: empty"), "{e}");
}

#[test]
fn smi_gpu_list() {
    let csv = "0, NVIDIA H100 80GB HBM3, 00000000:19:00.0\n\
               WARNING: infoROM is corrupted at gpu 0000:3B:00.0\n\
               1, Tesla V100-SXM2-32GB, 00000000:3B:00.0\n\
               2, Odd, Name, 00000000:86:00.0\n\
               junk\n";
    assert_eq!(
        parse_nvidia_smi_gpus(csv),
        [
            SmiGpu {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                bus_id: "00000000:19:00.0".into(),
            },
            SmiGpu {
                index: 1,
                name: "Tesla V100-SXM2-32GB".into(),
                bus_id: "00000000:3B:00.0".into(),
            },
            SmiGpu {
                index: 2,
                name: "Odd,Name".into(),
                bus_id: "00000000:86:00.0".into(),
            },
        ]
    );
    assert!(parse_nvidia_smi_gpus("").is_empty());
}

// ---------------------------------------------------------------- robustness

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let depth = 100_000;
    let xml = format!(
        "<system><cpu numaid=\"0\">{}{}</cpu></system>",
        "<pci busid=\"0000:01:00.0\" class=\"0x060400\" link_speed=\"8 GT/s\" link_width=\"16\">"
            .repeat(depth),
        "</pci>".repeat(depth)
    );
    assert!(read_nccl_xml(&xml, "deep.xml", "h").is_err());
    let toml = format!("name = {}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(read_toml(&toml, "deep.toml").is_err());
    let json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(read_json(&json, "deep.json").is_err());
}

#[derive(Clone, Debug)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, char),
}

fn edit() -> impl Strategy<Value = Edit> {
    let piece = prop_oneof![
        "[\\[\\]{}=\"'<>/\n#.,: a-z0-9-]{0,8}",
        Just("[[rank]]\nrank = 0\nnode = \"h0/gpu0\"\n".to_string()),
        Just("<pci busid=\"0000:07:00.0\">".to_string()),
        Just("NV12".to_string()),
        Just("\u{1b}[".to_string()),
        Just("ü".to_string()),
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), piece).prop_map(|(at, s)| Edit::Insert(at, s)),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Edit::Replace(at, c)),
    ]
}

fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match e {
            Edit::Delete(i, n) => {
                let start = at(*i, chars.len());
                let end = (start + n).min(chars.len());
                chars.drain(start..end);
            }
            Edit::Insert(i, s) => {
                let pos = at(*i, chars.len() + 1);
                chars.splice(pos..pos, s.chars());
            }
            Edit::Replace(i, c) => {
                if !chars.is_empty() {
                    let pos = at(*i, chars.len());
                    chars[pos] = *c;
                }
            }
        }
    }
    chars.into_iter().collect()
}

fn any_bandwidth() -> impl Strategy<Value = f64> {
    prop_oneof![
        (1u32..4000).prop_map(|k| f64::from(k) * 1e9 / 8.0),
        (3u32..300).prop_map(|k| f64::from(k) / 3.0),
        1.0f64..1e13,
    ]
}

fn any_latency() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        (0u32..5000).prop_map(|k| f64::from(k) * 1e-7),
        0.0f64..1.0,
    ]
}

prop_compose! {
    /// Hosts of accelerators chained by cables (so ranks connect), fabric switches, and
    /// extra cables and directed links anywhere, with awkward numbers and names.
    fn any_topology()(
        hosts in 1usize..4,
        per_host in 1usize..4,
        switches in proptest::collection::vec(0usize..4, 0..3),
        chain in proptest::collection::vec((any_bandwidth(), any_latency()), 16),
        extra in proptest::collection::vec(
            (any::<usize>(), any::<usize>(), any_bandwidth(), any_latency(), any::<bool>()),
            0..12,
        ),
        duplex in proptest::collection::vec(proptest::option::of(0.01f64..=1.0), 12),
        odd_names in any::<bool>(),
    ) -> Topology {
        let mut b = TopologyBuilder::new(if odd_names { "a \"b\" \\ ü" } else { "t" });
        let mut devices = Vec::new();
        for h in 0..hosts {
            let name = if odd_names { format!("h'{h}\"/ü") } else { format!("h{h}") };
            let host = b.node(name.clone(), NodeKind::Host).unwrap();
            b.node_mut(host).zone = (h % 2 == 0).then(|| format!("zone{h}"));
            for d in 0..per_host {
                let kind = if d == 0 { NodeKind::Accelerator } else { NodeKind::ALL[d % 5] };
                devices.push(b.device(format!("{name}/d{d}"), kind, host).unwrap());
            }
        }
        for (i, &tier) in switches.iter().enumerate() {
            let sw = b.switch(format!("sw{i}"), Tier::ALL[tier]).unwrap();
            b.node_mut(sw).in_network_reduction = i == 1;
        }
        for (w, &(bw, lat)) in devices.windows(2).zip(&chain) {
            b.connect(w[0], w[1], bw, lat).unwrap();
        }
        let n = b.nodes().len();
        for ((x, y, bw, lat, directed), duplex) in extra.into_iter().zip(duplex) {
            let (x, y) = ((x % n) as u32, (y % n) as u32);
            if x != y {
                let ids = if directed {
                    vec![b.link(x, y, bw, lat).unwrap()]
                } else {
                    let (there, back) = b.connect(x, y, bw, lat).unwrap();
                    vec![there, back]
                };
                for id in ids.into_iter().filter(|_| duplex.is_some()) {
                    b.set_duplex(id, duplex.unwrap_or(1.0)).unwrap();
                }
            }
        }
        let accelerators: Vec<u32> = (0..n as u32)
            .filter(|&i| b.nodes()[i as usize].kind == NodeKind::Accelerator)
            .rev()
            .collect();
        b.place_all(accelerators).unwrap();
        b.build().unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_topology_round_trips(t in any_topology()) {
        let text = write_toml(&t);
        let again = read_toml(&text, "r.toml").unwrap();
        prop_assert_eq!(again.name(), t.name());
        assert_same_links_unordered(&t, &again);
        prop_assert_eq!(write_toml(&again), text);
        assert_same(&t, &read_json(&to_json(&t), "r.json").unwrap());
        let dot = to_dot(&t);
        prop_assert_eq!(dot.matches("subgraph \"cluster_").count(), t.nodes().iter().filter(|n| n.kind == NodeKind::Host).count());
    }

    #[test]
    fn mutated_toml_never_panics_and_what_reads_round_trips(
        edits in proptest::collection::vec(edit(), 1..6)
    ) {
        let text = mutate(&fixture("dgx_pair.toml"), &edits);
        if let Ok(t) = read_toml(&text, "m.toml") {
            let again = read_toml(&write_toml(&t), "m2.toml").unwrap();
            assert_same_links_unordered(&t, &again);
            assert_same(&t, &read_json(&to_json(&t), "m.json").unwrap());
            let _ = to_dot(&t);
        }
    }

    #[test]
    fn mutated_xml_never_panics(edits in proptest::collection::vec(edit(), 1..6)) {
        let _ = read_nccl_xml(&mutate(&fixture("nccl_topo_dgx_a100.xml"), &edits), "m.xml", "m");
        let _ = read_nccl_xml(&mutate(NVLINKED, &edits), "m.xml", "m");
    }

    #[test]
    fn mutated_smi_never_panics(edits in proptest::collection::vec(edit(), 1..6)) {
        let text = mutate(&fixture("nvidia_smi_topo_dgx_a100.txt"), &edits);
        let _ = read_nvidia_smi_topo(&text, "m.txt", "m");
        if let Ok(m) = parse_nvidia_smi_topo(&text, "m.txt") {
            let _ = topoccl_topo::discover::nvlinks(&m);
        }
    }

    #[test]
    fn garbage_never_panics(text in "\\PC{0,200}") {
        let _ = read_toml(&text, "g");
        let _ = read_json(&text, "g");
        let _ = read_nccl_xml(&text, "g", "h");
        let _ = read_nvidia_smi_topo(&text, "g", "h");
        let _ = parse_nvidia_smi_gpus(&text);
    }
}
