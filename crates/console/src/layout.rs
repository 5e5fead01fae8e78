//! Where the console draws each part of a topology: a pure function of the model, no I/O.
//!
//! # What is drawn
//!
//! * Devices (accelerators, CPUs, NICs, host switches) fold into their **host**; a drawn
//!   edge between two drawn nodes stands for every topology link between what they hold
//!   (both directions), so a host's eight NIC cables to one leaf are one edge.
//! * Fabric switches are drawn by **tier**, one row each: core on top, then spine, leaf,
//!   hosts, and (when [`FULL_DEVICE_LIMIT`] allows) the accelerators in a short row under
//!   their host, without edges.
//! * **Zones** are laid out side by side, each its own set of rows, in name order
//!   (nodes without a zone form the first group).
//! * Above [`FULL_HOST_LIMIT`] hosts the whole view is **aggregated by pod**: a pod is a
//!   connected group of leaf and spine switches (the links among them, core excluded);
//!   where that leaves a single group (a two-tier fabric), each leaf is its own pod. A pod
//!   is drawn as one node (its hosts, devices and its switches below core), core switches
//!   as themselves. [`Scope::Pod`] draws one pod in full (drill-down).
//!
//! # Order within a row (no force layout)
//!
//! Leaves in order of their first host; hosts by their primary leaf (the one most of their
//! links reach), then by id; spines and cores by the barycentre of the positions of the
//! rows below they connect to (ties by id). Rows are spread over the width of the widest
//! row, so a row of 32 spines spans the 2,048 hosts beneath it.
//!
//! # Limits
//!
//! Work and memory are O(nodes + links); the output holds at most one node per topology
//! node and one edge per cable.

use std::collections::BTreeMap;

use serde::Serialize;
use topoccl_topo::{LinkId, NodeId, NodeKind, Tier, Topology};

/// Above this many hosts in scope, [`Scope::All`] draws pods instead of hosts.
pub const FULL_HOST_LIMIT: usize = 4096;
/// Above this many accelerators in scope, accelerators are not drawn (hosts still are).
pub const FULL_DEVICE_LIMIT: usize = 20_000;

/// Horizontal distance between two neighbouring hosts.
const HOST_PITCH: f64 = 10.0;
/// Vertical distance between rows: at least this, and at least [`ROW_SHARE`] of the
/// widest row's width, so a wide fabric is not drawn as a flat strip.
const ROW_PITCH: f64 = 100.0;
const ROW_SHARE: f64 = 0.12;
/// Gap between zones, in host pitches.
const ZONE_GAP: f64 = 40.0;

/// What part of the topology to lay out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (aggregated by pod above [`FULL_HOST_LIMIT`] hosts).
    All,
    /// One pod in full, by its number in [`Layout::pods`].
    Pod(usize),
}

/// What a drawn node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrawKind {
    /// A switch of the fabric (tier leaf, spine or core, or a switch without tier).
    Switch,
    /// A host with its devices.
    Host,
    /// An accelerator, drawn under its host.
    Device,
    /// A pod, aggregated.
    Pod,
}

/// One drawn node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrawNode {
    /// Unique key: the topology node's name, or `pod:N`.
    pub key: String,
    pub kind: DrawKind,
    /// Switches: their tier's name (`leaf`, `spine`, `core`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub x: f64,
    pub y: f64,
    /// Ranks placed on this node (hosts: on any of their devices; pods: count only).
    pub ranks: Vec<u32>,
    /// Pods: the number of the pod ([`Scope::Pod`]), its hosts and ranks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<usize>,
}

/// One drawn edge: every topology link between two drawn nodes, both directions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrawEdge {
    /// Index into [`Layout::nodes`] of the end with the smaller index.
    pub a: u32,
    pub b: u32,
    /// The topology links it stands for.
    pub links: Vec<LinkId>,
    /// The first link's name (`leaf0->spine3`) and, over its links, the largest
    /// bandwidth (bytes/s) and the smallest latency (s).
    pub name: String,
    pub bandwidth: f64,
    pub latency_s: f64,
}

