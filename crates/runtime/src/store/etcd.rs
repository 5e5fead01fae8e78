//! [`EtcdStore`]: the rendezvous on an etcd v3 cluster (`TOPOCCL_STORE=etcd://HOST:PORT`,
//! or `etcd://H1:P1,H2:P2` for several members), for jobs whose platform already runs one.
//!
//! **Client.** The store speaks etcd's JSON gateway (`/v3/kv/*`, `/v3/lease/*`, served on
//! every client URL since etcd 3.3) over the small blocking HTTP/1.1 client in
//! `super::http`, with bodies encoded by `super::etcd_codec`. The gRPC alternative would
//! bring an async runtime, protobuf code generation and an HTTP/2 stack into a crate that
//! is otherwise blocking threads and sockets, for a store used a few dozen times per rank;
//! the gateway needs nothing beyond the JSON and base64 crates already in the tree.
//! Connections are kept alive between calls (at most `MAX_IDLE_CONNECTIONS` idle); a
//! member that fails is left for the next one of the address.
//!
//! **Semantics**, as the other stores:
//! - keys are stored as given, except that etcd has no empty key (the runtime's are `topoccl/JOB/...`, a per-job prefix that
//!   [`EtcdStore::delete_prefix`] removes at the end of the job);
//! - `add` is a compare-and-put on the counter's mod revision in one transaction, whose
//!   failure branch reads the counter, retried until it wins (bounded by the I/O timeout);
//!   counters are decimal ASCII as everywhere;
//! - `get` and `wait` poll (backoff from `ETCD_POLL_FIRST` to `ETCD_POLL_MAX`; `wait`
//!   asks about up to 128 keys per transaction, and only about those still missing) until
//!   their deadline; a member that does not answer meanwhile is retried until the deadline
//!   too;
//! - keys and values are checked against `store::limits` before anything is sent; etcd's
//!   own request limit (`--max-request-bytes`, 1.5 MiB by default) and its quota
//!   (`--quota-backend-bytes`) bound what a job can make it hold, and its refusal is
//!   passed on with what to change.
//!
//! **Liveness.** Each store grants itself a lease of `TOPOCCL_ETCD_LEASE_TTL` seconds
//! (default [`ETCD_LEASE_TTL`], 10 s; 2 to 3600) and keeps it alive from a thread,
//! `ETCD_KEEPALIVES_PER_TTL` times per TTL. Every key `set` puts is attached to it: a
//! rank's endpoint records vanish at most one TTL after its process dies (or stops
//! answering, e.g. SIGSTOP). Counters are not attached (several ranks write them); they
//! go with the job's prefix. A store whose lease expired anyway (no keepalive reached
//! etcd for a whole TTL) refuses further `set`s with that reason. Dropping the store
//! stops the keepalives; [`EtcdStore::revoke`] removes its keys at once.
//!
//! **Not here:** TLS and etcd's user authentication (use a network only the job's hosts
//! reach, as for the TCP store without `TOPOCCL_TLS`); the job's secret is not proven to
//! etcd, though ranks still prove it to each other when they connect.

use std::fmt;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::etcd_codec::{self as codec, Kv, Swap, MAX_TXN_OPS};
use super::http;
use super::limits::{
    check_key, check_value, DEFAULT_IO_TIMEOUT, ETCD_ADD_EAGER_TRIES, ETCD_ADD_PAUSE,
    ETCD_KEEPALIVES_PER_TTL, ETCD_LEASE_TTL, ETCD_MAX_ENDPOINTS, ETCD_MAX_LEASE_TTL_S,
    ETCD_MAX_REPLY, ETCD_MIN_LEASE_TTL_S, ETCD_POLL_FIRST, ETCD_POLL_MAX, MAX_IDLE_CONNECTIONS,
    MIN_ATTEMPT_TIMEOUT, RETRY_FIRST, RETRY_MAX,
};
use super::state::{counter_after, counter_bytes};
use super::{lock, shown, Store, StoreError};

/// The variable that sets the lease TTL, in whole seconds.
pub const ENV_ETCD_LEASE_TTL: &str = "TOPOCCL_ETCD_LEASE_TTL";

