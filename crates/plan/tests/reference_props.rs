//! Property tests: the reference executor running any generated plan computes what a naive
//! implementation of the collective computes, for random collectives, algorithms, world
//! sizes, counts, chunkings, channels, data types, operators, roots and placements.
//!
//! Inputs are small integers (or ±1, ±2 for products) so every reduction order gives the
//! exact same bits, even in f16 and bf16; a second property uses arbitrary floats and checks
//! within the rounding the reduction order allows.

mod common;

use half::{bf16, f16};
use proptest::prelude::*;
use topoccl_plan::exec::execute;
use topoccl_plan::exec::kernels::{finish_avg, Element};
use topoccl_plan::{build, Collective, CollectiveSpec, DType, Placement, PlanParams, ReduceOp};

/// What the collective must produce, computed the obvious way.
fn naive<T: Element>(spec: &CollectiveSpec, inputs: &[Vec<T>]) -> Vec<Vec<T>> {
    let p = spec.world as usize;
    let c = spec.count as usize;
    let fold = |idx: &dyn Fn(usize) -> T| -> T {
        let mut acc = idx(0);
        for s in 1..p {
            acc = T::combine(spec.op, acc, idx(s));
        }
        acc
    };
    let mut outs: Vec<Vec<T>> = (0..p)
        .map(|r| vec![T::default(); spec.output_len(r as u32) as usize])
        .collect();
    for (r, out) in outs.iter_mut().enumerate() {
        let root = spec.root as usize;
        match spec.collective {
            Collective::AllReduce => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = fold(&|s| inputs[s][i]);
                }
            }
            Collective::Reduce if r == root => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = fold(&|s| inputs[s][i]);
                }
            }
            Collective::ReduceScatter => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = fold(&|s| inputs[s][r * c + i]);
                }
            }
            Collective::Broadcast => out.copy_from_slice(&inputs[root]),
            Collective::AllGather => {
                for s in 0..p {
                    out[s * c..(s + 1) * c].copy_from_slice(&inputs[s]);
                }
            }
            Collective::Gather if r == root => {
                for s in 0..p {
                    out[s * c..(s + 1) * c].copy_from_slice(&inputs[s]);
                }
            }
            Collective::Scatter => out.copy_from_slice(&inputs[root][r * c..(r + 1) * c]),
            Collective::AllToAll => {
                for s in 0..p {
                    out[s * c..(s + 1) * c].copy_from_slice(&inputs[s][r * c..(r + 1) * c]);
                }
            }
            Collective::AllToAllV => {
                let m = spec.matrix();
                for s in 0..p as u32 {
                    let n = m.get(s, r as u32) as usize;
                    let from = m.send_offset(s, r as u32) as usize;
                    let to = m.recv_offset(s, r as u32) as usize;
                    out[to..to + n].copy_from_slice(&inputs[s as usize][from..from + n]);
                }
            }
            Collective::Reduce | Collective::Gather | Collective::Barrier => {}
        }
        finish_avg(spec, r as u32, out);
    }
    outs
}

/// Small integers, exact under any reduction order: products stay powers of two.
fn exact_values<T: Element>(spec: &CollectiveSpec, seed: u64) -> Vec<Vec<T>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..spec.world)
        .map(|r| {
            (0..spec.input_len(r))
                .map(|_| {
                    let v = next();
                    let v = match spec.op {
                        ReduceOp::Prod => [1i64, -1, 2, -2, 1][(v % 5) as usize],
                        _ if T::DTYPE == DType::U8 => (v % 9) as i64,
                        _ => (v % 17) as i64 - 8,
                    };
                    T::from_i64(v)
                })
                .collect()
        })
        .collect()
}

fn check_exact<T: Element>(
    spec: &CollectiveSpec,
    algo: &topoccl_plan::Algorithm,
    params: PlanParams,
    placement: Placement,
    seed: u64,
) -> Result<(), TestCaseError> {
    let plan = match build(spec.clone(), algo.clone(), params) {
        Ok(plan) => plan,
        // Channels beyond what an algorithm splits into are refused by design.
        Err(e) if e.to_string().contains("channels") => return Ok(()),
        Err(e) => return Err(TestCaseError::fail(format!("build: {e}"))),
    };
    let inputs = exact_values::<T>(spec, seed);
    let got = execute(&plan, placement, &inputs)
        .map_err(|e| TestCaseError::fail(format!("execute: {e}")))?;
    let want = naive(spec, &inputs);
    for r in 0..spec.world as usize {
        prop_assert_eq!(
            &got[r],
            &want[r],
            "rank {} differs: {} algo={} {:?} {:?}",
            r,
            spec.describe(),
            algo.name(),
            params,
            placement
        );
    }
    Ok(())
}

/// [`check_exact`] in the spec's data type.
fn check_any(
    spec: &CollectiveSpec,
    algo: &topoccl_plan::Algorithm,
    params: PlanParams,
    placement: Placement,
    seed: u64,
) -> Result<(), TestCaseError> {
    match spec.dtype {
        DType::F32 => check_exact::<f32>(spec, algo, params, placement, seed),
        DType::F64 => check_exact::<f64>(spec, algo, params, placement, seed),
        DType::F16 => check_exact::<f16>(spec, algo, params, placement, seed),
        DType::BF16 => check_exact::<bf16>(spec, algo, params, placement, seed),
        DType::I32 => check_exact::<i32>(spec, algo, params, placement, seed),
        DType::I64 => check_exact::<i64>(spec, algo, params, placement, seed),
        DType::U8 => check_exact::<u8>(spec, algo, params, placement, seed),
    }
}

