//! Connections between the ranks of a communicator.
//!
//! Each pair of ranks that exchange data gets `streams` data connections and one control
//! connection, opened on first use by the lower rank (so two ranks never dial each other
//! at once). Handshakes are non-blocking state machines advanced by the same event loop as
//! the data, so a rank waiting for a missing peer keeps accepting everyone else. A
//! handshake carries the job, communicator, world size, both ranks and the job's secret;
//! anything else is refused with a reason the dialler reports and the listener logs and
//! remembers (to blame the rank if it is later waited for).
//!
//! Established connections are polled with `mio` (edge-triggered: the `readable` /
//! `writable` flags remember readiness until an operation hits `WouldBlock`). Frame-level
//! state lives in each [`Conn`] and survives between collective calls, so a frame of the
//! next call that arrives early waits, parked.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use topoccl_plan::Rank;

use crate::error::{Error, Result};
use crate::wire::{self, AbortNotice, Header, Hello, Kind, Purpose, HEADER_LEN, HELLO_LEN};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// How long an accepted connection may take to say hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Kernel socket buffers: large enough to keep a loopback or LAN link busy.
const SOCKET_BUFFER: usize = 4 << 20;
/// Bytes of receive staging per connection for reductions.
pub const STAGING_BYTES: usize = 256 << 10;

/// Who this rank is, as the handshake proves it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub rank: Rank,
    pub world: u32,
    pub job: u64,
    pub comm: u64,
    pub secret: [u8; 32],
}

/// Where a connection's incoming bytes are in the frame structure.
#[derive(Debug)]
pub enum Rx {
    /// Reading a header.
    Header { buf: [u8; HEADER_LEN], got: usize },
    /// A header read, waiting for the receive it belongs to to be posted.
    Parked(Header),
    /// Reading the payload of `header` for program op `index`.
    Payload {
        header: Header,
        index: u64,
        got: u64,
    },
    /// Reading an abort notice's payload.
    Notice { header: Header, buf: Vec<u8> },
}

/// A message being written.
#[derive(Debug)]
pub struct Tx {
    pub header: [u8; HEADER_LEN],
    pub header_sent: usize,
    /// Program op index (sends complete when fully written).
    pub index: u64,
    /// Byte range of the payload in its physical buffer.
    pub buf: topoccl_plan::Buf,
    pub start: usize,
    pub len: usize,
    pub sent: usize,
}

/// Where a connection's handshake is.
#[derive(Debug)]
pub enum Hs {
    /// Dialled; sending the hello once connected.
    Dialing {
        hello: [u8; HELLO_LEN],
        sent: usize,
    },
    /// Hello sent; reading the ack and its reason.
    AwaitAck {
        buf: Vec<u8>,
        need: usize,
    },
    /// Accepted; reading the dialler's hello.
    Accepting {
        buf: [u8; HELLO_LEN],
        got: usize,
        since: Instant,
    },
    /// Writing our ack; the hello is kept when the connection is admitted.
    Replying {
        ack: Vec<u8>,
        sent: usize,
        admitted: Option<Hello>,
    },
    Ready,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    pub hs: Hs,
    pub sock: MioStream,
    pub peer: Rank,
    pub purpose: Purpose,
    pub stream: u16,
    pub readable: bool,
    pub writable: bool,
    pub rx: Rx,
    pub tx: Option<Tx>,
    /// Staging for reductions (u64 for alignment of every element type).
    pub staging: Vec<u64>,
    /// Bytes at the front of `staging` not reduced yet (a partial element).
    pub staged: usize,
}

impl Conn {
    fn new(sock: MioStream, hs: Hs, peer: Rank, purpose: Purpose, stream: u16) -> Conn {
        Conn {
            hs,
            sock,
            peer,
            purpose,
            stream,
            readable: true,
            writable: true,
            rx: Rx::Header {
                buf: [0; HEADER_LEN],
                got: 0,
            },
            tx: None,
            staging: Vec::new(),
            staged: 0,
        }
    }
}

#[derive(Debug, Default)]
struct PeerConns {
    data: Vec<Option<usize>>,
    control: Option<usize>,
}

