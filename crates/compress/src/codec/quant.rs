//! int8 and int4 block quantisation: one f32 scale per block of `block` elements, codes
//! in `[-q, q]` with q = 127 (int8) or 7 (int4).
//!
//! # Formulas
//! scale_b = max_{i∈b} |x_i| / q (0 for an all-zero block); code_i = round(x_i / scale_b);
//! decode x̂_i = code_i · scale_b. Deterministic rounding is to nearest (ties to even), so
//! |x̂_i − x_i| ≤ scale_b / 2. Stochastic rounding takes code_i = floor(x_i/scale_b + u_i)
//! with u_i uniform on [0, 1) in steps of 2^-24 from the seeded generator, so
//! E[x̂_i] = x_i up to the f32 rounding of the sum (below 2^-16 of a step) and
//! |x̂_i − x_i| < scale_b. The floor is a truncation after a +128 shift (no libm call).
//! The random stream is (seed, `stream`): pass a value unique per step and rank.
//!
//! # Frame
//! [`FrameHeader`] (param = block), then nb = ceil(n/block) little-endian f32 scales, then
//! the codes: int8 one byte each (two's complement), int4 two per byte (element 2j in the
//! low nibble, 2j+1 in the high nibble; an odd n leaves the last high nibble zero). Blocks
//! are multiples of 8 elements, so every block starts on a byte boundary.
//!
//! # Speed
//! The deterministic path has no per-element branch: the block max is an integer fold
//! of |x| bit patterns (which also detects NaN and infinity), rounding is the 1.5·2^23
//! magic-number addition whose low mantissa bits are the two's-complement code, and codes
//! are appended once (no zero fill). With error feedback
//! ([`BlockQuant::encode_with_feedback`]) compensation, encoding and the residual update
//! run block by block in cache.

use rand_xoshiro::rand_core::RngCore;

use super::feedback::ErrorFeedback;
use super::frame::{self, FrameHeader};
use super::spec::check_block;
use super::{expect_kind, rng_for, CodecError, CodecKind, CodecSpec, Result, FRAME_HEADER_BYTES};

/// Adding this to a float in [-2^22, 2^22] rounds it to an integer (ties to even) held in
/// the low mantissa bits in two's complement.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// The largest |x| bit pattern of `x` (0 when empty). Bit patterns of non-negative
/// floats order like their values, so this is max |x| as bits, and a result at or above
/// [`NON_FINITE_BITS`] means the block holds NaN or infinity.
#[inline]
pub(crate) fn max_abs_bits(x: &[f32]) -> u32 {
    // An integer max is associative, so the loop vectoriser handles the plain fold.
    x.iter()
        .map(|v| v.to_bits() & 0x7FFF_FFFF)
        .fold(0, u32::max)
}

/// |x| bit patterns at or above this are infinity or NaN.
pub(crate) const NON_FINITE_BITS: u32 = 0x7F80_0000;

/// Σ |x| with 8 independent lanes (vectorisable).
#[inline]
pub(crate) fn abs_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            lanes[j] += c[j].abs();
        }
    }
    chunks.remainder().iter().map(|v| v.abs()).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Encodes a blocked frame (int8, int4, 1-bit): header, nb f32 scales, then the codes
/// of each block in order. For each block, `code(block, max |x|, out)` appends the
/// block's codes to `out` and returns its scale; the scale region is filled in place, so
/// codes are written once (no zero fill). Stops with [`CodecError::NonFinite`] at the
/// first block holding NaN or infinity (or giving an infinite scale).
///
/// With `feedback`, blocks are compensated and the residual updated block by block
/// ([`ErrorFeedback::step_blocks`]), so everything stays cache-resident:
/// `decode(scale, codes, out)` writes the block's local decoding for the residual.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_blocked(
    codec: &'static str,
    x: &[f32],
    block: usize,
    header: &FrameHeader,
    total: usize,
    out: &mut Vec<u8>,
    feedback: Option<(&mut ErrorFeedback, u64)>,
    mut code: impl FnMut(&[f32], f32, &mut Vec<u8>) -> f32,
    decode: impl Fn(f32, &[u8], &mut [f32]),
) -> Result<()> {
    frame::start(out, header, total);
    out.resize(FRAME_HEADER_BYTES + 4 * x.len().div_ceil(block), 0);
    let mut one = |b: usize, xb: &[f32], out: &mut Vec<u8>| -> Result<f32> {
        let max_bits = max_abs_bits(xb);
        let scale = if max_bits < NON_FINITE_BITS {
            code(xb, f32::from_bits(max_bits), out)
        } else {
            f32::NAN
        };
        if !scale.is_finite() {
            return Err(CodecError::NonFinite {
                codec,
                index: b * block,
            });
        }
        let at = FRAME_HEADER_BYTES + 4 * b;
        out[at..at + 4].copy_from_slice(&scale.to_le_bytes());
        Ok(scale)
    };
    match feedback {
        None => {
            for (b, xb) in x.chunks(block).enumerate() {
                one(b, xb, out)?;
            }
            Ok(())
        }
        Some((ef, key)) => ef.step_blocks(key, x, block, |b, c, d| {
            let start = out.len();
            let scale = one(b, c, out)?;
            decode(scale, &out[start..], d);
            Ok(())
        }),
    }
}

