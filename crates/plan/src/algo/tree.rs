//! Pipelined trees: one generator for every tree-shaped plan — chains (ring broadcast and
//! reduce), a tree given by a parent array (e.g. built from a topology), and the double
//! binary tree.
//!
//! The data a tree carries is cut into `chunks` pieces. Reduction flows up: a rank of
//! height `h` (leaves have height 0) sends piece `j` to its parent in round `h + j`, after
//! its children's pieces arrived in earlier rounds. Broadcast flows down: a rank at depth
//! `d` receives piece `j` in round `S + d − 1 + j` and forwards it in round `S + d + j`,
//! where `S` is 0 for a broadcast and the root's height for an all-reduce. So a tree of
//! height `H` finishes an all-reduce in `2H + chunks − 1` rounds.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::partition::split;

/// A rooted spanning tree over the ranks of a world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    parents: Vec<Option<Rank>>,
    root: Rank,
    child_start: Vec<u32>,
    /// Children of each rank, ordered by (height, rank): the order in which their data
    /// arrives when reducing.
    children: Vec<Rank>,
    height: Vec<u32>,
    depth: Vec<u32>,
}

impl Tree {
    /// Builds and checks a tree from each rank's parent (`None` for the root).
    pub fn from_parents(parents: Vec<Option<Rank>>, world: u32) -> Result<Tree, PlanError> {
        let p = world as usize;
        if parents.len() != p {
            return Err(PlanError::InvalidTree(format!(
                "the parent array has {} entries for a world of {world} ranks; give one \
                 parent per rank",
                parents.len()
            )));
        }
        let roots: Vec<usize> = (0..p).filter(|&r| parents[r].is_none()).collect();
        let root = match roots.as_slice() {
            [r] => *r as Rank,
            [] => {
                return Err(PlanError::InvalidTree(
                    "every rank has a parent, so there is no root; mark exactly one rank \
                     as the root"
                        .into(),
                ))
            }
            [a, b, ..] => {
                return Err(PlanError::InvalidTree(format!(
                    "ranks {a} and {b} both have no parent; a tree has exactly one root"
                )))
            }
        };
        for (r, par) in parents.iter().enumerate() {
            if let Some(q) = *par {
                if q as usize >= p {
                    return Err(PlanError::InvalidTree(format!(
                        "rank {r} has parent {q}, outside the world of {world} ranks"
                    )));
                }
                if q as usize == r {
                    return Err(PlanError::InvalidTree(format!(
                        "rank {r} is its own parent"
                    )));
                }
            }
        }
        // Depth of every rank by walking up; a walk longer than the world is a cycle.
        const UNKNOWN: u32 = u32::MAX;
        let mut depth = vec![UNKNOWN; p];
        depth[root as usize] = 0;
        let mut path = Vec::new();
        for start in 0..p {
            let mut v = start;
            path.clear();
            while depth[v] == UNKNOWN {
                path.push(v);
                if path.len() > p {
                    let cycle: Vec<String> = path.iter().take(8).map(|x| x.to_string()).collect();
                    return Err(PlanError::InvalidTree(format!(
                        "the parent chain from rank {start} loops ({} -> …) and never \
                         reaches the root {root}",
                        cycle.join(" -> ")
                    )));
                }
                v = parents[v].expect("only the root has no parent") as usize;
            }
            let mut d = depth[v];
            for &u in path.iter().rev() {
                d += 1;
                depth[u] = d;
            }
        }
        let mut order: Vec<usize> = (0..p).collect();
        order.sort_by_key(|&v| std::cmp::Reverse(depth[v]));
        let mut height = vec![0u32; p];
        for &v in &order {
            if let Some(q) = parents[v] {
                let q = q as usize;
                height[q] = height[q].max(height[v] + 1);
            }
        }
        let mut counts = vec![0u32; p + 1];
        for q in parents.iter().flatten() {
            counts[*q as usize + 1] += 1;
        }
        for i in 0..p {
            counts[i + 1] += counts[i];
        }
        let child_start = counts;
        let mut fill = child_start.clone();
        let mut children = vec![0; p.saturating_sub(1)];
        for (v, q) in parents.iter().enumerate() {
            if let Some(q) = *q {
                children[fill[q as usize] as usize] = v as Rank;
                fill[q as usize] += 1;
            }
        }
        for q in 0..p {
            let (a, b) = (child_start[q] as usize, child_start[q + 1] as usize);
            children[a..b].sort_by_key(|&c| (height[c as usize], c));
        }
        Ok(Tree {
            parents,
            root,
            child_start,
            children,
            height,
            depth,
        })
    }

