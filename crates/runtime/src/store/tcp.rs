//! TCP store: a server keeping the keys in memory, and a client for it.
//!
//! # Wire protocol (version 1)
//!
//! Integers are big-endian. A *string* is a `u32` length and that many UTF-8 bytes; *bytes*
//! is a `u32` length and that many raw bytes.
//!
//! 1. On accepting a connection the server sends a greeting: the magic `b"TOPOSTOR"`, a
//!    `u16` version and a `u8` status, 0 (accepted) or 1 (refused, followed by a string
//!    saying why; the server then closes the connection). The server speaks first so that
//!    a refusal reaches a client that has sent nothing yet: closing a socket with unread
//!    input resets it, and the reset would destroy the message.
//! 2. The client answers with the same magic and its `u16` version.
//! 3. Requests and replies then alternate on the connection, one at a time. Each is a
//!    frame: a `u32` body length (at most [`MAX_FRAME`], 16 MiB + 4160) and the body.
//!
//! A request body is a `u8` opcode and its fields:
//!
//! | op | name    | fields                                          | OK reply fields   |
//! |----|---------|-------------------------------------------------|-------------------|
//! | 1  | SET     | key string, value bytes                         | none              |
//! | 2  | GET     | timeout_ms `u64`, key string                    | value bytes       |
//! | 3  | TRY_GET | key string                                      | value bytes       |
//! | 4  | WAIT    | timeout_ms `u64`, `u32` count, count key strings | none             |
//! | 5  | ADD     | key string, delta `i64`                         | new value `i64`   |
//! | 6  | DELETE  | key string                                      | none              |
//!
//! A reply body is a `u8` status and its fields: 0 OK (as above), 1 NOT_FOUND (TRY_GET of
//! a missing key), 2 TIMEOUT (`u32` count and the missing keys as strings), 3 ERROR (a
//! message string). After an ERROR the connection stays usable, except for a frame longer
//! than the limit, whose body the server does not read: it replies ERROR and closes.
//!
//! Waiting requests carry a duration rather than an instant because the hosts' clocks are
//! unrelated. Counters are decimal ASCII, so `get` of a counter reads e.g. `b"42"`, as in
//! the file store.
//!
//! # Threads and limits
//!
//! The server runs one accept thread and one thread per connection (at most
//! [`MAX_CONNECTIONS`]; more are refused in the greeting), so a client waiting for a key
//! never delays another. It keeps at most [`MAX_ENTRIES`] keys and [`MAX_STORE_BYTES`] of
//! keys and values. A client holds a small pool of connections (at most
//! [`MAX_CLIENT_CONNECTIONS`]), one per call in flight, so its threads can wait and set
//! concurrently.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{Store, StoreError, MAX_KEY_LEN, MAX_VALUE_LEN};

const MAGIC: [u8; 8] = *b"TOPOSTOR";
const VERSION: u16 = 1;

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_TRY_GET: u8 = 3;
const OP_WAIT: u8 = 4;
const OP_ADD: u8 = 5;
const OP_DELETE: u8 = 6;

const ST_OK: u8 = 0;
const ST_NOT_FOUND: u8 = 1;
const ST_TIMEOUT: u8 = 2;
const ST_ERROR: u8 = 3;

const GREETING_ACCEPTED: u8 = 0;
const GREETING_REFUSED: u8 = 1;

/// Largest frame body: a SET of the largest key and value, with room for the headers.
const MAX_FRAME: usize = MAX_VALUE_LEN + MAX_KEY_LEN + 64;
/// Largest refusal or error message accepted from the server.
const MAX_MESSAGE_LEN: usize = 4096;
/// Keys per WAIT request; the client splits longer lists.
const MAX_WAIT_KEYS: usize = 65_536;
/// Connections the server serves at once.
const MAX_CONNECTIONS: usize = 4096;
/// Keys the server holds.
const MAX_ENTRIES: usize = 1 << 20;
/// Bytes of keys and values the server holds.
const MAX_STORE_BYTES: usize = 1 << 30;
/// Connections one client opens at once (one per call in flight).
const MAX_CLIENT_CONNECTIONS: usize = 256;
/// Connections a client keeps open between calls.
const MAX_IDLE_CONNECTIONS: usize = 8;
/// Default bound on any I/O that is not a wait for keys.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long past its deadline a client waits for the server's TIMEOUT reply.
const REPLY_GRACE: Duration = Duration::from_secs(5);
/// How often a server thread waiting for keys checks that its client is still there.
const LIVENESS_PERIOD: Duration = Duration::from_millis(250);
/// Longest wait the server honours (a longer timeout is cut to this).
const MAX_SERVER_WAIT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Connection threads keep frames on the heap; a small stack lets thousands coexist.
const CONN_THREAD_STACK: usize = 256 << 10;
/// Connect retries: first pause and largest pause.
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(500);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data consistent (every update
    // is a single map operation), so keep serving rather than propagate the panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// Encoding

/// A frame under construction: 4 bytes of length, then the body.
struct FrameBuf(Vec<u8>);

impl FrameBuf {
    fn new(tag: u8) -> FrameBuf {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; 4]);
        v.push(tag);
        FrameBuf(v)
    }
    fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    fn i64(&mut self, x: i64) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    /// Callers check lengths against the key/value limits first, so they fit in a u32.
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        let len = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&len.to_be_bytes());
        v
    }
}

/// Encoded size of a string field.
fn field_len(s: &str) -> usize {
    4 + s.len()
}

/// Reads fields out of a frame body; errors say which field was bad.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let rest = self.buf.len() - self.pos;
        if n > rest {
            return Err(format!(
                "{what} needs {n} bytes but the frame has {rest} left (truncated or malformed)"
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self, what: &str) -> Result<i64, String> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(i64::from_be_bytes(a))
    }
    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(format!("{what} is {n} bytes, more than the limit of {max}"));
        }
        self.take(n, what)
    }
    fn str(&mut self, max: usize, what: &str) -> Result<&'a str, String> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b).map_err(|_| format!("{what} is not valid UTF-8"))
    }
    fn end(&self) -> Result<(), String> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(format!("{n} unexpected bytes at the end of the frame")),
        }
    }
}

enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    /// The announced body is longer than [`MAX_FRAME`].
    TooLong(usize),
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

/// Reads one frame body. `body_timeout` bounds the body once its header has arrived, so
/// a peer that dies mid-frame cannot hold the reader.
fn read_frame(
    stream: &TcpStream,
    header_timeout: Option<Duration>,
    body_timeout: Duration,
) -> Result<Vec<u8>, FrameError> {
    let mut r = stream;
    stream.set_read_timeout(header_timeout)?;
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if (1..4).contains(&got) {
            // A header has begun: the rest of the frame must follow promptly.
            stream.set_read_timeout(Some(body_timeout))?;
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    stream.set_read_timeout(Some(body_timeout))?;
    // Grow as bytes arrive rather than trusting the announced length with an allocation.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(body)
}

fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Milliseconds until `deadline`, rounded up so the server never gives up early.
fn millis_until(deadline: Instant) -> u64 {
    let d = deadline.saturating_duration_since(Instant::now());
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// Server

/// Limits of one server; tests shrink them.
#[derive(Clone, Copy, Debug)]
struct ServerLimits {
    max_connections: usize,
    max_entries: usize,
    max_bytes: usize,
    io_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            max_entries: MAX_ENTRIES,
            max_bytes: MAX_STORE_BYTES,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Arc<[u8]>>,
    /// Sum of key and value lengths.
    bytes: usize,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// A handle on every open connection, so stopping can unblock their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    limits: ServerLimits,
}

enum WaitOutcome {
    /// All keys exist; the value of the first.
    Ready(Arc<[u8]>),
    TimedOut(Vec<String>),
    /// The server is stopping or the client went away: close without a reply.
    Abandon,
}

impl Shared {
    fn put(&self, st: &mut State, key: &str, value: Arc<[u8]>) -> Result<(), String> {
        let old = st.entries.get(key).map(|v| key.len() + v.len());
        if old.is_none() && st.entries.len() >= self.limits.max_entries {
            return Err(format!(
                "the store holds {} keys, its limit; delete keys that are no longer needed",
                st.entries.len()
            ));
        }
        let bytes = st.bytes - old.unwrap_or(0) + key.len() + value.len();
        if bytes > self.limits.max_bytes {
            return Err(format!(
                "setting '{key}' would make the store hold {bytes} bytes, more than its \
                 limit of {}; delete keys that are no longer needed",
                self.limits.max_bytes,
                key = shown(key)
            ));
        }
        st.bytes = bytes;
        st.entries.insert(key.to_string(), value);
        self.changed.notify_all();
        Ok(())
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let value: Arc<[u8]> = Arc::from(value);
        self.put(&mut lock(&self.state), key, value)
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, String> {
        let mut st = lock(&self.state);
        let current = match st.entries.get(key) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    format!(
                        "key '{key}' holds a value that is not a counter (a decimal i64); \
                         use another key for the counter",
                        key = shown(key)
                    )
                })?,
        };
        let new = current.checked_add(delta).ok_or_else(|| {
            format!(
                "adding {delta} to counter '{key}' (now {current}) overflows i64",
                key = shown(key)
            )
        })?;
        self.put(&mut st, key, Arc::from(new.to_string().as_bytes()))?;
        Ok(new)
    }

    fn try_get(&self, key: &str) -> Option<Arc<[u8]>> {
        lock(&self.state).entries.get(key).cloned()
    }

    fn delete(&self, key: &str) {
        let mut st = lock(&self.state);
        if let Some(v) = st.entries.remove(key) {
            st.bytes -= key.len() + v.len();
        }
    }

    fn wait(&self, stream: &TcpStream, keys: &[&str], timeout: Duration) -> WaitOutcome {
        let start = Instant::now();
        let deadline = start + timeout.min(MAX_SERVER_WAIT);
        let mut pending: Vec<&str> = keys.to_vec();
        let mut last_check = start;
        let mut st = lock(&self.state);
        loop {
            if st.stopping {
                return WaitOutcome::Abandon;
            }
            pending.retain(|k| !st.entries.contains_key(*k));
            if pending.is_empty() {
                // GET answers with the first key's value. If that key was deleted after
                // it was seen, wait for it again rather than answer with nothing.
                return match keys.first() {
                    None => WaitOutcome::Ready(Arc::from(&[][..])),
                    Some(first) => match st.entries.get(*first) {
                        Some(v) => WaitOutcome::Ready(v.clone()),
                        None => {
                            pending.push(first);
                            continue;
                        }
                    },
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return WaitOutcome::TimedOut(pending.iter().map(|k| k.to_string()).collect());
            }
            if now.duration_since(last_check) >= LIVENESS_PERIOD {
                drop(st);
                if peer_gone(stream) {
                    return WaitOutcome::Abandon;
                }
                last_check = Instant::now();
                st = lock(&self.state);
                continue;
            }
            let nap = (deadline - now).min(LIVENESS_PERIOD);
            st = self
                .changed
                .wait_timeout(st, nap)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn stopping(&self) -> bool {
        lock(&self.state).stopping
    }
}

/// Whether the client of a waiting request has closed its connection (crashed).
fn peer_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    stream.set_nonblocking(false).is_err() || gone
}

/// A TCP store server running on background threads until dropped.
pub struct TcpStoreServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    waker: mio::Waker,
    acceptor: Option<JoinHandle<()>>,
}

impl fmt::Debug for TcpStoreServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStoreServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

const LISTENER: mio::Token = mio::Token(0);
const WAKER: mio::Token = mio::Token(1);

impl TcpStoreServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub fn start(addr: &str) -> Result<TcpStoreServer, StoreError> {
        Self::start_with(addr, ServerLimits::default())
    }

    fn start_with(addr: &str, limits: ServerLimits) -> Result<TcpStoreServer, StoreError> {
        let io_err = |what: &str, e: io::Error| {
            StoreError::Io(format!("TCP store server on {addr}: {what}: {e}"))
        };
        let std_listener = TcpListener::bind(addr).map_err(|e| {
            StoreError::Io(format!(
                "cannot listen on {addr}: {e}; check the address, or pick another port \
                 (port 0 picks a free one) if this one is in use"
            ))
        })?;
        let local = std_listener
            .local_addr()
            .map_err(|e| io_err("reading the bound address", e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| io_err("making the listener non-blocking", e))?;
        let mut listener = mio::net::TcpListener::from_std(std_listener);
        let poll = mio::Poll::new().map_err(|e| io_err("creating a poller", e))?;
        poll.registry()
            .register(&mut listener, LISTENER, mio::Interest::READABLE)
            .map_err(|e| io_err("registering the listener", e))?;
        let waker =
            mio::Waker::new(poll.registry(), WAKER).map_err(|e| io_err("creating a waker", e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
            limits,
        });
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("topoccl-store-accept".into())
                .spawn(move || accept_loop(listener, poll, shared))
                .map_err(|e| io_err("starting the accept thread", e))?
        };
        tracing::debug!(%local, "TCP store server listening");
        Ok(TcpStoreServer {
            addr: local,
            shared,
            waker,
            acceptor: Some(acceptor),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Err(e) = self.waker.wake() {
            // Without the wake-up the accept thread would sleep until the next connection;
            // better to leave it than to block the drop.
            tracing::warn!(addr = %self.addr, "TCP store server: cannot wake the accept thread: {e}");
            return;
        }
        if let Some(h) = self.acceptor.take() {
            if h.join().is_err() {
                tracing::warn!(addr = %self.addr, "TCP store server: accept thread panicked");
            }
        }
    }
}

fn accept_loop(listener: mio::net::TcpListener, mut poll: mio::Poll, shared: Arc<Shared>) {
    let mut events = mio::Events::with_capacity(16);
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    // After a failed accept (e.g. out of file descriptors) the pending connection gives no
    // new readiness event, so poll again after a pause instead of waiting for one.
    let mut retry_in: Option<Duration> = None;
    loop {
        if let Err(e) = poll.poll(&mut events, retry_in) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!("TCP store server: poll failed: {e}; retrying");
                thread::sleep(Duration::from_millis(50));
            }
        }
        if shared.stopping() {
            break;
        }
        retry_in = None;
        workers.retain(|h| !h.is_finished());
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Some(h) = admit(stream.into(), peer, &shared, next_id) {
                        workers.push(h);
                    }
                    next_id += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("TCP store server: accept failed: {e}; retrying in 50 ms");
                    retry_in = Some(Duration::from_millis(50));
                    break;
                }
            }
        }
    }
    drop(listener);
    let conns: Vec<TcpStream> = lock(&shared.conns).drain().map(|(_, s)| s).collect();
    for s in conns {
        let _ = s.shutdown(Shutdown::Both);
    }
    for h in workers {
        let _ = h.join();
    }
}

