//! One collective call as one rank recorded it: what was called ([`Call`]) and what
//! became of it ([`Entry`]: state and times).
//!
//! Strings are `Cow<'static, str>` so the runtime records its static names (collective,
//! dtype, algorithm) without allocating; entries read back from a dump own theirs.
//! [`Peers`] keeps the first [`PEERS_LISTED`] peers inline for the same reason.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The prefix of topoccl's `profiling_name`s (`"topoccl:all_reduce"`), as PyTorch writes
/// `"nccl:all_reduce"`.
pub const PROFILING_PREFIX: &str = "topoccl:";

/// How many peers an entry lists; beyond these only their number is kept.
pub const PEERS_LISTED: usize = 8;

/// What a rank was asked to do: the fields every rank of a communicator should agree on
/// for the same `collective_seq_id`, plus the algorithm and peers this rank used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The communicator's sequence number of the call (PyTorch's name): the n-th
    /// collective on this communicator, the same on every rank for the same call.
    pub collective_seq_id: u64,
    /// `"topoccl:<collective>"`, e.g. `"topoccl:all_reduce"` (PyTorch's name and shape).
    pub profiling_name: Cow<'static, str>,
    /// The element type, e.g. `"f32"` (ours: one dtype per call).
    pub dtype: Cow<'static, str>,
    /// The call's count argument in elements, as NCCL counts it (per block for
    /// all-gather, reduce-scatter, gather, scatter and all-to-all).
    pub count: u64,
    /// The call's size in bytes (the larger user buffer, as nccl-tests counts it).
    pub size_bytes: u64,
    /// The root rank of rooted collectives (broadcast, reduce, gather, scatter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<u32>,
    /// The algorithm the plan chose, e.g. `"ring"` (ours).
    pub algorithm: Cow<'static, str>,
    /// The ranks this rank exchanges data with in this call (ours).
    pub peers: Peers,
    /// The timeout the call ran under, in milliseconds (PyTorch's name).
    pub timeout_ms: u64,
}

impl Call {
    /// A call without root, algorithm (empty), peers or timeout (0); set those with
    /// struct update syntax.
    pub fn new(
        collective_seq_id: u64,
        profiling_name: impl Into<Cow<'static, str>>,
        dtype: impl Into<Cow<'static, str>>,
        count: u64,
        size_bytes: u64,
    ) -> Self {
        Call {
            collective_seq_id,
            profiling_name: profiling_name.into(),
            dtype: dtype.into(),
            count,
            size_bytes,
            root: None,
            algorithm: Cow::Borrowed(""),
            peers: Peers::NONE,
            timeout_ms: 0,
        }
    }
}

/// The part of a profiling name after its `backend:` prefix.
fn collective_name(profiling_name: &str) -> &str {
    profiling_name
        .split_once(':')
        .map_or(profiling_name, |(_, name)| name)
}

/// Where a call is in its life. `scheduled`, `started` and `completed` are PyTorch's
/// values; `failed` is ours (with [`Entry::error`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, not started yet.
    Scheduled,
    /// Started (data moving), not finished.
    Started,
    /// Finished.
    Completed,
    /// Ended with an error (a timeout, a lost peer, …).
    Failed,
}

