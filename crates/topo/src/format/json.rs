//! JSON export and import: nodes, directed links named by their endpoints, ranks as node
//! names. Links are written one per direction, in order, so a round trip keeps every
//! [`crate::LinkId`] as well as every [`crate::NodeId`].

use serde::{Deserialize, Serialize};

use super::{build_error, located, unlocated};
use crate::error::TopoError;
use crate::model::{Node, NodeId, NodeKind, Tier, Topology, TopologyBuilder};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTopology {
    name: String,
    nodes: Vec<JsonNode>,
    links: Vec<JsonLink>,
    ranks: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonNode {
    name: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    in_network_reduction: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLink {
    from: String,
    to: String,
    /// Bytes per second.
    bandwidth: f64,
    /// Seconds.
    latency: f64,
    /// See `Link::duplex`; 1 when absent.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    duplex: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(d: &f64) -> bool {
    *d == 1.0
}

/// The topology as pretty-printed JSON.
pub fn to_json(t: &Topology) -> String {
    let name = |id: NodeId| t.node(id).name.clone();
    let doc = JsonTopology {
        name: t.name().to_string(),
        nodes: t
            .nodes()
            .iter()
            .map(|n| JsonNode {
                name: n.name.clone(),
                kind: n.kind.name().to_string(),
                tier: n.tier.map(|t| t.name().to_string()),
                zone: n.zone.clone(),
                host: n.host.map(name),
                in_network_reduction: n.in_network_reduction,
            })
            .collect(),
        links: t
            .links()
            .iter()
            .map(|l| JsonLink {
                from: name(l.from),
                to: name(l.to),
                bandwidth: l.bandwidth,
                latency: l.latency,
                duplex: l.duplex,
            })
            .collect(),
        ranks: t.rank_nodes().iter().map(|&n| name(n)).collect(),
    };
    // Plain structs of strings and finite numbers always serialize.
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// Reads what [`to_json`] writes. Syntax and type errors carry their line; errors in the
/// values carry their JSON path (`links[3].to`), since JSON values have no positions here.
pub fn read_json(text: &str, origin: &str) -> Result<Topology, TopoError> {
    let doc: JsonTopology = serde_json::from_str(text)
        .map_err(|e| located(origin, e.line().max(1), strip_position(&e)))?;
    let mut b = TopologyBuilder::new(doc.name.clone());
    for (i, n) in doc.nodes.iter().enumerate() {
        let node = json_node(n).map_err(|m| unlocated(origin, format!("nodes[{i}]: {m}")))?;
        b.add_node(node)
            .map_err(|e| unlocated(origin, format!("nodes[{i}]: {e}")))?;
    }
    let find = |b: &TopologyBuilder, name: &str, path: String| {
        b.find(name)
            .ok_or_else(|| unlocated(origin, format!("{path}: unknown node '{name}'")))
    };
    for (i, n) in doc.nodes.iter().enumerate() {
        if let Some(host) = &n.host {
            let h = find(&b, host, format!("nodes[{i}].host"))?;
            b.node_mut(i as NodeId).host = Some(h);
        }
    }
    for (i, l) in doc.links.iter().enumerate() {
        let from = find(&b, &l.from, format!("links[{i}].from"))?;
        let to = find(&b, &l.to, format!("links[{i}].to"))?;
        let id = b
            .link(from, to, l.bandwidth, l.latency)
            .map_err(|e| unlocated(origin, format!("links[{i}]: {e}")))?;
        b.set_duplex(id, l.duplex)
            .map_err(|e| unlocated(origin, format!("links[{i}].duplex: {e}")))?;
    }
    for (r, name) in doc.ranks.iter().enumerate() {
        let node = find(&b, name, format!("ranks[{r}]"))?;
        b.place(r as u32, node)
            .map_err(|e| unlocated(origin, format!("ranks[{r}]: {e}")))?;
    }
    b.build().map_err(|e| build_error(origin, e))
}

fn json_node(n: &JsonNode) -> Result<Node, TopoError> {
    Ok(Node {
        name: n.name.clone(),
        kind: n.kind.parse::<NodeKind>()?,
        tier: n.tier.as_deref().map(str::parse::<Tier>).transpose()?,
        zone: n.zone.clone(),
        host: None,
        in_network_reduction: n.in_network_reduction,
    })
}

/// serde_json's message without its trailing "at line L column C" (the line leads instead).
fn strip_position(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    }
}
