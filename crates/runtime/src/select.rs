//! Choosing an algorithm per call: by the cost of each candidate plan on the job's
//! topology — the link matrix measured at creation, or a topology file refined by it —
//! including the topology-aware plans (ordered rings, spanning trees, hierarchies), or on
//! the uniform network the probe measured when there is no topology; unless the user says
//! otherwise. A topology-aware plan is verified before it is used.
//!
//! Overrides, strongest first:
//! * `TOPOCCL_RULES=FILE` (or the JSON itself, when it starts with `[`): a JSON list of
//!   rules, the first that matches wins —
//!   `[{"collective": "allreduce", "min_bytes": 0, "max_bytes": 65536, "algo": "rd"},
//!     {"collective": "allreduce", "min_bytes": 65536, "algo": "ring", "chunk_bytes": 1048576}]`
//!
//!   A rule's `algo` is a plain algorithm name (`ring`, `rhd`, …) or the label of a
//!   topology-aware candidate (`topo-ring`, `mst-tree`, `hier(ring|rd)`, as `topoccl plan
//!   compare` prints them): such a rule needs the job's topology (`TOPOCCL_TOPO` or the
//!   measured link matrix), and a call it matches fails with a configuration error when
//!   there is none or no candidate has that label. The tables `topoccl tune -o FILE`
//!   writes are in this format: `TOPOCCL_RULES=FILE` loads them. Refused at creation,
//!   naming the rule: an empty size or rank range (`max_bytes` ≤ `min_bytes`, `max_ranks`
//!   < `min_ranks`), `chunk_bytes` below [`MIN_CHUNK_BYTES`], `channels` outside
//!   1..=`PlanParams::MAX_CHANNELS`.
//! * `TOPOCCL_ALGO`: `allreduce:rhd;allgather:bruck` (per collective, in the style of
//!   `NCCL_ALGO`), or one name for every collective that has it (`ring`); naming a
//!   collective twice, or giving two names for all, is refused.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use topoccl_plan::avoid::{self, DeadLinks};
use topoccl_plan::cost::{uniform_cost, UniformNetwork};
use topoccl_plan::{
    algo, build, AlgoKind, Algorithm, Collective, CollectiveSpec, Plan, PlanParams, Rank,
};
use topoccl_topo::plans::{self, is_topology_label};
use topoccl_topo::{Endpoints, Pricer, Topology};

use crate::error::{Error, Result};

/// The smallest pipeline piece a rule may ask for: a page. Smaller pieces cost more in
/// per-message work than their overlap can save (a `chunk_bytes` of 1 ran 1,000× slower).
pub const MIN_CHUNK_BYTES: u64 = 4096;

/// A selection rule from `TOPOCCL_RULES`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub collective: String,
    #[serde(default)]
    pub min_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Rule applies to these world sizes only (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ranks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ranks: Option<u32>,
    /// An algorithm name or a topology-aware candidate's label (see the module doc).
    pub algo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u16>,
}

/// What a rule runs.
#[derive(Clone, Debug)]
enum Target {
    Flat(Algorithm),
    /// A label of `plans::candidates`, resolved on the topology at each call.
    OnTopology(String),
}

#[derive(Clone, Debug)]
struct ParsedRule {
    collective: Collective,
    rule: Rule,
    target: Target,
    /// `FILE: rule N`, for errors at use.
    name: String,
}

/// Picks plans for calls.
#[derive(Clone, Debug)]
pub struct Selector {
    pub net: UniformNetwork,
    streams: u16,
    per_collective: HashMap<Collective, Algorithm>,
    everywhere: Option<Algorithm>,
    rules: Vec<ParsedRule>,
    topology: Option<Arc<Topology>>,
    /// Software cost of each further message a rank sends in one round.
    overhead_s: f64,
    /// Links between ranks of this communicator that plans must not use (found dead by
    /// a shrink's agreement: `crate::elastic`).
    dead: DeadLinks,
}

/// Plans of worlds up to this size are verified before their first use (the check is
/// quadratic in the world for rings; larger plans come from generators the test suite
/// verifies).
const VERIFY_MAX_RANKS: u32 = 64;

