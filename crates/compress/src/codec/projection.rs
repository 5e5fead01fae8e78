//! Random projection `y = Φx` by a count sketch, decode `x̂ = Φᵀy`.
//!
//! Φ is m×n with m = ceil(ratio·n) (clamped to 1..=n) and exactly one non-zero per
//! column: Φ[h(i), i] = s(i) with bucket h(i) uniform in 0..m and sign s(i) = ±1, both from
//! a stateless hash of (seed, stream, i). Φ is never stored: project and unproject hash
//! each index on the fly, O(n) time and O(1) extra memory.
//!
//! # Estimator
//! x̂_i = s(i)·y[h(i)] = x_i + Σ_{j≠i, h(j)=h(i)} s(i)s(j)x_j. The signs are independent
//! with mean zero, so E[x̂] = x (unbiased), with variance per element about ‖x‖²/m.
//! Linear: the sum over ranks of the sketches is the sketch of the summed gradient, so
//! `y` is all-reduced as f32 and decoded once. Every rank must use the same seed and
//! stream (the step) so that Φ agrees.
//!
//! Hash: SplitMix64 finaliser of (key + i), key = mix(seed, stream); bucket by the high
//! bits (`(z · m) >> 64`), sign by the lowest bit.

use super::spec::check_ratio;
use super::{check_len, expect_kind, mix64, scaled_count, CodecKind, CodecSpec, Result};

/// Count-sketch random projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CountSketch {
    ratio: f64,
    seed: u64,
}

impl CountSketch {
    /// A projection for an `rp` spec (validated).
    pub fn new(spec: &CodecSpec) -> Result<CountSketch> {
        expect_kind(
            spec,
            &[CodecKind::RandomProjection],
            "CountSketch serves rp only",
        )?;
        Ok(CountSketch {
            ratio: check_ratio("rp", spec.ratio)?,
            seed: spec.seed,
        })
    }

    /// Sketch length m for `n` elements.
    pub fn out_len(&self, n: usize) -> usize {
        scaled_count(self.ratio, n)
    }

    fn key(&self, stream: u64) -> u64 {
        mix64(self.seed ^ mix64(stream))
    }

    /// Writes `y = Φx` (`y.len()` = [`CountSketch::out_len`] of `x.len()`).
    pub fn project(&self, x: &[f32], stream: u64, y: &mut [f32]) -> Result<()> {
        let m = self.out_len(x.len());
        check_len("rp", "y", y.len(), m)?;
        y.fill(0.0);
        let key = self.key(stream);
        for (i, &v) in x.iter().enumerate() {
            let (b, sign) = bucket(key, i as u64, m);
            if let Some(o) = y.get_mut(b) {
                *o += f32::from_bits(v.to_bits() ^ sign);
            }
        }
        Ok(())
    }

    /// Writes the unbiased estimate `out = Φᵀy` (`out.len()` = n).
    pub fn unproject(&self, y: &[f32], stream: u64, out: &mut [f32]) -> Result<()> {
        let m = self.out_len(out.len());
        check_len("rp", "y", y.len(), m)?;
        let key = self.key(stream);
        for (i, o) in out.iter_mut().enumerate() {
            let (b, sign) = bucket(key, i as u64, m);
            let v = y.get(b).copied().unwrap_or(0.0);
            *o = f32::from_bits(v.to_bits() ^ sign);
        }
        Ok(())
    }
}

/// Bucket in 0..m and sign mask (0 or the f32 sign bit) of element `i`.
#[inline(always)]
fn bucket(key: u64, i: u64, m: usize) -> (usize, u32) {
    let z = mix64(key.wrapping_add(i));
    (
        ((z as u128 * m as u128) >> 64) as usize,
        ((z & 1) as u32) << 31,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_transpose_phi_has_unit_diagonal() {
        // A one-hot input comes back exactly at its own position.
        let c = CountSketch::new(&"rp:0.1".parse().unwrap()).unwrap();
        let mut x = vec![0.0; 100];
        x[37] = 2.5;
        let mut y = vec![0.0; c.out_len(100)];
        c.project(&x, 3, &mut y).unwrap();
        assert_eq!(y.iter().filter(|v| **v != 0.0).count(), 1);
        let mut back = vec![0.0; 100];
        c.unproject(&y, 3, &mut back).unwrap();
        assert_eq!(back[37], 2.5);
    }
}
