//! The job's live communication matrix — the launcher's `GET /matrix`, or the ranks' own
//! `GET /links` arrays joined — read into one figure set per directed rank pair, and the
//! job's ranks placed on the topology's ranks. Pure: parses text it is given.
//!
//! # What a rank publishes
//!
//! Per communicator watching its links: `{"communicator", "rank", "links": [...]}`, each
//! link `{"direction": "out"|"in", "peer", "congested", "stats"}` where `peer` is a world
//! rank (or an aggregate such as `group 3`, skipped here), `out` is the link as this rank
//! sent to the peer and `in` as it received from it, and `stats` is
//! `topoccl_watch::matrix::LinkStats`.
//!
//! # Per directed pair (sender → receiver)
//!
//! A pair is seen by the sender (`out`) and by the receiver (`in`), once per communicator
//! both belong to. Over those rows:
//!
//! * `load_bps` and `bytes`: summed over communicators within each view, then the larger
//!   view's (the two views count the same bytes, so they are not added);
//! * `throughput_bps`: the slowest achieved, preferring the receiver's view (a sender only
//!   sees its bytes leave, not arrive);
//! * `throughput_ratio`: the smallest achieved-over-baseline;
//! * `latency_s`: the largest; `congested`: either end's detector holds it congested.
//!
//! # Placing ranks
//!
//! [`placement`]: the job's rank `r` is the topology's rank `r` (the order `TOPOCCL_TOPO`
//! gives a job), unless every rank's host (from its flight recorder) names a host of the
//! topology: then each rank goes to its host, the host's ranks taken in order.
//!
//! Limits: at most [`MAX_VIEWS`] communicator views and [`MAX_ROWS`] link rows are read
//! per answer; the rest is ignored.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use topoccl_topo::Topology;
use topoccl_watch::matrix::LinkStats;

use crate::live::PairFigures;

/// Communicator views read per answer.
pub const MAX_VIEWS: usize = 4096;
/// Link rows read per answer, over all views.
pub const MAX_ROWS: usize = 65_536;

/// Which way a published link was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// As this rank sent to the peer.
    Out,
    /// As this rank received from the peer.
    In,
}

/// One published link.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct LinkRow {
    pub direction: Direction,
    /// A world rank, or an aggregate's name.
    pub peer: String,
    #[serde(default)]
    pub congested: bool,
    pub stats: LinkStats,
}

/// One rank's links in one communicator.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RankView {
    #[serde(default)]
    pub communicator: String,
    /// The rank's world rank.
    pub rank: u32,
    #[serde(default)]
    pub links: Vec<LinkRow>,
}

/// An answer that is not a matrix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MatrixError {
    #[error(
        "the job's matrix is not a JSON array of rank views \
         ([{{\"communicator\", \"rank\", \"links\": [...]}}]): {0}; is --job the launcher's \
         --metrics address (or the ranks' TOPOCCL_METRICS addresses)?"
    )]
    NotAMatrix(String),
}

/// Reads one answer (see the module doc), keeping at most [`MAX_VIEWS`] views and
/// [`MAX_ROWS`] rows.
pub fn parse(text: &str) -> Result<Vec<RankView>, MatrixError> {
    let mut views: Vec<RankView> =
        serde_json::from_str(text).map_err(|e| MatrixError::NotAMatrix(e.to_string()))?;
    views.truncate(MAX_VIEWS);
    let mut budget = MAX_ROWS;
    for v in &mut views {
        v.links.truncate(budget);
        budget -= v.links.len();
    }
    Ok(views)
}

#[derive(Default)]
struct Acc {
    /// Per view (out, in): summed load and bytes.
    load: [f64; 2],
    bytes: [u64; 2],
    seen: [bool; 2],
    /// Per view: the slowest throughput.
    throughput: [Option<f64>; 2],
    ratio: Option<f64>,
    latency: Option<f64>,
    congested: bool,
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn finite(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite() && *v >= 0.0)
}

