//! Plan execution as a state machine, for one rank: the part of executing a plan that does
//! not touch data or the network. A shell (the TCP runtime; the simulator's cross-check on
//! virtual time, `topoccl_sim::machines`) asks it for ops that may start, performs them,
//! and reports completions; the machine keeps program order, dependencies and flow control.
//!
//! Ops are admitted round by round, at most `lookahead` rounds beyond the oldest round with
//! unfinished ops, so memory is bounded by a few rounds of the program. Because the verifier
//! checks that every round's transfers can be posted at once even with unbuffered sends,
//! admitting whole rounds never deadlocks. Each admitted op depends on the earlier ops it
//! conflicts with ([`crate::hazard`]); it is handed out once they have completed.
//!
//! [`ProgramWalk`] generates a rank's program (emitting, resolving in-place aliases, hazard
//! tracking, link numbering); [`RankMachine`] walks it a window at a time, and
//! [`crate::compiled::CompiledProgram`] walks it once, whole, for machines that run the
//! same program many times.

use std::collections::{HashMap, VecDeque};

use smallvec::SmallVec;

use crate::exec::driver::{alias_for, resolve};
use crate::hazard::{Access, HazardTracker};
use crate::ir::{Op, OpKind, Rank};
use crate::schedule::Plan;
use crate::spec::{Alias, Placement};

/// An op ready to run, as handed to the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyOp {
    /// Position in the rank's program.
    pub index: u64,
    /// The op, slices resolved to physical buffers for the placement.
    pub op: Op,
    /// For sends and receives: the message's position on its link (peer, channel), from 0.
    pub link_seq: u32,
}

/// Whether an op is a copy onto itself (an in-place alias): it does nothing but still
/// orders its neighbours, so machines complete it as soon as it may run, without handing
/// it out.
pub(crate) fn is_self_copy(op: &Op) -> bool {
    matches!(op.kind, OpKind::Copy { src, dst } if src == dst)
}

/// One rank's program as it is generated, round by round: the plan's ops with slices
/// resolved for the placement, the earlier ops each conflicts with, and each transfer's
/// position on its link. The one place these are derived, for every machine.
#[derive(Debug)]
pub(crate) struct ProgramWalk {
    plan: Plan,
    rank: Rank,
    alias: Option<Alias>,
    tracker: HazardTracker,
    deps: Vec<Access>,
    link_seq: HashMap<(bool, Rank, u16), u32>,
    emitted: Vec<Op>,
}

impl ProgramWalk {
    pub(crate) fn new(plan: &Plan, rank: Rank, placement: Placement) -> Self {
        ProgramWalk {
            plan: plan.clone(),
            rank,
            alias: alias_for(plan, placement, rank),
            tracker: HazardTracker::new(),
            deps: Vec::new(),
            link_seq: HashMap::new(),
            emitted: Vec::new(),
        }
    }

    pub(crate) fn rounds(&self) -> u32 {
        self.plan.rounds()
    }

    /// Generates `round` (rounds are walked in order, each once): for each of its ops in
    /// program order, calls `f(op, link_seq, deps)` with the op resolved, its link
    /// sequence number (0 for local ops) and the accesses of the earlier ops it conflicts
    /// with (by program index, counted from 0 over the whole program; unordered, possibly
    /// repeated, never the op itself).
    pub(crate) fn round(&mut self, round: u32, mut f: impl FnMut(Op, u32, &[Access])) {
        self.emitted.clear();
        self.plan.emit(self.rank, round, &mut self.emitted);
        for k in 0..self.emitted.len() {
            let mut op = self.emitted[k];
            op.map_slices(|s| resolve(self.alias, s));
            self.deps.clear();
            self.tracker.record(&op, &mut self.deps);
            let link_seq = match op.kind {
                OpKind::Send { peer, .. } => next_seq(&mut self.link_seq, true, peer, op.channel),
                OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                    next_seq(&mut self.link_seq, false, peer, op.channel)
                }
                _ => 0,
            };
            f(op, link_seq, &self.deps);
        }
    }
}

