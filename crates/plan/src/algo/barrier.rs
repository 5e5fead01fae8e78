//! The dissemination barrier (Hensgen, Finkel and Manber): in round `k` rank `r` sends a
//! token to `r + 2^k` and receives one from `r − 2^k`. After round `k` a rank has heard,
//! directly or through others, from the `2^(k+1) − 1` ranks before it, so `⌈lg p⌉` rounds
//! reach everyone for any `p`, not only powers of two.

use std::sync::Arc;

use crate::ir::{Emitter, Op, Rank};

use super::partition::{back, ceil_log2, fwd};
use crate::schedule::Schedule;
use crate::spec::CollectiveSpec;

#[derive(Debug)]
struct Dissemination {
    p: u32,
}

impl Schedule for Dissemination {
    fn rounds(&self) -> u32 {
        ceil_log2(self.p)
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let d = 1u64 << round;
        let mut e = Emitter::new(out, round);
        // Tokens carry no data, so the plain helpers would drop them.
        e.send_token(fwd(rank, d, self.p));
        e.recv_token(back(rank, d, self.p));
    }
}

/// The dissemination barrier over `spec.world ≥ 2` ranks.
pub fn dissemination(spec: &Arc<CollectiveSpec>) -> Arc<dyn Schedule> {
    Arc::new(Dissemination { p: spec.world })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::ir::OpKind;
    use crate::schedule::{Plan, PlanParams};
    use crate::spec::Collective;
    use crate::verify::verify;

    fn plan(p: u32) -> Plan {
        let spec = CollectiveSpec::new(Collective::Barrier, p, 0);
        build(spec, Algorithm::Dissemination, PlanParams::default()).unwrap()
    }

    #[test]
    fn ceil_log2_values() {
        let want = [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (1000, 10),
        ];
        for (p, lg) in want {
            assert_eq!(ceil_log2(p), lg, "p={p}");
        }
        assert_eq!(ceil_log2(u32::MAX), 32);
        assert_eq!(back(0, 3, 5), 2);
        assert_eq!(fwd(u32::MAX - 1, 2, u32::MAX), 1);
    }

    #[test]
    fn one_token_each_way_per_round() {
        for p in 2..=40 {
            let plan = plan(p);
            assert_eq!(plan.rounds(), ceil_log2(p), "p={p}");
            for rank in 0..p {
                for round in 0..plan.rounds() {
                    let mut ops = Vec::new();
                    plan.emit(rank, round, &mut ops);
                    let d = 1u64 << round;
                    assert_eq!(ops.len(), 2, "p={p} rank={rank} round={round}");
                    assert!(matches!(ops[0].kind, OpKind::Send { peer, src }
                        if peer == fwd(rank, d, p) && src.len == 0));
                    assert!(matches!(ops[1].kind, OpKind::Recv { peer, dst }
                        if peer == back(rank, d, p) && dst.len == 0));
                }
            }
            verify(&plan).unwrap_or_else(|e| panic!("p={p}: {e}"));
        }
    }

    /// The same barrier missing its last round.
    #[derive(Debug)]
    struct Truncated(Dissemination);

    impl Schedule for Truncated {
        fn rounds(&self) -> u32 {
            self.0.rounds() - 1
        }

        fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
            self.0.emit(rank, round, out)
        }
    }

    #[test]
    fn every_round_is_needed() {
        for p in [3, 4, 5, 8, 13] {
            let spec = Arc::new(CollectiveSpec::new(Collective::Barrier, p, 0));
            let short = Plan::new(
                spec,
                Algorithm::Dissemination,
                PlanParams::default(),
                Arc::new(Truncated(Dissemination { p })),
            );
            let err = verify(&short).unwrap_err();
            assert!(err.message.contains("without having heard"), "p={p}: {err}");
        }
    }
}
