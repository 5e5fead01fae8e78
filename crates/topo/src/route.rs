//! Routes between ranks: shortest paths by latency (ties by hops), with equal-cost
//! multipath (ECMP) splitting traffic evenly at every switch that has several equally short
//! next hops, as hash-based ECMP does on average.
//!
//! Clusters are hosts hanging off a fabric, so the work is split the same way: each host's
//! devices are searched on their own (a few dozen nodes), and the fabric — the nodes in no
//! host — gets distances toward each fabric node that traffic is sent to, computed on first
//! use (a column per destination leaf, not a table over all switch pairs: at 131,072 ranks
//! the full table would take seconds and gigabytes for pairs no route asks). A route between ranks
//! on different hosts leaves its host through one of its exits, crosses the fabric and
//! enters the other host; the cheapest combination wins. This keeps a 16,384-GPU cluster's
//! routing to a few thousand small searches instead of one large search per rank pair.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;

use crate::error::TopoError;
use crate::model::{LinkId, NodeId, NodeKind, Topology};

/// Latencies are summed in whole picoseconds: equal-cost paths (ECMP ties) then compare
/// exactly, whatever order their links were added in, and comparisons in the searches
/// (millions of them on a 131,072-rank cluster) are integer ones.
fn picos(seconds: f64) -> u64 {
    (seconds * 1e12).round() as u64
}

/// The links a transfer uses and the share of its bytes on each.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// (link, fraction of the bytes); fractions along a path sum to 1 at each cut.
    pub links: Vec<(LinkId, f64)>,
    /// One-way latency of the path (seconds).
    pub latency: f64,
    /// The smallest bandwidth on the path (bytes/s), as if the transfer were alone.
    pub bottleneck: f64,
    /// Links on the path (hops).
    pub hops: u32,
}

/// Path cost: latency (picoseconds) first, then hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Dist {
    ps: u64,
    hops: u32,
}

impl Dist {
    const ZERO: Dist = Dist { ps: 0, hops: 0 };
    const INF: Dist = Dist {
        ps: u64::MAX,
        hops: u32::MAX,
    };

    fn plus(self, latency: f64) -> Dist {
        self.add_ps(picos(latency))
    }

    fn add_ps(self, ps: u64) -> Dist {
        Dist {
            ps: self.ps.saturating_add(ps),
            hops: self.hops.saturating_add(1),
        }
    }

    fn is_finite(&self) -> bool {
        self.ps != u64::MAX
    }

    fn seconds(&self) -> f64 {
        self.ps as f64 * 1e-12
    }
}

/// A search's heap entry, smallest distance first (ties by node, for determinism).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Item(std::cmp::Reverse<(Dist, u32)>);

impl Item {
    fn new(d: Dist, node: u32) -> Item {
        Item(std::cmp::Reverse((d, node)))
    }
}

/// Where a node lives: in a host (by host index) or in the fabric (by fabric index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Host(u32),
    Fabric(u32),
}

/// Routes between the ranks of one topology, computed on demand and cached.
pub struct Router<'t> {
    t: &'t Topology,
    place: Vec<Place>,
    /// Fabric node ids, by fabric index.
    fabric: Vec<NodeId>,
    /// Distances through fabric links only, per destination fabric index: `cols[b][a]` is
    /// from `a` to `b` (filled on first use).
    cols: Vec<Option<Box<[Dist]>>>,
    /// Fabric links into each fabric node, by fabric index, as (source index, latency):
    /// `fabric_in[fabric_in_at[b]..fabric_in_at[b + 1]]`, so column searches touch
    /// nothing but these arrays.
    fabric_in_at: Vec<u32>,
    fabric_in: Vec<(u32, u64)>,
    /// Links from a host's nodes into the fabric, and from the fabric into them.
    exits: Vec<Vec<LinkId>>,
    entries: Vec<Vec<LinkId>>,
    /// Incoming links per node.
    into: Vec<Vec<LinkId>>,
    /// Routes computed so far, and where each rank pair's is (one hash lookup per hit,
    /// which matters when a round asks for 131,072 of them).
    parts: Vec<RouteParts>,
    part_of: HashMap<(u32, u32), u32>,
    /// Per rank: its ways into and out of the fabric, and distances inside its host.
    ways: HashMap<u32, RankWays>,
    /// ECMP next hops toward each destination, by fabric index (filled as needed).
    next: HashMap<NodeId, Vec<Option<std::rc::Rc<[LinkId]>>>>,
}

