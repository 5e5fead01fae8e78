//! An in-memory store for ranks that are threads of one process (tests, examples,
//! single-process jobs). It is the TCP server's [`State`] without the sockets, so keys,
//! counters, limits and waits behave exactly as in the TCP store.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use super::limits::{check_key, check_value};
use super::state::{Capacity, State, WaitOutcome};
use super::{Store, StoreError};

/// A store in this process's memory; share it between threads as an `Arc`.
pub struct MemStore {
    state: State,
}

impl MemStore {
    /// An empty store with the TCP server's capacity.
    pub fn new() -> MemStore {
        MemStore {
            state: State::new(Capacity::default()),
        }
    }

    /// An empty store, ready to hand to several communicators.
    pub fn shared() -> Arc<dyn Store> {
        Arc::new(MemStore::new())
    }

    fn wait_for(&self, keys: &[&str], deadline: Instant) -> Result<Arc<[u8]>, StoreError> {
        match self.state.wait(keys, deadline, None) {
            WaitOutcome::Ready(v) => Ok(v),
            WaitOutcome::TimedOut(missing) => Err(StoreError::Timeout { missing }),
            // Only a closed state abandons a wait, and this one is never closed.
            WaitOutcome::Abandoned => Err(StoreError::Io(
                "the in-memory store was closed while waiting".into(),
            )),
        }
    }
}

impl Default for MemStore {
    fn default() -> Self {
        MemStore::new()
    }
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl Store for MemStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(key, value)?;
        self.state.set(key, value).map_err(StoreError::Protocol)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        Ok(self.wait_for(&[key], deadline)?.to_vec())
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        Ok(self.state.try_get(key).map(|v| v.to_vec()))
    }

    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        for k in keys {
            check_key(k)?;
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.wait_for(&keys, deadline).map(drop)
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        check_key(key)?;
        self.state.add(key, delta).map_err(StoreError::Protocol)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.state.delete(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TcpStore, TcpStoreServer};
    use std::time::Duration;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    /// The same calls give the same answers and leave the same bytes in both stores.
    #[test]
    fn stores_what_the_tcp_store_stores() {
        let server = TcpStoreServer::start("127.0.0.1:0").unwrap();
        let tcp = TcpStore::connect(&server.local_addr().to_string(), soon(2000)).unwrap();
        let mem = MemStore::new();
        for s in [&tcp as &dyn Store, &mem] {
            assert_eq!(s.add("n", 40).unwrap(), 40);
            assert_eq!(s.add("n", 2).unwrap(), 42);
            s.set("text", b"abc").unwrap();
            s.set("", b"").unwrap();
        }
        for key in ["n", "text", "", "absent"] {
            assert_eq!(
                tcp.try_get(key).unwrap(),
                mem.try_get(key).unwrap(),
                "{key}"
            );
        }
        assert_eq!(mem.get("n", soon(0)).unwrap(), b"42");
        let refusal = |s: &dyn Store| match s.add("text", 1).unwrap_err() {
            StoreError::Protocol(m) => m,
            e => panic!("{e}"),
        };
        assert!(refusal(&tcp).ends_with(&refusal(&mem)));
    }

    #[test]
    fn wait_and_get_time_out_naming_the_missing_keys() {
        let s = MemStore::new();
        s.set("a", b"1").unwrap();
        let keys = ["a".to_string(), "b".to_string()];
        assert_eq!(
            s.wait(&keys, soon(10)).unwrap_err(),
            StoreError::Timeout {
                missing: vec!["b".into()]
            }
        );
        assert!(matches!(
            s.get("c", Instant::now()),
            Err(StoreError::Timeout { .. })
        ));
        s.set("b", b"2").unwrap();
        s.wait(&keys, Instant::now()).unwrap();
    }
}
