//! Bruck's log-round algorithms (Bruck et al., 1997): all-gather and all-to-all in
//! `⌈lg p⌉` rounds for any `p`, trading bandwidth (all-to-all) or a few split messages
//! (all-gather) for latency.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::partition::pieces;
use super::partition::{back, ceil_log2, fwd};

/// Bruck all-gather or all-to-all, by `spec.collective`.
pub fn bruck(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    match spec.collective {
        Collective::AllGather => Ok(Arc::new(BruckAllGather::new(spec, params))),
        Collective::AllToAll => Ok(Arc::new(BruckAllToAll::new(spec, params))),
        c => Err(PlanError::param(
            "algorithm",
            format!("bruck serves allgather and alltoall, not {c}"),
        )),
    }
}

/// All-gather: in round `k` rank `r` sends the `m = min(2^k, p − 2^k)` blocks it holds,
/// those of ranks `r, r+1, …, r+m−1`, to `r − 2^k` and receives the next `m` from `r + 2^k`.
///
/// Every rank keeps block `s` at `s · count` of its output, so what a sender holds and what
/// its receiver lacks sit at the same absolute positions: the data goes straight from one
/// output to the other and Bruck's final rotation disappears. A range that wraps past rank
/// `p − 1` is two runs of blocks, computed identically on both sides.
#[derive(Debug)]
struct BruckAllGather {
    p: u32,
    c: u64,
    chunks: u32,
}

impl BruckAllGather {
    fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        BruckAllGather {
            p: spec.world,
            c: spec.count,
            chunks: params.chunks,
        }
    }

    /// The blocks `first, first+1, …, first+m−1` (mod p) as at most two runs of
    /// consecutive blocks, as element (offset, length) of the output.
    fn runs(&self, first: Rank, m: u32) -> impl Iterator<Item = (u64, u64)> {
        let head = m.min(self.p - first);
        let c = self.c;
        [(first, head), (0, m - head)]
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(move |(b, n)| (b as u64 * c, n as u64 * c))
    }
}

impl Schedule for BruckAllGather {
    fn rounds(&self) -> u32 {
        ceil_log2(self.p)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let (p, c) = (self.p, self.c);
        // round < ⌈lg p⌉, so 2^round < p.
        let d = 1u32 << round;
        let m = d.min(p - d);
        let to = back(rank, d as u64, p);
        let from = fwd(rank, d as u64, p);
        let mut e = Emitter::new(out, round);
        if round == 0 {
            let own = Slice::new(Buf::Output, rank as u64 * c, c);
            e.copy(Slice::new(Buf::Input, 0, c), own);
            // Sending from the input keeps round 0's send independent of the copy.
            for (o, l) in pieces(0, c, self.chunks) {
                e.send(to, Slice::new(Buf::Input, o, l));
            }
        } else {
            for (off, len) in self.runs(rank, m) {
                for (o, l) in pieces(off, len, self.chunks) {
                    e.send(to, Slice::new(Buf::Output, o, l));
                }
            }
        }
        for (off, len) in self.runs(from, m) {
            for (o, l) in pieces(off, len, self.chunks) {
                e.recv(from, Slice::new(Buf::Output, o, l));
            }
        }
    }
}

/// All-to-all: block `i` of rank `r` is the one for rank `r + i`. In round `k` every block
/// whose index has bit `k` set moves on to `r + 2^k` (keeping its index), so a block
/// travels `i` ranks in the rounds of `i`'s set bits, and at the end rank `r` holds under
/// index `i` the block from rank `r − i`. Each round packs the moving blocks into one
/// message: one send and one receive per rank per round (`chunks > 1` cuts it into that
/// many pieces, still in the same round).
///
/// The classic rotation into a scratch array and the inverse rotation into the output are
/// folded into the packing and unpacking: a block is packed straight from the input in the
/// round of its lowest set bit and unpacked straight into the output in the round of its
/// highest, so only blocks with two or more set bits ever rest in the scratch array.
///
/// Scratch: a send area and a receive area of the largest message, then one slot per
/// index with several set bits.
#[derive(Debug)]
struct BruckAllToAll {
    p: u32,
    c: u64,
    chunks: u32,
    /// Blocks of the largest message.
    max_blocks: u64,
}

impl BruckAllToAll {
    fn new(spec: &CollectiveSpec, params: &PlanParams) -> Self {
        let p = spec.world;
        let max_blocks = (0..ceil_log2(p))
            .map(|k| moving_blocks(p, k))
            .max()
            .unwrap_or(0);
        BruckAllToAll {
            p,
            c: spec.count,
            chunks: params.chunks,
            max_blocks,
        }
    }

