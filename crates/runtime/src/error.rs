//! Errors of the runtime. Each names the rank, peer or setting at fault and, where it can,
//! what to do.

use std::time::Duration;

use thiserror::Error;
use topoccl_plan::{PlanError, Rank, VerifyError};

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// A required setting is missing or invalid (environment, arguments).
    #[error("configuration: {0}")]
    Config(String),

    /// The rendezvous did not complete.
    #[error("rendezvous failed: {0}")]
    Rendezvous(String),

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("cannot plan the collective: {0}")]
    Plan(#[from] PlanError),

    /// A plan failed verification (only for plans loaded from outside).
    #[error("the plan is invalid: {0}")]
    InvalidPlan(String),

    /// A buffer does not have the size the collective needs.
    #[error("{what} has {got} elements; {needed} are needed: {hint}")]
    BufferSize {
        what: &'static str,
        got: usize,
        needed: u64,
        hint: &'static str,
    },

    /// The operation did not finish within its deadline.
    #[error("{op} timed out after {:.1} s: {waiting}", after.as_secs_f64())]
    Timeout {
        op: String,
        after: Duration,
        /// What this rank was waiting for, naming the ranks.
        waiting: String,
        /// The ranks this rank was waiting on.
        ranks: Vec<Rank>,
    },

    /// A peer died, closed its connection, or sent something unreadable.
    #[error("{op}: rank {rank} failed: {reason}")]
    PeerFailed {
        op: String,
        rank: Rank,
        reason: String,
    },

    /// Another rank aborted the communicator; `culprit` is the rank it blames.
    #[error("{op}: rank {origin} aborted the communicator{}: {reason}",
        culprit.map(|c| format!(" because of rank {c}")).unwrap_or_default())]
    Aborted {
        op: String,
        origin: Rank,
        culprit: Option<Rank>,
        reason: String,
    },

    /// Ranks called different collectives (or the same one with other arguments):
    /// `detail` says what `rank` (this one) and `peer` entered, with `rank` as its subject.
    #[error("mismatched collectives: rank {rank} {detail}")]
    Mismatch {
        rank: Rank,
        peer: Rank,
        detail: String,
    },

    /// A link moved no byte for its progress deadline while both its ends were inside
    /// the same call waiting on each other (`crate::deadlines`).
    #[error("{op}: the link from rank {rank} to rank {peer} ({level}) moved no byte for \
        {:.0} ms while both were inside the call waiting on each other (progress deadline \
        {:.0} ms, TOPOCCL_PROGRESS_DEADLINE)", stalled.as_secs_f64() * 1e3, deadline.as_secs_f64() * 1e3)]
    Stalled {
        op: String,
        /// This rank.
        rank: Rank,
        /// The other end of the link.
        peer: Rank,
        /// The level the link crosses: host, rack or cross.
        level: &'static str,
        stalled: Duration,
        deadline: Duration,
    },

    /// A connection was refused during its handshake.
    #[error("handshake with rank {rank} failed: {reason}")]
    Handshake { rank: Rank, reason: String },

    /// This communicator was aborted locally (`abort`) or broken by an earlier failure.
    #[error("the communicator is aborted: {0}")]
    CommAborted(String),

    /// Too many nonblocking operations are pending.
    #[error("busy: {0}")]
    Busy(String),

    #[error("I/O error: {0}")]
    Io(String),

    /// The survivors of a failure agreed on a communicator without this rank (it was
    /// late, hung or cut off): it must exit, or rejoin as a replacement
    /// (`Communicator::join`).
    #[error(
        "rank {rank} was left out of the communicator of epoch {epoch} (the other ranks \
             decided without it: it was late, hung or unreachable): {reason}; exit, or \
             rejoin with TOPOCCL_JOIN=1"
    )]
    Evicted {
        rank: Rank,
        epoch: u64,
        reason: String,
    },
}

impl Error {
    /// A short name of the error's kind: the `kind` label of `topoccl_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Rendezvous(_) => "rendezvous",
            Error::Store(_) => "store",
            Error::Plan(_) => "plan",
            Error::InvalidPlan(_) => "invalid_plan",
            Error::BufferSize { .. } => "buffer_size",
            Error::Timeout { .. } => "timeout",
            Error::Stalled { .. } => "stalled",
            Error::PeerFailed { .. } => "peer_failed",
            Error::Aborted { .. } => "aborted",
            Error::Mismatch { .. } => "mismatch",
            Error::Handshake { .. } => "handshake",
            Error::CommAborted(_) => "comm_aborted",
            Error::Busy(_) => "busy",
            Error::Io(_) => "io",
            Error::Evicted { .. } => "evicted",
        }
    }

    /// The ranks this error blames, if any (dead, refusing or mismatching peers).
    pub fn culprits(&self) -> Vec<Rank> {
        match self {
            Error::PeerFailed { rank, .. } | Error::Handshake { rank, .. } => vec![*rank],
            Error::Stalled { peer, .. } => vec![*peer],
            Error::Mismatch { peer, .. } => vec![*peer],
            Error::Aborted {
                culprit: Some(c), ..
            } => vec![*c],
            Error::Timeout { ranks, .. } => ranks.clone(),
            _ => vec![],
        }
    }
}

impl From<VerifyError> for Error {
    fn from(e: VerifyError) -> Self {
        Error::InvalidPlan(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
