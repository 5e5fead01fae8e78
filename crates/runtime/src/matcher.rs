//! Frame matching, without sockets: which posted operation an arriving frame belongs to,
//! and whether it may be there at all.
//!
//! Every transport carries the same frames (`wire::Header` and a payload). The checks that
//! turn a peer in another call into an error naming both ranks, instead of corrupt data,
//! live here, so TCP and shared memory apply the same rules and the rules are tested with
//! plain byte sequences:
//!
//! | field of the frame | rule | on breach |
//! |---|---|---|
//! | bytes | decode as a header | the peer sent garbage: it is to blame |
//! | kind | `Data` / `P2p` on data lanes, `Abort` / `Bye` on control | the peer breaks the protocol |
//! | call sequence number | equal to this call's; a later one waits (parked) unless this call still expects a message on that lane | mismatch naming both calls; an earlier one is a protocol breach |
//! | fingerprint (spec, algorithm, parameters) | equal to this call's | mismatch naming both calls |
//! | channel | carried by this lane (`channel % lanes`) | protocol breach |
//! | message number on the (peer, channel) link | the next one due | protocol breach |
//! | payload length | the posted receive's | mismatch naming the byte counts |
//!
//! Outgoing frames come from here too: each (peer, channel) link sends its messages in
//! program order, numbered from 0, whatever order the machine made them ready in.
//!
//! The matcher keeps its maps between calls ([`Matcher::begin`] clears them), so a call
//! allocates nothing once the links of its shape have been seen.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::fmt;

use topoccl_plan::machine::ReadyOp;
use topoccl_plan::{Collective, DType, OpKind, Rank, ReduceOp, Slice};

use crate::wire::{describe_call, Header, Kind, HEADER_LEN};

/// How a call names itself in errors; formatted only when an error needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CallName {
    Collective {
        collective: Collective,
        seq: u64,
        dtype: DType,
        count: u64,
        op: ReduceOp,
        root: u32,
    },
    P2p {
        send: bool,
        seq: u64,
        dtype: DType,
        len: u64,
        peer: Rank,
    },
}

impl fmt::Display for CallName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CallName::Collective {
                collective,
                seq,
                dtype,
                count,
                op,
                root,
            } => f.write_str(&describe_call(collective, seq, dtype, count, op, root)),
            CallName::P2p {
                send,
                seq,
                dtype,
                len,
                peer,
            } => write!(
                f,
                "{} #{seq} {dtype}×{len} {} rank {peer}",
                if send { "send" } else { "recv" },
                if send { "to" } else { "from" }
            ),
        }
    }
}

/// What a call is, for frame headers and error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallInfo {
    pub kind: Kind,
    pub seq: u64,
    pub fingerprint: u64,
    /// Template for outgoing headers (collective, dtype, op, count, root).
    pub header: Header,
    pub name: CallName,
    pub op: ReduceOp,
    /// Point-to-point receives: the peer whose send counter `seq` follows. Each ordered
    /// pair of ranks numbers its messages on its own, so a message from another rank (or
    /// any message during a send) is not comparable with this call's number.
    pub p2p_from: Option<Rank>,
}

/// A frame to write: its header and where its payload comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutFrame {
    pub header: [u8; HEADER_LEN],
    /// The send op it completes.
    pub index: u64,
    /// The payload, in elements.
    pub src: Slice,
}

/// Where an accepted frame's payload goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The receive op it completes.
    pub index: u64,
    /// `Recv` or `RecvReduce`, with its slices.
    pub kind: OpKind,
}

/// What to do with a frame that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its receive is not posted yet (or it belongs to a later call): keep it parked.
    Park,
    /// Read its payload for this receive.
    Deliver(Delivery),
}

/// Why a frame cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The ranks are in different calls (or the same call with other arguments): the
    /// message names both.
    Mismatch(String),
    /// The peer broke the protocol (garbage, an old call, a message out of order): it is
    /// to blame.
    Protocol(String),
}

#[derive(Debug, Default)]
struct SendLink {
    next: u32,
    ready: BTreeMap<u32, (u64, Slice)>,
}

#[derive(Debug, Default)]
struct RecvLink {
    next: u32,
    ready: BTreeMap<u32, (u64, OpKind)>,
}

