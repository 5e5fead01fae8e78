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
//! transfers is not detected by throughput (latency and stalls still are). Peers beyond
//! the matrix's 64 are aggregated by host.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use topoccl_plan::Rank;
use topoccl_topo::matrix::LinkMatrix as Probed;
use topoccl_watch::detect::{AlertState, CongestionConfig, CongestionDetector};
use topoccl_watch::matrix::{Baseline, Dest, LinkMatrix, MatrixConfig, PeerSpec};

use crate::metrics::Metrics;

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
    /// The communicator's name and its `/links` slot (`Metrics::links_slot`).
    communicator: String,
    published: Arc<std::sync::Mutex<String>>,
}

impl Live {
    /// The links of `me` among `world_ranks.len()` ranks; `hosts` names each rank's host
    /// (for aggregation), `probed` the links measured at creation.
    pub(crate) fn new(
        communicator: String,
        me: Rank,
        world_ranks: Vec<Rank>,
        hosts: impl Fn(Rank) -> Option<String>,
        probed: Option<&Probed>,
        metrics: Arc<Metrics>,
    ) -> Option<Live> {
        let world = world_ranks.len();
        let mut links = LinkMatrix::new(me as usize, world, MatrixConfig::default()).ok()?;
        let mut incoming = LinkMatrix::new(me as usize, world, MatrixConfig::default()).ok()?;
        let mut host_ids: HashMap<String, u32> = HashMap::new();
        let mut probed_latency: Vec<Option<f64>> = Vec::new();
        for peer in (0..world as Rank).filter(|&p| p != me) {
            let group = hosts(peer).map(|h| {
                let next = host_ids.len() as u32;
                *host_ids.entry(h).or_insert(next)
            });
            let latency = probed
                .and_then(|m| m.latency.get(me as usize)?.get(peer as usize).copied())
                .filter(|l| l.is_finite() && *l >= 0.0);
            let before = links.len();
            let spec = PeerSpec {
                group,
                baseline: None,
                capacity_bps: None,
            };
            links.add_peer(peer as usize, spec).ok()?;
            incoming.add_peer(peer as usize, spec).ok()?;
            // A new link; a peer joining an aggregate keeps its first member's latency.
            if links.len() > before {
                probed_latency.push(latency);
            }
        }
        let learned = vec![false; links.len()];
        let incoming_learned = vec![false; incoming.len()];
        let congestion = CongestionDetector::new(CongestionConfig::default()).ok()?;
        let incoming_congestion = CongestionDetector::new(CongestionConfig::default()).ok()?;
        Some(Live {
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
            communicator,
            published: metrics.links_slot(),
            metrics,
        })
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

    /// The received view's turn after a call: learns baselines, runs its detector, logs
    /// and counts its alerts, and asks for a re-plan when a link from a peer fires.
    fn evaluate_incoming(&mut self, now_ns: u64) {
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
            .evaluate(&self.incoming, &[], now_ns)
        else {
            return;
        };
        for a in alerts {
            let topoccl_watch::detect::Subject::Link {
                dest: Dest::Peer(p),
                ..
            } = a.subject
            else {
                continue;
            };
            let from = self.world_ranks.get(p).copied().unwrap_or(p as Rank);
            let stats = self.incoming.link(Dest::Peer(p), now_ns);
            let figures = stats
                .and_then(|s| Some((s.throughput_bps?, s.baseline?.throughput_bps)))
                .map_or_else(String::new, |(now, base)| {
                    format!(
                        ": {:.1} MB/s vs {:.1} MB/s baseline ({:.2}×)",
                        now / 1e6,
                        base / 1e6,
                        now / base
                    )
                });
            if a.state == AlertState::Firing {
                self.congested_from.insert(p, (a.since_ns, false));
                self.metrics.count_alert(self.rank, a.kind.name());
                tracing::warn!(
                    "rank {}: [FIRING congestion] link {from}→{} as received{figures}",
                    self.rank,
                    self.rank
                );
            } else {
                self.congested_from.remove(&p);
                tracing::info!(
                    "rank {}: [RESOLVED congestion] link {from}→{} as received{figures}",
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

    /// A call ended: evaluates and publishes, at most every [`EVALUATE_EVERY`].
    pub(crate) fn after_call(&mut self) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < EVALUATE_EVERY)
        {
            return;
        }
        self.last = Some(now);
        let now_ns = self.ns(now);
        self.evaluate_incoming(now_ns);
        let name = |d: Dest| -> String {
            match d {
                Dest::Peer(p) => self
                    .world_ranks
                    .get(p)
                    .map_or_else(|| p.to_string(), |w| w.to_string()),
                other => other.to_string(),
            }
        };
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
                (name(d), s.throughput_bps, s.latency_s)
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
                    name(d),
                    throughput_bps / 1e6
                );
            }
        }
        self.metrics.set_live_links(self.rank, &links);
        let alerts = self
            .congestion
            .evaluate(&self.links, &[], now_ns)
            .unwrap_or_default();
        for a in alerts {
            let (peer, dest) = match a.subject {
                topoccl_watch::detect::Subject::Link { dest, .. } => (name(dest), Some(dest)),
                topoccl_watch::detect::Subject::Rank { rank } => (rank.to_string(), None),
            };
            let firing = a.state == AlertState::Firing;
            if let Some(d) = dest {
                if firing {
                    self.congested_to.insert(d);
                } else {
                    self.congested_to.remove(&d);
                }
            }
            self.metrics.set_congested(self.rank, &peer, firing);
            if firing {
                self.metrics.count_alert(self.rank, a.kind.name());
                tracing::warn!("rank {}: {}", self.rank, a.log_line());
            } else {
                tracing::info!("rank {}: {}", self.rank, a.log_line());
            }
        }
        self.publish(now_ns);
    }

    /// Writes both views as JSON into this communicator's `/links` slot: which
    /// communicator and rank, and per link its direction (`out`: as sent to the peer,
    /// `in`: as received from it), the peer (a world rank, or an aggregate), the matrix's
    /// figures (`LinkStats`) and whether it is held congested.
    fn publish(&self, now_ns: u64) {
        let name = |d: Dest| -> String {
            match d {
                Dest::Peer(p) => self
                    .world_ranks
                    .get(p)
                    .map_or_else(|| p.to_string(), |w| w.to_string()),
                other => other.to_string(),
            }
        };
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
                    "peer": name(d),
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
