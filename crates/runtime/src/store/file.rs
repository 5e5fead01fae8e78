//! File store: one file per key in a directory, which may be shared by the processes of
//! one machine or, over NFS, of several.
//!
//! Layout of the directory:
//!
//! - `k.<escaped key>`: the value of a key. The escape keeps `a`–`z`, `0`–`9`, `_` and `-`
//!   and writes every other byte as `%xx` (lowercase hex), so a name is one path
//!   component that is never `.` or `..`, and it stays distinct on case-insensitive file
//!   systems.
//! - `h.<32 hex digits>`: the value of a key whose escaped form would exceed
//!   [`MAX_NAME_LEN`] bytes (file names are limited to 255), named by the key's 128-bit
//!   FNV-1a hash. The file starts with the key (`u32` big-endian length, bytes), checked
//!   on reading so that a collision is an error rather than a wrong value.
//! - `t.<pid>.<n>.<random>`: a value being written; renamed over its final name when
//!   complete, so readers see either the old or the new value, never part of one.
//! - `l.<final name>`: the lock of a counter during `add`, created exclusively.
//!
//! Counters are decimal ASCII, as in the TCP store (the same code reads and writes them).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::limits::{
    check_key, check_value, DEFAULT_LOCK_TIMEOUT, LOCK_POLL_MAX, MAX_NAME_LEN, MAX_VALUE_LEN,
    POLL_FIRST, POLL_MAX, STALE_RETRIES,
};
use super::state::{counter_after, counter_bytes};
use super::{shown, Store, StoreError};

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A store in a directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// Where a key lives in the directory.
struct Entry {
    /// File name of the value.
    name: String,
    /// Whether the name is a hash, and the file therefore starts with the key.
    hashed: bool,
}

fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    for b in key.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
        }
    }
    out
}

/// 128-bit FNV-1a: stable across processes, machines and compiler versions, unlike
/// the standard library's hasher.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

fn entry(key: &str) -> Entry {
    let escaped = escape(key);
    if escaped.len() <= MAX_NAME_LEN {
        Entry {
            name: format!("k.{escaped}"),
            hashed: false,
        }
    } else {
        Entry {
            name: format!("h.{:032x}", fnv1a_128(key.as_bytes())),
            hashed: true,
        }
    }
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> StoreError {
    StoreError::Io(format!(
        "{what} {}: {e}; check that the store directory exists, is writable and its file \
         system is mounted",
        path.display()
    ))
}

/// `key` in the header of a hashed entry's file.
fn hashed_content(key: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + key.len() + value.len());
    v.extend_from_slice(&(key.len() as u32).to_be_bytes());
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(value);
    v
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        // Uniqueness also rests on the pid and the sequence number; the time only has to
        // separate hosts sharing the directory.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    })
}

/// Sleeps for the next pause of a backoff, never past `deadline`; false if the deadline
/// has passed.
fn nap(pause: &mut Duration, max: Duration, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    thread::sleep((*pause).min(deadline - now));
    *pause = (*pause * 2).min(max);
    true
}

/// Removes a counter's lock file when the `add` holding it ends, however it ends.
struct LockGuard {
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(
                    path = %self.path.display(),
                    "file store: cannot remove a counter lock ({e}); later adds to this \
                     counter will time out until it is deleted"
                );
            }
        }
    }
}

impl FileStore {
    /// Opens (creating if needed) the store directory.
    pub fn new(dir: PathBuf) -> Result<FileStore, StoreError> {
        let not_a_dir = || {
            StoreError::Io(format!(
                "store path {} exists but is not a directory; give a directory",
                dir.display()
            ))
        };
        if let Err(e) = fs::create_dir_all(&dir) {
            return Err(match fs::metadata(&dir) {
                Ok(m) if !m.is_dir() => not_a_dir(),
                _ => io_error("cannot create the store directory", &dir, &e),
            });
        }
        let meta = fs::metadata(&dir)
            .map_err(|e| io_error("cannot read the store directory", &dir, &e))?;
        if !meta.is_dir() {
            return Err(not_a_dir());
        }
        Ok(FileStore {
            dir,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
        })
    }