    pub fn world(&self) -> u32 {
        self.parents.len() as u32
    }

    pub fn root(&self) -> Rank {
        self.root
    }

    pub fn parent(&self, rank: Rank) -> Option<Rank> {
        self.parents[rank as usize]
    }

    pub fn parents(&self) -> &[Option<Rank>] {
        &self.parents
    }

    /// Children, in the order their reductions arrive (by height, then rank).
    pub fn children(&self, rank: Rank) -> &[Rank] {
        let r = rank as usize;
        &self.children[self.child_start[r] as usize..self.child_start[r + 1] as usize]
    }

    pub fn height(&self, rank: Rank) -> u32 {
        self.height[rank as usize]
    }

    pub fn depth(&self, rank: Rank) -> u32 {
        self.depth[rank as usize]
    }

    /// Height of the whole tree (the root's).
    pub fn tree_height(&self) -> u32 {
        self.height[self.root as usize]
    }

    pub fn max_depth(&self) -> u32 {
        self.depth.iter().copied().max().unwrap_or(0)
    }

    pub fn is_interior(&self, rank: Rank) -> bool {
        !self.children(rank).is_empty()
    }

    /// Broadcast and reduce have a root of their own; the tree must be rooted there.
    pub fn check_root(&self, spec: &CollectiveSpec) -> Result<(), PlanError> {
        if spec.collective.rooted() && spec.root != self.root {
            return Err(PlanError::InvalidTree(format!(
                "the tree is rooted at rank {} but the {} has root {}; root the tree at {}",
                self.root, spec.collective, spec.root, spec.root
            )));
        }
        Ok(())
    }
}

/// What a pipelined tree computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Reduce,
    Broadcast,
    AllReduce,
}

impl Mode {
    fn reduces(self) -> bool {
        self != Mode::Broadcast
    }

    fn broadcasts(self) -> bool {
        self != Mode::Reduce
    }
}

/// One tree carrying one contiguous part of the data on one channel.
#[derive(Debug)]
struct Part {
    tree: Arc<Tree>,
    off: u64,
    len: u64,
    channel: u16,
    /// Round at which the broadcast phase starts at the root.
    bcast_start: u32,
    rounds: u32,
}

/// A set of pipelined trees, each carrying a share of the data.
#[derive(Debug)]
pub struct PipelinedTree {
    mode: Mode,
    parts: Vec<Part>,
    chunks: u32,
    n: u64,
}

impl PipelinedTree {
    fn new(spec: &CollectiveSpec, params: &PlanParams, trees: Vec<Arc<Tree>>) -> Self {
        let mode = match spec.collective {
            Collective::Broadcast => Mode::Broadcast,
            Collective::Reduce => Mode::Reduce,
            Collective::AllReduce => Mode::AllReduce,
            c => unreachable!("pipelined trees serve broadcast, reduce and all-reduce, not {c}"),
        };
        let k = params.chunks;
        let n = spec.count;
        let shares = trees.len() as u64;
        let parts = trees
            .into_iter()
            .enumerate()
            .map(|(t, tree)| {
                let (off, len) = split(n, shares, t as u64);
                let h = tree.tree_height();
                let d = tree.max_depth();
                let bcast_start = if mode == Mode::AllReduce { h } else { 0 };
                let rounds = match mode {
                    Mode::Reduce => h + k - 1,
                    Mode::Broadcast => d + k - 1,
                    Mode::AllReduce => h + d + k - 1,
                };
                Part {
                    tree,
                    off,
                    len,
                    channel: t as u16,
                    bcast_start,
                    rounds,
                }
            })
            .collect();
        PipelinedTree {
            mode,
            parts,
            chunks: k,
            n,
        }
    }

    /// Piece `j` of a part, if `j` is a valid piece index (given as a signed round offset).
    fn piece(&self, part: &Part, j: i64) -> Option<(u64, u64)> {
        if j < 0 || j >= self.chunks as i64 {
            return None;
        }
        let (o, l) = split(part.len, self.chunks as u64, j as u64);
        Some((part.off + o, l))
    }

