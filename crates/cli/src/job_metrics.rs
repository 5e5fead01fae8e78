//! `--metrics ADDR` of the commands that launch a job (`run`, `bench`): the launcher
//! serves the whole job's metrics at one address, and watches its ranks for stragglers.
//!
//! Every rank is started with `TOPOCCL_METRICS=127.0.0.1:0` and publishes the address its
//! exporter bound in the job's store ([`topoccl::metrics::store_key`]). On each scrape the
//! launcher reads those addresses, fetches every rank's `/metrics` (each within
//! [`RANK_SCRAPE_TIMEOUT`]), and answers with them merged, plus `topoccl_rank_up{rank}`: 1
//! for a rank that answered, 0 for one that has not published yet, has exited or did not
//! answer in time, and `topoccl_straggler{rank}`. `GET /flight` gathers every rank's flight
//! recorders the same way: one JSON array of dumps, which `topoccl doctor` reads once
//! saved one per file. `GET /matrix` gathers every rank's live links (`/links`: per
//! communicator, each link as sent and as received, with its figures and whether it is
//! held congested) into one JSON array: the job's live communication matrix. `GET /health`
//! gathers every rank's heartbeat view (each within [`RANK_HEALTH_TIMEOUT`], in parallel),
//! which `topoccl status ADDR` merges.
//!
//! **Stragglers.** Only the launcher sees when every rank entered each call: every
//! [`WATCH_EVERY`] it fetches the world communicator's new flight-recorder entries from
//! each rank (`/flight?since=ID`) and feeds their entry times to
//! `topoccl_watch::detect::StragglerDetector` (ranks persistently late by robust
//! statistics; a rank that has not entered a call all others entered for over a second).
//! Alerts are printed as they fire and resolve, set `topoccl_straggler{rank}` to 1 while
//! firing, and with `--alert-webhook URL` are posted as Alertmanager JSON. Entry times are
//! compared as the ranks' clocks read them: one host's ranks (what `run` launches).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use topoccl::metrics::{self, http_get, merge_expositions, scrape, store_key, ENV_METRICS};
use topoccl::store::{Store, TcpStore};
use topoccl_watch::detect::{Alert, AlertState, StragglerConfig, StragglerDetector, Subject};
use topoccl_watch::flight::Dump;

use crate::run_cmd::Job;
use crate::CliError;

/// How long one rank's scrape may take before it counts as down.
pub const RANK_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one rank's heartbeat view may take before `/health` reports it silent (a
/// stopped rank's endpoint accepts connections but never answers).
pub const RANK_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the launcher looks at the ranks' new calls for stragglers.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long one rank's flight recorder may take to answer the watcher.
const WATCH_TIMEOUT: Duration = Duration::from_millis(400);

/// The child environment that turns every rank's exporter on, on a free loopback port.
pub fn rank_env() -> (String, String) {
    (ENV_METRICS.to_string(), "127.0.0.1:0".to_string())
}

/// `--metrics` and `--alert-webhook`, shared by the commands that launch a job.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WatchArgs {
    /// Serve the whole job's Prometheus metrics on this address while it runs (e.g.
    /// 127.0.0.1:9464; port 0 picks a free one): every rank's, merged, with
    /// topoccl_rank_up and topoccl_straggler; GET /flight there gives the flight recorders,
    /// GET /health the ranks' heartbeat views (`topoccl status ADDR` reads it).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// With --metrics: post the straggler watcher's alerts to this Alertmanager-compatible
    /// receiver as they fire and resolve (http://IP:PORT/PATH).
    #[arg(long, value_name = "URL", requires = "metrics")]
    pub alert_webhook: Option<String>,
}

impl WatchArgs {
    /// Starts serving (if `--metrics` was given) and returns the ranks' extra
    /// environment.
    pub fn start(
        &self,
        store_url: &str,
        job: &Job,
        ranks: u32,
    ) -> Result<Vec<(String, String)>, CliError> {
        let Some(addr) = &self.metrics else {
            return Ok(Vec::new());
        };
        let hook = self
            .alert_webhook
            .as_deref()
            .map(Webhook::parse)
            .transpose()
            .map_err(|e| CliError::usage(format!("--alert-webhook: {e}")))?;
        serve(addr, store_url, job, ranks, hook)?;
        Ok(vec![rank_env()])
    }
}

/// Where alerts go besides the log: an Alertmanager-compatible receiver.
#[derive(Clone, Debug)]
pub struct Webhook {
    addr: SocketAddr,
    path: String,
}

