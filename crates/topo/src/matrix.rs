//! A live link matrix: the latency and bandwidth measured between every pair of ranks, and
//! the topologies made from it. The measurement itself is the runtime's (it needs
//! sockets and a clock); this module only holds and interprets the numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::TopoError;
use crate::model::{NodeKind, Topology, TopologyBuilder};
use crate::route::Router;

/// Measured figures between every ordered pair of ranks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkMatrix {
    /// The machine each rank runs on (its address or host name): ranks sharing one are
    /// grouped as a host.
    pub hosts: Vec<String>,
    /// One-way latency from rank i to rank j, seconds: `latency[i][j]` (0 on the diagonal).
    pub latency: Vec<Vec<f64>>,
    /// Bandwidth from rank i to rank j, bytes/s (0 on the diagonal).
    pub bandwidth: Vec<Vec<f64>>,
}

impl LinkMatrix {
    pub fn world(&self) -> u32 {
        self.hosts.len() as u32
    }

    /// The matrix of a subset of the ranks: rank i of the result is rank `ranks[i]` here.
    pub fn restrict(&self, ranks: &[u32]) -> LinkMatrix {
        let pick = |m: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            ranks
                .iter()
                .map(|&i| ranks.iter().map(|&j| m[i as usize][j as usize]).collect())
                .collect()
        };
        LinkMatrix {
            hosts: ranks
                .iter()
                .map(|&r| self.hosts[r as usize].clone())
                .collect(),
            latency: pick(&self.latency),
            bandwidth: pick(&self.bandwidth),
        }
    }

    /// Checks shapes and values, so a matrix read from a file cannot build a broken model.
    pub fn validate(&self) -> Result<(), TopoError> {
        let p = self.hosts.len();
        if p == 0 {
            return Err(TopoError::invalid("the link matrix has no ranks"));
        }
        for (what, m) in [("latency", &self.latency), ("bandwidth", &self.bandwidth)] {
            if m.len() != p || m.iter().any(|row| row.len() != p) {
                return Err(TopoError::invalid(format!(
                    "the {what} matrix must be {p}×{p} (one row and column per rank)"
                )));
            }
            for (i, row) in m.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let ok = if i == j {
                        v.is_finite()
                    } else if what == "latency" {
                        v.is_finite() && v >= 0.0
                    } else {
                        v.is_finite() && v > 0.0
                    };
                    if !ok {
                        return Err(TopoError::invalid(format!(
                            "{what} from rank {i} to rank {j} is {v}; it must be {}",
                            if what == "latency" { "≥ 0" } else { "> 0" }
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// A topology with one host per machine and, for each rank, a device and a port: the
    /// device's link to its port carries everything the rank sends (at the best rate it
    /// was measured sending) and the link back everything it receives, and a direct link
    /// joins every pair of ports with the figures measured between them. So routing
    /// follows the measurements, a rank talking to several peers at once shares its own
    /// bandwidth, and hosts give the hierarchy its first level.
    pub fn to_topology(&self) -> Result<Topology, TopoError> {
        self.validate()?;
        let p = self.hosts.len();
        let mut b = TopologyBuilder::new("measured");
        let mut hosts: BTreeMap<&str, u32> = BTreeMap::new();
        let mut ranks = Vec::with_capacity(p);
        let mut ports = Vec::with_capacity(p);
        for (r, h) in self.hosts.iter().enumerate() {
            let host = match hosts.get(h.as_str()) {
                Some(&id) => id,
                None => {
                    let id = b.node(format!("host {h}"), NodeKind::Host)?;
                    hosts.insert(h, id);
                    id
                }
            };
            let dev = b.device(format!("rank{r}"), NodeKind::Cpu, host)?;
            let port = b.device(format!("rank{r}/port"), NodeKind::Nic, host)?;
            let out = (0..p)
                .filter(|&j| j != r)
                .map(|j| self.bandwidth[r][j])
                .fold(0.0, f64::max);
            let inn = (0..p)
                .filter(|&j| j != r)
                .map(|j| self.bandwidth[j][r])
                .fold(0.0, f64::max);
            if p > 1 {
                b.link(dev, port, out, 0.0)?;
                b.link(port, dev, inn, 0.0)?;
            }
            ranks.push(dev);
            ports.push(port);
        }
        for (i, &a) in ports.iter().enumerate() {
            for (j, &c) in ports.iter().enumerate() {
                if i != j {
                    b.link(a, c, self.bandwidth[i][j], self.latency[i][j])?;
                }
            }
        }
        b.place_all(ranks)?;
        b.build()
    }

    /// Seconds that one more peer in a round costs a rank (the cost model's per-message
    /// overhead): the median latency between two ranks of one host, or the smallest
    /// latency measured when no host has two ranks. Within a host the latency is all
    /// software, and where ranks share cores it includes the wait for the peer's turn on
    /// one, which a round with more peers pays once per peer; the smallest figure (one
    /// lucky pair) would leave that wait out, the median keeps it.
    pub fn peer_overhead(&self) -> f64 {
        let p = self.hosts.len();
        let pairs =
            || (0..p).flat_map(move |i| (0..p).filter(move |&j| j != i).map(move |j| (i, j)));
        let mut local: Vec<f64> = pairs()
            .filter(|&(i, j)| self.hosts[i] == self.hosts[j])
            .map(|(i, j)| self.latency[i][j])
            .collect();
        if local.is_empty() {
            return pairs()
                .map(|(i, j)| self.latency[i][j])
                .reduce(f64::min)
                .unwrap_or(0.0);
        }
        local.sort_by(f64::total_cmp);
        local[local.len() / 2]
    }
}

/// What merging a measurement changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Adjustment {
    pub link: String,
    pub modelled: f64,
    pub measured: f64,
}

/// Lowers the bandwidth of a topology's links where the matrix shows that a pair of ranks
/// gets much less (below `1 − tolerance` of the model) than the route between them
/// promises. The link blamed on each slow route is the one that the fewest healthy pairs
/// use (a link that healthy traffic crosses at full speed is not the slow one), the
/// narrowest on a tie, and it takes the measured figure. Never raises a bandwidth — a
/// measurement through a software stack cannot prove a link faster.
pub fn merge(
    t: &Topology,
    m: &LinkMatrix,
    tolerance: f64,
) -> Result<(Topology, Vec<Adjustment>), TopoError> {
    m.validate()?;
    if m.world() != t.world() {
        return Err(TopoError::invalid(format!(
            "the link matrix has {} ranks but the topology '{}' places {}",
            m.world(),
            t.name(),
            t.world()
        )));
    }
    let mut router = Router::new(t);
    let mut healthy_use: BTreeMap<u32, u32> = BTreeMap::new();
    let mut slow = Vec::new();
    for i in 0..t.world() {
        for j in (0..t.world()).filter(|&j| j != i) {
            let route = router.route(i, j)?;
            let measured = m.bandwidth[i as usize][j as usize];
            if measured < (1.0 - tolerance) * route.bottleneck {
                slow.push((route, measured));
            } else {
                for &(l, _) in &route.links {
                    *healthy_use.entry(l).or_default() += 1;
                }
            }
        }
    }
    let mut lowered: BTreeMap<u32, f64> = BTreeMap::new();
    for (route, measured) in slow {
        let blamed = route.links.iter().map(|&(l, _)| l).min_by(|&a, &b| {
            let key = |l: u32| {
                (
                    healthy_use.get(&l).copied().unwrap_or(0),
                    t.link(l).bandwidth,
                )
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1))
        });
        if let Some(l) = blamed {
            let slot = lowered.entry(l).or_insert(f64::INFINITY);
            *slot = slot.min(measured);
        }
    }
    let mut b = t.to_builder();
    let mut changes = Vec::new();
    for (l, bw) in lowered {
        changes.push(Adjustment {
            link: t.link_name(l),
            modelled: t.link(l).bandwidth,
            measured: bw,
        });
        b.links_mut()[l as usize].bandwidth = bw;
    }
    Ok((b.build()?, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tier;

    fn matrix() -> LinkMatrix {
        let hosts = ["a", "a", "b", "b"].map(String::from).to_vec();
        let f = |same: f64, other: f64| {
            (0..4)
                .map(|i| {
                    (0..4)
                        .map(|j| {
                            if i == j {
                                0.0
                            } else if i / 2 == j / 2 {
                                same
                            } else {
                                other
                            }
                        })
                        .collect()
                })
                .collect()
        };
        LinkMatrix {
            hosts,
            latency: f(2e-6, 40e-6),
            bandwidth: f(8e9, 1e9),
        }
    }

    #[test]
    fn matrix_topology_groups_by_host() {
        let t = matrix().to_topology().unwrap();
        assert_eq!(t.world(), 4);
        assert_eq!(t.rank_host(0), t.rank_host(1));
        assert_ne!(t.rank_host(1), t.rank_host(2));
        let mut r = Router::new(&t);
        assert_eq!(r.route(1, 3).unwrap().bottleneck, 1e9);
        let loc = crate::plans::Locality::of(&mut r).unwrap();
        assert_eq!(crate::plans::levels(&loc).len(), 1);
    }

    #[test]
    fn the_overhead_per_peer_is_the_typical_latency_within_a_host() {
        // Within hosts: 2 µs, but one pair measured while its ranks waited for cores.
        let mut m = matrix();
        m.latency[0][1] = 90e-6;
        assert_eq!(m.peer_overhead(), 2e-6);
        m.latency[1][0] = 80e-6;
        m.latency[2][3] = 70e-6;
        // Three of four same-host figures are slow: that is how this host's rounds go.
        assert_eq!(m.peer_overhead(), 80e-6);
        // One rank per host: the smallest latency; one rank: none.
        let two = m.restrict(&[0, 2]);
        assert_eq!(two.peer_overhead(), 40e-6);
        assert_eq!(m.restrict(&[3]).peer_overhead(), 0.0);
    }

    #[test]
    fn bad_matrices_are_refused() {
        let mut m = matrix();
        m.bandwidth[0][3] = 0.0;
        let e = m.to_topology().unwrap_err().to_string();
        assert!(e.contains("bandwidth from rank 0 to rank 3"), "{e}");
        let mut m = matrix();
        m.latency.pop();
        assert!(m.validate().unwrap_err().to_string().contains("4×4"));
    }

    #[test]
    fn merge_lowers_a_degraded_link() {
        // Two hosts on one switch, 10 GB/s each; the measurement sees 1 GB/s into host b.
        let mut b = TopologyBuilder::new("two");
        let sw = b.switch("sw", Tier::Leaf).unwrap();
        for h in ["a", "b"] {
            let host = b.node(h, NodeKind::Host).unwrap();
            for g in 0..2 {
                let d = b.device(format!("{h}/{g}"), NodeKind::Cpu, host).unwrap();
                b.connect(d, sw, 10e9, 1e-6).unwrap();
                b.place_all([d]).unwrap();
            }
        }
        let t = b.build().unwrap();
        let mut m = matrix();
        for row in m.bandwidth.iter_mut() {
            for v in row.iter_mut().filter(|v| **v > 0.0) {
                *v = 9.5e9;
            }
        }
        // Both ranks of host a see 1 GB/s into rank 2: the link into rank 2 is slow.
        m.bandwidth[0][2] = 1e9;
        m.bandwidth[1][2] = 1e9;
        let (merged, changes) = merge(&t, &m, 0.2).unwrap();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(
            (changes[0].link.as_str(), changes[0].measured),
            ("sw -> b/0", 1e9)
        );
        let mut r = Router::new(&merged);
        assert_eq!(r.route(0, 2).unwrap().bottleneck, 1e9);
        assert!(merge(
            &t,
            &LinkMatrix {
                hosts: vec!["a".into()],
                latency: vec![vec![0.0]],
                bandwidth: vec![vec![0.0]]
            },
            0.2
        )
        .is_err());
    }
}
