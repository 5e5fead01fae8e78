//! Settings of a communicator, with the environment variables that override them.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `TOPOCCL_TIMEOUT` | deadline of every call (`30s`, `500ms`) | 60 s |
//! | `TOPOCCL_INIT_TIMEOUT` | deadline of communicator creation, its measurements included | 120 s |
//! | `TOPOCCL_STREAMS` | TCP connections per peer for data | 1 |
//! | `TOPOCCL_SOCKET_IFNAME` | network interface to listen on | the one that reaches the store |
//! | `TOPOCCL_SECRET` | shared secret (else one is generated and shared through the store) | |
//! | `TOPOCCL_ALGO` | algorithm per collective, `allreduce:rhd;allgather:bruck` | chosen by cost |
//! | `TOPOCCL_RULES` | selection rules: a JSON file, or the JSON itself when it starts with `[` | |
//! | `TOPOCCL_PROBE` | `0` skips the link probes at creation (and the matrix, unless `TOPOCCL_MATRIX=1`) | on |
//! | `TOPOCCL_TOPO` | topology file (TOML or JSON) placing this job's ranks | the measured matrix |
//! | `TOPOCCL_MATRIX` | `0` skips measuring the rank-to-rank link matrix at creation; `1` measures it also with a topology file, and lowers the file's links where the measurement falls short | on up to 64 ranks, without a file and unless `TOPOCCL_PROBE=0` |
//! | `TOPOCCL_SPIN` | how long a waiting call busy-polls before it sleeps (`0` never spins) | 50 µs when this host's ranks fit on its cores, else 0 |
//! | `TOPOCCL_YIELD` | how long a waiting call then goes on polling, giving its core to other processes between looks, before it sleeps (`0`: not at all) | 0 when this host's ranks fit on its cores, else 10 ms |
//! | `TOPOCCL_TRANSPORT` | `auto` (shared memory within a host, TCP between hosts), `tcp`, or `shm` (every peer over shared memory; peers on other hosts are an error) | `auto` |
//! | `TOPOCCL_SHM_RING` | bytes of each shared-memory ring (one per direction of a pair; 4KiB–256MiB) | 1 MiB |
//! | `TOPOCCL_METRICS` | serve Prometheus metrics on this address (`127.0.0.1:9464`; port `0` picks a free one), see [`crate::metrics`] | off |
//! | `TOPOCCL_FLIGHT_ENTRIES`, `TOPOCCL_FLIGHT_DIR` | the flight recorder: calls kept per communicator (`0` off) and where dumps go, see [`crate::flight`] | 2,000; `$TMPDIR/topoccl-flight` |
//! | `TOPOCCL_REPLAN` | `0` keeps the plans chosen at creation even when links slow down; on, a congested link makes every rank re-plan at the same call (needs `TOPOCCL_METRICS`: the live links are watched while metrics are on), see [`crate::replan`] | on |
//! | `TOPOCCL_CONGESTION` | thresholds of the live links' congestion and stall detector: a JSON file, or the JSON itself when it starts with `{` (keys of `topoccl_watch::detect::CongestionConfig`: `throughput_ratio`, `utilisation_max`, `latency_max_s`, `stall_after_s`, …; those left out keep their defaults) | 0.5× baseline, 70% utilisation, 100 ms latency, 100 ms stall |
//! | `TOPOCCL_METRICS_PEERS` | peers shown one by one in the link metrics and views (1–65536); beyond them peers are summed up per host | 64 |
//! | `TOPOCCL_FAULTS` | faults to inject at the transport boundary (`transport::faults` has the grammar) | none |
//! | `TOPOCCL_HEARTBEAT` | the heartbeat's period (`100ms`), `0`/`off` turns it off, see [`crate::health`] | 100 ms |
//! | `TOPOCCL_PROGRESS_DEADLINE` | progress deadlines by level: `on`, one duration, or `host=50ms,rack=200ms,cross=500ms`; `off`, see [`crate::deadlines`] | off |
//! | `TOPOCCL_ELASTIC` | `1`: each communicator watches the store for another rank's revocation (a thread per communicator, a store WAIT each second), so ranks blocked on a hung peer join a `shrink` at once; `topoccl run --elastic` sets it, see [`crate::elastic`] | off |
//! | `TOPOCCL_SHRINK_WAIT` | how long `shrink` waits for a rank that neither registered as a survivor nor is known to have failed (a hung or very late rank) before deciding without it, see [`crate::elastic`] | 10 s |

use crate::auth::JobKey;
use std::time::Duration;

