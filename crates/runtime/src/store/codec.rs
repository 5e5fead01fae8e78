//! The TCP store's wire protocol, without sockets: every function here turns values into
//! bytes or bytes into values, so the protocol is tested with byte strings and the server
//! and client only move frames.
//!
//! # Wire protocol (version 2)
//!
//! Integers are big-endian. A *string* is a `u32` length and that many UTF-8 bytes; *bytes*
//! is a `u32` length and that many raw bytes.
//!
//! 1. On accepting a connection the server sends a greeting: the magic `b"TOPOSTOR"`, a
//!    `u16` version and a `u8` status, 0 (accepted, followed by the connection's 16-byte
//!    nonce) or 1 (refused, followed by a string saying why; the server then closes the
//!    connection). The server speaks first so that a refusal reaches a client that has
//!    sent nothing yet: closing a socket with unread input resets it, and the reset would
//!    destroy the message.
//! 2. The client answers with a hello: the same magic, its `u16` version and a 32-byte
//!    proof, the MAC of the nonce under the job's key (`crate::auth`, `StoreClient`), or
//!    zeros from a client without one.
//! 3. The server answers the hello with a `u8`: 0 (welcome), or 1 and a string saying why
//!    not (a server that holds a key refuses a proof that does not match it; any server
//!    refuses another magic or version), and then closes.
//! 4. Requests and replies then alternate on the connection, one at a time. Each is a
//!    frame: a `u32` body length (at most [`MAX_FRAME`]) and the body.
//!
//! A request body is a `u8` opcode and its fields:
//!
//! | op | name    | fields                                           | OK reply fields |
//! |----|---------|--------------------------------------------------|-----------------|
//! | 1  | SET     | key string, value bytes                          | none            |
//! | 2  | GET     | timeout_ms `u64`, key string                     | value bytes     |
//! | 3  | TRY_GET | key string                                       | value bytes     |
//! | 4  | WAIT    | timeout_ms `u64`, `u32` count, count key strings | none            |
//! | 5  | ADD     | key string, delta `i64`                          | new value `i64` |
//! | 6  | DELETE  | key string                                       | none            |
//!
//! A reply body is a `u8` status and its fields:
//!
//! | status | name      | fields                                  | answers          |
//! |--------|-----------|-----------------------------------------|------------------|
//! | 0      | OK        | as in the request table                 | every request    |
//! | 1      | NOT_FOUND | none                                    | TRY_GET only     |
//! | 2      | TIMEOUT   | `u32` count, count missing key strings  | GET, WAIT        |
//! | 3      | ERROR     | message string                          | every request    |
//!
//! After an ERROR the connection stays usable, except for a frame longer than the limit,
//! whose body the server does not read: it replies ERROR and closes. A server closes a
//! connection on which no request begins within its idle timeout (`topoccl store
//! --idle-timeout`), without a message; a request waiting for keys is not idle. A write
//! that would take its job ([`super::state::job_of`]) past its quota gets an ERROR naming
//! the job, the quota and the flag that raises it.
//!
//! Waiting requests carry a duration rather than an instant because the hosts' clocks are
//! unrelated. Counters are decimal ASCII, so `get` of a counter reads e.g. `b"42"`, as in
//! every store.
//!
//! # Limits
//!
//! | limit               | value              | enforced                                         |
//! |---------------------|--------------------|--------------------------------------------------|
//! | [`MAX_KEY_LEN`]     | 4096 bytes         | by the client before sending, by the decoder     |
//! | [`MAX_VALUE_LEN`]   | 16 MiB             | by the client before sending, by the decoder     |
//! | [`MAX_FRAME`]       | 16 MiB + 4160 bytes | on the length, before a body is read            |
//! | [`MAX_WAIT_KEYS`]   | 65,536 keys        | the client splits a longer WAIT; the decoder refuses one |
//! | [`MAX_MESSAGE_LEN`] | 4096 bytes         | refusals and errors are cut to it when encoded   |
//!
//! A reply's missing keys fit in a frame because they came in a request that did.

use super::limits::{MAX_FRAME, MAX_KEY_LEN, MAX_MESSAGE_LEN, MAX_VALUE_LEN, MAX_WAIT_KEYS};
use crate::auth::{JobKey, Use, MAC_LEN, NONCE_LEN};

