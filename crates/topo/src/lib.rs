//! topoccl's topology twin: the cluster as a graph of hosts, accelerators, CPUs, NICs and
//! switches joined by directed links with bandwidth and latency, with the ranks placed on
//! it. Pure: no I/O, no clock, no unseeded randomness (readers take text, writers return
//! text; the CLI touches files and the machine).

#![forbid(unsafe_code)]

pub mod error;
pub mod gen;
pub mod model;

pub use error::TopoError;
pub use model::{Link, LinkId, Node, NodeId, NodeKind, Tier, Topology, TopologyBuilder};
