//! k-ary fat-trees: leaf–spine (2 tiers) or pods of leaf–spine under core switches (3
//! tiers), each tier with its own oversubscription.
//!
//! Radix k, leaf split (d down, u up), pod-spine split (s down, c up):
//! - 2 tiers: ⌈ports/d⌉ leaves, u spines, every leaf cabled once to every spine; a spine's
//!   k ports bound the leaves, so at most d·k ports.
//! - 3 tiers: pods of s leaves and u spines (a 2-tier fabric each); u·c cores, spine i of
//!   every pod cabled to cores i·c .. (i+1)·c; a core's k ports bound the pods, so at most
//!   d·s·k ports.
//!
//! Switches exist as the design calls for them even where the hosts leave leaves or pods
//! partly empty (a 2-tier fabric with one leaf still has its u spines).

use super::host::{add_hosts, check_hosts, Endpoints, HostSpec, Shape};
use super::layers::{add_switches, attach_leaves, choose_radix, connect_all, Net, Split};
use super::oversubscription;
use crate::error::TopoError;
use crate::model::{NodeId, Tier, TopologyBuilder};

pub(crate) struct Args<'a> {
    pub hosts: u32,
    pub tiers: u32,
    pub radix: Option<u32>,
    pub oversub_leaf: f64,
    pub oversub_spine: f64,
    pub bandwidth: Option<&'a str>,
    pub latency: &'a str,
    pub host: &'a HostSpec,
}

/// A fat-tree's port arithmetic, fixed before anything is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Design {
    radix: u32,
    leaf: Split,
    /// 3 tiers only.
    spine: Option<Split>,
}

impl Design {
    /// `tiers` tiers of radix `radix` over hosts with `gpus` NICs each.
    pub fn new(tiers: u32, radix: u32, gpus: u32, oversub_leaf: f64, oversub_spine: f64) -> Self {
        Design {
            radix,
            leaf: Split::new(radix, oversub_leaf).whole(radix, gpus),
            spine: (tiers == 3).then(|| Split::new(radix, oversub_spine)),
        }
    }

    /// NIC ports in a pod (3 tiers) or in the whole fabric (2 tiers), at most.
    fn ports_per_pod(&self) -> u64 {
        let leaves = self.spine.map_or(self.radix, |s| s.down);
        self.leaf.down as u64 * leaves as u64
    }

    /// NIC ports in the whole fabric, at most.
    pub fn capacity(&self) -> u64 {
        let pods = if self.spine.is_some() { self.radix } else { 1 };
        self.ports_per_pod() * pods as u64
    }

    pub fn describe(&self) -> String {
        let leaf = format!("leaves {} NICs down/{} up", self.leaf.down, self.leaf.up);
        match self.spine {
            None => format!("a 2-tier fat-tree ({leaf}, at most {} leaves)", self.radix),
            Some(s) => format!(
                "a 3-tier fat-tree ({leaf}, pod spines {} down/{} up, at most {} pods)",
                s.down, s.up, self.radix
            ),
        }
    }
}

/// Checks the tier count, ratios and radix for `hosts` hosts of `gpus` NICs each;
/// `instead` is what else helps when they do not fit.
pub(crate) fn design(
    tiers: u32,
    radix: Option<u32>,
    hosts: u32,
    gpus: u32,
    (oversub_leaf, oversub_spine): (f64, f64),
    instead: Option<&str>,
) -> Result<Design, TopoError> {
    if !(2..=3).contains(&tiers) {
        return Err(TopoError::invalid(format!(
            "tiers is {tiers}; a fat-tree has 2 tiers (leaf, spine) or 3 (leaf, spine, core)"
        )));
    }
    let oversub_leaf = oversubscription("oversub_leaf", oversub_leaf)?;
    let oversub_spine = oversubscription("oversub_spine", oversub_spine)?;
    let at = |k| Design::new(tiers, k, gpus, oversub_leaf, oversub_spine);
    let k = choose_radix(
        radix,
        hosts as u64,
        |k| at(k).capacity() / gpus as u64,
        |k| at(k).describe(),
        instead,
    )?;
    Ok(at(k))
}

pub(crate) fn generate(b: &mut TopologyBuilder, a: &Args) -> Result<Vec<NodeId>, TopoError> {
    let shape = Shape::parse(a.host)?;
    let hosts = check_hosts("hosts", a.hosts, shape.gpus)?;
    let net = Net::parse(a.bandwidth, shape.nic_bandwidth, a.latency)?;
    let design = design(
        a.tiers,
        a.radix,
        hosts,
        shape.gpus,
        (a.oversub_leaf, a.oversub_spine),
        (a.tiers == 2).then_some("3 tiers"),
    )?;
    let mut ends = Endpoints::default();
    add_hosts(b, &shape, 0, hosts, &mut ends)?;
    build(b, "", &ends.ports, &design, net)?;
    Ok(ends.ranks)
}

/// Builds the switches of `design` over `ports`, names prefixed by `prefix`; returns the
/// top tier (spines, or cores).
pub(crate) fn build(
    b: &mut TopologyBuilder,
    prefix: &str,
    ports: &[NodeId],
    design: &Design,
    net: Net,
) -> Result<Vec<NodeId>, TopoError> {
    match design.spine {
        None => leaf_spine(b, prefix, ports, design.leaf, net),
        Some(spine) => {
            let pods = ports
                .chunks(design.ports_per_pod() as usize)
                .enumerate()
                .map(|(p, pod)| leaf_spine(b, &format!("{prefix}pod{p}/"), pod, design.leaf, net))
                .collect::<Result<Vec<_>, _>>()?;
            let cores = add_switches(b, prefix, "core", design.leaf.up * spine.up, Tier::Core)?;
            let uplink = spine.uplink(design.leaf.uplink(net));
            for spines in &pods {
                for (core_group, &s) in cores.chunks(spine.up as usize).zip(spines) {
                    connect_all(b, &[s], core_group, uplink)?;
                }
            }
            Ok(cores)
        }
    }
}

/// Leaves over `ports` and `leaf.up` spines above them; returns the spines.
pub(crate) fn leaf_spine(
    b: &mut TopologyBuilder,
    prefix: &str,
    ports: &[NodeId],
    leaf: Split,
    net: Net,
) -> Result<Vec<NodeId>, TopoError> {
    let leaves = attach_leaves(b, prefix, ports, leaf.down, net)?;
    let spines = add_switches(b, prefix, "spine", leaf.up, Tier::Spine)?;
    connect_all(b, &leaves, &spines, leaf.uplink(net))?;
    Ok(spines)
}
