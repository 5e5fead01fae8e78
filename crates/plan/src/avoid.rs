//! Plans around dead links: a connection between two live ranks that failed (a cut cable,
//! a dead NIC port, a firewall rule) need not stop a job, as long as some plan reaches
//! every rank without it.
//!
//! | what | how |
//! |---|---|
//! | the dead set | [`DeadLinks`]: unordered pairs of ranks that must not exchange messages |
//! | does a plan use one? | [`first_used`] walks the plan's transfers |
//! | a ring without them | [`ring_order`]: a Hamiltonian cycle of the complete graph minus the dead pairs, found by a depth-first search that prefers the given order (bounded by [`SEARCH_STEPS`]) |
//! | a tree without them | [`spanning_tree`]: ranks placed in order, each under the first placed rank with fewer than [`TREE_FANOUT`] children it may talk to |
//! | the plans to try | [`detours`]: a ring in that order (all-reduce, all-gather, reduce-scatter) and a pipelined tree (all-reduce, broadcast, reduce); the other ranks relay what the dead pair would have exchanged |
//!
//! Which of those (or of the ordinary candidates that happen to avoid the dead set) runs is
//! the caller's choice by cost. Everything here is pure and deterministic.

use std::collections::BTreeSet;

use crate::algo::Algorithm;
use crate::ir::Rank;
use crate::schedule::Plan;
use crate::spec::{Collective, CollectiveSpec};

/// How many extension steps [`ring_order`] may try before it gives up (a dense graph needs
/// about one per rank; the bound keeps an adversarial dead set from taking long).
pub const SEARCH_STEPS: u64 = 1_000_000;

/// Children per rank that [`spanning_tree`] aims for (a binary tree: depth log₂ of the
/// world, each rank sending to two).
pub const TREE_FANOUT: usize = 2;

/// Unordered pairs of ranks whose connection is dead.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeadLinks(BTreeSet<(Rank, Rank)>);

impl DeadLinks {
    pub fn new() -> DeadLinks {
        DeadLinks::default()
    }

    /// Marks the link between `a` and `b` dead (either direction; a rank's link to itself
    /// is ignored).
    pub fn insert(&mut self, a: Rank, b: Rank) {
        if a != b {
            self.0.insert((a.min(b), a.max(b)));
        }
    }

