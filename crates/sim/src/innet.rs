//! In-network reduction (SHARP-style): switches marked `in_network_reduction` add up the
//! data passing through them and multicast the result back down.
//!
//! This is a traffic pattern of the simulator, not a plan: the plan IR moves data between
//! ranks only, and here switches compute. The pattern is an aggregation tree rooted at a
//! reducing switch: every rank sends its data once up the tree and receives the result
//! once down it. A link carries one copy of the data per stream crossing it; a reducing
//! switch merges the streams from below into one (and needs one copy from above, which it
//! replicates), any other node forwards them as they are. With every switch reducing, each
//! tree link of an all-reduce carries n bytes each way. The data is streamed in small
//! pieces, so the links work at once: the time is the busiest link's bytes over its
//! bandwidth, plus the longest path up and the longest path down. Switches reduce at line
//! rate and ranks reduce nothing, so a straggler's slow reduction changes nothing here (a
//! late start still delays the whole collective). Every rank takes its own shortest path
//! to the tree: ranks of one host are not combined over NVLink first, so where a host's
//! PCIe is slower than its NICs that link sets the pace.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use topoccl_plan::{Collective, CollectiveSpec};
use topoccl_topo::{cut_bound, LinkId, NodeId, NodeKind, Topology};

use crate::{fault, Fault, LinkLoad, RoundRun, SimError, SimReport, HOTTEST};

/// The name `--algo` and reports use.
pub const NAME: &str = "innet";

/// Whether the collective can run as an in-network reduction: an all-reduce (reduce on
/// the way up, multicast on the way down), a reduce-scatter (each rank's block of the
/// reduced result sent down to it alone) or an all-gather (blocks forwarded up unreduced,
/// the whole result multicast down).
pub fn supports(c: Collective) -> bool {
    matches!(
        c,
        Collective::AllReduce | Collective::ReduceScatter | Collective::AllGather
    )
}

/// Roots tried before giving up: a root that misses a rank usually means the ranks are cut
/// off from the reducing switches altogether, and each try is two searches of the graph.
const MAX_ROOTS: usize = 32;

/// One direction of the tree: for each tree link, the streams it carries and the ranks
/// below it (on the side away from the root).
struct Direction {
    edges: Vec<(LinkId, u64, u64)>,
    /// The longest path between the root and a rank (seconds).
    latency: f64,
}

/// An aggregation tree over the ranks.
struct Tree {
    root: NodeId,
    up: Direction,
    down: Direction,
}

/// Path cost from the root: latency, then hops.
#[derive(Clone, Copy, PartialEq)]
struct Cost(f64, u32, NodeId);

impl Eq for Cost {}

impl Ord for Cost {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap.
        other
            .0
            .total_cmp(&self.0)
            .then(other.1.cmp(&self.1))
            .then(other.2.cmp(&self.2))
    }
}

