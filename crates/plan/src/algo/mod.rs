//! The generators and the registry that picks one for a collective.
//!
//! Each generator lives in its own module and produces a [`Schedule`]. The registry checks
//! the request (spec, algorithm, parameters), handles what every algorithm shares (a world
//! of one rank, splitting data across channels) and dispatches.
//!
//! Every algorithm's name, aliases, collectives and description are written once, in
//! [`table`]; parsing, display, [`available`], the plan documents' `name` field and the
//! help text are derived from it. Code outside this module names algorithms by
//! [`AlgoKind`] or [`Algorithm`], never by matching strings.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

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
pub mod rings;
pub(crate) mod tree;

pub use hier::Hierarchy;
pub use tree::{double_binary_trees, Tree};

/// An algorithm, with whatever it needs beyond the collective spec. Its name and what it
/// serves are in the [`table`], under its [`AlgoKind`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AlgorithmDoc<'static>")]
pub enum Algorithm {
    Ring,
    RecursiveDoubling,
    Rabenseifner,
    DoubleBinaryTree,
    Binomial,
    Bruck,
    Pairwise,
    Direct,
    Dissemination,
    /// A pipelined tree given by each rank's parent (`None` for the root); trees built from
    /// a topology plug in here.
    ParentTree {
        parents: Vec<Option<Rank>>,
    },
    /// Hierarchical composition over groups of ranks.
    Hierarchical(Box<Hierarchy>),
    /// Rings with channels: channel `k` runs a ring in rank order `orders[k]` on its share
    /// of the data ([`rings`]); orders made from a topology use every NIC of a host.
    Rings {
        orders: Vec<Vec<Rank>>,
    },
}

/// What kind of algorithm, without the arguments some kinds need: one per [`table`] entry,
/// in the table's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlgoKind {
    Ring,
    RecursiveDoubling,
    Rabenseifner,
    DoubleBinaryTree,
    Binomial,
    Bruck,
    Pairwise,
    Direct,
    Dissemination,
    ParentTree,
    Hierarchical,
    Rings,
}

/// One algorithm of the [`table`].
#[derive(Debug)]
pub struct Entry {
    pub kind: AlgoKind,
    /// The name users type and see (CLI, `TOPOCCL_ALGO`, rules files, plan documents).
    pub name: &'static str,
    /// Other spellings accepted when parsing (case does not matter either).
    pub aliases: &'static [&'static str],
    /// The collectives it computes.
    pub serves: &'static [Collective],
    /// One line for help text.
    pub summary: &'static str,
    /// The algorithm itself when the name is enough.
    pub plain: Option<Algorithm>,
    /// What it needs beyond its name when it is not enough.
    pub needs: Option<&'static str>,
}