/// Lets another thread abort a communicator blocked in a call.
#[derive(Clone, Debug)]
pub struct AbortHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl AbortHandle {
    /// Makes the current and every later call on the communicator fail promptly.
    pub fn abort(&self) {
        self.flag.store(true, Ordering::SeqCst);
        // A failed wake only delays the abort to the next poll timeout; nothing to do.
        let _ = self.waker.wake();
    }

    pub fn is_aborted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// The connections of one communicator.
#[derive(Debug)]
pub struct Transport {
    pub id: Identity,
    pub streams: u16,
    poll: Poll,
    events: Events,
    listener: TcpListener,
    addrs: Vec<SocketAddr>,
    conns: Vec<Option<Conn>>,
    peers: HashMap<Rank, PeerConns>,
    /// Handshakes refused, by the rank that attempted them.
    pub refused: HashMap<Rank, String>,
    abort: AbortHandle,
    /// Whether this rank has sent its abort notice (one per communicator).
    forwarded: bool,
}

fn io_err(what: &str, e: io::Error) -> Error {
    Error::Io(format!("{what}: {e}"))
}

/// Applies the options every socket gets.
fn tune(sock: &TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let s = socket2::SockRef::from(sock);
    // Best effort: the kernel may cap these; the defaults still work.
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    Ok(())
}

impl Transport {
    /// Binds a listener on `bind` (port 0: any free port). The addresses of all ranks are
    /// given later by [`Transport::set_addrs`], after the rendezvous.
    pub fn bind(id: Identity, bind: SocketAddr, streams: u16) -> Result<Transport> {
        let listener = TcpListener::bind(bind).map_err(|e| {
            Error::Config(format!(
                "cannot listen on {bind}: {e}; choose another interface with \
                 TOPOCCL_SOCKET_IFNAME"
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("listener", e))?;
        let poll = Poll::new().map_err(|e| io_err("poll", e))?;
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                LISTENER,
                Interest::READABLE,
            )
            .map_err(|e| io_err("register listener", e))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| io_err("waker", e))?);
        Ok(Transport {
            id,
            streams: streams.max(1),
            poll,
            events: Events::with_capacity(1024),
            listener,
            addrs: Vec::new(),
            conns: Vec::new(),
            peers: HashMap::new(),
            refused: HashMap::new(),
            abort: AbortHandle {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            forwarded: false,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| io_err("listener address", e))
    }

    pub fn set_addrs(&mut self, addrs: Vec<SocketAddr>) {
        self.addrs = addrs;
    }

    /// The address `peer` listens on (known after the rendezvous).
    pub fn peer_addr(&self, peer: Rank) -> Option<SocketAddr> {
        self.addrs.get(peer as usize).copied()
    }

    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// Connection `i`, if it is still open.
    pub fn conn(&mut self, i: usize) -> Option<&mut Conn> {
        self.conns.get_mut(i).and_then(Option::as_mut)
    }

    /// Whether connections with `peer` were ever started (some may have closed since).
    pub fn connected(&self, peer: Rank) -> bool {
        self.peers.contains_key(&peer)
    }

    /// The established data connection to `peer` carrying `stream`.
    pub fn data_conn(&self, peer: Rank, stream: u16) -> Option<usize> {
        self.peers
            .get(&peer)?
            .data
            .get(stream as usize)
            .copied()
            .flatten()
    }

    /// Established connections, for progress loops.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c, Some(c) if matches!(c.hs, Hs::Ready)))
            .map(|(i, _)| i)
    }

    /// Whether a handshake with `peer` is under way.
    pub fn handshaking(&self, peer: Rank) -> bool {
        self.conns
            .iter()
            .flatten()
            .any(|c| c.peer == peer && !matches!(c.hs, Hs::Ready))
    }

    /// Starts the connections to `peer` (without waiting) if this rank is the lower one;
    /// otherwise the peer dials and they are accepted. Either way they complete in
    /// [`Transport::advance`].
    pub fn ensure(&mut self, peer: Rank) -> Result<()> {
        // Connections are made once; ones that closed are not made again.
        if self.connected(peer) || peer < self.id.rank {
            return Ok(());
        }
        let addr = *self
            .addrs
            .get(peer as usize)
            .ok_or_else(|| Error::Rendezvous(format!("no address known for rank {peer}")))?;
        self.peers.entry(peer).or_default().data = vec![None; self.streams as usize];
        let mut wanted: Vec<(Purpose, u16)> = vec![(Purpose::Control, 0)];
        wanted.extend((0..self.streams).map(|s| (Purpose::Data, s)));
        for (purpose, stream) in wanted {
            let sock = MioStream::connect(addr).map_err(|e| Error::PeerFailed {
                op: "connecting".into(),
                rank: peer,
                reason: format!("cannot connect to {addr}: {e}"),
            })?;
            let hello = Hello {
                purpose,
                stream,
                world: self.id.world,
                rank: self.id.rank,
                target: peer,
                job: self.id.job,
                comm: self.id.comm,
                secret: self.id.secret,
            };
            let hs = Hs::Dialing {
                hello: hello.encode(),
                sent: 0,
            };
            self.insert(sock, hs, peer, purpose, stream)?;
        }
        Ok(())
    }

    fn insert(
        &mut self,
        mut sock: MioStream,
        hs: Hs,
        peer: Rank,
        purpose: Purpose,
        stream: u16,
    ) -> Result<usize> {
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.poll
            .registry()
            .register(
                &mut sock,
                Token(FIRST_CONN + slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| io_err("register connection", e))?;
        self.conns[slot] = Some(Conn::new(sock, hs, peer, purpose, stream));
        Ok(slot)
    }

    /// Records an established connection in its peer's slots.
    fn established(&mut self, i: usize) {
        let c = self.conns[i].as_mut().expect("connection");
        c.hs = Hs::Ready;
        // Options for dialled sockets (accepted ones were tuned at accept).
        let _ = c.sock.set_nodelay(true);
        let s = socket2::SockRef::from(&c.sock);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER);
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
        let (peer, purpose, stream) = (c.peer, c.purpose, c.stream);
        let streams = self.streams as usize;
        let entry = self.peers.entry(peer).or_default();
        if entry.data.is_empty() {
            entry.data = vec![None; streams];
        }
        match purpose {
            Purpose::Control => entry.control = Some(i),
            Purpose::Data => entry.data[stream as usize] = Some(i),
        }
    }

    /// Advances every handshake under way. Returns the failure of a connection this rank
    /// dialled (its peer is the one to blame); refusals of incoming connections are
    /// logged and remembered in [`Transport::refused`].
    pub fn advance(&mut self) -> Result<bool> {
        let mut progressed = false;
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            if matches!(c.hs, Hs::Ready) {
                continue;
            }
            match step_handshake(c, &self.id, self.streams) {
                Ok(Step::Pending) => {}
                Ok(Step::Moved) => progressed = true,
                Ok(Step::Done) => {
                    progressed = true;
                    self.established(i);
                }
                Ok(Step::Close { refused }) => {
                    progressed = true;
                    if let Some((rank, reason)) = refused {
                        self.refused.insert(rank, reason);
                    }
                    self.drop_conn(i);
                }
                Err(e) => {
                    self.drop_conn(i);
                    return Err(e);
                }
            }
        }
        Ok(progressed)
    }

