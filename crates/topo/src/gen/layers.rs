//! Switch layering shared by the generators: how a switch's ports split between the tier
//! below and the tier above, and how tiers are wired.

use super::{bandwidth, duration, MAX_RADIX};
use crate::error::TopoError;
use crate::model::{NodeId, Tier, TopologyBuilder};

/// A cable's bandwidth (bytes/s, each way) and latency (s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Net {
    pub bandwidth: f64,
    pub latency: f64,
}

impl Net {
    /// The fabric's links: `bandwidth` (default `default_bandwidth`) and `latency`.
    pub fn parse(
        bandwidth_text: Option<&str>,
        default_bandwidth: f64,
        latency: &str,
    ) -> Result<Net, TopoError> {
        Ok(Net {
            bandwidth: match bandwidth_text {
                Some(text) => bandwidth("bandwidth", text)?,
                None => default_bandwidth,
            },
            latency: duration("latency", latency)?,
        })
    }

    pub fn connect(self, b: &mut TopologyBuilder, x: NodeId, y: NodeId) -> Result<(), TopoError> {
        b.connect(x, y, self.bandwidth, self.latency).map(drop)
    }
}

/// How a switch of some radix divides its ports: `down` towards the hosts, `up` towards
/// the next tier, at a down:up bandwidth ratio of `oversub`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Split {
    pub down: u32,
    pub up: u32,
    oversub: f64,
}

impl Split {
    /// The most down ports the ratio allows, `⌊k·r/(r+1)⌋`, and `⌈down/r⌉` up ports. When
    /// `r` is whole, down is trimmed to a multiple of it so that whole uplinks hit the
    /// ratio exactly (64 ports at 4:1: 48 down, 12 up, 4 unused); otherwise uplinks are
    /// thinned (see [`Split::uplink`]).
    pub fn new(radix: u32, oversub: f64) -> Split {
        let k = radix as f64;
        // The epsilon keeps exact ratios (k·r/(r+1) = 48) from rounding down to 47.
        let mut down = (k * oversub / (oversub + 1.0) + 1e-9).floor() as u32;
        if oversub.fract() == 0.0 && down as f64 >= oversub {
            down -= down % oversub as u32;
        }
        Split::with_down(radix, down.clamp(1, radix - 1), oversub)
    }

    fn with_down(radix: u32, down: u32, oversub: f64) -> Split {
        let up = ((down as f64 / oversub) - 1e-9).ceil().max(1.0) as u32;
        Split {
            down,
            up: up.min(radix - down).max(1),
            oversub,
        }
    }

    /// The same split with down ports trimmed to whole groups of `unit` (a host's NICs), so
    /// that no group straddles two switches; unchanged when one group exceeds the ports.
    pub fn whole(self, radix: u32, unit: u32) -> Split {
        if self.down < unit || self.down % unit == 0 {
            return self;
        }
        Split::with_down(radix, self.down - self.down % unit, self.oversub)
    }

    /// The uplinks' cable, given the downlinks': total up bandwidth is exactly total down
    /// bandwidth over the ratio, whatever the port counts.
    pub fn uplink(self, down: Net) -> Net {
        Net {
            bandwidth: self.down as f64 * down.bandwidth / (self.oversub * self.up as f64),
            latency: down.latency,
        }
    }
}

/// Checks a radix the user gave: even, at least 4, at most [`MAX_RADIX`].
pub(crate) fn check_radix(radix: u32) -> Result<u32, TopoError> {
    if radix % 2 != 0 || !(4..=MAX_RADIX).contains(&radix) {
        return Err(TopoError::invalid(format!(
            "radix is {radix}; a switch radix (ports per switch) must be even, from 4 to \
             {MAX_RADIX}"
        )));
    }
    Ok(radix)
}

/// The smallest power-of-two radix (from 4 to [`MAX_RADIX`]) whose fabric `fits`.
pub(crate) fn smallest_radix(fits: impl Fn(u32) -> bool) -> Option<u32> {
    std::iter::successors(Some(4u32), |k| Some(k * 2))
        .take_while(|&k| k <= MAX_RADIX)
        .find(|&k| fits(k))
}

/// The given radix, checked and required to hold `hosts`; or the smallest that does.
/// `capacity(k)` is how many hosts a fabric of radix k holds, `what(k)` describes that
/// fabric for errors, and `instead` names other changes that help (`"3 tiers"`).
pub(crate) fn choose_radix(
    radix: Option<u32>,
    hosts: u64,
    capacity: impl Fn(u32) -> u64,
    what: impl Fn(u32) -> String,
    instead: Option<&str>,
) -> Result<u32, TopoError> {
    let smallest = smallest_radix(|k| capacity(k) >= hosts);
    let k = match (radix, smallest) {
        (Some(k), _) => check_radix(k)?,
        (None, Some(k)) => k,
        (None, None) => MAX_RADIX,
    };
    if capacity(k) >= hosts {
        return Ok(k);
    }
    let fewer = (capacity(k) > 0).then(|| format!("at most {} hosts", capacity(k)));
    let advice: Vec<String> = smallest
        .map(|s| format!("radix {s} or more"))
        .into_iter()
        .chain(instead.map(str::to_string))
        .chain(fewer)
        .collect();
    let advice = match advice.split_last() {
        None => format!("a different shape: no radix up to {MAX_RADIX} fits"),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    };
    Err(TopoError::invalid(format!(
        "{hosts} hosts do not fit: with radix {k}, {} holds at most {}; use {advice}",
        what(k),
        capacity(k)
    )))
}

/// Adds `count` switches `{prefix}{base}{i}` of `tier`.
pub(crate) fn add_switches(
    b: &mut TopologyBuilder,
    prefix: &str,
    base: &str,
    count: u32,
    tier: Tier,
) -> Result<Vec<NodeId>, TopoError> {
    (0..count)
        .map(|i| b.switch(format!("{prefix}{base}{i}"), tier))
        .collect()
}

/// New leaves `{prefix}leaf{i}`, leaf i taking ports `i·per_leaf ..` (consecutive blocks).
pub(crate) fn attach_leaves(
    b: &mut TopologyBuilder,
    prefix: &str,
    ports: &[NodeId],
    per_leaf: u32,
    net: Net,
) -> Result<Vec<NodeId>, TopoError> {
    let blocks = ports.chunks(per_leaf.max(1) as usize);
    let leaves = add_switches(b, prefix, "leaf", blocks.len() as u32, Tier::Leaf)?;
    for (block, &leaf) in blocks.zip(&leaves) {
        for &port in block {
            net.connect(b, port, leaf)?;
        }
    }
    Ok(leaves)
}

/// A cable from every switch of `lower` to every switch of `upper`.
pub(crate) fn connect_all(
    b: &mut TopologyBuilder,
    lower: &[NodeId],
    upper: &[NodeId],
    net: Net,
) -> Result<(), TopoError> {
    for &x in lower {
        for &y in upper {
            net.connect(b, x, y)?;
        }
    }
    Ok(())
}
