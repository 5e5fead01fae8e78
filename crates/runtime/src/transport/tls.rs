//! Optional TLS 1.3 for the store's connections and for data connections between ranks on
//! different hosts (`TOPOCCL_TLS`, off by default): rustls on the `ring` provider.
//!
//! Two ways to get certificates ([`Tls::from_lookup`] reads the settings):
//!
//! | settings                                                        | certificates                         | who is authentic                                                    |
//! |-----------------------------------------------------------------|--------------------------------------|---------------------------------------------------------------------|
//! | `TOPOCCL_TLS=1` alone                                           | ephemeral: self-signed, per process  | whoever proves the job's secret over this very session (below)    |
//! | `TOPOCCL_TLS=1`, `TOPOCCL_TLS_CERT`, `TOPOCCL_TLS_KEY`, `TOPOCCL_TLS_CA` (PEM) | the files; both ends present theirs | a certificate signed by the CA, **and** the job's secret as above |
//!
//! Names in certificates are not checked (ranks dial addresses, not names): the CA should
//! be the job's own, not a public one.
//!
//! **Binding to the job's secret.** Both ends of a session derive the same
//! [`EXPORTER_LEN`]-byte value from it (RFC 8446's exporter, label [`EXPORTER_LABEL`]);
//! a man in the middle holds two sessions with two different values. The store client's
//! hello and the ranks' hellos put that value into their MACs (`crate::auth`), so a MITM
//! without the secret cannot forward a proof made for the other session: with ephemeral
//! certificates that is what authenticates the peer; with a CA it is a second lock.
//!
//! No session tickets are issued: nothing unasked-for ever arrives on a connection (the
//! store client's check for a closed connection relies on it), and every session is a
//! full handshake.
//!
//! [`Stream`] is a blocking connection, plain or TLS, for the store; [`handshake`] runs a
//! session's handshake under one deadline. [`TlsIo`] is a non-blocking session for the
//! connections between ranks (`super::tcp`).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, ConnectionCommon, DigitallySignedStruct,
    RootCertStore, ServerConfig, ServerConnection, SideData, SignatureScheme, StreamOwned,
};
use thiserror::Error;

/// Turns TLS on (`1`, `on`, `true`) or off (`0`, `off`, `false`, unset).
pub const TLS_VAR: &str = "TOPOCCL_TLS";
/// This process's certificate chain (PEM), with [`KEY_VAR`] and [`CA_VAR`].
pub const CERT_VAR: &str = "TOPOCCL_TLS_CERT";
/// This process's private key (PEM: PKCS#8, PKCS#1 or SEC1).
pub const KEY_VAR: &str = "TOPOCCL_TLS_KEY";
/// The CA certificates (PEM) that must have signed every peer's certificate.
pub const CA_VAR: &str = "TOPOCCL_TLS_CA";
/// Bytes of the exporter value bound into the hellos' MACs.
pub const EXPORTER_LEN: usize = 32;
/// The exporter's label (RFC 8446 section 7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-topoccl job secret binding";
/// The name a client asks for; certificates' names are not checked.
const SERVER_NAME: &str = "topoccl";

