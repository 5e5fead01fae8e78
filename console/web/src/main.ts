// The console's page: loads the layout, draws it with sigma (WebGL), polls the live
// figures, alerts and calls, and runs what-ifs. Every figure comes from the JSON API.

import Sigma from "sigma";
import type Graph from "graphology";
import {
  ApiError,
  getJson,
  postJson,
  type AlertsBody,
  type CallsBody,
  type EdgeFigures,
  type JobStatus,
  type LinksBody,
  type Timeline,
  type TopologyBody,
  type WhatIfAnswer,
} from "./api";
import { buildGraph, colourEdges } from "./graph";
import { bytes, escape, percent, ranges, rate, seconds } from "./format";
import { drawTimeline, type Hit } from "./timeline";

/** What the browser test reads. */
interface ConsoleProbe {
  ready: boolean;
  drawnAt: number | null;
  nodes: number;
  edges: number;
  error: string | null;
  sigma: Sigma | null;
}

declare global {
  interface Window {
    __console: ConsoleProbe;
  }
}

const probe: ConsoleProbe = { ready: false, drawnAt: null, nodes: 0, edges: 0, error: null, sigma: null };
window.__console = probe;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

let topo: TopologyBody | null = null;
let fullTopo: TopologyBody | null = null;
let renderer: Sigma | null = null;
let graph: Graph | null = null;
let coloured = new Set<number>();
let figures = new Map<number, EdgeFigures>();
let timeline: Timeline | null = null;
let selectedRanks: Set<number> | null = null;
let hitTest: (x: number, y: number) => Hit | null = () => null;

function banner(message: string | null) {
  const b = $("banner");
  b.hidden = message === null;
  b.textContent = message ?? "";
}

function showJob(job: JobStatus) {
  const el = $("job");
  if (!job.addr) {
    el.textContent = "no job (topology only)";
    el.className = "job";
  } else if (job.up) {
    el.textContent = `job ${job.addr}: ${job.ranks_up} ranks up`;
    el.className = "job up";
  } else if (job.failed_polls === 0) {
    el.textContent = `job ${job.addr}: connecting…`;
    el.className = "job";
  } else {
    el.textContent = `job ${job.addr} not answering (${job.failed_polls} tries), retrying`;
    el.title = job.error ?? "";
    el.className = "job down";
  }
}

function tooltip(text: string | null, x = 0, y = 0) {
  const t = $("tooltip");
  t.hidden = text === null;
  if (text !== null) {
    t.textContent = text;
    t.style.left = `${x + 14}px`;
    t.style.top = `${y + 14}px`;
  }
}

function nodeIndex(key: string): number {
  return topo?.layout.nodes.findIndex((n) => n.key === key) ?? -1;
}

function edgeText(i: number): string {
  if (!topo) return "";
  const e = topo.layout.edges[i];
  const f = figures.get(i);
  const lines = [
    e.name + (e.links.length > 2 ? ` (+${e.links.length - 1} links)` : ""),
    `bandwidth ${rate(e.bandwidth)}, latency ${seconds(e.latency_s)}`,
  ];
  if (f) {
    lines.push(
      `live: ${f.level}${f.congested ? " (congested)" : ""}`,
      `utilisation ${percent(f.utilisation)}, load ${rate(f.throughput_bps)}`,
      `latency ${seconds(f.latency_s)}, ${bytes(f.bytes)} carried, ${f.pairs} rank pairs`,
    );
    if (f.throughput_ratio !== undefined)
      lines.push(`slowest pair at ${percent(f.throughput_ratio)} of its learned throughput`);
  } else {
    lines.push("no live figures");
  }
  return lines.join("\n");
}

function nodeText(key: string): string {
  const n = topo?.layout.nodes[nodeIndex(key)];
  if (!n) return key;
  const lines = [`${n.key} (${n.tier ?? n.kind})`];
  if (n.kind === "pod") lines.push(`${n.hosts} hosts; click to open`);
  if (n.ranks.length) lines.push(`ranks ${ranges(n.ranks)}`);
  if (n.zone) lines.push(`zone ${n.zone}`);
  return lines.join("\n");
}

