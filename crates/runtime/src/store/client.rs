//! The TCP store client: a small pool of connections (at most
//! [`MAX_CLIENT_CONNECTIONS`], [`MAX_IDLE_CONNECTIONS`] kept between calls), one per call
//! in flight, so threads sharing a client can wait and set concurrently. Requests and
//! replies are encoded by [`codec`].
//!
//! The server closes connections left idle (`topoccl store --idle-timeout`), so a pooled
//! connection may be closed when a call takes it: one the server has closed is dropped
//! before use ([`closed_by_peer`]), and a call whose reused connection turns out closed
//! before any reply byte (the server closed it as the request left) is sent once more on
//! a fresh connection. That is safe for every request, counters included: the server
//! closes an idle connection only when no byte of a request has arrived, and never after
//! running one without replying.
//!
//! Over TLS (`TOPOCCL_TLS`) each connection reads the store's greeting in clear, then
//! runs the TLS handshake and the usual greeting, hello and requests inside the session;
//! the hello's proof covers the session's exporter value (`super::codec::hello`). A store
//! and a client that disagree about TLS, or a certificate refused, fail the client at
//! once with the reason (never retried: they would fail again).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::codec::{self, Greeting, Reply, Request, GREETING_LEN, VERSION, WELCOME_LEN};
use super::limits::{
    check_key, check_value, DEFAULT_IO_TIMEOUT, MAX_CLIENT_CONNECTIONS, MAX_FRAME,
    MAX_IDLE_CONNECTIONS, MAX_MESSAGE_LEN, MIN_ATTEMPT_TIMEOUT, REPLY_GRACE, RETRY_FIRST,
    RETRY_MAX,
};
use super::socket::{read_frame, FrameError};
use super::{lock, shown, Store, StoreError};
use crate::auth::{JobKey, NONCE_LEN};
use crate::transport::tls::{self, Stream, Tls, TLS_VAR};

fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

/// Milliseconds until `deadline`, rounded up so the server never gives up early.
fn millis_until(deadline: Instant) -> u64 {
    let d = deadline.saturating_duration_since(Instant::now());
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

struct Pool {
    idle: Vec<Stream>,
    /// Connections in existence, idle or lent to a call.
    open: usize,
}

/// A client of a TCP store. Each call in flight uses its own connection (pooled), so
/// threads sharing one `TcpStore` never wait behind each other's waits.
pub struct TcpStore {
    addr: String,
    peer: SocketAddr,
    /// The job's key, proven to the server on every connection.
    key: Option<JobKey>,
    /// TLS for every connection (`None`: in clear).
    tls: Option<Tls>,
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

/// A refusal's reason: a string of at most [`MAX_MESSAGE_LEN`] bytes worth reading.
fn read_reason(r: &mut impl Read) -> Option<String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    let n = (u32::from_be_bytes(len) as usize).min(MAX_MESSAGE_LEN);
    let mut msg = Vec::with_capacity(n);
    r.take(n as u64).read_to_end(&mut msg).ok()?;
    Some(String::from_utf8_lossy(&msg).into_owned())
}

/// Reads the fixed part of a greeting and says what it means for this client;
/// `Ok(())`: accepted (a nonce follows).
fn read_greeting(
    r: &mut impl Read,
    addr: &str,
    peer: SocketAddr,
    timeout: Duration,
    tls: Option<&Tls>,
    inside_tls: bool,
) -> Result<(), AttemptError> {
    let mut greeting = [0u8; GREETING_LEN];
    r.read_exact(&mut greeting).map_err(|e| {
        if let (Some(t), Some(why)) = (tls, tls::rustls_error(&e)) {
            return AttemptError::Fatal(StoreError::Protocol(format!(
                "the store at {addr} refused this client's TLS session: {why}; {}",
                t.advice()
            )));
        }
        AttemptError::Retry(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "{peer} accepted the connection but sent no greeting within {timeout:?} \
                 (is it a topoccl store?)"
            ),
            _ => format!("{peer} closed the connection before greeting ({e})"),
        })
    })?;
    match codec::parse_greeting(&greeting) {
        Greeting::Accepted if tls.is_some() && !inside_tls => {
            Err(AttemptError::Fatal(StoreError::Protocol(format!(
                "the store at {addr} does not use TLS, but {TLS_VAR} is on for this process; \
                 give the store and every rank the same {TLS_VAR}"
            ))))
        }
        Greeting::Accepted => Ok(()),
        Greeting::Tls if tls.is_none() => Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "the store at {addr} speaks TLS and this process does not: set {TLS_VAR}=1 \
                 (and the store's certificate settings) here, or start the store without it"
        )))),
        Greeting::Tls if inside_tls => Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "{addr} ({peer}) asked for TLS twice; it is not a topoccl store of this version"
        )))),
        Greeting::Tls => Ok(()),
        Greeting::NotAStore => Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "{addr} ({peer}) is not a topoccl TCP store (unexpected greeting); check the \
             store address and port"
        )))),
        Greeting::OtherVersion(version) => Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "the store at {addr} speaks protocol version {version}, this client version \
                 {VERSION}; use matching topoccl versions"
        )))),
        Greeting::Refused => {
            let why = read_reason(r).unwrap_or_else(|| "no reason given".into());
            Err(AttemptError::Full(format!(
                "the store refused the connection: {why}"
            )))
        }
    }
}