fn next_seq(
    seqs: &mut HashMap<(bool, Rank, u16), u32>,
    send: bool,
    peer: Rank,
    channel: u16,
) -> u32 {
    let e = seqs.entry((send, peer, channel)).or_insert(0);
    *e += 1;
    *e - 1
}

#[derive(Debug)]
struct Slot {
    op: Op,
    link_seq: u32,
    deps_left: u32,
    dependents: SmallVec<[u64; 4]>,
    done: bool,
}

/// The execution state of one rank's program.
#[derive(Debug)]
pub struct RankMachine {
    walk: ProgramWalk,
    lookahead: u32,
    next_round: u32,
    /// Admitted ops in program order; `slots[0]` has program index `base`.
    slots: VecDeque<Slot>,
    base: u64,
    ready: VecDeque<u64>,
    completed: u64,
}

impl RankMachine {
    /// Starts executing `rank`'s program of `plan`; `lookahead ≥ 1` rounds may be in flight
    /// beyond the oldest unfinished one (see [`crate::PlanParams::in_flight`]).
    pub fn new(plan: &Plan, rank: Rank, placement: Placement, lookahead: u32) -> Self {
        let mut m = RankMachine {
            walk: ProgramWalk::new(plan, rank, placement),
            lookahead: lookahead.max(1),
            next_round: 0,
            slots: VecDeque::new(),
            base: 0,
            ready: VecDeque::new(),
            completed: 0,
        };
        m.admit();
        m
    }

    pub fn rank(&self) -> Rank {
        self.walk.rank
    }

    /// The round of the oldest unfinished op (or the next round to admit).
    pub fn current_round(&self) -> u32 {
        self.slots
            .iter()
            .find(|s| !s.done)
            .map(|s| s.op.round)
            .unwrap_or(self.next_round)
    }

    /// Whether every op of the program has completed.
    pub fn is_done(&self) -> bool {
        self.next_round >= self.walk.rounds() && self.slots.is_empty()
    }

    /// Ops completed so far.
    pub fn completed(&self) -> u64 {
        self.completed
    }

    /// The next op whose dependencies have all completed; each op is handed out once.
    pub fn next_ready(&mut self) -> Option<ReadyOp> {
        while let Some(index) = self.ready.pop_front() {
            let slot = &self.slots[(index - self.base) as usize];
            // A copy onto itself (an in-place alias) does nothing but still orders its
            // neighbours: it completes as soon as it may run.
            if is_self_copy(&slot.op) {
                self.complete(index);
                continue;
            }
            return Some(ReadyOp {
                index,
                op: slot.op,
                link_seq: slot.link_seq,
            });
        }
        None
    }

    /// Reports that the op at program `index` (handed out by [`Self::next_ready`]) finished.
    pub fn complete(&mut self, index: u64) {
        let pos = (index - self.base) as usize;
        let slot = &mut self.slots[pos];
        debug_assert!(!slot.done, "op #{index} completed twice");
        slot.done = true;
        self.completed += 1;
        let dependents = std::mem::take(&mut slot.dependents);
        for d in dependents {
            let s = &mut self.slots[(d - self.base) as usize];
            s.deps_left -= 1;
            if s.deps_left == 0 {
                self.ready.push_back(d);
            }
        }
        while self.slots.front().is_some_and(|s| s.done) {
            self.slots.pop_front();
            self.base += 1;
        }
        self.admit();
    }

    /// Admits whole rounds while the window allows.
    fn admit(&mut self) {
        let rounds = self.walk.rounds();
        while self.next_round < rounds
            && self.next_round < self.current_round().saturating_add(self.lookahead)
        {
            let round = self.next_round;
            self.next_round += 1;
            let (slots, ready, base) = (&mut self.slots, &mut self.ready, self.base);
            self.walk.round(round, |op, link_seq, deps| {
                push(slots, ready, base, op, link_seq, deps)
            });
        }
    }
}

