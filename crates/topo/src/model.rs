//! The topology model: nodes (hosts, accelerators, CPUs, NICs, switches), directed links
//! with bandwidth and latency, and where each rank runs.
//!
//! A [`Topology`] is only made by [`TopologyBuilder::build`], which checks it: names are
//! unique, only switches reduce in the network, links join known nodes with a positive
//! bandwidth and a non-negative latency, ranks are `0..n` each placed once on a device of
//! its own, and every rank can reach every other. Everything downstream (routing, cost,
//! plans) relies on those facts.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TopoError;

/// Index of a node in [`Topology::nodes`].
pub type NodeId = u32;
/// Index of a link in [`Topology::links`].
pub type LinkId = u32;

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A machine; devices inside it name it as their host.
    Host,
    /// A GPU or other accelerator: where ranks usually run.
    Accelerator,
    /// A CPU socket / NUMA domain (ranks may run here too, on CPU-only clusters).
    Cpu,
    /// A network interface.
    Nic,
    /// A switch: NVSwitch inside a host, or a leaf, spine or core switch of the fabric.
    Switch,
}

impl NodeKind {
    pub const ALL: [NodeKind; 5] = [
        NodeKind::Host,
        NodeKind::Accelerator,
        NodeKind::Cpu,
        NodeKind::Nic,
        NodeKind::Switch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Host => "host",
            NodeKind::Accelerator => "accelerator",
            NodeKind::Cpu => "cpu",
            NodeKind::Nic => "nic",
            NodeKind::Switch => "switch",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for NodeKind {
    type Err = TopoError;
    fn from_str(s: &str) -> Result<Self, TopoError> {
        NodeKind::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "gpu" && *k == NodeKind::Accelerator))
            .ok_or_else(|| {
                TopoError::invalid(format!(
                    "unknown node kind '{s}'; expected one of host, accelerator (or gpu), cpu, \
                     nic, switch"
                ))
            })
    }
}

/// The level of a switch in the fabric, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Inside a host (NVSwitch, PCIe switch).
    Host,
    /// Top of rack: hosts' NICs attach here.
    Leaf,
    Spine,
    Core,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Host, Tier::Leaf, Tier::Spine, Tier::Core];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Host => "host",
            Tier::Leaf => "leaf",
            Tier::Spine => "spine",
            Tier::Core => "core",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tier {
    type Err = TopoError;
    fn from_str(s: &str) -> Result<Self, TopoError> {
        Tier::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                TopoError::invalid(format!(
                    "unknown switch tier '{s}'; expected host, leaf, spine or core"
                ))
            })
    }
}

/// A node of the topology.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (`host3`, `host3/gpu5`, `leaf12`).
    pub name: String,
    pub kind: NodeKind,
    /// Switches only: their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Zone or site (a building, a region); links between zones are usually the slow ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Devices (accelerators, CPUs, NICs, host switches): the host they are in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<NodeId>,
    /// Switches that reduce data in the network (SHARP-style).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_network_reduction: bool,
}

/// A directed link. Cables are two links, one per direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub from: NodeId,
    pub to: NodeId,
    /// Bytes per second.
    pub bandwidth: f64,
    /// Seconds, one way, including the switch or NIC it enters.
    pub latency: f64,
    /// The fraction of `bandwidth` this link keeps while the opposite link of its cable
    /// carries data too: 1 (the default) for full-duplex cables. TCP through rate-limited
    /// cables loses some of each direction to traffic the other way.
    #[serde(default = "full_duplex", skip_serializing_if = "is_full_duplex")]
    pub duplex: f64,
}

fn full_duplex() -> f64 {
    1.0
}

fn is_full_duplex(d: &f64) -> bool {
    *d == 1.0
}

/// A checked topology. Build one with [`TopologyBuilder`].
#[derive(Clone, Debug)]
pub struct Topology {
    name: String,
    nodes: Vec<Node>,
    links: Vec<Link>,
    /// Outgoing links of each node.
    out: Vec<Vec<LinkId>>,
    /// Rank → the node it runs on.
    ranks: Vec<NodeId>,
    by_name: HashMap<String, NodeId>,
}

