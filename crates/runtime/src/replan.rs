//! The closed loop: when a link slows down while a job runs, every rank re-plans at the
//! same call boundary, around it.
//!
//! | step | who | how |
//! |---|---|---|
//! | notice | a rank whose live view (`crate::live`, on while metrics are) has held a link from a peer congested, as the frames arrive, for `live::SUSTAINED` (2 s) | `Live::wants_replan` |
//! | ask | that rank, at its next [agreeing](agrees) call, unless `TOPOCCL_REPLAN=0` | sets [`FLAG_REPLAN`] on the call's frames |
//! | agree | every rank | each rank ORs the flags it receives into the frames it sends later in the call (`crate::matcher`); in an agreeing call every rank's output depends on every rank's input, so when the call returns every rank holds the flag — all after the same sequence number, at no cost in messages |
//! | share | every rank | one all-gather of [`RECORD_LEN`] numbers per rank: whether it asked, and up to [`MAX_OBSERVATIONS`] of the links it receives on as (sending peer, achieved share of the link's learned throughput) |
//! | re-price | every rank, on the same numbers | [`topoccl_topo::slow::lower_slow_links`] lowers the links of the job's model as it was before the first re-plan (so lowerings never compound) that explain the slow pairs (a pair below [`HEALTHY_AT`] of its baseline is slow); the selection's candidates are priced on the lowered model from the next call on (the plan cache is emptied) |
//! | switch | every rank, on the same numbers | only when the new choice for the last call is predicted at least [`MIN_GAIN`] faster than its current plan on the lowered model; otherwise plans and model stay |
//! | log | every rank | a warning with who asked, the links lowered, and the last call's predicted time: its plan before, the same plan on the lowered model, and the new choice; `topoccl_replans_total` counts it |
//!
//! A rank follows a re-plan that another asks for even with `TOPOCCL_REPLAN=0` (ranks
//! must stay in step); the setting stops it asking. A re-plan needs the job's model (a
//! topology file or the link matrix measured at creation) and a world of at most
//! [`topoccl_topo::slow::MAX_RANKS`] ranks; without either the ranks still agree and
//! share, and the log says why nothing changed. Each re-plan answers the alerts that
//! fired before it; the next needs a new alert (the detector's hysteresis keeps a link
//! that stays slow from asking again).

use std::fmt::Write as _;
use std::sync::Arc;

use topoccl_plan::{Collective, CollectiveSpec, Rank};
use topoccl_topo::slow::{lower_slow_links, Observation, MAX_RANKS};

use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::wire::FLAG_REPLAN;

/// Links each rank reports, its slowest first.
pub const MAX_OBSERVATIONS: usize = 16;
/// Numbers per rank in the exchange: asked (0 or 1), how many links, then (peer, share)
/// pairs.
pub const RECORD_LEN: usize = 2 + 2 * MAX_OBSERVATIONS;
/// A link achieving at least this share of its learned throughput is healthy; below it,
/// slow (the congestion detector's default threshold).
pub const HEALTHY_AT: f64 = 0.5;

/// A re-plan switches plans only when the new one is predicted at least this much faster
/// than the current one on the lowered model: a switch for less is not worth the risk that
/// the evidence was a passing hiccup (ranks off their cores), nor the churn.
pub const MIN_GAIN: f64 = 0.2;

/// Whether a call of `spec` can carry the agreement: every rank's output depends on
/// every rank's input (so a flag reaches every rank), and there is data to carry it.
pub fn agrees(spec: &CollectiveSpec) -> bool {
    spec.world > 1
        && spec.count > 0
        && matches!(
            spec.collective,
            Collective::AllReduce | Collective::AllGather | Collective::ReduceScatter
        )
}

/// This rank's record for the exchange.
pub fn encode(asked: bool, seen: &[(Rank, f64)]) -> Vec<f64> {
    let mut r = vec![0.0; RECORD_LEN];
    r[0] = if asked { 1.0 } else { 0.0 };
    let seen = &seen[..seen.len().min(MAX_OBSERVATIONS)];
    r[1] = seen.len() as f64;
    for (i, &(peer, share)) in seen.iter().enumerate() {
        r[2 + 2 * i] = peer as f64;
        r[3 + 2 * i] = share;
    }
    r
}