    /// Where a rank accumulates partial reductions.
    fn accumulator(&self, part: &Part, rank: Rank) -> Buf {
        if self.mode == Mode::Reduce && rank != part.tree.root() {
            Buf::Scratch
        } else {
            Buf::Output
        }
    }

    fn emit_part(&self, part: &Part, rank: Rank, round: u32, e: &mut Emitter<'_>) {
        let tree = &part.tree;
        let round = round as i64;
        let is_root = rank == tree.root();
        let children = tree.children(rank);
        let acc = self.accumulator(part, rank);
        e.channel(part.channel);

        if self.mode == Mode::Broadcast && is_root && round == 0 {
            e.copy(
                Slice::new(Buf::Input, part.off, part.len),
                Slice::new(Buf::Output, part.off, part.len),
            );
        }
        // Sends first, then receives: a round's sends never wait on its receives.
        if self.mode.reduces() {
            if let Some(parent) = tree.parent(rank) {
                if let Some((o, l)) = self.piece(part, round - tree.height(rank) as i64) {
                    let from = if children.is_empty() { Buf::Input } else { acc };
                    e.send(parent, Slice::new(from, o, l));
                }
            }
        }
        if self.mode.broadcasts() && !children.is_empty() {
            let first = (part.bcast_start + tree.depth(rank)) as i64;
            if let Some((o, l)) = self.piece(part, round - first) {
                let from = if self.mode == Mode::Broadcast && is_root {
                    Buf::Input
                } else {
                    Buf::Output
                };
                for &c in children {
                    e.send(c, Slice::new(from, o, l));
                }
            }
        }
        if self.mode.reduces() {
            for (i, &c) in children.iter().enumerate() {
                if let Some((o, l)) = self.piece(part, round - tree.height(c) as i64) {
                    let src = if i == 0 { Buf::Input } else { acc };
                    e.recv_reduce(c, Slice::new(src, o, l), Slice::new(acc, o, l));
                }
            }
        }
        if self.mode.broadcasts() {
            if let Some(parent) = tree.parent(rank) {
                let first = (part.bcast_start + tree.depth(rank) - 1) as i64;
                if let Some((o, l)) = self.piece(part, round - first) {
                    e.recv(parent, Slice::new(Buf::Output, o, l));
                }
            }
        }
    }
}

impl Schedule for PipelinedTree {
    fn rounds(&self) -> u32 {
        self.parts.iter().map(|p| p.rounds).max().unwrap_or(0)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let mut e = Emitter::new(out, round);
        for part in &self.parts {
            if round < part.rounds {
                self.emit_part(part, rank, round, &mut e);
            }
        }
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        let needs = self
            .parts
            .iter()
            .any(|p| self.accumulator(p, rank) == Buf::Scratch && p.tree.is_interior(rank));
        if needs {
            self.n
        } else {
            0
        }
    }

    fn channels(&self) -> u16 {
        self.parts.len() as u16
    }
}

/// A chain from the root through `root+1, root+2, …` (broadcast) or back to the root
/// (reduce): the ring algorithms for rooted collectives.
pub fn chain(spec: &Arc<CollectiveSpec>, params: &PlanParams) -> Arc<dyn Schedule> {
    let p = spec.world;
    let root = spec.root;
    let parents = (0..p)
        .map(|r| {
            let rel = (r + p - root) % p;
            (rel > 0).then(|| (root + rel - 1) % p)
        })
        .collect();
    let tree = Tree::from_parents(parents, p).expect("a chain is a tree");
    Arc::new(PipelinedTree::new(spec, params, vec![Arc::new(tree)]))
}

/// A tree given by a parent array.
pub fn parent_tree(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
    tree: Tree,
) -> Result<Arc<dyn Schedule>, PlanError> {
    tree.check_root(spec)?;
    Ok(Arc::new(PipelinedTree::new(
        spec,
        params,
        vec![Arc::new(tree)],
    )))
}

/// NCCL-style double binary tree all-reduce: each tree carries half the data.
pub fn double_binary_tree(spec: &Arc<CollectiveSpec>, params: &PlanParams) -> Arc<dyn Schedule> {
    let (a, b) = double_binary_trees(spec.world);
    Arc::new(PipelinedTree::new(
        spec,
        params,
        vec![Arc::new(a), Arc::new(b)],
    ))
}

