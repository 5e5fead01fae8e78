//! Ring all-reduce (reduce-scatter then all-gather), all-gather and reduce-scatter.
//!
//! Every rank sends to `r + 1` and receives from `r − 1`. The data is cut into one block per
//! rank and each block into `chunks` pieces; a piece moves on as soon as it has arrived, so
//! consecutive steps overlap. Broadcast and reduce along a ring are pipelined chains, built
//! by [`super::tree::chain`].

use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::CollectiveSpec;

use super::partition::{back, fwd, pieces, split};

fn ring_neighbours(rank: Rank, p: u32) -> (Rank, Rank) {
    (fwd(rank, 1, p), back(rank, 1, p))
}

/// Ring all-reduce over a partition of the buffer into `p` blocks.
///
/// Reduce-scatter step `k` (rounds `0..p−1`): rank `r` sends block `r−k` and reduces block
/// `r−k−1` into its output. Afterwards rank `r` holds the full sum of block `r+1`
/// ([`RingAllReduce::owned_block`]). All-gather step `k`: send block `r+1−k`, receive
/// block `r−k`. Input is only read, so the plan is correct in place as well.
#[derive(Debug, Clone)]
pub struct RingAllReduce {
    p: u32,
    n: u64,
    chunks: u32,
}

impl RingAllReduce {
    pub fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        Self::over(spec.world, spec.count, params.chunks)
    }

    pub fn over(p: u32, n: u64, chunks: u32) -> Self {
        RingAllReduce { p, n, chunks }
    }

    fn block(&self, b: u32) -> (u64, u64) {
        split(self.n, self.p as u64, b as u64)
    }

    /// Rounds of the reduce-scatter half; the all-gather half takes as many.
    pub fn half_rounds(&self) -> u32 {
        self.p - 1
    }

    /// The block whose full reduction `rank` holds after the reduce-scatter half.
    pub fn owned_block(&self, rank: Rank) -> u32 {
        (rank + 1) % self.p
    }

    /// Element range of block `b`.
    pub fn block_range(&self, b: u32) -> (u64, u64) {
        self.block(b)
    }
}

impl Schedule for RingAllReduce {
    fn rounds(&self) -> u32 {
        2 * (self.p - 1)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let p = self.p;
        let (next, prev) = ring_neighbours(rank, p);
        let mut e = Emitter::new(out, round);
        if round < p - 1 {
            let k = round;
            let (so, sl) = self.block(back(rank, k as u64, p));
            let from = if k == 0 { Buf::Input } else { Buf::Output };
            for (o, l) in pieces(so, sl, self.chunks) {
                e.send(next, Slice::new(from, o, l));
            }
            let (ro, rl) = self.block(back(rank, (k + 1) as u64, p));
            for (o, l) in pieces(ro, rl, self.chunks) {
                e.recv_reduce(
                    prev,
                    Slice::new(Buf::Input, o, l),
                    Slice::new(Buf::Output, o, l),
                );
            }
        } else {
            let k = round - (p - 1);
            let (so, sl) = self.block(back(rank + 1, k as u64, p));
            for (o, l) in pieces(so, sl, self.chunks) {
                e.send(next, Slice::new(Buf::Output, o, l));
            }
            let (ro, rl) = self.block(back(rank, k as u64, p));
            for (o, l) in pieces(ro, rl, self.chunks) {
                e.recv(prev, Slice::new(Buf::Output, o, l));
            }
        }
    }

    fn round_class(&self, round: u32) -> u64 {
        // With equal blocks every step of a half moves the same amounts between the same
        // neighbours; otherwise which rank moves the larger block rotates.
        if self.n % self.p as u64 == 0 {
            u64::from(round >= self.p - 1)
        } else {
            2 + round as u64
        }
    }
}

/// Ring all-gather: step `k` sends block `r−k` and receives block `r−k−1`, straight into
/// the output.
#[derive(Debug)]
pub struct RingAllGather {
    p: u32,
    c: u64,
    chunks: u32,
}

impl RingAllGather {
    pub fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        RingAllGather {
            p: spec.world,
            c: spec.count,
            chunks: params.chunks,
        }
    }
}

impl Schedule for RingAllGather {
    fn rounds(&self) -> u32 {
        self.p - 1
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let (p, c) = (self.p, self.c);
        let (next, prev) = ring_neighbours(rank, p);
        let mut e = Emitter::new(out, round);
        let k = round;
        if k == 0 {
            e.copy(
                Slice::new(Buf::Input, 0, c),
                Slice::new(Buf::Output, rank as u64 * c, c),
            );
        }
        let sb = back(rank, k as u64, p) as u64;
        for (o, l) in pieces(0, c, self.chunks) {
            let src = if k == 0 {
                Slice::new(Buf::Input, o, l)
            } else {
                Slice::new(Buf::Output, sb * c + o, l)
            };
            e.send(next, src);
        }
        let rb = back(rank, (k + 1) as u64, p) as u64;
        for (o, l) in pieces(0, c, self.chunks) {
            e.recv(prev, Slice::new(Buf::Output, rb * c + o, l));
        }
    }

    fn round_class(&self, round: u32) -> u64 {
        u64::from(round > 0)
    }
}

/// Ring reduce-scatter: step `k` forwards the partial sum of block `r−k−1` and reduces
/// block `r−k−2` with the local input; the last step lands block `r` in the output. Partial
/// sums live in two scratch blocks used alternately.
#[derive(Debug)]
pub struct RingReduceScatter {
    p: u32,
    c: u64,
    chunks: u32,
}

impl RingReduceScatter {
    pub fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        RingReduceScatter {
            p: spec.world,
            c: spec.count,
            chunks: params.chunks,
        }
    }

    fn slot(&self, k: u32) -> u64 {
        (k % 2) as u64 * self.c
    }
}

impl Schedule for RingReduceScatter {
    fn rounds(&self) -> u32 {
        self.p - 1
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let (p, c) = (self.p, self.c);
        let (next, prev) = ring_neighbours(rank, p);
        let mut e = Emitter::new(out, round);
        let k = round;
        let sb = back(rank, (k + 1) as u64, p) as u64;
        for (o, l) in pieces(0, c, self.chunks) {
            let src = if k == 0 {
                Slice::new(Buf::Input, sb * c + o, l)
            } else {
                Slice::new(Buf::Scratch, self.slot(k - 1) + o, l)
            };
            e.send(next, src);
        }
        let rb = back(rank, (k + 2) as u64, p) as u64;
        let last = k == p - 2;
        for (o, l) in pieces(0, c, self.chunks) {
            let dst = if last {
                Slice::new(Buf::Output, o, l)
            } else {
                Slice::new(Buf::Scratch, self.slot(k) + o, l)
            };
            e.recv_reduce(prev, Slice::new(Buf::Input, rb * c + o, l), dst);
        }
    }

    fn scratch_len(&self, _rank: Rank) -> u64 {
        if self.p > 2 {
            2 * self.c
        } else {
            0
        }
    }

    fn round_class(&self, _round: u32) -> u64 {
        0
    }
}
