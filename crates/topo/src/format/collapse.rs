//! A topology with its repeated structure collapsed: identical hosts, racks and pods are
//! shown once with a count, so that a 16,384-GPU cluster reads (and draws) in a few dozen
//! lines. Computed from the model alone, never from node names.
//!
//! Steps:
//! 1. **Classes of nodes.** Nodes are coloured by colour refinement (one-dimensional
//!    Weisfeiler–Leman): first by kind, switch tier, in-network reduction and how many
//!    ranks sit there; then, for up to [`MAX_REFINE_ROUNDS`] rounds or until no colour
//!    splits, by their colour together with the multiset of their links (direction,
//!    bandwidth, latency, duplex, colour of the other end). Nodes of one colour look alike
//!    as far as those rounds can see.
//! 2. **Units.** A host and its devices (nodes whose `host` is it) are one unit; every other
//!    node is a unit of its own.
//! 3. **Groups.** The units are split by tier, top-down: the switches of the highest tier
//!    present are set apart, and what remains falls into connected components; each
//!    component of several is a group (named after the tier of the switches just removed
//!    from above it: under core switches a pod, under spines a rack), and is split the
//!    same way with its own highest tier. A single component is not a group: its parts go
//!    straight into the enclosing one.
//! 4. **Collapse.** Parts with the same signature (kind of part and the multiset of what
//!    they hold, recursively down to node colours) under the same parent become one
//!    [`Part`] with a count. Every node belongs to exactly one leaf part (its *class*),
//!    and every link is counted in exactly one [`Bundle`] of links between two classes
//!    with one bandwidth and latency, so the counts add up to the model's nodes and links.
//!
//! Cost: O((nodes + links) · log) per refinement round, and the same again per tier for
//! the groups; memory a few words per link (the refinement's keys).
//! The result is exact about counts but, like any colour refinement, may merge parts that
//! differ only in how they are wired far away.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{human_bandwidth, human_latency, wires};
use crate::model::{NodeId, NodeKind, Tier, Topology};

/// Most rounds of colour refinement (step 1 of the module comment). Four rounds see from a
/// GPU to the core of a 3-tier fat-tree.
pub const MAX_REFINE_ROUNDS: usize = 6;

/// Index of a [`Part`] in [`Collapsed::parts`].
pub type PartId = usize;

/// What a [`Part`] is.
#[derive(Clone, Debug, PartialEq)]
pub enum PartKind {
    /// Nodes of one class: one kind, one tier, alike in their links.
    Nodes {
        kind: NodeKind,
        tier: Option<Tier>,
        in_network_reduction: bool,
        /// Ranks on each of these nodes.
        ranks: usize,
    },
    /// A host with its devices.
    Host,
    /// Units joined below switches of tier `under` (the tier removed above the group):
    /// a rack under spines, a pod under cores; a zone when all its nodes are of one zone
    /// (`one_zone`).
    Group { under: Tier, one_zone: bool },
}

/// One collapsed part: `per_parent` identical copies in each copy of its parent.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub kind: PartKind,
    /// The part holding this one (`None` for the topology itself).
    pub parent: Option<PartId>,
    /// Parts inside, in the order first met (node id order).
    pub children: Vec<PartId>,
    /// Copies in the whole topology.
    pub total: usize,
    /// Copies in each copy of the parent (`total` / the parent's `total`).
    pub per_parent: usize,
    /// A node of the first copy, for readers who want a name.
    pub example: NodeId,
    /// A short name, unique among its siblings: `host`, `rack`, `leaf switch`, `gpu` …
    pub label: String,
}

/// Links between two classes with one bandwidth, latency and direction.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    pub from: PartId,
    pub to: PartId,
    pub bandwidth: f64,
    pub latency: f64,
    /// Cables (a link each way, drawn once) rather than single directed links.
    pub cable: bool,
    /// Cables or directed links in the bundle.
    pub count: usize,
}

impl Bundle {
    /// Links of the model in this bundle.
    pub fn links(&self) -> usize {
        if self.cable {
            2 * self.count
        } else {
            self.count
        }
    }
}

/// The collapsed view of a topology (see the module comment).
#[derive(Clone, Debug)]
pub struct Collapsed {
    /// Every part; the top-level ones have no parent.
    pub parts: Vec<Part>,
    /// Top-level parts, in order.
    pub roots: Vec<PartId>,
    pub bundles: Vec<Bundle>,
}