/// Starts serving an accepted connection, or refuses it when the server is full.
fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    id: u64,
) -> Option<JoinHandle<()>> {
    let limits = shared.limits;
    if let Err(e) = stream.set_nonblocking(false) {
        tracing::warn!(%peer, "TCP store server: dropping connection: {e}");
        return None;
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.io_timeout));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);

    let registered = {
        let mut conns = lock(&shared.conns);
        if conns.len() >= limits.max_connections {
            Err(conns.len())
        } else {
            match stream.try_clone() {
                Ok(s) => {
                    conns.insert(id, s);
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!(%peer, "TCP store server: dropping connection: {e}");
                    return None;
                }
            }
        }
    };
    if let Err(open) = registered {
        tracing::warn!(%peer, open, "TCP store server: refusing a connection, too many open");
        refuse(
            &stream,
            &format!(
                "the store serves at most {} connections and has {open} open; close idle \
                 clients or start fewer ranks per store",
                limits.max_connections
            ),
        );
        return None;
    }
    let worker_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("topoccl-store-conn".into())
        .stack_size(CONN_THREAD_STACK)
        .spawn(move || {
            serve(&stream, peer, &worker_shared);
            lock(&worker_shared.conns).remove(&id);
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(%peer, "TCP store server: cannot start a connection thread: {e}");
            if let Some(s) = lock(&shared.conns).remove(&id) {
                refuse(
                    &s,
                    &format!("the store cannot start a thread for this connection: {e}"),
                );
            }
            None
        }
    }
}

fn refuse(stream: &TcpStream, why: &str) {
    let mut g = Vec::with_capacity(16 + why.len());
    g.extend_from_slice(&MAGIC);
    g.extend_from_slice(&VERSION.to_be_bytes());
    g.push(GREETING_REFUSED);
    let why = clip(why).as_bytes();
    g.extend_from_slice(&(why.len() as u32).to_be_bytes());
    g.extend_from_slice(why);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut w = stream;
    let _ = w.write_all(&g);
    let _ = stream.shutdown(Shutdown::Write);
}

