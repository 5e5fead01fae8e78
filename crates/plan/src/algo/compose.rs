//! Schedules built from other schedules: the one-rank world, and data split across
//! channels.

use std::sync::Arc;

use crate::error::PlanError;
use crate::ir::{Buf, Emitter, Op, Rank, Slice};
use crate::schedule::{PlanParams, Schedule};
use crate::spec::CollectiveSpec;

use super::{generate, partition, Algorithm};

/// A world of one rank: every collective is a copy from input to output (nothing at all
/// when they are the same buffer).
#[derive(Debug)]
pub struct Local {
    len: u64,
}

impl Local {
    pub fn new(spec: &CollectiveSpec) -> Self {
        debug_assert_eq!(spec.input_len(0), spec.output_len(0));
        Local {
            len: spec.output_len(0).min(spec.input_len(0)),
        }
    }
}

impl Schedule for Local {
    fn rounds(&self) -> u32 {
        1
    }

    fn emit(&self, _rank: Rank, round: u32, out: &mut Vec<Op>) {
        Emitter::new(out, round).copy(
            Slice::new(Buf::Input, 0, self.len),
            Slice::new(Buf::Output, 0, self.len),
        );
    }
}

/// The same algorithm run once per channel, each on a contiguous share of every block of
/// the user buffers (NCCL's channels): channel `k` handles elements `[s_k, s_k + c_k)` of
/// each block of `count` elements.
#[derive(Debug)]
pub struct Channels {
    count: u64,
    shares: Vec<Share>,
    inner_channels: u16,
    rounds: u32,
    /// Whether a round's class combines the shares' classes (every share's schedule keeps
    /// [`Schedule::round_class`]'s promise and the shares have equal rounds); otherwise
    /// every round is its own class.
    classes: bool,
}

#[derive(Debug)]
struct Share {
    schedule: Arc<dyn Schedule>,
    /// First element of the share inside each block.
    start: u64,
    /// Elements of the share per block.
    len: u64,
}

impl Channels {
    pub fn build(
        spec: &Arc<CollectiveSpec>,
        algorithm: &Algorithm,
        params: &PlanParams,
    ) -> Result<Arc<dyn Schedule>, PlanError> {
        let single = PlanParams {
            channels: 1,
            ..*params
        };
        let make = |sub: &Arc<CollectiveSpec>, _k: usize| generate(sub, algorithm, &single);
        Ok(Arc::new(Channels::of_shares(
            spec,
            params.channels as u64,
            make,
            false,
        )?))
    }

    /// `spec` split into `n` contiguous shares of every block, share `k` run by
    /// `make(share's spec, k)`; `classes` as on the struct.
    pub(crate) fn of_shares(
        spec: &Arc<CollectiveSpec>,
        n: u64,
        make: impl Fn(&Arc<CollectiveSpec>, usize) -> Result<Arc<dyn Schedule>, PlanError>,
        classes: bool,
    ) -> Result<Channels, PlanError> {
        let mut shares = Vec::new();
        for k in 0..n {
            let (start, len) = partition::split(spec.count, n, k);
            if len == 0 {
                continue;
            }
            let sub = Arc::new(CollectiveSpec {
                count: len,
                ..(**spec).clone()
            });
            shares.push(Share {
                schedule: make(&sub, k as usize)?,
                start,
                len,
            });
        }
        let inner_channels = shares
            .iter()
            .map(|s| s.schedule.channels())
            .max()
            .unwrap_or(1);
        let rounds = shares
            .iter()
            .map(|s| s.schedule.rounds())
            .max()
            .unwrap_or(0);
        let classes = classes
            && shares
                .iter()
                .all(|s| s.schedule.rounds() == rounds && s.len == shares[0].len);
        Ok(Channels {
            count: spec.count,
            shares,
            inner_channels,
            rounds,
            classes,
        })
    }

    fn relocate(&self, share: &Share, scratch_base: u64, s: Slice) -> Slice {
        match s.buf {
            Buf::Scratch => Slice::new(s.buf, s.off + scratch_base, s.len),
            Buf::Input | Buf::Output => {
                let (block, within) = (s.off / share.len, s.off % share.len);
                debug_assert!(
                    s.len == 0 || within + s.len <= share.len,
                    "op crosses a block boundary"
                );
                Slice::new(s.buf, block * self.count + share.start + within, s.len)
            }
        }
    }
}

impl Schedule for Channels {
    fn rounds(&self) -> u32 {
        self.rounds
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let mut scratch_base = 0;
        for (k, share) in self.shares.iter().enumerate() {
            let first = out.len();
            if round < share.schedule.rounds() {
                share.schedule.emit(rank, round, out);
            }
            for op in &mut out[first..] {
                op.channel += k as u16 * self.inner_channels;
                op.map_slices(|s| self.relocate(share, scratch_base, s));
            }
            scratch_base += share.schedule.scratch_len(rank);
        }
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        self.shares
            .iter()
            .map(|s| s.schedule.scratch_len(rank))
            .sum()
    }

    fn channels(&self) -> u16 {
        self.shares.len().max(1) as u16 * self.inner_channels
    }

    fn round_class(&self, round: u32) -> u64 {
        if !self.classes {
            return round as u64;
        }
        // Equal shares of equal schedules: the shares' classes together (FNV-1a).
        self.shares.iter().fold(0xcbf2_9ce4_8422_2325, |h, s| {
            (h ^ s.schedule.round_class(round)).wrapping_mul(0x100_0000_01b3)
        })
    }
}
