//! Progress deadlines by level: how long a link may go without moving a byte, while both
//! its ends are inside the same call and waiting on each other, before the call fails
//! naming the link (`Error::Stalled`). The whole-call deadline (`TOPOCCL_TIMEOUT`) stays
//! the outer bound.
//!
//! | level   | a link between ranks …                                   | default |
//! |---------|----------------------------------------------------------|---------|
//! | `host`  | of one host                                              | 100 ms  |
//! | `rack`  | of one leaf switch (rack) of the job's topology          | 200 ms  |
//! | `cross` | across racks, or of different hosts without a topology   | 500 ms  |
//!
//! The level comes from the job's topology (`TOPOCCL_TOPO` or the measured matrix: the
//! ranks' host and leaf); without one, from the endpoints (same host or not).
//!
//! `TOPOCCL_PROGRESS_DEADLINE` turns them on: `on` (the defaults), one duration for all
//! levels (`300ms`), or per level (`host=50ms,rack=200ms,cross=500ms`, levels left out
//! keep their default); `off` or `0` (the default) leaves only the whole-call deadline.
//! They are off by default because a rank stopped inside a call (SIGSTOP, a debugger)
//! would otherwise fail its peers' call although the job could go on once it resumes;
//! elastic jobs, which recover from a failed call, turn them on.
//!
//! **Stragglers are not failures.** The clock of a link starts only once this rank knows
//! (from the peer's heartbeat) that the peer is inside the same call and has a transfer
//! with this rank posted: a peer that has not entered the call, or is waiting on someone
//! else, is never blamed. So only links to the peers a rank's heartbeat watches
//! (`crate::health`: ring neighbours and its host's ranks) have progress deadlines; other
//! links are bounded by the whole-call deadline.

use std::time::Duration;

use topoccl_plan::Rank;
use topoccl_topo::Topology;

use crate::error::{Error, Result};

/// The setting.
pub const ENV: &str = "TOPOCCL_PROGRESS_DEADLINE";

/// What a link crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Host,
    Rack,
    Cross,
}

impl Level {
    /// All levels, innermost first.
    pub const ALL: [Level; 3] = [Level::Host, Level::Rack, Level::Cross];

    /// The level's name in the setting and in errors.
    pub fn name(self) -> &'static str {
        match self {
            Level::Host => "host",
            Level::Rack => "rack",
            Level::Cross => "cross",
        }
    }
}

/// The deadline per level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressDeadlines {
    pub host: Duration,
    pub rack: Duration,
    pub cross: Duration,
}

impl Default for ProgressDeadlines {
    fn default() -> Self {
        ProgressDeadlines {
            host: Duration::from_millis(100),
            rack: Duration::from_millis(200),
            cross: Duration::from_millis(500),
        }
    }
}

impl ProgressDeadlines {
    /// The deadline of a level.
    pub fn of(&self, level: Level) -> Duration {
        match level {
            Level::Host => self.host,
            Level::Rack => self.rack,
            Level::Cross => self.cross,
        }
    }

    fn set(&mut self, level: Level, d: Duration) {
        match level {
            Level::Host => self.host = d,
            Level::Rack => self.rack = d,
            Level::Cross => self.cross = d,
        }
    }
}

/// The longest progress deadline allowed (longer ones are what `TOPOCCL_TIMEOUT` is for).
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

fn one_duration(v: &str, key: &str, text: &str) -> Result<Duration> {
    let secs = topoccl_plan::units::parse_duration(text.trim()).map_err(|e| {
        Error::Config(format!(
            "{ENV}={v}: {key} {text:?}: {e}; give a duration such as 200ms"
        ))
    })?;
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() || d > MAX_DEADLINE {
        return Err(Error::Config(format!(
            "{ENV}={v}: {key} must be more than 0 and at most 1 h (got {text})"
        )));
    }
    Ok(d)
}

/// `TOPOCCL_PROGRESS_DEADLINE`: `None` when off.
pub fn parse(v: &str) -> Result<Option<ProgressDeadlines>> {
    let t = v.trim();
    if t.is_empty() || t == "0" || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let mut d = ProgressDeadlines::default();
    if t.eq_ignore_ascii_case("on") {
        return Ok(Some(d));
    }
    if !t.contains('=') {
        let all = one_duration(v, "the deadline", t)?;
        return Ok(Some(ProgressDeadlines {
            host: all,
            rack: all,
            cross: all,
        }));
    }
    for part in t.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, val) = part.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "{ENV}={v}: {part:?} is not LEVEL=DURATION (levels: host, rack, cross)"
            ))
        })?;
        let level = Level::ALL
            .into_iter()
            .find(|l| l.name() == key.trim())
            .ok_or_else(|| {
                Error::Config(format!(
                    "{ENV}={v}: unknown level {:?}; the levels are host, rack, cross",
                    key.trim()
                ))
            })?;
        d.set(level, one_duration(v, level.name(), val)?);
    }
    Ok(Some(d))
}

