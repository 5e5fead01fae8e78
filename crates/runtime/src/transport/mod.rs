//! The transport boundary: how a communicator's frames reach its peers.
//!
//! Every frame (a `wire::Header` and its payload) travels on a **lane** of its peer: a TCP
//! data connection ([`tcp`], `TOPOCCL_STREAMS` lanes per peer) or a pair of byte rings in
//! memory shared with a rank of the same host ([`shm`], one lane per peer). Each peer also
//! has a **control** connection for abort notices and goodbyes (TCP, or a Unix socket for
//! shared memory, whose closing tells that the peer's process is gone). The executor sees
//! only [`Conn`]s: it writes frames with [`Conn::send`] and reads them with
//! [`Conn::recv`] / [`Conn::peek`], whatever carries them, and matches them with
//! `crate::matcher`.
//!
//! Which transport a peer gets is chosen per peer (`TOPOCCL_TRANSPORT`, [`Mode`]): `auto`
//! uses shared memory with ranks whose host key (boot id and network namespace) equals
//! this rank's — and checks it when connecting: the lower rank hands over a memory segment
//! and the higher one proves it sees the same bytes; if that fails, the pair falls back to
//! TCP. `shm` makes every pair use shared memory (ranks on other hosts are an error naming
//! them); `tcp` uses TCP everywhere.
//!
//! Faults (`TOPOCCL_FAULTS`, [`faults`]) act in [`Conn::send`], so they apply to every
//! transport alike.
//!
//! Waiting ([`Transports::wait`]) spins for `TOPOCCL_SPIN`, watching sockets (epoll through
//! `mio`) and rings, then sleeps in epoll: rings wake a sleeping peer through its eventfd.
//!
//! Connections are opened on first use by the lower rank of a pair (so two ranks never
//! dial each other at once). Handshakes are non-blocking state machines advanced by the
//! same loop as the data, so a rank waiting for a missing peer keeps accepting everyone
//! else. A handshake carries the job, communicator, world size, both ranks and a MAC that
//! proves the dialler knows the job's secret (the ack's MAC proves the acceptor does:
//! `crate::auth`); anything else is refused with a reason the dialler reports and the listener
//! logs and remembers (to blame the rank if it is later waited for).
//!
//! With `TOPOCCL_TLS` ([`tls`]) every TCP connection between ranks, data and control, is
//! a TLS 1.3 session whose exporter value the hello's MAC covers; shared memory is not
//! affected. Each rank publishes whether it uses TLS in its [`Endpoint`]; ranks that
//! disagree fail at once naming each other, before any connection is tried.

pub mod faults;
mod ring;
mod shm;
mod tcp;
pub mod tls;

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use topoccl_plan::Rank;

use crate::auth::{JobKey, Use, MAC_LEN, NONCE_LEN};
use crate::error::{Error, Result};
use crate::wire::{AbortNotice, Header, Hello, Kind, Purpose, HEADER_LEN, HELLO_LEN, HELLO_MAC_AT};
use faults::{Gate, LinkFaults, Rule};

pub use shm::{DEFAULT_RING_BYTES, RING_BYTES_RANGE};

const TCP_LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const SHM_LISTENER: Token = Token(2);
const SHM_DOORBELL: Token = Token(3);
const FIRST_CONN: usize = 4;

/// How a waiting call polls before it sleeps: busy for `spin`, then for `yielding` more
/// giving its core to any other runnable process between looks (what pays when a host
/// has more ranks than cores: the rank waited for gets the core at once, with no
/// wake-up through the scheduler). `TOPOCCL_SPIN`, `TOPOCCL_YIELD`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polling {
    pub spin: Duration,
    pub yielding: Duration,
}

/// One turn of a polling wait's pause: a spin hint, or giving the core away.
fn pause(spinning: bool) {
    if spinning {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// While spinning on rings alone, how often the sockets are polled too.
const SPIN_SOCKET_POLL: Duration = Duration::from_micros(20);
/// How long an accepted connection may take to say hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of receive staging per connection for reductions.
pub const STAGING_BYTES: usize = 256 << 10;

/// Which transports a communicator may use (`TOPOCCL_TRANSPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Shared memory with ranks of this host (where it works), TCP with the others.
    #[default]
    Auto,
    Tcp,
    /// Shared memory with every peer; ranks on other hosts are an error.
    Shm,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mode, String> {
        match s.trim() {
            "auto" => Ok(Mode::Auto),
            "tcp" => Ok(Mode::Tcp),
            "shm" => Ok(Mode::Shm),
            other => Err(format!(
                "'{other}' is not a transport; use auto, tcp or shm"
            )),
        }
    }
}

/// The transport that carries a peer's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TransportKind {
    Tcp,
    Shm,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
        }
    }
}

/// Who this rank is, as the handshake proves it.
#[derive(Clone, Debug)]
pub struct Identity {
    pub rank: Rank,
    pub world: u32,
    pub job: u64,
    pub comm: u64,
    /// The key derived from the job's secret.
    pub key: JobKey,
    /// This rank's instance nonce (published in its [`Endpoint`]): hellos to it are MACed
    /// over it, so none made for another communicator or run opens a connection here.
    pub nonce: [u8; NONCE_LEN],
}

impl Identity {
    /// The hello that asks `peer` (whose instance nonce is `peer_nonce`) for a connection.
    pub fn hello(&self, purpose: Purpose, stream: u16, peer: Rank, peer_nonce: &[u8]) -> Hello {
        let mut h = Hello {
            purpose,
            stream,
            world: self.world,
            rank: self.rank,
            target: peer,
            job: self.job,
            comm: self.comm,
            mac: [0; MAC_LEN],
        };
        h.mac = self
            .key
            .mac(Use::PeerHello, &[&h.encode()[..HELLO_MAC_AT], peer_nonce]);
        h
    }

