//! A plan: a collective spec, the algorithm that was chosen for it, and the schedule that
//! generates every rank's program lazily, round by round.
//!
//! A generator implements [`Schedule::emit`], which appends the ops of one rank in one round.
//! Both views everyone needs come from that one function: a rank's whole program (the
//! runtime) and all ranks' ops in one round (the simulator, the cost model) — so no
//! algorithm is written twice, and walking a 131,072-rank ring never holds more than one
//! round in memory.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::algo::Algorithm;
use crate::error::PlanError;
use crate::ir::{Op, OpKind, Rank};
use crate::spec::CollectiveSpec;

/// The generator of a plan's programs.
pub trait Schedule: Send + Sync + fmt::Debug {
    /// Number of rounds. Round `k`'s transfers may all happen at once; a transfer of round
    /// `k` never waits for a transfer of round `k` or later.
    fn rounds(&self) -> u32;

    /// Appends the ops of `rank` in `round` to `out`, in program order, each tagged with
    /// `round`.
    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>);

    /// Scratch elements `rank` needs.
    fn scratch_len(&self, _rank: Rank) -> u64 {
        0
    }

    /// Number of channels the ops use (channel ids are below this).
    fn channels(&self) -> u16 {
        1
    }

    /// Rounds with equal class move the same (source, destination, channel, length)
    /// multiset of transfers and reduce the same amounts on the same ranks, so a simulator
    /// may compute one and reuse it. The default makes every round its own class.
    fn round_class(&self, round: u32) -> u64 {
        round as u64
    }
}

/// Tuning knobs every generator understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlanParams {
    /// Pieces each block of data is cut into for pipelining (1 = no pipelining).
    pub chunks: u32,
    /// Operations an executor may have outstanding per rank and channel.
    pub in_flight: u32,
    /// Independent step streams the data is split across (NCCL channels, MSCCL thread
    /// blocks); each carries a contiguous share of the data.
    pub channels: u16,
}

impl Default for PlanParams {
    fn default() -> Self {
        PlanParams {
            chunks: 1,
            in_flight: 8,
            channels: 1,
        }
    }
}

impl PlanParams {
    pub const MAX_CHUNKS: u32 = 1 << 16;
    pub const MAX_CHANNELS: u16 = 64;

    pub fn with_chunks(mut self, chunks: u32) -> Self {
        self.chunks = chunks;
        self
    }

    /// Sets `chunks` so that pieces are about `bytes` long: a rank's share of the buffer
    /// (its block, for algorithms that split data per rank) cut into pieces of at most
    /// `bytes`, as NCCL's chunk size does.
    pub fn with_chunk_bytes(mut self, spec: &CollectiveSpec, bytes: u64) -> Self {
        let share = spec.count.div_ceil(spec.world.max(1) as u64) * spec.dtype.size() as u64;
        self.chunks = share
            .div_ceil(bytes.max(1))
            .clamp(1, Self::MAX_CHUNKS as u64) as u32;
        self
    }

    pub fn with_channels(mut self, channels: u16) -> Self {
        self.channels = channels;
        self
    }

    pub fn validate(&self) -> Result<(), PlanError> {
        if self.chunks == 0 || self.chunks > Self::MAX_CHUNKS {
            return Err(PlanError::param(
                "chunks",
                format!("{} is outside 1..={}", self.chunks, Self::MAX_CHUNKS),
            ));
        }
        if self.in_flight == 0 {
            return Err(PlanError::param("in_flight", "must be at least 1"));
        }
        if self.channels == 0 || self.channels > Self::MAX_CHANNELS {
            return Err(PlanError::param(
                "channels",
                format!("{} is outside 1..={}", self.channels, Self::MAX_CHANNELS),
            ));
        }
        Ok(())
    }
}

/// A transfer of a round, as the simulator and cost model see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransferInfo {
    pub src: Rank,
    pub dst: Rank,
    pub channel: u16,
    /// Elements.
    pub len: u64,
}

