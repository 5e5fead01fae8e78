//! What a collective is asked to compute: the collective, its world, root, element count,
//! data type and reduction, and from those the size of every rank's buffers and how they
//! alias when the operation runs in place.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::ir::{Buf, Rank};

/// The collectives of the IR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collective {
    Broadcast,
    Reduce,
    Gather,
    Scatter,
    AllGather,
    ReduceScatter,
    AllReduce,
    AllToAll,
    AllToAllV,
    Barrier,
}

impl Collective {
    pub const ALL: [Collective; 10] = [
        Collective::Broadcast,
        Collective::Reduce,
        Collective::Gather,
        Collective::Scatter,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllReduce,
        Collective::AllToAll,
        Collective::AllToAllV,
        Collective::Barrier,
    ];

    /// The name used on the command line and in JSON (`allreduce`, `reduce_scatter` style
    /// spellings are accepted when parsing).
    pub fn name(self) -> &'static str {
        match self {
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::Gather => "gather",
            Collective::Scatter => "scatter",
            Collective::AllGather => "allgather",
            Collective::ReduceScatter => "reducescatter",
            Collective::AllReduce => "allreduce",
            Collective::AllToAll => "alltoall",
            Collective::AllToAllV => "alltoallv",
            Collective::Barrier => "barrier",
        }
    }

    /// Whether the collective combines values with a reduction operator.
    pub fn reduces(self) -> bool {
        matches!(
            self,
            Collective::Reduce | Collective::ReduceScatter | Collective::AllReduce
        )
    }

    /// Whether the collective has a distinguished root rank.
    pub fn rooted(self) -> bool {
        matches!(
            self,
            Collective::Broadcast | Collective::Reduce | Collective::Gather | Collective::Scatter
        )
    }

    /// Whether an in-place form exists (input and output sharing one user buffer, laid out
    /// as NCCL and MPI do). All-to-all has none: every block is both sent and overwritten.
    pub fn has_in_place(self) -> bool {
        !matches!(
            self,
            Collective::AllToAll | Collective::AllToAllV | Collective::Barrier
        )
    }
}

impl Collective {
    /// The factor from algbw to busbw (bus bandwidth) on `world` ranks, as nccl-tests
    /// defines it.
    ///
    /// A call's size S is [`CollectiveSpec::size_bytes`]: the bytes of a rank's larger user
    /// buffer (for all-gather, reduce-scatter, gather, scatter and all-to-all, n blocks of one
    /// rank's share; a gather's whole output at its root). algbw = S / t; busbw = algbw ×
    /// this factor, the share of S that must cross the busiest rank's link, so that busbw
    /// reads against a link's bandwidth whatever the collective:
    ///
    /// | collective | factor | why |
    /// |---|---|---|
    /// | all-reduce | 2(n−1)/n | a reduce-scatter and an all-gather: each rank sends (n−1)/n·S twice |
    /// | all-gather, reduce-scatter, all-to-all | (n−1)/n | each rank receives (or sends) the n−1 blocks that are not its own |
    /// | gather, scatter | (n−1)/n | the root receives (gather) or sends (scatter) the n−1 blocks of the other ranks; its own stays local (nccl-tests' `gather_perf`, `scatter_perf`) |
    /// | all-to-all-v | (n−1)/n | the even all-to-all's factor with S the largest send total (nccl-tests' `alltoallv_perf`); exact for even matrices, a convention for skewed ones |
    /// | broadcast, reduce | 1 | the root's whole S leaves (arrives) over its link |
    /// | barrier | 1 | moot: S = 0 |
    ///
    /// One rank (n = 1) moves nothing over a link: busbw 0 except for broadcast and reduce.
    pub fn bus_factor(self, world: u32) -> f64 {
        let n = world.max(1) as f64;
        match self {
            Collective::AllReduce => 2.0 * (n - 1.0) / n,
            Collective::AllGather
            | Collective::ReduceScatter
            | Collective::AllToAll
            | Collective::AllToAllV
            | Collective::Gather
            | Collective::Scatter => (n - 1.0) / n,
            Collective::Broadcast | Collective::Reduce | Collective::Barrier => 1.0,
        }
    }
}

/// A call's bandwidths in GB/s (10⁹ bytes per second), nccl-tests' columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bandwidth {
    /// Size over time.
    pub algbw_gbps: f64,
    /// algbw × the bus factor ([`Collective::bus_factor`]).
    pub busbw_gbps: f64,
}

