//! The inside of a generated host: GPUs on an NVSwitch, a NIC per GPU, CPU sockets.

use serde::{Deserialize, Serialize};

use super::layers::Net;
use super::{at_least_one, bandwidth, duration, MAX_ACCELERATORS};
use crate::error::TopoError;
use crate::model::{NodeId, NodeKind, TopologyBuilder};

/// What every host of a generated cluster holds (DGX-like by default).
///
/// Links: each GPU to the NVSwitch (when there are 2 or more GPUs), each GPU to its own NIC
/// and to one CPU over PCIe (GPUs split across CPUs in consecutive blocks), and every pair
/// of CPUs over the inter-socket link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostSpec {
    /// GPUs per host; default 8.
    pub gpus_per_host: u32,
    /// CPU sockets; default 2.
    pub cpus: u32,
    /// Each GPU to the NVSwitch, each way; default `300GB/s`.
    pub nvlink_bandwidth: String,
    /// Default `500ns`.
    pub nvlink_latency: String,
    /// GPU to NIC and GPU to CPU; default `32GB/s`.
    pub pcie_bandwidth: String,
    /// Default `1us`.
    pub pcie_latency: String,
    /// Each NIC's port (one NIC per GPU); the default of the fabric's `bandwidth`. Default
    /// `400Gbps`.
    pub nic_bandwidth: String,
    /// CPU socket to CPU socket (UPI, Infinity Fabric), latency `pcie_latency`; default
    /// `64GB/s`.
    pub cpu_link_bandwidth: String,
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            gpus_per_host: 8,
            cpus: 2,
            nvlink_bandwidth: "300GB/s".into(),
            nvlink_latency: "500ns".into(),
            pcie_bandwidth: "32GB/s".into(),
            pcie_latency: "1us".into(),
            nic_bandwidth: "400Gbps".into(),
            cpu_link_bandwidth: "64GB/s".into(),
        }
    }
}

impl HostSpec {
    /// The default host with `gpus` GPUs.
    pub fn with_gpus(gpus: u32) -> HostSpec {
        HostSpec {
            gpus_per_host: gpus,
            ..HostSpec::default()
        }
    }
}

/// Most CPU sockets per host: they are meshed pairwise.
const MAX_CPUS: u32 = 64;

/// A [`HostSpec`] with its units parsed and its counts checked.
#[derive(Clone, Debug)]
pub(crate) struct Shape {
    pub gpus: u32,
    cpus: u32,
    nvlink: Net,
    pcie: Net,
    cpu_link: Net,
    pub nic_bandwidth: f64,
}

impl Shape {
    pub fn parse(spec: &HostSpec) -> Result<Shape, TopoError> {
        let gpus = at_least_one("gpus_per_host", spec.gpus_per_host)?;
        let cpus = at_least_one("cpus", spec.cpus)?;
        if cpus > MAX_CPUS {
            return Err(TopoError::invalid(format!(
                "cpus is {cpus}; at most {MAX_CPUS} sockets per host"
            )));
        }
        let pcie_latency = duration("pcie_latency", &spec.pcie_latency)?;
        Ok(Shape {
            gpus,
            cpus,
            nvlink: Net {
                bandwidth: bandwidth("nvlink_bandwidth", &spec.nvlink_bandwidth)?,
                latency: duration("nvlink_latency", &spec.nvlink_latency)?,
            },
            pcie: Net {
                bandwidth: bandwidth("pcie_bandwidth", &spec.pcie_bandwidth)?,
                latency: pcie_latency,
            },
            cpu_link: Net {
                bandwidth: bandwidth("cpu_link_bandwidth", &spec.cpu_link_bandwidth)?,
                latency: pcie_latency,
            },
            nic_bandwidth: bandwidth("nic_bandwidth", &spec.nic_bandwidth)?,
        })
    }
}

/// Checks a host count (named `field`) and that `hosts × per_host` ranks stay bounded.
pub(crate) fn check_hosts(field: &str, hosts: u32, per_host: u32) -> Result<u32, TopoError> {
    at_least_one(field, hosts)?;
    let total = hosts as u64 * per_host as u64;
    if total > MAX_ACCELERATORS {
        return Err(TopoError::invalid(format!(
            "{field} = {hosts} with {per_host} per host makes {total} ranks; at most \
             {MAX_ACCELERATORS} are generated"
        )));
    }
    Ok(hosts)
}

/// What the network sees of the hosts, in host order then device order.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    /// Where ranks go.
    pub ranks: Vec<NodeId>,
    /// What plugs into the first switch (NICs, or bare hosts).
    pub ports: Vec<NodeId>,
}

/// Adds hosts `first..first + count` with `shape`'s devices.
pub(crate) fn add_hosts(
    b: &mut TopologyBuilder,
    shape: &Shape,
    first: u32,
    count: u32,
    into: &mut Endpoints,
) -> Result<(), TopoError> {
    for h in first..first + count {
        add_host(b, shape, h, into)?;
    }
    Ok(())
}

fn add_host(
    b: &mut TopologyBuilder,
    shape: &Shape,
    h: u32,
    into: &mut Endpoints,
) -> Result<(), TopoError> {
    let host = b.node(format!("h{h}"), NodeKind::Host)?;
    let nvswitch = if shape.gpus > 1 {
        Some(b.device(format!("h{h}/nvswitch"), NodeKind::Switch, host)?)
    } else {
        None
    };
    let cpus = (0..shape.cpus)
        .map(|c| b.device(format!("h{h}/cpu{c}"), NodeKind::Cpu, host))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, &a) in cpus.iter().enumerate() {
        for &c in &cpus[i + 1..] {
            shape.cpu_link.connect(b, a, c)?;
        }
    }
    for g in 0..shape.gpus {
        let gpu = b.device(format!("h{h}/gpu{g}"), NodeKind::Accelerator, host)?;
        let nic = b.device(format!("h{h}/nic{g}"), NodeKind::Nic, host)?;
        if let Some(sw) = nvswitch {
            shape.nvlink.connect(b, gpu, sw)?;
        }
        shape.pcie.connect(b, gpu, nic)?;
        let socket = (g as u64 * shape.cpus as u64 / shape.gpus as u64) as usize;
        shape.pcie.connect(b, gpu, cpus[socket])?;
        into.ranks.push(gpu);
        into.ports.push(nic);
    }
    Ok(())
}

/// Adds hosts `first..first + count` as bare host nodes, each its own rank and port.
pub(crate) fn add_bare_hosts(
    b: &mut TopologyBuilder,
    first: u32,
    count: u32,
    into: &mut Endpoints,
) -> Result<(), TopoError> {
    for h in first..first + count {
        let host = b.node(format!("h{h}"), NodeKind::Host)?;
        into.ranks.push(host);
        into.ports.push(host);
    }
    Ok(())
}
