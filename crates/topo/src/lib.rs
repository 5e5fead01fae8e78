//! topoccl's topology twin: the cluster as a graph of hosts, accelerators, CPUs, NICs and
//! switches joined by directed links with bandwidth and latency, with the ranks placed on
//! it. Pure: no I/O, no clock, no unseeded randomness (readers take text, writers return
//! text; the CLI and the runtime touch files, sockets and the machine).

#![forbid(unsafe_code)]

pub mod compare;
pub mod cost;
pub mod discover;
pub mod error;
pub mod format;
pub mod gen;
pub mod hardware;
pub mod matrix;
pub mod model;
pub mod plans;
pub mod route;
pub mod seeded;
pub mod slow;

pub use cost::{cut_bound, lower_bound, Endpoints, Pricer, TopoCost};
pub use error::TopoError;
pub use model::{Link, LinkId, Node, NodeId, NodeKind, Tier, Topology, TopologyBuilder};
pub use route::{Route, Router};
pub use seeded::SplitMix;