/// Opens one connection and completes the greeting, hello and welcome (and, with `tls`,
/// the TLS handshake between the greeting in clear and the one inside).
fn connect_once(
    addr: &str,
    peer: SocketAddr,
    key: Option<&JobKey>,
    tls: Option<&Tls>,
    timeout: Duration,
) -> Result<Stream, AttemptError> {
    let timeout = nonzero(timeout);
    let deadline = Instant::now() + timeout;
    let tcp = TcpStream::connect_timeout(&peer, timeout)
        .map_err(|e| AttemptError::Retry(format!("connecting to {peer}: {e}")))?;
    let setup = || -> io::Result<()> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))
    };
    setup()
        .map_err(|e| AttemptError::Retry(format!("setting up the connection to {peer}: {e}")))?;
    read_greeting(&mut &tcp, addr, peer, timeout, tls, false)?;
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(t) => {
            let s = t
                .connect(tcp, deadline)
                .map_err(|e| match tls::rustls_error(&e) {
                    Some(why) => AttemptError::Fatal(StoreError::Protocol(format!(
                        "TLS handshake with the store at {addr} failed: {why}; {}",
                        t.advice()
                    ))),
                    None => AttemptError::Retry(format!("TLS handshake with {peer}: {e}")),
                })?;
            s.tcp()
                .set_read_timeout(Some(nonzero(
                    deadline.saturating_duration_since(Instant::now()),
                )))
                .map_err(|e| {
                    AttemptError::Retry(format!("setting up the connection to {peer}: {e}"))
                })?;
            let mut s = s;
            read_greeting(&mut s, addr, peer, timeout, tls, true)?;
            s
        }
    };
    let mut nonce = [0u8; NONCE_LEN];
    stream
        .read_exact(&mut nonce)
        .map_err(|e| AttemptError::Retry(format!("{peer} sent half a greeting ({e})")))?;
    let binding = stream
        .binding()
        .map_err(|e| AttemptError::Retry(format!("no TLS exporter value for {peer}: {e}")))?;
    stream
        .write_all(&codec::hello(key, &nonce, &binding))
        .map_err(|e| AttemptError::Retry(format!("sending hello to {peer}: {e}")))?;
    let mut welcome = [0u8; WELCOME_LEN];
    stream
        .read_exact(&mut welcome)
        .map_err(|e| AttemptError::Retry(format!("{peer} did not answer the hello ({e})")))?;
    if welcome[0] != 0 {
        let why = read_reason(&mut stream).unwrap_or_else(|| "no reason given".into());
        return Err(AttemptError::Fatal(StoreError::Protocol(format!(
            "the store at {addr} refused this client: {why}"
        ))));
    }
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
    stream: Option<Stream>,
    reusable: bool,
    /// Taken from the pool (used before), rather than opened for this call.
    reused: bool,
}