/// Why TLS cannot be set up; each names the variable, the file and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    #[error(
        "{TLS_VAR}='{value}' is not a switch: use 1, on or true (TLS on the store and on data \
         connections between hosts), or 0, off or false"
    )]
    Switch { value: String },
    #[error(
        "{given} is set but {missing} is not: certificate files need all three of \
         {CERT_VAR}, {KEY_VAR} and {CA_VAR} (PEM), or none of them for ephemeral \
         certificates authenticated by the job's secret"
    )]
    Incomplete {
        given: &'static str,
        missing: &'static str,
    },
    #[error("{var} is set but {TLS_VAR} is not on: set {TLS_VAR}=1 to use TLS, or unset {var}")]
    FilesWithoutTls { var: &'static str },
    #[error("{var}={}: cannot read it: {reason}; check the path and its permissions", .path.display())]
    Unreadable {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{var}={}: {reason}", .path.display())]
    Invalid {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// A process's TLS settings: the rustls configurations for both ends of a session.
#[derive(Clone)]
pub struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// The CA file, when certificates come from files (for error messages).
    ca: Option<PathBuf>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// The `ring` provider: it builds without system libraries (aws-lc-rs needs cmake and a
/// C toolchain's extras). rustls marks it deprecated for lacking post-quantum key
/// exchange; a job's sessions live for hours, and X25519 is what protects them.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn setup(what: &str) -> impl Fn(rustls::Error) -> TlsError + '_ {
    move |e| TlsError::Setup(format!("{what}: {e}"))
}

impl Tls {
    /// Settings from the environment; `Ok(None)`: TLS is off.
    pub fn from_env() -> Result<Option<Tls>, TlsError> {
        Self::from_lookup(&|k| std::env::var(k).ok())
    }

    /// This process's settings from its environment, read and built once (an ephemeral
    /// certificate is made once per process); every later call gets the same answer.
    pub fn process() -> Result<Option<Tls>, TlsError> {
        static PROCESS: OnceLock<Result<Option<Tls>, TlsError>> = OnceLock::new();
        PROCESS.get_or_init(Self::from_env).clone()
    }

    /// Settings from `lookup` (the environment's variables): [`TLS_VAR`] off or unset is
    /// `Ok(None)`; on, with all three files or none of them, `Ok(Some)`.
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Option<Tls>, TlsError> {
        let files = [CERT_VAR, KEY_VAR, CA_VAR].map(|v| (v, lookup(v).filter(|s| !s.is_empty())));
        let on = match lookup(TLS_VAR).as_deref().map(str::trim) {
            None | Some("" | "0" | "off" | "false") => false,
            Some("1" | "on" | "true") => true,
            Some(other) => {
                return Err(TlsError::Switch {
                    value: other.to_string(),
                })
            }
        };
        if !on {
            return match files.iter().find(|(_, v)| v.is_some()) {
                Some((var, _)) => Err(TlsError::FilesWithoutTls { var }),
                None => Ok(None),
            };
        }
        match files {
            [(_, None), (_, None), (_, None)] => Self::ephemeral().map(Some),
            [(_, Some(cert)), (_, Some(key)), (_, Some(ca))] => {
                Self::from_files(Path::new(&cert), Path::new(&key), Path::new(&ca)).map(Some)
            }
            _ => {
                let given = files.iter().find(|(_, v)| v.is_some());
                let missing = files.iter().find(|(_, v)| v.is_none());
                match (given, missing) {
                    (Some((given, _)), Some((missing, _))) => {
                        Err(TlsError::Incomplete { given, missing })
                    }
                    _ => Err(TlsError::Setup("inconsistent certificate settings".into())),
                }
            }
        }
    }

    /// Ephemeral settings: a fresh self-signed certificate; peers are accepted whatever
    /// their certificate, and authenticated by the job's secret bound to the session.
    pub fn ephemeral() -> Result<Tls, TlsError> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| TlsError::Setup(format!("making an ephemeral certificate: {e}")))?;
        let chain = vec![made.cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
        let provider = provider();
        let any = Arc::new(AnyCertificate(provider.clone()));
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("the client configuration"))?
            .dangerous()
            .with_custom_certificate_verifier(any)
            .with_no_client_auth();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("the server configuration"))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(setup("the ephemeral certificate"))?;
        server.send_tls13_tickets = 0;
        Ok(Tls {
            client: Arc::new(client),
            server: Arc::new(server),
            ca: None,
        })
    }

    /// Settings from PEM files: this process's chain and key, and the CA that must have
    /// signed every peer's certificate (both ends present theirs).
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Tls, TlsError> {
        let chain = read_certs(CERT_VAR, cert)?;
        let roots = {
            let mut roots = RootCertStore::empty();
            for c in read_certs(CA_VAR, ca)? {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    var: CA_VAR,
                    path: ca.to_path_buf(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            Arc::new(roots)
        };
        let private = read_key(key)?;
        let provider = provider();
        let invalid_pair = |e: rustls::Error| TlsError::Invalid {
            var: KEY_VAR,
            path: key.to_path_buf(),
            reason: format!(
                "does not go with the certificate in {CERT_VAR}={} ({e}); give the key the \
                 certificate was made for",
                cert.display()
            ),
        };
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| TlsError::Setup(format!("verifying peers with {CA_VAR}: {e}")))?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Setup(format!("verifying peers with {CA_VAR}: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("the client configuration"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignedByCa(server_verifier)))
            .with_client_auth_cert(chain.clone(), private.clone_key())
            .map_err(invalid_pair)?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(setup("the server configuration"))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain, private)
            .map_err(invalid_pair)?;
        server.send_tls13_tickets = 0;
        Ok(Tls {
            client: Arc::new(client),
            server: Arc::new(server),
            ca: Some(ca.to_path_buf()),
        })
    }

    /// Whether peers' certificates are checked against a CA (files), rather than
    /// ephemeral.
    pub fn verified_by_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// A new server-side session.
    pub(crate) fn server_session(&self) -> io::Result<ServerConnection> {
        ServerConnection::new(self.server.clone()).map_err(io::Error::other)
    }

    /// A new client-side session.
    pub(crate) fn client_session(&self) -> io::Result<ClientConnection> {
        let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
        ClientConnection::new(self.client.clone(), name).map_err(io::Error::other)
    }

    /// Accepts a TLS session on `sock`, the handshake finished by `deadline`.
    pub(crate) fn accept(&self, mut sock: TcpStream, deadline: Instant) -> io::Result<Stream> {
        let mut conn = self.server_session()?;
        handshake(&mut conn, &mut sock, deadline)?;
        Ok(Stream::Server(Box::new(StreamOwned::new(conn, sock))))
    }

    /// Opens a TLS session on `sock`, the handshake finished by `deadline`.
    pub(crate) fn connect(&self, mut sock: TcpStream, deadline: Instant) -> io::Result<Stream> {
        let mut conn = self.client_session()?;
        handshake(&mut conn, &mut sock, deadline)?;
        Ok(Stream::Client(Box::new(StreamOwned::new(conn, sock))))
    }

    /// What to tell the user when a peer's certificate or ours was refused.
    pub(crate) fn advice(&self) -> String {
        match &self.ca {
            Some(ca) => format!(
                "every party's certificate ({CERT_VAR}) must be signed by a CA in the \
                 others' {CA_VAR} (here {})",
                ca.display()
            ),
            None => format!(
                "this process uses ephemeral certificates; the peer may use certificate files: \
                 give every party the same {TLS_VAR}, {CERT_VAR}, {KEY_VAR} and {CA_VAR}"
            ),
        }
    }
}

fn read_file(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Unreadable {
        var,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_certs(var: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(var, path)?;
    let invalid = |reason: String| TlsError::Invalid {
        var,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no certificate (expected PEM blocks '-----BEGIN CERTIFICATE-----')".into(),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(KEY_VAR, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        var: KEY_VAR,
        path: path.to_path_buf(),
        reason: format!(
            "holds no usable private key ({e}); expected a PEM block 'PRIVATE KEY', 'RSA \
             PRIVATE KEY' or 'EC PRIVATE KEY'"
        ),
    })
}

/// Accepts any certificate (ephemeral mode: the job's secret authenticates), checking
/// only that the peer holds its key (the handshake's signature).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate signed by the CA, whatever names it holds.
#[derive(Debug)]
struct SignedByCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for SignedByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name: a name mismatch means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Runs `conn`'s handshake over the blocking `sock` until done or `deadline` (an error of
/// kind `TimedOut`); a refused handshake sends its alert and fails with the rustls error
/// inside (see [`rustls_error`]).
pub(crate) fn handshake<C, S>(
    conn: &mut C,
    sock: &mut TcpStream,
    deadline: Instant,
) -> io::Result<()>
where
    C: DerefMut + Deref<Target = ConnectionCommon<S>>,
    S: SideData,
{
    let time_left = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the TLS handshake did not finish in time",
            ))
        } else {
            Ok(left)
        }
    };
    loop {
        while conn.wants_write() {
            sock.set_write_timeout(Some(time_left()?))?;
            conn.write_tls(sock)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        sock.set_read_timeout(Some(time_left()?))?;
        if conn.read_tls(sock)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            ));
        }
        if let Err(e) = conn.process_new_packets() {
            // Send the alert that says why, then fail.
            while conn.wants_write() && conn.write_tls(sock).is_ok() {}
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// The rustls error inside an I/O error, if that is what it is.
pub(crate) fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Whether `e` is a TLS refusal (bad certificate, alert, protocol) rather than a network
/// failure: worth reporting, not worth retrying.
pub(crate) fn is_refusal(e: &io::Error) -> bool {
    rustls_error(e).is_some()
}

/// The session's exporter value (both ends of one session get the same).
pub(crate) fn exporter<S: SideData>(conn: &ConnectionCommon<S>) -> io::Result<[u8; EXPORTER_LEN]> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map_err(io::Error::other)
}