/// The sends and receives a call has posted, per (peer, channel) link.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    call: Option<CallInfo>,
    elem: u64,
    sends: FxHashMap<(Rank, u16), SendLink>,
    recvs: FxHashMap<(Rank, u16), RecvLink>,
    /// The call's own flags ORed with those of every frame received in it so far: what
    /// its later frames carry (`wire`'s flags).
    flags: u8,
}

/// Which lane of a peer carries `channel`.
pub(crate) fn lane_of(channel: u16, lanes: u16) -> u16 {
    debug_assert!(lanes > 0);
    channel % lanes
}

impl Matcher {
    /// Starts matching for `call`, whose elements are `elem` bytes. Links of the previous
    /// call are forgotten (their maps keep their memory).
    pub fn begin(&mut self, call: CallInfo, elem: usize) {
        debug_assert!(elem > 0, "elements have a size");
        self.call = Some(call);
        self.elem = elem as u64;
        self.flags = call.header.flags;
        for l in self.sends.values_mut() {
            *l = SendLink::default();
        }
        for l in self.recvs.values_mut() {
            *l = RecvLink::default();
        }
        // A call with many links (all-to-all on a large world) should not leave a huge map
        // behind for every later call to walk.
        if self.sends.len() + self.recvs.len() > 1024 {
            self.sends.clear();
            self.recvs.clear();
        }
    }

    fn call(&self) -> &CallInfo {
        self.call.as_ref().expect("begin() was called")
    }

    /// Posts a ready send or receive. Local ops are not the matcher's business.
    pub fn post(&mut self, r: &ReadyOp) {
        let link = (peer_of(&r.op.kind), r.op.channel);
        match r.op.kind {
            OpKind::Send { src, .. } => {
                let l = self.sends.entry(link).or_default();
                debug_assert!(r.link_seq >= l.next, "a send posted twice");
                l.ready.insert(r.link_seq, (r.index, src));
            }
            OpKind::Recv { .. } | OpKind::RecvReduce { .. } => {
                let l = self.recvs.entry(link).or_default();
                debug_assert!(r.link_seq >= l.next, "a receive posted twice");
                l.ready.insert(r.link_seq, (r.index, r.op.kind));
            }
            OpKind::Copy { .. } | OpKind::Reduce { .. } => {
                debug_assert!(false, "local ops are not posted")
            }
        }
    }

    /// The next frame due on `lane` of `peer` (which carries `lanes` lanes), if its send is
    /// ready: links go in program order, so a later message never overtakes an earlier one.
    pub fn next_send(&mut self, peer: Rank, lane: u16, lanes: u16) -> Option<OutFrame> {
        let call = *self.call();
        let elem = self.elem;
        let (ch, seq, (index, src)) = self
            .sends
            .iter_mut()
            .filter(|((p, ch), _)| *p == peer && lane_of(*ch, lanes) == lane)
            .find_map(|((_, ch), link)| {
                let next = link.next;
                let x = link.ready.remove(&next)?;
                link.next += 1;
                Some((*ch, next, x))
            })?;
        let header = Header {
            channel: ch,
            link_seq: seq,
            len: src.len * elem,
            flags: self.flags,
            ..call.header
        };
        Some(OutFrame {
            header: header.encode(),
            index,
            src,
        })
    }

    /// Decodes and matches a header that arrived on `lane` of `peer`.
    pub fn on_bytes(
        &self,
        peer: Rank,
        lane: u16,
        lanes: u16,
        bytes: &[u8; HEADER_LEN],
    ) -> Result<(Header, Verdict), Reject> {
        let h = Header::decode(bytes)
            .map_err(|e| Reject::Protocol(format!("sent a malformed frame: {e}")))?;
        Ok((h, self.on_header(peer, lane, lanes, &h)?))
    }