    /// Accepts pending connections; their handshakes continue in [`Transport::advance`].
    fn accept_all(&mut self) -> Result<()> {
        loop {
            let sock = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(io_err("accept", e)),
            };
            tune(&sock)
                .and_then(|_| sock.set_nonblocking(true))
                .map_err(|e| io_err("accepted socket", e))?;
            // Peer, purpose and stream are known once the hello is read.
            let hs = Hs::Accepting {
                buf: [0; HELLO_LEN],
                got: 0,
                since: Instant::now(),
            };
            self.insert(MioStream::from_std(sock), hs, Rank::MAX, Purpose::Data, 0)?;
        }
    }

    /// Waits for readiness until `deadline` (or a wake-up): updates the connections'
    /// flags, accepts new connections. Returns false on timeout.
    ///
    /// For the first `spin` it polls without sleeping: a message expected within
    /// microseconds then costs no trip through the scheduler (which dominates small
    /// messages); longer waits sleep.
    pub fn poll(&mut self, deadline: Instant, spin: Duration) -> Result<bool> {
        let spin_until = Instant::now() + spin;
        loop {
            let now = Instant::now();
            let timeout = if now < spin_until {
                Duration::ZERO
            } else {
                deadline.saturating_duration_since(now)
            };
            match self.poll.poll(&mut self.events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
                Err(e) => return Err(io_err("poll", e)),
            }
            if !self.events.is_empty() {
                break;
            }
            if timeout > Duration::ZERO || Instant::now() >= deadline {
                return Ok(Instant::now() < deadline);
            }
            std::hint::spin_loop();
        }
        let mut accept = false;
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WAKER => {}
                Token(t) => {
                    if let Some(Some(c)) = self.conns.get_mut(t - FIRST_CONN) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            c.writable = true;
                        }
                    }
                }
            }
        }
        if accept {
            self.accept_all()?;
        }
        Ok(true)
    }

    /// Returns an error if the communicator was aborted from another thread.
    pub fn check_abort(&self) -> Result<()> {
        if self.abort.is_aborted() {
            Err(Error::CommAborted("abort() was called".into()))
        } else {
            Ok(())
        }
    }

    /// Tells every connected peer that this communicator is aborting (best effort, bounded
    /// to a few milliseconds per peer). Sent once per communicator.
    pub fn broadcast_abort(&mut self, notice: &AbortNotice) {
        if !self.forwarded {
            self.forwarded = true;
            self.send_control(Kind::Abort, &notice.encode());
        }
    }

    /// Tells every connected peer that this rank closes the communicator normally.
    pub fn say_goodbye(&mut self) {
        if !self.forwarded {
            self.send_control(Kind::Bye, &[]);
        }
    }

    fn send_control(&mut self, kind: Kind, payload: &[u8]) {
        let header = Header {
            kind,
            collective: None,
            dtype: topoccl_plan::DType::U8,
            op: topoccl_plan::ReduceOp::Sum,
            channel: 0,
            link_seq: 0,
            seq: 0,
            count: 0,
            len: payload.len() as u64,
            fingerprint: 0,
            root: 0,
        }
        .encode();
        let mut frame = header.to_vec();
        frame.extend_from_slice(payload);
        let controls: Vec<usize> = self.peers.values().filter_map(|p| p.control).collect();
        for i in controls {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let give_up = Instant::now() + Duration::from_millis(20);
            let mut sent = 0;
            while sent < frame.len() && Instant::now() < give_up {
                match c.sock.write(&frame[sent..]) {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Closes connection `i` (its peer closed it or broke it).
    pub fn drop_conn(&mut self, i: usize) {
        if let Some(mut c) = self.conns.get_mut(i).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut c.sock);
            if let Some(p) = self.peers.get_mut(&c.peer) {
                for slot in p.data.iter_mut().chain(std::iter::once(&mut p.control)) {
                    if *slot == Some(i) {
                        *slot = None;
                    }
                }
            }
        }
    }

    /// Peers with a live control connection.
    pub fn control_conns(&self) -> Vec<usize> {
        self.peers.values().filter_map(|p| p.control).collect()
    }
}

/// Checks a hello against this rank's identity.
fn admit(id: &Identity, streams: u16, h: &Hello) -> std::result::Result<(), String> {
    if h.job != id.job {
        return Err("it belongs to another job".into());
    }
    if h.comm != id.comm {
        return Err("it belongs to another communicator".into());
    }
    if h.world != id.world {
        return Err(format!(
            "it thinks the world has {} ranks, this rank {}",
            h.world, id.world
        ));
    }
    if h.target != id.rank {
        return Err(format!(
            "it meant to reach rank {}, this is rank {}",
            h.target, id.rank
        ));
    }
    if h.rank >= id.world || h.rank >= id.rank {
        return Err(format!(
            "rank {} cannot dial rank {} (only lower ranks dial higher ones)",
            h.rank, id.rank
        ));
    }
    if h.stream >= streams {
        return Err(format!(
            "stream {} but this communicator uses {streams}",
            h.stream
        ));
    }
    // Constant time, so the comparison leaks nothing about the secret.
    let diff = h
        .secret
        .iter()
        .zip(&id.secret)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err("wrong secret".into());
    }
    Ok(())
}