/// Every algorithm, in the order `plan --list` shows them and [`available`] returns them.
static TABLE: [Entry; 12] = {
    use Collective::*;
    const EVERY_DATA_COLLECTIVE: &[Collective] = &[
        AllReduce,
        AllGather,
        ReduceScatter,
        Broadcast,
        Reduce,
        Gather,
        Scatter,
        AllToAll,
        AllToAllV,
    ];
    [
        Entry {
            kind: AlgoKind::Ring,
            name: "ring",
            aliases: &[],
            serves: &[AllReduce, AllGather, ReduceScatter, Broadcast, Reduce],
            summary: "rings (chains for rooted collectives): pipelined, bandwidth-optimal",
            plain: Some(Algorithm::Ring),
            needs: None,
        },
        Entry {
            kind: AlgoKind::RecursiveDoubling,
            name: "rd",
            aliases: &["recursive-doubling"],
            serves: &[AllReduce],
            summary: "recursive doubling: lg p rounds of whole-buffer exchanges",
            plain: Some(Algorithm::RecursiveDoubling),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Rabenseifner,
            name: "rhd",
            aliases: &["rabenseifner"],
            serves: &[AllReduce],
            summary: "recursive halving then doubling (Rabenseifner)",
            plain: Some(Algorithm::Rabenseifner),
            needs: None,
        },
        Entry {
            kind: AlgoKind::DoubleBinaryTree,
            name: "tree",
            aliases: &["dbt", "double-binary-tree"],
            serves: &[AllReduce],
            summary: "two complementary binary trees, each carrying half the data, pipelined",
            plain: Some(Algorithm::DoubleBinaryTree),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Binomial,
            name: "binomial",
            aliases: &[],
            serves: &[Broadcast, Reduce, Gather, Scatter],
            summary: "binomial trees: lg p rounds",
            plain: Some(Algorithm::Binomial),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Bruck,
            name: "bruck",
            aliases: &[],
            serves: &[AllGather, AllToAll],
            summary: "Bruck's algorithms: lg p rounds",
            plain: Some(Algorithm::Bruck),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Pairwise,
            name: "pairwise",
            aliases: &[],
            serves: &[AllToAll, AllToAllV],
            summary: "p−1 rounds, one peer per round",
            plain: Some(Algorithm::Pairwise),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Direct,
            name: "direct",
            aliases: &[],
            serves: EVERY_DATA_COLLECTIVE,
            summary: "every transfer at once, straight to its destination",
            plain: Some(Algorithm::Direct),
            needs: None,
        },
        Entry {
            kind: AlgoKind::Dissemination,
            name: "dissemination",
            aliases: &[],
            serves: &[Barrier],
            summary: "dissemination barrier: lg p rounds",
            plain: Some(Algorithm::Dissemination),
            needs: None,
        },
        Entry {
            kind: AlgoKind::ParentTree,
            name: "parent-tree",
            aliases: &[],
            serves: &[AllReduce, Broadcast, Reduce],
            summary: "a pipelined tree given by each rank's parent",
            plain: None,
            needs: Some("the parent of every rank"),
        },
        Entry {
            kind: AlgoKind::Hierarchical,
            name: "hier",
            aliases: &[],
            serves: &[AllReduce],
            summary: "reduce-scatter in groups, all-reduce across them, all-gather in groups",
            plain: None,
            needs: Some("the groups of ranks and the algorithm per level"),
        },
        Entry {
            kind: AlgoKind::Rings,
            name: "rings",
            aliases: &["multi-ring"],
            serves: &[AllReduce, AllGather, ReduceScatter],
            summary: "rings with channels, each channel a ring in its own rank order",
            plain: None,
            needs: Some("one rank order per channel"),
        },
    ]
};

/// The whole table, in listing order.
pub fn table() -> &'static [Entry] {
    &TABLE
}

impl AlgoKind {
    /// This kind's entry of the [`table`].
    pub fn entry(self) -> &'static Entry {
        // The table lists the kinds in declaration order (a test checks it).
        &TABLE[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// Whether the algorithm can compute `collective`.
    pub fn serves(self, collective: Collective) -> bool {
        self.entry().serves.contains(&collective)
    }

    /// The algorithm, when its name is all it needs; otherwise an error saying what else
    /// it needs.
    pub fn algorithm(self) -> Result<Algorithm, PlanError> {
        let e = self.entry();
        e.plain.clone().ok_or_else(|| {
            PlanError::param(
                "algorithm",
                format!(
                    "'{}' needs more than a name: {}",
                    e.name,
                    e.needs.unwrap_or("arguments")
                ),
            )
        })
    }
}

impl fmt::Display for AlgoKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AlgoKind {
    type Err = PlanError;

    /// A name or alias of the [`table`], in any case.
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let lower = s.to_ascii_lowercase();
        TABLE
            .iter()
            .find(|e| e.name == lower || e.aliases.contains(&lower.as_str()))
            .map(|e| e.kind)
            .ok_or_else(|| PlanError::UnknownName {
                what: "algorithm",
                given: s.to_string(),
                allowed: TABLE.iter().map(|e| e.name.to_string()).collect(),
            })
    }
}