/// A way between a rank and the fabric: the fabric node, the cost, the links.
type Way = (NodeId, Dist, Vec<LinkId>);
/// A node found by a search: its distance and the link it was reached by.
type Reached = (Dist, Option<LinkId>);

/// What routing needs about one rank, computed once.
struct RankWays {
    out: Vec<Way>,
    into: Vec<Way>,
    /// Nodes of its host, found from it (empty for a rank on a fabric node).
    local: HashMap<NodeId, Reached>,
}

/// A route split where traffic of many transfers can be added up: the links outside the
/// fabric (one path) and the fabric crossing (spread over equal-cost paths).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteParts {
    /// Links inside the two hosts (or the whole path, inside one host).
    /// Inline up to a typical GPU-NIC-switch path each way: a large cluster keeps millions
    /// of these, and one allocation each was a tenth of a 131,072-rank simulation.
    pub local: SmallVec<[LinkId; 6]>,
    /// Where the route enters and leaves the fabric, if it crosses it.
    pub fabric: Option<(NodeId, NodeId)>,
    pub latency: f64,
    pub hops: u32,
}

impl<'t> Router<'t> {
    pub fn new(t: &'t Topology) -> Router<'t> {
        let n = t.nodes().len();
        let mut host_index: HashMap<NodeId, u32> = HashMap::default();
        let mut fabric = Vec::new();
        let mut place = vec![Place::Fabric(0); n];
        for (id, node) in t.nodes().iter().enumerate() {
            let owner = match (node.host, node.kind) {
                (Some(h), _) => Some(h),
                (None, NodeKind::Host) => Some(id as NodeId),
                _ => None,
            };
            place[id] = match owner {
                Some(h) => {
                    let next = host_index.len() as u32;
                    Place::Host(*host_index.entry(h).or_insert(next))
                }
                None => {
                    fabric.push(id as NodeId);
                    Place::Fabric(fabric.len() as u32 - 1)
                }
            };
        }
        // A node with a link straight into another host (measured rank-to-rank links, a
        // back-to-back cable) is where traffic leaves its host: it routes as fabric.
        let host_of = |p: Place| match p {
            Place::Host(h) => Some(h),
            Place::Fabric(_) => None,
        };
        let crossing: Vec<NodeId> = t
            .links()
            .iter()
            .filter(|l| {
                let (a, b) = (
                    host_of(place[l.from as usize]),
                    host_of(place[l.to as usize]),
                );
                a.is_some() && b.is_some() && a != b
            })
            .flat_map(|l| [l.from, l.to])
            .collect();
        for n in crossing {
            if let Place::Host(_) = place[n as usize] {
                fabric.push(n);
                place[n as usize] = Place::Fabric(fabric.len() as u32 - 1);
            }
        }
        let mut exits = vec![Vec::new(); host_index.len()];
        let mut entries = vec![Vec::new(); host_index.len()];
        let mut into = vec![Vec::new(); n];
        for (i, l) in t.links().iter().enumerate() {
            into[l.to as usize].push(i as LinkId);
            match (place[l.from as usize], place[l.to as usize]) {
                (Place::Host(h), Place::Fabric(_)) => exits[h as usize].push(i as LinkId),
                (Place::Fabric(_), Place::Host(h)) => entries[h as usize].push(i as LinkId),
                _ => {}
            }
        }
        let mut r = Router {
            t,
            place,
            fabric,
            cols: Vec::new(),
            fabric_in_at: Vec::new(),
            fabric_in: Vec::new(),
            exits,
            entries,
            into,
            parts: Vec::new(),
            part_of: HashMap::default(),
            ways: HashMap::default(),
            next: HashMap::default(),
        };
        r.cols = vec![None; r.fabric.len()];
        for &b in &r.fabric {
            r.fabric_in_at.push(r.fabric_in.len() as u32);
            for &l in &r.into[b as usize] {
                let link = t.link(l);
                if let Place::Fabric(a) = r.place[link.from as usize] {
                    r.fabric_in.push((a, picos(link.latency)));
                }
            }
        }
        r.fabric_in_at.push(r.fabric_in.len() as u32);
        r
    }

    pub fn topology(&self) -> &'t Topology {
        self.t
    }

