//! The keys of an in-memory store: a map with capacity limits, counters, deletes, and
//! waits for keys with deadlines. No sockets and no threads of its own: the TCP server
//! hosts one for its connections, and [`MemStore`](super::MemStore) wraps one for ranks
//! that are threads of one process, so both store exactly the same way.
//!
//! Every key belongs to a job ([`job_of`]: `topoccl/JOB/...` keys to `JOB`), and each job
//! has a quota of keys and bytes ([`Capacity::job_max_keys`], [`Capacity::job_max_bytes`])
//! inside the store's overall capacity, so that one job sharing a store cannot take it
//! from the others. The usage table has one entry per job that holds a key, so it is
//! bounded by the store's key capacity.
//!
//! Counters are decimal ASCII `i64`s ([`counter_after`], [`counter_bytes`]), in this
//! state and in the file store alike, so `get` of a counter reads e.g. `b"42"` whatever
//! the store.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::limits::{JOB_MAX_BYTES, JOB_MAX_KEYS, MAX_ENTRIES, MAX_STORE_BYTES};
use super::{lock, shown};

/// How much the state holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Capacity {
    pub(super) max_entries: usize,
    /// Of keys and values together.
    pub(super) max_bytes: usize,
    /// Keys one job ([`job_of`]) holds at most.
    pub(super) job_max_keys: usize,
    /// Bytes of keys and values one job holds at most.
    pub(super) job_max_bytes: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_STORE_BYTES,
            job_max_keys: JOB_MAX_KEYS,
            job_max_bytes: JOB_MAX_BYTES,
        }
    }
}

/// The job a key belongs to, for its quota: `JOB` in `topoccl/JOB/...` (the namespaces
/// of communicators and metrics), else the key's first `/`-separated segment.
pub(super) fn job_of(key: &str) -> &str {
    let rest = key.strip_prefix("topoccl/").unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// What one job holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Usage {
    pub(super) keys: usize,
    pub(super) bytes: usize,
}

/// The map and its bookkeeping, behind the state's lock.
#[derive(Default)]
pub(super) struct Entries {
    map: HashMap<String, Arc<[u8]>>,
    /// Sum of key and value lengths.
    bytes: usize,
    /// Per job ([`job_of`]) holding at least one key: its keys and bytes.
    jobs: HashMap<String, Usage>,
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

