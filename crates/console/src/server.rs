//! The console's HTTP shell: the JSON API, the token check, the job poller and the
//! embedded page. Everything it shows is computed by the pure modules.
//!
//! | route | what |
//! |---|---|
//! | `GET /` , `GET /assets/{file}` | the page (embedded at build time) |
//! | `GET /api/topology[?pod=N]` | the layout ([`crate::layout`]), thresholds, pods; 422 with the file's error |
//! | `GET /api/links` | live figures per drawn edge, the job's status |
//! | `GET /api/calls` | timelines: the job's flight recorders, or the `--trace` file |
//! | `GET /api/alerts` | alerts as they fire and resolve, with reasons |
//! | `POST /api/sim` | what-if ([`crate::whatif`]); 403 unless allowed, 400 on a bad request |
//!
//! # Security
//!
//! With a token set, every route (the page too) needs it: `Authorization: Bearer T`, the
//! cookie the page sets, or `?token=T` (which sets the cookie, `HttpOnly`,
//! `SameSite=Strict`); anything else gets 401. Tokens are compared in constant time.
//! What-if is refused (403) unless allowed. Nothing of the job but figures, names and
//! call records is passed on: the poller rebuilds every answer from parsed fields, never
//! forwarding the job's text.
//!
//! # Polling
//!
//! A thread polls the job's merged metrics every [`Config::poll_every`] (each request
//! within [`JOB_TIMEOUT`]) and its flight recorders every other time; it stops when the
//! server's state is dropped. A job that does not answer is reported in `/api/links`'
//! `job` (error, attempts) and polled again at the same pace.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use topoccl_topo::{Router as TopoRouter, Topology};
use topoccl_watch::flight::Dump;

use crate::calls::{self, Timeline};
use crate::health::Thresholds;
use crate::layout::{layout, Layout, Scope};
use crate::live::{self, AlertLog, EdgeFigures, LoggedAlert, PairFigures};
use crate::matrix::{self, RankView};
use crate::whatif::{self, WhatIf};

/// One request to the job's launcher may take this long.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(2);
/// The cookie that carries the token after `?token=`.
pub const COOKIE: &str = "topoccl_console";

mod assets {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Whether the embedded page is the real one (built by `scripts/build-console.sh`) or the
/// placeholder that says how to build it.
pub fn assets_built() -> bool {
    assets::BUILT
}

/// What the console shows and how it is guarded.
#[derive(Clone, Debug)]
pub struct Config {
    /// The topology, or why its file could not be read (with the file's line).
    pub topology: Option<Result<Arc<Topology>, String>>,
    /// The job: the launcher's metrics address (`topoccl run|bench --metrics ADDR`), or
    /// its ranks' own exporters (`TOPOCCL_METRICS`), in rank order. Empty: no job.
    pub job: Vec<SocketAddr>,
    /// Required on every request when set.
    pub token: Option<String>,
    pub allow_what_if: bool,
    /// A simulator trace's timeline (`topoccl sim --trace`), shown when no job is.
    pub trace: Option<Timeline>,
    /// How often the job is polled.
    pub poll_every: Duration,
}

/// What `/api/links` says about the job.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobStatus {
    /// `None` when no job was given.
    pub addr: Option<String>,
    pub up: bool,
    /// The last poll's failure, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Polls that failed in a row.
    pub failed_polls: u64,
    /// Unix ns of the last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ok_ns: Option<u64>,
    pub ranks_up: u32,
}

#[derive(Default)]
struct LiveData {
    job: JobStatus,
    pairs: Vec<PairFigures>,
    edges: Vec<EdgeFigures>,
    alerts: AlertLog,
    flight: Option<Timeline>,
    updated_ns: u64,
}

struct AppState {
    config: Config,
    /// The whole topology's layout and its JSON, computed once.
    full: Option<(Layout, axum::body::Bytes)>,
    live: Mutex<LiveData>,
    sim_busy: tokio::sync::Semaphore,
}

/// Errors as JSON: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct E {
        error: String,
    }
    (
        status,
        Json(E {
            error: message.into(),
        }),
    )
        .into_response()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The body of `/api/topology`.
#[derive(Serialize)]
struct TopologyBody<'a> {
    name: &'a str,
    world: u32,
    nodes_in_model: usize,
    links_in_model: usize,
    thresholds: Thresholds,
    what_if: bool,
    job: Option<String>,
    layout: &'a Layout,
}

