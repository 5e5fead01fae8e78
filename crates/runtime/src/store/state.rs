//! The keys of an in-memory store: a map with capacity limits, counters, deletes, and
//! waits for keys with deadlines. No sockets and no threads of its own: the TCP server
//! hosts one for its connections, and [`MemStore`](super::MemStore) wraps one for ranks
//! that are threads of one process, so both store exactly the same way.
//!
//! Counters are decimal ASCII `i64`s ([`counter_after`], [`counter_bytes`]), in this
//! state and in the file store alike, so `get` of a counter reads e.g. `b"42"` whatever
//! the store.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::limits::{MAX_ENTRIES, MAX_STORE_BYTES};
use super::{lock, shown};

/// How much the state holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Capacity {
    pub(super) max_entries: usize,
    /// Of keys and values together.
    pub(super) max_bytes: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_STORE_BYTES,
        }
    }
}

/// The map and its bookkeeping, behind the state's lock.
#[derive(Default)]
pub(super) struct Entries {
    map: HashMap<String, Arc<[u8]>>,
    /// Sum of key and value lengths.
    bytes: usize,
    /// Set by [`State::close`]: waiters give up.
    closed: bool,
}

/// Keys and values shared by threads; every operation is one critical section.
pub(super) struct State {
    entries: Mutex<Entries>,
    changed: Condvar,
    capacity: Capacity,
}

pub(super) enum WaitOutcome {
    /// All keys exist; the value of the first (empty for no keys).
    Ready(Arc<[u8]>),
    /// The deadline passed; the keys still missing, in the order asked.
    TimedOut(Vec<String>),
    /// The state was closed, or the watch said nobody wants the answer any more.
    Abandoned,
}

/// A check a waiter makes every `every` while it waits (with the lock released), such as
/// whether the client that asked is still connected. It returns false to abandon the wait.
pub(super) struct Watch<'a> {
    pub(super) every: Duration,
    pub(super) still_wanted: &'a mut dyn FnMut() -> bool,
}

/// The new value of a counter holding `current` (`None`: absent, counted as 0) after
/// adding `delta`; the error says why it is not a counter or that the sum overflows.
pub(super) fn counter_after(key: &str, current: Option<&[u8]>, delta: i64) -> Result<i64, String> {
    let current = match current {
        None => 0,
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| {
                format!(
                    "key '{key}' holds a value that is not a counter (a decimal i64); use \
                     another key for the counter",
                    key = shown(key)
                )
            })?,
    };
    current.checked_add(delta).ok_or_else(|| {
        format!(
            "adding {delta} to counter '{key}' (now {current}) overflows i64",
            key = shown(key)
        )
    })
}

