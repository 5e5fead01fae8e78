//! Binomial trees for the rooted collectives: broadcast, reduce, gather and scatter.
//!
//! Ranks are renumbered relative to the root, `v = (rank − root) mod p`, and every plan
//! takes `⌈lg p⌉` rounds with at most one message per rank and round (one port).
//!
//! * Broadcast: in round `k` every `v < 2^k` that has the data sends it to `v + 2^k`.
//! * Reduce, gather: the tree hangs `v` below `v − 2^k`, `k` its lowest set bit, and data
//!   flows up: `v` sends in round `k`, after its children `v + 2^j` (`j < k`) sent to it in
//!   rounds `j`. The subtree of `v` is the relative range `[v, v + 2^k)` cut at `p`.
//! * Scatter: the same tree run backwards, round `k` of gather being round `⌈lg p⌉−1−k`.
//!
//! Gather and scatter move a whole subtree's blocks in one message. Intermediate ranks keep
//! their subtree in scratch in relative order; the root's buffer is in absolute order, so a
//! subtree that wraps past rank `p − 1` to rank `0` travels to or from the root as two
//! messages, split where both ends compute it.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::partition::pieces;

/// Plans a broadcast, reduce, gather or scatter along binomial trees.
pub fn binomial(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    use Collective::*;
    match spec.collective {
        Broadcast | Reduce | Gather | Scatter => Ok(Arc::new(Binomial::new(spec, params))),
        c => Err(super::unsupported(super::AlgoKind::Binomial, c)),
    }
}

/// `⌈lg p⌉` for `p ≥ 1`.
fn ceil_lg(p: u32) -> u32 {
    if p <= 1 {
        0
    } else {
        32 - (p - 1).leading_zeros()
    }
}

#[derive(Debug)]
struct Binomial {
    collective: Collective,
    p: u64,
    root: u64,
    /// Elements of the broadcast/reduced buffer, or of one block for gather and scatter.
    count: u64,
    chunks: u32,
    /// `⌈lg p⌉`.
    lg: u32,
}