/// A pod: its number, a name, its hosts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodInfo {
    pub pod: usize,
    /// The pod's first leaf switch's name.
    pub name: String,
    pub hosts: usize,
    pub ranks: usize,
}

/// A computed layout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Layout {
    pub nodes: Vec<DrawNode>,
    pub edges: Vec<DrawEdge>,
    /// Whether hosts were folded into pods.
    pub aggregated: bool,
    /// Every pod of the topology (empty where the topology has no fabric switches).
    pub pods: Vec<PodInfo>,
}

/// A layout request that cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "pod {pod} does not exist; this topology has pods 0..{count} (see /api/topology's pods)"
    )]
    NoSuchPod { pod: usize, count: usize },
}

/// Where each topology node goes: a drawn node's index, or nothing (a device drawn through
/// its host, or outside the scope).
struct Assign {
    owner: Vec<Option<u32>>,
}

/// Row of a drawn node, top to bottom.
fn row_of(kind: DrawKind, tier: Option<Tier>) -> u8 {
    match (kind, tier) {
        (DrawKind::Switch, Some(Tier::Core)) => 0,
        (DrawKind::Switch, Some(Tier::Spine)) => 1,
        (DrawKind::Pod, _) => 2,
        (DrawKind::Switch, _) => 2,
        (DrawKind::Host, _) => 3,
        (DrawKind::Device, _) => 4,
    }
}

/// The host a node belongs to (itself for hosts and host-less nodes).
fn host_of(t: &Topology, n: NodeId) -> NodeId {
    t.node(n).host.unwrap_or(n)
}

fn is_fabric_switch(t: &Topology, n: NodeId) -> bool {
    let node = t.node(n);
    node.kind == NodeKind::Switch && node.host.is_none() && node.tier != Some(Tier::Host)
}

/// Pods: per fabric switch below core, its pod number; per host, its pod (through its
/// primary leaf). See the module doc.
struct Pods {
    of_node: Vec<Option<usize>>,
    count: usize,
}

fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let p = parent[x as usize];
        parent[x as usize] = parent[p as usize];
        x = p;
    }
    x
}

/// For every host, the fabric switch most of its links reach (ties: lowest id).
fn primary_switch(t: &Topology) -> Vec<Option<NodeId>> {
    let mut counts: Vec<BTreeMap<NodeId, u32>> = vec![BTreeMap::new(); t.nodes().len()];
    for l in t.links() {
        let hf = host_of(t, l.from);
        if t.node(hf).kind == NodeKind::Host && is_fabric_switch(t, l.to) {
            *counts[hf as usize].entry(l.to).or_insert(0) += 1;
        }
    }
    counts
        .iter()
        .map(|c| {
            c.iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(&n, _)| n)
        })
        .collect()
}

fn pods(t: &Topology, primary: &[Option<NodeId>]) -> Pods {
    let n = t.nodes().len();
    let below_core = |x: NodeId| is_fabric_switch(t, x) && t.node(x).tier != Some(Tier::Core);
    let mut parent: Vec<u32> = (0..n as u32).collect();
    for l in t.links() {
        if below_core(l.from) && below_core(l.to) {
            let (a, b) = (find(&mut parent, l.from), find(&mut parent, l.to));
            if a != b {
                parent[a.max(b) as usize] = a.min(b);
            }
        }
    }
    let switches: Vec<NodeId> = (0..n as u32).filter(|&x| below_core(x)).collect();
    let mut roots: BTreeMap<u32, usize> = BTreeMap::new();
    for &s in &switches {
        let r = find(&mut parent, s);
        let next = roots.len();
        roots.entry(r).or_insert(next);
    }
    let per_leaf = roots.len() <= 1;
    let mut of_node = vec![None; n];
    if per_leaf {
        // One group: each switch that hosts attach to is its own pod.
        let mut leaf_pod: BTreeMap<NodeId, usize> = BTreeMap::new();
        for p in primary.iter().flatten() {
            let next = leaf_pod.len();
            leaf_pod.entry(*p).or_insert(next);
        }
        for (&s, &p) in &leaf_pod {
            of_node[s as usize] = Some(p);
        }
        let count = leaf_pod.len();
        finish_hosts(t, primary, &mut of_node);
        return Pods { of_node, count };
    } else {
        for &s in &switches {
            let r = find(&mut parent, s);
            of_node[s as usize] = roots.get(&r).copied();
        }
    }
    finish_hosts(t, primary, &mut of_node);
    Pods {
        of_node,
        count: roots.len(),
    }
}