use topoccl_plan::units::{parse_bytes, parse_duration};
use topoccl_watch::detect::CongestionConfig;

use crate::error::{Error, Result};
use crate::transport::faults::{self, Rule};
use crate::transport::{Mode, DEFAULT_RING_BYTES};

#[derive(Clone, Debug)]
pub struct Config {
    pub timeout: Duration,
    pub init_timeout: Duration,
    pub streams: u16,
    pub ifname: Option<String>,
    pub secret: Option<String>,
    pub algo: Option<String>,
    pub rules: Option<String>,
    pub probe: bool,
    /// `None`: decided at creation from the ranks per host and the cores.
    pub spin: Option<Duration>,
    /// Polling while yielding the core after `spin` (`TOPOCCL_YIELD`); `None`: decided at
    /// creation like `spin`.
    pub yielding: Option<Duration>,
    /// Topology file of the job (`TOPOCCL_TOPO`).
    pub topo: Option<String>,
    /// Measure the link matrix at creation; `None`: when the world is small enough.
    pub matrix: Option<bool>,
    /// Which transports to use (`TOPOCCL_TRANSPORT`).
    pub transport: Mode,
    /// Bytes of each shared-memory ring (`TOPOCCL_SHM_RING`).
    pub shm_ring: usize,
    /// Faults to inject (`TOPOCCL_FAULTS`).
    pub faults: Vec<Rule>,
    /// Where to serve Prometheus metrics (`TOPOCCL_METRICS`); `None`: metrics off.
    pub metrics: Option<String>,
    /// The flight recorder (`TOPOCCL_FLIGHT_ENTRIES`, `TOPOCCL_FLIGHT_DIR`).
    pub flight: crate::flight::FlightConfig,
    /// Re-plan around congested links (`TOPOCCL_REPLAN`).
    pub replan: bool,
    /// Thresholds of the live links' detector (`TOPOCCL_CONGESTION`).
    pub congestion: CongestionConfig,
    /// Peers shown one by one in the live links (`TOPOCCL_METRICS_PEERS`).
    pub metrics_peers: usize,
    /// The heartbeat's period (`TOPOCCL_HEARTBEAT`); `None`: heartbeats off.
    pub heartbeat: Option<Duration>,
    /// Progress deadlines by level (`TOPOCCL_PROGRESS_DEADLINE`); `None`: off.
    pub progress: Option<crate::deadlines::ProgressDeadlines>,
    /// How long `shrink` waits for a rank neither registered nor known failed
    /// (`TOPOCCL_SHRINK_WAIT`, [`crate::elastic`]).
    pub shrink_wait: Duration,
    /// Watch the store for revocations (`TOPOCCL_ELASTIC`, [`crate::elastic`]).
    pub elastic: bool,
}

/// The default of [`Config::metrics_peers`].
pub const DEFAULT_METRICS_PEERS: usize = 64;

/// Worlds up to this size measure their link matrix by default: it takes p−1 rounds of
/// pairwise exchanges.
pub const MATRIX_MAX_RANKS: u32 = 64;

impl Default for Config {
    fn default() -> Self {
        Config {
            timeout: Duration::from_secs(60),
            init_timeout: Duration::from_secs(120),
            streams: 1,
            ifname: None,
            secret: None,
            algo: None,
            rules: None,
            probe: true,
            spin: None,
            yielding: None,
            topo: None,
            matrix: None,
            transport: Mode::Auto,
            shm_ring: DEFAULT_RING_BYTES,
            faults: Vec::new(),
            metrics: None,
            flight: Default::default(),
            replan: true,
            congestion: CongestionConfig::default(),
            metrics_peers: DEFAULT_METRICS_PEERS,
            heartbeat: Some(crate::health::DEFAULT_PERIOD),
            progress: None,
            shrink_wait: Duration::from_secs(10),
            elastic: false,
        }
    }
}

/// `TOPOCCL_CONGESTION`: the JSON itself (starting with `{`) or a JSON file's path;
/// unknown keys and values out of range are errors naming the variable and the key.
fn congestion_config(v: &str) -> Result<CongestionConfig> {
    const KEY: &str = "TOPOCCL_CONGESTION";
    let (text, whence) = if v.trim_start().starts_with('{') {
        (v.to_string(), "its JSON".to_string())
    } else {
        let text = std::fs::read_to_string(v.trim()).map_err(|e| {
            Error::Config(format!(
                "{KEY}={v}: cannot read the file ({e}); give a JSON file's path or the JSON \
                 itself, starting with `{{`"
            ))
        })?;
        (text, format!("file {}", v.trim()))
    };
    let cfg: CongestionConfig = serde_json::from_str(&text).map_err(|e| {
        Error::Config(format!(
            "{KEY} ({whence}): {e}; the keys are throughput_ratio, throughput_clear_ratio, \
             utilisation_max, utilisation_clear, latency_max_s, latency_clear_s, \
             stall_after_s, stale_after_s, congestion, stall"
        ))
    })?;
    cfg.validate()
        .map_err(|e| Error::Config(format!("{KEY} ({whence}): {e}")))?;
    Ok(cfg)
}

