//! Sparsifiers: top-k (non-linear; values with their u32 indices in a frame) and random-k
//! (linear; indices drawn from a seed shared by all ranks, so only values travel).
//!
//! k = ceil(ratio·n) clamped to 1..=n. Both refuse n > u32::MAX.
//!
//! # Top-k
//! Keeps the k elements of largest |x| (ties broken by lower index) in increasing index
//! order. Selection: a 2048-bucket histogram of the |x| bit patterns finds the bucket of
//! the k-th largest, quickselect over that bucket's elements (copied to a reusable
//! scratch) finds the threshold, one collecting scan follows. Biased: use error
//! feedback. Frame: [`FrameHeader`] (param = k), k u32 indices (strictly increasing), k
//! f32 values, little-endian. Decoding checks order, range and finiteness before touching
//! the output.
//!
//! # Random-k
//! Indices: a uniform k-subset of 0..n by Floyd's algorithm on a bitmap (O(k) draws, n/64
//! words), from (seed, stream); every rank must pass the same stream (the step). The
//! bounded draw `floor(u64 · (j+1) / 2^64)` has a bias below (j+1)/2^64, ignored.
//! Encode gathers `y_j = x[idx_j]`; decode scatters `x̂[idx_j] = (n/k)·y_j` and zeros
//! elsewhere, so E[x̂] = x: this estimator is **unbiased** (scaled by n/k at decode, the
//! wire carries unscaled values). It must not be paired with error feedback.

use rand_xoshiro::rand_core::RngCore;

use super::frame::{self, FrameHeader};
use super::quant::get_f32;
use super::spec::check_ratio;
use super::FRAME_HEADER_BYTES;
use super::{
    check_len, expect_kind, rng_for, scaled_count, CodecError, CodecKind, CodecSpec, Result,
};

fn check_u32_len(codec: &'static str, n: usize) -> Result<()> {
    if n as u64 <= u32::MAX as u64 {
        Ok(())
    } else {
        Err(CodecError::BadParam {
            codec,
            param: "n",
            value: n.to_string(),
            expected: "u32 indices address at most 4294967295 elements; split the bucket",
        })
    }
}

/// |x| as its IEEE bit pattern (monotone in |x| for non-NaN values).
#[inline(always)]
fn abs_bits(v: f32) -> u32 {
    v.to_bits() & 0x7FFF_FFFF
}

/// Calls `f(i, x[i])`, in index order, for every element with `lo ≤ |x| bits ≤ hi`.
/// Chunks of 32 without a hit are skipped by a branch-free (vectorised) test, so a sparse
/// selection costs little more than one streaming read.
#[inline]
fn for_each_in_range(x: &[f32], lo: u32, hi: u32, mut f: impl FnMut(usize, f32)) {
    const CHUNK: usize = 32;
    let hit = |v: &f32| {
        let b = abs_bits(*v);
        b >= lo && b <= hi
    };
    for (c, chunk) in x.chunks(CHUNK).enumerate() {
        if chunk.iter().fold(false, |a, v| a | hit(v)) {
            for (j, v) in chunk.iter().enumerate() {
                if hit(v) {
                    f(c * CHUNK + j, *v);
                }
            }
        }
    }
}

/// Histogram buckets of the threshold search: bits 30..20 of |x|.
const BUCKET_SHIFT: u32 = 20;
const BUCKETS: usize = 1 << (31 - BUCKET_SHIFT);

/// Top-k sparsifier with a reusable selection scratch.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    ratio: f64,
    scratch: Vec<u32>,
}

impl TopK {
    /// A top-k codec for a `topk` spec (validated).
    pub fn new(spec: &CodecSpec) -> Result<TopK> {
        expect_kind(spec, &[CodecKind::TopK], "TopK serves topk only")?;
        Ok(TopK {
            ratio: check_ratio("topk", spec.ratio)?,
            scratch: Vec::new(),
        })
    }

    /// Kept count for `n` elements.
    pub fn k(&self, n: usize) -> usize {
        scaled_count(self.ratio, n)
    }

    fn header(&self, n: usize) -> FrameHeader {
        FrameHeader {
            kind: CodecKind::TopK,
            param: self.k(n) as u32,
            n: n as u64,
        }
    }

    /// Exact frame length for `n` elements.
    pub fn wire_bytes(&self, n: usize) -> usize {
        FRAME_HEADER_BYTES + 8 * self.k(n)
    }

