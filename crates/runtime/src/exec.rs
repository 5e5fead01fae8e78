//! Executing one rank's program over the transports: the I/O shell around
//! [`topoccl_plan::machine::RankMachine`] (or the same program compiled,
//! [`topoccl_plan::compiled::CompiledMachine`]).
//!
//! The loop hands ready ops to the network (sends and receives are posted in the
//! [`Matcher`], which releases sends in link order; frames are written header and payload
//! together straight from the source slice; arriving frames are matched and read straight
//! into their destination — reductions straight from shared memory, or through a small
//! staging buffer over TCP, as the bytes arrive) or runs them locally (copies,
//! reductions). Between bursts of progress it waits on the transports until the call's
//! deadline. Anything wrong — a peer's connection closing, a malformed or mismatched
//! frame, a fault cutting a link, the deadline — ends the call with an error naming the
//! rank.

use std::io;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use topoccl_plan::compiled::CompiledMachine;
use topoccl_plan::exec::kernels::{reduce_into, reduce_to, Element};
use topoccl_plan::machine::{RankMachine, ReadyOp};
use topoccl_plan::{Buf, OpKind, Rank, ReduceOp, Slice};

use crate::error::{Error, Result};
use crate::live::{Live, Transfer};
use crate::matcher::{CallInfo, Matcher, Reject, Verdict};
use crate::split::{Part, Stopwatch, TimeSplit};
use crate::transport::{Conn, Polling, Rx, Sent, Transports, Tx, STAGING_BYTES};
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

impl Program for CompiledMachine {
    fn next_ready(&mut self) -> Option<ReadyOp> {
        CompiledMachine::next_ready(self)
    }
    fn complete(&mut self, index: u64) {
        CompiledMachine::complete(self, index)
    }
    fn is_done(&self) -> bool {
        CompiledMachine::is_done(self)
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
    fn local(&mut self, kind: &OpKind, op: ReduceOp, sw: &mut Stopwatch) {
        let t = sw.start();
        match *kind {
            OpKind::Copy { src, dst } if src != dst => {
                let (s, d) = self.pair(src, dst);
                d.copy_from_slice(s);
                sw.stop(Part::Copy, t);
            }
            OpKind::Reduce { src, dst } => {
                let (s, d) = self.pair(src, dst);
                reduce_into(op, d, s);
                sw.stop(Part::Reduce, t);
            }
            _ => {}
        }
    }
}

/// Why peers went away: a crash (connection closed without a goodbye) or a normal close.
pub(crate) type Departed = FxHashMap<Rank, String>;

/// How long to wait and how eagerly.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub at: Instant,
    /// The call's timeout, for messages.
    pub timeout: Duration,
    /// The setting that gives the deadline, for messages.
    pub setting: &'static str,
    pub polling: Polling,
}

/// What a call tells its world's heartbeat monitor, and asks it (`crate::health`,
/// `crate::deadlines`).
pub(crate) struct CallWatch<'a> {
    pub monitor: &'a crate::health::Monitor,
    /// The communicator's id in beats (a hash of its name).
    pub comm: u32,
    /// This communicator's ranks as world ranks.
    pub world_ranks: &'a [Rank],
    /// With progress deadlines on: the deadlines and the level of each link.
    pub deadlines: Option<(
        crate::deadlines::ProgressDeadlines,
        &'a [crate::deadlines::Level],
    )>,
}

