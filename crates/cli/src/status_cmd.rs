//! `topoccl status ADDR`: asks a running job which ranks are alive, dead or hung, and who
//! says so.
//!
//! ADDR is the metrics address of `topoccl run --metrics ADDR` (the launcher's `/health`
//! page gathers every rank's heartbeat view, each within
//! [`crate::job_metrics::RANK_HEALTH_TIMEOUT`], so a stopped rank cannot hang it), or one
//! rank's own metrics endpoint (`TOPOCCL_METRICS`; the way to ask a torchrun job, whose
//! ranks have no launcher of ours: that rank's view covers the peers it watches and the
//! failures the beats have told it of). The views are merged with
//! `topoccl_watch::health::merge`: per rank the worst state any view holds and the ranks
//! that judged it so.
//!
//! Exit status: 0 when every rank is alive (or left), 1 when one is dead or hung, 2 when
//! the job cannot be asked.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use topoccl::health::View;
use topoccl_watch::health::{merge, Merged, Verdict};

use crate::CliError;

#[derive(Args, Debug)]
#[command(
    about = "Ask a running job which ranks are alive, dead or hung, and who says so",
    long_about = "Ask a running job which ranks are alive, dead or hung, and who says so.\n\n\
        ADDR is the address given to `topoccl run --metrics ADDR` (every rank's view, \
        merged), or one rank's metrics endpoint (TOPOCCL_METRICS=IP:PORT; for a torchrun \
        job start each rank with it and ask any of them: its view covers the peers it \
        watches and the failures reported to it). Ranks judge each other by heartbeats \
        (TOPOCCL_HEARTBEAT, 100 ms): a killed rank shows as dead (exited), a stopped one \
        (SIGSTOP) as hung (stopped), one inside a call without progress as hung (stuck in \
        call S).\n\nExit status: 0 all alive, 1 some rank dead or hung, 2 the job cannot be \
        asked."
)]
pub struct StatusArgs {
    /// The job's metrics address (`topoccl run --metrics ADDR`) or a rank's
    /// (TOPOCCL_METRICS), as IP:PORT, HOST:PORT or http://IP:PORT.
    #[arg(value_name = "ADDR")]
    addr: String,
    /// Print the merged verdicts as JSON.
    #[arg(long)]
    json: bool,
    /// How long to wait for the answer (the launcher asks each rank within 500 ms).
    #[arg(long, default_value = "5s")]
    timeout: String,
}

/// The launcher's `/health` answer.
#[derive(serde::Deserialize)]
struct JobHealth {
    world: u32,
    ranks: Vec<RankAnswer>,
}

#[derive(serde::Deserialize)]
struct RankAnswer {
    rank: u32,
    #[serde(default)]
    views: Vec<View>,
}

fn resolve(addr: &str) -> Result<SocketAddr, CliError> {
    let hostport = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .trim_end_matches("/health");
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            CliError::usage(format!(
                "'{addr}' is not an address to ask; give IP:PORT (e.g. 127.0.0.1:9464), the \
                 address of `topoccl run --metrics ADDR` or of a rank's TOPOCCL_METRICS"
            ))
        })
}

/// Each answering rank's verdicts, by rank.
type Views = Vec<(u32, Vec<Verdict>)>;

/// The views in `body` (the launcher's object or a rank's array) and the world's size.
fn views_of(body: &str, addr: &str) -> Result<(u32, Views), CliError> {
    let bad = |e: serde_json::Error| {
        CliError::usage(format!(
            "{addr}/health did not answer with a job's health ({e}); is it a topoccl job's \
             metrics address?"
        ))
    };
    if body.trim_start().starts_with('{') {
        let job: JobHealth = serde_json::from_str(body).map_err(bad)?;
        // Each rank's own views (a process that hosts several ranks serves all of them).
        let views: Vec<View> = job
            .ranks
            .into_iter()
            .flat_map(|r| {
                let rank = r.rank;
                r.views.into_iter().filter(move |v| v.rank == rank)
            })
            .collect();
        return Ok((job.world, pick_world(views)));
    }
    let views: Vec<View> = serde_json::from_str(body).map_err(bad)?;
    let world = views.iter().map(|v| v.world).max().unwrap_or(0);
    Ok((world, pick_world(views)))
}

