//! Generators of standard cluster shapes: k-ary fat-trees (2 or 3 tiers, oversubscribed per
//! tier), rail-optimized fabrics, a single switch, and zones joined by slow long links.
//!
//! Every generator returns a [`TopologyBuilder`] with the ranks placed, one per accelerator
//! in host order then GPU order (a [`Fabric::Switch`] without a host spec: one per host).
//! [`Fabric`] is the serde form of a generator's arguments, small enough to stand for a
//! 16,384-GPU cluster in a topology file (`[generate]` table).
//!
//! Naming: hosts `h{H}` (numbered across the whole cluster), their devices `h{H}/gpu{i}`,
//! `h{H}/nic{i}`, `h{H}/nvswitch`, `h{H}/cpu{c}`; switches `leaf{i}`, `spine{i}`,
//! `core{i}`, prefixed by their pod (`pod{p}/`), rail (`rail{i}/`) or zone (`zone{z}/`).

mod fat_tree;
mod host;
mod layers;
mod multi_zone;
mod rail;
mod switch;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::error::TopoError;
use crate::model::TopologyBuilder;

pub use host::HostSpec;

/// Most accelerators (or plain hosts) a generator makes: far beyond any cluster modelled,
/// and a bound on memory for a mistyped argument.
pub const MAX_ACCELERATORS: u64 = 1 << 20;
/// Largest switch radix accepted (ports per switch).
pub const MAX_RADIX: u32 = 1024;

/// A generated cluster, as written in a topology file's `[generate]` table.
///
/// Bandwidths and latencies are strings with units (`"400Gbps"`, `"25GB/s"`, `"1us"`).
/// Network links (NIC to leaf and switch to switch) all have `bandwidth`, except uplinks of
/// an oversubscribed tier, which are thinned when whole links cannot hit the ratio exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fabric {
    /// A k-ary fat-tree. NIC ports fill leaves in consecutive blocks (host order, then NIC
    /// order), whole hosts per leaf when a host fits on one, so a host's NICs share a
    /// leaf; 3 tiers group leaves into pods whose spines meet at core switches.
    FatTree {
        hosts: u32,
        /// 2 (leaf, spine) or 3 (leaf, pod spine, core).
        #[serde(default = "default_tiers")]
        tiers: u32,
        /// Ports per switch; even. Default: the smallest power of two (at least 4) that
        /// holds every NIC.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        radix: Option<u32>,
        /// Down:up bandwidth ratio at the leaves (1 = non-blocking).
        #[serde(default = "one")]
        oversub_leaf: f64,
        /// Down:up bandwidth ratio at the (pod) spines, 3 tiers only.
        #[serde(default = "one")]
        oversub_spine: f64,
        /// Network link bandwidth; default: `host.nic_bandwidth`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<String>,
        /// Latency of each network hop, switch and cable.
        #[serde(default = "default_hop_latency")]
        latency: String,
        #[serde(default)]
        host: HostSpec,
        /// Every switch of the fabric reduces in the network (SHARP-style).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_network_reduction: bool,
    },
    /// Rail-optimized: NIC i of every host on a leaf of rail i (one leaf per rail, more per
    /// rail when the hosts exceed a leaf's down ports), every rail leaf on every spine.
    Rail {
        hosts: u32,
        /// Default: the smallest power of two (at least 4) that fits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        radix: Option<u32>,
        #[serde(default = "one")]
        oversub_leaf: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<String>,
        #[serde(default = "default_hop_latency")]
        latency: String,
        #[serde(default)]
        host: HostSpec,
        /// Every switch of the fabric reduces in the network (SHARP-style).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_network_reduction: bool,
    },
    /// One switch, uniform links: the textbook network. Without `host`, every host is a
    /// single rank on its host node, linked straight to the switch; with it, hosts have
    /// GPUs, NVSwitch and NICs as in the other fabrics and the NICs reach the switch.
    Switch {
        hosts: u32,
        /// Default: `host.nic_bandwidth` (400Gbps without a host spec).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<String>,
        #[serde(default = "default_hop_latency")]
        latency: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<HostSpec>,
        /// Every switch of the fabric reduces in the network (SHARP-style).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_network_reduction: bool,
    },
    /// Zones (sites, buildings) of `hosts_per_zone` hosts, each a switch or a 2-tier
    /// fat-tree under a gateway; gateways are joined pairwise by slow long links. Every
    /// node carries its zone (`zone{z}`).
    MultiZone {
        /// At least 2.
        zones: u32,
        hosts_per_zone: u32,
        #[serde(default)]
        zone_fabric: ZoneFabric,
        /// Fat-tree zones: as [`Fabric::FatTree`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        radix: Option<u32>,
        #[serde(default = "one")]
        oversub_leaf: f64,
        /// Links inside a zone (gateway uplinks included); default `host.nic_bandwidth`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bandwidth: Option<String>,
        #[serde(default = "default_hop_latency")]
        latency: String,
        /// Gateway to gateway.
        #[serde(default = "default_inter_bandwidth")]
        inter_bandwidth: String,
        #[serde(default = "default_inter_latency")]
        inter_latency: String,
        #[serde(default)]
        host: HostSpec,
        /// Every switch of the fabric reduces in the network (SHARP-style).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        in_network_reduction: bool,
    },
}