impl Webhook {
    /// `http://IP:PORT/PATH` (plain HTTP, an IP address: the receiver is local or on a
    /// trusted network, as Alertmanager's own webhooks usually are).
    pub fn parse(url: &str) -> Result<Webhook, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("'{url}' is not an http:// URL (e.g. http://127.0.0.1:9093/api/v2/alerts)")
        })?;
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = host.parse::<SocketAddr>().map_err(|_| {
            format!("'{url}': '{host}' is not IP:PORT (e.g. http://127.0.0.1:9093/api/v2/alerts)")
        })?;
        Ok(Webhook {
            addr,
            path: format!("/{path}"),
        })
    }

    fn post(&self, alerts: &[Alert], now: SystemTime, epoch_offset_ns: i64) {
        let body: Vec<serde_json::Value> = alerts
            .iter()
            .map(|a| a.alertmanager_json(epoch_offset_ns))
            .collect();
        let body = serde_json::Value::Array(body).to_string();
        if let Err(e) = metrics::http_post(self.addr, &self.path, &body, WATCH_TIMEOUT * 5) {
            let _ = now;
            eprintln!(
                "topoccl: cannot post {} alert(s) to http://{}{}: {e}",
                alerts.len(),
                self.addr,
                self.path
            );
        }
    }
}

/// What the watcher shares with the metrics page, per rank: whether a straggler or stall
/// alert is firing, and how many have fired.
type Flagged = Arc<Mutex<BTreeMap<u32, (bool, u64)>>>;

/// Serves the job's metrics on `addr` until the process exits; returns the address bound.
pub fn serve(
    addr: &str,
    store_url: &str,
    job: &Job,
    ranks: u32,
    webhook: Option<Webhook>,
) -> Result<SocketAddr, CliError> {
    let store_addr = store_url.trim_start_matches("tcp://").to_string();
    let key = topoccl::auth::JobKey::from_secret(job.secret.as_bytes());
    let job_id = job.id.clone();
    let store: Mutex<Option<TcpStore>> = Mutex::new(None);
    let found: Mutex<Vec<Option<SocketAddr>>> = Mutex::new(vec![None; ranks as usize]);
    // The ranks' endpoints, as published in the store so far (an endpoint, once found,
    // does not move).
    let endpoints = Arc::new(move || -> Vec<Option<SocketAddr>> {
        let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
        if found.iter().all(Option::is_some) {
            return found.clone();
        }
        let mut guard = store.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let deadline = Instant::now() + RANK_SCRAPE_TIMEOUT;
            *guard = TcpStore::connect_with(&store_addr, Some(key.clone()), deadline).ok();
        }
        for (r, slot) in found.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = guard
                    .as_ref()
                    .and_then(|s| s.try_get(&store_key(&job_id, r as u32)).ok().flatten())
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|a| a.parse::<SocketAddr>().ok());
            }
        }
        found.clone()
    });
    let flagged: Flagged = Arc::default();

    let ranks_of = endpoints.clone();
    let flight = move |_query: &str| gather_arrays(&ranks_of(), "/flight");
    let ranks_of = endpoints.clone();
    let matrix = move |_query: &str| gather_arrays(&ranks_of(), "/links");
    let ranks_of = endpoints.clone();
    let health = move |_query: &str| gather_health(ranks, &ranks_of());

    let ranks_of = endpoints.clone();
    let shown = flagged.clone();
    let gather = move || {
        let mut texts = Vec::with_capacity(ranks as usize + 2);
        let mut up = String::from(
            "# HELP topoccl_rank_up Whether the rank's metrics were scraped (1) or not (0).\n\
             # TYPE topoccl_rank_up gauge\n",
        );
        for (r, addr) in (0..ranks).zip(ranks_of()) {
            let text = addr.and_then(|a| scrape(a, RANK_SCRAPE_TIMEOUT).ok());
            up.push_str(&format!(
                "topoccl_rank_up{{rank=\"{r}\"}} {}\n",
                u8::from(text.is_some())
            ));
            texts.extend(text);
        }
        let mut late = String::from(
            "# HELP topoccl_straggler Whether the launcher holds the rank a straggler or \
             stopped (1) or not (0).\n# TYPE topoccl_straggler gauge\n",
        );
        let mut fired = String::from(
            "# HELP topoccl_straggler_alerts Straggler and stopped-rank alerts raised for the \
             rank.\n# TYPE topoccl_straggler_alerts counter\n",
        );
        let flagged = shown.lock().unwrap_or_else(|e| e.into_inner());
        for r in 0..ranks {
            let (on, n) = flagged.get(&r).copied().unwrap_or((false, 0));
            late.push_str(&format!(
                "topoccl_straggler{{rank=\"{r}\"}} {}\n",
                u8::from(on)
            ));
            fired.push_str(&format!(
                "topoccl_straggler_alerts_total{{rank=\"{r}\"}} {n}\n"
            ));
        }
        texts.insert(0, fired);
        texts.insert(0, late);
        texts.insert(0, up);
        merge_expositions(&texts)
    };

    let world = format!("topoccl/{}/world0", job.id);
    let watched = endpoints.clone();
    std::thread::Builder::new()
        .name("topoccl-watch".into())
        .spawn(move || watch(ranks, world, watched, flagged, webhook))
        .map_err(|e| CliError::failed(format!("cannot start the straggler watcher: {e}")))?;

    let pages: Vec<metrics::Page> = vec![
        ("/flight", "application/json", Box::new(flight)),
        ("/matrix", "application/json", Box::new(matrix)),
        ("/health", "application/json", Box::new(health)),
    ];
    let bound = metrics::serve(addr, gather, pages)
        .map_err(|e| CliError::usage(format!("--metrics {addr}: {e}")))?;
    eprintln!("topoccl: the job's metrics are at http://{bound}/metrics");
    Ok(bound)
}

