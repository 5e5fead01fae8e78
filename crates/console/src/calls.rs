//! Timelines: per-rank collective calls from a job's flight recorders, or the slices of a
//! simulator trace (`topoccl sim --trace`, Chrome trace-event JSON), in one shape the page
//! draws. Pure: takes parsed dumps or the trace's text; "now" is passed in.
//!
//! A flight-recorder entry's span runs from when it started moving data (else when it was
//! entered) to when it ended (else `now_ns`, still open). Times are relative to the
//! earliest entry of the timeline, in seconds.
//!
//! Limits: at most [`MAX_TRACKS`] tracks and the last [`MAX_SPANS`] spans of each.

use serde::Serialize;
use topoccl_watch::flight::{Dump, State};

/// Tracks in one timeline.
pub const MAX_TRACKS: usize = 512;
/// Spans per track (the most recent kept).
pub const MAX_SPANS: usize = 256;

/// One call or slice.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    pub name: String,
    /// Seconds from the timeline's origin.
    pub start_s: f64,
    pub dur_s: f64,
    /// `scheduled`, `started`, `completed`, `failed` (flight), `slice` (trace).
    pub state: String,
    /// Sizes, algorithm, error: free text.
    pub detail: String,
    /// The call's sequence number (flight) where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// One rank's (or one trace thread's) spans.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Track {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    pub spans: Vec<Span>,
}

/// A timeline: where it came from and its tracks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// `flight` or `trace`.
    pub source: &'static str,
    /// The origin: unix ns (flight) or 0 (trace).
    pub origin_ns: u64,
    pub tracks: Vec<Track>,
}

/// A trace that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{origin}: not a Chrome trace ({e}); pass the file `topoccl sim --trace FILE` wrote")]
    Json {
        origin: String,
        e: serde_json::Error,
    },
    #[error("{origin}: no \"traceEvents\" array; pass the file `topoccl sim --trace FILE` wrote")]
    Shape { origin: String },
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Scheduled => "scheduled",
        State::Started => "started",
        State::Completed => "completed",
        State::Failed => "failed",
    }
}

fn keep_last(mut v: Vec<Span>) -> Vec<Span> {
    if v.len() > MAX_SPANS {
        v.drain(..v.len() - MAX_SPANS);
    }
    v
}

/// The timeline of a job's flight-recorder dumps (one track per rank and communicator).
pub fn from_dumps(dumps: &[Dump], now_ns: u64) -> Timeline {
    let origin = dumps
        .iter()
        .flat_map(|d| d.entries.iter().map(|e| e.time_created_ns))
        .min()
        .unwrap_or(now_ns);
    let s = |ns: u64| ns.saturating_sub(origin) as f64 * 1e-9;
    let mut tracks: Vec<Track> = dumps
        .iter()
        .take(MAX_TRACKS)
        .map(|d| {
            let spans = d
                .entries
                .iter()
                .map(|e| {
                    let start = e.time_discovered_started_ns.unwrap_or(e.time_created_ns);
                    let end = e.time_discovered_completed_ns.unwrap_or(now_ns).max(start);
                    let mut detail = format!(
                        "{} B {} ×{} {}",
                        e.size_bytes, e.dtype, e.count, e.algorithm
                    );
                    if let Some(err) = &e.error {
                        detail.push_str(&format!("; {err}"));
                    }
                    Span {
                        name: e.profiling_name.to_string(),
                        start_s: s(start),
                        dur_s: s(end) - s(start),
                        state: state_name(e.state).to_string(),
                        detail,
                        seq: Some(e.collective_seq_id),
                    }
                })
                .collect();
            Track {
                name: format!("rank {} · {}", d.rank, d.process_group),
                rank: Some(d.rank),
                spans: keep_last(spans),
            }
        })
        .collect();
    tracks.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.name.cmp(&b.name)));
    Timeline {
        source: "flight",
        origin_ns: origin,
        tracks,
    }
}