    /// Makes sure the distances toward fabric node `bi` (by index) are known: one backward
    /// search over fabric links, with plain arrays because it may cover thousands of
    /// switches and run once per destination leaf.
    fn column(&mut self, bi: usize) -> &[Dist] {
        if self.cols[bi].is_none() {
            let f = self.fabric.len();
            let mut col = vec![Dist::INF; f];
            let mut heap = BinaryHeap::new();
            col[bi] = Dist::ZERO;
            heap.push(Item::new(Dist::ZERO, bi as u32));
            while let Some(Item(std::cmp::Reverse((d, ui)))) = heap.pop() {
                if col[ui as usize].cmp(&d) == Ordering::Less {
                    continue;
                }
                let (e0, e1) = (
                    self.fabric_in_at[ui as usize],
                    self.fabric_in_at[ui as usize + 1],
                );
                for &(vi, ps) in &self.fabric_in[e0 as usize..e1 as usize] {
                    let nd = d.add_ps(ps);
                    if nd.cmp(&col[vi as usize]) == Ordering::Less {
                        col[vi as usize] = nd;
                        heap.push(Item::new(nd, vi));
                    }
                }
            }
            self.cols[bi] = Some(col.into_boxed_slice());
        }
        self.cols[bi].as_deref().expect("filled above")
    }

    /// Dijkstra inside one host from `src`, forward or backward (distances *to* `src`).
    /// Returns the reached nodes with their distances and the link each was reached by
    /// (its last link going forward, its first going backward), so paths need no second
    /// search.
    fn search(&self, src: NodeId, forward: bool) -> HashMap<NodeId, Reached> {
        let Place::Host(h) = self.place[src as usize] else {
            return HashMap::default();
        };
        let inside = |p: Place| p == Place::Host(h);
        let mut best: HashMap<NodeId, Reached> = HashMap::default();
        let mut heap = BinaryHeap::new();
        best.insert(src, (Dist::ZERO, None));
        heap.push(Item::new(Dist::ZERO, src));
        while let Some(Item(std::cmp::Reverse((d, u)))) = heap.pop() {
            if best.get(&u).is_some_and(|b| b.0.cmp(&d) == Ordering::Less) {
                continue;
            }
            let links = if forward {
                self.t.out_links(u)
            } else {
                &self.into[u as usize]
            };
            for &l in links {
                let link = self.t.link(l);
                let v = if forward { link.to } else { link.from };
                if !inside(self.place[v as usize]) {
                    continue;
                }
                let nd = d.plus(link.latency);
                if best.get(&v).is_none_or(|b| nd.cmp(&b.0) == Ordering::Less) {
                    best.insert(v, (nd, Some(l)));
                    heap.push(Item::new(nd, v));
                }
            }
        }
        best
    }

    /// The fabric distance from `a` to `b`; `b`'s column must have been filled (infinite
    /// for nodes outside the fabric).
    fn fabric_dist(&self, a: NodeId, b: NodeId) -> Dist {
        match (self.place[a as usize], self.place[b as usize]) {
            (Place::Fabric(i), Place::Fabric(j)) => self.cols[j as usize]
                .as_ref()
                .expect("column filled before use")[i as usize],
            _ => Dist::INF,
        }
    }

    /// The path to `to` from a forward search's source, or from `from` to a backward
    /// search's source, by following the links nodes were reached by.
    fn path(&self, found: &HashMap<NodeId, Reached>, end: NodeId, forward: bool) -> Vec<LinkId> {
        let mut path = Vec::new();
        let mut u = end;
        while let Some(&(_, Some(l))) = found.get(&u) {
            path.push(l);
            let link = self.t.link(l);
            u = if forward { link.from } else { link.to };
        }
        if forward {
            path.reverse();
        }
        path
    }

    /// The route from rank `a` to rank `b`, with every link's share.
    pub fn route(&mut self, a: u32, b: u32) -> Result<Route, TopoError> {
        let parts = self.parts(a, b)?.clone();
        let mut flows: BTreeMap<LinkId, f64> = parts.local.iter().map(|&l| (l, 1.0)).collect();
        if let Some((fo, fi)) = parts.fabric {
            self.spread(fo, fi, 1.0, &mut flows);
        }
        let links: Vec<(LinkId, f64)> = flows.into_iter().collect();
        let bottleneck = links
            .iter()
            .map(|&(l, _)| self.t.link(l).bandwidth)
            .fold(f64::INFINITY, f64::min);
        Ok(Route {
            links,
            latency: parts.latency,
            bottleneck,
            hops: parts.hops,
        })
    }

