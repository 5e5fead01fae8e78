//! Plans that fit a topology, built from the core's generic generators: a ring ordered
//! to keep neighbours close, a tree from a minimum spanning tree over latency, and a
//! hierarchical all-reduce whose levels are the topology's (host → leaf → zone). The
//! topology only decides *which* ranks talk; the algorithms stay the core's, so the
//! verifier that proves them proves these.

use std::collections::BTreeMap;

use topoccl_plan::{
    algo, build, Algorithm, Collective, CollectiveSpec, Hierarchy, Plan, PlanParams, Rank,
};

use crate::cost::{Pricer, TopoCost};
use crate::error::TopoError;
use crate::model::{NodeId, NodeKind, Topology};
use crate::route::Router;

/// Exhaustive ring improvement (2-opt) is quadratic per pass; above this many ranks the
/// locality order is used as is.
const TWO_OPT_MAX: u32 = 512;
/// Flat Prim over all rank pairs up to this many ranks; above it, per host then hosts.
const PRIM_FLAT_MAX: u32 = 1024;
/// Bytes used to weigh bandwidth against latency when ordering a ring.
const RING_PROBE_BYTES: f64 = 1_048_576.0;

/// Where each rank is, coarsest last: host, leaf (the fabric node it attaches to), zone.
#[derive(Clone, Debug)]
pub struct Locality {
    pub host: Vec<u32>,
    pub leaf: Vec<u32>,
    pub zone: Vec<u32>,
}

impl Locality {
    pub fn of(router: &mut Router<'_>) -> Result<Locality, TopoError> {
        let t = router.topology();
        let mut ids: [BTreeMap<String, u32>; 3] = Default::default();
        let mut intern = |level: usize, key: String| {
            let next = ids[level].len() as u32;
            *ids[level].entry(key).or_insert(next)
        };
        let p = t.world();
        let mut loc = Locality {
            host: Vec::with_capacity(p as usize),
            leaf: Vec::with_capacity(p as usize),
            zone: Vec::with_capacity(p as usize),
        };
        for r in 0..p {
            let host = t.rank_host(r);
            let leaf = router
                .attachment(r)?
                .map_or_else(|| t.node(host).name.clone(), |n| t.node(n).name.clone());
            let node = t.node(t.rank_node(r));
            let zone = node
                .zone
                .clone()
                .or_else(|| t.node(host).zone.clone())
                .unwrap_or_default();
            loc.host.push(intern(0, t.node(host).name.clone()));
            loc.leaf.push(intern(1, leaf));
            loc.zone.push(intern(2, zone));
        }
        Ok(loc)
    }

    fn key(&self, r: Rank) -> (u32, u32, u32, Rank) {
        let i = r as usize;
        (self.zone[i], self.leaf[i], self.host[i], r)
    }
}

/// A ring order that keeps zones, leaves and hosts contiguous, then (for small worlds)
/// improved by 2-opt on the directed cost of each hop (latency + 1 MiB at the path's
/// bandwidth): a heuristic for the asymmetric travelling-salesman problem.
pub fn ring_order(router: &mut Router<'_>) -> Result<Vec<Rank>, TopoError> {
    let loc = Locality::of(router)?;
    let p = router.topology().world();
    let mut order: Vec<Rank> = (0..p).collect();
    order.sort_by_key(|&r| loc.key(r));
    if p > 3 && p <= TWO_OPT_MAX {
        let mut cost = vec![0.0; (p * p) as usize];
        for a in 0..p {
            for b in 0..p {
                if a != b {
                    let route = router.route(a, b)?;
                    cost[(a * p + b) as usize] =
                        route.latency + RING_PROBE_BYTES / route.bottleneck;
                }
            }
        }
        two_opt(&mut order, |a, b| cost[(a * p + b) as usize]);
    }
    Ok(order)
}

/// Reverses segments of the tour while that shortens it (both directions of travel
/// counted, since the tour is asymmetric); bounded passes.
fn two_opt(order: &mut [Rank], c: impl Fn(Rank, Rank) -> f64) {
    let n = order.len();
    let tour = |o: &[Rank]| (0..n).map(|i| c(o[i], o[(i + 1) % n])).sum::<f64>();
    let mut best = tour(order);
    for _pass in 0..8 {
        let mut improved = false;
        for i in 1..n - 1 {
            for j in i + 1..n {
                order[i..=j].reverse();
                let t = tour(order);
                if t < best * (1.0 - 1e-12) {
                    best = t;
                    improved = true;
                } else {
                    order[i..=j].reverse();
                }
            }
        }
        if !improved {
            break;
        }
    }
}

