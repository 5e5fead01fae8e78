//! The flight recorder's records and the analysis that lines ranks' dumps up.
//!
//! Owns, all pure (the caller passes times as `u64` nanoseconds and writes the files):
//!
//! - [`Entry`] / [`Call`]: one collective call as a rank saw it ([`entry`]).
//! - [`Ring`]: the bounded per-rank ring of recent calls, O(1) per update, overwriting
//!   the oldest entry when full ([`ring`]).
//! - [`Dump`]: the JSON a rank writes on an error, a timeout, a signal or on request, and
//!   its parser with errors that name the file and the line:column ([`dump`]).
//! - [`doctor()`]: reads all ranks' dumps of one communicator and says who never arrived,
//!   who entered a different call, who failed and who is slow, with the evidence
//!   ([`mod@doctor`]).
//!
//! # Field names
//!
//! The dump follows PyTorch's NCCL flight recorder (`TORCH_NCCL_TRACE_BUFFER_SIZE`,
//! analysed by `fr_trace`) where a field means the same thing, so that its users read it
//! without a glossary. Same name and meaning as PyTorch: `version` (a `"major.minor"`
//! string, minor bumped when fields are added, major when fields change), `entries`,
//! `record_id`, `collective_seq_id`, `profiling_name` (`"topoccl:all_reduce"` where
//! PyTorch writes `"nccl:all_reduce"`), `time_created_ns`, `time_discovered_started_ns`,
//! `time_discovered_completed_ns`, `duration_ms`, `timeout_ms`, and `state` with its values
//! `scheduled`, `started`, `completed`. In PyTorch the "discovered" times are when the
//! watchdog thread noticed a kernel's start or end; topoccl's runtime marks them itself
//! as the call starts and ends, so they are the times of the events.
//!
//! Ours (no PyTorch counterpart, or a different shape): `state: "failed"` with `error`;
//! `dtype` and `count` (one flat buffer per side, NCCL's count argument, where PyTorch
//! lists tensor shapes in `input_sizes`/`input_dtypes`); `size_bytes` (the call's size as
//! nccl-tests counts it); `algorithm`; `peers`; `root`; and at the top `format`,
//! `job_id`, `process_group` (the communicator's name, one dump per communicator),
//! `rank`, `world_size`, `host`, `dump_time_ns`, `reason`, `detail`, `capacity`,
//! `dropped`. Not kept: `pg_id`/`pg_config`/`pg_status` (one communicator per dump),
//! `p2p_seq_id`/`is_p2p`/`op_id` (topoccl has no point-to-point or coalesced calls),
//! `frames` (no stack traces), `retired`.
//!
//! # Use
//!
//! ```
//! use topoccl_watch::flight::{doctor, Call, Dump, DumpMeta, DumpReason, Ring};
//!
//! # fn main() -> Result<(), topoccl_watch::flight::FlightError> {
//! // Each rank: record its calls (times from the caller's clock, in ns).
//! let mut dumps = Vec::new();
//! for rank in 0..2u32 {
//!     let mut ring = Ring::new(2_000)?;
//!     for seq in 1..=3u64 {
//!         let t = seq * 1_000_000 + u64::from(rank) * 1_000;
//!         let id = ring.record_start(Call::new(seq, "topoccl:all_reduce", "f32", 1024, 4096), t);
//!         ring.mark_started(id, t + 100);
//!         ring.mark_completed(id, seq * 1_000_000 + 50_000);
//!     }
//!     let meta = DumpMeta {
//!         job_id: "job-1".into(),
//!         process_group: "world".into(),
//!         rank,
//!         world_size: 2,
//!         host: "node-a".into(),
//!         dump_time_ns: 9_000_000,
//!         reason: DumpReason::Request,
//!         detail: None,
//!     };
//!     // The runtime writes this text to a file ...
//!     let text = ring.dump(meta).to_json();
//!     // ... and `topoccl doctor` reads it back, naming the file in any error.
//!     dumps.push(Dump::parse(&text, &format!("rank{rank}.json"))?);
//! }
//! let report = doctor(&dumps)?;
//! assert!(report.all_agree());
//! assert!(report.to_string().ends_with("all ranks agree\n"));
//! # Ok(())
//! # }
//! ```
//!
//! # Limits
//!
//! A ring holds 1 to [`MAX_CAPACITY`] entries ([`DEFAULT_CAPACITY`] = 2,000, PyTorch's
//! default buffer size); a parsed dump at most [`MAX_CAPACITY`] entries and a world of at
//! most [`MAX_WORLD`] ranks. The doctor's findings are capped (see [`mod@doctor`]).

pub mod doctor;
pub mod dump;
pub mod entry;
mod error;
mod human;
pub mod ring;
mod stats;

pub use doctor::{doctor, doctor_with, CallSummary, ClockBasis, DoctorConfig, Finding, Report};
pub use dump::{Dump, DumpMeta, DumpReason, FORMAT_NAME, FORMAT_VERSION};
pub use entry::{Call, Entry, Peers, State, PEERS_LISTED, PROFILING_PREFIX};
pub use error::FlightError;
pub use ring::{Ring, DEFAULT_CAPACITY, MAX_CAPACITY};

/// The largest world size a dump may declare (and the doctor analyses).
pub const MAX_WORLD: u32 = 1 << 20;
