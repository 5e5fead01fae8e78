//! The cost of a plan on a topology.
//!
//! Rounds run one after the other. In a round, every transfer is routed (ECMP shares
//! included) and each link carries the sum of its transfers' bytes; the round takes the
//! most loaded link's load / bandwidth (links shared by several transfers divide their
//! bandwidth), plus the longest path latency among its transfers (plus a software
//! overhead for each further peer of the rank that sends to the most), plus the busiest
//! rank's reduction. Rounds of equal class are priced
//! once. This is the α-β model made aware of where bytes actually go; with every link
//! alike it gives the uniform cost back.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use topoccl_plan::{Collective, Plan, TransferInfo};

use crate::error::TopoError;
use crate::model::{LinkId, NodeId, Topology};
use crate::route::Router;

/// Costs of the endpoints, on top of the links.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Seconds of software overhead per message beyond the first a rank sends in a round
    /// (the first one's is in the path latency; a rank's messages leave one after the
    /// other).
    pub overhead_s: f64,
    /// Seconds per byte reduced.
    pub gamma_s_per_byte: f64,
}

impl Default for Endpoints {
    fn default() -> Self {
        // A GPU reduces at hundreds of GB/s; NCCL-class overheads are a few µs.
        Endpoints {
            overhead_s: 0.0,
            gamma_s_per_byte: 1.0 / 200e9,
        }
    }
}

/// A plan's predicted time on a topology, split into its terms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopoCost {
    pub total_s: f64,
    /// Σ over rounds of the longest path latency (+ overheads).
    pub latency_s: f64,
    /// Σ over rounds of the most loaded link's load / bandwidth.
    pub bandwidth_s: f64,
    pub reduction_s: f64,
    pub rounds_with_traffic: u32,
    /// The link that limited the most rounds' bandwidth term, with its readable name.
    pub hottest_link: Option<(LinkId, String)>,
}

#[derive(Clone, Debug, Default)]
struct RoundCost {
    latency: f64,
    bandwidth: f64,
    reduction: f64,
    traffic: bool,
    hottest: Option<LinkId>,
}

/// Prices plans on one topology (routes are cached across plans).
pub struct Pricer<'t> {
    router: Router<'t>,
    pub endpoints: Endpoints,
    /// Bytes per link in the round being priced, and the links with any.
    load: Vec<f64>,
    touched: Vec<LinkId>,
}

impl<'t> Pricer<'t> {
    pub fn new(t: &'t Topology, endpoints: Endpoints) -> Pricer<'t> {
        Pricer {
            router: Router::new(t),
            endpoints,
            load: vec![0.0; t.links().len()],
            touched: Vec::new(),
        }
    }

    pub fn topology(&self) -> &'t Topology {
        self.router.topology()
    }