/// A blocking connection, plain or TLS. Timeouts are set on [`Stream::tcp`].
pub(crate) enum Stream {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Server(s) => s.get_ref(),
            Stream::Client(s) => s.get_ref(),
        }
    }

    /// The TLS session's exporter value; empty for a plain connection.
    pub(crate) fn binding(&self) -> io::Result<Vec<u8>> {
        Ok(match self {
            Stream::Plain(_) => Vec::new(),
            Stream::Server(s) => exporter(&s.conn)?.to_vec(),
            Stream::Client(s) => exporter(&s.conn)?.to_vec(),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Server(s) => s.read(buf),
            Stream::Client(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    /// Writes and, for TLS, sends the records at once (the store's requests and replies
    /// are whole messages).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Server(s) => {
                let n = s.write(buf)?;
                s.flush()?;
                Ok(n)
            }
            Stream::Client(s) => {
                let n = s.write(buf)?;
                s.flush()?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Server(s) => s.flush(),
            Stream::Client(s) => s.flush(),
        }
    }
}

/// A non-blocking TLS session over a `mio` socket, for data and control connections
/// between ranks. Reads return `WouldBlock` only when no decrypted byte is left and the
/// socket has none either (as a plain socket would, so edge-triggered polling still
/// works). Writes take new bytes only when every earlier record has left: bytes that
/// the socket could not take wait in the session, and the transport's wait loop
/// sends them ([`TlsIo::send_pending`]) when the socket becomes writable again.
pub struct TlsIo {
    sock: mio::net::TcpStream,
    conn: rustls::Connection,
    /// The settings, for error messages.
    tls: Tls,
}

impl fmt::Debug for TlsIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIo")
            .field("sock", &self.sock)
            .field("handshaking", &self.conn.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsIo {
    /// The dialling side of a session on `sock`.
    pub(crate) fn client(tls: &Tls, sock: mio::net::TcpStream) -> io::Result<TlsIo> {
        Ok(TlsIo {
            sock,
            conn: tls.client_session()?.into(),
            tls: tls.clone(),
        })
    }

    /// The accepting side of a session on `sock`.
    pub(crate) fn server(tls: &Tls, sock: mio::net::TcpStream) -> io::Result<TlsIo> {
        Ok(TlsIo {
            sock,
            conn: tls.server_session()?.into(),
            tls: tls.clone(),
        })
    }

    /// The socket underneath.
    pub(crate) fn sock(&self) -> &mio::net::TcpStream {
        &self.sock
    }

    /// What to tell the user when a certificate was refused.
    pub(crate) fn advice(&self) -> String {
        self.tls.advice()
    }

    /// Sends what the session holds, as far as the socket takes it; `Ok(true)` when
    /// nothing is left.
    pub(crate) fn send_pending(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether bytes wait in the session for the socket.
    pub(crate) fn pending(&self) -> bool {
        self.conn.wants_write()
    }

    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert that says why, then fail.
            let _ = self.send_pending();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        Ok(())
    }

    /// Advances the handshake as far as the socket allows; `Ok(true)` once it is done.
    /// A refused certificate is an error holding the rustls error ([`rustls_error`]).
    pub(crate) fn handshake(&mut self) -> io::Result<bool> {
        loop {
            self.send_pending()?;
            if !self.conn.is_handshaking() {
                return Ok(true);
            }
            if !self.conn.wants_read() {
                return Ok(false);
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ))
                }
                Ok(_) => self.process()?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The session's exporter value (the handshake must be done).
    pub(crate) fn binding(&self) -> io::Result<[u8; EXPORTER_LEN]> {
        match &self.conn {
            rustls::Connection::Client(c) => exporter(c),
            rustls::Connection::Server(c) => exporter(c),
        }
    }
}

impl Read for TlsIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    self.process()?;
                    self.send_pending()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        if !self.send_pending()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write_vectored(bufs)?;
        self.send_pending()?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.send_pending()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Certificates made for tests: a CA and leaves signed by it, written as PEM files.
#[cfg(test)]
pub(crate) mod pki {
    use std::path::{Path, PathBuf};

    use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair};

    /// A CA that signs leaves.
    pub(crate) struct Ca {
        cert: Certificate,
        key: KeyPair,
        pub(crate) pem: PathBuf,
    }

    impl Ca {
        pub(crate) fn new(dir: &Path, name: &str) -> Ca {
            let mut params = CertificateParams::new(vec![]).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("CA certificate");
            let pem = dir.join(format!("{name}-ca.pem"));
            std::fs::write(&pem, cert.pem()).expect("write CA");
            Ca { cert, key, pem }
        }

        /// A leaf signed by this CA: its certificate and key files.
        pub(crate) fn leaf(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().expect("leaf key");
            let cert = CertificateParams::new(vec![name.to_string()])
                .expect("leaf params")
                .signed_by(&key, &self.cert, &self.key)
                .expect("leaf certificate");
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}-key.pem")),
            );
            std::fs::write(&c, cert.pem()).expect("write leaf");
            std::fs::write(&k, key.serialize_pem()).expect("write key");
            (c, k)
        }
    }

    /// A fresh directory under the system's temporary one.
    pub(crate) fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("topoccl-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch directory");
        d
    }
}

