//! The TCP store server: sockets and threads around a [`State`], speaking the protocol
//! of [`codec`].
//!
//! One accept thread and one thread per connection (at most [`MAX_CONNECTIONS`]; more are
//! refused in the greeting), so a client waiting for a key never delays another. The
//! state holds at most [`MAX_ENTRIES`](super::limits::MAX_ENTRIES) keys and
//! [`MAX_STORE_BYTES`](super::limits::MAX_STORE_BYTES) of keys and values. A
//! thread waiting for keys checks every [`LIVENESS_PERIOD`] that its client is still
//! connected, and gives up when it is not.
//!
//! Operators choose three limits ([`ServerOptions`], the flags of `topoccl store`): the
//! per-job quotas of keys and bytes, and the idle timeout. A client that has proven the
//! job's key (or any client of a store without one) is closed after the idle timeout
//! passes between a reply and its next request; a request in progress, and in particular
//! a GET or WAIT blocked waiting for keys, is not idle however long it waits (the clock
//! runs only while the server waits for a request to begin). Clients reopen closed
//! connections on their next call.
//!
//! With TLS (`TOPOCCL_TLS`, [`Tls`]) the greeting's fixed part goes out in clear saying
//! so, then the TLS handshake (within the hello deadline), then the usual greeting, hello
//! and requests inside the session; the client's proof covers the session's exporter
//! value. Refusals for a full server are sent in clear before any handshake.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::codec::{self, Reply, Request, HELLO_LEN};
use super::limits::{
    ACCEPT_RETRY, CONN_THREAD_STACK, DEFAULT_IO_TIMEOUT, HELLO_DEADLINE, KEEPALIVE_INTERVAL,
    KEEPALIVE_TIME, LIVENESS_PERIOD, MAX_CONNECTIONS, MAX_FRAME, MAX_KEY_LEN, MAX_SERVER_WAIT,
    MAX_UNWELCOMED_PER_ADDRESS, MAX_VALUE_LEN, REFUSAL_WRITE_TIMEOUT,
};
use super::limits::{IDLE_TIMEOUT, JOB_MAX_BYTES, JOB_MAX_KEYS, MAX_ENTRIES, MAX_STORE_BYTES};
use super::socket::{read_frame, FrameError};
use super::state::{Capacity, State, WaitOutcome, Watch};
use super::{lock, StoreError};
use crate::auth::{fresh, JobKey, NONCE_LEN};
use crate::transport::tls::{self, Stream, Tls};

/// The limits a store's operator chooses (`topoccl store --job-max-keys`,
/// `--job-max-bytes`, `--idle-timeout`); [`ServerOptions::check`] says which are out of
/// range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Keys one job may hold (default [`JOB_MAX_KEYS`]; 1 to the store's 4,194,304).
    pub job_max_keys: usize,
    /// Bytes of keys and values one job may hold (default [`JOB_MAX_BYTES`]; 1 to the
    /// store's 1 GiB).
    pub job_max_bytes: usize,
    /// How long a client may leave its connection without a request (default
    /// [`IDLE_TIMEOUT`]; 1 s to 7 days). Waiting for keys is not idle.
    pub idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            job_max_keys: JOB_MAX_KEYS,
            job_max_bytes: JOB_MAX_BYTES,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Longest idle timeout an operator may choose.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

impl ServerOptions {
    /// Refuses values out of range, naming the flag and the allowed range.
    pub fn check(&self) -> Result<(), StoreError> {
        let out = |flag: &str, value: String, range: String| {
            Err(StoreError::Protocol(format!(
                "{flag} {value} is out of range: allowed {range}"
            )))
        };
        if !(1..=MAX_ENTRIES).contains(&self.job_max_keys) {
            return out(
                "--job-max-keys",
                self.job_max_keys.to_string(),
                format!("1 to {MAX_ENTRIES} (the store's own limit)"),
            );
        }
        if !(1..=MAX_STORE_BYTES).contains(&self.job_max_bytes) {
            return out(
                "--job-max-bytes",
                self.job_max_bytes.to_string(),
                format!("1 to {MAX_STORE_BYTES} (the store's own limit)"),
            );
        }
        if !(Duration::from_secs(1)..=MAX_IDLE_TIMEOUT).contains(&self.idle_timeout) {
            return out(
                "--idle-timeout",
                format!("{:?}", self.idle_timeout),
                format!("1 s to {} s", MAX_IDLE_TIMEOUT.as_secs()),
            );
        }
        Ok(())
    }
}