impl Algorithm {
    pub fn kind(&self) -> AlgoKind {
        match self {
            Algorithm::Ring => AlgoKind::Ring,
            Algorithm::RecursiveDoubling => AlgoKind::RecursiveDoubling,
            Algorithm::Rabenseifner => AlgoKind::Rabenseifner,
            Algorithm::DoubleBinaryTree => AlgoKind::DoubleBinaryTree,
            Algorithm::Binomial => AlgoKind::Binomial,
            Algorithm::Bruck => AlgoKind::Bruck,
            Algorithm::Pairwise => AlgoKind::Pairwise,
            Algorithm::Direct => AlgoKind::Direct,
            Algorithm::Dissemination => AlgoKind::Dissemination,
            Algorithm::ParentTree { .. } => AlgoKind::ParentTree,
            Algorithm::Hierarchical(_) => AlgoKind::Hierarchical,
            Algorithm::Rings { .. } => AlgoKind::Rings,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The name with what a composed algorithm is made of, as `topoccl plan compare`
    /// labels topology-aware candidates: `hier(intra|top)` (`top` runs across the highest
    /// level, [`hier_label`]), and [`TOPO_RING`] for a ring in a given order (a hierarchy
    /// of one group).
    pub fn label(&self) -> String {
        match self {
            Algorithm::Hierarchical(h) if h.groups.len() == 1 && h.intra == Algorithm::Ring => {
                TOPO_RING.to_string()
            }
            Algorithm::Hierarchical(h) => {
                let mut top = &h.inter;
                while let Algorithm::Hierarchical(inner) = top {
                    top = &inner.inter;
                }
                hier_label(h.intra.kind(), top.kind())
            }
            a => a.name().to_string(),
        }
    }

    /// Whether the algorithm can compute `collective`.
    pub fn serves(&self, collective: Collective) -> bool {
        self.kind().serves(collective)
    }

    /// Whether the data can be split across several channels for this collective: true
    /// when every op of the algorithm stays inside one block of the user buffers.
    fn splits_into_channels(&self, collective: Collective) -> bool {
        use Collective::*;
        match self {
            // Its orders are its channels.
            Algorithm::Bruck | Algorithm::Dissemination | Algorithm::Rings { .. } => false,
            Algorithm::Binomial => matches!(collective, Broadcast | Reduce),
            _ => collective != AllToAllV,
        }
    }
}

/// The label of a ring in a topology-made order ([`Algorithm::label`]).
pub const TOPO_RING: &str = "topo-ring";

/// The label of a hierarchy whose groups run `intra` and whose highest level runs `top`:
/// `hier(ring|rd)`.
pub fn hier_label(intra: AlgoKind, top: AlgoKind) -> String {
    format!("{}({intra}|{top})", AlgoKind::Hierarchical)
}

/// The parts of a label spelled like [`hier_label`]'s, when both are algorithms that need
/// nothing but their name.
pub fn parse_hier_label(s: &str) -> Option<(AlgoKind, AlgoKind)> {
    let inner = s
        .strip_prefix(AlgoKind::Hierarchical.name())?
        .strip_prefix('(')?
        .strip_suffix(')')?;
    let (intra, top) = inner.split_once('|')?;
    let plain = |name: &str| {
        name.parse::<AlgoKind>()
            .ok()
            .filter(|k| k.entry().plain.is_some())
    };
    Some((plain(intra)?, plain(top)?))
}

/// The algorithms available for a collective, in [`table`] order.
pub fn available(collective: Collective) -> Vec<AlgoKind> {
    TABLE
        .iter()
        .filter(|e| e.serves.contains(&collective))
        .map(|e| e.kind)
        .collect()
}

/// The names of the algorithms available for a collective, for messages: `ring, rd, rhd`.
pub fn available_names(collective: Collective) -> String {
    available(collective)
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Worlds above this many ranks do not try `direct` among the flat algorithms: it posts
/// p−1 messages at once per rank.
pub const DIRECT_MAX_RANKS: u32 = 16;

/// The flat algorithms worth trying for `spec` when choosing one: those that need nothing
/// but their name (trees and hierarchies need arguments), `direct` only up to
/// [`DIRECT_MAX_RANKS`] ranks.
pub fn flat(spec: &CollectiveSpec) -> Vec<Algorithm> {
    TABLE
        .iter()
        .filter(|e| e.serves.contains(&spec.collective))
        .filter(|e| e.kind != AlgoKind::Direct || spec.world <= DIRECT_MAX_RANKS)
        .filter_map(|e| e.plain.clone())
        .collect()
}

/// The error for `algorithm` asked to compute `collective`, listing what can.
pub(crate) fn unsupported(algorithm: AlgoKind, collective: Collective) -> PlanError {
    PlanError::UnsupportedAlgorithm {
        collective,
        algorithm: algorithm.name().to_string(),
        available: available(collective)
            .iter()
            .map(|k| k.name().to_string())
            .collect(),
    }
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
        s.parse::<AlgoKind>()?.algorithm()
    }
}

/// An algorithm as plan documents write it: `{"name": "ring"}`, `{"name": "parent-tree",
/// "parents": [...]}`, `{"name": "hier", "groups": [...], "intra": {...}, "inter": {...}}`.
#[derive(Serialize, Deserialize)]
struct AlgorithmDoc<'a> {
    name: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parents: Option<Cow<'a, [Option<Rank>]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    groups: Option<Cow<'a, [Vec<Rank>]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intra: Option<Cow<'a, Algorithm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inter: Option<Cow<'a, Algorithm>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    orders: Option<Cow<'a, [Vec<Rank>]>>,
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut doc = AlgorithmDoc {
            name: Cow::Borrowed(self.name()),
            parents: None,
            groups: None,
            intra: None,
            inter: None,
            orders: None,
        };
        match self {
            Algorithm::ParentTree { parents } => doc.parents = Some(Cow::Borrowed(parents)),
            Algorithm::Hierarchical(h) => {
                doc.groups = Some(Cow::Borrowed(&h.groups));
                doc.intra = Some(Cow::Borrowed(&h.intra));
                doc.inter = Some(Cow::Borrowed(&h.inter));
            }
            Algorithm::Rings { orders } => doc.orders = Some(Cow::Borrowed(orders)),
            _ => {}
        }
        doc.serialize(s)
    }
}