/// A collective planned with one algorithm: cheap to clone, immutable, and the single
/// description that every part of topoccl executes, proves, prices or draws.
#[derive(Clone)]
pub struct Plan {
    spec: Arc<CollectiveSpec>,
    algorithm: Arc<Algorithm>,
    params: PlanParams,
    schedule: Arc<dyn Schedule>,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("spec", &self.spec.describe())
            .field("algorithm", &self.algorithm.name())
            .field("params", &self.params)
            .field("rounds", &self.rounds())
            .finish()
    }
}

/// Materialising more ops than this is refused: the caller should walk the plan lazily.
pub const MATERIALIZE_LIMIT_OPS: u64 = 50_000_000;

impl Plan {
    pub(crate) fn new(
        spec: Arc<CollectiveSpec>,
        algorithm: Algorithm,
        params: PlanParams,
        schedule: Arc<dyn Schedule>,
    ) -> Self {
        Plan {
            spec,
            algorithm: Arc::new(algorithm),
            params,
            schedule,
        }
    }

    pub fn spec(&self) -> &CollectiveSpec {
        &self.spec
    }

    pub fn spec_arc(&self) -> &Arc<CollectiveSpec> {
        &self.spec
    }

    pub fn algorithm(&self) -> &Algorithm {
        &self.algorithm
    }

    pub fn params(&self) -> &PlanParams {
        &self.params
    }

    pub fn world(&self) -> u32 {
        self.spec.world
    }

    pub fn rounds(&self) -> u32 {
        self.schedule.rounds()
    }

    pub fn channels(&self) -> u16 {
        self.schedule.channels()
    }

    pub fn scratch_len(&self, rank: Rank) -> u64 {
        self.schedule.scratch_len(rank)
    }

    pub fn round_class(&self, round: u32) -> u64 {
        self.schedule.round_class(round)
    }

    pub fn schedule(&self) -> &Arc<dyn Schedule> {
        &self.schedule
    }