    /// Bounds how long `add` waits for another process's lock on the same counter
    /// (default 30 s).
    pub fn with_lock_timeout(mut self, timeout: Duration) -> FileStore {
        self.lock_timeout = timeout;
        self
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a file under a temporary name and renames it into place. No fsync: the
    /// store only has to outlive the job, not a machine crash, and close-to-open
    /// consistency already makes NFS flush before the rename.
    fn write_atomic(&self, name: &str, content: &[u8]) -> Result<(), StoreError> {
        let tmp = self.dir.join(format!(
            "t.{}.{}.{:016x}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed),
            random_u64()
        ));
        let written = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(content));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot write", &tmp, &e));
        }
        let path = self.dir.join(name);
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(io_error("cannot rename a new value into", &path, &e));
        }
        Ok(())
    }

    fn write_value(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let e = entry(key);
        if e.hashed {
            self.write_atomic(&e.name, &hashed_content(key, value))
        } else {
            self.write_atomic(&e.name, value)
        }
    }

    /// The value of `key`, or `None` if it has no file.
    fn read_value(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let e = entry(key);
        let path = self.dir.join(&e.name);
        let header = if e.hashed { 4 + key.len() } else { 0 };
        let limit = (header + MAX_VALUE_LEN) as u64;
        let mut attempt = 0;
        let mut content = loop {
            let read = File::open(&path).and_then(|f| {
                let mut buf = Vec::new();
                f.take(limit + 1).read_to_end(&mut buf)?;
                Ok(buf)
            });
            match read {
                Ok(buf) => break buf,
                Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(err)
                    if err.kind() == io::ErrorKind::StaleNetworkFileHandle
                        && attempt < STALE_RETRIES =>
                {
                    attempt += 1;
                }
                Err(err) => return Err(io_error("cannot read", &path, &err)),
            }
        };
        if content.len() as u64 > limit {
            return Err(StoreError::Protocol(format!(
                "{} holds more than the value limit of {MAX_VALUE_LEN} bytes; it was not \
                 written by this store: remove it or use a fresh directory",
                path.display()
            )));
        }
        if e.hashed {
            let matches = content.len() >= header
                && content[..4] == (key.len() as u32).to_be_bytes()
                && &content[4..header] == key.as_bytes();
            if !matches {
                return Err(StoreError::Protocol(format!(
                    "{} belongs to another key with the same hash, or is damaged; use a \
                     shorter key (at most {MAX_NAME_LEN} bytes once escaped) or a fresh \
                     directory",
                    path.display()
                )));
            }
            content.drain(..header);
        }
        Ok(Some(content))
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.dir.join(entry(key).name);
        match fs::metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error("cannot look at", &path, &e)),
        }
    }

    /// Takes the lock of the counter stored in `name`, waiting at most the lock timeout.
    fn lock_counter(&self, key: &str, name: &str) -> Result<LockGuard, StoreError> {
        let path = self.dir.join(format!("l.{name}"));
        let deadline = Instant::now() + self.lock_timeout;
        let mut pause = POLL_FIRST;
        loop {
            match File::options().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let guard = LockGuard { path };
                    // Who holds it, for whoever finds it left behind by a crash.
                    let since = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let _ = writeln!(f, "pid {} since unix time {since}", std::process::id());
                    return Ok(guard);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !nap(&mut pause, LOCK_POLL_MAX, deadline) {
                        let mut holder = String::new();
                        if let Ok(f) = File::open(&path) {
                            let _ = f.take(200).read_to_string(&mut holder);
                        }
                        return Err(StoreError::Io(format!(
                            "could not lock counter '{key}' within {:?}: {} exists (held by \
                             {}); if that process died during an add, delete the file",
                            self.lock_timeout,
                            path.display(),
                            match holder.trim() {
                                "" => "an unknown process",
                                h => h,
                            },
                            key = shown(key)
                        )));
                    }
                }
                Err(e) => return Err(io_error("cannot create the counter lock", &path, &e)),
            }
        }
    }
}