fn serve(stream: &TcpStream, peer: SocketAddr, shared: &Shared) {
    let io_timeout = shared.limits.io_timeout;
    let mut w = stream;
    let mut greeting = Vec::with_capacity(11);
    greeting.extend_from_slice(&MAGIC);
    greeting.extend_from_slice(&VERSION.to_be_bytes());
    greeting.push(GREETING_ACCEPTED);
    if let Err(e) = w.write_all(&greeting) {
        tracing::debug!(%peer, "TCP store: client left before the greeting: {e}");
        return;
    }
    let mut hello = [0u8; 10];
    let hello_read = stream
        .set_read_timeout(Some(io_timeout))
        .and_then(|()| w.read_exact(&mut hello));
    if let Err(e) = hello_read {
        tracing::debug!(%peer, "TCP store: no hello from client: {e}");
        return;
    }
    let version = u16::from_be_bytes([hello[8], hello[9]]);
    if hello[..8] != MAGIC || version != VERSION {
        tracing::warn!(%peer, "TCP store: client is not a topoccl store client of version {VERSION}");
        let msg = format!(
            "this is a topoccl TCP store speaking protocol version {VERSION}; the client \
             sent another magic or version ({version}); use matching topoccl versions"
        );
        let _ = w.write_all(&error_reply(&msg));
        return;
    }
    tracing::debug!(%peer, "TCP store: client connected");
    loop {
        let body = match read_frame(stream, None, io_timeout) {
            Ok(b) => b,
            Err(FrameError::Closed) => {
                tracing::debug!(%peer, "TCP store: client disconnected");
                return;
            }
            Err(FrameError::TooLong(n)) => {
                tracing::warn!(%peer, len = n, "TCP store: request frame too long, closing");
                let msg = format!(
                    "request of {n} bytes exceeds the frame limit of {MAX_FRAME}; keys are at \
                     most {MAX_KEY_LEN} bytes and values at most {MAX_VALUE_LEN}"
                );
                let _ = w.write_all(&error_reply(&msg));
                return;
            }
            Err(FrameError::Io(e)) => {
                // Most often a rank that crashed or was killed in the middle of a request.
                tracing::debug!(%peer, "TCP store: dropping connection mid-request: {e}");
                return;
            }
        };
        let reply = match handle(shared, stream, &body) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(msg) => {
                tracing::warn!(%peer, "TCP store: refused a request: {msg}");
                error_reply(&msg)
            }
        };
        if let Err(e) = w.write_all(&reply) {
            tracing::debug!(%peer, "TCP store: cannot reply, dropping connection: {e}");
            return;
        }
    }
}

/// `msg` cut to the message limit at a character boundary.
fn clip(msg: &str) -> &str {
    let end = (0..=msg.len().min(MAX_MESSAGE_LEN))
        .rev()
        .find(|&i| msg.is_char_boundary(i))
        .unwrap_or(0);
    &msg[..end]
}

fn error_reply(msg: &str) -> Vec<u8> {
    FrameBuf::new(ST_ERROR).bytes(clip(msg).as_bytes()).finish()
}

/// Executes one request. `Ok(None)`: close without replying (server stopping or client
/// gone); `Err`: the message of an ERROR reply.
fn handle(shared: &Shared, stream: &TcpStream, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut c = Cursor::new(body);
    let op = c.u8("opcode")?;
    let reply = match op {
        OP_SET => {
            let key = c.str(MAX_KEY_LEN, "key")?;
            let value = c.bytes(MAX_VALUE_LEN, "value")?;
            c.end()?;
            shared.set(key, value)?;
            FrameBuf::new(ST_OK).finish()
        }
        OP_GET => {
            let timeout = Duration::from_millis(c.u64("timeout")?);
            let key = c.str(MAX_KEY_LEN, "key")?;
            c.end()?;
            match shared.wait(stream, &[key], timeout) {
                WaitOutcome::Ready(v) => FrameBuf::new(ST_OK).bytes(&v).finish(),
                WaitOutcome::TimedOut(missing) => timeout_reply(&missing),
                WaitOutcome::Abandon => return Ok(None),
            }
        }
        OP_TRY_GET => {
            let key = c.str(MAX_KEY_LEN, "key")?;
            c.end()?;
            match shared.try_get(key) {
                Some(v) => FrameBuf::new(ST_OK).bytes(&v).finish(),
                None => FrameBuf::new(ST_NOT_FOUND).finish(),
            }
        }
        OP_WAIT => {
            let timeout = Duration::from_millis(c.u64("timeout")?);
            let n = c.u32("key count")? as usize;
            if n > MAX_WAIT_KEYS {
                return Err(format!(
                    "WAIT for {n} keys exceeds the limit of {MAX_WAIT_KEYS} per request"
                ));
            }
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                keys.push(c.str(MAX_KEY_LEN, "key")?);
            }
            c.end()?;
            match shared.wait(stream, &keys, timeout) {
                WaitOutcome::Ready(_) => FrameBuf::new(ST_OK).finish(),
                WaitOutcome::TimedOut(missing) => timeout_reply(&missing),
                WaitOutcome::Abandon => return Ok(None),
            }
        }
        OP_ADD => {
            let key = c.str(MAX_KEY_LEN, "key")?;
            let delta = c.i64("delta")?;
            c.end()?;
            let v = shared.add(key, delta)?;
            FrameBuf::new(ST_OK).i64(v).finish()
        }
        OP_DELETE => {
            let key = c.str(MAX_KEY_LEN, "key")?;
            c.end()?;
            shared.delete(key);
            FrameBuf::new(ST_OK).finish()
        }
        other => {
            return Err(format!(
                "unknown opcode {other}; the client speaks another protocol version"
            ))
        }
    };
    Ok(Some(reply))
}

/// The missing keys fit: they came in a request no longer than the frame limit.
fn timeout_reply(missing: &[String]) -> Vec<u8> {
    let mut f = FrameBuf::new(ST_TIMEOUT);
    f.u32(missing.len() as u32);
    for k in missing {
        f.bytes(k.as_bytes());
    }
    f.finish()
}

// ---------------------------------------------------------------------------------------
// Client

struct Pool {
    idle: Vec<TcpStream>,
    /// Connections in existence, idle or lent to a call.
    open: usize,
}

/// A client of a TCP store. Each call in flight uses its own connection (pooled), so
/// threads sharing one `TcpStore` never wait behind each other's waits.
pub struct TcpStore {
    addr: String,
    peer: SocketAddr,
    io_timeout: Duration,
    pool: Mutex<Pool>,
    freed: Condvar,
}

impl fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStore")
            .field("addr", &self.addr)
            .field("peer", &self.peer)
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

/// Why one connection attempt failed.
enum AttemptError {
    /// Worth trying again (refused, reset, not answering).
    Retry(String),
    /// The server is up but full; also worth trying again, as connections come and go.
    Full(String),
    /// The other end is not a compatible store.
    Fatal(StoreError),
}