function showDetails(key: string) {
  const n = topo?.layout.nodes[nodeIndex(key)];
  const box = $("details");
  if (!n) return;
  let html = `<h2>Details</h2><p><strong>${escape(n.key)}</strong> · ${escape(n.tier ?? n.kind)}</p>`;
  if (n.ranks.length) {
    html += `<p>ranks ${escape(ranges(n.ranks))}</p>`;
    const calls = (timeline?.tracks ?? [])
      .filter((t) => t.rank !== undefined && n.ranks.includes(t.rank))
      .flatMap((t) => t.spans.slice(-5).map((s) => ({ t, s })))
      .slice(-20);
    if (calls.length) {
      html += "<table><tr><th>rank</th><th>call</th><th>state</th><th>time</th></tr>";
      for (const { t, s } of calls)
        html += `<tr><td>${t.rank}</td><td>#${s.seq ?? ""} ${escape(s.name)}</td><td>${escape(s.state)}</td><td>${seconds(s.dur_s)}</td></tr>`;
      html += "</table>";
    } else {
      html += `<p class="hint">no recent calls</p>`;
    }
  }
  box.innerHTML = html;
  selectedRanks = n.ranks.length ? new Set(n.ranks) : null;
  redrawTimeline();
  const target = $<HTMLInputElement>("wi-target");
  if (n.kind === "switch") target.value = n.key;
}

function redrawTimeline() {
  $("timeline-source").textContent = timeline
    ? `${timeline.source === "flight" ? "the job's flight recorders" : "simulator trace"}${selectedRanks ? ", selected host" : ""}`
    : "";
  hitTest = drawTimeline($<HTMLCanvasElement>("timeline"), timeline, selectedRanks);
}

function draw(t: TopologyBody) {
  topo = t;
  coloured = new Set();
  graph = buildGraph(t);
  probe.nodes = graph.order;
  probe.edges = graph.size;
  $("title").textContent = `${t.name}: ${t.world} ranks, ${t.nodes_in_model} nodes, ${t.links_in_model} links`;
  $("scope").textContent = t.layout.aggregated ? "aggregated by pod: click a pod" : "";
  const big = graph.order > 5000;
  const settings = {
    renderLabels: true,
    labelRenderedSizeThreshold: big ? 6 : 3,
    labelColor: { color: "#c9d3dd" },
    enableEdgeEvents: true,
    // Large graphs: while the camera moves (pan, zoom, animations) only the nodes are
    // drawn; edges and labels come back on the frame it stops. On software WebGL the
    // edges and labels cost most of a frame (docs/console.md, "Measured").
    hideEdgesOnMove: big,
    hideLabelsOnMove: big,
    defaultEdgeColor: "#2d5a44",
    minCameraRatio: 0.0005,
    maxCameraRatio: 4,
  };
  if (renderer) {
    renderer.setGraph(graph);
    renderer.getCamera().setState({ x: 0.5, y: 0.5, ratio: 1, angle: 0 });
  } else {
    renderer = new Sigma(graph, $("graph"), settings);
    probe.sigma = renderer;
    renderer.on("enterNode", ({ node, event }) => tooltip(nodeText(node), event.original instanceof MouseEvent ? event.original.clientX : 0, event.original instanceof MouseEvent ? event.original.clientY : 0));
    renderer.on("leaveNode", () => tooltip(null));
    renderer.on("enterEdge", ({ edge, event }) => {
      const i = Number(edge.slice(1));
      const ev = event.original;
      tooltip(edgeText(i), ev instanceof MouseEvent ? ev.clientX : 0, ev instanceof MouseEvent ? ev.clientY : 0);
    });
    renderer.on("leaveEdge", () => tooltip(null));
    renderer.on("clickEdge", ({ edge }) => {
      const e = topo?.layout.edges[Number(edge.slice(1))];
      if (e) $<HTMLInputElement>("wi-target").value = e.name.replace(" -> ", "-");
    });
    renderer.on("clickNode", ({ node }) => {
      const n = topo?.layout.nodes[nodeIndex(node)];
      if (n?.kind === "pod" && n.pod !== undefined) void loadTopology(n.pod);
      else showDetails(node);
    });
  }
  renderer.once("afterRender", () => {
    probe.drawnAt = performance.now();
    probe.ready = true;
  });
  renderer.refresh();
  const scope = $("scope");
  if (fullTopo && t !== fullTopo) {
    scope.innerHTML = "";
    const back = document.createElement("button");
    back.textContent = "← whole cluster";
    back.onclick = () => fullTopo && draw(fullTopo);
    scope.append(back);
  }
  $("whatif").hidden = !t.what_if;
  applyFigures();
}