impl Collapsed {
    /// Nodes of the model, counted through the leaf parts.
    pub fn node_count(&self) -> usize {
        self.parts
            .iter()
            .filter(|p| matches!(p.kind, PartKind::Nodes { .. }))
            .map(|p| p.total)
            .sum()
    }

    /// Links of the model, counted through the bundles.
    pub fn link_count(&self) -> usize {
        self.bundles.iter().map(Bundle::links).sum()
    }

    /// `pod/rack/host/gpu`: the labels from the top down to `part`.
    pub fn path(&self, part: PartId) -> String {
        let mut labels = vec![self.parts[part].label.as_str()];
        let mut at = self.parts[part].parent;
        while let Some(p) = at {
            labels.push(&self.parts[p].label);
            at = self.parts[p].parent;
        }
        labels.reverse();
        labels.join("/")
    }
}

/// Collapses `t` (see the module comment).
pub fn collapse(t: &Topology) -> Collapsed {
    let colours = refine(t);
    let units = Units::new(t);
    let mut b = Builder {
        t,
        colours: &colours,
        units: &units,
        parts: Vec::new(),
        roots: Vec::new(),
        index: HashMap::new(),
        signatures: HashMap::new(),
        class: vec![usize::MAX; t.nodes().len()],
        ranks: ranks_per_node(t),
    };
    let all: Vec<usize> = (0..units.members.len()).collect();
    let top = b.split(&all);
    for entry in &top {
        b.place(entry, None);
    }
    b.name_parts();
    let bundles = bundle(t, &b.class);
    Collapsed {
        parts: b.parts,
        roots: b.roots,
        bundles,
    }
}

/// Colour refinement: a colour per node (step 1 of the module comment).
fn refine(t: &Topology) -> Vec<u32> {
    let ranks = ranks_per_node(t);
    let mut intern: HashMap<Vec<u64>, u32> = HashMap::new();
    let id = |key: Vec<u64>, intern: &mut HashMap<Vec<u64>, u32>| {
        let next = intern.len() as u32;
        *intern.entry(key).or_insert(next)
    };
    let mut colours: Vec<u32> = t
        .nodes()
        .iter()
        .zip(&ranks)
        .map(|(n, &r)| {
            let key = vec![
                kind_code(n.kind),
                n.tier.map_or(0, |tier| tier as u64 + 1),
                n.in_network_reduction as u64,
                r as u64,
            ];
            id(key, &mut intern)
        })
        .collect();
    let mut distinct = intern.len();
    let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); t.nodes().len()];
    for (i, l) in t.links().iter().enumerate() {
        incoming[l.to as usize].push(i);
    }
    for _ in 0..MAX_REFINE_ROUNDS {
        intern.clear();
        let next: Vec<u32> = (0..t.nodes().len())
            .map(|v| {
                let mut around: Vec<[u64; 5]> = Vec::new();
                for &l in t.out_links(v as NodeId) {
                    let link = t.link(l);
                    around.push(link_key(0, link, colours[link.to as usize]));
                }
                for &l in &incoming[v] {
                    let link = &t.links()[l];
                    around.push(link_key(1, link, colours[link.from as usize]));
                }
                around.sort_unstable();
                let mut key = vec![colours[v] as u64];
                key.extend(around.iter().flatten());
                id(key, &mut intern)
            })
            .collect();
        let now = intern.len();
        colours = next;
        if now == distinct {
            break;
        }
        distinct = now;
    }
    colours
}

fn ranks_per_node(t: &Topology) -> Vec<usize> {
    let mut ranks = vec![0usize; t.nodes().len()];
    for &n in t.rank_nodes() {
        ranks[n as usize] += 1;
    }
    ranks
}

fn kind_code(kind: NodeKind) -> u64 {
    NodeKind::ALL.iter().position(|&k| k == kind).unwrap_or(0) as u64
}

fn link_key(direction: u64, l: &crate::model::Link, other: u32) -> [u64; 5] {
    [
        direction,
        l.bandwidth.to_bits(),
        (l.latency + 0.0).to_bits(),
        l.duplex.to_bits(),
        other as u64,
    ]
}

/// Hosts with their devices, and every other node alone (step 2).
struct Units {
    /// Nodes of each unit; a host unit starts with the host.
    members: Vec<Vec<NodeId>>,
    /// The unit of each node.
    of: Vec<usize>,
}

