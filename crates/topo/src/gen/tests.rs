use super::*;
use crate::model::{NodeKind, Tier, Topology};

fn fat_tree(hosts: u32, gpus: u32, tiers: u32, radix: Option<u32>) -> Fabric {
    Fabric::FatTree {
        hosts,
        tiers,
        radix,
        oversub_leaf: 1.0,
        oversub_spine: 1.0,
        bandwidth: None,
        latency: "1us".into(),
        host: HostSpec::with_gpus(gpus),
        in_network_reduction: false,
    }
}

fn build(f: &Fabric) -> Topology {
    generate(f)
        .unwrap_or_else(|e| panic!("{f:?}: {e}"))
        .build()
        .unwrap_or_else(|e| panic!("{f:?}: {e}"))
}

fn error(f: &Fabric) -> String {
    match generate(f) {
        Ok(b) => panic!("{f:?} built {} nodes instead of failing", b.nodes().len()),
        Err(e) => e.to_string(),
    }
}

fn count(t: &Topology, kind: NodeKind, tier: Option<Tier>) -> usize {
    t.nodes()
        .iter()
        .filter(|n| n.kind == kind && (tier.is_none() || n.tier == tier))
        .count()
}

fn switches(t: &Topology, tier: Tier) -> usize {
    count(t, NodeKind::Switch, Some(tier))
}

/// Total bandwidth of links from nodes named with `from` to nodes named with `to`.
fn bandwidth_between(t: &Topology, from: &str, to: &str) -> f64 {
    t.links()
        .iter()
        .filter(|l| t.node(l.from).name.contains(from) && t.node(l.to).name.contains(to))
        .map(|l| l.bandwidth)
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

/// Per host: host, NVSwitch, 2 CPUs, G GPUs, G NICs; cables NVSwitch–GPU, GPU–NIC,
/// GPU–CPU (G each) and CPU–CPU, two links each.
fn host_nodes(gpus: usize) -> usize {
    4 + 2 * gpus
}

fn host_links(gpus: usize) -> usize {
    2 * (3 * gpus + 1)
}

#[test]
fn two_tier_counts() {
    // Radix 4: leaves 2 down / 2 up, so 8 NICs make 4 leaves under 2 spines.
    let t = build(&fat_tree(4, 2, 2, Some(4)));
    assert_eq!(t.world(), 8);
    assert_eq!(count(&t, NodeKind::Host, None), 4);
    assert_eq!(switches(&t, Tier::Leaf), 4);
    assert_eq!(switches(&t, Tier::Spine), 2);
    assert_eq!(switches(&t, Tier::Host), 4);
    assert_eq!(t.nodes().len(), 4 * host_nodes(2) + 6);
    assert_eq!(t.links().len(), 4 * host_links(2) + 2 * (8 + 4 * 2));
    assert_eq!(t.node(t.rank_node(3)).name, "h1/gpu1");
    // Each host's two NICs share a leaf.
    let leaf_of = |nic: &str| {
        let n = t.find(nic).unwrap();
        t.node(t.link(t.out_links(n)[1]).to).name.clone()
    };
    assert_eq!(leaf_of("h1/nic0"), "leaf1");
    assert_eq!(leaf_of("h1/nic1"), "leaf1");
    // A fifth host does not fit; the error says the maximum and what to change.
    let e = error(&fat_tree(5, 2, 2, Some(4)));
    assert!(
        e.contains("5 hosts do not fit")
            && e.contains("use radix 8 or more, 3 tiers or at most 4 hosts"),
        "{e}"
    );
}

#[test]
fn three_tier_counts() {
    // Radix 4: pods of 2 leaves (4 NICs) under 2 spines, 4 cores, at most 4 pods.
    let t = build(&fat_tree(8, 2, 3, Some(4)));
    assert_eq!(t.world(), 16);
    assert_eq!(switches(&t, Tier::Leaf), 8);
    assert_eq!(switches(&t, Tier::Spine), 8);
    assert_eq!(switches(&t, Tier::Core), 4);
    assert!(t.find("pod3/spine1").is_some() && t.find("core3").is_some());
    let cables = 16 + 8 * 2 + 8 * 2;
    assert_eq!(t.links().len(), 8 * host_links(2) + 2 * cables);
    // Every core has one cable per pod.
    assert!((0..4).all(|c| t.out_links(t.find(&format!("core{c}")).unwrap()).len() == 4));
    let e = error(&fat_tree(9, 2, 3, Some(4)));
    assert!(
        e.contains("holds at most 8; use radix 8 or more or at most 8 hosts"),
        "{e}"
    );
}

#[test]
fn leaf_oversubscription_is_the_bandwidth_ratio() {
    for (radix, ratio) in [(8, 3.0), (16, 2.5), (64, 4.0)] {
        let t = build(&fabric(&format!(
            r#"{{"kind": "fat-tree", "hosts": 48, "radix": {radix}, "oversub_leaf": {ratio},
                "host": {{"gpus_per_host": 1}}}}"#
        )));
        // Leaf 0 is full: leaves fill in order, and 48 NICs fill the largest (64 ports at
        // 4:1: 48 down). Radix 16 at 2.5:1 (11 down, 5 up) needs thinned uplinks.
        let down = bandwidth_between(&t, "/nic", "leaf0");
        let up = bandwidth_between(&t, "leaf0", "spine");
        assert!(close(down / up, ratio), "radix {radix}: {down} / {up}");
    }
}