enum Step {
    Pending,
    Moved,
    Done,
    Close { refused: Option<(Rank, String)> },
}

fn would_block(e: &io::Error) -> bool {
    // A non-blocking connect still in progress reports NotConnected on I/O.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

/// Advances one handshake as far as the socket allows.
fn step_handshake(c: &mut Conn, id: &Identity, streams: u16) -> Result<Step> {
    let peer = c.peer;
    let fail = |reason: String| Error::PeerFailed {
        op: "connecting".into(),
        rank: peer,
        reason,
    };
    let mut moved = false;
    let idle = |moved: bool| Ok(if moved { Step::Moved } else { Step::Pending });
    loop {
        match &mut c.hs {
            Hs::Ready => return Ok(Step::Done),
            Hs::Dialing { hello, sent } => {
                match c.sock.take_error() {
                    Ok(Some(e)) | Err(e) => return Err(fail(format!("cannot connect: {e}"))),
                    Ok(None) => {}
                }
                match c.sock.write(&hello[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(e) => return Err(fail(format!("cannot connect: {e}"))),
                }
                if *sent == HELLO_LEN {
                    c.hs = Hs::AwaitAck {
                        buf: Vec::new(),
                        need: wire::ACK_FIXED_LEN,
                    };
                }
            }
            Hs::AwaitAck { buf, need } => {
                let mut tmp = [0u8; wire::ACK_FIXED_LEN + wire::MAX_REASON_LEN];
                let want = *need - buf.len();
                match c.sock.read(&mut tmp[..want]) {
                    Ok(0) => {
                        return Err(fail(
                            "it closed the connection during the handshake; is it a topoccl \
                             rank of this job?"
                                .into(),
                        ))
                    }
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(e) => return Err(fail(format!("handshake: {e}"))),
                }
                let head = |b: &[u8]| -> [u8; wire::ACK_FIXED_LEN] {
                    b[..wire::ACK_FIXED_LEN].try_into().expect("fixed part")
                };
                if buf.len() == wire::ACK_FIXED_LEN && *need == wire::ACK_FIXED_LEN {
                    let (_, len) = wire::decode_ack_head(&head(buf)).map_err(fail)?;
                    *need += len;
                }
                if buf.len() == *need {
                    let (refused, _) = wire::decode_ack_head(&head(buf)).map_err(fail)?;
                    if refused {
                        return Err(Error::Handshake {
                            rank: peer,
                            reason: format!(
                                "rank {peer} refused the connection: {}",
                                String::from_utf8_lossy(&buf[wire::ACK_FIXED_LEN..])
                            ),
                        });
                    }
                    return Ok(Step::Done);
                }
            }
            Hs::Accepting { buf, got, since } => {
                if since.elapsed() > HELLO_TIMEOUT {
                    tracing::warn!(
                        "dropped a connection that sent no hello within {HELLO_TIMEOUT:?}"
                    );
                    return Ok(Step::Close { refused: None });
                }
                match c.sock.read(&mut buf[*got..]) {
                    Ok(0) => return Ok(Step::Close { refused: None }),
                    Ok(n) => *got += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(_) => return Ok(Step::Close { refused: None }),
                }
                if *got == HELLO_LEN {
                    let (ack, admitted) = match Hello::decode(buf) {
                        Ok(h) => match admit(id, streams, &h) {
                            Ok(()) => (wire::encode_ack(&Ok(())), Some(h)),
                            Err(reason) => {
                                tracing::warn!(
                                    "refused a connection claiming rank {}: {reason}",
                                    h.rank
                                );
                                if h.rank < id.world {
                                    c.peer = h.rank;
                                }
                                (wire::encode_ack(&Err(reason)), None)
                            }
                        },
                        Err(reason) => {
                            tracing::warn!("refused a connection: {reason}");
                            (wire::encode_ack(&Err(reason)), None)
                        }
                    };
                    c.hs = Hs::Replying {
                        ack,
                        sent: 0,
                        admitted,
                    };
                }
            }
            Hs::Replying {
                ack,
                sent,
                admitted,
            } => {
                match c.sock.write(&ack[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(_) => return Ok(Step::Close { refused: None }),
                }
                if *sent == ack.len() {
                    return Ok(match admitted.take() {
                        Some(h) => {
                            c.peer = h.rank;
                            c.purpose = h.purpose;
                            c.stream = h.stream;
                            Step::Done
                        }
                        None => {
                            let reason =
                                String::from_utf8_lossy(&ack[wire::ACK_FIXED_LEN..]).into_owned();
                            Step::Close {
                                refused: (c.peer != Rank::MAX).then_some((c.peer, reason)),
                            }
                        }
                    });
                }
            }
        }
        moved = true;
    }
}
