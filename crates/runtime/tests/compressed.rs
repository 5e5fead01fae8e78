//! Compressed all-reduce between real ranks (threads of one process over real
//! transports): each codec's result against the exact sum, within its bound; error
//! feedback bringing the running sum of results to the running sum of gradients; ranks
//! that disagree on the codec getting an error naming them; unsupported codecs refused.

mod common;

use common::run_world;
use topoccl::compressed::Compressor;
use topoccl::ReduceOp;

/// Rank `rank`'s gradient at `step`: mixed signs, independent across ranks and steps
/// (splitmix64 of the three), uniform in [-1, 1].
fn grad(rank: u32, step: u64, n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let mut z = i
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(u64::from(rank) << 40)
                .wrapping_add(step << 20)
                .wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    diff / norm
}

/// (codec, bound on one call's relative error without feedback)
const ONE_CALL: [(&str, f64); 5] = [
    ("none", 0.0),
    ("fp16", 1e-3),
    ("bf16", 1e-2),
    ("int8", 1e-2),
    ("int4", 0.15),
];

#[test]
fn one_call_is_within_each_codecs_bound_on_every_rank() {
    let n = 10_000;
    let results = run_world(3, Default::default(), move |comm| {
        ONE_CALL
            .iter()
            .map(|&(codec, bound)| {
                let g = grad(comm.rank(), 0, n);
                let mut exact = vec![0.0f32; n];
                comm.all_reduce(&g, &mut exact, ReduceOp::Sum).unwrap();
                let mut c = Compressor::new(codec, false).unwrap();
                let mut out = vec![0.0f32; n];
                let call = comm.all_reduce_compressed(&mut c, &g, &mut out, 1).unwrap();
                assert_eq!(call.wire_bytes, c.wire_bytes(n));
                (codec, rel_err(&exact, &out), bound, out)
            })
            .collect::<Vec<_>>()
    });
    for (i, (codec, err, bound, out)) in results[0].iter().enumerate() {
        assert!(err <= bound, "{codec}: relative error {err} > {bound}");
        for other in &results[1..] {
            assert_eq!(&other[i].3, out, "{codec}: every rank gets the same result");
        }
    }
}

#[test]
fn error_feedback_makes_biased_codecs_converge_over_steps() {
    // Σ_t result_t tracks Σ_t exact_t: what a step leaves out is sent later (for linear
    // codecs too: the residuals are taken against the mean, and they sum to Σ c − result).
    let n = 4096;
    let steps = 400;
    let results = run_world(2, Default::default(), move |comm| {
        ["1bit", "topk:0.05", "rp:0.25", "powersgd:4", "int4"]
            .iter()
            .map(|&codec| {
                let mut c = Compressor::new(codec, true).unwrap();
                // All of the residual carried: the running sums then differ by the last
                // residuals only.
                c.set_decay(1.0).unwrap();
                let (mut sum_exact, mut sum_out) = (vec![0.0f32; n], vec![0.0f32; n]);
                let (mut exact, mut out) = (vec![0.0f32; n], vec![0.0f32; n]);
                for step in 0..steps {
                    let g = grad(comm.rank(), step, n);
                    comm.all_reduce(&g, &mut exact, ReduceOp::Sum).unwrap();
                    comm.all_reduce_compressed(&mut c, &g, &mut out, 9).unwrap();
                    for i in 0..n {
                        sum_exact[i] += exact[i];
                        sum_out[i] += out[i];
                    }
                }
                let one_step = {
                    let g = grad(comm.rank(), 1000, n);
                    let mut fresh = Compressor::new(codec, true).unwrap();
                    comm.all_reduce(&g, &mut exact, ReduceOp::Sum).unwrap();
                    comm.all_reduce_compressed(&mut fresh, &g, &mut out, 9)
                        .unwrap();
                    rel_err(&exact, &out)
                };
                (codec, rel_err(&sum_exact, &sum_out), one_step)
            })
            .collect::<Vec<_>>()
    });
    for (codec, accumulated, one_step) in &results[0] {
        eprintln!("{codec}: accumulated {accumulated:.3}, one step {one_step:.3}");
        assert!(
            *accumulated < one_step / 4.0,
            "{codec}: accumulated relative error {accumulated} vs one step's {one_step}"
        );
    }
}

#[test]
fn ranks_that_disagree_on_the_codec_are_named() {
    let results = run_world(3, Default::default(), |comm| {
        let codec = if comm.rank() == 2 {
            "rp:0.02"
        } else {
            "randk:0.02"
        };
        let mut c = Compressor::new(codec, false).unwrap();
        let g = vec![1.0f32; 1000];
        let mut out = vec![0.0f32; 1000];
        comm.all_reduce_compressed(&mut c, &g, &mut out, 0)
            .unwrap_err()
            .to_string()
    });
    for (r, e) in results.iter().enumerate() {
        assert!(
            e.contains("rank 2") && e.contains("rp:0.02"),
            "rank {r}: {e}"
        );
        assert!(e.contains("randk:0.02"), "rank {r}: {e}");
    }
}

#[test]
fn bad_codecs_are_refused_before_anything_is_sent() {
    let e = Compressor::new("zip", false).unwrap_err().to_string();
    assert!(
        e.contains("int8") && e.contains("powersgd"),
        "lists the choices: {e}"
    );
    let e = Compressor::new("rp:1.5", false).unwrap_err().to_string();
    assert!(e.contains("1.5"), "{e}");
}