/// The level of each link of rank `me`: from `topology` (host and leaf of each rank) when
/// it places this communicator's ranks, else from `hosts` (each rank's host name, `None`
/// where unknown: counted as another host).
pub fn levels(me: Rank, topology: Option<&Topology>, hosts: &[Option<&str>]) -> Vec<Level> {
    let world = hosts.len() as u32;
    if let Some(t) = topology.filter(|t| t.world() == world) {
        let mut router = topoccl_topo::route::Router::new(t);
        if let Ok(loc) = topoccl_topo::plans::Locality::of(&mut router) {
            let i = me as usize;
            return (0..world as usize)
                .map(|r| {
                    if loc.host[r] == loc.host[i] {
                        Level::Host
                    } else if loc.leaf[r] == loc.leaf[i] {
                        Level::Rack
                    } else {
                        Level::Cross
                    }
                })
                .collect();
        }
    }
    let mine = hosts.get(me as usize).copied().flatten();
    hosts
        .iter()
        .enumerate()
        .map(|(r, h)| match (h, mine) {
            _ if r == me as usize => Level::Host,
            (Some(a), Some(b)) if *a == b => Level::Host,
            _ => Level::Cross,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_takes_one_value_or_levels_and_names_bad_keys() {
        assert_eq!(parse("off").unwrap(), None);
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("on").unwrap(), Some(ProgressDeadlines::default()));
        let all = parse("300ms").unwrap().unwrap();
        assert_eq!(all.of(Level::Rack), Duration::from_millis(300));
        assert_eq!(all.of(Level::Host), Duration::from_millis(300));
        let some = parse("host=50ms, cross=1s").unwrap().unwrap();
        assert_eq!(
            (some.host, some.rack, some.cross),
            (
                Duration::from_millis(50),
                Duration::from_millis(200),
                Duration::from_secs(1)
            )
        );
        let e = parse("switch=5ms").unwrap_err().to_string();
        assert!(
            e.contains("TOPOCCL_PROGRESS_DEADLINE") && e.contains("\"switch\""),
            "{e}"
        );
        assert!(e.contains("host, rack, cross"), "{e}");
        let e = parse("rack=soon").unwrap_err().to_string();
        assert!(e.contains("rack"), "{e}");
        let e = parse("host=0ms").unwrap_err().to_string();
        assert!(e.contains("host must be more than 0"), "{e}");
        assert!(parse("rack").is_err());
    }

    #[test]
    fn levels_come_from_the_topology_or_the_hosts() {
        let hosts = [Some("a"), Some("a"), Some("b"), None];
        assert_eq!(
            levels(0, None, &hosts),
            vec![Level::Host, Level::Host, Level::Cross, Level::Cross]
        );
        let t = topoccl_topo::format::read(&two_racks(), "racks.toml").unwrap();
        // Rank 0 on h0 (leaf0), 1 on h2 (leaf1), 2 on h1 (leaf0), 3 on h3 (leaf1).
        assert_eq!(
            levels(0, Some(&t), &[None; 4]),
            vec![Level::Host, Level::Cross, Level::Rack, Level::Cross]
        );
        // A topology of another size is not this communicator's: the hosts decide.
        assert_eq!(
            levels(1, Some(&t), &hosts[..2]),
            vec![Level::Host, Level::Host]
        );
    }

    /// Two racks of two hosts; ranks alternate racks.
    pub(crate) fn two_racks() -> String {
        let mut text = String::from(
            "name = \"two-racks\"\nranks = [\"h0\", \"h2\", \"h1\", \"h3\"]\n\n\
             [[node]]\nname = \"leaf0\"\nkind = \"switch\"\ntier = \"leaf\"\n\n\
             [[node]]\nname = \"leaf1\"\nkind = \"switch\"\ntier = \"leaf\"\n\n\
             [[link]]\na = \"leaf0\"\nb = \"leaf1\"\nbandwidth = \"8Gbps\"\nlatency = \"20us\"\n",
        );
        for h in 0..4 {
            text.push_str(&format!(
                "\n[[node]]\nname = \"h{h}\"\nkind = \"host\"\n\n[[link]]\na = \"h{h}\"\n\
                 b = \"leaf{}\"\nbandwidth = \"8Gbps\"\nlatency = \"20us\"\n",
                h / 2
            ));
        }
        text
    }
}
