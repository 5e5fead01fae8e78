//! The live view of a communicator's links, while metrics are on: every data frame this
//! rank sends (bytes, from when its first byte was offered to the link until its last was
//! taken: flow control makes that the pace the link and the peer accept) feeds a
//! `topoccl_watch::matrix::LinkMatrix`; after a call, at most every [`EVALUATE_EVERY`],
//! the congestion detector looks at the matrix and the metrics are brought up to date
//! (achieved throughput and latency per peer, `topoccl_link_congested`, alerts counted and
//! logged as they fire and resolve).
//!
//! **Both ends look.** A sender measures only until the kernel has taken its bytes: a
//! frame smaller than the socket buffer leaves "at once" however slow the network behind
//! it. So every data frame received feeds a second matrix too, from its header's arrival
//! to its last byte — the pace the path delivered it at. That view has its own detector;
//! its alerts are logged (`link 2→1 as received …`) and counted, and it is the evidence of
//! a re-plan (`crate::replan`): [`Live::observations`] reports it.
//!
//! **Baselines are learned.** What a link achieves inside collectives is bounded by more
//! than the wire (the peer reducing, the ring's pipeline), so the creation-time probe's
//! peak is not the yardstick: a link's throughput baseline is what it achieved over its
//! first [`LEARN_SAMPLES`] bulk transfers (its latency baseline is the probe's, where it
//! ran). Congestion is then a drop against that. A link congested from its very first
//! transfers is not detected by throughput (latency and stalls still are).
//!
//! **Stalls are seen while they last.** A call waiting on its transfers looks again at
//! most every [`EVALUATE_EVERY`] (`crate::exec` wakes for it): the frames it has half sent
//! and half received go to the detectors as transfers in flight, and one older than its
//! expected time on its link's baseline plus 100 ms raises a `stall` alert, logged
//! (`[FIRING stall] link 1→0 …`) and counted.
//!
//! **Utilisation** is judged where the link's capacity is known: from a topology file
//! (`TOPOCCL_TOPO`: the narrowest link of the route to the peer), for the links this rank
//! sends on. Without a file nothing states a capacity (a probe's figure is a floor, not a
//! ceiling), and utilisation is not judged.
//!
//! **Bounded.** Peers are tracked one by one up to `TOPOCCL_METRICS_PEERS` (default 64),
//! then summed up per host (`peer="host:NAME"`, 64 hosts), then as `other`. The detector's
//! thresholds come from `TOPOCCL_CONGESTION` (`crate::config`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use topoccl_plan::Rank;
use topoccl_topo::matrix::LinkMatrix as Probed;
use topoccl_watch::detect::{AlertKind, AlertState, CongestionDetector, InFlight};
use topoccl_watch::matrix::{Baseline, Dest, LinkMatrix, MatrixConfig, PeerSpec};

use crate::metrics::Metrics;

/// What the communicator knows of a peer when the watch starts.
#[derive(Default)]
pub(crate) struct PeerFacts {
    /// Its host's name (peers beyond the cap are summed up by host).
    pub host: Option<String>,
    /// The capacity of the route to it, bytes/s, when a topology file states it.
    pub capacity_bps: Option<f64>,
}

/// A frame in flight on a link, as `crate::exec` sees it in the middle of a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    /// The communicator's rank at the other end.
    pub peer: Rank,
    /// The frame's payload, bytes.
    pub bytes: u64,
    /// When it started: its first byte offered (sending), its delivery began (receiving).
    pub began: Instant,
}

/// How often, at most, the detector runs and the metrics are refreshed (after a call).
pub const EVALUATE_EVERY: Duration = Duration::from_millis(250);
/// How long a link from a peer stays congested before this rank asks for a re-plan: a
/// congested link is worth a new plan, a hiccup (a rank off its core for a moment) is not.
pub const SUSTAINED: Duration = Duration::from_secs(2);
/// Bulk transfers (above 64 KiB) a link carries before its throughput baseline is set.
pub const LEARN_SAMPLES: u64 = 32;

