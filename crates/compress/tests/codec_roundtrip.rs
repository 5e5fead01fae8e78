//! Round-trip error bounds per codec, exact wire sizes, and frame mismatch detection.

mod codec_common;

use codec_common::{max_diff, norm, spec, vector};
use half::{bf16, f16};
use proptest::prelude::*;
use topoccl_compress::codec::*;

fn blocks() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![8usize, 16, 64, 256])
}

fn values(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-1000.0f32..1000.0, 0..max_len)
}

/// max |x| per block.
fn block_max(x: &[f32], block: usize) -> Vec<f32> {
    x.chunks(block)
        .map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn int8_int4_error_within_half_a_step(x in values(700), block in blocks(), four in any::<bool>(),
                                         stochastic in any::<bool>(), stream in any::<u64>()) {
        let (name, q) = if four { ("int4", 7.0) } else { ("int8", 127.0) };
        let mut s = spec(&format!("{name}:{block}"));
        s.stochastic = stochastic;
        let c = BlockQuant::new(&s).unwrap();
        let mut frame = Vec::new();
        c.encode(&x, stream, &mut frame).unwrap();
        prop_assert_eq!(frame.len(), s.wire_bytes(x.len()));
        prop_assert_eq!(frame.len(), c.wire_bytes(x.len()));
        let mut y = vec![0.5f32; x.len()];
        c.decode_add(&frame, &mut y).unwrap();
        // Deterministic: half a step; stochastic: less than one step.
        let slack = if stochastic { 1.0 } else { 0.5 };
        for (b, m) in block_max(&x, block).into_iter().enumerate() {
            let scale = m / q;
            for i in b * block..((b + 1) * block).min(x.len()) {
                let err = (y[i] - 0.5 - x[i]).abs();
                prop_assert!(err <= scale * slack * 1.0001 + 1e-4, "i {} x {} y {} scale {}", i, x[i], y[i], scale);
            }
        }
    }

    #[test]
    fn one_bit_gives_signed_block_mean(x in values(600), block in blocks()) {
        let s = spec(&format!("1bit:{block}"));
        let c = SignCodec::new(&s).unwrap();
        let mut ef = ErrorFeedback::new(1.0, 1).unwrap();
        let mut frame = Vec::new();
        c.encode(&mut ef, 0, &x, &mut frame).unwrap();
        prop_assert_eq!(frame.len(), s.wire_bytes(x.len()));
        let mut y = vec![0.0f32; x.len()];
        c.decode_into(&frame, &mut y).unwrap();
        for (xb, yb) in x.chunks(block).zip(y.chunks(block)) {
            let mean = xb.iter().map(|v| v.abs()).sum::<f32>() / xb.len() as f32;
            for (a, d) in xb.iter().zip(yb) {
                prop_assert!((d.abs() - mean).abs() <= mean * 1e-5 + 1e-6);
                if *a != 0.0 { prop_assert_eq!(a.is_sign_negative(), d.is_sign_negative()); }
            }
        }
        // The residual is exactly what the frame lost.
        let r = ef.residual(0).unwrap();
        for i in 0..x.len() { prop_assert_eq!(r[i], x[i] - y[i]); }
    }

    #[test]
    fn topk_keeps_the_k_largest_exactly(x in values(800), ratio in 0.001f64..1.0) {
        let s = spec(&format!("topk:{ratio}"));
        let mut c = TopK::new(&s).unwrap();
        let mut frame = Vec::new();
        c.encode(&x, &mut frame).unwrap();
        prop_assert_eq!(frame.len(), s.wire_bytes(x.len()));
        let mut y = vec![0.0f32; x.len()];
        c.decode_into(&frame, &mut y).unwrap();
        let k = c.k(x.len());
        let kept: Vec<usize> = (0..x.len()).filter(|&i| y[i] != 0.0 || x[i] == 0.0 && k == x.len()).collect();
        let min_kept = (0..x.len()).filter(|&i| y[i] != 0.0).map(|i| x[i].abs()).fold(f32::INFINITY, f32::min);
        let max_dropped = (0..x.len()).filter(|&i| y[i] == 0.0).map(|i| x[i].abs()).fold(0.0f32, f32::max);
        prop_assert!(kept.len() <= k);
        if !x.is_empty() && (0..x.len()).any(|i| y[i] != 0.0) { prop_assert!(min_kept >= max_dropped); }
        for i in 0..x.len() { prop_assert!(y[i] == 0.0 || y[i] == x[i]); }
    }

    #[test]
    fn randk_and_rp_lengths_and_values(x in values(500), ratio in 0.01f64..1.0, stream in any::<u64>()) {
        let n = x.len();
        let s = spec(&format!("randk:{ratio}"));
        let mut c = RandomK::new(&s).unwrap();
        let mut y = vec![0.0f32; c.k(n)];
        c.project(&x, stream, &mut y).unwrap();
        prop_assert_eq!(4 * y.len(), s.wire_bytes(n));
        let mut out = vec![1.0f32; n];
        c.unproject(&y, stream, &mut out).unwrap();
        let scale = n as f32 / y.len().max(1) as f32;
        let idx = c.indices(n, stream).unwrap().to_vec();
        prop_assert_eq!(idx.len(), y.len());
        for i in 0..n {
            let want = if idx.binary_search(&(i as u32)).is_ok() { x[i] * scale } else { 0.0 };
            prop_assert!((out[i] - want).abs() <= want.abs() * 1e-6);
        }
        let s = spec(&format!("rp:{ratio}"));
        let c = CountSketch::new(&s).unwrap();
        let mut y = vec![0.0f32; c.out_len(n)];
        c.project(&x, stream, &mut y).unwrap();
        prop_assert_eq!(4 * y.len(), s.wire_bytes(n));
        // ‖Φx‖₁ ≤ ‖x‖₁: each element lands in exactly one bucket.
        let l1 = |v: &[f32]| v.iter().map(|a| a.abs() as f64).sum::<f64>();
        prop_assert!(l1(&y) <= l1(&x) * (1.0 + 1e-5) + 1e-3);
    }

    #[test]
    fn casts_round_trip_to_half_precision(x in values(600), world in 1usize..64) {
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (bits, name) in [(11, "fp16"), (8, "bf16")] {
            let s = spec(name);
            let mut back = vec![0.0f32; x.len()];
            let scale = if bits == 11 {
                let sc = cast_prescale::<f16>(world, Some(max)).unwrap();
                let mut y = vec![f16::ZERO; x.len()];
                cast_encode(&x, sc, &mut y).unwrap();
                prop_assert_eq!(2 * y.len(), s.wire_bytes(x.len()));
                // world copies summed cannot overflow
                prop_assert!(y.iter().all(|v| (v.to_f32() * world as f32).is_finite()));
                cast_decode(&y, sc, &mut back).unwrap();
                sc
            } else {
                let sc = cast_prescale::<bf16>(world, Some(max)).unwrap();
                let mut y = vec![bf16::ZERO; x.len()];
                cast_encode(&x, sc, &mut y).unwrap();
                cast_decode(&y, sc, &mut back).unwrap();
                sc
            };
            let rel = 2f32.powi(-bits);
            for (a, b) in x.iter().zip(&back) {
                // relative half-ulp, plus half the fp16 subnormal spacing (2^-25) unscaled
                prop_assert!((a - b).abs() <= a.abs() * rel + 2f32.powi(-25) / scale, "{} {} {}", name, a, b);
            }
        }
    }

    #[test]
    fn powersgd_residual_never_exceeds_input(rows in 1usize..40, cols in 1usize..40, rank in 1usize..6, seed in any::<u64>()) {
        let n = rows * cols;
        let m = vector(n, seed, 1.0);
        let mut ps = PowerSgd::with_view(n, rows, cols, rank, seed).unwrap();
        let mut p = vec![0.0; ps.p_len()];
        ps.compute_p(&m, &mut p).unwrap();
        ps.orthonormalize(&mut p).unwrap();
        // P has orthonormal (or zero) columns.
        let r = ps.shape().2;
        for j in 0..r { for k in 0..r {
            let d: f32 = p.chunks(r).map(|row| row[j] * row[k]).sum();
            prop_assert!(d.abs() < 1e-3 || (j == k && (d - 1.0).abs() < 1e-3), "{} {} {}", j, k, d);
        }}
        ps.compute_q(&m, &p).unwrap();
        let mut approx = vec![0.0; n];
        ps.approximate(&p, &mut approx).unwrap();
        let resid: Vec<f32> = m.iter().zip(&approx).map(|(a, b)| a - b).collect();
        prop_assert!(norm(&resid) <= norm(&m) * 1.0001 + 1e-5);
    }
}