/// How an [`EtcdStore`] behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// The lease's TTL: how long a dead process's keys outlive it (whole seconds, 2 to
    /// 3600).
    pub lease_ttl: Duration,
    /// Bound on one request to etcd (connecting, sending, reading the reply).
    pub io_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            lease_ttl: ETCD_LEASE_TTL,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

impl EtcdOptions {
    /// The defaults, with the TTL from `TOPOCCL_ETCD_LEASE_TTL` when it is set.
    pub fn from_env() -> Result<EtcdOptions, StoreError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// As [`EtcdOptions::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<EtcdOptions, StoreError> {
        let mut o = EtcdOptions::default();
        if let Some(v) = lookup(ENV_ETCD_LEASE_TTL) {
            let s = v
                .trim()
                .trim_end_matches('s')
                .parse::<u64>()
                .ok()
                .filter(|s| (ETCD_MIN_LEASE_TTL_S..=ETCD_MAX_LEASE_TTL_S).contains(s))
                .ok_or_else(|| {
                    StoreError::Protocol(format!(
                        "{ENV_ETCD_LEASE_TTL}='{v}' must be whole seconds from \
                         {ETCD_MIN_LEASE_TTL_S} to {ETCD_MAX_LEASE_TTL_S} (e.g. 10)"
                    ))
                })?;
            o.lease_ttl = Duration::from_secs(s);
        }
        Ok(o)
    }
}

/// Checks the endpoints of an `etcd://` address: 1 to [`ETCD_MAX_ENDPOINTS`] of
/// `HOST:PORT`.
pub(super) fn check_endpoints(endpoints: &[String]) -> Result<(), String> {
    if endpoints.is_empty() || endpoints.len() > ETCD_MAX_ENDPOINTS {
        return Err(format!(
            "an etcd address names 1 to {ETCD_MAX_ENDPOINTS} members (etcd://HOST:PORT or \
             etcd://H1:P1,H2:P2), not {}",
            endpoints.len()
        ));
    }
    for e in endpoints {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            return Err(format!(
                "etcd member '{e}' must be HOST:PORT with a port from 0 to 65535 (IPv6: \
                 [ADDR]:PORT), e.g. etcd://127.0.0.1:2379"
            ));
        }
    }
    Ok(())
}

/// `etcd://a,b`, for messages.
fn address(endpoints: &[String]) -> String {
    format!("etcd://{}", endpoints.join(","))
}

type Conn = BufReader<TcpStream>;

/// Requests to the members of one etcd cluster, on pooled keep-alive connections.
struct Client {
    endpoints: Vec<String>,
    /// The member tried first.
    current: AtomicUsize,
    /// Idle connections and the member each goes to; at most `MAX_IDLE_CONNECTIONS`.
    idle: Mutex<Vec<(usize, Conn)>>,
    io_timeout: Duration,
}

/// Why one request failed.
enum CallError {
    /// The member did not answer (or not as a gateway): the request may be tried again.
    Unreachable(String),
    /// etcd answered with a refusal or an unreadable reply.
    Refused(String),
}

impl Client {
    fn addr(&self) -> String {
        address(&self.endpoints)
    }

    fn unreachable(&self, reason: String) -> StoreError {
        StoreError::Unreachable {
            addr: self.addr(),
            reason,
        }
    }