    /// The route from rank `a` to rank `b` in parts (cached): add many transfers' bytes on
    /// their local links, sum them per fabric crossing, and [`Router::spread`] each sum once.
    pub fn parts(&mut self, a: u32, b: u32) -> Result<&RouteParts, TopoError> {
        let p = self.t.world();
        if a >= p || b >= p {
            return Err(TopoError::invalid(format!(
                "route from rank {a} to rank {b}: the topology has {p} ranks"
            )));
        }
        if let Some(&i) = self.part_of.get(&(a, b)) {
            return Ok(&self.parts[i as usize]);
        }
        let parts = self.compute_parts(a, b)?;
        self.part_of.insert((a, b), self.parts.len() as u32);
        self.parts.push(parts);
        Ok(self.parts.last().expect("pushed above"))
    }

    fn ways(&mut self, rank: u32) -> Result<&RankWays, TopoError> {
        if !self.ways.contains_key(&rank) {
            let node = self.t.rank_node(rank);
            let local = self.search(node, true);
            let w = RankWays {
                out: self.leg_out(node, &local),
                into: self.leg_in(node),
                local,
            };
            self.ways.insert(rank, w);
        }
        Ok(&self.ways[&rank])
    }

    /// The cheapest way from rank `a` to rank `b`: inside their host, or out through one
    /// of `a`'s ways into the fabric and in through one of `b`'s.
    fn compute_parts(&mut self, a: u32, b: u32) -> Result<RouteParts, TopoError> {
        if a == b {
            return Ok(RouteParts {
                local: SmallVec::new(),
                fabric: None,
                latency: 0.0,
                hops: 0,
            });
        }
        self.ways(a)?;
        self.ways(b)?;
        for j in 0..self.ways[&b].into.len() {
            if let Some(fi) = fabric_index(&self.place, self.ways[&b].into[j].0) {
                self.column(fi);
            }
        }
        let (na, nb) = (self.t.rank_node(a), self.t.rank_node(b));
        let (wa, wb) = (&self.ways[&a], &self.ways[&b]);
        let mut best: Option<(Dist, Option<(usize, usize)>)> =
            wa.local.get(&nb).map(|&(d, _)| (d, None));
        for (i, (fo, d_out, _)) in wa.out.iter().enumerate() {
            for (j, (fi, d_in, _)) in wb.into.iter().enumerate() {
                let mid = self.fabric_dist(*fo, *fi);
                if !mid.is_finite() {
                    continue;
                }
                let total = Dist {
                    ps: d_out.ps + mid.ps + d_in.ps,
                    hops: d_out.hops + mid.hops + d_in.hops,
                };
                if best
                    .as_ref()
                    .is_none_or(|(d, _)| total.cmp(d) == Ordering::Less)
                {
                    best = Some((total, Some((i, j))));
                }
            }
        }
        let Some((d, via)) = best else {
            return Err(TopoError::invalid(format!(
                "no path from rank {a} ('{}') to rank {b} ('{}')",
                self.t.node(na).name,
                self.t.node(nb).name
            )));
        };
        let (local, fabric) = match via {
            None => (self.path(&wa.local, nb, true).into(), None),
            Some((i, j)) => {
                let (fo, _, pre) = &wa.out[i];
                let (fi, _, post) = &wb.into[j];
                (pre.iter().chain(post).copied().collect(), Some((*fo, *fi)))
            }
        };
        Ok(RouteParts {
            local,
            fabric,
            latency: d.seconds(),
            hops: d.hops,
        })
    }

    /// The latency of the route from rank `a` to rank `b`.
    pub fn latency(&mut self, a: u32, b: u32) -> Result<f64, TopoError> {
        Ok(self.parts(a, b)?.latency)
    }

