//! Codec throughput in GB/s of f32 input (criterion `Throughput::Bytes(4·n)`), one core.
//! Run: `cargo bench -p topoccl-compress --bench codecs`.
//!
//! Each "roundtrip" encodes and decodes the same vector once (for linear codecs: project
//! and unproject). PowerSGD is one full step (P = M·Q, orthonormalise, Q = Mᵀ·P, P·Qᵀ) at
//! rank 4 on a 4096×4096 view.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::f16;
use topoccl_compress::codec::*;

const N: usize = 1 << 22;

fn input(n: usize) -> Vec<f32> {
    let mut s = 0x1234_5678_9ABC_DEF1u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02
        })
        .collect()
}

fn spec(s: &str) -> CodecSpec {
    s.parse().expect("bench spec")
}

fn codecs(c: &mut Criterion) {
    let x = input(N);
    let mut out = vec![0.0f32; N];
    let mut frame = Vec::new();
    let mut g = c.benchmark_group("codecs");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(4 * N as u64));

    let q8 = BlockQuant::new(&spec("int8")).expect("int8");
    g.bench_function("int8_encode", |b| {
        b.iter(|| q8.encode(black_box(&x), 0, &mut frame))
    });
    q8.encode(&x, 0, &mut frame).expect("encode");
    g.bench_function("int8_decode", |b| {
        b.iter(|| q8.decode_into(black_box(&frame), &mut out))
    });
    g.bench_function("int8_roundtrip", |b| {
        b.iter(|| {
            q8.encode(black_box(&x), 0, &mut frame).expect("encode");
            q8.decode_add(&frame, &mut out)
        })
    });
    let mut ef8 = ErrorFeedback::with_defaults();
    g.bench_function("int8_ef_roundtrip", |b| {
        b.iter(|| {
            q8.encode_with_feedback(&mut ef8, 0, black_box(&x), 0, &mut frame)
                .expect("encode");
            q8.decode_add(&frame, &mut out)
        })
    });
    let mut s8 = spec("int8");
    s8.stochastic = true;
    let q8s = BlockQuant::new(&s8).expect("int8 stochastic");
    g.bench_function("int8_stochastic_roundtrip", |b| {
        b.iter(|| {
            q8s.encode(black_box(&x), 1, &mut frame).expect("encode");
            q8s.decode_add(&frame, &mut out)
        })
    });
    let q4 = BlockQuant::new(&spec("int4")).expect("int4");
    g.bench_function("int4_roundtrip", |b| {
        b.iter(|| {
            q4.encode(black_box(&x), 0, &mut frame).expect("encode");
            q4.decode_add(&frame, &mut out)
        })
    });

    let mut h = vec![f16::ZERO; N];
    let sc = cast_prescale::<f16>(8, Some(0.01)).expect("scale");
    g.bench_function("fp16_roundtrip", |b| {
        b.iter(|| {
            cast_encode(black_box(&x), sc, &mut h).expect("encode");
            cast_decode(&h, sc, &mut out)
        })
    });

    let one = SignCodec::new(&spec("1bit")).expect("1bit");
    let mut ef = ErrorFeedback::with_defaults();
    g.bench_function("1bit_ef_roundtrip", |b| {
        b.iter(|| {
            one.encode(&mut ef, 0, black_box(&x), &mut frame)
                .expect("encode");
            one.decode_add(&frame, &mut out)
        })
    });

    let mut tk = TopK::new(&spec("topk:0.01")).expect("topk");
    g.bench_function("topk_0.01_roundtrip", |b| {
        b.iter(|| {
            tk.encode(black_box(&x), &mut frame).expect("encode");
            tk.decode_into(&frame, &mut out)
        })
    });

    let mut rk = RandomK::new(&spec("randk:0.01")).expect("randk");
    let mut yk = vec![0.0f32; rk.k(N)];
    let mut step = 0u64;
    g.bench_function("randk_0.01_roundtrip", |b| {
        b.iter(|| {
            step += 1;
            rk.project(black_box(&x), step, &mut yk).expect("project");
            rk.unproject(&yk, step, &mut out)
        })
    });

    let rp = CountSketch::new(&spec("rp:0.02")).expect("rp");
    let mut y = vec![0.0f32; rp.out_len(N)];
    g.bench_function("rp_0.02_roundtrip", |b| {
        b.iter(|| {
            rp.project(black_box(&x), 3, &mut y).expect("project");
            rp.unproject(&y, 3, &mut out)
        })
    });
    g.finish();

    let n = 4096 * 4096;
    let m = input(n);
    let mut approx = vec![0.0f32; n];
    let mut ps = PowerSgd::with_view(n, 4096, 4096, 4, 7).expect("powersgd");
    let mut p = vec![0.0f32; ps.p_len()];
    let mut g = c.benchmark_group("codecs");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(4 * n as u64));
    g.bench_function("powersgd_r4_4096x4096_step", |b| {
        b.iter(|| {
            ps.compute_p(black_box(&m), &mut p).expect("p");
            ps.orthonormalize(&mut p).expect("orth");
            ps.compute_q(&m, &p).expect("q");
            ps.approximate(&p, &mut approx)
        })
    });
    g.finish();
}

criterion_group!(benches, codecs);
criterion_main!(benches);