#[test]
fn powersgd_wire_bytes_match_p_and_q() {
    for n in [1usize, 7, 1000, 4096, 10_007] {
        let s = spec("powersgd:4");
        let ps = PowerSgd::new(n, &s).unwrap();
        assert_eq!(4 * (ps.p_len() + ps.q().len()), s.wire_bytes(n), "n = {n}");
    }
}

#[test]
fn powersgd_warm_start_converges_to_low_rank_matrix() {
    // A rank-3 matrix is reproduced by rank-4 PowerSGD after a few warm-started steps.
    let (rows, cols) = (30, 20);
    let u = vector(rows * 3, 1, 1.0);
    let v = vector(cols * 3, 2, 1.0);
    let m: Vec<f32> = (0..rows * cols)
        .map(|k| {
            (0..3)
                .map(|j| u[(k / cols) * 3 + j] * v[(k % cols) * 3 + j])
                .sum()
        })
        .collect();
    let mut ps = PowerSgd::with_view(rows * cols, rows, cols, 4, 5).unwrap();
    let mut p = vec![0.0; ps.p_len()];
    let mut approx = vec![0.0; m.len()];
    for _ in 0..3 {
        ps.compute_p(&m, &mut p).unwrap();
        ps.orthonormalize(&mut p).unwrap();
        ps.compute_q(&m, &p).unwrap();
        ps.approximate(&p, &mut approx).unwrap();
    }
    assert!(max_diff(&m, &approx) < 1e-4, "{}", max_diff(&m, &approx));
}

