//! Rings with channels, NCCL-style: the data is split into one contiguous share per
//! channel (of every block, as [`super::compose::Channels`] does), and channel `k` runs a
//! ring all-reduce, all-gather or reduce-scatter in its own rank order `orders[k]`. Orders
//! made from a topology enter and leave each host through different GPUs and NICs, so that
//! every NIC carries a channel ([`crate::algo`] users build them; topoccl-topo's planner
//! makes rail-aligned ones).
//!
//! A ring in an order is the ring in rank order run by positions: position `i` is rank
//! `orders[k][i]`; peers are mapped from positions to ranks, and for all-gather's output
//! and reduce-scatter's input, whose block `b` belongs to rank `b`, block `i` of a
//! position is block `orders[k][i]` of the rank. Limits: at most
//! [`PlanParams::MAX_CHANNELS`] orders, each a permutation of the ranks.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Op, OpKind, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::{Collective, CollectiveSpec};

use super::compose::Channels;
use super::ring::{RingAllGather, RingAllReduce, RingReduceScatter};

/// Checks that `orders` are 1 to [`PlanParams::MAX_CHANNELS`] permutations of `0..world`.
pub fn check_orders(orders: &[Vec<Rank>], world: u32) -> Result<(), PlanError> {
    if orders.is_empty() || orders.len() > PlanParams::MAX_CHANNELS as usize {
        return Err(PlanError::param(
            "orders",
            format!(
                "{} ring orders given; rings takes 1 to {} (one per channel)",
                orders.len(),
                PlanParams::MAX_CHANNELS
            ),
        ));
    }
    for (k, order) in orders.iter().enumerate() {
        let mut seen = vec![false; world as usize];
        if order.len() != world as usize {
            return Err(PlanError::param(
                "orders",
                format!(
                    "order {k} lists {} ranks; each order lists all {world} ranks once",
                    order.len()
                ),
            ));
        }
        for &r in order {
            match seen.get_mut(r as usize) {
                Some(s) if !*s => *s = true,
                Some(_) => {
                    return Err(PlanError::param(
                        "orders",
                        format!("order {k} lists rank {r} twice; each order is a permutation"),
                    ))
                }
                None => {
                    return Err(PlanError::param(
                        "orders",
                        format!("order {k} lists rank {r}, beyond the world of {world} ranks"),
                    ))
                }
            }
        }
    }
    Ok(())
}

/// The rings plan of `spec` over `orders` (checked by [`check_orders`]).
pub fn rings(
    spec: &Arc<CollectiveSpec>,
    params: &PlanParams,
    orders: &[Vec<Rank>],
) -> Result<Arc<dyn Schedule>, PlanError> {
    check_orders(orders, spec.world)?;
    let make = |sub: &Arc<CollectiveSpec>, k: usize| -> Result<Arc<dyn Schedule>, PlanError> {
        let ring: Arc<dyn Schedule> = match sub.collective {
            Collective::AllReduce => Arc::new(RingAllReduce::new(sub, params)),
            Collective::AllGather => Arc::new(RingAllGather::new(sub, params)),
            Collective::ReduceScatter => Arc::new(RingReduceScatter::new(sub, params)),
            c => {
                return Err(PlanError::param(
                    "algorithm",
                    format!("rings computes allreduce, allgather and reducescatter, not {c}"),
                ))
            }
        };
        Ok(Arc::new(Permuted::new(ring, &orders[k], sub)))
    };
    Ok(Arc::new(Channels::of_shares(
        spec,
        orders.len() as u64,
        make,
        true,
    )?))
}

/// A schedule over positions run with ranks in another order.
#[derive(Debug)]
struct Permuted {
    inner: Arc<dyn Schedule>,
    /// Position → rank.
    order: Vec<Rank>,
    /// Rank → position.
    pos: Vec<u32>,
    /// The buffer whose blocks belong to ranks, and its block length (elements).
    blocks: Option<(Buf, u64)>,
}

impl Permuted {
    fn new(inner: Arc<dyn Schedule>, order: &[Rank], spec: &CollectiveSpec) -> Permuted {
        let mut pos = vec![0; order.len()];
        for (i, &r) in order.iter().enumerate() {
            pos[r as usize] = i as u32;
        }
        let blocks = match spec.collective {
            Collective::AllGather => Some((Buf::Output, spec.count)),
            Collective::ReduceScatter => Some((Buf::Input, spec.count)),
            _ => None,
        };
        Permuted {
            inner,
            order: order.to_vec(),
            pos,
            blocks,
        }
    }

    fn slice(&self, s: Slice) -> Slice {
        match self.blocks {
            Some((buf, len)) if s.buf == buf && len > 0 => {
                let (block, within) = (s.off / len, s.off % len);
                let owner = self
                    .order
                    .get(block as usize)
                    .copied()
                    .unwrap_or(block as u32);
                Slice::new(buf, owner as u64 * len + within, s.len)
            }
            _ => s,
        }
    }
}

