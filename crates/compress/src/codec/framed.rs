//! One entry point for the non-linear (byte-frame) codecs: int8, int4, 1-bit, top-k.
//! The integration builds a [`FrameCodec`] from a spec and calls `encode` / `decode_add`
//! without matching on the kind. Error feedback is optional, except for 1-bit where its
//! absence is an error.

use super::{BlockQuant, CodecError, CodecKind, CodecSpec, ErrorFeedback, Result, SignCodec, TopK};

/// A non-linear codec.
#[derive(Debug, Clone, PartialEq)]
pub enum FrameCodec {
    /// int8 or int4.
    Quant(BlockQuant),
    /// 1-bit.
    Sign(SignCodec),
    /// top-k.
    TopK(TopK),
}

impl FrameCodec {
    /// The codec for a non-linear spec; a linear spec is refused (use its projection).
    pub fn new(spec: &CodecSpec) -> Result<FrameCodec> {
        match spec.kind {
            CodecKind::Int8 | CodecKind::Int4 => Ok(FrameCodec::Quant(BlockQuant::new(spec)?)),
            CodecKind::OneBit => Ok(FrameCodec::Sign(SignCodec::new(spec)?)),
            CodecKind::TopK => Ok(FrameCodec::TopK(TopK::new(spec)?)),
            other => Err(CodecError::BadParam {
                codec: other.name(),
                param: "kind",
                value: other.name().to_string(),
                expected: "frames serve the non-linear codecs int8, int4, 1bit, topk; \
                           linear codecs are all-reduced as numeric vectors",
            }),
        }
    }

    /// Exact frame length for `n` elements.
    pub fn wire_bytes(&self, n: usize) -> usize {
        match self {
            FrameCodec::Quant(c) => c.wire_bytes(n),
            FrameCodec::Sign(c) => c.wire_bytes(n),
            FrameCodec::TopK(c) => c.wire_bytes(n),
        }
    }

    /// Encodes `x` into `out`. With `feedback = Some((ef, key))` the decayed residual of
    /// `key` is added first and updated after; 1-bit without feedback is an error.
    /// `stream` feeds stochastic rounding (ignored by the others).
    pub fn encode(
        &mut self,
        x: &[f32],
        stream: u64,
        feedback: Option<(&mut ErrorFeedback, u64)>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match (self, feedback) {
            (FrameCodec::Sign(c), Some((ef, key))) => c.encode(ef, key, x, out),
            (FrameCodec::Sign(_), None) => Err(CodecError::BadParam {
                codec: "1bit",
                param: "feedback",
                value: "None".to_string(),
                expected: "1-bit diverges without error feedback: pass Some((feedback, key))",
            }),
            (FrameCodec::Quant(c), None) => c.encode(x, stream, out),
            (FrameCodec::Quant(c), Some((ef, key))) => {
                c.encode_with_feedback(ef, key, x, stream, out)
            }
            (FrameCodec::TopK(c), None) => c.encode(x, out),
            (this, Some((ef, key))) => ef.step(key, x, |comp, decoded| {
                this.encode(comp, stream, None, out)?;
                this.decode_into(out, decoded)
            }),
        }
    }

    /// Decodes `frame` and adds it to `acc` (`acc.len()` is the expected n).
    pub fn decode_add(&self, frame: &[u8], acc: &mut [f32]) -> Result<()> {
        match self {
            FrameCodec::Quant(c) => c.decode_add(frame, acc),
            FrameCodec::Sign(c) => c.decode_add(frame, acc),
            FrameCodec::TopK(c) => c.decode_add(frame, acc),
        }
    }

    /// Decodes `frame` into `out` (overwritten).
    pub fn decode_into(&self, frame: &[u8], out: &mut [f32]) -> Result<()> {
        match self {
            FrameCodec::Quant(c) => c.decode_into(frame, out),
            FrameCodec::Sign(c) => c.decode_into(frame, out),
            FrameCodec::TopK(c) => c.decode_into(frame, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bit_without_feedback_is_an_error_and_linear_specs_are_refused() {
        let mut c = FrameCodec::new(&"1bit".parse().unwrap()).unwrap();
        let e = c
            .encode(&[1.0], 0, None, &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("error feedback"), "{e}");
        let mut ef = ErrorFeedback::with_defaults();
        assert!(c
            .encode(&[1.0], 0, Some((&mut ef, 3)), &mut Vec::new())
            .is_ok());
        assert!(FrameCodec::new(&"rp".parse().unwrap()).is_err());
    }
}