/// The job's addresses as shown: `a` or `a,b,c`.
fn job_name(job: &[SocketAddr]) -> Option<String> {
    (!job.is_empty()).then(|| {
        job.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn topology_json(t: &Topology, l: &Layout, config: &Config) -> Vec<u8> {
    serde_json::to_vec(&TopologyBody {
        name: t.name(),
        world: t.world(),
        nodes_in_model: t.nodes().len(),
        links_in_model: t.links().len(),
        thresholds: Thresholds::default(),
        what_if: config.allow_what_if,
        job: job_name(&config.job),
        layout: l,
    })
    .unwrap_or_default()
}

/// Builds the router (and starts the job poller when a job is given).
pub fn router(config: Config) -> Router {
    let full = match &config.topology {
        Some(Ok(t)) => layout(t, Scope::All).ok().map(|l| {
            let json = topology_json(t, &l, &config);
            (l, axum::body::Bytes::from(json))
        }),
        _ => None,
    };
    let live = LiveData {
        job: JobStatus {
            addr: job_name(&config.job),
            ..JobStatus::default()
        },
        ..LiveData::default()
    };
    let state = Arc::new(AppState {
        config,
        full,
        live: Mutex::new(live),
        sim_busy: tokio::sync::Semaphore::new(1),
    });
    if !state.config.job.is_empty() {
        let weak = Arc::downgrade(&state);
        let every = state.config.poll_every;
        let addrs = state.config.job.clone();
        let _ = std::thread::Builder::new()
            .name("console-poll".into())
            .spawn(move || poll(weak, addrs, every));
    }
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/topology", get(api_topology))
        .route("/api/links", get(api_links))
        .route("/api/calls", get(api_calls))
        .route("/api/alerts", get(api_alerts))
        .route("/api/sim", post(api_sim))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such path; served: /, /api/topology, /api/links, /api/calls, /api/alerts, \
                 /api/sim (POST)",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves the console on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<()> {
    axum::serve(listener, router(config)).await
}

/// Serves the console on `listen` from a runtime of its own, calling `bound` with the
/// address bound (port 0 picks one) before the first request; returns only on an error.
pub fn run_blocking(
    listen: SocketAddr,
    config: Config,
    bound: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("console")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        bound(listener.local_addr()?);
        serve(listener, config).await
    })
}

/// Constant-time equality of two byte strings (the length is not hidden).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn query_token(q: Option<&str>) -> Option<String> {
    q?.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}

/// The token check (see the module doc).
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(token) = &state.config.token else {
        return next.run(req).await;
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let from_query = query_token(req.uri().query());
    let ok = |t: &Option<String>| {
        t.as_deref()
            .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    };
    if ok(&bearer) || ok(&cookie_token(req.headers())) {
        return next.run(req).await;
    }
    if ok(&from_query) {
        let mut resp = next.run(req).await;
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
        )) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    error(
        StatusCode::UNAUTHORIZED,
        "this console needs its token: open the URL it printed (…/?token=T) or send \
         'Authorization: Bearer T'",
    )
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("map") | Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