    /// Encodes the k largest |x| of `x` into `out` (cleared first). Fails on NaN or
    /// infinite input and on more than u32::MAX elements.
    pub fn encode(&mut self, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
        let n = x.len();
        check_u32_len("topk", n)?;
        let k = self.k(n);
        let total = self.wire_bytes(n);
        frame::start(out, &self.header(n), total);
        out.resize(total, 0);
        if k == 0 {
            return Ok(());
        }
        let (t, greater) = self.threshold(x, k)?;
        let mut ties = k.saturating_sub(greater);
        let (idx, vals) = out[FRAME_HEADER_BYTES..].split_at_mut(4 * k);
        let mut slots = idx.chunks_exact_mut(4).zip(vals.chunks_exact_mut(4));
        for_each_in_range(x, t, u32::MAX, |i, v| {
            let b = abs_bits(v);
            if b > t || ties > 0 {
                ties -= usize::from(b == t);
                if let Some((io, vo)) = slots.next() {
                    io.copy_from_slice(&(i as u32).to_le_bytes());
                    vo.copy_from_slice(&v.to_le_bytes());
                }
            }
        });
        Ok(())
    }

    /// The |x| bit pattern t of the k-th largest element (1 ≤ k ≤ n) and the count of
    /// elements above t: a histogram of the top
    /// 11 bits (sign excluded: exponent and 3 mantissa bits) finds the bucket holding it,
    /// quickselect finds it among that bucket's elements only.
    fn threshold(&mut self, x: &[f32], k: usize) -> Result<(u32, usize)> {
        // Four interleaved sub-histograms: runs of equal buckets (typical of gradients)
        // would otherwise serialise on one counter. u32 counts suffice (n ≤ u32::MAX).
        let mut sub = [[0u32; 4]; BUCKETS];
        let mut quads = x.chunks_exact(4);
        for q in &mut quads {
            for (lane, v) in q.iter().enumerate() {
                sub[(abs_bits(*v) >> BUCKET_SHIFT) as usize][lane] += 1;
            }
        }
        for v in quads.remainder() {
            sub[(abs_bits(*v) >> BUCKET_SHIFT) as usize][0] += 1;
        }
        let count = |h: &[u32; 4]| h.iter().map(|&c| c as usize).sum::<usize>();
        // Infinity and NaN patterns are the top buckets.
        if sub[(0x7F80_0000 >> BUCKET_SHIFT) as usize..]
            .iter()
            .any(|h| count(h) > 0)
        {
            let index = x.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(CodecError::NonFinite {
                codec: "topk",
                index,
            });
        }
        // Walk down from the largest bucket until it holds the k-th largest element.
        let mut above = 0usize;
        let mut bucket = 0u32;
        for (h, counts) in sub.iter().enumerate().rev() {
            let count = count(counts);
            if above + count >= k {
                bucket = h as u32;
                break;
            }
            above += count;
        }
        self.scratch.clear();
        let lo = bucket << BUCKET_SHIFT;
        let hi = lo | ((1 << BUCKET_SHIFT) - 1);
        let scratch = &mut self.scratch;
        for_each_in_range(x, lo, hi, |_, v| scratch.push(abs_bits(v)));
        // The (k − above)-th largest of the bucket, i.e. ascending position len − (k − above).
        let pos = self.scratch.len().saturating_sub(k - above);
        if pos >= self.scratch.len() {
            return Err(CodecError::Corrupt(
                "topk selection found an empty bucket".into(),
            ));
        }
        let t = *self.scratch.select_nth_unstable(pos).1;
        Ok((t, above + self.scratch.iter().filter(|&&b| b > t).count()))
    }

    /// Decodes `frame` and adds it to `acc` (`acc.len()` is the expected n).
    pub fn decode_add(&self, frame: &[u8], acc: &mut [f32]) -> Result<()> {
        self.decode::<true>(frame, acc)
    }

    /// Decodes `frame` into `out` (zeros except the k kept elements).
    pub fn decode_into(&self, frame: &[u8], out: &mut [f32]) -> Result<()> {
        self.decode::<false>(frame, out)
    }

    fn decode<const ACC: bool>(&self, frame: &[u8], out: &mut [f32]) -> Result<()> {
        let n = out.len();
        let k = self.k(n);
        let payload = frame::open(frame, &self.header(n), self.wire_bytes(n))?;
        let (idx, vals) = payload.split_at(4 * k);
        let index = |j: usize| {
            u32::from_le_bytes([idx[4 * j], idx[4 * j + 1], idx[4 * j + 2], idx[4 * j + 3]])
                as usize
        };
        let mut next = 0usize;
        for j in 0..k {
            let (i, v) = (index(j), get_f32(vals, j));
            if i < next || i >= n || !v.is_finite() {
                return Err(CodecError::Corrupt(format!(
                    "topk frame entry {j}: index {i} (must increase and stay below n = {n}), \
                     value {v} (must be finite)"
                )));
            }
            next = i + 1;
        }
        if !ACC {
            out.fill(0.0);
        }
        for j in 0..k {
            if let Some(o) = out.get_mut(index(j)) {
                *o += get_f32(vals, j);
            }
        }
        Ok(())
    }
}

