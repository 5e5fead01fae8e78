//! The interpreter every in-memory execution of a plan goes through: it runs each rank's
//! program strictly in order with eager (buffered) sends and blocking receives — the
//! blocking semantics of the plan's order — and checks the plan's structure as it goes.
//! What the ops *do* to data is left to a [`Machine`]: symbolic values for the verifier,
//! real numbers for the reference executor.
//!
//! Structural checks: slices inside their buffers; peers and channels in range; a matched
//! send and receive with the same length and round; no message left unreceived; no
//! deadlock; and (optionally) the round rule that lets every transfer of a round be posted
//! at once with unbuffered sends: no send depends on a receive of its own round and no
//! receive on a send of its own round.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use thiserror::Error;

use crate::hazard::{Access, HazardTracker, Reach};
use crate::ir::{Buf, Op, OpKind, Rank, Slice, Transfer};
use crate::schedule::Plan;
use crate::spec::{Alias, Placement};

/// What executing ops means for the data.
pub(crate) trait Machine {
    type Msg;
    /// Reads the payload of a send from `src` (already resolved to a physical buffer).
    fn read(&mut self, rank: Rank, src: Slice) -> Result<Self::Msg, String>;
    /// Applies a `Recv` or `RecvReduce` (slices resolved) with its payload.
    fn deliver(&mut self, rank: Rank, kind: &OpKind, msg: Self::Msg) -> Result<(), String>;
    /// Applies a `Copy` or `Reduce` (slices resolved; a copy onto itself never arrives).
    fn local(&mut self, rank: Rank, kind: &OpKind) -> Result<(), String>;
}

/// A plan that does not do what it must, with where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct VerifyError {
    pub rank: Option<Rank>,
    /// Position of the op in the rank's program.
    pub op_index: Option<u64>,
    pub op: Option<Op>,
    pub message: String,
}

impl VerifyError {
    pub(crate) fn at(rank: Rank, index: u64, op: Op, message: impl Into<String>) -> Self {
        VerifyError {
            rank: Some(rank),
            op_index: Some(index),
            op: Some(op),
            message: message.into(),
        }
    }

    pub(crate) fn rank(rank: Rank, message: impl Into<String>) -> Self {
        VerifyError {
            rank: Some(rank),
            op_index: None,
            op: None,
            message: message.into(),
        }
    }

