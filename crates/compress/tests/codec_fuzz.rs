//! Frames are network bytes: decoding arbitrary or corrupted input returns an error or a
//! value, never a panic. Spec strings: parsing never panics, printing round-trips.

mod codec_common;

use codec_common::{spec, vector};
use proptest::prelude::*;
use topoccl_compress::codec::*;

fn decoders() -> Vec<FrameCodec> {
    ["int8", "int4:16", "1bit:8", "topk:0.1", "int8:8"]
        .iter()
        .map(|s| FrameCodec::new(&spec(s)).unwrap())
        .collect()
}

fn decode_all(bytes: &[u8], n: usize) {
    let mut acc = vec![0.0f32; n];
    for c in decoders() {
        let _ = c.decode_add(bytes, &mut acc);
        let _ = c.decode_into(bytes, &mut acc);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), n in 0usize..200) {
        decode_all(&bytes, n);
    }

    #[test]
    fn valid_header_with_random_payload_never_panics(
        id in 0u8..12, param in prop::sample::select(vec![0u32, 1, 8, 16, 256, 3, u32::MAX]),
        n in 0usize..100, payload in prop::collection::vec(any::<u8>(), 0..500),
    ) {
        let mut bytes = vec![b'T', b'Z', 1, id];
        bytes.extend_from_slice(&param.to_le_bytes());
        bytes.extend_from_slice(&(n as u64).to_le_bytes());
        bytes.extend_from_slice(&payload);
        decode_all(&bytes, n);
    }

    #[test]
    fn corrupted_valid_frames_never_panic_and_detect_header_damage(
        which in 0usize..5, pos in any::<prop::sample::Index>(), byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let x = vector(77, 4, 3.0);
        let mut codecs = decoders();
        let c = &mut codecs[which];
        let mut ef = ErrorFeedback::with_defaults();
        let mut frame = Vec::new();
        c.encode(&x, 0, Some((&mut ef, 0)), &mut frame).unwrap();
        let i = pos.index(frame.len());
        let old = frame[i];
        frame[i] = byte;
        let mut out = vec![0.0f32; x.len()];
        let r = c.decode_into(&frame, &mut out);
        if i < FRAME_HEADER_BYTES && old != byte {
            prop_assert!(r.is_err(), "damaged header byte {} accepted", i);
        }
        decode_all(&frame, x.len());
        let t = cut.index(frame.len());
        prop_assert!(c.decode_into(&frame[..t], &mut out).is_err());
    }

    #[test]
    fn spec_parsing_never_panics(s in "\\PC{0,24}") {
        let _ = s.parse::<CodecSpec>();
    }

    #[test]
    fn spec_display_round_trips(idx in 0usize..10, ratio in 0.0001f64..=1.0, rank in 1usize..64,
                                block in (1usize..512).prop_map(|b| b * 8)) {
        let mut s = CodecSpec::new(CODEC_TABLE[idx].kind);
        s.ratio = if matches!(CODEC_TABLE[idx].param, Param::Ratio { .. }) { ratio } else { s.ratio };
        s.rank = rank;
        s.block = block;
        let back: CodecSpec = s.to_string().parse().unwrap();
        prop_assert_eq!(back.kind, s.kind);
        prop_assert_eq!(back.to_string(), s.to_string());
        prop_assert_eq!(back.wire_bytes(1000), s.wire_bytes(1000));
    }
}

#[test]
fn error_feedback_caps_keys_with_clear_error() {
    let mut ef = ErrorFeedback::new(0.8, 3).unwrap();
    let mut c = FrameCodec::new(&spec("1bit")).unwrap();
    let mut frame = Vec::new();
    for key in 0..3 {
        c.encode(&[1.0, -2.0], 0, Some((&mut ef, key)), &mut frame)
            .unwrap();
    }
    let e = c
        .encode(&[1.0, -2.0], 0, Some((&mut ef, 99)), &mut frame)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cap") && e.contains("99") && e.contains("max_keys = 3"),
        "{e}"
    );
    ef.remove(0);
    assert!(c
        .encode(&[1.0, -2.0], 0, Some((&mut ef, 99)), &mut frame)
        .is_ok());
    assert_eq!(ef.len(), 3);
}