    fn connect(&self, i: usize, timeout: Duration) -> Result<Conn, String> {
        let ep = &self.endpoints[i];
        let addrs: Vec<SocketAddr> = ep
            .to_socket_addrs()
            .map_err(|e| format!("resolving {ep}: {e}"))?
            .collect();
        let mut last = format!("'{ep}' resolves to no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)
                        .map_err(|e| format!("setting up the connection to {ep}: {e}"))?;
                    return Ok(BufReader::new(s));
                }
                Err(e) => last = format!("connecting to {ep} ({a}): {e}"),
            }
        }
        Err(last)
    }

    /// One request to one member: a pooled connection when there is one (sent again on a
    /// fresh one if the member had closed it), else a new connection.
    fn call_member(
        &self,
        i: usize,
        path: &str,
        body: &[u8],
        keep_alive: bool,
        timeout: Duration,
    ) -> Result<http::Response, String> {
        let pooled = {
            let mut idle = lock(&self.idle);
            idle.iter()
                .position(|(m, _)| *m == i)
                .map(|p| idle.swap_remove(p).1)
        };
        let ep = &self.endpoints[i];
        for conn in [pooled, None] {
            let reused = conn.is_some();
            let mut conn = match conn {
                Some(c) => c,
                None => self.connect(i, timeout)?,
            };
            let setup = conn
                .get_ref()
                .set_read_timeout(Some(timeout))
                .and_then(|()| conn.get_ref().set_write_timeout(Some(timeout)));
            if let Err(e) = setup {
                return Err(format!("setting up the connection to {ep}: {e}"));
            }
            match http::post(&mut conn, ep, path, body, keep_alive, ETCD_MAX_REPLY) {
                Ok(r) => {
                    if r.reusable && keep_alive {
                        let mut idle = lock(&self.idle);
                        if idle.len() < MAX_IDLE_CONNECTIONS {
                            idle.push((i, conn));
                        }
                    }
                    return Ok(r);
                }
                // The member closed an idle connection before reading the request: no
                // byte of a reply came, so sending it again cannot apply it twice.
                Err(e) if reused && http::closed_before_reply(&e) => continue,
                Err(e) => {
                    return Err(match e.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                            "{ep} did not answer {path} within {:.1} s",
                            timeout.as_secs_f64()
                        ),
                        _ => format!("{path} to {ep}: {e}"),
                    })
                }
            }
        }
        Err(format!("{ep} closed the connection twice"))
    }

    /// One request, to each member in turn until one answers. `timeout` bounds each try.
    fn call(&self, path: &str, body: &[u8], timeout: Duration) -> Result<Value, CallError> {
        let r = self.call_bytes(path, body, true, timeout)?;
        codec::reply(&r.body).map_err(|e| self.refusal(path, r.status, e))
    }

    fn refusal(&self, path: &str, status: u16, reason: String) -> CallError {
        let hint = if reason.contains("too large") || reason.contains("larger than max") {
            "; the request is over etcd's limit (--max-request-bytes, 1.5 MiB by default; \
             the JSON gateway takes at most 2 MiB): raise it on the etcd members, or publish \
             large data elsewhere and its location here"
        } else if reason.contains("space exceeded") {
            "; etcd is over its --quota-backend-bytes: compact and defragment it, or raise \
             the quota"
        } else {
            ""
        };
        CallError::Refused(format!(
            "etcd at {} refused {path} (HTTP {status}): {reason}{hint}",
            self.addr()
        ))
    }

    fn call_bytes(
        &self,
        path: &str,
        body: &[u8],
        keep_alive: bool,
        timeout: Duration,
    ) -> Result<http::Response, CallError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut reasons = Vec::new();
        for k in 0..n {
            let i = (first + k) % n;
            match self.call_member(i, path, body, keep_alive, timeout) {
                Ok(r) => {
                    if k > 0 {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Err(why) => reasons.push(why),
            }
        }
        Err(CallError::Unreachable(reasons.join("; ")))
    }

    /// [`Client::call`], its errors as the store reports them.
    fn request(&self, path: &str, body: &[u8]) -> Result<Value, StoreError> {
        self.call(path, body, self.io_timeout)
            .map_err(|e| self.error(e))
    }

    fn error(&self, e: CallError) -> StoreError {
        match e {
            CallError::Unreachable(why) => self.unreachable(format!(
                "{why}; check that etcd is running and serves its client URL there \
                 (etcd --listen-client-urls), or fix TOPOCCL_STORE"
            )),
            CallError::Refused(why) => StoreError::Protocol(why),
        }
    }
}

/// The lease this store's keys are attached to.
struct Lease {
    id: i64,
    ttl: Duration,
    /// Set when etcd said the lease no longer exists.
    lost: AtomicBool,
}