/// A communicator's live links.
pub(crate) struct Live {
    links: LinkMatrix,
    congestion: CongestionDetector,
    /// Frames received, per peer they came from (its `Dest::Peer` is the sender).
    incoming: LinkMatrix,
    incoming_congestion: CongestionDetector,
    incoming_learned: Vec<bool>,
    epoch: Instant,
    last: Option<Instant>,
    metrics: Arc<Metrics>,
    /// This rank in the world (the metrics' `rank` label) and the communicator's ranks'
    /// world ranks (peers are named by world rank).
    rank: Rank,
    world_ranks: Vec<Rank>,
    /// Per link (in the matrix's order): the probe's latency, and whether its throughput
    /// baseline has been learned.
    probed_latency: Vec<Option<f64>>,
    learned: Vec<bool>,
    /// A link from a peer was held congested for [`SUSTAINED`] since the last re-plan
    /// (`crate::replan`).
    wants_replan: bool,
    /// Links from peers held congested now: since when (ns), and whether a re-plan was
    /// asked for them. At most one entry per link of `incoming`.
    congested_from: std::collections::BTreeMap<usize, (u64, bool)>,
    /// Links to peers the sent view's detector holds congested.
    congested_to: std::collections::BTreeSet<Dest>,
    /// The host names of the matrix's groups, by group label.
    group_names: Vec<String>,
    /// The communicator's name and its `/links` slot (`Metrics::links_slot`).
    communicator: String,
    published: Arc<std::sync::Mutex<String>>,
}

impl Live {
    /// The links of `me` among `world_ranks.len()` ranks; `facts` tells each rank's host
    /// and capacity (indexed by rank; a missing entry: nothing known), `probed` the links measured at creation (their figures are the
    /// metrics' first), `config` the detector's thresholds and the peers shown one by one.
    pub(crate) fn new(
        communicator: String,
        me: Rank,
        world_ranks: Vec<Rank>,
        mut facts: Vec<PeerFacts>,
        probed: Option<&Probed>,
        metrics: Arc<Metrics>,
        config: &crate::config::Config,
    ) -> Option<Live> {
        let world = world_ranks.len();
        let matrix_config = MatrixConfig {
            max_peers: config.metrics_peers,
            ..MatrixConfig::default()
        };
        let mut links = LinkMatrix::new(me as usize, world, matrix_config.clone()).ok()?;
        let mut incoming = LinkMatrix::new(me as usize, world, matrix_config).ok()?;
        let mut host_ids: HashMap<String, u32> = HashMap::new();
        let mut group_names: Vec<String> = Vec::new();
        let mut probed_latency: Vec<Option<f64>> = Vec::new();
        // The probe's figures per link (aggregates: their members' mean), for the metrics.
        let mut seeded: Vec<(Dest, f64, f64, u32)> = Vec::new();
        for peer in (0..world as Rank).filter(|&p| p != me) {
            let PeerFacts { host, capacity_bps } = facts
                .get_mut(peer as usize)
                .map(std::mem::take)
                .unwrap_or_default();
            let group = host.map(|h| {
                *host_ids.entry(h.clone()).or_insert_with(|| {
                    group_names.push(h);
                    group_names.len() as u32 - 1
                })
            });
            let figure = |m: &Probed, which: fn(&Probed) -> &Vec<Vec<f64>>| {
                which(m)
                    .get(me as usize)?
                    .get(peer as usize)
                    .copied()
                    .filter(|v| v.is_finite() && *v >= 0.0)
            };
            let latency = probed.and_then(|m| figure(m, |m| &m.latency));
            let bandwidth = probed.and_then(|m| figure(m, |m| &m.bandwidth));
            let before = links.len();
            let spec = PeerSpec {
                group,
                baseline: None,
                capacity_bps: capacity_bps.filter(|c| c.is_finite() && *c > 0.0),
            };
            let dest = links.add_peer(peer as usize, spec).ok()?;
            incoming
                .add_peer(
                    peer as usize,
                    PeerSpec {
                        capacity_bps: None,
                        ..spec
                    },
                )
                .ok()?;
            // A new link; a peer joining an aggregate keeps its first member's latency.
            if links.len() > before {
                probed_latency.push(latency);
            }
            if let (Some(bw), Some(lat)) = (bandwidth, latency) {
                match seeded.iter_mut().find(|s| s.0 == dest) {
                    Some(s) => {
                        s.1 += bw;
                        s.2 += lat;
                        s.3 += 1;
                    }
                    None => seeded.push((dest, bw, lat, 1)),
                }
            }
        }
        let learned = vec![false; links.len()];
        let incoming_learned = vec![false; incoming.len()];
        let congestion = CongestionDetector::new(config.congestion.clone()).ok()?;
        let incoming_congestion = CongestionDetector::new(config.congestion.clone()).ok()?;
        let live = Live {
            links,
            congestion,
            incoming,
            incoming_congestion,
            incoming_learned,
            epoch: Instant::now(),
            last: None,
            rank: world_ranks[me as usize],
            world_ranks,
            probed_latency,
            learned,
            wants_replan: false,
            congested_from: Default::default(),
            congested_to: Default::default(),
            group_names,
            communicator,
            published: metrics.links_slot(),
            metrics,
        };
        let first: Vec<(String, Option<f64>, Option<f64>)> = seeded
            .iter()
            .map(|&(d, bw, lat, n)| (live.label(d), Some(bw / n as f64), Some(lat / n as f64)))
            .collect();
        live.metrics.set_live_links(live.rank, &first);
        Some(live)
    }

