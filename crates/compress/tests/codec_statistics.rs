//! Statistical properties: unbiasedness where the table claims it (seeded, many trials),
//! linearity of the linear codecs, and error feedback making time averages converge.

mod codec_common;

use codec_common::{max_diff, spec, vector};
use half::f16;
use proptest::prelude::*;
use topoccl_compress::codec::*;

/// Mean over `trials` streams of `decode(encode(x, stream))`.
fn mean_over_streams(
    n: usize,
    trials: u64,
    mut round_trip: impl FnMut(u64, &mut [f32]),
) -> Vec<f32> {
    let mut sum = vec![0.0f64; n];
    let mut out = vec![0.0f32; n];
    for t in 0..trials {
        round_trip(t, &mut out);
        for (s, o) in sum.iter_mut().zip(&out) {
            *s += *o as f64;
        }
    }
    sum.iter().map(|s| (*s / trials as f64) as f32).collect()
}

#[test]
fn stochastic_rounding_is_unbiased_and_deterministic_is_not() {
    // int4 on a block whose max is 7: the step is 1, and 0.3 sits between codes.
    let mut x: Vec<f32> = (0..64).map(|i| (i % 13) as f32 * 0.53 - 3.1).collect();
    x[0] = 7.0;
    x[1] = 0.3;
    let trials = 4000;
    for (stochastic, name) in [(true, "int4:64"), (true, "int8:64")] {
        let mut s = spec(name);
        s.stochastic = stochastic;
        let c = BlockQuant::new(&s).unwrap();
        let mut frame = Vec::new();
        let mean = mean_over_streams(x.len(), trials, |t, out| {
            c.encode(&x, t, &mut frame).unwrap();
            c.decode_into(&frame, out).unwrap();
        });
        // Per-element std of one trial ≤ step/2, so of the mean ≤ step/(2√T) = 0.0079·step.
        let step = if name.starts_with("int4") {
            1.0
        } else {
            7.0 / 127.0
        };
        let err = max_diff(&mean, &x);
        assert!(err < 0.045 * step, "{name}: mean error {err} (step {step})");
    }
    let c = BlockQuant::new(&spec("int4:64")).unwrap();
    let mut frame = Vec::new();
    let mut out = vec![0.0; 64];
    c.encode(&x, 0, &mut frame).unwrap();
    c.decode_into(&frame, &mut out).unwrap();
    assert!(
        (out[1] - x[1]).abs() > 0.25,
        "deterministic int4 rounds 0.3 to 0"
    );
}

#[test]
fn random_k_and_count_sketch_are_unbiased() {
    let x = vector(50, 11, 1.0);
    let trials = 6000;
    let mut rk = RandomK::new(&spec("randk:0.2")).unwrap();
    let mut y = vec![0.0; rk.k(x.len())];
    let mean = mean_over_streams(x.len(), trials, |t, out| {
        rk.project(&x, t, &mut y).unwrap();
        rk.unproject(&y, t, out).unwrap();
    });
    // Var per element x²(n/k − 1) = 4x², std of the mean ≤ 2/√6000 = 0.026.
    let err = max_diff(&mean, &x);
    assert!(err < 0.13, "randk mean error {err}");

    let cs = CountSketch::new(&spec("rp:0.25")).unwrap();
    let mut y = vec![0.0; cs.out_len(x.len())];
    let mean = mean_over_streams(x.len(), trials, |t, out| {
        cs.project(&x, t, &mut y).unwrap();
        cs.unproject(&y, t, out).unwrap();
    });
    // Var per element ≈ ‖x‖²/m ≈ 16.7/13, std of the mean ≈ 0.015.
    let err = max_diff(&mean, &x);
    assert!(err < 0.08, "rp mean error {err}");

    // Control: top-k (biased) does not converge to x.
    let mut tk = TopK::new(&spec("topk:0.2")).unwrap();
    let mut frame = Vec::new();
    let mean = mean_over_streams(x.len(), 10, |_, out| {
        tk.encode(&x, &mut frame).unwrap();
        tk.decode_into(&frame, out).unwrap();
    });
    assert!(max_diff(&mean, &x) > 0.13);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn linear_codecs_sum_of_encodings_is_encoding_of_sum(
        a in prop::collection::vec(-10.0f32..10.0, 1..300),
        seed in any::<u64>(), stream in any::<u64>(), ratio in 0.01f64..1.0,
    ) {
        let n = a.len();
        let b = vector(n, seed, 10.0);
        let ab: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let tol = |v: &[f32]| 1e-5 * v.iter().map(|x| x.abs()).sum::<f32>().max(1.0);

        let mut s = spec(&format!("rp:{ratio}"));
        s.seed = seed;
        let cs = CountSketch::new(&s).unwrap();
        let m = cs.out_len(n);
        let (mut ya, mut yb, mut yab) = (vec![0.0; m], vec![0.0; m], vec![0.0; m]);
        cs.project(&a, stream, &mut ya).unwrap();
        cs.project(&b, stream, &mut yb).unwrap();
        cs.project(&ab, stream, &mut yab).unwrap();
        let sum: Vec<f32> = ya.iter().zip(&yb).map(|(x, y)| x + y).collect();
        prop_assert!(max_diff(&sum, &yab) <= tol(&ab));

        let mut s = spec(&format!("randk:{ratio}"));
        s.seed = seed;
        let mut rk = RandomK::new(&s).unwrap();
        let k = rk.k(n);
        let (mut ya, mut yb, mut yab) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
        rk.project(&a, stream, &mut ya).unwrap();
        rk.project(&b, stream, &mut yb).unwrap();
        rk.project(&ab, stream, &mut yab).unwrap();
        let sum: Vec<f32> = ya.iter().zip(&yb).map(|(x, y)| x + y).collect();
        prop_assert!(max_diff(&sum, &yab) <= 1e-5 * 20.0);

        // PowerSGD: P and Q are linear in M for fixed Q and P.
        let mut s = spec("powersgd:2");
        s.seed = seed;
        let ps = PowerSgd::new(n, &s).unwrap();
        let pl = ps.p_len();
        let (mut pa, mut pb, mut pab) = (vec![0.0; pl], vec![0.0; pl], vec![0.0; pl]);
        ps.compute_p(&a, &mut pa).unwrap();
        ps.compute_p(&b, &mut pb).unwrap();
        ps.compute_p(&ab, &mut pab).unwrap();
        let sum: Vec<f32> = pa.iter().zip(&pb).map(|(x, y)| x + y).collect();
        prop_assert!(max_diff(&sum, &pab) <= tol(&ab));
        let q = |m: &[f32]| { let mut c = ps.clone(); c.compute_q(m, &pab).unwrap(); c.q().to_vec() };
        let (qa, qb, qab) = (q(&a), q(&b), q(&ab));
        let sum: Vec<f32> = qa.iter().zip(&qb).map(|(x, y)| x + y).collect();
        prop_assert!(max_diff(&sum, &qab) <= tol(&ab) * 10.0);

        // fp16: the all-reduce sums the pre-scaled halves; decoding the sum gives a + b.
        let max = a.iter().chain(&b).fold(0.0f32, |m, v| m.max(v.abs()));
        let sc = cast_prescale::<f16>(2, Some(max)).unwrap();
        let (mut ha, mut hb) = (vec![f16::ZERO; n], vec![f16::ZERO; n]);
        cast_encode(&a, sc, &mut ha).unwrap();
        cast_encode(&b, sc, &mut hb).unwrap();
        let hsum: Vec<f16> = ha.iter().zip(&hb).map(|(x, y)| *x + *y).collect();
        let mut back = vec![0.0; n];
        cast_decode(&hsum, sc, &mut back).unwrap();
        for (x, y) in back.iter().zip(&ab) {
            prop_assert!((x - y).abs() <= 3.0 * 2f32.powi(-11) * 20.0 + 2f32.powi(-24) / sc);
        }
    }
}

