//! Gradient-compression codecs: pure encode/decode kernels, their wire sizes and cost
//! figures, and the error feedback that keeps biased codecs convergent.
//!
//! # What lives where
//! - [`spec`]: [`CodecSpec`] (kind + parameters, parsed from and printed as the CLI/env
//!   strings), the one table [`CODEC_TABLE`] that classifies every codec (linear or not,
//!   error feedback, bias), exact wire bytes, memory passes, and [`check_supported`] which
//!   refuses a codec for a reduction or element type it cannot serve.
//! - [`frame`]: the 16-byte self-describing header of the byte frames of non-linear codecs.
//! - [`framed`]: [`FrameCodec`], one entry point for the non-linear codecs.
//! - [`cast`]: fp16 / bf16 casts with a pre-scale that keeps sums over `world` ranks finite.
//! - [`quant`]: int8 / int4 with one scale per block, optional seeded stochastic rounding.
//! - [`sign`]: 1-bit (sign, mean |x| per block); usable only through error feedback.
//! - [`sparse`]: top-k (values + u32 indices) and random-k (shared-seed indices).
//! - [`projection`]: count-sketch random projection `y = Φx`, decode `Φᵀy`.
//! - [`powersgd`]: the pure steps of rank-r PowerSGD on a matrix view of the gradient.
//! - [`feedback`]: [`ErrorFeedback`], one residual per key, bounded key count.
//!
//! # Linear and non-linear codecs
//! Linear codecs (none, casts, random projection, random-k, PowerSGD) produce numeric
//! vectors whose element-wise sum over ranks is the encoding of the summed gradient, so an
//! ordinary all-reduce of that dtype moves them and the result is decoded once.
//! Non-linear codecs (int8, int4, 1-bit, top-k) produce byte frames: peers decode frames,
//! sum in f32 and re-encode (compressed reduce-scatter + all-gather, or a sparse
//! all-gather for top-k). [`CodecInfo::reduction`] records which.
//!
//! # Driving one step (sums; divide by world afterwards for a mean)
//! - Non-linear: `FrameCodec::new(&spec)?`, then on each rank
//!   `encode(grad, stream, Some((&mut ef, key)), &mut frame)`; a receiver calls
//!   `decode_add(&frame, &mut acc)` per peer frame (a frame of another codec, block or
//!   size is an error naming both), and re-encodes the partial sum for the next hop.
//! - fp16/bf16: `s = cast_prescale::<f16>(world, Some(agreed_max_abs))?`,
//!   `cast_encode(grad, s, &mut y)`, all-reduce `y` in that dtype,
//!   `cast_decode(&y, s, &mut out)`.
//! - Random-k / random projection: `project(grad, step, &mut y)`, all-reduce `y` as f32,
//!   `unproject(&y, step, &mut out)`; the same `step` on every rank.
//! - PowerSGD: see [`powersgd`]; two all-reduces (P, then Q) per step.
//! - Error feedback for linear codecs (the decoding exists only after the collective):
//!   `ef.compensate(key, grad, &mut c)` before encoding `c`, `ef.update(key, &c, &decoded)`
//!   after.
//!
//! ```
//! use topoccl_compress::codec::{CodecSpec, ErrorFeedback, FrameCodec};
//! let spec: CodecSpec = "int8".parse()?;
//! let mut codec = FrameCodec::new(&spec)?;
//! let mut ef = ErrorFeedback::with_defaults();
//! let grad = vec![0.5f32; 1000];
//! let mut frame = Vec::new();
//! codec.encode(&grad, 0, Some((&mut ef, 7)), &mut frame)?;
//! assert_eq!(frame.len(), spec.wire_bytes(grad.len()));
//! let mut sum = vec![0.0f32; 1000];
//! codec.decode_add(&frame, &mut sum)?;
//! assert!((sum[0] - 0.5).abs() < 0.01);
//! # Ok::<(), topoccl_compress::codec::CodecError>(())
//! ```
//!
//! # Randomness
//! Every random choice comes from `Xoshiro256PlusPlus` or a stateless hash seeded from the
//! spec's `seed` mixed with a caller-supplied `stream` (usually the step number; for
//! stochastic rounding also the rank, so ranks round independently). Shared-seed codecs
//! (random-k, random projection, PowerSGD's initial `Q`) need the same seed and stream on
//! every rank.
//!
//! # Limits
//! Inputs are `f32` slices. Codecs that index elements with `u32` (top-k, random-k) refuse
//! more than `u32::MAX` elements. Block sizes are multiples of 8 in `8..=2^24`.

pub mod cast;
pub mod feedback;
pub mod frame;
pub mod framed;
pub mod powersgd;
pub mod projection;
pub mod quant;
pub mod sign;
pub mod sparse;
pub mod spec;