/// Random-k sparsifier; caches the indices of the last (n, stream).
#[derive(Debug, Clone, PartialEq)]
pub struct RandomK {
    ratio: f64,
    seed: u64,
    bitmap: Vec<u64>,
    indices: Vec<u32>,
    cached: Option<(usize, u64)>,
}

impl RandomK {
    /// A random-k codec for a `randk` spec (validated).
    pub fn new(spec: &CodecSpec) -> Result<RandomK> {
        expect_kind(spec, &[CodecKind::RandomK], "RandomK serves randk only")?;
        Ok(RandomK {
            ratio: check_ratio("randk", spec.ratio)?,
            seed: spec.seed,
            bitmap: Vec::new(),
            indices: Vec::new(),
            cached: None,
        })
    }

    /// Kept count (length of the value vector) for `n` elements.
    pub fn k(&self, n: usize) -> usize {
        scaled_count(self.ratio, n)
    }

    /// The k sorted distinct indices for (`n`, `stream`), identical on every rank.
    pub fn indices(&mut self, n: usize, stream: u64) -> Result<&[u32]> {
        check_u32_len("randk", n)?;
        if self.cached != Some((n, stream)) {
            let k = self.k(n);
            self.bitmap.clear();
            self.bitmap.resize(n.div_ceil(64), 0);
            let mut rng = rng_for(self.seed, stream);
            for j in (n - k)..n {
                let t = ((rng.next_u64() as u128 * (j as u128 + 1)) >> 64) as usize;
                let (w, b) = (t / 64, t % 64);
                let pick = if self.bitmap[w] >> b & 1 == 1 { j } else { t };
                self.bitmap[pick / 64] |= 1 << (pick % 64);
            }
            self.indices.clear();
            for (w, &word) in self.bitmap.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    self.indices.push((w * 64) as u32 + bits.trailing_zeros());
                    bits &= bits - 1;
                }
            }
            self.cached = Some((n, stream));
        }
        Ok(&self.indices)
    }

    /// Gathers `y[j] = x[idx_j]` (`y.len()` = k). Sums of `y` over ranks are the
    /// encoding of the summed gradient.
    pub fn project(&mut self, x: &[f32], stream: u64, y: &mut [f32]) -> Result<()> {
        check_len("randk", "y", y.len(), self.k(x.len()))?;
        let idx = self.indices(x.len(), stream)?;
        for (o, &i) in y.iter_mut().zip(idx) {
            *o = x.get(i as usize).copied().unwrap_or(0.0);
        }
        Ok(())
    }

    /// Writes the unbiased estimate `out[idx_j] = (n/k)·y[j]`, zero elsewhere
    /// (`out.len()` = n).
    pub fn unproject(&mut self, y: &[f32], stream: u64, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        check_len("randk", "y", y.len(), self.k(n))?;
        let scale = if y.is_empty() {
            0.0
        } else {
            (n as f64 / y.len() as f64) as f32
        };
        let idx = self.indices(n, stream)?;
        out.fill(0.0);
        for (&v, &i) in y.iter().zip(idx) {
            if let Some(o) = out.get_mut(i as usize) {
                *o = v * scale;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_largest_with_ties_by_index() {
        let mut c = TopK::new(&"topk:0.3".parse().unwrap()).unwrap();
        let x = [0.5, -3.0, 1.0, 3.0, -1.0, 0.0, 1.0, 0.2, 2.0, -1.0];
        let mut f = Vec::new();
        c.encode(&x, &mut f).unwrap();
        assert_eq!(f.len(), c.wire_bytes(10));
        let mut y = [9.0; 10];
        c.decode_into(&f, &mut y).unwrap();
        assert_eq!(y, [0.0, -3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
        let mut c = TopK::new(&"topk:0.2".parse().unwrap()).unwrap();
        c.encode(&[1.0, -1.0, 1.0, 0.0, 1.0], &mut f).unwrap();
        let mut y = [0.0; 5];
        c.decode_into(&f, &mut y).unwrap();
        assert_eq!(y, [1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn randk_indices_are_k_distinct_sorted_and_shared() {
        let spec: CodecSpec = "randk:0.1".parse().unwrap();
        let mut a = RandomK::new(&spec).unwrap();
        let mut b = RandomK::new(&spec).unwrap();
        let ia = a.indices(1000, 5).unwrap().to_vec();
        assert_eq!(ia.len(), 100);
        assert!(ia.windows(2).all(|w| w[0] < w[1]) && ia[99] < 1000);
        assert_eq!(ia, b.indices(1000, 5).unwrap());
        assert_ne!(ia, b.indices(1000, 6).unwrap());
    }
}