fn serve_asset(name: &str) -> Response {
    match assets::ASSETS.iter().find(|(n, _)| *n == name) {
        Some((n, bytes)) => (
            [
                (header::CONTENT_TYPE, content_type(n)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from(*bytes),
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no asset '{name}'")),
    }
}

async fn index() -> Response {
    serve_asset("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve_asset(&file)
}

#[derive(Deserialize)]
struct TopoQuery {
    pod: Option<usize>,
}

async fn api_topology(State(state): State<Arc<AppState>>, Query(q): Query<TopoQuery>) -> Response {
    let t = match &state.config.topology {
        None => {
            return error(
                StatusCode::NOT_FOUND,
                "no topology: start the console with --topo FILE",
            )
        }
        Some(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.clone()),
        Some(Ok(t)) => t.clone(),
    };
    let json = |bytes: axum::body::Bytes| {
        ([(header::CONTENT_TYPE, "application/json")], bytes).into_response()
    };
    match q.pod {
        None => match &state.full {
            Some((_, bytes)) => json(bytes.clone()),
            None => error(StatusCode::INTERNAL_SERVER_ERROR, "the layout failed"),
        },
        Some(p) => {
            let config = state.config.clone();
            let out = tokio::task::spawn_blocking(move || {
                layout(&t, Scope::Pod(p)).map(|l| topology_json(&t, &l, &config))
            })
            .await;
            match out {
                Ok(Ok(bytes)) => json(bytes.into()),
                Ok(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
    }
}

#[derive(Serialize)]
struct LinksBody {
    job: JobStatus,
    updated_ns: u64,
    /// Figures per drawn edge of the whole topology's layout (`?pod=` layouts are not
    /// coloured).
    edges: Vec<EdgeFigures>,
    pairs: Vec<PairFigures>,
}

fn lock(state: &AppState) -> std::sync::MutexGuard<'_, LiveData> {
    state.live.lock().unwrap_or_else(|p| p.into_inner())
}

async fn api_links(State(state): State<Arc<AppState>>) -> Response {
    let live = lock(&state);
    Json(LinksBody {
        job: live.job.clone(),
        updated_ns: live.updated_ns,
        edges: live.edges.clone(),
        pairs: live.pairs.clone(),
    })
    .into_response()
}

#[derive(Serialize)]
struct CallsBody {
    job: JobStatus,
    timeline: Option<Timeline>,
}

async fn api_calls(State(state): State<Arc<AppState>>) -> Response {
    let live = lock(&state);
    Json(CallsBody {
        job: live.job.clone(),
        timeline: live.flight.clone().or_else(|| state.config.trace.clone()),
    })
    .into_response()
}

#[derive(Serialize)]
struct AlertsBody {
    job: JobStatus,
    alerts: Vec<LoggedAlert>,
}

async fn api_alerts(State(state): State<Arc<AppState>>) -> Response {
    let live = lock(&state);
    Json(AlertsBody {
        job: live.job.clone(),
        alerts: live.alerts.newest_first(),
    })
    .into_response()
}

async fn api_sim(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    if !state.config.allow_what_if {
        return error(
            StatusCode::FORBIDDEN,
            "what-if is off: start the console with --allow-what-if",
        );
    }
    let w: WhatIf = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be JSON like {{\"target\": \"leaf0\", \"action\": \"cut\"}} \
                     (action cut or degrade; optional factor, collective, size): {e}"
                ),
            )
        }
    };
    let t = match &state.config.topology {
        Some(Ok(t)) => t.clone(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "what-if needs a topology: start the console with --topo FILE",
            )
        }
    };
    // Refuse a bad request at once, before waiting for a running simulation.
    if let Err(e) = whatif::faults_of(&t, &w) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let Ok(_permit) = state.sim_busy.try_acquire() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "another what-if is running; try again when it is done",
        );
    };
    match tokio::task::spawn_blocking(move || whatif::run(&t, &w)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) if e.is_bad_request() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Where an address serves its links: a launcher gathers them at `/matrix`, a rank's own
/// exporter serves `/links`; learned from the first answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LinksAt {
    Unknown,
    Matrix,
    Links,
}

/// One poll of every address: the merged metrics and how many answered (or why none
/// did) and, for those that serve them, the link views.
fn fetch_live(
    addrs: &[SocketAddr],
    links_at: &mut [LinksAt],
) -> (Result<(String, u32), String>, Vec<RankView>) {
    let mut texts = Vec::with_capacity(addrs.len());
    let mut failures = Vec::new();
    let mut views = Vec::new();
    for (addr, at) in addrs.iter().zip(links_at.iter_mut()) {
        match topoccl::metrics::http_get(*addr, "/metrics", "text/plain", JOB_TIMEOUT) {
            Ok(t) => texts.push(t),
            Err(e) => {
                failures.push(format!("{addr}: {e}"));
                continue;
            }
        }
        let tries: &[(LinksAt, &str)] = match at {
            LinksAt::Unknown => &[(LinksAt::Matrix, "/matrix"), (LinksAt::Links, "/links")],
            LinksAt::Matrix => &[(LinksAt::Matrix, "/matrix")],
            LinksAt::Links => &[(LinksAt::Links, "/links")],
        };
        for &(kind, path) in tries {
            let got = topoccl::metrics::http_get(*addr, path, "application/json", JOB_TIMEOUT)
                .ok()
                .and_then(|text| matrix::parse(&text).ok());
            if let Some(v) = got {
                *at = kind;
                views.extend(v);
                break;
            }
        }
    }
    views.truncate(matrix::MAX_VIEWS);
    if texts.is_empty() {
        return (Err(failures.join("; ")), views);
    }
    // The parser reads samples line by line: the expositions are simply joined.
    let answered = texts.len() as u32;
    (Ok((texts.join("\n"), answered)), views)
}

/// The flight recorders of every address that answers, joined (at most
/// [`MAX_DUMPS`] dumps).
fn fetch_flight(addrs: &[SocketAddr]) -> Option<Vec<Dump>> {
    let mut all = Vec::new();
    let mut any = false;
    for addr in addrs {
        let Ok(text) =
            topoccl::metrics::http_get(*addr, "/flight", "application/json", JOB_TIMEOUT)
        else {
            continue;
        };
        if let Ok(dumps) = serde_json::from_str::<Vec<Dump>>(&text) {
            any = true;
            all.extend(dumps);
        }
    }
    all.truncate(MAX_DUMPS);
    any.then_some(all)
}

/// Flight-recorder dumps kept per poll.
pub const MAX_DUMPS: usize = 16_384;

/// The job's ranks' hosts, from the dumps of its widest communicator (the world's).
fn hosts_of(dumps: &[Dump]) -> Vec<Option<String>> {
    let Some(world) = dumps.iter().map(|d| d.world_size).max() else {
        return Vec::new();
    };
    let Some(group) = dumps
        .iter()
        .find(|d| d.world_size == world)
        .map(|d| d.process_group.clone())
    else {
        return Vec::new();
    };
    let mut hosts = vec![None; (world as usize).min(MAX_DUMPS)];
    for d in dumps.iter().filter(|d| d.process_group == group) {
        if let Some(h) = hosts.get_mut(d.rank as usize) {
            *h = Some(d.host.clone());
        }
    }
    hosts
}

/// The poller's loop (see the module doc).
fn poll(state: Weak<AppState>, addrs: Vec<SocketAddr>, every: Duration) {
    let Some(first) = state.upgrade() else { return };
    let topo = match &first.config.topology {
        Some(Ok(t)) => Some(t.clone()),
        _ => None,
    };
    drop(first);
    let mut router = topo.as_deref().map(TopoRouter::new);
    let mut place: Vec<u32> = topo
        .as_deref()
        .map_or_else(Vec::new, |t| (0..t.world()).collect());
    let mut links_at = vec![LinksAt::Unknown; addrs.len()];
    let mut tick: u64 = 0;
    loop {
        let (metrics, views) = fetch_live(&addrs, &mut links_at);
        let flight = if tick % 2 == 0 {
            fetch_flight(&addrs)
        } else {
            None
        };
        if let (Some(dumps), Some(t)) = (&flight, topo.as_deref()) {
            place = matrix::placement(t, &hosts_of(dumps));
        }
        let Some(state) = state.upgrade() else { return };
        let now = now_ns();
        match metrics {
            Ok((text, answered)) => {
                let scrape = crate::prom::parse(&text, |n| live::FAMILIES.contains(&n));
                let pairs = if views.is_empty() {
                    live::pairs_of(&scrape)
                } else {
                    matrix::pairs_of(&views)
                };
                let edges = match (&topo, &mut router, &state.full) {
                    (Some(t), Some(r), Some((l, _))) => {
                        live::edge_figures(t, r, l, &pairs, &place, &Thresholds::default())
                    }
                    _ => Vec::new(),
                };
                let firing = live::alerts_with_pairs(&scrape, &pairs);
                let up_samples: Vec<f64> = scrape
                    .samples
                    .iter()
                    .filter(|s| s.name == "topoccl_rank_up")
                    .map(|s| s.value)
                    .collect();
                // The ranks' own exporters carry no topoccl_rank_up: each that answered is up.
                let ranks_up = if up_samples.is_empty() {
                    answered
                } else {
                    up_samples.iter().filter(|v| **v >= 1.0).count() as u32
                };
                let mut live = lock(&state);
                live.pairs = pairs;
                live.edges = edges;
                live.alerts.update(&firing, now);
                live.job.up = true;
                live.job.error = None;
                live.job.failed_polls = 0;
                live.job.last_ok_ns = Some(now);
                live.job.ranks_up = ranks_up;
                live.updated_ns = now;
            }
            Err(e) => {
                let mut live = lock(&state);
                live.job.up = false;
                live.job.failed_polls += 1;
                live.job.error = Some(format!(
                    "the job's metrics did not answer ({e}); retrying every {:.1} s",
                    every.as_secs_f64()
                ));
                live.updated_ns = now;
            }
        }
        if let Some(dumps) = flight {
            lock(&state).flight = Some(calls::from_dumps(&dumps, now));
        }
        drop(state);
        tick += 1;
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert_eq!(query_token(Some("a=1&token=xyz")), Some("xyz".into()));
        assert_eq!(query_token(Some("tokens=1")), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; topoccl_console=t0k"),
        );
        assert_eq!(cookie_token(&h), Some("t0k".into()));
    }
}
