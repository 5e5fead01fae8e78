//! The instruction set of a plan: per-rank steps over slices of the input, output and
//! scratch buffers.
//!
//! Semantics, shared by every consumer (verifier, reference executor, runtime, simulator):
//!
//! * A rank's program is its ops in order, grouped by non-decreasing `round`.
//! * Two ops of one rank *conflict* when they touch overlapping elements and at least one
//!   writes them. An op may run once every earlier conflicting op of its rank has finished;
//!   nothing else orders ops of one rank. Dependencies are therefore a function of the
//!   program order and need not be written down (see [`crate::hazard`]).
//! * Messages between two ranks travel on a channel. The k-th `Send` from `a` to `b` on
//!   channel `c` is received by the k-th `Recv`/`RecvReduce` of `b` from `a` on `c`; both
//!   carry the same element count and the same round.
//! * Within a round no send depends on a receive of that round and no receive depends on a
//!   send of that round, so a round's transfers can all be posted at once and complete even
//!   when sends are unbuffered (checked by the verifier).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A rank in a communicator (0-based).
pub type Rank = u32;

/// The three buffers a rank works on. Input and output belong to the user; scratch is
/// allocated by whoever executes the plan, with the size the plan asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Buf {
    Input,
    Output,
    Scratch,
}

impl Buf {
    pub const ALL: [Buf; 3] = [Buf::Input, Buf::Output, Buf::Scratch];