#[test]
fn spine_oversubscription_is_the_bandwidth_ratio() {
    let t = build(&fabric(
        r#"{"kind": "fat-tree", "hosts": 64, "tiers": 3, "radix": 8, "oversub_spine": 3,
            "host": {"gpus_per_host": 2}}"#,
    ));
    // Radix 8 at 3:1: pod spines 6 down / 2 up; pod 0 is full (6 leaves).
    let down = bandwidth_between(&t, "pod0/leaf", "pod0/spine");
    let up = bandwidth_between(&t, "pod0/spine", "core");
    assert!(close(down / up, 3.0), "{down} / {up}");
    assert_eq!(switches(&t, Tier::Core), 4 * 2);
}

#[test]
fn default_radix_is_the_smallest_that_fits() {
    let t = build(&fat_tree(128, 8, 2, None));
    assert_eq!(t.world(), 1024);
    // Radix 64: leaves 32 down / 32 up, 4 hosts each.
    assert_eq!(switches(&t, Tier::Leaf), 32);
    assert_eq!(switches(&t, Tier::Spine), 32);
}

#[test]
fn sixteen_thousand_gpus_in_three_tiers() {
    let t = build(&fabric(
        r#"{"kind": "fat-tree", "hosts": 2048, "tiers": 3, "radix": 64, "oversub_spine": 4}"#,
    ));
    assert_eq!(t.world(), 16_384);
    assert_eq!(count(&t, NodeKind::Nic, None), 16_384);
    // Leaves 32 down / 32 up; pod spines 48 down / 12 up, so pods of 48 leaves: 11 pods.
    assert_eq!(switches(&t, Tier::Leaf), 512);
    assert_eq!(switches(&t, Tier::Spine), 11 * 32);
    assert_eq!(switches(&t, Tier::Core), 32 * 12);
    let cables = 16_384 + 512 * 32 + 11 * 32 * 12;
    assert_eq!(t.links().len(), 2048 * host_links(8) + 2 * cables);
    let down = bandwidth_between(&t, "pod0/leaf", "pod0/spine");
    let up = bandwidth_between(&t, "pod0/spine", "core");
    assert!(close(down / up, 4.0), "{down} / {up}");
}

#[test]
fn rail_puts_nic_i_on_rail_i() {
    let f = Fabric::Rail {
        hosts: 6,
        radix: Some(8),
        oversub_leaf: 1.0,
        bandwidth: Some("200Gbps".into()),
        latency: "1us".into(),
        host: HostSpec::with_gpus(4),
        in_network_reduction: false,
    };
    let t = build(&f);
    assert_eq!(t.world(), 24);
    // Leaves take 4 hosts: 2 leaves per rail, 4 rails, 4 spines.
    assert_eq!(switches(&t, Tier::Leaf), 8);
    assert_eq!(switches(&t, Tier::Spine), 4);
    for (nic, leaf) in [("h0/nic2", "rail2/leaf0"), ("h5/nic3", "rail3/leaf1")] {
        let (n, l) = (t.find(nic).unwrap(), t.find(leaf).unwrap());
        let link = t.out_links(n).iter().find(|&&id| t.link(id).to == l);
        assert!(link.is_some(), "{nic} is not on {leaf}");
        assert_eq!(t.link(*link.unwrap()).bandwidth, 25e9);
    }
    // Spines have 8 ports: at most 2 leaves per rail of 4 hosts.
    let e = error(&fabric(
        r#"{"kind": "rail", "hosts": 9, "radix": 8, "host": {"gpus_per_host": 4}}"#,
    ));
    assert!(e.contains("at most 8"), "{e}");
}

