//! A running job's figures on the drawn topology: per directed rank pair (from the job's
//! live matrix, [`crate::matrix`], or else its merged metrics, parsed by [`crate::prom`])
//! turned into per-edge figures and colours, and the alerts they show. Pure: takes the
//! figures, the topology, the layout; times are passed in.
//!
//! # Per link
//!
//! Every `(sender, receiver)` pair with figures is placed on the topology's ranks
//! ([`crate::matrix::placement`]) and routed (`topoccl_topo::Router`, ECMP shares
//! included). A topology link (one direction of a cable) carries the sum of the pairs'
//! loads (bytes/s; the metrics' achieved throughput where no load is known) and bytes
//! times their shares; its utilisation is that load over its bandwidth, its latency the
//! largest of the pairs crossing it, its throughput ratio (achieved over the learned
//! baseline) the smallest.
//!
//! **Blame.** A congested pair says only that something on its path is slow. The link
//! held congested is, on each congested pair's route, the one whose cable (the link and
//! its reverse: a fault on a cable usually slows both ways) is crossed by the most
//! congested pairs (ties: all of them): a throttled trunk under two congested pairs, one
//! each way, is red; the host cables, each under one, are not painted by congestion
//! (their own load and latency still colour them).
//!
//! A drawn edge shows the worst of its links (largest utilisation, latency; congested if
//! any). Pairs naming ranks beyond the placement or the topology are skipped; at most
//! [`MAX_PAIRS`] pairs are routed per poll.
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