/// Every rank's records: who asked, and the observations (checked: a peer outside the
/// world, the rank itself or a share that is not a positive number is an error naming
/// the rank that sent it).
pub fn decode(all: &[f64], world: u32) -> Result<(Vec<Rank>, Vec<Observation>)> {
    let mut asked = Vec::new();
    let mut seen = Vec::new();
    if all.len() != world as usize * RECORD_LEN {
        return Err(Error::BufferSize {
            what: "the re-plan exchange's records",
            got: all.len(),
            needed: u64::from(world) * RECORD_LEN as u64,
            hint: "every rank sends one record (a bug if it happens)",
        });
    }
    for (src, r) in all.chunks(RECORD_LEN).enumerate() {
        let src = src as Rank;
        let bad = |what: String| Error::PeerFailed {
            op: "the re-plan exchange".into(),
            rank: src,
            reason: format!("sent a malformed re-plan record: {what}"),
        };
        if r.len() != RECORD_LEN {
            return Err(bad(format!("{} numbers, expected {RECORD_LEN}", r.len())));
        }
        if r[0] == 1.0 {
            asked.push(src);
        }
        let n = r[1];
        if !(n >= 0.0 && n <= MAX_OBSERVATIONS as f64 && n.fract() == 0.0) {
            return Err(bad(format!("{n} links")));
        }
        for i in 0..n as usize {
            let (peer, share) = (r[2 + 2 * i], r[3 + 2 * i]);
            if !(peer >= 0.0 && peer < world as f64 && peer.fract() == 0.0) || peer as Rank == src {
                return Err(bad(format!("peer {peer}")));
            }
            if !(share.is_finite() && share > 0.0) {
                return Err(bad(format!("share {share}")));
            }
            // The record's rank received from the peer.
            seen.push(Observation {
                src: peer as Rank,
                dst: src,
                ratio: share,
            });
        }
    }
    Ok((asked, seen))
}

impl Communicator {
    /// The flags this rank's call of `spec` starts with: [`FLAG_REPLAN`] when it asks.
    pub(crate) fn replan_flags(&self, spec: &CollectiveSpec) -> u8 {
        let asks =
            self.cfg.replan && agrees(spec) && self.live.as_ref().is_some_and(|l| l.wants_replan());
        if asks {
            FLAG_REPLAN
        } else {
            0
        }
    }

    /// After a call of `spec` that returned with `flags`: re-plans when it carried the
    /// agreement and the flag (see the module doc).
    pub(crate) fn replan_after(&mut self, spec: &CollectiveSpec, flags: u8) -> Result<()> {
        if !agrees(spec) || flags & FLAG_REPLAN == 0 {
            return Ok(());
        }
        let asked = self.live.as_ref().is_some_and(|l| l.wants_replan());
        let mine = self
            .live
            .as_mut()
            .map(|l| l.observations(MAX_OBSERVATIONS))
            .unwrap_or_default();
        let record = encode(asked, &mine);
        let mut all = vec![0.0f64; RECORD_LEN * self.world as usize];
        self.all_gather(&record, &mut all)?;
        let after = self.seq;
        let (askers, seen) = decode(&all, self.world)?;
        let mut why = format!(
            "re-plan after call #{after} (asked by rank{} {})",
            if askers.len() == 1 { "" } else { "s" },
            list(&askers)
        );
        if self.replan_base.is_none() {
            self.replan_base = self
                .selector
                .topology()
                .filter(|t| t.world() == self.world)
                .cloned();
        }
        let Some(model) = self.replan_base.clone() else {
            tracing::warn!(
                "rank {}: {why}: this communicator has no model of its network (set \
                 TOPOCCL_TOPO, or let it measure the link matrix), so its plans stay",
                self.rank
            );
            return Ok(());
        };
        if self.world > MAX_RANKS {
            tracing::warn!(
                "rank {}: {why}: worlds above {MAX_RANKS} ranks keep their plans",
                self.rank
            );
            return Ok(());
        }
        let (lowered, changes) = lower_slow_links(&model, &seen, HEALTHY_AT)
            .map_err(|e| Error::Config(format!("re-planning: {e}")))?;
        if let Some(m) = &self.meter {
            m.metrics()
                .count_replan(self.world_ranks[self.rank as usize]);
        }
        if changes.is_empty() {
            tracing::warn!(
                "rank {}: {why}: no link is slower than {:.0}% of its baseline now; plans stay",
                self.rank,
                HEALTHY_AT * 100.0
            );
            return Ok(());
        }
        let before = self.plan_for(spec)?;
        let predicted_before = self.selector.predict(&before);
        let previous = self.selector.topology().cloned();
        let overhead = self.selector.overhead();
        self.selector
            .set_topology(Some(Arc::new(lowered)), overhead);
        self.plans.clear();
        let stays = self.selector.predict(&before);
        let now = self.plan_for(spec)?;
        let predicted_now = self.selector.predict(&now);
        why.push_str(": links lowered:");
        for c in &changes {
            let _ = write!(
                why,
                " {} {:.1} → {:.1} MB/s;",
                c.link,
                c.modelled / 1e6,
                c.measured / 1e6
            );
        }
        let ms = |t: Option<f64>| t.map_or_else(|| "?".into(), |t| format!("{:.2} ms", t * 1e3));
        let _ = write!(
            why,
            " {} of {} B: {} predicted {} before, {} now",
            spec.collective,
            spec.size_bytes(),
            before.algorithm().label(),
            ms(predicted_before),
            ms(stays),
        );
        let worth = match (stays, predicted_now) {
            (Some(stay), Some(switch)) => switch <= (1.0 - MIN_GAIN) * stay,
            _ => false,
        };
        if worth {
            let _ = write!(
                why,
                "; next calls use {} ({})",
                now.algorithm().label(),
                ms(predicted_now)
            );
        } else {
            // Not worth a switch: the plans stay, and so does the model they came from.
            self.selector.set_topology(previous, overhead);
            self.plans.clear();
            let _ = write!(
                why,
                "; the best plan on the lowered model, {} ({}), is not {:.0}% faster: plans stay",
                now.algorithm().label(),
                ms(predicted_now),
                MIN_GAIN * 100.0
            );
        }
        tracing::warn!("rank {}: {why}", self.rank);
        Ok(())
    }
}

