//! What-if: a link or switch degraded or cut, and the simulator's prediction for the flat
//! ring and the best topology-aware plan, each with and without the fault. Pure: the
//! topology and the request in, the reports out (the server runs it off the async
//! threads); it uses the simulator's public API as `topoccl sim` does.
//!
//! A target is a switch or other node's name (every link into and out of it), or a link as
//! `topoccl sim --fault` names one: its number, `A->B`, or `A-B` for both directions.
//! Cut is `link:…:down`; degrade keeps `factor` (0 < f ≤ 1) of the bandwidth.
//!
//! Limits: the simulator's memory estimate is checked against [`MEMORY_CAP`] before any
//! plan is built; a node target expands to its links (at most its degree).

use serde::{Deserialize, Serialize};
use topoccl_plan::units::parse_bytes;
use topoccl_plan::{build, Algorithm, Collective, CollectiveSpec, DType, PlanParams};
use topoccl_sim::{simulate_with, Engine, Fault, SimReport};
use topoccl_topo::plans::candidates;
use topoccl_topo::{Endpoints, Pricer, Topology};

/// The simulator's memory cap for one what-if (as `topoccl sim`'s default).
pub const MEMORY_CAP: u64 = 4 << 30;

/// Cut or degrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Cut,
    Degrade,
}

/// A what-if request (`POST /api/sim`'s body).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIf {
    /// A node's name, a link number, `A->B` or `A-B`.
    pub target: String,
    pub action: Action,
    /// Degrade: the fraction of bandwidth kept (0 < f ≤ 1; default 0.1).
    #[serde(default)]
    pub factor: Option<f64>,
    /// The collective (default allreduce).
    #[serde(default)]
    pub collective: Option<String>,
    /// Bytes of the buffer (default 16M).
    #[serde(default)]
    pub size: Option<String>,
}

/// One plan's prediction.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    pub healthy_s: f64,
    pub faulty_s: f64,
    /// `faulty_s / healthy_s`.
    pub slowdown: f64,
    pub faulty: SimReport,
}

/// The answer: both plans side by side.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIfAnswer {
    pub target: String,
    pub faults: Vec<String>,
    pub collective: String,
    pub bytes: u64,
    pub flat_ring: Prediction,
    /// Absent where the topology shapes no plan for the collective.
    pub topology_aware: Option<Prediction>,
}

/// A what-if that cannot run: the request's fault (a 400) or the simulation (a 422).
#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    #[error("target '{target}': {why}")]
    Target { target: String, why: String },
    #[error("{field} '{value}': {why}")]
    Field {
        field: &'static str,
        value: String,
        why: String,
    },
    #[error("the simulation failed: {0}")]
    Sim(String),
}

impl WhatIfError {
    /// Whether the request itself is wrong (400) rather than the run (422).
    pub fn is_bad_request(&self) -> bool {
        !matches!(self, WhatIfError::Sim(_))
    }
}

/// The faults a request asks for, checked against `t`.
pub fn faults_of(t: &Topology, w: &WhatIf) -> Result<Vec<Fault>, WhatIfError> {
    let effect = match w.action {
        Action::Cut => "down".to_string(),
        Action::Degrade => {
            let f = w.factor.unwrap_or(0.1);
            if !(f > 0.0 && f <= 1.0) {
                return Err(WhatIfError::Field {
                    field: "factor",
                    value: f.to_string(),
                    why: "the fraction of bandwidth kept must be in (0, 1]".into(),
                });
            }
            format!("degrade={f}")
        }
    };
    let bad = |why: String| WhatIfError::Target {
        target: w.target.clone(),
        why,
    };
    let target = w.target.trim();
    if target.is_empty() {
        return Err(bad(
            "empty; name a switch (leaf0), a link number, A->B or A-B".into(),
        ));
    }
    let specs: Vec<String> = match t.find(target) {
        Some(n) => {
            let mut ids: Vec<u32> = t.out_links(n).to_vec();
            ids.extend(
                t.links()
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.to == n)
                    .map(|(i, _)| i as u32),
            );
            ids.sort_unstable();
            ids.dedup();
            if ids.is_empty() {
                return Err(bad("this node has no links".into()));
            }
            ids.iter().map(|i| format!("link:{i}:{effect}")).collect()
        }
        None => vec![format!("link:{target}:{effect}")],
    };
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        let f = Fault::parse(&s).map_err(|e| bad(e.to_string()))?;
        if let Fault::LinkDown(r) | Fault::Degrade(r, _) = &f {
            let ids = r.resolve(t).map_err(|e| {
                bad(format!(
                    "{e}; name a node of the topology or a link as a number, A->B or A-B"
                ))
            })?;
            if ids.iter().any(|&i| i as usize >= t.links().len()) {
                return Err(bad(format!(
                    "no such link; link numbers run 0..{}",
                    t.links().len()
                )));
            }
        }
        out.push(f);
    }
    Ok(out)
}

