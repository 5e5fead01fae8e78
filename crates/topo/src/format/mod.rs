//! Topology files: topoccl's own TOML format (read and write), JSON (read and write),
//! Graphviz DOT (write), and one machine as NVIDIA's tools describe it: NCCL's topology
//! XML (`NCCL_TOPO_DUMP_FILE`) and `nvidia-smi topo -m` (whose parser, typed, also serves
//! [`crate::discover`]).
//!
//! Pure like the rest of the crate: readers take the text and an `origin` (the file name,
//! used only in messages), writers return the text. Errors found in a file say
//! `origin:line: what is wrong; what is allowed` (see [`TopoError::At`]).
//! docs/topology-format.md describes every format and the bandwidths chosen on import.

mod collapse;
mod dot;
mod generate;
mod json;
mod native;
mod nccl_xml;
mod nvidia_smi;

pub use collapse::{
    collapse, collapsed_text, Bundle, Collapsed, Part, PartId, PartKind, MAX_REFINE_ROUNDS,
};
pub use dot::{to_dot, to_dot_collapsed};
pub use json::{read_json, to_json};
pub use native::{read_toml, read_toml_builder, write_toml};
pub use nccl_xml::{read_nccl_xml, read_nccl_xml_builder};
pub use nvidia_smi::{
    parse_nvidia_smi_gpus, parse_nvidia_smi_topo, read_nvidia_smi_topo,
    read_nvidia_smi_topo_builder, SmiDevice, SmiGpu, SmiMatrix, SmiPath, MAX_SMI_DEVICES,
};

use std::collections::{HashMap, VecDeque};

/// Reads a topology file in whichever of topoccl's formats it is: JSON (it starts with
/// `{`) — a topology, or a link matrix saved by `topoccl topo measure` — or TOML.
pub fn read(text: &str, origin: &str) -> Result<Topology, TopoError> {
    if !text.trim_start().starts_with('{') {
        return read_toml(text, origin);
    }
    match serde_json::from_str::<crate::matrix::LinkMatrix>(text) {
        Ok(m) => m.to_topology().map_err(|e| unlocated(origin, e)),
        Err(_) => read_json(text, origin),
    }
}

use topoccl_plan::units::{parse_bandwidth, parse_duration};

use crate::error::TopoError;
use crate::model::{Link, NodeId, Topology};

/// 1-based line numbers of byte offsets in one text, found by binary search so that
/// locating every entry of a 100,000-rank file stays linear.
pub(crate) struct Lines {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        let breaks = text.bytes().enumerate().filter(|&(_, b)| b == b'\n');
        let starts = std::iter::once(0).chain(breaks.map(|(i, _)| i + 1));
        Lines {
            starts: starts.collect(),
        }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&s| s <= offset).max(1)
    }

    /// 1-based line and column (in characters) of byte `offset` of `text`, the text these
    /// lines were made from: one more than the characters of the line that start before
    /// `offset`.
    pub(crate) fn position(&self, text: &str, offset: usize) -> (usize, usize) {
        let line = self.line(offset);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let rest = text.get(start..).unwrap_or("");
        let before = rest
            .char_indices()
            .take_while(|&(i, _)| start + i < offset)
            .count();
        (line, before + 1)
    }
}

/// `origin:line: message`.
pub(crate) fn located(origin: &str, line: usize, message: impl Into<String>) -> TopoError {
    TopoError::invalid(message).at(origin, line)
}

/// `origin: message`, for what has no single line (or no lines at all, like JSON values).
pub(crate) fn unlocated(origin: &str, message: impl std::fmt::Display) -> TopoError {
    TopoError::invalid(format!("{origin}: {message}"))
}

/// An error of [`crate::TopologyBuilder::build`], prefixed by `origin` (it knows no lines).
pub(crate) fn build_error(origin: &str, e: TopoError) -> TopoError {
    match e {
        TopoError::Invalid(message) => unlocated(origin, message),
        other => other,
    }
}

