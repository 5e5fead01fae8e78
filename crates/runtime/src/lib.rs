//! topoccl: collectives between real processes, over shared memory within a host and TCP
//! between hosts.
//!
//! A [`Communicator`] is created by rendezvous (from the environment of `topoccl run`,
//! torchrun, Open MPI or Slurm, see [`env`]) and runs every collective of
//! `topoccl-plan`'s IR by executing the verified plan for its rank: the runtime carries no
//! algorithm of its own. Every call has a deadline; a dead, stuck, refusing or mismatched
//! peer ends it with an error naming the rank. [`Communicator::into_async`] gives
//! nonblocking forms (start → [`Work`] → `test` / `wait`); [`Communicator::split`] makes
//! sub-communicators.

pub mod auth;
pub mod beat;
pub mod comm;
pub mod compressed;
pub mod config;
mod create;
pub mod deadlines;
pub mod elastic;
pub mod env;
pub mod error;
mod exec;
pub mod flight;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
mod live;
mod matcher;
pub mod metrics;
pub mod nonblocking;
mod probe;
mod programs;
pub mod replan;
pub mod select;
pub mod selftest;
pub mod split;
pub mod store;
mod topology;
pub mod transport;
pub mod wire;

pub use comm::Communicator;
pub use config::Config;
pub use elastic::Shrunk;
pub use env::LaunchInfo;
pub use error::{Error, Result};
pub use exec::Dtype;
pub use health::{PeerHealth, PeerState};
pub use nonblocking::{AsyncCommunicator, Work};
pub use split::TimeSplit;
pub use topoccl_plan::{Collective, CollectiveSpec, CountMatrix, DType, ReduceOp};
pub use topoccl_watch::flight::{Dump as FlightDump, DumpReason};
pub use transport::{AbortHandle, Mode as TransportMode, TransportKind};