#[cfg(test)]
mod tests {
    use super::pki::{scratch, Ca};
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        match Tls::from_lookup(&lookup(pairs)) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("accepted {pairs:?}: {t:?}"),
        }
    }

    #[test]
    fn off_unless_switched_on() {
        for pairs in [
            &[][..],
            &[(TLS_VAR, "0")],
            &[(TLS_VAR, "off")],
            &[(TLS_VAR, "")],
        ] {
            assert!(
                Tls::from_lookup(&lookup(pairs)).unwrap().is_none(),
                "{pairs:?}"
            );
        }
        for on in ["1", "on", "true", " 1 "] {
            let t = Tls::from_lookup(&lookup(&[(TLS_VAR, on)]))
                .unwrap()
                .unwrap();
            assert!(!t.verified_by_ca(), "ephemeral for {on}");
        }
    }

    #[test]
    fn bad_settings_name_the_variable_and_the_way_out() {
        let e = err(&[(TLS_VAR, "yes please")]);
        assert!(
            e.contains("TOPOCCL_TLS='yes please'") && e.contains("1, on or true"),
            "{e}"
        );
        let e = err(&[(TLS_VAR, "1"), (CERT_VAR, "/c.pem")]);
        assert!(
            e.contains("TOPOCCL_TLS_CERT is set but TOPOCCL_TLS_KEY"),
            "{e}"
        );
        let e = err(&[(CA_VAR, "/ca.pem")]);
        assert!(
            e.contains("TOPOCCL_TLS_CA is set but TOPOCCL_TLS is not on"),
            "{e}"
        );
        let d = scratch("bad");
        let missing = d.join("nope.pem");
        let m = missing.to_str().unwrap();
        let e = err(&[(TLS_VAR, "1"), (CERT_VAR, m), (KEY_VAR, m), (CA_VAR, m)]);
        assert!(
            e.contains(&format!("TOPOCCL_TLS_CERT={m}: cannot read it")),
            "{e}"
        );
        let junk = d.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let j = junk.to_str().unwrap();
        let e = err(&[(TLS_VAR, "1"), (CERT_VAR, j), (KEY_VAR, j), (CA_VAR, j)]);
        assert!(
            e.contains(&format!("TOPOCCL_TLS_CERT={j}: holds no certificate")),
            "{e}"
        );
        // A certificate where the key should be, and a key that is not the certificate's.
        let ca = Ca::new(&d, "a");
        let (cert, key) = ca.leaf(&d, "node");
        let (_, other_key) = ca.leaf(&d, "other");
        let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let e = err(&[
            (TLS_VAR, "1"),
            (CERT_VAR, &s(&cert)),
            (KEY_VAR, &s(&cert)),
            (CA_VAR, &s(&ca.pem)),
        ]);
        assert!(
            e.contains("TOPOCCL_TLS_KEY=") && e.contains("no usable private key"),
            "{e}"
        );
        let e = err(&[
            (TLS_VAR, "1"),
            (CERT_VAR, &s(&cert)),
            (KEY_VAR, &s(&other_key)),
            (CA_VAR, &s(&ca.pem)),
        ]);
        assert!(e.contains("does not go with the certificate"), "{e}");
        let t = Tls::from_lookup(&lookup(&[
            (TLS_VAR, "1"),
            (CERT_VAR, &s(&cert)),
            (KEY_VAR, &s(&key)),
            (CA_VAR, &s(&ca.pem)),
        ]))
        .unwrap()
        .unwrap();
        assert!(t.verified_by_ca());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Two non-blocking sessions over a real socket pair: the handshake advances only as
    /// bytes arrive, both ends get the same exporter value, and 8 MiB each way arrive
    /// intact although the sockets fill up: records left in a session go out when it
    /// is flushed, and reads say `WouldBlock` only when nothing is left to decrypt.
    #[test]
    fn non_blocking_sessions_carry_every_byte_both_ways() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dialled = mio::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let accepted = mio::net::TcpStream::from_std(accepted);
        let (a, b) = (Tls::ephemeral().unwrap(), Tls::ephemeral().unwrap());
        let mut client = TlsIo::client(&a, dialled).unwrap();
        let mut server = TlsIo::server(&b, accepted).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut done = (false, false);
        while !(done.0 && done.1) {
            assert!(Instant::now() < deadline, "handshake stuck");
            let step = |r: io::Result<bool>| match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                r => r.unwrap(),
            };
            done.0 = step(client.handshake());
            done.1 = step(server.handshake());
        }
        assert_eq!(client.binding().unwrap(), server.binding().unwrap());

        const N: usize = 8 << 20;
        let data: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
        // sent[i]: what end i wrote; got[i]: what end i read (the other's bytes).
        let (mut sent, mut got) = ([0usize; 2], [Vec::new(), Vec::new()]);
        let mut buf = vec![0u8; 100_000];
        while got[0].len() < N || got[1].len() < N {
            assert!(Instant::now() < deadline, "transfer stuck: {sent:?}");
            for (i, io) in [&mut client, &mut server].into_iter().enumerate() {
                if sent[i] < N {
                    match io.write(&data[sent[i]..(sent[i] + 300_000).min(N)]) {
                        Ok(n) => sent[i] += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("write: {e}"),
                    }
                } else {
                    // What the session still holds must leave without another write.
                    let _ = io.send_pending();
                }
                loop {
                    match io.read(&mut buf) {
                        Ok(0) => panic!("closed"),
                        Ok(n) => got[i].extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
        }
        assert!(got[0] == data && got[1] == data, "bytes differ");
        assert!(!client.pending() && !server.pending());
    }
}
