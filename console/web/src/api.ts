// The console's JSON API (docs/console.md), typed. Requests carry the page's cookie, so
// the token never passes through this code.

export interface Thresholds {
  utilisation_max: number;
  utilisation_clear: number;
  latency_max_s: number;
  latency_clear_s: number;
}

export type DrawKind = "switch" | "host" | "device" | "pod";

export interface DrawNode {
  key: string;
  kind: DrawKind;
  tier?: string;
  zone?: string;
  x: number;
  y: number;
  ranks: number[];
  pod?: number;
  hosts?: number;
}

export interface DrawEdge {
  a: number;
  b: number;
  links: number[];
  name: string;
  bandwidth: number;
  latency_s: number;
}

export interface PodInfo {
  pod: number;
  name: string;
  hosts: number;
  ranks: number;
}

export interface TopologyBody {
  name: string;
  world: number;
  nodes_in_model: number;
  links_in_model: number;
  thresholds: Thresholds;
  what_if: boolean;
  job: string | null;
  layout: { nodes: DrawNode[]; edges: DrawEdge[]; aggregated: boolean; pods: PodInfo[] };
}

export interface JobStatus {
  addr: string | null;
  up: boolean;
  error?: string;
  failed_polls: number;
  last_ok_ns?: number;
  ranks_up: number;
}

export type Level = "green" | "amber" | "red";

export interface EdgeFigures {
  edge: number;
  level: Level;
  utilisation?: number;
  throughput_bps?: number;
  latency_s?: number;
  congested: boolean;
  pairs: number;
  /** Bytes carried so far. */
  bytes: number;
  /** Achieved over the learned baseline throughput (the slowest pair crossing it). */
  throughput_ratio?: number;
}

export interface LinksBody {
  job: JobStatus;
  updated_ns: number;
  edges: EdgeFigures[];
}

export interface Span {
  name: string;
  start_s: number;
  dur_s: number;
  state: string;
  detail: string;
  seq?: number;
}

export interface Track {
  name: string;
  rank?: number;
  spans: Span[];
}

export interface Timeline {
  source: "flight" | "trace";
  origin_ns: number;
  tracks: Track[];
}

export interface CallsBody {
  job: JobStatus;
  timeline: Timeline | null;
}

export interface LoggedAlert {
  kind: "congestion" | "straggler" | "down";
  rank: number;
  peer?: number;
  reason: string;
  since_ns: number;
  resolved_ns?: number;
}

export interface AlertsBody {
  job: JobStatus;
  alerts: LoggedAlert[];
}

export interface Prediction {
  label: string;
  healthy_s: number;
  faulty_s: number;
  slowdown: number;
}

export interface WhatIfAnswer {
  target: string;
  faults: string[];
  collective: string;
  bytes: number;
  flat_ring: Prediction;
  topology_aware: Prediction | null;
}

/** A failed request: the status and the server's reason. */
export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message);
  }
}

async function answer<T>(r: Response): Promise<T> {
  const text = await r.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError(r.status, `${r.status}: ${text.slice(0, 200)}`);
  }
  if (!r.ok) {
    const why = (body as { error?: string }).error ?? text;
    throw new ApiError(r.status, why);
  }
  return body as T;
}

export async function getJson<T>(path: string): Promise<T> {
  return answer<T>(await fetch(path, { credentials: "same-origin" }));
}

export async function postJson<T>(path: string, body: unknown): Promise<T> {
  return answer<T>(
    await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    }),
  );
}