impl Units {
    fn new(t: &Topology) -> Units {
        let owner = |id: usize| {
            let n = &t.nodes()[id];
            match n.host {
                Some(h) if t.node(h).kind == NodeKind::Host => h as usize,
                _ => id,
            }
        };
        let mut of = vec![usize::MAX; t.nodes().len()];
        let mut members: Vec<Vec<NodeId>> = Vec::new();
        for id in 0..t.nodes().len() {
            let o = owner(id);
            if of[o] == usize::MAX {
                of[o] = members.len();
                members.push(vec![o as NodeId]);
            }
            if o != id {
                of[id] = of[o];
                members[of[o]].push(id as NodeId);
            }
        }
        Units { members, of }
    }

    fn is_host(&self, t: &Topology, unit: usize) -> bool {
        t.node(self.members[unit][0]).kind == NodeKind::Host
    }
}

/// A unit, or a group of entries below switches of one tier (step 3).
enum Entry {
    Unit(usize),
    Group(Tier, Vec<Entry>),
}

struct Builder<'a> {
    t: &'a Topology,
    colours: &'a [u32],
    units: &'a Units,
    parts: Vec<Part>,
    roots: Vec<PartId>,
    /// The part of each (parent, signature).
    index: HashMap<(Option<PartId>, u32), PartId>,
    /// Interned signatures (step 4).
    signatures: HashMap<Vec<u64>, u32>,
    /// The leaf part of each node.
    class: Vec<PartId>,
    /// Ranks on each node.
    ranks: Vec<usize>,
}