    /// Re-MACs an encoded hello for a TLS session: over its fields, the acceptor's
    /// instance nonce and the session's exporter value (`binding`), as [`admit`] checks.
    pub fn seal(&self, hello: &mut [u8; HELLO_LEN], peer_nonce: &[u8], binding: &[u8]) {
        let mac = self.key.mac(
            Use::PeerHello,
            &hello_parts(&hello[..HELLO_MAC_AT], peer_nonce, binding),
        );
        hello[HELLO_MAC_AT..].copy_from_slice(&mac);
    }

    /// The MAC an acceptor answers a hello's MAC with.
    pub fn ack_mac(&self, hello_mac: &[u8]) -> [u8; MAC_LEN] {
        self.key.mac(Use::PeerAck, &[hello_mac])
    }

    /// Checks an accepted ack's MAC: an error naming `peer` if it does not prove the secret.
    fn check_ack(&self, peer: Rank, hello_mac: &[u8], ack_mac: &[u8]) -> Result<()> {
        if self.key.verify(Use::PeerAck, &[hello_mac], ack_mac) {
            return Ok(());
        }
        Err(Error::Handshake {
            rank: peer,
            reason: format!(
                "what answered at rank {peer}'s address accepted the connection without proof \
                 of this job's secret: it is not rank {peer} of this job (check TOPOCCL_SECRET, \
                 and what else listens there)"
            ),
        })
    }
}

/// Where a rank can be reached, as published in the rendezvous store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its TCP listener.
    pub tcp: SocketAddr,
    /// Its shared-memory listener (an abstract Unix socket name), if it offers one.
    pub shm: Option<String>,
    /// Its host key: boot id and network namespace.
    pub host: String,
    /// Its instance nonce ([`Identity::nonce`]).
    pub nonce: [u8; NONCE_LEN],
    /// Whether its TCP connections are TLS sessions (`TOPOCCL_TLS`).
    #[serde(default)]
    pub tls: bool,
}

/// How a communicator's transports are set up.
#[derive(Clone, Debug)]
pub struct Setup {
    pub bind: SocketAddr,
    pub streams: u16,
    pub mode: Mode,
    /// Bytes of each shared-memory ring (one per direction of a pair).
    pub ring_bytes: usize,
    pub faults: Vec<Rule>,
    /// The world rank of each rank of this communicator (fault rules name world ranks).
    pub world_ranks: Vec<Rank>,
}

/// Where a connection's incoming bytes are in the frame structure.
#[derive(Debug)]
pub enum Rx {
    /// Reading a header.
    Header { buf: [u8; HEADER_LEN], got: usize },
    /// A header read, waiting for the receive it belongs to to be posted.
    Parked(Header),
    /// Reading the payload of `header` for program op `index`, a receive (`kind`).
    Payload {
        header: Header,
        index: u64,
        kind: topoccl_plan::OpKind,
        got: u64,
    },
    /// Reading an abort notice's payload.
    Notice { header: Header, buf: Vec<u8> },
}

impl Rx {
    pub fn header() -> Rx {
        Rx::Header {
            buf: [0; HEADER_LEN],
            got: 0,
        }
    }
}

/// A frame being written.
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
    /// When the frame's first byte was offered, while the live links are watched.
    pub began: Option<std::time::Instant>,
}

impl Tx {
    pub fn done(&self) -> bool {
        self.header_sent == HEADER_LEN && self.sent == self.len
    }
}

/// What the bytes of a connection travel on.
#[derive(Debug)]
pub enum Io {
    /// A TCP connection, in clear or TLS.
    Tcp(tcp::Sock),
    /// A shared-memory pair's control connection.
    Unix(mio::net::UnixStream),
    /// A shared-memory data lane.
    Ring(shm::RingLane),
}

/// Where a connection's handshake is.
#[derive(Debug)]
pub enum Hs {
    Tcp(tcp::Hs),
    Shm(shm::Hs),
    Ready,
}

impl Hs {
    /// Since when an accepted connection has been waiting for its hello (`None` once the
    /// hello came, or for connections this rank dialled).
    fn unproven_since(&self) -> Option<Instant> {
        match self {
            Hs::Tcp(tcp::Hs::Accepting { since, .. }) => Some(*since),
            Hs::Shm(shm::Hs::Accepting { since, .. }) => Some(*since),
            _ => None,
        }
    }
}

/// One connection (or shared-memory lane) to a peer.
#[derive(Debug)]
pub struct Conn {
    pub hs: Hs,
    pub io: Io,
    pub peer: Rank,
    pub purpose: Purpose,
    /// Which of the peer's lanes this is (data connections).
    pub lane: u16,
    pub readable: bool,
    pub writable: bool,
    pub rx: Rx,
    pub tx: Option<Tx>,
    /// Staging for reductions (u64 for alignment of every element type).
    pub staging: Vec<u64>,
    /// Bytes at the front of `staging` not reduced yet (a partial element).
    pub staged: usize,
    /// Faults injected on what this rank writes here.
    faults: Option<LinkFaults>,
}

/// What [`Conn::send`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// This many bytes of the frame left.
    Bytes(usize),
    /// Nothing can leave until the other side makes room.
    Blocked,
    /// A fault holds the frame until then.
    Later(Instant),
    /// A fault stalls the link for good (the rule).
    Stalled(String),
    /// A fault cut the link (the rule); the connection is closed.
    Cut(String),
}