/// Runs the what-if (see the module doc).
pub fn run(t: &Topology, w: &WhatIf) -> Result<WhatIfAnswer, WhatIfError> {
    let faults = faults_of(t, w)?;
    let coll_text = w.collective.as_deref().unwrap_or("allreduce");
    let collective: Collective =
        coll_text
            .parse()
            .map_err(|e: topoccl_plan::PlanError| WhatIfError::Field {
                field: "collective",
                value: coll_text.into(),
                why: e.to_string(),
            })?;
    if collective == Collective::AllToAllV {
        return Err(WhatIfError::Field {
            field: "collective",
            value: coll_text.into(),
            why: "all-to-all-v needs a traffic matrix; use `topoccl sim --traffic`".into(),
        });
    }
    let size_text = w.size.as_deref().unwrap_or("16M");
    let bytes = parse_bytes(size_text).map_err(|why| WhatIfError::Field {
        field: "size",
        value: size_text.into(),
        why,
    })?;
    topoccl_sim::check_memory(t.world(), t, MEMORY_CAP)
        .map_err(|e| WhatIfError::Sim(e.to_string()))?;
    let spec = CollectiveSpec::of_size(collective, t.world(), bytes, DType::F32);
    let params = PlanParams::default();
    let endpoints = Endpoints::default();
    let sim_err = |e: &dyn std::fmt::Display| WhatIfError::Sim(e.to_string());
    let predict = |label: String, plan: &topoccl_plan::Plan| -> Result<Prediction, WhatIfError> {
        let healthy =
            simulate_with(plan, t, &[], endpoints, Engine::Flow).map_err(|e| sim_err(&e))?;
        let faulty =
            simulate_with(plan, t, &faults, endpoints, Engine::Flow).map_err(|e| sim_err(&e))?;
        Ok(Prediction {
            label,
            healthy_s: healthy.total_s,
            faulty_s: faulty.total_s,
            slowdown: if healthy.total_s > 0.0 {
                faulty.total_s / healthy.total_s
            } else {
                1.0
            },
            faulty,
        })
    };
    let ring = build(spec.clone(), Algorithm::Ring, params).map_err(|e| WhatIfError::Field {
        field: "collective",
        value: coll_text.into(),
        why: format!("no flat ring: {e}"),
    })?;
    let flat_ring = predict(Algorithm::Ring.label(), &ring)?;
    let mut pricer = Pricer::new(t, endpoints);
    let best = candidates(&mut pricer, &spec, params)
        .map_err(|e| sim_err(&e))?
        .into_iter()
        .filter(|c| c.topology_aware)
        .min_by(|a, b| a.cost.total_s.total_cmp(&b.cost.total_s));
    let topology_aware = match best {
        Some(c) => Some(predict(c.label, &c.plan)?),
        None => None,
    };
    Ok(WhatIfAnswer {
        target: w.target.clone(),
        faults: faults.iter().map(|f| f.to_string()).collect(),
        collective: collective.to_string(),
        bytes,
        flat_ring,
        topology_aware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Topology {
        let text =
            "name = \"t\"\n[generate]\nkind = \"fat-tree\"\nhosts = 4\ntiers = 2\nradix = 4\n\
                    [generate.host]\ngpus_per_host = 2\n";
        topoccl_topo::format::read(text, "t.toml").expect("a valid generator")
    }

    fn req(target: &str, action: Action) -> WhatIf {
        WhatIf {
            target: target.into(),
            action,
            factor: None,
            collective: None,
            size: Some("1M".into()),
        }
    }

    #[test]
    fn an_unknown_link_is_a_bad_request_naming_it() {
        let t = small();
        let e = run(&t, &req("nosuch->leaf0", Action::Cut)).expect_err("unknown");
        assert!(e.is_bad_request());
        assert!(e.to_string().contains("nosuch"), "{e}");
        let e = run(&t, &req("999999", Action::Cut)).expect_err("unknown number");
        assert!(e.is_bad_request(), "{e}");
    }

    #[test]
    fn degrading_a_link_never_speeds_the_ring_up() {
        let t = small();
        let l = &t.links()[t.links().len() - 1];
        let name = format!("{}-{}", t.node(l.from).name, t.node(l.to).name);
        let mut w = req(&name, Action::Degrade);
        w.factor = Some(0.05);
        let a = run(&t, &w).expect("runs");
        assert!(a.flat_ring.faulty_s >= a.flat_ring.healthy_s);
        assert!(a.flat_ring.slowdown >= 1.0);
        w.factor = Some(1.5);
        assert!(run(&t, &w).expect_err("factor").is_bad_request());
    }
}
