//! Executing plans in memory: the driver every in-memory execution shares, the element
//! kernels, and the reference executor.

pub(crate) mod driver;
pub mod kernels;
pub mod reference;

pub use driver::{RunStats, VerifyError};
pub use reference::execute;
