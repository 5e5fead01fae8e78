//! The flight recorder of a rank: every communicator keeps its recent calls in a bounded
//! ring (`topoccl_watch::flight::Ring`) and writes them as JSON when a call fails or times
//! out, when the process receives `SIGUSR1`, and on request
//! ([`Communicator::flight_dump`](crate::Communicator::flight_dump), or `GET /flight` on the
//! metrics endpoint). `topoccl doctor DIR` lines the ranks' dumps up.
//!
//! | setting | meaning | default |
//! |---|---|---|
//! | `TOPOCCL_FLIGHT_ENTRIES` | calls each communicator keeps (`0`: recorder off) | 2,000 (PyTorch's) |
//! | `TOPOCCL_FLIGHT_DIR` | where dumps are written: `DIR/JOB/rank-R-COMM.json`, one file per rank and communicator, rewritten at each dump | `$TMPDIR/topoccl-flight` (`/tmp` without `TMPDIR`) |
//!
//! Times are the wall clock's, in nanoseconds since the Unix epoch, so dumps of ranks on
//! one host line up; across hosts the doctor compares durations (the dumps name their
//! host). A call costs a lock of its communicator's ring and two clock reads; the
//! recorder's strings are interned (algorithm labels are a bounded set), so a call shape
//! allocates once.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use topoccl_plan::{Collective, Op, OpKind, Plan, Rank};
use topoccl_watch::flight::{Call, Dump, DumpMeta, DumpReason, Peers, Ring};

use crate::error::{Error, Result};

pub const ENV_ENTRIES: &str = "TOPOCCL_FLIGHT_ENTRIES";
pub const ENV_DIR: &str = "TOPOCCL_FLIGHT_DIR";
/// Call shapes whose entry templates a communicator keeps; the cache starts over beyond.
const MAX_CALL_SHAPES: usize = 512;

/// The recorder's settings, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlightConfig {
    /// Calls kept per communicator; 0: off.
    pub entries: usize,
    /// Where dumps go.
    pub dir: PathBuf,
}

impl Default for FlightConfig {
    fn default() -> Self {
        FlightConfig {
            entries: topoccl_watch::flight::DEFAULT_CAPACITY,
            dir: std::env::temp_dir().join("topoccl-flight"),
        }
    }
}

impl FlightConfig {
    /// Defaults overridden by `lookup` (the environment).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<FlightConfig> {
        let mut c = FlightConfig::default();
        if let Some(v) = lookup(ENV_ENTRIES).filter(|v| !v.trim().is_empty()) {
            let max = topoccl_watch::flight::MAX_CAPACITY;
            c.entries = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{ENV_ENTRIES}={v} must be a number of calls from 0 (off) to {max}"
                    ))
                })?;
        }
        if let Some(v) = lookup(ENV_DIR).filter(|v| !v.trim().is_empty()) {
            c.dir = PathBuf::from(v);
        }
        Ok(c)
    }
}

/// The collective's name as PyTorch's flight recorder writes it, after `topoccl:`.
fn profiling_name(c: Collective) -> &'static str {
    match c {
        Collective::AllReduce => "topoccl:all_reduce",
        Collective::AllGather => "topoccl:all_gather",
        Collective::ReduceScatter => "topoccl:reduce_scatter",
        Collective::Broadcast => "topoccl:broadcast",
        Collective::Reduce => "topoccl:reduce",
        Collective::AllToAll => "topoccl:all_to_all",
        Collective::AllToAllV => "topoccl:all_to_allv",
        Collective::Gather => "topoccl:gather",
        Collective::Scatter => "topoccl:scatter",
        Collective::Barrier => "topoccl:barrier",
    }
}

/// A `&'static str` for an algorithm label: labels come from a bounded table, so the
/// leaked strings are bounded too.
fn intern(label: String) -> &'static str {
    static LABELS: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut labels = LABELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = labels.get(&label) {
        return s;
    }
    let s: &'static str = Box::leak(label.clone().into_boxed_str());
    labels.insert(label, s);
    s
}

