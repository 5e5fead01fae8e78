//! TCP between ranks: the listener, dialling, and the handshake of each connection.
//!
//! Each pair of ranks that exchange data over TCP gets `TOPOCCL_STREAMS` data connections
//! (lanes) and one control connection, dialled by the lower rank. The dialler sends a
//! hello (`wire::Hello`); the listener checks it ([`super::admit`]) and answers with an
//! ack, or a refusal and its reason. Established connections are polled with `mio`
//! (edge-triggered: the `readable` / `writable` flags remember readiness until an
//! operation hits `WouldBlock`).
//!
//! With `TOPOCCL_TLS` every connection is a TLS session ([`Sock::Tls`]): its handshake
//! comes first (the dialler is the TLS client), then the hello and ack inside it. The
//! hello's MAC then also covers the session's exporter value, so a hello relayed by a
//! man in the middle into a session of its own is refused as `wrong secret`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::net::TcpStream as MioStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use topoccl_plan::Rank;

use super::tls::{self, Tls, TlsIo};
use super::{admit, io_err, would_block, Conn, Hs as AnyHs, Identity, Io, Step, HELLO_TIMEOUT};
use crate::auth::{MAC_LEN, NONCE_LEN};
use crate::error::{Error, Result};
use crate::wire::{self, Hello, HELLO_LEN, HELLO_MAC_AT};

/// Kernel socket buffers: large enough to keep a loopback or LAN link busy.
const SOCKET_BUFFER: usize = 4 << 20;

/// Where a TCP connection's handshake is.
#[derive(Debug)]
pub enum Hs {
    /// Dialled; sending the hello once connected (over TLS: once the handshake is done,
    /// its MAC then bound to the session with `seal`, the acceptor's instance nonce).
    Dialing {
        hello: [u8; HELLO_LEN],
        sent: usize,
        seal: Option<[u8; NONCE_LEN]>,
    },
    /// Hello sent; reading the ack and its reason or MAC.
    AwaitAck {
        buf: Vec<u8>,
        need: usize,
        hello_mac: [u8; MAC_LEN],
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
}

/// A connection's socket: in clear, or a TLS session over it.
#[derive(Debug)]
pub enum Sock {
    Plain(MioStream),
    Tls(Box<TlsIo>),
}

impl Sock {
    /// The socket underneath.
    pub fn raw(&self) -> &MioStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Tls(t) => t.sock(),
        }
    }

    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        self.raw().shutdown(how)
    }

    /// Sends bytes a TLS session holds for the socket; `Ok(true)` when none are left.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Sock::Plain(_) => Ok(true),
            Sock::Tls(t) if t.pending() => t.send_pending(),
            Sock::Tls(_) => Ok(true),
        }
    }

    /// The TLS session's exporter value (empty in clear).
    fn binding(&self) -> io::Result<Vec<u8>> {
        match self {
            Sock::Plain(_) => Ok(Vec::new()),
            Sock::Tls(t) => Ok(t.binding()?.to_vec()),
        }
    }
}

impl std::os::fd::AsRawFd for Sock {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.raw().as_raw_fd()
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.read(buf),
            Sock::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write(buf),
            Sock::Tls(t) => t.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Plain(s) => s.write_vectored(bufs),
            Sock::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sock::Plain(s) => s.flush(),
            Sock::Tls(t) => Write::flush(&mut **t),
        }
    }
}

/// `sock` as a connection: a TLS session when `tls` is on (`client`: the dialling side).
fn wrap(sock: MioStream, tls: Option<&Tls>, client: bool) -> io::Result<Sock> {
    Ok(match tls {
        None => Sock::Plain(sock),
        Some(t) if client => Sock::Tls(Box::new(TlsIo::client(t, sock)?)),
        Some(t) => Sock::Tls(Box::new(TlsIo::server(t, sock)?)),
    })
}

/// This rank's TCP listener.
#[derive(Debug)]
pub struct Tcp {
    listener: TcpListener,
    /// TLS for every connection (`TOPOCCL_TLS`).
    tls: Option<Tls>,
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

/// Options for dialled sockets once connected (accepted ones were tuned at accept).
pub fn tune_established(sock: &MioStream) {
    let _ = sock.set_nodelay(true);
    let s = socket2::SockRef::from(sock);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
}

impl Tcp {
    /// Binds a listener on `bind` (port 0: any free port).
    pub fn bind(
        bind: SocketAddr,
        registry: &Registry,
        token: Token,
        tls: Option<Tls>,
    ) -> Result<Tcp> {
        let listener = TcpListener::bind(bind).map_err(|e| {
            Error::Config(format!(
                "cannot listen on {bind}: {e}; choose another interface with \
                 TOPOCCL_SOCKET_IFNAME"
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("listener", e))?;
        registry
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                token,
                Interest::READABLE,
            )
            .map_err(|e| io_err("register listener", e))?;
        Ok(Tcp { listener, tls })
    }

    /// This rank's TLS settings (`None`: in clear).
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| io_err("listener address", e))
    }