/// A spanning tree of minimum total latency (Prim), rooted at `root`: each rank's parent.
/// Ties go to the shallower parent, so equal links give bushy, shallow trees. Large
/// worlds get a tree per host joined by a tree over the hosts' first ranks.
pub fn mst_parents(router: &mut Router<'_>, root: Rank) -> Result<Vec<Option<Rank>>, TopoError> {
    let p = router.topology().world();
    if root >= p {
        return Err(TopoError::invalid(format!(
            "root {root} is not a rank of the {p}-rank topology"
        )));
    }
    let all: Vec<Rank> = (0..p).collect();
    let mut parents = vec![None; p as usize];
    if p <= PRIM_FLAT_MAX {
        prim(router, &all, root, &mut parents)?;
        return Ok(parents);
    }
    let loc = Locality::of(router)?;
    let mut hosts: BTreeMap<u32, Vec<Rank>> = BTreeMap::new();
    for r in 0..p {
        hosts.entry(loc.host[r as usize]).or_default().push(r);
    }
    let mut leaders = Vec::new();
    for members in hosts.values() {
        let leader = if members.contains(&root) {
            root
        } else {
            members[0]
        };
        prim(router, members, leader, &mut parents)?;
        leaders.push(leader);
    }
    prim(router, &leaders, root, &mut parents)?;
    Ok(parents)
}

