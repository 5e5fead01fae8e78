//! The generators and the registry that picks one for a collective.
//!
//! Each generator lives in its own module and produces a [`Schedule`]. The registry checks
//! the request (spec, algorithm, parameters), handles what every algorithm shares (a world
//! of one rank, splitting data across channels) and dispatches.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::ir::Rank;
use crate::schedule::{Plan, PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

mod alltoall;
mod barrier;
mod binomial;
mod bruck;
pub(crate) mod compose;
mod direct;
mod hier;
pub(crate) mod partition;
mod recursive;
mod ring;
pub(crate) mod tree;

pub use hier::Hierarchy;
pub use tree::{double_binary_trees, Tree};

/// An algorithm, with whatever it needs beyond the collective spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum Algorithm {
    /// Rings and chains: pipelined, chunked, bandwidth-optimal.
    #[serde(rename = "ring")]
    Ring,
    /// Recursive doubling: lg p rounds of whole-buffer exchanges.
    #[serde(rename = "rd")]
    RecursiveDoubling,
    /// Recursive halving then doubling (Rabenseifner).
    #[serde(rename = "rhd")]
    Rabenseifner,
    /// Two complementary binary trees, each carrying half the data, pipelined.
    #[serde(rename = "tree")]
    DoubleBinaryTree,
    /// Binomial trees.
    #[serde(rename = "binomial")]
    Binomial,
    /// Bruck's log-round algorithms.
    #[serde(rename = "bruck")]
    Bruck,
    /// p−1 rounds, one peer per round.
    #[serde(rename = "pairwise")]
    Pairwise,
    /// Every transfer at once, straight to its destination.
    #[serde(rename = "direct")]
    Direct,
    /// Dissemination barrier.
    #[serde(rename = "dissemination")]
    Dissemination,
    /// A pipelined tree given by each rank's parent (`None` for the root); trees built from
    /// a topology plug in here.
    #[serde(rename = "parent-tree")]
    ParentTree { parents: Vec<Option<Rank>> },
    /// Hierarchical composition over groups of ranks.
    #[serde(rename = "hier")]
    Hierarchical(Box<Hierarchy>),
}

/// Every algorithm name, with the collectives it serves, in the order `plan --list` shows.
const TABLE: &[(&str, &[Collective])] = {
    use Collective::*;
    &[
        (
            "ring",
            &[AllReduce, AllGather, ReduceScatter, Broadcast, Reduce],
        ),
        ("rd", &[AllReduce]),
        ("rhd", &[AllReduce]),
        ("tree", &[AllReduce]),
        ("binomial", &[Broadcast, Reduce, Gather, Scatter]),
        ("bruck", &[AllGather, AllToAll]),
        ("pairwise", &[AllToAll, AllToAllV]),
        (
            "direct",
            &[
                AllReduce,
                AllGather,
                ReduceScatter,
                Broadcast,
                Reduce,
                Gather,
                Scatter,
                AllToAll,
                AllToAllV,
            ],
        ),
        ("dissemination", &[Barrier]),
        ("parent-tree", &[AllReduce, Broadcast, Reduce]),
        ("hier", &[AllReduce]),
    ]
};

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::RecursiveDoubling => "rd",
            Algorithm::Rabenseifner => "rhd",
            Algorithm::DoubleBinaryTree => "tree",
            Algorithm::Binomial => "binomial",
            Algorithm::Bruck => "bruck",
            Algorithm::Pairwise => "pairwise",
            Algorithm::Direct => "direct",
            Algorithm::Dissemination => "dissemination",
            Algorithm::ParentTree { .. } => "parent-tree",
            Algorithm::Hierarchical(_) => "hier",
        }
    }

    /// The name with what a composed algorithm is made of, as `topoccl plan compare`
    /// labels topology-aware candidates: `hier(intra|top)` (`top` runs across the highest
    /// level), and `topo-ring` for a ring in a given order (a hierarchy of one group).
    pub fn label(&self) -> String {
        match self {
            Algorithm::Hierarchical(h) if h.groups.len() == 1 && h.intra == Algorithm::Ring => {
                "topo-ring".to_string()
            }
            Algorithm::Hierarchical(h) => {
                let mut top = &h.inter;
                while let Algorithm::Hierarchical(inner) = top {
                    top = &inner.inter;
                }
                format!("hier({}|{})", h.intra.name(), top.name())
            }
            a => a.name().to_string(),
        }
    }

    /// Whether the algorithm can compute `collective`.
    pub fn serves(&self, collective: Collective) -> bool {
        serves(self.name(), collective)
    }

    /// Whether the data can be split across several channels for this collective: true
    /// when every op of the algorithm stays inside one block of the user buffers.
    fn splits_into_channels(&self, collective: Collective) -> bool {
        use Collective::*;
        match self {
            Algorithm::Bruck | Algorithm::Dissemination => false,
            Algorithm::Binomial => matches!(collective, Broadcast | Reduce),
            _ => collective != AllToAllV,
        }
    }
}

fn serves(name: &str, collective: Collective) -> bool {
    TABLE
        .iter()
        .any(|(n, cs)| *n == name && cs.contains(&collective))
}

/// The algorithms available for a collective, by name.
pub fn available(collective: Collective) -> Vec<&'static str> {
    TABLE
        .iter()
        .filter(|(_, cs)| cs.contains(&collective))
        .map(|(n, _)| *n)
        .collect()
}