impl State {
    /// Whether the call has ended (completed or failed); a finished entry takes no more
    /// updates.
    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Failed)
    }

    /// The name written in dumps.
    pub fn name(self) -> &'static str {
        match self {
            State::Scheduled => "scheduled",
            State::Started => "started",
            State::Completed => "completed",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One recorded call: what was called (the fields of [`Call`], written flat as PyTorch
/// does), its ring id, state and times (ns of the caller's clock, as the caller passed
/// them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The ring's id of the entry (PyTorch's name): 0, 1, 2, … per ring, never reused.
    pub record_id: u64,
    /// See [`Call::collective_seq_id`].
    pub collective_seq_id: u64,
    /// See [`Call::profiling_name`].
    pub profiling_name: Cow<'static, str>,
    /// See [`Call::dtype`].
    pub dtype: Cow<'static, str>,
    /// See [`Call::count`].
    pub count: u64,
    /// See [`Call::size_bytes`].
    pub size_bytes: u64,
    /// See [`Call::root`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<u32>,
    /// See [`Call::algorithm`].
    pub algorithm: Cow<'static, str>,
    /// See [`Call::peers`].
    pub peers: Peers,
    /// See [`Call::timeout_ms`].
    pub timeout_ms: u64,
    /// Where the call is.
    pub state: State,
    /// Why it failed (only in state `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'static, str>>,
    /// When the call was recorded (entered), ns.
    pub time_created_ns: u64,
    /// When the call started moving data, ns.
    #[serde(default)]
    pub time_discovered_started_ns: Option<u64>,
    /// When the call completed or failed, ns.
    #[serde(default)]
    pub time_discovered_completed_ns: Option<u64>,
    /// `time_discovered_completed_ns` minus the start (or, if it never started, the
    /// creation), in ms. Derived: [`crate::flight::Dump::parse`] recomputes it from the
    /// times.
    #[serde(default)]
    pub duration_ms: Option<f64>,
}

impl Entry {
    /// A new entry in state `scheduled`.
    pub fn new(record_id: u64, call: Call, time_created_ns: u64) -> Self {
        let Call {
            collective_seq_id,
            profiling_name,
            dtype,
            count,
            size_bytes,
            root,
            algorithm,
            peers,
            timeout_ms,
        } = call;
        Entry {
            record_id,
            collective_seq_id,
            profiling_name,
            dtype,
            count,
            size_bytes,
            root,
            algorithm,
            peers,
            timeout_ms,
            state: State::Scheduled,
            error: None,
            time_created_ns,
            time_discovered_started_ns: None,
            time_discovered_completed_ns: None,
            duration_ms: None,
        }
    }

    /// The collective's name without the `topoccl:` (or any `backend:`) prefix.
    pub fn collective(&self) -> &str {
        collective_name(&self.profiling_name)
    }

    /// Marks the call started at `t_ns`; false (and no change) unless it was scheduled.
    pub fn start(&mut self, t_ns: u64) -> bool {
        if self.state != State::Scheduled {
            return false;
        }
        self.state = State::Started;
        self.time_discovered_started_ns = Some(t_ns);
        true
    }

    /// Ends the call at `t_ns` in `state` (completed or failed) with an optional error;
    /// false (and no change) if it had already ended.
    pub(crate) fn finish(
        &mut self,
        t_ns: u64,
        state: State,
        error: Option<Cow<'static, str>>,
    ) -> bool {
        if self.state.is_final() {
            return false;
        }
        self.state = state;
        self.error = error;
        self.time_discovered_completed_ns = Some(t_ns);
        self.duration_ms = self.derived_duration_ms();
        true
    }

    /// How long the call ran, from its start (or creation if it never started) to its
    /// end, in ns; `None` while it runs. Saturates at 0 if the caller's times went
    /// backwards.
    pub fn duration_ns(&self) -> Option<u64> {
        let end = self.time_discovered_completed_ns?;
        let begin = self
            .time_discovered_started_ns
            .unwrap_or(self.time_created_ns);
        Some(end.saturating_sub(begin))
    }

    /// [`Entry::duration_ns`] in ms, the dump's `duration_ms`.
    pub(crate) fn derived_duration_ms(&self) -> Option<f64> {
        self.duration_ns().map(|ns| ns as f64 / 1e6)
    }
}

/// The peers of a call: how many, and the first [`PEERS_LISTED`] of them, kept inline
/// (no allocation). In JSON: `{"count": n, "ranks": [...]}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "PeersRepr", into = "PeersRepr")]
pub struct Peers {
    count: u32,
    listed: u8,
    ranks: [u32; PEERS_LISTED],
}

impl Peers {
    /// No peers (or not recorded).
    pub const NONE: Peers = Peers {
        count: 0,
        listed: 0,
        ranks: [0; PEERS_LISTED],
    };

    /// The peers `ranks`: all are counted, the first [`PEERS_LISTED`] listed.
    pub fn new(ranks: &[u32]) -> Self {
        let mut p = Peers::NONE;
        p.count = u32::try_from(ranks.len()).unwrap_or(u32::MAX);
        let listed = ranks.len().min(PEERS_LISTED);
        p.ranks[..listed].copy_from_slice(&ranks[..listed]);
        p.listed = listed as u8; // ≤ PEERS_LISTED = 8
        p
    }

    /// How many peers the call had.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The listed peers (the first [`PEERS_LISTED`]).
    pub fn listed(&self) -> &[u32] {
        &self.ranks[..usize::from(self.listed)]
    }
}

/// Peers as written in JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PeersRepr {
    count: u32,
    ranks: Vec<u32>,
}

impl From<Peers> for PeersRepr {
    fn from(p: Peers) -> Self {
        PeersRepr {
            count: p.count,
            ranks: p.listed().to_vec(),
        }
    }
}

impl TryFrom<PeersRepr> for Peers {
    type Error = String;
    fn try_from(r: PeersRepr) -> Result<Self, Self::Error> {
        if r.ranks.len() > PEERS_LISTED || r.ranks.len() as u64 > u64::from(r.count) {
            return Err(format!(
                "peers lists {} ranks with count {}: a dump lists at most {PEERS_LISTED} \
                 peers and no more than their count",
                r.ranks.len(),
                r.count
            ));
        }
        let mut p = Peers::new(&r.ranks);
        p.count = r.count;
        Ok(p)
    }
}