    /// Matches a decoded header with a posted receive.
    pub fn on_header(
        &self,
        peer: Rank,
        lane: u16,
        lanes: u16,
        h: &Header,
    ) -> Result<Verdict, Reject> {
        let call = self.call();
        if matches!(h.kind, Kind::Abort | Kind::Bye) {
            return Err(Reject::Protocol(format!(
                "sent a {:?} frame on a data lane",
                h.kind
            )));
        }
        if call.kind == Kind::P2p && h.kind == Kind::P2p && call.p2p_from != Some(peer) {
            return Ok(Verdict::Park);
        }
        if h.kind != call.kind || h.seq > call.seq {
            // A later call (or another kind of call): fine unless this call still expects
            // something on this lane.
            if self.expects(peer, lane, lanes) {
                return Err(Reject::Mismatch(format!(
                    "is in {} but rank {peer} sent a message of {}",
                    call.name,
                    h.describe_call()
                )));
            }
            return Ok(Verdict::Park);
        }
        if h.seq < call.seq {
            return Err(Reject::Protocol(format!(
                "sent a message of call #{} after this rank finished it",
                h.seq
            )));
        }
        if h.fingerprint != call.fingerprint {
            return Err(Reject::Mismatch(format!(
                "entered {} but rank {peer} entered {}",
                call.name,
                h.describe_call()
            )));
        }
        if lane_of(h.channel, lanes) != lane {
            return Err(Reject::Protocol(format!(
                "sent channel {} on lane {lane}",
                h.channel
            )));
        }
        let Some(link) = self.recvs.get(&(peer, h.channel)) else {
            return Ok(Verdict::Park);
        };
        if h.link_seq != link.next {
            return Err(Reject::Protocol(format!(
                "sent message {} of channel {} where message {} was due",
                h.link_seq, h.channel, link.next
            )));
        }
        let Some(&(index, kind)) = link.ready.get(&link.next) else {
            return Ok(Verdict::Park);
        };
        let want = match kind {
            OpKind::Recv { dst, .. } | OpKind::RecvReduce { dst, .. } => dst.len * self.elem,
            _ => unreachable!("only receives are posted"),
        };
        if h.len != want {
            return Err(Reject::Mismatch(format!(
                "is in {}, where rank {peer} sent {} bytes for a receive of {want}",
                call.name, h.len
            )));
        }
        Ok(Verdict::Deliver(Delivery { index, kind }))
    }

    /// The receive of a delivered frame is complete: the link's next message is due.
    /// The frame `header` (delivered) was read whole: its link moves on, and its flags
    /// join the call's.
    pub fn received(&mut self, peer: Rank, header: &Header) {
        self.flags |= header.flags;
        let link = self
            .recvs
            .get_mut(&(peer, header.channel))
            .expect("a delivered frame's link");
        let next = link.next;
        let taken = link.ready.remove(&next);
        debug_assert!(taken.is_some(), "received a message that was not due");
        link.next += 1;
    }

    /// The flags this rank's call has seen: its own and every received frame's.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether this call has a posted receive from `peer` on `lane`.
    pub fn expects(&self, peer: Rank, lane: u16, lanes: u16) -> bool {
        self.recvs
            .iter()
            .any(|((p, ch), l)| *p == peer && lane_of(*ch, lanes) == lane && !l.ready.is_empty())
    }

    /// Whether this call has a posted send or receive with `peer` on `lane`.
    pub fn needs(&self, peer: Rank, lane: u16, lanes: u16) -> bool {
        self.sends
            .iter()
            .any(|((p, ch), l)| *p == peer && lane_of(*ch, lanes) == lane && !l.ready.is_empty())
            || self.expects(peer, lane, lanes)
    }

    /// Receives still waiting: (peer, channel, message number due), in order.
    pub fn waiting_recvs(&self) -> Vec<(Rank, u16, u32)> {
        let mut v: Vec<_> = self
            .recvs
            .iter()
            .filter(|(_, l)| !l.ready.is_empty())
            .map(|(&(p, ch), l)| (p, ch, l.next))
            .collect();
        v.sort_unstable();
        v
    }

    /// Sends not yet started: (peer, channel), in order.
    pub fn waiting_sends(&self) -> Vec<(Rank, u16)> {
        let mut v: Vec<_> = self
            .sends
            .iter()
            .filter(|(_, l)| !l.ready.is_empty())
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }
}

/// A control lane's frame: an abort notice or a goodbye.
pub(crate) fn control_frame(bytes: &[u8; HEADER_LEN]) -> Result<Header, String> {
    let h = Header::decode(bytes).map_err(|e| format!("sent a malformed frame: {e}"))?;
    if !matches!(h.kind, Kind::Abort | Kind::Bye) {
        return Err(format!(
            "sent a {:?} frame on its control connection",
            h.kind
        ));
    }
    Ok(h)
}

