//! Codec specification: the kind and its parameters, the CLI/env string form, the one
//! classification table, exact wire sizes, memory-pass counts and the operation check.
//!
//! # String form
//! `none`, `fp16`, `bf16`, `int8[:BLOCK]`, `int4[:BLOCK]`, `1bit[:BLOCK]` (alias `sign`),
//! `topk[:RATIO]`, `randk[:RATIO]`, `rp[:RATIO]` (alias `randproj`), `powersgd[:RANK]`.
//! Defaults: block 256, ratio 0.01 for top-k and random-k, 0.02 for random projection,
//! rank 4. RATIO must lie in (0, 1], RANK ≥ 1, BLOCK a multiple of 8 in 8..=2^24.
//! `stochastic` and `seed` are not part of the string; set them on the struct.
//! [`CodecSpec`]'s `Display` prints a string that parses back to the same kind and
//! parameters.
//!
//! # Wire bytes (exact, for n f32 elements; H = 16-byte frame header, B = block,
//! nb = ceil(n/B), k = m = ceil(ratio·n) clamped to 1..=n)
//! | codec | bytes |
//! |---|---|
//! | none | 4n |
//! | fp16, bf16 | 2n |
//! | int8 | H + 4·nb + n |
//! | int4 | H + 4·nb + ceil(n/2) |
//! | 1bit | H + 4·nb + ceil(n/8) |
//! | topk | H + 8k |
//! | randk | 4k (values only; indices come from the shared seed) |
//! | rp | 4m |
//! | powersgd | 4·r·(rows + cols) for the view of [`crate::codec::powersgd::view`] |
//!
//! # Memory passes (over the n-element input; error feedback adds
//! [`crate::codec::feedback::ErrorFeedback::MEMORY_PASSES`])
//! none 0/0; casts, int8, int4, 1bit, rp: 1 encode / 1 decode (the block-max pass of the
//! blocked codecs re-reads an L1-resident block and is not counted); top-k: 3 encode
//! (histogram, bucket gather, collecting scan; the quickselect runs on one bucket) / 1 decode (zero fill + scatter);
//! random-k: min(1, 16·ratio) encode (cache lines touched by the gather) / 1 decode;
//! PowerSGD: 2 encode (M·Q and Mᵀ·P) / 1 decode (P·Qᵀ).

use std::fmt;
use std::str::FromStr;

use super::{scaled_count, CodecError, Result, FRAME_HEADER_BYTES};

/// Which codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CodecKind {
    /// No compression (f32 as is).
    None,
    /// IEEE half precision, pre-scaled.
    F16,
    /// bfloat16, pre-scaled.
    Bf16,
    /// 8-bit integers, one f32 scale per block.
    Int8,
    /// 4-bit integers, one f32 scale per block.
    Int4,
    /// Sign bit, one f32 scale (mean |x|) per block; needs error feedback.
    OneBit,
    /// The k largest |x| with their u32 indices.
    TopK,
    /// k values at indices drawn from a shared seed.
    RandomK,
    /// Count-sketch random projection to ceil(ratio·n) values.
    RandomProjection,
    /// Rank-r PowerSGD on a matrix view.
    PowerSgd,
}

/// How compressed data is summed across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Reduction {
    /// Encodings sum element-wise: an ordinary all-reduce of a numeric dtype, decode once.
    Linear,
    /// Byte frames: peers decode, sum in f32, re-encode (compressed reduce-scatter +
    /// all-gather, or sparse all-gather).
    NonLinear,
}

/// Whether `E[decode(encode(x))] = x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Unbiased {
    /// Exact (no compression).
    Exact,
    /// Unbiased over the seeded randomness.
    Yes,
    /// Biased (deterministic rounding or selection).
    No,
    /// Unbiased only when `stochastic` rounding is on.
    WithStochasticRounding,
}

/// The one parameter a codec's string form takes.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Param {
    /// No parameter.
    None,
    /// Block size (elements per scale).
    Block {
        /// Default block size.
        default: usize,
    },
    /// Fraction of elements kept, in (0, 1].
    Ratio {
        /// Default ratio.
        default: f64,
    },
    /// Approximation rank ≥ 1.
    Rank {
        /// Default rank.
        default: usize,
    },
}

/// One row of [`CODEC_TABLE`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CodecInfo {
    /// The codec.
    pub kind: CodecKind,
    /// Canonical name (string form).
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Codec id in frame headers (stable on the wire).
    pub id: u8,
    /// Linear (all-reduce) or non-linear (frames).
    pub reduction: Reduction,
    /// Whether the codec needs error feedback to converge.
    pub needs_error_feedback: bool,
    /// Bias of the estimator.
    pub unbiased: Unbiased,
    /// The parameter of the string form.
    pub param: Param,
}

