//! The live communication matrix: this rank's view of every link it uses, fed by the
//! transfers the runtime actually made, and the merge of all ranks' rows into a
//! world × world matrix for the launcher.
//!
//! # What a link keeps
//!
//! For each destination ([`Dest`]) a [`LinkStats`]: bytes and transfers in total, the
//! achieved throughput (smoothed and over the last window), the latency, the baseline the
//! creation-time probe measured, the link's capacity when the caller knows it, and the time
//! of the last update.
//!
//! # Estimators
//!
//! A transfer of `b` bytes that started at `start_ns` and ended at `end_ns` lasts
//! `t = max(end_ns − start_ns, 1 ns)`. With `S` = [`MatrixConfig::small_transfer_bytes`]:
//!
//! * **Throughput** (transfers with `b > S`, which are bandwidth-bound): the sample is
//!   `r = b / t` (bytes/s), folded into an exponentially weighted mean that runs on
//!   *transfer time*: `ewma ← ewma + w·(r − ewma)` with `w = 1 − exp(−t/τ)`,
//!   `τ` = [`MatrixConfig::throughput_tau_s`] (0.2 s by default). The mean thus weighs
//!   the last `τ` seconds of time spent transferring; idle gaps carry no information
//!   about the link's rate and do not age it, so one sample after a long pause cannot
//!   swing it. The price: on a link busy a fraction `u` of the time, the mean covers 63%
//!   of a step in `τ/u` of wall time (0.2 s when busy throughout, 2 s at 10% duty).
//!   The first sample initialises it.
//! * **Latency** (transfers with `b ≤ S`, which are latency-bound): the sample is the
//!   startup estimate `ℓ = max(t − b/B, 0)` with `B` the baseline throughput (`ℓ = t`
//!   without a baseline), folded in with a constant gain `g` per sample
//!   (`ewma ← ewma + g·(ℓ − ewma)`, `g` = [`MatrixConfig::latency_gain`], 1/8 by default as
//!   TCP's smoothed round-trip time); the minimum sample is kept too. Large transfers are
//!   left out because under congestion their `t − b/B` would count lost bandwidth as
//!   latency.
//! * **Last window**: time is cut into windows of [`MatrixConfig::window_s`] aligned on
//!   multiples of the window length; a transfer counts in the window its end falls in (a
//!   late report whose window is already closed counts in the current one). The last
//!   complete window's figures are its bytes and transfers, its *rate* (all bytes over
//!   the window's length: the load carried, which over the capacity is the utilisation)
//!   and its *throughput* (bulk bytes over the summed durations of bulk transfers).
//!   Summed durations make overlapping transfers to one peer a per-transfer rate, not an
//!   aggregate.
//!
//! # Limits
//!
//! Memory is bounded and fixed after warm-up: at most [`MatrixConfig::max_peers`]
//! destinations are tracked one by one; peers added beyond that are aggregated by the
//! caller-supplied level label (host, rack or zone index) into at most
//! [`MatrixConfig::max_groups`] groups, and anything beyond that into one "other" link.
//! The peer → link index is one `u32` per rank of the world (fixed at creation).
//! [`LinkMatrix::record`] is O(1) and does not allocate. An aggregate's baseline is the
//! mean of its members' baselines and its capacity the largest of theirs (they share
//! this rank's link). [`WorldMatrix::dense`] refuses worlds above [`MAX_DENSE_WORLD`].
//! Counters saturate at `u64::MAX` rather than wrap.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The largest world [`WorldMatrix::dense`] lays out as a full matrix (16 Mi cells).
pub const MAX_DENSE_WORLD: usize = 4096;

/// The largest value of [`MatrixConfig::max_peers`] and [`MatrixConfig::max_groups`].
pub const MAX_TRACKED: usize = 1 << 16;

const NO_SLOT: u32 = u32::MAX;
const NS_PER_S: f64 = 1e9;

/// A configuration field outside its valid range; shared by the matrix and the detectors.
#[derive(Clone, Debug, Error, PartialEq)]
#[error("{field} = {value} is invalid: {expected}")]
pub struct InvalidField {
    /// The field's name as written in the configuration (`section.field`).
    pub field: String,
    /// The value given, as text.
    pub value: String,
    /// What the field accepts.
    pub expected: String,
}