impl Binomial {
    fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        Binomial {
            collective: spec.collective,
            p: spec.world as u64,
            root: spec.root as u64,
            count: spec.count,
            chunks: params.chunks,
            lg: ceil_lg(spec.world),
        }
    }

    fn rel(&self, rank: Rank) -> u64 {
        (rank as u64 + self.p - self.root) % self.p
    }

    fn abs(&self, v: u64) -> Rank {
        ((v + self.root) % self.p) as Rank
    }

    /// The round in which `v` sends up the tree (its lowest set bit); the root never does,
    /// which `lg` stands for.
    fn up_round(&self, v: u64) -> u32 {
        if v == 0 {
            self.lg
        } else {
            v.trailing_zeros()
        }
    }

    /// Ranks in the subtree of `v` (reduce/gather tree), `v` included.
    fn span(&self, v: u64) -> u64 {
        (1u64 << self.up_round(v)).min(self.p - v)
    }

    /// The child `v` exchanges with in up-tree round `k`, if any.
    fn child(&self, v: u64, k: u32) -> Option<u64> {
        let u = v + (1u64 << k);
        (k < self.up_round(v) && u < self.p).then_some(u)
    }

    /// The relative ranks whose blocks `u`'s subtree moves to or from its parent, cut where
    /// the root's absolute layout wraps: up to two ranges `[a, b)`.
    fn parts(&self, u: u64) -> impl Iterator<Item = (u64, u64)> {
        let (a, b) = (u, u + self.span(u));
        let parent_is_root = u == 1u64 << self.up_round(u);
        let wrap = self.p - self.root;
        let cut = parent_is_root && a < wrap && wrap < b;
        let first = (a, if cut { wrap } else { b });
        let second = cut.then_some((wrap, b));
        std::iter::once(first).chain(second)
    }

    /// Round of up-tree step `k`: gather and reduce go up, scatter comes down.
    fn step(&self, round: u32) -> u32 {
        if self.collective == Collective::Scatter {
            self.lg - 1 - round
        } else {
            round
        }
    }

    fn emit_broadcast(&self, v: u64, round: u32, e: &mut Emitter<'_>) {
        let n = self.count;
        let from = if v == 0 {
            if round == 0 {
                e.copy(Slice::new(Buf::Input, 0, n), Slice::new(Buf::Output, 0, n));
            }
            Buf::Input
        } else {
            Buf::Output
        };
        let bit = 1u64 << round;
        if v < bit && v + bit < self.p {
            for (o, l) in pieces(0, n, self.chunks) {
                e.send(self.abs(v + bit), Slice::new(from, o, l));
            }
        }
        if bit <= v && v < 2 * bit {
            for (o, l) in pieces(0, n, self.chunks) {
                e.recv(self.abs(v - bit), Slice::new(Buf::Output, o, l));
            }
        }
    }

    /// Where `v` accumulates the reductions of its children.
    fn accumulator(&self, v: u64) -> Buf {
        if v == 0 {
            Buf::Output
        } else {
            Buf::Scratch
        }
    }

    fn emit_reduce(&self, v: u64, round: u32, e: &mut Emitter<'_>) {
        let n = self.count;
        let acc = self.accumulator(v);
        // Only a world of one leaves the root without children; its result is its input.
        if v == 0 && self.p == 1 && round == 0 {
            e.copy(Slice::new(Buf::Input, 0, n), Slice::new(Buf::Output, 0, n));
        }
        if v != 0 && self.up_round(v) == round {
            let from = if self.span(v) > 1 { acc } else { Buf::Input };
            for (o, l) in pieces(0, n, self.chunks) {
                e.send(self.abs(v - (1u64 << round)), Slice::new(from, o, l));
            }
        }
        if let Some(u) = self.child(v, round) {
            // Children arrive in rounds 0, 1, …, and the first one exists whenever any does,
            // so round 0 is the one that starts from the input.
            let src = if round == 0 { Buf::Input } else { acc };
            for (o, l) in pieces(0, n, self.chunks) {
                e.recv_reduce(self.abs(u), Slice::new(src, o, l), Slice::new(acc, o, l));
            }
        }
    }

    /// Where `v` keeps the blocks of its subtree: the root its output (gather) or input
    /// (scatter) in absolute order, others scratch in relative order. Returns the buffer and
    /// the element offset of relative rank `w`'s block.
    fn store(&self, v: u64, w: u64) -> (Buf, u64) {
        let c = self.count;
        if v == 0 {
            let buf = if self.collective == Collective::Gather {
                Buf::Output
            } else {
                Buf::Input
            };
            (buf, self.abs(w) as u64 * c)
        } else if self.span(v) > 1 {
            (Buf::Scratch, (w - v) * c)
        } else {
            // A leaf keeps its one block in its user buffer.
            let buf = if self.collective == Collective::Gather {
                Buf::Input
            } else {
                Buf::Output
            };
            (buf, 0)
        }
    }

    /// Moves the blocks of `u`'s subtree between `u` and its parent `v`, as `u` (`sending`
    /// for gather) or as `v`.
    fn subtree_transfer(&self, u: u64, v: u64, at_child: bool, e: &mut Emitter<'_>) {
        let c = self.count;
        let send = (self.collective == Collective::Gather) == at_child;
        let (me, peer) = if at_child {
            (u, self.abs(v))
        } else {
            (v, self.abs(u))
        };
        for (a, b) in self.parts(u) {
            let (buf, off) = self.store(me, a);
            for (o, l) in pieces(off, (b - a) * c, self.chunks) {
                let s = Slice::new(buf, o, l);
                if send {
                    e.send(peer, s);
                } else {
                    e.recv(peer, s);
                }
            }
        }
    }

    fn emit_gather_scatter(&self, v: u64, round: u32, e: &mut Emitter<'_>) {
        let c = self.count;
        let gather = self.collective == Collective::Gather;
        if round == 0 {
            if v == 0 {
                let whole = Slice::new(Buf::Input, 0, c);
                let own = Slice::new(Buf::Output, self.root * c, c);
                if gather {
                    e.copy(whole, own);
                } else {
                    e.copy(
                        Slice::new(Buf::Input, self.root * c, c),
                        Slice::new(Buf::Output, 0, c),
                    );
                }
            } else if gather && self.span(v) > 1 {
                e.copy(Slice::new(Buf::Input, 0, c), Slice::new(Buf::Scratch, 0, c));
            }
        }
        if self.lg == 0 {
            return;
        }
        let k = self.step(round);
        let parent_step = v != 0 && self.up_round(v) == k;
        let child = self.child(v, k);
        // Sends before receives: a gathering rank sends up, a scattering one sends down.
        if gather {
            if parent_step {
                self.subtree_transfer(v, v - (1u64 << k), true, e);
            }
            if let Some(u) = child {
                self.subtree_transfer(u, v, false, e);
            }
        } else {
            if let Some(u) = child {
                self.subtree_transfer(u, v, false, e);
            }
            if parent_step {
                self.subtree_transfer(v, v - (1u64 << k), true, e);
                if self.span(v) > 1 {
                    e.copy(
                        Slice::new(Buf::Scratch, 0, c),
                        Slice::new(Buf::Output, 0, c),
                    );
                }
            }
        }
    }
}