    pub fn short(self) -> &'static str {
        match self {
            Buf::Input => "in",
            Buf::Output => "out",
            Buf::Scratch => "scr",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `len` elements of a buffer starting at element `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    pub buf: Buf,
    pub off: u64,
    pub len: u64,
}

impl Slice {
    pub const fn new(buf: Buf, off: u64, len: u64) -> Self {
        Slice { buf, off, len }
    }

    pub fn end(&self) -> u64 {
        self.off + self.len
    }

    pub fn overlaps(&self, other: &Slice) -> bool {
        self.buf == other.buf && self.off < other.end() && other.off < self.end()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}..{}]", self.buf.short(), self.off, self.end())
    }
}

/// One step of a rank's program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Send `src` to `peer`.
    Send { peer: Rank, src: Slice },
    /// Receive a message from `peer` into `dst`.
    Recv { peer: Rank, dst: Slice },
    /// Receive a message from `peer` and store `src ⊕ message` into `dst`. `src` and `dst`
    /// have the same length and are either the same slice or disjoint.
    RecvReduce { peer: Rank, src: Slice, dst: Slice },
    /// Copy `src` into `dst` (same length, disjoint unless identical).
    Copy { src: Slice, dst: Slice },
    /// `dst ⊕= src` (same length, disjoint).
    Reduce { src: Slice, dst: Slice },
}

/// What an op does on the network, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transfer {
    Send,
    Recv,
    Local,
}

/// A step of a program: what it does, the round it belongs to and its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub round: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub channel: u16,
    #[serde(flatten)]
    pub kind: OpKind,
}

fn is_zero(c: &u16) -> bool {
    *c == 0
}

impl Op {
    pub fn transfer(&self) -> Transfer {
        match self.kind {
            OpKind::Send { .. } => Transfer::Send,
            OpKind::Recv { .. } | OpKind::RecvReduce { .. } => Transfer::Recv,
            OpKind::Copy { .. } | OpKind::Reduce { .. } => Transfer::Local,
        }
    }

    /// The other rank of a send or receive.
    pub fn peer(&self) -> Option<Rank> {
        match self.kind {
            OpKind::Send { peer, .. }
            | OpKind::Recv { peer, .. }
            | OpKind::RecvReduce { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Elements moved or combined by the op.
    pub fn len(&self) -> u64 {
        match self.kind {
            OpKind::Send { src, .. } => src.len,
            OpKind::Recv { dst, .. }
            | OpKind::RecvReduce { dst, .. }
            | OpKind::Copy { dst, .. }
            | OpKind::Reduce { dst, .. } => dst.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements combined with the reduction operator by this op.
    pub fn reduced_len(&self) -> u64 {
        match self.kind {
            OpKind::RecvReduce { dst, .. } | OpKind::Reduce { dst, .. } => dst.len,
            _ => 0,
        }
    }

    /// Slices the op reads (at most two).
    pub fn reads(&self) -> impl Iterator<Item = Slice> {
        let (a, b) = match self.kind {
            OpKind::Send { src, .. } => (Some(src), None),
            OpKind::Recv { .. } => (None, None),
            OpKind::RecvReduce { src, .. } => (Some(src), None),
            OpKind::Copy { src, .. } => (Some(src), None),
            OpKind::Reduce { src, dst } => (Some(src), Some(dst)),
        };
        a.into_iter().chain(b)
    }

    /// The slice the op writes, if any.
    pub fn writes(&self) -> Option<Slice> {
        match self.kind {
            OpKind::Send { .. } => None,
            OpKind::Recv { dst, .. }
            | OpKind::RecvReduce { dst, .. }
            | OpKind::Copy { dst, .. }
            | OpKind::Reduce { dst, .. } => Some(dst),
        }
    }

    /// Applies `f` to every slice of the op (used to relocate ops of a sub-plan).
    pub fn map_slices(&mut self, mut f: impl FnMut(Slice) -> Slice) {
        match &mut self.kind {
            OpKind::Send { src, .. } => *src = f(*src),
            OpKind::Recv { dst, .. } => *dst = f(*dst),
            OpKind::RecvReduce { src, dst, .. }
            | OpKind::Copy { src, dst }
            | OpKind::Reduce { src, dst } => {
                *src = f(*src);
                *dst = f(*dst);
            }
        }
    }

    /// Applies `f` to the peer of a send or receive.
    pub fn map_peer(&mut self, f: impl FnOnce(Rank) -> Rank) {
        match &mut self.kind {
            OpKind::Send { peer, .. }
            | OpKind::Recv { peer, .. }
            | OpKind::RecvReduce { peer, .. } => *peer = f(*peer),
            _ => {}
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{:<3} c{:<2} ", self.round, self.channel)?;
        match self.kind {
            OpKind::Send { peer, src } => write!(f, "send        -> {peer:<5} {src}"),
            OpKind::Recv { peer, dst } => write!(f, "recv        <- {peer:<5} {dst}"),
            OpKind::RecvReduce { peer, src, dst } => {
                write!(f, "recv-reduce <- {peer:<5} {dst} = {src} + msg")
            }
            OpKind::Copy { src, dst } => write!(f, "copy                 {dst} = {src}"),
            OpKind::Reduce { src, dst } => write!(f, "reduce               {dst} += {src}"),
        }
    }
}

/// Appends the ops of one (rank, round) to a vector; generators use it so that every op
/// they emit carries the right round and channel and empty transfers are dropped
/// consistently on both sides.
pub struct Emitter<'a> {
    out: &'a mut Vec<Op>,
    round: u32,
    channel: u16,
}

impl<'a> Emitter<'a> {
    pub fn new(out: &'a mut Vec<Op>, round: u32) -> Self {
        Emitter {
            out,
            round,
            channel: 0,
        }
    }

    /// Sets the channel of the ops emitted from now on.
    pub fn channel(&mut self, channel: u16) -> &mut Self {
        self.channel = channel;
        self
    }

    fn push(&mut self, kind: OpKind) {
        self.out.push(Op {
            round: self.round,
            channel: self.channel,
            kind,
        });
    }

    /// A send; dropped when empty.
    pub fn send(&mut self, peer: Rank, src: Slice) {
        if !src.is_empty() {
            self.push(OpKind::Send { peer, src });
        }
    }

    /// A receive; dropped when empty.
    pub fn recv(&mut self, peer: Rank, dst: Slice) {
        if !dst.is_empty() {
            self.push(OpKind::Recv { peer, dst });
        }
    }

    /// A receive-and-reduce; dropped when empty.
    pub fn recv_reduce(&mut self, peer: Rank, src: Slice, dst: Slice) {
        debug_assert_eq!(src.len, dst.len);
        if !dst.is_empty() {
            self.push(OpKind::RecvReduce { peer, src, dst });
        }
    }

    /// A copy; dropped when empty or when source and destination are the same slice.
    pub fn copy(&mut self, src: Slice, dst: Slice) {
        debug_assert_eq!(src.len, dst.len);
        if !dst.is_empty() && src != dst {
            self.push(OpKind::Copy { src, dst });
        }
    }

    /// A local reduction `dst ⊕= src`; dropped when empty.
    pub fn reduce(&mut self, src: Slice, dst: Slice) {
        debug_assert_eq!(src.len, dst.len);
        if !dst.is_empty() {
            self.push(OpKind::Reduce { src, dst });
        }
    }

    /// A zero-length message, kept: used by barriers, where the message itself is the point.
    pub fn send_token(&mut self, peer: Rank) {
        self.push(OpKind::Send {
            peer,
            src: Slice::new(Buf::Input, 0, 0),
        });
    }

    /// Receives a zero-length message.
    pub fn recv_token(&mut self, peer: Rank) {
        self.push(OpKind::Recv {
            peer,
            dst: Slice::new(Buf::Output, 0, 0),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emitter_drops_empty_and_self_copies() {
        let mut v = Vec::new();
        let mut e = Emitter::new(&mut v, 3);
        e.send(1, Slice::new(Buf::Input, 0, 0));
        e.copy(Slice::new(Buf::Output, 4, 2), Slice::new(Buf::Output, 4, 2));
        e.channel(2).send(1, Slice::new(Buf::Input, 0, 5));
        e.send_token(4);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].round, 3);
        assert_eq!(v[0].channel, 2);
    }

    #[test]
    fn op_json_is_flat() {
        let op = Op {
            round: 1,
            channel: 0,
            kind: OpKind::Send {
                peer: 2,
                src: Slice::new(Buf::Input, 8, 4),
            },
        };
        let j = serde_json::to_string(&op).unwrap();
        assert_eq!(
            j,
            r#"{"round":1,"op":"send","peer":2,"src":{"buf":"input","off":8,"len":4}}"#
        );
        let back: Op = serde_json::from_str(&j).unwrap();
        assert_eq!(back, op);
    }
}