/// Appends the codes of one block: `round` maps x·inv to its two's-complement code byte;
/// int4 packs two per byte, low nibble first.
#[inline(always)]
fn quantize_block(
    four: bool,
    xb: &[f32],
    inv: f32,
    out: &mut Vec<u8>,
    round: &mut impl FnMut(f32) -> u8,
) {
    if !four {
        out.extend(xb.iter().map(|&v| round(v * inv)));
    } else {
        let pairs = xb.chunks_exact(2);
        let rest = pairs.remainder();
        out.extend(pairs.map(|p| (round(p[0] * inv) & 0x0F) | (round(p[1] * inv) << 4)));
        if let [v] = rest {
            out.push(round(v * inv) & 0x0F);
        }
    }
}

/// Reads little-endian f32 number `i` of `bytes` (caller guarantees the length).
#[inline]
pub(crate) fn get_f32(bytes: &[u8], i: usize) -> f32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[4 * i..4 * i + 4]);
    f32::from_le_bytes(b)
}

/// Validates the `nb` block scales at the start of `bytes` (finite and ≥ 0) and returns
/// them as an iterator, without allocating.
pub(crate) fn read_scales<'a>(
    codec: &str,
    bytes: &'a [u8],
    nb: usize,
) -> Result<impl Iterator<Item = f32> + 'a> {
    let scales = bytes[..4 * nb].chunks_exact(4).map(|s| get_f32(s, 0));
    if let Some((b, s)) = scales
        .clone()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && *s >= 0.0))
    {
        return Err(CodecError::Corrupt(format!(
            "{codec} frame: scale of block {b} is {s}, expected a finite value ≥ 0"
        )));
    }
    Ok(scales)
}

/// Applies `out[i] = v` (`ACC = false`) or `out[i] += v` (`ACC = true`).
#[inline(always)]
pub(crate) fn store<const ACC: bool>(o: &mut f32, v: f32) {
    if ACC {
        *o += v
    } else {
        *o = v
    }
}

/// int8 or int4 block quantiser. Build it with [`BlockQuant::new`] from a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockQuant {
    kind: CodecKind,
    block: usize,
    stochastic: bool,
    seed: u64,
}

impl BlockQuant {
    /// A quantiser for an `int8` or `int4` spec (validated).
    pub fn new(spec: &CodecSpec) -> Result<BlockQuant> {
        expect_kind(
            spec,
            &[CodecKind::Int8, CodecKind::Int4],
            "BlockQuant serves int8 and int4 only",
        )?;
        let block = check_block(spec.kind.name(), spec.block)?;
        Ok(BlockQuant {
            kind: spec.kind,
            block,
            stochastic: spec.stochastic,
            seed: spec.seed,
        })
    }

    fn qmax(&self) -> f32 {
        if self.kind == CodecKind::Int8 {
            127.0
        } else {
            7.0
        }
    }

    fn code_bytes(&self, n: usize) -> usize {
        if self.kind == CodecKind::Int8 {
            n
        } else {
            n.div_ceil(2)
        }
    }

    fn header(&self, n: usize) -> FrameHeader {
        FrameHeader {
            kind: self.kind,
            param: self.block as u32,
            n: n as u64,
        }
    }

    /// Exact frame length for `n` elements.
    pub fn wire_bytes(&self, n: usize) -> usize {
        FRAME_HEADER_BYTES + 4 * n.div_ceil(self.block) + self.code_bytes(n)
    }

    /// Encodes `x` into `out` (cleared first; capacity reused). `stream` selects the
    /// stochastic-rounding random stream (mix step and rank into it); ignored otherwise.
    /// Fails on NaN or infinite input, naming the block.
    pub fn encode(&self, x: &[f32], stream: u64, out: &mut Vec<u8>) -> Result<()> {
        self.encode_impl(x, stream, None, out)
    }

    /// Like [`BlockQuant::encode`], encoding `x` plus the decayed residual of `key` and
    /// updating the residual, block by block in one pass.
    pub fn encode_with_feedback(
        &self,
        ef: &mut ErrorFeedback,
        key: u64,
        x: &[f32],
        stream: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        self.encode_impl(x, stream, Some((ef, key)), out)
    }

