//! Prometheus metrics of a rank, and the HTTP endpoint that serves them.
//!
//! Off unless `TOPOCCL_METRICS=ADDR` is set (or [`Config::metrics`](crate::Config)): then
//! the first communicator of the process starts one exporter, which every communicator of
//! the process (splits included) records into, and serves it on `ADDR` (`127.0.0.1:0`
//! picks a free port; world communicators publish the address bound in the store under
//! `topoccl/JOB/metrics/RANK`, where `topoccl run --metrics` finds it).
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `topoccl_collective_duration_seconds` | histogram | rank, collective, algorithm, size | time of each call, entry to return |
//! | `topoccl_collectives_total` | counter | rank, collective, algorithm, size | calls that returned successfully |
//! | `topoccl_collective_bytes_total` | counter | rank, collective, algorithm, size | bytes of those calls (nccl-tests' size) |
//! | `topoccl_errors_total` | counter | rank, kind | failed calls by [`Error::kind`] |
//! | `topoccl_oldest_call_in_flight_seconds` | gauge | rank | age of the oldest call not yet returned (0 when idle): the hang detector's input |
//! | `topoccl_link_throughput_bytes_per_second` | gauge | rank, peer | the link's throughput: measured at creation, then achieved by real traffic (`crate::live`) |
//! | `topoccl_link_latency_seconds` | gauge | rank, peer | the link's latency, likewise |
//! | `topoccl_link_congested` | gauge | rank, peer | 1 while the congestion detector holds the link congested |
//! | `topoccl_alerts_total` | counter | rank, kind | alerts the detectors raised (`congestion`, `stall`) |
//! | `topoccl_replans_total` | counter | rank | re-plans around congested links agreed by every rank (`crate::replan`) |
//!
//! Every label is bounded: `collective` and `algorithm` come from the plan core's tables
//! (an algorithm's [`label`](topoccl_plan::Algorithm::label), never a rank order),
//! `size` is one of [`SIZE_BUCKETS`] (×4 steps, 256 B to 1 GiB, then `+Inf`), `kind` one of
//! [`Error::kind`]'s, `peer` a world rank up to `TOPOCCL_METRICS_PEERS` peers (64), then
//! `host:NAME` for the rest of a host's peers summed up (64 hosts), then `other`
//! (`crate::live`). A process holds at most [`MAX_COMMUNICATORS`] in-flight slots.
//!
//! Recording costs a clock read on entry and return, one hash lookup of the call's
//! cached handles, a histogram observation (an uncontended lock) and two atomic adds.
//!
//! The endpoint answers `GET /metrics` (OpenMetrics when asked for, else Prometheus text
//! 0.0.4), `GET /flight` (the flight recorders, [`crate::flight`]), `GET /links` (the live
//! links, [`Metrics::links_json`]) and 404 elsewhere; it is
//! meant for loopback or a trusted network (it takes no secret: it shows sizes and
//! timings, never data).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use topoccl_plan::{Plan, Rank};

use crate::error::{Error, Result};

/// The environment variable that turns metrics on, with the address to serve them on.
pub const ENV_METRICS: &str = "TOPOCCL_METRICS";
/// Communicators of one process whose in-flight call the exporter watches.
pub const MAX_COMMUNICATORS: usize = 256;
/// Upper bounds of the `size` label, in bytes (the last bucket is `+Inf`).
pub const SIZE_BUCKETS: [(u64, &str); 12] = [
    (256, "256B"),
    (1 << 10, "1KiB"),
    (4 << 10, "4KiB"),
    (16 << 10, "16KiB"),
    (64 << 10, "64KiB"),
    (256 << 10, "256KiB"),
    (1 << 20, "1MiB"),
    (4 << 20, "4MiB"),
    (16 << 20, "16MiB"),
    (64 << 20, "64MiB"),
    (256 << 20, "256MiB"),
    (1 << 30, "1GiB"),
];
/// Call handles a communicator caches (one per call shape); the cache starts over beyond.
const MAX_CALL_SHAPES: usize = 512;

/// The `size` label of a call of `bytes`.
pub fn size_bucket(bytes: u64) -> &'static str {
    SIZE_BUCKETS
        .iter()
        .find(|(limit, _)| bytes <= *limit)
        .map_or("+Inf", |(_, name)| name)
}