impl Collective {
    /// Whether a call's count is per block of the larger buffer (one block per rank), as
    /// in NCCL's all-gather, reduce-scatter, gather, scatter and all-to-all.
    fn block_sized(self) -> bool {
        matches!(
            self,
            Collective::AllGather
                | Collective::Gather
                | Collective::ReduceScatter
                | Collective::Scatter
                | Collective::AllToAll
        )
    }
}

impl fmt::Display for Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Collective {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        Collective::ALL
            .into_iter()
            .find(|c| c.name() == norm)
            .ok_or_else(|| PlanError::UnknownName {
                what: "collective",
                given: s.to_string(),
                allowed: Collective::ALL
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect(),
            })
    }
}

/// Element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I32,
    I64,
    U8,
}

impl DType {
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I32,
        DType::I64,
        DType::U8,
    ];

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let alias = match lower.as_str() {
            "float" | "float32" => "f32",
            "double" | "float64" => "f64",
            "half" | "float16" => "f16",
            "bfloat16" => "bf16",
            "int" | "int32" => "i32",
            "int64" => "i64",
            "uint8" | "byte" => "u8",
            other => other,
        };
        DType::ALL
            .into_iter()
            .find(|d| d.name() == alias)
            .ok_or_else(|| PlanError::UnknownName {
                what: "data type",
                given: s.to_string(),
                allowed: DType::ALL.iter().map(|d| d.name().to_string()).collect(),
            })
    }
}

/// Reduction operators. `Avg` reduces with a sum and divides by the world size once, at
/// the end (see [`crate::exec::kernels`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReduceOp {
    Sum,
    Prod,
    Min,
    Max,
    Avg,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 5] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::Avg,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Avg => "avg",
        }
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReduceOp {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        ReduceOp::ALL
            .into_iter()
            .find(|o| o.name() == lower)
            .ok_or_else(|| PlanError::UnknownName {
                what: "reduction",
                given: s.to_string(),
                allowed: ReduceOp::ALL.iter().map(|o| o.name().to_string()).collect(),
            })
    }
}

/// Per-pair element counts of an all-to-all-v: `get(i, j)` elements go from rank `i` to
/// rank `j`. Rank `i`'s input holds its blocks for `j = 0, 1, …` back to back; rank `j`'s
/// output holds the blocks from `i = 0, 1, …` back to back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountMatrix {
    world: u32,
    counts: Vec<u64>,
    #[serde(skip)]
    send_displ: Vec<u64>,
    #[serde(skip)]
    recv_displ: Vec<u64>,
}

impl CountMatrix {
    /// Builds the matrix from rows; every row must have one entry per rank.
    pub fn from_rows(rows: &[Vec<u64>]) -> Result<Self, PlanError> {
        let p = rows.len();
        for (i, row) in rows.iter().enumerate() {
            if row.len() != p {
                return Err(PlanError::CountMatrixShape {
                    rows: p,
                    bad_row: i,
                    row_len: row.len(),
                });
            }
        }
        let counts = rows.iter().flatten().copied().collect();
        Ok(Self::from_flat(p as u32, counts))
    }

    fn from_flat(world: u32, counts: Vec<u64>) -> Self {
        let p = world as usize;
        let mut send_displ = vec![0; p * p];
        let mut recv_displ = vec![0; p * p];
        for i in 0..p {
            let mut acc = 0;
            for j in 0..p {
                send_displ[i * p + j] = acc;
                acc += counts[i * p + j];
            }
        }
        for j in 0..p {
            let mut acc = 0;
            for i in 0..p {
                recv_displ[i * p + j] = acc;
                acc += counts[i * p + j];
            }
        }
        CountMatrix {
            world,
            counts,
            send_displ,
            recv_displ,
        }
    }

    /// Restores the derived displacement tables after deserialisation.
    fn rebuilt(self) -> Result<Self, PlanError> {
        let p = self.world as usize;
        if self.counts.len() != p * p {
            return Err(PlanError::CountMatrixShape {
                rows: p,
                bad_row: 0,
                row_len: self.counts.len() / p.max(1),
            });
        }
        Ok(Self::from_flat(self.world, self.counts))
    }

    pub fn world(&self) -> u32 {
        self.world
    }

    /// Elements sent from `from` to `to`.
    pub fn get(&self, from: Rank, to: Rank) -> u64 {
        self.counts[from as usize * self.world as usize + to as usize]
    }