impl InvalidField {
    /// An error for `field`, which was given `value` but accepts `expected`.
    pub fn new(field: &str, value: impl fmt::Display, expected: &str) -> InvalidField {
        InvalidField {
            field: field.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// Checks that `value` is finite and within `(0, max]`, naming `field` otherwise.
pub(crate) fn check_positive(field: &str, value: f64, max: f64) -> Result<(), InvalidField> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else if max == f64::MAX {
        Err(InvalidField::new(
            field,
            value,
            "give a finite number above 0",
        ))
    } else {
        Err(InvalidField::new(
            field,
            value,
            &format!("give a finite number above 0 and at most {max}"),
        ))
    }
}

/// Checks that `value` is finite and within `[min, max]`, naming `field` otherwise.
pub(crate) fn check_range(field: &str, value: f64, min: f64, max: f64) -> Result<(), InvalidField> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        Err(InvalidField::new(
            field,
            value,
            &format!("give a finite number from {min} to {max}"),
        ))
    }
}

/// Converts seconds from a validated configuration into nanoseconds (at least 1).
pub(crate) fn seconds_to_ns(seconds: f64) -> u64 {
    // Validated values are finite and non-negative; `as` saturates on overflow.
    ((seconds * NS_PER_S).round() as u64).max(1)
}

/// What the matrix refuses.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum MatrixError {
    /// A configuration field out of range.
    #[error("matrix configuration: {0}")]
    Config(#[from] InvalidField),
    /// A rank index that is not in the world.
    #[error("{arg} = {rank} is not a rank of this world of {world}: give a rank from 0 to {max}", max = world.saturating_sub(1))]
    RankOutOfRange {
        /// The argument's name.
        arg: &'static str,
        /// The value given.
        rank: usize,
        /// The world size.
        world: usize,
    },
    /// A world of no ranks.
    #[error("world = 0: a matrix needs a world of at least 1 rank")]
    EmptyWorld,
    /// `add_peer` with this rank itself.
    #[error("peer = {peer} is this rank itself: a link needs another rank")]
    SelfPeer {
        /// The rank given.
        peer: usize,
    },
    /// `add_peer` twice for one peer.
    #[error("peer = {peer} was already added: add each peer once")]
    DuplicatePeer {
        /// The rank given.
        peer: usize,
    },
    /// `record` for a peer never added.
    #[error(
        "peer = {peer} was never added: call add_peer({peer}, …) before recording its transfers"
    )]
    UnknownPeer {
        /// The rank given.
        peer: usize,
    },
    /// A transfer that ended before it started.
    #[error("end_ns = {end_ns} is before start_ns = {start_ns}: pass the times in the order the clock read them")]
    EndBeforeStart {
        /// Start time given.
        start_ns: u64,
        /// End time given.
        end_ns: u64,
    },
    /// A merge with rows of different world sizes.
    #[error("row of rank {rank} has world = {found}, the first row has world = {expected}: merge rows of one world")]
    WorldMismatch {
        /// The rank whose row differs.
        rank: usize,
        /// The first row's world.
        expected: usize,
        /// This row's world.
        found: usize,
    },
    /// A merge with two rows from one rank.
    #[error("rank {rank} has two rows: merge one row per rank")]
    DuplicateRow {
        /// The rank with two rows.
        rank: usize,
    },
    /// A merge of no rows.
    #[error("rows is empty: merge at least one rank's row")]
    NoRows,
    /// A dense layout of too large a world.
    #[error("world = {world} is too large for a dense matrix (at most {MAX_DENSE_WORLD}): use WorldMatrix::get or the sparse links")]
    TooLargeForDense {
        /// The world size.
        world: usize,
    },
}