/// Parent of label `v` in the in-order binary tree over `0..p` where a label with lowest
/// set bit `b` hangs below `(v ^ b) | 2b` (or `v ^ b` when that is out of range). Odd labels
/// are the leaves; the parents are even.
fn bit_tree_parent(v: u32, p: u32) -> Option<u32> {
    if v == 0 {
        return None;
    }
    let bit = v & v.wrapping_neg();
    let up = (v ^ bit) | (bit << 1);
    Some(if up >= p { v ^ bit } else { up })
}

/// The two complementary trees of a double binary tree over `p ≥ 1` ranks: no rank is
/// interior in both.
///
/// The first is the in-order bit tree: interior ranks are even, leaves odd. For even `p`
/// the second is its mirror (`r → p−1−r`), whose interior ranks are odd. For odd `p` the
/// first tree is re-rooted so that rank 0 becomes a leaf (the bit tree's root has a single
/// child, which becomes the root; 0 takes the one free child slot left), and the second is
/// the first shifted by one (`r → r+1`).
pub fn double_binary_trees(p: u32) -> (Tree, Tree) {
    let mut first: Vec<Option<Rank>> = (0..p).map(|v| bit_tree_parent(v, p)).collect();
    if p % 2 == 1 && p > 1 {
        let top = 1u32 << (31 - (p - 1).leading_zeros());
        first[top as usize] = None;
        let mut kids = vec![0u32; p as usize];
        for q in first.iter().flatten() {
            kids[*q as usize] += 1;
        }
        // Exactly one interior rank has one child: there p−1 ranks have (p−1)/2 interior
        // ranks with p−1 child slots for p−2 edges.
        let spare = (2..p)
            .step_by(2)
            .find(|&v| kids[v as usize] == 1)
            .expect("a binary tree over an even number of ranks has one spare slot");
        first[0] = Some(spare);
    }
    let second: Vec<Option<Rank>> = if p % 2 == 0 {
        (0..p)
            .map(|r| first[(p - 1 - r) as usize].map(|q| p - 1 - q))
            .collect()
    } else {
        (0..p)
            .map(|r| first[((r + p - 1) % p) as usize].map(|q| (q + 1) % p))
            .collect()
    };
    (
        Tree::from_parents(first, p).expect("bit tree is a tree"),
        Tree::from_parents(second, p).expect("mirrored or shifted tree is a tree"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_binary_trees_are_binary_and_complementary() {
        for p in 1..=300u32 {
            let (a, b) = double_binary_trees(p);
            for r in 0..p {
                assert!(a.children(r).len() <= 2, "p={p} rank {r} tree A");
                assert!(b.children(r).len() <= 2, "p={p} rank {r} tree B");
                assert!(
                    !(a.is_interior(r) && b.is_interior(r)),
                    "p={p}: rank {r} is interior in both trees"
                );
            }
            // Logarithmic height.
            let bound = 2 * (32 - p.leading_zeros()) + 1;
            assert!(
                a.tree_height() <= bound && b.tree_height() <= bound,
                "p={p}"
            );
        }
    }

    #[test]
    fn tree_errors_name_the_problem() {
        let e = Tree::from_parents(vec![None, Some(0), None], 3).unwrap_err();
        assert!(e.to_string().contains("ranks 0 and 2"), "{e}");
        let e = Tree::from_parents(vec![Some(1), Some(2), Some(0)], 3).unwrap_err();
        assert!(e.to_string().contains("no root"), "{e}");
        let e = Tree::from_parents(vec![None, Some(2), Some(1)], 3).unwrap_err();
        assert!(e.to_string().contains("loops"), "{e}");
        let e = Tree::from_parents(vec![None, Some(7)], 2).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = Tree::from_parents(vec![None], 2).unwrap_err();
        assert!(e.to_string().contains("1 entries"), "{e}");
    }

    #[test]
    fn heights_and_child_order() {
        // 0 <- 1 <- 2, 0 <- 3
        let t = Tree::from_parents(vec![None, Some(0), Some(1), Some(0)], 4).unwrap();
        assert_eq!(t.tree_height(), 2);
        assert_eq!(t.children(0), &[3, 1]); // 3 is a leaf (height 0), 1 has height 1
        assert_eq!(t.depth(2), 2);
        assert_eq!(t.max_depth(), 2);
    }
}