/// Pipeline piece sizes the selector tries for large messages.
const PIECES: [u64; 2] = [1 << 20, 256 << 10];

impl Selector {
    pub fn new(net: UniformNetwork, streams: u16) -> Selector {
        Selector {
            net,
            streams,
            per_collective: HashMap::new(),
            everywhere: None,
            rules: Vec::new(),
            topology: None,
            overhead_s: 0.0,
            dead: DeadLinks::new(),
        }
    }

    /// Plans from now on avoid `dead` (ranks of this communicator).
    pub fn set_dead_links(&mut self, dead: DeadLinks) {
        self.dead = dead;
    }

    /// Adds one link to avoid.
    pub fn avoid_link(&mut self, a: Rank, b: Rank) {
        self.dead.insert(a, b);
    }

    pub fn dead_links(&self) -> &DeadLinks {
        &self.dead
    }

    /// Prices plans on `t` from now on (its ranks are this communicator's), charging
    /// `overhead_s` for each further message a rank sends in a round.
    pub fn set_topology(&mut self, t: Option<Arc<Topology>>, overhead_s: f64) {
        self.topology = t;
        self.overhead_s = overhead_s;
    }

    pub fn overhead(&self) -> f64 {
        self.overhead_s
    }

    pub fn topology(&self) -> Option<&Arc<Topology>> {
        self.topology.as_ref()
    }

    /// The time `plan` takes on this selector's topology, as its cost model predicts it
    /// (`None` without a topology of the plan's world, or when it cannot be priced).
    pub fn predict(&self, plan: &Plan) -> Option<f64> {
        let t = self
            .topology
            .as_ref()
            .filter(|t| t.world() == plan.spec().world)?;
        self.pricer(t).cost(plan).ok().map(|c| c.total_s)
    }

