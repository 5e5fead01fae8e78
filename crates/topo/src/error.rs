//! Errors of the topology twin: what is wrong and, for files, where.

use thiserror::Error;

#[derive(Clone, Debug, Error, PartialEq)]
pub enum TopoError {
    /// A topology, argument or request that cannot be used as given.
    #[error("{0}")]
    Invalid(String),
    /// The same, located in a file (or other named text): `origin:line: message`, or
    /// `origin:line:column: message` where the reader knows the column (1-based, in
    /// characters).
    #[error("{origin}:{line}{}: {message}", column.map(|c| format!(":{c}")).unwrap_or_default())]
    At {
        origin: String,
        line: usize,
        column: Option<usize>,
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
        self.located(origin, line, None)
    }

    /// This error, located at `origin:line:column` (an error already located keeps its
    /// place).
    pub fn at_column(self, origin: &str, line: usize, column: usize) -> TopoError {
        self.located(origin, line, Some(column))
    }

    fn located(self, origin: &str, line: usize, column: Option<usize>) -> TopoError {
        match self {
            TopoError::Invalid(message) => TopoError::At {
                origin: origin.to_string(),
                line,
                column,
                message,
            },
            other => other,
        }
    }
}