/// Stops the keepalive thread.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A store on an etcd v3 cluster; see the module documentation.
pub struct EtcdStore {
    client: Arc<Client>,
    lease: Arc<Lease>,
    stop: Arc<Stop>,
    keeper: Option<JoinHandle<()>>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("addr", &self.client.addr())
            .field("lease", &self.lease.id)
            .field("lease_ttl", &self.lease.ttl)
            .finish_non_exhaustive()
    }
}

/// [`check_key`], and the one key etcd does not have: the empty one.
fn check(key: &str) -> Result<(), StoreError> {
    check_key(key)?;
    if key.is_empty() {
        return Err(StoreError::Protocol(
            "the empty key: etcd has no empty key (the other stores do); name the key".into(),
        ));
    }
    Ok(())
}

/// Sleeps for the next pause of a backoff, never past `deadline`; false if it has passed.
fn nap(pause: &mut Duration, max: Duration, deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    thread::sleep((*pause).min(deadline - now));
    *pause = (*pause * 2).min(max);
    true
}

/// The time left until `deadline` as a bound on one request: at least
/// `MIN_ATTEMPT_TIMEOUT`, at most `cap`.
fn attempt_timeout(deadline: Instant, cap: Duration) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .clamp(MIN_ATTEMPT_TIMEOUT, cap.max(MIN_ATTEMPT_TIMEOUT))
}

impl EtcdStore {
    /// Connects to the etcd members `endpoints` (`HOST:PORT` each) with the options of
    /// [`EtcdOptions::from_env`], retrying members that do not answer until `deadline`.
    pub fn connect(endpoints: &[String], deadline: Instant) -> Result<EtcdStore, StoreError> {
        Self::connect_with(endpoints, EtcdOptions::from_env()?, deadline)
    }

    /// Connects with `opts`: grants the lease (retrying until `deadline`; then the error
    /// names the address and what to check) and starts keeping it alive.
    pub fn connect_with(
        endpoints: &[String],
        opts: EtcdOptions,
        deadline: Instant,
    ) -> Result<EtcdStore, StoreError> {
        check_endpoints(endpoints).map_err(StoreError::Protocol)?;
        let ttl_s = opts.lease_ttl.as_secs();
        if !(ETCD_MIN_LEASE_TTL_S..=ETCD_MAX_LEASE_TTL_S).contains(&ttl_s) {
            return Err(StoreError::Protocol(format!(
                "etcd lease TTL of {ttl_s} s is outside {ETCD_MIN_LEASE_TTL_S} to \
                 {ETCD_MAX_LEASE_TTL_S} s; give {ENV_ETCD_LEASE_TTL} a value in that range"
            )));
        }
        let client = Arc::new(Client {
            endpoints: endpoints.to_vec(),
            current: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            io_timeout: opts.io_timeout.max(MIN_ATTEMPT_TIMEOUT),
        });
        let started = Instant::now();
        let mut pause = RETRY_FIRST;
        let granted = loop {
            let timeout = attempt_timeout(deadline, client.io_timeout);
            match client.call("/v3/lease/grant", &codec::lease_grant(ttl_s), timeout) {
                Ok(v) => break codec::grant_reply(&v).map_err(StoreError::Protocol)?,
                Err(CallError::Refused(why)) => return Err(StoreError::Protocol(why)),
                Err(CallError::Unreachable(why)) => {
                    if !nap(&mut pause, RETRY_MAX, deadline) {
                        return Err(client.unreachable(format!(
                            "no answer within {:.1} s (last: {why}); check that etcd is \
                             running and serves its client URL at that address (etcd \
                             --listen-client-urls, --advertise-client-urls), or fix \
                             TOPOCCL_STORE",
                            started.elapsed().as_secs_f64()
                        )));
                    }
                }
            }
        };
        let (id, granted_ttl) = granted;
        let lease = Arc::new(Lease {
            id,
            // etcd may raise a short TTL to its minimum.
            ttl: Duration::from_secs(u64::try_from(granted_ttl).unwrap_or(ttl_s).max(ttl_s)),
            lost: AtomicBool::new(false),
        });
        let stop = Arc::new(Stop::default());
        let keeper = {
            let (client, lease, stop) = (client.clone(), lease.clone(), stop.clone());
            thread::Builder::new()
                .name("topoccl-etcd-lease".into())
                .spawn(move || keep_alive(&client, &lease, &stop))
                .map_err(|e| StoreError::Io(format!("cannot start the lease thread: {e}")))?
        };
        Ok(EtcdStore {
            client,
            lease,
            stop,
            keeper: Some(keeper),
        })
    }