/// Default block size of int8, int4 and 1-bit.
pub const DEFAULT_BLOCK: usize = 256;
/// Largest block size.
pub const MAX_BLOCK: usize = 1 << 24;

/// The classification of every codec, in one place.
pub const CODEC_TABLE: [CodecInfo; 10] = [
    row(
        CodecKind::None,
        "none",
        &[],
        0,
        Reduction::Linear,
        false,
        Unbiased::Exact,
        Param::None,
    ),
    row(
        CodecKind::F16,
        "fp16",
        &[],
        1,
        Reduction::Linear,
        false,
        Unbiased::No,
        Param::None,
    ),
    row(
        CodecKind::Bf16,
        "bf16",
        &[],
        2,
        Reduction::Linear,
        false,
        Unbiased::No,
        Param::None,
    ),
    row(
        CodecKind::Int8,
        "int8",
        &[],
        3,
        Reduction::NonLinear,
        false,
        Unbiased::WithStochasticRounding,
        Param::Block {
            default: DEFAULT_BLOCK,
        },
    ),
    row(
        CodecKind::Int4,
        "int4",
        &[],
        4,
        Reduction::NonLinear,
        false,
        Unbiased::WithStochasticRounding,
        Param::Block {
            default: DEFAULT_BLOCK,
        },
    ),
    row(
        CodecKind::OneBit,
        "1bit",
        &["sign"],
        5,
        Reduction::NonLinear,
        true,
        Unbiased::No,
        Param::Block {
            default: DEFAULT_BLOCK,
        },
    ),
    row(
        CodecKind::TopK,
        "topk",
        &[],
        6,
        Reduction::NonLinear,
        true,
        Unbiased::No,
        Param::Ratio { default: 0.01 },
    ),
    row(
        CodecKind::RandomK,
        "randk",
        &[],
        7,
        Reduction::Linear,
        false,
        Unbiased::Yes,
        Param::Ratio { default: 0.01 },
    ),
    row(
        CodecKind::RandomProjection,
        "rp",
        &["randproj"],
        8,
        Reduction::Linear,
        false,
        Unbiased::Yes,
        Param::Ratio { default: 0.02 },
    ),
    row(
        CodecKind::PowerSgd,
        "powersgd",
        &[],
        9,
        Reduction::Linear,
        true,
        Unbiased::No,
        Param::Rank { default: 4 },
    ),
];

#[allow(clippy::too_many_arguments)]
const fn row(
    kind: CodecKind,
    name: &'static str,
    aliases: &'static [&'static str],
    id: u8,
    reduction: Reduction,
    needs_error_feedback: bool,
    unbiased: Unbiased,
    param: Param,
) -> CodecInfo {
    CodecInfo {
        kind,
        name,
        aliases,
        id,
        reduction,
        needs_error_feedback,
        unbiased,
        param,
    }
}

impl CodecKind {
    /// This kind's row of [`CODEC_TABLE`].
    pub fn info(self) -> &'static CodecInfo {
        // The table is ordered by kind; the fallback keeps this total without a panic.
        CODEC_TABLE
            .iter()
            .find(|r| r.kind == self)
            .unwrap_or(&CODEC_TABLE[0])
    }

    /// Canonical name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The kind whose frame id is `id`.
    pub fn from_id(id: u8) -> Option<CodecKind> {
        CODEC_TABLE.iter().find(|r| r.id == id).map(|r| r.kind)
    }
}

impl fmt::Display for CodecKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every accepted spelling with its parameter form, for error messages.
fn choices() -> String {
    let mut out = Vec::new();
    for r in &CODEC_TABLE {
        let arg = match r.param {
            Param::None => "",
            Param::Block { .. } => "[:BLOCK]",
            Param::Ratio { .. } => "[:RATIO]",
            Param::Rank { .. } => "[:RANK]",
        };
        out.push(format!("{}{arg}", r.name));
        for a in r.aliases {
            out.push(format!("{a}{arg} (= {})", r.name));
        }
    }
    out.join(", ")
}

/// A codec and its parameters. Fields that do not apply to the kind are ignored.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CodecSpec {
    /// Which codec.
    pub kind: CodecKind,
    /// Fraction kept (top-k, random-k, random projection), in (0, 1].
    pub ratio: f64,
    /// PowerSGD rank ≥ 1.
    pub rank: usize,
    /// Elements per scale (int8, int4, 1-bit): multiple of 8 in 8..=2^24.
    pub block: usize,
    /// Stochastic rounding (int8, int4).
    pub stochastic: bool,
    /// Seed of every random choice (must be equal on all ranks).
    pub seed: u64,
}