/// How often a waiting call publishes whom it waits on and checks its links' progress.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// Executes `prog` for one call, adding where its time went to `split` if given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<T: Dtype>(
    tr: &mut Transports,
    matcher: &mut Matcher,
    departed: &mut Departed,
    call: &CallInfo,
    prog: &mut dyn Program,
    bufs: &mut Buffers<'_, T>,
    deadline: Deadline,
    split: Option<&mut TimeSplit>,
    live: Option<&mut Live>,
    watch: Option<CallWatch<'_>>,
) -> Result<()> {
    matcher.begin(*call, std::mem::size_of::<T>());
    if let Some(w) = &watch {
        w.monitor.counters().enter(w.comm, call.seq);
    }
    let now = Instant::now();
    let mut ex = Exec {
        call,
        m: matcher,
        deadline,
        size: std::mem::size_of::<T>(),
        timer: None,
        sw: Stopwatch::new(split),
        live,
        rx_began: Default::default(),
        watch,
        links: Default::default(),
        next_watch: now,
        began: now,
    };
    let start = ex.sw.start();
    let result = ex.run(tr, departed, prog, bufs);
    ex.sw.call(start);
    if let Some(w) = &ex.watch {
        w.monitor.counters().leave();
    }
    // The matcher knows peers, not this rank: the subject of a mismatch is filled here.
    result.map_err(|e| match e {
        Error::Mismatch { peer, detail, .. } => Error::Mismatch {
            rank: tr.rank(),
            peer,
            detail,
        },
        e => e,
    })
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
    m: &'c mut Matcher,
    deadline: Deadline,
    size: usize,
    /// The earliest moment a fault holds a frame back until.
    timer: Option<Instant>,
    sw: Stopwatch<'c>,
    /// Where sent and received frames are reported, while metrics are on.
    live: Option<&'c mut Live>,
    /// While metrics are on: the frame being read on each (peer, lane).
    rx_began: std::collections::HashMap<(Rank, u16), Reading>,
    /// The heartbeat monitor, when on.
    watch: Option<CallWatch<'c>>,
    /// Per peer (of this communicator): when bytes last moved with it, and since when it
    /// is known to be in this call waiting on this rank.
    links: FxHashMap<Rank, LinkClock>,
    /// When to publish and check next.
    next_watch: Instant,
    /// When the call began.
    began: Instant,
}

/// A link's progress clock (`crate::deadlines`).
#[derive(Clone, Copy, Default)]
struct LinkClock {
    moved: Option<Instant>,
    engaged: Option<Instant>,
}

/// While metrics are on, a frame being read: when its header arrived, and once this
/// rank took it (its receive posted), when and how many bytes.
#[derive(Clone, Copy)]
struct Reading {
    header: Instant,
    delivered: Option<(Instant, u64)>,
}