impl Conn {
    fn new(io: Io, hs: Hs, peer: Rank, purpose: Purpose, lane: u16) -> Conn {
        Conn {
            hs,
            io,
            peer,
            purpose,
            lane,
            readable: true,
            writable: true,
            rx: Rx::header(),
            tx: None,
            staging: Vec::new(),
            staged: 0,
            faults: None,
        }
    }

    /// What `TOPOCCL_FAULTS` rule holds back this connection's bytes now, if any.
    pub fn fault_holding(&self) -> Option<String> {
        let f = self.faults.as_ref()?;
        f.holding_rule().map(|r| f.blame(r, "held"))
    }

    /// The transport that carries this connection.
    pub fn kind(&self) -> TransportKind {
        match self.io {
            Io::Tcp(_) => TransportKind::Tcp,
            Io::Unix(_) | Io::Ring(_) => TransportKind::Shm,
        }
    }

    /// Writes what it can of the current frame (`self.tx`): the rest of its header, then
    /// `body`, the rest of its payload. Faults of the link act here.
    pub fn send(&mut self, body: &[u8]) -> io::Result<Sent> {
        let tx = self.tx.as_mut().expect("a frame to send");
        let frame_start = tx.header_sent == 0 && tx.sent == 0;
        let mut want = HEADER_LEN - tx.header_sent + body.len();
        let mut cut_after = None;
        if let Some(f) = &mut self.faults {
            match f.gate(Instant::now(), frame_start, want) {
                Gate::Open(n) => want = n,
                Gate::Wait(at) => return Ok(Sent::Later(at)),
                Gate::Stalled => {
                    let rule = f
                        .blocking_rule()
                        .map(|r| r.text.clone())
                        .unwrap_or_default();
                    return Ok(Sent::Stalled(rule));
                }
                Gate::Cut(n) => {
                    want = n;
                    cut_after = Some(
                        f.cutting_rule()
                            .map(|r| f.blame(r, "cut"))
                            .unwrap_or_else(|| "TOPOCCL_FAULTS cut the link".into()),
                    );
                }
            }
            if frame_start && f.corrupt_next() {
                // Garble the magic: the peer refuses the frame and names this rank.
                tx.header[0] ^= 0xff;
            }
            if let Some(started) = f.take_started() {
                // The moment a fault is injected, for drills' detection times.
                tracing::warn!("{started}");
            }
        }
        let head = &tx.header[tx.header_sent..];
        let h = head.len().min(want);
        let b = (want - h).min(body.len());
        let (head, body) = (&head[..h], &body[..b]);
        let ends = h + b == HEADER_LEN - tx.header_sent + (tx.len - tx.sent);
        let written = if h + b == 0 {
            0
        } else {
            match &mut self.io {
                Io::Tcp(s) => match s.write_vectored(&[IoSlice::new(head), IoSlice::new(body)]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e),
                },
                Io::Ring(r) => r.write([head, body], ends)?,
                Io::Unix(_) => unreachable!("control connections carry no data frames"),
            }
        };
        let hs = written.min(h);
        tx.header_sent += hs;
        tx.sent += written - hs;
        debug_assert!(tx.header_sent <= HEADER_LEN && tx.sent <= tx.len);
        let done = tx.done();
        if let Some(f) = &mut self.faults {
            f.sent(written, done);
        }
        if let Some(rule) = cut_after {
            if written == h + b {
                self.cut();
                return Ok(Sent::Cut(rule));
            }
        }
        if written == 0 {
            if h + b > 0 {
                self.writable = false;
            }
            return Ok(Sent::Blocked);
        }
        Ok(Sent::Bytes(written))
    }

    /// Reads into `buf`; `Ok(0)` means the peer closed the connection.
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.io {
            Io::Tcp(s) => s.read(buf),
            Io::Unix(s) => s.read(buf),
            Io::Ring(r) => r.read(buf),
        };
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.readable = false;
        }
        r
    }

    /// Bytes that can be used where they lie (shared memory), at most `max`; `None` when
    /// this connection has no such view (TCP: read into staging instead).
    pub fn peek(&mut self, max: usize) -> Option<io::Result<&[u8]>> {
        match &mut self.io {
            Io::Ring(r) => Some(r.peek(max)),
            Io::Tcp(_) | Io::Unix(_) => None,
        }
    }

    /// Marks `n` peeked bytes used.
    pub fn consume(&mut self, n: usize) {
        if let Io::Ring(r) = &mut self.io {
            r.consume(n);
        }
    }

    /// A whole frame of `len` bytes (header and payload) has been read.
    pub fn frame_read(&mut self, len: u64) {
        if let Io::Ring(r) = &mut self.io {
            r.frame_read(len);
        }
    }

    /// Closes the connection for both sides (a fault cut it).
    fn cut(&mut self) {
        match &mut self.io {
            Io::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Io::Unix(s) => {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            Io::Ring(r) => r.close(),
        }
    }
}

