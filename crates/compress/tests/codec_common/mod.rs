//! Shared helpers of the codec integration tests.
#![allow(dead_code)]

use topoccl_compress::codec::CodecSpec;

/// Parses a spec string that the test knows to be valid.
pub fn spec(s: &str) -> CodecSpec {
    s.parse().unwrap_or_else(|e| panic!("test spec {s}: {e}"))
}

/// A deterministic pseudo-random vector in [-scale, scale) (no dependence on the codecs'
/// own generators).
pub fn vector(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// max |a_i − b_i|.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Euclidean norm.
pub fn norm(a: &[f32]) -> f32 {
    a.iter().map(|v| v * v).sum::<f32>().sqrt()
}