/// Hosts join their primary switch's pod.
fn finish_hosts(t: &Topology, primary: &[Option<NodeId>], of_node: &mut [Option<usize>]) {
    for h in 0..of_node.len() {
        if t.node(h as u32).kind == NodeKind::Host {
            if let Some(p) = primary[h] {
                of_node[h] = of_node[p as usize];
            }
        }
    }
}

/// Lays out `t` (see the module doc).
pub fn layout(t: &Topology, scope: Scope) -> Result<Layout, LayoutError> {
    let primary = primary_switch(t);
    let pods = pods(t, &primary);
    if let Scope::Pod(p) = scope {
        if p >= pods.count {
            return Err(LayoutError::NoSuchPod {
                pod: p,
                count: pods.count,
            });
        }
    }
    let node_pod = |n: NodeId| pods.of_node[host_of(t, n) as usize];
    let hosts_in_scope = t
        .nodes()
        .iter()
        .enumerate()
        .filter(|(i, node)| {
            node.kind == NodeKind::Host
                && match scope {
                    Scope::All => true,
                    Scope::Pod(p) => node_pod(*i as NodeId) == Some(p),
                }
        })
        .count();
    let aggregated = scope == Scope::All && hosts_in_scope > FULL_HOST_LIMIT && pods.count > 0;
    let devices_in_scope = t
        .nodes()
        .iter()
        .enumerate()
        .filter(|(i, node)| {
            node.kind == NodeKind::Accelerator
                && match scope {
                    Scope::All => true,
                    Scope::Pod(p) => node_pod(*i as NodeId) == Some(p),
                }
        })
        .count();
    let draw_devices = !aggregated && devices_in_scope <= FULL_DEVICE_LIMIT;

    // Ranks per host.
    let mut host_ranks: Vec<Vec<u32>> = vec![Vec::new(); t.nodes().len()];
    let mut node_ranks: Vec<Vec<u32>> = vec![Vec::new(); t.nodes().len()];
    for r in 0..t.world() {
        host_ranks[t.rank_host(r) as usize].push(r);
        node_ranks[t.rank_node(r) as usize].push(r);
    }

    let mut nodes: Vec<DrawNode> = Vec::new();
    let mut tiers: Vec<Option<Tier>> = Vec::new();
    let mut assign = Assign {
        owner: vec![None; t.nodes().len()],
    };
    let mut pod_index: BTreeMap<usize, u32> = BTreeMap::new();
    let mut pod_info: Vec<PodInfo> = (0..pods.count)
        .map(|p| PodInfo {
            pod: p,
            name: String::new(),
            hosts: 0,
            ranks: 0,
        })
        .collect();
    for (i, node) in t.nodes().iter().enumerate() {
        if let Some(p) = pods.of_node[i] {
            if node.kind == NodeKind::Host {
                pod_info[p].hosts += 1;
                pod_info[p].ranks += host_ranks[i].len();
            } else if pod_info[p].name.is_empty() {
                pod_info[p].name = node.name.clone();
            }
        }
    }
    // Pass 1: hosts, fabric switches and pods.
    for (i, node) in t.nodes().iter().enumerate() {
        let id = i as NodeId;
        let in_scope = match scope {
            Scope::All => true,
            Scope::Pod(p) => {
                node_pod(id) == Some(p)
                    || (is_fabric_switch(t, id) && node.tier == Some(Tier::Core))
            }
        };
        if !in_scope {
            continue;
        }
        let is_host = node.kind == NodeKind::Host;
        let fabric = is_fabric_switch(t, id);
        let host_less = node.host.is_none() && !is_host && !fabric;
        if !(is_host || fabric || host_less) {
            continue;
        }
        let pod = node_pod(id);
        if aggregated && node.tier != Some(Tier::Core) {
            if let Some(p) = pod {
                let idx = *pod_index.entry(p).or_insert_with(|| {
                    nodes.push(DrawNode {
                        key: format!("pod:{p}"),
                        kind: DrawKind::Pod,
                        tier: None,
                        zone: node.zone.clone(),
                        x: 0.0,
                        y: 0.0,
                        ranks: Vec::new(),
                        pod: Some(p),
                        hosts: Some(pod_info[p].hosts),
                    });
                    tiers.push(None);
                    nodes.len() as u32 - 1
                });
                assign.owner[i] = Some(idx);
                continue;
            }
        }
        let kind = if is_host {
            DrawKind::Host
        } else {
            DrawKind::Switch
        };
        nodes.push(DrawNode {
            key: node.name.clone(),
            kind,
            tier: node.tier.map(Tier::name),
            zone: node.zone.clone(),
            x: 0.0,
            y: 0.0,
            ranks: if is_host {
                host_ranks[i].clone()
            } else {
                node_ranks[i].clone()
            },
            pod: None,
            hosts: None,
        });
        tiers.push(node.tier);
        assign.owner[i] = Some(nodes.len() as u32 - 1);
    }
    // Devices fold into their host.
    for i in 0..t.nodes().len() {
        if assign.owner[i].is_none() {
            let h = host_of(t, i as NodeId);
            if h != i as NodeId {
                assign.owner[i] = assign.owner[h as usize];
            }
        }
    }

    // Edges, one per pair of drawn nodes.
    let mut edge_of: BTreeMap<(u32, u32), usize> = BTreeMap::new();
    let mut edges: Vec<DrawEdge> = Vec::new();
    for (lid, l) in t.links().iter().enumerate() {
        let (Some(a), Some(b)) = (assign.owner[l.from as usize], assign.owner[l.to as usize])
        else {
            continue;
        };
        if a == b {
            continue;
        }
        let key = (a.min(b), a.max(b));
        let e = *edge_of.entry(key).or_insert_with(|| {
            edges.push(DrawEdge {
                a: key.0,
                b: key.1,
                links: Vec::new(),
                name: t.link_name(lid as LinkId),
                bandwidth: 0.0,
                latency_s: f64::INFINITY,
            });
            edges.len() - 1
        });
        edges[e].links.push(lid as LinkId);
        edges[e].bandwidth = edges[e].bandwidth.max(l.bandwidth);
        edges[e].latency_s = edges[e].latency_s.min(l.latency);
    }

    // Devices drawn under their host (after edges: they have none).
    let mut device_of_host: Vec<(u32, usize)> = Vec::new();
    if draw_devices {
        for (i, node) in t.nodes().iter().enumerate() {
            if node.kind != NodeKind::Accelerator {
                continue;
            }
            let Some(h) = node.host else { continue };
            let Some(owner) = assign.owner[h as usize] else {
                continue;
            };
            if nodes[owner as usize].kind != DrawKind::Host {
                continue;
            }
            nodes.push(DrawNode {
                key: node.name.clone(),
                kind: DrawKind::Device,
                tier: None,
                zone: node.zone.clone(),
                x: 0.0,
                y: 0.0,
                ranks: node_ranks[i].clone(),
                pod: None,
                hosts: None,
            });
            tiers.push(None);
            device_of_host.push((owner, nodes.len() - 1));
        }
    }

    let owners = primary_owner(t, &primary, &assign, &nodes);
    let row_pitch = place(&mut nodes, &tiers, &edges, &owners);
    // Devices: a short row under their host.
    let mut k: BTreeMap<u32, usize> = BTreeMap::new();
    for (owner, d) in device_of_host {
        let slot = k.entry(owner).or_insert(0);
        let (hx, hy) = (nodes[owner as usize].x, nodes[owner as usize].y);
        nodes[d].x = hx - HOST_PITCH * 0.4 + (*slot % 8) as f64 * HOST_PITCH * 0.1;
        nodes[d].y = hy + row_pitch * 0.25 + (*slot / 8) as f64 * HOST_PITCH * 0.2;
        *slot += 1;
    }
    Ok(Layout {
        nodes,
        edges,
        aggregated,
        pods: pod_info,
    })
}

