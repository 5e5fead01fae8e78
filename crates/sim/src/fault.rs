//! What can go wrong, as the simulator applies it: a link down, degraded or slower, and a
//! rank that starts late or reduces slowly. Faults are data, parsed from the forms the CLI
//! takes (`link:ID:down`, `link:ID:degrade=0.1`, `link:ID:latency=50us`,
//! `rank:R:delay=2ms`, `rank:R:reduce=0.5`) and applied to a topology to give the faulty one.

use std::fmt;

use serde::{Deserialize, Serialize};
use topoccl_plan::units::parse_duration;
use topoccl_topo::{LinkId, Topology};

use crate::SimError;

/// A link, as a user names it: its index, `A->B` (one direction) or `A-B` (both).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LinkRef {
    Index(LinkId),
    Directed(String, String),
    Cable(String, String),
}

impl LinkRef {
    fn parse(s: &str) -> LinkRef {
        if let Ok(i) = s.parse::<LinkId>() {
            return LinkRef::Index(i);
        }
        if let Some((a, b)) = s.split_once("->") {
            return LinkRef::Directed(a.trim().into(), b.trim().into());
        }
        match s.split_once("<->").or_else(|| s.split_once('-')) {
            Some((a, b)) => LinkRef::Cable(a.trim().into(), b.trim().into()),
            None => LinkRef::Directed(s.into(), String::new()),
        }
    }

    /// The links this names; an error names what was not found.
    pub fn resolve(&self, t: &Topology) -> Result<Vec<LinkId>, SimError> {
        let find = |a: &str, b: &str| -> Result<Vec<LinkId>, SimError> {
            let node = |n: &str| {
                t.find(n).ok_or_else(|| {
                    SimError::Fault(format!(
                        "link {a}->{b}: there is no node '{n}' in the topology"
                    ))
                })
            };
            let (na, nb) = (node(a)?, node(b)?);
            let ids: Vec<LinkId> = t
                .out_links(na)
                .iter()
                .copied()
                .filter(|&l| t.link(l).to == nb)
                .collect();
            if ids.is_empty() {
                return Err(SimError::Fault(format!(
                    "there is no link {a} -> {b} in the topology"
                )));
            }
            Ok(ids)
        };
        match self {
            LinkRef::Index(i) if (*i as usize) < t.links().len() => Ok(vec![*i]),
            LinkRef::Index(i) => Err(SimError::Fault(format!(
                "there is no link #{i}: the topology has {} links",
                t.links().len()
            ))),
            LinkRef::Directed(a, b) => find(a, b),
            LinkRef::Cable(a, b) => {
                let mut ids = find(a, b)?;
                ids.extend(find(b, a)?);
                Ok(ids)
            }
        }
    }
}

impl fmt::Display for LinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkRef::Index(i) => write!(f, "#{i}"),
            LinkRef::Directed(a, b) => write!(f, "{a}->{b}"),
            LinkRef::Cable(a, b) => write!(f, "{a}-{b}"),
        }
    }
}

/// A fault or what-if.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Fault {
    /// The link carries nothing; traffic is re-routed where the topology allows.
    LinkDown(LinkRef),
    /// The link keeps this fraction of its bandwidth.
    Degrade(LinkRef, f64),
    /// The link takes this much longer (seconds).
    Latency(LinkRef, f64),
    /// The rank starts this late (seconds).
    Late(u32, f64),
    /// The rank reduces at this fraction of the normal rate.
    SlowReduce(u32, f64),
}

