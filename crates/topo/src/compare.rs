//! `plan compare`: every candidate plan for a collective on a topology, priced, with the
//! lower bound and the gap to it. Also the rank placements to compare under.

use serde::{Deserialize, Serialize};
use topoccl_plan::{Collective, CollectiveSpec, DType, PlanParams};

use crate::cost::{lower_bound, Endpoints, Pricer};
use crate::error::TopoError;
use crate::model::Topology;
use crate::plans::{candidates, hierarchy_notes};
use crate::seeded::SplitMix;

/// Plans are verified when the world is at most this large (the symbolic verifier's state
/// grows with p² for rings); larger ones say so.
pub const VERIFY_MAX_RANKS: u32 = 1024;

/// One line of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareRow {
    pub algorithm: String,
    pub topology_aware: bool,
    pub time_s: f64,
    pub latency_s: f64,
    pub bandwidth_s: f64,
    pub reduction_s: f64,
    pub busbw_gbps: f64,
    /// Predicted time over the lower bound (1 = optimal).
    pub gap: f64,
    /// `Some(true)` verified, `Some(false)` rejected, `None` too large to verify here.
    pub verified: Option<bool>,
    pub hottest_link: Option<String>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub topology: String,
    pub ranks: u32,
    pub collective: String,
    pub bytes: u64,
    pub dtype: String,
    pub placement: String,
    pub lower_bound_s: f64,
    pub rows: Vec<CompareRow>,
    /// What the candidates leave out and why (levels of unequal size that no
    /// hierarchical plan uses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Prices every candidate for `collective` of `bytes` (the whole buffer, nccl-tests
/// convention) on `t`, fastest first.
pub fn compare(
    t: &Topology,
    collective: Collective,
    bytes: u64,
    dtype: DType,
    placement: &str,
    endpoints: Endpoints,
) -> Result<Comparison, TopoError> {
    let p = t.world();
    let spec = CollectiveSpec::of_size(collective, p, bytes, dtype);
    let mut pricer = Pricer::new(t, endpoints);
    let bound = lower_bound(t, collective, bytes as f64);
    let mut rows: Vec<CompareRow> = candidates(&mut pricer, &spec, PlanParams::default())?
        .into_iter()
        .map(|c| {
            let verified = (p <= VERIFY_MAX_RANKS).then(|| topoccl_plan::verify(&c.plan).is_ok());
            CompareRow {
                algorithm: c.label,
                topology_aware: c.topology_aware,
                time_s: c.cost.total_s,
                latency_s: c.cost.latency_s,
                bandwidth_s: c.cost.bandwidth_s,
                reduction_s: c.cost.reduction_s,
                busbw_gbps: spec.bandwidth(c.cost.total_s).busbw_gbps,
                gap: if bound > 0.0 {
                    c.cost.total_s / bound
                } else {
                    1.0
                },
                verified,
                hottest_link: c.cost.hottest_link.map(|(_, name)| name),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.time_s.total_cmp(&b.time_s));
    let notes = hierarchy_notes(pricer.router(), &spec)?;
    Ok(Comparison {
        topology: t.name().to_string(),
        ranks: p,
        collective: collective.to_string(),
        bytes,
        dtype: dtype.to_string(),
        placement: placement.to_string(),
        lower_bound_s: bound,
        rows,
        notes,
    })
}

/// The same devices with ranks shuffled (seeded, so a run can be repeated).
pub fn random_placement(t: &Topology, seed: u64) -> Result<Topology, TopoError> {
    let mut nodes = t.rank_nodes().to_vec();
    SplitMix::new(seed).shuffle(&mut nodes);
    t.with_placement(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, Tier, TopologyBuilder};

    fn switch(p: u32) -> Topology {
        let mut b = TopologyBuilder::new("switch");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        for i in 0..p {
            let h = b.node(format!("h{i}"), NodeKind::Host).unwrap();
            b.connect(h, sw, 12.5e9, 1e-6).unwrap();
            b.place(i, h).unwrap();
        }
        b.build().unwrap()
    }

    #[test]
    fn busbw_uses_the_collectives_bus_factor() {
        // nccl-tests' factors (plan::spec): gather (n−1)/n, all-reduce 2(n−1)/n.
        let t = switch(4);
        for (c, factor) in [
            (Collective::Gather, 3.0 / 4.0),
            (Collective::AllReduce, 2.0 * 3.0 / 4.0),
        ] {
            let bytes = 1u64 << 20;
            let cmp = compare(&t, c, bytes, DType::F32, "", Endpoints::default()).unwrap();
            assert!(!cmp.rows.is_empty());
            for r in &cmp.rows {
                let want = bytes as f64 / r.time_s / 1e9 * factor;
                assert!((r.busbw_gbps - want).abs() < 1e-9 * want, "{c}: {r:?}");
            }
        }
    }
}