    /// The lease this store's keys are attached to.
    pub fn lease_id(&self) -> i64 {
        self.lease.id
    }

    /// How long this store's keys outlive its process.
    pub fn lease_ttl(&self) -> Duration {
        self.lease.ttl
    }

    /// `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn addr(&self) -> String {
        self.client.addr()
    }

    /// Removes every key that starts with `prefix` (a job's `topoccl/JOB/`), returning how
    /// many there were. An empty prefix is refused: it would be every key in etcd.
    pub fn delete_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        check_key(prefix)?;
        if prefix.is_empty() {
            return Err(StoreError::Protocol(
                "refusing to delete with an empty prefix (every key in etcd); name the job's \
                 prefix, e.g. topoccl/JOB/"
                    .into(),
            ));
        }
        let v = self
            .client
            .request("/v3/kv/deleterange", &codec::delete(prefix, true))?;
        codec::number_reply(&v, "deleted").map_err(StoreError::Protocol)
    }

    /// How many keys start with `prefix` (a job's `topoccl/JOB/`: what it holds now).
    pub fn count_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        check(prefix)?;
        let v = self.client.request("/v3/kv/range", &codec::count(prefix))?;
        codec::number_reply(&v, "count").map_err(StoreError::Protocol)
    }

    /// Ends the lease now: every key this store `set` vanishes, and further `set`s fail.
    pub fn revoke(&self) -> Result<(), StoreError> {
        self.lease.lost.store(true, Ordering::SeqCst);
        self.client
            .request("/v3/lease/revoke", &codec::lease(self.lease.id))
            .map(drop)
    }

    fn range(&self, key: &str, timeout: Duration) -> Result<Option<Kv>, CallError> {
        let v = self
            .client
            .call("/v3/kv/range", &codec::range(key), timeout)?;
        codec::range_reply(&v).map_err(|e| self.client.refusal("/v3/kv/range", 200, e))
    }

    /// Which of `keys` exist, asked in transactions of at most [`MAX_TXN_OPS`].
    fn existing(&self, keys: &[&str], timeout: Duration) -> Result<Vec<bool>, CallError> {
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(MAX_TXN_OPS) {
            let v = self
                .client
                .call("/v3/kv/txn", &codec::exist(batch), timeout)?;
            out.extend(
                codec::exist_reply(&v, batch.len())
                    .map_err(|e| self.client.refusal("/v3/kv/txn", 200, e))?,
            );
        }
        Ok(out)
    }

    /// Polls `probe` until it gives `Some`, or `deadline` passes (then `timed_out()`);
    /// members that do not answer are retried until the deadline too.
    fn poll<T>(
        &self,
        deadline: Instant,
        mut probe: impl FnMut(Duration) -> Result<Option<T>, CallError>,
        timed_out: impl FnOnce() -> StoreError,
    ) -> Result<T, StoreError> {
        let mut pause = ETCD_POLL_FIRST;
        loop {
            let unreachable = match probe(attempt_timeout(deadline, self.client.io_timeout)) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => None,
                Err(CallError::Refused(why)) => return Err(StoreError::Protocol(why)),
                Err(e @ CallError::Unreachable(_)) => Some(e),
            };
            if !nap(&mut pause, ETCD_POLL_MAX, deadline) {
                return Err(match unreachable {
                    Some(e) => self.client.error(e),
                    None => timed_out(),
                });
            }
        }
    }
}

