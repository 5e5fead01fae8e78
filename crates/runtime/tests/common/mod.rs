//! Test support: an in-memory store, for communicators whose ranks are threads of one
//! process (still talking over real loopback sockets).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use topoccl::store::{Store, StoreError};

#[derive(Debug, Default)]
pub struct MemStore {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

impl MemStore {
    pub fn shared() -> Arc<dyn Store> {
        Arc::new(MemStore::default())
    }
}

impl Store for MemStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.map.lock().unwrap().insert(key.into(), value.to_vec());
        self.changed.notify_all();
        Ok(())
    }
    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        self.wait(&[key.to_string()], deadline)?;
        Ok(self.map.lock().unwrap()[key].clone())
    }
    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.lock().unwrap().get(key).cloned())
    }
    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        let mut m = self.map.lock().unwrap();
        loop {
            let missing: Vec<String> = keys
                .iter()
                .filter(|k| !m.contains_key(*k))
                .cloned()
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Timeout { missing });
            }
            m = self.changed.wait_timeout(m, deadline - now).unwrap().0;
        }
    }
    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut m = self.map.lock().unwrap();
        let v = m
            .get(key)
            .map(|b| i64::from_le_bytes(b[..8].try_into().unwrap()))
            .unwrap_or(0)
            + delta;
        m.insert(key.into(), v.to_le_bytes().to_vec());
        self.changed.notify_all();
        Ok(v)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.map.lock().unwrap().remove(key);
        Ok(())
    }
}

/// The configuration for each transport, so a test runs over both.
pub fn each_transport() -> Vec<(topoccl::TransportMode, topoccl::Config)> {
    [topoccl::TransportMode::Tcp, topoccl::TransportMode::Shm]
        .into_iter()
        .map(|m| {
            let cfg = topoccl::Config {
                transport: m,
                ..Default::default()
            };
            (m, cfg)
        })
        .collect()
}

/// Runs `f(comm)` on `world` threads, one communicator each; returns their results in
/// rank order.
pub fn run_world<R: Send + 'static>(
    world: u32,
    cfg: topoccl::Config,
    f: impl Fn(&mut topoccl::Communicator) -> R + Send + Sync + 'static,
) -> Vec<R> {
    let store = MemStore::shared();
    let f = Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let store = store.clone();
            let f = f.clone();
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let mut c =
                    topoccl::Communicator::with_store(store, r, world, "test", "world", cfg)
                        .unwrap_or_else(|e| panic!("rank {r}: init failed: {e}"));
                f(&mut c)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread"))
        .collect()
}
