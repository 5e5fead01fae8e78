//! Conformance of the runtime against the reference executor: every collective × each of
//! its algorithms × data types × sizes × placements, run for real across the ranks of a
//! communicator, each rank comparing its output bit for bit with what the reference
//! executor computes for it from the same inputs.
//!
//! Bit-for-bit holds for floats too: the runtime executes the same plan with the same
//! reduction kernels, and every op's operands are fixed by the plan whatever the timing.
//! `topoccl selftest -n N` runs this on a machine; the multi-process tests run it in CI.

use std::time::{Duration, Instant};

use half::{bf16, f16};
use topoccl_plan::exec::execute;
use topoccl_plan::exec::kernels::Element;
use topoccl_plan::{
    algo, build, AlgoKind, Algorithm, Collective, CollectiveSpec, CountMatrix, DType, Hierarchy,
    Placement, Plan, PlanParams, ReduceOp,
};

use crate::comm::Communicator;
use crate::exec::Dtype;

/// One call of the matrix.
#[derive(Clone, Debug)]
pub struct Case {
    pub spec: CollectiveSpec,
    pub algorithm: Algorithm,
    pub params: PlanParams,
    pub placement: Placement,
}

impl Case {
    pub fn describe(&self) -> String {
        format!(
            "{} algo={} chunks={} {}",
            self.spec.describe(),
            self.algorithm.name(),
            self.params.chunks,
            match self.placement {
                Placement::InPlace => "in place",
                Placement::OutOfPlace => "out of place",
            }
        )
    }
}

/// Every algorithm that serves `c` on `world` ranks, trees and hierarchies included.
pub fn algorithms(c: Collective, world: u32, root: u32) -> Vec<Algorithm> {
    let mut out = Vec::new();
    for kind in algo::available(c) {
        match kind {
            AlgoKind::ParentTree => {
                // A binary heap rooted at `root`.
                let parents = (0..world)
                    .map(|r| {
                        let rel = (r + world - root) % world;
                        (rel > 0).then(|| ((rel - 1) / 2 + root) % world)
                    })
                    .collect();
                out.push(Algorithm::ParentTree { parents });
            }
            AlgoKind::Hierarchical => {
                if let Some(g) = (2..world).find(|g| world % g == 0) {
                    if let Ok(h) =
                        Hierarchy::contiguous(world, g, Algorithm::Ring, Algorithm::Rabenseifner)
                    {
                        out.push(Algorithm::Hierarchical(Box::new(h)));
                    }
                }
            }
            AlgoKind::Rings => {
                // Two channels, as NCCL's ring pair: the rank order and its reverse.
                let order: Vec<u32> = (0..world).collect();
                let reverse = order.iter().rev().copied().collect();
                out.push(Algorithm::Rings {
                    orders: vec![order, reverse],
                });
            }
            plain => out.push(
                plain
                    .algorithm()
                    .expect("the table says it needs no arguments"),
            ),
        }
    }
    out
}

/// An uneven all-to-all-v matrix about `count` elements per pair.
fn matrix(world: u32, count: u64) -> CountMatrix {
    let rows: Vec<Vec<u64>> = (0..world as u64)
        .map(|i| {
            (0..world as u64)
                .map(|j| {
                    if (i + j) % 3 == 0 {
                        0
                    } else {
                        count + (i * 7 + j) % 5
                    }
                })
                .collect()
        })
        .collect();
    CountMatrix::from_rows(&rows).expect("square")
}

/// The matrix of cases for `world` ranks at the given per-rank element counts (`None`:
/// 0, 1, 7 and 1 MiB worth of the data type plus 3). Both placements are covered for small
/// sizes; large ones alternate to keep the run short.
pub fn cases(world: u32, counts: Option<&[u64]>) -> Vec<Case> {
    let mut out = Vec::new();
    let mut k = 0usize;
    for c in Collective::ALL {
        let root = world / 2;
        for algorithm in algorithms(c, world, root) {
            for dtype in DType::ALL {
                let op = ReduceOp::ALL[k % ReduceOp::ALL.len()];
                let mib = (1u64 << 20) / dtype.size() as u64 + 3;
                let sizes: Vec<u64> = match counts {
                    Some(s) => s.to_vec(),
                    None => vec![0, 1, 7, mib],
                };
                for count in sizes {
                    let count = if c == Collective::Barrier { 0 } else { count };
                    let mut spec = if c == Collective::AllToAllV {
                        CollectiveSpec::all_to_all_v(matrix(world, count))
                    } else {
                        CollectiveSpec::new(c, world, count).with_root(root)
                    };
                    spec.dtype = dtype;
                    spec.op = op;
                    let large = count > 1024;
                    let chunks = if large { 4 } else { 1 + (k % 2) as u32 };
                    let placements: &[Placement] = match (c.has_in_place(), large) {
                        (false, _) => &[Placement::OutOfPlace],
                        (true, false) => &[Placement::OutOfPlace, Placement::InPlace],
                        (true, true) if k % 2 == 0 => &[Placement::InPlace],
                        (true, true) => &[Placement::OutOfPlace],
                    };
                    for &placement in placements {
                        out.push(Case {
                            spec: spec.clone(),
                            algorithm: algorithm.clone(),
                            params: PlanParams::default().with_chunks(chunks),
                            placement,
                        });
                    }
                    k += 1;
                    if c == Collective::Barrier {
                        break;
                    }
                }
                if c == Collective::Barrier {
                    break;
                }
            }
        }
    }
    out
}

