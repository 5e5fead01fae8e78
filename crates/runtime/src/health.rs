//! Heartbeats on a side channel: the I/O shell around `topoccl_watch::health`.
//!
//! Every world communicator of more than one rank starts a [`Monitor`] at creation (unless
//! `TOPOCCL_HEARTBEAT=off`): a thread with its own TCP listener and its own connections,
//! independent of the data path, so a transfer that blocks cannot delay a beat. Its
//! address and a fresh nonce are published in the store (`{namespace}/hb/{rank}`); the
//! monitor dials each peer it watches and sends it a beat (`crate::beat`, authenticated
//! with the job's key) every period, and reads the beats of the peers that watch it.
//! Sub-communicators (`split`) share their world's monitor, mapping ranks.
//!
//! | what the shell sees                                           | observation                       |
//! |---------------------------------------------------------------|-----------------------------------|
//! | a beat that passes its checks (`crate::beat`)                 | `Beat` (or `Goodbye`) and its reports |
//! | end of stream or a reset on a peer's incoming connection; a refused dial; a broken pipe | `Closed` (dead, exited) |
//! | a write timing out (`TCP_USER_TIMEOUT`), a dial not done within it | `Unreachable`               |
//! | nothing for `stopped_after` periods                            | (the machine's `tick`: hung)      |
//!
//! # Settings and limits
//!
//! | setting / limit                | value                                                                 |
//! |--------------------------------|-----------------------------------------------------------------------|
//! | `TOPOCCL_HEARTBEAT`            | the beat period (`100ms`); `0` or `off` turns heartbeats off           |
//! | watched peers                  | ring neighbours ±[`RING_NEIGHBOURS`] and up to [`HOST_WATCH`] ranks of the host |
//! | hung (stopped)                 | no beat for [`STOPPED_AFTER`] periods (1 s at 100 ms)                   |
//! | hung (stuck in call S)         | inside call S, no byte moved for [`STUCK_AFTER`]                        |
//! | unreachable                    | the heartbeat socket's `TCP_USER_TIMEOUT`: [`USER_TIMEOUT_PERIODS`] periods, at least 1 s |
//! | incoming connections           | at most 2 × watched + 8; the oldest unidentified one is closed first   |
//! | reports per beat               | [`crate::beat::MAX_REPORTS`]                                          |
//! | waiting set published per call | [`MAX_WAITING`] ranks                                                 |
//!
//! **The bound.** A watched peer that exits is dead in this rank's view within one poll
//! ([`poll_every`], a quarter period) of its kernel closing the connection; a stopped one
//! is hung after `STOPPED_AFTER` periods; an unreachable one is dead after the user timeout.
//! A rank that does not watch the failed one hears of it through the beats' reports, one
//! period per hop along the ring: within ⌈N / (2 · RING_NEIGHBOURS)⌉ periods more (2
//! periods for 8 ranks, 1 s for 40). Each hung report expires 10 periods after it stops
//! being carried; dead ones never do.
//!
//! The progress counters a beat carries come from the runtime ([`Counters`]: cheap atomics
//! that `exec` updates), and the page `/health` of a rank's metrics endpoint serves every
//! monitor of the process ([`health_json`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use topoccl_plan::Rank;
use topoccl_watch::health::{
    watched_set, CallId, Health, HealthConfig, Observation, Progress, Verdict,
};

pub use topoccl_watch::health::PeerState;

use crate::auth::{fresh, JobKey, NONCE_LEN};
use crate::beat::{self, Beat, MAX_BEAT, MAX_REPORTS};
use crate::error::{Error, Result};
use crate::store::Store;

/// The default beat period.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);
/// Ring neighbours watched on each side.
pub const RING_NEIGHBOURS: u32 = 2;
/// Ranks of this host watched besides the ring neighbours.
pub const HOST_WATCH: usize = 8;
/// Periods without a beat before a peer is hung (stopped).
pub const STOPPED_AFTER: u32 = 10;
/// Time inside one call without progress before a peer is hung (stuck).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);
/// The heartbeat sockets' `TCP_USER_TIMEOUT`, in periods (at least 1 s).
pub const USER_TIMEOUT_PERIODS: u32 = 20;
/// Peers a rank publishes as waited on, per call.
pub const MAX_WAITING: usize = 64;