#[test]
fn switch_is_the_textbook_network() {
    let f = Fabric::Switch {
        hosts: 3,
        bandwidth: Some("100Gbps".into()),
        latency: "5us".into(),
        host: None,
        in_network_reduction: false,
    };
    let t = build(&f);
    assert_eq!(t.world(), 3);
    assert_eq!(t.nodes().len(), 4);
    assert_eq!(t.links().len(), 6);
    assert_eq!(t.node(t.rank_node(2)).kind, NodeKind::Host);
    assert!(t
        .links()
        .iter()
        .all(|l| l.bandwidth == 12.5e9 && close(l.latency, 5e-6)));
    let dgx = build(&fabric(r#"{"kind": "switch", "hosts": 3, "host": {}}"#));
    assert_eq!(dgx.world(), 24);
    assert_eq!(dgx.node(dgx.rank_node(9)).name, "h1/gpu1");
    assert_eq!(switches(&dgx, Tier::Leaf), 1);
}

fn two_zones(zone_fabric: ZoneFabric) -> Fabric {
    Fabric::MultiZone {
        zones: 3,
        hosts_per_zone: 2,
        zone_fabric,
        radix: None,
        oversub_leaf: 1.0,
        bandwidth: None,
        latency: "1us".into(),
        inter_bandwidth: "10Gbps".into(),
        inter_latency: "20ms".into(),
        host: HostSpec::with_gpus(2),
        in_network_reduction: false,
    }
}

#[test]
fn zones_are_labelled_and_joined_by_slow_links() {
    for zf in [ZoneFabric::Switch, ZoneFabric::FatTree] {
        let t = build(&two_zones(zf));
        assert_eq!(t.world(), 12);
        assert!(t.nodes().iter().all(|n| n.zone.is_some()), "{zf:?}");
        assert_eq!(
            t.node(t.find("h5/gpu1").unwrap()).zone.as_deref(),
            Some("zone2")
        );
        let slow: Vec<_> = t.links().iter().filter(|l| l.latency == 0.02).collect();
        assert_eq!(slow.len(), 2 * 3, "{zf:?}: a cable per pair of gateways");
        assert!(slow.iter().all(|l| l.bandwidth == 1.25e9));
        assert_eq!(switches(&t, Tier::Core), 3);
    }
    let t = build(&two_zones(ZoneFabric::FatTree));
    assert!(t.find("zone1/spine0").is_some());
}

/// A fabric from its JSON form (defaults filled in), as a topology file would give it.
fn fabric(json: &str) -> Fabric {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn bad_arguments_are_named() {
    let cases = [
        (
            r#"{"kind": "fat-tree", "hosts": 0}"#,
            "hosts must be at least 1",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "host": {"gpus_per_host": 0}}"#,
            "gpus_per_host must be at least 1",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "tiers": 4}"#,
            "tiers is 4",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "radix": 63}"#,
            "must be even",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "radix": 2}"#,
            "radix is 2",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 262144, "tiers": 3}"#,
            "at most 1048576",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "oversub_leaf": 0.5}"#,
            "oversub_leaf is 0.5",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "tiers": 3, "oversub_spine": 0}"#,
            "oversub_spine is 0",
        ),
        (
            r#"{"kind": "fat-tree", "hosts": 2, "bandwidth": "fast"}"#,
            "bandwidth: 'fast' does not start with a number",
        ),
        (
            r#"{"kind": "rail", "hosts": 2, "host": {"pcie_bandwidth": "0GB/s"}}"#,
            "pcie_bandwidth: bandwidth '0GB/s' must be positive",
        ),
        (
            r#"{"kind": "switch", "hosts": 2, "latency": "1 fortnight"}"#,
            "latency: unknown time unit",
        ),
        (
            r#"{"kind": "multi-zone", "zones": 1, "hosts_per_zone": 2}"#,
            "zones is 1",
        ),
        (
            r#"{"kind": "multi-zone", "zones": 2, "hosts_per_zone": 0}"#,
            "hosts_per_zone must be at least 1",
        ),
        (
            r#"{"kind": "rail", "hosts": 2, "radix": 4}"#,
            "do not fit: with radix 4",
        ),
    ];
    for (json, want) in cases {
        let f = fabric(json);
        let e = error(&f);
        assert!(e.contains(want), "{json}: '{e}' lacks '{want}'");
        assert!(e.starts_with(f.kind()), "{e}");
    }
    let e = error(&fat_tree(1 << 17, 8, 2, None));
    assert!(
        e.contains("with radix 1024") && e.contains("use 3 tiers or at most 65536 hosts"),
        "{e}"
    );
}

#[test]
fn serde_form_has_defaults_and_refuses_unknown_fields() {
    let f: Fabric = serde_json::from_str(r#"{"kind": "fat-tree", "hosts": 4}"#).unwrap();
    assert_eq!(f, fat_tree(4, 8, 2, None));
    let f: Fabric = serde_json::from_str(
        r#"{"kind": "multi-zone", "zones": 3, "hosts_per_zone": 2,
            "host": {"gpus_per_host": 2}}"#,
    )
    .unwrap();
    assert_eq!(f, two_zones(ZoneFabric::Switch));
    let back: Fabric = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
    assert_eq!(back, f);
    let e = serde_json::from_str::<Fabric>(r#"{"kind": "switch", "hosts": 2, "radix": 4}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `radix`"), "{e}");
    let e = serde_json::from_str::<Fabric>(r#"{"kind": "rail", "hosts": 2, "host": {"gpus": 2}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `gpus`"), "{e}");
}

#[test]
fn in_network_reduction_marks_the_fabric_switches_only() {
    let plain = build(&fat_tree(4, 2, 2, Some(4)));
    assert!(plain.nodes().iter().all(|n| !n.in_network_reduction));
    let f = fabric(
        r#"{"kind": "fat-tree", "hosts": 4, "radix": 4, "in_network_reduction": true,
            "host": {"gpus_per_host": 2}}"#,
    );
    assert!(f.in_network_reduction());
    let t = build(&f);
    for n in t.nodes() {
        let fabric_switch = n.kind == NodeKind::Switch && n.host.is_none();
        assert_eq!(n.in_network_reduction, fabric_switch, "{}", n.name);
    }
    assert!(switches(&t, Tier::Spine) > 0);
}