    /// The fabric node closest to rank `r` on its way out (its leaf switch, usually);
    /// `None` for a rank with no way out of its host.
    pub fn attachment(&mut self, r: u32) -> Result<Option<NodeId>, TopoError> {
        let w = self.ways(r)?;
        Ok(w.out
            .iter()
            .min_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)))
            .map(|w| w.0))
    }

    /// Ways from `src` into the fabric: (fabric node, cost, links used), given the search
    /// from `src` inside its host. A fabric node is its own way in.
    fn leg_out(&self, src: NodeId, found: &HashMap<NodeId, Reached>) -> Vec<Way> {
        match self.place[src as usize] {
            Place::Fabric(_) => vec![(src, Dist::ZERO, Vec::new())],
            Place::Host(h) => {
                let mut out = Vec::new();
                for &l in &self.exits[h as usize] {
                    let link = self.t.link(l);
                    if let Some(&(dd, _)) = found.get(&link.from) {
                        let mut path = self.path(found, link.from, true);
                        path.push(l);
                        out.push((link.to, dd.plus(link.latency), path));
                    }
                }
                keep_best(out)
            }
        }
    }

    /// Ways from the fabric to `dst`: (fabric node, cost, links used).
    fn leg_in(&self, dst: NodeId) -> Vec<Way> {
        match self.place[dst as usize] {
            Place::Fabric(_) => vec![(dst, Dist::ZERO, Vec::new())],
            Place::Host(h) => {
                let found = self.search(dst, false);
                let mut out = Vec::new();
                for &l in &self.entries[h as usize] {
                    let link = self.t.link(l);
                    if let Some(&(dd, _)) = found.get(&link.to) {
                        let mut path = vec![l];
                        path.extend(self.path(&found, link.to, false));
                        out.push((link.from, dd.plus(link.latency), path));
                    }
                }
                keep_best(out)
            }
        }
    }

    /// Adds `share` bytes from fabric node `a` to fabric node `b` to `flows`, spread over
    /// every equal-cost path, split evenly among the next hops at each node.
    pub fn spread(&mut self, a: NodeId, b: NodeId, share: f64, flows: &mut BTreeMap<LinkId, f64>) {
        self.spread_to(b, &[(a, share)], &mut |l, x| {
            *flows.entry(l).or_default() += x
        });
    }

    /// Spreads the bytes of several sources (fabric node, bytes) toward one fabric node
    /// `b` in one pass: ECMP splitting is linear, so traffic meeting on its way to `b` is
    /// forwarded together. `add(link, bytes)` receives every link's share.
    pub fn spread_to(
        &mut self,
        b: NodeId,
        sources: &[(NodeId, f64)],
        add: &mut dyn FnMut(LinkId, f64),
    ) {
        let Place::Fabric(bi) = self.place[b as usize] else {
            return;
        };
        self.column(bi as usize);
        let mut pending = vec![0.0f64; self.fabric.len()];
        // Nodes by their hops to b: every next hop is one hop closer, so one sweep from the
        // farthest level down forwards everything exactly once.
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for &(a, amount) in sources {
            let Some(ai) = fabric_index(&self.place, a) else {
                continue;
            };
            if ai == bi as usize {
                continue;
            }
            let h = self.fabric_dist(a, b).hops as usize;
            if h == u32::MAX as usize {
                continue;
            }
            if levels.len() <= h {
                levels.resize(h + 1, Vec::new());
            }
            levels[h].push(ai);
            pending[ai] += amount;
        }
        for h in (1..levels.len()).rev() {
            let nodes = std::mem::take(&mut levels[h]);
            for ui in nodes {
                let amount = std::mem::take(&mut pending[ui]);
                if amount == 0.0 {
                    continue;
                }
                let hops = self.next_hops(ui, b);
                let each = amount / hops.len().max(1) as f64;
                for &l in hops.iter() {
                    add(l, each);
                    let vi = fabric_index(&self.place, self.t.link(l).to)
                        .expect("next hops stay in the fabric");
                    if vi != bi as usize {
                        levels[h - 1].push(vi);
                        pending[vi] += each;
                    }
                }
            }
        }
    }

    /// The links from fabric node `ui` (by index) that start a shortest path to `b`
    /// (cached per destination).
    fn next_hops(&mut self, ui: usize, b: NodeId) -> std::rc::Rc<[LinkId]> {
        let f = self.fabric.len();
        let table = self.next.entry(b).or_insert_with(|| vec![None; f]);
        if let Some(h) = &table[ui] {
            return h.clone();
        }
        let u = self.fabric[ui];
        let du = self.fabric_dist(u, b);
        let hops: std::rc::Rc<[LinkId]> = self
            .t
            .out_links(u)
            .iter()
            .copied()
            .filter(|&l| {
                let link = self.t.link(l);
                matches!(self.place[link.to as usize], Place::Fabric(_))
                    && self.fabric_dist(link.to, b).plus(link.latency).eq(&du)
            })
            .collect();
        self.next.get_mut(&b).expect("inserted above")[ui] = Some(hops.clone());
        hops
    }
}

fn fabric_index(place: &[Place], n: NodeId) -> Option<usize> {
    match place[n as usize] {
        Place::Fabric(i) => Some(i as usize),
        Place::Host(_) => None,
    }
}