impl TryFrom<AlgorithmDoc<'static>> for Algorithm {
    type Error = PlanError;

    /// Names are the table's own (no aliases): documents are written by programs.
    fn try_from(doc: AlgorithmDoc<'static>) -> Result<Self, PlanError> {
        let Some(entry) = TABLE.iter().find(|e| e.name == doc.name) else {
            return Err(PlanError::UnknownName {
                what: "algorithm",
                given: doc.name.into_owned(),
                allowed: TABLE.iter().map(|e| e.name.to_string()).collect(),
            });
        };
        let missing = |what: &str| {
            PlanError::param(
                "algorithm",
                format!(
                    "'{}' needs '{what}' ({})",
                    entry.name,
                    entry.needs.unwrap_or("")
                ),
            )
        };
        let needs_parents = entry.kind == AlgoKind::ParentTree;
        let needs_levels = entry.kind == AlgoKind::Hierarchical;
        for (field, given, allowed) in [
            ("parents", doc.parents.is_some(), needs_parents),
            ("groups", doc.groups.is_some(), needs_levels),
            ("intra", doc.intra.is_some(), needs_levels),
            ("inter", doc.inter.is_some(), needs_levels),
            (
                "orders",
                doc.orders.is_some(),
                entry.kind == AlgoKind::Rings,
            ),
        ] {
            if given && !allowed {
                return Err(PlanError::param(
                    "algorithm",
                    format!("'{}' takes no '{field}'", entry.name),
                ));
            }
        }
        match entry.kind {
            AlgoKind::ParentTree => Ok(Algorithm::ParentTree {
                parents: doc.parents.ok_or_else(|| missing("parents"))?.into_owned(),
            }),
            AlgoKind::Hierarchical => Ok(Algorithm::Hierarchical(Box::new(Hierarchy {
                groups: doc.groups.ok_or_else(|| missing("groups"))?.into_owned(),
                intra: doc.intra.ok_or_else(|| missing("intra"))?.into_owned(),
                inter: doc.inter.ok_or_else(|| missing("inter"))?.into_owned(),
            }))),
            AlgoKind::Rings => Ok(Algorithm::Rings {
                orders: doc.orders.ok_or_else(|| missing("orders"))?.into_owned(),
            }),
            k => k.algorithm(),
        }
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
        return Err(unsupported(algorithm.kind(), spec.collective));
    }
    // Algorithm arguments are checked even when a one-rank world makes them moot, so that
    // a wrong tree or grouping is reported where it was written.
    match algorithm {
        Algorithm::ParentTree { parents } => {
            Tree::from_parents(parents.clone(), spec.world)?.check_root(spec)?;
        }
        Algorithm::Hierarchical(h) => h.validate(spec.world)?,
        Algorithm::Rings { orders } => {
            rings::check_orders(orders, spec.world)?;
            if params.channels > 1 {
                return Err(PlanError::param(
                    "channels",
                    format!(
                        "rings runs one channel per order ({} given); give more orders instead \
                         of --channels {}",
                        orders.len(),
                        params.channels
                    ),
                ));
            }
        }
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
        (Algorithm::Rings { orders }, _) => rings::rings(spec, params, orders)?,
        (Algorithm::Ring, _) => unreachable!("table checked: ring serves {c}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_kind_once_in_declaration_order() {
        for (i, e) in TABLE.iter().enumerate() {
            assert_eq!(e.kind as usize, i, "{}", e.name);
            assert_eq!(e.kind.entry().name, e.name);
            // Exactly one of: the name is enough, or it says what else it needs.
            assert_eq!(e.plain.is_some(), e.needs.is_none(), "{}", e.name);
            if let Some(a) = &e.plain {
                assert_eq!(a.kind(), e.kind);
            }
        }
        let mut spellings: Vec<&str> = TABLE
            .iter()
            .flat_map(|e| std::iter::once(e.name).chain(e.aliases.iter().copied()))
            .collect();
        let n = spellings.len();
        spellings.sort();
        spellings.dedup();
        assert_eq!(spellings.len(), n, "a name or alias is used twice");
    }

    #[test]
    fn names_and_aliases_parse_in_any_case() {
        for e in &TABLE {
            for s in std::iter::once(e.name).chain(e.aliases.iter().copied()) {
                assert_eq!(s.parse::<AlgoKind>().unwrap(), e.kind);
                assert_eq!(s.to_uppercase().parse::<AlgoKind>().unwrap(), e.kind);
                match s.parse::<Algorithm>() {
                    Ok(a) => assert_eq!(a.name(), e.name),
                    Err(err) => {
                        let m = err.to_string();
                        assert!(m.contains("needs more") && m.contains(e.name), "{m}");
                    }
                }
            }
        }
    }

    #[test]
    fn documents_name_algorithms_as_the_table_does() {
        let hier = Algorithm::Hierarchical(Box::new(
            Hierarchy::contiguous(4, 2, Algorithm::Ring, Algorithm::Rabenseifner).unwrap(),
        ));
        let tree = Algorithm::ParentTree {
            parents: vec![None, Some(0), Some(0)],
        };
        let mut all: Vec<Algorithm> = TABLE.iter().filter_map(|e| e.plain.clone()).collect();
        all.extend([tree, hier]);
        for a in all {
            let json = serde_json::to_string(&a).unwrap();
            assert!(
                json.starts_with(&format!(r#"{{"name":"{}""#, a.name())),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<Algorithm>(&json).unwrap(), a);
        }
        let h = r#"{"name":"hier","groups":[[0,1],[2,3]],"intra":{"name":"ring"},"inter":{"name":"rhd"}}"#;
        let a: Algorithm = serde_json::from_str(h).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), h);
        for (bad, needle) in [
            (r#"{"name":"warp"}"#, "warp"),
            (r#"{"name":"parent-tree"}"#, "parents"),
            (r#"{"name":"ring","parents":[null]}"#, "takes no 'parents'"),
            (
                r#"{"name":"hier","groups":[[0]],"intra":{"name":"ring"}}"#,
                "inter",
            ),
            (
                r#"{"name":"hier","groups":[[0]],"intra":{"name":"nope"},"inter":{"name":"rd"}}"#,
                "nope",
            ),
        ] {
            let e = serde_json::from_str::<Algorithm>(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn labels_round_trip() {
        let l = hier_label(AlgoKind::Ring, AlgoKind::RecursiveDoubling);
        assert_eq!(l, "hier(ring|rd)");
        assert_eq!(
            parse_hier_label(&l),
            Some((AlgoKind::Ring, AlgoKind::RecursiveDoubling))
        );
        for bad in [
            "hier(ring)",
            "hier(ring|warp)",
            "hier(ring|rd",
            "hier(parent-tree|rd)",
        ] {
            assert_eq!(parse_hier_label(bad), None, "{bad}");
        }
    }

    #[test]
    fn flat_algorithms_need_no_arguments_and_skip_direct_on_large_worlds() {
        let small = CollectiveSpec::new(Collective::AllReduce, 16, 64);
        let names: Vec<_> = flat(&small).iter().map(|a| a.name()).collect();
        assert_eq!(names, ["ring", "rd", "rhd", "tree", "direct"]);
        let large = CollectiveSpec::new(Collective::AllReduce, 17, 64);
        assert!(!flat(&large).contains(&Algorithm::Direct));
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
