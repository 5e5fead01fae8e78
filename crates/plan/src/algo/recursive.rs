//! Recursive doubling and Rabenseifner's (recursive halving, then doubling) all-reduce, for
//! any world size.
//!
//! Both run their main phase on a power-of-two group of `p'` active ranks. When `p` is not
//! a power of two, `rem = p − p'` pairs fold first: in an extra first round rank `2i` hands
//! its input to `2i+1`, which reduces it into its output and stands in for both; in an extra
//! last round `2i+1` hands the result back. Active rank `v` (dense numbering) is the odd
//! rank `2v+1` for `v < rem` and rank `v + rem` otherwise.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::CollectiveSpec;

use super::partition::{pieces, split};

/// Recursive doubling: round `k` of the main phase exchanges the whole buffer with active
/// rank `v ^ 2^k`.
pub fn recursive_doubling(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    Ok(Arc::new(Recursive::new(spec, params, Kind::Doubling)))
}

/// Rabenseifner: a recursive-halving reduce-scatter leaves active rank `v` with the full
/// reduction of block `v`, then a recursive-doubling all-gather copies every block out.
pub fn rabenseifner(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    Ok(Arc::new(Recursive::new(
        spec,
        params,
        Kind::HalvingDoubling,
    )))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Doubling,
    HalvingDoubling,
}

#[derive(Debug)]
struct Recursive {
    kind: Kind,
    n: u64,
    chunks: u32,
    /// Active ranks, the largest power of two `<= p`.
    active: u32,
    /// Ranks beyond `active`: the number of folded pairs.
    rem: u32,
}

impl Recursive {
    fn new(spec: &CollectiveSpec, params: &PlanParams, kind: Kind) -> Self {
        let p = spec.world;
        debug_assert!(p >= 2);
        let active = 1 << (31 - p.leading_zeros());
        Recursive {
            kind,
            n: spec.count,
            chunks: params.chunks,
            active,
            rem: p - active,
        }
    }

    fn lg(&self) -> u32 {
        self.active.trailing_zeros()
    }

    fn fold_rounds(&self) -> u32 {
        u32::from(self.rem > 0)
    }

    fn main_rounds(&self) -> u32 {
        match self.kind {
            Kind::Doubling => self.lg(),
            Kind::HalvingDoubling => 2 * self.lg(),
        }
    }

    /// Position among the active ranks; `None` for a rank that folded its data away.
    fn vrank(&self, rank: Rank) -> Option<u32> {
        if rank < 2 * self.rem {
            (rank % 2 == 1).then_some(rank / 2)
        } else {
            Some(rank - self.rem)
        }
    }

    fn real(&self, v: u32) -> Rank {
        if v < self.rem {
            2 * v + 1
        } else {
            v + self.rem
        }
    }

    /// Where an active rank's data lives when the main phase starts: folded ranks have
    /// already reduced their partner's input into their output.
    fn start_buf(&self, rank: Rank) -> Buf {
        if rank < 2 * self.rem {
            Buf::Output
        } else {
            Buf::Input
        }
    }

    /// Elements of the `count` blocks starting at block `b` (of `active` blocks).
    fn span(&self, b: u32, count: u32) -> (u64, u64) {
        let parts = self.active as u64;
        let (off, _) = split(self.n, parts, b as u64);
        let (last, len) = split(self.n, parts, (b + count - 1) as u64);
        (off, last + len - off)
    }

    fn pieces(&self, (off, len): (u64, u64)) -> impl Iterator<Item = (u64, u64)> {
        pieces(off, len, self.chunks)
    }

    fn emit_fold(&self, rank: Rank, unfold: bool, e: &mut Emitter<'_>) {
        if rank >= 2 * self.rem {
            return;
        }
        let odd = rank % 2 == 1;
        for (o, l) in self.pieces((0, self.n)) {
            let (inp, out) = (Slice::new(Buf::Input, o, l), Slice::new(Buf::Output, o, l));
            match (unfold, odd) {
                (false, false) => e.send(rank + 1, inp),
                (false, true) => e.recv_reduce(rank - 1, inp, out),
                (true, true) => e.send(rank - 1, out),
                (true, false) => e.recv(rank + 1, out),
            }
        }
    }