fn peer_of(k: &OpKind) -> Rank {
    match *k {
        OpKind::Send { peer, .. } | OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
            peer
        }
        OpKind::Copy { .. } | OpKind::Reduce { .. } => Rank::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FLAG_REPLAN;
    use topoccl_plan::{Buf, Op};

    const FP: u64 = 0xfeed;

    fn call(seq: u64) -> CallInfo {
        let name = CallName::Collective {
            collective: Collective::AllReduce,
            seq,
            dtype: DType::F32,
            count: 8,
            op: ReduceOp::Sum,
            root: 0,
        };
        CallInfo {
            kind: Kind::Data,
            seq,
            fingerprint: FP,
            header: Header {
                kind: Kind::Data,
                collective: Some(Collective::AllReduce),
                dtype: DType::F32,
                op: ReduceOp::Sum,
                channel: 0,
                link_seq: 0,
                seq,
                count: 8,
                len: 0,
                fingerprint: FP,
                root: 0,
                flags: 0,
            },
            name,
            op: ReduceOp::Sum,
            p2p_from: None,
        }
    }

    fn ready(index: u64, channel: u16, link_seq: u32, kind: OpKind) -> ReadyOp {
        ReadyOp {
            index,
            op: Op {
                round: 0,
                channel,
                kind,
            },
            link_seq,
        }
    }

    fn recv(peer: Rank, len: u64) -> OpKind {
        OpKind::Recv {
            peer,
            dst: Slice::new(Buf::Output, 0, len),
        }
    }

    /// A frame's header bytes as a peer in `seq` would send them.
    fn frame(seq: u64, channel: u16, link_seq: u32, len: u64) -> [u8; HEADER_LEN] {
        Header {
            channel,
            link_seq,
            len,
            ..call(seq).header
        }
        .encode()
    }

    fn matcher(seq: u64) -> Matcher {
        let mut m = Matcher::default();
        m.begin(call(seq), 4);
        m
    }

    #[test]
    fn a_frame_for_a_posted_receive_is_delivered() {
        let mut m = matcher(3);
        m.post(&ready(7, 0, 0, recv(1, 8)));
        let (h, v) = m.on_bytes(1, 0, 1, &frame(3, 0, 0, 32)).unwrap();
        assert_eq!(
            v,
            Verdict::Deliver(Delivery {
                index: 7,
                kind: recv(1, 8)
            })
        );
        m.received(1, &h);
        assert!(!m.expects(1, 0, 1));
        assert!(m.waiting_recvs().is_empty());
    }

    #[test]
    fn early_frames_wait_parked() {
        let m = matcher(3);
        // Nothing posted yet: the same call's frame waits.
        assert_eq!(
            m.on_bytes(1, 0, 1, &frame(3, 0, 0, 32)).unwrap().1,
            Verdict::Park
        );
        // The next call's frame waits too while nothing is expected from that peer.
        assert_eq!(
            m.on_bytes(1, 0, 1, &frame(4, 0, 0, 32)).unwrap().1,
            Verdict::Park
        );
    }

    #[test]
    fn a_later_call_while_a_message_is_due_names_both_calls() {
        let mut m = matcher(3);
        m.post(&ready(0, 0, 0, recv(2, 8)));
        let bytes = Header {
            collective: Some(Collective::Broadcast),
            ..Header::decode(&frame(4, 0, 0, 32)).unwrap()
        }
        .encode();
        let e = m.on_bytes(2, 0, 1, &bytes).unwrap_err();
        let Reject::Mismatch(msg) = e else {
            panic!("{e:?}")
        };
        assert!(msg.contains("allreduce #3 f32×8 sum"), "{msg}");
        assert!(
            msg.contains("rank 2 sent a message of broadcast #4"),
            "{msg}"
        );
    }

    #[test]
    fn another_fingerprint_is_a_mismatch() {
        let mut m = matcher(3);
        m.post(&ready(0, 0, 0, recv(1, 8)));
        let mut bytes = frame(3, 0, 0, 32);
        bytes[40] ^= 1;
        assert!(matches!(
            m.on_bytes(1, 0, 1, &bytes),
            Err(Reject::Mismatch(m)) if m.contains("rank 1 entered allreduce #3")
        ));
    }

    #[test]
    fn protocol_breaches_blame_the_sender() {
        let mut m = matcher(3);
        m.post(&ready(0, 1, 0, recv(1, 8)));
        let cases: [([u8; HEADER_LEN], u16, u16, &str); 4] = [
            (
                frame(2, 1, 0, 32),
                1,
                2,
                "call #2 after this rank finished it",
            ),
            (
                frame(3, 1, 1, 32),
                1,
                2,
                "message 1 of channel 1 where message 0",
            ),
            (frame(3, 1, 0, 32), 0, 2, "sent channel 1 on lane 0"),
            ([0u8; HEADER_LEN], 1, 2, "malformed frame"),
        ];
        for (bytes, lane, lanes, want) in cases {
            match m.on_bytes(1, lane, lanes, &bytes) {
                Err(Reject::Protocol(msg)) => assert!(msg.contains(want), "{msg}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn wrong_lengths_and_control_frames_are_refused() {
        let mut m = matcher(3);
        m.post(&ready(0, 0, 0, recv(1, 8)));
        assert!(matches!(
            m.on_bytes(1, 0, 1, &frame(3, 0, 0, 28)),
            Err(Reject::Mismatch(msg)) if msg.contains("sent 28 bytes for a receive of 32")
        ));
        let mut bytes = frame(3, 0, 0, 0);
        bytes[5] = 4; // Bye
        assert!(matches!(
            m.on_bytes(1, 0, 1, &bytes),
            Err(Reject::Protocol(msg)) if msg.contains("Bye frame on a data lane")
        ));
        assert!(control_frame(&bytes).is_ok());
        assert!(control_frame(&frame(3, 0, 0, 0))
            .unwrap_err()
            .contains("Data frame on its control"));
    }

    #[test]
    fn sends_leave_in_link_order_whatever_order_they_were_ready_in() {
        let mut m = matcher(5);
        let send = |off| OpKind::Send {
            peer: 3,
            src: Slice::new(Buf::Input, off, 2),
        };
        m.post(&ready(11, 2, 1, send(2)));
        // Message 0 of channel 2 is not ready: nothing may leave.
        assert_eq!(m.next_send(3, 0, 2), None);
        m.post(&ready(10, 2, 0, send(0)));
        let a = m.next_send(3, 0, 2).unwrap();
        let b = m.next_send(3, 0, 2).unwrap();
        assert_eq!((a.index, b.index), (10, 11));
        let h = Header::decode(&b.header).unwrap();
        assert_eq!((h.channel, h.link_seq, h.len, h.seq), (2, 1, 8, 5));
        assert_eq!(m.next_send(3, 0, 2), None);
        assert!(m.waiting_sends().is_empty());
    }

    /// A flag received in a call rides on every frame sent after it in that call, and the
    /// next call starts from its own flags again.
    #[test]
    fn flags_received_ride_on_later_sends() {
        let mut m = matcher(4);
        let send = OpKind::Send {
            peer: 2,
            src: Slice::new(Buf::Input, 0, 2),
        };
        m.post(&ready(0, 0, 0, send));
        let before = Header::decode(&m.next_send(2, 0, 1).unwrap().header).unwrap();
        assert_eq!(before.flags, 0);
        m.post(&ready(1, 0, 0, recv(1, 8)));
        let flagged = Header {
            flags: FLAG_REPLAN,
            ..Header::decode(&frame(4, 0, 0, 32)).unwrap()
        };
        // Flags are carried, not matched: the frame is delivered as any other.
        assert!(matches!(
            m.on_header(1, 0, 1, &flagged).unwrap(),
            Verdict::Deliver(_)
        ));
        m.received(1, &flagged);
        m.post(&ready(2, 0, 1, send));
        let after = Header::decode(&m.next_send(2, 0, 1).unwrap().header).unwrap();
        assert_eq!(after.flags, FLAG_REPLAN);
        assert_eq!(m.flags(), FLAG_REPLAN);
        m.begin(call(5), 4);
        assert_eq!(m.flags(), 0);
    }

    #[test]
    fn point_to_point_receives_only_match_their_peer() {
        let mut m = Matcher::default();
        let mut c = call(1);
        c.kind = Kind::P2p;
        c.header.kind = Kind::P2p;
        c.p2p_from = Some(1);
        m.begin(c, 4);
        let mut bytes = frame(1, 0, 0, 32);
        bytes[5] = 2; // P2p
        assert_eq!(m.on_bytes(2, 0, 1, &bytes).unwrap().1, Verdict::Park);
    }

    #[test]
    fn begin_forgets_the_previous_call() {
        let mut m = matcher(1);
        m.post(&ready(0, 0, 0, recv(1, 8)));
        m.begin(call(2), 4);
        assert!(!m.expects(1, 0, 1));
        assert_eq!(
            m.on_bytes(1, 0, 1, &frame(2, 0, 0, 32)).unwrap().1,
            Verdict::Park
        );
    }
}