impl Fault {
    /// `link:ID:down`, `link:ID:degrade=F`, `link:ID:latency=T`, `rank:R:delay=T`,
    /// `rank:R:reduce=F`.
    pub fn parse(s: &str) -> Result<Fault, SimError> {
        let bad = |why: &str| {
            SimError::Fault(format!(
                "'{s}': {why}; use link:ID:down, link:ID:degrade=0.1, link:ID:latency=50us, \
                 rank:R:delay=2ms or rank:R:reduce=0.5 (ID: a link number, A->B or A-B)"
            ))
        };
        let (what, rest) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
        let (id, effect) = rest.rsplit_once(':').ok_or_else(|| bad("no effect"))?;
        let (key, value) = effect.split_once('=').unwrap_or((effect, ""));
        let fraction = || -> Result<f64, SimError> {
            value
                .parse::<f64>()
                .ok()
                .filter(|f| *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| bad("the fraction must be in (0, 1]"))
        };
        let time = || {
            parse_duration(value).map_err(|e| bad(&e)).and_then(|t| {
                if t >= 0.0 {
                    Ok(t)
                } else {
                    Err(bad("a time must be zero or more"))
                }
            })
        };
        match what {
            "link" => {
                let link = LinkRef::parse(id);
                match key {
                    "down" => Ok(Fault::LinkDown(link)),
                    "degrade" => Ok(Fault::Degrade(link, fraction()?)),
                    "latency" => Ok(Fault::Latency(link, time()?)),
                    _ => Err(bad(&format!("unknown link effect '{key}'"))),
                }
            }
            "rank" => {
                let r: u32 = id.parse().map_err(|_| bad("the rank must be a number"))?;
                match key {
                    "delay" => Ok(Fault::Late(r, time()?)),
                    "reduce" => Ok(Fault::SlowReduce(r, fraction()?)),
                    _ => Err(bad(&format!("unknown rank effect '{key}'"))),
                }
            }
            _ => Err(bad(&format!("'{what}' is neither link nor rank"))),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::LinkDown(l) => write!(f, "link {l} down"),
            Fault::Degrade(l, x) => write!(f, "link {l} at {:.0}% bandwidth", x * 100.0),
            Fault::Latency(l, t) => write!(f, "link {l} +{:.1} us", t * 1e6),
            Fault::Late(r, t) => write!(f, "rank {r} starts {:.1} us late", t * 1e6),
            Fault::SlowReduce(r, x) => write!(f, "rank {r} reduces at {:.0}% speed", x * 100.0),
        }
    }
}

/// Per-rank effects of the faults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stragglers {
    /// Start delay per rank (seconds).
    pub late: Vec<f64>,
    /// Reduction slow-down per rank (1 = normal).
    pub reduce_factor: Vec<f64>,
}

/// The topology with the link faults applied, and the rank effects.
pub fn apply(t: &Topology, faults: &[Fault]) -> Result<(Topology, Stragglers), SimError> {
    let p = t.world() as usize;
    let mut st = Stragglers {
        late: vec![0.0; p],
        reduce_factor: vec![1.0; p],
    };
    let mut b = t.to_builder();
    let mut down = Vec::new();
    for fault in faults {
        match fault {
            Fault::LinkDown(l) => down.extend(l.resolve(t)?),
            Fault::Degrade(l, x) => {
                for id in l.resolve(t)? {
                    b.links_mut()[id as usize].bandwidth *= x;
                }
            }
            Fault::Latency(l, x) => {
                for id in l.resolve(t)? {
                    b.links_mut()[id as usize].latency += x;
                }
            }
            Fault::Late(r, x) | Fault::SlowReduce(r, x) => {
                let slot = (*r as usize).min(p);
                if slot >= p {
                    return Err(SimError::Fault(format!(
                        "{fault}: the topology has {p} ranks"
                    )));
                }
                match fault {
                    Fault::Late(..) => st.late[slot] = st.late[slot].max(*x),
                    _ => st.reduce_factor[slot] = st.reduce_factor[slot].min(*x),
                }
            }
        }
    }
    b.retain_links(|id, _| !down.contains(&id));
    let faulty = b.build().map_err(|e| {
        let names: Vec<String> = down.iter().map(|&l| t.link_name(l)).collect();
        SimError::Fault(format!(
            "with {} down the collective cannot run: {e}",
            if names.is_empty() {
                "no link".to_string()
            } else {
                names.join(", ")
            }
        ))
    })?;
    Ok((faulty, st))
}