impl Schedule for Binomial {
    fn rounds(&self) -> u32 {
        self.lg.max(1)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let v = self.rel(rank);
        let mut e = Emitter::new(out, round);
        match self.collective {
            Collective::Broadcast => self.emit_broadcast(v, round, &mut e),
            Collective::Reduce => self.emit_reduce(v, round, &mut e),
            _ => self.emit_gather_scatter(v, round, &mut e),
        }
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        let v = self.rel(rank);
        if v == 0 || self.span(v) == 1 {
            return 0;
        }
        match self.collective {
            Collective::Reduce => self.count,
            Collective::Gather | Collective::Scatter => self.span(v) * self.count,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::spec::{DType, Placement};
    use crate::verify::verify;

    fn plan(c: Collective, p: u32, count: u64, root: Rank, chunks: u32) -> crate::Plan {
        let spec = CollectiveSpec::new(c, p, count)
            .with_root(root)
            .with_dtype(DType::I32);
        build(
            spec,
            Algorithm::Binomial,
            PlanParams::default().with_chunks(chunks),
        )
        .unwrap()
    }

    fn run(plan: &crate::Plan, inputs: &[Vec<i32>]) -> Vec<Vec<i32>> {
        crate::exec::execute::<i32>(plan, Placement::OutOfPlace, inputs).unwrap()
    }

    #[test]
    fn rounds_are_ceil_lg_p() {
        for (p, lg) in [(2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (1000, 10)] {
            for c in [
                Collective::Broadcast,
                Collective::Reduce,
                Collective::Gather,
                Collective::Scatter,
            ] {
                assert_eq!(plan(c, p, 4, 0, 1).rounds(), lg, "{c} p={p}");
            }
        }
    }

    #[test]
    fn one_message_per_rank_and_round() {
        for c in [Collective::Broadcast, Collective::Reduce] {
            let pl = plan(c, 13, 5, 4, 1);
            for round in 0..pl.rounds() {
                let mut ops = Vec::new();
                pl.round_ops(round, &mut ops);
                let mut sends = vec![0; 13];
                for (r, op) in ops {
                    if op.peer().is_some() {
                        sends[r as usize] += 1;
                    }
                }
                assert!(
                    sends.iter().all(|&s| s <= 1),
                    "{c} round {round}: {sends:?}"
                );
            }
        }
    }

    #[test]
    fn broadcast_and_reduce_small() {
        let inputs: Vec<Vec<i32>> = (0..5)
            .map(|r| if r == 2 { vec![7, 8, 9] } else { vec![] })
            .collect();
        let out = run(&plan(Collective::Broadcast, 5, 3, 2, 2), &inputs);
        assert!(out.iter().all(|o| o == &[7, 8, 9]), "{out:?}");

        let inputs: Vec<Vec<i32>> = (0..5).map(|r| vec![r, 10 * r]).collect();
        let out = run(&plan(Collective::Reduce, 5, 2, 3, 1), &inputs);
        assert_eq!(out[3], vec![10, 100]);
        assert!(out.iter().enumerate().all(|(r, o)| r == 3 || o.is_empty()));
    }

    #[test]
    fn gather_and_scatter_small_with_wrap() {
        // Root 3 of 6: relative subtree [2, 4) is absolute ranks 5, 0 and wraps.
        let inputs: Vec<Vec<i32>> = (0..6).map(|r| vec![r, 100 + r]).collect();
        let out = run(&plan(Collective::Gather, 6, 2, 3, 1), &inputs);
        let want: Vec<i32> = (0..6).flat_map(|r| [r, 100 + r]).collect();
        assert_eq!(out[3], want);

        let inputs: Vec<Vec<i32>> = (0..6)
            .map(|r| if r == 3 { want.clone() } else { vec![] })
            .collect();
        let out = run(&plan(Collective::Scatter, 6, 2, 3, 2), &inputs);
        for (r, o) in out.iter().enumerate() {
            assert_eq!(o, &[r as i32, 100 + r as i32]);
        }
    }

    #[test]
    fn verifies_split_across_channels() {
        for c in [Collective::Broadcast, Collective::Reduce] {
            let spec = CollectiveSpec::new(c, 11, 7).with_root(6);
            let params = PlanParams::default().with_chunks(2).with_channels(3);
            let pl = build(spec, Algorithm::Binomial, params).unwrap();
            verify(&pl).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
    }

    #[test]
    fn verifies_odd_worlds_and_roots() {
        for c in [
            Collective::Broadcast,
            Collective::Reduce,
            Collective::Gather,
            Collective::Scatter,
        ] {
            for p in [2, 3, 7, 12] {
                for root in [0, p / 2, p - 1] {
                    let pl = plan(c, p, 2 * p as u64 + 1, root, 3);
                    verify(&pl).unwrap_or_else(|e| panic!("{c} p={p} root={root}: {e}"));
                }
            }
        }
    }
}