/// Limits of one server; tests shrink them.
#[derive(Clone, Copy, Debug)]
struct ServerLimits {
    max_connections: usize,
    max_unwelcomed_per_address: usize,
    hello_deadline: Duration,
    capacity: Capacity,
    io_timeout: Duration,
    idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits::from(ServerOptions::default())
    }
}

impl From<ServerOptions> for ServerLimits {
    fn from(o: ServerOptions) -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            max_unwelcomed_per_address: MAX_UNWELCOMED_PER_ADDRESS,
            hello_deadline: HELLO_DEADLINE,
            capacity: Capacity {
                job_max_keys: o.job_max_keys,
                job_max_bytes: o.job_max_bytes,
                ..Capacity::default()
            },
            io_timeout: DEFAULT_IO_TIMEOUT,
            idle_timeout: o.idle_timeout,
        }
    }
}

struct Shared {
    state: State,
    /// The job's key: clients must prove it (`None`: any client is served).
    key: Option<JobKey>,
    /// TLS for every connection (`None`: in clear).
    tls: Option<Tls>,
    /// A handle on every open connection, so stopping can unblock their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// Per address, the connections that have not finished their hello.
    unwelcomed: Mutex<HashMap<IpAddr, usize>>,
    limits: ServerLimits,
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

/// This process's TLS settings (`TOPOCCL_TLS`), as a store error.
pub(super) fn process_tls() -> Result<Option<Tls>, StoreError> {
    Tls::process().map_err(|e| StoreError::Protocol(e.to_string()))
}

impl TcpStoreServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving any client (over TLS
    /// when this process's `TOPOCCL_TLS` says so).
    pub fn start(addr: &str) -> Result<TcpStoreServer, StoreError> {
        Self::start_with(addr, ServerLimits::default(), None, process_tls()?)
    }

    /// Binds `addr` and serves only clients that prove `key` (the job's secret's), over
    /// TLS when this process's `TOPOCCL_TLS` says so.
    pub fn start_authenticated(addr: &str, key: JobKey) -> Result<TcpStoreServer, StoreError> {
        Self::start_with(addr, ServerLimits::default(), Some(key), process_tls()?)
    }

    /// Binds `addr` and serves clients that prove `key` (any client: `None`) within the
    /// operator's `options`, checked first; over TLS when this process's `TOPOCCL_TLS`
    /// says so.
    pub fn start_with_options(
        addr: &str,
        key: Option<JobKey>,
        options: ServerOptions,
    ) -> Result<TcpStoreServer, StoreError> {
        Self::start_with_tls(addr, key, options, process_tls()?)
    }

    /// As [`Self::start_with_options`], with TLS settings given (`None`: in clear)
    /// rather than read from the environment.
    pub fn start_with_tls(
        addr: &str,
        key: Option<JobKey>,
        options: ServerOptions,
        tls: Option<Tls>,
    ) -> Result<TcpStoreServer, StoreError> {
        options.check()?;
        Self::start_with(addr, ServerLimits::from(options), key, tls)
    }

    /// Whether this server speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    fn start_with(
        addr: &str,
        limits: ServerLimits,
        key: Option<JobKey>,
        tls: Option<Tls>,
    ) -> Result<TcpStoreServer, StoreError> {
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
            state: State::new(limits.capacity),
            key,
            tls,
            conns: Mutex::new(HashMap::new()),
            unwelcomed: Mutex::new(HashMap::new()),
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
        self.shared.state.close();
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
                thread::sleep(ACCEPT_RETRY);
            }
        }
        if shared.state.is_closed() {
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
                    tracing::warn!(
                        "TCP store server: accept failed: {e}; retrying in {ACCEPT_RETRY:?}"
                    );
                    retry_in = Some(ACCEPT_RETRY);
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
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);

    let Some(unwelcomed) = Unwelcomed::count(shared, peer.ip()) else {
        tracing::warn!(%peer, "TCP store server: refusing a connection, too many unwelcomed from its address");
        refuse(
            &stream,
            &format!(
                "{} connections from {} have not finished their hello; the store takes at \
                 most {} such from one address (each has {:?})",
                limits.max_unwelcomed_per_address,
                peer.ip(),
                limits.max_unwelcomed_per_address,
                limits.hello_deadline
            ),
        );
        return None;
    };
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
            serve(stream, peer, &worker_shared, unwelcomed);
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