/// The rank a build error blames for being cut off, so that readers can point at the line
/// that placed it. Tied to the wording of `model::check_connected`; a test guards it.
pub(crate) fn disconnected_rank(e: &TopoError) -> Option<usize> {
    let TopoError::Invalid(message) = e else {
        return None;
    };
    let rest = message.strip_prefix("disconnected ranks: rank ")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// A topology's name when its file gives none: the file name without folders and extension.
pub(crate) fn stem(origin: &str) -> String {
    let file = origin.rsplit(['/', '\\']).next().unwrap_or(origin);
    let stem = match file.rfind('.') {
        Some(dot) if dot > 0 => &file[..dot],
        _ => file,
    };
    if stem.is_empty() {
        "topology".to_string()
    } else {
        stem.to_string()
    }
}

/// One entry of a written topology: a cable (a link each way, same bandwidth and latency)
/// or a single directed link.
pub(crate) struct Wire {
    pub from: NodeId,
    pub to: NodeId,
    pub bandwidth: f64,
    pub latency: f64,
    pub duplex: f64,
    pub cable: bool,
}

/// The links of `t` as wires: each link is paired with the earliest unpaired opposite link
/// of equal bandwidth, latency and duplex, and the cable takes the place of the first of
/// the two.
pub(crate) fn wires(t: &Topology) -> Vec<Wire> {
    type Key = (NodeId, NodeId, u64, u64, u64);
    // `+ 0.0` turns -0.0 into 0.0, which compare equal as links.
    let key = |from, to, l: &Link| {
        (
            from,
            to,
            l.bandwidth.to_bits(),
            (l.latency + 0.0).to_bits(),
            l.duplex.to_bits(),
        )
    };
    let mut open: HashMap<Key, VecDeque<usize>> = HashMap::new();
    let mut out: Vec<Wire> = Vec::with_capacity(t.links().len());
    for l in t.links() {
        if let Some(i) = open
            .get_mut(&key(l.to, l.from, l))
            .and_then(VecDeque::pop_front)
        {
            out[i].cable = true;
            continue;
        }
        open.entry(key(l.from, l.to, l))
            .or_default()
            .push_back(out.len());
        out.push(Wire {
            from: l.from,
            to: l.to,
            bandwidth: l.bandwidth,
            latency: l.latency,
            duplex: l.duplex,
            cable: false,
        });
    }
    out
}

const BANDWIDTH_UNITS: [(&str, f64); 10] = [
    ("GB/s", 1e9),
    ("Gbps", 1e9 / 8.0),
    ("MB/s", 1e6),
    ("Mbps", 1e6 / 8.0),
    ("TB/s", 1e12),
    ("Tbps", 1e12 / 8.0),
    ("KB/s", 1e3),
    ("Kbps", 1e3 / 8.0),
    ("B/s", 1.0),
    ("bps", 1.0 / 8.0),
];

const LATENCY_UNITS: [(&str, f64); 4] = [("us", 1e-6), ("ns", 1e-9), ("ms", 1e-3), ("s", 1.0)];

/// `value` with a unit that [`parse_bandwidth`] reads back to exactly `value`, if any.
pub(crate) fn exact_bandwidth(value: f64) -> Option<String> {
    exact_with(value, &BANDWIDTH_UNITS, parse_bandwidth)
}

/// `value` seconds with a unit that [`parse_duration`] reads back to exactly `value`.
pub(crate) fn exact_latency(value: f64) -> Option<String> {
    if value == 0.0 {
        return Some("0us".to_string());
    }
    exact_with(value, &LATENCY_UNITS, parse_duration)
}

/// The most readable exact spelling: a short number (not `499.99999999999994`), in
/// [1, 1000) if possible, in the first unit listed.
fn exact_with(
    value: f64,
    units: &[(&str, f64)],
    parse: fn(&str) -> Result<f64, String>,
) -> Option<String> {
    units
        .iter()
        .enumerate()
        .filter_map(|(i, &(unit, scale))| {
            let n = value / scale;
            let text = format!("{n}{unit}");
            let exact = n.is_finite() && parse(&text) == Ok(value);
            let long = text.len() - unit.len() > 10;
            exact.then(|| ((long, !(1.0..1000.0).contains(&n), i), text))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, text)| text)
}

/// A bandwidth for people (three significant digits), e.g. `31.5 GB/s`.
pub(crate) fn human_bandwidth(value: f64) -> String {
    let (unit, scale) = [("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)]
        .into_iter()
        .find(|&(_, s)| value >= s)
        .unwrap_or(("B/s", 1.0));
    format!("{} {unit}", significant(value / scale))
}

/// A latency for people, e.g. `1.5 us`.
pub(crate) fn human_latency(value: f64) -> String {
    let (unit, scale) = [("s", 1.0), ("ms", 1e-3), ("us", 1e-6)]
        .into_iter()
        .find(|&(_, s)| value >= s)
        .unwrap_or(("ns", 1e-9));
    format!("{} {unit}", significant(value / scale))
}

fn significant(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_offsets() {
        let l = Lines::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 4, 5, 6, 99].map(|o| l.line(o)),
            [1, 1, 2, 2, 3, 4, 4]
        );
    }

    #[test]
    fn columns_count_characters() {
        let text = "a\nµs = 1\n";
        let l = Lines::new(text);
        assert_eq!(l.position(text, 0), (1, 1));
        assert_eq!(l.position(text, 2), (2, 1));
        // 'µ' is two bytes: the '=' after "µs " is the 4th character.
        assert_eq!(l.position(text, 6), (2, 4));
        // Inside 'µ' (never a span's start) and past the end stay in range.
        assert_eq!(l.position(text, 3), (2, 2));
        assert_eq!(l.position(text, 99), (3, 1));
    }

    #[test]
    fn units_read_back_exactly() {
        for bw in [
            12.5e9,
            25e9,
            31.504e9,
            1.969e9 * 16.0,
            3.125e9,
            7.0,
            1e-3,
            1.0 / 3.0,
        ] {
            if let Some(text) = exact_bandwidth(bw) {
                assert_eq!(parse_bandwidth(&text), Ok(bw), "{text}");
            }
        }
        assert_eq!(exact_bandwidth(12.5e9).unwrap(), "12.5GB/s");
        assert_eq!(exact_bandwidth(25e9 / 2.0).unwrap(), "12.5GB/s");
        for lat in [0.0, 2e-6, 1.5e-6, 0.5e-6, 1e-3, 2.5, 1.0 / 3.0] {
            if let Some(text) = exact_latency(lat) {
                assert_eq!(parse_duration(&text), Ok(lat), "{text}");
            }
        }
        assert_eq!(exact_latency(2e-6).unwrap(), "2us");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bandwidth(31.504e9), "31.5 GB/s");
        assert_eq!(human_bandwidth(300e9), "300 GB/s");
        assert_eq!(human_latency(1.5e-6), "1.5 us");
        assert_eq!(human_latency(0.0), "0 ns");
    }

    #[test]
    fn stems() {
        assert_eq!(stem("dir/dgx.pair.toml"), "dgx.pair");
        assert_eq!(stem("a\\b.toml"), "b");
        assert_eq!(stem(".toml"), ".toml");
        assert_eq!(stem(""), "topology");
    }
}
