//! Shared memory between ranks of one host.
//!
//! Each rank listens on an abstract Unix socket (named by job, communicator, rank and a
//! random nonce; abstract names live in the network namespace, so ranks in two namespaces
//! never reach each other this way) and owns one doorbell, an eventfd that its epoll
//! watches. For a pair of ranks, the lower one (the dialler):
//!
//! 1. creates a segment with `memfd_create` (nothing in `/dev/shm`: the memory goes away
//!    with the last process that maps it, however the processes end), maps it, lays out two
//!    rings (one per direction, `ring.rs`) and writes a random nonce into its header;
//! 2. connects and sends a hello (`wire::Hello`, purpose control, then the nonce; 80 B)
//!    with the segment's and its doorbell's descriptors (`SCM_RIGHTS`).
//!
//! The higher rank checks the hello as TCP does ([`super::admit`]), maps the segment, and
//! checks that it holds the nonce: only then do both really share memory. It writes its
//! own nonce into the segment and answers with an ack carrying that nonce and its
//! doorbell's descriptor; the dialler checks the nonce in the segment. An ack with status 2
//! means "cannot share memory": in `auto` mode the pair then uses TCP.
//!
//! The socket stays open as the pair's control connection (abort notices, goodbyes); when
//! it closes, the peer's process is gone, and the lane ends once what the peer wrote has
//! been read.
//!
//! # Segment layout and memory
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `TOPOSHM1` |
//! | 8 | 8 | ring capacity `cap` |
//! | 16 | 8 | the dialler's nonce |
//! | 24 | 8 | the listener's nonce |
//! | 128 | 384 + `cap` | ring from the lower rank to the higher |
//! | 512 + `cap` | 384 + `cap` | ring from the higher rank to the lower |
//!
//! So a pair maps `2 × (cap + 384) + 128` bytes (`TOPOCCL_SHM_RING`, default
//! [`DEFAULT_RING_BYTES`]), and a host running `L` ranks of a job maps
//! `L (L − 1) / 2` segments: with 8 ranks and 1 MiB rings, 28 × 2 MiB = 56 MiB.

use std::ffi::CString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::Arc;
use std::time::Instant;

use mio::net::UnixStream as MioUnix;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use topoccl_plan::Rank;

use super::ring::{self, RingRx, RingTx};
use super::{admit, Conn, Hs as AnyHs, Identity, Io, Step, HELLO_TIMEOUT};
use crate::auth::MAC_LEN;
use crate::error::{Error, Result};
use crate::wire::{self, Hello, Purpose, HELLO_LEN};

/// Bytes of each ring unless `TOPOCCL_SHM_RING` says otherwise.
pub const DEFAULT_RING_BYTES: usize = 1 << 20;
/// Ring sizes allowed.
pub const RING_BYTES_RANGE: std::ops::RangeInclusive<usize> = (4 << 10)..=(256 << 20);
/// The most bytes one write publishes at once, so the reader can start on a large message
/// while the rest is copied in.
const PUBLISH_STEP: usize = 64 << 10;

const SEG_MAGIC: u64 = u64::from_le_bytes(*b"TOPOSHM1");
const SEG_HEADER: usize = 128;
/// The shared-memory hello: a `wire::Hello` and the dialler's nonce.
const SHM_HELLO_LEN: usize = HELLO_LEN + 8;
/// Ack status: the listener cannot share memory with the dialler.
const ACK_UNSHAREABLE: u8 = 2;

/// Bytes of a pair's segment with rings of `cap` bytes.
pub fn segment_bytes(cap: usize) -> usize {
    SEG_HEADER + 2 * ring::ring_bytes(cap)
}

/// This host, as far as shared memory goes: the kernel's boot id and the network
/// namespace (whose abstract sockets the ranks meet through).
pub fn host_key() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into());
    let net = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-netns".into());
    format!("{boot}/{net}")
}