/// Time average of decoded outputs of a constant gradient over `steps` steps.
fn ef_average(codec: &mut FrameCodec, g: &[f32], steps: usize, decay: Option<f32>) -> Vec<f32> {
    let mut ef = ErrorFeedback::new(decay.unwrap_or(1.0), 1).unwrap();
    let mut frame = Vec::new();
    let mut out = vec![0.0f32; g.len()];
    let mut sum = vec![0.0f64; g.len()];
    for t in 0..steps {
        let fb = decay.map(|_| (&mut ef, 0u64));
        codec.encode(g, t as u64, fb, &mut frame).unwrap();
        codec.decode_into(&frame, &mut out).unwrap();
        for (s, o) in sum.iter_mut().zip(&out) {
            *s += *o as f64;
        }
    }
    sum.iter().map(|s| (*s / steps as f64) as f32).collect()
}

#[test]
fn error_feedback_time_average_converges_for_one_bit_and_topk() {
    let g = vector(200, 5, 1.0);
    for name in ["1bit:32", "topk:0.02"] {
        let mut c = FrameCodec::new(&spec(name)).unwrap();
        let short = max_diff(&ef_average(&mut c, &g, 50, Some(1.0)), &g);
        let long = max_diff(&ef_average(&mut c, &g, 2000, Some(1.0)), &g);
        // Σ decoded = T·g − residual_T with a bounded residual: error ~ 1/T.
        assert!(long < 0.05, "{name}: error after 2000 steps {long}");
        assert!(
            long < short / 5.0,
            "{name}: {short} -> {long} should shrink ~1/T"
        );
    }
    // Without feedback top-k keeps dropping the same small elements.
    let mut c = FrameCodec::new(&spec("topk:0.02")).unwrap();
    let none = max_diff(&ef_average(&mut c, &g, 2000, None), &g);
    assert!(none > 0.5, "top-k without feedback: {none}");
    // The default decay 0.8 still brings most of the signal through.
    let decayed = max_diff(&ef_average(&mut c, &g, 2000, Some(DEFAULT_DECAY)), &g);
    assert!(decayed < none, "decay 0.8: {decayed} vs none {none}");
}

#[test]
fn powersgd_with_error_feedback_tracks_a_full_rank_gradient() {
    // Split-API error feedback (compensate before, update after the collectives).
    let n = 400;
    let g = vector(n, 8, 1.0);
    let mut ps = PowerSgd::new(n, &spec("powersgd:2")).unwrap();
    let mut ef = ErrorFeedback::new(1.0, 1).unwrap();
    let (mut comp, mut p, mut approx) = (vec![0.0; n], vec![0.0; ps.p_len()], vec![0.0; n]);
    let mut sum = vec![0.0f64; n];
    let steps = 3000;
    for _ in 0..steps {
        ef.compensate(0, &g, &mut comp).unwrap();
        ps.compute_p(&comp, &mut p).unwrap();
        ps.orthonormalize(&mut p).unwrap();
        ps.compute_q(&comp, &p).unwrap();
        ps.approximate(&p, &mut approx).unwrap();
        ef.update(0, &comp, &approx).unwrap();
        for (s, a) in sum.iter_mut().zip(&approx) {
            *s += *a as f64;
        }
    }
    let avg: Vec<f32> = sum.iter().map(|s| (*s / steps as f64) as f32).collect();
    assert!(max_diff(&avg, &g) < 0.05, "{}", max_diff(&avg, &g));
}