    /// Offset in `from`'s input of the block destined for `to`.
    pub fn send_offset(&self, from: Rank, to: Rank) -> u64 {
        self.send_displ[from as usize * self.world as usize + to as usize]
    }

    /// Offset in `to`'s output of the block coming from `from`.
    pub fn recv_offset(&self, from: Rank, to: Rank) -> u64 {
        self.recv_displ[from as usize * self.world as usize + to as usize]
    }

    pub fn send_total(&self, from: Rank) -> u64 {
        (0..self.world).map(|j| self.get(from, j)).sum()
    }

    pub fn recv_total(&self, to: Rank) -> u64 {
        (0..self.world).map(|i| self.get(i, to)).sum()
    }
}

/// A collective call: everything a plan depends on except the algorithm.
///
/// `count` is per rank, as in NCCL: for all-reduce, broadcast and reduce the number of
/// elements of the buffer; for all-gather, gather, scatter and all-to-all the elements each
/// rank contributes or receives per peer; for reduce-scatter the elements each rank ends up
/// with. [`CollectiveSpec::from_total`] takes the total buffer size instead, the way
/// nccl-tests sizes are given, and checks that it divides.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectiveSpec {
    pub collective: Collective,
    pub world: u32,
    #[serde(default)]
    pub root: Rank,
    pub count: u64,
    pub dtype: DType,
    pub op: ReduceOp,
    /// All-to-all-v only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Arc<CountMatrix>>,
}

impl CollectiveSpec {
    pub fn new(collective: Collective, world: u32, count: u64) -> Self {
        CollectiveSpec {
            collective,
            world,
            root: 0,
            count,
            dtype: DType::F32,
            op: ReduceOp::Sum,
            counts: None,
        }
    }

    pub fn with_root(mut self, root: Rank) -> Self {
        self.root = root;
        self
    }

    /// Bytes of a rank's larger user buffer: the "size" of nccl-tests.
    pub fn size_bytes(&self) -> u64 {
        let blocks = if self.collective.block_sized() {
            self.world as u64
        } else {
            1
        };
        blocks * self.count * self.dtype.size() as u64
    }

    /// algbw and busbw of this call when it takes `seconds` (both 0 when `seconds` is not
    /// positive).
    pub fn bandwidth(&self, seconds: f64) -> Bandwidth {
        if seconds <= 0.0 || seconds.is_nan() {
            return Bandwidth {
                algbw_gbps: 0.0,
                busbw_gbps: 0.0,
            };
        }
        let algbw_gbps = self.size_bytes() as f64 / seconds / 1e9;
        Bandwidth {
            algbw_gbps,
            busbw_gbps: algbw_gbps * self.collective.bus_factor(self.world),
        }
    }

    /// The spec whose [`CollectiveSpec::size_bytes`] is `bytes` (rounded down to whole
    /// elements and blocks): how nccl-tests and the CLI's `--size` name a call.
    pub fn of_size(collective: Collective, world: u32, bytes: u64, dtype: DType) -> Self {
        let elems = bytes / dtype.size() as u64;
        let count = if collective.block_sized() {
            elems / world.max(1) as u64
        } else {
            elems
        };
        CollectiveSpec::new(collective, world, count).with_dtype(dtype)
    }

    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn with_op(mut self, op: ReduceOp) -> Self {
        self.op = op;
        self
    }

    /// An all-to-all-v over the given matrix (its size fixes the world).
    pub fn all_to_all_v(matrix: CountMatrix) -> Self {
        let world = matrix.world();
        let count = (0..world).map(|i| matrix.send_total(i)).max().unwrap_or(0);
        CollectiveSpec {
            collective: Collective::AllToAllV,
            world,
            root: 0,
            count,
            dtype: DType::F32,
            op: ReduceOp::Sum,
            counts: Some(Arc::new(matrix)),
        }
    }

    /// Builds a spec from the *total* number of elements of the larger user buffer (the
    /// nccl-tests convention): all-gather and gather the output, reduce-scatter, scatter and
    /// all-to-all the input. Errors when the total is not a multiple of the world size.
    pub fn from_total(collective: Collective, world: u32, total: u64) -> Result<Self, PlanError> {
        if world == 0 {
            return Err(PlanError::EmptyWorld);
        }
        let per_rank = match collective {
            Collective::AllGather
            | Collective::Gather
            | Collective::ReduceScatter
            | Collective::Scatter
            | Collective::AllToAll => {
                if total % world as u64 != 0 {
                    return Err(PlanError::CountNotDivisible {
                        collective,
                        count: total,
                        world,
                    });
                }
                total / world as u64
            }
            _ => total,
        };
        Ok(CollectiveSpec::new(collective, world, per_rank))
    }