/// The timeline of a Chrome trace's complete slices (`"ph": "X"`), one track per
/// (pid, tid), named by its `thread_name` metadata where given.
pub fn from_trace(text: &str, origin: &str) -> Result<Timeline, TraceError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| TraceError::Json {
        origin: origin.to_string(),
        e,
    })?;
    let events = v
        .get("traceEvents")
        .and_then(|e| e.as_array())
        .ok_or_else(|| TraceError::Shape {
            origin: origin.to_string(),
        })?;
    let mut by: std::collections::BTreeMap<(i64, i64), Track> = Default::default();
    let num = |e: &serde_json::Value, k: &str| e.get(k).and_then(|x| x.as_f64());
    for e in events {
        let pid = num(e, "pid").unwrap_or(0.0) as i64;
        let tid = num(e, "tid").unwrap_or(0.0) as i64;
        let ph = e.get("ph").and_then(|p| p.as_str()).unwrap_or("");
        let name = e
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_string();
        if by.len() >= MAX_TRACKS && !by.contains_key(&(pid, tid)) {
            continue;
        }
        let track = by.entry((pid, tid)).or_insert_with(|| Track {
            name: format!("pid {pid} tid {tid}"),
            rank: None,
            spans: Vec::new(),
        });
        match ph {
            "X" => {
                let detail = e.get("args").map(|a| a.to_string()).unwrap_or_default();
                track.spans.push(Span {
                    name,
                    start_s: num(e, "ts").unwrap_or(0.0) * 1e-6,
                    dur_s: num(e, "dur").unwrap_or(0.0) * 1e-6,
                    state: "slice".to_string(),
                    detail,
                    seq: None,
                });
                if track.spans.len() > 2 * MAX_SPANS {
                    track.spans = keep_last(std::mem::take(&mut track.spans));
                }
            }
            "M" if name == "thread_name" => {
                if let Some(n) = e.pointer("/args/name").and_then(|n| n.as_str()) {
                    track.name = n.to_string();
                }
            }
            _ => {}
        }
    }
    Ok(Timeline {
        source: "trace",
        origin_ns: 0,
        tracks: by
            .into_values()
            .filter(|t| !t.spans.is_empty())
            .map(|mut t| {
                t.spans = keep_last(t.spans);
                t
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_into_tracks() {
        let text = r#"{"traceEvents":[{"name":"process_name","ph":"M","pid":1,"args":{"name":"x"}},
            {"name":"round 0","ph":"X","pid":1,"tid":1,"ts":0.0,"dur":5.0},
            {"name":"transfer","ph":"X","pid":1,"tid":2,"ts":0.0,"dur":3.0}]}"#;
        let t = from_trace(text, "t.json").expect("a trace");
        assert_eq!(t.tracks.len(), 2);
        assert_eq!(t.tracks[0].spans[0].name, "round 0");
        assert!((t.tracks[0].spans[0].dur_s - 5e-6).abs() < 1e-12);
    }

    #[test]
    fn bad_traces_say_what_to_pass() {
        let e = from_trace("{", "x.json").expect_err("not json");
        assert!(e.to_string().contains("sim --trace"));
        let e = from_trace("{}", "x.json").expect_err("no events");
        assert!(e.to_string().contains("traceEvents"));
    }

    #[test]
    fn a_long_trace_keeps_its_last_spans() {
        let ev: Vec<String> = (0..2000)
            .map(|i| format!(r#"{{"name":"r{i}","ph":"X","pid":1,"tid":1,"ts":{i},"dur":1}}"#))
            .collect();
        let text = format!(r#"{{"traceEvents":[{}]}}"#, ev.join(","));
        let t = from_trace(&text, "t").expect("a trace");
        assert_eq!(t.tracks[0].spans.len(), MAX_SPANS);
        assert_eq!(
            t.tracks[0].spans.last().map(|s| s.name.as_str()),
            Some("r1999")
        );
    }
}