    /// Stores `value` under `key`, within the capacity and the job's quota, and wakes the
    /// waiters.
    fn put(&self, e: &mut Entries, key: &str, value: Arc<[u8]>) -> Result<(), String> {
        let old = e.map.get(key).map(|v| key.len() + v.len());
        let new = key.len() + value.len();
        if old.is_none() && e.map.len() >= self.capacity.max_entries {
            return Err(format!(
                "the store holds {} keys, its limit; delete keys that are no longer needed",
                e.map.len()
            ));
        }
        let bytes = e.bytes - old.unwrap_or(0) + new;
        if bytes > self.capacity.max_bytes {
            return Err(format!(
                "setting '{key}' would make the store hold {bytes} bytes, more than its \
                 limit of {}; delete keys that are no longer needed",
                self.capacity.max_bytes,
                key = shown(key)
            ));
        }
        let job = job_of(key);
        let used = e.jobs.get(job).copied().unwrap_or_default();
        let after = Usage {
            keys: used.keys + usize::from(old.is_none()),
            bytes: used.bytes - old.unwrap_or(0) + new,
        };
        if old.is_none() && after.keys > self.capacity.job_max_keys {
            return Err(format!(
                "job '{job}' holds {} keys, its quota in this store; raise it with \
                 `topoccl store --job-max-keys` (now {}) or delete the job's keys that are \
                 no longer needed",
                used.keys,
                self.capacity.job_max_keys,
                job = shown(job)
            ));
        }
        if after.bytes > self.capacity.job_max_bytes && after.bytes > used.bytes {
            return Err(format!(
                "setting '{key}' would make job '{job}' hold {} bytes, more than its quota \
                 of {} in this store; raise it with `topoccl store --job-max-bytes` or \
                 delete the job's keys that are no longer needed",
                after.bytes,
                self.capacity.job_max_bytes,
                key = shown(key),
                job = shown(job)
            ));
        }
        e.bytes = bytes;
        e.jobs.insert(job.to_string(), after);
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
            let freed = key.len() + v.len();
            e.bytes -= freed;
            let job = job_of(key);
            if let Some(u) = e.jobs.get_mut(job) {
                u.keys -= 1;
                u.bytes -= freed;
                if u.keys == 0 {
                    e.jobs.remove(job);
                }
            }
        }
    }

    /// What `job` holds now.
    #[cfg(test)]
    pub(super) fn usage(&self, job: &str) -> Usage {
        lock(&self.entries)
            .jobs
            .get(job)
            .copied()
            .unwrap_or_default()
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
            ..Capacity::default()
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
    fn keys_belong_to_their_job() {
        assert_eq!(job_of("topoccl/j1/world0/addr/3"), "j1");
        assert_eq!(job_of("topoccl/j1"), "j1");
        assert_eq!(job_of("mine/x"), "mine");
        assert_eq!(job_of("plain"), "plain");
        assert_eq!(job_of(""), "");
    }

    fn quota(keys: usize, bytes: usize) -> State {
        State::new(Capacity {
            job_max_keys: keys,
            job_max_bytes: bytes,
            ..Capacity::default()
        })
    }

    #[test]
    fn each_job_has_its_own_quota_and_the_error_names_job_quota_and_flag() {
        let s = quota(2, 1000);
        s.set("topoccl/a/k1", b"1").unwrap();
        s.set("topoccl/a/k2", b"2").unwrap();
        let e = s.set("topoccl/a/k3", b"3").unwrap_err();
        assert!(
            e.contains("job 'a'") && e.contains("2 keys") && e.contains("--job-max-keys"),
            "{e}"
        );
        // Overwriting and counting on a held key need no new key.
        s.set("topoccl/a/k1", b"11").unwrap();
        s.set("topoccl/a/k2", b"5").unwrap();
        assert_eq!(s.add("topoccl/a/k2", 1), Ok(6));
        // Another job is not held back by the first one's use.
        s.set("topoccl/b/k1", &[0; 900]).unwrap();
        let e = s.set("topoccl/b/k2", &[0; 100]).unwrap_err();
        assert!(
            e.contains("job 'b'") && e.contains("quota of 1000") && e.contains("--job-max-bytes"),
            "{e}"
        );
        assert_eq!(
            s.usage("b"),
            Usage {
                keys: 1,
                bytes: 912
            }
        );
        // Deleting gives the quota back.
        s.delete("topoccl/a/k1");
        s.set("topoccl/a/k3", b"3").unwrap();
        s.delete("topoccl/b/k1");
        assert_eq!(s.usage("b"), Usage::default());
        s.set("topoccl/b/k2", &[0; 900]).unwrap();
    }

    #[test]
    fn a_131072_rank_rendezvous_fits_the_default_quota() {
        // Per rank and communicator: its endpoint, as large as it gets (an IPv6 address,
        // a shared-memory name, a host key, a nonce and a certificate fingerprint), under
        // its key; the world and three splits (data, tensor, pipeline parallel groups),
        // plus the metrics address and a stuck report per rank.
        let world: usize = 131_072;
        let largest = crate::transport::Endpoint {
            tcp: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap(),
            shm: Some(format!("topoccl-{:x}-{}-{}", u64::MAX, u32::MAX, u32::MAX)),
            host: format!("{}/net:[{}]", "f".repeat(36), u64::MAX),
            nonce: [255; crate::auth::NONCE_LEN],
            tls: true,
        };
        let json = serde_json::to_vec(&largest).unwrap().len();
        // Room for a certificate's fingerprint (64 hex digits) and its field name.
        let endpoint = 512;
        assert!(json + 96 <= endpoint, "an endpoint takes {json} bytes");
        let key = "topoccl/a-job-id-of-sixty-four-characters-aaaaaaaaaaaaaaaaaaaaaaaa/world0/split0/color0/addr/131071".len();
        let per_rank = 4 * (key + endpoint) + 2 * (key + 64);
        assert!(6 * world <= JOB_MAX_KEYS, "{} keys", 6 * world);
        assert!(
            per_rank * world <= JOB_MAX_BYTES,
            "{} bytes",
            per_rank * world
        );
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

    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u8, usize),
        Add(u8, u8),
        Delete(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3u8, 0..6u8, 0..40usize).prop_map(|(j, k, n)| Op::Set(j, k, n)),
            (0..3u8, 0..6u8).prop_map(|(j, k)| Op::Add(j, k)),
            (0..3u8, 0..6u8).prop_map(|(j, k)| Op::Delete(j, k)),
        ]
    }

    proptest! {
        /// Whatever is set, added and deleted, each job's usage is what its keys hold, no
        /// job exceeds its quota, and a refused write changes nothing.
        #[test]
        fn usage_matches_the_keys_and_stays_within_quota(ops in proptest::collection::vec(op(), 0..80)) {
            let s = quota(4, 100);
            for op in ops {
                let before = (0..3).map(|j| s.usage(&j.to_string())).collect::<Vec<_>>();
                let (job, result) = match op {
                    Op::Set(j, k, n) => (j, s.set(&format!("topoccl/{j}/{k}"), &vec![b'1'; n]).map(|_| ())),
                    Op::Add(j, k) => (j, s.add(&format!("topoccl/{j}/{k}"), 1).map(|_| ())),
                    Op::Delete(j, k) => { s.delete(&format!("topoccl/{j}/{k}")); (j, Ok(())) }
                };
                if result.is_err() {
                    prop_assert_eq!(s.usage(&job.to_string()), before[job as usize]);
                }
                let e = s.hold();
                let mut want: HashMap<&str, Usage> = HashMap::new();
                for (k, v) in &e.map {
                    let u = want.entry(job_of(k)).or_default();
                    u.keys += 1;
                    u.bytes += k.len() + v.len();
                }
                prop_assert_eq!(e.jobs.len(), want.len());
                for (j, u) in &want {
                    prop_assert_eq!(e.jobs.get(*j), Some(u));
                    prop_assert!(u.keys <= 4 && u.bytes <= 100);
                }
                prop_assert_eq!(e.bytes, want.values().map(|u| u.bytes).sum::<usize>());
            }
        }
    }
}
