//! Executing one rank's program over the transport: the I/O shell around
//! [`topoccl_plan::machine::RankMachine`].
//!
//! The loop hands ready ops to the network (sends queue per link and are written in link
//! order, header and payload in one vectored write straight from the source slice;
//! receives are posted per link and read straight into their destination, or through a
//! small staging buffer that is reduced into the destination as it fills) or runs them
//! locally (copies, reductions). Between bursts of progress it blocks in `poll` until the
//! call's deadline. Anything wrong — a peer's connection closing, a malformed or
//! mismatched frame, the deadline — ends the call with an error naming the rank.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, IoSlice, Read, Write};
use std::time::{Duration, Instant};

use topoccl_plan::exec::kernels::{reduce_into, Element};
use topoccl_plan::machine::{RankMachine, ReadyOp};
use topoccl_plan::{Buf, OpKind, Rank, ReduceOp, Slice};

use crate::error::{Error, Result};
use crate::transport::{Conn, Rx, Transport, Tx, STAGING_BYTES};
use crate::wire::{AbortNotice, Header, Kind, Purpose, HEADER_LEN};

/// Element types the runtime moves: the plan's elements that are plain bytes.
pub trait Dtype: Element + bytemuck::Pod {}
impl<T: Element + bytemuck::Pod> Dtype for T {}

/// A rank's program as the executor sees it.
pub(crate) trait Program {
    fn next_ready(&mut self) -> Option<ReadyOp>;
    fn complete(&mut self, index: u64);
    fn is_done(&self) -> bool;
}

impl Program for RankMachine {
    fn next_ready(&mut self) -> Option<ReadyOp> {
        RankMachine::next_ready(self)
    }
    fn complete(&mut self, index: u64) {
        RankMachine::complete(self, index)
    }
    fn is_done(&self) -> bool {
        RankMachine::is_done(self)
    }
}

/// A single send or receive (point-to-point calls).
pub(crate) struct OneOp {
    op: Option<ReadyOp>,
    done: bool,
}

impl OneOp {
    pub fn new(op: topoccl_plan::Op) -> OneOp {
        OneOp {
            op: Some(ReadyOp {
                index: 0,
                op,
                link_seq: 0,
            }),
            done: false,
        }
    }
}

impl Program for OneOp {
    fn next_ready(&mut self) -> Option<ReadyOp> {
        self.op.take()
    }
    fn complete(&mut self, _index: u64) {
        self.done = true;
    }
    fn is_done(&self) -> bool {
        self.done
    }
}

/// What a call is, for frame headers and error messages.
#[derive(Clone, Debug)]
pub(crate) struct CallInfo {
    pub kind: Kind,
    pub seq: u64,
    pub fingerprint: u64,
    /// Template for outgoing headers (collective, dtype, op, count, root).
    pub header: Header,
    pub name: String,
    pub op: ReduceOp,
    /// Point-to-point receives: the peer whose send counter `seq` follows. Each ordered
    /// pair of ranks numbers its messages on its own, so a message from another rank (or
    /// any message during a send) is not comparable with this call's number.
    pub p2p_from: Option<Rank>,
}

/// One physical buffer of the call.
pub(crate) enum Storage<'a, T> {
    Missing,
    Ro(&'a [T]),
    Rw(&'a mut [T]),
    Own(Vec<T>),
}

impl<T> Storage<'_, T> {
    fn get(&self) -> &[T] {
        match self {
            Storage::Missing => &[],
            Storage::Ro(s) => s,
            Storage::Rw(s) => s,
            Storage::Own(v) => v,
        }
    }

    pub(crate) fn get_mut(&mut self) -> Option<&mut [T]> {
        match self {
            Storage::Missing | Storage::Ro(_) => None,
            Storage::Rw(s) => Some(s),
            Storage::Own(v) => Some(v),
        }
    }
}

/// The physical buffers of a call, indexed by [`Buf`].
pub(crate) struct Buffers<'a, T> {
    pub bufs: [Storage<'a, T>; 3],
}