/// The network inside each zone of a [`Fabric::MultiZone`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneFabric {
    #[default]
    Switch,
    FatTree,
}

fn default_tiers() -> u32 {
    2
}

fn one() -> f64 {
    1.0
}

fn default_hop_latency() -> String {
    "1us".into()
}

fn default_inter_bandwidth() -> String {
    "10Gbps".into()
}

fn default_inter_latency() -> String {
    "20ms".into()
}

impl Fabric {
    /// The `kind` tag: `fat-tree`, `rail`, `switch` or `multi-zone`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fabric::FatTree { .. } => "fat-tree",
            Fabric::Rail { .. } => "rail",
            Fabric::Switch { .. } => "switch",
            Fabric::MultiZone { .. } => "multi-zone",
        }
    }

    /// Whether every switch of the fabric reduces in the network.
    pub fn in_network_reduction(&self) -> bool {
        match self {
            Fabric::FatTree {
                in_network_reduction,
                ..
            }
            | Fabric::Rail {
                in_network_reduction,
                ..
            }
            | Fabric::Switch {
                in_network_reduction,
                ..
            }
            | Fabric::MultiZone {
                in_network_reduction,
                ..
            } => *in_network_reduction,
        }
    }
}

/// Builds the cluster `f` describes, ranks placed; errors name the argument at fault.
pub fn generate(f: &Fabric) -> Result<TopologyBuilder, TopoError> {
    let mut b = TopologyBuilder::new(f.kind());
    let ranks = match f {
        Fabric::FatTree {
            hosts,
            tiers,
            radix,
            oversub_leaf,
            oversub_spine,
            bandwidth,
            latency,
            host,
            ..
        } => fat_tree::generate(
            &mut b,
            &fat_tree::Args {
                hosts: *hosts,
                tiers: *tiers,
                radix: *radix,
                oversub_leaf: *oversub_leaf,
                oversub_spine: *oversub_spine,
                bandwidth: bandwidth.as_deref(),
                latency,
                host,
            },
        ),
        Fabric::Rail {
            hosts,
            radix,
            oversub_leaf,
            bandwidth,
            latency,
            host,
            ..
        } => rail::generate(
            &mut b,
            &rail::Args {
                hosts: *hosts,
                radix: *radix,
                oversub_leaf: *oversub_leaf,
                bandwidth: bandwidth.as_deref(),
                latency,
                host,
            },
        ),
        Fabric::Switch {
            hosts,
            bandwidth,
            latency,
            host,
            ..
        } => switch::generate(&mut b, *hosts, bandwidth.as_deref(), latency, host.as_ref()),
        Fabric::MultiZone {
            zones,
            hosts_per_zone,
            zone_fabric,
            radix,
            oversub_leaf,
            bandwidth,
            latency,
            inter_bandwidth,
            inter_latency,
            host,
            ..
        } => multi_zone::generate(
            &mut b,
            &multi_zone::Args {
                zones: *zones,
                hosts_per_zone: *hosts_per_zone,
                zone_fabric: *zone_fabric,
                radix: *radix,
                oversub_leaf: *oversub_leaf,
                bandwidth: bandwidth.as_deref(),
                latency,
                inter_bandwidth,
                inter_latency,
                host,
            },
        ),
    }
    .map_err(|e| TopoError::invalid(format!("{}: {e}", f.kind())))?;
    if f.in_network_reduction() {
        b.reduce_in_fabric();
    }
    b.place_all(ranks)?;
    Ok(b)
}

/// Bytes per second from `text`, an error naming `field` otherwise.
fn bandwidth(field: &str, text: &str) -> Result<f64, TopoError> {
    topoccl_plan::units::parse_bandwidth(text)
        .map_err(|e| TopoError::invalid(format!("{field}: {e}")))
}

/// Seconds from `text`, an error naming `field` otherwise.
fn duration(field: &str, text: &str) -> Result<f64, TopoError> {
    topoccl_plan::units::parse_duration(text)
        .map_err(|e| TopoError::invalid(format!("{field}: {e}")))
}

fn at_least_one(field: &str, value: u32) -> Result<u32, TopoError> {
    if value == 0 {
        return Err(TopoError::invalid(format!("{field} must be at least 1")));
    }
    Ok(value)
}

/// A down:up ratio: finite and at least 1 (fewer uplinks than downlinks, never more).
fn oversubscription(field: &str, ratio: f64) -> Result<f64, TopoError> {
    if !(ratio.is_finite() && ratio >= 1.0) {
        return Err(TopoError::invalid(format!(
            "{field} is {ratio}; an oversubscription is a down:up ratio of at least 1 \
             (1 = non-blocking, 4 = 4:1)"
        )));
    }
    Ok(ratio)
}