/// The JSON arrays the ranks serve at `path`, joined into one (a rank that does not
/// answer within [`RANK_SCRAPE_TIMEOUT`] is left out).
fn gather_arrays(ranks: &[Option<SocketAddr>], path: &str) -> String {
    let arrays: Vec<String> = ranks
        .iter()
        .flatten()
        .filter_map(|&a| http_get(a, path, "application/json", RANK_SCRAPE_TIMEOUT).ok())
        .map(|a| {
            let a = a.trim();
            a.strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|a| !a.is_empty())
        .collect();
    format!("[{}]", arrays.join(","))
}

/// `GET /health`: every rank's heartbeat views (`topoccl::health::health_json`), asked in
/// parallel, each within [`RANK_HEALTH_TIMEOUT`]: `{"world": N, "ranks": [{"rank",
/// "answered", "error", "views"}]}`. `topoccl status` merges them.
fn gather_health(world: u32, ranks: &[Option<SocketAddr>]) -> String {
    let answers: Vec<serde_json::Value> = std::thread::scope(|s| {
        let asks: Vec<_> = ranks
            .iter()
            .map(|addr| {
                s.spawn(move || match addr {
                    None => Err("has not published its metrics address".to_string()),
                    Some(a) => http_get(*a, "/health", "application/json", RANK_HEALTH_TIMEOUT)
                        .map_err(|e| format!("did not answer within {RANK_HEALTH_TIMEOUT:?}: {e}"))
                        .and_then(|body| {
                            serde_json::from_str::<serde_json::Value>(&body)
                                .map_err(|e| format!("answered garbage: {e}"))
                        }),
                })
            })
            .collect();
        asks.into_iter()
            .enumerate()
            .map(|(r, t)| {
                let got = t
                    .join()
                    .unwrap_or_else(|_| Err("the asking thread failed".into()));
                match got {
                    Ok(views) => serde_json::json!({"rank": r, "answered": true, "views": views}),
                    Err(e) => {
                        serde_json::json!({"rank": r, "answered": false, "error": e, "views": []})
                    }
                }
            })
            .collect()
    });
    serde_json::json!({ "world": world, "ranks": answers }).to_string()
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The watcher's loop: new entries of the world communicator from every rank into the
/// straggler detector, alerts out. Runs until the process exits.
fn watch(
    ranks: u32,
    world: String,
    endpoints: Arc<dyn Fn() -> Vec<Option<SocketAddr>> + Send + Sync>,
    flagged: Flagged,
    webhook: Option<Webhook>,
) {
    let Ok(mut detector) = StragglerDetector::new(ranks as usize, StragglerConfig::default())
    else {
        return;
    };
    // Per rank: the next record id to ask for, and the last call number fed.
    let mut next = vec![0u64; ranks as usize];
    let mut last_seq: Vec<Option<u64>> = vec![None; ranks as usize];
    loop {
        std::thread::sleep(WATCH_EVERY);
        let mut alerts = Vec::new();
        for (r, addr) in endpoints().into_iter().enumerate() {
            let Some(addr) = addr else { continue };
            let path = format!("/flight?since={}", next[r]);
            let Ok(text) = http_get(addr, &path, "application/json", WATCH_TIMEOUT) else {
                continue; // stopped, busy or gone: the others' entries tell
            };
            let Ok(dumps) = serde_json::from_str::<Vec<Dump>>(&text) else {
                continue;
            };
            let Some(dump) = dumps.into_iter().find(|d| d.process_group == world) else {
                continue;
            };
            for e in &dump.entries {
                next[r] = next[r].max(e.record_id + 1);
                if last_seq[r].is_some_and(|s| e.collective_seq_id <= s) {
                    continue;
                }
                last_seq[r] = Some(e.collective_seq_id);
                if let Ok(raised) = detector.enter(e.collective_seq_id, r, e.time_created_ns) {
                    alerts.extend(raised);
                }
            }
        }
        alerts.extend(detector.evaluate(wall_ns()));
        if alerts.is_empty() {
            continue;
        }
        {
            let mut flagged = flagged.lock().unwrap_or_else(|e| e.into_inner());
            for a in &alerts {
                if let Subject::Rank { rank } = a.subject {
                    let e = flagged.entry(rank as u32).or_default();
                    e.0 = false;
                    e.1 += u64::from(a.state == AlertState::Firing);
                }
            }
            for a in detector.firing() {
                if let Subject::Rank { rank } = a.subject {
                    flagged.entry(rank as u32).or_default().0 = true;
                }
            }
        }
        for a in &alerts {
            let verb = if a.state == AlertState::Firing {
                "alert"
            } else {
                "resolved"
            };
            eprintln!("topoccl: {verb}: {}", a.log_line());
        }
        if let Some(hook) = &webhook {
            // Entry times are the wall clock's already.
            hook.post(&alerts, SystemTime::now(), 0);
        }
    }
}