    /// Applies `TOPOCCL_ALGO` (see the module doc).
    pub fn with_algo_env(mut self, spec: &str) -> Result<Selector> {
        for part in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            match part.split_once(':') {
                Some((c, a)) => {
                    let c: Collective = c.trim().parse()?;
                    let a: Algorithm = a.trim().parse()?;
                    if !a.serves(c) {
                        return Err(Error::Config(format!(
                            "TOPOCCL_ALGO: '{}' is not available for {c}; available: {}",
                            a.name(),
                            algo::available_names(c)
                        )));
                    }
                    if let Some(before) = self.per_collective.insert(c, a.clone()) {
                        return Err(Error::Config(format!(
                            "TOPOCCL_ALGO names {c} twice ('{}' and '{}'); keep one",
                            before.name(),
                            a.name()
                        )));
                    }
                }
                None => {
                    let a: Algorithm = part.parse()?;
                    if let Some(before) = self.everywhere.replace(a.clone()) {
                        return Err(Error::Config(format!(
                            "TOPOCCL_ALGO gives two algorithms for every collective ('{}' and \
                             '{}'); keep one, or name collectives (allreduce:ring;allgather:bruck)",
                            before.name(),
                            a.name()
                        )));
                    }
                }
            }
        }
        Ok(self)
    }

    /// Applies the rules of a `TOPOCCL_RULES` file's contents.
    pub fn with_rules_json(mut self, json: &str, origin: &str) -> Result<Selector> {
        let rules: Vec<Rule> = serde_json::from_str(json)
            .map_err(|e| Error::Config(format!("{origin}: not a list of rules: {e}")))?;
        for (i, rule) in rules.into_iter().enumerate() {
            let bad = |m: String| Error::Config(format!("{origin}: rule {i}: {m}"));
            let collective: Collective =
                rule.collective.parse().map_err(|e| bad(format!("{e}")))?;
            if rule.max_bytes.is_some_and(|m| m <= rule.min_bytes) {
                return Err(bad(format!(
                    "max_bytes {} is not above min_bytes {}: the rule matches no size",
                    rule.max_bytes.unwrap_or_default(),
                    rule.min_bytes
                )));
            }
            if let (Some(lo), Some(hi)) = (rule.min_ranks, rule.max_ranks) {
                if hi < lo {
                    return Err(bad(format!(
                        "max_ranks {hi} is below min_ranks {lo}: the rule matches no job"
                    )));
                }
            }
            if let Some(b) = rule.chunk_bytes.filter(|&b| b < MIN_CHUNK_BYTES) {
                return Err(bad(format!(
                    "chunk_bytes {b} is below {MIN_CHUNK_BYTES} (pieces that small cost more \
                     than they overlap); leave it out for whole messages"
                )));
            }
            if let Some(c) = rule
                .channels
                .filter(|&c| c == 0 || c > PlanParams::MAX_CHANNELS)
            {
                return Err(bad(format!(
                    "channels {c} is outside 1..={}",
                    PlanParams::MAX_CHANNELS
                )));
            }
            let target = match rule.algo.parse::<Algorithm>() {
                Ok(algo) if !algo.serves(collective) => {
                    return Err(bad(format!(
                        "'{}' is not available for {collective}",
                        algo.name()
                    )))
                }
                Ok(algo) => Target::Flat(algo),
                Err(_) if is_topology_label(&rule.algo) => Target::OnTopology(rule.algo.clone()),
                Err(e) => {
                    return Err(bad(format!(
                        "{e} (nor a topology-aware label such as {}, {} or {})",
                        algo::TOPO_RING,
                        plans::MST_TREE,
                        algo::hier_label(AlgoKind::Ring, AlgoKind::RecursiveDoubling)
                    )))
                }
            };
            self.rules.push(ParsedRule {
                collective,
                rule,
                target,
                name: format!("{origin}: rule {i}"),
            });
        }
        Ok(self)
    }

    fn rule_for(&self, spec: &CollectiveSpec, bytes: u64) -> Option<&ParsedRule> {
        self.rules.iter().find(|r| {
            r.collective == spec.collective
                && bytes >= r.rule.min_bytes
                && r.rule.max_bytes.is_none_or(|m| bytes < m)
                && r.rule.min_ranks.is_none_or(|m| spec.world >= m)
                && r.rule.max_ranks.is_none_or(|m| spec.world <= m)
        })
    }

    /// The candidate parameters for an algorithm: no pipelining, pieces of each size, and
    /// channels over the data streams for large messages.
    fn param_options(&self, spec: &CollectiveSpec, bytes: u64) -> Vec<PlanParams> {
        let mut out = vec![PlanParams::default()];
        for piece in PIECES {
            if bytes > 2 * piece {
                out.push(PlanParams::default().with_chunk_bytes(spec, piece));
            }
        }
        if self.streams > 1 && bytes >= self.streams as u64 * (1 << 20) {
            let more: Vec<PlanParams> = out.iter().map(|p| p.with_channels(self.streams)).collect();
            out.extend(more);
        }
        out
    }

    fn pricer<'t>(&self, t: &'t Topology) -> Pricer<'t> {
        Pricer::new(
            t,
            Endpoints {
                overhead_s: self.overhead_s,
                gamma_s_per_byte: self.net.gamma_s_per_byte,
            },
        )
    }

    /// The plan of a rule that names a topology-aware label: that candidate, built on
    /// this communicator's topology with the rule's parameters.
    fn plan_by_label(
        &self,
        r: &ParsedRule,
        label: &str,
        spec: &CollectiveSpec,
        params: PlanParams,
    ) -> Result<Plan> {
        let Some(t) = self.topology.as_ref().filter(|t| t.world() == spec.world) else {
            return Err(Error::Config(format!(
                "{}: '{label}' is a topology-aware plan, but this communicator has no \
                 topology of its {} ranks (set TOPOCCL_TOPO, or let it measure the link \
                 matrix)",
                r.name, spec.world
            )));
        };
        let mut pricer = self.pricer(t);
        let all = plans::candidates(&mut pricer, spec, params).map_err(topo_error)?;
        let labels: Vec<&str> = all.iter().map(|c| c.label.as_str()).collect();
        let Some(c) = all.iter().find(|c| c.label == label) else {
            return Err(Error::Config(format!(
                "{}: no '{label}' plan for {} on this topology; there are: {}",
                r.name,
                spec.collective,
                labels.join(", ")
            )));
        };
        if spec.world <= VERIFY_MAX_RANKS {
            topoccl_plan::verify(&c.plan).map_err(|e| {
                Error::Config(format!(
                    "{}: the '{label}' plan fails verification: {e}",
                    r.name
                ))
            })?;
        }
        Ok(c.plan.clone())
    }

    /// The cheapest verified candidate on the topology (flat and topology-aware plans,
    /// with the same pipelining and channel options as on a uniform network).
    fn plan_on_topology(
        &self,
        t: &Topology,
        spec: &CollectiveSpec,
        bytes: u64,
    ) -> Result<Option<Plan>> {
        let mut pricer = self.pricer(t);
        let mut all = Vec::new();
        for params in self.param_options(spec, bytes) {
            all.extend(plans::candidates(&mut pricer, spec, params).map_err(topo_error)?);
        }
        all.sort_by(|a, b| a.cost.total_s.total_cmp(&b.cost.total_s));
        for c in all {
            if !c.topology_aware || spec.world > VERIFY_MAX_RANKS {
                return Ok(Some(c.plan));
            }
            match topoccl_plan::verify(&c.plan) {
                Ok(_) => return Ok(Some(c.plan)),
                Err(e) => tracing::warn!(
                    "topology-aware plan {} rejected by the verifier: {e}",
                    c.label
                ),
            }
        }
        Ok(None)
    }

    /// The plan for a call: the one the rules, `TOPOCCL_ALGO` or the cost choose, unless
    /// it uses a dead link; then the cheapest plan that avoids them all.
    pub fn plan(&self, spec: &CollectiveSpec) -> Result<Plan> {
        let chosen = self.chosen_plan(spec);
        if self.dead.is_empty() {
            return chosen;
        }
        let used = match &chosen {
            Ok(plan) => match avoid::first_used(plan, &self.dead) {
                None => return chosen,
                Some(link) => Some((plan.algorithm().label(), link)),
            },
            Err(_) => None,
        };
        let plan = self.plan_avoiding(spec)?;
        if let Some((label, (a, b))) = used {
            tracing::debug!(
                "{} of {} B: {label} would use the dead link {a}<->{b}; running {} instead",
                spec.collective,
                spec.size_bytes(),
                plan.algorithm().label()
            );
        }
        Ok(plan)
    }

    /// The cheapest plan for `spec` that uses no dead link: the ordinary candidates that
    /// avoid them, and the detours the core builds around them (`avoid::detours`, the ring
    /// in the topology's order where there is a topology), priced on the topology or the
    /// uniform network and verified (worlds up to [`VERIFY_MAX_RANKS`]).
    fn plan_avoiding(&self, spec: &CollectiveSpec) -> Result<Plan> {
        let bytes = spec.size_bytes();
        let topology = self.topology.as_ref().filter(|t| t.world() == spec.world);
        let mut pricer = topology.map(|t| self.pricer(t));
        let preferred = match pricer.as_mut() {
            Some(p) => Some(plans::ring_order(p.router()).map_err(topo_error)?),
            None => None,
        };
        let mut algorithms = algo::flat(spec);
        algorithms.extend(avoid::detours(spec, &self.dead, preferred.as_deref()));
        let mut plans_tried = Vec::new();
        for params in self.param_options(spec, bytes) {
            for a in &algorithms {
                plans_tried.extend(build(spec.clone(), a.clone(), params).ok());
            }
            if let Some(p) = pricer.as_mut() {
                let aware = plans::candidates(p, spec, params).map_err(topo_error)?;
                plans_tried.extend(
                    aware
                        .into_iter()
                        .filter(|c| c.topology_aware)
                        .map(|c| c.plan),
                );
            }
        }
        let mut best: Option<(f64, Plan)> = None;
        for plan in plans_tried {
            if avoid::first_used(&plan, &self.dead).is_some() {
                continue;
            }
            let cost = match pricer.as_mut() {
                Some(p) => p.cost(&plan).map_err(topo_error)?.total_s,
                None => uniform_cost(&plan, &self.net).total_s,
            };
            if best.as_ref().is_some_and(|(b, _)| *b <= cost) {
                continue;
            }
            if spec.world <= VERIFY_MAX_RANKS {
                if let Err(e) = topoccl_plan::verify(&plan) {
                    tracing::warn!(
                        "plan {} around dead links rejected: {e}",
                        plan.algorithm().label()
                    );
                    continue;
                }
            }
            best = Some((cost, plan));
        }
        best.map(|(_, plan)| plan).ok_or_else(|| {
            let links: Vec<String> = self
                .dead
                .iter()
                .map(|(a, b)| format!("{a}<->{b}"))
                .collect();
            Error::Config(format!(
                "no plan for {} of {} ranks avoids the dead links {} (a ring needs every rank \
                 to keep two live links, a tree one path to each; all-to-all, gather, scatter \
                 and barrier have no detours yet): repair the links, or shrink without one \
                 of their ranks",
                spec.collective,
                spec.world,
                links.join(", ")
            ))
        })
    }

    /// The plan the rules, `TOPOCCL_ALGO` or the cost choose, dead links aside.
    fn chosen_plan(&self, spec: &CollectiveSpec) -> Result<Plan> {
        let bytes = spec.size_bytes();
        if let Some(r) = self.rule_for(spec, bytes) {
            let mut params = PlanParams::default();
            if let Some(b) = r.rule.chunk_bytes {
                params = params.with_chunk_bytes(spec, b);
            }
            if let Some(c) = r.rule.channels {
                params = params.with_channels(c);
            }
            return match &r.target {
                Target::Flat(a) => Ok(build(spec.clone(), a.clone(), params)?),
                Target::OnTopology(label) => self.plan_by_label(r, label, spec, params),
            };
        }
        let forced = self
            .per_collective
            .get(&spec.collective)
            .cloned()
            .or_else(|| {
                self.everywhere
                    .clone()
                    .filter(|a| a.serves(spec.collective))
            });
        if forced.is_none() {
            if let Some(t) = self.topology.clone().filter(|t| t.world() == spec.world) {
                if let Some(plan) = self.plan_on_topology(&t, spec, bytes)? {
                    return Ok(plan);
                }
            }
        }
        let candidates: Vec<Algorithm> = match forced {
            Some(a) => vec![a],
            None => algo::flat(spec),
        };
        let mut best: Option<(f64, Plan)> = None;
        let mut last_err = None;
        for a in candidates {
            for params in self.param_options(spec, bytes) {
                match build(spec.clone(), a.clone(), params) {
                    Ok(plan) => {
                        let t = uniform_cost(&plan, &self.net).total_s;
                        if best.as_ref().is_none_or(|(bt, _)| t < *bt) {
                            best = Some((t, plan));
                        }
                    }
                    Err(e) => last_err = Some(e),
                }
            }
        }
        match (best, last_err) {
            (Some((_, plan)), _) => Ok(plan),
            (None, Some(e)) => Err(e.into()),
            (None, None) => Err(Error::Config(format!(
                "no algorithm available for {}",
                spec.collective
            ))),
        }
    }
}

