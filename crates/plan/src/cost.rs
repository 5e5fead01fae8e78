//! Analytical cost of a plan on a uniform network: every message pays a latency α, every
//! byte crosses a link of bandwidth B, every reduced byte costs γ.
//!
//! Rounds run one after the other. A round costs α for each peer its busiest sender sends
//! to (messages to one peer in one round go back to back; overheads of different peers
//! are paid one after the other), plus its busiest rank's
//! traffic — the larger of bytes sent and bytes received, links being full duplex — over
//! B, plus its busiest rank's reduced bytes times γ. For the textbook
//! algorithms this gives the textbook formulas (ring all-reduce:
//! 2(p−1)α + 2(p−1)/p·n/B + (p−1)/p·n·γ). Local copies are free. Rounds of equal class
//! ([`crate::Schedule::round_class`]) are priced once.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ir::OpKind;
use crate::schedule::Plan;

/// A network where every pair of ranks is connected alike.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct UniformNetwork {
    /// Seconds per message.
    pub alpha_s: f64,
    /// Bytes per second per direction of a link.
    pub bandwidth_bytes_per_s: f64,
    /// Seconds per byte reduced.
    pub gamma_s_per_byte: f64,
}

impl UniformNetwork {
    pub fn new(alpha_s: f64, bandwidth_bytes_per_s: f64, gamma_s_per_byte: f64) -> Self {
        UniformNetwork {
            alpha_s,
            bandwidth_bytes_per_s,
            gamma_s_per_byte,
        }
    }
}

/// Predicted time of a plan, split into its terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub total_s: f64,
    pub latency_s: f64,
    pub bandwidth_s: f64,
    pub reduction_s: f64,
    /// Rounds that send at least one message.
    pub rounds_with_traffic: u32,
    /// Sum over rounds of the busiest rank's bytes (the bandwidth term times B).
    pub critical_bytes: f64,
}

#[derive(Clone, Copy, Default)]
struct RoundCost {
    /// Peers of the rank that sends to the most peers in the round.
    messages: u64,
    bytes: f64,
    reduced_bytes: f64,
}

/// Prices `plan` on `net`.
pub fn uniform_cost(plan: &Plan, net: &UniformNetwork) -> Cost {
    let p = plan.world() as usize;
    let size = plan.spec().dtype.size() as f64;
    let mut sent = vec![0u64; p];
    let mut recv = vec![0u64; p];
    let mut reduced = vec![0u64; p];
    let mut messages = vec![0u64; p];
    let mut peers: Vec<u32> = Vec::new();
    let mut ops = Vec::new();
    let mut seen: HashMap<u64, RoundCost> = HashMap::new();
    let mut cost = Cost::default();
    for round in 0..plan.rounds() {
        let class = plan.round_class(round);
        let rc = match seen.get(&class) {
            Some(rc) => *rc,
            None => {
                sent.fill(0);
                recv.fill(0);
                reduced.fill(0);
                messages.fill(0);
                for rank in 0..plan.world() {
                    ops.clear();
                    plan.emit(rank, round, &mut ops);
                    peers.clear();
                    for op in &ops {
                        let r = rank as usize;
                        match op.kind {
                            OpKind::Send { peer, src } => {
                                sent[r] += src.len;
                                if !peers.contains(&peer) {
                                    peers.push(peer);
                                    messages[r] += 1;
                                }
                            }
                            OpKind::Recv { dst, .. } | OpKind::RecvReduce { dst, .. } => {
                                recv[r] += dst.len
                            }
                            _ => {}
                        }
                        reduced[r] += op.reduced_len();
                    }
                }
                let busiest = (0..p).map(|r| sent[r].max(recv[r])).max().unwrap_or(0);
                let rc = RoundCost {
                    // Zero-length messages (barrier tokens) still pay the latency.
                    messages: messages.iter().copied().max().unwrap_or(0),
                    bytes: busiest as f64 * size,
                    reduced_bytes: reduced.iter().copied().max().unwrap_or(0) as f64 * size,
                };
                seen.insert(class, rc);
                rc
            }
        };
        if rc.messages > 0 {
            cost.rounds_with_traffic += 1;
            cost.latency_s += net.alpha_s * rc.messages as f64;
        }
        cost.critical_bytes += rc.bytes;
        cost.bandwidth_s += rc.bytes / net.bandwidth_bytes_per_s;
        cost.reduction_s += rc.reduced_bytes * net.gamma_s_per_byte;
    }
    cost.total_s = cost.latency_s + cost.bandwidth_s + cost.reduction_s;
    cost
}