/// What a communicator says of one of its ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    /// The rank in the communicator asked.
    pub rank: Rank,
    /// The rank in the world communicator (the monitor's).
    pub world_rank: Rank,
    pub state: PeerState,
    /// When the state began: milliseconds since the Unix epoch, as this rank's clock reads.
    pub since_ms: u64,
    /// What the judgement rests on, and who made it.
    pub detail: String,
}

/// The `TOPOCCL_HEARTBEAT` setting: the beat period, or off.
pub fn parse_period(v: &str) -> Result<Option<Duration>> {
    let t = v.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("off") || t == "0" {
        return Ok(None);
    }
    let d = topoccl_plan::units::parse_duration(t).map_err(|e| {
        Error::Config(format!(
            "TOPOCCL_HEARTBEAT={v}: {e}; give a period such as 100ms, or 0/off to turn \
             heartbeats off"
        ))
    })?;
    let d = Duration::from_secs_f64(d);
    if d < Duration::from_millis(1) || d > Duration::from_secs(60) {
        return Err(Error::Config(format!(
            "TOPOCCL_HEARTBEAT={v}: the period must be between 1ms and 60s (or 0/off)"
        )));
    }
    Ok(Some(d))
}

/// How often the monitor's thread looks at its sockets: a quarter period, 1–25 ms.
pub fn poll_every(period: Duration) -> Duration {
    (period / 4).clamp(Duration::from_millis(1), Duration::from_millis(25))
}

/// A rank's progress counters, read by its monitor for every beat. Updated by `exec`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    calls_completed: AtomicU64,
    /// 0 outside calls, else the call's communicator hash | 1 << 32 (so 0 is free).
    call_comm: AtomicU64,
    call_seq: AtomicU64,
    bytes: AtomicU64,
    /// World ranks with a transfer posted and not finished in the call in flight.
    waiting: Mutex<Vec<Rank>>,
}

impl Counters {
    pub(crate) fn enter(&self, comm: u32, seq: u64) {
        self.call_seq.store(seq, Ordering::Relaxed);
        self.call_comm
            .store(u64::from(comm) | 1 << 32, Ordering::Release);
    }

    pub(crate) fn leave(&self) {
        self.call_comm.store(0, Ordering::Release);
        self.calls_completed.fetch_add(1, Ordering::Relaxed);
        self.set_waiting(&[]);
    }

    pub(crate) fn moved(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_waiting(&self, ranks: &[Rank]) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.clear();
        w.extend(ranks.iter().take(MAX_WAITING));
    }

    fn snapshot(&self, to: Rank) -> Progress {
        let comm = self.call_comm.load(Ordering::Acquire);
        let in_call = (comm != 0).then(|| CallId {
            comm: comm as u32,
            seq: self.call_seq.load(Ordering::Relaxed),
        });
        Progress {
            calls_completed: self.calls_completed.load(Ordering::Relaxed),
            in_call,
            bytes: self.bytes.load(Ordering::Relaxed),
            waiting_on_you: in_call.is_some()
                && self
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&to),
        }
    }
}

/// What the monitor's thread and its owners share.
struct Shared {
    namespace: String,
    me: Rank,
    world: u32,
    health: Mutex<Health>,
    counters: Counters,
    stop: AtomicBool,
    epoch: Instant,
    epoch_wall_ms: u64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A world communicator's heartbeat monitor; stopped (with a goodbye to its peers) when
/// the last communicator sharing it is dropped.
pub(crate) struct Monitor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("namespace", &self.shared.namespace)
            .field("rank", &self.shared.me)
            .finish()
    }
}

/// Every monitor of this process, for `/health`.
static REGISTRY: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Where a peer's monitor listens, and its nonce (what `{namespace}/hb/{rank}` holds).
#[derive(Serialize, Deserialize)]
struct Published {
    addr: SocketAddr,
    nonce: [u8; NONCE_LEN],
}

/// What [`Monitor::start`] needs.
pub(crate) struct Start<'a> {
    pub period: Duration,
    pub store: &'a Arc<dyn Store>,
    pub namespace: &'a str,
    pub me: Rank,
    pub world: u32,
    /// A name of each rank's host (ranks of one host share it).
    pub hosts: Vec<String>,
    pub key: JobKey,
    pub ip: IpAddr,
    pub deadline: Instant,
}

fn fnv(s: &str) -> u64 {
    crate::wire::fnv1a(s.as_bytes(), crate::wire::FNV_OFFSET)
}