    /// Appends the ops of `rank` in `round`.
    pub fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        self.schedule.emit(rank, round, out)
    }

    /// The whole program of one rank.
    pub fn program(&self, rank: Rank) -> Vec<Op> {
        let mut ops = Vec::new();
        for round in 0..self.rounds() {
            self.emit(rank, round, &mut ops);
        }
        ops
    }

    /// Every rank's ops in `round`, as (rank, op), ranks in increasing order.
    pub fn round_ops(&self, round: u32, out: &mut Vec<(Rank, Op)>) {
        let mut buf = Vec::new();
        for rank in 0..self.world() {
            buf.clear();
            self.emit(rank, round, &mut buf);
            out.extend(buf.iter().map(|op| (rank, *op)));
        }
    }

    /// The transfers of `round` (one per send), in rank order.
    pub fn transfers(&self, round: u32, out: &mut Vec<TransferInfo>) {
        let mut buf = Vec::new();
        for rank in 0..self.world() {
            buf.clear();
            self.emit(rank, round, &mut buf);
            for op in &buf {
                if let OpKind::Send { peer, src } = op.kind {
                    out.push(TransferInfo {
                        src: rank,
                        dst: peer,
                        channel: op.channel,
                        len: src.len,
                    });
                }
            }
        }
    }

    /// Total number of ops over all ranks (walks the whole plan).
    pub fn count_ops(&self) -> u64 {
        let mut n = 0u64;
        let mut buf = Vec::new();
        for rank in 0..self.world() {
            for round in 0..self.rounds() {
                buf.clear();
                self.emit(rank, round, &mut buf);
                n += buf.len() as u64;
            }
        }
        n
    }

    /// Every rank's program, stored: the form that is serialised and exported.
    pub fn materialize(&self) -> Result<PlanDoc, PlanError> {
        let mut ranks = Vec::with_capacity(self.world() as usize);
        let mut total = 0u64;
        for rank in 0..self.world() {
            let ops = self.program(rank);
            total += ops.len() as u64;
            if total > MATERIALIZE_LIMIT_OPS {
                return Err(PlanError::TooLarge {
                    what: "materialising this plan",
                    size: total,
                    unit: "ops",
                    limit: MATERIALIZE_LIMIT_OPS,
                    hint: "walk it round by round instead (Plan::round_ops)",
                });
            }
            ranks.push(RankProgram {
                rank,
                scratch: self.scratch_len(rank),
                ops,
            });
        }
        Ok(PlanDoc {
            format: PlanDoc::FORMAT.to_string(),
            spec: (*self.spec).clone(),
            algorithm: (*self.algorithm).clone(),
            params: self.params,
            rounds: self.rounds(),
            channels: self.channels(),
            ranks,
        })
    }

    /// Rebuilds a plan from a stored document (e.g. read from JSON). Only its shape is
    /// checked here; run the verifier before trusting it.
    pub fn from_doc(doc: PlanDoc) -> Result<Plan, PlanError> {
        if doc.format != PlanDoc::FORMAT {
            return Err(PlanError::Malformed(format!(
                "format is '{}', expected '{}'",
                doc.format,
                PlanDoc::FORMAT
            )));
        }
        let spec = doc.spec.rebuilt()?;
        doc.params.validate()?;
        if doc.ranks.len() != spec.world as usize {
            return Err(PlanError::Malformed(format!(
                "{} rank programs for a world of {}",
                doc.ranks.len(),
                spec.world
            )));
        }
        let mut programs = Vec::with_capacity(doc.ranks.len());
        let mut scratch = Vec::with_capacity(doc.ranks.len());
        for (i, rp) in doc.ranks.into_iter().enumerate() {
            if rp.rank as usize != i {
                return Err(PlanError::Malformed(format!(
                    "program #{i} is labelled rank {}; programs must be listed by rank",
                    rp.rank
                )));
            }
            let mut last = 0;
            for (j, op) in rp.ops.iter().enumerate() {
                if op.round < last || op.round >= doc.rounds {
                    return Err(PlanError::Malformed(format!(
                        "rank {i} op #{j} has round {} (previous {last}, plan has {} rounds); \
                         ops must be in non-decreasing round order",
                        op.round, doc.rounds
                    )));
                }
                if op.channel >= doc.channels {
                    return Err(PlanError::Malformed(format!(
                        "rank {i} op #{j} uses channel {} but the plan declares {}",
                        op.channel, doc.channels
                    )));
                }
                last = op.round;
            }
            programs.push(rp.ops);
            scratch.push(rp.scratch);
        }
        let schedule = StoredSchedule {
            rounds: doc.rounds,
            channels: doc.channels,
            programs,
            scratch,
        };
        Ok(Plan::new(
            Arc::new(spec),
            doc.algorithm,
            doc.params,
            Arc::new(schedule),
        ))
    }
}

/// A plan written out: what `topoccl plan --format json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanDoc {
    pub format: String,
    pub spec: CollectiveSpec,
    pub algorithm: Algorithm,
    pub params: PlanParams,
    pub rounds: u32,
    pub channels: u16,
    pub ranks: Vec<RankProgram>,
}

impl PlanDoc {
    pub const FORMAT: &'static str = "topoccl-plan/1";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankProgram {
    pub rank: Rank,
    pub scratch: u64,
    pub ops: Vec<Op>,
}

/// A schedule read back from a document.
#[derive(Debug)]
struct StoredSchedule {
    rounds: u32,
    channels: u16,
    programs: Vec<Vec<Op>>,
    scratch: Vec<u64>,
}

impl Schedule for StoredSchedule {
    fn rounds(&self) -> u32 {
        self.rounds
    }

    fn emit(&self, rank: Rank, round: u32, out: &mut Vec<Op>) {
        let ops = &self.programs[rank as usize];
        let start = ops.partition_point(|op| op.round < round);
        out.extend(ops[start..].iter().take_while(|op| op.round == round));
    }

    fn scratch_len(&self, rank: Rank) -> u64 {
        self.scratch[rank as usize]
    }

    fn channels(&self) -> u16 {
        self.channels
    }
}
