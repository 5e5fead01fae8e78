//! One switch with uniform links: the textbook network every analytical model assumes.

use super::host::{add_bare_hosts, add_hosts, check_hosts, Endpoints, HostSpec, Shape};
use super::layers::{attach_leaves, Net};
use crate::error::TopoError;
use crate::model::{NodeId, TopologyBuilder};

pub(crate) fn generate(
    b: &mut TopologyBuilder,
    hosts: u32,
    bandwidth: Option<&str>,
    latency: &str,
    host: Option<&HostSpec>,
) -> Result<Vec<NodeId>, TopoError> {
    let shape = host.map(Shape::parse).transpose()?;
    let per_host = shape.as_ref().map_or(1, |s| s.gpus);
    let hosts = check_hosts("hosts", hosts, per_host)?;
    let nic = match &shape {
        Some(s) => s.nic_bandwidth,
        None => Shape::parse(&HostSpec::default())?.nic_bandwidth,
    };
    let net = Net::parse(bandwidth, nic, latency)?;
    let mut ends = Endpoints::default();
    match &shape {
        Some(shape) => add_hosts(b, shape, 0, hosts, &mut ends)?,
        None => add_bare_hosts(b, 0, hosts, &mut ends)?,
    }
    attach_leaves(b, "", &ends.ports, hosts * per_host, net)?;
    Ok(ends.ranks)
}
