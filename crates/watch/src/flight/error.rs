//! The flight recorder's errors: each names the argument or file, the value, and what to
//! do.

/// What went wrong building a ring, reading a dump or lining dumps up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlightError {
    /// A ring capacity outside `1..=max`.
    #[error(
        "flight-recorder capacity {given} is out of range: give 1..={max} entries \
         (default {default}, PyTorch's TORCH_NCCL_TRACE_BUFFER_SIZE default)"
    )]
    Capacity {
        /// The capacity asked for.
        given: usize,
        /// The largest capacity accepted.
        max: usize,
        /// The default capacity.
        default: usize,
    },

    /// Text that is not JSON, or JSON whose fields do not fit a dump.
    #[error("{source_name}:{line}:{column}: flight-recorder dump is {what}: {message}; {advice}")]
    Parse {
        /// The file (or other source) the text came from.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// `truncated` (ends early), `corrupt` (not JSON) or `malformed` (a field is
        /// missing or of the wrong type).
        what: &'static str,
        /// serde_json's description.
        message: String,
        /// What probably happened and what to do.
        advice: &'static str,
    },

    /// JSON that is not a topoccl flight-recorder dump.
    #[error(
        "{source_name}: not a topoccl flight-recorder dump: \"format\" is {found}, \
         expected \"{expected}\" (PyTorch's NCCL flight-recorder dumps are read by \
         torch's fr_trace, not by topoccl doctor)"
    )]
    NotADump {
        /// The file the text came from.
        source_name: String,
        /// What the `format` field held (`missing` if absent).
        found: String,
        /// The format name this build reads.
        expected: &'static str,
    },

    /// A dump written in a format version this build does not read.
    #[error(
        "{source_name}: flight-recorder dump version {found:?} is not supported: this \
         build reads versions {supported}.x; read it with the topoccl version that wrote it"
    )]
    Version {
        /// The file the text came from.
        source_name: String,
        /// The version the dump declares.
        found: String,
        /// The major version this build reads.
        supported: u32,
    },

    /// A dump whose fields parse but contradict one another.
    #[error("{source_name}: invalid flight-recorder dump: {problem}")]
    Invalid {
        /// The file the text came from.
        source_name: String,
        /// What is wrong, with the values.
        problem: String,
    },

    /// `doctor` was given no dumps.
    #[error("no flight-recorder dumps given: pass every rank's dump of one job")]
    NoDumps,

    /// Dumps whose header fields (job, communicator, world size) differ.
    #[error(
        "dumps do not belong together: {first_source} has {field} {first_value:?} but \
         {other_source} has {other_value:?}; pass the dumps of one job and one \
         communicator only"
    )]
    Mixed {
        /// Which header field differs: `job_id`, `process_group` or `world_size`.
        field: &'static str,
        /// The first dump's file.
        first_source: String,
        /// Its value.
        first_value: String,
        /// The disagreeing dump's file.
        other_source: String,
        /// Its value.
        other_value: String,
    },

    /// Two dumps from the same rank.
    #[error(
        "two dumps from rank {rank}: {first_source} and {other_source}; keep one dump \
         per rank (the latest)"
    )]
    DuplicateRank {
        /// The rank.
        rank: u32,
        /// The first dump's file.
        first_source: String,
        /// The second dump's file.
        other_source: String,
    },

    /// A doctor setting outside its valid range.
    #[error("doctor setting {field} = {value} is invalid: {valid}")]
    Config {
        /// The setting's name.
        field: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        valid: &'static str,
    },
}