#[test]
fn frames_from_another_codec_or_size_are_refused_naming_both() {
    let x = vector(1000, 3, 1.0);
    let mut frame = Vec::new();
    BlockQuant::new(&spec("int8"))
        .unwrap()
        .encode(&x, 0, &mut frame)
        .unwrap();
    let mut out = vec![0.0; 1000];
    let e = BlockQuant::new(&spec("int4"))
        .unwrap()
        .decode_add(&frame, &mut out)
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("int8 (block 256), n = 1000") && msg.contains("int4 (block 256), n = 1000"),
        "{msg}"
    );
    let e = BlockQuant::new(&spec("int8:128"))
        .unwrap()
        .decode_add(&frame, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("block 128"), "{e}");
    let mut short = vec![0.0; 999];
    let e = BlockQuant::new(&spec("int8"))
        .unwrap()
        .decode_add(&frame, &mut short)
        .unwrap_err();
    assert!(
        e.to_string().contains("n = 999") && e.to_string().contains("n = 1000"),
        "{e}"
    );
    let e = TopK::new(&spec("topk"))
        .unwrap()
        .decode_add(&frame, &mut out)
        .unwrap_err();
    assert!(matches!(e, CodecError::FrameMismatch { .. }), "{e}");
    let e = SignCodec::new(&spec("1bit"))
        .unwrap()
        .decode_add(&frame, &mut out)
        .unwrap_err();
    assert!(e.to_string().contains("1bit"), "{e}");
    assert!(
        out.iter().all(|v| *v == 0.0),
        "a refused frame must not touch the output"
    );
    // Truncated frame.
    let e = BlockQuant::new(&spec("int8"))
        .unwrap()
        .decode_add(&frame[..frame.len() - 1], &mut out);
    assert!(matches!(e, Err(CodecError::Corrupt(_))));
}

#[test]
fn frame_codec_wire_bytes_match_spec_for_every_non_linear_codec() {
    let x = vector(3001, 9, 2.0);
    for name in ["int8", "int4:64", "1bit:32", "topk:0.05"] {
        let s = spec(name);
        let mut c = FrameCodec::new(&s).unwrap();
        let mut ef = ErrorFeedback::with_defaults();
        let mut frame = Vec::new();
        c.encode(&x, 1, Some((&mut ef, 0)), &mut frame).unwrap();
        assert_eq!(frame.len(), s.wire_bytes(x.len()), "{name}");
        assert_eq!(frame.len(), c.wire_bytes(x.len()), "{name}");
        let mut y = vec![0.0; x.len()];
        c.decode_into(&frame, &mut y).unwrap();
        let r = ef.residual(0).unwrap();
        for i in 0..x.len() {
            assert!((x[i] - y[i] - r[i]).abs() <= 1e-6, "{name} {i}");
        }
    }
}