#[derive(Debug, Default)]
struct PeerConns {
    data: Vec<Option<usize>>,
    control: Option<usize>,
    /// Set once a connection of the peer is established.
    kind: Option<TransportKind>,
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

fn io_err(what: &str, e: io::Error) -> Error {
    Error::Io(format!("{what}: {e}"))
}

/// A connection handshake's outcome for the caller.
enum Step {
    Pending,
    Moved,
    Done,
    /// A shared-memory handshake completed: the lane to add beside the control connection.
    DoneShm(shm::RingLane),
    /// The connection is closed; a refusal names the rank that attempted it.
    Close {
        refused: Option<(Rank, String)>,
    },
    /// Shared memory does not work with this peer: use TCP (in `auto` mode).
    Fallback(String),
}

/// The connections of one communicator.
#[derive(Debug)]
pub struct Transports {
    pub id: Identity,
    streams: u16,
    mode: Mode,
    poll: Poll,
    events: Events,
    tcp: tcp::Tcp,
    shm: Option<shm::Shm>,
    endpoints: Vec<Endpoint>,
    /// The transport planned for each peer (after the rendezvous).
    routes: Vec<TransportKind>,
    conns: Vec<Option<Conn>>,
    peers: FxHashMap<Rank, PeerConns>,
    /// Handshakes refused, by the rank that attempted them.
    pub refused: HashMap<Rank, String>,
    /// Peers that shared memory did not work with (auto mode), and why.
    pub fallbacks: Vec<(Rank, String)>,
    abort: AbortHandle,
    /// Whether this rank has sent its abort notice (one per communicator).
    forwarded: bool,
    faults: Vec<Rule>,
    world_ranks: Vec<Rank>,
    /// Accepting stopped short of the backlog (out of descriptors): try at the next wait.
    accept_later: bool,
}

impl Transports {
    /// This rank.
    pub(crate) fn rank(&self) -> Rank {
        self.id.rank
    }

    /// Opens the listeners. Peers' endpoints come later ([`Transports::set_endpoints`]),
    /// after the rendezvous.
    pub fn new(id: Identity, setup: Setup) -> Result<Transports> {
        let poll = Poll::new().map_err(|e| io_err("poll", e))?;
        let tls = tls::Tls::process().map_err(|e| Error::Config(e.to_string()))?;
        let tcp = tcp::Tcp::bind(setup.bind, poll.registry(), TCP_LISTENER, tls)?;
        let shm = match setup.mode {
            Mode::Tcp => None,
            mode => match shm::Shm::open(
                &id,
                setup.ring_bytes,
                poll.registry(),
                SHM_LISTENER,
                SHM_DOORBELL,
            ) {
                Ok(s) => Some(s),
                Err(e) if mode == Mode::Shm => {
                    return Err(Error::Config(format!(
                        "TOPOCCL_TRANSPORT=shm but rank {} cannot offer shared memory: {e}",
                        id.rank
                    )))
                }
                Err(e) => {
                    tracing::warn!("shared memory is not available, using TCP only: {e}");
                    None
                }
            },
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| io_err("waker", e))?);
        Ok(Transports {
            id,
            streams: setup.streams.max(1),
            mode: setup.mode,
            poll,
            events: Events::with_capacity(1024),
            tcp,
            shm,
            endpoints: Vec::new(),
            routes: Vec::new(),
            conns: Vec::new(),
            peers: FxHashMap::default(),
            refused: HashMap::new(),
            fallbacks: Vec::new(),
            abort: AbortHandle {
                flag: Arc::new(AtomicBool::new(false)),
                waker,
            },
            forwarded: false,
            faults: setup.faults,
            world_ranks: setup.world_ranks,
            accept_later: false,
        })
    }

    /// What this rank publishes for its peers.
    pub fn endpoint(&self) -> Result<Endpoint> {
        Ok(Endpoint {
            tcp: self.tcp.local_addr()?,
            shm: self.shm.as_ref().map(|s| s.name().to_string()),
            host: shm::host_key(),
            nonce: self.id.nonce,
            tls: self.tcp.tls().is_some(),
        })
    }

