//! Pairwise all-to-all and all-to-all-v: in step `k = 1, …, p−1` rank `r` sends its block
//! for `r + k` and receives the block of `r − k`, so every rank talks to one peer each way
//! per round and no link carries more than one block at a time. Step `k` is round `k − 1`;
//! round 0 also copies the rank's own block.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::partition::pieces;
use super::partition::{back, fwd};

/// Pairwise all-to-all or all-to-all-v, by `spec.collective`.
pub fn pairwise(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
) -> Result<Arc<dyn Schedule>, PlanError> {
    match spec.collective {
        Collective::AllToAll | Collective::AllToAllV => Ok(Arc::new(Pairwise {
            spec: Arc::clone(spec),
            chunks: params.chunks,
        })),
        c => Err(PlanError::param(
            "algorithm",
            format!("pairwise serves alltoall and alltoallv, not {c}"),
        )),
    }
}

#[derive(Debug)]
struct Pairwise {
    spec: Arc<CollectiveSpec>,
    chunks: u32,
}

impl Pairwise {
    /// The block from `from` to `to`: (offset in `from`'s input, offset in `to`'s output,
    /// length).
    fn block(&self, from: Rank, to: Rank) -> (u64, u64, u64) {
        let spec = &*self.spec;
        if spec.collective == Collective::AllToAllV {
            let m = spec.matrix();
            (
                m.send_offset(from, to),
                m.recv_offset(from, to),
                m.get(from, to),
            )
        } else {
            let c = spec.count;
            (to as u64 * c, from as u64 * c, c)
        }
    }
}

impl Schedule for Pairwise {
    fn rounds(&self) -> u32 {
        self.spec.world - 1
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let p = self.spec.world;
        let k = round as u64 + 1;
        let mut e = Emitter::new(out, round);
        if round == 0 {
            let (so, ro, len) = self.block(rank, rank);
            e.copy(
                Slice::new(Buf::Input, so, len),
                Slice::new(Buf::Output, ro, len),
            );
        }
        let to = fwd(rank, k, p);
        let (so, _, len) = self.block(rank, to);
        for (o, l) in pieces(so, len, self.chunks) {
            e.send(to, Slice::new(Buf::Input, o, l));
        }
        let from = back(rank, k, p);
        let (_, ro, len) = self.block(from, rank);
        for (o, l) in pieces(ro, len, self.chunks) {
            e.recv(from, Slice::new(Buf::Output, o, l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::exec::execute;
    use crate::ir::OpKind;
    use crate::schedule::Plan;
    use crate::spec::{CountMatrix, DType, Placement};
    use crate::verify::verify;

    fn build_pairwise(spec: CollectiveSpec, chunks: u32) -> Plan {
        let params = PlanParams::default().with_chunks(chunks);
        build(spec.with_dtype(DType::I64), Algorithm::Pairwise, params).unwrap()
    }

    #[test]
    fn p_minus_1_rounds_one_peer_each_way() {
        for p in 2..=17 {
            let plan = build_pairwise(CollectiveSpec::new(Collective::AllToAll, p, 3), 1);
            assert_eq!(plan.rounds(), p - 1);
            for rank in 0..p {
                for round in 0..plan.rounds() {
                    let mut ops = Vec::new();
                    plan.emit(rank, round, &mut ops);
                    let k = round as u64 + 1;
                    let peers: Vec<_> = ops
                        .iter()
                        .filter_map(|o| match o.kind {
                            OpKind::Send { peer, .. } => Some(('s', peer)),
                            OpKind::Recv { peer, .. } => Some(('r', peer)),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(peers, [('s', fwd(rank, k, p)), ('r', back(rank, k, p))]);
                }
            }
        }
    }

    #[test]
    fn alltoall_by_hand() {
        let p = 4i64;
        // Block j of rank r holds [100r + 10j, 100r + 10j + 1].
        let inputs: Vec<Vec<i64>> = (0..p)
            .map(|r| {
                (0..p)
                    .flat_map(|j| [100 * r + 10 * j, 100 * r + 10 * j + 1])
                    .collect()
            })
            .collect();
        let want: Vec<Vec<i64>> = vec![
            vec![0, 1, 100, 101, 200, 201, 300, 301],
            vec![10, 11, 110, 111, 210, 211, 310, 311],
            vec![20, 21, 120, 121, 220, 221, 320, 321],
            vec![30, 31, 130, 131, 230, 231, 330, 331],
        ];
        for chunks in [1, 2, 5] {
            let plan = build_pairwise(CollectiveSpec::new(Collective::AllToAll, 4, 2), chunks);
            let outs = execute::<i64>(&plan, Placement::OutOfPlace, &inputs).unwrap();
            assert_eq!(outs, want, "chunks={chunks}");
        }
    }

    #[test]
    fn alltoallv_by_hand() {
        let m = CountMatrix::from_rows(&[vec![1, 0, 2], vec![3, 1, 0], vec![0, 2, 1]]).unwrap();
        let inputs: Vec<Vec<i64>> =
            vec![vec![0, 1, 2], vec![100, 101, 102, 103], vec![200, 201, 202]];
        let want: Vec<Vec<i64>> =
            vec![vec![0, 100, 101, 102], vec![103, 200, 201], vec![1, 2, 202]];
        for chunks in [1, 2] {
            let plan = build_pairwise(CollectiveSpec::all_to_all_v(m.clone()), chunks);
            // Empty blocks (0 -> 1, 1 -> 2, 2 -> 0) send nothing.
            let mut transfers = Vec::new();
            plan.transfers(0, &mut transfers);
            assert!(transfers.is_empty(), "{transfers:?}");
            let outs = execute::<i64>(&plan, Placement::OutOfPlace, &inputs).unwrap();
            assert_eq!(outs, want, "chunks={chunks}");
        }
    }

    #[test]
    fn verified_for_small_worlds() {
        for p in 2..=16u32 {
            for (count, chunks) in [(0, 1), (1, 1), (3, 2)] {
                let plan =
                    build_pairwise(CollectiveSpec::new(Collective::AllToAll, p, count), chunks);
                verify(&plan).unwrap_or_else(|e| panic!("p={p} count={count}: {e}"));
            }
            let rows: Vec<Vec<u64>> = (0..p as u64)
                .map(|i| (0..p as u64).map(|j| (i * 5 + j * 3) % 4).collect())
                .collect();
            let spec = CollectiveSpec::all_to_all_v(CountMatrix::from_rows(&rows).unwrap());
            let plan = build_pairwise(spec, 2);
            verify(&plan).unwrap_or_else(|e| panic!("alltoallv p={p}: {e}"));
        }
    }

    #[test]
    fn refuses_other_collectives() {
        let spec = Arc::new(CollectiveSpec::new(Collective::AllGather, 4, 4));
        let err = pairwise(&spec, &PlanParams::default()).unwrap_err();
        assert!(err.to_string().contains("alltoall"), "{err}");
    }
}