fn placement_for(collective: Collective, in_place: bool) -> Placement {
    if in_place && collective.has_in_place() {
        Placement::InPlace
    } else {
        Placement::OutOfPlace
    }
}

fn counts() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        prop::sample::select(vec![2u64, 3, 5, 7, 11, 13, 97, 251, 1009]),
        1u64..300,
        1000u64..20_000,
    ]
}

#[derive(Debug, Clone)]
struct Case {
    collective: Collective,
    world: u32,
    count: u64,
    root: u32,
    algo_pick: usize,
    chunks: u32,
    channels: u16,
    dtype: DType,
    op: ReduceOp,
    in_place: bool,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(Collective::ALL.to_vec()),
        prop_oneof![1u32..=9, 10u32..=24],
        counts(),
        any::<u32>(),
        any::<usize>(),
        1u32..=4,
        prop_oneof![Just(1u16), 2u16..=3],
        prop::sample::select(DType::ALL.to_vec()),
        prop::sample::select(ReduceOp::ALL.to_vec()),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                collective,
                world,
                count,
                root,
                algo_pick,
                chunks,
                channels,
                dtype,
                op,
                in_place,
                seed,
            )| {
                // Keep all-to-all sizes (p² blocks) and large worlds moderate.
                let count = if matches!(collective, Collective::AllToAll | Collective::AllToAllV) {
                    count % 64
                } else {
                    count
                };
                Case {
                    collective,
                    world,
                    count,
                    root: root % world,
                    algo_pick,
                    chunks,
                    channels,
                    dtype,
                    op,
                    in_place,
                    seed,
                }
            },
        )
}

fn run_case(k: &Case) -> Result<(), TestCaseError> {
    let spec = common::spec(k.collective, k.world, k.count, k.root)
        .with_dtype(k.dtype)
        .with_op(k.op);
    let spec = CollectiveSpec {
        root: k.root,
        ..spec
    };
    let algos = common::algorithms(k.collective, k.world, k.root);
    let algo = &algos[k.algo_pick % algos.len()];
    let params = PlanParams::default()
        .with_chunks(k.chunks)
        .with_channels(k.channels);
    check_any(
        &spec,
        algo,
        params,
        placement_for(k.collective, k.in_place),
        k.seed,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn reference_executor_matches_naive(k in cases()) {
        run_case(&k)?;
    }

    /// Arbitrary floats: the result differs from the naive one only by the rounding of a
    /// different summation order — at most (p−1) ulps of the sum of magnitudes.
    #[test]
    fn float_sums_within_reordering_tolerance(
        world in 2u32..=16,
        count in 1u64..500,
        algo_pick in any::<usize>(),
        chunks in 1u32..=3,
        seed in any::<u64>(),
    ) {
        let spec = CollectiveSpec::new(Collective::AllReduce, world, count);
        let algos = common::algorithms(Collective::AllReduce, world, 0);
        let algo = &algos[algo_pick % algos.len()];
        let plan = build(spec.clone(), algo.clone(), PlanParams::default().with_chunks(chunks)).unwrap();
        let mut x = seed | 1;
        let inputs: Vec<Vec<f32>> = (0..world)
            .map(|_| (0..count).map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1000.0
            }).collect())
            .collect();
        let got = execute(&plan, Placement::OutOfPlace, &inputs).unwrap();
        for i in 0..count as usize {
            let exact: f64 = inputs.iter().map(|v| v[i] as f64).sum();
            let magnitude: f64 = inputs.iter().map(|v| (v[i] as f64).abs()).sum();
            let bound = magnitude * f32::EPSILON as f64 * world as f64;
            for (r, out) in got.iter().enumerate() {
                let err = (out[i] as f64 - exact).abs();
                prop_assert!(err <= bound, "rank {} element {}: {} vs {} (bound {}) algo={}",
                    r, i, out[i], exact, bound, algo.name());
            }
        }
    }
}

/// Every collective and algorithm, in every data type, once each (deterministic; the
/// properties above sample the rest).
#[test]
fn every_algorithm_in_every_dtype() {
    for collective in Collective::ALL {
        for algo in common::algorithms(collective, 6, 2) {
            for (i, dtype) in DType::ALL.into_iter().enumerate() {
                let op = ReduceOp::ALL[i % ReduceOp::ALL.len()];
                let spec = common::spec(collective, 6, 29, 2)
                    .with_dtype(dtype)
                    .with_op(op);
                let params = PlanParams::default().with_chunks(2);
                let placement = placement_for(collective, i % 2 == 0);
                let r = check_any(&spec, &algo, params, placement, 99 + i as u64);
                r.unwrap_or_else(|e| panic!("{collective} {} {dtype}: {e}", algo.name()));
            }
        }
    }
}