pub(super) const MAGIC: [u8; 8] = *b"TOPOSTOR";
/// 2: the greeting's nonce, the hello's proof, the welcome.
pub(super) const VERSION: u16 = 2;
/// Magic, version, status (an accepted greeting's nonce follows).
pub(super) const GREETING_LEN: usize = 11;
/// Magic, version, proof.
pub(super) const HELLO_LEN: usize = 10 + MAC_LEN;
/// The welcome's status byte (a refusal's string follows).
pub(super) const WELCOME_LEN: usize = 1;
/// The `u32` body length in front of every frame.
pub(super) const FRAME_HEADER_LEN: usize = 4;

pub(super) const OP_SET: u8 = 1;
pub(super) const OP_GET: u8 = 2;
pub(super) const OP_TRY_GET: u8 = 3;
pub(super) const OP_WAIT: u8 = 4;
pub(super) const OP_ADD: u8 = 5;
pub(super) const OP_DELETE: u8 = 6;

pub(super) const ST_OK: u8 = 0;
pub(super) const ST_NOT_FOUND: u8 = 1;
pub(super) const ST_TIMEOUT: u8 = 2;
pub(super) const ST_ERROR: u8 = 3;

const GREETING_ACCEPTED: u8 = 0;
const GREETING_REFUSED: u8 = 1;
/// The store speaks TLS: a TLS handshake follows, then the accepted greeting inside it.
const GREETING_TLS: u8 = 2;

/// Opcode, timeout and key count: the part of a WAIT body before its keys.
const WAIT_FIXED_LEN: usize = 1 + 8 + 4;

// ---------------------------------------------------------------------------------------
// Greeting and hello

/// The server's greeting to a connection it serves, with the connection's nonce.
pub(super) fn greeting(nonce: &[u8; NONCE_LEN]) -> [u8; GREETING_LEN + NONCE_LEN] {
    let mut g = [0u8; GREETING_LEN + NONCE_LEN];
    g[..8].copy_from_slice(&MAGIC);
    g[8..10].copy_from_slice(&VERSION.to_be_bytes());
    g[10] = GREETING_ACCEPTED;
    g[GREETING_LEN..].copy_from_slice(nonce);
    g
}

/// The fixed part of the greeting of a store that speaks TLS, sent in clear before the
/// handshake so that a client without TLS learns why at once.
pub(super) fn tls_greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(&MAGIC);
    g[8..10].copy_from_slice(&VERSION.to_be_bytes());
    g[10] = GREETING_TLS;
    g
}

/// The server's greeting to a connection it refuses: the fixed part and the reason,
/// cut to [`MAX_MESSAGE_LEN`].
pub(super) fn refusal(why: &str) -> Vec<u8> {
    let why = clip(why).as_bytes();
    let mut g = Vec::with_capacity(GREETING_LEN + 4 + why.len());
    g.extend_from_slice(&MAGIC);
    g.extend_from_slice(&VERSION.to_be_bytes());
    g.push(GREETING_REFUSED);
    g.extend_from_slice(&(why.len() as u32).to_be_bytes());
    g.extend_from_slice(why);
    g
}

/// What a client makes of the fixed part of a greeting.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Greeting {
    /// The peer is not a topoccl store.
    NotAStore,
    /// A store speaking this other protocol version.
    OtherVersion(u16),
    Accepted,
    /// The store speaks TLS: the client's TLS handshake must follow.
    Tls,
    /// Refused; a reason string follows (a `u32` length and at most
    /// [`MAX_MESSAGE_LEN`] bytes worth reading).
    Refused,
}

pub(super) fn parse_greeting(g: &[u8; GREETING_LEN]) -> Greeting {
    let version = u16::from_be_bytes([g[8], g[9]]);
    if g[..8] != MAGIC {
        Greeting::NotAStore
    } else if version != VERSION {
        Greeting::OtherVersion(version)
    } else {
        match g[10] {
            GREETING_ACCEPTED => Greeting::Accepted,
            GREETING_TLS => Greeting::Tls,
            _ => Greeting::Refused,
        }
    }
}