/// A connection counted among its address's unwelcomed ones until dropped.
struct Unwelcomed {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Unwelcomed {
    /// Counts a new connection from `ip`; `None` if its address has too many already.
    fn count(shared: &Arc<Shared>, ip: IpAddr) -> Option<Unwelcomed> {
        let mut m = lock(&shared.unwelcomed);
        let n = m.entry(ip).or_insert(0);
        if *n >= shared.limits.max_unwelcomed_per_address {
            return None;
        }
        *n += 1;
        Some(Unwelcomed {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for Unwelcomed {
    fn drop(&mut self) {
        let mut m = lock(&self.shared.unwelcomed);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn refuse(stream: &TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
    let mut w = stream;
    let _ = w.write_all(&codec::refusal(why));
    let _ = stream.shutdown(Shutdown::Write);
}

/// The connection, in clear or after the TLS handshake (within the hello deadline).
fn secure(tcp: TcpStream, peer: SocketAddr, shared: &Shared) -> Option<Stream> {
    let Some(tls) = &shared.tls else {
        return Some(Stream::Plain(tcp));
    };
    let deadline = Instant::now() + shared.limits.hello_deadline;
    if let Err(e) = (&tcp).write_all(&codec::tls_greeting()) {
        tracing::debug!(%peer, "TCP store: client left before the greeting: {e}");
        return None;
    }
    match tls.accept(tcp, deadline) {
        Ok(s) => Some(s),
        Err(e) => {
            let hint = if tls::is_refusal(&e) {
                format!("; {}", tls.advice())
            } else {
                " (a client without TOPOCCL_TLS closes here: give every rank and the store \
                 the same TOPOCCL_TLS)"
                    .to_string()
            };
            tracing::warn!(%peer, "TCP store: TLS handshake with a client failed: {e}{hint}");
            None
        }
    }
}

fn serve(tcp: TcpStream, peer: SocketAddr, shared: &Shared, unwelcomed: Unwelcomed) {
    let io_timeout = shared.limits.io_timeout;
    let Some(mut stream) = secure(tcp, peer, shared) else {
        return;
    };
    let w = &mut stream;
    let nonce: [u8; NONCE_LEN] = match fresh("the connection's nonce") {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%peer, "TCP store: {e}");
            return;
        }
    };
    if let Err(e) = w.write_all(&codec::greeting(&nonce)) {
        tracing::debug!(%peer, "TCP store: client left before the greeting: {e}");
        return;
    }
    let mut hello = [0u8; HELLO_LEN];
    let hello_read = w
        .tcp()
        .set_read_timeout(Some(io_timeout.min(shared.limits.hello_deadline)))
        .and_then(|()| w.read_exact(&mut hello));
    if let Err(e) = hello_read {
        tracing::debug!(%peer, "TCP store: no hello from client: {e}");
        return;
    }
    let binding = match w.binding() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%peer, "TCP store: no TLS exporter value: {e}");
            return;
        }
    };
    let admitted = codec::check_hello(&hello, shared.key.as_ref(), &nonce, &binding);
    let _ = w.write_all(&codec::welcome(&admitted));
    if let Err(why) = admitted {
        tracing::warn!(%peer, "TCP store: refused a client: {why}");
        return;
    }
    drop(unwelcomed);
    tracing::debug!(%peer, "TCP store: client connected");
    loop {
        let body = match read_frame(w, Some(shared.limits.idle_timeout), io_timeout) {
            Ok(b) => b,
            Err(FrameError::Closed) => {
                tracing::debug!(%peer, "TCP store: client disconnected");
                return;
            }
            Err(FrameError::Idle) => {
                tracing::debug!(
                    %peer,
                    "TCP store: closing a client idle for {:?}",
                    shared.limits.idle_timeout
                );
                let _ = w.tcp().shutdown(Shutdown::Both);
                return;
            }
            Err(FrameError::TooLong(n)) => {
                tracing::warn!(%peer, len = n, "TCP store: request frame too long, closing");
                let msg = format!(
                    "request of {n} bytes exceeds the frame limit of {MAX_FRAME}; keys are at \
                     most {MAX_KEY_LEN} bytes and values at most {MAX_VALUE_LEN}"
                );
                let _ = w.write_all(&Reply::Error(&msg).encode());
                return;
            }
            Err(FrameError::Io(e)) => {
                // Most often a rank that crashed or was killed in the middle of a request.
                tracing::debug!(%peer, "TCP store: dropping connection mid-request: {e}");
                return;
            }
        };
        let reply = match handle(&shared.state, w.tcp(), &body) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(msg) => {
                tracing::warn!(%peer, "TCP store: refused a request: {msg}");
                Reply::Error(&msg).encode()
            }
        };
        if let Err(e) = w.write_all(&reply) {
            tracing::debug!(%peer, "TCP store: cannot reply, dropping connection: {e}");
            return;
        }
    }
}

/// Waits for `keys` on behalf of the client on `stream`, for at most `timeout_ms` (cut
/// to [`MAX_SERVER_WAIT`]), giving up if the client goes away.
fn wait_for(state: &State, stream: &TcpStream, keys: &[&str], timeout_ms: u64) -> WaitOutcome {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms).min(MAX_SERVER_WAIT);
    let mut still_wanted = || !peer_gone(stream);
    let watch = Watch {
        every: LIVENESS_PERIOD,
        still_wanted: &mut still_wanted,
    };
    state.wait(keys, deadline, Some(watch))
}