pub use cast::{cast_decode, cast_encode, cast_prescale, HalfFloat};
pub use feedback::{ErrorFeedback, DEFAULT_DECAY, DEFAULT_MAX_KEYS};
pub use frame::{FrameHeader, FRAME_HEADER_BYTES};
pub use framed::FrameCodec;
pub use powersgd::PowerSgd;
pub use projection::CountSketch;
pub use quant::BlockQuant;
pub use sign::SignCodec;
pub use sparse::{RandomK, TopK};
pub use spec::{
    check_supported, CodecInfo, CodecKind, CodecSpec, ElemType, Param, ReduceOp, Reduction,
    Unbiased, CODEC_TABLE,
};

use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// Every way a codec call can fail. Messages name the argument, the value, and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// The codec name is not one of the known codecs.
    #[error("unknown codec '{name}': choose one of {choices}")]
    UnknownCodec {
        /// The name that was given.
        name: String,
        /// Every accepted spelling, comma-separated.
        choices: String,
    },
    /// A parameter is outside its range or malformed.
    #[error("codec '{codec}': {param} = {value} is invalid: {expected}")]
    BadParam {
        /// Codec name.
        codec: &'static str,
        /// Parameter name (ratio, rank, block, world, ...).
        param: &'static str,
        /// The offending value as written.
        value: String,
        /// The valid range or form.
        expected: &'static str,
    },
    /// A codec cannot serve this reduction or element type.
    #[error("codec '{codec}' cannot compress a {what}: {why}; use codec 'none' for it")]
    Unsupported {
        /// Codec name.
        codec: &'static str,
        /// The refused operation or dtype, e.g. "max reduction" or "int32 tensor".
        what: String,
        /// Why the codec cannot serve it.
        why: &'static str,
    },
    /// A buffer has the wrong length.
    #[error("codec '{codec}': buffer '{buffer}' has {got} elements, expected {expected}")]
    Length {
        /// Codec name.
        codec: &'static str,
        /// Which buffer (argument name).
        buffer: &'static str,
        /// Its length.
        got: usize,
        /// The length required.
        expected: usize,
    },
    /// The input holds NaN or infinity, which no scale can represent.
    #[error(
        "codec '{codec}': input element in block starting at {index} is NaN or infinite; \
         skip this step (loss-scale overflow) or sanitise the gradient"
    )]
    NonFinite {
        /// Codec name.
        codec: &'static str,
        /// First element index of the block (or the element) holding the value.
        index: usize,
    },
    /// A received frame was made by another codec, size or parameter set.
    #[error("frame mismatch: the frame was encoded as {found}, but this decoder expects {expected}; all ranks must use the same codec spec and bucket sizes")]
    FrameMismatch {
        /// What the frame header says.
        found: String,
        /// What this decoder is configured for.
        expected: String,
    },
    /// A received frame is malformed (truncated, bad magic, corrupt payload).
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// Error-feedback state is full or inconsistent.
    #[error("error feedback: {0}")]
    Feedback(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, CodecError>;

/// SplitMix64 finaliser: a bijective 64-bit mix used to derive streams and hashes.
#[inline(always)]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator for (`seed`, `stream`): identical on every rank given the same pair.
pub(crate) fn rng_for(seed: u64, stream: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(mix64(seed ^ mix64(stream)))
}

/// `ceil(ratio · n)` clamped to `1..=n` (0 when `n == 0`), tolerant of the f64 rounding in
/// `ratio · n` (0.07 · 100 counts 7, not 8).
pub(crate) fn scaled_count(ratio: f64, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let x = ratio * n as f64;
    let r = x.round();
    let c = if (x - r).abs() <= 1e-9 * x.max(1.0) {
        r
    } else {
        x.ceil()
    };
    (c as usize).clamp(1, n)
}

/// Checks that `spec` is one of `kinds`; `what` names the type and what it serves.
pub(crate) fn expect_kind(spec: &CodecSpec, kinds: &[CodecKind], what: &'static str) -> Result<()> {
    if kinds.contains(&spec.kind) {
        Ok(())
    } else {
        Err(CodecError::BadParam {
            codec: spec.kind.name(),
            param: "kind",
            value: spec.kind.name().to_string(),
            expected: what,
        })
    }
}

/// Checks that `buf` has `expected` elements.
pub(crate) fn check_len(
    codec: &'static str,
    buffer: &'static str,
    got: usize,
    expected: usize,
) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(CodecError::Length {
            codec,
            buffer,
            got,
            expected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_count_is_exact_on_round_products_and_clamped() {
        assert_eq!(scaled_count(0.07, 100), 7);
        assert_eq!(scaled_count(0.01, 100), 1);
        assert_eq!(scaled_count(0.01, 101), 2);
        assert_eq!(scaled_count(0.001, 10), 1);
        assert_eq!(scaled_count(1.0, 10), 10);
        assert_eq!(scaled_count(0.5, 0), 0);
    }

    #[test]
    fn streams_differ() {
        use rand_xoshiro::rand_core::RngCore;
        let a = rng_for(1, 0).next_u64();
        let b = rng_for(1, 1).next_u64();
        let c = rng_for(2, 0).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, rng_for(1, 0).next_u64());
    }
}
