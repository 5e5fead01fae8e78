//! Units on the command line: the parsers live in the core, shared with the runtime.

pub use topoccl_plan::units::{parse_bandwidth, parse_bytes, parse_duration};