impl CodecSpec {
    /// The kind with default parameters, deterministic rounding and seed 0.
    pub fn new(kind: CodecKind) -> CodecSpec {
        let ratio = match kind.info().param {
            Param::Ratio { default } => default,
            _ => 1.0,
        };
        CodecSpec {
            kind,
            ratio,
            rank: 4,
            block: DEFAULT_BLOCK,
            stochastic: false,
            seed: 0,
        }
    }

    /// This codec's row of [`CODEC_TABLE`].
    pub fn info(&self) -> &'static CodecInfo {
        self.kind.info()
    }

    /// Whether encodings sum with an ordinary all-reduce.
    pub fn is_linear(&self) -> bool {
        self.info().reduction == Reduction::Linear
    }

    /// Whether the codec needs error feedback to converge.
    pub fn needs_error_feedback(&self) -> bool {
        self.info().needs_error_feedback
    }

    /// Whether `E[decode(encode(x))] = x` with these parameters.
    pub fn is_unbiased(&self) -> bool {
        match self.info().unbiased {
            Unbiased::Exact | Unbiased::Yes => true,
            Unbiased::No => false,
            Unbiased::WithStochasticRounding => self.stochastic,
        }
    }

    /// Checks every parameter that applies to the kind.
    pub fn validate(&self) -> Result<()> {
        let codec = self.kind.name();
        match self.info().param {
            Param::None => Ok(()),
            Param::Ratio { .. } => check_ratio(codec, self.ratio).map(|_| ()),
            Param::Rank { .. } => check_rank(codec, self.rank).map(|_| ()),
            Param::Block { .. } => check_block(codec, self.block).map(|_| ()),
        }
    }

    /// Kept count `ceil(ratio·n)` clamped to `1..=n` for ratio codecs; `n` otherwise.
    pub fn kept(&self, n: usize) -> usize {
        match self.info().param {
            Param::Ratio { .. } => scaled_count(self.ratio, n),
            _ => n,
        }
    }

    /// Exact bytes on the wire for `n` f32 elements (see the module table). For non-linear
    /// codecs this is the encoded frame length including its header; for linear codecs the
    /// size of the buffer the all-reduce moves.
    pub fn wire_bytes(&self, n: usize) -> usize {
        // Saturating: an absurd n gives usize::MAX rather than an overflow panic.
        let nb = n.div_ceil(self.block.max(1));
        let framed = |payload: usize| {
            FRAME_HEADER_BYTES
                .saturating_add(nb.saturating_mul(4))
                .saturating_add(payload)
        };
        match self.kind {
            CodecKind::None => n.saturating_mul(4),
            CodecKind::F16 | CodecKind::Bf16 => n.saturating_mul(2),
            CodecKind::Int8 => framed(n),
            CodecKind::Int4 => framed(n.div_ceil(2)),
            CodecKind::OneBit => framed(n.div_ceil(8)),
            CodecKind::TopK => FRAME_HEADER_BYTES.saturating_add(self.kept(n).saturating_mul(8)),
            CodecKind::RandomK | CodecKind::RandomProjection => self.kept(n).saturating_mul(4),
            CodecKind::PowerSgd => {
                let (rows, cols, rank) = super::powersgd::view(n, self.rank);
                rows.saturating_add(cols)
                    .saturating_mul(rank)
                    .saturating_mul(4)
            }
        }
    }

    /// Memory passes over the n-element input for (encode, decode), error feedback
    /// excluded (see the module doc for the accounting).
    pub fn memory_passes(&self) -> (f64, f64) {
        match self.kind {
            CodecKind::None => (0.0, 0.0),
            CodecKind::F16
            | CodecKind::Bf16
            | CodecKind::Int8
            | CodecKind::Int4
            | CodecKind::OneBit
            | CodecKind::RandomProjection => (1.0, 1.0),
            CodecKind::TopK => (3.0, 1.0),
            CodecKind::RandomK => ((16.0 * self.ratio).min(1.0), 1.0),
            CodecKind::PowerSgd => (2.0, 1.0),
        }
    }
}

pub(crate) fn check_ratio(codec: &'static str, ratio: f64) -> Result<f64> {
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(ratio)
    } else {
        Err(CodecError::BadParam {
            codec,
            param: "ratio",
            value: ratio.to_string(),
            expected: "the kept fraction must lie in (0, 1], e.g. 0.01",
        })
    }
}

