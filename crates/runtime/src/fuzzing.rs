//! Entry points for the fuzz targets in `fuzz/`: every decoder of bytes that another
//! process sends, each behind one function taking arbitrary bytes. They must never panic
//! on any input; where a decoder accepts bytes, the entry also checks that encoding what
//! it decoded gives the same value back (a decoder that accepts what no encoder writes
//! would be a second, unreviewed protocol).
//!
//! | entry                  | bytes from                                   | decoders                                      |
//! |------------------------|----------------------------------------------|-----------------------------------------------|
//! | [`wire`]               | a peer's TCP or shared-memory connection     | hello, ack head, frame header, abort notice    |
//! | [`store_protocol`]     | a store client (server side) or the store    | requests, replies, frame length, greeting, hello |
//! | [`etcd_replies`]       | an etcd server (or whatever answers there)   | HTTP responses, the JSON replies              |
//! | [`heartbeat`]          | a peer's heartbeat connection                | beats (the MAC is checked after decoding)     |
//! | [`endpoint`]           | another rank's value in the store            | the published endpoint (JSON or `IP:PORT`)     |
//! | [`replan_records`]     | every rank, through an all-gather            | the re-plan exchange's records                 |
//! | [`compressed_frames`]  | every rank, through an all-gather            | int8 / int4 / 1-bit / top-k frames             |
//! | [`metrics_expositions`]| the ranks' `/metrics` pages, read by the launcher | merging expositions, the 0.0.4 text form  |
//!
//! The unit tests below run each entry on a few inputs, so the entries stay compiled and
//! correct without the fuzzing toolchain; `fuzz/` holds the targets and their corpus.

use topoccl_compress::codec::{CodecKind, CodecSpec, FrameCodec};

use crate::wire::{self, AbortNotice, Header, Hello, ACK_FIXED_LEN, HEADER_LEN, HELLO_LEN};

/// The first `N` bytes, zero-padded.
fn prefix<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (x, b) in a.iter_mut().zip(bytes) {
        *x = *b;
    }
    a
}

/// A peer connection's decoders: the hello and ack a connection opens with, a frame's
/// header, an abort notice's payload.
pub fn wire(data: &[u8]) {
    if let Ok(h) = Hello::decode(&prefix::<HELLO_LEN>(data)) {
        assert_eq!(
            Hello::decode(&h.encode()),
            Ok(h.clone()),
            "hello re-encodes"
        );
    }
    let _ = wire::decode_ack_head(&prefix::<ACK_FIXED_LEN>(data));
    // The header as sent (any bytes), and with a valid magic and version so that the
    // decoder's later fields are reached too.
    let mut header = prefix::<HEADER_LEN>(data);
    for h in [header, {
        header[..4].copy_from_slice(&wire::FRAME_MAGIC.to_le_bytes());
        header[4] = wire::VERSION;
        header
    }] {
        if let Ok(x) = Header::decode(&h) {
            assert_eq!(Header::decode(&x.encode()), Ok(x), "header re-encodes");
        }
    }
    if let Ok(n) = AbortNotice::decode(data) {
        assert_eq!(AbortNotice::decode(&n.encode()), Ok(n.clipped()));
    }
}

/// The TCP store's protocol, both directions.
pub fn store_protocol(data: &[u8]) {
    crate::store::take_any_bytes(data);
}

/// What the etcd store reads from its server.
pub fn etcd_replies(data: &[u8]) {
    crate::store::take_any_etcd_bytes(data);
}

/// A heartbeat stream: beats one after another until the bytes run out or one is
/// refused. A beat that decodes encodes back to the same bytes (its MAC aside) and never
/// claims more bytes than there are.
pub fn heartbeat(data: &[u8]) {
    let key = crate::auth::JobKey::from_secret(b"fuzz");
    let mut rest = data;
    while let Ok(Some((b, used))) = crate::beat::decode(rest) {
        assert!(used > 0 && used <= rest.len() && used <= crate::beat::MAX_BEAT);
        let again = crate::beat::encode(&b, &key, &[0; crate::auth::NONCE_LEN]);
        let mac = crate::auth::MAC_LEN;
        assert_eq!(
            again[..again.len() - mac],
            rest[..used - mac],
            "{b:?} re-encodes"
        );
        let _ = crate::beat::verify(&rest[..used], &key, &[0; crate::auth::NONCE_LEN]);
        rest = &rest[used..];
    }
}