fn list(ranks: &[Rank]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_calls_where_every_output_needs_every_input_agree() {
        let s = |c, count| CollectiveSpec::new(c, 4, count);
        assert!(agrees(&s(Collective::AllReduce, 8)));
        assert!(agrees(&s(Collective::AllGather, 1)));
        assert!(agrees(&s(Collective::ReduceScatter, 4)));
        assert!(!agrees(&s(Collective::AllReduce, 0)));
        assert!(!agrees(&s(Collective::Broadcast, 8)));
        assert!(!agrees(&s(Collective::Reduce, 8)));
        assert!(!agrees(&CollectiveSpec::new(Collective::AllReduce, 1, 8)));
    }

    #[test]
    fn records_round_trip_and_bad_ones_name_their_rank() {
        let mut all = encode(false, &[(1, 1.0)]);
        all.extend(encode(true, &[(2, 0.05), (0, 0.9)]));
        all.extend(encode(false, &[]));
        let (asked, seen) = decode(&all, 3).unwrap();
        assert_eq!(asked, [1]);
        assert_eq!(
            seen,
            [
                Observation {
                    src: 1,
                    dst: 0,
                    ratio: 1.0
                },
                Observation {
                    src: 2,
                    dst: 1,
                    ratio: 0.05
                },
                Observation {
                    src: 0,
                    dst: 1,
                    ratio: 0.9
                },
            ]
        );
        let mut bad = all.clone();
        bad[RECORD_LEN + 2] = 1.0; // rank 1 reports a link to itself
        let e = decode(&bad, 3).unwrap_err().to_string();
        assert!(
            e.contains("rank 1 failed: sent a malformed re-plan record: peer 1"),
            "{e}"
        );
        let mut bad = all;
        bad[2 * RECORD_LEN + 1] = 99.0;
        let e = decode(&bad, 3).unwrap_err().to_string();
        assert!(e.contains("rank 2") && e.contains("99 links"), "{e}");
    }

    proptest! {
        /// Any numbers decode to observations inside the world, or to an error.
        #[test]
        fn decoding_any_numbers_never_panics(all in proptest::collection::vec(
            prop_oneof![any::<f64>(), 0.0f64..4.0, Just(1.0)], 4 * RECORD_LEN)) {
            if let Ok((_, seen)) = decode(&all, 4) {
                for o in seen {
                    prop_assert!(o.src < 4 && o.dst < 4 && o.src != o.dst && o.ratio > 0.0);
                }
            }
        }
    }
}