/// The peers a rank's program exchanges data with.
pub(crate) fn peers_of(ops: &[Op]) -> Vec<Rank> {
    let mut peers: Vec<Rank> = ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Send { peer, .. }
            | OpKind::Recv { peer, .. }
            | OpKind::RecvReduce { peer, .. } => Some(peer),
            _ => None,
        })
        .collect();
    peers.sort_unstable();
    peers.dedup();
    peers
}

/// What a dump says about whose it is, fixed at creation.
#[derive(Clone, Debug)]
struct Identity {
    job_id: String,
    process_group: String,
    rank: Rank,
    world: u32,
    host: String,
}

/// A communicator's ring, shared with the signal thread and the metrics endpoint.
struct Shared {
    ring: Mutex<Ring>,
    who: Identity,
    dir: PathBuf,
    /// One writer at a time (an error's dump and SIGUSR1's may coincide).
    writing: Mutex<()>,
}

impl Shared {
    fn dump(&self, reason: DumpReason, detail: Option<String>) -> Dump {
        let meta = DumpMeta {
            job_id: self.who.job_id.clone(),
            process_group: self.who.process_group.clone(),
            rank: self.who.rank,
            world_size: self.who.world,
            host: self.who.host.clone(),
            dump_time_ns: now_ns(),
            reason,
            detail,
        };
        self.ring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dump(meta)
    }

    /// `DIR/JOB/rank-R-COMM.json`.
    fn path(&self) -> PathBuf {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        self.dir.join(clean(&self.who.job_id)).join(format!(
            "rank-{}-{}.json",
            self.who.rank,
            clean(&self.who.process_group)
        ))
    }

    /// Writes a dump (to a temporary name, then renamed: a reader never sees half).
    fn write(&self, reason: DumpReason, detail: Option<String>) -> std::io::Result<PathBuf> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.dump(reason, detail).to_json().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
}

/// Every live recorder of the process, for `SIGUSR1` and `GET /flight`.
fn registry() -> &'static Mutex<Vec<Weak<Shared>>> {
    static ALL: OnceLock<Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
}

fn live() -> Vec<Arc<Shared>> {
    let mut all = registry().lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.iter().filter_map(Weak::upgrade).collect()
}

/// The dumps of every communicator of the process, as one JSON array (`GET /flight`),
/// each with its entries from record id `since` on (0: all held).
pub fn dump_all_json(reason: DumpReason, since: u64) -> String {
    let dumps: Vec<String> = live()
        .iter()
        .map(|s| {
            let mut d = s.dump(reason, Some("requested".into()));
            d.entries.retain(|e| e.record_id >= since);
            d.to_json()
        })
        .collect();
    format!("[{}]", dumps.join(","))
}