/// Tuning of a [`LinkMatrix`]; see the module doc for the estimators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatrixConfig {
    /// Peers tracked one by one (1 ..= 65 536; default 64).
    pub max_peers: usize,
    /// Aggregate groups beyond those (0 ..= 65 536; default 64).
    pub max_groups: usize,
    /// Time constant of the throughput mean, in seconds of transfer time (default 0.2).
    pub throughput_tau_s: f64,
    /// Length of the windows, in seconds (default 1).
    pub window_s: f64,
    /// Transfers of at most this many bytes feed latency, larger ones throughput
    /// (default 65 536).
    pub small_transfer_bytes: u64,
    /// Gain of the latency mean per sample, in (0, 1] (default 0.125).
    pub latency_gain: f64,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        MatrixConfig {
            max_peers: 64,
            max_groups: 64,
            throughput_tau_s: 0.2,
            window_s: 1.0,
            small_transfer_bytes: 64 * 1024,
            latency_gain: 0.125,
        }
    }
}

impl MatrixConfig {
    /// Checks every field; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if self.max_peers == 0 || self.max_peers > MAX_TRACKED {
            return Err(InvalidField::new(
                "matrix.max_peers",
                self.max_peers,
                &format!("give 1 to {MAX_TRACKED}"),
            ));
        }
        if self.max_groups > MAX_TRACKED {
            return Err(InvalidField::new(
                "matrix.max_groups",
                self.max_groups,
                &format!("give 0 to {MAX_TRACKED}"),
            ));
        }
        check_positive("matrix.throughput_tau_s", self.throughput_tau_s, 3600.0)?;
        check_positive("matrix.window_s", self.window_s, 3600.0)?;
        check_positive("matrix.latency_gain", self.latency_gain, 1.0)?;
        Ok(())
    }
}

/// What the creation-time probe measured on a link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Throughput, bytes per second (> 0).
    pub throughput_bps: f64,
    /// Latency, seconds (≥ 0).
    pub latency_s: f64,
}

/// How a peer is tracked, given when it is added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// The level label (host, rack or zone index) the peer is aggregated under once
    /// [`MatrixConfig::max_peers`] are tracked; `None` puts it in "other".
    pub group: Option<u32>,
    /// The probe's figures, when it ran.
    pub baseline: Option<Baseline>,
    /// The link's capacity in bytes per second, when known.
    pub capacity_bps: Option<f64>,
}

/// Where a link leads: one peer, an aggregate of peers by level label, or the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dest {
    /// One peer rank.
    Peer(usize),
    /// The peers aggregated under one level label.
    Group(u32),
    /// Peers beyond every cap.
    Other,
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Peer(rank) => write!(f, "{rank}"),
            Dest::Group(label) => write!(f, "group {label}"),
            Dest::Other => write!(f, "other"),
        }
    }
}

/// Figures of one complete window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    /// Start of the window, ns.
    pub start_ns: u64,
    /// End of the window (exclusive), ns.
    pub end_ns: u64,
    /// Bytes of the transfers that ended in it.
    pub bytes: u64,
    /// Transfers that ended in it.
    pub transfers: u64,
    /// All bytes over the window's length, bytes/s (the load carried).
    pub rate_bps: f64,
    /// Bulk bytes over the bulk transfers' summed durations, bytes/s; `None` without any.
    pub throughput_bps: Option<f64>,
}

/// The figures of one link, as [`LinkMatrix::snapshot`] and [`LinkMatrix::link`] give them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Peers this link stands for (1 for a single peer).
    pub members: u32,
    /// Bytes in total.
    pub bytes_total: u64,
    /// Transfers in total.
    pub transfers_total: u64,
    /// Smoothed throughput, bytes/s; `None` before the first bulk transfer.
    pub throughput_bps: Option<f64>,
    /// Bulk transfers folded into `throughput_bps`.
    pub throughput_samples: u64,
    /// End of the last bulk transfer, ns.
    pub last_throughput_ns: Option<u64>,
    /// Smoothed latency, seconds; `None` before the first small transfer.
    pub latency_s: Option<f64>,
    /// Smallest latency sample, seconds.
    pub latency_min_s: Option<f64>,
    /// End of the last small transfer, ns.
    pub last_latency_ns: Option<u64>,
    /// The last complete window; `None` before one completed.
    pub window: Option<WindowFigures>,
    /// The probe's figures (an aggregate's: its members' mean).
    pub baseline: Option<Baseline>,
    /// Capacity, bytes/s (an aggregate's: its members' largest).
    pub capacity_bps: Option<f64>,
    /// End of the last transfer recorded, ns.
    pub last_update_ns: Option<u64>,
}