    fn send_area(&self) -> u64 {
        0
    }

    fn recv_area(&self) -> u64 {
        self.max_blocks * self.c
    }

    /// Scratch slot of index `i` (not a power of two): slots skip the powers of two, of
    /// which `⌊lg i⌋ + 1` lie below `i`.
    fn slot(&self, i: u32) -> Slice {
        debug_assert!(!i.is_power_of_two());
        let n = (i - 2 - i.ilog2()) as u64;
        Slice::new(
            Buf::Scratch,
            2 * self.max_blocks * self.c + n * self.c,
            self.c,
        )
    }
}

/// Indices in `1..p` with bit `k` set.
fn moving_blocks(p: u32, k: u32) -> u64 {
    let (p, d) = (p as u64, 1u64 << k);
    (p >> (k + 1)) * d + (p % (2 * d)).saturating_sub(d)
}

impl Schedule for BruckAllToAll {
    fn rounds(&self) -> u32 {
        ceil_log2(self.p)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let (p, c) = (self.p, self.c);
        let d = 1u32 << round;
        let moving = || (d..p).filter(move |i| i & d != 0);
        let n = moving_blocks(p, round) * c;
        let send = Slice::new(Buf::Scratch, self.send_area(), n);
        let recv = Slice::new(Buf::Scratch, self.recv_area(), n);
        let mut e = Emitter::new(out, round);
        if round == 0 {
            // Index 0 never moves.
            e.copy(
                Slice::new(Buf::Input, rank as u64 * c, c),
                Slice::new(Buf::Output, rank as u64 * c, c),
            );
        }
        for (j, i) in moving().enumerate() {
            let src = if i.trailing_zeros() == round {
                Slice::new(Buf::Input, fwd(rank, i as u64, p) as u64 * c, c)
            } else {
                self.slot(i)
            };
            e.copy(src, Slice::new(Buf::Scratch, send.off + j as u64 * c, c));
        }
        for (o, l) in pieces(send.off, send.len, self.chunks) {
            e.send(fwd(rank, d as u64, p), Slice::new(Buf::Scratch, o, l));
        }
        for (o, l) in pieces(recv.off, recv.len, self.chunks) {
            e.recv(back(rank, d as u64, p), Slice::new(Buf::Scratch, o, l));
        }
        for (j, i) in moving().enumerate() {
            let dst = if i.ilog2() == round {
                Slice::new(Buf::Output, back(rank, i as u64, p) as u64 * c, c)
            } else {
                self.slot(i)
            };
            e.copy(Slice::new(Buf::Scratch, recv.off + j as u64 * c, c), dst);
        }
    }

