//! The layout on generated topologies: tiers in rows, devices under hosts, every rank
//! drawn once, zones side by side, pods for large fabrics with drill-down.

use proptest::prelude::*;
use topoccl_console::layout::{layout, DrawKind, Layout, Scope, FULL_HOST_LIMIT};
use topoccl_topo::Topology;

fn generated(body: &str) -> Topology {
    let text = format!("name = \"t\"\n[generate]\n{body}");
    topoccl_topo::format::read(&text, "t.toml").expect("a valid generator")
}

fn fat_tree(hosts: u32, tiers: u32, radix: u32, gpus: u32) -> Topology {
    generated(&format!(
        "kind = \"fat-tree\"\nhosts = {hosts}\ntiers = {tiers}\nradix = {radix}\n\
         [generate.host]\ngpus_per_host = {gpus}\n"
    ))
}

fn ranks_drawn(l: &Layout, kind: DrawKind) -> Vec<u32> {
    let mut r: Vec<u32> = l
        .nodes
        .iter()
        .filter(|n| n.kind == kind)
        .flat_map(|n| n.ranks.iter().copied())
        .collect();
    r.sort_unstable();
    r
}

fn y_of(l: &Layout, pred: impl Fn(&topoccl_console::layout::DrawNode) -> bool) -> Vec<f64> {
    l.nodes.iter().filter(|n| pred(n)).map(|n| n.y).collect()
}

#[test]
fn tiers_are_rows_core_on_top_devices_at_the_bottom() {
    let t = fat_tree(64, 3, 16, 4);
    let l = layout(&t, Scope::All).expect("lays out");
    assert!(!l.aggregated);
    let tier = |name: &'static str| y_of(&l, move |n| n.tier == Some(name));
    let (core, spine, leaf) = (tier("core"), tier("spine"), tier("leaf"));
    let hosts = y_of(&l, |n| n.kind == DrawKind::Host);
    let devices = y_of(&l, |n| n.kind == DrawKind::Device);
    assert!(!core.is_empty() && !spine.is_empty() && !leaf.is_empty());
    let max = |v: &[f64]| v.iter().cloned().fold(f64::MIN, f64::max);
    let min = |v: &[f64]| v.iter().cloned().fold(f64::MAX, f64::min);
    assert!(max(&core) < min(&spine));
    assert!(max(&spine) < min(&leaf));
    assert!(max(&leaf) < min(&hosts));
    assert!(max(&hosts) < min(&devices));
    assert_eq!(hosts.len(), 64);
    assert_eq!(devices.len(), 256);
    // Every rank is drawn once as a device and once through its host.
    let all: Vec<u32> = (0..t.world()).collect();
    assert_eq!(ranks_drawn(&l, DrawKind::Device), all);
    assert_eq!(ranks_drawn(&l, DrawKind::Host), all);
    // Edges join distinct drawn nodes, each pair once, and no device has an edge.
    let mut pairs: Vec<(u32, u32)> = l.edges.iter().map(|e| (e.a, e.b)).collect();
    let n = pairs.len();
    pairs.sort_unstable();
    pairs.dedup();
    assert_eq!(pairs.len(), n);
    for e in &l.edges {
        assert!(e.a < e.b);
        assert_ne!(l.nodes[e.a as usize].kind, DrawKind::Device);
        assert_ne!(l.nodes[e.b as usize].kind, DrawKind::Device);
        assert!(e.bandwidth > 0.0 && e.latency_s.is_finite());
    }
}

#[test]
fn zones_sit_side_by_side() {
    let t = generated(
        "kind = \"multi-zone\"\nzones = 2\nhosts_per_zone = 8\n[generate.host]\ngpus_per_host = 2\n",
    );
    let l = layout(&t, Scope::All).expect("lays out");
    let xs = |z: &str| -> Vec<f64> {
        l.nodes
            .iter()
            .filter(|n| n.zone.as_deref() == Some(z) && n.kind == DrawKind::Host)
            .map(|n| n.x)
            .collect()
    };
    let (a, b) = (xs("zone0"), xs("zone1"));
    assert_eq!((a.len(), b.len()), (8, 8));
    let max_a = a.iter().cloned().fold(f64::MIN, f64::max);
    let min_b = b.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        max_a < min_b,
        "zone0 ends at {max_a}, zone1 starts at {min_b}"
    );
}

#[test]
fn large_fabrics_fold_into_pods_and_drill_down() {
    let hosts = FULL_HOST_LIMIT as u32 + 64;
    let t = fat_tree(hosts, 3, 64, 1);
    let l = layout(&t, Scope::All).expect("lays out");
    assert!(l.aggregated);
    assert!(l.nodes.iter().all(|n| n.kind != DrawKind::Host));
    let pods: Vec<_> = l.nodes.iter().filter(|n| n.kind == DrawKind::Pod).collect();
    assert_eq!(pods.len(), l.pods.len());
    assert!(pods.len() > 1);
    assert_eq!(
        l.pods.iter().map(|p| p.hosts).sum::<usize>(),
        hosts as usize
    );
    let one = layout(&t, Scope::Pod(0)).expect("pod 0");
    assert!(!one.aggregated);
    assert_eq!(
        one.nodes
            .iter()
            .filter(|n| n.kind == DrawKind::Host)
            .count(),
        l.pods[0].hosts
    );
    let e = layout(&t, Scope::Pod(l.pods.len())).expect_err("beyond the last pod");
    assert!(e.to_string().contains("does not exist"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn every_rank_is_drawn_once_and_positions_are_finite(hosts in 1u32..40, gpus in 1u32..5, tiers in 2u32..4) {
        let t = fat_tree(hosts, tiers, 32, gpus);
        let l = layout(&t, Scope::All).expect("lays out");
        let all: Vec<u32> = (0..t.world()).collect();
        prop_assert_eq!(ranks_drawn(&l, DrawKind::Host), all);
        prop_assert!(l.nodes.iter().all(|n| n.x.is_finite() && n.y.is_finite()));
        let mut keys: Vec<&str> = l.nodes.iter().map(|n| n.key.as_str()).collect();
        keys.sort_unstable();
        let n = keys.len();
        keys.dedup();
        prop_assert_eq!(keys.len(), n);
        // Deterministic.
        prop_assert_eq!(layout(&t, Scope::All).expect("again"), l);
    }
}