pub(crate) fn check_rank(codec: &'static str, rank: usize) -> Result<usize> {
    if rank >= 1 {
        Ok(rank)
    } else {
        Err(CodecError::BadParam {
            codec,
            param: "rank",
            value: rank.to_string(),
            expected: "the rank must be an integer ≥ 1, e.g. 4",
        })
    }
}

pub(crate) fn check_block(codec: &'static str, block: usize) -> Result<usize> {
    if (8..=MAX_BLOCK).contains(&block) && block % 8 == 0 {
        Ok(block)
    } else {
        Err(CodecError::BadParam {
            codec,
            param: "block",
            value: block.to_string(),
            expected: "the block size must be a multiple of 8 in 8..=16777216, e.g. 256",
        })
    }
}

impl FromStr for CodecSpec {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<CodecSpec> {
        let lower = s.trim().to_ascii_lowercase();
        let (name, arg) = match lower.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (lower.as_str(), None),
        };
        let unknown = || CodecError::UnknownCodec {
            name: s.trim().to_string(),
            choices: choices(),
        };
        let info = CODEC_TABLE
            .iter()
            .find(|r| r.name == name || r.aliases.contains(&name))
            .ok_or_else(unknown)?;
        let mut spec = CodecSpec::new(info.kind);
        let Some(arg) = arg else { return Ok(spec) };
        let bad = |param: &'static str, expected: &'static str| CodecError::BadParam {
            codec: info.name,
            param,
            value: arg.to_string(),
            expected,
        };
        match info.param {
            Param::None => {
                return Err(bad(
                    "parameter",
                    "this codec takes no parameter; drop the ':…'",
                ))
            }
            Param::Ratio { .. } => {
                let r: f64 = arg
                    .parse()
                    .map_err(|_| bad("ratio", "the kept fraction must lie in (0, 1], e.g. 0.01"))?;
                spec.ratio = check_ratio(info.name, r)?;
            }
            Param::Rank { .. } => {
                let r: usize = arg
                    .parse()
                    .map_err(|_| bad("rank", "the rank must be an integer ≥ 1, e.g. 4"))?;
                spec.rank = check_rank(info.name, r)?;
            }
            Param::Block { .. } => {
                let b: usize = arg.parse().map_err(|_| {
                    bad(
                        "block",
                        "the block size must be a multiple of 8 in 8..=16777216, e.g. 256",
                    )
                })?;
                spec.block = check_block(info.name, b)?;
            }
        }
        Ok(spec)
    }
}

impl fmt::Display for CodecSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        f.write_str(info.name)?;
        match info.param {
            Param::None => Ok(()),
            Param::Ratio { .. } => write!(f, ":{}", self.ratio),
            Param::Rank { .. } => write!(f, ":{}", self.rank),
            Param::Block { default } if self.block == default => Ok(()),
            Param::Block { .. } => write!(f, ":{}", self.block),
        }
    }
}

/// The reduction a collective performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean.
    Avg,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
    /// Element-wise product.
    Product,
}

/// Element type of the tensor being reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// Any integer or boolean type.
    Integer,
}