/// Per drawn node, the drawn node of its primary switch (hosts only).
fn primary_owner(
    t: &Topology,
    primary: &[Option<NodeId>],
    assign: &Assign,
    nodes: &[DrawNode],
) -> Vec<Option<u32>> {
    let mut out = vec![None; nodes.len()];
    for (i, node) in t.nodes().iter().enumerate() {
        if node.kind != NodeKind::Host {
            continue;
        }
        if let (Some(me), Some(p)) = (assign.owner[i], primary[i]) {
            out[me as usize] = assign.owner[p as usize];
        }
    }
    out
}

/// Positions for every node but devices: rows by tier, zones side by side; returns the
/// distance between rows.
fn place(
    nodes: &mut [DrawNode],
    tiers: &[Option<Tier>],
    edges: &[DrawEdge],
    primary: &[Option<u32>],
) -> f64 {
    // zone → row → members, in index order first.
    let mut zones: BTreeMap<Option<String>, [Vec<usize>; 4]> = BTreeMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.kind == DrawKind::Device {
            continue;
        }
        let row = row_of(n.kind, tiers[i]) as usize;
        zones.entry(n.zone.clone()).or_default()[row].push(i);
    }
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for e in edges {
        neighbours[e.a as usize].push(e.b as usize);
        neighbours[e.b as usize].push(e.a as usize);
    }
    let mut order_pos = vec![f64::NAN; nodes.len()];
    let mut x0 = 0.0;
    let widest = zones
        .values()
        .flat_map(|rows| rows.iter().map(|r| r.len()))
        .max()
        .unwrap_or(1) as f64
        * HOST_PITCH;
    let row_pitch = ROW_PITCH.max(widest * ROW_SHARE);
    for rows in zones.values_mut() {
        // Row 2 (leaves, pods) in order of first appearance as a host's primary, then id.
        let mut first_use: BTreeMap<usize, usize> = BTreeMap::new();
        for (k, &h) in rows[3].iter().enumerate() {
            if let Some(p) = primary[h] {
                first_use.entry(p as usize).or_insert(k);
            }
        }
        rows[2].sort_by_key(|&i| (first_use.get(&i).copied().unwrap_or(usize::MAX), i));
        for (k, &i) in rows[2].iter().enumerate() {
            order_pos[i] = k as f64;
        }
        rows[3].sort_by(|&a, &b| {
            let pa = primary[a].map_or(f64::INFINITY, |p| order_pos[p as usize]);
            let pb = primary[b].map_or(f64::INFINITY, |p| order_pos[p as usize]);
            pa.total_cmp(&pb).then(a.cmp(&b))
        });
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1) as f64 * HOST_PITCH;
        let spread = |row: &[usize], nodes: &mut [DrawNode], y: f64| {
            let pitch = width / row.len().max(1) as f64;
            for (k, &i) in row.iter().enumerate() {
                nodes[i].x = x0 + pitch * (k as f64 + 0.5);
                nodes[i].y = y;
            }
        };
        spread(&rows[2], nodes, 2.0 * row_pitch);
        spread(&rows[3], nodes, 3.0 * row_pitch);
        // Spines, then cores: barycentre of the row below.
        for row in [1usize, 0] {
            let below: Vec<bool> = {
                let mut v = vec![false; nodes.len()];
                for members in &rows[row + 1..] {
                    for &i in members {
                        v[i] = true;
                    }
                }
                v
            };
            let mut keyed: Vec<(f64, usize)> = rows[row]
                .iter()
                .map(|&i| {
                    let xs: Vec<f64> = neighbours[i]
                        .iter()
                        .filter(|&&j| below[j])
                        .map(|&j| nodes[j].x)
                        .collect();
                    let bc = if xs.is_empty() {
                        f64::INFINITY
                    } else {
                        xs.iter().sum::<f64>() / xs.len() as f64
                    };
                    (bc, i)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            rows[row] = keyed.into_iter().map(|(_, i)| i).collect();
            spread(&rows[row], nodes, row as f64 * row_pitch);
        }
        x0 += width + ZONE_GAP * HOST_PITCH;
    }
    row_pitch
}