    pub fn contains(&self, a: Rank, b: Rank) -> bool {
        self.0.contains(&(a.min(b), a.max(b)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The pairs, lower rank first, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Rank, Rank)> + '_ {
        self.0.iter().copied()
    }

    /// The dead links among `members`, renumbered by their position in it (a new
    /// communicator of those ranks, in that order).
    pub fn restrict(&self, members: &[Rank]) -> DeadLinks {
        let at = |r: Rank| members.iter().position(|&m| m == r).map(|i| i as Rank);
        let mut out = DeadLinks::new();
        for (a, b) in self.iter() {
            if let (Some(x), Some(y)) = (at(a), at(b)) {
                out.insert(x, y);
            }
        }
        out
    }

    /// The same links with each rank mapped through `f` (to world ranks and back).
    pub fn map(&self, f: impl Fn(Rank) -> Rank) -> DeadLinks {
        let mut out = DeadLinks::new();
        for (a, b) in self.iter() {
            out.insert(f(a), f(b));
        }
        out
    }
}

impl FromIterator<(Rank, Rank)> for DeadLinks {
    fn from_iter<I: IntoIterator<Item = (Rank, Rank)>>(iter: I) -> DeadLinks {
        let mut out = DeadLinks::new();
        for (a, b) in iter {
            out.insert(a, b);
        }
        out
    }
}

/// The first dead link (lower rank first) that `plan` sends a message over, if any.
pub fn first_used(plan: &Plan, dead: &DeadLinks) -> Option<(Rank, Rank)> {
    if dead.is_empty() {
        return None;
    }
    let mut transfers = Vec::new();
    for round in 0..plan.rounds() {
        transfers.clear();
        plan.transfers(round, &mut transfers);
        if let Some(t) = transfers.iter().find(|t| dead.contains(t.src, t.dst)) {
            return Some((t.src.min(t.dst), t.src.max(t.dst)));
        }
    }
    None
}

/// A ring through all `world` ranks with no dead link between neighbours (the last rank
/// next to the first), as close to `preferred` (a permutation of the ranks, e.g. a
/// topology's ring order; rank order when `None`) as the search finds: it starts where
/// `preferred` starts and tries the next ranks in `preferred`'s order first. `None` when
/// no such ring exists (three ranks and one dead link) or the search ran out of
/// [`SEARCH_STEPS`].
pub fn ring_order(world: u32, dead: &DeadLinks, preferred: Option<&[Rank]>) -> Option<Vec<Rank>> {
    let order: Vec<Rank> = match preferred {
        Some(p) if p.len() == world as usize => p.to_vec(),
        _ => (0..world).collect(),
    };
    let n = order.len();
    if n <= 1 {
        return Some(order);
    }
    // Depth-first: path[i] is the index into `order` of the i-th rank of the ring, and
    // next[i] the index the search tries next after it.
    let mut used = vec![false; n];
    let mut path: Vec<usize> = vec![0];
    let mut next: Vec<usize> = vec![1];
    used[0] = true;
    let mut steps = 0u64;
    while let Some(&last) = path.last() {
        if path.len() == n {
            // Two ranks are each other's both neighbours: the path's one link is the ring.
            if n == 2 || !dead.contains(order[last], order[path[0]]) {
                return Some(path.iter().map(|&i| order[i]).collect());
            }
            // Back out of the last rank and go on from where it was tried.
            used[last] = false;
            path.pop();
            next.pop();
            continue;
        }
        steps += 1;
        if steps > SEARCH_STEPS {
            return None;
        }
        let depth = path.len() - 1;
        let candidate =
            (next[depth]..n).find(|&i| !used[i] && !dead.contains(order[last], order[i]));
        match candidate {
            Some(i) => {
                next[depth] = i + 1;
                used[i] = true;
                path.push(i);
                next.push(0);
            }
            None => {
                if path.len() == 1 {
                    return None;
                }
                used[last] = false;
                path.pop();
                next.pop();
            }
        }
    }
    None
}

/// A tree over all `world` ranks rooted at `root` that uses no dead link: each rank's
/// parent (`None` for the root). Ranks are placed in rank order after the root, each under
/// the first placed rank with fewer than [`TREE_FANOUT`] children that it may talk to (or,
/// when all of those are full, under the first it may talk to at all), so the tree is as
/// shallow as a binary heap where the dead set allows. `None` when some rank can reach no
/// placed rank (the ranks without dead links to it are all placed later: then a second
/// pass places it), or the root is out of range.
pub fn spanning_tree(world: u32, root: Rank, dead: &DeadLinks) -> Option<Vec<Option<Rank>>> {
    if root >= world {
        return None;
    }
    let n = world as usize;
    let mut parents: Vec<Option<Rank>> = vec![None; n];
    let mut children = vec![0usize; n];
    let mut placed: Vec<Rank> = vec![root];
    let mut waiting: Vec<Rank> = (0..world).filter(|&r| r != root).collect();
    // Each pass places every waiting rank that can reach a placed one; a pass that places
    // none means the graph without the dead links is disconnected.
    while !waiting.is_empty() {
        let before = waiting.len();
        let mut still = Vec::new();
        for v in waiting {
            let talks = |u: &&Rank| !dead.contains(**u, v);
            let parent = placed
                .iter()
                .filter(talks)
                .find(|&&u| children[u as usize] < TREE_FANOUT)
                .or_else(|| placed.iter().find(talks))
                .copied();
            match parent {
                Some(u) => {
                    parents[v as usize] = Some(u);
                    children[u as usize] += 1;
                    placed.push(v);
                }
                None => still.push(v),
            }
        }
        if still.len() == before {
            return None;
        }
        waiting = still;
    }
    Some(parents)
}

/// Algorithms for `spec` built to avoid `dead` (see the module doc), the ring in an order
/// close to `preferred`. Empty when the collective has no such plan here (all-to-all,
/// gather, scatter and barrier: their ordinary algorithms may still avoid the set) or the
/// dead set leaves no ring or tree.
pub fn detours(
    spec: &CollectiveSpec,
    dead: &DeadLinks,
    preferred: Option<&[Rank]>,
) -> Vec<Algorithm> {
    use Collective::*;
    let mut out = Vec::new();
    let c = spec.collective;
    if matches!(c, AllReduce | AllGather | ReduceScatter) {
        if let Some(order) = ring_order(spec.world, dead, preferred) {
            out.push(Algorithm::Rings {
                orders: vec![order],
            });
        }
    }
    if matches!(c, AllReduce | Broadcast | Reduce) {
        let root = if c.rooted() { spec.root } else { 0 };
        if let Some(parents) = spanning_tree(spec.world, root, dead) {
            out.push(Algorithm::ParentTree { parents });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::PlanParams;
    use crate::{build, verify};
    use proptest::prelude::*;

    fn ring_ok(order: &[Rank], world: u32, dead: &DeadLinks) -> bool {
        let mut seen: Vec<Rank> = order.to_vec();
        seen.sort_unstable();
        let n = order.len();
        seen == (0..world).collect::<Vec<_>>()
            && (n < 3 || (0..n).all(|i| !dead.contains(order[i], order[(i + 1) % n])))
    }

    #[test]
    fn pairs_are_unordered_and_restrict_renumbers() {
        let mut d = DeadLinks::new();
        d.insert(3, 1);
        d.insert(1, 3);
        d.insert(2, 2);
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![(1, 3)]);
        assert!(d.contains(3, 1));
        // Members 3, 0, 1: rank 3 becomes 0, rank 1 becomes 2.
        assert_eq!(
            d.restrict(&[3, 0, 1]).iter().collect::<Vec<_>>(),
            vec![(0, 2)]
        );
        assert!(d.restrict(&[0, 1, 2]).is_empty());
        assert_eq!(d.map(|r| r + 10).iter().collect::<Vec<_>>(), vec![(11, 13)]);
    }

    #[test]
    fn a_ring_of_four_avoids_a_neighbour_link_and_three_ranks_cannot() {
        let d: DeadLinks = [(0, 1)].into_iter().collect();
        let order = ring_order(4, &d, None).unwrap();
        assert!(ring_ok(&order, 4, &d), "{order:?}");
        assert_eq!(order[0], 0);
        assert_eq!(ring_order(3, &d, None), None);
        // Nothing dead: the preferred order itself.
        assert_eq!(
            ring_order(5, &DeadLinks::new(), Some(&[4, 2, 0, 1, 3])),
            Some(vec![4, 2, 0, 1, 3])
        );
    }

    #[test]
    fn a_rank_cut_off_from_everyone_has_no_tree() {
        let d: DeadLinks = [(2, 0), (2, 1), (2, 3)].into_iter().collect();
        assert_eq!(spanning_tree(4, 0, &d), None);
        assert_eq!(ring_order(4, &d, None), None);
        assert_eq!(spanning_tree(4, 9, &DeadLinks::new()), None);
    }

    #[test]
    fn detours_of_every_collective_they_serve_verify_and_avoid() {
        let d: DeadLinks = [(0, 1), (2, 3), (4, 5)].into_iter().collect();
        for c in [
            Collective::AllReduce,
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::Broadcast,
            Collective::Reduce,
        ] {
            let spec = CollectiveSpec::new(c, 8, 8 * 24).with_root(1);
            let algs = detours(&spec, &d, None);
            assert!(!algs.is_empty(), "{c}");
            for a in algs {
                let plan = build(spec.clone(), a.clone(), PlanParams::default()).unwrap();
                verify(&plan).unwrap_or_else(|e| panic!("{c} {a:?}: {e}"));
                assert_eq!(first_used(&plan, &d), None, "{c} {a:?}");
            }
        }
        // The plain ring uses the first of them.
        let spec = CollectiveSpec::new(Collective::AllReduce, 8, 64);
        let ring = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        assert_eq!(first_used(&ring, &d), Some((0, 1)));
    }

    fn dead_set(world: u32) -> impl Strategy<Value = DeadLinks> {
        proptest::collection::vec((0..world, 0..world), 0..(world as usize))
            .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whenever the search answers, the ring is a permutation without dead neighbours;
        /// with fewer dead links per rank than half the others (Dirac's condition) it
        /// always answers.
        #[test]
        fn rings_avoid_and_exist_under_dirac(
            (world, dead) in (3u32..24).prop_flat_map(|w| (Just(w), dead_set(w)))
        ) {
            let order = ring_order(world, &dead, None);
            if let Some(o) = &order {
                prop_assert!(ring_ok(o, world, &dead), "{o:?}");
            }
            let max_dead_degree = (0..world)
                .map(|r| dead.iter().filter(|&(a, b)| a == r || b == r).count())
                .max()
                .unwrap_or(0);
            if (world as usize - 1 - max_dead_degree) * 2 >= world as usize {
                prop_assert!(order.is_some(), "{dead:?}");
            }
        }

        /// Trees avoid the dead set, reach every rank from the root, and exist whenever
        /// the graph without the dead links is connected; their plans verify.
        #[test]
        fn trees_avoid_and_verify(
            (world, dead, root) in (2u32..20).prop_flat_map(|w| (Just(w), dead_set(w), 0..w))
        ) {
            let connected = {
                let mut seen = vec![false; world as usize];
                let mut stack = vec![root];
                seen[root as usize] = true;
                while let Some(u) = stack.pop() {
                    for v in 0..world {
                        if !seen[v as usize] && !dead.contains(u, v) {
                            seen[v as usize] = true;
                            stack.push(v);
                        }
                    }
                }
                seen.iter().all(|&s| s)
            };
            let tree = spanning_tree(world, root, &dead);
            prop_assert_eq!(tree.is_some(), connected);
            if let Some(parents) = tree {
                for (v, p) in parents.iter().enumerate() {
                    match p {
                        None => prop_assert_eq!(v as Rank, root),
                        Some(u) => prop_assert!(!dead.contains(*u, v as Rank)),
                    }
                }
                let spec = CollectiveSpec::new(Collective::Broadcast, world, 40).with_root(root);
                let plan = build(spec, Algorithm::ParentTree { parents }, PlanParams::default())
                    .unwrap();
                prop_assert!(verify(&plan).is_ok());
                prop_assert_eq!(first_used(&plan, &dead), None);
            }
        }
    }
}