    pub fn router(&mut self) -> &mut Router<'t> {
        &mut self.router
    }

    /// The predicted time of `plan`. The plan's ranks are the topology's ranks.
    pub fn cost(&mut self, plan: &Plan) -> Result<TopoCost, TopoError> {
        let t = self.router.topology();
        check_world(plan, t)?;
        let elem = plan.spec().dtype.size() as f64;
        let mut seen: HashMap<u64, RoundCost> = HashMap::new();
        let mut hot: HashMap<LinkId, f64> = HashMap::new();
        let mut cost = TopoCost::default();
        let mut transfers = Vec::new();
        let mut ops = Vec::new();
        for round in 0..plan.rounds() {
            let class = plan.round_class(round);
            let rc = match seen.get(&class) {
                Some(rc) => rc.clone(),
                None => {
                    transfers.clear();
                    plan.transfers(round, &mut transfers);
                    let mut rc = self.price_round(&transfers, elem)?;
                    rc.reduction = max_reduced(plan, round, &mut ops) as f64
                        * elem
                        * self.endpoints.gamma_s_per_byte;
                    seen.insert(class, rc.clone());
                    rc
                }
            };
            if rc.traffic {
                cost.rounds_with_traffic += 1;
            }
            cost.latency_s += rc.latency;
            cost.bandwidth_s += rc.bandwidth;
            cost.reduction_s += rc.reduction;
            if let Some(l) = rc.hottest {
                *hot.entry(l).or_default() += rc.bandwidth;
            }
        }
        cost.total_s = cost.latency_s + cost.bandwidth_s + cost.reduction_s;
        cost.hottest_link = hot
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(l, _)| (l, t.link_name(l)));
        Ok(cost)
    }

    fn price_round(
        &mut self,
        transfers: &[TransferInfo],
        elem: f64,
    ) -> Result<RoundCost, TopoError> {
        // Sums in the same order on every rank, so every rank prices alike to the last
        // bit and picks the same plan: dense per-link loads, crossings grouped by
        // destination in order.
        let load = &mut self.load;
        let touched = &mut self.touched;
        let mut add = |l: LinkId, bytes: f64| {
            let slot = &mut load[l as usize];
            if *slot == 0.0 {
                touched.push(l);
            }
            *slot += bytes;
        };
        let mut crossings: BTreeMap<NodeId, BTreeMap<NodeId, f64>> = BTreeMap::new();
        let mut latency: f64 = 0.0;
        let mut peers: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for tr in transfers {
            let mine = peers.entry(tr.src).or_default();
            if !mine.contains(&tr.dst) {
                mine.push(tr.dst);
            }
            let bytes = tr.len as f64 * elem;
            let parts = self.router.parts(tr.src, tr.dst)?;
            latency = latency.max(parts.latency);
            for &l in &parts.local {
                add(l, bytes);
            }
            if let Some((fo, fi)) = parts.fabric {
                *crossings.entry(fi).or_default().entry(fo).or_default() += bytes;
            }
        }
        for (fi, sources) in crossings {
            let sources: Vec<(NodeId, f64)> = sources.into_iter().collect();
            self.router.spread_to(fi, &sources, &mut add);
        }
        let t = self.router.topology();
        let mut hottest: Option<(LinkId, f64)> = None;
        for &l in touched.iter() {
            let time = load[l as usize] / t.link(l).bandwidth;
            if hottest.is_none_or(|h| time > h.1 || (time == h.1 && l < h.0)) {
                hottest = Some((l, time));
            }
            load[l as usize] = 0.0;
        }
        touched.clear();
        let traffic = !transfers.is_empty();
        let most_peers = peers.values().map(Vec::len).max().unwrap_or(0);
        Ok(RoundCost {
            latency: latency + self.endpoints.overhead_s * most_peers.saturating_sub(1) as f64,
            bandwidth: hottest.map_or(0.0, |h| h.1),
            reduction: 0.0,
            traffic,
            hottest: hottest.map(|h| h.0),
        })
    }
}

/// Refuses a plan made for another number of ranks than `t` places.
pub fn check_world(plan: &Plan, t: &Topology) -> Result<(), TopoError> {
    if plan.world() != t.world() {
        return Err(TopoError::invalid(format!(
            "the plan is for {} ranks but the topology '{}' places {}",
            plan.world(),
            t.name(),
            t.world()
        )));
    }
    Ok(())
}