/// splitmix64: inputs are a function of (seed, rank) only, so every rank can compute
/// every other rank's input for the reference.
fn values<T: Element>(spec: &CollectiveSpec, rank: u32, seed: u64) -> Vec<T> {
    let mut x = seed ^ (rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..spec.input_len(rank))
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if T::DTYPE.is_float() {
                // Fractions of varied magnitude: reductions round, so order would matter.
                T::from_f64((z % 2_000_001) as f64 / 1000.0 - 1000.0)
            } else {
                T::from_i64(z as i64)
            }
        })
        .collect()
}

fn run_typed<T: Dtype>(
    comm: &mut Communicator,
    case: &Case,
    plan: &Plan,
    seed: u64,
) -> Result<(), String> {
    let spec = plan.spec();
    let rank = comm.rank();
    let inputs: Vec<Vec<T>> = (0..spec.world)
        .map(|r| values::<T>(spec, r, seed))
        .collect();
    let want = execute(plan, case.placement, &inputs).map_err(|e| format!("reference: {e}"))?;
    let got: Vec<T> = match case.placement {
        Placement::OutOfPlace => {
            let mut out = vec![T::default(); spec.output_len(rank) as usize];
            comm.run_plan(plan, &inputs[rank as usize], &mut out)
                .map_err(|e| e.to_string())?;
            out
        }
        Placement::InPlace => {
            let input = &inputs[rank as usize];
            let alias = spec.in_place_alias(rank);
            let (len, at) = match alias {
                Some(a) => (spec.buffer_len(rank, a.outer, 0), a),
                None => {
                    let mut buf = input.clone();
                    buf.resize(
                        spec.input_len(rank).max(spec.output_len(rank)) as usize,
                        T::default(),
                    );
                    comm.run_plan_in_place(plan, &mut buf)
                        .map_err(|e| e.to_string())?;
                    buf.truncate(spec.output_len(rank) as usize);
                    return compare(rank, &buf, &want[rank as usize]);
                }
            };
            let mut buf = vec![T::default(); len as usize];
            if at.inner == topoccl_plan::Buf::Input {
                buf[at.offset as usize..at.offset as usize + input.len()].copy_from_slice(input);
            } else {
                buf.copy_from_slice(input);
            }
            comm.run_plan_in_place(plan, &mut buf)
                .map_err(|e| e.to_string())?;
            if at.inner == topoccl_plan::Buf::Output {
                let out = spec.output_len(rank) as usize;
                buf[at.offset as usize..at.offset as usize + out].to_vec()
            } else {
                buf
            }
        }
    };
    compare(rank, &got, &want[rank as usize])
}

fn compare<T: Dtype>(rank: u32, got: &[T], want: &[T]) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "rank {rank}: {} elements, expected {}",
            got.len(),
            want.len()
        ));
    }
    let g: &[u8] = bytemuck::cast_slice(got);
    let w: &[u8] = bytemuck::cast_slice(want);
    if g != w {
        let i = got
            .iter()
            .zip(want)
            .position(|(a, b)| bytemuck::bytes_of(a) != bytemuck::bytes_of(b))
            .unwrap_or(0);
        return Err(format!(
            "rank {rank}: element {i} is {:?}, the reference executor says {:?}",
            got[i], want[i]
        ));
    }
    Ok(())
}

/// Runs one case on every rank (all ranks must call it with the same case and seed).
pub fn run_case(comm: &mut Communicator, case: &Case, seed: u64) -> Result<(), String> {
    let plan = build(case.spec.clone(), case.algorithm.clone(), case.params)
        .map_err(|e| format!("plan: {e}"))?;
    match case.spec.dtype {
        DType::F32 => run_typed::<f32>(comm, case, &plan, seed),
        DType::F64 => run_typed::<f64>(comm, case, &plan, seed),
        DType::F16 => run_typed::<f16>(comm, case, &plan, seed),
        DType::BF16 => run_typed::<bf16>(comm, case, &plan, seed),
        DType::I32 => run_typed::<i32>(comm, case, &plan, seed),
        DType::I64 => run_typed::<i64>(comm, case, &plan, seed),
        DType::U8 => run_typed::<u8>(comm, case, &plan, seed),
    }
}

/// What a run of the matrix saw on this rank.
#[derive(Debug, Default)]
pub struct Outcome {
    pub passed: usize,
    pub failed: Vec<String>,
    pub elapsed: Duration,
}

/// Runs every case; stops at the first failure that breaks the communicator (a wrong
/// result does not, so the run goes on and reports every wrong case).
pub fn run_all(comm: &mut Communicator, cases: &[Case], seed: u64) -> Outcome {
    run_all_with(comm, cases, seed, |_, _| {})
}

/// [`run_all`], calling `before(i, case)` as each case starts (a progress report).
pub fn run_all_with(
    comm: &mut Communicator,
    cases: &[Case],
    seed: u64,
    mut before: impl FnMut(usize, &Case),
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome::default();
    for (i, case) in cases.iter().enumerate() {
        before(i, case);
        match run_case(comm, case, seed.wrapping_add(i as u64)) {
            Ok(()) => out.passed += 1,
            Err(e) => {
                let broken = !e.starts_with("rank ");
                out.failed
                    .push(format!("case {i} ({}): {e}", case.describe()));
                if broken {
                    break;
                }
            }
        }
    }
    out.elapsed = start.elapsed();
    out
}