/// How a counter's value is stored.
pub(super) fn counter_bytes(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

impl State {
    pub(super) fn new(capacity: Capacity) -> State {
        State {
            entries: Mutex::new(Entries::default()),
            changed: Condvar::new(),
            capacity,
        }
    }

    /// Stores `value` under `key`, within the capacity, and wakes the waiters.
    fn put(&self, e: &mut Entries, key: &str, value: Arc<[u8]>) -> Result<(), String> {
        let old = e.map.get(key).map(|v| key.len() + v.len());
        if old.is_none() && e.map.len() >= self.capacity.max_entries {
            return Err(format!(
                "the store holds {} keys, its limit; delete keys that are no longer needed",
                e.map.len()
            ));
        }
        let bytes = e.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > self.capacity.max_bytes {
            return Err(format!(
                "setting '{key}' would make the store hold {bytes} bytes, more than its \
                 limit of {}; delete keys that are no longer needed",
                self.capacity.max_bytes,
                key = shown(key)
            ));
        }
        e.bytes = bytes;
        e.map.insert(key.to_string(), value);
        self.changed.notify_all();
        Ok(())
    }

    /// Sets `key` to `value` (overwriting); the error says which capacity it would exceed.
    pub(super) fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let value: Arc<[u8]> = Arc::from(value);
        self.put(&mut lock(&self.entries), key, value)
    }

    /// Adds `delta` to the counter `key` (created at 0) and returns the new value.
    pub(super) fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut e = lock(&self.entries);
        let new = counter_after(key, e.map.get(key).map(|v| &v[..]), delta)?;
        self.put(&mut e, key, Arc::from(counter_bytes(new)))?;
        Ok(new)
    }

    pub(super) fn try_get(&self, key: &str) -> Option<Arc<[u8]>> {
        lock(&self.entries).map.get(key).cloned()
    }

    /// Removes `key`, if it exists.
    pub(super) fn delete(&self, key: &str) {
        let mut e = lock(&self.entries);
        if let Some(v) = e.map.remove(key) {
            e.bytes -= key.len() + v.len();
        }
    }

    /// Waits until every key exists, `deadline` passes, the state is closed or `watch`
    /// abandons the wait.
    pub(super) fn wait(
        &self,
        keys: &[&str],
        deadline: Instant,
        mut watch: Option<Watch<'_>>,
    ) -> WaitOutcome {
        let mut pending: Vec<&str> = keys.to_vec();
        let mut last_check = Instant::now();
        let mut e = lock(&self.entries);
        loop {
            if e.closed {
                return WaitOutcome::Abandoned;
            }
            pending.retain(|k| !e.map.contains_key(*k));
            if pending.is_empty() {
                // A GET answers with the first key's value. If that key was deleted after
                // it was seen, wait for it again rather than answer with nothing.
                return match keys.first() {
                    None => WaitOutcome::Ready(Arc::from(&[][..])),
                    Some(first) => match e.map.get(*first) {
                        Some(v) => WaitOutcome::Ready(v.clone()),
                        None => {
                            pending.push(first);
                            continue;
                        }
                    },
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return WaitOutcome::TimedOut(pending.iter().map(|k| k.to_string()).collect());
            }
            let mut nap = deadline - now;
            if let Some(w) = watch.as_mut() {
                if now.duration_since(last_check) >= w.every {
                    drop(e);
                    if !(w.still_wanted)() {
                        return WaitOutcome::Abandoned;
                    }
                    last_check = Instant::now();
                    e = lock(&self.entries);
                    continue;
                }
                nap = nap.min(w.every);
            }
            e = self
                .changed
                .wait_timeout(e, nap)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Makes every wait, now and later, give up ([`WaitOutcome::Abandoned`]).
    pub(super) fn close(&self) {
        lock(&self.entries).closed = true;
        self.changed.notify_all();
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.entries).closed
    }

    /// Holds the state's lock, so that nothing can be done with the state meanwhile.
    #[cfg(test)]
    pub(super) fn hold(&self) -> std::sync::MutexGuard<'_, Entries> {
        lock(&self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    fn value(o: WaitOutcome) -> Vec<u8> {
        match o {
            WaitOutcome::Ready(v) => v.to_vec(),
            WaitOutcome::TimedOut(m) => panic!("timed out waiting for {m:?}"),
            WaitOutcome::Abandoned => panic!("abandoned"),
        }
    }

    #[test]
    fn set_get_add_delete() {
        let s = State::new(Capacity::default());
        assert_eq!(s.try_get("x"), None);
        s.set("x", b"hello").unwrap();
        assert_eq!(s.try_get("x").as_deref(), Some(&b"hello"[..]));
        assert_eq!(s.add("n", 5).unwrap(), 5);
        assert_eq!(s.add("n", -2).unwrap(), 3);
        // Counters are decimal ASCII, readable like any value.
        assert_eq!(s.try_get("n").as_deref(), Some(&b"3"[..]));
        s.set("m", b"-40").unwrap();
        assert_eq!(s.add("m", 2).unwrap(), -38);
        s.delete("x");
        s.delete("x");
        assert_eq!(s.try_get("x"), None);
        s.set("", b"").unwrap();
        assert_eq!(s.try_get("").as_deref(), Some(&b""[..]));
    }

    #[test]
    fn add_refuses_non_counters_and_overflow() {
        let s = State::new(Capacity::default());
        s.set("text", b"abc").unwrap();
        assert!(s.add("text", 1).unwrap_err().contains("not a counter"));
        s.set("le", &7i64.to_le_bytes()).unwrap();
        assert!(s.add("le", 1).unwrap_err().contains("not a counter"));
        s.add("big", i64::MAX).unwrap();
        assert!(s.add("big", 1).unwrap_err().contains("overflows"));
        // A refused add changes nothing.
        assert_eq!(s.add("big", -1).unwrap(), i64::MAX - 1);
        assert_eq!(s.try_get("text").as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn capacity_counts_keys_and_bytes() {
        let s = State::new(Capacity {
            max_entries: 2,
            max_bytes: 100,
        });
        s.set("a", b"1").unwrap();
        s.set("b", b"2").unwrap();
        assert!(s.set("c", b"3").unwrap_err().contains("2 keys"));
        // Overwriting replaces the old size rather than adding to it.
        s.set("a", &[0; 97]).unwrap();
        let e = s.set("a", &[0; 98]).unwrap_err();
        assert!(e.contains("limit of 100"), "{e}");
        assert_eq!(s.add("b", 1), Ok(3));
        s.delete("b");
        s.set("c", b"3").unwrap();
        s.delete("a");
        s.set("d", &[0; 97]).unwrap();
    }

    #[test]
    fn wait_times_out_listing_the_missing_keys_in_order() {
        let s = State::new(Capacity::default());
        s.set("present", b"1").unwrap();
        let t = Instant::now();
        match s.wait(&["b", "present", "a"], soon(50), None) {
            WaitOutcome::TimedOut(m) => assert_eq!(m, ["b", "a"]),
            _ => panic!("expected a timeout"),
        }
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(matches!(
            s.wait(&["a"], Instant::now(), None),
            WaitOutcome::TimedOut(_)
        ));
        assert_eq!(value(s.wait(&[], Instant::now(), None)), b"");
        assert_eq!(value(s.wait(&["present"], Instant::now(), None)), b"1");
    }

    #[test]
    fn wait_wakes_on_set_and_answers_the_first_value() {
        let s = Arc::new(State::new(Capacity::default()));
        let setter = {
            let s = s.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                s.set("b", b"B").unwrap();
                s.add("a", 7).unwrap();
            })
        };
        let t = Instant::now();
        assert_eq!(value(s.wait(&["a", "b"], soon(10_000), None)), b"7");
        assert!(t.elapsed() < Duration::from_secs(5));
        setter.join().unwrap();
    }

    #[test]
    fn close_abandons_waiters_now_and_later() {
        let s = Arc::new(State::new(Capacity::default()));
        let waiter = {
            let s = s.clone();
            thread::spawn(move || s.wait(&["never"], soon(60_000), None))
        };
        thread::sleep(Duration::from_millis(20));
        assert!(!s.is_closed());
        s.close();
        assert!(matches!(waiter.join().unwrap(), WaitOutcome::Abandoned));
        assert!(s.is_closed());
        assert!(matches!(
            s.wait(&[], soon(1000), None),
            WaitOutcome::Abandoned
        ));
    }

    #[test]
    fn watch_runs_while_waiting_and_can_abandon() {
        let s = State::new(Capacity::default());
        let mut checks = 0;
        let mut still_wanted = || {
            checks += 1;
            checks < 3
        };
        let watch = Watch {
            every: Duration::from_millis(5),
            still_wanted: &mut still_wanted,
        };
        let t = Instant::now();
        assert!(matches!(
            s.wait(&["never"], soon(60_000), Some(watch)),
            WaitOutcome::Abandoned
        ));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(checks, 3);
    }

    #[test]
    fn holding_the_lock_blocks_operations() {
        let s = Arc::new(State::new(Capacity::default()));
        let guard = s.hold();
        let s2 = s.clone();
        let t = thread::spawn(move || s2.set("k", b"v"));
        thread::sleep(Duration::from_millis(20));
        assert!(!t.is_finished());
        drop(guard);
        t.join().unwrap().unwrap();
    }
}