    /// Records every rank's endpoint and plans each peer's transport. With
    /// `TOPOCCL_TRANSPORT=shm`, a peer on another host is an error naming both.
    pub fn set_endpoints(&mut self, endpoints: Vec<Endpoint>) -> Result<()> {
        let me = self.id.rank as usize;
        let mine = endpoints.get(me).cloned();
        let tls = self.tcp.tls().is_some();
        let differ: Vec<String> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tls != tls)
            .take(8)
            .map(|(r, _)| r.to_string())
            .collect();
        if !differ.is_empty() {
            let (here, there) = if tls { ("on", "off") } else { ("off", "on") };
            return Err(Error::Config(format!(
                "TOPOCCL_TLS is {here} for rank {} but {there} for rank(s) {}: give every rank \
                 the same TOPOCCL_TLS (and certificate settings)",
                self.id.rank,
                differ.join(", ")
            )));
        }
        self.routes = endpoints
            .iter()
            .enumerate()
            .map(|(r, e)| {
                let same_host = mine
                    .as_ref()
                    .is_some_and(|m| m.host == e.host && m.shm.is_some());
                if r != me && self.mode != Mode::Tcp && same_host && e.shm.is_some() {
                    TransportKind::Shm
                } else {
                    TransportKind::Tcp
                }
            })
            .collect();
        if self.mode == Mode::Shm {
            let far: Vec<String> = endpoints
                .iter()
                .enumerate()
                .filter(|&(r, _)| r != me && self.routes[r] != TransportKind::Shm)
                .take(4)
                .map(|(r, e)| format!("rank {r} (host {}, {})", e.host, e.tcp.ip()))
                .collect();
            if !far.is_empty() {
                let here = mine.map(|m| format!("host {}, {}", m.host, m.tcp.ip()));
                return Err(Error::Config(format!(
                    "TOPOCCL_TRANSPORT=shm but rank {} ({}) shares no memory with {}; use \
                     TOPOCCL_TRANSPORT=auto to reach other hosts over TCP",
                    self.id.rank,
                    here.unwrap_or_default(),
                    far.join(", ")
                )));
            }
        }
        self.endpoints = endpoints;
        Ok(())
    }

    /// The transport planned for `peer` (shared memory may still fall back to TCP).
    pub fn route(&self, peer: Rank) -> TransportKind {
        self.routes
            .get(peer as usize)
            .copied()
            .unwrap_or(TransportKind::Tcp)
    }

    /// The transport that carries `peer` now, if connected.
    pub fn carrier(&self, peer: Rank) -> Option<TransportKind> {
        self.peers.get(&peer).and_then(|p| p.kind)
    }

    /// The TCP address this rank listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// The TCP address `peer` listens on (known after the rendezvous).
    pub fn peer_addr(&self, peer: Rank) -> Option<SocketAddr> {
        self.endpoints.get(peer as usize).map(|e| e.tcp)
    }

    /// The job's key (the heartbeat's MACs are made with it too).
    pub(crate) fn job_key(&self) -> &crate::auth::JobKey {
        &self.id.key
    }

    /// `peer`'s host key (known after the rendezvous).
    pub fn peer_host(&self, peer: Rank) -> Option<&str> {
        self.endpoints.get(peer as usize).map(|e| e.host.as_str())
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

    /// Lanes of `peer` (its channels are spread over them).
    pub fn lanes(&self, peer: Rank) -> u16 {
        match self.carrier(peer) {
            Some(TransportKind::Shm) => 1,
            _ => self.streams,
        }
    }

    /// The established data lane to `peer` carrying `channel`.
    pub fn data_conn(&self, peer: Rank, channel: u16) -> Option<usize> {
        let p = self.peers.get(&peer)?;
        let lanes = p.data.len().max(1) as u16;
        p.data
            .get(crate::matcher::lane_of(channel, lanes) as usize)
            .copied()
            .flatten()
    }

    /// How many connection slots there are (indices below this may be live).
    pub fn slots(&self) -> usize {
        self.conns.len()
    }

    /// Whether slot `i` holds an established connection.
    pub fn is_live(&self, i: usize) -> bool {
        matches!(self.conns.get(i), Some(Some(c)) if matches!(c.hs, Hs::Ready))
    }

    /// Established connections, for progress loops.
    pub fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.conns
            .iter()
            .enumerate()
            .filter(|(i, _)| self.is_live(*i))
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
    /// [`Transports::advance`].
    pub fn ensure(&mut self, peer: Rank) -> Result<()> {
        // Connections are made once; ones that closed are not made again.
        if self.connected(peer) || peer < self.id.rank {
            return Ok(());
        }
        let Some(ep) = self.endpoints.get(peer as usize).cloned() else {
            return Err(Error::Rendezvous(format!(
                "no address known for rank {peer}"
            )));
        };
        self.peers.entry(peer).or_default();
        if self.route(peer) == TransportKind::Shm {
            let shm = self
                .shm
                .as_ref()
                .expect("shared-memory routes need shared memory");
            let name = ep.shm.as_deref().expect("shared-memory routes have a name");
            match shm.dial(&self.id, peer, name, &ep.nonce) {
                Ok((io, hs)) => {
                    self.insert(Io::Unix(io), Hs::Shm(hs), peer, Purpose::Control, 0)?;
                    return Ok(());
                }
                Err(reason) => self.fall_back(peer, reason)?,
            }
        }
        self.dial_tcp(peer, &ep)
    }

    fn dial_tcp(&mut self, peer: Rank, ep: &Endpoint) -> Result<()> {
        let mut wanted: Vec<(Purpose, u16)> = vec![(Purpose::Control, 0)];
        wanted.extend((0..self.streams).map(|s| (Purpose::Data, s)));
        for (purpose, stream) in wanted {
            let hello = self.id.hello(purpose, stream, peer, &ep.nonce);
            let (sock, hs) = tcp::dial(peer, ep.tcp, &hello, self.tcp.tls(), ep.nonce)?;
            self.insert(Io::Tcp(sock), Hs::Tcp(hs), peer, purpose, stream)?;
        }
        Ok(())
    }

    /// Shared memory did not work with `peer`: TCP in `auto` mode, an error with `shm`.
    fn fall_back(&mut self, peer: Rank, reason: String) -> Result<()> {
        if self.mode == Mode::Shm {
            return Err(Error::PeerFailed {
                op: "connecting".into(),
                rank: peer,
                reason: format!(
                    "TOPOCCL_TRANSPORT=shm but ranks {} and {peer} cannot share memory: {reason}",
                    self.id.rank
                ),
            });
        }
        tracing::warn!(
            "rank {}: shared memory with rank {peer} does not work ({reason}); using TCP",
            self.id.rank
        );
        self.fallbacks.push((peer, reason));
        if let Some(r) = self.routes.get_mut(peer as usize) {
            *r = TransportKind::Tcp;
        }
        Ok(())
    }

    fn insert(&mut self, io: Io, hs: Hs, peer: Rank, purpose: Purpose, lane: u16) -> Result<usize> {
        let slot = match self.conns.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        let token = Token(FIRST_CONN + slot);
        let reg = self.poll.registry();
        let both = mio::Interest::READABLE | mio::Interest::WRITABLE;
        match &io {
            Io::Tcp(s) => reg.register(&mut SourceOf(s), token, both),
            Io::Unix(s) => reg.register(&mut SourceOf(s), token, both),
            Io::Ring(_) => Ok(()),
        }
        .map_err(|e| io_err("register connection", e))?;
        self.conns[slot] = Some(Conn::new(io, hs, peer, purpose, lane));
        Ok(slot)
    }

    /// Records an established connection in its peer's slots.
    fn established(&mut self, i: usize) {
        let c = self.conns[i].as_mut().expect("connection");
        c.hs = Hs::Ready;
        if let Io::Tcp(s) = &c.io {
            tcp::tune_established(s.raw());
        }
        let (peer, purpose, lane, kind) = (c.peer, c.purpose, c.lane, c.kind());
        if purpose == Purpose::Data {
            let from = self.world_ranks.get(self.id.rank as usize).copied();
            let to = self.world_ranks.get(peer as usize).copied();
            if let (Some(from), Some(to)) = (from, to) {
                c.faults = LinkFaults::for_link(&self.faults, from, to);
            }
        }
        let lanes = match kind {
            TransportKind::Shm => 1,
            TransportKind::Tcp => self.streams as usize,
        };
        let entry = self.peers.entry(peer).or_default();
        entry.kind = Some(kind);
        if entry.data.len() != lanes {
            entry.data = vec![None; lanes];
        }
        match purpose {
            Purpose::Control => entry.control = Some(i),
            Purpose::Data => entry.data[lane as usize] = Some(i),
        }
    }

    /// Advances every handshake under way. Returns the failure of a connection this rank
    /// dialled (its peer is the one to blame); refusals of incoming connections are
    /// logged and remembered in [`Transports::refused`].
    pub fn advance(&mut self) -> Result<bool> {
        let mut progressed = false;
        for i in 0..self.conns.len() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let step = match &mut c.hs {
                Hs::Ready => continue,
                Hs::Tcp(_) => tcp::step(c, &self.id, self.streams),
                Hs::Shm(_) => shm::step(c, &self.id, self.shm.as_ref()),
            };
            match step {
                Ok(Step::Pending) => {}
                Ok(Step::Moved) => progressed = true,
                Ok(Step::Done) => {
                    progressed = true;
                    self.established(i);
                }
                Ok(Step::DoneShm(lane)) => {
                    progressed = true;
                    let peer = self.conns[i].as_ref().expect("connection").peer;
                    self.established(i);
                    let j = self.insert(Io::Ring(lane), Hs::Ready, peer, Purpose::Data, 0)?;
                    self.established(j);
                }
                Ok(Step::Close { refused }) => {
                    progressed = true;
                    if let Some((rank, reason)) = refused {
                        self.refused.insert(rank, reason);
                    }
                    self.drop_conn(i);
                }
                Ok(Step::Fallback(reason)) => {
                    progressed = true;
                    let peer = self.conns[i].as_ref().expect("connection").peer;
                    self.drop_conn(i);
                    self.peers.remove(&peer);
                    self.fall_back(peer, reason)?;
                    let ep = self.endpoints[peer as usize].clone();
                    self.peers.entry(peer).or_default();
                    self.dial_tcp(peer, &ep)?;
                }
                Err(e) => {
                    self.drop_conn(i);
                    return Err(e);
                }
            }
        }
        Ok(progressed)
    }

    /// Accepts pending connections; their handshakes continue in [`Transports::advance`].
    fn accept_all(&mut self, kind: TransportKind) -> Result<()> {
        self.accept_later = false;
        loop {
            let accepted = match kind {
                TransportKind::Tcp => self
                    .tcp
                    .accept()
                    .map(|a| a.map(|(s, hs)| (Io::Tcp(s), Hs::Tcp(hs)))),
                TransportKind::Shm => match &self.shm {
                    Some(shm) => shm
                        .accept()
                        .map(|a| a.map(|(s, hs)| (Io::Unix(s), Hs::Shm(hs)))),
                    None => Ok(None),
                },
            };
            let (io, hs) = match accepted {
                Ok(Some(a)) => a,
                Ok(None) => return Ok(()),
                Err(e) if out_of_descriptors(&e) => {
                    // Connections that never say hello (a stranger's flood) must not end
                    // the job: close the one that has waited longest and try again.
                    if self.evict_oldest_unproven() {
                        continue;
                    }
                    tracing::warn!(
                        "cannot accept a {} connection: {e}; trying again at the next wait \
                         (raise the descriptor limit, `ulimit -n`, if this rank needs more)",
                        kind.name()
                    );
                    self.accept_later = true;
                    return Ok(());
                }
                Err(e) => return Err(io_err("accept", e)),
            };
            // Peer, purpose and lane are known once the hello is read.
            self.insert(io, hs, Rank::MAX, Purpose::Data, 0)?;
        }
    }

    /// Closes the accepted connection that has waited longest for its hello; false if
    /// there is none.
    fn evict_oldest_unproven(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((c.as_ref()?.hs.unproven_since()?, i)))
            .min();
        let Some((since, i)) = oldest else {
            return false;
        };
        tracing::warn!(
            "out of descriptors: closed a connection that sent no hello in {:?}",
            since.elapsed()
        );
        self.drop_conn(i);
        true
    }

    /// Whether a shared-memory lane has news: bytes arrived, room appeared for a frame
    /// waiting to be written, or the link was cut. Updates the lanes' flags.
    fn rings_ready(&mut self) -> bool {
        let mut any = false;
        for c in self.conns.iter_mut().flatten() {
            if let Io::Ring(r) = &mut c.io {
                if r.fresh_in() {
                    c.readable = true;
                    any = true;
                }
                if c.tx.is_some() && r.fresh_room() {
                    c.writable = true;
                    any = true;
                }
            }
        }
        any
    }

    /// Waits until something may have changed or `until` passes (returns false then): a
    /// socket became ready (flags updated, new connections accepted), a ring has news, or
    /// the communicator was aborted.
    ///
    /// For the first `spin` it polls without sleeping: a message expected within
    /// microseconds then costs no trip through the scheduler (which dominates small
    /// messages); longer waits sleep in epoll, shared-memory peers ringing the doorbell.
    pub fn wait(&mut self, until: Instant, polling: Polling) -> Result<bool> {
        self.flush_tls();
        if self.accept_later {
            // Edge-triggered: connections left in the backlog raise no new event.
            self.accept_all(TransportKind::Tcp)?;
            self.accept_all(TransportKind::Shm)?;
        }
        let start = Instant::now();
        let spin_until = start + polling.spin;
        let poll_until = spin_until + polling.yielding;
        let has_rings = self
            .conns
            .iter()
            .flatten()
            .any(|c| matches!(c.io, Io::Ring(_)));
        // Data only on rings: while spinning, the sockets (control, handshakes, accepts)
        // are polled every `SPIN_SOCKET_POLL` rather than at every turn, an epoll call
        // costing more than the ring check a small message waits on.
        let rings_only = has_rings
            && !self
                .conns
                .iter()
                .flatten()
                .any(|c| matches!(c.io, Io::Tcp(_)) || !matches!(c.hs, Hs::Ready));
        let mut next_poll = start;
        loop {
            if has_rings && self.rings_ready() {
                return Ok(true);
            }
            let now = Instant::now();
            if rings_only && now < poll_until && now < next_poll && now < until {
                pause(now < spin_until);
                continue;
            }
            next_poll = now + SPIN_SOCKET_POLL;
            let timeout = if now < poll_until {
                Duration::ZERO
            } else {
                if has_rings && !self.prepare_sleep() {
                    return Ok(true);
                }
                until.saturating_duration_since(now)
            };
            let polled = self.poll.poll(&mut self.events, Some(timeout));
            if has_rings && timeout > Duration::ZERO {
                self.cancel_sleep();
            }
            match polled {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
                Err(e) => return Err(io_err("poll", e)),
            }
            if !self.events.is_empty() {
                break;
            }
            if timeout > Duration::ZERO || Instant::now() >= until {
                return Ok(Instant::now() < until || (has_rings && self.rings_ready()));
            }
            pause(now < spin_until);
        }
        let mut accept = [false; 2];
        for ev in self.events.iter() {
            match ev.token() {
                TCP_LISTENER => accept[0] = true,
                SHM_LISTENER => accept[1] = true,
                SHM_DOORBELL => {
                    if let Some(s) = &self.shm {
                        s.drain_doorbell();
                    }
                }
                WAKER => {}
                Token(t) => {
                    if let Some(Some(c)) = self.conns.get_mut(t - FIRST_CONN) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            c.writable = true;
                            if let Io::Tcp(s) = &mut c.io {
                                // Bytes a TLS session holds: the send that made them is
                                // over, so nobody else sends them. An error shows at the
                                // next read or write.
                                let _ = s.flush_pending();
                            }
                        }
                    }
                }
            }
        }
        if has_rings {
            self.rings_ready();
        }
        if accept[0] {
            self.accept_all(TransportKind::Tcp)?;
        }
        if accept[1] {
            self.accept_all(TransportKind::Shm)?;
        }
        Ok(true)
    }

    /// Sends what TLS sessions hold for their sockets (records a send left behind when
    /// the socket was full); those still full raise a writable event when they drain.
    fn flush_tls(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            if let Io::Tcp(s) = &mut c.io {
                let _ = s.flush_pending();
            }
        }
    }

    /// Tells shared-memory peers to ring the doorbell on news; false if news came first.
    fn prepare_sleep(&mut self) -> bool {
        let mut news = false;
        for c in self.conns.iter_mut().flatten() {
            if let Io::Ring(r) = &mut c.io {
                let (arrived, room) = r.prepare_sleep(c.tx.is_some());
                c.readable |= arrived;
                c.writable |= room;
                news |= arrived || room;
            }
        }
        if news {
            self.cancel_sleep();
        }
        !news
    }

    fn cancel_sleep(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            if let Io::Ring(r) = &mut c.io {
                r.cancel_sleep();
            }
        }
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
            flags: 0,
        }
        .encode();
        let mut frame = header.to_vec();
        frame.extend_from_slice(payload);
        for i in self.control_conns() {
            let Some(c) = self.conns[i].as_mut() else {
                continue;
            };
            let give_up = Instant::now() + Duration::from_millis(20);
            let mut sent = 0;
            while sent < frame.len() && Instant::now() < give_up {
                let r = match &mut c.io {
                    Io::Tcp(s) => s.write(&frame[sent..]),
                    Io::Unix(s) => s.write(&frame[sent..]),
                    Io::Ring(_) => break,
                };
                match r {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(_) => break,
                }
            }
            // Over TLS, the last records may still wait for the socket.
            if let Io::Tcp(s) = &mut c.io {
                while !matches!(s.flush_pending(), Ok(true) | Err(_)) && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Closes connection `i` (its peer closed it or broke it). When a shared-memory
    /// control connection closes, the peer's process is gone (or leaving): its lane is
    /// cut, so what it wrote can still be read and then the lane ends.
    pub fn drop_conn(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        match c.io {
            Io::Tcp(s) => {
                let _ = self.poll.registry().deregister(&mut SourceOf(&s));
            }
            Io::Unix(s) => {
                let _ = self.poll.registry().deregister(&mut SourceOf(&s));
            }
            Io::Ring(_) => {}
        }
        let Some(p) = self.peers.get_mut(&c.peer) else {
            return;
        };
        for slot in p.data.iter_mut().chain(std::iter::once(&mut p.control)) {
            if *slot == Some(i) {
                *slot = None;
            }
        }
        if c.purpose == Purpose::Control && p.kind == Some(TransportKind::Shm) {
            for j in p.data.iter().flatten() {
                if let Some(Conn {
                    io: Io::Ring(r),
                    readable,
                    ..
                }) = self.conns.get_mut(*j).and_then(Option::as_mut)
                {
                    r.peer_left();
                    *readable = true;
                }
            }
        }
    }

    /// Peers with a live control connection.
    pub fn control_conns(&self) -> Vec<usize> {
        self.peers.values().filter_map(|p| p.control).collect()
    }

    /// The transport each peer uses (or is planned to use), for reports.
    pub fn summary(&self) -> Vec<TransportKind> {
        (0..self.id.world)
            .map(|p| self.carrier(p).unwrap_or_else(|| self.route(p)))
            .collect()
    }
}

/// Registers any socket with `mio` by its file descriptor.
struct SourceOf<'a, S: std::os::fd::AsRawFd>(&'a S);

