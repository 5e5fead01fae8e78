//! Graphviz DOT export, for looking at a topology: hosts are clusters holding their
//! devices, fabric switches sit in one row per tier, cables are single undirected edges.
//! [`to_dot_collapsed`] draws the collapsed view instead (one node per class of nodes),
//! for clusters too big to draw node by node.

use std::fmt::Write as _;

use super::collapse::{Collapsed, PartId, PartKind};
use super::{human_bandwidth, human_latency, wires};
use crate::model::{Node, NodeId, NodeKind, Tier, Topology};

/// The topology as a DOT digraph (`dot -Tsvg` draws it).
pub fn to_dot(t: &Topology) -> String {
    let n = t.nodes().len();
    let mut ranks: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (r, &node) in t.rank_nodes().iter().enumerate() {
        ranks[node as usize].push(r as u32);
    }
    let mut linked = vec![false; n];
    for l in t.links() {
        linked[l.from as usize] = true;
        linked[l.to as usize] = true;
    }
    let cluster = |node: &Node| node.host.filter(|&h| t.node(h).kind == NodeKind::Host);
    let mut members: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for (id, node) in t.nodes().iter().enumerate() {
        if let Some(h) = cluster(node) {
            members[h as usize].push(id as NodeId);
        }
    }

    let mut s = format!("digraph {} {{\n", quote(t.name()));
    s.push_str("  graph [fontname=\"Helvetica\", fontsize=11, newrank=true];\n");
    s.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
    s.push_str("  edge [fontname=\"Helvetica\", fontsize=8];\n");
    for (h, host) in t.nodes().iter().enumerate() {
        if host.kind != NodeKind::Host {
            continue;
        }
        let _ = writeln!(
            s,
            "  subgraph {} {{",
            quote(&format!("cluster_{}", host.name))
        );
        let label = match &host.zone {
            Some(zone) => format!("{} ({zone})", host.name),
            None => host.name.clone(),
        };
        let _ = writeln!(s, "    label={};", quote(&label));
        // A host with no links and no rank is drawn by its cluster alone.
        if linked[h] || !ranks[h].is_empty() {
            write_node(&mut s, "    ", host, &ranks[h]);
        }
        for &m in &members[h] {
            write_node(&mut s, "    ", t.node(m), &ranks[m as usize]);
        }
        s.push_str("  }\n");
    }
    let outside = |node: &Node| node.kind != NodeKind::Host && cluster(node).is_none();
    for tier in Tier::ALL {
        let row: Vec<usize> = (0..n)
            .filter(|&i| outside(&t.nodes()[i]) && t.nodes()[i].tier == Some(tier))
            .collect();
        if row.is_empty() {
            continue;
        }
        s.push_str("  { rank=same;\n");
        for i in row {
            write_node(&mut s, "    ", &t.nodes()[i], &ranks[i]);
        }
        s.push_str("  }\n");
    }
    for (i, node) in t.nodes().iter().enumerate() {
        if outside(node) && node.tier.is_none() {
            write_node(&mut s, "  ", node, &ranks[i]);
        }
    }
    for w in wires(t) {
        let label = format!(
            "{}\\n{}",
            escape(&human_bandwidth(w.bandwidth)),
            escape(&human_latency(w.latency))
        );
        let _ = writeln!(
            s,
            "  {} -> {} [{}label=\"{label}\"];",
            quote(&t.node(w.from).name),
            quote(&t.node(w.to).name),
            if w.cable { "dir=none, " } else { "" }
        );
    }
    s.push_str("}\n");
    s
}

fn write_node(s: &mut String, indent: &str, node: &Node, ranks: &[u32]) {
    let mut lines = vec![escape(&node.name)];
    if let Some(tier) = node.tier {
        let sharp = if node.in_network_reduction {
            ", in-network reduction"
        } else {
            ""
        };
        lines.push(format!("{tier} switch{sharp}"));
    }
    lines.extend(ranks.iter().map(|r| format!("rank {r}")));
    let _ = writeln!(
        s,
        "{indent}{} [label=\"{}\", shape={}];",
        quote(&node.name),
        lines.join("\\n"),
        shape(node.kind)
    );
}

/// How a node of `kind` is drawn.
fn shape(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Host => "box3d",
        NodeKind::Accelerator => "box, style=filled, fillcolor=\"#d9f2d9\"",
        NodeKind::Cpu => "ellipse",
        NodeKind::Nic => "hexagon",
        NodeKind::Switch => "diamond",
    }
}

/// The collapsed view of a topology (see [`super::collapse`]) as a DOT digraph: a cluster
/// per collapsed host, rack or pod, a node per class of nodes, an edge per bundle of links,
/// each labelled with its counts. Its size follows the number of distinct parts, not of
/// nodes.
pub fn to_dot_collapsed(t: &Topology, c: &Collapsed) -> String {
    let mut s = format!("digraph {} {{\n", quote(t.name()));
    s.push_str("  graph [fontname=\"Helvetica\", fontsize=11, newrank=true];\n");
    s.push_str("  node [fontname=\"Helvetica\", fontsize=10];\n");
    s.push_str("  edge [fontname=\"Helvetica\", fontsize=8];\n");
    let _ = writeln!(
        s,
        "  label={};",
        quote(&format!(
            "{}: {} nodes, {} links; identical parts collapsed (×N: copies in each enclosing \
             part)",
            t.name(),
            t.nodes().len(),
            t.links().len()
        ))
    );
    for &root in &c.roots {
        write_part(&mut s, c, root, 1);
    }
    for b in &c.bundles {
        let label = format!(
            "×{} {}\\n{}\\n{}",
            b.count,
            if b.cable { "cables" } else { "links" },
            escape(&human_bandwidth(b.bandwidth)),
            escape(&human_latency(b.latency))
        );
        let _ = writeln!(
            s,
            "  p{} -> p{} [{}label=\"{label}\"];",
            b.from,
            b.to,
            if b.cable { "dir=none, " } else { "" }
        );
    }
    s.push_str("}\n");
    s
}

fn write_part(s: &mut String, c: &Collapsed, id: PartId, depth: usize) {
    let p = &c.parts[id];
    let indent = "  ".repeat(depth);
    let count = format!("×{} ({} in all)", p.per_parent, p.total);
    match p.kind {
        PartKind::Nodes {
            kind,
            in_network_reduction,
            ranks,
            ..
        } => {
            let mut lines = vec![escape(&format!("{} {count}", p.label))];
            if in_network_reduction {
                lines.push("in-network reduction".to_string());
            }
            if ranks > 0 {
                lines.push(format!(
                    "{ranks} rank{} each",
                    if ranks == 1 { "" } else { "s" }
                ));
            }
            let _ = writeln!(
                s,
                "{indent}p{id} [label=\"{}\", shape={}];",
                lines.join("\\n"),
                shape(kind)
            );
        }
        PartKind::Host | PartKind::Group { .. } => {
            let _ = writeln!(s, "{indent}subgraph cluster_p{id} {{");
            let _ = writeln!(
                s,
                "{indent}  label={};",
                quote(&format!("{} {count}", p.label))
            );
            for &child in &p.children {
                write_part(s, c, child, depth + 1);
            }
            let _ = writeln!(s, "{indent}}}");
        }
    }
}

/// A DOT quoted string (IDs and labels; names contain '/', ':' and maybe anything).
fn quote(s: &str) -> String {
    format!("\"{}\"", escape(s))
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}
