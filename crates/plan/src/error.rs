//! Errors of plan construction. Every message says what was wrong and what is allowed.

use thiserror::Error;

use crate::spec::Collective;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("world size is 0; a communicator needs at least one rank")]
    EmptyWorld,

    #[error("root {root} is out of range for a world of {world} ranks; use a root in 0..={}", world - 1)]
    RootOutOfRange { root: u32, world: u32 },

    #[error(
        "all-to-all-v count matrix has the wrong shape: {rows} rows but row {bad_row} has \
         {row_len} entries; it must be square, one row and one column per rank"
    )]
    CountMatrixShape {
        rows: usize,
        bad_row: usize,
        row_len: usize,
    },

    #[error("all-to-all-v needs a count matrix (elements from every rank to every rank)")]
    MissingCountMatrix,

    #[error(
        "count {count} is not a multiple of the world size {world}: {collective} splits its \
         buffer into {world} equal blocks; use a multiple of {world}"
    )]
    CountNotDivisible {
        collective: Collective,
        count: u64,
        world: u32,
    },

    #[error("unknown {what} '{given}'; allowed: {}", allowed.join(", "))]
    UnknownName {
        what: &'static str,
        given: String,
        allowed: Vec<String>,
    },

    #[error(
        "algorithm '{algorithm}' is not available for {collective}; available: {}",
        available.join(", ")
    )]
    UnsupportedAlgorithm {
        collective: Collective,
        algorithm: String,
        available: Vec<String>,
    },

    #[error("invalid {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },

    #[error("invalid tree: {0}")]
    InvalidTree(String),

    #[error("invalid groups for a hierarchical plan: {0}")]
    InvalidGroups(String),

    #[error("{what} would need {size} {unit}, above the limit of {limit}; {hint}")]
    TooLarge {
        what: &'static str,
        size: u64,
        unit: &'static str,
        limit: u64,
        hint: &'static str,
    },

    #[error("malformed plan document: {0}")]
    Malformed(String),

    #[error("cannot export to MSCCL XML: {0}")]
    Export(String),
}

impl PlanError {
    pub(crate) fn param(param: &'static str, reason: impl Into<String>) -> Self {
        PlanError::InvalidParam {
            param,
            reason: reason.into(),
        }
    }
}