fn last_os_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// A mapped segment; unmapped when the last lane using it goes.
#[derive(Debug)]
pub struct Segment {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all concurrent access goes through the
// rings' atomics (see `ring.rs`).
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Segment {
    /// Maps `len` bytes of `fd`.
    fn map(fd: &OwnedFd, len: usize) -> std::result::Result<Segment, String> {
        // SAFETY: a fresh shared mapping of a descriptor we hold; checked for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(last_os_error("mmap"));
        }
        Ok(Segment {
            base: p as *mut u8,
            len,
        })
    }

    /// A new segment for rings of `cap` bytes, initialised, and its descriptor.
    fn create(
        name: &str,
        cap: usize,
        nonce: u64,
    ) -> std::result::Result<(Segment, OwnedFd), String> {
        let cname = CString::new(name).map_err(|_| "segment name has a NUL".to_string())?;
        // SAFETY: a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(last_os_error("memfd_create"));
        }
        // SAFETY: a descriptor just returned to us, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = segment_bytes(cap);
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(last_os_error("ftruncate of the shared segment"));
        }
        let seg = Segment::map(&fd, len)?;
        seg.word(8)
            .store(cap as u64, std::sync::atomic::Ordering::Relaxed);
        seg.word(16)
            .store(nonce, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: both rings lie inside the mapping, 64-byte aligned (mmap is page aligned,
        // SEG_HEADER and ring sizes are multiples of 64).
        unsafe {
            ring::init(seg.ring(0, cap), cap);
            ring::init(seg.ring(1, cap), cap);
        }
        seg.word(0)
            .store(SEG_MAGIC, std::sync::atomic::Ordering::Release);
        Ok((seg, fd))
    }

    fn word(&self, off: usize) -> &std::sync::atomic::AtomicU64 {
        debug_assert!(off + 8 <= SEG_HEADER);
        // SAFETY: an 8-aligned offset inside the header of a live mapping.
        unsafe { &*(self.base.add(off) as *const std::sync::atomic::AtomicU64) }
    }

    /// Ring `i` (0: lower to higher rank, 1: back).
    fn ring(&self, i: usize, cap: usize) -> *mut u8 {
        debug_assert!(SEG_HEADER + (i + 1) * ring::ring_bytes(cap) <= self.len);
        // SAFETY: inside the mapping (checked above in debug builds; by construction).
        unsafe { self.base.add(SEG_HEADER + i * ring::ring_bytes(cap)) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; no lane refers to it any more.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len);
        }
    }
}

/// One pair's data lane: the ring this rank writes and the one it reads.
#[derive(Debug)]
pub struct RingLane {
    tx: RingTx,
    rx: RingRx,
    /// The peer's doorbell.
    bell: OwnedFd,
    /// The peer's control connection closed: what is in the ring is all there will be.
    peer_gone: bool,
    /// The last write stopped on a full ring.
    full: bool,
    _seg: Arc<Segment>,
}

impl RingLane {
    /// `lower`: this rank is the lower of the pair (it writes ring 0).
    fn new(seg: Arc<Segment>, cap: usize, lower: bool, bell: OwnedFd) -> RingLane {
        let (mine, theirs) = if lower { (0, 1) } else { (1, 0) };
        // SAFETY: the rings were laid out by `Segment::create` in a mapping that `seg`
        // keeps alive as long as the lane; this rank is the only producer of its ring and
        // the only consumer of the other.
        let (tx, rx) = unsafe {
            (
                RingTx::new(seg.ring(mine, cap), cap),
                RingRx::new(seg.ring(theirs, cap), cap),
            )
        };
        RingLane {
            tx,
            rx,
            bell,
            peer_gone: false,
            full: false,
            _seg: seg,
        }
    }

    fn ring_bell(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to an eventfd we hold. It fails only if the peer's
        // counter is saturated, in which case it is awake anyway.
        unsafe {
            libc::write(
                self.bell.as_raw_fd(),
                one.as_ptr() as *const libc::c_void,
                8,
            );
        }
    }