/// The keepalive thread: renews the lease `ETCD_KEEPALIVES_PER_TTL` times per TTL until
/// stopped or until etcd says the lease is gone.
fn keep_alive(client: &Client, lease: &Lease, stop: &Stop) {
    let period = lease.ttl / ETCD_KEEPALIVES_PER_TTL;
    let mut renewed = Instant::now();
    loop {
        {
            let stopped = lock(&stop.stopped);
            let (stopped, _) = stop
                .wake
                .wait_timeout_while(stopped, period, |s| !*s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        if lease.lost.load(Ordering::SeqCst) {
            return;
        }
        // A streamed call: the gateway answers and ends the stream when the request
        // body ends; the connection is not reused.
        let sent = client
            .call_bytes(
                "/v3/lease/keepalive",
                &codec::lease(lease.id),
                false,
                period,
            )
            .and_then(|r| {
                codec::keepalive_reply(&r.body)
                    .map_err(|e| client.refusal("/v3/lease/keepalive", r.status, e))
            });
        match sent {
            Ok(ttl) if ttl > 0 => renewed = Instant::now(),
            Ok(_) => {
                lease.lost.store(true, Ordering::SeqCst);
                tracing::error!(
                    lease = lease.id,
                    "etcd at {}: this process's lease expired (no keepalive reached etcd for \
                     {:?}); its keys are gone and the other ranks will see it as dead",
                    client.addr(),
                    lease.ttl
                );
                return;
            }
            Err(CallError::Refused(why) | CallError::Unreachable(why)) => {
                tracing::warn!(
                    lease = lease.id,
                    "etcd lease keepalive failed ({why}); last renewed {:.1} s ago, TTL {:?}",
                    renewed.elapsed().as_secs_f64(),
                    lease.ttl
                );
            }
        }
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        *lock(&self.stop.stopped) = true;
        self.stop.wake.notify_all();
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
    }
}

impl Store for EtcdStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check(key)?;
        check_value(key, value)?;
        if self.lease.lost.load(Ordering::SeqCst) {
            return Err(StoreError::Protocol(format!(
                "cannot set '{}': this process's etcd lease {} has ended (revoked, or no \
                 keepalive reached {} for {:?}), so its keys are gone; restart the rank",
                shown(key),
                self.lease.id,
                self.client.addr(),
                self.lease.ttl
            )));
        }
        self.client
            .request("/v3/kv/put", &codec::put(key, value, Some(self.lease.id)))
            .map(drop)
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>, StoreError> {
        check(key)?;
        self.poll(
            deadline,
            |t| Ok(self.range(key, t)?.map(|kv| kv.value)),
            || StoreError::Timeout {
                missing: vec![key.to_string()],
            },
        )
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check(key)?;
        self.range(key, self.client.io_timeout)
            .map(|kv| kv.map(|kv| kv.value))
            .map_err(|e| self.client.error(e))
    }

    fn wait(&self, keys: &[String], deadline: Instant) -> Result<(), StoreError> {
        for k in keys {
            check(k)?;
        }
        let mut missing: Vec<&str> = keys.iter().map(String::as_str).collect();
        let left = Mutex::new(Vec::new());
        self.poll(
            deadline,
            |t| {
                let exist = self.existing(&missing, t)?;
                let mut i = 0;
                missing.retain(|_| {
                    i += 1;
                    !exist[i - 1]
                });
                *lock(&left) = missing.iter().map(|k| k.to_string()).collect();
                Ok(missing.is_empty().then_some(()))
            },
            || StoreError::Timeout {
                missing: std::mem::take(&mut *lock(&left)),
            },
        )
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        check(key)?;
        let deadline = Instant::now() + self.client.io_timeout;
        // First as if the counter did not exist: one request when it does not; when it
        // does, the failed compare reads it.
        let mut current: Option<Kv> = None;
        let mut lost = 0u32;
        loop {
            let next = counter_after(key, current.as_ref().map(|kv| kv.value.as_slice()), delta)
                .map_err(StoreError::Protocol)?;
            let rev = current.as_ref().map_or(0, |kv| kv.mod_revision);
            let v = self
                .client
                .request("/v3/kv/txn", &codec::swap(key, rev, &counter_bytes(next)))?;
            match codec::swap_reply(&v).map_err(StoreError::Protocol)? {
                Swap::Done => return Ok(next),
                Swap::Lost(now) => current = now,
            }
            lost += 1;
            if Instant::now() >= deadline {
                return Err(StoreError::Io(format!(
                    "add to counter '{}' lost {lost} compare-and-puts in a row over {:?}; \
                     too many processes are adding to it at once",
                    shown(key),
                    self.client.io_timeout
                )));
            }
            if lost >= ETCD_ADD_EAGER_TRIES {
                let jitter = getrandom::u32().unwrap_or(lost) % 1000;
                thread::sleep(ETCD_ADD_PAUSE * jitter / 1000);
            }
        }
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        check(key)?;
        self.client
            .request("/v3/kv/deleterange", &codec::delete(key, false))
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        check_endpoints(&["127.0.0.1:2379".into(), "[::1]:2379".into()]).unwrap();
        for bad in [
            vec![],
            vec!["h".to_string()],
            vec!["h:x".into()],
            vec![":1".into()],
        ] {
            assert!(check_endpoints(&bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=ETCD_MAX_ENDPOINTS).map(|i| format!("h:{i}")).collect();
        assert!(check_endpoints(&many).unwrap_err().contains("1 to 16"));
    }

    #[test]
    fn store_addresses_name_etcd_members() {
        use crate::store::StoreAddr;
        assert_eq!(
            "etcd://127.0.0.1:2379".parse::<StoreAddr>().unwrap(),
            StoreAddr::Etcd(vec!["127.0.0.1:2379".into()])
        );
        let cluster = "etcd://h1:2379,[::1]:2379,h3:2379";
        let a = cluster.parse::<StoreAddr>().unwrap();
        assert_eq!(
            a,
            StoreAddr::Etcd(vec![
                "h1:2379".into(),
                "[::1]:2379".into(),
                "h3:2379".into()
            ])
        );
        assert_eq!(a.to_string(), cluster);
        for bad in [
            "etcd://",
            "etcd://h",
            "etcd://h:1,",
            "etcd://h:1,h2",
            "etcd://h:99999",
        ] {
            let e = bad.parse::<StoreAddr>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("HOST:PORT"), "{bad}: {e}");
        }
        let e = "redis://h:1".parse::<StoreAddr>().unwrap_err().to_string();
        assert!(e.contains("etcd://"), "{e}");
    }

    #[test]
    fn lease_ttl_from_the_environment() {
        let with = |v: &str| {
            let v = v.to_string();
            EtcdOptions::from_lookup(&move |k| (k == ENV_ETCD_LEASE_TTL).then(|| v.clone()))
        };
        assert_eq!(
            EtcdOptions::from_lookup(&|_| None).unwrap().lease_ttl,
            ETCD_LEASE_TTL
        );
        assert_eq!(with("30").unwrap().lease_ttl, Duration::from_secs(30));
        assert_eq!(with("5s").unwrap().lease_ttl, Duration::from_secs(5));
        for bad in ["1", "3601", "x", "-3", ""] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains(ENV_ETCD_LEASE_TTL) && e.contains("2 to 3600"),
                "{e}"
            );
        }
    }

    /// A member that does not answer: the error comes by the deadline, names the
    /// address and says what to check.
    #[test]
    fn an_address_nobody_serves_fails_by_the_deadline() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let ep = format!("127.0.0.1:{port}");
        let start = Instant::now();
        let e = EtcdStore::connect_with(
            std::slice::from_ref(&ep),
            EtcdOptions::default(),
            start + Duration::from_millis(400),
        )
        .unwrap_err();
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{took:?}");
        let text = e.to_string();
        assert!(matches!(e, StoreError::Unreachable { .. }), "{text}");
        assert!(text.contains(&format!("etcd://{ep}")), "{text}");
        assert!(text.contains("check that etcd is running"), "{text}");
    }

    /// A listener that accepts and never answers (a firewall, a stopped process): still
    /// bounded by the deadline.
    #[test]
    fn a_silent_member_fails_by_the_deadline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = l.local_addr().unwrap().to_string();
        let start = Instant::now();
        let e = EtcdStore::connect_with(
            &[ep],
            EtcdOptions::default(),
            start + Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(e.to_string().contains("did not answer"), "{e}");
        drop(l);
    }
}
