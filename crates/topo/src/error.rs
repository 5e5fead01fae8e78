//! Errors of the topology twin: what is wrong and, for files, where.

use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq)]
pub enum TopoError {
    /// A topology, argument or request that cannot be used as given.
    #[error("{0}")]
    Invalid(String),
    /// The same, located in a file (or other named text): `origin:line: message`.
    #[error("{origin}:{line}: {message}")]
    At {
        origin: String,
        line: usize,
        message: String,
    },
    /// A plan the core refused to build or the verifier rejected.
    #[error("plan: {0}")]
    Plan(#[from] topoccl_plan::PlanError),
}

impl TopoError {
    pub fn invalid(message: impl Into<String>) -> TopoError {
        TopoError::Invalid(message.into())
    }

    /// This error, located at `origin:line` (an error already located keeps its place).
    pub fn at(self, origin: &str, line: usize) -> TopoError {
        match self {
            TopoError::Invalid(message) => TopoError::At {
                origin: origin.to_string(),
                line,
                message,
            },
            other => other,
        }
    }
}