impl LinkStats {
    /// Achieved over baseline throughput, when both are known.
    pub fn throughput_ratio(&self) -> Option<f64> {
        match (self.throughput_bps, self.baseline) {
            (Some(achieved), Some(base)) => Some(achieved / base.throughput_bps),
            _ => None,
        }
    }

    /// The last window's rate over the capacity, when both are known.
    pub fn utilisation(&self) -> Option<f64> {
        match (self.window, self.capacity_bps) {
            (Some(window), Some(capacity)) => Some(window.rate_bps / capacity),
            _ => None,
        }
    }
}

/// Accumulators of the window in progress.
#[derive(Clone, Copy, Debug, Default)]
struct OpenWindow {
    index: u64,
    bytes: u64,
    transfers: u64,
    bulk_bytes: u64,
    bulk_busy_ns: u64,
}

impl OpenWindow {
    fn close(&self, window_ns: u64) -> WindowFigures {
        let start_ns = self.index.saturating_mul(window_ns);
        WindowFigures {
            start_ns,
            end_ns: start_ns.saturating_add(window_ns),
            bytes: self.bytes,
            transfers: self.transfers,
            rate_bps: self.bytes as f64 * NS_PER_S / window_ns as f64,
            throughput_bps: (self.bulk_busy_ns > 0)
                .then(|| self.bulk_bytes as f64 * NS_PER_S / self.bulk_busy_ns as f64),
        }
    }

    fn empty(index: u64) -> OpenWindow {
        OpenWindow {
            index,
            ..OpenWindow::default()
        }
    }
}

/// One tracked link: its figures and the state behind them.
#[derive(Clone, Debug)]
struct Slot {
    dest: Dest,
    stats: LinkStats,
    open: Option<OpenWindow>,
    baseline_sum: (f64, f64),
    baseline_count: u32,
}

impl Slot {
    fn new(dest: Dest) -> Slot {
        Slot {
            dest,
            stats: LinkStats::default(),
            open: None,
            baseline_sum: (0.0, 0.0),
            baseline_count: 0,
        }
    }

    fn join(&mut self, spec: &PeerSpec) {
        self.stats.members = self.stats.members.saturating_add(1);
        if let Some(base) = spec.baseline {
            self.baseline_sum.0 += base.throughput_bps;
            self.baseline_sum.1 += base.latency_s;
            self.baseline_count += 1;
            let n = f64::from(self.baseline_count);
            self.stats.baseline = Some(Baseline {
                throughput_bps: self.baseline_sum.0 / n,
                latency_s: self.baseline_sum.1 / n,
            });
        }
        if let Some(cap) = spec.capacity_bps {
            let known = self.stats.capacity_bps.unwrap_or(0.0);
            self.stats.capacity_bps = Some(known.max(cap));
        }
    }

    /// The last complete window as of a time in window `index`.
    fn window_as_of(&self, index: u64, window_ns: u64) -> Option<WindowFigures> {
        let open = self.open?;
        if index <= open.index {
            self.stats.window
        } else if index == open.index + 1 {
            Some(open.close(window_ns))
        } else {
            Some(OpenWindow::empty(index - 1).close(window_ns))
        }
    }