/// The directed pairs of the views, merged (see the module doc), by (sender, receiver).
pub fn pairs_of(views: &[RankView]) -> Vec<PairFigures> {
    let mut by: BTreeMap<(u32, u32), Acc> = BTreeMap::new();
    for v in views {
        for row in &v.links {
            let Ok(peer) = row.peer.parse::<u32>() else {
                continue; // an aggregate: no one pair to place
            };
            let (key, i) = match row.direction {
                Direction::Out => ((v.rank, peer), 0),
                Direction::In => ((peer, v.rank), 1),
            };
            if key.0 == key.1 {
                continue;
            }
            let s = &row.stats;
            let a = by.entry(key).or_default();
            a.seen[i] = true;
            a.load[i] += finite(s.window.map(|w| w.rate_bps)).unwrap_or(0.0);
            a.bytes[i] = a.bytes[i].saturating_add(s.bytes_total);
            a.throughput[i] = min_opt(a.throughput[i], finite(s.throughput_bps));
            a.ratio = min_opt(a.ratio, finite(s.throughput_ratio()));
            a.latency = max_opt(a.latency, finite(s.latency_s));
            a.congested |= row.congested;
        }
    }
    by.into_iter()
        .map(|((rank, peer), a)| PairFigures {
            rank,
            peer,
            throughput_bps: a.throughput[1].or(a.throughput[0]),
            latency_s: a.latency,
            congested: a.congested,
            load_bps: (a.seen[0] || a.seen[1]).then(|| a.load[0].max(a.load[1])),
            bytes: a.bytes[0].max(a.bytes[1]),
            throughput_ratio: a.ratio,
        })
        .collect()
}