impl PartialOrd for Cost {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Shortest paths between `root` and every node, toward the root (`up`) or away from it,
/// as each node's (latency, hops, link toward its parent). Ranks' nodes end paths but
/// carry no one else's traffic.
fn shortest(
    t: &Topology,
    into: &[Vec<LinkId>],
    is_rank: &[bool],
    root: NodeId,
    up: bool,
) -> Vec<Option<(f64, u32, Option<LinkId>)>> {
    let mut best: Vec<Option<(f64, u32, Option<LinkId>)>> = vec![None; t.nodes().len()];
    let mut done = vec![false; t.nodes().len()];
    let mut heap = BinaryHeap::new();
    best[root as usize] = Some((0.0, 0, None));
    heap.push(Cost(0.0, 0, root));
    while let Some(Cost(lat, hops, u)) = heap.pop() {
        if std::mem::replace(&mut done[u as usize], true) {
            continue;
        }
        if u != root && is_rank[u as usize] {
            continue;
        }
        let links = if up {
            &into[u as usize]
        } else {
            t.out_links(u)
        };
        for &l in links {
            let link = t.link(l);
            let v = if up { link.from } else { link.to };
            let cand = (lat + link.latency, hops + 1);
            let better = match best[v as usize] {
                None => true,
                Some((bl, bh, bp)) => {
                    cand.0 < bl || (cand.0 == bl && (cand.1 < bh || (cand.1 == bh && Some(l) < bp)))
                }
            };
            if better && !done[v as usize] {
                best[v as usize] = Some((cand.0, cand.1, Some(l)));
                heap.push(Cost(cand.0, cand.1, v));
            }
        }
    }
    best
}

/// The tree links of one direction with their streams and ranks below, or the first rank
/// the root cannot serve.
fn direction(
    t: &Topology,
    paths: &[Option<(f64, u32, Option<LinkId>)>],
    up: bool,
) -> Result<Direction, u32> {
    let n = t.nodes().len();
    let mut own = vec![0u64; n];
    let mut latency: f64 = 0.0;
    for r in 0..t.world() {
        let node = t.rank_node(r);
        let Some((lat, _, _)) = paths[node as usize] else {
            return Err(r);
        };
        own[node as usize] += 1;
        latency = latency.max(lat);
    }
    // The nodes on some rank's path, farthest first, so that every node is finished
    // before its parent adds it up.
    let mut on_tree = vec![false; n];
    let mut order = Vec::new();
    for r in 0..t.world() {
        let mut u = t.rank_node(r);
        while !std::mem::replace(&mut on_tree[u as usize], true) {
            order.push(u);
            match paths[u as usize].and_then(|p| p.2) {
                Some(l) => u = parent(t, l, up),
                None => break,
            }
        }
    }
    order.sort_by_key(|&u| (std::cmp::Reverse(paths[u as usize].map_or(0, |p| p.1)), u));
    let mut streams_in = vec![0u64; n];
    let mut ranks_in = vec![0u64; n];
    let mut edges = Vec::new();
    for u in order {
        let Some(l) = paths[u as usize].and_then(|p| p.2) else {
            continue;
        };
        let node = t.node(u);
        let ranks = own[u as usize] + ranks_in[u as usize];
        let streams = if node.in_network_reduction {
            1
        } else {
            own[u as usize] + streams_in[u as usize]
        };
        let p = parent(t, l, up) as usize;
        streams_in[p] += streams;
        ranks_in[p] += ranks;
        edges.push((l, streams, ranks));
    }
    edges.sort_by_key(|e| e.0);
    Ok(Direction { edges, latency })
}

/// The end of tree link `l` nearer the root.
fn parent(t: &Topology, l: LinkId, up: bool) -> NodeId {
    let link = t.link(l);
    if up {
        link.to
    } else {
        link.from
    }
}

/// The aggregation tree: rooted at a reducing switch of the highest tier that every rank
/// reaches and is reached from (the first by node order among equals), paths the
/// shortest by latency then hops, ties to the lowest link number.
fn tree(t: &Topology) -> Result<Tree, SimError> {
    let mut roots: Vec<NodeId> = (0..t.nodes().len() as NodeId)
        .filter(|&n| {
            let node = t.node(n);
            node.kind == NodeKind::Switch && node.in_network_reduction
        })
        .collect();
    if roots.is_empty() {
        return Err(SimError::Invalid(format!(
            "no switch in '{}' reduces in the network; mark switches with \
             in_network_reduction = true (a [[node]] key, or a [generate] option)",
            t.name()
        )));
    }
    roots.sort_by_key(|&n| (std::cmp::Reverse(t.node(n).tier), n));
    let mut into = vec![Vec::new(); t.nodes().len()];
    for (i, l) in t.links().iter().enumerate() {
        into[l.to as usize].push(i as LinkId);
    }
    let mut is_rank = vec![false; t.nodes().len()];
    for &n in t.rank_nodes() {
        is_rank[n as usize] = true;
    }
    let mut first_miss = None;
    for &root in roots.iter().take(MAX_ROOTS) {
        let up = direction(t, &shortest(t, &into, &is_rank, root, true), true);
        let down = direction(t, &shortest(t, &into, &is_rank, root, false), false);
        match (up, down) {
            (Ok(up), Ok(down)) => return Ok(Tree { root, up, down }),
            (Err(r), _) | (_, Err(r)) => {
                first_miss.get_or_insert((root, r));
            }
        }
    }
    let (root, r) = first_miss.expect("at least one root was tried");
    Err(SimError::Invalid(format!(
        "no switch that reduces in the network connects all the ranks of '{}': rank {r} \
         (on '{}') and '{}' cannot reach each other without passing through another rank, \
         and {} other reducing switch(es) tried fare no better",
        t.name(),
        t.node(t.rank_node(r)).name,
        t.node(root).name,
        roots.len().min(MAX_ROOTS) - 1
    )))
}

/// Simulates `spec` as an in-network reduction on `t` after `faults` (the tree is built
/// on the faulty topology, as a subnet manager would rebuild it).
pub fn simulate(
    spec: &CollectiveSpec,
    t: &Topology,
    faults: &[Fault],
) -> Result<SimReport, SimError> {
    if !supports(spec.collective) {
        return Err(SimError::Invalid(format!(
            "in-network reduction runs allreduce, reducescatter and allgather, not {}",
            spec.collective
        )));
    }
    if spec.world != t.world() {
        return Err(SimError::Invalid(format!(
            "the collective is for {} ranks but the topology '{}' places {}",
            spec.world,
            t.name(),
            t.world()
        )));
    }
    let (faulty, stragglers) = fault::apply(t, faults)?;
    let start_delay = stragglers.late.iter().copied().fold(0.0, f64::max);
    let tree = tree(&faulty)?;
    let bytes = spec.size_bytes();
    let n = bytes as f64;
    let mut per_link: HashMap<LinkId, f64> = HashMap::new();
    for (dir, up) in [(&tree.up, true), (&tree.down, false)] {
        for &(l, streams, ranks) in &dir.edges {
            *per_link.entry(l).or_default() +=
                link_bytes(spec.collective, up, streams, ranks, n, spec.world);
        }
    }
    let transfer = per_link
        .iter()
        .map(|(&l, &b)| b / faulty.link(l).bandwidth)
        .fold(0.0, f64::max);
    let latency = tree.up.latency + tree.down.latency;
    let total = start_delay + transfer + latency;
    let mut hottest: Vec<LinkLoad> = per_link
        .into_iter()
        .map(|(l, b)| LinkLoad {
            link: faulty.link_name(l),
            bytes: b,
            utilisation: if total > 0.0 {
                b / faulty.link(l).bandwidth / total
            } else {
                0.0
            },
        })
        .collect();
    hottest.sort_by(|a, b| {
        b.utilisation
            .total_cmp(&a.utilisation)
            .then(a.link.cmp(&b.link))
    });
    hottest.truncate(HOTTEST);
    let bound = lower_bound(&faulty, spec.collective, n);
    Ok(SimReport {
        topology: t.name().to_string(),
        ranks: spec.world,
        collective: spec.collective.to_string(),
        algorithm: format!("{NAME} (root {})", faulty.node(tree.root).name),
        level: crate::Engine::Flow.to_string(),
        bytes,
        total_s: total,
        transfer_s: transfer,
        latency_s: latency,
        reduction_s: 0.0,
        start_delay_s: start_delay,
        pipelined_s: None,
        busbw_gbps: spec.bandwidth(total).busbw_gbps,
        lower_bound_s: bound,
        gap: if bound > 0.0 { total / bound } else { 1.0 },
        rounds: vec![RoundRun {
            first: 0,
            rounds: 1,
            each_s: transfer + latency,
            transfer_s: transfer,
            latency_s: latency,
            reduction_s: 0.0,
        }],
        hottest,
        faults: faults.iter().map(|f| f.to_string()).collect(),
    })
}

/// Bytes on a tree link carrying `streams` streams with `ranks` ranks beyond it: whole
/// vectors where the data is reduced (all-reduce and reduce-scatter going up) or
/// multicast (all-reduce and all-gather coming down), one block per rank elsewhere.
fn link_bytes(c: Collective, up: bool, streams: u64, ranks: u64, n: f64, p: u32) -> f64 {
    match (c, up) {
        (Collective::AllReduce, _)
        | (Collective::ReduceScatter, true)
        | (Collective::AllGather, false) => streams as f64 * n,
        _ => ranks as f64 * n / p as f64,
    }
}

/// What no tree can beat: the cut bounds of [`topoccl_topo::lower_bound`], except that an
/// all-reduce sends n out of each rank, not 2(p−1)/p·n, since the switches do the reducing.
fn lower_bound(t: &Topology, c: Collective, n: f64) -> f64 {
    match c {
        Collective::AllReduce if t.world() > 1 => cut_bound(t, |_| n, |_| n),
        _ => topoccl_topo::lower_bound(t, c, n),
    }
}
