//! Which of a topology's links to lower when the links a job uses run slow.
//!
//! While a job runs, each rank sees only the pairs it sends to, and only as a share of
//! what they achieved before ([`Observation::ratio`]). A slow pair's route crosses several
//! links of the model; which of them is at fault is decided from the evidence at hand:
//!
//! 1. A link that some observed pair crosses at its usual speed (ratio at least
//!    `healthy_at`) is exonerated: it is not the slow one.
//! 2. Of the links left on a slow route, the one that the most slow routes cross is
//!    blamed; on a tie the one that more pairs of ranks would cross (the more shared link:
//!    in doubt a plan must avoid the trunk, not one host's cable), then the narrowest.
//!    When every link of a slow route is exonerated (contradicting evidence), its narrowest
//!    link is blamed.
//! 3. A blamed link takes the bandwidth its slow pairs now get: the route's bottleneck in
//!    the model times their ratio (the smallest such figure). Bandwidths are never raised.
//!
//! Pure: routes on the model, no clock. Counting how many pairs cross each link routes
//! every pair once: O(P²) routes, for worlds up to [`MAX_RANKS`].

use std::collections::{BTreeMap, BTreeSet};

use crate::error::TopoError;
use crate::matrix::Adjustment;
use crate::model::{LinkId, Topology};
use crate::route::Router;

/// The largest world whose links are attributed (every pair is routed once).
pub const MAX_RANKS: u32 = 512;

/// Rank `src`'s traffic to rank `dst` achieves `ratio` of its baseline throughput
/// (1 = as before; below 1 slower).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    pub src: u32,
    pub dst: u32,
    pub ratio: f64,
}

/// `t` with the links that explain the slow observations lowered, and what changed. A
/// pair is healthy when its ratio is at least `healthy_at` (in (0, 1]).
pub fn lower_slow_links(
    t: &Topology,
    seen: &[Observation],
    healthy_at: f64,
) -> Result<(Topology, Vec<Adjustment>), TopoError> {
    let p = t.world();
    if p > MAX_RANKS {
        return Err(TopoError::invalid(format!(
            "slow links are attributed for worlds up to {MAX_RANKS} ranks; this one has {p}"
        )));
    }
    if !(healthy_at > 0.0 && healthy_at <= 1.0) {
        return Err(TopoError::invalid(format!(
            "the healthy share {healthy_at} is outside (0, 1]"
        )));
    }
    for o in seen {
        if o.src >= p || o.dst >= p || o.src == o.dst {
            return Err(TopoError::invalid(format!(
                "an observation from rank {} to rank {} is not a link between two of the \
                 topology's {p} ranks",
                o.src, o.dst
            )));
        }
        if !(o.ratio.is_finite() && o.ratio > 0.0) {
            return Err(TopoError::invalid(format!(
                "the link from rank {} to rank {} is observed at {} of its baseline; a share \
                 must be finite and above 0",
                o.src, o.dst, o.ratio
            )));
        }
    }
    let mut router = Router::new(t);
    let mut exonerated: BTreeSet<LinkId> = BTreeSet::new();
    let mut slow = Vec::new();
    for o in seen {
        let route = router.route(o.src, o.dst)?;
        let links: Vec<LinkId> = route
            .links
            .iter()
            .filter(|(_, share)| *share > 0.0)
            .map(|&(l, _)| l)
            .collect();
        if o.ratio >= healthy_at {
            exonerated.extend(links);
        } else {
            slow.push((links, route.bottleneck * o.ratio.min(1.0)));
        }
    }
    if slow.is_empty() {
        return Ok((t.clone(), Vec::new()));
    }
    let suspects = |links: &[LinkId]| -> Vec<LinkId> {
        let left: Vec<LinkId> = links
            .iter()
            .copied()
            .filter(|l| !exonerated.contains(l))
            .collect();
        left
    };
    let mut slow_use: BTreeMap<LinkId, u32> = BTreeMap::new();
    for (links, _) in &slow {
        for l in suspects(links) {
            *slow_use.entry(l).or_default() += 1;
        }
    }
    // How many pairs of ranks cross each suspect: only needed on ties, counted once.
    let mut shared: Option<BTreeMap<LinkId, u32>> = None;
    let mut lowered: BTreeMap<LinkId, f64> = BTreeMap::new();
    for (links, achieved) in &slow {
        let left = suspects(links);
        let blamed = if left.is_empty() {
            links
                .iter()
                .copied()
                .min_by(|&a, &b| t.link(a).bandwidth.total_cmp(&t.link(b).bandwidth))
        } else {
            if shared.is_none() {
                shared = Some(pairs_crossing(&mut router, &slow_use)?);
            }
            let shared = shared.as_ref().expect("counted above");
            let key = |l: LinkId| {
                (
                    slow_use.get(&l).copied().unwrap_or(0),
                    shared.get(&l).copied().unwrap_or(0),
                )
            };
            left.iter().copied().max_by(|&a, &b| {
                key(a).cmp(&key(b)).then(
                    // The narrower is the likelier bottleneck: it compares as greater.
                    t.link(b).bandwidth.total_cmp(&t.link(a).bandwidth),
                )
            })
        };
        if let Some(l) = blamed {
            let slot = lowered.entry(l).or_insert(f64::INFINITY);
            *slot = slot.min(*achieved);
        }
    }
    let mut b = t.to_builder();
    let mut changes = Vec::new();
    for (l, bw) in lowered {
        let modelled = t.link(l).bandwidth;
        if bw < modelled {
            changes.push(Adjustment {
                link: t.link_name(l),
                modelled,
                measured: bw,
            });
            b.links_mut()[l as usize].bandwidth = bw;
        }
    }
    Ok((b.build()?, changes))
}