/// The `since` of a `/flight?since=N` query (0 when absent or unreadable).
pub fn since_of(query: &str) -> u64 {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Writes every communicator's dump; returns the files written and the failures.
pub fn write_all(reason: DumpReason, detail: &str) -> Vec<std::io::Result<PathBuf>> {
    live()
        .iter()
        .map(|s| s.write(reason, Some(detail.to_string())))
        .collect()
}

/// Installs the `SIGUSR1` handler once per process: a thread that writes every
/// communicator's dump when the signal arrives.
fn watch_signal() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "flight recorder: cannot watch SIGUSR1 ({e}); dumps on request only"
                );
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("topoccl-flight".into())
            .spawn(move || {
                let mut signals = signals;
                for _ in signals.forever() {
                    for written in write_all(DumpReason::Signal, "SIGUSR1") {
                        match written {
                            Ok(p) => {
                                eprintln!("topoccl: flight recorder written to {}", p.display())
                            }
                            Err(e) => eprintln!("topoccl: cannot write the flight recorder: {e}"),
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("flight recorder: cannot start the SIGUSR1 thread ({e})");
        }
    });
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A communicator's recorder.
pub(crate) struct Recorder {
    shared: Arc<Shared>,
    templates: HashMap<u64, Call>,
}

impl Recorder {
    /// A recorder for the communicator `process_group` of job `job_id`, or `None` when the
    /// recorder is off.
    pub(crate) fn new(
        cfg: &FlightConfig,
        job_id: &str,
        process_group: &str,
        rank: Rank,
        world: u32,
    ) -> Result<Option<Recorder>> {
        if cfg.entries == 0 {
            return Ok(None);
        }
        let ring =
            Ring::new(cfg.entries).map_err(|e| Error::Config(format!("{ENV_ENTRIES}: {e}")))?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            who: Identity {
                job_id: job_id.to_string(),
                process_group: process_group.to_string(),
                rank,
                world,
                host: host_name(),
            },
            dir: cfg.dir.clone(),
            writing: Mutex::new(()),
        });
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&shared));
        watch_signal();
        Ok(Some(Recorder {
            shared,
            templates: HashMap::new(),
        }))
    }

    /// Call `seq` of `plan` begins; `peers` is asked for once per call shape.
    pub(crate) fn enter(
        &mut self,
        seq: u64,
        plan: &Plan,
        fingerprint: u64,
        timeout: Duration,
        peers: impl FnOnce() -> Vec<Rank>,
    ) -> u64 {
        if self.templates.len() >= MAX_CALL_SHAPES && !self.templates.contains_key(&fingerprint) {
            self.templates.clear();
        }
        let call = self.templates.entry(fingerprint).or_insert_with(|| {
            let spec = plan.spec();
            Call {
                root: spec.collective.rooted().then_some(spec.root),
                algorithm: intern(plan.algorithm().label()).into(),
                peers: Peers::new(&peers()),
                timeout_ms: timeout.as_millis() as u64,
                ..Call::new(
                    0,
                    profiling_name(spec.collective),
                    spec.dtype.name(),
                    spec.count,
                    spec.size_bytes(),
                )
            }
        });
        let call = Call {
            collective_seq_id: seq,
            ..call.clone()
        };
        let t = now_ns();
        let mut ring = self.shared.ring.lock().unwrap_or_else(|e| e.into_inner());
        let id = ring.record_start(call, t);
        ring.mark_started(id, t);
        id
    }

    /// Call `id` returned with `result`.
    pub(crate) fn leave(&self, id: u64, result: &Result<()>) {
        let t = now_ns();
        let mut ring = self.shared.ring.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => ring.mark_completed(id, t),
            Err(e) => ring.mark_failed(id, t, e.to_string()),
        };
    }

    /// This communicator's dump.
    pub(crate) fn dump(&self, reason: DumpReason, detail: Option<String>) -> Dump {
        self.shared.dump(reason, detail)
    }

    /// Writes this communicator's dump after `e` ended a call; returns where.
    pub(crate) fn write_after(&self, e: &Error) -> std::io::Result<PathBuf> {
        let reason = match e {
            Error::Timeout { .. } => DumpReason::Timeout,
            _ => DumpReason::Error,
        };
        self.shared.write(reason, Some(e.to_string()))
    }

    /// Where this communicator's dumps are written.
    pub(crate) fn path(&self) -> PathBuf {
        self.shared.path()
    }
}

/// This host's name (for the dumps), from the kernel; "unknown" if it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// The dumps in `dir` (`*.json`, not descending), parsed; a file that is not a dump is an
/// error naming it and the position.
pub fn read_dir(dir: &Path) -> std::result::Result<Vec<Dump>, String> {
    /// A bound on what `doctor` reads: dumps are at most a few MiB each.
    const MAX_FILES: usize = 100_000;
    const MAX_BYTES: u64 = 256 << 20;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.len() > MAX_FILES {
        return Err(format!(
            "{} holds {} dumps; at most {MAX_FILES} are read at once",
            dir.display(),
            files.len()
        ));
    }
    let mut dumps = Vec::with_capacity(files.len());
    for f in files {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        if len > MAX_BYTES {
            return Err(format!(
                "{}: {len} bytes is larger than a dump can be ({} MiB)",
                f.display(),
                MAX_BYTES >> 20
            ));
        }
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        dumps.push(Dump::parse(&text, &f.display().to_string()).map_err(|e| e.to_string())?);
    }
    Ok(dumps)
}