/// The topology rank of each job rank (see the module doc). `hosts[r]` is job rank `r`'s
/// host name where known; answers the identity for the topology's world when any is
/// unknown or names no host of the topology.
pub fn placement(t: &Topology, hosts: &[Option<String>]) -> Vec<u32> {
    let identity: Vec<u32> = (0..t.world()).collect();
    if hosts.is_empty() || hosts.len() > identity.len() {
        return identity;
    }
    let mut free: HashMap<&str, std::collections::VecDeque<u32>> = HashMap::new();
    for r in 0..t.world() {
        free.entry(t.node(t.rank_host(r)).name.as_str())
            .or_default()
            .push_back(r);
    }
    let mut out = Vec::with_capacity(hosts.len());
    for h in hosts {
        let Some(next) = h
            .as_deref()
            .and_then(|h| free.get_mut(h))
            .and_then(|q| q.pop_front())
        else {
            return identity;
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(direction: &str, peer: &str, congested: bool, rate: f64, tput: f64) -> String {
        format!(
            r#"{{"direction":"{direction}","peer":"{peer}","congested":{congested},
               "stats":{{"members":1,"bytes_total":1000,"transfers_total":3,
               "throughput_bps":{tput},"throughput_samples":3,"last_throughput_ns":null,
               "latency_s":0.001,"latency_min_s":null,"last_latency_ns":null,
               "window":{{"start_ns":0,"end_ns":1,"bytes":1,"transfers":1,"rate_bps":{rate},
               "throughput_bps":null}},
               "baseline":{{"throughput_bps":100.0,"latency_s":0.0}},"capacity_bps":null,
               "last_update_ns":null}}}}"#
        )
    }

    #[test]
    fn both_ends_fold_into_one_pair() {
        let text = format!(
            r#"[{{"communicator":"w","rank":0,"links":[{},{}]}},
                {{"communicator":"w","rank":1,"links":[{}]}}]"#,
            row("out", "1", false, 50.0, 90.0),
            row("out", "group 2", false, 1.0, 1.0),
            row("in", "0", true, 40.0, 20.0),
        );
        let views = parse(&text).expect("a matrix");
        let pairs = pairs_of(&views);
        assert_eq!(pairs.len(), 1);
        let p = pairs[0];
        assert_eq!((p.rank, p.peer), (0, 1));
        assert!(p.congested);
        assert_eq!(p.throughput_bps, Some(20.0), "the receiver's view wins");
        assert_eq!(p.load_bps, Some(50.0), "the larger view, not the sum");
        assert_eq!(p.bytes, 1000);
        assert_eq!(p.throughput_ratio, Some(0.2));
    }

    #[test]
    fn not_a_matrix_says_what_was_expected() {
        let e = parse("{\"error\": 1}").expect_err("not an array");
        assert!(e.to_string().contains("rank views"));
        assert_eq!(parse("[]").expect("empty"), vec![]);
    }

    #[test]
    fn rows_are_capped() {
        let one = row("out", "1", false, 1.0, 1.0);
        let links = vec![one; 1000].join(",");
        let view = format!(r#"{{"rank":0,"links":[{links}]}}"#);
        let text = format!("[{}]", vec![view; 100].join(","));
        let views = parse(&text).expect("a matrix");
        let rows: usize = views.iter().map(|v| v.links.len()).sum();
        assert_eq!(rows, MAX_ROWS);
    }

    fn racks() -> Topology {
        let text = "name = \"r\"\nranks = [\"h0\", \"h2\", \"h1\", \"h3\"]\n\
            [[node]]\nname = \"s\"\nkind = \"switch\"\n\
            [[node]]\nname = \"h0\"\nkind = \"host\"\n[[node]]\nname = \"h1\"\nkind = \"host\"\n\
            [[node]]\nname = \"h2\"\nkind = \"host\"\n[[node]]\nname = \"h3\"\nkind = \"host\"\n\
            [[link]]\na = \"h0\"\nb = \"s\"\nbandwidth = \"1Gbps\"\nlatency = \"1us\"\n\
            [[link]]\na = \"h1\"\nb = \"s\"\nbandwidth = \"1Gbps\"\nlatency = \"1us\"\n\
            [[link]]\na = \"h2\"\nb = \"s\"\nbandwidth = \"1Gbps\"\nlatency = \"1us\"\n\
            [[link]]\na = \"h3\"\nb = \"s\"\nbandwidth = \"1Gbps\"\nlatency = \"1us\"\n";
        topoccl_topo::format::read(text, "r.toml").expect("a valid topology")
    }

    #[test]
    fn ranks_follow_their_hosts_or_the_topologys_order() {
        let t = racks();
        let named =
            |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|s| Some(s.to_string())).collect() };
        assert_eq!(
            placement(&t, &named(&["h1", "h0", "h3", "h2"])),
            vec![2, 0, 3, 1]
        );
        assert_eq!(
            placement(&t, &named(&["laptop", "laptop", "laptop", "laptop"])),
            vec![0, 1, 2, 3]
        );
        assert_eq!(placement(&t, &named(&["h0", "h0"])), vec![0, 1, 2, 3]);
        assert_eq!(placement(&t, &[None, Some("h0".into())]), vec![0, 1, 2, 3]);
    }

    proptest! {
        #[test]
        fn any_text_is_an_answer_or_an_error(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn pairs_are_unique_and_never_self(rows in proptest::collection::vec((0u32..6, 0u32..6, any::<bool>(), any::<bool>()), 0..40)) {
            let views: Vec<RankView> = rows.iter().map(|&(r, p, out, c)| RankView {
                communicator: "w".into(),
                rank: r,
                links: vec![LinkRow {
                    direction: if out { Direction::Out } else { Direction::In },
                    peer: p.to_string(),
                    congested: c,
                    stats: LinkStats::default(),
                }],
            }).collect();
            let pairs = pairs_of(&views);
            let mut keys: Vec<(u32, u32)> = pairs.iter().map(|p| (p.rank, p.peer)).collect();
            prop_assert!(keys.iter().all(|(a, b)| a != b));
            let n = keys.len();
            keys.dedup();
            prop_assert_eq!(keys.len(), n);
            let any_congested = rows.iter().any(|&(r, p, _, c)| c && r != p);
            prop_assert_eq!(pairs.iter().any(|p| p.congested), any_congested);
        }
    }
}
