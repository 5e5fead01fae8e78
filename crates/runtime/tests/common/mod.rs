//! Test support: communicators whose ranks are threads of one process, meeting in an
//! in-memory store (and still talking over real sockets or shared memory).

#![allow(dead_code)]

use std::sync::Arc;

use topoccl::store::{MemStore, Store};

/// A fresh in-memory store (the library's, which stores keys and counters exactly as the
/// TCP store does), to share between the ranks of one test.
pub fn mem_store() -> Arc<dyn Store> {
    MemStore::shared()
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
    let store = mem_store();
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