    pub(crate) fn plan(message: impl Into<String>) -> Self {
        VerifyError {
            rank: None,
            op_index: None,
            op: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.rank, self.op_index, &self.op) {
            (Some(r), Some(i), Some(op)) => {
                write!(
                    f,
                    "rank {r}, op #{i} ({}): {}",
                    op.to_string().trim(),
                    self.message
                )
            }
            (Some(r), _, _) => write!(f, "rank {r}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

/// Counts of what a run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub ops: u64,
    pub messages: u64,
    pub elements_sent: u64,
    /// Largest number of messages waiting on one link at any time.
    pub max_link_backlog: usize,
}

struct Pending<M> {
    msg: M,
    round: u32,
    len: u64,
    send_index: u64,
}

struct RankState {
    next_round: u32,
    ops: Vec<Op>,
    pos: usize,
    index: u64,
    alias: Option<Alias>,
    scratch: u64,
    hazards: Option<HazardTracker>,
    waiting_on: Option<LinkKey>,
    done: bool,
}

type LinkKey = (Rank, Rank, u16);

/// Maps a logical slice of a rank to the physical buffer it lives in.
pub(crate) fn resolve(alias: Option<Alias>, s: Slice) -> Slice {
    match alias {
        Some(a) if a.inner == s.buf => Slice::new(a.outer, s.off + a.offset, s.len),
        _ => s,
    }
}

/// Runs every rank of `plan` to completion on `machine`.
pub(crate) fn run<M: Machine>(
    plan: &Plan,
    placement: Placement,
    check_rounds: bool,
    machine: &mut M,
) -> Result<RunStats, VerifyError> {
    Driver::<M::Msg>::new(plan, placement, check_rounds).run(machine)
}

/// The alias in effect for a rank under a placement.
pub(crate) fn alias_for(plan: &Plan, placement: Placement, rank: Rank) -> Option<Alias> {
    match placement {
        Placement::InPlace => plan.spec().in_place_alias(rank),
        Placement::OutOfPlace => None,
    }
}

struct Driver<'p, Msg> {
    plan: &'p Plan,
    states: Vec<RankState>,
    links: HashMap<LinkKey, VecDeque<Pending<Msg>>>,
    ready: VecDeque<Rank>,
    stats: RunStats,
    deps: Vec<Access>,
}

impl<'p, Msg> Driver<'p, Msg> {
    fn new(plan: &'p Plan, placement: Placement, check_rounds: bool) -> Self {
        let states = (0..plan.world())
            .map(|r| RankState {
                next_round: 0,
                ops: Vec::new(),
                pos: 0,
                index: 0,
                alias: alias_for(plan, placement, r),
                scratch: plan.scratch_len(r),
                hazards: check_rounds.then(HazardTracker::new),
                waiting_on: None,
                done: false,
            })
            .collect();
        Driver {
            plan,
            states,
            links: HashMap::new(),
            ready: (0..plan.world()).collect(),
            stats: RunStats::default(),
            deps: Vec::new(),
        }
    }

    fn run<M: Machine<Msg = Msg>>(mut self, m: &mut M) -> Result<RunStats, VerifyError> {
        while let Some(rank) = self.ready.pop_front() {
            self.run_rank(rank, m)?;
        }
        let unfinished: Vec<Rank> = (0..self.plan.world())
            .filter(|&r| !self.states[r as usize].done)
            .collect();
        if !unfinished.is_empty() {
            return Err(self.deadlock(&unfinished));
        }
        let mut leftovers: Vec<(&LinkKey, &VecDeque<Pending<Msg>>)> =
            self.links.iter().filter(|(_, q)| !q.is_empty()).collect();
        leftovers.sort_by_key(|(k, _)| **k);
        if let Some(((src, dst, ch), q)) = leftovers.first() {
            let first = q.front().expect("non-empty");
            return Err(VerifyError::rank(
                *src,
                format!(
                    "sent {} message(s) to rank {dst} on channel {ch} that rank {dst} never \
                     receives (the first is op #{} in round {}, {} elements); every send \
                     needs a matching receive",
                    q.len(),
                    first.send_index,
                    first.round,
                    first.len
                ),
            ));
        }
        Ok(self.stats)
    }

    fn deadlock(&self, unfinished: &[Rank]) -> VerifyError {
        let mut lines = Vec::new();
        for &r in unfinished.iter().take(6) {
            let st = &self.states[r as usize];
            let op = &st.ops[st.pos];
            let (src, _, ch) = st.waiting_on.expect("an unfinished rank waits on a link");
            lines.push(format!(
                "rank {r} waits at op #{} (round {}) for a message from rank {src} on channel {ch}",
                st.index, op.round
            ));
        }
        if unfinished.len() > 6 {
            lines.push(format!("… and {} more ranks", unfinished.len() - 6));
        }
        VerifyError::plan(format!(
            "deadlock: no rank can make progress with blocking receives in program order; {}",
            lines.join("; ")
        ))
    }

    /// The op at the rank's cursor, emitting the next non-empty round when needed.
    fn current(&mut self, rank: Rank) -> Result<Option<Op>, VerifyError> {
        let rounds = self.plan.rounds();
        let st = &mut self.states[rank as usize];
        while st.pos == st.ops.len() {
            if st.next_round >= rounds {
                st.done = true;
                return Ok(None);
            }
            st.ops.clear();
            st.pos = 0;
            let round = st.next_round;
            self.plan.emit(rank, round, &mut st.ops);
            st.next_round += 1;
            if let Some(op) = st.ops.iter().find(|op| op.round != round) {
                return Err(VerifyError::rank(
                    rank,
                    format!(
                        "the generator emitted an op tagged round {} while emitting round \
                         {round} ({op})",
                        op.round
                    ),
                ));
            }
        }
        Ok(Some(st.ops[st.pos]))
    }

    fn advance(&mut self, rank: Rank) {
        let st = &mut self.states[rank as usize];
        st.pos += 1;
        st.index += 1;
        self.stats.ops += 1;
    }

    fn run_rank<M: Machine<Msg = Msg>>(
        &mut self,
        rank: Rank,
        m: &mut M,
    ) -> Result<(), VerifyError> {
        self.states[rank as usize].waiting_on = None;
        while let Some(op) = self.current(rank)? {
            let index = self.states[rank as usize].index;
            let err = |msg: String| VerifyError::at(rank, index, op, msg);
            let resolved = self.check_op(rank, &op).map_err(err)?;
            match resolved.kind {
                OpKind::Send { peer, src } => {
                    self.check_round_rule(rank, &resolved).map_err(err)?;
                    let msg = m.read(rank, src).map_err(err)?;
                    let key = (rank, peer, op.channel);
                    let q = self.links.entry(key).or_default();
                    q.push_back(Pending {
                        msg,
                        round: op.round,
                        len: src.len,
                        send_index: index,
                    });
                    self.stats.max_link_backlog = self.stats.max_link_backlog.max(q.len());
                    self.stats.messages += 1;
                    self.stats.elements_sent += src.len;
                    let waiter = &mut self.states[peer as usize];
                    if waiter.waiting_on == Some(key) {
                        waiter.waiting_on = None;
                        self.ready.push_back(peer);
                    }
                }
                OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                    let key = (peer, rank, op.channel);
                    let Some(p) = self.links.get_mut(&key).and_then(|q| q.pop_front()) else {
                        self.states[rank as usize].waiting_on = Some(key);
                        return Ok(());
                    };
                    if p.len != op.len() {
                        return Err(err(format!(
                            "receives {} elements but the matching send from rank {peer} \
                             (its op #{}) has {}",
                            op.len(),
                            p.send_index,
                            p.len
                        )));
                    }
                    if p.round != op.round {
                        return Err(err(format!(
                            "is in round {} but the matching send from rank {peer} (its op \
                             #{}) is in round {}; a transfer's two ends must share a round",
                            op.round, p.send_index, p.round
                        )));
                    }
                    self.check_round_rule(rank, &resolved).map_err(err)?;
                    m.deliver(rank, &resolved.kind, p.msg).map_err(err)?;
                }
                OpKind::Copy { src, dst } if src == dst => {
                    self.check_round_rule(rank, &resolved).map_err(err)?;
                }
                OpKind::Copy { .. } | OpKind::Reduce { .. } => {
                    self.check_round_rule(rank, &resolved).map_err(err)?;
                    m.local(rank, &resolved.kind).map_err(err)?;
                }
            }
            self.advance(rank);
        }
        Ok(())
    }

    /// Checks peers, channels, bounds and slice relations; returns the op with slices
    /// resolved to physical buffers.
    fn check_op(&self, rank: Rank, op: &Op) -> Result<Op, String> {
        let world = self.plan.world();
        let st = &self.states[rank as usize];
        let spec = self.plan.spec();
        if let Some(peer) = op.peer() {
            if peer >= world {
                return Err(format!("peer {peer} is outside the world of {world} ranks"));
            }
            if peer == rank {
                return Err("a rank cannot send to or receive from itself".into());
            }
        }
        if op.channel >= self.plan.channels() {
            return Err(format!(
                "channel {} but the plan declares {} channel(s)",
                op.channel,
                self.plan.channels()
            ));
        }
        let mut bad = None;
        let mut o = *op;
        o.map_slices(|s| {
            let cap = spec.buffer_len(rank, s.buf, st.scratch);
            if s.end() > cap && bad.is_none() {
                bad = Some(format!(
                    "{s} is out of bounds: the {} buffer of rank {rank} has {cap} elements",
                    match s.buf {
                        Buf::Input => "input",
                        Buf::Output => "output",
                        Buf::Scratch => "scratch",
                    }
                ));
            }
            resolve(st.alias, s)
        });
        if let Some(b) = bad {
            return Err(b);
        }
        match o.kind {
            OpKind::RecvReduce { src, dst, .. } | OpKind::Copy { src, dst } => {
                if src.len != dst.len {
                    return Err(format!(
                        "source and destination differ in length ({} vs {})",
                        src.len, dst.len
                    ));
                }
                if src != dst && src.overlaps(&dst) {
                    return Err(format!(
                        "source {src} and destination {dst} overlap without being the same \
                         slice"
                    ));
                }
            }
            OpKind::Reduce { src, dst } => {
                if src.len != dst.len {
                    return Err(format!(
                        "source and destination differ in length ({} vs {})",
                        src.len, dst.len
                    ));
                }
                if src.overlaps(&dst) {
                    return Err(format!("reduces {src} into an overlapping {dst}"));
                }
            }
            _ => {}
        }
        Ok(o)
    }

    fn check_round_rule(&mut self, rank: Rank, op: &Op) -> Result<(), String> {
        let Some(tracker) = self.states[rank as usize].hazards.as_mut() else {
            return Ok(());
        };
        self.deps.clear();
        tracker.record(op, &mut self.deps);
        // What the op waits for, directly or through other ops of its rank.
        let reach = |pick: fn(&Access) -> Option<Reach>| self.deps.iter().filter_map(pick).max();
        match op.transfer() {
            Transfer::Send => match reach(|d| d.recv_reach) {
                Some(r) if r.round == op.round => Err(format!(
                    "sends data that depends on op #{}, a receive of the same round {}; a \
                     round's sends may depend only on earlier rounds, or the round cannot be \
                     posted at once",
                    r.index, op.round
                )),
                _ => Ok(()),
            },
            Transfer::Recv => match reach(|d| d.send_reach) {
                Some(r) if r.round == op.round => Err(format!(
                    "overwrites data that op #{} sends in the same round {} (or must wait for \
                     that send through other ops); receive into other memory (e.g. scratch) \
                     and combine locally",
                    r.index, op.round
                )),
                _ => Ok(()),
            },
            Transfer::Local => Ok(()),
        }
    }
}