/// Bucket bounds of the duration histogram: 10 µs to about 42 s in ×4 steps.
fn duration_buckets() -> impl Iterator<Item = f64> {
    (0..12).map(|i| 10e-6 * 4f64.powi(i))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rank: Rank,
    collective: &'static str,
    algorithm: String,
    size: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    rank: Rank,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RankLabels {
    rank: Rank,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    rank: Rank,
    peer: String,
}

type HistogramFamily = Family<CallLabels, Histogram, fn() -> Histogram>;

/// One process's metrics.
pub struct Metrics {
    registry: Registry,
    duration: HistogramFamily,
    calls: Family<CallLabels, Counter>,
    bytes: Family<CallLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    oldest: Family<RankLabels, Gauge<f64, AtomicU64>>,
    link_bandwidth: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    link_latency: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    congested: Family<PeerLabels, Gauge>,
    alerts: Family<ErrorLabels, Counter>,
    replans: Family<RankLabels, Counter>,
    /// Per communicator: its rank and when its current call began (nanoseconds after
    /// `epoch`, 0 when idle).
    in_flight: Mutex<Vec<(Rank, std::sync::Weak<AtomicU64>)>>,
    /// Per communicator watching its links: their live figures as JSON (`GET /links`),
    /// written by `crate::live` after calls. At most [`MAX_COMMUNICATORS`].
    links: Mutex<Vec<std::sync::Weak<Mutex<String>>>>,
    epoch: Instant,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(duration_buckets()));
        let calls = Family::<CallLabels, Counter>::default();
        let bytes = Family::<CallLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let oldest = Family::<RankLabels, Gauge<f64, AtomicU64>>::default();
        let link_bandwidth = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        let link_latency = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        let congested = Family::<PeerLabels, Gauge>::default();
        let alerts = Family::<ErrorLabels, Counter>::default();
        let replans = Family::<RankLabels, Counter>::default();
        registry.register_with_unit(
            "topoccl_collective_duration",
            "Time of each collective call from entry to return",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register(
            "topoccl_collectives",
            "Collective calls that returned successfully",
            calls.clone(),
        );
        registry.register_with_unit(
            "topoccl_collective",
            "Bytes of the collective calls that returned successfully (nccl-tests' size)",
            Unit::Bytes,
            bytes.clone(),
        );
        registry.register(
            "topoccl_errors",
            "Collective calls that failed, by kind of error",
            errors.clone(),
        );
        registry.register_with_unit(
            "topoccl_oldest_call_in_flight",
            "Age of the oldest call that has not returned yet, 0 when idle",
            Unit::Seconds,
            oldest.clone(),
        );
        registry.register(
            "topoccl_link_throughput_bytes_per_second",
            "Bandwidth of the link to a peer as measured",
            link_bandwidth.clone(),
        );
        registry.register_with_unit(
            "topoccl_link_latency",
            "Latency of the link to a peer as measured",
            Unit::Seconds,
            link_latency.clone(),
        );
        registry.register(
            "topoccl_link_congested",
            "Whether the congestion detector holds the link to a peer congested (1) or not (0)",
            congested.clone(),
        );
        registry.register(
            "topoccl_alerts",
            "Alerts raised by the detectors, by kind",
            alerts.clone(),
        );
        registry.register(
            "topoccl_replans",
            "Re-plans around congested links that every rank agreed on",
            replans.clone(),
        );
        Metrics {
            registry,
            congested,
            alerts,
            replans,
            duration,
            calls,
            bytes,
            errors,
            oldest,
            link_bandwidth,
            link_latency,
            in_flight: Mutex::new(Vec::new()),
            links: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        }
    }

    /// The metrics in OpenMetrics text, the in-flight ages read now.
    pub fn encode(&self) -> String {
        let now = self.nanos(Instant::now());
        let mut oldest: HashMap<Rank, f64> = HashMap::new();
        if let Ok(mut slots) = self.in_flight.lock() {
            slots.retain(|(rank, slot)| match slot.upgrade() {
                Some(start) => {
                    let start = start.load(Ordering::Relaxed);
                    let age = if start == 0 {
                        0.0
                    } else {
                        now.saturating_sub(start) as f64 * 1e-9
                    };
                    let e = oldest.entry(*rank).or_insert(0.0);
                    *e = e.max(age);
                    true
                }
                None => false,
            });
        }
        for (rank, age) in oldest {
            self.oldest.get_or_create(&RankLabels { rank }).set(age);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn nanos(&self, t: Instant) -> u64 {
        // Never 0: 0 means idle.
        (t.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }
}

impl Metrics {
    /// The live links of `rank` (`crate::live`): `(peer label, achieved bytes per
    /// second, latency seconds)`, a figure left as it was where there is no sample yet.
    pub(crate) fn set_live_links(&self, rank: Rank, links: &[(String, Option<f64>, Option<f64>)]) {
        for (peer, bw, lat) in links {
            let l = PeerLabels {
                rank,
                peer: peer.clone(),
            };
            if let Some(bw) = bw {
                self.link_bandwidth.get_or_create(&l).set(*bw);
            }
            if let Some(lat) = lat {
                self.link_latency.get_or_create(&l).set(*lat);
            }
        }
    }

    /// The congestion detector's verdict on the link from `rank` to `peer`.
    pub(crate) fn set_congested(&self, rank: Rank, peer: &str, congested: bool) {
        self.congested
            .get_or_create(&PeerLabels {
                rank,
                peer: peer.to_string(),
            })
            .set(i64::from(congested));
    }

    /// A slot for one communicator's live links as JSON, listed by [`Self::links_json`]
    /// while the communicator holds it (beyond [`MAX_COMMUNICATORS`] it is not listed).
    pub(crate) fn links_slot(&self) -> Arc<Mutex<String>> {
        let slot = Arc::new(Mutex::new(String::new()));
        if let Ok(mut all) = self.links.lock() {
            all.retain(|s| s.strong_count() > 0);
            if all.len() < MAX_COMMUNICATORS {
                all.push(Arc::downgrade(&slot));
            }
        }
        slot
    }

    /// `GET /links`: a JSON array with one object per communicator watching its links
    /// (see `crate::live`).
    pub fn links_json(&self) -> String {
        let all: Vec<String> = self
            .links
            .lock()
            .map(|all| {
                all.iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .filter_map(|s| s.lock().ok().map(|s| s.clone()))
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        format!("[{}]", all.join(","))
    }

    /// `rank` re-planned around congested links.
    pub(crate) fn count_replan(&self, rank: Rank) {
        self.replans.get_or_create(&RankLabels { rank }).inc();
    }

    /// An alert of `kind` fired at `rank`.
    pub(crate) fn count_alert(&self, rank: Rank, kind: &'static str) {
        self.alerts.get_or_create(&ErrorLabels { rank, kind }).inc();
    }
}

/// The handles of one call shape: looked up once, then atomics only.
struct CallMeter {
    duration: Histogram,
    calls: Counter,
    bytes: Counter,
    size: u64,
}

/// A communicator's view of the process's metrics.
pub(crate) struct Meter {
    metrics: Arc<Metrics>,
    rank: Rank,
    calls: HashMap<u64, CallMeter>,
    /// When this communicator's current call began (see [`Metrics::in_flight`]).
    start: Arc<AtomicU64>,
}

impl Meter {
    pub(crate) fn new(metrics: Arc<Metrics>, rank: Rank) -> Meter {
        let start = Arc::new(AtomicU64::new(0));
        if let Ok(mut slots) = metrics.in_flight.lock() {
            slots.retain(|(_, s)| s.strong_count() > 0);
            if slots.len() < MAX_COMMUNICATORS {
                slots.push((rank, Arc::downgrade(&start)));
            }
        }
        Meter {
            metrics,
            rank,
            calls: HashMap::new(),
            start,
        }
    }

    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A call begins.
    pub(crate) fn enter(&self) -> Instant {
        let now = Instant::now();
        self.start.store(self.metrics.nanos(now), Ordering::Relaxed);
        now
    }

    /// The call of `plan` (identified by `fingerprint`) that began at `began` returned.
    pub(crate) fn leave(&mut self, plan: &Plan, fingerprint: u64, began: Instant, ok: &Result<()>) {
        let elapsed = began.elapsed();
        self.start.store(0, Ordering::Relaxed);
        match ok {
            Ok(()) => {
                let m = self.call(plan, fingerprint);
                m.duration.observe(elapsed.as_secs_f64());
                m.calls.inc();
                m.bytes.inc_by(m.size);
            }
            Err(e) => self.error(e),
        }
    }

    /// A call failed before or while running.
    pub(crate) fn error(&self, e: &Error) {
        self.metrics
            .errors
            .get_or_create(&ErrorLabels {
                rank: self.rank,
                kind: e.kind(),
            })
            .inc();
    }

    fn call(&mut self, plan: &Plan, fingerprint: u64) -> &CallMeter {
        if self.calls.len() >= MAX_CALL_SHAPES && !self.calls.contains_key(&fingerprint) {
            self.calls.clear();
        }
        let (metrics, rank) = (&self.metrics, self.rank);
        self.calls.entry(fingerprint).or_insert_with(|| {
            let spec = plan.spec();
            let size = spec.size_bytes();
            let labels = CallLabels {
                rank,
                collective: spec.collective.name(),
                algorithm: plan.algorithm().label(),
                size: size_bucket(size),
            };
            CallMeter {
                duration: metrics.duration.get_or_create(&labels).clone(),
                calls: metrics.calls.get_or_create(&labels).clone(),
                bytes: metrics.bytes.get_or_create(&labels).clone(),
                size,
            }
        })
    }
}

/// The process's exporter: its metrics and the address they are served on.
pub struct Exporter {
    pub metrics: Arc<Metrics>,
    /// The address bound (the port chosen when `:0` was asked for).
    pub addr: std::net::SocketAddr,
}

static EXPORTER: OnceLock<std::result::Result<Arc<Exporter>, String>> = OnceLock::new();

/// The process's exporter, started on `addr` by the first caller (later callers get the
/// same one, whatever address they name). `setting` names where `addr` came from, for
/// errors.
pub fn exporter(addr: &str, setting: &str) -> Result<Arc<Exporter>> {
    EXPORTER
        .get_or_init(|| start(addr).map_err(|e| format!("{setting}={addr}: {e}")))
        .clone()
        .map_err(Error::Config)
}

fn start(addr: &str) -> std::result::Result<Arc<Exporter>, String> {
    let metrics = Arc::new(Metrics::new());
    let serving = metrics.clone();
    let flight: Page = (
        "/flight",
        "application/json",
        Box::new(|query| {
            crate::flight::dump_all_json(
                topoccl_watch::flight::DumpReason::Request,
                crate::flight::since_of(query),
            )
        }),
    );
    let listing = metrics.clone();
    let links: Page = (
        "/links",
        "application/json",
        Box::new(move |_| listing.links_json()),
    );
    let health: Page = (
        "/health",
        "application/json",
        Box::new(|_| crate::health::health_json()),
    );
    let addr = serve(addr, move || serving.encode(), vec![flight, links, health])?;
    Ok(Arc::new(Exporter { metrics, addr }))
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A page besides `/metrics`: its path, content type, and what makes its body from the
/// request's query string (after `?`, empty without).
pub type Page = (
    &'static str,
    &'static str,
    Box<dyn Fn(&str) -> String + Send>,
);

/// Serves `GET /metrics` on `addr` (IP:PORT; port 0 picks a free one) from a thread of
/// its own, answering with what `body` returns at each request, and `pages`; any other
/// path gets 404. Returns the address bound. The launcher serves its job's merged metrics
/// with it; a rank's exporter adds `/flight` (its flight recorders' dumps, a JSON array).
pub fn serve(
    addr: &str,
    body: impl Fn() -> String + Send + 'static,
    pages: Vec<Page>,
) -> std::result::Result<std::net::SocketAddr, String> {
    let sock: std::net::SocketAddr = addr.trim().parse().map_err(|_| {
        "not an address to listen on; give IP:PORT, e.g. 127.0.0.1:9464 (port 0 picks a free one)"
            .to_string()
    })?;
    let server = tiny_http::Server::http(sock).map_err(|e| {
        format!("cannot listen there: {e} (is the port in use? port 0 picks a free one)")
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| "the server did not bind an IP address".to_string())?;
    std::thread::Builder::new()
        .name("topoccl-metrics".into())
        .spawn(move || answer(server, body, pages))
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    Ok(bound)
}

fn answer(server: tiny_http::Server, body: impl Fn() -> String, pages: Vec<Page>) {
    let header = |v: &str| {
        tiny_http::Header::from_bytes(&b"Content-Type"[..], v.as_bytes()).expect("a valid header")
    };
    for req in server.incoming_requests() {
        let (path, query) = req.url().split_once('?').unwrap_or((req.url(), ""));
        let openmetrics = req.headers().iter().any(|h| {
            h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text")
        });
        let response = match (req.method(), path) {
            (tiny_http::Method::Get, "/metrics") if openmetrics => {
                tiny_http::Response::from_string(body()).with_header(header(OPENMETRICS))
            }
            (tiny_http::Method::Get, "/metrics") => {
                tiny_http::Response::from_string(to_prometheus_text(&body()))
                    .with_header(header(PROMETHEUS_TEXT))
            }
            (tiny_http::Method::Get, p) if pages.iter().any(|(at, ..)| *at == p) => {
                let (_, kind, make) = pages.iter().find(|(at, ..)| *at == p).expect("found");
                tiny_http::Response::from_string(make(query)).with_header(header(kind))
            }
            _ => tiny_http::Response::from_string(format!(
                "no such page: {path} (this endpoint serves GET /metrics{})\n",
                pages
                    .iter()
                    .map(|(p, ..)| format!(", {p}"))
                    .collect::<String>()
            ))
            .with_status_code(404)
            .with_header(header("text/plain; charset=utf-8")),
        };
        // A client that went away is its own problem.
        let _ = req.respond(response);
    }
}

/// The store key under which a world communicator's rank publishes its metrics address.
pub fn store_key(job_id: &str, rank: Rank) -> String {
    format!("topoccl/{job_id}/metrics/{rank}")
}

/// One metric family of an exposition: its name, metadata lines and samples.
struct FamilyText {
    name: String,
    kind: String,
    meta: Vec<String>,
    samples: Vec<String>,
}

/// The families of OpenMetrics texts, in order of first appearance, samples of later
/// texts after earlier ones. Lines that are not metadata, samples or `# EOF` are dropped;
/// a text may be cut short.
fn families(texts: &[String]) -> Vec<FamilyText> {
    let mut families: Vec<FamilyText> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let mut words = meta.splitn(3, ' ');
                let (Some(what), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                if !matches!(what, "HELP" | "TYPE" | "UNIT") {
                    continue;
                }
                let i = *index.entry(name.to_string()).or_insert_with(|| {
                    families.push(FamilyText {
                        name: name.to_string(),
                        kind: String::new(),
                        meta: Vec::new(),
                        samples: Vec::new(),
                    });
                    families.len() - 1
                });
                let family = &mut families[i];
                if what == "TYPE" {
                    family.kind = words.next().unwrap_or("").to_string();
                }
                if !family.meta.iter().any(|l| l == line) {
                    family.meta.push(line.to_string());
                }
                current = Some(i);
            } else if !line.starts_with('#') {
                if let Some(i) = current {
                    families[i].samples.push(line.to_string());
                }
            }
        }
    }
    families
}

/// Joins OpenMetrics texts of several ranks into one exposition: each family's metadata
/// (`# HELP`, `# TYPE`, `# UNIT`) once, then the samples of every text in order, one
/// `# EOF` at the end. The ranks' samples carry a `rank` label, so series do not collide.
pub fn merge_expositions(texts: &[String]) -> String {
    let mut out = String::new();
    for f in families(texts) {
        for l in f.meta.iter().chain(&f.samples) {
            let _ = writeln!(out, "{l}");
        }
    }
    out.push_str("# EOF\n");
    out
}

/// OpenMetrics text as Prometheus' older text format (`text/plain; version=0.0.4`), for
/// clients that do not ask for OpenMetrics (`curl`, `promtool check metrics`): a counter's
/// family is named with its `_total`, `# UNIT` and `# EOF` are left out.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::new();
    for f in families(&[openmetrics.to_string()]) {
        let name = if f.kind == "counter" {
            format!("{}_total", f.name)
        } else {
            f.name.clone()
        };
        for l in &f.meta {
            let rest = &l[2..];
            let (what, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let tail = tail.strip_prefix(f.name.as_str()).unwrap_or(tail);
            match what {
                "UNIT" => continue,
                "TYPE" if f.kind == "unknown" => {
                    let _ = writeln!(out, "# TYPE {name} untyped");
                }
                _ => {
                    let _ = writeln!(out, "# {what} {name}{tail}");
                }
            }
        }
        for l in &f.samples {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

/// Content type of Prometheus' older text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Fetches `GET /metrics` (OpenMetrics) from a rank's endpoint, within `timeout`.
pub fn scrape(addr: std::net::SocketAddr, timeout: Duration) -> std::io::Result<String> {
    http_get(addr, "/metrics", OPENMETRICS, timeout)
}

/// A minimal HTTP/1.0 `GET` of `path` with `Accept: accept`: the body of a 200 answer
/// (at most 64 MiB), an error otherwise; every step within `timeout`.
pub fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    http(
        addr,
        "GET",
        path,
        &format!("Accept: {accept}\r\n"),
        "",
        timeout,
    )
}

/// A minimal HTTP/1.0 `POST` of a JSON `body` to `path` (an Alertmanager-style webhook):
/// the answer's body when it is 2xx, an error otherwise; every step within `timeout`.
pub fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let headers = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    http(addr, "POST", path, &headers, body, timeout)
}

fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n{body}"
    )?;
    let mut answer = Vec::new();
    s.take(64 << 20).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid(format!("{addr}{path}: no end of the HTTP header")))?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let ok = if method == "GET" {
        code == "200"
    } else {
        code.starts_with('2')
    };
    if !ok {
        return Err(invalid(format!("{addr}{path} answered {status:?}")));
    }
    Ok(rest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_fall_in_bounded_buckets() {
        assert_eq!(size_bucket(0), "256B");
        assert_eq!(size_bucket(256), "256B");
        assert_eq!(size_bucket(257), "1KiB");
        assert_eq!(size_bucket(16 << 20), "16MiB");
        assert_eq!(size_bucket((16 << 20) + 1), "64MiB");
        assert_eq!(size_bucket(u64::MAX), "+Inf");
    }

    #[test]
    fn merging_keeps_metadata_once_and_every_sample() {
        let a = "# HELP x_total X.\n# TYPE x_total counter\nx_total{rank=\"0\"} 1\n# EOF\n";
        let b = "# HELP x_total X.\n# TYPE x_total counter\nx_total{rank=\"1\"} 2\n\
                 # HELP y Y.\n# TYPE y gauge\ny{rank=\"1\"} 3\n# EOF\n";
        let m = merge_expositions(&[a.to_string(), b.to_string()]);
        assert_eq!(
            m,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{rank=\"0\"} 1\n\
             x_total{rank=\"1\"} 2\n# HELP y Y.\n# TYPE y gauge\ny{rank=\"1\"} 3\n# EOF\n"
        );
        // Garbage and truncation do not panic, and keep one EOF.
        let m = merge_expositions(&["# \n#\nx 1\n# TYPE".into(), "\u{0}".into()]);
        assert_eq!(m.matches("# EOF").count(), 1);
    }

    #[test]
    fn the_older_text_format_names_counters_with_total() {
        let om = "# HELP x X.\n# TYPE x counter\n# UNIT x bytes\nx_total{rank=\"0\"} 1\n\
                  # HELP g G.\n# TYPE g gauge\ng 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{rank=\"0\"} 1\n\
             # HELP g G.\n# TYPE g gauge\ng 2\n"
        );
    }

    proptest::proptest! {
        #[test]
        fn merging_any_text_does_not_panic(texts in proptest::collection::vec(".{0,200}", 0..4)) {
            let m = merge_expositions(&texts);
            proptest::prop_assert!(m.ends_with("# EOF\n"));
            for t in &texts {
                let _ = to_prometheus_text(t);
            }
        }
    }

    #[test]
    fn records_calls_and_errors_with_bounded_labels() {
        use topoccl_plan::{Algorithm, Collective, CollectiveSpec};
        let metrics = Arc::new(Metrics::new());
        let mut meter = Meter::new(metrics.clone(), 3);
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 1024);
        let plan = topoccl_plan::algo::build(spec, Algorithm::Ring, Default::default()).unwrap();
        for _ in 0..3 {
            let t = meter.enter();
            meter.leave(&plan, 7, t, &Ok(()));
        }
        meter.error(&Error::Busy("x".into()));
        let text = metrics.encode();
        assert!(text.contains(
            "topoccl_collectives_total{rank=\"3\",collective=\"allreduce\",algorithm=\"ring\",size=\"4KiB\"} 3"
        ), "{text}");
        assert!(text.contains(
            "topoccl_collective_bytes_total{rank=\"3\",collective=\"allreduce\",algorithm=\"ring\",size=\"4KiB\"} 12288"
        ), "{text}");
        assert!(
            text.contains("topoccl_errors_total{rank=\"3\",kind=\"busy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("topoccl_oldest_call_in_flight_seconds{rank=\"3\"} 0.0"),
            "{text}"
        );
        // A call in flight ages.
        let _t = meter.enter();
        std::thread::sleep(Duration::from_millis(20));
        let text = metrics.encode();
        let age: f64 = text
            .lines()
            .find(|l| l.starts_with("topoccl_oldest_call_in_flight_seconds{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(age >= 0.019, "{age}");
    }
}