fn range(s: Slice) -> std::ops::Range<usize> {
    s.off as usize..s.end() as usize
}

impl<T: Dtype> Buffers<'_, T> {
    fn write(&mut self, s: Slice) -> &mut [T] {
        let buf = self.bufs[s.buf.index()]
            .get_mut()
            .expect("plans write only writable buffers (verified)");
        &mut buf[range(s)]
    }

    /// `dst` and `src` at once (disjoint, possibly in the same buffer).
    fn pair(&mut self, src: Slice, dst: Slice) -> (&[T], &mut [T]) {
        if src.buf == dst.buf {
            let buf = self.bufs[dst.buf.index()]
                .get_mut()
                .expect("writable buffer");
            if src.off < dst.off {
                let (a, b) = buf.split_at_mut(dst.off as usize);
                (&a[range(src)], &mut b[..dst.len as usize])
            } else {
                let (a, b) = buf.split_at_mut(src.off as usize);
                (&b[..src.len as usize], &mut a[range(dst)])
            }
        } else {
            let [i, o, s] = &mut self.bufs;
            let (src_store, dst_store): (&Storage<T>, &mut Storage<T>) = match (src.buf, dst.buf) {
                (Buf::Input, Buf::Output) => (i, o),
                (Buf::Input, Buf::Scratch) => (i, s),
                (Buf::Output, Buf::Input) => (o, i),
                (Buf::Output, Buf::Scratch) => (o, s),
                (Buf::Scratch, Buf::Input) => (s, i),
                (Buf::Scratch, Buf::Output) => (s, o),
                _ => unreachable!("same buffer handled above"),
            };
            (
                &src_store.get()[range(src)],
                &mut dst_store.get_mut().expect("writable buffer")[range(dst)],
            )
        }
    }

    /// Runs a local op.
    fn local(&mut self, kind: &OpKind, op: ReduceOp) {
        match *kind {
            OpKind::Copy { src, dst } if src != dst => {
                let (s, d) = self.pair(src, dst);
                d.copy_from_slice(s);
            }
            OpKind::Reduce { src, dst } => {
                let (s, d) = self.pair(src, dst);
                reduce_into(op, d, s);
            }
            _ => {}
        }
    }
}

#[derive(Default)]
struct SendLink {
    next: u32,
    ready: BTreeMap<u32, (u64, Slice)>,
}

#[derive(Default)]
struct RecvLink {
    next: u32,
    ready: BTreeMap<u32, (u64, OpKind)>,
}

/// Why peers went away: a crash (connection closed without a goodbye) or a normal close.
pub(crate) type Departed = HashMap<Rank, String>;

/// Executes `prog` for one call.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<T: Dtype>(
    tr: &mut Transport,
    departed: &mut Departed,
    call: &CallInfo,
    prog: &mut dyn Program,
    bufs: &mut Buffers<'_, T>,
    deadline: Instant,
    timeout: Duration,
    spin: Duration,
) -> Result<()> {
    let mut ex = Exec {
        call,
        sends: HashMap::new(),
        recvs: HashMap::new(),
        deadline,
        timeout,
        spin,
        size: std::mem::size_of::<T>(),
    };
    ex.run(tr, departed, prog, bufs)
}

/// The notice that tells the other ranks this call failed, and whom to blame.
pub(crate) fn abort_notice(rank: Rank, e: &Error) -> AbortNotice {
    match e {
        Error::Aborted {
            origin,
            culprit,
            reason,
            ..
        } => AbortNotice {
            origin: *origin,
            culprit: *culprit,
            reason: reason.clone(),
        },
        _ => AbortNotice {
            origin: rank,
            culprit: e.culprits().first().copied(),
            reason: e.to_string(),
        },
    }
}

struct Exec<'c> {
    call: &'c CallInfo,
    sends: HashMap<(Rank, u16), SendLink>,
    recvs: HashMap<(Rank, u16), RecvLink>,
    deadline: Instant,
    timeout: Duration,
    spin: Duration,
    size: usize,
}