#[test]
fn int8_rejects_non_finite_naming_the_block() {
    let mut x = vector(600, 1, 1.0);
    x[300] = f32::INFINITY;
    let e = BlockQuant::new(&spec("int8"))
        .unwrap()
        .encode(&x, 0, &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        e,
        CodecError::NonFinite {
            codec: "int8",
            index: 256
        }
    );
    let e = TopK::new(&spec("topk"))
        .unwrap()
        .encode(&x, &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        e,
        CodecError::NonFinite {
            codec: "topk",
            index: 300
        }
    );
}

proptest! {
    #[test]
    fn topk_keeps_exactly_k_among_many_ties(
        x in prop::collection::vec(prop::sample::select(vec![-2.0f32, -1.0, 1.0, 2.0, 0.5]), 1..400),
        ratio in 0.001f64..1.0,
    ) {
        let mut c = TopK::new(&spec(&format!("topk:{ratio}"))).unwrap();
        let mut frame = Vec::new();
        c.encode(&x, &mut frame).unwrap();
        let mut y = vec![0.0f32; x.len()];
        c.decode_into(&frame, &mut y).unwrap();
        prop_assert_eq!(y.iter().filter(|v| **v != 0.0).count(), c.k(x.len()));
        let min_kept = y.iter().filter(|v| **v != 0.0).map(|v| v.abs()).fold(f32::INFINITY, f32::min);
        let max_dropped = (0..x.len()).filter(|&i| y[i] == 0.0).map(|i| x[i].abs()).fold(0.0f32, f32::max);
        prop_assert!(min_kept >= max_dropped);
    }
}

#[test]
fn empty_inputs_give_header_only_frames_with_and_without_feedback() {
    for name in ["int8", "int4", "1bit", "topk"] {
        let s = spec(name);
        let mut c = FrameCodec::new(&s).unwrap();
        let mut ef = ErrorFeedback::with_defaults();
        let mut frame = vec![1, 2, 3];
        c.encode(&[], 0, Some((&mut ef, 1)), &mut frame).unwrap();
        assert_eq!(frame.len(), s.wire_bytes(0), "{name}");
        assert_eq!(frame.len(), FRAME_HEADER_BYTES, "{name}");
        c.decode_add(&frame, &mut []).unwrap();
    }
}

#[test]
fn corrupt_payloads_are_refused_before_the_output_is_touched() {
    let x = vector(300, 2, 1.0);
    let mut acc = vec![1.0f32; 300];
    for name in ["int8", "int4", "1bit"] {
        let mut c = FrameCodec::new(&spec(name)).unwrap();
        let mut ef = ErrorFeedback::with_defaults();
        let mut frame = Vec::new();
        c.encode(&x, 0, Some((&mut ef, 0)), &mut frame).unwrap();
        // The second block's scale becomes NaN.
        let at = FRAME_HEADER_BYTES + 4;
        frame[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = c.decode_add(&frame, &mut acc).unwrap_err().to_string();
        assert!(e.contains("scale of block 1"), "{name}: {e}");
        assert!(acc.iter().all(|v| *v == 1.0), "{name} touched the output");
    }
    let mut c = TopK::new(&spec("topk:0.1")).unwrap();
    let mut frame = Vec::new();
    c.encode(&x, &mut frame).unwrap();
    // Swap the first two indices: no longer increasing.
    let (a, b) = (FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + 4);
    let first: Vec<u8> = frame[a..b].to_vec();
    frame.copy_within(b..b + 4, a);
    frame[b..b + 4].copy_from_slice(&first);
    let e = c.decode_add(&frame, &mut acc).unwrap_err().to_string();
    assert!(e.contains("entry 1"), "{e}");
    assert!(acc.iter().all(|v| *v == 1.0));
}