/// One view per rank: each rank's world communicator (the first created, `world0`, when
/// a process holds several).
fn pick_world(mut views: Vec<View>) -> Views {
    views.sort_by(|a, b| (a.rank, &a.communicator).cmp(&(b.rank, &b.communicator)));
    views.dedup_by_key(|v| v.rank);
    views.into_iter().map(|v| (v.rank, v.peers)).collect()
}

fn table(merged: &[Merged]) -> String {
    let mut out = format!(
        "{:<6} {:<26} {:<14} {:<8} {}\n",
        "RANK", "STATE", "SAID BY", "ANSWERS", "DETAIL"
    );
    for m in merged {
        let by: Vec<String> = m.said_by.iter().map(|r| r.to_string()).collect();
        out.push_str(&format!(
            "{:<6} {:<26} {:<14} {:<8} {}\n",
            m.rank,
            m.state.to_string(),
            if by.is_empty() {
                "-".into()
            } else {
                by.join(",")
            },
            if m.answered { "yes" } else { "no" },
            m.detail
        ));
    }
    out
}

pub fn run(args: StatusArgs) -> Result<ExitCode, CliError> {
    let addr = resolve(&args.addr)?;
    let timeout = crate::units::parse_duration(&args.timeout)
        .ok()
        .filter(|s| *s > 0.0 && *s <= 3600.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            CliError::usage(format!(
                "--timeout {}: give a duration from 1ms to 1h, e.g. 5s",
                args.timeout
            ))
        })?;
    let body =
        topoccl::metrics::http_get(addr, "/health", "application/json", timeout).map_err(|e| {
            CliError::usage(format!(
                "cannot ask {addr} for the job's health: {e}; give the address of `topoccl run \
                 --metrics ADDR` or of a rank's TOPOCCL_METRICS endpoint, while the job runs"
            ))
        })?;
    let (world, views) = views_of(&body, &addr.to_string())?;
    if views.is_empty() {
        return Err(CliError::usage(format!(
            "{addr} answered, but no rank has a heartbeat view yet (still starting, a one-rank \
             job, or TOPOCCL_HEARTBEAT=off)"
        )));
    }
    let merged = merge(world, &views);
    if args.json {
        let ranks: Vec<serde_json::Value> = merged
            .iter()
            .map(|m| {
                serde_json::json!({
                    "rank": m.rank,
                    "state": m.state.to_string(),
                    "failed": m.state.is_failed(),
                    "said_by": m.said_by,
                    "answered": m.answered,
                    "detail": m.detail,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "world": world, "ranks": ranks }));
    } else {
        print!("{}", table(&merged));
    }
    Ok(if merged.iter().any(|m| m.state.is_failed()) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use topoccl_watch::health::PeerState;

    fn view(rank: u32, peers: Vec<(u32, PeerState)>) -> View {
        View {
            communicator: "topoccl/j/world0".into(),
            rank,
            world: 3,
            watched: vec![],
            peers: peers
                .into_iter()
                .map(|(r, state)| Verdict {
                    rank: r,
                    state,
                    since_ms: 0,
                    by: vec![rank],
                    detail: state.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn both_answers_are_read_and_garbage_is_an_error() {
        let rank0 = view(0, vec![(1, PeerState::DeadExited), (2, PeerState::Alive)]);
        let launcher = serde_json::json!({
            "world": 3,
            "ranks": [
                {"rank": 0, "answered": true, "views": [rank0]},
                {"rank": 1, "answered": false, "error": "no answer", "views": []},
            ]
        })
        .to_string();
        let (world, views) = views_of(&launcher, "a").unwrap();
        assert_eq!(world, 3);
        let m = merge(world, &views);
        assert_eq!(
            (m[1].state, m[1].said_by.clone()),
            (PeerState::DeadExited, vec![0])
        );
        let t = table(&m);
        assert!(t.contains("dead (exited)"), "{t}");
        let array =
            serde_json::to_string(&vec![view(2, vec![(0, PeerState::HungStopped)])]).unwrap();
        let (world, views) = views_of(&array, "a").unwrap();
        assert_eq!((world, views.len()), (3, 1));
        let e = views_of("# HELP x", "127.0.0.1:9").unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:9/health"), "{e}");
        assert!(resolve("no such host:x").is_err());
        assert_eq!(
            resolve("http://127.0.0.1:80/").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
    }
}