impl Monitor {
    /// Listens, publishes, learns the watched peers' addresses (within `deadline`) and
    /// starts the thread.
    pub(crate) fn start(s: Start<'_>) -> Result<Arc<Monitor>> {
        let listener = TcpListener::bind(SocketAddr::new(s.ip, 0))
            .map_err(|e| Error::Io(format!("heartbeat listener on {}: {e}", s.ip)))?;
        listener.set_nonblocking(true)?;
        let nonce: [u8; NONCE_LEN] = fresh("the heartbeat nonce").map_err(Error::Io)?;
        let key_of = |r: Rank| format!("{}/hb/{r}", s.namespace);
        let mine = Published {
            addr: listener.local_addr()?,
            nonce,
        };
        s.store.set(
            &key_of(s.me),
            &serde_json::to_vec(&mine).expect("an address and bytes serialise"),
        )?;
        let hosts: Vec<u64> = s.hosts.iter().map(|h| fnv(h)).collect();
        let watched = watched_set(s.me, &hosts, RING_NEIGHBOURS, HOST_WATCH);
        let keys: Vec<String> = watched.iter().map(|&r| key_of(r)).collect();
        s.store.wait(&keys, s.deadline).map_err(|e| {
            Error::Rendezvous(format!("the heartbeat addresses of ranks {watched:?}: {e}"))
        })?;
        let mut peers = Vec::with_capacity(watched.len());
        for (&r, k) in watched.iter().zip(&keys) {
            let v = s.store.get(k, s.deadline)?;
            let p: Published = serde_json::from_slice(&v).map_err(|_| {
                Error::Rendezvous(format!(
                    "rank {r} published an unreadable heartbeat address"
                ))
            })?;
            peers.push((r, p));
        }
        let cfg = HealthConfig {
            period_ms: (s.period.as_millis() as u64).max(1),
            stopped_after: STOPPED_AFTER,
            stuck_after_ms: STUCK_AFTER.as_millis() as u64,
            report_ttl: STOPPED_AFTER,
        };
        let health = Health::new(s.me, s.world, &watched, cfg, 0)
            .map_err(|e| Error::Config(format!("heartbeats: {e}")))?;
        let shared = Arc::new(Shared {
            namespace: s.namespace.to_string(),
            me: s.me,
            world: s.world,
            health: Mutex::new(health),
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            epoch_wall_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        });
        let mut shell = Shell {
            shared: shared.clone(),
            key: s.key,
            nonce,
            period: s.period,
            listener,
            out: peers
                .into_iter()
                .map(|(r, p)| {
                    (
                        r,
                        Out {
                            addr: p.addr,
                            nonce: p.nonce,
                            stream: None,
                            dialled: None,
                            pending: Vec::new(),
                        },
                    )
                })
                .collect(),
            incoming: Vec::new(),
            last_number: HashMap::new(),
            number: 0,
        };
        let thread = std::thread::Builder::new()
            .name("topoccl-heartbeat".into())
            .spawn(move || shell.run())
            .map_err(|e| Error::Io(format!("cannot start the heartbeat thread: {e}")))?;
        let mut reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        reg.retain(|w| w.strong_count() > 0);
        reg.push(Arc::downgrade(&shared));
        Ok(Arc::new(Monitor {
            shared,
            thread: Some(thread),
        }))
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The verdicts on `world_ranks` (a communicator's ranks, as world ranks).
    pub(crate) fn peer_health(&self, world_ranks: &[Rank]) -> Vec<PeerHealth> {
        let h = self.shared.lock();
        world_ranks
            .iter()
            .enumerate()
            .map(|(rank, &w)| {
                let v = h.verdict(w);
                PeerHealth {
                    rank: rank as Rank,
                    world_rank: w,
                    state: v.state,
                    since_ms: self.shared.epoch_wall_ms + v.since_ms,
                    detail: describe(&v),
                }
            })
            .collect()
    }

    /// The positions in `world_ranks` of the watched peers whose beats no longer reach
    /// this rank, in its own judgement (hung (stopped) or dead (unreachable); not what
    /// others relayed): if such a peer is alive after all, the link between them is dead
    /// (`crate::elastic`).
    pub(crate) fn silent_of(&self, world_ranks: &[Rank]) -> Vec<Rank> {
        let h = self.shared.lock();
        let watched = h.watched();
        world_ranks
            .iter()
            .enumerate()
            .filter(|(_, w)| watched.contains(w))
            .filter(|(_, &w)| {
                matches!(
                    h.verdict(w).state,
                    PeerState::HungStopped | PeerState::DeadUnreachable
                )
            })
            .map(|(r, _)| r as Rank)
            .collect()
    }

    /// The positions in `world_ranks` of those believed dead or hung.
    pub(crate) fn failed_of(&self, world_ranks: &[Rank]) -> Vec<Rank> {
        let failed = self.shared.lock().failed();
        world_ranks
            .iter()
            .enumerate()
            .filter(|(_, w)| failed.contains(w))
            .map(|(r, _)| r as Rank)
            .collect()
    }

    /// A watched peer's last counters (`None` before its first beat or if not watched).
    pub(crate) fn progress(&self, world_rank: Rank) -> Option<Progress> {
        self.shared.lock().progress(world_rank).map(|(p, _)| p)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn describe(v: &Verdict) -> String {
    if v.by.is_empty() {
        return v.detail.clone();
    }
    let by: Vec<String> = v.by.iter().map(|r| r.to_string()).collect();
    format!("{} (said by rank {})", v.detail, by.join(", "))
}

/// One monitor's view, as `/health` serves it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct View {
    /// The world communicator's name.
    pub communicator: String,
    /// The rank whose view it is.
    pub rank: Rank,
    pub world: u32,
    /// The ranks it watches first-hand.
    pub watched: Vec<Rank>,
    /// Its verdict on every rank (`since_ms` on the Unix epoch).
    pub peers: Vec<Verdict>,
}

/// The views of every monitor of this process, a JSON array (the `/health` page).
pub fn health_json() -> String {
    let reg = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let views: Vec<View> = reg
        .iter()
        .filter_map(Weak::upgrade)
        .map(|s| {
            let h = s.lock();
            View {
                communicator: s.namespace.clone(),
                rank: s.me,
                world: s.world,
                watched: h.watched(),
                peers: h
                    .verdicts()
                    .into_iter()
                    .map(|mut v| {
                        v.since_ms += s.epoch_wall_ms;
                        v
                    })
                    .collect(),
            }
        })
        .collect();
    serde_json::to_string(&views).unwrap_or_else(|_| "[]".into())
}

/// A watched peer's outgoing connection.
struct Out {
    addr: SocketAddr,
    nonce: [u8; NONCE_LEN],
    stream: Option<TcpStream>,
    /// While dialling: since when.
    dialled: Option<Instant>,
    /// Bytes of the current beat not yet written.
    pending: Vec<u8>,
}

/// An incoming connection: its bytes, and once a beat passed, whose it is.
struct In {
    stream: TcpStream,
    buf: Vec<u8>,
    from: Option<Rank>,
}

/// The monitor's thread.
struct Shell {
    shared: Arc<Shared>,
    key: JobKey,
    nonce: [u8; NONCE_LEN],
    period: Duration,
    listener: TcpListener,
    out: Vec<(Rank, Out)>,
    incoming: Vec<In>,
    last_number: HashMap<Rank, u64>,
    number: u64,
}

fn user_timeout(period: Duration) -> Duration {
    (period * USER_TIMEOUT_PERIODS).max(Duration::from_secs(1))
}

/// Starts a non-blocking dial with the heartbeat's socket options.
fn dial(addr: SocketAddr, period: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    set_user_timeout(&s, user_timeout(period));
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(s.into())
}

/// Unacknowledged data fails the connection after `t` (Linux's `TCP_USER_TIMEOUT`).
fn set_user_timeout(s: &socket2::Socket, t: Duration) {
    use std::os::fd::AsRawFd;
    let ms: libc::c_uint = t.as_millis().min(u128::from(u32::MAX)) as libc::c_uint;
    // SAFETY: a valid socket descriptor and a pointer to a c_uint of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("TCP_USER_TIMEOUT not set on a heartbeat socket");
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
    )
}

impl Shell {
    fn run(&mut self) {
        let poll = poll_every(self.period);
        let mut next_beat = Instant::now();
        while !self.shared.stop.load(Ordering::Acquire) {
            self.accept();
            self.read();
            if Instant::now() >= next_beat {
                self.beat(false);
                next_beat += self.period;
                if next_beat < Instant::now() {
                    next_beat = Instant::now() + self.period;
                }
            }
            let now = self.shared.now_ms();
            self.shared.lock().tick(now);
            std::thread::sleep(poll);
        }
        self.beat(true);
    }

    fn accept(&mut self) {
        let cap = 2 * self.out.len() + 8;
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.incoming.len() >= cap {
                        match self.incoming.iter().position(|c| c.from.is_none()) {
                            Some(i) => {
                                self.incoming.remove(i);
                            }
                            None => continue,
                        }
                    }
                    self.incoming.push(In {
                        stream: s,
                        buf: Vec::new(),
                        from: None,
                    });
                }
                Err(_) => return,
            }
        }
    }

    fn read(&mut self) {
        let mut i = 0;
        while i < self.incoming.len() {
            if self.read_one(i) {
                i += 1;
            } else {
                let c = self.incoming.remove(i);
                if let Some(p) = c.from {
                    let now = self.shared.now_ms();
                    self.shared.lock().observe(now, p, Observation::Closed);
                }
            }
        }
    }

    /// Reads connection `i`; false when it is to be closed.
    fn read_one(&mut self, i: usize) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            let c = &mut self.incoming[i];
            match c.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if !self.take_beats(i) {
                        // Not a peer's beat: close without blaming anyone.
                        self.incoming[i].from = None;
                        return false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }

    /// Takes the whole beats in connection `i`'s buffer; false if one fails its checks.
    fn take_beats(&mut self, i: usize) -> bool {
        loop {
            let c = &mut self.incoming[i];
            let (b, used) = match beat::decode(&c.buf) {
                Ok(Some(x)) => x,
                Ok(None) => return c.buf.len() <= MAX_BEAT,
                Err(e) => {
                    tracing::debug!("heartbeat connection closed: {e}");
                    return false;
                }
            };
            let watched = self.out.iter().any(|(r, _)| *r == b.from);
            let fresh = self.last_number.get(&b.from).is_none_or(|&n| b.number > n);
            let ok = beat::verify(&c.buf[..used], &self.key, &self.nonce)
                && b.to == self.shared.me
                && watched
                && fresh
                && c.from.is_none_or(|f| f == b.from);
            if !ok {
                tracing::debug!("a heartbeat claiming rank {} was refused", b.from);
                return false;
            }
            c.buf.drain(..used);
            c.from = Some(b.from);
            self.last_number.insert(b.from, b.number);
            let now = self.shared.now_ms();
            let mut h = self.shared.lock();
            let what = if b.goodbye {
                Observation::Goodbye
            } else {
                Observation::Beat(b.progress)
            };
            h.observe(now, b.from, what);
            h.heard(now, b.from, &b.reports);
        }
    }

    /// Sends a beat (a goodbye when stopping) to every watched peer not dead.
    fn beat(&mut self, goodbye: bool) {
        self.number += 1;
        let now = self.shared.now_ms();
        let (reports, dead): (Vec<_>, Vec<bool>) = {
            let h = self.shared.lock();
            (
                h.reports(MAX_REPORTS),
                self.out
                    .iter()
                    .map(|(r, _)| h.verdict(*r).state.is_dead())
                    .collect(),
            )
        };
        let mut seen: Vec<(Rank, Observation)> = Vec::new();
        for ((peer, o), dead) in self.out.iter_mut().zip(dead) {
            if dead {
                o.stream = None;
                continue;
            }
            if o.stream.is_none() {
                if goodbye {
                    continue;
                }
                match dial(o.addr, self.period) {
                    Ok(s) => {
                        o.stream = Some(s);
                        o.dialled = Some(Instant::now());
                        o.pending.clear();
                    }
                    Err(e) => {
                        seen.push((*peer, verdict_of(&e)));
                        continue;
                    }
                }
            }
            let Some(s) = &o.stream else { continue };
            if let Some(since) = o.dialled {
                match (s.take_error(), s.peer_addr()) {
                    (Ok(Some(e)), _) | (Err(e), _) => {
                        seen.push((*peer, verdict_of(&e)));
                        o.stream = None;
                        continue;
                    }
                    (Ok(None), Ok(_)) => o.dialled = None,
                    (Ok(None), Err(_)) => {
                        if since.elapsed() >= user_timeout(self.period) {
                            seen.push((*peer, Observation::Unreachable));
                            o.stream = None;
                        }
                        continue;
                    }
                }
            }
            if o.pending.is_empty() {
                let progress = self.shared.counters.snapshot(*peer);
                o.pending = beat::encode(
                    &Beat {
                        from: self.shared.me,
                        to: *peer,
                        number: self.number,
                        progress,
                        goodbye,
                        reports: reports.clone(),
                    },
                    &self.key,
                    &o.nonce,
                );
            }
            let Some(s) = &mut o.stream else { continue };
            match s.write(&o.pending) {
                Ok(n) => {
                    o.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    seen.push((*peer, verdict_of(&e)));
                    o.stream = None;
                }
            }
        }
        if !seen.is_empty() && !goodbye {
            let mut h = self.shared.lock();
            for (p, what) in seen {
                h.observe(now, p, what);
            }
        }
    }
}

