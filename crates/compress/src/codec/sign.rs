//! 1-bit compression: the sign of each element and one scale per block, the block's mean
//! |x|. Decoding gives ±scale. It is biased and diverges without error feedback, so the
//! only public encoder, [`SignCodec::encode`], takes an [`ErrorFeedback`] and a key and
//! runs the compensation and residual update itself.
//!
//! # Frame
//! [`FrameHeader`] (param = block), nb = ceil(n/block) little-endian f32 scales, then
//! ceil(n/8) bytes of sign bits: element i is bit i%8 of byte i/8, 1 for negative (the
//! float sign bit, so −0.0 decodes as −scale).

use super::feedback::ErrorFeedback;
use super::frame::{self, FrameHeader};
use super::quant::{abs_sum, encode_blocked, read_scales, store};
use super::spec::check_block;
use super::{expect_kind, CodecKind, CodecSpec, Result, FRAME_HEADER_BYTES};

/// The 1-bit codec. Build it with [`SignCodec::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct SignCodec {
    block: usize,
}

impl SignCodec {
    /// A 1-bit codec for a `1bit` spec (validated).
    pub fn new(spec: &CodecSpec) -> Result<SignCodec> {
        expect_kind(spec, &[CodecKind::OneBit], "SignCodec serves 1bit only")?;
        Ok(SignCodec {
            block: check_block("1bit", spec.block)?,
        })
    }

    fn header(&self, n: usize) -> FrameHeader {
        FrameHeader {
            kind: CodecKind::OneBit,
            param: self.block as u32,
            n: n as u64,
        }
    }

    /// Exact frame length for `n` elements.
    pub fn wire_bytes(&self, n: usize) -> usize {
        FRAME_HEADER_BYTES + 4 * n.div_ceil(self.block) + n.div_ceil(8)
    }

    /// Encodes `grad` plus the decayed residual of `key` into `out`, and sets the residual
    /// to what the frame does not carry. Fails on NaN or infinite input (residual kept).
    pub fn encode(
        &self,
        ef: &mut ErrorFeedback,
        key: u64,
        grad: &[f32],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let n = grad.len();
        let code = |xb: &[f32], _max: f32, out: &mut Vec<u8>| {
            let eights = xb.chunks_exact(8);
            let rest = eights.remainder();
            out.extend(eights.map(pack_signs));
            if !rest.is_empty() {
                out.push(pack_signs(rest));
            }
            abs_sum(xb) / xb.len() as f32
        };
        let (header, total) = (self.header(n), self.wire_bytes(n));
        let feedback = Some((ef, key));
        encode_blocked(
            "1bit",
            grad,
            self.block,
            &header,
            total,
            out,
            feedback,
            code,
            decode_signs::<false>,
        )
    }

    /// Decodes `frame` and adds it to `acc` (`acc.len()` is the expected n).
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
        let (scale_bytes, bits) = payload.split_at(4 * nb);
        let scales = read_scales("1bit", scale_bytes, nb)?;
        for ((ob, bb), s) in out
            .chunks_mut(self.block)
            .zip(bits.chunks(self.block / 8))
            .zip(scales)
        {
            decode_signs::<ACC>(s, bb, ob);
        }
        Ok(())
    }
}

/// Writes ±`s` into `ob` from the sign bits `bb` (bit j of byte i for element 8i + j).
#[inline]
fn decode_signs<const ACC: bool>(s: f32, bb: &[u8], ob: &mut [f32]) {
    let sbits = s.to_bits();
    let mut eights = ob.chunks_exact_mut(8);
    for (o8, &byte) in (&mut eights).zip(bb) {
        for (j, o) in o8.iter_mut().enumerate() {
            store::<ACC>(o, f32::from_bits(sbits | ((byte as u32 >> j) & 1) << 31));
        }
    }
    let rest = eights.into_remainder();
    if let (false, Some(&byte)) = (rest.is_empty(), bb.last()) {
        for (j, o) in rest.iter_mut().enumerate() {
            store::<ACC>(o, f32::from_bits(sbits | ((byte as u32 >> j) & 1) << 31));
        }
    }
}

/// The sign bits of up to 8 values, value j in bit j.
#[inline(always)]
fn pack_signs(c: &[f32]) -> u8 {
    c.iter()
        .enumerate()
        .fold(0u32, |a, (j, v)| a | (v.to_bits() >> 31) << j) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_signs_times_block_mean() {
        let c = SignCodec::new(&"1bit:8".parse().unwrap()).unwrap();
        let mut ef = ErrorFeedback::new(1.0, 4).unwrap();
        let x = [1.0, -3.0, 2.0, -2.0, 0.5, 0.5, -0.5, 0.5, 4.0, -4.0];
        let mut f = Vec::new();
        c.encode(&mut ef, 0, &x, &mut f).unwrap();
        assert_eq!(f.len(), c.wire_bytes(x.len()));
        let mut y = [0.0; 10];
        c.decode_into(&f, &mut y).unwrap();
        assert_eq!(
            y,
            [1.25, -1.25, 1.25, -1.25, 1.25, 1.25, -1.25, 1.25, 4.0, -4.0]
        );
        let r = ef.residual(0).unwrap();
        for i in 0..10 {
            assert_eq!(r[i], x[i] - y[i]);
        }
    }
}