impl Exec<'_> {
    fn failed(&self, rank: Rank, reason: impl Into<String>) -> Error {
        Error::PeerFailed {
            op: self.call.name.to_string(),
            rank,
            reason: reason.into(),
        }
    }

    /// Fails if the connection a transfer with `peer` on `channel` needs has closed.
    fn check_link(
        &self,
        tr: &Transports,
        departed: &Departed,
        peer: Rank,
        channel: u16,
    ) -> Result<()> {
        let open = tr.data_conn(peer, channel).is_some();
        match departed.get(&peer) {
            Some(why) if tr.connected(peer) && !open => Err(self.failed(peer, why.clone())),
            _ => Ok(()),
        }
    }

    fn run<T: Dtype>(
        &mut self,
        tr: &mut Transports,
        departed: &mut Departed,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> Result<()> {
        loop {
            tr.check_abort()?;
            while let Some(r) = prog.next_ready() {
                match r.op.kind {
                    OpKind::Send { peer, .. }
                    | OpKind::Recv { peer, .. }
                    | OpKind::RecvReduce { peer, .. } => {
                        tr.ensure(peer)?;
                        self.check_link(tr, departed, peer, r.op.channel)?;
                        self.m.post(&r);
                    }
                    _ => {
                        bufs.local(&r.op.kind, self.call.op, &mut self.sw);
                        prog.complete(r.index);
                    }
                }
            }
            if prog.is_done() {
                return Ok(());
            }
            let mut progressed = tr.advance()?;
            self.timer = None;
            for i in 0..tr.slots() {
                if !tr.is_live(i) {
                    continue;
                }
                let Some((peer, purpose, lane)) = tr.conn(i).map(|c| (c.peer, c.purpose, c.lane))
                else {
                    continue;
                };
                let lanes = tr.lanes(peer);
                let Some(c) = tr.conn(i) else { continue };
                match self.pump(c, lanes, prog, bufs) {
                    Ok(p) => {
                        progressed |= p;
                        if p && self.watch.is_some() {
                            self.links.entry(peer).or_default().moved = Some(Instant::now());
                        }
                    }
                    Err(Gone { peer, reason }) => {
                        // A message half written on it can never complete now; it left
                        // the posted sends when its first byte was written.
                        let sending = tr.conn(i).is_some_and(|c| c.tx.is_some());
                        // Only this connection ended: others of the same peer may still
                        // hold its last messages (a peer that finished says goodbye).
                        tr.drop_conn(i);
                        let why = departed.entry(peer).or_insert(reason).clone();
                        if purpose == Purpose::Data && (sending || self.m.needs(peer, lane, lanes))
                        {
                            return Err(self.explain(tr, self.failed(peer, why)));
                        }
                        progressed = true;
                    }
                    Err(Refused { peer, reason }) => {
                        // What it sent is proof enough: no notice it sends after seeing
                        // the connection dropped can shift the blame.
                        tr.drop_conn(i);
                        departed.entry(peer).or_insert_with(|| reason.clone());
                        return Err(self.failed(peer, reason));
                    }
                    Err(Fatal(e)) => return Err(e),
                }
            }
            if progressed {
                continue;
            }
            self.look_in_flight(tr);
            self.watch_links(tr)?;
            let mut until = self
                .timer
                .map_or(self.deadline.at, |t| t.min(self.deadline.at));
            if self.watch.is_some() {
                until = until.min(self.next_watch);
            }
            if let Some(look) = self.live.as_deref().and_then(Live::next_look) {
                until = until.min(look);
            }
            let t = self.sw.start();
            let woke = tr.wait(until, self.deadline.polling)?;
            self.sw.stop(Part::Wait, t);
            if !woke && Instant::now() >= self.deadline.at {
                return Err(self.timeout_error(tr));
            }
        }
    }

    /// With a heartbeat monitor, at most every [`WATCH_EVERY`]: publishes the peers this
    /// rank waits on (posted transfers not finished), and with progress deadlines on fails
    /// the call on a link that moved nothing for its level's deadline while its other end,
    /// by its beats, is inside this call waiting on this rank.
    fn watch_links(&mut self, tr: &mut Transports) -> Result<()> {
        let Some(w) = &self.watch else {
            return Ok(());
        };
        let now = Instant::now();
        if now < self.next_watch {
            return Ok(());
        }
        self.next_watch = now + WATCH_EVERY;
        let mut pending: Vec<Rank> = self.m.waiting_recvs().iter().map(|r| r.0).collect();
        pending.extend(self.m.waiting_sends().iter().map(|s| s.0));
        for i in tr.live().collect::<Vec<_>>() {
            if let Some(c) = tr.conn(i).filter(|c| c.purpose == Purpose::Data) {
                if c.tx.is_some() || matches!(c.rx, Rx::Payload { .. }) {
                    pending.push(c.peer);
                }
            }
        }
        pending.sort_unstable();
        pending.dedup();
        let world: Vec<Rank> = pending
            .iter()
            .filter_map(|&p| w.world_ranks.get(p as usize).copied())
            .collect();
        w.monitor.counters().set_waiting(&world);
        let Some((deadlines, levels)) = w.deadlines else {
            return Ok(());
        };
        let this = topoccl_watch::health::CallId {
            comm: w.comm,
            seq: self.call.seq,
        };
        self.links.retain(|p, _| pending.binary_search(p).is_ok());
        for (&peer, &wr) in pending.iter().zip(&world) {
            let engaged = w
                .monitor
                .progress(wr)
                .is_some_and(|p| p.in_call == Some(this) && p.waiting_on_you);
            let clock = self.links.entry(peer).or_default();
            if !engaged {
                clock.engaged = None;
                continue;
            }
            let since = *clock.engaged.get_or_insert(now);
            let from = clock.moved.map_or(since, |m| m.max(since)).max(self.began);
            let level = levels
                .get(peer as usize)
                .copied()
                .unwrap_or(crate::deadlines::Level::Cross);
            let limit = deadlines.of(level);
            if now.duration_since(from) >= limit {
                return Err(Error::Stalled {
                    op: self.call.name.to_string(),
                    rank: tr.rank(),
                    peer,
                    level: level.name(),
                    stalled: now.duration_since(from),
                    deadline: limit,
                });
            }
        }
        Ok(())
    }

    /// While metrics are on and a look is due: shows the live view the frames this call
    /// has half sent and half received (a stalled link shows while it stalls).
    fn look_in_flight(&mut self, tr: &mut Transports) {
        let Some(live) = self.live.as_deref_mut() else {
            return;
        };
        if live.next_look().is_some_and(|t| Instant::now() < t) {
            return;
        }
        let mut sending = Vec::new();
        for i in tr.live().collect::<Vec<_>>() {
            let Some(c) = tr.conn(i).filter(|c| c.purpose == Purpose::Data) else {
                continue;
            };
            if let Some((tx, began)) = c.tx.as_ref().and_then(|tx| Some((tx, tx.began?))) {
                sending.push(Transfer {
                    peer: c.peer,
                    bytes: tx.len as u64,
                    began,
                });
            }
        }
        let receiving: Vec<Transfer> = self
            .rx_began
            .iter()
            .filter_map(|(&(peer, _), r)| {
                let (began, bytes) = r.delivered?;
                Some(Transfer { peer, bytes, began })
            })
            .collect();
        live.during_call(&sending, &receiving);
    }

    /// A peer that vanished may have been stopping because of someone else: a rank that
    /// fails tells everyone why before it exits, so look for that notice for a moment
    /// before blaming the peer.
    fn explain(&mut self, tr: &mut Transports, e: Error) -> Error {
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
            if now >= until
                || tr
                    .wait(until.min(self.deadline.at), Polling::default())
                    .is_err()
            {
                return e;
            }
        }
    }

    fn timeout_error(&self, tr: &mut Transports) -> Error {
        let mut ranks: Vec<Rank> = Vec::new();
        let mut what: Vec<String> = Vec::new();
        for (peer, ch, next) in self.m.waiting_recvs().into_iter().take(4) {
            ranks.push(peer);
            let open = tr.data_conn(peer, ch).is_some();
            what.push(match (open, tr.refused.get(&peer)) {
                (false, Some(r)) => {
                    format!("rank {peer} never connected; a connection claiming to be it was refused: {r}")
                }
                (false, None) if tr.handshaking(peer) => {
                    format!("rank {peer} did not complete its connection handshake")
                }
                (false, None) => format!("rank {peer} never connected"),
                (true, _) => {
                    format!("a message from rank {peer} (channel {ch}, message {next}) never came")
                }
            });
        }
        // Messages half written count as well as those not started; an injected fault
        // holding the link is named rather than the peer.
        let mut stuck: Vec<(Rank, String)> = self
            .m
            .waiting_sends()
            .into_iter()
            .map(|(peer, ch)| {
                (
                    peer,
                    format!("rank {peer} did not take a message (channel {ch}) off the wire"),
                )
            })
            .collect();
        for i in tr.live().collect::<Vec<_>>() {
            let Some(c) = tr.conn(i).filter(|c| c.tx.is_some()) else {
                continue;
            };
            let text = match c.fault_holding() {
                Some(held) => held,
                None => format!(
                    "rank {} did not take a message (half written on lane {}) off the wire",
                    c.peer, c.lane
                ),
            };
            stuck.retain(|s| s.0 != c.peer);
            stuck.push((c.peer, text));
        }
        stuck.sort();
        stuck.dedup_by_key(|s| s.0);
        for (peer, text) in stuck.into_iter().take(4) {
            if !ranks.contains(&peer) {
                ranks.push(peer);
            }
            what.push(text);
        }
        if what.is_empty() {
            what.push("no transfer was posted (a local dependency never completed)".into());
        }
        self.blame_by_heartbeat(&mut ranks, &mut what);
        Error::Timeout {
            op: self.call.name.to_string(),
            after: self.deadline.timeout,
            waiting: format!(
                "{}; is that rank alive and in the same collective? (raise {} if it is just \
                 slow)",
                what.join("; "),
                self.deadline.setting
            ),
            ranks,
        }
    }

    /// With heartbeats on, a peer this call waits on may itself be waiting, on a rank
    /// that hung or died: the monitor tells them apart. Ranks it judges dead or stopped
    /// are named first; while any is, peers it still hears from as alive are not blamed.
    fn blame_by_heartbeat(&self, ranks: &mut Vec<Rank>, what: &mut Vec<String>) {
        let Some(w) = &self.watch else {
            return;
        };
        let health = w.monitor.peer_health(w.world_ranks);
        let failed: Vec<&crate::PeerHealth> = health
            .iter()
            .filter(|h| h.state.is_dead() || h.state == crate::PeerState::HungStopped)
            .collect();
        if failed.is_empty() {
            return;
        }
        let alive = |r: Rank| {
            health
                .get(r as usize)
                .is_some_and(|h| h.state == crate::PeerState::Alive)
        };
        let mut blamed: Vec<Rank> = failed.iter().map(|h| h.rank).collect();
        for &r in ranks.iter() {
            if !alive(r) && !blamed.contains(&r) {
                blamed.push(r);
            }
        }
        for h in failed {
            what.push(format!("heartbeats: rank {} is {}", h.rank, h.state));
        }
        *ranks = blamed;
    }

    /// Writes and reads what it can on connection `c`.
    fn pump<T: Dtype>(
        &mut self,
        c: &mut Conn,
        lanes: u16,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        match c.purpose {
            Purpose::Control => {
                if c.readable {
                    progressed |= self.read_control(c)?;
                }
            }
            Purpose::Data => {
                if c.writable {
                    progressed |= self.write_data(c, lanes, prog, bufs)?;
                }
                if c.readable {
                    progressed |= self.read_data(c, lanes, prog, bufs)?;
                }
            }
        }
        Ok(progressed)
    }

    fn write_data<T: Dtype>(
        &mut self,
        c: &mut Conn,
        lanes: u16,
        prog: &mut dyn Program,
        bufs: &Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            if c.tx.is_none() {
                let Some(f) = self.m.next_send(c.peer, c.lane, lanes) else {
                    return Ok(progressed);
                };
                c.tx = Some(Tx {
                    header: f.header,
                    header_sent: 0,
                    index: f.index,
                    buf: f.src.buf,
                    start: f.src.off as usize * self.size,
                    len: f.src.len as usize * self.size,
                    sent: 0,
                    began: self.live.is_some().then(Instant::now),
                });
            }
            let (buf, from, to) = {
                let tx = c.tx.as_ref().expect("set above");
                (tx.buf, tx.start + tx.sent, tx.start + tx.len)
            };
            let payload: &[u8] = bytemuck::cast_slice(bufs.bufs[buf.index()].get());
            let t = self.sw.start();
            let sent = c.send(&payload[from..to]);
            self.sw.stop(Part::Copy, t);
            match sent {
                Ok(Sent::Bytes(n)) => {
                    progressed = true;
                    if let Some(w) = &self.watch {
                        w.monitor.counters().moved(n);
                    }
                    if c.tx.as_ref().is_some_and(Tx::done) {
                        let tx = c.tx.take().expect("a frame");
                        if let (Some(live), Some(began)) = (self.live.as_deref_mut(), tx.began) {
                            live.record(c.peer, tx.len as u64, began, Instant::now());
                        }
                        prog.complete(tx.index);
                    }
                }
                Ok(Sent::Blocked) | Ok(Sent::Stalled(_)) => return Ok(progressed),
                Ok(Sent::Later(at)) => {
                    self.timer = Some(self.timer.map_or(at, |t| t.min(at)));
                    return Ok(progressed);
                }
                Ok(Sent::Cut(why)) => return Err(Fatal(self.failed(c.peer, why))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Fail::gone(
                        c.peer,
                        format!("connection lost while sending: {e}"),
                    ))
                }
            }
        }
    }

    fn read_control(&mut self, c: &mut Conn) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            match read_some(c)? {
                ReadStep::Blocked => return Ok(progressed),
                ReadStep::Header(bytes) => {
                    progressed = true;
                    let h = crate::matcher::control_frame(&bytes)
                        .map_err(|e| Fail::refused(c.peer, e))?;
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
                    c.rx = Rx::header();
                    if kind == Kind::Bye {
                        return Err(Fail::gone(
                            c.peer,
                            "it has closed its communicator (it left)".to_string(),
                        ));
                    }
                    let notice =
                        AbortNotice::decode(&payload).map_err(|e| Fail::refused(c.peer, e))?;
                    return Err(Fatal(Error::Aborted {
                        op: self.call.name.to_string(),
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
        lanes: u16,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let mut progressed = false;
        loop {
            let verdict = match &c.rx {
                Rx::Header { .. } => match read_some(c)? {
                    ReadStep::Blocked => return Ok(progressed),
                    ReadStep::Progress => {
                        progressed = true;
                        continue;
                    }
                    ReadStep::Header(bytes) => {
                        progressed = true;
                        if self.live.is_some() {
                            let reading = Reading {
                                header: Instant::now(),
                                delivered: None,
                            };
                            self.rx_began.insert((c.peer, c.lane), reading);
                        }
                        let (h, v) = self
                            .m
                            .on_bytes(c.peer, c.lane, lanes, &bytes)
                            .map_err(|r| reject(c.peer, r))?;
                        c.rx = Rx::Parked(h);
                        v
                    }
                },
                Rx::Parked(h) => self
                    .m
                    .on_header(c.peer, c.lane, lanes, h)
                    .map_err(|r| reject(c.peer, r))?,
                Rx::Payload { .. } => {
                    if !self.read_payload(c, prog, bufs)? {
                        return Ok(progressed);
                    }
                    progressed = true;
                    continue;
                }
                Rx::Notice { .. } => {
                    return Err(Fail::refused(c.peer, "control frame on a data connection"))
                }
            };
            let Rx::Parked(h) = c.rx else {
                unreachable!("a header was just parked")
            };
            match verdict {
                Verdict::Park => return Ok(progressed),
                Verdict::Deliver(d) => {
                    progressed = true;
                    if let Some(r) = self.rx_began.get_mut(&(c.peer, c.lane)) {
                        r.delivered = Some((Instant::now(), h.len));
                    }
                    c.staged = 0;
                    c.rx = Rx::Payload {
                        header: h,
                        index: d.index,
                        kind: d.kind,
                        got: 0,
                    };
                    if h.len == 0 {
                        self.finish_recv(c, prog);
                    }
                }
            }
        }
    }

    fn finish_recv(&mut self, c: &mut Conn, prog: &mut dyn Program) {
        if let Rx::Payload { header, index, .. } = c.rx {
            self.m.received(c.peer, &header);
            if let (Some(live), Some(r)) = (
                self.live.as_deref_mut(),
                self.rx_began.remove(&(c.peer, c.lane)),
            ) {
                live.record_received(c.peer, header.len, r.header, Instant::now());
            }
            prog.complete(index);
            c.frame_read(HEADER_LEN as u64 + header.len);
        }
        c.rx = Rx::header();
    }

    /// Reads payload bytes; returns false when the connection has nothing more now.
    fn read_payload<T: Dtype>(
        &mut self,
        c: &mut Conn,
        prog: &mut dyn Program,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<bool, Fail> {
        let Rx::Payload {
            header,
            index,
            kind,
            got,
        } = c.rx
        else {
            unreachable!("payload state")
        };
        let size = self.size;
        let left = (header.len - got) as usize;
        let n = match kind {
            OpKind::Recv { dst, .. } => {
                let out: &mut [u8] = bytemuck::cast_slice_mut(bufs.write(dst));
                let t = self.sw.start();
                let read = c.recv(&mut out[got as usize..]);
                self.sw.stop(Part::Copy, t);
                match read {
                    Ok(0) => return Err(truncated(c.peer, &header)),
                    Ok(n) => n,
                    Err(e) => return io_step(c.peer, e).map(|_| false),
                }
            }
            OpKind::RecvReduce { src, dst, .. } => {
                // Shared memory: reduce whole elements straight from the ring (its frames
                // keep payloads aligned); else, or mid-element, through staging.
                let in_place = if c.staged == 0 { c.peek(left) } else { None };
                match in_place {
                    Some(Ok([])) => return Err(truncated(c.peer, &header)),
                    Some(Ok(bytes)) => {
                        let whole = bytes.len() / size * size;
                        match bytemuck::try_cast_slice::<u8, T>(&bytes[..whole]) {
                            Ok(incoming) => {
                                self.reduce_at(bufs, src, dst, got / size as u64, incoming);
                                c.consume(whole);
                                whole
                            }
                            Err(_) => {
                                debug_assert!(false, "ring payloads are aligned");
                                self.stage_and_reduce(c, left, src, dst, got, bufs)?
                            }
                        }
                    }
                    Some(Err(e)) => return io_step(c.peer, e).map(|_| false),
                    None => self.stage_and_reduce(c, left, src, dst, got, bufs)?,
                }
            }
            _ => unreachable!("only receives are posted"),
        };
        if n == 0 {
            return Ok(false);
        }
        if let Some(w) = &self.watch {
            w.monitor.counters().moved(n);
        }
        let got = got + n as u64;
        debug_assert!(got <= header.len, "read past the frame");
        if got == header.len {
            self.finish_recv(c, prog);
        } else {
            c.rx = Rx::Payload {
                header,
                index,
                kind,
                got,
            };
        }
        Ok(true)
    }

    /// `dst[at..] = src[at..] ⊕ incoming`, for the elements of a payload from `at` on.
    fn reduce_at<T: Dtype>(
        &mut self,
        bufs: &mut Buffers<'_, T>,
        src: Slice,
        dst: Slice,
        at: u64,
        incoming: &[T],
    ) {
        let k = incoming.len() as u64;
        debug_assert!(at + k <= dst.len, "reduced past the destination");
        let s = Slice::new(src.buf, src.off + at, k);
        let d = Slice::new(dst.buf, dst.off + at, k);
        let t = self.sw.start();
        if s != d {
            let (s, d) = bufs.pair(s, d);
            reduce_to(self.call.op, d, s, incoming);
        } else {
            reduce_into(self.call.op, bufs.write(d), incoming);
        }
        self.sw.stop(Part::Reduce, t);
    }

    /// Reads into the connection's staging buffer and reduces the whole elements staged
    /// so far; returns the bytes read (0: nothing now). `got` payload bytes were read
    /// before, the last `c.staged` of them still staged.
    fn stage_and_reduce<T: Dtype>(
        &mut self,
        c: &mut Conn,
        left: usize,
        src: Slice,
        dst: Slice,
        got: u64,
        bufs: &mut Buffers<'_, T>,
    ) -> std::result::Result<usize, Fail> {
        let size = self.size;
        if c.staging.is_empty() {
            c.staging = vec![0u64; STAGING_BYTES / 8];
        }
        let staged = c.staged;
        let room = (STAGING_BYTES - staged).min(left);
        let mut stage = std::mem::take(&mut c.staging);
        let t = self.sw.start();
        let r = {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut stage);
            c.recv(&mut bytes[staged..staged + room])
        };
        self.sw.stop(Part::Copy, t);
        let n = match r {
            Ok(0) => {
                c.staging = stage;
                let Rx::Payload { header, .. } = &c.rx else {
                    unreachable!("payload state")
                };
                return Err(truncated(c.peer, header));
            }
            Ok(n) => n,
            Err(e) => {
                c.staging = stage;
                return io_step(c.peer, e).map(|_| 0);
            }
        };
        let have = staged + n;
        let whole = have / size;
        if whole > 0 {
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut stage);
            let incoming: &[T] = bytemuck::cast_slice(&bytes[..whole * size]);
            let at = (got - staged as u64) / size as u64;
            self.reduce_at(bufs, src, dst, at, incoming);
            bytes.copy_within(whole * size..have, 0);
        }
        c.staged = have % size;
        c.staging = stage;
        Ok(n)
    }
}

/// A frame the matcher refused.
fn reject(peer: Rank, r: Reject) -> Fail {
    match r {
        // `rank` is this one's, filled in by `run` (the matcher does not know it).
        Reject::Mismatch(detail) => Fatal(Error::Mismatch {
            rank: 0,
            peer,
            detail,
        }),
        Reject::Protocol(p) => Fail::refused(peer, p),
    }
}

/// An I/O error while reading: nothing now (`Ok`), or the peer is gone.
fn io_step(peer: Rank, e: io::Error) -> std::result::Result<(), Fail> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
        _ => Err(Fail::gone(peer, format!("connection lost: {e}"))),
    }
}