impl<S: std::os::fd::AsRawFd> mio::event::Source for SourceOf<'_, S> {
    fn register(&mut self, r: &mio::Registry, t: Token, i: mio::Interest) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: Token, i: mio::Interest) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
        mio::unix::SourceFd(&self.0.as_raw_fd()).deregister(r)
    }
}

/// Checks a hello against this rank's identity (both transports).
/// What a hello's MAC covers: its fields, the acceptor's instance nonce and, over TLS,
/// the session's exporter value (empty in clear).
fn hello_parts<'a>(signed: &'a [u8], nonce: &'a [u8], binding: &'a [u8]) -> Vec<&'a [u8]> {
    if binding.is_empty() {
        vec![signed, nonce]
    } else {
        vec![signed, nonce, binding]
    }
}

fn admit(id: &Identity, lanes: u16, h: &Hello, binding: &[u8]) -> std::result::Result<(), String> {
    // The proof first: a hello without it says nothing about who sent it, so none of
    // its fields is worth an answer of its own.
    let signed = &h.encode()[..HELLO_MAC_AT];
    if !id.key.verify(
        Use::PeerHello,
        &hello_parts(signed, &id.nonce, binding),
        &h.mac,
    ) {
        return Err(format!(
            "wrong secret: the hello's MAC does not prove this job's secret (rank {} started \
             with another TOPOCCL_SECRET, or someone else claiming to be it)",
            h.rank
        ));
    }
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
    if h.stream >= lanes {
        return Err(format!(
            "stream {} but this communicator uses {lanes}",
            h.stream
        ));
    }
    Ok(())
}

