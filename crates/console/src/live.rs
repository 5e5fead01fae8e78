//! A running job's figures on the drawn topology: the launcher's merged metrics (parsed by
//! [`crate::prom`]) turned into per-edge figures and colours, and the alerts they show.
//! Pure: takes the scrape, the topology, the layout; times are passed in.
//!
//! # Per link
//!
//! Every `(rank, peer)` pair with figures is routed over the topology
//! (`topoccl_topo::Router`, ECMP shares included). A topology link carries the sum of the
//! pairs' throughputs times their shares; its utilisation is that over its bandwidth, its
//! latency the largest of the pairs crossing it, and it is congested if the detector holds
//! any of those pairs congested. A drawn edge shows the worst of its links (largest
//! utilisation, latency; congested if any). Pairs naming ranks beyond the topology's world
//! or the `other` peer are skipped; at most [`MAX_PAIRS`] pairs are routed per scrape.
//!
//! # Alerts
//!
//! `topoccl_link_congested == 1` (congestion on rank → peer), `topoccl_straggler == 1`
//! (straggler), `topoccl_rank_up == 0` (rank down): [`alerts_of`] lists what is firing in
//! one scrape; [`AlertLog`] keeps when each started and ended (at most
//! [`MAX_ALERT_LOG`] entries, oldest dropped first).

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use topoccl_topo::{LinkId, Router, Topology};

use crate::health::{Level, Thresholds};
use crate::layout::Layout;
use crate::prom::Scrape;

/// Pairs routed per scrape.
pub const MAX_PAIRS: usize = 16_384;
/// Alerts kept in the log.
pub const MAX_ALERT_LOG: usize = 512;

/// The families the console reads.
pub const FAMILIES: [&str; 6] = [
    "topoccl_link_throughput_bytes_per_second",
    "topoccl_link_latency_seconds",
    "topoccl_link_congested",
    "topoccl_straggler",
    "topoccl_rank_up",
    "topoccl_collective_bytes_total",
];

/// One pair's figures as the ranks report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PairFigures {
    pub rank: u32,
    pub peer: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_s: Option<f64>,
    pub congested: bool,
}

/// A drawn edge's live figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EdgeFigures {
    /// Index into the layout's edges.
    pub edge: u32,
    pub level: Level,
    /// Busiest link's load over its bandwidth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilisation: Option<f64>,
    /// Bytes per second on the busiest link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_s: Option<f64>,
    pub congested: bool,
    /// Pairs crossing it.
    pub pairs: u32,
}

/// The pairs of a scrape, merged by (rank, peer).
pub fn pairs_of(scrape: &Scrape) -> Vec<PairFigures> {
    let mut by: BTreeMap<(u32, u32), PairFigures> = BTreeMap::new();
    for s in &scrape.samples {
        let (Some(rank), Some(peer)) = (s.rank_label("rank"), s.rank_label("peer")) else {
            continue;
        };
        let p = by.entry((rank, peer)).or_insert(PairFigures {
            rank,
            peer,
            ..PairFigures::default()
        });
        match s.name.as_str() {
            "topoccl_link_throughput_bytes_per_second" => p.throughput_bps = Some(s.value),
            "topoccl_link_latency_seconds" => p.latency_s = Some(s.value),
            "topoccl_link_congested" => p.congested = s.value >= 1.0,
            _ => {}
        }
    }
    by.into_values().collect()
}

#[derive(Clone, Copy, Default)]
struct LinkLoad {
    bps: f64,
    latency: Option<f64>,
    congested: bool,
    pairs: u32,
}

/// Per drawn edge with figures, its figures and colour (see the module doc).
pub fn edge_figures(
    t: &Topology,
    router: &mut Router<'_>,
    layout: &Layout,
    pairs: &[PairFigures],
    thresholds: &Thresholds,
) -> Vec<EdgeFigures> {
    let mut loads: BTreeMap<LinkId, LinkLoad> = BTreeMap::new();
    for p in pairs.iter().take(MAX_PAIRS) {
        if p.rank >= t.world() || p.peer >= t.world() || p.rank == p.peer {
            continue;
        }
        let Ok(route) = router.route(p.rank, p.peer) else {
            continue;
        };
        for (l, share) in route.links {
            let e = loads.entry(l).or_default();
            e.bps += p.throughput_bps.unwrap_or(0.0) * share;
            e.latency = match (e.latency, p.latency_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            e.congested |= p.congested;
            e.pairs += 1;
        }
    }
    let mut out = Vec::new();
    for (i, edge) in layout.edges.iter().enumerate() {
        let mut fig: Option<EdgeFigures> = None;
        for &l in &edge.links {
            let Some(load) = loads.get(&l) else { continue };
            let util = load.bps / t.link(l).bandwidth;
            let f = fig.get_or_insert(EdgeFigures {
                edge: i as u32,
                level: Level::Green,
                utilisation: None,
                throughput_bps: None,
                latency_s: None,
                congested: false,
                pairs: 0,
            });
            if f.utilisation.is_none_or(|u| util > u) {
                f.utilisation = Some(util);
                f.throughput_bps = Some(load.bps);
            }
            f.latency_s = match (f.latency_s, load.latency) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            f.congested |= load.congested;
            f.pairs = f.pairs.max(load.pairs);
        }
        if let Some(mut f) = fig {
            f.level = thresholds.level(f.utilisation, f.latency_s, f.congested);
            out.push(f);
        }
    }
    out
}

/// What an alert is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AlertKey {
    /// The congestion detector holds rank → peer congested.
    Congestion { rank: u32, peer: u32 },
    /// The launcher holds the rank a straggler or stopped.
    Straggler { rank: u32 },
    /// The rank's exporter did not answer the launcher.
    Down { rank: u32 },
}