    fn record(&mut self, bytes: u64, start_ns: u64, end_ns: u64, k: &Constants) {
        let duration_ns = end_ns.saturating_sub(start_ns).max(1);
        let t = duration_ns as f64 / NS_PER_S;
        let s = &mut self.stats;
        s.bytes_total = s.bytes_total.saturating_add(bytes);
        s.transfers_total = s.transfers_total.saturating_add(1);
        s.last_update_ns = Some(s.last_update_ns.map_or(end_ns, |last| last.max(end_ns)));
        let bulk = bytes > k.small_transfer_bytes;
        if bulk {
            let rate = bytes as f64 / t;
            let weight = 1.0 - (-t / k.tau_s).exp();
            s.throughput_bps = Some(match s.throughput_bps {
                Some(mean) => mean + weight * (rate - mean),
                None => rate,
            });
            s.throughput_samples = s.throughput_samples.saturating_add(1);
            s.last_throughput_ns = Some(s.last_throughput_ns.map_or(end_ns, |l| l.max(end_ns)));
        } else {
            let wire = s
                .baseline
                .map_or(0.0, |base| bytes as f64 / base.throughput_bps);
            let sample = (t - wire).max(0.0);
            s.latency_s = Some(match s.latency_s {
                Some(mean) => mean + k.latency_gain * (sample - mean),
                None => sample,
            });
            s.latency_min_s = Some(s.latency_min_s.map_or(sample, |m| m.min(sample)));
            s.last_latency_ns = Some(s.last_latency_ns.map_or(end_ns, |l| l.max(end_ns)));
        }
        // Window: roll forward when this transfer ends in a later window.
        let index = end_ns / k.window_ns;
        let mut open = match self.open {
            None => OpenWindow::empty(index),
            Some(open) if index > open.index => {
                self.stats.window = self.window_as_of(index, k.window_ns);
                OpenWindow::empty(index)
            }
            Some(open) => open,
        };
        open.bytes = open.bytes.saturating_add(bytes);
        open.transfers = open.transfers.saturating_add(1);
        if bulk {
            open.bulk_bytes = open.bulk_bytes.saturating_add(bytes);
            open.bulk_busy_ns = open.bulk_busy_ns.saturating_add(duration_ns);
        }
        self.open = Some(open);
    }

    fn stats_as_of(&self, now_ns: u64, window_ns: u64) -> LinkStats {
        LinkStats {
            window: self.window_as_of(now_ns / window_ns, window_ns),
            ..self.stats.clone()
        }
    }
}

/// Configuration turned into the numbers the hot path uses.
#[derive(Clone, Copy, Debug)]
struct Constants {
    tau_s: f64,
    window_ns: u64,
    small_transfer_bytes: u64,
    latency_gain: f64,
}

/// This rank's links and their figures; see the module doc.
#[derive(Clone, Debug)]
pub struct LinkMatrix {
    me: usize,
    world: usize,
    config: MatrixConfig,
    k: Constants,
    slot_of: Vec<u32>,
    slots: Vec<Slot>,
    peers_tracked: usize,
    groups_tracked: usize,
}

