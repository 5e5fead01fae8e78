//! Plan generation and verification at scale, with peak heap memory: for ring, rhd, tree
//! and hier all-reduce at 1,024 and 16,384 ranks, the time to build a plan and produce its
//! first round, to walk every round of every rank, and to verify it (in and out of place).
//! Each figure is the median of several runs; memory is the peak heap growth during the
//! step, counted by this binary's allocator.
//!
//! `cargo bench -p topoccl-plan --bench scale` (add `-- quick` for one run per figure).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use topoccl_plan::{
    build, verify, Algorithm, Collective, CollectiveSpec, Hierarchy, Plan, PlanParams,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` `runs` times; returns the median time and the largest peak heap growth.
fn measure<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut peak = 0;
    for _ in 0..runs {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let t = Instant::now();
        std::hint::black_box(f());
        times.push(t.elapsed());
        peak = peak.max(PEAK.load(Ordering::Relaxed) - base);
    }
    times.sort();
    (times[times.len() / 2], peak)
}

fn fmt_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_bytes(b: usize) -> String {
    let b = b as f64;
    if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    }
}

fn plan(p: u32, algo: &Algorithm) -> Plan {
    let spec = CollectiveSpec::new(Collective::AllReduce, p, 4 << 20);
    build(spec, algo.clone(), PlanParams::default()).unwrap()
}

/// Walks every round of every rank, round by round, as the simulator will.
fn walk(plan: &Plan) -> u64 {
    let mut ops = Vec::new();
    let mut n = 0u64;
    for round in 0..plan.rounds() {
        ops.clear();
        plan.round_ops(round, &mut ops);
        n += ops.len() as u64;
    }
    n
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let runs = |slow: bool| if quick || slow { 3 } else { 7 };
    println!("| ranks | algorithm | rounds | ops | build + first round | memory | walk all rounds | memory | verify (both placements) | memory |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for p in [1024u32, 16_384] {
        let algos = [
            Algorithm::Ring,
            Algorithm::Rabenseifner,
            Algorithm::DoubleBinaryTree,
            Algorithm::Hierarchical(Box::new(
                Hierarchy::contiguous(p, 8, Algorithm::Ring, Algorithm::Rabenseifner).unwrap(),
            )),
        ];
        for algo in &algos {
            let (first, first_mem) = measure(runs(false), || {
                let plan = plan(p, algo);
                let mut ops = Vec::new();
                plan.round_ops(0, &mut ops);
                ops.len()
            });
            let built = plan(p, algo);
            let slow = p > 1024 && matches!(algo, Algorithm::Ring);
            let mut ops = 0;
            let (walked, walk_mem) = measure(runs(slow), || {
                ops = walk(&built);
                ops
            });
            // The symbolic state of a flat ring is p² segments (every rank holds p partial
            // sums mid-way): about 10^9 bytes per 4,096² — out of reach at 16,384 ranks.
            let verified = if slow {
                "not run: p² symbolic state".to_string() + " | –"
            } else {
                let (t, m) = measure(runs(p > 1024), || verify(&built).unwrap());
                format!("{} | {}", fmt_time(t), fmt_bytes(m))
            };
            println!(
                "| {p} | {} | {} | {ops} | {} | {} | {} | {} | {verified} |",
                algo.name(),
                built.rounds(),
                fmt_time(first),
                fmt_bytes(first_mem),
                fmt_time(walked),
                fmt_bytes(walk_mem),
            );
        }
    }
}