impl AlertKey {
    /// Why, in words.
    pub fn reason(&self) -> String {
        match self {
            AlertKey::Congestion { rank, peer } => format!(
                "rank {rank}'s congestion detector holds its link to rank {peer} congested \
                 (slow, full or slow to answer)"
            ),
            AlertKey::Straggler { rank } => format!(
                "the launcher holds rank {rank} a straggler: persistently late to enter calls, \
                 or not entering a call the others entered"
            ),
            AlertKey::Down { rank } => {
                format!("rank {rank}'s metrics did not answer the launcher (exited or stuck)")
            }
        }
    }
}

/// What is firing in one scrape.
pub fn alerts_of(scrape: &Scrape) -> Vec<AlertKey> {
    let mut out: Vec<AlertKey> = scrape
        .samples
        .iter()
        .filter_map(|s| {
            let rank = s.rank_label("rank")?;
            match (s.name.as_str(), s.value) {
                ("topoccl_link_congested", v) if v >= 1.0 => Some(AlertKey::Congestion {
                    rank,
                    peer: s.rank_label("peer")?,
                }),
                ("topoccl_straggler", v) if v >= 1.0 => Some(AlertKey::Straggler { rank }),
                ("topoccl_rank_up", v) if v < 1.0 => Some(AlertKey::Down { rank }),
                _ => None,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One alert in the log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedAlert {
    #[serde(flatten)]
    pub key: AlertKey,
    pub reason: String,
    /// Unix ns when first seen firing.
    pub since_ns: u64,
    /// Unix ns when seen resolved; absent while firing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_ns: Option<u64>,
}

/// Alerts as they fire and resolve (bounded, see the module doc).
#[derive(Clone, Debug, Default)]
pub struct AlertLog {
    entries: VecDeque<LoggedAlert>,
}

impl AlertLog {
    /// Records one scrape's firing alerts at `now_ns`: new ones start, missing ones resolve.
    pub fn update(&mut self, firing: &[AlertKey], now_ns: u64) {
        for e in self.entries.iter_mut() {
            if e.resolved_ns.is_none() && !firing.contains(&e.key) {
                e.resolved_ns = Some(now_ns);
            }
        }
        for k in firing {
            let open = self
                .entries
                .iter()
                .any(|e| e.resolved_ns.is_none() && &e.key == k);
            if !open {
                if self.entries.len() == MAX_ALERT_LOG {
                    self.entries.pop_front();
                }
                self.entries.push_back(LoggedAlert {
                    key: k.clone(),
                    reason: k.reason(),
                    since_ns: now_ns,
                    resolved_ns: None,
                });
            }
        }
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<LoggedAlert> {
        self.entries.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{layout, Scope};
    use crate::prom::parse;

    fn two_hosts() -> Topology {
        let text =
            "name = \"t\"\n[generate]\nkind = \"fat-tree\"\nhosts = 4\ntiers = 2\nradix = 4\n\
                    [generate.host]\ngpus_per_host = 2\n";
        topoccl_topo::format::read(text, "t.toml").expect("a valid generator")
    }

    #[test]
    fn a_slow_pair_turns_its_path_red_and_others_stay_unlisted() {
        let t = two_hosts();
        let l = layout(&t, Scope::All).expect("lays out");
        let last = t.world() - 1;
        let text = format!(
            "topoccl_link_latency_seconds{{rank=\"0\",peer=\"{last}\"}} 0.5\n\
             topoccl_link_throughput_bytes_per_second{{rank=\"0\",peer=\"{last}\"}} 1e3\n"
        );
        let scrape = parse(&text, |n| FAMILIES.contains(&n));
        let pairs = pairs_of(&scrape);
        assert_eq!(pairs.len(), 1);
        let mut router = Router::new(&t);
        let figs = edge_figures(&t, &mut router, &l, &pairs, &Thresholds::default());
        assert!(!figs.is_empty());
        assert!(figs.iter().all(|f| f.level == Level::Red));
        assert!(figs.len() < l.edges.len());
    }

    #[test]
    fn the_log_opens_and_resolves() {
        let scrape = parse(
            "topoccl_rank_up{rank=\"1\"} 0\ntopoccl_straggler{rank=\"2\"} 1\n\
             topoccl_link_congested{rank=\"0\",peer=\"1\"} 1\ntopoccl_rank_up{rank=\"0\"} 1\n",
            |_| true,
        );
        let firing = alerts_of(&scrape);
        assert_eq!(firing.len(), 3);
        let mut log = AlertLog::default();
        log.update(&firing, 10);
        log.update(&firing[..1], 20);
        let all = log.newest_first();
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().filter(|a| a.resolved_ns == Some(20)).count(), 2);
        for i in 0..(MAX_ALERT_LOG as u32 + 5) {
            log.update(&[AlertKey::Down { rank: i }], 30 + u64::from(i));
        }
        assert_eq!(log.newest_first().len(), MAX_ALERT_LOG);
    }
}