impl Exec<'_> {
    fn failed(&self, rank: Rank, reason: impl Into<String>) -> Error {
        Error::PeerFailed {
            op: self.call.name.clone(),
            rank,
            reason: reason.into(),
        }
    }

    /// Fails if the connection a transfer with `peer` on `channel` needs has closed.
    fn check_link(
        &self,
        tr: &Transport,
        departed: &Departed,
        peer: Rank,
        channel: u16,
    ) -> Result<()> {
        let open = tr.data_conn(peer, channel % tr.streams).is_some();
        match departed.get(&peer) {
            Some(why) if tr.connected(peer) && !open => Err(self.failed(peer, why.clone())),
            _ => Ok(()),
        }
    }

    fn run<T: Dtype>(
        &mut self,
        tr: &mut Transport,
        departed: &mut Departed,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> Result<()> {
        loop {
            tr.check_abort()?;
            while let Some(r) = prog.next_ready() {
                match r.op.kind {
                    OpKind::Send { peer, src } => {
                        tr.ensure(peer)?;
                        self.check_link(tr, departed, peer, r.op.channel)?;
                        self.sends
                            .entry((peer, r.op.channel))
                            .or_default()
                            .ready
                            .insert(r.link_seq, (r.index, src));
                    }
                    OpKind::Recv { peer, .. } | OpKind::RecvReduce { peer, .. } => {
                        tr.ensure(peer)?;
                        self.check_link(tr, departed, peer, r.op.channel)?;
                        self.recvs
                            .entry((peer, r.op.channel))
                            .or_default()
                            .ready
                            .insert(r.link_seq, (r.index, r.op.kind));
                    }
                    _ => {
                        bufs.local(&r.op.kind, self.call.op);
                        prog.complete(r.index);
                    }
                }
            }
            if prog.is_done() {
                return Ok(());
            }
            let mut progressed = tr.advance()?;
            let conns: Vec<usize> = tr.live().collect();
            for i in conns {
                let Some((purpose, stream)) = tr.conn(i).map(|c| (c.purpose, c.stream)) else {
                    continue;
                };
                match self.pump(tr, i, prog, bufs) {
                    Ok(p) => progressed |= p,
                    Err(Gone { peer, reason }) => {
                        // A message half written on it can never complete now; it left
                        // the posted sends when its first byte was written.
                        let sending = tr.conn(i).is_some_and(|c| c.tx.is_some());
                        // Only this connection ended: others of the same peer may still
                        // hold its last messages (a peer that finished says goodbye).
                        tr.drop_conn(i);
                        let why = departed.entry(peer).or_insert(reason).clone();
                        if purpose == Purpose::Data
                            && (sending || self.needs(peer, stream, tr.streams))
                        {
                            return Err(self.explain(tr, self.failed(peer, why)));
                        }
                        progressed = true;
                    }
                    Err(Fatal(e)) => return Err(e),
                }
            }
            if progressed {
                continue;
            }
            if !tr.poll(self.deadline, self.spin)? {
                return Err(self.timeout_error(tr));
            }
        }
    }

    /// A peer that vanished may have been stopping because of someone else: a rank that
    /// fails tells everyone why before it exits, so look for that notice for a moment
    /// before blaming the peer.
    fn explain(&mut self, tr: &mut Transport, e: Error) -> Error {
        const GRACE: Duration = Duration::from_millis(150);
        let until = Instant::now() + GRACE;
        loop {
            for i in tr.control_conns() {
                let Some(c) = tr.conn(i) else {
                    continue;
                };
                if let Err(Fatal(notice)) = self.read_control(c) {
                    return notice;
                }
            }
            let now = Instant::now();
            if now >= until || tr.poll(until.min(self.deadline), Duration::ZERO).is_err() {
                return e;
            }
        }
    }

    /// Whether the call has a posted send or receive with `peer` on `stream`.
    fn needs(&self, peer: Rank, stream: u16, streams: u16) -> bool {
        let on = |p: &Rank, ch: &u16| *p == peer && ch % streams == stream;
        self.sends
            .iter()
            .any(|((p, ch), l)| on(p, ch) && !l.ready.is_empty())
            || self.expects(peer, stream, streams)
    }

    fn timeout_error(&self, tr: &mut Transport) -> Error {
        let mut ranks: Vec<Rank> = Vec::new();
        let mut what: Vec<String> = Vec::new();
        let mut recvs: Vec<_> = self
            .recvs
            .iter()
            .filter(|(_, l)| !l.ready.is_empty())
            .collect();
        recvs.sort_by_key(|(k, _)| **k);
        for ((peer, ch), l) in recvs.iter().take(4) {
            ranks.push(*peer);
            let open = tr.data_conn(*peer, ch % tr.streams).is_some();
            what.push(match (open, tr.refused.get(peer)) {
                (false, Some(r)) => format!("rank {peer} tried to connect but was refused: {r}"),
                (false, None) if tr.handshaking(*peer) => {
                    format!("rank {peer} did not complete its connection handshake")
                }
                (false, None) => format!("rank {peer} never connected"),
                (true, _) => format!(
                    "a message from rank {peer} (channel {ch}, message {}) never came",
                    l.next
                ),
            });
        }
        let mut sends: Vec<_> = self
            .sends
            .iter()
            .filter(|(_, l)| !l.ready.is_empty())
            .collect();
        sends.sort_by_key(|(k, _)| **k);
        // Messages half written count as well as those not started.
        let mut stuck: Vec<(Rank, String)> = sends
            .iter()
            .map(|((peer, ch), _)| (*peer, format!("channel {ch}")))
            .collect();
        for i in tr.live().collect::<Vec<_>>() {
            if let Some(c) = tr.conn(i).filter(|c| c.tx.is_some()) {
                stuck.push((c.peer, format!("half written on stream {}", c.stream)));
            }
        }
        stuck.sort();
        stuck.dedup_by_key(|s| s.0);
        for (peer, which) in stuck.into_iter().take(4) {
            if !ranks.contains(&peer) {
                ranks.push(peer);
            }
            what.push(format!(
                "rank {peer} did not take a message ({which}) off the wire"
            ));
        }
        if what.is_empty() {
            what.push("no transfer was posted (a local dependency never completed)".into());
        }
        Error::Timeout {
            op: self.call.name.clone(),
            after: self.timeout,
            waiting: format!(
                "{}; is that rank alive and in the same collective? (raise TOPOCCL_TIMEOUT if \
                 it is just slow)",
                what.join("; ")
            ),
            ranks,
        }
    }

    /// Writes and reads what it can on connection `i`.
    fn pump<T: Dtype>(
        &mut self,
        tr: &mut Transport,
        i: usize,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let streams = tr.streams;
        let Some(c) = tr.conn(i) else {
            return Ok(false);
        };
        let mut progressed = false;
        match c.purpose {
            Purpose::Control => {
                if c.readable {
                    progressed |= self.read_control(c)?;
                }
            }
            Purpose::Data => {
                if c.writable {
                    progressed |= self.write_data(c, streams, prog, bufs)?;
                }
                if c.readable {
                    progressed |= self.read_data(c, streams, prog, bufs)?;
                }
            }
        }
        Ok(progressed)
    }

    fn write_data<T: Dtype>(
        &mut self,
        c: &mut Conn,
        streams: u16,
        prog: &mut dyn Program,
        bufs: &Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            if c.tx.is_none() {
                // The next message due on any channel this stream carries.
                let pick = self
                    .sends
                    .iter_mut()
                    .filter(|((p, ch), _)| *p == c.peer && ch % streams == c.stream)
                    .find_map(|((_, ch), link)| {
                        let next = link.next;
                        link.ready.remove(&next).map(|x| (*ch, next, x, link))
                    });
                let Some((ch, seq, (index, src), link)) = pick else {
                    return Ok(progressed);
                };
                link.next += 1;
                let header = Header {
                    channel: ch,
                    link_seq: seq,
                    len: src.len * self.size as u64,
                    ..self.call.header
                };
                c.tx = Some(Tx {
                    header: header.encode(),
                    header_sent: 0,
                    index,
                    buf: src.buf,
                    start: src.off as usize * self.size,
                    len: src.len as usize * self.size,
                    sent: 0,
                });
            }
            let tx = c.tx.as_mut().expect("set above");
            let payload: &[u8] = bytemuck::cast_slice(bufs.bufs[tx.buf.index()].get());
            let body = &payload[tx.start + tx.sent..tx.start + tx.len];
            let head = &tx.header[tx.header_sent..];
            let written = match c
                .sock
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            {
                Ok(0) => return Err(Fail::gone(c.peer, "connection closed while sending")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.writable = false;
                    return Ok(progressed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Fail::gone(
                        c.peer,
                        format!("connection lost while sending: {e}"),
                    ))
                }
            };
            progressed = true;
            let h = written.min(head.len());
            tx.header_sent += h;
            tx.sent += written - h;
            if tx.header_sent == HEADER_LEN && tx.sent == tx.len {
                let index = tx.index;
                c.tx = None;
                prog.complete(index);
            }
        }
    }

    fn read_control(&mut self, c: &mut Conn) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            match read_some(c)? {
                ReadStep::Blocked => return Ok(progressed),
                ReadStep::Header(h) => {
                    progressed = true;
                    if !matches!(h.kind, Kind::Abort | Kind::Bye) {
                        return Err(Fail::gone(
                            c.peer,
                            format!("sent a {:?} frame on its control connection", h.kind),
                        ));
                    }
                    c.rx = Rx::Notice {
                        header: h,
                        buf: Vec::with_capacity(h.len as usize),
                    };
                }
                ReadStep::Progress => progressed = true,
            }
            if let Rx::Notice { header, buf } = &mut c.rx {
                if buf.len() as u64 == header.len {
                    let kind = header.kind;
                    let payload = std::mem::take(buf);
                    c.rx = Rx::Header {
                        buf: [0; HEADER_LEN],
                        got: 0,
                    };
                    if kind == Kind::Bye {
                        return Err(Fail::gone(
                            c.peer,
                            "it has closed its communicator (it left)".to_string(),
                        ));
                    }
                    let notice =
                        AbortNotice::decode(&payload).map_err(|e| Fail::gone(c.peer, e))?;
                    return Err(Fatal(Error::Aborted {
                        op: self.call.name.clone(),
                        origin: notice.origin,
                        culprit: notice.culprit,
                        reason: notice.reason,
                    }));
                }
            }
        }
    }

    fn read_data<T: Dtype>(
        &mut self,
        c: &mut Conn,
        streams: u16,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            match &c.rx {
                Rx::Header { .. } => match read_some(c)? {
                    ReadStep::Blocked => return Ok(progressed),
                    ReadStep::Progress => progressed = true,
                    ReadStep::Header(h) => {
                        progressed = true;
                        c.rx = Rx::Parked(h);
                    }
                },
                Rx::Parked(h) => {
                    let h = *h;
                    match self.match_frame(c, &h, streams)? {
                        None => return Ok(progressed),
                        Some(index) => {
                            progressed = true;
                            c.staged = 0;
                            c.rx = Rx::Payload {
                                header: h,
                                index,
                                got: 0,
                            };
                            if h.len == 0 {
                                self.finish_recv(c, prog);
                            }
                        }
                    }
                }
                Rx::Payload { .. } => {
                    if !self.read_payload(c, prog, bufs)? {
                        return Ok(progressed);
                    }
                    progressed = true;
                }
                Rx::Notice { .. } => {
                    return Err(Fail::gone(c.peer, "control frame on a data connection"))
                }
            }
        }
    }

    /// Matches a parked header with a posted receive: `Some(op index)` when the payload
    /// can be read now, `None` when its receive is not posted yet.
    fn match_frame(
        &mut self,
        c: &Conn,
        h: &Header,
        streams: u16,
    ) -> std::result::Result<Option<u64>, Fail> {
        let peer = c.peer;
        let call = self.call;
        if call.kind == Kind::P2p && h.kind == Kind::P2p && call.p2p_from != Some(peer) {
            return Ok(None);
        }
        if h.kind != call.kind || h.seq > call.seq {
            // A later call (or another kind of call) — fine unless this call still expects
            // something here.
            if self.expects(peer, c.stream, streams) {
                return Err(Fatal(Error::Mismatch(format!(
                    "this rank is in {} but rank {peer} sent a message of {}",
                    call.name,
                    h.describe_call()
                ))));
            }
            return Ok(None);
        }
        if h.seq < call.seq {
            return Err(Fail::gone(
                peer,
                format!(
                    "sent a message of call #{} after this rank finished it",
                    h.seq
                ),
            ));
        }
        if h.fingerprint != call.fingerprint {
            return Err(Fatal(Error::Mismatch(format!(
                "this rank entered {} but rank {peer} entered {}",
                call.name,
                h.describe_call()
            ))));
        }
        if h.channel % streams != c.stream {
            return Err(Fail::gone(
                peer,
                format!("sent channel {} on stream {}", h.channel, c.stream),
            ));
        }
        let Some(link) = self.recvs.get_mut(&(peer, h.channel)) else {
            return Ok(None);
        };
        if h.link_seq != link.next {
            return Err(Fail::gone(
                peer,
                format!(
                    "sent message {} of channel {} where message {} was due",
                    h.link_seq, h.channel, link.next
                ),
            ));
        }
        let Some((index, kind)) = link.ready.get(&link.next).copied() else {
            return Ok(None);
        };
        let want = match kind {
            OpKind::Recv { dst, .. } | OpKind::RecvReduce { dst, .. } => dst.len,
            _ => unreachable!("only receives are posted"),
        } * self.size as u64;
        if h.len != want {
            return Err(Fatal(Error::Mismatch(format!(
                "in {} rank {peer} sent {} bytes where {want} were expected",
                call.name, h.len
            ))));
        }
        Ok(Some(index))
    }

    /// Whether this call has a posted receive from `peer` on `stream`.
    fn expects(&self, peer: Rank, stream: u16, streams: u16) -> bool {
        self.recvs
            .iter()
            .any(|((p, ch), l)| *p == peer && ch % streams == stream && !l.ready.is_empty())
    }

    fn finish_recv(&mut self, c: &mut Conn, prog: &mut dyn Program) {
        if let Rx::Payload { header, index, .. } = c.rx {
            let link = self
                .recvs
                .get_mut(&(c.peer, header.channel))
                .expect("matched link");
            link.ready.remove(&link.next);
            link.next += 1;
            prog.complete(index);
        }
        c.rx = Rx::Header {
            buf: [0; HEADER_LEN],
            got: 0,
        };
    }

    /// Reads payload bytes; returns false when the socket has nothing more now.
    fn read_payload<T: Dtype>(
        &mut self,
        c: &mut Conn,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let Rx::Payload { header, index, got } = c.rx else {
            unreachable!("payload state")
        };
        let link = &self.recvs[&(c.peer, header.channel)];
        let kind = link.ready[&link.next].1;
        let size = self.size;
        let n = match kind {
            OpKind::Recv { dst, .. } => {
                let out: &mut [u8] = bytemuck::cast_slice_mut(bufs.write(dst));
                read_into(c, &mut out[got as usize..])?
            }
            OpKind::RecvReduce { src, dst, .. } => {
                if c.staging.is_empty() {
                    c.staging = vec![0u64; STAGING_BYTES / 8];
                }
                let room = (STAGING_BYTES - c.staged).min((header.len - got) as usize);
                let staged = c.staged;
                let stage: &mut [u8] = bytemuck::cast_slice_mut(&mut c.staging);
                let n = {
                    let buf = &mut stage[staged..staged + room];
                    match c.sock.read(buf) {
                        Ok(0) => return Err(truncated(c.peer, &header)),
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            c.readable = false;
                            return Ok(false);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
                        Err(e) => return Err(Fail::gone(c.peer, format!("connection lost: {e}"))),
                    }
                };
                // Reduce the whole elements staged so far into the destination.
                let have = staged + n;
                let whole = have / size;
                if whole > 0 {
                    let done = ((got as usize + n) - have) / size;
                    let src = Slice::new(src.buf, src.off + done as u64, whole as u64);
                    let dst = Slice::new(dst.buf, dst.off + done as u64, whole as u64);
                    let incoming: &[T] = bytemuck::cast_slice(&stage[..whole * size]);
                    if src != dst {
                        let (s, d) = bufs.pair(src, dst);
                        d.copy_from_slice(s);
                    }
                    reduce_into(self.call.op, bufs.write(dst), incoming);
                    stage.copy_within(whole * size..have, 0);
                }
                c.staged = have % size;
                n
            }
            _ => unreachable!("only receives are posted"),
        };
        if n == 0 {
            return Ok(false);
        }
        let got = got + n as u64;
        if got == header.len {
            self.finish_recv(c, prog);
        } else {
            c.rx = Rx::Payload { header, index, got };
        }
        Ok(true)
    }
}