    fn encode_impl(
        &self,
        x: &[f32],
        stream: u64,
        feedback: Option<(&mut ErrorFeedback, u64)>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let n = x.len();
        let qmax = self.qmax();
        let mut rng = rng_for(self.seed, stream);
        let four = self.kind == CodecKind::Int4;
        let code = |xb: &[f32], max: f32, out: &mut Vec<u8>| {
            let (scale, inv) = if max > 0.0 {
                (max / qmax, qmax / max)
            } else {
                (0.0, 0.0)
            };
            if self.stochastic {
                // floor(v + u) for v + u in [-128, 129): truncation after a +128 shift.
                let mut round = |v: f32| -> u8 {
                    let u = (rng.next_u32() >> 8) as f32 * (1.0 / 16_777_216.0);
                    ((v + u + 128.0) as i32 - 128).clamp(-(qmax as i32), qmax as i32) as u8
                };
                quantize_block(four, xb, inv, out, &mut round);
            } else {
                let mut round = |v: f32| -> u8 { (v + ROUND_MAGIC).to_bits() as u8 };
                quantize_block(four, xb, inv, out, &mut round);
            }
            scale
        };
        let (header, total) = (self.header(n), self.wire_bytes(n));
        let decode = |s: f32, cb: &[u8], ob: &mut [f32]| self.decode_block::<false>(s, cb, ob);
        encode_blocked(
            self.kind.name(),
            x,
            self.block,
            &header,
            total,
            out,
            feedback,
            code,
            decode,
        )
    }

    /// Decodes `frame` and adds it to `acc` (the reduce step). `acc.len()` is the expected
    /// n; a frame of another codec, block or n is refused, naming both.
    pub fn decode_add(&self, frame: &[u8], acc: &mut [f32]) -> Result<()> {
        self.decode::<true>(frame, acc)
    }

    /// Decodes `frame` into `out` (overwritten).
    pub fn decode_into(&self, frame: &[u8], out: &mut [f32]) -> Result<()> {
        self.decode::<false>(frame, out)
    }

    fn decode<const ACC: bool>(&self, frame: &[u8], out: &mut [f32]) -> Result<()> {
        let n = out.len();
        let nb = n.div_ceil(self.block);
        let payload = frame::open(frame, &self.header(n), self.wire_bytes(n))?;
        let (scale_bytes, codes) = payload.split_at(4 * nb);
        let scales = read_scales(self.kind.name(), scale_bytes, nb)?;
        let code_block = self.code_bytes(self.block);
        for ((ob, cb), s) in out
            .chunks_mut(self.block)
            .zip(codes.chunks(code_block))
            .zip(scales)
        {
            self.decode_block::<ACC>(s, cb, ob);
        }
        Ok(())
    }

    /// Decodes the codes `cb` of one block with scale `s` into `ob`.
    #[inline]
    fn decode_block<const ACC: bool>(&self, s: f32, cb: &[u8], ob: &mut [f32]) {
        if self.kind == CodecKind::Int8 {
            for (o, &c) in ob.iter_mut().zip(cb) {
                store::<ACC>(o, (c as i8) as f32 * s);
            }
        } else {
            let mut pairs = ob.chunks_exact_mut(2);
            for (o, &c) in (&mut pairs).zip(cb) {
                store::<ACC>(&mut o[0], (((c << 4) as i8) >> 4) as f32 * s);
                store::<ACC>(&mut o[1], ((c as i8) >> 4) as f32 * s);
            }
            if let ([o], Some(&c)) = (pairs.into_remainder(), cb.last()) {
                store::<ACC>(o, (((c << 4) as i8) >> 4) as f32 * s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> BlockQuant {
        BlockQuant::new(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn magic_rounding_gives_twos_complement_codes() {
        for v in [-127.0f32, -7.0, -2.5, -0.5, 0.0, 0.49, 1.5, 7.0, 127.0] {
            let c = (v + ROUND_MAGIC).to_bits() as u8 as i8;
            assert_eq!(c as f32, v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn int8_round_trip_within_half_scale() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let c = q("int8:64");
        let mut f = Vec::new();
        c.encode(&x, 0, &mut f).unwrap();
        assert_eq!(f.len(), c.wire_bytes(x.len()));
        let mut y = vec![0.0; x.len()];
        c.decode_into(&f, &mut y).unwrap();
        for (b, (xb, yb)) in x.chunks(64).zip(y.chunks(64)).enumerate() {
            let scale = f32::from_bits(max_abs_bits(xb)) / 127.0;
            for (a, d) in xb.iter().zip(yb) {
                assert!((a - d).abs() <= scale * 0.5 + 1e-7, "block {b}: {a} vs {d}");
            }
        }
    }

    #[test]
    fn int4_odd_length_and_nonfinite() {
        let x: Vec<f32> = (0..17).map(|i| i as f32 - 8.0).collect();
        let c = q("int4:8");
        let mut f = Vec::new();
        c.encode(&x, 0, &mut f).unwrap();
        let mut y = vec![1.0; 17];
        c.decode_add(&f, &mut y).unwrap();
        for (a, d) in x.iter().zip(&y) {
            assert!((a + 1.0 - d).abs() <= 8.0 / 7.0 / 2.0 + 1e-5, "{a} {d}");
        }
        let mut bad = x.clone();
        bad[9] = f32::NAN;
        let e = c.encode(&bad, 0, &mut f).unwrap_err();
        assert_eq!(
            e,
            CodecError::NonFinite {
                codec: "int4",
                index: 8
            }
        );
    }
}