/// One directed pair's figures as the ranks report them: `rank` sends to `peer` (job
/// ranks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PairFigures {
    pub rank: u32,
    pub peer: u32,
    /// Achieved throughput of its transfers, bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_s: Option<f64>,
    pub congested: bool,
    /// Load carried (the last window's bytes over its length), bytes/s; `None` where only
    /// the metrics were read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_bps: Option<f64>,
    /// Bytes sent so far.
    pub bytes: u64,
    /// Achieved over the learned baseline throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_ratio: Option<f64>,
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
    /// Load on the busiest link, bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_s: Option<f64>,
    pub congested: bool,
    /// Pairs crossing it.
    pub pairs: u32,
    /// Bytes carried so far (the busiest link's share of its pairs' bytes).
    pub bytes: u64,
    /// The smallest achieved-over-baseline throughput of the pairs crossing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput_ratio: Option<f64>,
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
    bytes: f64,
    latency: Option<f64>,
    ratio: Option<f64>,
    /// Congested pairs crossing it, and whether it is blamed (see the module doc).
    congested_pairs: u32,
    blamed: bool,
    pairs: u32,
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Per drawn edge with figures, its figures and colour (see the module doc). `place[r]`
/// is job rank `r`'s topology rank.
pub fn edge_figures(
    t: &Topology,
    router: &mut Router<'_>,
    layout: &Layout,
    pairs: &[PairFigures],
    place: &[u32],
    thresholds: &Thresholds,
) -> Vec<EdgeFigures> {
    let mut loads: BTreeMap<LinkId, LinkLoad> = BTreeMap::new();
    let mut congested_routes: Vec<Vec<LinkId>> = Vec::new();
    for p in pairs.iter().take(MAX_PAIRS) {
        let (Some(&a), Some(&b)) = (place.get(p.rank as usize), place.get(p.peer as usize)) else {
            continue;
        };
        if a >= t.world() || b >= t.world() || a == b {
            continue;
        }
        let Ok(route) = router.route(a, b) else {
            continue;
        };
        let load = p.load_bps.or(p.throughput_bps).unwrap_or(0.0);
        for &(l, share) in &route.links {
            let e = loads.entry(l).or_default();
            e.bps += load * share;
            e.bytes += p.bytes as f64 * share;
            e.latency = max_opt(e.latency, p.latency_s);
            e.ratio = min_opt(e.ratio, p.throughput_ratio);
            e.congested_pairs += u32::from(p.congested);
            e.pairs += 1;
        }
        if p.congested {
            congested_routes.push(route.links.iter().map(|&(l, _)| l).collect());
        }
    }
    // Congested pairs per cable: a link's and its reverse's.
    let on_cable = |loads: &BTreeMap<LinkId, LinkLoad>, l: LinkId| -> u32 {
        let here = loads.get(&l).map_or(0, |e| e.congested_pairs);
        let back = t
            .reverse(l)
            .and_then(|r| loads.get(&r))
            .map_or(0, |e| e.congested_pairs);
        here + back
    };
    for route in &congested_routes {
        let counts: Vec<u32> = route.iter().map(|&l| on_cable(&loads, l)).collect();
        let most = counts.iter().copied().max().unwrap_or(0);
        for (l, n) in route.iter().zip(counts) {
            if let Some(e) = loads.get_mut(l) {
                e.blamed |= n == most;
            }
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
                bytes: 0,
                throughput_ratio: None,
            });
            if f.utilisation.is_none_or(|u| util > u) {
                f.utilisation = Some(util);
                f.throughput_bps = Some(load.bps);
                f.bytes = load.bytes as u64;
            }
            f.latency_s = max_opt(f.latency_s, load.latency);
            f.throughput_ratio = min_opt(f.throughput_ratio, load.ratio);
            f.congested |= load.blamed;
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
                "the link from rank {rank} to rank {peer} is held congested by a rank's \
                 congestion detector (slow, full or slow to answer)"
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

/// What is firing: the scrape's alerts and the congested pairs (sender → receiver, as
/// the job's live matrix holds them), each once.
pub fn alerts_with_pairs(scrape: &Scrape, pairs: &[PairFigures]) -> Vec<AlertKey> {
    let mut out = alerts_of(scrape);
    out.extend(
        pairs
            .iter()
            .filter(|p| p.congested)
            .map(|p| AlertKey::Congestion {
                rank: p.rank,
                peer: p.peer,
            }),
    );
    out.sort();
    out.dedup();
    out
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
        let place: Vec<u32> = (0..t.world()).collect();
        let figs = edge_figures(&t, &mut router, &l, &pairs, &place, &Thresholds::default());
        assert!(!figs.is_empty());
        assert!(figs.iter().all(|f| f.level == Level::Red));
        assert!(figs.len() < l.edges.len());
    }

    /// Two racks of two hosts, one rank per host, racks alternating (as the namespaced
    /// drills place them).
    fn racks() -> Topology {
        let mut text = String::from(
            "name = \"r\"\nranks = [\"h0\", \"h2\", \"h1\", \"h3\"]\n\
             [[node]]\nname = \"leaf0\"\nkind = \"switch\"\n\
             [[node]]\nname = \"leaf1\"\nkind = \"switch\"\n\
             [[link]]\na = \"leaf0\"\nb = \"leaf1\"\nbandwidth = \"1Gbps\"\nlatency = \"20us\"\n",
        );
        for h in 0..4 {
            text += &format!(
                "[[node]]\nname = \"h{h}\"\nkind = \"host\"\n\
                 [[link]]\na = \"h{h}\"\nb = \"leaf{}\"\nbandwidth = \"1Gbps\"\nlatency = \"20us\"\n",
                h / 2
            );
        }
        topoccl_topo::format::read(&text, "r.toml").expect("a valid topology")
    }

    #[test]
    fn congestion_is_blamed_on_the_link_the_congested_pairs_share() {
        let t = racks();
        let l = layout(&t, Scope::All).expect("lays out");
        // The ring 0→1→2→3→0 crosses the trunk at every hop.
        let ring: Vec<PairFigures> = (0..4u32)
            .map(|r| PairFigures {
                rank: r,
                peer: (r + 1) % 4,
                load_bps: Some(1e6),
                bytes: 1 << 20,
                latency_s: Some(1e-4),
                congested: true,
                ..PairFigures::default()
            })
            .collect();
        let mut router = Router::new(&t);
        let place: Vec<u32> = (0..4).collect();
        let figs = edge_figures(&t, &mut router, &l, &ring, &place, &Thresholds::default());
        let red: Vec<&str> = figs
            .iter()
            .filter(|f| f.level == Level::Red)
            .map(|f| l.edges[f.edge as usize].name.as_str())
            .collect();
        assert_eq!(red.len(), 1, "only the trunk: {red:?}");
        // One congested pair each way (what a hierarchical plan sends over the trunk):
        // still only the trunk.
        let two = [
            PairFigures {
                rank: 1,
                peer: 0,
                ..ring[0]
            },
            ring[2],
        ];
        let figs2 = edge_figures(&t, &mut router, &l, &two, &place, &Thresholds::default());
        let red2: Vec<&str> = figs2
            .iter()
            .filter(|f| f.level == Level::Red)
            .map(|f| l.edges[f.edge as usize].name.as_str())
            .collect();
        assert_eq!(red2, red, "the trunk alone");
        let firing = alerts_with_pairs(&crate::prom::Scrape::default(), &two);
        assert_eq!(firing.len(), 2);
        assert!(
            red[0].contains("leaf0") && red[0].contains("leaf1"),
            "{red:?}"
        );
        assert_eq!(figs.len(), 5, "every cable carries a pair");
        let trunk = figs.iter().find(|f| f.level == Level::Red).expect("red");
        assert_eq!(trunk.pairs, 2, "two pairs each way");
        assert_eq!(trunk.bytes, 2 << 20);
        // Uncongested, the same pairs leave everything green; placed elsewhere, nothing
        // crosses the trunk.
        let calm: Vec<PairFigures> = ring
            .iter()
            .map(|p| PairFigures {
                congested: false,
                ..*p
            })
            .collect();
        let figs = edge_figures(&t, &mut router, &l, &calm, &place, &Thresholds::default());
        assert!(figs.iter().all(|f| f.level == Level::Green));
        let same_rack = [1, 0, 3, 2].map(|r| [0u32, 2, 1, 3][r]);
        let figs = edge_figures(
            &t,
            &mut router,
            &l,
            &ring[..1],
            &same_rack,
            &Thresholds::default(),
        );
        assert_eq!(
            figs.len(),
            2,
            "0→1 placed on one rack: two host cables only"
        );
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
