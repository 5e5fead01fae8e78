//! The dump: one rank's ring of one communicator as JSON, with a header saying whose it
//! is and why it was written, and its parser.
//!
//! `to_json` writes `{"format": "topoccl-flight", "version": "1.0", <header>, "capacity",
//! "dropped", "entries": [...]}` with the entries oldest first. The version is
//! `"major.minor"` as PyTorch's: minor grows when fields are added (older readers ignore
//! them), major when a field changes; [`Dump::parse`] reads major [`FORMAT_MAJOR`] only.
//! Every error from `parse` names the source (the file) and, for text that does not parse,
//! the line:column serde_json stopped at and whether the text ends early (`truncated`),
//! is not JSON (`corrupt`) or has a field missing or mistyped (`malformed`).

use std::io;

use serde::{Deserialize, Serialize};

use super::entry::Entry;
use super::error::FlightError;
use super::ring::MAX_CAPACITY;
use super::MAX_WORLD;

/// The `format` field of every dump.
pub const FORMAT_NAME: &str = "topoccl-flight";
/// The version this build writes.
pub const FORMAT_VERSION: &str = "1.0";
/// The major version this build reads.
pub const FORMAT_MAJOR: u32 = 1;

/// Why a dump was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpReason {
    /// A call failed.
    Error,
    /// A call ran past its timeout.
    Timeout,
    /// The process received a signal (SIGUSR1).
    Signal,
    /// Someone asked (API call or control request).
    Request,
}

/// Whose dump it is and why it was written: the caller fills it in (it knows the job,
/// the host name and the time); [`Dump`] writes these fields at its top level.
#[derive(Clone, Debug, PartialEq)]
pub struct DumpMeta {
    /// The job's id, the same on every rank.
    pub job_id: String,
    /// The communicator's name (one dump per communicator), the same on all its ranks.
    pub process_group: String,
    /// This rank within the communicator.
    pub rank: u32,
    /// The communicator's number of ranks.
    pub world_size: u32,
    /// The host the rank ran on (whose clock the times are from).
    pub host: String,
    /// When the dump was taken, ns of the same clock as the entries' times.
    pub dump_time_ns: u64,
    /// Why.
    pub reason: DumpReason,
    /// Free text: the error, the signal's name, the requester.
    pub detail: Option<String>,
}

/// One rank's dump (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dump {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// `"major.minor"`, [`FORMAT_VERSION`] when written by this build.
    pub version: String,
    /// See [`DumpMeta::job_id`].
    pub job_id: String,
    /// See [`DumpMeta::process_group`].
    pub process_group: String,
    /// See [`DumpMeta::rank`].
    pub rank: u32,
    /// See [`DumpMeta::world_size`].
    pub world_size: u32,
    /// See [`DumpMeta::host`].
    pub host: String,
    /// See [`DumpMeta::dump_time_ns`].
    pub dump_time_ns: u64,
    /// See [`DumpMeta::reason`].
    pub reason: DumpReason,
    /// See [`DumpMeta::detail`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The ring's capacity.
    pub capacity: u64,
    /// How many older entries the ring had overwritten.
    pub dropped: u64,
    /// The held entries, oldest first.
    pub entries: Vec<Entry>,
    /// Where the dump was read from (the file name given to [`Dump::parse`]); not
    /// written. Empty for a dump built in memory.
    #[serde(skip)]
    pub source: String,
}

/// The two fields read before the whole: what the text claims to be.
#[derive(Deserialize)]
struct Probe {
    format: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

impl Dump {
    /// A dump of `entries` (oldest first) in this build's format.
    pub fn new(meta: DumpMeta, capacity: usize, dropped: u64, entries: Vec<Entry>) -> Self {
        let DumpMeta {
            job_id,
            process_group,
            rank,
            world_size,
            host,
            dump_time_ns,
            reason,
            detail,
        } = meta;
        Dump {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION.to_string(),
            job_id,
            process_group,
            rank,
            world_size,
            host,
            dump_time_ns,
            reason,
            detail,
            capacity: capacity as u64,
            dropped,
            entries,
            source: String::new(),
        }
    }

    /// The dump as JSON: one header field a line, then one entry a line (so that
    /// `grep` and `diff` work on entries and a parse error's line names the entry).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(512 + 400 * self.entries.len());
        let mut ser = serde_json::Serializer::with_formatter(&mut out, EntryPerLine::default());
        // Serialising structs with string keys, strings and numbers into memory cannot
        // fail (serde_json writes a non-finite float as null), and the output is UTF-8.
        self.serialize(&mut ser)
            .expect("a Dump always serialises to JSON");
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Reads a dump from `text`; `source_name` (the file name) goes into every error
    /// and into [`Dump::source`].
    pub fn parse(text: &str, source_name: &str) -> Result<Self, FlightError> {
        let probe: Probe = serde_json::from_str(text).map_err(|e| parse_error(&e, source_name))?;
        match probe.format.as_ref().and_then(|f| f.as_str()) {
            Some(FORMAT_NAME) => {}
            _ => {
                return Err(FlightError::NotADump {
                    source_name: source_name.to_string(),
                    found: probe
                        .format
                        .map_or_else(|| "missing".to_string(), |f| f.to_string()),
                    expected: FORMAT_NAME,
                })
            }
        }
        let version = match &probe.version {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "missing".to_string(),
        };
        if major_version(&version) != Some(FORMAT_MAJOR) {
            return Err(FlightError::Version {
                source_name: source_name.to_string(),
                found: version,
                supported: FORMAT_MAJOR,
            });
        }
        let mut dump: Dump =
            serde_json::from_str(text).map_err(|e| parse_error(&e, source_name))?;
        dump.source = source_name.to_string();
        for e in &mut dump.entries {
            e.duration_ms = e.derived_duration_ms();
        }
        dump.validate()?;
        Ok(dump)
    }

