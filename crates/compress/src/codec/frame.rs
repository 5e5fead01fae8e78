//! The self-describing header of the byte frames of non-linear codecs (int8, int4, 1-bit,
//! top-k), so that a frame from a peer with another codec, size or parameter is refused
//! with an error naming both, never decoded into garbage.
//!
//! Layout (16 bytes, little-endian): `b"TZ"` magic, version `1` (u8), codec id (u8, from
//! [`crate::codec::CODEC_TABLE`]), parameter (u32: block size, or k for top-k), element
//! count n (u64). The payload follows; its length is fixed by the header, and a frame whose
//! length differs is refused.

use super::{CodecError, CodecKind, Result};

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
const MAGIC: [u8; 2] = *b"TZ";
const VERSION: u8 = 1;

/// A decoded (or to-be-written) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Codec that made the frame.
    pub kind: CodecKind,
    /// Block size (int8, int4, 1-bit) or k (top-k).
    pub param: u32,
    /// Elements of the encoded vector.
    pub n: u64,
}

impl FrameHeader {
    /// Appends the 16 header bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.kind.info().id);
        out.extend_from_slice(&self.param.to_le_bytes());
        out.extend_from_slice(&self.n.to_le_bytes());
    }

    /// Parses the header at the start of `frame`; refuses short frames, a wrong magic or
    /// version and unknown codec ids.
    pub fn read(frame: &[u8]) -> Result<FrameHeader> {
        let Some(h) = frame.get(..FRAME_HEADER_BYTES) else {
            return Err(CodecError::Corrupt(format!(
                "{} bytes is shorter than the {FRAME_HEADER_BYTES}-byte header",
                frame.len()
            )));
        };
        if h[..2] != MAGIC {
            return Err(CodecError::Corrupt(format!(
                "magic bytes {:02x}{:02x} are not a codec frame (expected 545a, \"TZ\")",
                h[0], h[1]
            )));
        }
        if h[2] != VERSION {
            return Err(CodecError::Corrupt(format!(
                "frame version {} is not supported (this build reads version {VERSION}); \
                 run the same topoccl version on every rank",
                h[2]
            )));
        }
        let kind = CodecKind::from_id(h[3])
            .ok_or_else(|| CodecError::Corrupt(format!("unknown codec id {}", h[3])))?;
        let param = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut n = [0u8; 8];
        n.copy_from_slice(&h[8..16]);
        Ok(FrameHeader {
            kind,
            param,
            n: u64::from_le_bytes(n),
        })
    }

    /// Human-readable description for mismatch errors, e.g. `int8 (block 256), n = 1000`.
    pub fn describe(&self) -> String {
        let param = match self.kind {
            CodecKind::TopK => format!(" (k {})", self.param),
            CodecKind::Int8 | CodecKind::Int4 | CodecKind::OneBit => {
                format!(" (block {})", self.param)
            }
            _ => String::new(),
        };
        format!("{}{param}, n = {}", self.kind.name(), self.n)
    }
}

/// Checks that `frame` carries exactly `expected` and is `expected_len` bytes long; returns
/// the payload after the header.
pub(crate) fn open<'a>(
    frame: &'a [u8],
    expected: &FrameHeader,
    expected_len: usize,
) -> Result<&'a [u8]> {
    let found = FrameHeader::read(frame)?;
    if found != *expected {
        return Err(CodecError::FrameMismatch {
            found: found.describe(),
            expected: expected.describe(),
        });
    }
    if frame.len() != expected_len {
        return Err(CodecError::Corrupt(format!(
            "{} frame is {} bytes, expected {expected_len}",
            expected.describe(),
            frame.len()
        )));
    }
    Ok(&frame[FRAME_HEADER_BYTES..])
}

/// Starts a frame: clears `out`, reserves `total` bytes and writes the header.
pub(crate) fn start(out: &mut Vec<u8>, header: &FrameHeader, total: usize) {
    out.clear();
    out.reserve(total);
    header.write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_mismatch_names_both() {
        let h = FrameHeader {
            kind: CodecKind::Int8,
            param: 256,
            n: 1000,
        };
        let mut v = Vec::new();
        h.write(&mut v);
        assert_eq!(v.len(), FRAME_HEADER_BYTES);
        assert_eq!(FrameHeader::read(&v).unwrap(), h);
        let other = FrameHeader {
            kind: CodecKind::Int4,
            param: 256,
            n: 1000,
        };
        let e = open(&v, &other, 16).unwrap_err().to_string();
        assert!(
            e.contains("int8 (block 256)") && e.contains("int4 (block 256)"),
            "{e}"
        );
        let e = open(&v, &h, 20).unwrap_err().to_string();
        assert!(e.contains("expected 20"), "{e}");
        assert!(FrameHeader::read(&v[..5]).is_err());
        v[0] = b'X';
        assert!(FrameHeader::read(&v).is_err());
    }
}
