//! Rendezvous: a key/value store the ranks of a job meet in before they have connections
//! of their own. Ranks publish their listening addresses and the job's secret here, wait
//! for each other with a deadline, and count arrivals.
//!
//! Four implementations: a TCP store (hosted by rank 0, by the launcher, or by a
//! standalone `topoccl store` process), a file store (a directory on a shared file
//! system), an etcd v3 cluster's key space (with leases for liveness), and an in-memory
//! store for ranks that are threads of one process.
//!
//! The parts:
//!
//! | module   | holds                                                                  |
//! |----------|------------------------------------------------------------------------|
//! | `limits` | every limit of every store, and the key and value checks               |
//! | `codec`  | the TCP protocol as bytes ↔ requests and replies, no sockets           |
//! | `socket` | reading one frame from a socket, with timeouts                         |
//! | `state`  | keys, counters, capacity and waits with deadlines, no sockets          |
//! | `server` | [`TcpStoreServer`]: threads and sockets hosting a `state`              |
//! | `client` | [`TcpStore`]: the pooled client                                        |
//! | `mem`    | [`MemStore`]: a `state` used in-process, stored exactly as the server stores |
//! | `file`   | [`FileStore`]                                                          |
//! | `http`   | the smallest HTTP/1.1 client: one POST, one bounded response           |
//! | `etcd_codec` | etcd v3's JSON gateway as request bodies ↔ replies, no sockets     |
//! | `etcd`   | [`EtcdStore`]: the etcd client, its lease and keepalive thread         |
//!
//! Counters are decimal ASCII in every store, so `get` of a counter reads e.g. `b"42"`.
//!
//! The TCP store's connections are TLS sessions when `TOPOCCL_TLS` is on
//! (`crate::transport::tls`): `server` and `client` read it from the process's environment,
//! or take it from their `*_tls` constructors.

use crate::auth::JobKey;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use thiserror::Error;

mod client;
mod codec;
mod etcd;
mod etcd_codec;
mod file;
mod http;
mod limits;
mod mem;
mod server;
mod socket;
mod state;

pub use client::TcpStore;
pub(crate) use codec::take_any_bytes;
pub use etcd::{EtcdOptions, EtcdStore, ENV_ETCD_LEASE_TTL};
pub(crate) use etcd_codec::take_any_bytes as take_any_etcd_bytes;
pub use file::FileStore;
pub use limits::{
    ETCD_LEASE_TTL, IDLE_TIMEOUT, JOB_MAX_BYTES, JOB_MAX_KEYS, MAX_KEY_LEN, MAX_VALUE_LEN,
};
pub use mem::MemStore;
pub use server::{ServerOptions, TcpStoreServer, MAX_IDLE_TIMEOUT};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The deadline passed with these keys still missing.
    #[error("timed out waiting for {}", describe_missing(.missing))]
    Timeout { missing: Vec<String> },
    /// The store could not be reached (or stopped answering).
    #[error("cannot reach the store at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// A malformed request or reply, or a limit exceeded.
    #[error("store protocol error: {0}")]
    Protocol(String),
    #[error("store I/O error: {0}")]
    Io(String),
}

fn describe_missing(missing: &[String]) -> String {
    let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
    let more = missing.len().saturating_sub(shown.len());
    if more > 0 {
        format!("keys {} and {more} more", shown.join(", "))
    } else {
        format!("keys {}", shown.join(", "))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data consistent (every update
    // is a single map or pool operation), so keep serving rather than propagate the panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `key` for messages: long keys are cut so errors stay readable.
fn shown(key: &str) -> String {
    match key.char_indices().nth(limits::SHOWN_KEY_CHARS) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_string(),
    }
}

/// A rendezvous store. All calls are bounded: the waiting ones by their deadline, the
/// others by the store's own I/O timeout.
pub trait Store: Send + Sync + fmt::Debug {
    /// Sets `key` to `value` (overwriting).
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;
    /// The value of `key`, waiting until it exists or `deadline` passes.
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError>;
    /// The value of `key` if it exists now.
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Waits until every key exists; on timeout the error lists the missing ones.
    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError>;
    /// Adds `delta` to the integer counter `key` (created at 0) and returns the new value.
    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError>;
    /// Removes `key` (no error if it does not exist).
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Where a store lives: `tcp://host:port`, `file:///path/to/dir`, or
/// `etcd://host:port[,host:port...]` (the client URLs of an etcd cluster's members).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreAddr {
    Tcp(String),
    File(PathBuf),
    /// The members of one etcd cluster (`HOST:PORT` each, 1 to 16), tried in order.
    Etcd(Vec<String>),
}

impl FromStr for StoreAddr {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        if let Some(rest) = s.strip_prefix("tcp://") {
            if rest.is_empty() || !rest.contains(':') {
                return Err(StoreError::Protocol(format!(
                    "store address '{s}' needs a host and a port: tcp://HOST:PORT"
                )));
            }
            Ok(StoreAddr::Tcp(rest.to_string()))
        } else if let Some(rest) = s.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(StoreError::Protocol(format!(
                    "store address '{s}' needs a directory: file:///PATH"
                )));
            }
            Ok(StoreAddr::File(PathBuf::from(rest)))
        } else if let Some(rest) = s.strip_prefix("etcd://") {
            let members: Vec<String> = rest.split(',').map(|m| m.trim().to_string()).collect();
            etcd::check_endpoints(&members)
                .map_err(|e| StoreError::Protocol(format!("store address '{s}': {e}")))?;
            Ok(StoreAddr::Etcd(members))
        } else {
            Err(StoreError::Protocol(format!(
                "store address '{s}' must start with tcp://, file:// or etcd://"
            )))
        }
    }
}

impl fmt::Display for StoreAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreAddr::Tcp(a) => write!(f, "tcp://{a}"),
            StoreAddr::File(p) => write!(f, "file://{}", p.display()),
            StoreAddr::Etcd(members) => write!(f, "etcd://{}", members.join(",")),
        }
    }
}

impl StoreAddr {
    /// Connects to (or opens) the store, retrying a store that is not up yet until
    /// `deadline`; a TCP store's connections prove `key` (the job's secret's). An etcd
    /// store takes its lease TTL from `TOPOCCL_ETCD_LEASE_TTL`.
    pub fn open(
        &self,
        key: Option<JobKey>,
        deadline: Instant,
    ) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self {
            StoreAddr::Tcp(a) => Arc::new(TcpStore::connect_with(a, key, deadline)?),
            StoreAddr::File(p) => Arc::new(FileStore::new(p.clone())?),
            StoreAddr::Etcd(members) => Arc::new(EtcdStore::connect(members, deadline)?),
        })
    }
}