    /// Writes what fits of `parts`; `ends` says they finish a frame.
    pub fn write(&mut self, parts: [&[u8]; 2], ends: bool) -> io::Result<usize> {
        if self.tx.closed() || self.peer_gone {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the shared-memory link is closed",
            ));
        }
        let total = parts[0].len() + parts[1].len();
        let (a, b) = if total > PUBLISH_STEP {
            let a = parts[0].len().min(PUBLISH_STEP);
            (
                &parts[0][..a],
                &parts[1][..(PUBLISH_STEP - a).min(parts[1].len())],
            )
        } else {
            (parts[0], parts[1])
        };
        let clipped = a.len() + b.len() < total;
        let (n, wake) = self.tx.write([a, b], ends && !clipped);
        if wake {
            self.ring_bell();
        }
        self.full = n < a.len() + b.len();
        Ok(n)
    }

    /// Whether the peer has stopped writing for good and everything it wrote was read.
    fn ended(&mut self) -> bool {
        (self.peer_gone || self.rx.closed()) && self.rx.drained()
    }

    /// Copies bytes out; `Ok(0)` once the lane has ended and everything was read.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, wake) = self.rx.read(buf);
        if wake {
            self.ring_bell();
        }
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        if self.ended() {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Bytes in place (see [`RingRx::peek`]); `Ok(empty)` once the lane has ended.
    pub fn peek(&mut self, max: usize) -> io::Result<&[u8]> {
        if self.rx.settle() {
            self.ring_bell();
        }
        if self.rx.peek(max).is_empty() {
            return if self.ended() {
                Ok(&[])
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        Ok(self.rx.peek(max))
    }

    pub fn consume(&mut self, n: usize) {
        if self.rx.consume(n) {
            self.ring_bell();
        }
    }

    pub fn frame_read(&mut self, len: u64) {
        if self.rx.frame_read(len) {
            self.ring_bell();
        }
    }

    /// Cuts the link both ways (a fault): the peer reads what is there, then the end.
    pub fn close(&mut self) {
        let a = self.tx.close();
        let b = self.rx.close();
        if a || b {
            self.ring_bell();
        }
    }

    /// The peer's process is gone (its control connection closed).
    pub fn peer_left(&mut self) {
        self.peer_gone = true;
    }

    /// Bytes arrived (or the link was cut) since last asked.
    pub fn fresh_in(&mut self) -> bool {
        self.rx.poll_fresh()
    }

    /// Room appeared since last asked, after a write found the ring full.
    pub fn fresh_room(&mut self) -> bool {
        self.tx.poll_room() && self.full
    }

    /// Asks the peer to ring on news (bytes arriving; room, if `writing` found the ring
    /// full). Returns the news that came first: (bytes arrived, room appeared).
    pub fn prepare_sleep(&mut self, writing: bool) -> (bool, bool) {
        let arrived = !self.rx.prepare_sleep();
        let room = writing && self.full && !self.tx.prepare_sleep();
        (arrived, room)
    }

    pub fn cancel_sleep(&mut self) {
        self.rx.cancel_sleep();
        self.tx.cancel_sleep();
    }
}

/// This rank's shared-memory listener and doorbell.
#[derive(Debug)]
pub struct Shm {
    listener: UnixListener,
    name: String,
    doorbell: OwnedFd,
    ring_bytes: usize,
}

/// Where a shared-memory handshake is.
#[derive(Debug)]
pub enum Hs {
    /// Hello sent with the segment; reading the ack.
    AwaitAck {
        seg: Arc<Segment>,
        buf: Vec<u8>,
        need: usize,
        bell: Option<OwnedFd>,
        hello_mac: [u8; MAC_LEN],
    },
    /// Accepted; reading the dialler's hello and descriptors.
    Accepting {
        buf: [u8; SHM_HELLO_LEN],
        got: usize,
        fds: Vec<OwnedFd>,
        since: Instant,
    },
}

fn random_u64() -> std::result::Result<u64, String> {
    crate::auth::fresh("a shared-memory nonce").map(u64::from_le_bytes)
}

impl Shm {
    /// Opens the listener and the doorbell, both watched by `registry`.
    pub fn open(
        id: &Identity,
        ring_bytes: usize,
        registry: &Registry,
        listener_token: Token,
        doorbell_token: Token,
    ) -> std::result::Result<Shm, String> {
        let name = format!(
            "topoccl.{:016x}.{:016x}.{}.{:016x}",
            id.job,
            id.comm,
            id.rank,
            random_u64()?
        );
        let addr = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("abstract socket name: {e}"))?;
        let listener =
            UnixListener::bind_addr(&addr).map_err(|e| format!("cannot listen on @{name}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        // SAFETY: re-listening on our own socket only raises the backlog.
        unsafe {
            libc::listen(listener.as_raw_fd(), 4096);
        }
        // SAFETY: plain syscall; the result is checked.
        let bell = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if bell < 0 {
            return Err(last_os_error("eventfd"));
        }
        // SAFETY: a descriptor just returned to us.
        let doorbell = unsafe { OwnedFd::from_raw_fd(bell) };
        registry
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                listener_token,
                Interest::READABLE,
            )
            .and_then(|_| {
                registry.register(
                    &mut SourceFd(&doorbell.as_raw_fd()),
                    doorbell_token,
                    Interest::READABLE,
                )
            })
            .map_err(|e| format!("register: {e}"))?;
        // A segment must be creatable here, or offering shared memory is pointless.
        Segment::create("topoccl-probe", 4096, 0)?;
        Ok(Shm {
            listener,
            name,
            doorbell,
            ring_bytes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Empties the doorbell after a wake-up.
    pub fn drain_doorbell(&self) {
        let mut b = [0u8; 8];
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        unsafe {
            libc::read(
                self.doorbell.as_raw_fd(),
                b.as_mut_ptr() as *mut libc::c_void,
                8,
            );
        }
    }

    /// Starts a pair with `peer` listening at `name`: segment, connection, hello. Errors
    /// say why shared memory does not work (the caller may fall back to TCP).
    pub fn dial(
        &self,
        id: &Identity,
        peer: Rank,
        name: &str,
        peer_nonce: &[u8],
    ) -> std::result::Result<(MioUnix, Hs), String> {
        let nonce = random_u64()?;
        let (seg, memfd) = Segment::create(
            &format!("topoccl-{:x}-{}-{peer}", id.job, id.rank),
            self.ring_bytes,
            nonce,
        )?;
        let addr = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("abstract socket name: {e}"))?;
        let sock = UnixStream::connect_addr(&addr)
            .map_err(|e| format!("cannot connect to rank {peer} at @{name}: {e}"))?;
        let hello = id.hello(Purpose::Control, 0, peer, peer_nonce);
        let mut msg = hello.encode().to_vec();
        msg.extend_from_slice(&nonce.to_le_bytes());
        let sent = send_with_fds(&sock, &msg, &[memfd.as_raw_fd(), self.doorbell.as_raw_fd()])
            .map_err(|e| format!("sending the hello to rank {peer}: {e}"))?;
        if sent != msg.len() {
            return Err(format!("the hello to rank {peer} was cut short"));
        }
        sock.set_nonblocking(true)
            .map_err(|e| format!("socket: {e}"))?;
        Ok((
            MioUnix::from_std(sock),
            Hs::AwaitAck {
                seg: Arc::new(seg),
                buf: Vec::new(),
                need: wire::ACK_FIXED_LEN,
                bell: None,
                hello_mac: hello.mac,
            },
        ))
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<(MioUnix, Hs)>> {
        let sock = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        sock.set_nonblocking(true)?;
        let hs = Hs::Accepting {
            buf: [0; SHM_HELLO_LEN],
            got: 0,
            fds: Vec::new(),
            since: Instant::now(),
        };
        Ok(Some((MioUnix::from_std(sock), hs)))
    }

    /// Maps the dialler's segment and checks it is shared for real.
    fn attach(
        &self,
        memfd: &OwnedFd,
        nonce: u64,
    ) -> std::result::Result<(Arc<Segment>, usize), String> {
        let header = Segment::map(memfd, SEG_HEADER)?;
        if header.word(0).load(std::sync::atomic::Ordering::Acquire) != SEG_MAGIC {
            return Err("the segment it sent does not hold a topoccl header".into());
        }
        let cap = header.word(8).load(std::sync::atomic::Ordering::Relaxed) as usize;
        if !RING_BYTES_RANGE.contains(&cap) || cap % 64 != 0 {
            return Err(format!(
                "its rings have {cap} bytes, outside the allowed range"
            ));
        }
        drop(header);
        let seg = Segment::map(memfd, segment_bytes(cap))?;
        if seg.word(16).load(std::sync::atomic::Ordering::Acquire) != nonce {
            return Err(
                "the memory it sent does not hold the nonce it wrote: the two \
                        processes cannot share memory"
                    .into(),
            );
        }
        Ok((Arc::new(seg), cap))
    }
}

/// Advances one shared-memory handshake.
pub(super) fn step(c: &mut Conn, id: &Identity, shm: Option<&Shm>) -> Result<Step> {
    let peer = c.peer;
    let Io::Unix(sock) = &mut c.io else {
        unreachable!("shared-memory handshakes run on Unix sockets")
    };
    let AnyHs::Shm(hs) = &mut c.hs else {
        return Ok(Step::Done);
    };
    match hs {
        Hs::AwaitAck {
            seg,
            buf,
            need,
            bell,
            hello_mac,
        } => {
            let mut tmp = [0u8; wire::ACK_FIXED_LEN + wire::MAX_REASON_LEN + 8];
            let want = *need - buf.len();
            let mut fds = Vec::new();
            match recv_with_fds(sock, &mut tmp[..want], &mut fds) {
                Ok(0) => {
                    return Ok(Step::Fallback(format!(
                        "rank {peer} closed the shared-memory connection during the handshake"
                    )))
                }
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Pending),
                Err(e) => return Ok(Step::Fallback(format!("handshake with rank {peer}: {e}"))),
            }
            if let Some(fd) = fds.into_iter().next() {
                *bell = Some(fd);
            }
            let head: [u8; wire::ACK_FIXED_LEN] = buf[..wire::ACK_FIXED_LEN.min(buf.len())]
                .try_into()
                .unwrap_or([0; 7]);
            if buf.len() < wire::ACK_FIXED_LEN {
                return Ok(Step::Moved);
            }
            let fail = |reason: String| Error::PeerFailed {
                op: "connecting".into(),
                rank: peer,
                reason,
            };
            let (refused, len) = wire::decode_ack_head(&head).map_err(fail)?;
            let total = wire::ACK_FIXED_LEN + len + if refused { 0 } else { 8 };
            *need = total;
            if buf.len() < total {
                return Ok(Step::Moved);
            }
            let reason = String::from_utf8_lossy(&buf[wire::ACK_FIXED_LEN..][..len]).into_owned();
            if refused {
                if head[4] == ACK_UNSHAREABLE {
                    return Ok(Step::Fallback(format!("rank {peer}: {reason}")));
                }
                return Err(Error::Handshake {
                    rank: peer,
                    reason: format!("rank {peer} refused the connection: {reason}"),
                });
            }
            id.check_ack(peer, hello_mac, &buf[wire::ACK_FIXED_LEN..][..len])?;
            let theirs = u64::from_le_bytes(buf[total - 8..total].try_into().expect("8 bytes"));
            if seg.word(24).load(std::sync::atomic::Ordering::Acquire) != theirs || theirs == 0 {
                return Ok(Step::Fallback(format!(
                    "rank {peer} did not see this rank's memory"
                )));
            }
            let Some(bell) = bell.take() else {
                return Ok(Step::Fallback(format!("rank {peer} sent no doorbell")));
            };
            let cap = seg.word(8).load(std::sync::atomic::Ordering::Relaxed) as usize;
            let lane = RingLane::new(seg.clone(), cap, true, bell);
            Ok(Step::DoneShm(lane))
        }
        Hs::Accepting {
            buf,
            got,
            fds,
            since,
        } => {
            if since.elapsed() > HELLO_TIMEOUT {
                tracing::warn!(
                    "dropped a shared-memory connection that sent no hello within \
                     {HELLO_TIMEOUT:?}"
                );
                return Ok(Step::Close { refused: None });
            }
            match recv_with_fds(sock, &mut buf[*got..], fds) {
                Ok(0) => return Ok(Step::Close { refused: None }),
                Ok(n) => *got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Pending),
                Err(_) => return Ok(Step::Close { refused: None }),
            }
            if *got < SHM_HELLO_LEN {
                return Ok(Step::Moved);
            }
            let hello: [u8; HELLO_LEN] = buf[..HELLO_LEN].try_into().expect("hello");
            let nonce = u64::from_le_bytes(buf[HELLO_LEN..].try_into().expect("nonce"));
            let h = match Hello::decode(&hello) {
                Ok(h) => h,
                Err(reason) => {
                    tracing::warn!("refused a shared-memory connection: {reason}");
                    refuse(sock, 1, &reason);
                    return Ok(Step::Close { refused: None });
                }
            };
            if let Err(reason) = admit(id, 1, &h, &[]) {
                tracing::warn!("refused a connection claiming rank {}: {reason}", h.rank);
                refuse(sock, 1, &reason);
                let refused = (h.rank < id.world).then_some((h.rank, reason));
                return Ok(Step::Close { refused });
            }
            let Some(shm) = shm else {
                refuse(sock, ACK_UNSHAREABLE, "this rank offers no shared memory");
                return Ok(Step::Close { refused: None });
            };
            let attached = match fds.len() {
                2 => shm.attach(&fds[0], nonce),
                n => Err(format!("it sent {n} descriptors where 2 were expected")),
            };
            let (seg, cap) = match attached {
                Ok(x) => x,
                Err(reason) => {
                    tracing::warn!("cannot share memory with rank {}: {reason}", h.rank);
                    refuse(sock, ACK_UNSHAREABLE, &reason);
                    return Ok(Step::Close { refused: None });
                }
            };
            let mine = random_u64().map_err(Error::Io)?.max(1);
            seg.word(24)
                .store(mine, std::sync::atomic::Ordering::Release);
            let bell = fds.remove(1);
            let accepted = Ok(id.ack_mac(&h.mac));
            if !send_ack(sock, 0, &accepted, mine, Some(shm.doorbell.as_raw_fd())) {
                return Ok(Step::Close { refused: None });
            }
            c.peer = h.rank;
            c.purpose = Purpose::Control;
            c.lane = 0;
            Ok(Step::DoneShm(RingLane::new(seg, cap, false, bell)))
        }
    }
}

/// Sends a refusal: `status` and the reason (best effort: the connection closes next).
fn refuse(sock: &mut MioUnix, status: u8, reason: &str) {
    send_ack(sock, status, &Err(reason.to_string()), 0, None);
}

/// Sends an ack: `status` with the reason, or when accepted the MAC, this rank's segment
/// nonce and its doorbell. Returns false if it could not be sent whole.
fn send_ack(
    sock: &mut MioUnix,
    status: u8,
    body: &std::result::Result<[u8; MAC_LEN], String>,
    nonce: u64,
    bell: Option<RawFd>,
) -> bool {
    let mut ack = wire::encode_ack(body);
    ack[4] = status;
    if status == 0 {
        ack.extend_from_slice(&nonce.to_le_bytes());
    }
    let fds: Vec<RawFd> = bell.into_iter().collect();
    matches!(send_with_fds(sock, &ack, &fds), Ok(n) if n == ack.len())
}

/// `sendmsg` with descriptors attached.
fn send_with_fds(sock: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(bytes)];
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE is a pure size computation.
        unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize }
    };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer in it refers to live locals above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer has room for one header and the descriptors.
        unsafe {
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cm),
                std::mem::size_of_val(fds),
            );
        }
    }
    // SAFETY: a valid msghdr on our socket.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `recvmsg` that keeps any descriptors that come with the bytes (at most 4 per call).
fn recv_with_fds(sock: &impl AsRawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buf)];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((4 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; its pointers refer to live locals.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: a valid msghdr on our socket.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: walking the control messages the kernel wrote into our buffer.
    unsafe {
        let mut cm = libc::CMSG_FIRSTHDR(&msg);
        while !cm.is_null() {
            if (*cm).cmsg_level == libc::SOL_SOCKET && (*cm).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cm).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = bytes / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cm) as *const RawFd;
                for k in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(k))));
                }
            }
            cm = libc::CMSG_NXTHDR(&msg, cm);
        }
    }
    Ok(n as usize)
}