/// Executes one request, returning the encoded reply. `Ok(None)`: close without replying
/// (server stopping or client gone); `Err`: the message of an ERROR reply.
fn handle(state: &State, stream: &TcpStream, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let waited = |outcome: WaitOutcome, value: bool| match outcome {
        WaitOutcome::Ready(v) if value => Some(Reply::Value(&v).encode()),
        WaitOutcome::Ready(_) => Some(Reply::Done.encode()),
        WaitOutcome::TimedOut(missing) => Some(Reply::Timeout(missing).encode()),
        WaitOutcome::Abandoned => None,
    };
    Ok(match Request::decode(body)? {
        Request::Set { key, value } => {
            state.set(key, value)?;
            Some(Reply::Done.encode())
        }
        Request::Get { timeout_ms, key } => {
            waited(wait_for(state, stream, &[key], timeout_ms), true)
        }
        Request::TryGet { key } => Some(match state.try_get(key) {
            Some(v) => Reply::Value(&v).encode(),
            None => Reply::NotFound.encode(),
        }),
        Request::Wait { timeout_ms, keys } => {
            waited(wait_for(state, stream, &keys, timeout_ms), false)
        }
        Request::Add { key, delta } => Some(Reply::Count(state.add(key, delta)?).encode()),
        Request::Delete { key } => {
            state.delete(key);
            Some(Reply::Done.encode())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::{FrameBuf, OP_GET, OP_SET, OP_TRY_GET, OP_WAIT, ST_NOT_FOUND};
    use crate::store::limits::MAX_WAIT_KEYS;
    use crate::store::{Store, TcpStore};

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
        let mut g = [0u8; codec::GREETING_LEN + NONCE_LEN];
        (&s).read_exact(&mut g).unwrap();
        let fixed: [u8; codec::GREETING_LEN] = g[..codec::GREETING_LEN].try_into().unwrap();
        assert_eq!(codec::parse_greeting(&fixed), codec::Greeting::Accepted);
        let nonce = g[codec::GREETING_LEN..].try_into().unwrap();
        (&s).write_all(&codec::hello(None, &nonce, &[])).unwrap();
        let mut welcome = [9u8; 1];
        (&s).read_exact(&mut welcome).unwrap();
        assert_eq!(welcome, [0]);
        s
    }

    fn reply(s: &TcpStream) -> Vec<u8> {
        let mut s = Stream::Plain(s.try_clone().expect("clone"));
        match read_frame(&mut s, Some(Duration::from_secs(5)), Duration::from_secs(5)) {
            Ok(b) => b,
            Err(_) => panic!("no reply frame"),
        }
    }

    fn error_text(body: &[u8]) -> String {
        match Reply::decode(body, codec::OkFields::None) {
            Ok(Reply::Error(m)) => m.to_string(),
            other => panic!("not an ERROR reply: {other:?}"),
        }
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
    fn a_store_with_the_jobs_key_serves_only_clients_that_prove_it() {
        let key = JobKey::from_secret(b"the job");
        let s = TcpStoreServer::start_authenticated("127.0.0.1:0", key.clone()).unwrap();
        let a = s.local_addr().to_string();
        let c = TcpStore::connect_with(&a, Some(key), soon(2000)).unwrap();
        c.set("secret-ish", b"v").unwrap();
        for stranger in [None, Some(JobKey::from_secret(b"a guess"))] {
            let t = Instant::now();
            let e = TcpStore::connect_with(&a, stranger, soon(5000)).unwrap_err();
            // Refused at once, not retried until the deadline, and said why.
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            assert!(
                matches!(&e, StoreError::Protocol(m) if m.contains("refused this client")
                    && m.contains("TOPOCCL_SECRET")),
                "{e}"
            );
        }
        assert_eq!(c.get("secret-ish", soon(1000)).unwrap(), b"v");
    }

    #[test]
    fn a_client_of_another_version_is_told_so() {
        let (_s, a) = server();
        let s = TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; codec::GREETING_LEN + NONCE_LEN];
        (&s).read_exact(&mut g).unwrap();
        let mut hello = codec::hello(None, &[0; NONCE_LEN], &[]);
        hello[9] = 9;
        (&s).write_all(&hello).unwrap();
        let mut answer = Vec::new();
        (&s).read_to_end(&mut answer).unwrap();
        let e = String::from_utf8_lossy(&answer[5..]);
        assert_eq!(answer[0], 1);
        assert!(e.contains("version 2") && e.contains("(9)"), "{e}");
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
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits, None, None).unwrap();
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
    fn idle_connections_from_one_address_cannot_lock_clients_out() {
        // A stranger opens connections and never says hello.
        let limits = ServerLimits {
            max_unwelcomed_per_address: 4,
            hello_deadline: Duration::from_millis(400),
            ..ServerLimits::default()
        };
        let key = JobKey::from_secret(b"job");
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits, Some(key.clone()), None).unwrap();
        let a = s.local_addr().to_string();
        let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&a).unwrap()).collect();
        thread::sleep(Duration::from_millis(100));
        // One more is refused at once, saying why.
        let extra = TcpStream::connect(&a).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = (&extra).read_to_end(&mut answer);
        let why = String::from_utf8_lossy(&answer);
        assert!(why.contains("have not finished their hello"), "{why}");
        // A client of the job gets in once the idle ones are past their hello deadline,
        // long before its own deadline.
        let t = Instant::now();
        let c = TcpStore::connect_with(&a, Some(key), soon(5000)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        c.set("k", b"v").unwrap();
        // The idle ones were closed.
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
    }

    #[test]
    fn store_capacity_limits() {
        let limits = ServerLimits {
            capacity: Capacity {
                max_entries: 2,
                max_bytes: 100,
                ..Capacity::default()
            },
            ..ServerLimits::default()
        };
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits, None, None).unwrap();
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

    fn idle_after(ms: u64) -> (TcpStoreServer, String) {
        let limits = ServerLimits {
            idle_timeout: Duration::from_millis(ms),
            ..ServerLimits::default()
        };
        let s = TcpStoreServer::start_with("127.0.0.1:0", limits, None, None).unwrap();
        let a = s.local_addr().to_string();
        (s, a)
    }

    #[test]
    fn an_idle_client_is_closed_but_a_waiting_one_is_not() {
        let (s, a) = idle_after(300);
        // Idle: closed soon after the timeout.
        let idle = raw(&a);
        let t = Instant::now();
        let mut rest = Vec::new();
        assert_eq!((&idle).read_to_end(&mut rest).unwrap_or(0), 0);
        let closed_after = t.elapsed();
        assert!(
            closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(3),
            "{closed_after:?}"
        );
        // Waiting for a key for many idle timeouts: answered when the key comes.
        let waiter = raw(&a);
        (&waiter)
            .write_all(&FrameBuf::new(OP_GET).u64(60_000).bytes(b"late").finish())
            .unwrap();
        thread::sleep(Duration::from_millis(1200));
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        c.set("late", b"here").unwrap();
        let body = reply(&waiter);
        assert_eq!(
            Reply::decode(&body, codec::OkFields::Value).unwrap(),
            Reply::Value(b"here")
        );
        // A client that keeps making requests more often than the timeout stays.
        for _ in 0..6 {
            thread::sleep(Duration::from_millis(100));
            (&waiter)
                .write_all(&FrameBuf::new(OP_TRY_GET).bytes(b"late").finish())
                .unwrap();
            assert_ne!(reply(&waiter), vec![ST_NOT_FOUND]);
        }
        drop(s);
    }

    #[test]
    fn a_client_whose_pooled_connection_was_closed_idle_carries_on() {
        let (_s, a) = idle_after(200);
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        for round in 0..3 {
            c.set("k", format!("{round}").as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(400));
            // Every kind of request, counters included, on a connection the server closed.
            assert_eq!(c.add("n", 1).unwrap(), round + 1);
            thread::sleep(Duration::from_millis(400));
            assert_eq!(
                c.get("k", soon(1000)).unwrap(),
                format!("{round}").as_bytes()
            );
        }
        // A blocking GET that waits past the idle timeout is answered.
        let c2 = TcpStore::connect(&a, soon(2000)).unwrap();
        let setter = thread::spawn(move || {
            thread::sleep(Duration::from_millis(700));
            c2.set("later", b"v").unwrap();
        });
        assert_eq!(c.get("later", soon(5000)).unwrap(), b"v");
        setter.join().unwrap();
    }

    #[test]
    fn per_job_quotas_refuse_writes_naming_job_quota_and_flag() {
        let options = ServerOptions {
            job_max_keys: 3,
            job_max_bytes: 200,
            ..ServerOptions::default()
        };
        let s = TcpStoreServer::start_with_options("127.0.0.1:0", None, options).unwrap();
        let c = TcpStore::connect(&s.local_addr().to_string(), soon(2000)).unwrap();
        for k in 0..3 {
            c.set(&format!("topoccl/greedy/k{k}"), b"v").unwrap();
        }
        let e = c.set("topoccl/greedy/k3", b"v").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("refused SET")
                && m.contains("job 'greedy'")
                && m.contains("3 keys")
                && m.contains("--job-max-keys"),
            "{m}"
        );
        let e = c.add("topoccl/greedy/n", 1).unwrap_err();
        assert!(e.to_string().contains("--job-max-keys"), "{e}");
        let e = c.set("topoccl/greedy/k0", &[0; 200]).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("job 'greedy'")
                && m.contains("quota of 200")
                && m.contains("--job-max-bytes"),
            "{m}"
        );
        // Another job in the same store is unaffected.
        c.set("topoccl/modest/k0", &[0; 150]).unwrap();
        c.delete("topoccl/greedy/k1").unwrap();
        c.set("topoccl/greedy/k3", b"v").unwrap();
    }

    #[test]
    fn options_out_of_range_name_their_flag() {
        for (o, flag) in [
            (
                ServerOptions {
                    job_max_keys: 0,
                    ..ServerOptions::default()
                },
                "--job-max-keys",
            ),
            (
                ServerOptions {
                    job_max_keys: MAX_ENTRIES + 1,
                    ..ServerOptions::default()
                },
                "--job-max-keys",
            ),
            (
                ServerOptions {
                    job_max_bytes: 0,
                    ..ServerOptions::default()
                },
                "--job-max-bytes",
            ),
            (
                ServerOptions {
                    job_max_bytes: MAX_STORE_BYTES + 1,
                    ..ServerOptions::default()
                },
                "--job-max-bytes",
            ),
            (
                ServerOptions {
                    idle_timeout: Duration::from_millis(999),
                    ..ServerOptions::default()
                },
                "--idle-timeout",
            ),
            (
                ServerOptions {
                    idle_timeout: MAX_IDLE_TIMEOUT + Duration::from_secs(1),
                    ..ServerOptions::default()
                },
                "--idle-timeout",
            ),
        ] {
            let e = TcpStoreServer::start_with_options("127.0.0.1:0", None, o).unwrap_err();
            assert!(
                e.to_string().contains(flag) && e.to_string().contains("allowed"),
                "{e}"
            );
        }
        ServerOptions::default().check().unwrap();
    }

    #[test]
    fn silent_server_hits_the_io_timeout() {
        let (s, a) = server();
        let c = TcpStore::connect(&a, soon(2000))
            .unwrap()
            .with_io_timeout(Duration::from_millis(300));
        // Hold the store's state lock so the server cannot answer.
        let guard = s.shared.state.hold();
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
    fn bind_failure_is_an_error() {
        let (s, _) = server();
        let e = TcpStoreServer::start(&s.local_addr().to_string()).unwrap_err();
        assert!(
            matches!(&e, StoreError::Io(m) if m.contains("cannot listen")),
            "{e}"
        );
    }

    // -----------------------------------------------------------------------------------
    // TLS

    use crate::transport::tls::pki::{scratch, Ca};

    fn tls_server(key: Option<JobKey>, tls: Option<Tls>) -> (TcpStoreServer, String) {
        let s = TcpStoreServer::start_with_tls("127.0.0.1:0", key, ServerOptions::default(), tls)
            .expect("start server");
        let a = s.local_addr().to_string();
        (s, a)
    }

    fn ephemeral() -> Option<Tls> {
        Some(Tls::ephemeral().expect("ephemeral TLS"))
    }

    /// Connecting fails, within `within`, with an error holding every one of `words`.
    fn refused_fast(
        addr: &str,
        key: Option<JobKey>,
        tls: Option<Tls>,
        within: Duration,
        words: &[&str],
    ) {
        let start = Instant::now();
        let e = TcpStore::connect_with_tls(addr, key, tls, soon(10_000))
            .expect_err("connected")
            .to_string();
        assert!(start.elapsed() < within, "took {:?}: {e}", start.elapsed());
        for w in words {
            assert!(e.contains(w), "'{w}' missing from: {e}");
        }
    }

    #[test]
    fn a_store_over_tls_serves_clients_that_prove_the_secret_over_their_session() {
        let key = JobKey::from_secret(b"job");
        let (s, a) = tls_server(Some(key.clone()), ephemeral());
        assert!(s.is_tls());
        // Each client has its own ephemeral certificate, as each process would.
        let c = TcpStore::connect_with_tls(&a, Some(key.clone()), ephemeral(), soon(5000)).unwrap();
        c.set("k", b"value").unwrap();
        assert_eq!(c.get("k", soon(1000)).unwrap(), b"value");
        assert_eq!(c.add("n", 3).unwrap(), 3);
        // A waiting call and a concurrent one on a second connection of the pool.
        thread::scope(|t| {
            let waiter = t.spawn(|| c.get("later", soon(5000)));
            thread::sleep(Duration::from_millis(100));
            c.set("later", b"x").unwrap();
            assert_eq!(waiter.join().unwrap().unwrap(), b"x");
        });
        // A large value crosses many TLS records.
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        c.set("big", &big).unwrap();
        assert_eq!(c.try_get("big").unwrap().unwrap(), big);
        // Without the secret, or with another: refused, over TLS as in clear.
        for wrong in [None, Some(JobKey::from_secret(b"guess"))] {
            refused_fast(
                &a,
                wrong,
                ephemeral(),
                Duration::from_secs(3),
                &["TOPOCCL_SECRET"],
            );
        }
    }

    #[test]
    fn tls_on_one_side_only_fails_the_client_at_once_saying_so() {
        let (_s, a) = tls_server(None, ephemeral());
        refused_fast(
            &a,
            None,
            None,
            Duration::from_secs(3),
            &["speaks TLS", "TOPOCCL_TLS=1"],
        );
        let (_p, plain) = tls_server(None, None);
        refused_fast(
            &plain,
            None,
            ephemeral(),
            Duration::from_secs(3),
            &["does not use TLS", "TOPOCCL_TLS"],
        );
    }

    #[test]
    fn with_certificate_files_only_the_cas_certificates_get_in() {
        let d = scratch("store-ca");
        let (ca, other_ca) = (Ca::new(&d, "job"), Ca::new(&d, "other"));
        let files = |ca: &Ca, name: &str| {
            let (cert, key) = ca.leaf(&d, name);
            Some(Tls::from_files(&cert, &key, &ca.pem).expect("TLS from files"))
        };
        let (_s, a) = tls_server(None, files(&ca, "store"));
        let c = TcpStore::connect_with_tls(&a, None, files(&ca, "rank"), soon(5000)).unwrap();
        c.set("k", b"v").unwrap();
        assert_eq!(c.try_get("k").unwrap().unwrap(), b"v");
        // A client whose certificate and CA are another's: it refuses the store's
        // certificate, and the store refuses its own.
        refused_fast(
            &a,
            None,
            files(&other_ca, "stranger"),
            Duration::from_secs(3),
            &["TLS handshake with the store", "TOPOCCL_TLS_CA"],
        );
        // A client that trusts the job's CA but holds a certificate of another CA.
        let (cert, key) = other_ca.leaf(&d, "half");
        let half = Tls::from_files(&cert, &key, &ca.pem).unwrap();
        refused_fast(
            &a,
            None,
            Some(half),
            Duration::from_secs(3),
            &["refused this client's TLS session", "TOPOCCL_TLS_CERT"],
        );
        // An ephemeral client has no certificate to show.
        refused_fast(&a, None, ephemeral(), Duration::from_secs(3), &["TLS"]);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A man in the middle: it terminates the client's TLS session with a certificate of
    /// its own, opens its own session to the store, and relays the plaintext of the
    /// greeting, hello and welcome. The client's proof was made for the first session, so
    /// the store refuses it, and the man in the middle learns nothing it could use.
    #[test]
    fn a_man_in_the_middle_without_the_secret_cannot_relay_a_proof() {
        let key = JobKey::from_secret(b"job");
        let (_s, store) = tls_server(Some(key.clone()), ephemeral());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mitm = listener.local_addr().unwrap().to_string();
        let relay = thread::spawn(move || -> io::Result<Vec<u8>> {
            let (client, _) = listener.accept()?;
            let upstream = TcpStream::connect(&store)?;
            upstream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut fixed = [0u8; codec::GREETING_LEN];
            (&upstream).read_exact(&mut fixed)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let own = Tls::ephemeral().map_err(io::Error::other)?;
            let mut up = own.connect(upstream, deadline)?;
            (&client).write_all(&codec::tls_greeting())?;
            let mut down = own.accept(client, deadline)?;
            let mut greeting = [0u8; codec::GREETING_LEN + NONCE_LEN];
            up.read_exact(&mut greeting)?;
            down.write_all(&greeting)?;
            let mut hello = [0u8; HELLO_LEN];
            down.read_exact(&mut hello)?;
            up.write_all(&hello)?;
            let mut welcome = Vec::new();
            let _ = up.read_to_end(&mut welcome);
            down.write_all(&welcome)?;
            Ok(welcome)
        });
        refused_fast(
            &mitm,
            Some(key),
            ephemeral(),
            Duration::from_secs(5),
            &["refused this client", "TOPOCCL_SECRET"],
        );
        let welcome = relay.join().unwrap().expect("relay");
        assert_eq!(
            welcome.first(),
            Some(&1),
            "the store must refuse the relayed proof"
        );
    }
}