/// How a connection-level step failed.
enum Fail {
    /// The peer is gone or unreadable: it may be fine if this call does not need it.
    Gone { peer: Rank, reason: String },
    /// The peer sent bytes the protocol forbids (a garbage or corrupted frame): the call
    /// fails naming it.
    Refused { peer: Rank, reason: String },
    /// The call cannot go on.
    Fatal(Error),
}

use Fail::{Fatal, Gone, Refused};

impl Fail {
    fn gone(peer: Rank, reason: impl Into<String>) -> Fail {
        Gone {
            peer,
            reason: reason.into(),
        }
    }

    fn refused(peer: Rank, reason: impl Into<String>) -> Fail {
        Refused {
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
    /// A whole header's bytes, not decoded yet.
    Header([u8; HEADER_LEN]),
}

/// Advances the header or notice being read; yields a header's bytes when complete.
fn read_some(c: &mut Conn) -> std::result::Result<ReadStep, Fail> {
    let peer = c.peer;
    let mut hdr = [0u8; HEADER_LEN];
    // Notices are read through `tmp`; headers (every message) do not need it zeroed.
    let mut tmp = Vec::new();
    let got = match &c.rx {
        Rx::Header { buf, got } => {
            hdr = *buf;
            *got
        }
        Rx::Notice { header, buf } => {
            tmp.resize((header.len as usize - buf.len()).min(4096), 0);
            0
        }
        _ => unreachable!("read_some reads headers and notices"),
    };
    let r = if matches!(c.rx, Rx::Header { .. }) {
        c.recv(&mut hdr[got..])
    } else {
        c.recv(&mut tmp)
    };
    let n = match r {
        Ok(0) => {
            return Err(match &c.rx {
                Rx::Notice { header, .. } => truncated(peer, header),
                _ if got == 0 => Fail::gone(
                    peer,
                    "its connection closed (process exited or was killed?)",
                ),
                _ => Fail::gone(
                    peer,
                    "its connection closed in the middle of a frame header",
                ),
            })
        }
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadStep::Blocked),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(ReadStep::Progress),
        Err(e) => return Err(Fail::gone(peer, format!("connection lost: {e}"))),
    };
    match &mut c.rx {
        Rx::Header { buf, got } => {
            *buf = hdr;
            *got += n;
            if *got < HEADER_LEN {
                return Ok(ReadStep::Progress);
            }
            *got = 0;
            Ok(ReadStep::Header(hdr))
        }
        Rx::Notice { buf, .. } => {
            buf.extend_from_slice(&tmp[..n]);
            Ok(ReadStep::Progress)
        }
        _ => unreachable!("read_some reads headers and notices"),
    }
}