/// Refuses `spec` for a reduction or element type it cannot serve: every codec but `none`
/// serves only sum/avg of floating-point tensors (quantising a max, min or product, or
/// rounding integers, would change the answer, not approximate it). The codecs read f32:
/// the caller converts f64, f16 and bf16 tensors.
pub fn check_supported(spec: &CodecSpec, op: ReduceOp, elem: ElemType) -> Result<()> {
    if spec.kind == CodecKind::None {
        return Ok(());
    }
    let codec = spec.kind.name();
    let op_name = match op {
        ReduceOp::Sum | ReduceOp::Avg => None,
        ReduceOp::Max => Some("max"),
        ReduceOp::Min => Some("min"),
        ReduceOp::Product => Some("product"),
    };
    if let Some(op_name) = op_name {
        return Err(CodecError::Unsupported {
            codec,
            what: format!("{op_name} reduction"),
            why: "compressed collectives only approximate sums (sum, avg)",
        });
    }
    if elem == ElemType::Integer {
        return Err(CodecError::Unsupported {
            codec,
            what: "integer tensor".to_string(),
            why: "lossy codecs would change integer values; they serve f32, f64, f16, bf16",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ordered_ids_unique_and_every_kind_present() {
        for (i, r) in CODEC_TABLE.iter().enumerate() {
            assert_eq!(r.id as usize, i);
            assert_eq!(CodecKind::from_id(r.id), Some(r.kind));
            assert_eq!(r.kind.info().name, r.name);
        }
        let linear: Vec<_> = CODEC_TABLE
            .iter()
            .filter(|r| r.reduction == Reduction::Linear)
            .map(|r| r.name)
            .collect();
        assert_eq!(linear, ["none", "fp16", "bf16", "randk", "rp", "powersgd"]);
    }

    #[test]
    fn parses_every_form_and_alias() {
        let p = |s: &str| s.parse::<CodecSpec>().unwrap();
        assert_eq!(p("none").kind, CodecKind::None);
        assert_eq!(p("FP16").kind, CodecKind::F16);
        assert_eq!(p("bf16").kind, CodecKind::Bf16);
        assert_eq!(p("int8").block, 256);
        assert_eq!(p("int4:128").block, 128);
        assert_eq!(p("sign").kind, CodecKind::OneBit);
        assert_eq!(p("1bit").kind, CodecKind::OneBit);
        assert_eq!(p("topk").ratio, 0.01);
        assert_eq!(p("topk:0.1").ratio, 0.1);
        assert_eq!(p("randk").ratio, 0.01);
        assert_eq!(p("rp").ratio, 0.02);
        assert_eq!(p("randproj:0.5").kind, CodecKind::RandomProjection);
        assert_eq!(p("powersgd").rank, 4);
        assert_eq!(p(" powersgd:8 ").rank, 8);
    }

    #[test]
    fn errors_list_choices_and_ranges() {
        let e = "zip".parse::<CodecSpec>().unwrap_err().to_string();
        for r in &CODEC_TABLE {
            assert!(e.contains(r.name), "{e} lacks {}", r.name);
        }
        assert!(e.contains("sign") && e.contains("randproj"), "{e}");
        for bad in ["topk:0", "topk:1.5", "randk:-0.1", "rp:nan", "rp:x"] {
            let e = bad.parse::<CodecSpec>().unwrap_err().to_string();
            assert!(e.contains("(0, 1]"), "{bad}: {e}");
        }
        let e = "powersgd:0".parse::<CodecSpec>().unwrap_err().to_string();
        assert!(e.contains("≥ 1"), "{e}");
        let e = "int8:12".parse::<CodecSpec>().unwrap_err().to_string();
        assert!(e.contains("multiple of 8"), "{e}");
        assert!("fp16:3".parse::<CodecSpec>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "none",
            "fp16",
            "bf16",
            "int8",
            "int4:64",
            "1bit",
            "topk:0.01",
            "randk:0.25",
            "rp:0.02",
            "powersgd:4",
        ] {
            let spec: CodecSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            assert_eq!(spec.to_string().parse::<CodecSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn refuses_non_sum_ops_and_integers_naming_codec_and_op() {
        let q: CodecSpec = "int8".parse().unwrap();
        let e = check_supported(&q, ReduceOp::Max, ElemType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("int8") && e.contains("max"), "{e}");
        let e = check_supported(&q, ReduceOp::Product, ElemType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("product"), "{e}");
        let e = check_supported(&q, ReduceOp::Sum, ElemType::Integer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("integer"), "{e}");
        assert!(check_supported(&q, ReduceOp::Avg, ElemType::Bf16).is_ok());
        let none = CodecSpec::new(CodecKind::None);
        assert!(check_supported(&none, ReduceOp::Min, ElemType::Integer).is_ok());
    }

    #[test]
    fn unbiasedness_follows_table_and_stochastic_flag() {
        let mut s = CodecSpec::new(CodecKind::Int8);
        assert!(!s.is_unbiased());
        s.stochastic = true;
        assert!(s.is_unbiased());
        assert!(CodecSpec::new(CodecKind::RandomK).is_unbiased());
        assert!(!CodecSpec::new(CodecKind::TopK).is_unbiased());
        assert!(CodecSpec::new(CodecKind::OneBit).needs_error_feedback());
    }

    #[test]
    fn wire_bytes_formulae() {
        let p = |s: &str| s.parse::<CodecSpec>().unwrap();
        assert_eq!(p("none").wire_bytes(10), 40);
        assert_eq!(p("fp16").wire_bytes(10), 20);
        assert_eq!(p("int8").wire_bytes(300), 16 + 8 + 300);
        assert_eq!(p("int4").wire_bytes(301), 16 + 8 + 151);
        assert_eq!(p("1bit").wire_bytes(257), 16 + 8 + 33);
        assert_eq!(p("topk:0.01").wire_bytes(1000), 16 + 80);
        assert_eq!(p("randk:0.01").wire_bytes(1000), 40);
        assert_eq!(p("rp:0.02").wire_bytes(1000), 80);
        assert_eq!(p("powersgd:4").wire_bytes(1024 * 1024), 4 * 4 * 2048);
    }
}