fn topo_error(e: topoccl_topo::TopoError) -> Error {
    Error::Config(format!("topology: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> UniformNetwork {
        UniformNetwork::new(20e-6, 2e9, 1.0 / 5e9)
    }

    #[test]
    fn dead_links_are_avoided_by_every_choice_or_named_when_nothing_can() {
        use topoccl_plan::avoid::first_used;
        let mut s = Selector::new(net(), 1).with_algo_env("ring").unwrap();
        s.avoid_link(2, 3);
        s.avoid_link(5, 4);
        for c in [
            Collective::AllReduce,
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::Broadcast,
            Collective::Reduce,
        ] {
            for count in [8 * 2, 8 << 20] {
                let spec = CollectiveSpec::new(c, 8, count).with_root(3);
                let plan = s.plan(&spec).unwrap();
                assert_eq!(
                    first_used(&plan, s.dead_links()),
                    None,
                    "{c} of {count}: {}",
                    plan.algorithm().label()
                );
            }
        }
        // Without dead links the forced ring stays.
        let free = Selector::new(net(), 1).with_algo_env("ring").unwrap();
        let spec = CollectiveSpec::new(Collective::AllReduce, 8, 8 << 20);
        assert_eq!(free.plan(&spec).unwrap().algorithm().name(), "ring");
        // Every all-to-all plan of 4 ranks uses every pair: the error names the link.
        let mut s = Selector::new(net(), 1);
        s.avoid_link(0, 1);
        let e = s
            .plan(&CollectiveSpec::new(Collective::AllToAll, 4, 16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("avoids the dead links 0<->1"), "{e}");
    }

    #[test]
    fn small_messages_avoid_the_ring_large_ones_use_bandwidth_optimal_plans() {
        let s = Selector::new(net(), 1);
        let small = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 8, 2))
            .unwrap();
        assert_ne!(small.algorithm().name(), "ring");
        let large = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 8, 16 << 20))
            .unwrap();
        assert!(
            matches!(large.algorithm().name(), "ring" | "rhd"),
            "{}",
            large.algorithm().name()
        );
    }

    #[test]
    fn rules_and_names_that_cannot_mean_anything_are_refused() {
        for (algo_env, says) in [
            (
                "allreduce:ring;allreduce:rhd",
                "names allreduce twice ('ring' and 'rhd')",
            ),
            ("ring;rhd", "two algorithms for every collective"),
        ] {
            let e = Selector::new(net(), 1)
                .with_algo_env(algo_env)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{algo_env}: {e}");
        }
        for (rule, says) in [
            (
                r#""min_bytes":4096,"max_bytes":1024,"algo":"ring""#,
                "max_bytes 1024 is not above min_bytes 4096",
            ),
            (
                r#""min_bytes":1024,"max_bytes":1024,"algo":"ring""#,
                "matches no size",
            ),
            (
                r#""min_ranks":8,"max_ranks":4,"algo":"ring""#,
                "max_ranks 4 is below min_ranks 8",
            ),
            (
                r#""algo":"ring","chunk_bytes":1"#,
                "chunk_bytes 1 is below 4096",
            ),
            (
                r#""algo":"ring","chunk_bytes":0"#,
                "chunk_bytes 0 is below 4096",
            ),
            (
                r#""algo":"ring","channels":65535"#,
                "channels 65535 is outside 1..=64",
            ),
            (r#""algo":"ring","channels":0"#, "channels 0 is outside"),
        ] {
            let json = format!(
                r#"[{{"collective":"allreduce","algo":"rd"}},{{"collective":"allreduce",{rule}}}]"#
            );
            let e = Selector::new(net(), 1)
                .with_rules_json(&json, "rules.json")
                .unwrap_err()
                .to_string();
            assert!(e.contains("rules.json: rule 1: "), "{rule}: {e}");
            assert!(e.contains(says), "{rule}: {e}");
        }
        // The limits themselves are accepted.
        Selector::new(net(), 1)
            .with_rules_json(
                r#"[{"collective":"allreduce","min_bytes":0,"max_bytes":1,"min_ranks":4,"max_ranks":4,"algo":"ring","chunk_bytes":4096,"channels":64}]"#,
                "rules.json",
            )
            .unwrap();
    }

    #[test]
    fn overrides() {
        let s = Selector::new(net(), 1)
            .with_algo_env("allreduce:tree; allgather:bruck")
            .unwrap();
        let p = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 8, 1 << 20))
            .unwrap();
        assert_eq!(p.algorithm().name(), "tree");
        let e = Selector::new(net(), 1)
            .with_algo_env("allreduce:bruck")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not available for allreduce"), "{e}");
        let s = Selector::new(net(), 1)
            .with_rules_json(
                r#"[{"collective":"allreduce","max_bytes":1024,"algo":"rd"},
                    {"collective":"allreduce","min_bytes":1024,"algo":"ring","chunk_bytes":65536}]"#,
                "rules.json",
            )
            .unwrap();
        let p = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 4, 8))
            .unwrap();
        assert_eq!(p.algorithm().name(), "rd");
        let p = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 4, 1 << 20))
            .unwrap();
        assert_eq!((p.algorithm().name(), p.params().chunks), ("ring", 16));
        let e = Selector::new(net(), 1)
            .with_rules_json(
                r#"[{"collective":"allreduce","algo":"ring","speed":9}]"#,
                "r.json",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("r.json") && e.contains("speed"), "{e}");
    }

    /// Four ranks on two hosts of two GPUs each, a slow link between the hosts.
    fn two_hosts() -> Arc<Topology> {
        let text = include_str!("../../topo/tests/fixtures/two_hosts_slow_link.toml");
        Arc::new(topoccl_topo::format::read(text, "two-hosts").unwrap())
    }

    fn label_rules(algo: &str) -> Selector {
        Selector::new(net(), 1)
            .with_rules_json(
                &format!(r#"[{{"collective":"allreduce","algo":"{algo}","chunk_bytes":65536}}]"#),
                "t.json",
            )
            .unwrap()
    }

    #[test]
    fn topology_labels_are_checked_when_loaded() {
        for ok in ["topo-ring", "mst-tree", "hier(ring|rd)", "hier(direct|rhd)"] {
            assert!(is_topology_label(ok), "{ok}");
        }
        for bad in ["topo", "hier(ring)", "hier(ring|warp)", "hier(ring|rd"] {
            assert!(!is_topology_label(bad), "{bad}");
            let e = Selector::new(net(), 1)
                .with_rules_json(
                    &format!(r#"[{{"collective":"allreduce","algo":"{bad}"}}]"#),
                    "t.json",
                )
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("t.json: rule 0") && e.contains("topology-aware"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_topology_label_rule_runs_that_candidate_with_the_rule_params() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 1 << 20);
        for label in ["topo-ring", "mst-tree", "hier(ring|rd)"] {
            let mut s = label_rules(label);
            s.set_topology(Some(two_hosts()), 0.0);
            let p = s.plan(&spec).unwrap();
            let mut pricer = s.pricer(s.topology().unwrap());
            let params = PlanParams::default().with_chunk_bytes(&spec, 65536);
            let want = plans::candidates(&mut pricer, &spec, params)
                .unwrap()
                .into_iter()
                .find(|c| c.label == label)
                .unwrap();
            assert_eq!(p.algorithm(), want.plan.algorithm(), "{label}");
            assert_eq!(p.params(), want.plan.params(), "{label}");
        }
    }

    #[test]
    fn a_topology_label_rule_fails_clearly_without_a_topology_or_candidate() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 1 << 10);
        let e = label_rules("topo-ring")
            .plan(&spec)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.json: rule 0") && e.contains("'topo-ring'") && e.contains("no topology"),
            "{e}"
        );
        // A topology of another world does not describe this call's ranks.
        let mut s = label_rules("hier(ring|tree)");
        s.set_topology(Some(two_hosts()), 0.0);
        let e = s
            .plan(&CollectiveSpec::new(Collective::AllReduce, 3, 8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no topology of its 3 ranks"), "{e}");
        let mut s = Selector::new(net(), 1)
            .with_rules_json(
                r#"[{"collective":"allgather","algo":"topo-ring"}]"#,
                "t.json",
            )
            .unwrap();
        s.set_topology(Some(two_hosts()), 0.0);
        let e = s
            .plan(&CollectiveSpec::new(Collective::AllGather, 4, 8))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no 'topo-ring' plan for allgather") && e.contains("ring"),
            "{e}"
        );
    }

    #[test]
    fn rules_round_trip_through_json() {
        let r = Rule {
            collective: "allreduce".into(),
            min_bytes: 0,
            max_bytes: Some(4096),
            min_ranks: Some(4),
            max_ranks: Some(4),
            algo: "hier(ring|rd)".into(),
            chunk_bytes: None,
            channels: Some(2),
        };
        let json = serde_json::to_string(&vec![r.clone()]).unwrap();
        assert!(!json.contains("chunk_bytes"), "{json}");
        let back: Vec<Rule> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![r]);
        Selector::new(net(), 1).with_rules_json(&json, "t").unwrap();
    }
}
