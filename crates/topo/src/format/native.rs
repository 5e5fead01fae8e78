//! topoccl's own topology file, in TOML (docs/topology-format.md): `[[node]]`, `[[link]]`
//! (cables unless `directed = true`), ranks as a `ranks = [...]` list or `[[rank]]` tables.
//!
//! Every entry is read with its span, so every mistake, including those the model's
//! builder finds, is reported at the line of the entry that makes it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

use serde::Deserialize;
use toml::de::DeTable;
use toml::{Spanned, Value};
use topoccl_plan::units::{parse_bandwidth, parse_duration};

use super::generate::{blame, read_fabric};
use super::{build_error, disconnected_rank, exact_bandwidth, exact_latency, stem, wires, Lines};
use crate::error::TopoError;
use crate::model::{Node, NodeId, NodeKind, Tier, Topology, TopologyBuilder};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: Option<String>,
    /// A generated fabric (see [`crate::gen::Fabric`]) that the entries below add to; read
    /// by [`super::generate`] from the parsed table, with its keys' spans.
    #[serde(rename = "generate")]
    _generate: Option<serde::de::IgnoredAny>,
    /// The hosts' hardware generations (see [`crate::hardware`]), read by
    /// [`crate::hardware::read_hardware`]; the graph does not use them.
    #[serde(rename = "hardware")]
    _hardware: Option<serde::de::IgnoredAny>,
    ranks: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    node: Vec<Spanned<NodeEntry>>,
    #[serde(default)]
    link: Vec<Spanned<LinkEntry>>,
    #[serde(default)]
    rank: Vec<Spanned<RankEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: Spanned<String>,
    kind: Spanned<String>,
    tier: Option<Spanned<String>>,
    zone: Option<String>,
    host: Option<Spanned<String>>,
    in_network_reduction: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkEntry {
    a: Spanned<String>,
    b: Spanned<String>,
    bandwidth: Spanned<Value>,
    latency: Spanned<Value>,
    #[serde(default)]
    directed: bool,
    duplex: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RankEntry {
    rank: Spanned<i64>,
    node: Spanned<String>,
}

/// Reads a topology file and checks it (see docs/topology-format.md).
pub fn read_toml(text: &str, origin: &str) -> Result<Topology, TopoError> {
    let (builder, rank_lines) = Reader::new(text, origin).read()?;
    builder.build().map_err(|e| match disconnected_rank(&e) {
        Some(r) if r < rank_lines.len() => e.at(origin, rank_lines[r]),
        _ => build_error(origin, e),
    })
}

/// Reads a topology file into a builder, unbuilt, so that generated parts can be added;
/// everything but the builder's own final checks has been checked.
pub fn read_toml_builder(text: &str, origin: &str) -> Result<TopologyBuilder, TopoError> {
    Reader::new(text, origin).read().map(|(builder, _)| builder)
}

struct Reader<'a> {
    text: &'a str,
    origin: &'a str,
    lines: Lines,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str, origin: &'a str) -> Reader<'a> {
        Reader {
            text,
            origin,
            lines: Lines::new(text),
        }
    }

    fn line(&self, span: Range<usize>) -> usize {
        self.lines.line(span.start)
    }

    /// `origin:line:column: message`, at the start of `span`.
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> TopoError {
        let (line, column) = self.lines.position(self.text, span.start);
        TopoError::invalid(message).at_column(self.origin, line, column)
    }

    /// The builder and, for each rank, the line that placed it.
    fn read(&self) -> Result<(TopologyBuilder, Vec<usize>), TopoError> {
        let root = DeTable::parse(self.text).map_err(|e| self.parse_error(&e))?;
        let generate = root.get_ref().get("generate").cloned();
        let doc = Doc::deserialize(toml::de::Deserializer::from(root))
            .map_err(|e| self.type_error(&e))?;
        let name = doc.name.clone().unwrap_or_else(|| stem(self.origin));
        let mut b = match &generate {
            Some(table) => {
                let fabric = read_fabric(table).map_err(|e| self.err(e.span.clone(), e.message))?;
                let mut b = crate::gen::generate(&fabric).map_err(|e| match e {
                    TopoError::Invalid(m) => match blame(table, &m) {
                        Some(span) => self.err(span, m),
                        None => self.err(table.span(), m),
                    },
                    other => other,
                })?;
                b.set_name(name);
                // Ranks given in the file place the job on the generated devices.
                if doc.ranks.is_some() || !doc.rank.is_empty() {
                    b.clear_placement();
                }
                b
            }
            None => TopologyBuilder::new(name),
        };
        self.add_nodes(&mut b, &doc.node)?;
        self.add_hosts(&mut b, &doc.node)?;
        for link in &doc.link {
            self.add_link(&mut b, link.get_ref())?;
        }
        let rank_lines = self.place_ranks(&mut b, &doc)?;
        Ok((b, rank_lines))
    }

    /// An error of TOML's grammar: like [`Self::syntax_error`], but a malformed number
    /// (`hosts = 4x`, `bandwidth = 100Gbps`) is called that, at the start of the number.
    fn parse_error(&self, e: &toml::de::Error) -> TopoError {
        self.number_error(e).unwrap_or_else(|| self.syntax_error(e))
    }

    /// A malformed number that TOML's parser let through as an integer too big for any
    /// type (`hosts = 1_000x`), else as [`Self::syntax_error`].
    fn type_error(&self, e: &toml::de::Error) -> TopoError {
        let overflow = e.message().contains("integer number overflowed");
        let number = overflow.then(|| self.number_error(e)).flatten();
        number.unwrap_or_else(|| self.syntax_error(e))
    }

    /// The error for a value at `e`'s span that starts as a number but is none.
    fn number_error(&self, e: &toml::de::Error) -> Option<TopoError> {
        let (start, token) = malformed_number(self.text, e.span()?.start)?;
        let plain = token.trim_start_matches(['+', '-']).replace('_', "");
        if plain.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(self.err(
            start..start,
            format!(
                "`{token}` is not a number; numbers are digits only (4, 2.5, 1e9, 0x1f), and \
                 quantities with units are quoted strings (\"100Gbps\", \"2us\")"
            ),
        ))
    }

    fn syntax_error(&self, e: &toml::de::Error) -> TopoError {
        let message = e.message().trim().to_string();
        match e.span() {
            Some(span) => self.err(span, message),
            None => super::unlocated(self.origin, message),
        }
    }

    /// All nodes first, hosts after: a device may name a host defined further down.
    fn add_nodes(
        &self,
        b: &mut TopologyBuilder,
        nodes: &[Spanned<NodeEntry>],
    ) -> Result<(), TopoError> {
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for entry in nodes {
            let n = entry.get_ref();
            let line = self.line(n.name.span());
            if let Some(first) = first_line.insert(n.name.get_ref(), line) {
                return Err(self.err(
                    n.name.span(),
                    format!(
                        "duplicate node id '{}' (first defined on line {first}); every node needs \
                         a unique name",
                        n.name.get_ref()
                    ),
                ));
            }
            let node = self.node(n)?;
            b.add_node(node).map_err(|e| e.at(self.origin, line))?;
        }
        Ok(())
    }

    fn node(&self, n: &NodeEntry) -> Result<Node, TopoError> {
        let kind: NodeKind = n
            .kind
            .get_ref()
            .parse()
            .map_err(|e: TopoError| self.err(n.kind.span(), e.to_string()))?;
        let tier = match &n.tier {
            Some(t) if kind != NodeKind::Switch => {
                return Err(self.err(
                    t.span(),
                    format!(
                        "node '{}' is of kind {kind} but has a tier; only switches have tiers",
                        n.name.get_ref()
                    ),
                ))
            }
            Some(t) => Some(
                t.get_ref()
                    .parse::<Tier>()
                    .map_err(|e| self.err(t.span(), e.to_string()))?,
            ),
            None => None,
        };
        let reduces = n.in_network_reduction.as_ref();
        if let Some(r) = reduces.filter(|r| *r.get_ref() && kind != NodeKind::Switch) {
            return Err(self.err(
                r.span(),
                format!(
                    "node '{}' is of kind {kind}; only switches can have in_network_reduction",
                    n.name.get_ref()
                ),
            ));
        }
        Ok(Node {
            name: n.name.get_ref().clone(),
            kind,
            tier,
            zone: n.zone.clone(),
            host: None,
            in_network_reduction: reduces.is_some_and(|r| *r.get_ref()),
        })
    }

    fn add_hosts(
        &self,
        b: &mut TopologyBuilder,
        nodes: &[Spanned<NodeEntry>],
    ) -> Result<(), TopoError> {
        for (id, entry) in nodes.iter().enumerate() {
            let n = entry.get_ref();
            let Some(host) = &n.host else { continue };
            let me = n.name.get_ref();
            let h = self.resolve(b, host, &format!("the host of node '{me}'"))?;
            let what = |k: NodeKind| {
                format!(
                    "node '{me}' names host '{}', which is of kind {k}",
                    host.get_ref()
                )
            };
            let host_kind = b.nodes()[h as usize].kind;
            if host_kind != NodeKind::Host {
                return Err(self.err(
                    host.span(),
                    format!("{}; `host` must name a node of kind host", what(host_kind)),
                ));
            }
            if b.nodes()[id].kind == NodeKind::Host {
                return Err(self.err(
                    host.span(),
                    format!("node '{me}' is a host itself; only devices name a host"),
                ));
            }
            b.node_mut(id as NodeId).host = Some(h);
        }
        Ok(())
    }

    fn resolve(
        &self,
        b: &TopologyBuilder,
        name: &Spanned<String>,
        role: &str,
    ) -> Result<NodeId, TopoError> {
        b.find(name.get_ref()).ok_or_else(|| {
            self.err(
                name.span(),
                format!(
                    "unknown node '{}' as {role}; every node must be defined in a [[node]] table",
                    name.get_ref()
                ),
            )
        })
    }

    fn add_link(&self, b: &mut TopologyBuilder, l: &LinkEntry) -> Result<(), TopoError> {
        let a = self.resolve(b, &l.a, "endpoint `a` of a link")?;
        let z = self.resolve(b, &l.b, "endpoint `b` of a link")?;
        let wire = format!("link {} - {}", l.a.get_ref(), l.b.get_ref());
        let bandwidth = bandwidth_value(l.bandwidth.get_ref())
            .map_err(|m| self.err(l.bandwidth.span(), format!("{wire}: {m}")))?;
        let latency = latency_value(l.latency.get_ref())
            .map_err(|m| self.err(l.latency.span(), format!("{wire}: {m}")))?;
        let added = if l.directed {
            b.link(a, z, bandwidth, latency).map(|id| vec![id])
        } else {
            b.connect(a, z, bandwidth, latency)
                .map(|(there, back)| vec![there, back])
        };
        let ids = added.map_err(|e| e.at(self.origin, self.line(l.a.span())))?;
        if let Some(d) = &l.duplex {
            for id in ids {
                b.set_duplex(id, *d.get_ref())
                    .map_err(|e| self.err(d.span(), e.to_string()))?;
            }
        }
        Ok(())
    }

    fn place_ranks(&self, b: &mut TopologyBuilder, doc: &Doc) -> Result<Vec<usize>, TopoError> {
        match (&doc.ranks, doc.rank.first()) {
            (Some(list), Some(table)) => Err(self.err(
                table.span(),
                format!(
                    "ranks are given twice, as `ranks = [...]` (line {}) and as [[rank]] tables; \
                     use one of the two",
                    self.line(list.span())
                ),
            )),
            (Some(list), None) => {
                let placed = list
                    .get_ref()
                    .iter()
                    .enumerate()
                    .map(|(r, n)| (r as u32, n));
                self.place(b, placed.collect())
            }
            (None, _) => {
                let placed = self.numbered(&doc.rank)?;
                self.place(b, placed)
            }
        }
    }

    /// `[[rank]]` tables in rank order, checked to number `0..n` once each.
    fn numbered<'d>(
        &self,
        entries: &'d [Spanned<RankEntry>],
    ) -> Result<Vec<(u32, &'d Spanned<String>)>, TopoError> {
        let n = entries.len();
        let mut slots: Vec<Option<&RankEntry>> = vec![None; n];
        for e in entries.iter().map(Spanned::get_ref) {
            let r = *e.rank.get_ref();
            if r < 0 {
                return Err(self.err(e.rank.span(), format!("rank {r}: rank numbers start at 0")));
            }
            let Some(slot) = slots.get_mut(r as usize) else {
                continue;
            };
            if let Some(first) = slot.replace(e) {
                return Err(self.err(
                    e.rank.span(),
                    format!(
                        "rank {r} is placed twice: on '{}' (line {}) and on '{}'",
                        first.node.get_ref(),
                        self.line(first.node.span()),
                        e.node.get_ref()
                    ),
                ));
            }
        }
        if let Some(missing) = slots.iter().position(Option::is_none) {
            // With n entries and a number below n missing, some entry is numbered past it.
            let next = entries
                .iter()
                .map(Spanned::get_ref)
                .filter(|e| *e.rank.get_ref() > missing as i64)
                .min_by_key(|e| *e.rank.get_ref());
            let (span, r) = next.map_or((0..0, n as i64), |e| (e.rank.span(), *e.rank.get_ref()));
            return Err(self.err(
                span,
                format!(
                    "rank {missing} is missing: ranks must be numbered 0..{} with none missing or \
                     repeated, but the next one placed is rank {r}",
                    n.saturating_sub(1)
                ),
            ));
        }
        Ok(slots
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(r, e)| (r as u32, &e.node))
            .collect())
    }

    /// Places ranks in order; returns the line of each.
    fn place(
        &self,
        b: &mut TopologyBuilder,
        placed: Vec<(u32, &Spanned<String>)>,
    ) -> Result<Vec<usize>, TopoError> {
        let mut owner: HashMap<NodeId, (u32, usize)> = HashMap::new();
        let mut lines = Vec::with_capacity(placed.len());
        for (r, name) in placed {
            let line = self.line(name.span());
            let node = self.resolve(b, name, &format!("the node of rank {r}"))?;
            if let Some((other, at)) = owner.insert(node, (r, line)) {
                return Err(self.err(
                    name.span(),
                    format!(
                        "ranks {other} (line {at}) and {r} are both placed on '{}'; one rank per \
                         device",
                        name.get_ref()
                    ),
                ));
            }
            b.place(r, node).map_err(|e| e.at(self.origin, line))?;
            lines.push(line);
        }
        Ok(lines)
    }
}