impl Topology {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    pub fn link(&self, id: LinkId) -> &Link {
        &self.links[id as usize]
    }

    /// Links leaving `node`.
    pub fn out_links(&self, node: NodeId) -> &[LinkId] {
        &self.out[node as usize]
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// Number of ranks.
    pub fn world(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// The node rank `r` runs on.
    pub fn rank_node(&self, r: u32) -> NodeId {
        self.ranks[r as usize]
    }

    pub fn rank_nodes(&self) -> &[NodeId] {
        &self.ranks
    }

    /// The host rank `r` runs on (its node if that is a host).
    pub fn rank_host(&self, r: u32) -> NodeId {
        let n = self.rank_node(r);
        self.node(n).host.unwrap_or(n)
    }

    /// The opposite link of `id`'s cable (`b -> a` for `a -> b`), if there is one.
    pub fn reverse(&self, id: LinkId) -> Option<LinkId> {
        let l = self.link(id);
        self.out_links(l.to)
            .iter()
            .copied()
            .find(|&o| self.link(o).to == l.from)
    }

    /// Whether some link loses bandwidth to traffic the other way ([`Link::duplex`] < 1).
    pub fn has_half_duplex(&self) -> bool {
        self.links.iter().any(|l| l.duplex < 1.0)
    }

    /// A link's readable name, `a -> b`.
    pub fn link_name(&self, id: LinkId) -> String {
        let l = self.link(id);
        format!("{} -> {}", self.node(l.from).name, self.node(l.to).name)
    }

    /// The same topology with ranks placed on other nodes: `placement[r]` is rank r's node.
    pub fn with_placement(&self, placement: Vec<NodeId>) -> Result<Topology, TopoError> {
        let mut b = TopologyBuilder::from_topology(self);
        b.ranks = placement.into_iter().map(Some).collect();
        b.build()
    }

    /// The topology of a subset of the ranks (a split communicator): rank i of the result
    /// is rank `ranks[i]` here.
    pub fn restrict(&self, ranks: &[u32]) -> Result<Topology, TopoError> {
        let nodes = ranks
            .iter()
            .map(|&r| {
                self.ranks.get(r as usize).copied().ok_or_else(|| {
                    TopoError::invalid(format!("rank {r} is not in the topology '{}'", self.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.with_placement(nodes)
    }

    /// The builder holding this topology, to change it.
    pub fn to_builder(&self) -> TopologyBuilder {
        TopologyBuilder::from_topology(self)
    }
}

/// Bandwidths a link may have, in bytes per second: from a byte a second to 1 PB/s.
/// Outside that no real link lies, and figures there only overflow the times computed
/// from them.
pub const LINK_BANDWIDTH: (f64, f64) = (1.0, 1e15);
/// The longest latency a link may have: a minute (beyond it, a figure is a typo, and
/// path latencies would overflow their picoseconds).
pub const MAX_LINK_LATENCY_S: f64 = 60.0;

/// Builds and checks a [`Topology`].
#[derive(Clone, Debug, Default)]
pub struct TopologyBuilder {
    name: String,
    nodes: Vec<Node>,
    links: Vec<Link>,
    by_name: HashMap<String, NodeId>,
    /// Rank → node, `None` while a rank between placed ones is missing.
    ranks: Vec<Option<NodeId>>,
}

impl TopologyBuilder {
    pub fn new(name: impl Into<String>) -> TopologyBuilder {
        TopologyBuilder {
            name: name.into(),
            ..Default::default()
        }
    }

    fn from_topology(t: &Topology) -> TopologyBuilder {
        TopologyBuilder {
            name: t.name.clone(),
            nodes: t.nodes.clone(),
            links: t.links.clone(),
            by_name: t.by_name.clone(),
            ranks: t.ranks.iter().copied().map(Some).collect(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn set_name(&mut self, name: impl Into<String>) {
        self.name = name.into();
    }

    /// Adds a node; names must be unique and non-empty.
    pub fn add_node(&mut self, node: Node) -> Result<NodeId, TopoError> {
        if node.name.trim().is_empty() {
            return Err(TopoError::invalid("a node has an empty name"));
        }
        if self.by_name.contains_key(&node.name) {
            return Err(TopoError::invalid(format!(
                "duplicate node id '{}'; every node needs a unique name",
                node.name
            )));
        }
        if let Some(h) = node.host {
            if h as usize >= self.nodes.len() {
                return Err(TopoError::invalid(format!(
                    "node '{}' names host #{h}, which does not exist yet",
                    node.name
                )));
            }
        }
        if node.tier.is_some() && node.kind != NodeKind::Switch {
            return Err(TopoError::invalid(format!(
                "node '{}' is a {} but has a tier; only switches have tiers",
                node.name, node.kind
            )));
        }
        if node.in_network_reduction && node.kind != NodeKind::Switch {
            return Err(TopoError::invalid(format!(
                "node '{}' is a {} but reduces in the network; only switches can have \
                 in_network_reduction",
                node.name, node.kind
            )));
        }
        let id = self.nodes.len() as NodeId;
        self.by_name.insert(node.name.clone(), id);
        self.nodes.push(node);
        Ok(id)
    }

    /// Adds a node with just a name and kind.
    pub fn node(&mut self, name: impl Into<String>, kind: NodeKind) -> Result<NodeId, TopoError> {
        self.add_node(Node {
            name: name.into(),
            kind,
            tier: None,
            zone: None,
            host: None,
            in_network_reduction: false,
        })
    }

    /// Adds a switch of a tier.
    pub fn switch(&mut self, name: impl Into<String>, tier: Tier) -> Result<NodeId, TopoError> {
        self.add_node(Node {
            name: name.into(),
            kind: NodeKind::Switch,
            tier: Some(tier),
            zone: None,
            host: None,
            in_network_reduction: false,
        })
    }

    /// Adds a device (accelerator, CPU, NIC, host switch) inside `host`.
    pub fn device(
        &mut self,
        name: impl Into<String>,
        kind: NodeKind,
        host: NodeId,
    ) -> Result<NodeId, TopoError> {
        self.add_node(Node {
            name: name.into(),
            kind,
            tier: (kind == NodeKind::Switch).then_some(Tier::Host),
            zone: None,
            host: Some(host),
            in_network_reduction: false,
        })
    }

    /// Marks every switch of the fabric (not those inside hosts) as reducing in the
    /// network, as a cluster whose switches all run SHARP is described.
    pub fn reduce_in_fabric(&mut self) {
        for n in &mut self.nodes {
            if n.kind == NodeKind::Switch && n.host.is_none() && n.tier != Some(Tier::Host) {
                n.in_network_reduction = true;
            }
        }
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn links(&self) -> &[Link] {
        &self.links
    }

    pub fn links_mut(&mut self) -> &mut [Link] {
        &mut self.links
    }

    /// Keeps only the links for which `keep(id, link)` holds (a link that went down).
    /// Link ids after the removed ones shift.
    pub fn retain_links(&mut self, mut keep: impl FnMut(LinkId, &Link) -> bool) {
        let mut id = 0;
        self.links.retain(|l| {
            let k = keep(id, l);
            id += 1;
            k
        });
    }

    /// Adds one directed link.
    pub fn link(
        &mut self,
        from: NodeId,
        to: NodeId,
        bandwidth: f64,
        latency: f64,
    ) -> Result<LinkId, TopoError> {
        let name = |id: NodeId| {
            self.nodes
                .get(id as usize)
                .map(|n| n.name.clone())
                .ok_or_else(|| {
                    TopoError::invalid(format!("a link names node #{id}, which does not exist"))
                })
        };
        let (a, b) = (name(from)?, name(to)?);
        if from == to {
            return Err(TopoError::invalid(format!(
                "link {a} -> {b} joins a node to itself"
            )));
        }
        if !(bandwidth.is_finite() && (LINK_BANDWIDTH.0..=LINK_BANDWIDTH.1).contains(&bandwidth)) {
            return Err(TopoError::invalid(format!(
                "link {a} -> {b} has bandwidth {bandwidth} B/s; it must be from {} to {} B/s \
                 (e.g. 100Gbps)",
                LINK_BANDWIDTH.0, LINK_BANDWIDTH.1
            )));
        }
        if !(latency.is_finite() && (0.0..=MAX_LINK_LATENCY_S).contains(&latency)) {
            return Err(TopoError::invalid(format!(
                "link {a} -> {b} has latency {latency} s; it must be from 0 to \
                 {MAX_LINK_LATENCY_S} s (e.g. 2us)"
            )));
        }
        let id = self.links.len() as LinkId;
        self.links.push(Link {
            from,
            to,
            bandwidth,
            latency,
            duplex: 1.0,
        });
        Ok(id)
    }

    /// Sets the fraction of its bandwidth link `id` keeps while its opposite link carries
    /// data too ([`Link::duplex`]).
    pub fn set_duplex(&mut self, id: LinkId, duplex: f64) -> Result<(), TopoError> {
        if !(duplex > 0.0 && duplex <= 1.0) {
            return Err(TopoError::invalid(format!(
                "link {} has duplex {duplex}; it must be above 0 and at most 1 (1: full \
                 duplex; 0.9: each direction keeps 90% while the other carries data)",
                self.link_name(id)
            )));
        }
        let Some(l) = self.links.get_mut(id as usize) else {
            return Err(TopoError::invalid(format!(
                "duplex set on link #{id}, which does not exist"
            )));
        };
        l.duplex = duplex;
        Ok(())
    }

    fn link_name(&self, id: LinkId) -> String {
        match self.links.get(id as usize) {
            Some(l) => format!(
                "{} -> {}",
                self.nodes[l.from as usize].name, self.nodes[l.to as usize].name
            ),
            None => format!("#{id}"),
        }
    }

    /// A cable: a link each way with the same bandwidth and latency.
    pub fn connect(
        &mut self,
        a: NodeId,
        b: NodeId,
        bandwidth: f64,
        latency: f64,
    ) -> Result<(LinkId, LinkId), TopoError> {
        Ok((
            self.link(a, b, bandwidth, latency)?,
            self.link(b, a, bandwidth, latency)?,
        ))
    }

    /// Places `rank` on `node`.
    pub fn place(&mut self, rank: u32, node: NodeId) -> Result<(), TopoError> {
        if node as usize >= self.nodes.len() {
            return Err(TopoError::invalid(format!(
                "rank {rank} is placed on node #{node}, which does not exist"
            )));
        }
        let r = rank as usize;
        if r >= self.ranks.len() {
            self.ranks.resize(r + 1, None);
        }
        if let Some(prev) = self.ranks[r] {
            return Err(TopoError::invalid(format!(
                "rank {rank} is placed twice: on '{}' and on '{}'",
                self.nodes[prev as usize].name, self.nodes[node as usize].name
            )));
        }
        self.ranks[r] = Some(node);
        Ok(())
    }

    /// Places one rank on each node of `nodes`, in order, after the ranks placed so far.
    pub fn place_all(&mut self, nodes: impl IntoIterator<Item = NodeId>) -> Result<(), TopoError> {
        for n in nodes {
            self.place(self.ranks.len() as u32, n)?;
        }
        Ok(())
    }

    pub fn ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Forgets where ranks were placed (to place them anew).
    pub fn clear_placement(&mut self) {
        self.ranks.clear();
    }

    /// Checks everything and returns the topology.
    pub fn build(self) -> Result<Topology, TopoError> {
        let mut ranks = Vec::with_capacity(self.ranks.len());
        let mut owner: HashMap<NodeId, u32> = HashMap::new();
        for (r, n) in self.ranks.iter().enumerate() {
            let Some(n) = *n else {
                return Err(TopoError::invalid(format!(
                    "rank {r} is not placed, but rank {} is; ranks must be 0..{} with none missing",
                    self.ranks.len() - 1,
                    self.ranks.len()
                )));
            };
            if let Some(other) = owner.insert(n, r as u32) {
                return Err(TopoError::invalid(format!(
                    "ranks {other} and {r} are both placed on '{}'; one rank per device",
                    self.nodes[n as usize].name
                )));
            }
            ranks.push(n);
        }
        if ranks.is_empty() {
            return Err(TopoError::invalid(
                "no ranks are placed; place ranks on accelerators (or CPUs/hosts)",
            ));
        }
        let mut out = vec![Vec::new(); self.nodes.len()];
        for (i, l) in self.links.iter().enumerate() {
            out[l.from as usize].push(i as LinkId);
        }
        let t = Topology {
            name: self.name,
            nodes: self.nodes,
            links: self.links,
            out,
            ranks,
            by_name: self.by_name,
        };
        check_connected(&t)?;
        Ok(t)
    }
}

/// Every rank reaches rank 0 and rank 0 reaches every rank (so all pairs are connected).
fn check_connected(t: &Topology) -> Result<(), TopoError> {
    let n = t.nodes.len();
    let start = t.ranks[0] as usize;
    let reach = |forward: bool| {
        let mut into: Vec<Vec<u32>> = vec![Vec::new(); n];
        for l in &t.links {
            let (a, b) = if forward {
                (l.from, l.to)
            } else {
                (l.to, l.from)
            };
            into[a as usize].push(b);
        }
        let mut seen = vec![false; n];
        let mut stack = vec![start];
        seen[start] = true;
        while let Some(u) = stack.pop() {
            for &v in &into[u] {
                if !std::mem::replace(&mut seen[v as usize], true) {
                    stack.push(v as usize);
                }
            }
        }
        seen
    };
    for (forward, dir) in [(true, "from"), (false, "to")] {
        let seen = reach(forward);
        let cut: Vec<u32> = (0..t.world())
            .filter(|&r| !seen[t.ranks[r as usize] as usize])
            .collect();
        if let Some(&r) = cut.first() {
            return Err(TopoError::invalid(format!(
                "disconnected ranks: rank {r} (on '{}'){} cannot be reached {dir} rank 0 (on '{}'); \
                 add the missing links",
                t.node(t.ranks[r as usize]).name,
                if cut.len() > 1 {
                    format!(" and {} more", cut.len() - 1)
                } else {
                    String::new()
                },
                t.node(t.ranks[0]).name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_hosts() -> TopologyBuilder {
        let mut b = TopologyBuilder::new("t");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        for h in 0..2 {
            let host = b.node(format!("h{h}"), NodeKind::Host).unwrap();
            let g = b
                .device(format!("h{h}/gpu0"), NodeKind::Accelerator, host)
                .unwrap();
            b.connect(g, sw, 1e10, 1e-6).unwrap();
            b.place(h, g).unwrap();
        }
        b
    }

    #[test]
    fn builds_and_finds() {
        let t = two_hosts().build().unwrap();
        assert_eq!(t.world(), 2);
        assert_eq!(t.node(t.rank_host(1)).name, "h1");
        assert_eq!(t.out_links(t.find("sw").unwrap()).len(), 2);
    }

    #[test]
    fn bad_input_is_named() {
        let mut b = two_hosts();
        let e = b.node("sw", NodeKind::Switch).unwrap_err().to_string();
        assert!(e.contains("duplicate node id 'sw'"), "{e}");
        let e = b.link(0, 1, 0.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("bandwidth 0"), "{e}");
        let e = b.place(0, 3).unwrap_err().to_string();
        assert!(e.contains("rank 0 is placed twice"), "{e}");
        let e = b
            .add_node(Node {
                name: "reducing-host".into(),
                in_network_reduction: true,
                ..b.nodes()[1].clone()
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("only switches can have in_network_reduction"),
            "{e}"
        );
        let lone = b.node("lone", NodeKind::Host).unwrap();
        b.place(2, lone).unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(e.contains("disconnected ranks: rank 2"), "{e}");
    }

    #[test]
    fn missing_and_shared_placements() {
        let mut b = two_hosts();
        let g = b.find("h0/gpu0").unwrap();
        b.place(3, g).unwrap();
        let e = b.clone().build().unwrap_err().to_string();
        assert!(e.contains("rank 2 is not placed"), "{e}");
        let mut b = two_hosts();
        b.place(2, g).unwrap();
        let e = b.build().unwrap_err().to_string();
        assert!(
            e.contains("ranks 0 and 2 are both placed on 'h0/gpu0'"),
            "{e}"
        );
    }
}