    /// The source's name, or `rank N's dump` for a dump built in memory.
    pub fn source_label(&self) -> String {
        if self.source.is_empty() {
            format!("rank {}'s dump", self.rank)
        } else {
            self.source.clone()
        }
    }

    /// Checks what serde cannot: the world size and rank in range, at most
    /// [`MAX_CAPACITY`] entries and no more than the capacity, record ids and sequence
    /// numbers strictly increasing (oldest first).
    pub fn validate(&self) -> Result<(), FlightError> {
        let invalid = |problem: String| FlightError::Invalid {
            source_name: self.source_label(),
            problem,
        };
        let m = self;
        if m.world_size == 0 || m.world_size > MAX_WORLD {
            return Err(invalid(format!(
                "world_size {} is out of range: 1..={MAX_WORLD}",
                m.world_size
            )));
        }
        if m.rank >= m.world_size {
            return Err(invalid(format!(
                "rank {} is not below world_size {}",
                m.rank, m.world_size
            )));
        }
        if self.entries.len() > MAX_CAPACITY || self.entries.len() as u64 > self.capacity {
            return Err(invalid(format!(
                "{} entries exceed the ring's capacity {} (at most {MAX_CAPACITY})",
                self.entries.len(),
                self.capacity
            )));
        }
        for (i, pair) in self.entries.windows(2).enumerate() {
            let (a, b) = (&pair[0], &pair[1]);
            if b.record_id <= a.record_id {
                return Err(invalid(format!(
                    "entries[{}] has record_id {} after {}: entries must be oldest first \
                     with increasing ids",
                    i + 1,
                    b.record_id,
                    a.record_id
                )));
            }
            if b.collective_seq_id <= a.collective_seq_id {
                return Err(invalid(format!(
                    "entries[{}] has collective_seq_id {} after {}: a communicator's \
                     calls have increasing sequence numbers",
                    i + 1,
                    b.collective_seq_id,
                    a.collective_seq_id
                )));
            }
        }
        Ok(())
    }
}

/// The major part of a `"major.minor"` version.
fn major_version(v: &str) -> Option<u32> {
    let (major, minor) = v.split_once('.')?;
    minor.parse::<u32>().ok()?;
    major.parse().ok()
}

fn parse_error(e: &serde_json::Error, source_name: &str) -> FlightError {
    use serde_json::error::Category;
    let (what, advice) = match e.classify() {
        Category::Eof => (
            "truncated",
            "the file ends early (the process died while writing it, or the copy is \
             incomplete): take it again or leave it out",
        ),
        Category::Syntax => (
            "corrupt",
            "the text is not JSON there (a damaged file, or not a dump): take it again \
             or leave it out",
        ),
        Category::Data => (
            "malformed",
            "a field is missing or has the wrong type (an edited file, or one written by \
             another topoccl version): take it again or leave it out",
        ),
        Category::Io => ("unreadable", "read the file again"),
    };
    FlightError::Parse {
        source_name: source_name.to_string(),
        line: e.line(),
        column: e.column(),
        what,
        advice,
        message: without_position(&e.to_string()).to_string(),
    }
}

/// serde_json's message without its trailing " at line L column C" (the error has them
/// as fields).
fn without_position(message: &str) -> &str {
    message
        .rfind(" at line ")
        .map_or(message, |at| &message[..at])
}

/// serde_json layout: objects and arrays down to [`EntryPerLine::LINE_DEPTH`] levels get
/// one member a line, indented by two spaces; deeper ones (an entry's fields) stay on one
/// line, separated by `", "` and `": "`.
#[derive(Default)]
struct EntryPerLine {
    depth: usize,
    has_value: bool,
}

impl EntryPerLine {
    /// The dump object (1) and its `entries` array (2) are laid out a member a line.
    const LINE_DEPTH: usize = 2;

    fn open<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        let by_line = self.depth <= Self::LINE_DEPTH;
        self.depth -= 1;
        if by_line && self.has_value {
            w.write_all(b"\n")?;
            self.indent(w)?;
        }
        w.write_all(bracket)
    }

    fn member<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if self.depth <= Self::LINE_DEPTH {
            w.write_all(if first { b"\n" } else { b",\n" })?;
            self.indent(w)
        } else if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn indent<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        for _ in 0..self.depth {
            w.write_all(b"  ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for EntryPerLine {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"[")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.member(w, first)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.open(w, b"{")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.close(w, b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.member(w, first)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}
