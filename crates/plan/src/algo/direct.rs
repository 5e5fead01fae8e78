//! Direct algorithms: every piece of data goes straight from the rank that holds it to the
//! rank that needs it, all in one round; all-reduce takes two (a direct reduce-scatter over
//! `p` blocks, then a direct all-gather of the reduced blocks).
//!
//! Step `d` of a rank talks to `r + d` when sending and to `r − d` when receiving, so the
//! `d`-th send of every rank meets the `d`-th receive of its peer: a round is a sequence of
//! shift permutations rather than every rank hitting rank 0 (or its own first peer) at once.
//! Reductions combine each arriving message into the output as it comes; only the first
//! reads the input, so the input is never written and the plans are correct in place.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::partition::{pieces, split};

/// Plans any collective except the barrier with direct transfers.
pub fn direct(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    use Collective::*;
    match spec.collective {
        AllReduce => Ok(Arc::new(DirectAllReduce::over(
            spec.world,
            spec.count,
            params.chunks,
        ))),
        Broadcast | Reduce | Gather | Scatter | AllGather | ReduceScatter | AllToAll
        | AllToAllV => Ok(Arc::new(Direct {
            spec: Arc::clone(spec),
            chunks: params.chunks,
        })),
        c => Err(super::unsupported(super::AlgoKind::Direct, c)),
    }
}

/// Peers a rank sends to, nearest first.
fn send_peers(rank: Rank, p: u32) -> impl Iterator<Item = Rank> {
    (1..p).map(move |d| ((rank as u64 + d as u64) % p as u64) as Rank)
}

/// Peers a rank receives from, in the order their sends to it come.
fn recv_peers(rank: Rank, p: u32) -> impl Iterator<Item = Rank> {
    (1..p).map(move |d| ((rank as u64 + (p - d) as u64) % p as u64) as Rank)
}

/// Direct all-reduce over a partition of the buffer into `p` blocks; rank `b` reduces
/// block `b` in round 0 and hands it to everyone in round 1.
#[derive(Debug, Clone)]
pub struct DirectAllReduce {
    p: u32,
    n: u64,
    chunks: u32,
}

impl DirectAllReduce {
    pub fn over(p: u32, n: u64, chunks: u32) -> Self {
        DirectAllReduce { p, n, chunks }
    }

    /// Rounds of the reduce-scatter half; the all-gather half takes as many.
    pub fn half_rounds(&self) -> u32 {
        1
    }

    /// The block whose full reduction `rank` holds after the reduce-scatter half.
    pub fn owned_block(&self, rank: Rank) -> u32 {
        rank
    }

    /// Element range of block `b`.
    pub fn block_range(&self, b: u32) -> (u64, u64) {
        split(self.n, self.p as u64, b as u64)
    }
}

impl Schedule for DirectAllReduce {
    fn rounds(&self) -> u32 {
        2 * self.half_rounds()
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let p = self.p;
        let mut e = Emitter::new(out, round);
        let (mo, ml) = self.block_range(self.owned_block(rank));
        if round < self.half_rounds() {
            if p == 1 {
                e.copy(
                    Slice::new(Buf::Input, 0, self.n),
                    Slice::new(Buf::Output, 0, self.n),
                );
            }
            for d in send_peers(rank, p) {
                let (o, l) = self.block_range(d);
                for (o, l) in pieces(o, l, self.chunks) {
                    e.send(d, Slice::new(Buf::Input, o, l));
                }
            }
            for (i, s) in recv_peers(rank, p).enumerate() {
                let src = if i == 0 { Buf::Input } else { Buf::Output };
                for (o, l) in pieces(mo, ml, self.chunks) {
                    e.recv_reduce(s, Slice::new(src, o, l), Slice::new(Buf::Output, o, l));
                }
            }
        } else {
            for d in send_peers(rank, p) {
                for (o, l) in pieces(mo, ml, self.chunks) {
                    e.send(d, Slice::new(Buf::Output, o, l));
                }
            }
            for s in recv_peers(rank, p) {
                let (o, l) = self.block_range(self.owned_block(s));
                for (o, l) in pieces(o, l, self.chunks) {
                    e.recv(s, Slice::new(Buf::Output, o, l));
                }
            }
        }
    }
}

/// The one-round direct plans of every other collective.
#[derive(Debug)]
struct Direct {
    spec: Arc<CollectiveSpec>,
    chunks: u32,
}

impl Direct {
    fn send(&self, e: &mut Emitter<'_>, peer: Rank, buf: Buf, off: u64, len: u64) {
        for (o, l) in pieces(off, len, self.chunks) {
            e.send(peer, Slice::new(buf, o, l));
        }
    }