/// Opens one connection and completes the greeting and hello.
fn connect_once(
    addr: &str,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, AttemptError> {
    let timeout = nonzero(timeout);
    let stream = TcpStream::connect_timeout(&peer, timeout)
        .map_err(|e| AttemptError::Retry(format!("connecting to {peer}: {e}")))?;
    let setup = || -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))
    };
    setup()
        .map_err(|e| AttemptError::Retry(format!("setting up the connection to {peer}: {e}")))?;
    let mut r = &stream;
    let mut greeting = [0u8; 11];
    r.read_exact(&mut greeting).map_err(|e| {
        AttemptError::Retry(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "{peer} accepted the connection but sent no greeting within {timeout:?} \
                 (is it a topoccl store?)"
            ),
            _ => format!("{peer} closed the connection before greeting ({e})"),
        })
    })?;
    let version = u16::from_be_bytes([greeting[8], greeting[9]]);
    if greeting[..8] != MAGIC {
        return Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "{addr} ({peer}) is not a topoccl TCP store (unexpected greeting); check the \
             store address and port"
        ))));
    }
    if version != VERSION {
        return Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "the store at {addr} speaks protocol version {version}, this client version \
             {VERSION}; use matching topoccl versions"
        ))));
    }
    if greeting[10] != GREETING_ACCEPTED {
        let mut len = [0u8; 4];
        let mut why = String::from("no reason given");
        if r.read_exact(&mut len).is_ok() {
            let n = (u32::from_be_bytes(len) as usize).min(MAX_MESSAGE_LEN);
            let mut msg = Vec::with_capacity(n);
            if r.take(n as u64).read_to_end(&mut msg).is_ok() {
                why = String::from_utf8_lossy(&msg).into_owned();
            }
        }
        return Err(AttemptError::Full(format!(
            "the store refused the connection: {why}"
        )));
    }
    let mut hello = [0u8; 10];
    hello[..8].copy_from_slice(&MAGIC);
    hello[8..].copy_from_slice(&VERSION.to_be_bytes());
    let mut w = &stream;
    w.write_all(&hello)
        .map_err(|e| AttemptError::Retry(format!("sending hello to {peer}: {e}")))?;
    Ok(stream)
}

/// Resolves `host:port`. Malformed addresses fail at once; resolution failures are worth
/// retrying (a name service may lag behind a starting job).
fn resolve(addr: &str) -> Result<Result<Vec<SocketAddr>, String>, StoreError> {
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(StoreError::Protocol(format!(
            "store address '{addr}' must be HOST:PORT with a port from 0 to 65535 (IPv6: \
             [ADDR]:PORT)"
        )));
    }
    Ok(match addr.to_socket_addrs() {
        Ok(a) => {
            let a: Vec<SocketAddr> = a.collect();
            if a.is_empty() {
                Err(format!("'{addr}' resolves to no address"))
            } else {
                Ok(a)
            }
        }
        Err(e) => Err(format!("resolving '{addr}': {e}")),
    })
}

/// A connection lent to one call; returned to the pool only if the call left it in a
/// clean state.
struct Lease<'a> {
    store: &'a TcpStore,
    stream: Option<TcpStream>,
    reusable: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = lock(&self.store.pool);
        match self.stream.take() {
            Some(s) if self.reusable && pool.idle.len() < MAX_IDLE_CONNECTIONS => pool.idle.push(s),
            _ => pool.open -= 1,
        }
        drop(pool);
        self.store.freed.notify_one();
    }
}