impl Store for FileStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(key, value)?;
        self.write_value(key, value)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let mut pause = POLL_FIRST;
        loop {
            if let Some(v) = self.read_value(key)? {
                return Ok(v);
            }
            if !nap(&mut pause, POLL_MAX, deadline) {
                return Err(StoreError::Timeout {
                    missing: vec![key.to_string()],
                });
            }
        }
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        self.read_value(key)
    }

    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        for k in keys {
            check_key(k)?;
        }
        let mut pending: Vec<&String> = keys.iter().collect();
        let mut pause = POLL_FIRST;
        loop {
            let mut still = Vec::with_capacity(pending.len());
            for k in pending {
                if !self.exists(k)? {
                    still.push(k);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if !nap(&mut pause, POLL_MAX, deadline) {
                return Err(StoreError::Timeout {
                    missing: pending.into_iter().cloned().collect(),
                });
            }
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        check_key(key)?;
        let e = entry(key);
        let _lock = self.lock_counter(key, &e.name)?;
        let current = self.read_value(key)?;
        let new = counter_after(key, current.as_deref(), delta).map_err(StoreError::Protocol)?;
        self.write_value(key, &counter_bytes(new))?;
        Ok(new)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let path = self.dir.join(entry(key).name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot delete", &path, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_KEY_LEN;
    use std::collections::HashSet;

    /// A fresh directory removed when the test ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let p = std::env::temp_dir().join(format!(
                "topoccl-filestore-{tag}-{}-{}-{:x}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed),
                random_u64()
            ));
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn names_are_single_safe_components_and_distinct() {
        let keys = [
            "",
            ".",
            "..",
            "../etc/passwd",
            "/abs",
            "a/b",
            "a\\b",
            "A",
            "a",
            "%41",
            "%",
            "k.x",
            "h.0",
            "ключ",
            "a\0b",
            "rank/0/addr",
            "-",
            "_",
        ];
        let mut seen = HashSet::new();
        for k in keys {
            let e = entry(k);
            assert!(!e.hashed);
            let n = &e.name;
            assert!(n.starts_with("k."), "{n}");
            assert!(
                !n.contains('/') && !n.contains('\\') && !n.contains('\0'),
                "{n}"
            );
            assert!(n != "." && n != "..");
            assert_eq!(n.to_lowercase(), *n, "case-insensitive file systems: {n}");
            assert!(seen.insert(n.clone()), "collision on {k:?}: {n}");
        }
        assert_eq!(entry("rank_0-x").name, "k.rank_0-x");
        assert_eq!(entry("A/b").name, "k.%41%2fb");
    }

    #[test]
    fn long_keys_are_hashed_and_round_trip() {
        let d = TempDir::new("long");
        let s = FileStore::new(d.0.clone()).unwrap();
        let long = "/".repeat(MAX_KEY_LEN);
        let e = entry(&long);
        assert!(e.hashed);
        assert_eq!(e.name.len(), 2 + 32);
        s.set(&long, b"v").unwrap();
        assert_eq!(s.try_get(&long).unwrap(), Some(b"v".to_vec()));
        assert_eq!(s.add(&"x".repeat(300), 4).unwrap(), 4);
        assert_eq!(s.get(&"x".repeat(300), soon(100)).unwrap(), b"4");
        s.wait(std::slice::from_ref(&long), soon(100)).unwrap();
        s.delete(&long).unwrap();
        assert_eq!(s.try_get(&long).unwrap(), None);
        let e = s.set(&"x".repeat(MAX_KEY_LEN + 1), b"v").unwrap_err();
        assert!(matches!(e, StoreError::Protocol(_)), "{e}");
    }

    #[test]
    fn hash_collisions_are_detected() {
        let d = TempDir::new("collide");
        let s = FileStore::new(d.0.clone()).unwrap();
        let key = "y".repeat(250);
        let other = "z".repeat(250);
        fs::write(d.0.join(entry(&key).name), hashed_content(&other, b"v")).unwrap();
        let e = s.try_get(&key).unwrap_err();
        assert!(e.to_string().contains("another key"), "{e}");
    }

    #[test]
    fn basic_operations_and_no_traversal() {
        let d = TempDir::new("basic");
        let s = FileStore::new(d.0.join("nested/dir")).unwrap();
        s.set("../escape", b"1").unwrap();
        s.set("/abs", b"2").unwrap();
        assert!(!d.0.join("nested/escape").exists());
        let names: Vec<String> = fs::read_dir(d.0.join("nested/dir"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(s.try_get("../escape").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get("/abs", soon(100)).unwrap(), b"2");
        s.set("/abs", b"22").unwrap();
        assert_eq!(s.try_get("/abs").unwrap(), Some(b"22".to_vec()));
        s.delete("/abs").unwrap();
        s.delete("/abs").unwrap();
        assert_eq!(s.try_get("/abs").unwrap(), None);
        s.set("text", b"abc").unwrap();
        let e = s.add("text", 1).unwrap_err();
        assert!(e.to_string().contains("not a counter"), "{e}");
        assert_eq!(s.add("n", i64::MAX).unwrap(), i64::MAX);
        assert!(s.add("n", 1).unwrap_err().to_string().contains("overflows"));
        assert_eq!(s.add("n", -1).unwrap(), i64::MAX - 1);
    }

    #[test]
    fn not_a_directory() {
        let d = TempDir::new("notdir");
        fs::create_dir_all(&d.0).unwrap();
        let f = d.0.join("file");
        fs::write(&f, b"x").unwrap();
        let e = FileStore::new(f).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn get_and_wait_time_out() {
        let d = TempDir::new("timeout");
        let s = FileStore::new(d.0.clone()).unwrap();
        s.set("here", b"x").unwrap();
        let t = Instant::now();
        let e = s.get("absent", soon(100)).unwrap_err();
        assert_eq!(
            e,
            StoreError::Timeout {
                missing: vec!["absent".into()]
            }
        );
        let keys = vec!["here".to_string(), "a".into(), "b".into()];
        let e = s.wait(&keys, soon(100)).unwrap_err();
        assert_eq!(
            e,
            StoreError::Timeout {
                missing: vec!["a".into(), "b".into()]
            }
        );
        assert!(
            t.elapsed() < Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn get_wakes_when_another_instance_sets() {
        let d = TempDir::new("wake");
        let a = FileStore::new(d.0.clone()).unwrap();
        let b = FileStore::new(d.0.clone()).unwrap();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            b.set("late", b"v").unwrap();
        });
        assert_eq!(a.get("late", soon(5000)).unwrap(), b"v");
        t.join().unwrap();
    }

    #[test]
    fn add_is_atomic_across_instances() {
        let d = TempDir::new("add");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = FileStore::new(d.0.clone()).unwrap();
                thread::spawn(move || {
                    (0..25)
                        .map(|_| s.add("count", 1).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<_>>());
        let leftovers: Vec<_> = fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with("k."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_lock_left_behind_is_a_bounded_wait_with_advice() {
        let d = TempDir::new("lock");
        let s = FileStore::new(d.0.clone())
            .unwrap()
            .with_lock_timeout(Duration::from_millis(150));
        fs::write(
            d.0.join(format!("l.{}", entry("c").name)),
            "pid 4242 since unix time 0\n",
        )
        .unwrap();
        let t = Instant::now();
        let e = s.add("c", 1).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(1));
        let m = e.to_string();
        assert!(
            m.contains("pid 4242") && m.contains("delete the file"),
            "{m}"
        );
        fs::remove_file(d.0.join(format!("l.{}", entry("c").name))).unwrap();
        assert_eq!(s.add("c", 1).unwrap(), 1);
    }

    #[test]
    fn oversized_files_and_values_are_refused() {
        let d = TempDir::new("big");
        let s = FileStore::new(d.0.clone()).unwrap();
        let big = vec![0u8; MAX_VALUE_LEN + 1];
        let e = s.set("v", &big).unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        fs::write(d.0.join(entry("v").name), &big).unwrap();
        let e = s.try_get("v").unwrap_err();
        assert!(e.to_string().contains("not written by this store"), "{e}");
    }
}