/// Whether accepting failed for want of descriptors or memory (the process's or the
/// system's), which closing connections can cure, rather than for good.
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn would_block(e: &io::Error) -> bool {
    // A non-blocking connect still in progress reports NotConnected on I/O.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(rank: Rank, secret: &str, nonce: u8) -> Identity {
        Identity {
            rank,
            world: 4,
            job: 7,
            comm: 9,
            key: JobKey::from_secret(secret.as_bytes()),
            nonce: [nonce; NONCE_LEN],
        }
    }

    #[test]
    fn a_hello_opens_only_the_rank_and_instance_it_was_made_for() {
        let (dialler, acceptor) = (id(1, "s", 1), id(2, "s", 2));
        let h = dialler.hello(Purpose::Data, 0, 2, &acceptor.nonce);
        assert_eq!(admit(&acceptor, 1, &h, &[]), Ok(()));
        // The ack's MAC proves the acceptor knows the secret too.
        let ack = acceptor.ack_mac(&h.mac);
        assert!(dialler.check_ack(2, &h.mac, &ack).is_ok());
        let e = dialler.check_ack(2, &h.mac, &[0; MAC_LEN]).unwrap_err();
        assert!(e.to_string().contains("without proof"), "{e}");
        // Another run of the same job (new instance nonce): the old hello is refused.
        let e = admit(&id(2, "s", 3), 1, &h, &[]).unwrap_err();
        assert!(e.contains("wrong secret"), "{e}");
        // Another secret, or any field changed after the MAC was made.
        assert!(admit(&id(2, "t", 2), 1, &h, &[]).is_err());
        let mut forged = h.clone();
        forged.rank = 0;
        assert!(admit(&acceptor, 1, &forged, &[])
            .unwrap_err()
            .contains("wrong secret"));
    }

    #[test]
    fn over_tls_a_hello_opens_only_the_session_it_was_sealed_for() {
        let (dialler, acceptor) = (id(1, "s", 1), id(2, "s", 2));
        let mut bytes = dialler.hello(Purpose::Data, 0, 2, &acceptor.nonce).encode();
        dialler.seal(&mut bytes, &acceptor.nonce, &[7; 32]);
        let h = Hello::decode(&bytes).unwrap();
        assert_eq!(admit(&acceptor, 1, &h, &[7; 32]), Ok(()));
        // Relayed into another session (a man in the middle's own), or out of TLS.
        for other in [&[8u8; 32][..], &[]] {
            let e = admit(&acceptor, 1, &h, other).unwrap_err();
            assert!(e.contains("wrong secret"), "{e}");
        }
        // A hello made in clear does not open a TLS session.
        let plain = dialler.hello(Purpose::Data, 0, 2, &acceptor.nonce);
        assert!(admit(&acceptor, 1, &plain, &[7; 32]).is_err());
    }
}