/// The value around byte `offset` of `text` (where TOML's parser failed), with its start,
/// if it begins as a number would (a digit, or a sign then a digit) but is not a date or
/// time, whose own errors say what is wrong.
fn malformed_number(text: &str, offset: usize) -> Option<(usize, &str)> {
    let offset = offset.min(text.len());
    let is_start = |c: char| c.is_whitespace() || matches!(c, '=' | ',' | '[' | '{');
    let before = text.get(..offset)?;
    let start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| is_start(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let rest = text.get(start..)?;
    let end = rest.find([',', ']', '}', '#', '\n']).unwrap_or(rest.len());
    let token = rest[..end].trim();
    let digits = token.strip_prefix(['+', '-']).unwrap_or(token);
    let numeric = digits.starts_with(|c: char| c.is_ascii_digit());
    let bytes = token.as_bytes();
    let date = bytes.len() > 4 && bytes[..4].iter().all(u8::is_ascii_digit) && bytes[4] == b'-';
    let time = bytes.len() > 2 && bytes[..2].iter().all(u8::is_ascii_digit) && bytes[2] == b':';
    (numeric && !date && !time).then_some((start, token))
}

const BANDWIDTH_FORMS: &str =
    "a bandwidth is a positive quantity such as \"100Gbps\" or \"25GB/s\", or a number of bytes/s";
const LATENCY_FORMS: &str =
    "a latency is zero or more, such as \"2us\" or \"1.5ms\", or a number of seconds";

fn bandwidth_value(v: &Value) -> Result<f64, String> {
    let bytes_per_s = match v {
        Value::String(s) if s.trim_start().starts_with('-') => {
            return Err(format!("bandwidth '{s}' is negative; {BANDWIDTH_FORMS}"))
        }
        Value::String(s) => parse_bandwidth(s).map_err(|e| format!("{e}; {BANDWIDTH_FORMS}"))?,
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        other => {
            return Err(format!(
                "bandwidth is a {}; {BANDWIDTH_FORMS}",
                other.type_str()
            ))
        }
    };
    if bytes_per_s.is_finite() && bytes_per_s > 0.0 {
        Ok(bytes_per_s)
    } else {
        Err(format!("bandwidth {v} is not positive; {BANDWIDTH_FORMS}"))
    }
}

fn latency_value(v: &Value) -> Result<f64, String> {
    let seconds = match v {
        Value::String(s) if s.trim_start().starts_with('-') => {
            return Err(format!("latency '{s}' is negative; {LATENCY_FORMS}"))
        }
        Value::String(s) => parse_duration(s).map_err(|e| format!("{e}; {LATENCY_FORMS}"))?,
        Value::Integer(i) => *i as f64,
        Value::Float(f) => *f,
        other => {
            return Err(format!(
                "latency is a {}; {LATENCY_FORMS}",
                other.type_str()
            ))
        }
    };
    if seconds < 0.0 {
        Err(format!("latency {v} is negative; {LATENCY_FORMS}"))
    } else if seconds.is_finite() {
        Ok(seconds)
    } else {
        Err(format!("latency {v} is not finite; {LATENCY_FORMS}"))
    }
}

/// The topology as a file that [`read_toml`] reads back to the same nodes (same ids), links
/// and ranks. Opposite links of equal bandwidth and latency are written as one cable.
pub fn write_toml(t: &Topology) -> String {
    let mut s = String::from("# topoccl topology (docs/topology-format.md)\n");
    let _ = writeln!(s, "name = {}", quote(t.name()));
    s.push_str("ranks = [\n");
    for &n in t.rank_nodes() {
        let _ = writeln!(s, "  {},", quote(&t.node(n).name));
    }
    s.push_str("]\n");
    for n in t.nodes() {
        write_node(&mut s, t, n);
    }
    for w in wires(t) {
        s.push_str("\n[[link]]\n");
        let _ = writeln!(s, "a = {}", quote(&t.node(w.from).name));
        let _ = writeln!(s, "b = {}", quote(&t.node(w.to).name));
        let _ = writeln!(
            s,
            "bandwidth = {}",
            quantity(exact_bandwidth(w.bandwidth), w.bandwidth)
        );
        let _ = writeln!(
            s,
            "latency = {}",
            quantity(exact_latency(w.latency), w.latency)
        );
        if !w.cable {
            s.push_str("directed = true\n");
        }
        if w.duplex != 1.0 {
            let _ = writeln!(s, "duplex = {:?}", w.duplex);
        }
    }
    s
}

fn write_node(s: &mut String, t: &Topology, n: &Node) {
    s.push_str("\n[[node]]\n");
    let _ = writeln!(s, "name = {}", quote(&n.name));
    let _ = writeln!(s, "kind = {}", quote(n.kind.name()));
    if let Some(tier) = n.tier {
        let _ = writeln!(s, "tier = {}", quote(tier.name()));
    }
    if let Some(zone) = &n.zone {
        let _ = writeln!(s, "zone = {}", quote(zone));
    }
    if let Some(h) = n.host {
        let _ = writeln!(s, "host = {}", quote(&t.node(h).name));
    }
    if n.in_network_reduction {
        s.push_str("in_network_reduction = true\n");
    }
}

fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A unit string when one reads back exactly, else the plain number (also exact).
fn quantity(text: Option<String>, value: f64) -> String {
    match text {
        Some(text) => quote(&text),
        None => Value::Float(value).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_numbers() {
        let at = malformed_number;
        assert_eq!(at("hosts = 4x\n", 8), Some((8, "4x")));
        assert_eq!(at("hosts = 4.5.6\n", 11), Some((8, "4.5.6")));
        assert_eq!(at("a = [1, -2x]", 8), Some((8, "-2x")));
        assert_eq!(at("a = {b = 3y} # c", 9), Some((9, "3y")));
        assert_eq!(at("hosts = 4 x", 8), Some((8, "4 x")));
        assert_eq!(at("hosts = four", 8), None);
        assert_eq!(at("d = 1979-05-32", 4), None);
        assert_eq!(at("t = 25:61:00", 4), None);
        assert_eq!(at("", 3), None);
    }

    #[test]
    fn quantities() {
        assert_eq!(bandwidth_value(&Value::Integer(5)), Ok(5.0));
        assert_eq!(
            bandwidth_value(&Value::String("100Gbps".into())),
            Ok(12.5e9)
        );
        assert!(bandwidth_value(&Value::Float(f64::NAN)).is_err());
        assert!(bandwidth_value(&Value::Boolean(true))
            .unwrap_err()
            .contains("bandwidth is a boolean"));
        assert!(latency_value(&Value::Float(-1.0))
            .unwrap_err()
            .contains("negative"));
        assert_eq!(latency_value(&Value::Integer(0)), Ok(0.0));
        assert_eq!(quantity(None, 0.1), "0.1");
    }
}