/// Admits the next op of the program: it waits for the admitted, unfinished ops among
/// `deps`.
fn push(
    slots: &mut VecDeque<Slot>,
    ready: &mut VecDeque<u64>,
    base: u64,
    op: Op,
    link_seq: u32,
    deps: &[Access],
) {
    let index = base + slots.len() as u64;
    let mut deps_left = 0;
    for d in deps {
        let d = d.index as u64;
        if d < base {
            continue;
        }
        let s = &mut slots[(d - base) as usize];
        if !s.done && s.dependents.last() != Some(&index) {
            s.dependents.push(index);
            deps_left += 1;
        }
    }
    slots.push_back(Slot {
        op,
        link_seq,
        deps_left,
        dependents: SmallVec::new(),
        done: false,
    });
    if deps_left == 0 {
        ready.push_back(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, Algorithm, Collective, CollectiveSpec, PlanParams};

    /// Drives every rank's machine with an in-memory message exchange, in lock step, and
    /// checks that the programs complete (no deadlock) with bounded windows.
    fn drive(plan: &Plan, lookahead: u32) -> u64 {
        let p = plan.world();
        let mut ms: Vec<RankMachine> = (0..p)
            .map(|r| RankMachine::new(plan, r, Placement::OutOfPlace, lookahead))
            .collect();
        // Posted but unmatched transfers, keyed by (src, dst, channel, seq).
        let mut sends: HashMap<(u32, u32, u16, u32), u64> = HashMap::new();
        let mut recvs: HashMap<(u32, u32, u16, u32), u64> = HashMap::new();
        let mut max_window = 0;
        loop {
            let mut progressed = false;
            for r in 0..p {
                while let Some(ready) = ms[r as usize].next_ready() {
                    progressed = true;
                    match ready.op.kind {
                        OpKind::Send { peer, .. } => {
                            let key = (r, peer, ready.op.channel, ready.link_seq);
                            if let Some(ri) = recvs.remove(&key) {
                                ms[r as usize].complete(ready.index);
                                ms[peer as usize].complete(ri);
                            } else {
                                sends.insert(key, ready.index);
                            }
                        }
                        OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                            let key = (peer, r, ready.op.channel, ready.link_seq);
                            if let Some(si) = sends.remove(&key) {
                                ms[peer as usize].complete(si);
                                ms[r as usize].complete(ready.index);
                            } else {
                                recvs.insert(key, ready.index);
                            }
                        }
                        _ => ms[r as usize].complete(ready.index),
                    }
                    max_window = max_window.max(ms[r as usize].slots.len() as u64);
                }
            }
            if ms.iter().all(|m| m.is_done()) {
                break;
            }
            assert!(progressed, "deadlock with lookahead {lookahead}");
        }
        max_window
    }

    #[test]
    fn rendezvous_execution_completes_with_small_windows() {
        for (c, algo) in [
            (Collective::AllReduce, Algorithm::Ring),
            (Collective::AllReduce, Algorithm::Rabenseifner),
            (Collective::AllReduce, Algorithm::RecursiveDoubling),
            (Collective::AllReduce, Algorithm::DoubleBinaryTree),
            (Collective::AllGather, Algorithm::Bruck),
            (Collective::AllToAll, Algorithm::Bruck),
            (Collective::AllToAll, Algorithm::Direct),
            (Collective::Gather, Algorithm::Binomial),
            (Collective::Barrier, Algorithm::Dissemination),
        ] {
            for p in [2u32, 3, 5, 8, 13] {
                let spec = CollectiveSpec::new(c, p, if c == Collective::Barrier { 0 } else { 37 });
                let plan = build(spec, algo.clone(), PlanParams::default().with_chunks(3)).unwrap();
                for lookahead in [1, 2, 8] {
                    drive(&plan, lookahead);
                }
            }
        }
    }

    #[test]
    fn window_is_bounded_by_lookahead() {
        let spec = CollectiveSpec::new(Collective::AllReduce, 16, 1600);
        let plan = build(spec, Algorithm::Ring, PlanParams::default().with_chunks(4)).unwrap();
        // A ring round has 8 ops per rank (4 sends, 4 receives): a lookahead of 2 rounds
        // keeps at most 16 admitted, whatever the plan's length.
        let w = drive(&plan, 2);
        assert!(w <= 16, "window {w}");
    }
}