    fn recv(&self, e: &mut Emitter<'_>, peer: Rank, off: u64, len: u64) {
        for (o, l) in pieces(off, len, self.chunks) {
            e.recv(peer, Slice::new(Buf::Output, o, l));
        }
    }

    /// Reduces every peer's message for `[off, off + len)` of `src` into `output[0..len)`,
    /// starting from the local values in `src`.
    fn recv_reduce_all(&self, e: &mut Emitter<'_>, rank: Rank, src: Buf, off: u64, len: u64) {
        let p = self.spec.world;
        if p == 1 {
            e.copy(Slice::new(src, off, len), Slice::new(Buf::Output, 0, len));
        }
        for (i, s) in recv_peers(rank, p).enumerate() {
            for ((so, l), (o, _)) in pieces(off, len, self.chunks).zip(pieces(0, len, self.chunks))
            {
                let from = if i == 0 {
                    Slice::new(src, so, l)
                } else {
                    Slice::new(Buf::Output, o, l)
                };
                e.recv_reduce(s, from, Slice::new(Buf::Output, o, l));
            }
        }
    }
}

impl Schedule for Direct {
    fn rounds(&self) -> u32 {
        1
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let spec = &*self.spec;
        let (p, c, root) = (spec.world, spec.count, spec.root);
        let r = rank as u64;
        let mut e = Emitter::new(out, round);
        let e = &mut e;
        match spec.collective {
            Collective::Broadcast => {
                if rank == root {
                    e.copy(Slice::new(Buf::Input, 0, c), Slice::new(Buf::Output, 0, c));
                    for d in send_peers(rank, p) {
                        self.send(e, d, Buf::Input, 0, c);
                    }
                } else {
                    self.recv(e, root, 0, c);
                }
            }
            Collective::Reduce => {
                if rank == root {
                    self.recv_reduce_all(e, rank, Buf::Input, 0, c);
                } else {
                    self.send(e, root, Buf::Input, 0, c);
                }
            }
            Collective::Gather => {
                if rank == root {
                    e.copy(
                        Slice::new(Buf::Input, 0, c),
                        Slice::new(Buf::Output, r * c, c),
                    );
                    for s in recv_peers(rank, p) {
                        self.recv(e, s, s as u64 * c, c);
                    }
                } else {
                    self.send(e, root, Buf::Input, 0, c);
                }
            }
            Collective::Scatter => {
                if rank == root {
                    e.copy(
                        Slice::new(Buf::Input, r * c, c),
                        Slice::new(Buf::Output, 0, c),
                    );
                    for d in send_peers(rank, p) {
                        self.send(e, d, Buf::Input, d as u64 * c, c);
                    }
                } else {
                    self.recv(e, root, 0, c);
                }
            }
            Collective::AllGather => {
                e.copy(
                    Slice::new(Buf::Input, 0, c),
                    Slice::new(Buf::Output, r * c, c),
                );
                for d in send_peers(rank, p) {
                    self.send(e, d, Buf::Input, 0, c);
                }
                for s in recv_peers(rank, p) {
                    self.recv(e, s, s as u64 * c, c);
                }
            }
            Collective::ReduceScatter => {
                for d in send_peers(rank, p) {
                    self.send(e, d, Buf::Input, d as u64 * c, c);
                }
                self.recv_reduce_all(e, rank, Buf::Input, r * c, c);
            }
            Collective::AllToAll => {
                e.copy(
                    Slice::new(Buf::Input, r * c, c),
                    Slice::new(Buf::Output, r * c, c),
                );
                for d in send_peers(rank, p) {
                    self.send(e, d, Buf::Input, d as u64 * c, c);
                }
                for s in recv_peers(rank, p) {
                    self.recv(e, s, s as u64 * c, c);
                }
            }
            Collective::AllToAllV => {
                let m = spec.matrix();
                e.copy(
                    Slice::new(Buf::Input, m.send_offset(rank, rank), m.get(rank, rank)),
                    Slice::new(Buf::Output, m.recv_offset(rank, rank), m.get(rank, rank)),
                );
                for d in send_peers(rank, p) {
                    self.send(e, d, Buf::Input, m.send_offset(rank, d), m.get(rank, d));
                }
                for s in recv_peers(rank, p) {
                    self.recv(e, s, m.recv_offset(s, rank), m.get(s, rank));
                }
            }
            c @ (Collective::AllReduce | Collective::Barrier) => {
                unreachable!("direct() plans {c} elsewhere or refuses it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::spec::{CountMatrix, DType, Placement};
    use crate::verify::verify;

    fn plan(spec: CollectiveSpec, chunks: u32) -> crate::Plan {
        build(
            spec.with_dtype(DType::I32),
            Algorithm::Direct,
            PlanParams::default().with_chunks(chunks),
        )
        .unwrap()
    }

    fn run(plan: &crate::Plan, inputs: &[Vec<i32>]) -> Vec<Vec<i32>> {
        crate::exec::execute::<i32>(plan, Placement::OutOfPlace, inputs).unwrap()
    }

    #[test]
    fn round_counts() {
        for c in [
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::Broadcast,
            Collective::Reduce,
            Collective::Gather,
            Collective::Scatter,
            Collective::AllToAll,
        ] {
            assert_eq!(plan(CollectiveSpec::new(c, 6, 4), 1).rounds(), 1, "{c}");
        }
        assert_eq!(
            plan(CollectiveSpec::new(Collective::AllReduce, 6, 4), 1).rounds(),
            2
        );
        let ar = DirectAllReduce::over(4, 10, 1);
        assert_eq!(ar.half_rounds(), 1);
        assert_eq!(ar.owned_block(3), 3);
        assert_eq!(ar.block_range(1), (3, 3));
        assert_eq!(ar.block_range(3), (8, 2));
    }

    #[test]
    fn allreduce_small() {
        let inputs: Vec<Vec<i32>> = (0..3).map(|r| vec![r, 10 * r, 100 * r, 1]).collect();
        let out = run(
            &plan(CollectiveSpec::new(Collective::AllReduce, 3, 4), 2),
            &inputs,
        );
        for o in out {
            assert_eq!(o, vec![3, 30, 300, 3]);
        }
    }

    #[test]
    fn reduce_scatter_and_alltoall_small() {
        // Rank r's input is [r, r+1, …] over 3 blocks of 2.
        let inputs: Vec<Vec<i32>> = (0..3).map(|r| (r..r + 6).collect()).collect();
        let out = run(
            &plan(CollectiveSpec::new(Collective::ReduceScatter, 3, 2), 1),
            &inputs,
        );
        assert_eq!(out, vec![vec![3, 6], vec![9, 12], vec![15, 18]]);

        let inputs: Vec<Vec<i32>> = (0..3)
            .map(|r| (0..3).map(|j| 10 * r + j).collect())
            .collect();
        let out = run(
            &plan(CollectiveSpec::new(Collective::AllToAll, 3, 1), 1),
            &inputs,
        );
        assert_eq!(out, vec![vec![0, 10, 20], vec![1, 11, 21], vec![2, 12, 22]]);
    }

    #[test]
    fn alltoallv_small() {
        let m = CountMatrix::from_rows(&[vec![1, 0, 2], vec![1, 1, 0], vec![0, 3, 1]]).unwrap();
        let inputs = vec![vec![1, 2, 3], vec![4, 5], vec![6, 7, 8, 9]];
        let out = run(&plan(CollectiveSpec::all_to_all_v(m), 1), &inputs);
        assert_eq!(out, vec![vec![1, 4], vec![5, 6, 7, 8], vec![2, 3, 9]]);
    }

    #[test]
    fn sends_go_to_nearest_peers_first() {
        let pl = plan(CollectiveSpec::new(Collective::AllGather, 5, 1), 1);
        let peers: Vec<Rank> = pl.program(3).iter().filter_map(|op| op.peer()).collect();
        assert_eq!(peers, vec![4, 0, 1, 2, 2, 1, 0, 4]);
    }

    #[test]
    fn verifies_small_worlds() {
        for c in [
            Collective::AllReduce,
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::Broadcast,
            Collective::Reduce,
            Collective::Gather,
            Collective::Scatter,
            Collective::AllToAll,
        ] {
            for p in [2, 3, 5] {
                for root in [0, p - 1] {
                    let spec = CollectiveSpec::new(c, p, 2 * p as u64 + 1).with_root(root);
                    verify(&plan(spec, 3)).unwrap_or_else(|e| panic!("{c} p={p}: {e}"));
                }
            }
        }
    }

    #[test]
    fn verifies_split_across_channels() {
        for c in [
            Collective::AllReduce,
            Collective::AllGather,
            Collective::ReduceScatter,
            Collective::Reduce,
            Collective::Scatter,
            Collective::AllToAll,
        ] {
            let spec = CollectiveSpec::new(c, 5, 7)
                .with_root(2)
                .with_dtype(DType::I32);
            let params = PlanParams::default().with_chunks(2).with_channels(3);
            let pl = build(spec, Algorithm::Direct, params).unwrap();
            verify(&pl).unwrap_or_else(|e| panic!("{c}: {e}"));
        }
    }

    #[test]
    fn allreduce_of_one_rank_copies() {
        let ar = DirectAllReduce::over(1, 3, 1);
        let mut ops = Vec::new();
        ar.emit(0, 0, &mut ops);
        assert_eq!(ops.len(), 1);
    }
}
