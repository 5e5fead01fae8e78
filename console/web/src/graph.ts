// The topology as a graphology graph for sigma: positions from the server's layout (no
// layout in the browser), sizes and colours by kind, edges coloured by live figures.

import Graph from "graphology";
import type { DrawNode, EdgeFigures, Level, TopologyBody } from "./api";

export const LEVEL_COLOUR: Record<Level, string> = {
  green: "#3ccf7a",
  amber: "#f0b43c",
  red: "#ff4d4d",
};
/** A link without live figures. */
export const IDLE_EDGE = "#2d5a44";

const NODE_COLOUR: Record<string, string> = {
  core: "#b48cff",
  spine: "#7aa7ff",
  leaf: "#4fc3f7",
  switch: "#4fc3f7",
  host: "#c9d3dd",
  device: "#7d8894",
  pod: "#7aa7ff",
};

function nodeSize(n: DrawNode, nodes: number): number {
  const small = nodes > 5000;
  switch (n.kind) {
    case "pod":
      return 8;
    case "switch":
      return small ? 3 : 6;
    case "host":
      return small ? 1.6 : 4;
    case "device":
      return small ? 0.8 : 2;
  }
}

export function nodeLabel(n: DrawNode): string {
  if (n.kind === "pod") return `pod ${n.pod} (${n.hosts} hosts)`;
  return n.key;
}

export function edgeKey(i: number): string {
  return `e${i}`;
}

export function edgeSize(level: Level | undefined, edges: number): number {
  const base = edges > 5000 ? 0.4 : 1;
  if (level === "red") return base * 4;
  if (level === "amber") return base * 3;
  if (level === "green") return base * 2;
  return base;
}

/** The graph of a layout: node keys are the layout's, edge keys `e<index>`. */
export function buildGraph(topo: TopologyBody): Graph {
  const g = new Graph({ type: "undirected", multi: false, allowSelfLoops: false });
  const { nodes, edges } = topo.layout;
  for (const n of nodes) {
    g.addNode(n.key, {
      x: n.x,
      y: -n.y,
      size: nodeSize(n, nodes.length),
      color: NODE_COLOUR[n.kind === "switch" ? (n.tier ?? "switch") : n.kind],
      label: n.kind === "device" ? null : nodeLabel(n),
    });
  }
  edges.forEach((e, i) => {
    g.addEdgeWithKey(edgeKey(i), nodes[e.a].key, nodes[e.b].key, {
      color: IDLE_EDGE,
      size: edgeSize(undefined, edges.length),
    });
  });
  return g;
}

/**
 * Colours edges by the latest figures; edges that lost their figures go back to idle.
 * Returns the edges now coloured.
 */
export function colourEdges(
  g: Graph,
  previous: Set<number>,
  figures: EdgeFigures[],
  edgeCount: number,
): Set<number> {
  const now = new Set<number>();
  for (const f of figures) {
    if (f.edge >= edgeCount) continue;
    now.add(f.edge);
    g.mergeEdgeAttributes(edgeKey(f.edge), {
      color: LEVEL_COLOUR[f.level],
      size: edgeSize(f.level, edgeCount),
    });
  }
  for (const e of previous) {
    if (!now.has(e) && e < edgeCount) {
      g.mergeEdgeAttributes(edgeKey(e), { color: IDLE_EDGE, size: edgeSize(undefined, edgeCount) });
    }
  }
  return now;
}