/// Prim over `ranks` from `root`, writing parents (the root's is left alone).
fn prim(
    router: &mut Router<'_>,
    ranks: &[Rank],
    root: Rank,
    parents: &mut [Option<Rank>],
) -> Result<(), TopoError> {
    let n = ranks.len();
    let Some(start) = ranks.iter().position(|&r| r == root) else {
        return Ok(());
    };
    let mut done = vec![false; n];
    let mut depth = vec![0u32; n];
    // (latency, depth of parent, parent index) of the best edge into the tree.
    let mut best: Vec<(f64, u32, usize)> = vec![(f64::INFINITY, u32::MAX, start); n];
    let mut u = start;
    done[u] = true;
    for _ in 1..n {
        for v in 0..n {
            if !done[v] {
                let lat = router.latency(ranks[u], ranks[v])?;
                let cand = (lat, depth[u], u);
                if (cand.0, cand.1) < (best[v].0, best[v].1) {
                    best[v] = cand;
                }
            }
        }
        let next = (0..n)
            .filter(|&v| !done[v])
            .min_by(|&a, &b| {
                (best[a].0, best[a].1)
                    .partial_cmp(&(best[b].0, best[b].1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .expect("a rank is left");
        done[next] = true;
        depth[next] = depth[best[next].2] + 1;
        parents[ranks[next] as usize] = Some(ranks[best[next].2]);
        u = next;
    }
    Ok(())
}

/// The topology's levels as nested groups for a hierarchical all-reduce: ranks by host,
/// hosts by leaf, leaves by zone. A level is kept when it groups something (more than one
/// member per group, more than one group) and its groups are of equal size. Members keep
/// rank order, so member i of every host (GPU i, on rail i) reduces shard i together.
pub fn levels(loc: &Locality) -> Vec<Vec<Vec<u32>>> {
    walk_levels(loc).0
}

/// Why [`levels`] leaves out levels that would group something: their groups differ in
/// size (hosts with different GPU counts, racks of unequal size), which the core's
/// hierarchical all-reduce cannot take, since member i of every group reduces shard i
/// with the same member of the others. Empty when no level is left out for that.
pub fn skipped_levels(loc: &Locality) -> Vec<String> {
    walk_levels(loc).1
}

/// [`skipped_levels`] for `spec` on the router's topology: notes for an all-reduce (the
/// one collective with hierarchical plans), none for the others.
pub fn hierarchy_notes(
    router: &mut Router<'_>,
    spec: &CollectiveSpec,
) -> Result<Vec<String>, TopoError> {
    if spec.collective != Collective::AllReduce {
        return Ok(Vec::new());
    }
    Ok(skipped_levels(&Locality::of(router)?))
}

/// The kept levels, and a note for each level left out because its groups differ in size.
fn walk_levels(loc: &Locality) -> (Vec<Vec<Vec<u32>>>, Vec<String>) {
    let p = loc.host.len() as u32;
    let mut out: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut notes = Vec::new();
    // Current units (ranks first, then the groups of the previous level), with the rank
    // that represents each unit's position; every unit holds `unit_ranks` ranks.
    let mut units: Vec<Rank> = (0..p).collect();
    let mut unit_ranks = 1u32;
    let mut last_skipped: Option<Vec<Vec<u32>>> = None;
    for (name, key) in [
        ("host", &loc.host),
        ("leaf", &loc.leaf),
        ("zone", &loc.zone),
    ] {
        let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (i, &rep) in units.iter().enumerate() {
            groups.entry(key[rep as usize]).or_default().push(i as u32);
        }
        let sizes: Vec<usize> = groups.values().map(Vec::len).collect();
        let equal = sizes.windows(2).all(|w| w[0] == w[1]);
        if groups.len() > 1 && sizes[0] > 1 && equal {
            let next_units = groups.values().map(|g| units[g[0] as usize]).collect();
            unit_ranks *= sizes[0] as u32;
            out.push(groups.into_values().collect());
            units = next_units;
        } else if !equal {
            let groups: Vec<Vec<u32>> = groups.into_values().collect();
            // A zone level that repeats the leaf grouping says nothing new.
            if last_skipped.as_ref() != Some(&groups) {
                notes.push(unequal_note(name, &sizes, unit_ranks));
            }
            last_skipped = Some(groups);
        }
    }
    (out, notes)
}

/// `the leaf level is left out of hierarchical plans: its 3 groups hold 2 × 16 and 1 × 8
/// ranks; …`
fn unequal_note(level: &str, sizes: &[usize], unit_ranks: u32) -> String {
    let mut by_size: BTreeMap<std::cmp::Reverse<u64>, u32> = BTreeMap::new();
    for &s in sizes {
        *by_size
            .entry(std::cmp::Reverse(s as u64 * unit_ranks as u64))
            .or_default() += 1;
    }
    let parts: Vec<String> = by_size
        .iter()
        .map(|(size, n)| format!("{n} × {}", size.0))
        .collect();
    let held = match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => parts.join(""),
    };
    format!(
        "the {level} level is left out of hierarchical plans: its {} groups hold {held} \
         ranks, and a hierarchical all-reduce needs groups of one size (member i of every \
         group reduces shard i with the same member of the others)",
        sizes.len()
    )
}

/// A hierarchical all-reduce over `levels` (from [`levels`]): `intra` inside the groups of
/// every level, `top` across the last level's groups.
pub fn hierarchy(
    levels: &[Vec<Vec<u32>>],
    intra: &Algorithm,
    top: &Algorithm,
) -> Option<Algorithm> {
    let mut alg = top.clone();
    for groups in levels.iter().rev() {
        alg = Algorithm::Hierarchical(Box::new(Hierarchy {
            groups: groups.clone(),
            intra: intra.clone(),
            inter: alg,
        }));
    }
    (!levels.is_empty()).then_some(alg)
}

/// A ring all-reduce (or all-gather, reduce-scatter) in a given rank order, as the
/// one-group hierarchy (its intra-group ring runs in the group's order).
pub fn ordered_ring(order: Vec<Rank>) -> Algorithm {
    Algorithm::Hierarchical(Box::new(Hierarchy {
        groups: vec![order],
        intra: Algorithm::Ring,
        inter: Algorithm::Ring,
    }))
}

/// The label of the minimum spanning tree candidate (a `parent-tree`).
pub const MST_TREE: &str = "mst-tree";

/// The label of rail-aligned rings with one channel per NIC ([`rail_orders`]): the
/// algorithm's own name, as every candidate is labelled by [`Algorithm::label`].
pub const RAIL_RINGS: &str = "rings";

/// Worlds above this many ranks are not offered [`RAIL_RINGS`]: pricing a plan with a
/// channel per NIC walks that many transfers per round.
pub const RAIL_RINGS_MAX_RANKS: u32 = 4096;

/// Ring orders with one channel per NIC of a host, NCCL-style: channel `k` visits the
/// hosts in order of their first rank, entering and leaving each through different GPUs
/// (by rank within the host) so that every NIC carries one channel each way. With an even
/// number of hosts and of GPUs per host the channels are rail-aligned: channel `k` enters
/// even hosts at GPU `k` and leaves at GPU `k ^ 1`, odd hosts the other way round, so it
/// crosses between hosts on rail `k ^ 1` and back on rail `k`; otherwise it enters at GPU
/// `k` and leaves from GPU `k − 1`. `None` unless there are several hosts, each with the same number (≥ 2) of
/// ranks and at least as many NICs; the channel count is the ranks per host.
pub fn rail_orders(t: &Topology) -> Option<Vec<Vec<Rank>>> {
    let mut hosts: Vec<(NodeId, Vec<Rank>)> = Vec::new();
    for r in 0..t.world() {
        let h = t.rank_host(r);
        match hosts.iter_mut().find(|(id, _)| *id == h) {
            Some(e) => e.1.push(r),
            None => hosts.push((h, vec![r])),
        }
    }
    let per = hosts.first()?.1.len();
    if hosts.len() < 2 || per < 2 || hosts.iter().any(|(_, rs)| rs.len() != per) {
        return None;
    }
    let nics = |h: NodeId| {
        t.nodes()
            .iter()
            .filter(|n| n.kind == NodeKind::Nic && n.host == Some(h))
            .count()
    };
    if hosts.iter().any(|&(h, _)| nics(h) < per) {
        return None;
    }
    let even = hosts.len() % 2 == 0 && per % 2 == 0;
    Some(
        (0..per)
            .map(|k| {
                hosts
                    .iter()
                    .enumerate()
                    .flat_map(|(h, (_, rs))| {
                        if even {
                            // Rail-aligned: enter at GPU k and leave at its partner k ^ 1
                            // on even hosts, the other way round on odd ones, so the
                            // channel crosses between hosts on one rail each way.
                            let (a, b) = (k, k ^ 1);
                            let (enter, leave) = if h % 2 == 0 { (a, b) } else { (b, a) };
                            let middle = (0..per).filter(move |&i| i != enter && i != leave);
                            std::iter::once(rs[enter])
                                .chain(middle.map(|i| rs[i]))
                                .chain(std::iter::once(rs[leave]))
                                .collect::<Vec<_>>()
                        } else {
                            (0..per).map(|i| rs[(k + i) % per]).collect()
                        }
                    })
                    .collect()
            })
            .collect(),
    )
}

/// Whether `s` is spelled like a topology-aware candidate's label: [`algo::TOPO_RING`],
/// [`MST_TREE`] or a hierarchy's `hier(intra|top)` ([`algo::parse_hier_label`]).
pub fn is_topology_label(s: &str) -> bool {
    s == algo::TOPO_RING || s == MST_TREE || algo::parse_hier_label(s).is_some()
}

/// A candidate plan with where it came from.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// `ring`, `topo-ring`, `hier(ring|rhd)` …
    pub label: String,
    /// Whether the topology shaped it (ordering, tree or levels).
    pub topology_aware: bool,
    pub plan: Plan,
    pub cost: TopoCost,
}

/// Every plan worth pricing for `spec` on this topology: the flat algorithms in rank order
/// and the topology-aware ones, each priced. Plans the core refuses are skipped.
pub fn candidates(
    pricer: &mut Pricer<'_>,
    spec: &CollectiveSpec,
    params: PlanParams,
) -> Result<Vec<Candidate>, TopoError> {
    let mut out = Vec::new();
    let mut add = |pricer: &mut Pricer<'_>,
                   label: String,
                   aware: bool,
                   alg: Algorithm|
     -> Result<(), TopoError> {
        out.extend(priced(pricer, spec, params, label, aware, alg)?);
        Ok(())
    };
    // Trees and hierarchies need arguments: built below.
    for alg in algo::flat(spec) {
        add(pricer, alg.name().to_string(), false, alg)?;
    }
    let c = spec.collective;
    if matches!(
        c,
        Collective::AllReduce | Collective::AllGather | Collective::ReduceScatter
    ) && spec.world <= RAIL_RINGS_MAX_RANKS
    {
        if let Some(orders) = rail_orders(pricer.router().topology()) {
            add(pricer, RAIL_RINGS.into(), true, Algorithm::Rings { orders })?;
        }
    }
    if matches!(c, Collective::AllReduce) {
        let order = ring_order(pricer.router())?;
        add(pricer, algo::TOPO_RING.into(), true, ordered_ring(order))?;
    }
    if matches!(
        c,
        Collective::AllReduce | Collective::Broadcast | Collective::Reduce
    ) {
        let parents = mst_parents(pricer.router(), spec.root)?;
        add(
            pricer,
            MST_TREE.into(),
            true,
            Algorithm::ParentTree { parents },
        )?;
    }
    out.extend(hierarchies(pricer, spec, params)?);
    Ok(out)
}

/// The hierarchical candidates alone (all-reduce; none for other collectives), priced:
/// what `--algo hier` needs without pricing every flat plan on a large cluster.
pub fn hierarchies(
    pricer: &mut Pricer<'_>,
    spec: &CollectiveSpec,
    params: PlanParams,
) -> Result<Vec<Candidate>, TopoError> {
    let mut out = Vec::new();
    for (label, alg) in hierarchy_algorithms(pricer.router(), spec)? {
        out.extend(priced(pricer, spec, params, label, true, alg)?);
    }
    Ok(out)
}

/// The hierarchies the cluster's levels allow for `spec`, labelled `hier(intra|top)`
/// ([`Algorithm::label`]; every level has several groups), unpriced (all-reduce only).
pub fn hierarchy_algorithms(
    router: &mut Router<'_>,
    spec: &CollectiveSpec,
) -> Result<Vec<(String, Algorithm)>, TopoError> {
    let mut out = Vec::new();
    if spec.collective != Collective::AllReduce {
        return Ok(out);
    }
    let levels = levels(&Locality::of(router)?);
    for intra in [Algorithm::Ring, Algorithm::Direct] {
        for top in [
            Algorithm::Ring,
            Algorithm::Rabenseifner,
            Algorithm::DoubleBinaryTree,
            Algorithm::RecursiveDoubling,
        ] {
            if let Some(alg) = hierarchy(&levels, &intra, &top) {
                out.push((alg.label(), alg));
            }
        }
    }
    Ok(out)
}

/// `alg` built for `spec` and priced; `None` where the algorithm cannot serve the spec.
fn priced(
    pricer: &mut Pricer<'_>,
    spec: &CollectiveSpec,
    params: PlanParams,
    label: String,
    topology_aware: bool,
    alg: Algorithm,
) -> Result<Option<Candidate>, TopoError> {
    let Ok(plan) = build(spec.clone(), alg, params) else {
        return Ok(None);
    };
    let cost = pricer.cost(&plan)?;
    Ok(Some(Candidate {
        label,
        topology_aware,
        plan,
        cost,
    }))
}

/// The cheapest candidate.
pub fn best(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .min_by(|a, b| a.cost.total_s.total_cmp(&b.cost.total_s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Endpoints;
    use crate::model::{Tier, TopologyBuilder};

    /// `racks` leaves under one spine (slow uplinks); `hosts` hosts per rack with `gpus`
    /// GPUs behind an NVSwitch and a NIC each; ranks placed round-robin over racks (the
    /// worst order for a ring).
    fn racks(racks: u32, hosts: u32, gpus: u32, interleave: bool) -> Topology {
        racks_of(&vec![hosts; racks as usize], gpus, interleave)
    }

    /// As [`racks`], with `hosts[k]` hosts in rack k.
    fn racks_of(hosts: &[u32], gpus: u32, interleave: bool) -> Topology {
        let mut b = TopologyBuilder::new("racks");
        let spine = b.switch("spine", Tier::Spine).unwrap();
        let mut devices = Vec::new();
        for (k, &hosts) in (0u32..).zip(hosts) {
            let leaf = b.switch(format!("leaf{k}"), Tier::Leaf).unwrap();
            b.connect(leaf, spine, 1e9, 2e-6).unwrap();
            for h in 0..hosts {
                let host = b.node(format!("r{k}h{h}"), NodeKind::Host).unwrap();
                b.node_mut(host).zone = Some(format!("rack{k}"));
                let nvs = b
                    .device(format!("r{k}h{h}/nvs"), NodeKind::Switch, host)
                    .unwrap();
                for g in 0..gpus {
                    let gpu = b
                        .device(format!("r{k}h{h}/gpu{g}"), NodeKind::Accelerator, host)
                        .unwrap();
                    let nic = b
                        .device(format!("r{k}h{h}/nic{g}"), NodeKind::Nic, host)
                        .unwrap();
                    b.connect(gpu, nvs, 100e9, 0.5e-6).unwrap();
                    b.connect(gpu, nic, 20e9, 1e-6).unwrap();
                    b.connect(nic, leaf, 5e9, 1e-6).unwrap();
                    devices.push((k, h, g, gpu));
                }
            }
        }
        if interleave {
            devices.sort_by_key(|&(k, h, g, _)| (g, h, k));
        }
        b.place_all(devices.into_iter().map(|d| d.3)).unwrap();
        b.build().unwrap()
    }

    fn spec(p: u32) -> CollectiveSpec {
        CollectiveSpec::new(Collective::AllReduce, p, 1 << 22)
    }

    #[test]
    fn levels_follow_hosts_leaves_and_zones() {
        let t = racks(2, 2, 4, false);
        let mut r = Router::new(&t);
        let loc = Locality::of(&mut r).unwrap();
        let lv = levels(&loc);
        // ranks by host (4 per host); hosts by leaf (2 per leaf); the zone level would
        // repeat the leaf grouping, so it is dropped (one group of 2 racks remains).
        assert_eq!(lv.len(), 2, "{lv:?}");
        assert_eq!(lv[0][0], vec![0, 1, 2, 3]);
        assert_eq!(lv[1], vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn levels_of_unequal_size_are_left_out_and_said_so() {
        // Racks of 2, 2 and 1 hosts of 2 GPUs: hosts are kept, racks cannot be (their
        // zones repeat them, so one note), and the hierarchy is over hosts alone.
        let t = racks_of(&[2, 2, 1], 2, false);
        let mut r = Router::new(&t);
        let loc = Locality::of(&mut r).unwrap();
        let lv = levels(&loc);
        assert_eq!(lv.len(), 1, "{lv:?}");
        assert_eq!(lv[0].len(), 5);
        let notes = hierarchy_notes(&mut r, &spec(10)).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("the leaf level is left out")
                && notes[0].contains("3 groups hold 2 × 4 and 1 × 2 ranks"),
            "{}",
            notes[0]
        );
        let broadcast = CollectiveSpec::new(Collective::Broadcast, 10, 1 << 20);
        assert!(hierarchy_notes(&mut r, &broadcast).unwrap().is_empty());
        // Hosts of unequal size: racks of equal rank counts are used over ranks.
        let mut b = TopologyBuilder::new("uneven-hosts");
        let leaf = b.switch("leaf", Tier::Leaf).unwrap();
        let mut rank = 0;
        for (h, gpus) in [(0, 3), (1, 1)] {
            let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
            for g in 0..gpus {
                let gpu = b
                    .device(format!("h{h}/gpu{g}"), NodeKind::Accelerator, host)
                    .unwrap();
                b.connect(gpu, leaf, 10e9, 1e-6).unwrap();
                b.place(rank, gpu).unwrap();
                rank += 1;
            }
        }
        let t = b.build().unwrap();
        let mut r = Router::new(&t);
        let notes = hierarchy_notes(&mut r, &spec(4)).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("the host level") && notes[0].contains("1 × 3 and 1 × 1"));
        // Equal levels leave nothing to say.
        let t = racks(2, 2, 2, false);
        assert!(hierarchy_notes(&mut Router::new(&t), &spec(8))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn topology_aware_plans_verify_and_beat_the_interleaved_ring() {
        let t = racks(2, 2, 2, true);
        let mut pricer = Pricer::new(&t, Endpoints::default());
        let cands = candidates(&mut pricer, &spec(8), PlanParams::default()).unwrap();
        for c in &cands {
            topoccl_plan::verify(&c.plan).unwrap_or_else(|e| panic!("{}: {e}", c.label));
        }
        let ring = cands.iter().find(|c| c.label == "ring").unwrap();
        let best = best(&cands).unwrap();
        assert!(best.topology_aware, "best is {}", best.label);
        assert!(
            ring.cost.total_s > 1.5 * best.cost.total_s,
            "ring {:?} vs {} {:?}",
            ring.cost,
            best.label,
            best.cost
        );
        let topo_ring = cands.iter().find(|c| c.label == "topo-ring").unwrap();
        assert!(topo_ring.cost.total_s < ring.cost.total_s);
    }

    #[test]
    fn plans_name_themselves_as_their_labels() {
        // What `topoccl bench` prints for the runtime's plan is the candidate's label
        // (nested hierarchies over hosts and racks included); the MST tree is a parent tree.
        let t = racks(2, 2, 2, true);
        let mut pricer = Pricer::new(&t, Endpoints::default());
        let cands = candidates(&mut pricer, &spec(8), PlanParams::default()).unwrap();
        assert!(cands.iter().any(|c| c.label.starts_with("hier(")));
        for c in &cands {
            let want = if c.label == "mst-tree" {
                "parent-tree"
            } else {
                &c.label
            };
            assert_eq!(c.plan.algorithm().label(), want);
        }
    }

    #[test]
    fn ring_order_keeps_hosts_together() {
        let t = racks(2, 2, 2, true);
        let mut r = Router::new(&t);
        let order = ring_order(&mut r).unwrap();
        let host_changes = (0..order.len())
            .filter(|&i| t.rank_host(order[i]) != t.rank_host(order[(i + 1) % order.len()]))
            .count();
        assert_eq!(host_changes, 4, "{order:?}");
    }

    #[test]
    fn mst_is_a_tree_rooted_where_asked() {
        let t = racks(2, 2, 2, false);
        let mut r = Router::new(&t);
        for root in [0, 5] {
            let parents = mst_parents(&mut r, root).unwrap();
            assert_eq!(parents[root as usize], None);
            assert_eq!(parents.iter().filter(|p| p.is_none()).count(), 1);
            topoccl_plan::Tree::from_parents(parents, 8).unwrap();
        }
        assert!(mst_parents(&mut r, 8).is_err());
    }

    fn rail(hosts: u32, gpus: u32) -> Topology {
        let text = format!(
            "name = \"r\"\n[generate]\nkind = \"rail\"\nhosts = {hosts}\nlatency = \"1us\"\n\
             [generate.host]\ngpus_per_host = {gpus}\n"
        );
        crate::format::read_toml(&text, "r.toml").unwrap()
    }

    #[test]
    fn rail_rings_use_every_nic_once_each_way_and_verify() {
        for (hosts, gpus) in [(2u32, 8u32), (4, 4), (3, 4), (2, 3)] {
            let t = rail(hosts, gpus);
            let orders = rail_orders(&t).unwrap();
            assert_eq!(orders.len(), gpus as usize);
            // Per host, the GPUs channels leave from and enter at are all different.
            for h in 0..hosts {
                let (mut outs, mut ins) = (Vec::new(), Vec::new());
                for o in &orders {
                    let at = |i: usize| o[(i + o.len()) % o.len()];
                    for i in 0..o.len() {
                        let (r, next) = (at(i), at(i + 1));
                        if t.rank_host(r) != t.rank_host(next) && r / gpus == h {
                            outs.push(r);
                        }
                        if t.rank_host(r) != t.rank_host(next) && next / gpus == h {
                            ins.push(next);
                        }
                    }
                }
                let n = outs.len();
                outs.sort();
                outs.dedup();
                ins.sort();
                ins.dedup();
                assert_eq!((outs.len(), ins.len()), (n, n), "{hosts}×{gpus} host {h}");
            }
            for c in [
                Collective::AllReduce,
                Collective::AllGather,
                Collective::ReduceScatter,
            ] {
                let spec = CollectiveSpec::new(c, hosts * gpus, 3);
                let plan = build(
                    spec,
                    Algorithm::Rings {
                        orders: orders.clone(),
                    },
                    PlanParams::default(),
                )
                .unwrap();
                topoccl_plan::verify(&plan).unwrap();
            }
        }
        // Even hosts and GPUs: each channel crosses on one rail (same GPU index) each way.
        let t = rail(2, 8);
        for o in rail_orders(&t).unwrap() {
            let last = o[7];
            assert_eq!(last % 8, o[8] % 8, "{o:?}");
        }
        // One host, or one GPU per host: none.
        assert!(rail_orders(&rail(1, 8)).is_none());
        assert!(rail_orders(&rail(4, 1)).is_none());
    }

    #[test]
    fn rail_rings_are_a_candidate_and_beat_the_single_nic_ring() {
        let t = rail(4, 8);
        let mut pricer = Pricer::new(&t, Endpoints::default());
        let spec = CollectiveSpec::new(Collective::AllGather, 32, 1 << 20);
        let all = candidates(&mut pricer, &spec, PlanParams::default()).unwrap();
        let cost = |label: &str| {
            all.iter()
                .find(|c| c.label == label)
                .unwrap_or_else(|| panic!("no {label}"))
                .cost
                .total_s
        };
        assert!(cost(RAIL_RINGS) < cost("ring") / 2.0);
    }
}