    /// Checks the spec on its own terms (world, root, matrix shape).
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.world == 0 {
            return Err(PlanError::EmptyWorld);
        }
        if self.collective.rooted() && self.root >= self.world {
            return Err(PlanError::RootOutOfRange {
                root: self.root,
                world: self.world,
            });
        }
        match (&self.counts, self.collective) {
            (None, Collective::AllToAllV) => return Err(PlanError::MissingCountMatrix),
            (Some(m), Collective::AllToAllV) if m.world() != self.world => {
                return Err(PlanError::CountMatrixShape {
                    rows: m.world() as usize,
                    bad_row: 0,
                    row_len: self.world as usize,
                })
            }
            _ => {}
        }
        if self.collective == Collective::Barrier && self.count != 0 {
            return Err(PlanError::InvalidParam {
                param: "count",
                reason: format!(
                    "a barrier moves no data; its count must be 0, not {}",
                    self.count
                ),
            });
        }
        Ok(())
    }

    /// Re-derives internal tables after deserialisation.
    pub fn rebuilt(mut self) -> Result<Self, PlanError> {
        if let Some(m) = self.counts.take() {
            let m = Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone());
            self.counts = Some(Arc::new(m.rebuilt()?));
        }
        self.validate()?;
        Ok(self)
    }

    pub fn matrix(&self) -> &CountMatrix {
        self.counts
            .as_deref()
            .expect("all-to-all-v spec validated to carry a count matrix")
    }

    fn p(&self) -> u64 {
        self.world as u64
    }

    /// Elements of `rank`'s input buffer.
    pub fn input_len(&self, rank: Rank) -> u64 {
        let (c, p, is_root) = (self.count, self.p(), rank == self.root);
        match self.collective {
            Collective::AllReduce
            | Collective::Reduce
            | Collective::Gather
            | Collective::AllGather => c,
            Collective::Broadcast => {
                if is_root {
                    c
                } else {
                    0
                }
            }
            Collective::Scatter => {
                if is_root {
                    p * c
                } else {
                    0
                }
            }
            Collective::ReduceScatter | Collective::AllToAll => p * c,
            Collective::AllToAllV => self.matrix().send_total(rank),
            Collective::Barrier => 0,
        }
    }

    /// Elements of `rank`'s output buffer.
    pub fn output_len(&self, rank: Rank) -> u64 {
        let (c, p, is_root) = (self.count, self.p(), rank == self.root);
        match self.collective {
            Collective::AllReduce
            | Collective::Broadcast
            | Collective::Scatter
            | Collective::ReduceScatter => c,
            Collective::Reduce => {
                if is_root {
                    c
                } else {
                    0
                }
            }
            Collective::Gather => {
                if is_root {
                    p * c
                } else {
                    0
                }
            }
            Collective::AllGather | Collective::AllToAll => p * c,
            Collective::AllToAllV => self.matrix().recv_total(rank),
            Collective::Barrier => 0,
        }
    }

    pub fn buffer_len(&self, rank: Rank, buf: Buf, scratch: u64) -> u64 {
        match buf {
            Buf::Input => self.input_len(rank),
            Buf::Output => self.output_len(rank),
            Buf::Scratch => scratch,
        }
    }

    /// How the user buffers of `rank` alias when the collective runs in place: the buffer
    /// `inner` lives inside `outer` at element offset `offset`. `None` when they do not
    /// alias for this rank (or the collective has no in-place form).
    pub fn in_place_alias(&self, rank: Rank) -> Option<Alias> {
        let c = self.count;
        let is_root = rank == self.root;
        let (inner, outer, offset) = match self.collective {
            Collective::AllReduce => (Buf::Input, Buf::Output, 0),
            Collective::Broadcast | Collective::Reduce if is_root => (Buf::Input, Buf::Output, 0),
            Collective::AllGather => (Buf::Input, Buf::Output, rank as u64 * c),
            Collective::Gather if is_root => (Buf::Input, Buf::Output, rank as u64 * c),
            Collective::ReduceScatter => (Buf::Output, Buf::Input, rank as u64 * c),
            Collective::Scatter if is_root => (Buf::Output, Buf::Input, rank as u64 * c),
            _ => return None,
        };
        Some(Alias {
            inner,
            outer,
            offset,
        })
    }

    /// A one-line description, e.g. `allreduce world=8 count=1024 f32 sum`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} world={} count={} {}",
            self.collective, self.world, self.count, self.dtype
        );
        if self.collective.reduces() {
            s.push(' ');
            s.push_str(self.op.name());
        }
        if self.collective.rooted() {
            s.push_str(&format!(" root={}", self.root));
        }
        s
    }
}