/// Whether the server has closed (or reset) a pooled connection, or sent bytes nobody
/// asked for: either way it is no use for a request.
fn closed_by_peer(stream: &Stream) -> bool {
    let stream = stream.tcp();
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = !matches!(stream.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_err() || closed
}

/// Whether an I/O error means the other end closed the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
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
    /// Connects to `addr` (`host:port`), retrying while it refuses, until `deadline`,
    /// as a client without the job's key.
    pub fn connect(addr: &str, deadline: Instant) -> Result<TcpStore, StoreError> {
        Self::connect_with(addr, None, deadline)
    }

    /// Connects proving `key` (the job's secret's) to the server on every connection,
    /// over TLS when this process's `TOPOCCL_TLS` says so.
    pub fn connect_with(
        addr: &str,
        key: Option<JobKey>,
        deadline: Instant,
    ) -> Result<TcpStore, StoreError> {
        Self::connect_with_tls(addr, key, super::server::process_tls()?, deadline)
    }

    /// As [`Self::connect_with`], with TLS settings given (`None`: in clear) rather than
    /// read from the environment.
    pub fn connect_with_tls(
        addr: &str,
        key: Option<JobKey>,
        tls: Option<Tls>,
        deadline: Instant,
    ) -> Result<TcpStore, StoreError> {
        let io_timeout = DEFAULT_IO_TIMEOUT;
        let mut pause = RETRY_FIRST;
        let mut attempts = 0u32;
        let start = Instant::now();
        let mut logged_refusal = false;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt_timeout = remaining.clamp(MIN_ATTEMPT_TIMEOUT, io_timeout);
            let last_error = match resolve(addr)? {
                Err(e) => e,
                Ok(peers) => {
                    let mut last = String::new();
                    let mut found = None;
                    for peer in peers {
                        match connect_once(addr, peer, key.as_ref(), tls.as_ref(), attempt_timeout)
                        {
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
                            key,
                            tls,
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
                if closed_by_peer(&s) {
                    // Closed while idle (the server's idle timeout): open another.
                    pool.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    store: self,
                    stream: Some(s),
                    reusable: false,
                    reused: true,
                });
            }
            if pool.open < MAX_CLIENT_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let mut lease = Lease {
                    store: self,
                    stream: None,
                    reusable: false,
                    reused: false,
                };
                let timeout = deadline
                    .saturating_duration_since(Instant::now())
                    .min(self.io_timeout);
                match connect_once(
                    &self.addr,
                    self.peer,
                    self.key.as_ref(),
                    self.tls.as_ref(),
                    timeout,
                ) {
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
        request: &Request<'_>,
        wait_until: Option<Instant>,
    ) -> Result<Vec<u8>, StoreError> {
        let lease_deadline = wait_until.unwrap_or_else(|| Instant::now() + self.io_timeout);
        let lease = self.lease(lease_deadline)?;
        let reused = lease.reused;
        match self.call_on(lease, what, request, wait_until) {
            Err((e, true)) if reused => {
                tracing::debug!(addr = %self.addr, "TCP store: {e}; sending {what} again on a fresh connection");
                // Only a fresh connection: the pool's others may be as stale. If none
                // opens, the server is gone: say that it closed the connection.
                let fresh = || -> Result<Lease<'_>, StoreError> {
                    let mut lease = self.lease(lease_deadline)?;
                    while lease.reused {
                        lease.stream = None;
                        drop(lease);
                        lease = self.lease(lease_deadline)?;
                    }
                    Ok(lease)
                };
                match fresh() {
                    Ok(lease) => self
                        .call_on(lease, what, request, wait_until)
                        .map_err(|(e, _)| e),
                    Err(_) => Err(e),
                }
            }
            r => r.map_err(|(e, _)| e),
        }
    }

    /// [`Self::call`] on one connection; the error's flag says that the connection was
    /// found closed before any byte of a reply came (worth another on a fresh one).
    fn call_on(
        &self,
        mut lease: Lease<'_>,
        what: &str,
        request: &Request<'_>,
        wait_until: Option<Instant>,
    ) -> Result<Vec<u8>, (StoreError, bool)> {
        let Some(stream) = lease.stream.as_mut() else {
            return Err((self.unreachable(format!("{what}: no connection")), false));
        };
        let reply_timeout = match wait_until {
            Some(d) => {
                d.saturating_duration_since(Instant::now()) + REPLY_GRACE.min(self.io_timeout)
            }
            None => self.io_timeout,
        };
        let describe = |e: io::Error, during: &str, before_reply: bool| {
            let closed = is_closed(&e);
            let reason = if closed {
                format!(
                    "the store closed the connection during {what} ({during}); the server \
                     stopped or crashed"
                )
            } else {
                match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                        "no reply to {what} within {reply_timeout:?}; the store is overloaded \
                         or its host is down"
                    ),
                    _ => format!("{what} ({during}): {e}"),
                }
            };
            (self.unreachable(reason), closed && before_reply)
        };
        stream
            .tcp()
            .set_write_timeout(Some(self.io_timeout))
            .and_then(|()| stream.write_all(&request.encode()))
            .map_err(|e| describe(e, "sending", true))?;
        let body = match read_frame(stream, Some(nonzero(reply_timeout)), self.io_timeout) {
            Ok(b) => b,
            Err(FrameError::Closed) => {
                return Err(describe(
                    io::ErrorKind::UnexpectedEof.into(),
                    "awaiting the reply",
                    true,
                ))
            }
            Err(FrameError::TooLong(n)) => {
                return Err((
                    StoreError::Protocol(format!(
                        "the store sent a {n}-byte reply to {what}, more than the frame limit \
                         of {MAX_FRAME}; client and server versions may differ"
                    )),
                    false,
                ))
            }
            Err(FrameError::Idle) => {
                return Err(describe(
                    io::ErrorKind::TimedOut.into(),
                    "awaiting the reply",
                    true,
                ))
            }
            Err(FrameError::Io(e)) => return Err(describe(e, "receiving the reply", false)),
        };
        lease.reusable = true;
        Ok(body)
    }

    /// Decodes the reply `body` to `request`: TIMEOUT and ERROR become errors, the rest is
    /// returned.
    fn reply<'b>(
        &self,
        what: &str,
        request: &Request<'_>,
        body: &'b [u8],
    ) -> Result<Reply<'b>, StoreError> {
        let reply = Reply::decode(body, request.ok_fields()).map_err(|e| {
            StoreError::Protocol(format!(
                "malformed reply to {what} from the store at {}: {e}",
                self.addr
            ))
        })?;
        match reply {
            Reply::Timeout(missing) => Err(StoreError::Timeout { missing }),
            Reply::Error(msg) => Err(StoreError::Protocol(format!(
                "the store refused {what}: {msg}"
            ))),
            r => Ok(r),
        }
    }

    /// A reply that is no answer to its request: NOT_FOUND to anything but TRY_GET.
    fn unexpected(&self, what: &str, reply: &Reply<'_>) -> StoreError {
        let answer = match reply {
            Reply::NotFound => "NOT_FOUND".to_string(),
            other => format!("{other:?}"),
        };
        StoreError::Protocol(format!(
            "the store at {} answered {what} with {answer}, which it never should",
            self.addr
        ))
    }

    /// Sends a request whose OK reply carries nothing.
    fn done(
        &self,
        what: &str,
        request: &Request<'_>,
        wait_until: Option<Instant>,
    ) -> Result<(), StoreError> {
        let body = self.call(what, request, wait_until)?;
        match self.reply(what, request, &body)? {
            Reply::Done => Ok(()),
            other => Err(self.unexpected(what, &other)),
        }
    }

    fn wait_batch(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        let request = Request::Wait {
            timeout_ms: millis_until(deadline),
            keys: keys.iter().map(String::as_str).collect(),
        };
        let what = format!("WAIT for {} keys", keys.len());
        self.done(&what, &request, Some(deadline))
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_key(key)?;
        check_value(key, value)?;
        let what = format!("SET '{}'", shown(key));
        self.done(&what, &Request::Set { key, value }, None)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        check_key(key)?;
        let what = format!("GET '{}'", shown(key));
        let request = Request::Get {
            timeout_ms: millis_until(deadline),
            key,
        };
        let body = self.call(&what, &request, Some(deadline))?;
        match self.reply(&what, &request, &body)? {
            Reply::Value(v) => Ok(v.to_vec()),
            other => Err(self.unexpected(&what, &other)),
        }
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        let what = format!("TRY_GET '{}'", shown(key));
        let request = Request::TryGet { key };
        let body = self.call(&what, &request, None)?;
        match self.reply(&what, &request, &body)? {
            Reply::Value(v) => Ok(Some(v.to_vec())),
            Reply::NotFound => Ok(None),
            other => Err(self.unexpected(&what, &other)),
        }
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
        let mut rest = keys;
        while !rest.is_empty() {
            let (batch, after) = rest.split_at(codec::wait_batch_len(rest));
            match self.wait_batch(batch, deadline) {
                Ok(()) => {}
                Err(StoreError::Timeout { missing: m }) => missing.extend(m),
                Err(e) => return Err(e),
            }
            rest = after;
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
        let request = Request::Add { key, delta };
        let body = self.call(&what, &request, None)?;
        match self.reply(&what, &request, &body)? {
            Reply::Count(n) => Ok(n),
            other => Err(self.unexpected(&what, &other)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let what = format!("DELETE '{}'", shown(key));
        self.done(&what, &Request::Delete { key }, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_until(Instant::now() - Duration::from_secs(1)), 0);
        let ms = millis_until(Instant::now() + Duration::from_micros(1500));
        assert!((1..=2).contains(&ms), "{ms}");
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
    fn malformed_addresses_fail_at_once() {
        for bad in ["nohost", "host:", ":80", "host:99999", "host:port"] {
            let t = Instant::now();
            let e = TcpStore::connect(bad, soon(5000)).unwrap_err();
            assert!(matches!(e, StoreError::Protocol(_)), "{bad}: {e}");
            assert!(t.elapsed() < Duration::from_secs(1));
        }
    }

    /// A fake server that answers the first request with `reply`.
    fn answering(reply: Vec<u8>) -> (String, thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        let t = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            (&s).write_all(&codec::greeting(&[0; NONCE_LEN])).unwrap();
            let mut hello = [0u8; codec::HELLO_LEN];
            (&s).read_exact(&mut hello).unwrap();
            (&s).write_all(&codec::welcome(&Ok(()))).unwrap();
            let _ = read_frame(
                &mut Stream::Plain(s.try_clone().unwrap()),
                Some(Duration::from_secs(5)),
                Duration::from_secs(5),
            );
            (&s).write_all(&reply).unwrap();
        });
        (a, t)
    }

    #[test]
    fn replies_that_answer_nothing_are_protocol_errors() {
        let (a, t) = answering(Reply::NotFound.encode());
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        let e = c.get("k", soon(1000)).unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("NOT_FOUND")),
            "{e}"
        );
        t.join().unwrap();
        let (a, t) = answering(Reply::Value(b"v").encode());
        let c = TcpStore::connect(&a, soon(2000)).unwrap();
        let e = c.add("k", 1).unwrap_err();
        assert!(
            matches!(&e, StoreError::Protocol(m) if m.contains("malformed reply to ADD")),
            "{e}"
        );
        t.join().unwrap();
    }
}
