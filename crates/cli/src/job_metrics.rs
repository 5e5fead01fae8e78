//! `--metrics ADDR` of the commands that launch a job (`run`, `bench`): the launcher
//! serves the whole job's metrics at one address.
//!
//! Every rank is started with `TOPOCCL_METRICS=127.0.0.1:0` and publishes the address its
//! exporter bound in the job's store ([`topoccl::metrics::store_key`]). On each scrape the
//! launcher reads those addresses, fetches every rank's `/metrics` (each within
//! [`RANK_SCRAPE_TIMEOUT`]), and answers with them merged, plus `topoccl_rank_up{rank}`: 1
//! for a rank that answered, 0 for one that has not published yet, has exited or did not
//! answer in time (a hung rank's exporter still answers: its metrics show the hang).
//! `GET /flight` gathers every rank's flight recorders the same way: one JSON array of
//! dumps, which `topoccl doctor` reads once saved one per file.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::Arc;

use topoccl::metrics::{self, http_get, merge_expositions, scrape, store_key, ENV_METRICS};
use topoccl::store::{Store, TcpStore};

use crate::run_cmd::Job;
use crate::CliError;

/// How long one rank's scrape may take before it counts as down.
pub const RANK_SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The child environment that turns every rank's exporter on, on a free loopback port.
pub fn rank_env() -> (String, String) {
    (ENV_METRICS.to_string(), "127.0.0.1:0".to_string())
}

/// Serves the job's metrics on `addr` until the process exits; returns the address bound.
pub fn serve(addr: &str, store_url: &str, job: &Job, ranks: u32) -> Result<SocketAddr, CliError> {
    let store_addr = store_url.trim_start_matches("tcp://").to_string();
    let key = topoccl::auth::JobKey::from_secret(job.secret.as_bytes());
    let job_id = job.id.clone();
    let store: Mutex<Option<TcpStore>> = Mutex::new(None);
    // The ranks' endpoints, as published in the store so far.
    let endpoints = Arc::new(move || -> Vec<Option<SocketAddr>> {
        let mut guard = store.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let deadline = Instant::now() + RANK_SCRAPE_TIMEOUT;
            *guard = TcpStore::connect_with(&store_addr, Some(key.clone()), deadline).ok();
        }
        (0..ranks)
            .map(|r| {
                guard
                    .as_ref()
                    .and_then(|s| s.try_get(&store_key(&job_id, r)).ok().flatten())
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
            })
            .collect()
    });
    let ranks_of = endpoints.clone();
    let flight = move || {
        let arrays: Vec<String> = ranks_of()
            .into_iter()
            .flatten()
            .filter_map(|a| http_get(a, "/flight", "application/json", RANK_SCRAPE_TIMEOUT).ok())
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
    };
    let gather = move || {
        let mut texts = Vec::with_capacity(ranks as usize + 1);
        let mut up = String::from(
            "# HELP topoccl_rank_up Whether the rank's metrics were scraped (1) or not (0).\n\
             # TYPE topoccl_rank_up gauge\n",
        );
        for (r, addr) in (0..ranks).zip(endpoints()) {
            let text = addr.and_then(|a| scrape(a, RANK_SCRAPE_TIMEOUT).ok());
            up.push_str(&format!(
                "topoccl_rank_up{{rank=\"{r}\"}} {}\n",
                u8::from(text.is_some())
            ));
            texts.extend(text);
        }
        texts.insert(0, up);
        merge_expositions(&texts)
    };
    let pages: Vec<metrics::Page> = vec![("/flight", "application/json", Box::new(flight))];
    let bound = metrics::serve(addr, gather, pages)
        .map_err(|e| CliError::usage(format!("--metrics {addr}: {e}")))?;
    eprintln!("topoccl: the job's metrics are at http://{bound}/metrics");
    Ok(bound)
}