impl TcpStore {
    /// Connects to `addr` (`host:port`), retrying while it refuses, until `deadline`.
    pub fn connect(addr: &str, deadline: Instant) -> Result<TcpStore, StoreError> {
        let io_timeout = DEFAULT_IO_TIMEOUT;
        let mut pause = RETRY_FIRST;
        let mut attempts = 0u32;
        let start = Instant::now();
        let mut logged_refusal = false;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = remaining.clamp(Duration::from_millis(100), io_timeout);
            let last_error = match resolve(addr)? {
                Err(e) => e,
                Ok(peers) => {
                    let mut last = String::new();
                    let mut found = None;
                    for peer in peers {
                        match connect_once(addr, peer, attempt_timeout) {
                            Ok(s) => {
                                found = Some((peer, s));
                                break;
                            }
                            Err(AttemptError::Fatal(e)) => return Err(e),
                            Err(AttemptError::Retry(e)) => last = e,
                            Err(AttemptError::Full(e)) => {
                                if !logged_refusal {
                                    logged_refusal = true;
                                    tracing::warn!(
                                        addr,
                                        "TCP store: {e}; retrying until the deadline"
                                    );
                                }
                                last = e;
                            }
                        }
                    }
                    if let Some((peer, stream)) = found {
                        tracing::debug!(addr, %peer, attempts, "connected to the TCP store");
                        return Ok(TcpStore {
                            addr: addr.to_string(),
                            peer,
                            io_timeout,
                            pool: Mutex::new(Pool {
                                idle: vec![stream],
                                open: 1,
                            }),
                            freed: Condvar::new(),
                        });
                    }
                    last
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unreachable {
                    addr: addr.to_string(),
                    reason: format!(
                        "{last_error} (gave up after {attempts} attempts over {:.1?}; check \
                         that the store server is running and the address is right, or \
                         allow a later deadline)",
                        now.duration_since(start)
                    ),
                });
            }
            tracing::debug!(addr, attempts, "TCP store not reachable yet: {last_error}");
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Bounds every call that does not wait for keys (default 30 s): a store that does
    /// not answer within it is reported `Unreachable`.
    pub fn with_io_timeout(mut self, timeout: Duration) -> TcpStore {
        self.io_timeout = nonzero(timeout);
        self
    }

    fn unreachable(&self, reason: String) -> StoreError {
        StoreError::Unreachable {
            addr: self.addr.clone(),
            reason,
        }
    }

    /// Lends a connection: an idle one, a new one, or (at the limit) the next one freed
    /// before `deadline`.
    fn lease(&self, deadline: Instant) -> Result<Lease<'_>, StoreError> {
        let mut pool = lock(&self.pool);
        loop {
            if let Some(s) = pool.idle.pop() {
                return Ok(Lease {
                    store: self,
                    stream: Some(s),
                    reusable: false,
                });
            }
            if pool.open < MAX_CLIENT_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let mut lease = Lease {
                    store: self,
                    stream: None,
                    reusable: false,
                };
                let timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.io_timeout);
                match connect_once(&self.addr, self.peer, timeout) {
                    Ok(s) => lease.stream = Some(s),
                    Err(AttemptError::Fatal(e)) => return Err(e),
                    Err(AttemptError::Retry(e) | AttemptError::Full(e)) => {
                        return Err(self.unreachable(format!("opening a connection: {e}")))
                    }
                }
                return Ok(lease);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.unreachable(format!(
                    "all {MAX_CLIENT_CONNECTIONS} connections of this client are busy with \
                     other threads' calls; make fewer concurrent calls or use another \
                     TcpStore"
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sends one request and reads its reply body. `wait_until`: the deadline of a
    /// waiting request, which the reply may take until (plus a grace period).
    fn call(
        &self,
        what: &str,
        request: &[u8],
        wait_until: Option<Instant>,
    ) -> Result<Vec<u8>, StoreError> {
        let lease_deadline = wait_until.unwrap_or_else(|| Instant::now() + self.io_timeout);
        let mut lease = self.lease(lease_deadline)?;
        let Some(stream) = lease.stream.as_ref() else {
            return Err(self.unreachable(format!("{what}: no connection")));
        };
        let reply_timeout = match wait_until {
            Some(d) => {
                d.saturating_duration_since(Instant::now()) + REPLY_GRACE.min(self.io_timeout)
            }
            None => self.io_timeout,
        };
        let describe = |e: io::Error, during: &str| -> StoreError {
            let reason = match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => format!(
                    "the store closed the connection during {what} ({during}); the server \
                     stopped or crashed"
                ),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                    "no reply to {what} within {reply_timeout:?}; the store is overloaded \
                     or its host is down"
                ),
                _ => format!("{what} ({during}): {e}"),
            };
            self.unreachable(reason)
        };
        let mut w = stream;
        stream
            .set_write_timeout(Some(self.io_timeout))
            .and_then(|()| w.write_all(request))
            .map_err(|e| describe(e, "sending"))?;
        let body = match read_frame(stream, Some(nonzero(reply_timeout)), self.io_timeout) {
            Ok(b) => b,
            Err(FrameError::Closed) => {
                return Err(describe(
                    io::ErrorKind::UnexpectedEof.into(),
                    "awaiting the reply",
                ))
            }
            Err(FrameError::TooLong(n)) => {
                return Err(StoreError::Protocol(format!(
                    "the store sent a {n}-byte reply to {what}, more than the frame limit \
                     of {MAX_FRAME}; client and server versions may differ"
                )))
            }
            Err(FrameError::Io(e)) => return Err(describe(e, "receiving the reply")),
        };
        lease.reusable = true;
        Ok(body)
    }

    /// Decodes a reply: `Ok(None)` for NOT_FOUND, the error for TIMEOUT and ERROR, else a
    /// cursor over the OK fields.
    fn parse_reply<'b, T>(
        &self,
        what: &str,
        body: &'b [u8],
        ok: impl FnOnce(&mut Cursor<'b>) -> Result<T, String>,
    ) -> Result<Option<T>, StoreError> {
        let bad = |e: String| {
            StoreError::Protocol(format!(
                "malformed reply to {what} from the store at {}: {e}",
                self.addr
            ))
        };
        let mut c = Cursor::new(body);
        match c.u8("status").map_err(bad)? {
            ST_OK => {
                let v = ok(&mut c).map_err(bad)?;
                c.end().map_err(bad)?;
                Ok(Some(v))
            }
            ST_NOT_FOUND => {
                c.end().map_err(bad)?;
                Ok(None)
            }
            ST_TIMEOUT => {
                let n = c.u32("missing count").map_err(bad)? as usize;
                let mut missing = Vec::with_capacity(n.min(MAX_WAIT_KEYS));
                for _ in 0..n {
                    missing.push(c.str(MAX_KEY_LEN, "missing key").map_err(bad)?.to_string());
                }
                Err(StoreError::Timeout { missing })
            }
            ST_ERROR => {
                let msg = c.str(MAX_FRAME, "message").map_err(bad)?;
                Err(StoreError::Protocol(format!(
                    "the store refused {what}: {msg}"
                )))
            }
            s => Err(bad(format!("unknown status {s}"))),
        }
    }

    /// The OK reply of a call that has no NOT_FOUND answer.
    fn expect_ok<'b, T>(
        &self,
        what: &str,
        body: &'b [u8],
        ok: impl FnOnce(&mut Cursor<'b>) -> Result<T, String>,
    ) -> Result<T, StoreError> {
        self.parse_reply(what, body, ok)?.ok_or_else(|| {
            StoreError::Protocol(format!(
                "the store at {} answered {what} with NOT_FOUND, which it never should",
                self.addr
            ))
        })
    }

    fn wait_batch(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        let mut f = FrameBuf::new(OP_WAIT);
        f.u64(millis_until(deadline)).u32(keys.len() as u32);
        for k in keys {
            f.bytes(k.as_bytes());
        }
        let what = format!("WAIT for {} keys", keys.len());
        let body = self.call(&what, &f.finish(), Some(deadline))?;
        self.expect_ok(&what, &body, |_| Ok(()))
    }
}

/// `key` for messages: long keys are cut so errors stay readable.
fn shown(key: &str) -> String {
    const SHOWN: usize = 60;
    match key.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_string(),
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Protocol(format!(
            "key '{}' is {} bytes, more than the limit of {MAX_KEY_LEN}; use a shorter key",
            shown(key),
            key.len()
        )));
    }
    Ok(())
}