/// What a failed dial or write says of the peer.
fn verdict_of(e: &std::io::Error) -> Observation {
    if is_closed(e) {
        Observation::Closed
    } else {
        Observation::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn start(store: &Arc<dyn Store>, me: Rank, world: u32, period: Duration) -> Arc<Monitor> {
        Monitor::start(Start {
            period,
            store,
            namespace: "topoccl/t/world",
            me,
            world,
            hosts: vec!["h".into(); world as usize],
            key: JobKey::from_secret(b"s"),
            ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            deadline: Instant::now() + Duration::from_secs(10),
        })
        .unwrap()
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < end, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Publishes `addr` as `rank`'s heartbeat address, as a rank played by hand would.
    fn publish(store: &Arc<dyn Store>, rank: Rank, addr: SocketAddr) {
        let published = Published {
            addr,
            nonce: [0; NONCE_LEN],
        };
        store
            .set(
                &format!("topoccl/t/world/hb/{rank}"),
                &serde_json::to_vec(&published).unwrap(),
            )
            .unwrap();
    }

    #[test]
    fn the_period_setting_is_checked() {
        assert_eq!(parse_period("off").unwrap(), None);
        assert_eq!(parse_period("0").unwrap(), None);
        assert_eq!(
            parse_period("50ms").unwrap(),
            Some(Duration::from_millis(50))
        );
        let e = parse_period("soon").unwrap_err().to_string();
        assert!(e.contains("TOPOCCL_HEARTBEAT=soon"), "{e}");
        assert!(parse_period("2h").is_err());
    }

    #[test]
    fn monitors_see_each_other_alive_and_counters_and_goodbyes_travel() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let period = Duration::from_millis(20);
        let (s, p) = (store.clone(), period);
        let others: Vec<_> = (1..3)
            .map(|r| {
                let s = s.clone();
                std::thread::spawn(move || start(&s, r, 3, p))
            })
            .collect();
        let m0 = start(&store, 0, 3, period);
        let mut ms: Vec<Arc<Monitor>> = others.into_iter().map(|t| t.join().unwrap()).collect();
        wait_for("beats from both peers", || {
            m0.progress(1).is_some() && m0.progress(2).is_some()
        });
        let all = m0.peer_health(&[0, 1, 2]);
        assert!(all.iter().all(|p| p.state == PeerState::Alive), "{all:?}");
        // Counters travel.
        ms[0].counters().enter(9, 4);
        ms[0].counters().set_waiting(&[0]);
        wait_for("rank 1 in call 4 waiting on rank 0", || {
            m0.progress(1)
                .is_some_and(|p| p.in_call == Some(CallId { comm: 9, seq: 4 }) && p.waiting_on_you)
        });
        // Rank 2 drops its monitor: a goodbye, not a failure.
        drop(ms.pop());
        wait_for("rank 2 left", || {
            m0.peer_health(&[2])[0].state == PeerState::Left
        });
        assert!(m0.failed_of(&[0, 1, 2]).is_empty());
        drop(ms.pop());
        wait_for("rank 1 left", || {
            m0.peer_health(&[1])[0].state == PeerState::Left
        });
        let page: Vec<View> = serde_json::from_str(&health_json()).unwrap();
        assert!(page
            .iter()
            .any(|v| v.rank == 0 && v.communicator == "topoccl/t/world"));
    }

    #[test]
    fn a_peer_whose_process_is_gone_is_dead_and_a_silent_one_hung() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let period = Duration::from_millis(20);
        // Rank 1 is a listener that accepts and then closes (its process exits).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        publish(&store, 1, l.local_addr().unwrap());
        drop(l);
        // Rank 2 publishes a listener that never beats (stopped).
        let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
        publish(&store, 2, quiet.local_addr().unwrap());
        let m0 = start(&store, 0, 3, period);
        wait_for("rank 1 dead (refused)", || {
            m0.peer_health(&[0, 1, 2])[1].state == PeerState::DeadExited
        });
        wait_for("rank 2 hung", || {
            m0.peer_health(&[0, 1, 2])[2].state == PeerState::HungStopped
        });
        assert_eq!(m0.failed_of(&[0, 1, 2]), vec![1, 2]);
        // A split communicator's view maps ranks.
        assert_eq!(m0.failed_of(&[2, 0]), vec![0]);
        let h = m0.peer_health(&[2, 0]);
        assert_eq!((h[0].rank, h[0].world_rank), (0, 2));
        assert!(h[0].detail.contains("said by rank 0"), "{}", h[0].detail);
        drop(quiet);
    }

    /// A host that cannot be reached is dead (unreachable), whether the network says so at
    /// once (rank 1 at the broadcast address: `connect` fails with `ENETUNREACH`) or
    /// nothing ever answers the dial (rank 2: a listener whose accept queue is full drops
    /// the SYNs, as a host behind a dead route does; dead once the sockets' user timeout
    /// has passed).
    #[test]
    fn a_host_that_cannot_be_reached_is_dead_unreachable() {
        use socket2::{Domain, Socket, Type};
        let full = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        full.listen(0).unwrap();
        let silent = full.local_addr().unwrap().as_socket().unwrap();
        // Fill the accept queue (one connection for a backlog of 0); the dial that finds
        // it full gets no answer.
        let queued: Vec<TcpStream> = (0..2)
            .filter_map(|_| TcpStream::connect_timeout(&silent, Duration::from_millis(200)).ok())
            .collect();
        assert!(!queued.is_empty());
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let period = Duration::from_millis(20);
        let unroutable: SocketAddr = "255.255.255.255:9".parse().unwrap();
        for (rank, addr) in [(1, unroutable), (2, silent)] {
            publish(&store, rank, addr);
        }
        let m0 = start(&store, 0, 3, period);
        wait_for("rank 1 dead (unreachable)", || {
            m0.peer_health(&[0, 1, 2])[1].state == PeerState::DeadUnreachable
        });
        wait_for("rank 2 dead (unreachable)", || {
            m0.peer_health(&[0, 1, 2])[2].state == PeerState::DeadUnreachable
        });
        let h = m0.peer_health(&[0, 1, 2]);
        assert_eq!(h[2].state.to_string(), "dead (unreachable)");
        assert!(h[2].detail.contains("not acknowledged"), "{}", h[2].detail);
        assert_eq!(m0.failed_of(&[0, 1, 2]), vec![1, 2]);
        drop(full);
    }

    /// Rank 1 is played by hand: a beat under the job's key makes it alive, its
    /// connection closing makes it dead; a stranger's beats (another key) are refused.
    #[test]
    fn beats_are_checked_and_a_closed_connection_is_death() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let period = Duration::from_millis(20);
        let fake = TcpListener::bind("127.0.0.1:0").unwrap();
        for r in [1, 2] {
            publish(&store, r, fake.local_addr().unwrap());
        }
        let m0 = start(&store, 0, 3, period);
        let at: Published =
            serde_json::from_slice(&store.get("topoccl/t/world/hb/0", Instant::now()).unwrap())
                .unwrap();
        let send = |key: &JobKey, from: Rank, number: u64| {
            let mut s = TcpStream::connect(at.addr).unwrap();
            let b = Beat {
                from,
                to: 0,
                number,
                progress: Progress::default(),
                goodbye: false,
                reports: vec![],
            };
            s.write_all(&beat::encode(&b, key, &at.nonce)).unwrap();
            s
        };
        // A stranger claiming rank 2: refused, so rank 2 turns hung (it never beats).
        let _stranger = send(&JobKey::from_secret(b"other"), 2, 1);
        let one = send(&JobKey::from_secret(b"s"), 1, 1);
        wait_for("rank 1's beat", || m0.progress(1).is_some());
        wait_for("rank 2 hung", || {
            m0.peer_health(&[0, 1, 2])[2].state == PeerState::HungStopped
        });
        assert!(m0.progress(2).is_none());
        drop(one);
        wait_for("rank 1 dead", || {
            m0.peer_health(&[0, 1, 2])[1].state == PeerState::DeadExited
        });
    }
}