    /// Accepts one pending connection, if any.
    pub fn accept(&self) -> io::Result<Option<(Sock, Hs)>> {
        let sock = match self.listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        tune(&sock).and_then(|_| sock.set_nonblocking(true))?;
        let hs = Hs::Accepting {
            buf: [0; HELLO_LEN],
            got: 0,
            since: Instant::now(),
        };
        Ok(Some((
            wrap(MioStream::from_std(sock), self.tls.as_ref(), false)?,
            hs,
        )))
    }
}

/// Starts a connection to `peer` at `addr` that opens with `hello` (non-blocking; the
/// handshake continues in [`step`]); over TLS when `tls` is on, the hello's MAC then
/// sealed with `peer_nonce` and the session.
pub fn dial(
    peer: Rank,
    addr: SocketAddr,
    hello: &Hello,
    tls: Option<&Tls>,
    peer_nonce: [u8; NONCE_LEN],
) -> Result<(Sock, Hs)> {
    let failed = |e: io::Error| Error::PeerFailed {
        op: "connecting".into(),
        rank: peer,
        reason: format!("cannot connect to {addr}: {e}"),
    };
    let sock = MioStream::connect(addr).map_err(failed)?;
    let sock = wrap(sock, tls, true).map_err(failed)?;
    let hs = Hs::Dialing {
        hello: hello.encode(),
        sent: 0,
        seal: tls.map(|_| peer_nonce),
    };
    Ok((sock, hs))
}

/// Why a TLS session with `who` failed, and what to do.
fn tls_failure(sock: &Sock, who: &str, during: &str, e: &io::Error) -> String {
    match (sock, tls::rustls_error(e)) {
        (Sock::Tls(t), Some(why)) => {
            format!("TLS {during} with {who} failed: {why}; {}", t.advice())
        }
        _ => format!("{during}: {e}"),
    }
}

/// Advances one TCP handshake as far as the socket allows.
pub(super) fn step(c: &mut Conn, id: &Identity, streams: u16) -> Result<Step> {
    let peer = c.peer;
    let fail = |reason: String| Error::PeerFailed {
        op: "connecting".into(),
        rank: peer,
        reason,
    };
    let Io::Tcp(sock) = &mut c.io else {
        unreachable!("TCP handshakes run on TCP sockets")
    };
    let mut moved = false;
    let idle = |moved: bool| Ok(if moved { Step::Moved } else { Step::Pending });
    loop {
        let AnyHs::Tcp(hs) = &mut c.hs else {
            return Ok(Step::Done);
        };
        match hs {
            Hs::Dialing { hello, sent, seal } => {
                match sock.raw().take_error() {
                    Ok(Some(e)) | Err(e) => return Err(fail(format!("cannot connect: {e}"))),
                    Ok(None) => {}
                }
                if let Sock::Tls(t) = sock {
                    match t.handshake() {
                        Ok(true) => {}
                        Ok(false) => return idle(moved),
                        Err(e) if would_block(&e) => return idle(moved),
                        Err(e) => {
                            return Err(fail(tls_failure(
                                sock,
                                &format!("rank {peer}"),
                                "handshake",
                                &e,
                            )));
                        }
                    }
                }
                if let Some(nonce) = seal.take() {
                    let binding = sock
                        .binding()
                        .map_err(|e| fail(format!("no TLS exporter value: {e}")))?;
                    id.seal(hello, &nonce, &binding);
                }
                match sock.write(&hello[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(e) => return Err(fail(format!("cannot connect: {e}"))),
                }
                if *sent == HELLO_LEN {
                    *hs = Hs::AwaitAck {
                        buf: Vec::new(),
                        need: wire::ACK_FIXED_LEN,
                        hello_mac: hello[HELLO_MAC_AT..].try_into().expect("a MAC"),
                    };
                }
            }
            Hs::AwaitAck {
                buf,
                need,
                hello_mac,
            } => {
                let mut tmp = [0u8; wire::ACK_FIXED_LEN + wire::MAX_REASON_LEN];
                let want = *need - buf.len();
                match sock.read(&mut tmp[..want]) {
                    Ok(0) => {
                        return Err(fail(
                            "it closed the connection during the handshake; is it a topoccl \
                             rank of this job?"
                                .into(),
                        ))
                    }
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(e) => {
                        return Err(fail(tls_failure(
                            sock,
                            &format!("rank {peer}"),
                            "handshake",
                            &e,
                        )))
                    }
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
                    id.check_ack(peer, hello_mac, &buf[wire::ACK_FIXED_LEN..])?;
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
                if let Sock::Tls(t) = sock {
                    match t.handshake() {
                        Ok(true) => {}
                        Ok(false) => return idle(moved),
                        Err(e) if would_block(&e) => return idle(moved),
                        Err(e) => {
                            tracing::warn!(
                                "refused a connection: {}",
                                tls_failure(sock, "a connecting peer", "handshake", &e)
                            );
                            return Ok(Step::Close { refused: None });
                        }
                    }
                }
                match sock.read(&mut buf[*got..]) {
                    Ok(0) => return Ok(Step::Close { refused: None }),
                    Ok(n) => *got += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(_) => return Ok(Step::Close { refused: None }),
                }
                if *got == HELLO_LEN {
                    let binding = match sock.binding() {
                        Ok(b) => b,
                        Err(_) => return Ok(Step::Close { refused: None }),
                    };
                    let (ack, admitted) = match Hello::decode(buf) {
                        Ok(h) => match admit(id, streams, &h, &binding) {
                            Ok(()) => (wire::encode_ack(&Ok(id.ack_mac(&h.mac))), Some(h)),
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
                    *hs = Hs::Replying {
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
                match sock.write(&ack[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if would_block(&e) => return idle(moved),
                    Err(_) => return Ok(Step::Close { refused: None }),
                }
                if *sent == ack.len() {
                    return Ok(match admitted.take() {
                        Some(h) => {
                            c.peer = h.rank;
                            c.purpose = h.purpose;
                            c.lane = h.stream;
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