/// How a connection-level step failed.
enum Fail {
    /// The peer is gone or unreadable: it may be fine if this call does not need it.
    Gone { peer: Rank, reason: String },
    /// The call cannot go on.
    Fatal(Error),
}

use Fail::{Fatal, Gone};

impl Fail {
    fn gone(peer: Rank, reason: impl Into<String>) -> Fail {
        Gone {
            peer,
            reason: reason.into(),
        }
    }
}

fn truncated(peer: Rank, h: &Header) -> Fail {
    Fail::gone(
        peer,
        format!(
            "its connection closed in the middle of a {}-byte frame (process died or was \
             killed?)",
            h.len
        ),
    )
}

enum ReadStep {
    Blocked,
    Progress,
    Header(Header),
}

/// Advances the header or notice being read; yields a decoded header when complete.
fn read_some(c: &mut Conn) -> std::result::Result<ReadStep, Fail> {
    let peer = c.peer;
    match &mut c.rx {
        Rx::Header { buf, got } => {
            let n = match c.sock.read(&mut buf[*got..]) {
                Ok(0) if *got == 0 => {
                    return Err(Fail::gone(
                        peer,
                        "its connection closed (process exited or was killed?)",
                    ))
                }
                Ok(0) => {
                    return Err(Fail::gone(
                        peer,
                        "its connection closed in the middle of a frame header",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return Ok(ReadStep::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ReadStep::Progress),
                Err(e) => return Err(Fail::gone(peer, format!("connection lost: {e}"))),
            };
            *got += n;
            if *got < HEADER_LEN {
                return Ok(ReadStep::Progress);
            }
            let h = Header::decode(buf)
                .map_err(|e| Fail::gone(peer, format!("sent a malformed frame: {e}")))?;
            Ok(ReadStep::Header(h))
        }
        Rx::Notice { header, buf } => {
            let want = header.len as usize - buf.len();
            let mut tmp = [0u8; 4096];
            let n = match c.sock.read(&mut tmp[..want.min(4096)]) {
                Ok(0) => return Err(truncated(peer, header)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.readable = false;
                    return Ok(ReadStep::Blocked);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ReadStep::Progress),
                Err(e) => return Err(Fail::gone(peer, format!("connection lost: {e}"))),
            };
            buf.extend_from_slice(&tmp[..n]);
            Ok(ReadStep::Progress)
        }
        _ => unreachable!("read_some reads headers and notices"),
    }
}

/// Reads payload bytes straight into `out`; returns 0 when nothing is available.
fn read_into(c: &mut Conn, out: &mut [u8]) -> std::result::Result<usize, Fail> {
    loop {
        match c.sock.read(out) {
            Ok(0) => {
                let Rx::Payload { header, .. } = &c.rx else {
                    unreachable!("payload state")
                };
                return Err(truncated(c.peer, header));
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                return Ok(0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::gone(c.peer, format!("connection lost: {e}"))),
        }
    }
}