/// The whole table: each algorithm name with the collectives it serves.
pub fn catalogue() -> &'static [(&'static str, &'static [Collective])] {
    TABLE
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = PlanError;

    /// Parses the algorithms that need no further arguments. `parent-tree` and `hier` are
    /// built with [`Tree`] and [`Hierarchy`].
    fn from_str(s: &str) -> Result<Self, PlanError> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ring" => Algorithm::Ring,
            "rd" | "recursive-doubling" => Algorithm::RecursiveDoubling,
            "rhd" | "rabenseifner" => Algorithm::Rabenseifner,
            "tree" | "dbt" | "double-binary-tree" => Algorithm::DoubleBinaryTree,
            "binomial" => Algorithm::Binomial,
            "bruck" => Algorithm::Bruck,
            "pairwise" => Algorithm::Pairwise,
            "direct" => Algorithm::Direct,
            "dissemination" => Algorithm::Dissemination,
            "parent-tree" | "hier" => {
                return Err(PlanError::param(
                    "algorithm",
                    format!(
                        "'{s}' needs more than a name: {}",
                        if s == "hier" {
                            "the groups of ranks and the algorithm per level"
                        } else {
                            "the parent of every rank"
                        }
                    ),
                ))
            }
            _ => {
                return Err(PlanError::UnknownName {
                    what: "algorithm",
                    given: s.to_string(),
                    allowed: TABLE.iter().map(|(n, _)| n.to_string()).collect(),
                })
            }
        })
    }
}

/// Plans `spec` with `algorithm`.
pub fn build(
    spec: CollectiveSpec,
    algorithm: Algorithm,
    params: PlanParams,
) -> Result<Plan, PlanError> {
    let spec = Arc::new(spec);
    let schedule = build_schedule(&spec, &algorithm, &params)?;
    Ok(Plan::new(spec, algorithm, params, schedule))
}

/// Builds the schedule for a spec; composite generators call this for their parts.
pub(crate) fn build_schedule(
    spec: &Arc<CollectiveSpec>,
    algorithm: &Algorithm,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    spec.validate()?;
    params.validate()?;
    if !algorithm.serves(spec.collective) {
        return Err(PlanError::UnsupportedAlgorithm {
            collective: spec.collective,
            algorithm: algorithm.name().to_string(),
            available: available(spec.collective)
                .into_iter()
                .map(String::from)
                .collect(),
        });
    }
    // Algorithm arguments are checked even when a one-rank world makes them moot, so that
    // a wrong tree or grouping is reported where it was written.
    match algorithm {
        Algorithm::ParentTree { parents } => {
            Tree::from_parents(parents.clone(), spec.world)?.check_root(spec)?;
        }
        Algorithm::Hierarchical(h) => h.validate(spec.world)?,
        _ => {}
    }
    if spec.world == 1 {
        return Ok(Arc::new(compose::Local::new(spec)));
    }
    if params.channels > 1 {
        if !algorithm.splits_into_channels(spec.collective) {
            return Err(PlanError::param(
                "channels",
                format!(
                    "{} for {} moves data across block boundaries and runs on one channel; \
                     use --channels 1 (or --chunks to pipeline)",
                    algorithm.name(),
                    spec.collective
                ),
            ));
        }
        return compose::Channels::build(spec, algorithm, params);
    }
    generate(spec, algorithm, params)
}

/// Dispatches to the generator of one algorithm on one channel.
fn generate(
    spec: &Arc<CollectiveSpec>,
    algorithm: &Algorithm,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    use Collective::*;
    let c = spec.collective;
    Ok(match (algorithm, c) {
        (Algorithm::Ring, AllReduce) => Arc::new(ring::RingAllReduce::new(spec, params)),
        (Algorithm::Ring, AllGather) => Arc::new(ring::RingAllGather::new(spec, params)),
        (Algorithm::Ring, ReduceScatter) => Arc::new(ring::RingReduceScatter::new(spec, params)),
        (Algorithm::Ring, Broadcast | Reduce) => tree::chain(spec, params),
        (Algorithm::RecursiveDoubling, _) => recursive::recursive_doubling(spec, params)?,
        (Algorithm::Rabenseifner, _) => recursive::rabenseifner(spec, params)?,
        (Algorithm::DoubleBinaryTree, _) => tree::double_binary_tree(spec, params),
        (Algorithm::ParentTree { parents }, _) => tree::parent_tree(
            spec,
            params,
            Tree::from_parents(parents.clone(), spec.world)?,
        )?,
        (Algorithm::Binomial, _) => binomial::binomial(spec, params)?,
        (Algorithm::Bruck, _) => bruck::bruck(spec, params)?,
        (Algorithm::Pairwise, _) => alltoall::pairwise(spec, params)?,
        (Algorithm::Direct, _) => direct::direct(spec, params)?,
        (Algorithm::Dissemination, _) => barrier::dissemination(spec),
        (Algorithm::Hierarchical(h), _) => hier::hierarchical(spec, params, h)?,
        (Algorithm::Ring, _) => unreachable!("table checked: ring serves {c}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_name_parses_or_needs_arguments() {
        for (name, _) in TABLE {
            match name.parse::<Algorithm>() {
                Ok(a) => assert_eq!(a.name(), *name),
                Err(e) => assert!(e.to_string().contains("needs more"), "{e}"),
            }
        }
    }

    #[test]
    fn unsupported_algorithm_lists_alternatives() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 16);
        let err = build(spec, Algorithm::Bruck, PlanParams::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bruck") && msg.contains("ring") && msg.contains("rhd"),
            "{msg}"
        );
    }
}
