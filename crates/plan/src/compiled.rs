//! One rank's program compiled once and run many times.
//!
//! A [`crate::machine::RankMachine`] generates its program while it runs: it emits each
//! round, resolves in-place aliases, tracks hazards and numbers messages per link, every
//! time. A runtime calling the same collective over and over can do that work once:
//! [`CompiledProgram::compile`] walks the whole program with the same code
//! ([`crate::machine::ProgramWalk`]) and keeps, per op in program order, the resolved op,
//! its link sequence number, the earlier ops it waits for and the later ops that wait for
//! it. A [`CompiledMachine`] runs it with flat per-call state (dependency counters, done
//! flags) and hands out exactly what a `RankMachine` would, in the same order: the same
//! lookahead window of whole rounds, the same indices and link numbers, in-place self-copies
//! completed without being handed out. [`CompiledMachine::restart`] runs the program again
//! without allocating.
//!
//! Compiling holds the whole program in memory, so programs longer than
//! [`COMPILE_LIMIT_OPS`] ops (or rounds) are not compiled: run a `RankMachine` instead.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::ir::{Op, Rank};
use crate::machine::{is_self_copy, ProgramWalk, ReadyOp};
use crate::schedule::Plan;
use crate::spec::Placement;

/// The most ops (and rounds) a compiled program holds; longer programs are not compiled.
pub const COMPILE_LIMIT_OPS: usize = 65_536;

/// One rank's whole program under one placement, with its dependency graph.
#[derive(Clone, Debug)]
pub struct CompiledProgram {
    rank: Rank,
    placement: Placement,
    /// The ops in program order, slices resolved for the placement.
    ops: Vec<Op>,
    link_seq: Vec<u32>,
    /// Round `r`'s ops are `round_start[r]..round_start[r + 1]`.
    round_start: Vec<u32>,
    /// Op `i` waits for `deps[dep_start[i]..dep_start[i + 1]]` (increasing, distinct).
    dep_start: Vec<u32>,
    deps: Vec<u32>,
    /// The number of ops each op waits for: a machine's counters when it starts.
    dep_count: Vec<u32>,
    /// Op `i` is waited for by `dependents[dependent_start[i]..dependent_start[i + 1]]`
    /// (increasing).
    dependent_start: Vec<u32>,
    dependents: Vec<u32>,
}

impl CompiledProgram {
    /// Compiles `rank`'s program of `plan` under `placement`; `None` when the rank is not
    /// in the plan's world or the program has more than [`COMPILE_LIMIT_OPS`] ops or
    /// rounds (run a [`crate::machine::RankMachine`] instead).
    pub fn compile(plan: &Plan, rank: Rank, placement: Placement) -> Option<CompiledProgram> {
        let rounds = plan.rounds();
        if rank >= plan.world() || rounds as usize > COMPILE_LIMIT_OPS {
            return None;
        }
        let mut walk = ProgramWalk::new(plan, rank, placement);
        let mut ops = Vec::new();
        let mut link_seq = Vec::new();
        let mut round_start = Vec::with_capacity(rounds as usize + 1);
        let mut dep_start = vec![0u32];
        let mut deps: Vec<u32> = Vec::new();
        let mut over = false;
        round_start.push(0);
        for round in 0..rounds {
            walk.round(round, |op, seq, found| {
                if over || ops.len() >= COMPILE_LIMIT_OPS {
                    over = true;
                    return;
                }
                let from = deps.len();
                deps.extend(found.iter().map(|a| a.index));
                deps[from..].sort_unstable();
                let mut kept = from;
                for k in from..deps.len() {
                    if kept == from || deps[kept - 1] != deps[k] {
                        deps[kept] = deps[k];
                        kept += 1;
                    }
                }
                deps.truncate(kept);
                ops.push(op);
                link_seq.push(seq);
                dep_start.push(deps.len() as u32);
            });
            if over {
                return None;
            }
            round_start.push(ops.len() as u32);
        }
        let n = ops.len();
        let dep_count: Vec<u32> = dep_start.windows(2).map(|w| w[1] - w[0]).collect();
        // Reverse edges, by counting: each op's dependents come out in program order.
        let mut dependent_start = vec![0u32; n + 1];
        for &d in &deps {
            dependent_start[d as usize + 1] += 1;
        }
        for i in 0..n {
            dependent_start[i + 1] += dependent_start[i];
        }
        let mut fill: Vec<u32> = dependent_start[..n].to_vec();
        let mut dependents = vec![0u32; deps.len()];
        for i in 0..n {
            for &d in &deps[dep_start[i] as usize..dep_start[i + 1] as usize] {
                let at = &mut fill[d as usize];
                dependents[*at as usize] = i as u32;
                *at += 1;
            }
        }
        Some(CompiledProgram {
            rank,
            placement,
            ops,
            link_seq,
            round_start,
            dep_start,
            deps,
            dep_count,
            dependent_start,
            dependents,
        })
    }

