//! Rail-optimized fabrics: NIC i of every host on rail i, so same-index GPUs of different
//! hosts are one hop apart; the rails meet at spines.
//!
//! Rail i holds ⌈hosts/d⌉ leaves `rail{i}/leaf{g}` (leaf g taking hosts g·d ..); every
//! rail leaf is cabled once to each of the u spines, whose k ports bound the rail leaves
//! to k, so at most d·⌊k/G⌋ hosts.

use super::host::{add_hosts, check_hosts, Endpoints, HostSpec, Shape};
use super::layers::{add_switches, attach_leaves, choose_radix, connect_all, Net, Split};
use super::oversubscription;
use crate::error::TopoError;
use crate::model::{NodeId, Tier, TopologyBuilder};

pub(crate) struct Args<'a> {
    pub hosts: u32,
    pub radix: Option<u32>,
    pub oversub_leaf: f64,
    pub bandwidth: Option<&'a str>,
    pub latency: &'a str,
    pub host: &'a HostSpec,
}

/// Hosts a rail fabric of radix `k` holds with `rails` rails.
fn capacity(k: u32, rails: u32, oversub: f64) -> u64 {
    Split::new(k, oversub).down as u64 * (k / rails) as u64
}

pub(crate) fn generate(b: &mut TopologyBuilder, a: &Args) -> Result<Vec<NodeId>, TopoError> {
    let shape = Shape::parse(a.host)?;
    let rails = shape.gpus;
    let hosts = check_hosts("hosts", a.hosts, rails)?;
    let net = Net::parse(a.bandwidth, shape.nic_bandwidth, a.latency)?;
    let oversub = oversubscription("oversub_leaf", a.oversub_leaf)?;
    let radix = choose_radix(
        a.radix,
        hosts as u64,
        |k| capacity(k, rails, oversub),
        |k| {
            let leaf = Split::new(k, oversub);
            format!(
                "a rail fabric of {rails} rails (leaves {} down/{} up; {k}-port spines take \
                 at most {} leaves per rail)",
                leaf.down,
                leaf.up,
                k / rails
            )
        },
        None,
    )?;
    let leaf = Split::new(radix, oversub);
    let mut ends = Endpoints::default();
    add_hosts(b, &shape, 0, hosts, &mut ends)?;
    let mut leaves = Vec::new();
    for rail in 0..rails as usize {
        let rail_ports: Vec<NodeId> = ends.ports[rail..]
            .iter()
            .step_by(rails as usize)
            .copied()
            .collect();
        leaves.extend(attach_leaves(
            b,
            &format!("rail{rail}/"),
            &rail_ports,
            leaf.down,
            net,
        )?);
    }
    let spines = add_switches(b, "", "spine", leaf.up, Tier::Spine)?;
    connect_all(b, &leaves, &spines, leaf.uplink(net))?;
    Ok(ends.ranks)
}