impl Schedule for Permuted {
    fn rounds(&self) -> u32 {
        self.inner.rounds()
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let first = out.len();
        self.inner.emit(self.pos[rank as usize], round, out);
        for op in &mut out[first..] {
            match &mut op.kind {
                OpKind::Send { peer, .. }
                | OpKind::Recv { peer, .. }
                | OpKind::RecvReduce { peer, .. } => *peer = self.order[*peer as usize],
                OpKind::Copy { .. } | OpKind::Reduce { .. } => {}
            }
            op.map_slices(|s| self.slice(s));
        }
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        self.inner.scratch_len(self.pos[rank as usize])
    }

    fn channels(&self) -> u16 {
        self.inner.channels()
    }

    fn round_class(&self, round: u32) -> u64 {
        self.inner.round_class(round)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::{build, Algorithm};
    use crate::ir::OpKind;
    use crate::verify;
    use proptest::prelude::*;

    fn plan(c: Collective, p: u32, count: u64, orders: Vec<Vec<Rank>>, chunks: u32) -> crate::Plan {
        let spec = CollectiveSpec::new(c, p, count);
        build(
            spec,
            Algorithm::Rings { orders },
            PlanParams::default().with_chunks(chunks),
        )
        .unwrap()
    }

    /// Rail-aligned orders of `hosts` hosts with `g` GPUs each (rank h·g + i): channel k
    /// enters every host at GPU k and leaves at GPU k − 1.
    fn rail_orders(hosts: u32, g: u32) -> Vec<Vec<Rank>> {
        (0..g)
            .map(|k| {
                (0..hosts)
                    .flat_map(|h| (0..g).map(move |i| h * g + (k + i) % g))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_channel_follows_its_own_order() {
        let orders = rail_orders(2, 4);
        let pl = plan(Collective::AllReduce, 8, 64, orders.clone(), 1);
        verify(&pl).unwrap();
        assert_eq!(pl.channels(), 4);
        for (k, order) in orders.iter().enumerate() {
            for (i, &r) in order.iter().enumerate() {
                let next = order[(i + 1) % order.len()];
                let sends: Vec<u32> = pl
                    .program(r)
                    .iter()
                    .filter(|op| op.channel == k as u16)
                    .filter_map(|op| match op.kind {
                        OpKind::Send { peer, .. } => Some(peer),
                        _ => None,
                    })
                    .collect();
                assert!(!sends.is_empty());
                assert!(
                    sends.iter().all(|&p| p == next),
                    "channel {k} rank {r}: {sends:?}"
                );
            }
        }
        // Equal shares: the reduce-scatter rounds are one class, the all-gather ones another.
        assert_eq!(pl.round_class(0), pl.round_class(3));
        assert_ne!(pl.round_class(0), pl.round_class(9));
    }

    #[test]
    fn bad_orders_are_refused_with_what_to_do() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 4, 8);
        let bad = |orders: Vec<Vec<Rank>>| {
            build(
                spec.clone(),
                Algorithm::Rings { orders },
                PlanParams::default(),
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(vec![]).contains("1 to 64"));
        assert!(bad(vec![vec![0, 1, 2]]).contains("lists 3 ranks"));
        assert!(bad(vec![vec![0, 1, 1, 2]]).contains("rank 1 twice"));
        assert!(bad(vec![vec![0, 1, 2, 9]]).contains("beyond the world"));
        let e = build(
            spec,
            Algorithm::Rings {
                orders: vec![vec![0, 1, 2, 3]],
            },
            PlanParams::default().with_channels(2),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("give more orders"), "{e}");
    }

    #[test]
    fn plan_documents_keep_the_orders() {
        let alg = Algorithm::Rings {
            orders: rail_orders(2, 2),
        };
        let json = serde_json::to_string(&alg).unwrap();
        assert!(json.contains("\"orders\""), "{json}");
        let back: Algorithm = serde_json::from_str(&json).unwrap();
        assert_eq!(back, alg);
    }

    proptest! {
        #[test]
        fn rings_in_any_orders_verify(
            p in 2u32..9, channels in 1usize..5, count in 1u64..40, chunks in 1u32..3,
            seed in any::<u64>(),
            c in prop::sample::select(vec![
                Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter]),
        ) {
            // Orders drawn by a seeded shuffle.
            let mut state = seed | 1;
            let orders: Vec<Vec<Rank>> = (0..channels).map(|_| {
                let mut o: Vec<Rank> = (0..p).collect();
                for i in (1..o.len()).rev() {
                    state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                    o.swap(i, (state % (i as u64 + 1)) as usize);
                }
                o
            }).collect();
            let pl = plan(c, p, count, orders, chunks);
            prop_assert!(verify(&pl).is_ok(), "{:?}", verify(&pl).err());
        }
    }
}