impl Builder<'_> {
    /// The tier of a unit that is a standalone switch.
    fn tier(&self, unit: usize) -> Option<Tier> {
        let n = self.t.node(self.units.members[unit][0]);
        (n.kind == NodeKind::Switch && !self.units.is_host(self.t, unit))
            .then_some(n.tier)
            .flatten()
    }

    /// `units` as entries: the top tier's switches, then the components below them.
    fn split(&self, units: &[usize]) -> Vec<Entry> {
        let Some(top) = units.iter().filter_map(|&u| self.tier(u)).max() else {
            return units.iter().map(|&u| Entry::Unit(u)).collect();
        };
        let (upper, rest): (Vec<usize>, Vec<usize>) =
            units.iter().partition(|&&u| self.tier(u) == Some(top));
        let mut entries: Vec<Entry> = upper.into_iter().map(Entry::Unit).collect();
        let components = self.components(&rest);
        if components.len() == 1 {
            entries.extend(self.split(&rest));
        } else {
            entries.extend(components.into_iter().map(|c| match c[..] {
                [unit] => Entry::Unit(unit),
                _ => Entry::Group(top, self.split(&c)),
            }));
        }
        entries
    }

    /// Connected components of `units`, through links between them, in unit order.
    fn components(&self, units: &[usize]) -> Vec<Vec<usize>> {
        let position: HashMap<usize, usize> =
            units.iter().enumerate().map(|(i, &u)| (u, i)).collect();
        let mut root: Vec<usize> = (0..units.len()).collect();
        fn find(root: &mut [usize], mut i: usize) -> usize {
            while root[i] != i {
                root[i] = root[root[i]];
                i = root[i];
            }
            i
        }
        for (i, &u) in units.iter().enumerate() {
            for &n in &self.units.members[u] {
                for &l in self.t.out_links(n) {
                    let other = self.units.of[self.t.link(l).to as usize];
                    if let Some(&j) = position.get(&other) {
                        let (a, b) = (find(&mut root, i), find(&mut root, j));
                        root[a.max(b)] = a.min(b);
                    }
                }
            }
        }
        let mut order: HashMap<usize, usize> = HashMap::new();
        let mut out: Vec<Vec<usize>> = Vec::new();
        for (i, &u) in units.iter().enumerate() {
            let r = find(&mut root, i);
            let k = *order.entry(r).or_insert_with(|| {
                out.push(Vec::new());
                out.len() - 1
            });
            out[k].push(u);
        }
        out
    }

    fn intern(&mut self, key: Vec<u64>) -> u32 {
        let next = self.signatures.len() as u32;
        *self.signatures.entry(key).or_insert(next)
    }

    /// A signature for an entry: equal for entries of the same shape.
    fn signature(&mut self, entry: &Entry) -> u32 {
        match entry {
            Entry::Unit(u) => {
                let mut colours: Vec<u64> = self.units.members[*u]
                    .iter()
                    .map(|&n| self.colours[n as usize] as u64)
                    .collect();
                let host = self.units.is_host(self.t, *u);
                colours[usize::from(host)..].sort_unstable();
                let mut key = vec![0, host as u64];
                key.extend(colours);
                self.intern(key)
            }
            Entry::Group(tier, inside) => {
                let mut children: Vec<u64> =
                    inside.iter().map(|e| self.signature(e) as u64).collect();
                children.sort_unstable();
                let mut key = vec![1, *tier as u64];
                key.extend(children);
                self.intern(key)
            }
        }
    }

    /// The part for one more copy of something with `signature` under `parent`.
    fn part(
        &mut self,
        parent: Option<PartId>,
        signature: u32,
        kind: PartKind,
        example: NodeId,
    ) -> PartId {
        let id = match self.index.get(&(parent, signature)) {
            Some(&id) => id,
            None => {
                let id = self.parts.len();
                self.parts.push(Part {
                    kind,
                    parent,
                    children: Vec::new(),
                    total: 0,
                    per_parent: 0,
                    example,
                    label: String::new(),
                });
                match parent {
                    Some(p) => self.parts[p].children.push(id),
                    None => self.roots.push(id),
                }
                self.index.insert((parent, signature), id);
                id
            }
        };
        self.parts[id].total += 1;
        id
    }

    /// Counts `entry` in the parts under `parent`, creating them on first sight.
    fn place(&mut self, entry: &Entry, parent: Option<PartId>) {
        let signature = self.signature(entry);
        match entry {
            Entry::Unit(u) if self.units.is_host(self.t, *u) => {
                let host = self.units.members[*u][0];
                let part = self.part(parent, signature, PartKind::Host, host);
                for i in 0..self.units.members[*u].len() {
                    let n = self.units.members[*u][i];
                    self.node(n, Some(part));
                }
            }
            Entry::Unit(u) => {
                let n = self.units.members[*u][0];
                self.node(n, parent);
            }
            Entry::Group(tier, inside) => {
                let example = first_node(self.units, inside);
                let kind = PartKind::Group {
                    under: *tier,
                    one_zone: self.one_zone(inside),
                };
                let part = self.part(parent, signature, kind, example);
                for e in inside {
                    self.place(e, Some(part));
                }
            }
        }
    }

    /// Whether every node of `entries` has the same zone.
    fn one_zone(&self, entries: &[Entry]) -> bool {
        let mut zones = Vec::new();
        self.zones(entries, &mut zones);
        zones.first().is_some_and(|z| z.is_some()) && zones.windows(2).all(|w| w[0] == w[1])
    }

    fn zones<'z>(&'z self, entries: &[Entry], out: &mut Vec<Option<&'z str>>) {
        for e in entries {
            match e {
                Entry::Unit(u) => out.extend(
                    self.units.members[*u]
                        .iter()
                        .map(|&n| self.t.node(n).zone.as_deref()),
                ),
                Entry::Group(_, inside) => self.zones(inside, out),
            }
        }
    }

    /// Counts node `n` in its class under `parent`.
    fn node(&mut self, n: NodeId, parent: Option<PartId>) {
        let node = self.t.node(n);
        let ranks = self.ranks[n as usize];
        let colour = self.colours[n as usize];
        let signature = self.intern(vec![2, colour as u64]);
        let kind = PartKind::Nodes {
            kind: node.kind,
            tier: node.tier,
            in_network_reduction: node.in_network_reduction,
            ranks,
        };
        let part = self.part(parent, signature, kind, n);
        self.class[n as usize] = part;
    }

    /// Per-parent counts and labels unique among siblings.
    fn name_parts(&mut self) {
        for id in 0..self.parts.len() {
            let parent_total = self.parts[id].parent.map_or(1, |p| self.parts[p].total);
            self.parts[id].per_parent = self.parts[id].total / parent_total.max(1);
        }
        let mut families: Vec<Vec<PartId>> = vec![self.roots.clone()];
        families.extend(self.parts.iter().map(|p| p.children.clone()));
        for family in families {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for id in family {
                let base = base_label(&self.parts[id].kind);
                let n = seen.entry(base.clone()).or_insert(0);
                *n += 1;
                self.parts[id].label = if *n == 1 { base } else { format!("{base}#{n}") };
            }
        }
    }
}