/// A rank's endpoint record as read from the store.
pub fn endpoint(data: &[u8]) {
    let _ = crate::create::parse_endpoint(data);
}

/// The re-plan exchange: the first byte picks the world size (1–64), the rest are the
/// gathered records as little-endian `f64`s.
pub fn replan_records(data: &[u8]) {
    let Some((&w, rest)) = data.split_first() else {
        return;
    };
    let world = u32::from(w % 64) + 1;
    let all: Vec<f64> = rest
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(prefix(c)))
        .collect();
    if let Ok((asked, seen)) = crate::replan::decode(&all, world) {
        assert!(asked.iter().all(|&r| r < world));
        assert!(seen
            .iter()
            .all(|o| o.src < world && o.dst < world && o.ratio > 0.0));
    }
}

/// A compressed all-reduce's frames: the first byte picks the codec (int8, int4, 1-bit,
/// top-k) and its block, the next two the element count (up to 65,535); the rest is the
/// frame. Decoding never writes past the output, whatever the frame says.
pub fn compressed_frames(data: &[u8]) {
    let [pick, n0, n1] = prefix::<3>(data);
    let frame = data.get(3..).unwrap_or_default();
    let n = usize::from(u16::from_le_bytes([n0, n1]));
    let kind = match pick % 4 {
        0 => CodecKind::Int8,
        1 => CodecKind::Int4,
        2 => CodecKind::OneBit,
        _ => CodecKind::TopK,
    };
    let spec = CodecSpec {
        block: 8 << (pick / 4 % 8),
        ..CodecSpec::new(kind)
    };
    let Ok(codec) = FrameCodec::new(&spec) else {
        return;
    };
    let mut out = vec![0f32; n];
    if codec.decode_into(frame, &mut out).is_ok() {
        assert_eq!(
            frame.len(),
            codec.wire_bytes(n),
            "accepted a frame of another length"
        );
    }
    let _ = codec.decode_add(frame, &mut out);
}

/// The launcher's merge of the ranks' `/metrics` pages: the bytes split at `0xff` into
/// pages (lossy UTF-8), merged, and turned into the older text format.
pub fn metrics_expositions(data: &[u8]) {
    let texts: Vec<String> = data
        .split(|&b| b == 0xff)
        .take(16)
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .collect();
    let merged = crate::metrics::merge_expositions(&texts);
    assert!(merged.ends_with("# EOF\n"));
    let _ = crate::metrics::to_prometheus_text(&merged);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each entry on empty, short, long and structured inputs.
    #[test]
    fn entries_take_odd_inputs() {
        let hello = Hello {
            purpose: wire::Purpose::Data,
            stream: 1,
            world: 4,
            rank: 1,
            target: 2,
            job: 7,
            comm: 9,
            mac: [3; 32],
        }
        .encode();
        let notice = AbortNotice {
            origin: 1,
            culprit: Some(2),
            reason: "x".repeat(5000),
        }
        .encode();
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0xff; 300],
            hello.to_vec(),
            notice,
            b"{\"tcp\":\"127.0.0.1:1\"}".to_vec(),
            b"127.0.0.1:80".to_vec(),
            b"# TYPE a counter\na_total{rank=\"0\"} 1\n\xff# HELP a x\n".to_vec(),
            (0..=255).collect(),
        ];
        for d in &inputs {
            wire(d);
            store_protocol(d);
            etcd_replies(d);
            heartbeat(d);
            endpoint(d);
            replan_records(d);
            compressed_frames(d);
            metrics_expositions(d);
        }
    }

    #[test]
    fn a_valid_compressed_frame_is_accepted() {
        let spec = CodecSpec::new(CodecKind::Int8);
        let mut codec = FrameCodec::new(&spec).unwrap();
        let x: Vec<f32> = (0..100).map(|i| i as f32 - 50.0).collect();
        let mut frame = Vec::new();
        codec.encode(&x, 0, None, &mut frame).unwrap();
        let mut data = vec![0u8, 100, 0];
        data.extend_from_slice(&frame);
        compressed_frames(&data);
    }
}