    fn emit_doubling(&self, rank: Rank, v: u32, k: u32, e: &mut Emitter<'_>) {
        let peer = self.real(v ^ (1 << k));
        let cur = if k == 0 {
            self.start_buf(rank)
        } else {
            Buf::Output
        };
        let all = (0, self.n);
        for (o, l) in self.pieces(all) {
            e.send(peer, Slice::new(cur, o, l));
        }
        // The partner's data cannot land in the output: in place that is the input, which
        // is being sent this round. It goes to scratch and is combined afterwards.
        for (o, l) in self.pieces(all) {
            let scr = Slice::new(Buf::Scratch, o, l);
            if cur == Buf::Input {
                e.recv_reduce(peer, Slice::new(Buf::Input, o, l), scr);
            } else {
                e.recv(peer, scr);
            }
        }
        for (o, l) in self.pieces(all) {
            let (scr, out) = (
                Slice::new(Buf::Scratch, o, l),
                Slice::new(Buf::Output, o, l),
            );
            if cur == Buf::Input {
                e.copy(scr, out);
            } else {
                e.reduce(scr, out);
            }
        }
    }

    /// The range of blocks (first block, number of blocks) active rank `v` works on before
    /// reduce-scatter round `k`: bit `j` of `v` chose the upper or lower half in round `j`.
    fn range_before(&self, v: u32, k: u32) -> (u32, u32) {
        let lo = (0..k)
            .filter(|j| (v >> j) & 1 == 1)
            .map(|j| self.active >> (j + 1))
            .sum();
        (lo, self.active >> k)
    }

    /// Reduce-scatter round `k` exchanges with the partner at distance `2^k` (1, 2, 4, …)
    /// the half of the current range that bit `k` gives away, so the largest halves travel
    /// between neighbouring ranks — usually the fastest links — and every partial sum covers
    /// an aligned, contiguous group of ranks. Active rank `v` ends owning block
    /// `bit-reverse(v)`. The all-gather replays the rounds backwards.
    fn emit_halving_doubling(&self, rank: Rank, v: u32, k: u32, e: &mut Emitter<'_>) {
        let lg = self.lg();
        let step = if k < lg { k } else { 2 * lg - 1 - k };
        let peer = self.real(v ^ (1 << step));
        let (lo, size) = self.range_before(v, step);
        let half = size / 2;
        let upper = (v >> step) & 1;
        let mine = lo + upper * half;
        let theirs = lo + (1 - upper) * half;
        if k < lg {
            let cur = if k == 0 {
                self.start_buf(rank)
            } else {
                Buf::Output
            };
            for (o, l) in self.pieces(self.span(theirs, half)) {
                e.send(peer, Slice::new(cur, o, l));
            }
            for (o, l) in self.pieces(self.span(mine, half)) {
                e.recv_reduce(peer, Slice::new(cur, o, l), Slice::new(Buf::Output, o, l));
            }
        } else {
            for (o, l) in self.pieces(self.span(mine, half)) {
                e.send(peer, Slice::new(Buf::Output, o, l));
            }
            for (o, l) in self.pieces(self.span(theirs, half)) {
                e.recv(peer, Slice::new(Buf::Output, o, l));
            }
        }
    }
}