/// Elements reduced by the busiest rank in `round`.
fn max_reduced(plan: &Plan, round: u32, ops: &mut Vec<topoccl_plan::Op>) -> u64 {
    (0..plan.world())
        .map(|r| {
            ops.clear();
            plan.emit(r, round, ops);
            ops.iter().map(|o| o.reduced_len()).sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

/// A lower bound on a collective's bandwidth time on a topology, from cuts that its data
/// must cross: each rank's own links (all-reduce moves 2(p−1)/p·n through every rank,
/// all-gather and reduce-scatter (p−1)/p·n, the rest n), and the links out of each host
/// and each zone (an all-reduce must bring the other side's n bytes across every cut that
/// splits the ranks; an all-gather the other side's share of them). The bound is the
/// slowest of these cuts: the textbook 2(p−1)/p·n / B where the bottleneck is a rank's
/// links, n / B_cut where it is a host's or zone's uplinks.
pub fn lower_bound(t: &Topology, collective: Collective, bytes: f64) -> f64 {
    let p = t.world() as f64;
    if p <= 1.0 {
        return 0.0;
    }
    let through_rank = match collective {
        Collective::AllReduce => 2.0 * (p - 1.0) / p * bytes,
        Collective::AllGather | Collective::ReduceScatter => (p - 1.0) / p * bytes,
        _ => bytes,
    };
    // Bytes that must cross a cut leaving `k` ranks on the inside, either way.
    let across = |k: f64| match collective {
        Collective::AllReduce | Collective::Broadcast | Collective::Reduce => bytes,
        _ => bytes * (p - k).min(k) / p,
    };
    cut_bound(t, |_| through_rank, |ranks| across(ranks.len() as f64))
}

/// The slowest of the cuts [`lower_bound`] takes, for any traffic: `through_rank(r)` bytes
/// through rank r's own links, `across(ranks)` bytes over the uplinks of every host and
/// zone holding those ranks (either way: links are taken to be as fast both ways).
pub fn cut_bound(
    t: &Topology,
    through_rank: impl Fn(u32) -> f64,
    across: impl Fn(&[u32]) -> f64,
) -> f64 {
    let p = t.world() as usize;
    let mut worst: f64 = 0.0;
    for r in 0..t.world() {
        let out: f64 = t
            .out_links(t.rank_node(r))
            .iter()
            .map(|&l| t.link(l).bandwidth)
            .sum();
        worst = worst.max(through_rank(r) / out);
    }
    for cut in [Cut::Host, Cut::Zone] {
        let mut ranks: HashMap<String, Vec<u32>> = HashMap::new();
        for r in 0..t.world() {
            if let Some(k) = cut.key(t, t.rank_node(r)) {
                ranks.entry(k).or_default().push(r);
            }
        }
        let mut uplinks: HashMap<String, f64> = HashMap::new();
        for l in t.links() {
            let (a, b) = (cut.key(t, l.from), cut.key(t, l.to));
            if let Some(a) = a.filter(|a| Some(a) != b.as_ref()) {
                *uplinks.entry(a).or_default() += l.bandwidth;
            }
        }
        for (k, inside) in ranks {
            if inside.len() < p {
                if let Some(bw) = uplinks.get(&k) {
                    worst = worst.max(across(&inside) / bw);
                }
            }
        }
    }
    worst
}

/// The groups a cut separates.
#[derive(Clone, Copy)]
enum Cut {
    Host,
    Zone,
}

impl Cut {
    fn key(self, t: &Topology, node: crate::model::NodeId) -> Option<String> {
        let n = t.node(node);
        match self {
            Cut::Host => match (n.host, n.kind) {
                (Some(h), _) => Some(t.node(h).name.clone()),
                (None, crate::model::NodeKind::Host) => Some(n.name.clone()),
                _ => None,
            },
            Cut::Zone => n
                .zone
                .clone()
                .or_else(|| n.host.and_then(|h| t.node(h).zone.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, Tier, TopologyBuilder};
    use topoccl_plan::cost::{uniform_cost, UniformNetwork};
    use topoccl_plan::{build, Algorithm, CollectiveSpec, PlanParams};

    /// The textbook network: p hosts on one switch, α split over the two hops.
    fn switch(p: u32, alpha: f64, bw: f64) -> Topology {
        let mut b = TopologyBuilder::new("switch");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        for i in 0..p {
            let h = b.node(format!("h{i}"), NodeKind::Host).unwrap();
            b.connect(h, sw, bw, alpha / 2.0).unwrap();
            b.place(i, h).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn a_single_switch_gives_the_uniform_cost() {
        let (alpha, bw, gamma) = (5e-6, 12.5e9, 1e-10);
        let ep = Endpoints {
            overhead_s: 0.0,
            gamma_s_per_byte: gamma,
        };
        for p in [2u32, 5, 8, 16] {
            let t = switch(p, alpha, bw);
            let mut pricer = Pricer::new(&t, ep);
            for alg in [
                Algorithm::Ring,
                Algorithm::Rabenseifner,
                Algorithm::DoubleBinaryTree,
                Algorithm::RecursiveDoubling,
            ] {
                let spec = CollectiveSpec::new(Collective::AllReduce, p, 1 << 20);
                let plan = build(spec, alg.clone(), PlanParams::default()).unwrap();
                let topo = pricer.cost(&plan).unwrap();
                let uni = uniform_cost(&plan, &UniformNetwork::new(alpha, bw, gamma));
                // One peer per rank per round in these algorithms, so α counts alike.
                let rel = (topo.total_s - uni.total_s).abs() / uni.total_s;
                assert!(rel < 0.01, "p={p} {alg}: topo {topo:?} uniform {uni:?}");
            }
        }
    }

    #[test]
    fn bound_and_mismatch() {
        let t = switch(4, 1e-6, 10e9);
        let b = lower_bound(&t, Collective::AllReduce, 1e9);
        // 2(p−1)/p·n over a host's 10 GB/s, and the host cut n / 10 GB/s: the first wins.
        assert!((b - 1.5 * 1e9 / 10e9).abs() < 1e-9, "{b}");
        let spec = CollectiveSpec::new(Collective::AllReduce, 3, 8);
        let plan = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        let e = Pricer::new(&t, Endpoints::default())
            .cost(&plan)
            .unwrap_err();
        assert!(e.to_string().contains("3 ranks"), "{e}");
    }
}
