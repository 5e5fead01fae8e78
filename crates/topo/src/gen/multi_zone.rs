//! Zones (sites) each with its own network under a gateway, gateways joined pairwise by
//! slow long links: the links a placement should keep traffic off.

use super::fat_tree;
use super::host::{add_hosts, check_hosts, Endpoints, HostSpec, Shape};
use super::layers::{attach_leaves, connect_all, Net};
use super::{bandwidth, duration, oversubscription, ZoneFabric};
use crate::error::TopoError;
use crate::model::{NodeId, Tier, TopologyBuilder};

pub(crate) struct Args<'a> {
    pub zones: u32,
    pub hosts_per_zone: u32,
    pub zone_fabric: ZoneFabric,
    pub radix: Option<u32>,
    pub oversub_leaf: f64,
    pub bandwidth: Option<&'a str>,
    pub latency: &'a str,
    pub inter_bandwidth: &'a str,
    pub inter_latency: &'a str,
    pub host: &'a HostSpec,
}

pub(crate) fn generate(b: &mut TopologyBuilder, a: &Args) -> Result<Vec<NodeId>, TopoError> {
    if a.zones < 2 {
        return Err(TopoError::invalid(format!(
            "zones is {}; a multi-zone cluster needs at least 2 zones (use fat-tree or switch \
             for one)",
            a.zones
        )));
    }
    let shape = Shape::parse(a.host)?;
    let per_zone = check_hosts("hosts_per_zone", a.hosts_per_zone, shape.gpus)?;
    check_hosts(
        "zones × hosts_per_zone",
        a.zones.saturating_mul(per_zone),
        shape.gpus,
    )?;
    let net = Net::parse(a.bandwidth, shape.nic_bandwidth, a.latency)?;
    let inter = Net {
        bandwidth: bandwidth("inter_bandwidth", a.inter_bandwidth)?,
        latency: duration("inter_latency", a.inter_latency)?,
    };
    oversubscription("oversub_leaf", a.oversub_leaf)?;
    let design = match a.zone_fabric {
        ZoneFabric::Switch => None,
        ZoneFabric::FatTree => Some(fat_tree::design(
            2,
            a.radix,
            per_zone,
            shape.gpus,
            (a.oversub_leaf, 1.0),
            Some("more zones"),
        )?),
    };
    let mut ranks = Vec::new();
    let mut gateways = Vec::new();
    for z in 0..a.zones {
        let first = b.nodes().len();
        let mut ends = Endpoints::default();
        add_hosts(b, &shape, z * per_zone, per_zone, &mut ends)?;
        let prefix = format!("zone{z}/");
        let top = match &design {
            None => attach_leaves(b, &prefix, &ends.ports, ends.ports.len() as u32, net)?,
            Some(d) => fat_tree::build(b, &prefix, &ends.ports, d, net)?,
        };
        let gateway = b.switch(format!("{prefix}gateway"), Tier::Core)?;
        connect_all(b, &top, &[gateway], net)?;
        for id in first..b.nodes().len() {
            b.node_mut(id as NodeId).zone = Some(format!("zone{z}"));
        }
        ranks.extend(ends.ranks);
        gateways.push(gateway);
    }
    for (i, &g) in gateways.iter().enumerate() {
        connect_all(b, &[g], &gateways[i + 1..], inter)?;
    }
    Ok(ranks)
}