    pub fn rank(&self) -> Rank {
        self.rank
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Ops in the program.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Rounds of the plan (some may have no ops for this rank).
    pub fn rounds(&self) -> u32 {
        (self.round_start.len() - 1) as u32
    }

    /// The ops in program order, slices resolved for the placement.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Op `i`'s position on its link (sends and receives; 0 for local ops).
    pub fn link_seq(&self, i: usize) -> u32 {
        self.link_seq[i]
    }

    /// The program indices of round `round`'s ops.
    pub fn round_ops(&self, round: u32) -> Range<usize> {
        let r = round as usize;
        self.round_start[r] as usize..self.round_start[r + 1] as usize
    }

    /// The earlier ops op `i` waits for, in increasing order.
    pub fn deps(&self, i: usize) -> &[u32] {
        &self.deps[self.dep_start[i] as usize..self.dep_start[i + 1] as usize]
    }

    /// The later ops that wait for op `i`, in increasing order.
    pub fn dependents(&self, i: usize) -> &[u32] {
        &self.dependents[self.dependent_start[i] as usize..self.dependent_start[i + 1] as usize]
    }
}

/// A run of a [`CompiledProgram`]: [`crate::machine::RankMachine`]'s interface and
/// behaviour, on flat state that [`Self::restart`] reuses.
#[derive(Debug)]
pub struct CompiledMachine {
    program: Arc<CompiledProgram>,
    lookahead: u32,
    next_round: u32,
    /// Ops of the rounds admitted so far: `0..admitted`.
    admitted: u32,
    /// The first op not completed (`admitted` when every admitted op has).
    oldest: u32,
    deps_left: Vec<u32>,
    done: Vec<bool>,
    ready: VecDeque<u32>,
    completed: u64,
}

impl CompiledMachine {
    /// Starts running `program`; `lookahead ≥ 1` rounds may be in flight beyond the oldest
    /// unfinished one, as for [`crate::machine::RankMachine::new`].
    pub fn new(program: Arc<CompiledProgram>, lookahead: u32) -> Self {
        let mut m = CompiledMachine {
            program,
            lookahead: lookahead.max(1),
            next_round: 0,
            admitted: 0,
            oldest: 0,
            deps_left: Vec::new(),
            done: Vec::new(),
            ready: VecDeque::new(),
            completed: 0,
        };
        m.restart();
        m
    }

    /// Runs the program again from the start, whatever state the last run ended in.
    pub fn restart(&mut self) {
        self.next_round = 0;
        self.admitted = 0;
        self.oldest = 0;
        self.completed = 0;
        self.deps_left.clear();
        self.deps_left.extend_from_slice(&self.program.dep_count);
        self.done.clear();
        self.done.resize(self.program.len(), false);
        self.ready.clear();
        self.admit();
    }

    pub fn program(&self) -> &Arc<CompiledProgram> {
        &self.program
    }

    pub fn lookahead(&self) -> u32 {
        self.lookahead
    }

    pub fn rank(&self) -> Rank {
        self.program.rank
    }

    /// The round of the oldest unfinished op (or the next round to admit).
    pub fn current_round(&self) -> u32 {
        if self.oldest < self.admitted {
            self.program.ops[self.oldest as usize].round
        } else {
            self.next_round
        }
    }

    /// Whether every op of the program has completed.
    pub fn is_done(&self) -> bool {
        self.next_round >= self.program.rounds() && self.oldest as usize == self.program.len()
    }

    /// Ops completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The next op whose dependencies have all completed; each op is handed out once.
    pub fn next_ready(&mut self) -> Option<ReadyOp> {
        while let Some(i) = self.ready.pop_front() {
            let op = self.program.ops[i as usize];
            if is_self_copy(&op) {
                self.complete(i as u64);
                continue;
            }
            return Some(ReadyOp {
                index: i as u64,
                op,
                link_seq: self.program.link_seq[i as usize],
            });
        }
        None
    }