/// What the client's MAC covers: the server's nonce and, over TLS, the session's
/// exporter value (`binding`; empty for a plain connection), so that a proof made for one
/// TLS session cannot be forwarded into another by a man in the middle.
fn proven<'a>(nonce: &'a [u8; NONCE_LEN], binding: &'a [u8]) -> Vec<&'a [u8]> {
    if binding.is_empty() {
        vec![nonce]
    } else {
        vec![nonce, binding]
    }
}

/// The client's hello.
pub(super) fn hello(
    key: Option<&JobKey>,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8],
) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_be_bytes());
    if let Some(k) = key {
        h[10..].copy_from_slice(&k.mac(Use::StoreClient, &proven(nonce, binding)));
    }
    h
}

/// Checks a client's hello: `Ok`, or the refusal to send it.
pub(super) fn check_hello(
    h: &[u8; HELLO_LEN],
    key: Option<&JobKey>,
    nonce: &[u8; NONCE_LEN],
    binding: &[u8],
) -> Result<(), String> {
    let version = u16::from_be_bytes([h[8], h[9]]);
    if h[..8] != MAGIC || version != VERSION {
        return Err(format!(
            "this is a topoccl TCP store speaking protocol version {VERSION}; the client \
             sent another magic or version ({version}); use matching topoccl versions"
        ));
    }
    match key {
        Some(k) if !k.verify(Use::StoreClient, &proven(nonce, binding), &h[10..]) => Err(
            "this store serves only clients that prove the job's secret, and this one did \
             not: give it the same TOPOCCL_SECRET as the store"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// The server's answer to a hello: welcome, or the refusal.
pub(super) fn welcome(result: &Result<(), String>) -> Vec<u8> {
    match result {
        Ok(()) => vec![0],
        Err(why) => {
            let why = clip(why).as_bytes();
            let mut b = Vec::with_capacity(WELCOME_LEN + 4 + why.len());
            b.push(1);
            b.extend_from_slice(&(why.len() as u32).to_be_bytes());
            b.extend_from_slice(why);
            b
        }
    }
}

// ---------------------------------------------------------------------------------------
// Frames

/// The body length a frame header announces; `Err` with it when over [`MAX_FRAME`].
pub(super) fn frame_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        Err(len)
    } else {
        Ok(len)
    }
}

/// A frame under construction: 4 bytes of length, then the body.
pub(super) struct FrameBuf(Vec<u8>);

impl FrameBuf {
    pub(super) fn new(tag: u8) -> FrameBuf {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        v.push(tag);
        FrameBuf(v)
    }
    pub(super) fn u32(&mut self, x: u32) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    pub(super) fn u64(&mut self, x: u64) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    pub(super) fn i64(&mut self, x: i64) -> &mut Self {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    /// Callers keep lengths within the key/value limits, so they fit in a u32.
    pub(super) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        let len = (v.len() - FRAME_HEADER_LEN) as u32;
        v[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
        v
    }
}

/// Reads fields out of a frame body; errors say which field was bad.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Cursor<'a> {
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
    pub(super) fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    pub(super) fn i64(&mut self, what: &str) -> Result<i64, String> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(i64::from_be_bytes(a))
    }
    pub(super) fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], String> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(format!("{what} is {n} bytes, more than the limit of {max}"));
        }
        self.take(n, what)
    }
    pub(super) fn str(&mut self, max: usize, what: &str) -> Result<&'a str, String> {
        let b = self.bytes(max, what)?;
        std::str::from_utf8(b).map_err(|_| format!("{what} is not valid UTF-8"))
    }
    pub(super) fn end(&self) -> Result<(), String> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(format!("{n} unexpected bytes at the end of the frame")),
        }
    }
}

/// `msg` cut to [`MAX_MESSAGE_LEN`] at a character boundary.
pub(super) fn clip(msg: &str) -> &str {
    crate::wire::clip(msg, MAX_MESSAGE_LEN)
}

// ---------------------------------------------------------------------------------------
// Requests