    fn scratch_len(&self, _rank: Rank) -> u64 {
        let resting = (self.p - 1 - ceil_log2(self.p)) as u64;
        (2 * self.max_blocks + resting) * self.c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::exec::execute;
    use crate::ir::OpKind;
    use crate::schedule::Plan;
    use crate::spec::{DType, Placement};
    use crate::verify::verify;

    fn plan(c: Collective, p: u32, count: u64, chunks: u32) -> Plan {
        let spec = CollectiveSpec::new(c, p, count).with_dtype(DType::I64);
        build(
            spec,
            Algorithm::Bruck,
            PlanParams::default().with_chunks(chunks),
        )
        .unwrap()
    }

    /// (sends, receives) of one rank in one round.
    fn messages(plan: &Plan, rank: Rank, round: u32) -> (usize, usize) {
        let mut ops = Vec::new();
        plan.emit(rank, round, &mut ops);
        let sends = ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Send { .. }))
            .count();
        let recvs = ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Recv { .. }))
            .count();
        (sends, recvs)
    }

    #[test]
    fn moving_blocks_counts_set_bits() {
        for p in 1..=70u32 {
            for k in 0..8 {
                let want = (1..p).filter(|i| i & (1 << k) != 0).count() as u64;
                assert_eq!(moving_blocks(p, k), want, "p={p} k={k}");
            }
        }
    }

    #[test]
    fn round_counts_are_ceil_lg_p() {
        for (p, lg) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (7, 3),
            (8, 3),
            (9, 4),
            (64, 6),
        ] {
            assert_eq!(plan(Collective::AllGather, p, 3, 1).rounds(), lg, "p={p}");
            assert_eq!(plan(Collective::AllToAll, p, 3, 1).rounds(), lg, "p={p}");
        }
    }

    #[test]
    fn alltoall_sends_one_message_per_rank_per_round() {
        for p in 2..=33 {
            let plan = plan(Collective::AllToAll, p, 2, 1);
            for rank in 0..p {
                for round in 0..plan.rounds() {
                    assert_eq!(
                        messages(&plan, rank, round),
                        (1, 1),
                        "p={p} r={rank} k={round}"
                    );
                }
            }
        }
    }

    #[test]
    fn allgather_sends_p_minus_1_blocks_in_at_most_two_messages_a_round() {
        for p in 2..=33u32 {
            let c = 3;
            let plan = plan(Collective::AllGather, p, c, 1);
            for rank in 0..p {
                let mut sent = 0;
                for round in 0..plan.rounds() {
                    let (s, r) = messages(&plan, rank, round);
                    assert!((1..=2).contains(&s) && (1..=2).contains(&r), "p={p}");
                    let mut ops = Vec::new();
                    plan.emit(rank, round, &mut ops);
                    sent += ops
                        .iter()
                        .filter(|o| matches!(o.kind, OpKind::Send { .. }))
                        .map(|o| o.len())
                        .sum::<u64>();
                }
                assert_eq!(sent, (p as u64 - 1) * c, "p={p} rank={rank}");
            }
        }
    }

    #[test]
    fn allgather_by_hand() {
        let (p, c) = (5u32, 2u64);
        let inputs: Vec<Vec<i64>> = (0..p as i64).map(|r| vec![10 * r, 10 * r + 1]).collect();
        let want: Vec<i64> = vec![0, 1, 10, 11, 20, 21, 30, 31, 40, 41];
        for chunks in [1, 2] {
            let plan = plan(Collective::AllGather, p, c, chunks);
            for placement in [Placement::OutOfPlace, Placement::InPlace] {
                let outs = execute::<i64>(&plan, placement, &inputs).unwrap();
                for (r, out) in outs.iter().enumerate() {
                    assert_eq!(out, &want, "rank {r} {placement:?} chunks={chunks}");
                }
            }
        }
    }

    #[test]
    fn alltoall_by_hand() {
        let p = 5i64;
        // Block j of rank r holds [100r + 10j, 100r + 10j + 1].
        let inputs: Vec<Vec<i64>> = (0..p)
            .map(|r| {
                (0..p)
                    .flat_map(|j| [100 * r + 10 * j, 100 * r + 10 * j + 1])
                    .collect()
            })
            .collect();
        let want: Vec<Vec<i64>> = vec![
            vec![0, 1, 100, 101, 200, 201, 300, 301, 400, 401],
            vec![10, 11, 110, 111, 210, 211, 310, 311, 410, 411],
            vec![20, 21, 120, 121, 220, 221, 320, 321, 420, 421],
            vec![30, 31, 130, 131, 230, 231, 330, 331, 430, 431],
            vec![40, 41, 140, 141, 240, 241, 340, 341, 440, 441],
        ];
        for chunks in [1, 3] {
            let plan = plan(Collective::AllToAll, p as u32, 2, chunks);
            let outs = execute::<i64>(&plan, Placement::OutOfPlace, &inputs).unwrap();
            assert_eq!(outs, want, "chunks={chunks}");
        }
    }

    #[test]
    fn alltoall_scratch_is_two_messages_and_the_resting_blocks() {
        // p = 7: messages of 3, 3 and 3 blocks; indices 3, 5, 6 rest between rounds.
        assert_eq!(
            plan(Collective::AllToAll, 7, 4, 1).scratch_len(0),
            (6 + 3) * 4
        );
        // p = 3: no index has two set bits.
        assert_eq!(plan(Collective::AllToAll, 3, 4, 1).scratch_len(0), 2 * 4);
    }

    #[test]
    fn verified_for_small_worlds() {
        for p in 2..=20 {
            for (count, chunks) in [(0, 1), (1, 1), (3, 1), (5, 4)] {
                for c in [Collective::AllGather, Collective::AllToAll] {
                    let plan = plan(c, p, count, chunks);
                    verify(&plan).unwrap_or_else(|e| panic!("{c} p={p} count={count}: {e}"));
                }
            }
        }
    }

    #[test]
    fn refuses_other_collectives() {
        let spec = Arc::new(CollectiveSpec::new(Collective::ReduceScatter, 4, 4));
        let err = bruck(&spec, &PlanParams::default()).unwrap_err();
        assert!(err.to_string().contains("allgather"), "{err}");
    }
}
