// Per-rank timelines on a canvas: one row per track, spans coloured by state, the last
// window of time (flight recorders) or the whole trace.

import type { Span, Timeline } from "./api";
import { seconds } from "./format";

const STATE_COLOUR: Record<string, string> = {
  completed: "#3ccf7a",
  started: "#f0b43c",
  scheduled: "#7aa7ff",
  failed: "#ff4d4d",
  slice: "#7aa7ff",
};
/** Rows drawn at most. */
const MAX_ROWS = 16;

export interface Hit {
  track: string;
  span: Span;
}

/** Draws `t` (only `ranks`' tracks when given); returns a hit test for hovering. */
export function drawTimeline(
  canvas: HTMLCanvasElement,
  t: Timeline | null,
  ranks: Set<number> | null,
): (x: number, y: number) => Hit | null {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  if (!ctx) return () => null;
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#7d8894";
  if (!t || t.tracks.length === 0) {
    ctx.fillText("no calls yet: start with --job ADDR (a job's flight recorders) or --trace FILE", 8, 20);
    return () => null;
  }
  const tracks = t.tracks
    .filter((tr) => !ranks || (tr.rank !== undefined && ranks.has(tr.rank)))
    .slice(0, MAX_ROWS);
  let end = 0;
  let start = Infinity;
  for (const tr of tracks)
    for (const s of tr.spans) {
      end = Math.max(end, s.start_s + s.dur_s);
      start = Math.min(start, s.start_s);
    }
  if (t.source === "flight") start = Math.max(start, end - 10);
  if (!Number.isFinite(start) || end <= start) end = start + 1e-6;
  const labelW = 170;
  const rowH = Math.max(8, Math.min(20, (h - 16) / Math.max(1, tracks.length)));
  const x = (s: number) => labelW + ((s - start) / (end - start)) * (w - labelW - 8);
  const boxes: { x0: number; x1: number; y0: number; y1: number; hit: Hit }[] = [];
  tracks.forEach((tr, row) => {
    const y = 4 + row * rowH;
    ctx.fillStyle = "#8aa0b8";
    ctx.fillText(tr.name.slice(0, 28), 4, y + rowH * 0.75);
    for (const s of tr.spans) {
      if (s.start_s + s.dur_s < start) continue;
      const x0 = x(Math.max(start, s.start_s));
      const x1 = Math.max(x0 + 1, x(s.start_s + s.dur_s));
      ctx.fillStyle = STATE_COLOUR[s.state] ?? "#c9d3dd";
      ctx.fillRect(x0, y + 1, x1 - x0, rowH - 3);
      boxes.push({ x0, x1, y0: y, y1: y + rowH, hit: { track: tr.name, span: s } });
    }
  });
  ctx.fillStyle = "#7d8894";
  ctx.fillText(`${seconds(end - start)} shown`, w - 110, h - 4);
  return (px, py) => boxes.find((b) => px >= b.x0 && px <= b.x1 && py >= b.y0 && py <= b.y1)?.hit ?? null;
}