impl LinkMatrix {
    /// An empty matrix for rank `me` of a world of `world` ranks.
    pub fn new(me: usize, world: usize, config: MatrixConfig) -> Result<LinkMatrix, MatrixError> {
        config.validate()?;
        if world == 0 {
            return Err(MatrixError::EmptyWorld);
        }
        check_rank("me", me, world)?;
        let k = Constants {
            tau_s: config.throughput_tau_s,
            window_ns: seconds_to_ns(config.window_s),
            small_transfer_bytes: config.small_transfer_bytes,
            latency_gain: config.latency_gain,
        };
        Ok(LinkMatrix {
            me,
            world,
            config,
            k,
            slot_of: vec![NO_SLOT; world],
            slots: Vec::new(),
            peers_tracked: 0,
            groups_tracked: 0,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.me
    }

    /// The world size.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The configuration.
    pub fn config(&self) -> &MatrixConfig {
        &self.config
    }

    /// Starts tracking `peer` and returns the link it is counted under: its own while
    /// fewer than `max_peers` are tracked, else its group's, else "other".
    pub fn add_peer(&mut self, peer: usize, spec: PeerSpec) -> Result<Dest, MatrixError> {
        check_rank("peer", peer, self.world)?;
        if peer == self.me {
            return Err(MatrixError::SelfPeer { peer });
        }
        if self.slot_of[peer] != NO_SLOT {
            return Err(MatrixError::DuplicatePeer { peer });
        }
        if let Some(base) = spec.baseline {
            check_positive(
                "spec.baseline.throughput_bps",
                base.throughput_bps,
                f64::MAX,
            )?;
            check_range("spec.baseline.latency_s", base.latency_s, 0.0, 3600.0)?;
        }
        if let Some(cap) = spec.capacity_bps {
            check_positive("spec.capacity_bps", cap, f64::MAX)?;
        }
        let dest = if self.peers_tracked < self.config.max_peers {
            self.peers_tracked += 1;
            Dest::Peer(peer)
        } else {
            match spec.group {
                Some(label) if self.find(Dest::Group(label)).is_some() => Dest::Group(label),
                Some(label) if self.groups_tracked < self.config.max_groups => {
                    self.groups_tracked += 1;
                    Dest::Group(label)
                }
                _ => Dest::Other,
            }
        };
        let index = match self.find(dest) {
            Some(index) => index,
            None => {
                self.slots.push(Slot::new(dest));
                self.slots.len() - 1
            }
        };
        self.slots[index].join(&spec);
        // At most max_peers + max_groups + 1 ≤ 2·65 536 + 1 slots: fits in u32.
        self.slot_of[peer] = index as u32;
        Ok(dest)
    }

    fn find(&self, dest: Dest) -> Option<usize> {
        self.slots.iter().position(|slot| slot.dest == dest)
    }

    /// Counts a transfer of `bytes` to or from `peer` that ran from `start_ns` to
    /// `end_ns`. O(1), no allocation.
    pub fn record(
        &mut self,
        peer: usize,
        bytes: u64,
        start_ns: u64,
        end_ns: u64,
    ) -> Result<(), MatrixError> {
        check_rank("peer", peer, self.world)?;
        if end_ns < start_ns {
            return Err(MatrixError::EndBeforeStart { start_ns, end_ns });
        }
        let index = self.slot_of[peer];
        if index == NO_SLOT {
            return Err(MatrixError::UnknownPeer { peer });
        }
        let k = self.k;
        self.slots[index as usize].record(bytes, start_ns, end_ns, &k);
        Ok(())
    }

    /// Index of the link `peer` is counted under, in the order of [`LinkMatrix::links`].
    pub(crate) fn link_index(&self, peer: usize) -> Option<usize> {
        let index = *self.slot_of.get(peer)?;
        (index != NO_SLOT).then_some(index as usize)
    }

    /// The baseline of the link at `index` (in the order of [`LinkMatrix::links`]).
    pub(crate) fn baseline_at(&self, index: usize) -> Option<Baseline> {
        self.slots.get(index)?.stats.baseline
    }

    /// Replaces the baseline of the link `dest`, e.g. with what its first traffic achieved
    /// (the detectors judge later traffic against it). Checked as [`LinkMatrix::add_peer`]
    /// checks a peer's.
    pub fn set_baseline(&mut self, dest: Dest, baseline: Baseline) -> Result<(), MatrixError> {
        check_positive("baseline.throughput_bps", baseline.throughput_bps, f64::MAX)?;
        check_range("baseline.latency_s", baseline.latency_s, 0.0, 3600.0)?;
        let index = self.find(dest).ok_or(MatrixError::UnknownPeer {
            peer: match dest {
                Dest::Peer(p) => p,
                _ => usize::MAX,
            },
        })?;
        self.slots[index].stats.baseline = Some(baseline);
        Ok(())
    }

    /// The link `peer` is counted under, once added.
    pub fn dest_of(&self, peer: usize) -> Option<Dest> {
        let index = *self.slot_of.get(peer)?;
        self.slots.get(index as usize).map(|slot| slot.dest)
    }

    /// Number of links tracked (at most `max_peers + max_groups + 1`).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no peer was added yet.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The links in the order they were created, with their figures as of `now_ns`
    /// (the window figures depend on the time).
    pub fn links(&self, now_ns: u64) -> impl Iterator<Item = (Dest, LinkStats)> + '_ {
        self.slots
            .iter()
            .map(move |slot| (slot.dest, slot.stats_as_of(now_ns, self.k.window_ns)))
    }

    /// One link's figures as of `now_ns`.
    pub fn link(&self, dest: Dest, now_ns: u64) -> Option<LinkStats> {
        let slot = &self.slots[self.find(dest)?];
        Some(slot.stats_as_of(now_ns, self.k.window_ns))
    }

    /// This rank's row as of `now_ns`, sorted by destination, ready for JSON.
    pub fn snapshot(&self, now_ns: u64) -> MatrixSnapshot {
        let mut links: Vec<LinkSnapshot> = self
            .links(now_ns)
            .map(|(dest, stats)| LinkSnapshot { dest, stats })
            .collect();
        links.sort_by_key(|link| link.dest);
        MatrixSnapshot {
            rank: self.me,
            world: self.world,
            at_ns: now_ns,
            links,
        }
    }
}

fn check_rank(arg: &'static str, rank: usize, world: usize) -> Result<(), MatrixError> {
    if rank < world {
        Ok(())
    } else {
        Err(MatrixError::RankOutOfRange { arg, rank, world })
    }
}

/// One link of a row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSnapshot {
    /// Where it leads.
    pub dest: Dest,
    /// Its figures.
    pub stats: LinkStats,
}