/// The largest number of data connections per peer.
pub const MAX_STREAMS: u16 = 16;

fn duration(key: &str, v: &str) -> Result<Duration> {
    let s = parse_duration(v).map_err(|e| Error::Config(format!("{key}: {e}")))?;
    if s <= 0.0 || s > 86_400.0 * 7.0 {
        return Err(Error::Config(format!(
            "{key}={v} must be positive and at most a week"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

/// An on/off setting.
fn switch(key: &str, v: &str) -> Result<bool> {
    match v.trim() {
        "0" | "false" | "off" | "no" => Ok(false),
        "1" | "true" | "on" | "yes" => Ok(true),
        _ => Err(Error::Config(format!(
            "{key}={v} must be 0 or 1 (off or on)"
        ))),
    }
}

/// Busy-polling pays off only while every rank of the host has a core of its own: a
/// spinning rank would otherwise take the core of the rank it waits for.
pub fn default_spin(local_ranks: u32) -> Duration {
    default_polling(fits_cores(local_ranks)).0
}

/// With more ranks than cores, a waiting rank polls while yielding its core for a while:
/// the rank it waits for (runnable on that core) then runs at once, where sleeping would
/// cost a wake-up through the scheduler at every message.
pub fn default_yield(local_ranks: u32) -> Duration {
    default_polling(fits_cores(local_ranks)).1
}

/// `(spin, yield)` for a host whose ranks fit on its cores, or do not.
fn default_polling(fits: bool) -> (Duration, Duration) {
    if fits {
        (Duration::from_micros(50), Duration::ZERO)
    } else {
        (Duration::ZERO, Duration::from_millis(10))
    }
}

fn fits_cores(local_ranks: u32) -> bool {
    local_ranks <= std::thread::available_parallelism().map_or(1, |n| n.get()) as u32
}

/// A polling duration from `key=v`, at most `max_s` seconds (`too_long` says what to use).
fn polling(key: &str, v: &str, max_s: f64, too_long: &str) -> Result<Duration> {
    let s = parse_duration(v).map_err(|e| Error::Config(format!("{key}: {e}")))?;
    if s > max_s {
        return Err(Error::Config(format!("{key}={v} is {too_long}")));
    }
    Ok(Duration::from_secs_f64(s))
}

impl Config {
    /// Whether `TOPOCCL_RULES` holds the JSON itself rather than a file's path.
    pub fn rules_inline(&self) -> bool {
        self.rules
            .as_deref()
            .is_some_and(|r| r.trim_start().starts_with('['))
    }

    /// The key of `TOPOCCL_SECRET`, if one was given.
    pub fn job_key(&self) -> Option<JobKey> {
        self.secret
            .as_deref()
            .map(|s| JobKey::from_secret(s.as_bytes()))
    }

    /// Sets `spin` and `yielding` where the user did not, for a host of `local_ranks`.
    pub fn fill_polling(&mut self, local_ranks: u32) {
        let (spin, yielding) = default_polling(fits_cores(local_ranks));
        self.spin.get_or_insert(spin);
        self.yielding.get_or_insert(yielding);
    }

    /// Defaults overridden by the `TOPOCCL_*` environment variables.
    pub fn from_env() -> Result<Config> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let mut c = Config::default();
        if let Some(v) = lookup("TOPOCCL_TIMEOUT") {
            c.timeout = duration("TOPOCCL_TIMEOUT", &v)?;
        }
        if let Some(v) = lookup("TOPOCCL_INIT_TIMEOUT") {
            c.init_timeout = duration("TOPOCCL_INIT_TIMEOUT", &v)?;
        }
        if let Some(v) = lookup("TOPOCCL_SHRINK_WAIT") {
            c.shrink_wait = duration("TOPOCCL_SHRINK_WAIT", &v)?;
        }
        c.elastic = match lookup("TOPOCCL_ELASTIC").as_deref().map(str::trim) {
            None | Some("") | Some("0") => false,
            Some("1") => true,
            Some(v) => {
                return Err(Error::Config(format!(
                    "TOPOCCL_ELASTIC={v}: use 1 (watch for revocations, for shrink) or 0"
                )))
            }
        };
        if let Some(v) = lookup("TOPOCCL_STREAMS") {
            c.streams = v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|s| (1..=MAX_STREAMS).contains(s))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "TOPOCCL_STREAMS={v} must be a number from 1 to {MAX_STREAMS}"
                    ))
                })?;
        }
        c.ifname = lookup("TOPOCCL_SOCKET_IFNAME").filter(|s| !s.is_empty());
        c.secret = lookup("TOPOCCL_SECRET").filter(|s| !s.is_empty());
        c.algo = lookup("TOPOCCL_ALGO").filter(|s| !s.is_empty());
        c.rules = lookup("TOPOCCL_RULES").filter(|s| !s.is_empty());
        if let Some(v) = lookup("TOPOCCL_SPIN") {
            c.spin = Some(polling(
                "TOPOCCL_SPIN",
                &v,
                0.1,
                "more than 100 ms of busy waiting; use a few µs, or 0",
            )?);
        }
        if let Some(v) = lookup("TOPOCCL_YIELD") {
            c.yielding = Some(polling(
                "TOPOCCL_YIELD",
                &v,
                1.0,
                "more than 1 s of polling; use a few ms, or 0",
            )?);
        }
        if let Some(v) = lookup("TOPOCCL_PROBE") {
            c.probe = switch("TOPOCCL_PROBE", &v)?;
        }
        c.topo = lookup("TOPOCCL_TOPO").filter(|s| !s.is_empty());
        if let Some(v) = lookup("TOPOCCL_REPLAN") {
            c.replan = switch("TOPOCCL_REPLAN", &v)?;
        }
        if let Some(v) = lookup("TOPOCCL_CONGESTION").filter(|s| !s.trim().is_empty()) {
            c.congestion = congestion_config(&v)?;
        }
        if let Some(v) = lookup("TOPOCCL_METRICS_PEERS").filter(|s| !s.trim().is_empty()) {
            let max = topoccl_watch::matrix::MAX_TRACKED;
            c.metrics_peers = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "TOPOCCL_METRICS_PEERS={v}: give how many peers the link metrics show \
                         one by one, 1 to {max} (beyond them peers are summed up per host)"
                    ))
                })?;
        }
        if let Some(v) = lookup("TOPOCCL_MATRIX") {
            c.matrix = Some(switch("TOPOCCL_MATRIX", &v)?);
        }
        if let Some(v) = lookup("TOPOCCL_TRANSPORT").filter(|s| !s.is_empty()) {
            c.transport = v
                .parse()
                .map_err(|e| Error::Config(format!("TOPOCCL_TRANSPORT={v}: {e}")))?;
        }
        if let Some(v) = lookup("TOPOCCL_SHM_RING").filter(|s| !s.is_empty()) {
            let range = crate::transport::RING_BYTES_RANGE;
            c.shm_ring = parse_bytes(&v)
                .ok()
                .map(|b| b as usize)
                .filter(|b| range.contains(b))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "TOPOCCL_SHM_RING={v} must be a size from {} KiB to {} MiB",
                        range.start() >> 10,
                        range.end() >> 20
                    ))
                })?
                // Rings are whole cache lines.
                .next_multiple_of(64);
        }
        if let Some(v) = lookup(crate::metrics::ENV_METRICS).filter(|s| !s.trim().is_empty()) {
            v.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                Error::Config(format!(
                    "{}={v} is not an address to listen on; give IP:PORT, e.g. \
                     127.0.0.1:9464 (port 0 picks a free one)",
                    crate::metrics::ENV_METRICS
                ))
            })?;
            c.metrics = Some(v.trim().to_string());
        }
        c.flight = crate::flight::FlightConfig::from_lookup(lookup)?;
        if let Some(v) = lookup("TOPOCCL_HEARTBEAT") {
            c.heartbeat = crate::health::parse_period(&v)?;
        }
        if let Some(v) = lookup(crate::deadlines::ENV) {
            c.progress = crate::deadlines::parse(&v)?;
        }
        if let Some(v) = lookup("TOPOCCL_FAULTS").filter(|s| !s.trim().is_empty()) {
            c.faults = faults::parse(&v).map_err(|e| {
                Error::Config(format!(
                    "TOPOCCL_FAULTS={v}: {e} (rules look like delay=5ms@rank1->rank2, \
                     drop@rank3:after=10MB, corrupt@rank0->rank1:once, rate=50MB/s@*, stall@2)"
                ))
            })?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_errors() {
        let c = Config::from_lookup(&|k| match k {
            "TOPOCCL_TIMEOUT" => Some("3s".into()),
            "TOPOCCL_STREAMS" => Some("4".into()),
            "TOPOCCL_PROBE" => Some("0".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.streams, 4);
        assert!(!c.probe);
        let e = Config::from_lookup(&|k| (k == "TOPOCCL_TIMEOUT").then(|| "soon".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOPOCCL_TIMEOUT"), "{e}");
        let e = Config::from_lookup(&|k| (k == "TOPOCCL_STREAMS").then(|| "99".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 16"), "{e}");
        let e = Config::from_lookup(&|k| (k == "TOPOCCL_TRANSPORT").then(|| "rdma".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use auto, tcp or shm"), "{e}");
        let e = Config::from_lookup(&|k| (k == "TOPOCCL_FAULTS").then(|| "drop@rank1->x".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at character 13"), "{e}");
        let c = Config::from_lookup(&|k| match k {
            "TOPOCCL_TRANSPORT" => Some("shm".into()),
            "TOPOCCL_SHM_RING" => Some("100KiB".into()),
            "TOPOCCL_FAULTS" => Some("stall@1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (c.transport, c.shm_ring, c.faults.len()),
            (Mode::Shm, 102400, 1)
        );
        let c = Config::from_lookup(&|k| match k {
            "TOPOCCL_SPIN" => Some("20us".into()),
            "TOPOCCL_YIELD" => Some("2ms".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (c.spin, c.yielding),
            (
                Some(Duration::from_micros(20)),
                Some(Duration::from_millis(2))
            )
        );
        for (v, says) in [("5s", "more than 1 s"), ("often", "TOPOCCL_YIELD")] {
            let e = Config::from_lookup(&|k| (k == "TOPOCCL_YIELD").then(|| v.into()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{v}: {e}");
        }
    }

    #[test]
    fn oversubscribed_hosts_yield_instead_of_spinning() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        assert_eq!(default_spin(cores), Duration::from_micros(50));
        assert_eq!(default_yield(cores), Duration::ZERO);
        assert_eq!(default_spin(cores + 1), Duration::ZERO);
        assert_eq!(default_yield(cores + 1), Duration::from_millis(10));
    }

    #[test]
    fn congestion_thresholds_and_peer_cap() {
        let one = |key: &'static str, value: String| {
            Config::from_lookup(&move |k| (k == key).then(|| value.clone()))
        };
        let c = one(
            "TOPOCCL_CONGESTION",
            r#"{"utilisation_max": 0.9, "utilisation_clear": 0.8, "stall_after_s": 0.25}"#.into(),
        )
        .unwrap();
        assert_eq!(c.congestion.utilisation_max, 0.9);
        assert_eq!(c.congestion.stall_after_s, 0.25);
        assert_eq!(
            c.congestion.throughput_ratio, 0.5,
            "keys left out keep their defaults"
        );
        // A file works as well as the JSON itself.
        let path =
            std::env::temp_dir().join(format!("topoccl-congestion-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"latency_max_s": 0.5}"#).unwrap();
        let c = one("TOPOCCL_CONGESTION", path.display().to_string()).unwrap();
        assert_eq!(c.congestion.latency_max_s, 0.5);
        let _ = std::fs::remove_file(&path);
        for (value, says) in [
            (
                r#"{"utilisation_mx": 0.9}"#,
                "unknown field `utilisation_mx`",
            ),
            (r#"{"throughput_ratio": 0}"#, "congestion.throughput_ratio"),
            (r#"{"utilisation_max": 0.5}"#, "utilisation_clear"),
            (r#"{"stall_after_s": "1s"}"#, "invalid type"),
            ("/no/such/file.json", "cannot read the file"),
        ] {
            let e = one("TOPOCCL_CONGESTION", value.into())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("TOPOCCL_CONGESTION") && e.contains(says),
                "{value}: {e}"
            );
        }
        assert_eq!(
            one("TOPOCCL_METRICS_PEERS", "8".into())
                .unwrap()
                .metrics_peers,
            8
        );
        for bad in ["0", "65537", "many", "-1"] {
            let e = one("TOPOCCL_METRICS_PEERS", bad.into())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("TOPOCCL_METRICS_PEERS") && e.contains("1 to 65536"),
                "{e}"
            );
        }
    }
}