/// Keeps the cheapest way per fabric node.
fn keep_best(ways: Vec<Way>) -> Vec<Way> {
    let mut best: HashMap<NodeId, (Dist, Vec<LinkId>)> = HashMap::default();
    for (n, d, p) in ways {
        if best.get(&n).is_none_or(|(b, _)| d.cmp(b) == Ordering::Less) {
            best.insert(n, (d, p));
        }
    }
    let mut out: Vec<_> = best.into_iter().map(|(n, (d, p))| (n, d, p)).collect();
    out.sort_by_key(|w| w.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Tier, TopologyBuilder};

    /// Two leaves under two spines; two hosts per leaf, one GPU + NIC per host.
    fn leaf_spine() -> Topology {
        let mut b = TopologyBuilder::new("ls");
        let leaves: Vec<_> = (0..2)
            .map(|i| b.switch(format!("leaf{i}"), Tier::Leaf).unwrap())
            .collect();
        for s in 0..2 {
            let sp = b.switch(format!("spine{s}"), Tier::Spine).unwrap();
            for &l in &leaves {
                b.connect(l, sp, 10e9, 1e-6).unwrap();
            }
        }
        for h in 0..4 {
            let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
            let gpu = b
                .device(format!("h{h}/gpu0"), NodeKind::Accelerator, host)
                .unwrap();
            let nic = b.device(format!("h{h}/nic0"), NodeKind::Nic, host).unwrap();
            b.connect(gpu, nic, 20e9, 0.5e-6).unwrap();
            b.connect(nic, leaves[h / 2], 10e9, 1e-6).unwrap();
            b.place(h as u32, gpu).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn same_leaf_and_across_spines() {
        let t = leaf_spine();
        let mut r = Router::new(&t);
        let near = r.route(0, 1).unwrap();
        // gpu -> nic -> leaf -> nic -> gpu
        assert_eq!(near.hops, 4);
        assert!((near.latency - 3e-6).abs() < 1e-12);
        assert!(near.links.iter().all(|&(_, f)| (f - 1.0).abs() < 1e-12));
        let far = r.route(0, 2).unwrap();
        assert_eq!(far.hops, 6);
        assert!((far.latency - 5e-6).abs() < 1e-12);
        // Two spines: the leaf-to-spine and spine-to-leaf links carry half each.
        let halves = far
            .links
            .iter()
            .filter(|&&(_, f)| (f - 0.5).abs() < 1e-12)
            .count();
        assert_eq!(halves, 4);
        assert_eq!(far.bottleneck, 10e9);
    }

    /// Ranks in hosts joined rank to rank (a measured matrix): no switches at all.
    #[test]
    fn direct_links_between_hosts() {
        let mut b = TopologyBuilder::new("mesh");
        let hosts: Vec<_> = (0..2)
            .map(|h| b.node(format!("m{h}"), NodeKind::Host).unwrap())
            .collect();
        let ranks: Vec<_> = (0..4)
            .map(|r| {
                b.device(format!("m{}/r{r}", r / 2), NodeKind::Cpu, hosts[r / 2])
                    .unwrap()
            })
            .collect();
        for a in 0..4 {
            for c in 0..4 {
                if a != c {
                    let same = a / 2 == c / 2;
                    let (bw, lat) = if same { (10e9, 1e-6) } else { (1e9, 50e-6) };
                    b.link(ranks[a], ranks[c], bw, lat).unwrap();
                }
            }
        }
        b.place_all(ranks.iter().copied()).unwrap();
        let t = b.build().unwrap();
        let mut r = Router::new(&t);
        assert_eq!(r.route(0, 1).unwrap().hops, 1);
        let far = r.route(0, 3).unwrap();
        assert_eq!((far.hops, far.bottleneck), (1, 1e9));
        assert!((r.latency(2, 1).unwrap() - 50e-6).abs() < 1e-12);
    }

    #[test]
    fn ranks_on_fabric_nodes() {
        let mut b = TopologyBuilder::new("sw");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        for i in 0..3 {
            let h = b.node(format!("h{i}"), NodeKind::Host).unwrap();
            b.connect(h, sw, 1e9, 5e-6).unwrap();
            b.place(i, h).unwrap();
        }
        let t = b.build().unwrap();
        let mut r = Router::new(&t);
        let route = r.route(2, 0).unwrap();
        assert_eq!(route.hops, 2);
        assert!((route.latency - 10e-6).abs() < 1e-12);
        assert!(r.route(0, 9).is_err());
    }
}