/// One rank's row: what [`LinkMatrix::snapshot`] gives and the launcher gathers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatrixSnapshot {
    /// The rank the row belongs to.
    pub rank: usize,
    /// The world size.
    pub world: usize,
    /// When it was taken, ns of the rank's clock.
    pub at_ns: u64,
    /// Its links, sorted by destination.
    pub links: Vec<LinkSnapshot>,
}

/// One link of the world matrix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldLink {
    /// The rank whose row it came from.
    pub src: usize,
    /// Where it leads.
    pub dest: Dest,
    /// Its figures.
    pub stats: LinkStats,
}

/// All ranks' rows merged: sparse, sorted by source then destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldMatrix {
    /// The world size.
    pub world: usize,
    /// Ranks whose row was merged, ascending.
    pub ranks: Vec<usize>,
    /// The links, sorted by (`src`, `dest`).
    pub links: Vec<WorldLink>,
}

impl WorldMatrix {
    /// Merges rows of one world, at most one per rank; ranks without a row are allowed
    /// (see [`WorldMatrix::missing_ranks`]).
    pub fn merge(rows: &[MatrixSnapshot]) -> Result<WorldMatrix, MatrixError> {
        let first = rows.first().ok_or(MatrixError::NoRows)?;
        let world = first.world;
        let mut ranks = Vec::with_capacity(rows.len());
        for row in rows {
            if row.world != world {
                return Err(MatrixError::WorldMismatch {
                    rank: row.rank,
                    expected: world,
                    found: row.world,
                });
            }
            check_rank("row.rank", row.rank, world)?;
            ranks.push(row.rank);
        }
        ranks.sort_unstable();
        if let Some(pair) = ranks.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(MatrixError::DuplicateRow { rank: pair[0] });
        }
        let mut links: Vec<WorldLink> = rows
            .iter()
            .flat_map(|row| {
                row.links.iter().map(move |link| WorldLink {
                    src: row.rank,
                    dest: link.dest,
                    stats: link.stats.clone(),
                })
            })
            .collect();
        links.sort_by_key(|link| (link.src, link.dest));
        Ok(WorldMatrix {
            world,
            ranks,
            links,
        })
    }

    /// Ranks without a row.
    pub fn missing_ranks(&self) -> Vec<usize> {
        (0..self.world)
            .filter(|rank| self.ranks.binary_search(rank).is_err())
            .collect()
    }

    /// The link from `src` to `dst` when `src` tracked `dst` on its own.
    pub fn get(&self, src: usize, dst: usize) -> Option<&LinkStats> {
        let key = (src, Dest::Peer(dst));
        let index = self
            .links
            .binary_search_by_key(&key, |link| (link.src, link.dest))
            .ok()?;
        Some(&self.links[index].stats)
    }

    /// A full `world × world` matrix of `figure` (row = source, column = destination),
    /// `None` where the pair was not tracked on its own; refused above
    /// [`MAX_DENSE_WORLD`].
    pub fn dense<T, F>(&self, figure: F) -> Result<Vec<Vec<Option<T>>>, MatrixError>
    where
        F: Fn(&LinkStats) -> T,
    {
        if self.world > MAX_DENSE_WORLD {
            return Err(MatrixError::TooLargeForDense { world: self.world });
        }
        let mut cells: Vec<Vec<Option<T>>> = (0..self.world)
            .map(|_| (0..self.world).map(|_| None).collect())
            .collect();
        for link in &self.links {
            if let Dest::Peer(dst) = link.dest {
                if let Some(cell) = cells.get_mut(link.src).and_then(|row| row.get_mut(dst)) {
                    *cell = Some(figure(&link.stats));
                }
            }
        }
        Ok(cells)
    }
}