/// In-place aliasing of one rank's buffers: `inner[i]` is `outer[offset + i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alias {
    pub inner: Buf,
    pub outer: Buf,
    pub offset: u64,
}

/// Whether a plan runs with separate input and output buffers or in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    OutOfPlace,
    InPlace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_factors_follow_nccl_tests() {
        use Collective::*;
        let want = |c: Collective| match c {
            AllReduce => 2.0 * 7.0 / 8.0,
            AllGather | ReduceScatter | AllToAll | AllToAllV | Gather | Scatter => 7.0 / 8.0,
            Broadcast | Reduce | Barrier => 1.0,
        };
        for c in Collective::ALL {
            assert_eq!(c.bus_factor(8), want(c), "{c}");
        }
        assert_eq!(AllReduce.bus_factor(1), 0.0);
        assert_eq!(Gather.bus_factor(2), 0.5);
        // 8 ranks × 1 MiB blocks gathered in 1 ms: algbw 8.39 GB/s, busbw 7/8 of it.
        let spec = CollectiveSpec::new(Gather, 8, 1 << 18);
        let bw = spec.bandwidth(1e-3);
        assert!((bw.algbw_gbps - 8.388608).abs() < 1e-9, "{bw:?}");
        assert!(
            (bw.busbw_gbps - 8.388608 * 7.0 / 8.0).abs() < 1e-9,
            "{bw:?}"
        );
        assert_eq!(spec.bandwidth(0.0).busbw_gbps, 0.0);
    }

    #[test]
    fn names_round_trip() {
        for c in Collective::ALL {
            assert_eq!(c.name().parse::<Collective>().unwrap(), c);
        }
        assert_eq!(
            "all_reduce".parse::<Collective>().unwrap(),
            Collective::AllReduce
        );
        assert_eq!(
            "reduce-scatter".parse::<Collective>().unwrap(),
            Collective::ReduceScatter
        );
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        for o in ReduceOp::ALL {
            assert_eq!(o.name().parse::<ReduceOp>().unwrap(), o);
        }
        let err = "allreducee".parse::<Collective>().unwrap_err().to_string();
        assert!(err.contains("allreduce"), "{err}");
    }

    #[test]
    fn buffer_sizes_follow_nccl_conventions() {
        let ag = CollectiveSpec::new(Collective::AllGather, 4, 10);
        assert_eq!((ag.input_len(2), ag.output_len(2)), (10, 40));
        let rs = CollectiveSpec::new(Collective::ReduceScatter, 4, 10);
        assert_eq!((rs.input_len(0), rs.output_len(0)), (40, 10));
        let g = CollectiveSpec::new(Collective::Gather, 4, 10).with_root(1);
        assert_eq!((g.output_len(1), g.output_len(0)), (40, 0));
        assert_eq!(
            rs.in_place_alias(3),
            Some(Alias {
                inner: Buf::Output,
                outer: Buf::Input,
                offset: 30
            })
        );
    }

    #[test]
    fn from_total_checks_divisibility() {
        let e = CollectiveSpec::from_total(Collective::ReduceScatter, 4, 10).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("10") && msg.contains("4") && msg.contains("multiple"),
            "{msg}"
        );
        let s = CollectiveSpec::from_total(Collective::AllGather, 4, 12).unwrap();
        assert_eq!(s.count, 3);
        let s = CollectiveSpec::from_total(Collective::AllReduce, 4, 10).unwrap();
        assert_eq!(s.count, 10);
    }

    #[test]
    fn count_matrix_offsets() {
        let m = CountMatrix::from_rows(&[vec![1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]).unwrap();
        assert_eq!(m.send_offset(1, 2), 9);
        assert_eq!(m.recv_offset(2, 1), 2 + 5);
        assert_eq!(m.send_total(2), 24);
        assert_eq!(m.recv_total(0), 12);
        let bad = CountMatrix::from_rows(&[vec![1, 2], vec![3]]).unwrap_err();
        assert!(bad.to_string().contains("row 1"), "{bad}");
    }
}