    /// A link's name in the metrics and the views: the peer's world rank, `host:NAME`
    /// for an aggregate, or `other`.
    fn label(&self, d: Dest) -> String {
        match d {
            Dest::Peer(p) => self
                .world_ranks
                .get(p)
                .map_or_else(|| p.to_string(), |w| w.to_string()),
            Dest::Group(g) => self
                .group_names
                .get(g as usize)
                .map_or_else(|| format!("group {g}"), |h| format!("host:{h}")),
            Dest::Other => "other".to_string(),
        }
    }

    /// When the next look is due (after a call, or in the middle of a long one).
    pub(crate) fn next_look(&self) -> Option<Instant> {
        self.last.map(|t| t + EVALUATE_EVERY)
    }

    /// Transfers in flight as the detector takes them.
    fn in_flight(&self, transfers: &[Transfer]) -> Vec<InFlight> {
        transfers
            .iter()
            .map(|t| InFlight {
                peer: t.peer as usize,
                bytes: t.bytes,
                started_ns: self.ns(t.began),
            })
            .collect()
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A frame of `bytes` from `peer` arrived between `began` and `ended`.
    pub(crate) fn record(&mut self, peer: Rank, bytes: u64, began: Instant, ended: Instant) {
        let (s, e) = (self.ns(began), self.ns(ended));
        // Only a peer outside the communicator could fail here, and frames come from it.
        let _ = self.links.record(peer as usize, bytes, s, e);
    }

    /// A frame of `bytes` from `peer` was read, its header having arrived at `began`.
    pub(crate) fn record_received(
        &mut self,
        peer: Rank,
        bytes: u64,
        began: Instant,
        ended: Instant,
    ) {
        let (s, e) = (self.ns(began), self.ns(ended));
        let _ = self.incoming.record(peer as usize, bytes, s, e);
    }

    /// The received view's turn: learns baselines, runs its detector (with the frames
    /// being received, `receiving`), logs and counts its alerts, and asks for a re-plan
    /// when a link from a peer stays congested for [`SUSTAINED`].
    fn evaluate_incoming(&mut self, now_ns: u64, receiving: &[InFlight]) {
        let mut learn = Vec::new();
        for (i, (d, s)) in self.incoming.links(now_ns).enumerate() {
            if !self.incoming_learned.get(i).copied().unwrap_or(true)
                && s.throughput_samples >= LEARN_SAMPLES
            {
                if let Some(bw) = s.throughput_bps.filter(|b| *b > 0.0) {
                    learn.push((i, d, bw, s.latency_s.unwrap_or(0.0)));
                }
            }
        }
        for (i, d, throughput_bps, latency_s) in learn {
            let base = Baseline {
                throughput_bps,
                latency_s,
            };
            if self.incoming.set_baseline(d, base).is_ok() {
                self.incoming_learned[i] = true;
            }
        }
        let Ok(alerts) = self
            .incoming_congestion
            .evaluate(&self.incoming, receiving, now_ns)
        else {
            return;
        };
        for a in alerts {
            let topoccl_watch::detect::Subject::Link { dest, .. } = a.subject else {
                continue;
            };
            let from = self.label(dest);
            let figures = match a.kind {
                AlertKind::Stall => a.evidence.first().map_or_else(String::new, |e| {
                    format!(
                        ": a frame in flight {:.3} s, expected {:.3} s",
                        e.observed,
                        e.baseline.unwrap_or(0.0)
                    )
                }),
                _ => self
                    .incoming
                    .link(dest, now_ns)
                    .and_then(|s| Some((s.throughput_bps?, s.baseline?.throughput_bps)))
                    .map_or_else(String::new, |(now, base)| {
                        format!(
                            ": {:.1} MB/s vs {:.1} MB/s baseline ({:.2}×)",
                            now / 1e6,
                            base / 1e6,
                            now / base
                        )
                    }),
            };
            let kind = a.kind.name();
            let firing = a.state == AlertState::Firing;
            // Congestion of a link from one peer is a re-plan's evidence; a stall shows
            // as congestion too once its frame lands.
            if let (AlertKind::Congestion, Dest::Peer(p)) = (a.kind, dest) {
                if firing {
                    self.congested_from.insert(p, (a.since_ns, false));
                } else {
                    self.congested_from.remove(&p);
                }
            }
            if firing {
                self.metrics.count_alert(self.rank, kind);
                tracing::warn!(
                    "rank {}: [FIRING {kind}] link {from}→{} as received{figures}",
                    self.rank,
                    self.rank
                );
            } else {
                tracing::info!(
                    "rank {}: [RESOLVED {kind}] link {from}→{} as received{figures}",
                    self.rank,
                    self.rank
                );
            }
        }
        let sustained = SUSTAINED.as_nanos() as u64;
        for (since, asked) in self.congested_from.values_mut() {
            if !*asked && now_ns.saturating_sub(*since) >= sustained {
                *asked = true;
                self.wants_replan = true;
            }
        }
    }

    /// A call ended: looks at the links, at most every [`EVALUATE_EVERY`].
    pub(crate) fn after_call(&mut self) {
        self.look(&[], &[]);
    }

    /// A call is waiting with these frames half sent and half received: looks at the
    /// links (stalls included), at most every [`EVALUATE_EVERY`].
    pub(crate) fn during_call(&mut self, sending: &[Transfer], receiving: &[Transfer]) {
        self.look(sending, receiving);
    }

    /// Learns baselines, runs both views' detectors, brings the metrics up to date, logs
    /// and counts alerts as they fire and resolve, and publishes the views.
    fn look(&mut self, sending: &[Transfer], receiving: &[Transfer]) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < EVALUATE_EVERY)
        {
            return;
        }
        self.last = Some(now);
        let now_ns = self.ns(now);
        let (sending, receiving) = (self.in_flight(sending), self.in_flight(receiving));
        self.evaluate_incoming(now_ns, &receiving);
        let mut learn = Vec::new();
        let links: Vec<(String, Option<f64>, Option<f64>)> = self
            .links
            .links(now_ns)
            .enumerate()
            .map(|(i, (d, s))| {
                if !self.learned.get(i).copied().unwrap_or(true)
                    && s.throughput_samples >= LEARN_SAMPLES
                {
                    if let Some(bw) = s.throughput_bps.filter(|b| *b > 0.0) {
                        let latency_s = self.probed_latency.get(i).copied().flatten();
                        learn.push((i, d, bw, latency_s.or(s.latency_s).unwrap_or(0.0)));
                    }
                }
                (self.label(d), s.throughput_bps, s.latency_s)
            })
            .collect();
        for (i, d, throughput_bps, latency_s) in learn {
            let base = Baseline {
                throughput_bps,
                latency_s,
            };
            if self.links.set_baseline(d, base).is_ok() {
                self.learned[i] = true;
                tracing::debug!(
                    "rank {}: link to {} learned: {:.0} MB/s",
                    self.rank,
                    self.label(d),
                    throughput_bps / 1e6
                );
            }
        }
        self.metrics.set_live_links(self.rank, &links);
        let alerts = self
            .congestion
            .evaluate(&self.links, &sending, now_ns)
            .unwrap_or_default();
        if !alerts.is_empty() {
            // A link is held congested while any of its alerts (slow, full, stalled) fires.
            let firing: std::collections::BTreeSet<Dest> = self
                .congestion
                .firing()
                .filter_map(|a| match a.subject {
                    topoccl_watch::detect::Subject::Link { dest, .. } => Some(dest),
                    _ => None,
                })
                .collect();
            for a in &alerts {
                if let topoccl_watch::detect::Subject::Link { dest, .. } = a.subject {
                    self.metrics.set_congested(
                        self.rank,
                        &self.label(dest),
                        firing.contains(&dest),
                    );
                }
                if a.state == AlertState::Firing {
                    self.metrics.count_alert(self.rank, a.kind.name());
                    tracing::warn!("rank {}: {}", self.rank, a.log_line());
                } else {
                    tracing::info!("rank {}: {}", self.rank, a.log_line());
                }
            }
            self.congested_to = firing;
        }
        self.publish(now_ns);
    }

    /// Writes both views as JSON into this communicator's `/links` slot: which
    /// communicator and rank, and per link its direction (`out`: as sent to the peer,
    /// `in`: as received from it), the peer (a world rank, or an aggregate), the matrix's
    /// figures (`LinkStats`) and whether it is held congested.
    fn publish(&self, now_ns: u64) {
        let mut rows = Vec::new();
        for (direction, view) in [("out", &self.links), ("in", &self.incoming)] {
            for (d, stats) in view.links(now_ns) {
                let congested = match (direction, d) {
                    ("out", d) => self.congested_to.contains(&d),
                    (_, Dest::Peer(p)) => self.congested_from.contains_key(&p),
                    _ => false,
                };
                rows.push(serde_json::json!({
                    "direction": direction,
                    "peer": self.label(d),
                    "congested": congested,
                    "stats": stats,
                }));
            }
        }
        let view = serde_json::json!({
            "communicator": self.communicator,
            "rank": self.rank,
            "links": rows,
        });
        if let Ok(mut slot) = self.published.lock() {
            *slot = view.to_string();
        }
    }

    /// Whether a link from a peer was found congested since the last [`Self::observations`].
    pub(crate) fn wants_replan(&self) -> bool {
        self.wants_replan
    }

    /// What this rank sees of its links now, for a re-plan: each link from one peer whose
    /// throughput baseline is learned, as received (see the module doc), as (the peer,
    /// achieved share of the baseline), the slowest first, at most `max`. Answers the wish
    /// to re-plan.
    pub(crate) fn observations(&mut self, max: usize) -> Vec<(Rank, f64)> {
        self.wants_replan = false;
        let now = self.ns(Instant::now());
        let mut seen: Vec<(Rank, f64)> = self
            .incoming
            .links(now)
            .filter_map(|(d, s)| match d {
                Dest::Peer(p) => Some((p as Rank, s.throughput_ratio()?)),
                _ => None,
            })
            .filter(|(_, r)| r.is_finite() && *r > 0.0)
            .collect();
        seen.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        seen.truncate(max);
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 11 ranks, rank 0 watching: with 4 peers shown one by one, peer 5 is summed up
    /// under its host `a` and peers 6–10 under `b`; the probe's figures are the metrics'
    /// first (an aggregate's: its members' mean), and every view names links the same.
    #[test]
    fn peers_beyond_the_cap_are_summed_up_per_host() {
        let world = 11usize;
        let metrics = Arc::new(Metrics::new());
        let config = crate::config::Config {
            metrics_peers: 4,
            ..Default::default()
        };
        let probed = Probed {
            hosts: (0..world).map(|r| format!("h{r}")).collect(),
            latency: vec![vec![1e-5; world]; world],
            bandwidth: (0..world)
                .map(|_| (0..world).map(|p| 1e9 * p as f64).collect())
                .collect(),
        };
        let host = |r: Rank| if r < 6 { "a" } else { "b" };
        let mut live = Live::new(
            "world".into(),
            0,
            (0..world as Rank).collect(),
            (0..world as Rank)
                .map(|r| PeerFacts {
                    host: Some(host(r).to_string()),
                    capacity_bps: None,
                })
                .collect(),
            Some(&probed),
            metrics.clone(),
            &config,
        )
        .expect("a live view");
        let text = metrics.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("topoccl_link_throughput_bytes_per_second{"))
            .collect();
        assert_eq!(series.len(), 6, "4 peers and 2 hosts: {series:?}");
        for p in 1..=4 {
            assert!(text.contains(&format!("peer=\"{p}\"")), "{text}");
        }
        assert!(!text.contains("peer=\"5\""), "{text}");
        // Host b's peers 6..=10 probed at 6..10 GB/s: their mean.
        assert!(
            series
                .iter()
                .any(|l| l.contains("peer=\"host:b\"") && l.ends_with(" 8000000000.0")),
            "{series:?}"
        );
        assert!(series.iter().any(|l| l.contains("peer=\"host:a\"")));
        // Traffic to a summed-up peer lands on its host's link, named the same in /links.
        let t = Instant::now();
        live.record(7, 1 << 20, t, t + Duration::from_millis(1));
        live.after_call();
        let view: serde_json::Value =
            serde_json::from_str(&live.published.lock().unwrap()).unwrap();
        let b = view["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["direction"] == "out" && l["peer"] == "host:b")
            .unwrap_or_else(|| panic!("{view}"));
        assert_eq!(b["stats"]["bytes_total"], 1 << 20, "{b}");
    }

    /// Rank 0's view of a world of 2, default settings, no probe.
    fn two_ranks(metrics: Arc<Metrics>) -> Live {
        Live::new(
            "world".into(),
            0,
            vec![0, 1],
            Vec::new(),
            None,
            metrics,
            &Default::default(),
        )
        .expect("a live view")
    }

    /// A frame in flight far past its expected time raises a `stall` on its link while it
    /// lasts, through the look in the middle of a call.
    #[test]
    fn a_frame_in_flight_too_long_is_a_stall() {
        let metrics = Arc::new(Metrics::new());
        let mut live = two_ranks(metrics.clone());
        let began = Instant::now();
        let sending = [Transfer {
            peer: 1,
            bytes: 1 << 20,
            began,
        }];
        // No baseline yet: expected 0 s, so a stall from 100 ms on.
        std::thread::sleep(Duration::from_millis(150));
        live.during_call(&sending, &[]);
        assert!(live.congested_to.contains(&Dest::Peer(1)));
        let text = metrics.encode();
        assert!(
            text.contains("topoccl_alerts_total{rank=\"0\",kind=\"stall\"} 1"),
            "{text}"
        );
        assert!(text.contains("topoccl_link_congested{rank=\"0\",peer=\"1\"} 1"));
        // A frame received too long stalls the link as received, not as sent.
        let mut live2 = two_ranks(Arc::new(Metrics::new()));
        let sending = [Transfer {
            began: Instant::now(),
            ..sending[0]
        }];
        std::thread::sleep(Duration::from_millis(150));
        live2.during_call(&[], &sending);
        assert!(live2.congested_to.is_empty());
        assert!(live2.incoming_congestion.firing().count() == 1);
    }

    /// With a capacity stated (a topology file), a link kept above 70% of it is flagged:
    /// 10 MB sent over a second on a 10 MB/s link is; the same on a 100 MB/s link is not.
    #[test]
    fn a_link_kept_near_its_stated_capacity_is_flagged() {
        use topoccl_watch::detect::{HysteresisConfig, Persist};
        let metrics = Arc::new(Metrics::new());
        let mut config = crate::config::Config::default();
        config.congestion.congestion = HysteresisConfig {
            raise_after: Persist::Samples(1),
            ..config.congestion.congestion
        };
        let facts = vec![
            PeerFacts::default(),
            PeerFacts {
                host: None,
                capacity_bps: Some(10e6),
            },
            PeerFacts {
                host: None,
                capacity_bps: Some(100e6),
            },
        ];
        let mut live = Live::new(
            "world".into(),
            0,
            vec![0, 1, 2],
            facts,
            None,
            metrics.clone(),
            &config,
        )
        .expect("a live view");
        let start = live.epoch;
        std::thread::sleep(Duration::from_millis(1300));
        for i in 0..10u64 {
            let began = start + Duration::from_millis(100 * i);
            for peer in [1, 2] {
                live.record(peer, 1_000_000, began, began + Duration::from_millis(100));
            }
        }
        live.after_call();
        let text = metrics.encode();
        assert!(
            text.contains("topoccl_link_congested{rank=\"0\",peer=\"1\"} 1"),
            "{text}"
        );
        assert!(live.congested_to.contains(&Dest::Peer(1)));
        assert!(!live.congested_to.contains(&Dest::Peer(2)), "{text}");
    }
}