async function loadTopology(pod?: number) {
  try {
    const t = await getJson<TopologyBody>(pod === undefined ? "api/topology" : `api/topology?pod=${pod}`);
    if (pod === undefined) fullTopo = t;
    banner(null);
    draw(t);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    probe.error = why;
    probe.ready = true;
    banner(`The topology cannot be shown:\n${why}`);
  }
}

function applyFigures() {
  if (!graph || !topo) return;
  // Live figures index the whole cluster's layout; a pod's own layout is not coloured.
  if (topo !== fullTopo) return;
  coloured = colourEdges(graph, coloured, [...figures.values()], topo.layout.edges.length);
}

async function pollLinks() {
  try {
    const l = await getJson<LinksBody>("api/links");
    showJob(l.job);
    figures = new Map(l.edges.map((f) => [f.edge, f]));
    applyFigures();
  } catch (e) {
    $("job").textContent = `console not answering: ${e instanceof Error ? e.message : e}`;
    $("job").className = "job down";
  }
}

async function pollAlerts() {
  try {
    const a = await getJson<AlertsBody>("api/alerts");
    const list = $("alert-list");
    if (!a.alerts.length) {
      list.innerHTML = `<li class="hint">none</li>`;
      return;
    }
    list.innerHTML = a.alerts
      .slice(0, 50)
      .map((x) => {
        const when = new Date(x.since_ns / 1e6).toLocaleTimeString();
        const cls = x.resolved_ns ? "resolved" : "firing";
        return `<li class="${cls}"><strong>${x.kind}</strong> ${when}${x.resolved_ns ? " (resolved)" : ""}<br>${escape(x.reason)}</li>`;
      })
      .join("");
  } catch {
    // pollLinks reports a console that does not answer.
  }
}

async function pollCalls() {
  try {
    const c = await getJson<CallsBody>("api/calls");
    timeline = c.timeline;
    redrawTimeline();
  } catch {
    // As above.
  }
}

function setupWhatIf() {
  $("whatif-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = $("wi-result");
    out.innerHTML = `<p class="hint">simulating… (large topologies take a while)</p>`;
    const body = {
      target: $<HTMLInputElement>("wi-target").value,
      action: $<HTMLSelectElement>("wi-action").value,
      factor: Number($<HTMLInputElement>("wi-factor").value),
      collective: $<HTMLInputElement>("wi-collective").value,
      size: $<HTMLInputElement>("wi-size").value,
    };
    try {
      const a = await postJson<WhatIfAnswer>("api/sim", body);
      const row = (name: string, p: WhatIfAnswer["flat_ring"] | null) =>
        p
          ? `<tr><td>${name}<br><span class="hint">${escape(p.label)}</span></td><td>${seconds(p.healthy_s)}</td><td>${seconds(p.faulty_s)}</td><td>×${p.slowdown.toFixed(2)}</td></tr>`
          : `<tr><td>${name}</td><td colspan="3" class="hint">none for this collective</td></tr>`;
      out.innerHTML =
        `<p>${escape(a.collective)} of ${bytes(a.bytes)}; ${escape(a.faults.slice(0, 3).join("; "))}${a.faults.length > 3 ? ` (+${a.faults.length - 3})` : ""}</p>` +
        `<table><tr><th>plan</th><th>healthy</th><th>with fault</th><th>slowdown</th></tr>${row("flat ring", a.flat_ring)}${row("topology-aware", a.topology_aware)}</table>`;
    } catch (e) {
      const why = e instanceof ApiError ? `${e.status}: ${e.message}` : String(e);
      out.innerHTML = `<p class="error">${escape(why)}</p>`;
    }
  });
}

function setupTimelineHover() {
  const c = $<HTMLCanvasElement>("timeline");
  c.addEventListener("mousemove", (ev) => {
    const r = c.getBoundingClientRect();
    const hit = hitTest(ev.clientX - r.left, ev.clientY - r.top);
    tooltip(
      hit ? `${hit.track}\n${hit.span.seq !== undefined ? `#${hit.span.seq} ` : ""}${hit.span.name} (${hit.span.state})\n${seconds(hit.span.dur_s)}\n${hit.span.detail}` : null,
      ev.clientX,
      ev.clientY,
    );
  });
  c.addEventListener("mouseleave", () => tooltip(null));
}

function every(ms: number, f: () => Promise<void>) {
  const tick = async () => {
    await f();
    setTimeout(tick, ms);
  };
  void tick();
}

setupWhatIf();
setupTimelineHover();
window.addEventListener("resize", redrawTimeline);
void loadTopology();
every(500, pollLinks);
every(2000, pollAlerts);
every(2000, pollCalls);