    /// Reports that the op at program `index` (handed out by [`Self::next_ready`]) finished.
    /// An index that is not admitted, or already completed, is ignored.
    pub fn complete(&mut self, index: u64) {
        let valid = index < self.admitted as u64 && !self.done[index as usize];
        debug_assert!(
            valid,
            "op #{index} completed twice or before it was admitted"
        );
        if !valid {
            return;
        }
        let i = index as usize;
        self.done[i] = true;
        self.completed += 1;
        let program = &*self.program;
        for &d in program.dependents(i) {
            let left = &mut self.deps_left[d as usize];
            *left -= 1;
            // Ops not admitted yet are queued when their round is.
            if *left == 0 && d < self.admitted {
                self.ready.push_back(d);
            }
        }
        while self.oldest < self.admitted && self.done[self.oldest as usize] {
            self.oldest += 1;
        }
        self.admit();
    }

    /// Admits whole rounds while the window allows.
    fn admit(&mut self) {
        let rounds = self.program.rounds();
        while self.next_round < rounds
            && self.next_round < self.current_round().saturating_add(self.lookahead)
        {
            let end = self.program.round_start[self.next_round as usize + 1];
            self.next_round += 1;
            for i in self.admitted..end {
                if self.deps_left[i as usize] == 0 {
                    self.ready.push_back(i);
                }
            }
            self.admitted = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::RankMachine;
    use crate::{build, Algorithm, Collective, CollectiveSpec, OpKind, PlanParams};
    use proptest::prelude::*;

    /// Both machines of one rank.
    struct Pair {
        plain: RankMachine,
        compiled: CompiledMachine,
    }

    impl Pair {
        /// The next ready op of both, which must be the same.
        fn next_ready(&mut self) -> Option<ReadyOp> {
            let a = self.plain.next_ready();
            let b = self.compiled.next_ready();
            assert_eq!(a, b, "rank {}", self.plain.rank());
            assert_eq!(self.plain.current_round(), self.compiled.current_round());
            assert_eq!(self.plain.completed(), self.compiled.completed());
            a
        }

        fn complete(&mut self, index: u64) {
            self.plain.complete(index);
            self.compiled.complete(index);
            assert_eq!(self.plain.is_done(), self.compiled.is_done());
            assert_eq!(self.plain.current_round(), self.compiled.current_round());
        }
    }

    /// splitmix64: the test's choices of which pending op completes next.
    fn draw(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49eb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Runs every rank's plain and compiled machines side by side with an in-memory
    /// exchange, completing pending ops in an order drawn from `seed`, and checks that
    /// both hand out the same ops in the same sequence and finish. `restarts` runs the
    /// compiled machines that many more times, restarted, on the same draws.
    fn run_both(plan: &Plan, placement: Placement, lookahead: u32, seed: u64, restarts: u32) {
        let p = plan.world();
        let programs: Vec<Arc<CompiledProgram>> = (0..p)
            .map(|r| Arc::new(CompiledProgram::compile(plan, r, placement).expect("compiles")))
            .collect();
        let mut compiled: Vec<CompiledMachine> = programs
            .iter()
            .map(|prog| CompiledMachine::new(prog.clone(), lookahead))
            .collect();
        for run in 0..=restarts {
            let mut ms: Vec<Pair> = compiled
                .drain(..)
                .enumerate()
                .map(|(r, mut c)| {
                    if run > 0 {
                        c.restart();
                    }
                    Pair {
                        plain: RankMachine::new(plan, r as Rank, placement, lookahead),
                        compiled: c,
                    }
                })
                .collect();
            drive_pairs(&mut ms, seed, lookahead);
            compiled = ms.into_iter().map(|m| m.compiled).collect();
        }
    }

    fn drive_pairs(ms: &mut [Pair], seed: u64, lookahead: u32) {
        use std::collections::HashMap;
        let p = ms.len() as u32;
        let mut state = seed;
        // Posted, unmatched transfers by (src, dst, channel, seq), and matched or local ops
        // waiting to be completed, as (rank, index) pairs.
        let mut sends: HashMap<(u32, u32, u16, u32), u64> = HashMap::new();
        let mut recvs: HashMap<(u32, u32, u16, u32), u64> = HashMap::new();
        let mut pending: Vec<(u32, u64)> = Vec::new();
        loop {
            let mut progressed = false;
            for r in 0..p {
                while let Some(ready) = ms[r as usize].next_ready() {
                    progressed = true;
                    match ready.op.kind {
                        OpKind::Send { peer, .. } => {
                            let key = (r, peer, ready.op.channel, ready.link_seq);
                            if let Some(ri) = recvs.remove(&key) {
                                pending.push((r, ready.index));
                                pending.push((peer, ri));
                            } else {
                                sends.insert(key, ready.index);
                            }
                        }
                        OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                            let key = (peer, r, ready.op.channel, ready.link_seq);
                            if let Some(si) = sends.remove(&key) {
                                pending.push((peer, si));
                                pending.push((r, ready.index));
                            } else {
                                recvs.insert(key, ready.index);
                            }
                        }
                        _ => pending.push((r, ready.index)),
                    }
                }
            }
            // Complete a few pending ops, chosen at random.
            let n = (draw(&mut state) % 4 + 1) as usize;
            for _ in 0..n.min(pending.len()) {
                let k = (draw(&mut state) % pending.len() as u64) as usize;
                let (r, i) = pending.swap_remove(k);
                ms[r as usize].complete(i);
                progressed = true;
            }
            if pending.is_empty() && ms.iter().all(|m| m.plain.is_done()) {
                assert!(ms.iter().all(|m| m.compiled.is_done()));
                assert!(sends.is_empty() && recvs.is_empty());
                break;
            }
            assert!(progressed, "deadlock with lookahead {lookahead}");
        }
    }

    fn plans() -> Vec<(Collective, Algorithm)> {
        vec![
            (Collective::AllReduce, Algorithm::Ring),
            (Collective::AllReduce, Algorithm::Rabenseifner),
            (Collective::AllReduce, Algorithm::RecursiveDoubling),
            (Collective::AllReduce, Algorithm::DoubleBinaryTree),
            (Collective::AllGather, Algorithm::Ring),
            (Collective::AllGather, Algorithm::Bruck),
            (Collective::ReduceScatter, Algorithm::Ring),
            (Collective::AllToAll, Algorithm::Bruck),
            (Collective::AllToAll, Algorithm::Direct),
            (Collective::AllToAll, Algorithm::Pairwise),
            (Collective::Broadcast, Algorithm::Binomial),
            (Collective::Reduce, Algorithm::Binomial),
            (Collective::Gather, Algorithm::Binomial),
            (Collective::Scatter, Algorithm::Binomial),
            (Collective::Barrier, Algorithm::Dissemination),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn compiled_machine_hands_out_what_the_rank_machine_does(
            which in 0usize..15,
            p in 2u32..9,
            count in 1u64..64,
            chunks in 1u32..4,
            channels in 1u16..3,
            in_place in any::<bool>(),
            lookahead in prop_oneof![Just(1u32), Just(2), Just(3), Just(8)],
            seed in any::<u64>(),
        ) {
            let (c, algo) = plans()[which].clone();
            let count = if c == Collective::Barrier { 0 } else { count };
            let spec = CollectiveSpec::new(c, p, count);
            let params = PlanParams::default().with_chunks(chunks).with_channels(channels);
            // Some combinations are not plannable (an algorithm's world-size needs): skip.
            let Ok(plan) = build(spec, algo, params) else { return Ok(()); };
            let placement = if in_place { Placement::InPlace } else { Placement::OutOfPlace };
            run_both(&plan, placement, lookahead, seed, 1);
        }
    }

    #[test]
    fn every_listed_plan_runs_alike_in_both_placements() {
        for (c, algo) in plans() {
            for p in [2u32, 3, 4, 7] {
                let count = if c == Collective::Barrier { 0 } else { 29 };
                let spec = CollectiveSpec::new(c, p, count);
                let Ok(plan) = build(spec, algo.clone(), PlanParams::default().with_chunks(2))
                else {
                    continue;
                };
                for placement in [Placement::OutOfPlace, Placement::InPlace] {
                    for lookahead in [1, 2, 8] {
                        run_both(
                            &plan,
                            placement,
                            lookahead,
                            p as u64 * 7 + lookahead as u64,
                            2,
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn in_place_self_copies_are_never_handed_out() {
        // In place, an all-gather's own block is already where it belongs: the copy of it
        // is a copy onto itself.
        let spec = CollectiveSpec::new(Collective::AllGather, 4, 8);
        let plan = build(spec, Algorithm::Ring, PlanParams::default()).unwrap();
        let prog = CompiledProgram::compile(&plan, 1, Placement::InPlace).unwrap();
        let self_copies = prog.ops().iter().filter(|op| is_self_copy(op)).count();
        assert!(self_copies > 0, "the test needs a self-copy");
        let mut m = CompiledMachine::new(Arc::new(prog), 8);
        while let Some(r) = m.next_ready() {
            assert!(!is_self_copy(&r.op));
        }
        run_both(&plan, Placement::InPlace, 1, 3, 1);
    }

    #[test]
    fn dependency_lists_are_sorted_distinct_and_mirrored() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 5, 40);
        let plan = build(spec, Algorithm::Ring, PlanParams::default().with_chunks(3)).unwrap();
        let prog = CompiledProgram::compile(&plan, 2, Placement::InPlace).unwrap();
        let mut edges = 0;
        for i in 0..prog.len() {
            let deps = prog.deps(i);
            assert!(deps.windows(2).all(|w| w[0] < w[1]));
            assert!(deps.iter().all(|&d| (d as usize) < i));
            for &d in deps {
                assert!(prog.dependents(d as usize).contains(&(i as u32)));
            }
            assert!(prog.dependents(i).windows(2).all(|w| w[0] < w[1]));
            edges += deps.len();
        }
        assert!(edges > 0);
        let total: usize = (0..prog.len()).map(|i| prog.dependents(i).len()).sum();
        assert_eq!(total, edges);
        let per_round: usize = (0..prog.rounds()).map(|r| prog.round_ops(r).len()).sum();
        assert_eq!(per_round, prog.len());
    }

    #[test]
    fn programs_over_the_limit_are_not_compiled() {
        // A ring all-reduce on 2 ranks has 2 rounds of `chunks` sends and receives (and
        // reductions) per rank: far more than the limit with this many chunks.
        let spec = CollectiveSpec::new(Collective::AllReduce, 2, 1 << 20);
        let chunks = (COMPILE_LIMIT_OPS as u32).min(PlanParams::MAX_CHUNKS);
        let plan = build(
            spec,
            Algorithm::Ring,
            PlanParams::default().with_chunks(chunks),
        )
        .unwrap();
        let ops = plan.program(0).len();
        assert!(ops > COMPILE_LIMIT_OPS, "{ops} ops");
        assert!(CompiledProgram::compile(&plan, 0, Placement::OutOfPlace).is_none());
        // A rank outside the world has no program.
        let small = build(
            CollectiveSpec::new(Collective::AllReduce, 2, 8),
            Algorithm::Ring,
            PlanParams::default(),
        )
        .unwrap();
        assert!(CompiledProgram::compile(&small, 2, Placement::OutOfPlace).is_none());
        assert!(CompiledProgram::compile(&small, 1, Placement::OutOfPlace).is_some());
    }

    #[test]
    fn composed_plans_run_alike() {
        for p in [4u32, 6, 8] {
            let hier = Algorithm::Hierarchical(Box::new(
                crate::Hierarchy::contiguous(p, 2, Algorithm::Ring, Algorithm::Rabenseifner)
                    .unwrap(),
            ));
            let tree = Algorithm::ParentTree {
                parents: (0..p).map(|r| r.checked_sub(1).map(|q| q / 2)).collect(),
            };
            for (c, algo) in [
                (Collective::AllReduce, hier),
                (Collective::Broadcast, tree.clone()),
                (Collective::Reduce, tree),
            ] {
                let spec = CollectiveSpec::new(c, p, 24);
                let params = PlanParams::default().with_chunks(3).with_channels(2);
                let plan = build(spec, algo, params).unwrap();
                for placement in [Placement::OutOfPlace, Placement::InPlace] {
                    for lookahead in [1, 4] {
                        run_both(&plan, placement, lookahead, p as u64, 1);
                    }
                }
            }
        }
    }

    #[test]
    fn restart_does_not_allocate_more() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 2, 8);
        let plan = build(spec, Algorithm::RecursiveDoubling, PlanParams::default()).unwrap();
        let prog = Arc::new(CompiledProgram::compile(&plan, 0, Placement::OutOfPlace).unwrap());
        assert!(!prog.is_empty());
        let mut m = CompiledMachine::new(prog, 8);
        // Run alone: complete every op handed out (the machine's bookkeeping needs no
        // peer).
        let run = |m: &mut CompiledMachine| {
            let mut handed = Vec::new();
            while let Some(r) = m.next_ready() {
                handed.push(r);
                m.complete(r.index);
            }
            assert!(m.is_done());
            handed
        };
        let first = run(&mut m);
        let caps = (
            m.deps_left.capacity(),
            m.done.capacity(),
            m.ready.capacity(),
        );
        for _ in 0..3 {
            m.restart();
            assert!(!m.is_done());
            assert_eq!(run(&mut m), first);
            assert_eq!(
                caps,
                (
                    m.deps_left.capacity(),
                    m.done.capacity(),
                    m.ready.capacity()
                )
            );
        }
    }
}