/// For each link of `of`: how many ordered pairs of ranks route across it.
fn pairs_crossing(
    router: &mut Router<'_>,
    of: &BTreeMap<LinkId, u32>,
) -> Result<BTreeMap<LinkId, u32>, TopoError> {
    let p = router.topology().world();
    let mut count: BTreeMap<LinkId, u32> = of.keys().map(|&l| (l, 0)).collect();
    for i in 0..p {
        for j in (0..p).filter(|&j| j != i) {
            for (l, share) in router.route(i, j)?.links {
                if share > 0.0 {
                    if let Some(c) = count.get_mut(&l) {
                        *c += 1;
                    }
                }
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeKind, Tier, TopologyBuilder};

    /// Two racks of two hosts, one rank each, racks alternating (rank 0 rack 0, rank 1
    /// rack 1, …), every cable 1 Gbit/s (125 MB/s), the racks joined by one trunk.
    fn racks() -> Topology {
        let mut b = TopologyBuilder::new("racks");
        let sw = [
            b.switch("rack0", Tier::Leaf).unwrap(),
            b.switch("rack1", Tier::Leaf).unwrap(),
        ];
        b.connect(sw[0], sw[1], 125e6, 20e-6).unwrap();
        let mut devices = Vec::new();
        for r in 0..4 {
            let host = b.node(format!("h{r}"), NodeKind::Host).unwrap();
            let d = b.device(format!("h{r}/cpu"), NodeKind::Cpu, host).unwrap();
            b.connect(d, sw[r % 2], 125e6, 10e-6).unwrap();
            devices.push(d);
        }
        b.place_all(devices).unwrap();
        b.build().unwrap()
    }

    fn obs(src: u32, dst: u32, ratio: f64) -> Observation {
        Observation { src, dst, ratio }
    }

    /// A ring in rack order (0→2→1→3→0) sees its two trunk crossings slow and its two
    /// in-rack links healthy: the trunk is blamed, in both directions, and every pair
    /// across the racks now routes at the slow figure.
    #[test]
    fn the_trunk_is_blamed_for_slow_crossings() {
        let t = racks();
        let seen = [
            obs(0, 2, 1.0),
            obs(2, 1, 0.05),
            obs(1, 3, 0.98),
            obs(3, 0, 0.05),
        ];
        let (lowered, changes) = lower_slow_links(&t, &seen, 0.7).unwrap();
        let mut names: Vec<&str> = changes.iter().map(|c| c.link.as_str()).collect();
        names.sort();
        assert_eq!(names, ["rack0 -> rack1", "rack1 -> rack0"], "{changes:?}");
        let mut r = Router::new(&lowered);
        for (a, b) in [(0, 1), (1, 0), (0, 3), (2, 3)] {
            let got = r.route(a, b).unwrap().bottleneck;
            assert!((got - 6.25e6).abs() < 1.0, "{a}→{b}: {got}");
        }
        // Inside a rack nothing changed.
        assert_eq!(r.route(0, 2).unwrap().bottleneck, 125e6);
    }

    /// Without exonerating evidence, one slow pair blames the more shared of its links:
    /// the trunk (4 pairs cross each direction) over a host cable (3 pairs).
    #[test]
    fn in_doubt_the_shared_link_is_blamed() {
        let t = racks();
        let (_, changes) = lower_slow_links(&t, &[obs(2, 1, 0.1)], 0.7).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].link, "rack0 -> rack1");
        assert!((changes[0].measured - 12.5e6).abs() < 1.0);
    }

    /// A host cable that healthy pairs do not cross, slow towards two racks: it is the one
    /// link both slow routes share, so it is blamed rather than a trunk.
    #[test]
    fn a_link_common_to_slow_routes_beats_a_shared_one() {
        let t = racks();
        let seen = [
            obs(0, 1, 0.2),
            obs(0, 2, 0.2),
            obs(2, 0, 1.0),
            obs(1, 3, 1.0),
        ];
        let (_, changes) = lower_slow_links(&t, &seen, 0.7).unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].link, "h0/cpu -> rack0");
    }

    #[test]
    fn healthy_observations_change_nothing_and_bad_ones_are_refused() {
        let t = racks();
        let (same, changes) = lower_slow_links(&t, &[obs(0, 1, 1.0)], 0.7).unwrap();
        assert!(changes.is_empty());
        assert_eq!(same.links(), t.links());
        for (bad, says) in [
            (
                obs(0, 9, 0.5),
                "not a link between two of the topology's 4 ranks",
            ),
            (obs(1, 1, 0.5), "not a link"),
            (obs(0, 1, f64::NAN), "must be finite and above 0"),
            (obs(0, 1, 0.0), "must be finite and above 0"),
        ] {
            let e = lower_slow_links(&t, &[bad], 0.7).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        assert!(lower_slow_links(&t, &[], 1.5)
            .unwrap_err()
            .to_string()
            .contains("outside (0, 1]"));
    }

    proptest::proptest! {
        /// Whatever is observed: bandwidths only fall, at most one link per slow
        /// observation falls, and no link falls below the slowest figure observed on it.
        #[test]
        fn bandwidths_only_fall(seen in proptest::collection::vec(
            (0u32..4, 0u32..4, 0.01f64..1.0), 0..8)) {
            let t = racks();
            let seen: Vec<Observation> = seen
                .into_iter()
                .filter(|(a, b, _)| a != b)
                .map(|(src, dst, ratio)| obs(src, dst, ratio))
                .collect();
            let (lowered, changes) = lower_slow_links(&t, &seen, 0.7).unwrap();
            let slow = seen.iter().filter(|o| o.ratio < 0.7).count();
            proptest::prop_assert!(changes.len() <= slow);
            let floor = seen.iter().map(|o| 125e6 * o.ratio).fold(f64::INFINITY, f64::min);
            for (before, after) in t.links().iter().zip(lowered.links()) {
                proptest::prop_assert!(after.bandwidth <= before.bandwidth);
                if after.bandwidth < before.bandwidth {
                    proptest::prop_assert!(after.bandwidth >= floor - 1e-6);
                }
            }
        }
    }
}