impl Schedule for Recursive {
    fn rounds(&self) -> u32 {
        self.main_rounds() + 2 * self.fold_rounds()
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let mut e = Emitter::new(out, round);
        let fold = self.fold_rounds();
        if fold == 1 && (round == 0 || round == self.rounds() - 1) {
            self.emit_fold(rank, round != 0, &mut e);
            return;
        }
        let Some(v) = self.vrank(rank) else { return };
        let k = round - fold;
        match self.kind {
            Kind::Doubling => self.emit_doubling(rank, v, k, &mut e),
            Kind::HalvingDoubling => self.emit_halving_doubling(rank, v, k, &mut e),
        }
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        match self.kind {
            Kind::Doubling if self.vrank(rank).is_some() => self.n,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::exec::execute;
    use crate::schedule::Plan;
    use crate::spec::{Collective, Placement};

    fn plan(algorithm: Algorithm, p: u32, n: u64, chunks: u32) -> Plan {
        let spec = CollectiveSpec::new(Collective::AllReduce, p, n);
        build(spec, algorithm, PlanParams::default().with_chunks(chunks)).unwrap()
    }

    #[test]
    fn round_counts() {
        for p in 2..=70u32 {
            let lg = 31 - p.leading_zeros();
            let fold = if p.is_power_of_two() { 0 } else { 2 };
            let rd = plan(Algorithm::RecursiveDoubling, p, 5, 1);
            let rhd = plan(Algorithm::Rabenseifner, p, 5, 1);
            assert_eq!(rd.rounds(), lg + fold, "rd p={p}");
            assert_eq!(rhd.rounds(), 2 * lg + fold, "rhd p={p}");
        }
    }

    #[test]
    fn rabenseifner_traffic_is_textbook_for_powers_of_two() {
        for lg in 1..=6u32 {
            let p = 1u32 << lg;
            let n = 8 * p as u64;
            for chunks in [1, 3] {
                let plan = plan(Algorithm::Rabenseifner, p, n, chunks);
                let halves: Vec<u64> = (1..=lg).map(|k| n >> k).collect();
                let expected: Vec<u64> =
                    halves.iter().chain(halves.iter().rev()).copied().collect();
                let mut sent = vec![vec![0u64; plan.rounds() as usize]; p as usize];
                let mut transfers = Vec::new();
                for round in 0..plan.rounds() {
                    transfers.clear();
                    plan.transfers(round, &mut transfers);
                    for t in &transfers {
                        sent[t.src as usize][round as usize] += t.len;
                    }
                }
                for (rank, per_round) in sent.iter().enumerate() {
                    assert_eq!(per_round, &expected, "p={p} chunks={chunks} rank {rank}");
                    let reduced: u64 = plan.program(rank as Rank).iter().map(Op::reduced_len).sum();
                    assert_eq!(reduced, (p as u64 - 1) * n / p as u64, "p={p} rank {rank}");
                }
                let total: u64 = expected.iter().sum();
                assert_eq!(total, 2 * (p as u64 - 1) * n / p as u64);
            }
        }
    }

    #[test]
    fn outputs_are_bitwise_identical_across_ranks() {
        for algorithm in [Algorithm::RecursiveDoubling, Algorithm::Rabenseifner] {
            for p in [2u32, 3, 5, 6, 7, 8, 12, 13, 16] {
                for (n, chunks) in [(1u64, 1u32), (2 * p as u64 + 3, 1), (37, 3)] {
                    let plan = plan(algorithm.clone(), p, n, chunks);
                    let inputs: Vec<Vec<f32>> = (0..p)
                        .map(|r| {
                            (0..n)
                                .map(|i| {
                                    let x = (r as u64 * 7919 + i * 104_729) % 1009;
                                    (x as f32 * 0.013_7 + 0.1).powi(3) - 3.3
                                })
                                .collect()
                        })
                        .collect();
                    for placement in [Placement::OutOfPlace, Placement::InPlace] {
                        let outputs = execute::<f32>(&plan, placement, &inputs).unwrap();
                        let desc = format!("{algorithm} p={p} n={n} chunks={chunks} {placement:?}");
                        for (i, got) in outputs[0].iter().enumerate() {
                            let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
                            let scale: f64 = inputs.iter().map(|v| (v[i] as f64).abs()).sum();
                            let err = (*got as f64 - exact).abs();
                            assert!(err <= 1e-5 * scale, "{desc} element {i}");
                        }
                        for (r, out) in outputs.iter().enumerate() {
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(out), bits(&outputs[0]), "{desc} rank {r}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn verifies_out_of_place_and_in_place() {
        for algorithm in [Algorithm::RecursiveDoubling, Algorithm::Rabenseifner] {
            for p in [2u32, 3, 4, 6, 11, 32, 33] {
                for (n, chunks) in [(0u64, 1u32), (3, 2), (3 * p as u64 + 1, 4)] {
                    let plan = plan(algorithm.clone(), p, n, chunks);
                    crate::verify::verify(&plan)
                        .unwrap_or_else(|e| panic!("{algorithm} p={p} n={n} chunks={chunks}: {e}"));
                }
            }
        }
    }
}