/// A request, borrowing its keys and value from the caller or from the frame it was
/// decoded from.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Request<'a> {
    Set { key: &'a str, value: &'a [u8] },
    Get { timeout_ms: u64, key: &'a str },
    TryGet { key: &'a str },
    Wait { timeout_ms: u64, keys: Vec<&'a str> },
    Add { key: &'a str, delta: i64 },
    Delete { key: &'a str },
}

/// What the OK reply to a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OkFields {
    None,
    Value,
    Count,
}

impl<'a> Request<'a> {
    /// The whole frame, length included. Keys and value must be within their limits and
    /// a WAIT within [`MAX_WAIT_KEYS`] and the frame limit (see [`wait_batch_len`]).
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            Request::Set { key, value } => FrameBuf::new(OP_SET)
                .bytes(key.as_bytes())
                .bytes(value)
                .finish(),
            Request::Get { timeout_ms, key } => FrameBuf::new(OP_GET)
                .u64(*timeout_ms)
                .bytes(key.as_bytes())
                .finish(),
            Request::TryGet { key } => FrameBuf::new(OP_TRY_GET).bytes(key.as_bytes()).finish(),
            Request::Wait { timeout_ms, keys } => {
                let mut f = FrameBuf::new(OP_WAIT);
                f.u64(*timeout_ms).u32(keys.len() as u32);
                for k in keys {
                    f.bytes(k.as_bytes());
                }
                f.finish()
            }
            Request::Add { key, delta } => FrameBuf::new(OP_ADD)
                .bytes(key.as_bytes())
                .i64(*delta)
                .finish(),
            Request::Delete { key } => FrameBuf::new(OP_DELETE).bytes(key.as_bytes()).finish(),
        }
    }

    /// Decodes a request body (the frame without its length). The error names the first
    /// bad field, or the limit exceeded.
    pub(super) fn decode(body: &'a [u8]) -> Result<Request<'a>, String> {
        let mut c = Cursor::new(body);
        let req = match c.u8("opcode")? {
            OP_SET => Request::Set {
                key: c.str(MAX_KEY_LEN, "key")?,
                value: c.bytes(MAX_VALUE_LEN, "value")?,
            },
            OP_GET => Request::Get {
                timeout_ms: c.u64("timeout")?,
                key: c.str(MAX_KEY_LEN, "key")?,
            },
            OP_TRY_GET => Request::TryGet {
                key: c.str(MAX_KEY_LEN, "key")?,
            },
            OP_WAIT => {
                let timeout_ms = c.u64("timeout")?;
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
                Request::Wait { timeout_ms, keys }
            }
            OP_ADD => Request::Add {
                key: c.str(MAX_KEY_LEN, "key")?,
                delta: c.i64("delta")?,
            },
            OP_DELETE => Request::Delete {
                key: c.str(MAX_KEY_LEN, "key")?,
            },
            other => {
                return Err(format!(
                    "unknown opcode {other}; the client speaks another protocol version"
                ))
            }
        };
        c.end()?;
        Ok(req)
    }

    pub(super) fn ok_fields(&self) -> OkFields {
        match self {
            Request::Set { .. } | Request::Wait { .. } | Request::Delete { .. } => OkFields::None,
            Request::Get { .. } | Request::TryGet { .. } => OkFields::Value,
            Request::Add { .. } => OkFields::Count,
        }
    }
}

/// Encoded size of a string field.
fn field_len(s: &str) -> usize {
    4 + s.len()
}

/// How many of `keys`, from the first, one WAIT request carries: at most
/// [`MAX_WAIT_KEYS`], within [`MAX_FRAME`], and at least one while any are left (a key
/// within [`MAX_KEY_LEN`] always fits).
pub(super) fn wait_batch_len(keys: &[String]) -> usize {
    let mut n = 0;
    let mut size = WAIT_FIXED_LEN;
    while n < keys.len() && n < MAX_WAIT_KEYS && size + field_len(&keys[n]) <= MAX_FRAME {
        size += field_len(&keys[n]);
        n += 1;
    }
    n.max(keys.len().min(1))
}

// ---------------------------------------------------------------------------------------
// Replies

/// A reply. The three OK forms are the three rows of [`OkFields`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// OK with no fields.
    Done,
    /// OK with value bytes.
    Value(&'a [u8]),
    /// OK with a counter's new value.
    Count(i64),
    NotFound,
    /// The keys still missing at the deadline.
    Timeout(Vec<String>),
    Error(&'a str),
}

impl<'a> Reply<'a> {
    /// The whole frame, length included. An error message is cut to
    /// [`MAX_MESSAGE_LEN`].
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Done => FrameBuf::new(ST_OK).finish(),
            Reply::Value(v) => FrameBuf::new(ST_OK).bytes(v).finish(),
            Reply::Count(n) => FrameBuf::new(ST_OK).i64(*n).finish(),
            Reply::NotFound => FrameBuf::new(ST_NOT_FOUND).finish(),
            Reply::Timeout(missing) => {
                let mut f = FrameBuf::new(ST_TIMEOUT);
                f.u32(missing.len() as u32);
                for k in missing {
                    f.bytes(k.as_bytes());
                }
                f.finish()
            }
            Reply::Error(msg) => FrameBuf::new(ST_ERROR).bytes(clip(msg).as_bytes()).finish(),
        }
    }

    /// Decodes a reply body to a request whose OK reply carries `ok`. The error names the
    /// first bad field.
    pub(super) fn decode(body: &'a [u8], ok: OkFields) -> Result<Reply<'a>, String> {
        let mut c = Cursor::new(body);
        match c.u8("status")? {
            ST_OK => {
                let r = match ok {
                    OkFields::None => Reply::Done,
                    OkFields::Value => Reply::Value(c.bytes(MAX_VALUE_LEN, "value")?),
                    OkFields::Count => Reply::Count(c.i64("new value")?),
                };
                c.end()?;
                Ok(r)
            }
            ST_NOT_FOUND => {
                c.end()?;
                Ok(Reply::NotFound)
            }
            ST_TIMEOUT => {
                let n = c.u32("missing count")? as usize;
                let mut missing = Vec::with_capacity(n.min(MAX_WAIT_KEYS));
                for _ in 0..n {
                    missing.push(c.str(MAX_KEY_LEN, "missing key")?.to_string());
                }
                Ok(Reply::Timeout(missing))
            }
            ST_ERROR => Ok(Reply::Error(c.str(MAX_FRAME, "message")?)),
            s => Err(format!("unknown status {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a whole frame, after checking its length field.
    fn body(frame: &[u8]) -> &[u8] {
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn frame_round_trip() {
        let f = FrameBuf::new(OP_ADD).bytes(b"key").i64(-7).finish();
        let mut c = Cursor::new(body(&f));
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
    fn requests_have_the_documented_bytes() {
        let set = Request::Set {
            key: "k",
            value: b"vv",
        };
        assert_eq!(
            set.encode(),
            [
                &[0, 0, 0, 12, OP_SET, 0, 0, 0, 1, b'k', 0, 0, 0, 2][..],
                b"vv"
            ]
            .concat()
        );
        let get = Request::Get {
            timeout_ms: 0x0102,
            key: "k",
        };
        assert_eq!(
            get.encode(),
            [0, 0, 0, 14, OP_GET, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 1, b'k']
        );
        let wait = Request::Wait {
            timeout_ms: 5,
            keys: vec!["a", "bc"],
        };
        assert_eq!(
            wait.encode(),
            [
                &[0, 0, 0, 24, OP_WAIT, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2][..],
                &[0, 0, 0, 1, b'a', 0, 0, 0, 2, b'b', b'c']
            ]
            .concat()
        );
        let add = Request::Add { key: "", delta: -2 };
        assert_eq!(
            add.encode(),
            [0, 0, 0, 13, OP_ADD, 0, 0, 0, 0, 255, 255, 255, 255, 255, 255, 255, 254]
        );
    }

    #[test]
    fn every_request_round_trips() {
        let requests = [
            Request::Set {
                key: "rank/0/addr",
                value: &[0, 1, 2, 255],
            },
            Request::Get {
                timeout_ms: u64::MAX,
                key: "ключ 🔑",
            },
            Request::TryGet { key: "" },
            Request::Wait {
                timeout_ms: 0,
                keys: vec![],
            },
            Request::Wait {
                timeout_ms: 30_000,
                keys: vec!["a", "b/c", "a\0b"],
            },
            Request::Add {
                key: "n",
                delta: i64::MIN,
            },
            Request::Delete { key: "x" },
        ];
        for r in requests {
            let f = r.encode();
            assert_eq!(Request::decode(body(&f)).unwrap(), r);
        }
    }

    #[test]
    fn bad_requests_name_the_culprit() {
        let err = |f: Vec<u8>| Request::decode(&f[4..]).unwrap_err();
        assert!(err(vec![0, 0, 0, 0]).contains("opcode"));
        assert!(err(FrameBuf::new(42).finish()).contains("unknown opcode 42"));
        let long_key = vec![b'k'; MAX_KEY_LEN + 1];
        let e = err(FrameBuf::new(OP_SET).bytes(&long_key).bytes(b"v").finish());
        assert!(e.contains("key") && e.contains("limit of 4096"), "{e}");
        let e = err(FrameBuf::new(OP_SET)
            .bytes(&[0xc3, 0x28])
            .bytes(b"v")
            .finish());
        assert!(e.contains("UTF-8"), "{e}");
        let e = err(FrameBuf::new(OP_WAIT)
            .u64(0)
            .u32(MAX_WAIT_KEYS as u32 + 1)
            .finish());
        assert!(e.contains("limit of 65536"), "{e}");
        let e = err(FrameBuf::new(OP_ADD).bytes(b"k").u32(1).finish());
        assert!(e.contains("delta") && e.contains("truncated"), "{e}");
        let e = err(FrameBuf::new(OP_DELETE).bytes(b"k").u32(7).finish());
        assert!(e.contains("4 unexpected bytes"), "{e}");
        let e = err(FrameBuf::new(OP_GET).u64(1).finish());
        assert!(e.contains("key needs 4 bytes"), "{e}");
    }

    #[test]
    fn replies_round_trip_in_their_shape() {
        let cases = [
            (Reply::Done, OkFields::None),
            (Reply::Value(b"42"), OkFields::Value),
            (Reply::Value(b""), OkFields::Value),
            (Reply::Count(-1), OkFields::Count),
            (Reply::NotFound, OkFields::Value),
            (
                Reply::Timeout(vec!["a".into(), "ключ".into()]),
                OkFields::None,
            ),
            (Reply::Error("no"), OkFields::Count),
        ];
        for (r, ok) in cases {
            let f = r.encode();
            assert_eq!(Reply::decode(body(&f), ok).unwrap(), r);
        }
        assert_eq!(Reply::Done.encode(), [0, 0, 0, 1, ST_OK]);
        assert_eq!(Reply::NotFound.encode(), [0, 0, 0, 1, ST_NOT_FOUND]);
    }

    #[test]
    fn bad_replies_name_the_culprit() {
        let e = Reply::decode(&[9], OkFields::None).unwrap_err();
        assert!(e.contains("unknown status 9"), "{e}");
        // An OK reply of the wrong shape: a value where none was due, a short count.
        let f = Reply::Value(b"x").encode();
        assert!(Reply::decode(&f[4..], OkFields::None)
            .unwrap_err()
            .contains("unexpected bytes"));
        assert!(Reply::decode(&[ST_OK, 0, 0], OkFields::Count)
            .unwrap_err()
            .contains("new value"));
        let f = FrameBuf::new(ST_TIMEOUT).u32(2).bytes(b"a").finish();
        assert!(Reply::decode(&f[4..], OkFields::None)
            .unwrap_err()
            .contains("missing key"));
        assert!(Reply::decode(&[ST_NOT_FOUND, 0], OkFields::Value).is_err());
    }

    #[test]
    fn error_messages_are_clipped_at_a_character_boundary() {
        let long = "é".repeat(MAX_MESSAGE_LEN);
        let f = Reply::Error(&long).encode();
        let Reply::Error(m) = Reply::decode(&f[4..], OkFields::None).unwrap() else {
            panic!("not an error")
        };
        assert!(m.len() <= MAX_MESSAGE_LEN && m.len() >= MAX_MESSAGE_LEN - 1);
        assert!(m.chars().all(|c| c == 'é'));
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn greeting_and_hello() {
        let nonce = [5u8; NONCE_LEN];
        let g = greeting(&nonce);
        let fixed = |g: &[u8]| -> [u8; GREETING_LEN] { g[..GREETING_LEN].try_into().unwrap() };
        assert_eq!(parse_greeting(&fixed(&g)), Greeting::Accepted);
        assert_eq!(&g[GREETING_LEN..], &nonce);
        let r = refusal("full");
        assert_eq!(&r[GREETING_LEN..], &[0, 0, 0, 4, b'f', b'u', b'l', b'l']);
        assert_eq!(parse_greeting(&fixed(&r)), Greeting::Refused);
        let mut other = fixed(&g);
        other[9] = 7;
        assert_eq!(parse_greeting(&other), Greeting::OtherVersion(7));
        assert_eq!(parse_greeting(&tls_greeting()), Greeting::Tls);
        let http: [u8; GREETING_LEN] = b"HTTP/1.1 40".to_owned();
        assert_eq!(parse_greeting(&http), Greeting::NotAStore);
        assert_eq!(
            check_hello(&hello(None, &nonce, &[]), None, &nonce, &[]),
            Ok(())
        );
        let mut h = hello(None, &nonce, &[]);
        h[9] = 7;
        assert!(check_hello(&h, None, &nonce, &[])
            .unwrap_err()
            .contains("(7)"));
        h = hello(None, &nonce, &[]);
        h[0] = b'X';
        assert!(check_hello(&h, None, &nonce, &[]).is_err());
    }

    #[test]
    fn a_store_with_a_key_welcomes_only_proofs_of_it_over_this_connections_nonce() {
        let key = JobKey::from_secret(b"job");
        let nonce = [5u8; NONCE_LEN];
        assert_eq!(
            check_hello(&hello(Some(&key), &nonce, &[]), Some(&key), &nonce, &[]),
            Ok(())
        );
        // No proof, another key's, or one made for another connection's nonce.
        let other = JobKey::from_secret(b"other");
        for h in [
            hello(None, &nonce, &[]),
            hello(Some(&other), &nonce, &[]),
            hello(Some(&key), &[6; NONCE_LEN], &[]),
        ] {
            let e = check_hello(&h, Some(&key), &nonce, &[]).unwrap_err();
            assert!(e.contains("TOPOCCL_SECRET"), "{e}");
        }
        // A store without a key welcomes any proof.
        assert_eq!(
            check_hello(&hello(Some(&other), &nonce, &[]), None, &nonce, &[]),
            Ok(())
        );
        assert_eq!(welcome(&Err("no".into())), vec![1, 0, 0, 0, 2, b'n', b'o']);
        assert_eq!(welcome(&Ok(())), vec![0]);
    }

    #[test]
    fn over_tls_the_proof_is_bound_to_the_session() {
        let key = JobKey::from_secret(b"job");
        let nonce = [5u8; NONCE_LEN];
        let session = [1u8; 32];
        let h = hello(Some(&key), &nonce, &session);
        assert_eq!(check_hello(&h, Some(&key), &nonce, &session), Ok(()));
        // Forwarded into another session (a man in the middle's), or out of TLS: refused.
        assert!(check_hello(&h, Some(&key), &nonce, &[2u8; 32]).is_err());
        assert!(check_hello(&h, Some(&key), &nonce, &[]).is_err());
        let plain = hello(Some(&key), &nonce, &[]);
        assert!(check_hello(&plain, Some(&key), &nonce, &session).is_err());
    }

    #[test]
    fn frame_length_limit() {
        assert_eq!(frame_len((MAX_FRAME as u32).to_be_bytes()), Ok(MAX_FRAME));
        let over = MAX_FRAME as u32 + 1;
        assert_eq!(frame_len(over.to_be_bytes()), Err(over as usize));
    }

    #[test]
    fn wait_batches_fit_their_limits() {
        assert_eq!(wait_batch_len(&[]), 0);
        let short: Vec<String> = (0..MAX_WAIT_KEYS + 5).map(|i| i.to_string()).collect();
        assert_eq!(wait_batch_len(&short), MAX_WAIT_KEYS);
        assert_eq!(wait_batch_len(&short[MAX_WAIT_KEYS..]), 5);
        let long: Vec<String> = (0..5000).map(|_| "k".repeat(MAX_KEY_LEN)).collect();
        let n = wait_batch_len(&long);
        assert!(n > 1 && n < long.len(), "{n}");
        let keys: Vec<&str> = long[..n].iter().map(String::as_str).collect();
        let fits = Request::Wait {
            timeout_ms: 0,
            keys,
        }
        .encode();
        assert!(fits.len() - 4 <= MAX_FRAME);
        let keys: Vec<&str> = long[..=n].iter().map(String::as_str).collect();
        let over = Request::Wait {
            timeout_ms: 0,
            keys,
        }
        .encode();
        assert!(over.len() - 4 > MAX_FRAME);
    }
}

/// Every decoder of this protocol run on `bytes` as a peer could send them: a request
/// body (what the server reads), a reply body for each kind of request (what the client
/// reads), a frame header, a greeting and a hello. Never panics; a request or reply that
/// decodes encodes back to the same bytes. The fuzz target and the property test below
/// both call it.
pub(crate) fn take_any_bytes(bytes: &[u8]) {
    if let Ok(r) = Request::decode(bytes) {
        assert_eq!(r.encode()[FRAME_HEADER_LEN..], *bytes, "{r:?} re-encodes");
    }
    for ok in [OkFields::None, OkFields::Value, OkFields::Count] {
        if let Ok(r) = Reply::decode(bytes, ok) {
            let again = r.encode();
            assert_eq!(
                Reply::decode(&again[FRAME_HEADER_LEN..], ok).as_ref(),
                Ok(&r),
                "{r:?} re-encodes"
            );
        }
    }
    let _ = frame_len(prefix(bytes));
    let _ = parse_greeting(&prefix(bytes));
    let hello: [u8; HELLO_LEN] = prefix(bytes);
    let key = JobKey::from_secret(b"k");
    let _ = check_hello(&hello, Some(&key), &[0; NONCE_LEN], &[]);
    let _ = check_hello(&hello, None, &[0; NONCE_LEN], &[]);
}

/// The first `N` bytes, zero-padded.
fn prefix<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    for (x, b) in a.iter_mut().zip(bytes) {
        *x = *b;
    }
    a
}

/// The decoders of the store's network bytes against arbitrary input (the fuzzing of this
/// protocol): they never panic, and what they accept is what was encoded.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn key() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z0-9/._-]{0,40}").unwrap()
    }

    proptest! {
        #[test]
        fn decoders_take_any_bytes_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            first in 0u8..8,
        ) {
            take_any_bytes(&bytes);
            let mut body = bytes;
            if let Some(b) = body.first_mut() {
                // Often a real opcode or status, so the decoders get past the first byte.
                *b = first;
            }
            take_any_bytes(&body);
        }

        #[test]
        fn requests_round_trip(
            k in key(),
            value in proptest::collection::vec(any::<u8>(), 0..64),
            keys in proptest::collection::vec(key(), 0..8),
            timeout_ms in any::<u64>(),
            delta in any::<i64>(),
        ) {
            let requests = [
                Request::Set { key: &k, value: &value },
                Request::Get { timeout_ms, key: &k },
                Request::TryGet { key: &k },
                Request::Wait { timeout_ms, keys: keys.iter().map(String::as_str).collect() },
                Request::Add { key: &k, delta },
                Request::Delete { key: &k },
            ];
            for r in requests {
                let frame = r.encode();
                let len = frame_len(frame[..FRAME_HEADER_LEN].try_into().unwrap()).unwrap();
                prop_assert_eq!(len, frame.len() - FRAME_HEADER_LEN);
                prop_assert_eq!(Request::decode(&frame[FRAME_HEADER_LEN..]).unwrap(), r);
            }
        }

        #[test]
        fn replies_round_trip(
            value in proptest::collection::vec(any::<u8>(), 0..64),
            n in any::<i64>(),
            missing in proptest::collection::vec(key(), 0..8),
            msg in "[ -~]{0,80}",
        ) {
            let cases = [
                (Reply::Done, OkFields::None),
                (Reply::Value(&value), OkFields::Value),
                (Reply::Count(n), OkFields::Count),
                (Reply::NotFound, OkFields::Value),
                (Reply::Timeout(missing.clone()), OkFields::None),
                (Reply::Error(&msg), OkFields::Count),
            ];
            for (r, ok) in cases {
                let frame = r.encode();
                prop_assert_eq!(Reply::decode(&frame[FRAME_HEADER_LEN..], ok).unwrap(), r);
            }
        }
    }
}