/// The first node of the first unit among `entries`.
fn first_node(units: &Units, entries: &[Entry]) -> NodeId {
    match entries.first() {
        Some(Entry::Unit(u)) => units.members[*u][0],
        Some(Entry::Group(_, inside)) => first_node(units, inside),
        None => 0,
    }
}

fn base_label(kind: &PartKind) -> String {
    match kind {
        PartKind::Nodes {
            kind: NodeKind::Switch,
            tier: Some(tier),
            ..
        } => format!("{tier} switch"),
        PartKind::Nodes { kind, .. } => kind.to_string(),
        PartKind::Host => "host".to_string(),
        PartKind::Group { one_zone: true, .. } => "zone".to_string(),
        PartKind::Group {
            under: Tier::Core, ..
        } => "pod".to_string(),
        PartKind::Group {
            under: Tier::Spine, ..
        } => "rack".to_string(),
        PartKind::Group { under, .. } => format!("group under {under} switches"),
    }
}

/// Every wire of `t` in the bundle of its two classes, bandwidth, latency and direction.
fn bundle(t: &Topology, class: &[PartId]) -> Vec<Bundle> {
    let mut index: HashMap<(PartId, PartId, u64, u64, bool), usize> = HashMap::new();
    let mut out: Vec<Bundle> = Vec::new();
    for w in wires(t) {
        let (from, to) = (class[w.from as usize], class[w.to as usize]);
        let key = (
            from,
            to,
            w.bandwidth.to_bits(),
            (w.latency + 0.0).to_bits(),
            w.cable,
        );
        let i = *index.entry(key).or_insert_with(|| {
            out.push(Bundle {
                from,
                to,
                bandwidth: w.bandwidth,
                latency: w.latency,
                cable: w.cable,
                count: 0,
            });
            out.len() - 1
        });
        out[i].count += 1;
    }
    out
}

