//! fp16 and bf16 casts with a pre-scale that keeps the sum over `world` ranks finite.
//!
//! Encode: `y_i = H(clamp(s·x_i, ±MAX_H))`; decode: `x̂_i = f32(y_i) / s`. The all-reduce
//! sums the `y` in H, and decoding the sum gives the summed gradient.
//!
//! # Choosing the scale s ([`cast_prescale`])
//! - From a max-abs all ranks agree on (`Some(global_max_abs)`, e.g. a max all-reduce of
//!   each rank's max |x|): s is the largest power of two with
//!   world · global_max_abs · s ≤ MAX_H / 2, so no partial sum can overflow, the scaling
//!   itself is exact, and small fp16 gradients are lifted out of the subnormal range.
//! - Fixed (`None`): s = 1/world. The sum of world scaled values is at most the largest
//!   scaled value, so it stays finite whenever every |x_i| ≤ MAX_H; larger values are
//!   clamped to ±MAX_H (saturating, never infinite).
//!
//! Every rank must use the same s. Rounding is to nearest (biased at the last bit).
//! Conversion goes through `half`'s slice converters (F16C when the CPU has it) in chunks
//! of 256 elements, one pass over the input.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use super::{check_len, CodecError, Result};

/// A 16-bit float the casts can target.
pub trait HalfFloat: Copy + Default + private::Sealed {
    /// Codec name.
    const NAME: &'static str;
    /// Largest finite value, as f32.
    const MAX: f32;
    /// Converts `src` into `dst` (same length).
    fn from_f32s(dst: &mut [Self], src: &[f32]);
    /// Converts `src` into `dst` (same length).
    fn to_f32s(src: &[Self], dst: &mut [f32]);
}

mod private {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

impl HalfFloat for f16 {
    const NAME: &'static str = "fp16";
    const MAX: f32 = 65504.0;
    fn from_f32s(dst: &mut [f16], src: &[f32]) {
        dst.convert_from_f32_slice(src)
    }
    fn to_f32s(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
}

impl HalfFloat for bf16 {
    const NAME: &'static str = "bf16";
    const MAX: f32 = 3.389_531_4e38;
    fn from_f32s(dst: &mut [bf16], src: &[f32]) {
        dst.convert_from_f32_slice(src)
    }
    fn to_f32s(src: &[bf16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst)
    }
}

/// The pre-scale for `world` ranks (see the module doc): a power of two from an agreed
/// max-abs, or 1/world when `global_max_abs` is `None`.
pub fn cast_prescale<H: HalfFloat>(world: usize, global_max_abs: Option<f32>) -> Result<f32> {
    if world == 0 {
        return Err(CodecError::BadParam {
            codec: H::NAME,
            param: "world",
            value: "0".to_string(),
            expected: "the number of ranks must be ≥ 1",
        });
    }
    let Some(max) = global_max_abs else {
        return Ok(1.0 / world as f32);
    };
    if !(max.is_finite() && max >= 0.0) {
        return Err(CodecError::BadParam {
            codec: H::NAME,
            param: "global_max_abs",
            value: max.to_string(),
            expected: "the agreed max |x| must be finite and ≥ 0 (skip the step on overflow)",
        });
    }
    if max == 0.0 {
        return Ok(1.0);
    }
    let target = (H::MAX as f64 / 2.0) / (world as f64 * max as f64);
    let exp = target.log2().floor().clamp(-126.0, 127.0) as i32;
    Ok(2f32.powi(exp))
}

const CHUNK: usize = 256;

/// Writes `y = H(clamp(scale·x))` (`y.len()` = `x.len()`).
pub fn cast_encode<H: HalfFloat>(x: &[f32], scale: f32, y: &mut [H]) -> Result<()> {
    check_len(H::NAME, "y", y.len(), x.len())?;
    let mut buf = [0f32; CHUNK];
    for (xc, yc) in x.chunks(CHUNK).zip(y.chunks_mut(CHUNK)) {
        let b = &mut buf[..xc.len()];
        for (o, &v) in b.iter_mut().zip(xc) {
            *o = (v * scale).clamp(-H::MAX, H::MAX);
        }
        H::from_f32s(yc, b);
    }
    Ok(())
}

/// Writes `out = f32(y) / scale` (`out.len()` = `y.len()`); `y` may be the all-reduced sum.
pub fn cast_decode<H: HalfFloat>(y: &[H], scale: f32, out: &mut [f32]) -> Result<()> {
    check_len(H::NAME, "out", out.len(), y.len())?;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    for (yc, oc) in y.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        H::to_f32s(yc, oc);
        for o in oc.iter_mut() {
            *o *= inv;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prescale_keeps_world_sum_finite_and_is_power_of_two() {
        let s = cast_prescale::<f16>(8, Some(1000.0)).unwrap();
        assert!(8.0 * 1000.0 * s <= 65504.0 / 2.0 && 8.0 * 1000.0 * s * 2.0 > 65504.0 / 2.0);
        assert_eq!(s.to_bits() & 0x007F_FFFF, 0);
        assert_eq!(cast_prescale::<f16>(4, None).unwrap(), 0.25);
        assert_eq!(cast_prescale::<bf16>(4, Some(0.0)).unwrap(), 1.0);
        assert!(cast_prescale::<f16>(0, None).is_err());
        assert!(cast_prescale::<f16>(2, Some(f32::NAN)).is_err());
        // Tiny gradients are lifted out of fp16's subnormal range.
        assert!(cast_prescale::<f16>(2, Some(1e-6)).unwrap() > 1e6);
    }

    #[test]
    fn fixed_prescale_saturates_instead_of_overflowing() {
        let mut y = [f16::ZERO; 2];
        cast_encode(&[1e9, -1e9], 0.5, &mut y).unwrap();
        assert_eq!(y[0].to_f32(), 65504.0);
        assert_eq!(y[1].to_f32(), -65504.0);
    }
}