fn check_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(StoreError::Protocol(format!(
            "value for key '{key}' is {} bytes, more than the limit of {MAX_VALUE_LEN}; \
             store large data elsewhere and publish its location",
            value.len(),
            key = shown(key)
        )));
    }
    Ok(())
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(key, value)?;
        let what = format!("SET '{}'", shown(key));
        let req = FrameBuf::new(OP_SET)
            .bytes(key.as_bytes())
            .bytes(value)
            .finish();
        let body = self.call(&what, &req, None)?;
        self.expect_ok(&what, &body, |_| Ok(()))
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let what = format!("GET '{}'", shown(key));
        let req = FrameBuf::new(OP_GET)
            .u64(millis_until(deadline))
            .bytes(key.as_bytes())
            .finish();
        let body = self.call(&what, &req, Some(deadline))?;
        self.expect_ok(&what, &body, |c| {
            c.bytes(MAX_VALUE_LEN, "value").map(<[u8]>::to_vec)
        })
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let what = format!("TRY_GET '{}'", shown(key));
        let req = FrameBuf::new(OP_TRY_GET).bytes(key.as_bytes()).finish();
        let body = self.call(&what, &req, None)?;
        self.parse_reply(&what, &body, |c| {
            c.bytes(MAX_VALUE_LEN, "value").map(<[u8]>::to_vec)
        })
    }

    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        for k in keys {
            check_key(k)?;
        }
        // Split into requests within the frame and key-count limits. Batches run one
        // after another against the same deadline; once it has passed, the remaining
        // batches are still asked (with no time to wait) so the error lists every
        // missing key.
        let mut missing = Vec::new();
        let mut start = 0;
        while start < keys.len() {
            let mut end = start;
            let mut size = 1 + 8 + 4;
            while end < keys.len()
                && end - start < MAX_WAIT_KEYS
                && size + field_len(&keys[end]) <= MAX_FRAME
            {
                size += field_len(&keys[end]);
                end += 1;
            }
            match self.wait_batch(&keys[start..end], deadline) {
                Ok(()) => {}
                Err(StoreError::Timeout { missing: m }) => missing.extend(m),
                Err(e) => return Err(e),
            }
            start = end;
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Timeout { missing })
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        check_key(key)?;
        let what = format!("ADD {delta} to '{}'", shown(key));
        let req = FrameBuf::new(OP_ADD)
            .bytes(key.as_bytes())
            .i64(delta)
            .finish();
        let body = self.call(&what, &req, None)?;
        self.expect_ok(&what, &body, |c| c.i64("new value"))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let what = format!("DELETE '{}'", shown(key));
        let req = FrameBuf::new(OP_DELETE).bytes(key.as_bytes()).finish();
        let body = self.call(&what, &req, None)?;
        self.expect_ok(&what, &body, |_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    fn server() -> (TcpStoreServer, String) {
        let s = TcpStoreServer::start("127.0.0.1:0").expect("start server");
        let a = s.local_addr().to_string();
        (s, a)
    }

    /// A raw connection past the greeting and hello, for sending hand-made frames.
    fn raw(addr: &str) -> TcpStream {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; 11];
        (&s).read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], &MAGIC);
        assert_eq!(g[10], GREETING_ACCEPTED);
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&VERSION.to_be_bytes());
        (&s).write_all(&hello).unwrap();
        s
    }

    fn reply(s: &TcpStream) -> Vec<u8> {
        match read_frame(s, Some(Duration::from_secs(5)), Duration::from_secs(5)) {
            Ok(b) => b,
            Err(_) => panic!("no reply frame"),
        }
    }

    fn error_text(body: &[u8]) -> String {
        let mut c = Cursor::new(body);
        assert_eq!(c.u8("status").unwrap(), ST_ERROR);
        c.str(MAX_FRAME, "message").unwrap().to_string()
    }

    #[test]
    fn frame_round_trip() {
        let f = FrameBuf::new(OP_ADD).bytes(b"key").i64(-7).finish();
        assert_eq!(
            u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
            f.len() - 4
        );
        let mut c = Cursor::new(&f[4..]);
        assert_eq!(c.u8("op").unwrap(), OP_ADD);
        assert_eq!(c.str(10, "key").unwrap(), "key");
        assert_eq!(c.i64("delta").unwrap(), -7);
        c.end().unwrap();
    }

    #[test]
    fn cursor_rejects_truncation_limits_and_bad_utf8() {
        let f = FrameBuf::new(OP_SET).bytes(b"abcdef").finish();
        let mut c = Cursor::new(&f[4..f.len() - 1]);
        c.u8("op").unwrap();
        assert!(c.bytes(100, "key").unwrap_err().contains("truncated"));
        let mut c = Cursor::new(&f[4..]);
        c.u8("op").unwrap();
        assert!(c.bytes(3, "key").unwrap_err().contains("limit of 3"));
        let f = FrameBuf::new(OP_SET).bytes(&[0xff, 0xfe]).finish();
        let mut c = Cursor::new(&f[4..]);
        c.u8("op").unwrap();
        assert!(c.str(10, "key").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_until(Instant::now() - Duration::from_secs(1)), 0);
        let ms = millis_until(Instant::now() + Duration::from_micros(1500));
        assert!((1..=2).contains(&ms), "{ms}");
    }

    #[test]
    fn set_get_add_delete() {
        let (_s, a) = server();
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        assert_eq!(c.try_get("x").unwrap(), None);
        c.set("x", b"hello").unwrap();
        assert_eq!(c.get("x", soon(1000)).unwrap(), b"hello");
        assert_eq!(c.add("n", 5).unwrap(), 5);
        assert_eq!(c.add("n", -2).unwrap(), 3);
        assert_eq!(c.get("n", soon(1000)).unwrap(), b"3");
        c.delete("x").unwrap();
        c.delete("x").unwrap();
        assert_eq!(c.try_get("x").unwrap(), None);
        c.set("", b"").unwrap();
        assert_eq!(c.try_get("").unwrap(), Some(vec![]));
        c.wait(&[], soon(0)).unwrap();
    }

    #[test]
    fn add_refuses_non_counters_and_overflow() {
        let (_s, a) = server();
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        c.set("text", b"abc").unwrap();
        let e = c.add("text", 1).unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("not a counter")),
            "{e}"
        );
        c.add("big", i64::MAX).unwrap();
        let e = c.add("big", 1).unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("overflows")),
            "{e}"
        );
        // The connection stays usable after refused requests.
        assert_eq!(c.add("big", -1).unwrap(), i64::MAX - 1);
    }

    #[test]
    fn server_enforces_limits_on_raw_frames() {
        let (_s, a) = server();
        let s = raw(&a);
        let long_key = vec![b'k'; MAX_KEY_LEN + 1];
        (&s).write_all(&FrameBuf::new(OP_SET).bytes(&long_key).bytes(b"v").finish())
            .unwrap();
        assert!(error_text(&reply(&s)).contains("limit"));
        (&s).write_all(
            &FrameBuf::new(OP_SET)
                .bytes(&[0xc3, 0x28])
                .bytes(b"v")
                .finish(),
        )
        .unwrap();
        assert!(error_text(&reply(&s)).contains("UTF-8"));
        (&s).write_all(&FrameBuf::new(42).finish()).unwrap();
        assert!(error_text(&reply(&s)).contains("unknown opcode"));
        let mut wait = FrameBuf::new(OP_WAIT);
        wait.u64(0).u32(MAX_WAIT_KEYS as u32 + 1);
        (&s).write_all(&wait.finish()).unwrap();
        assert!(error_text(&reply(&s)).contains("limit"));
        // Still serving on the same connection.
        (&s).write_all(&FrameBuf::new(OP_TRY_GET).bytes(b"nope").finish())
            .unwrap();
        assert_eq!(reply(&s), vec![ST_NOT_FOUND]);
        // An oversized frame is refused without reading it, and the connection closed.
        (&s).write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
            .unwrap();
        assert!(error_text(&reply(&s)).contains("frame limit"));
        let mut rest = Vec::new();
        assert_eq!((&s).read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn server_survives_clients_dying_mid_request() {
        let (_s, a) = server();
        // Half a header, half a body, and a waiter that vanishes.
        let s = raw(&a);
        (&s).write_all(&[0, 0]).unwrap();
        drop(s);
        let s = raw(&a);
        let f = FrameBuf::new(OP_SET)
            .bytes(b"key")
            .bytes(&[7; 100])
            .finish();
        (&s).write_all(&f[..20]).unwrap();
        drop(s);
        let s = raw(&a);
        (&s).write_all(&FrameBuf::new(OP_GET).u64(60_000).bytes(b"never").finish())
            .unwrap();
        drop(s);
        // Some peers never complete the hello at all.
        drop(TcpStream::connect(&a).unwrap());
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        c.set("key", b"v").unwrap();
        assert_eq!(c.try_get("key").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn waiting_server_thread_notices_a_vanished_client() {
        let (s, a) = server();
        let raw_conn = raw(&a);
        (&raw_conn)
            .write_all(&FrameBuf::new(OP_GET).u64(60_000).bytes(b"never").finish())
            .unwrap();
        let t = Instant::now();
        while lock(&s.shared.conns).len() != 1 {
            assert!(t.elapsed() < Duration::from_secs(2));
            thread::sleep(Duration::from_millis(5));
        }
        drop(raw_conn);
        while !lock(&s.shared.conns).is_empty() {
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "server thread still waiting for a client that is gone"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn connection_limit_refuses_with_a_clear_error() {
        let limits = ServerLimits {
            max_connections: 2,
            ..ServerLimits::default()
        };
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits).unwrap();
        let a = s.local_addr().to_string();
        let c1 = TcpStore::connect(&a, soon(2000)).unwrap();
        let c2 = TcpStore::connect(&a, soon(2000)).unwrap();
        let e = TcpStore::connect(&a, soon(300)).unwrap_err();
        match &e {
            StoreError::Unreachable { reason, .. } => {
                assert!(reason.contains("at most 2 connections"), "{e}")
            }
            other => panic!("{other}"),
        }
        drop(c1);
        let c3 = TcpStore::connect(&a, soon(2000)).unwrap();
        c3.set("k", b"v").unwrap();
        assert_eq!(c2.try_get("k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn store_capacity_limits() {
        let limits = ServerLimits {
            max_entries: 2,
            max_bytes: 100,
            ..ServerLimits::default()
        };
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits).unwrap();
        let c = TcpStore::connect(&s.local_addr().to_string(), soon(2000)).unwrap();
        c.set("a", b"1").unwrap();
        c.set("b", b"2").unwrap();
        let e = c.set("c", b"3").unwrap_err();
        assert!(e.to_string().contains("2 keys"), "{e}");
        let e = c.set("a", &[0; 100]).unwrap_err();
        assert!(e.to_string().contains("limit of 100"), "{e}");
        c.delete("b").unwrap();
        c.set("c", b"3").unwrap();
    }

    #[test]
    fn not_a_store_is_a_protocol_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let e = TcpStore::connect(&a, soon(2000)).unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("not a topoccl")),
            "{e}"
        );
        t.join().unwrap();
    }

    #[test]
    fn silent_server_hits_the_io_timeout() {
        let (s, a) = server();
        let c = TcpStore::connect(&a, soon(2000))
            .unwrap()
            .with_io_timeout(Duration::from_millis(300));
        // Hold the store's state lock so the server cannot answer.
        let guard = lock(&s.shared.state);
        let t = Instant::now();
        let e = c.set("k", b"v").unwrap_err();
        drop(guard);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(
            matches!(&e, StoreError::Unreachable { reason, .. } if reason.contains("no reply")),
            "{e}"
        );
        // The connection that timed out is discarded; the next call gets a fresh one.
        c.set("k", b"v").unwrap();
    }

    #[test]
    fn malformed_addresses_fail_at_once() {
        for bad in ["nohost", "host:", ":80", "host:99999", "host:port"] {
            let t = Instant::now();
            let e = TcpStore::connect(bad, soon(5000)).unwrap_err();
            assert!(matches!(e, StoreError::Protocol(_)), "{bad}: {e}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
    }

    #[test]
    fn bind_failure_is_an_error() {
        let (s, _) = server();
        let e = TcpStoreServer::start(&s.local_addr().to_string()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Io(m) if m.contains("cannot listen")),
            "{e}"
        );
    }
}