/// The collapsed structure as indented text, then the bundles of links.
pub fn collapsed_text(c: &Collapsed) -> String {
    let mut s = String::new();
    fn write_part(s: &mut String, c: &Collapsed, id: PartId, depth: usize) {
        let p = &c.parts[id];
        let indent = "  ".repeat(depth + 1);
        let mut what = p.label.clone();
        if let PartKind::Nodes {
            in_network_reduction,
            ranks,
            ..
        } = p.kind
        {
            if in_network_reduction {
                what.push_str(", in-network reduction");
            }
            if ranks > 0 {
                let _ = write!(
                    what,
                    ", {ranks} rank{} each",
                    if ranks == 1 { "" } else { "s" }
                );
            }
        }
        let of = if p.children.is_empty() { "" } else { ", each:" };
        let _ = writeln!(
            s,
            "{indent}{:>6} × {what}{of}  ({} in all)",
            p.per_parent, p.total
        );
        for &child in &p.children {
            write_part(s, c, child, depth + 1);
        }
    }
    s.push_str("structure (identical parts collapsed, counts per copy of the enclosing part):\n");
    for &root in &c.roots {
        write_part(&mut s, c, root, 0);
    }
    s.push_str("links (by the parts they join):\n");
    for b in &c.bundles {
        let _ = writeln!(
            s,
            "  {} {} {}  {} {}, {} {}",
            c.path(b.from),
            if b.cable { "--" } else { "->" },
            c.path(b.to),
            b.count,
            match (b.cable, b.count) {
                (true, 1) => "cable",
                (true, _) => "cables",
                (false, 1) => "link",
                (false, _) => "links",
            },
            human_bandwidth(b.bandwidth),
            human_latency(b.latency)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::read_toml;
    use proptest::prelude::*;

    fn generated(table: &str) -> Topology {
        read_toml(&format!("name = \"t\"\n[generate]\n{table}\n"), "t.toml").unwrap()
    }

    /// Counts that every collapsed view must satisfy.
    #[track_caller]
    fn check_counts(t: &Topology, c: &Collapsed) {
        assert_eq!(c.node_count(), t.nodes().len());
        assert_eq!(c.link_count(), t.links().len());
        for p in &c.parts {
            let parent_total = p.parent.map_or(1, |q| c.parts[q].total);
            assert_eq!(p.per_parent * parent_total, p.total, "{}", p.label);
            assert!(p.per_parent > 0);
            let leaf = matches!(p.kind, PartKind::Nodes { .. });
            assert_eq!(leaf, p.children.is_empty(), "{}", p.label);
        }
        let ranks: usize = c
            .parts
            .iter()
            .map(|p| match p.kind {
                PartKind::Nodes { ranks, .. } => ranks * p.total,
                _ => 0,
            })
            .sum();
        assert_eq!(ranks, t.world() as usize);
    }

    fn labels(c: &Collapsed, parts: &[PartId]) -> Vec<(String, usize)> {
        parts
            .iter()
            .map(|&p| (c.parts[p].label.clone(), c.parts[p].per_parent))
            .collect()
    }

    #[test]
    fn a_three_tier_fat_tree_is_pods_of_racks_of_hosts() {
        let t = generated(
            "kind = \"fat-tree\"\nhosts = 32\ntiers = 3\nradix = 8\n[generate.host]\n\
             gpus_per_host = 2\ncpus = 1",
        );
        let c = collapse(&t);
        check_counts(&t, &c);
        assert_eq!(
            labels(&c, &c.roots),
            [("core switch".to_string(), 16), ("pod".to_string(), 4)]
        );
        let pod = c.roots[1];
        assert_eq!(
            labels(&c, &c.parts[pod].children),
            [("spine switch".to_string(), 4), ("rack".to_string(), 4)]
        );
        let rack = c.parts[pod].children[1];
        assert_eq!(
            labels(&c, &c.parts[rack].children),
            [("leaf switch".to_string(), 1), ("host".to_string(), 2)]
        );
        assert_eq!(c.path(c.parts[rack].children[1]), "pod/rack/host");
        // Hosts, leaves, spines, cores and the host's own kinds of node: a few dozen parts
        // for any size.
        assert!(c.parts.len() < 20, "{}", c.parts.len());
        assert!(c.bundles.len() < 12, "{}", c.bundles.len());
    }

    #[test]
    fn different_hosts_stay_apart() {
        let mut b = crate::TopologyBuilder::new("mixed");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        let mut rank = 0;
        for (h, gpus) in [(0, 2), (1, 1), (2, 2)] {
            let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
            for g in 0..gpus {
                let gpu = b
                    .device(format!("h{h}/g{g}"), NodeKind::Accelerator, host)
                    .unwrap();
                b.connect(gpu, sw, 1e9, 1e-6).unwrap();
                b.place(rank, gpu).unwrap();
                rank += 1;
            }
        }
        let t = b.build().unwrap();
        let c = collapse(&t);
        check_counts(&t, &c);
        assert_eq!(
            labels(&c, &c.roots),
            [
                ("leaf switch".to_string(), 1),
                ("host".to_string(), 2),
                ("host#2".to_string(), 1)
            ]
        );
        let text = collapsed_text(&c);
        assert!(text.contains("2 × host, each:  (2 in all)"), "{text}");
        assert!(
            text.contains("host#2/accelerator -- leaf switch  1 cable,"),
            "{text}"
        );
    }

    #[test]
    fn zones_are_named_zones() {
        let t = generated(
            "kind = \"multi-zone\"\nzones = 3\nhosts_per_zone = 2\n[generate.host]\n\
             gpus_per_host = 1\ncpus = 1",
        );
        let c = collapse(&t);
        check_counts(&t, &c);
        let zone = c.roots.iter().find(|&&p| c.parts[p].label == "zone");
        assert_eq!(zone.map(|&p| c.parts[p].per_parent), Some(3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn counts_always_add_up(
            kind in 0usize..4,
            hosts in 1u32..24,
            gpus in 1u32..4,
            tiers in 2u32..4,
        ) {
            let host = format!("[generate.host]\ngpus_per_host = {gpus}\ncpus = 1");
            let table = match kind {
                0 => format!("kind = \"fat-tree\"\nhosts = {hosts}\ntiers = {tiers}\n{host}"),
                1 => format!("kind = \"rail\"\nhosts = {hosts}\n{host}"),
                2 => format!("kind = \"switch\"\nhosts = {hosts}"),
                _ => format!(
                    "kind = \"multi-zone\"\nzones = 2\nhosts_per_zone = {hosts}\n{host}"
                ),
            };
            let t = generated(&table);
            let c = collapse(&t);
            check_counts(&t, &c);
            // Collapsing never loses structure it claims: the text has one line per part
            // and per bundle, plus two headings.
            let text = collapsed_text(&c);
            prop_assert_eq!(text.lines().count(), c.parts.len() + c.bundles.len() + 2);
        }
    }
}
