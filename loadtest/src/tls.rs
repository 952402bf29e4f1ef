//! TLS for `wss://`: rustls (the ring provider) driven over monoio sockets.
//!
//! One adapter for every mode that dials (`run`, `connect`, `idle`, through
//! [`crate::client::open`]) and for `wsload echo --tls-cert`. rustls's
//! buffered [`rustls::Connection`] does the protocol; [`TlsIo`] moves its
//! ciphertext to and from the socket with owned buffers (what io_uring
//! needs) and hands plaintext to the caller's buffer. A split connection
//! (`run` reads and writes from two tasks) shares the rustls state through a
//! `RefCell` that is only borrowed between awaits, never across one.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::io::{OwnedReadHalf, OwnedWriteHalf};
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{
    ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, HandshakeKind, NamedGroup,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

use crate::net;

/// Ciphertext read per socket read: more than a full TLS record.
const CIPHER_READ: usize = 32 * 1024;
/// TLS 1.3 tickets kept per server in the shared session store.
const TICKETS_PER_SERVER: usize = 4096;

/// How a client checks the server and which TLS it offers.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file of the CA certificates to trust (default: the system's).
    pub ca: Option<std::path::PathBuf>,
    /// No certificate verification at all (signatures are still checked).
    pub insecure: bool,
    /// Reuse sessions (TLS 1.3 tickets, TLS 1.2 tickets or IDs) through one
    /// store shared by every worker; otherwise every handshake is full.
    pub resume: bool,
    /// Offer only this version (`"1.2"` or `"1.3"`); default both.
    pub version: Option<String>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(v: Option<&str>) -> anyhow::Result<&'static [&'static SupportedProtocolVersion]> {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static V13: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static V12: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
    Ok(match v {
        None => &BOTH,
        Some("1.3") => &V13,
        Some("1.2") => &V12,
        Some(other) => bail!("unknown TLS version {other:?} (1.2 or 1.3)"),
    })
}

/// PEM certificates from `path`.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no PEM certificate in {}", path.display());
    }
    Ok(certs)
}

/// The client configuration, built once per process and shared by all
/// workers (and with it, with `resume`, one session store).
pub fn client_config(o: &ClientTls) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(o.version.as_deref())?)
        .context("TLS versions")?;
    let mut config = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(algorithms)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &o.ca {
            Some(path) => {
                for cert in load_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("a CA certificate in {}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    bail!("no system CA certificates found: give --ca FILE or --insecure");
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if o.resume {
        Resumption::store(Arc::new(SessionStore::default()))
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// The server configuration of `wsload echo --tls-cert --tls-key`: TLS 1.3
/// and 1.2, ALPN http/1.1, session tickets on.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(None)?)
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("the session ticketer")?;
    Ok(Arc::new(config))
}

/// `--insecure`: accepts any certificate, but still checks the handshake
/// signatures (a client that skips them would do less work than a real one).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The client session store of `--tls-resume`, shared by all workers. Like
/// rustls's `ClientSessionMemoryCache`, but it keeps up to
/// [`TICKETS_PER_SERVER`] TLS 1.3 tickets per server instead of 8: a TLS 1.3
/// ticket is good for one handshake, and with hundreds of handshakes under
/// way at once a small store runs dry and they fall back to full ones.
#[derive(Debug, Default)]
struct SessionStore {
    servers: Mutex<HashMap<ServerName<'static>, ServerSessions>>,
}

#[derive(Debug, Default)]
struct ServerSessions {
    kx_hint: Option<NamedGroup>,
    tls12: Option<Tls12ClientSessionValue>,
    tls13: VecDeque<Tls13ClientSessionValue>,
}

impl SessionStore {
    fn with<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut ServerSessions) -> T) -> T {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = servers.entry(name.to_owned()).or_default();
        f(entry)
    }
}

impl ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: NamedGroup) {
        self.with(&name, |s| s.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(name, |s| s.kx_hint)
    }

    fn set_tls12_session(&self, name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.with(&name, |s| s.tls12 = Some(value));
    }

    fn tls12_session(&self, name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.with(name, |s| s.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.with(name, |s| s.tls12 = None);
    }

    fn insert_tls13_ticket(&self, name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(&name, |s| {
            if s.tls13.len() >= TICKETS_PER_SERVER {
                s.tls13.pop_front();
            }
            s.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(&self, name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        // The newest: the oldest age out at the front.
        self.with(name, |s| s.tls13.pop_back())
    }
}

/// A short, fixed description of a TLS failure, for the error counts.
pub fn error_label(e: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    use rustls::Error as E;
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "connection closed during the TLS handshake",
            _ => "socket error during the TLS handshake",
        };
    };
    match tls {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "certificate not trusted: unknown issuer; give its CA with --ca, or --insecure"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "certificate not valid for the URL's host"
            }
            C::Expired | C::ExpiredContext { .. } => "certificate expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate not valid yet",
            C::BadSignature => "bad certificate signature; not signed by the --ca given?",
            C::BadEncoding => "certificate badly encoded",
            C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE)"
            }
            _ => "certificate refused",
        },
        E::AlertReceived(_) => "the server sent a TLS alert",
        E::NoApplicationProtocol => "no common ALPN protocol",
        E::PeerIncompatible(_) => "no TLS version or cipher suite in common",
        E::PeerMisbehaved(_) => "the server broke the TLS protocol",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "not TLS: does the server speak wss:// on this port?"
        }
        E::InappropriateHandshakeMessage { .. } => "unexpected TLS handshake message",
        E::DecryptError => "TLS decryption failed",
        _ => "TLS error",
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS connection over `IO` (a socket, or one half of it).
pub struct TlsIo<IO> {
    io: IO,
    conn: Rc<RefCell<Connection>>,
    /// Ciphertext to write to the socket.
    buf: Vec<u8>,
    /// Plaintext that arrived with the end of the handshake.
    pending: Vec<u8>,
}

impl<IO> std::fmt::Debug for TlsIo<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIo").finish_non_exhaustive()
    }
}

/// Moves the plaintext rustls holds to the end of `out`. `Ok(Some(n))`:
/// `n` bytes (0: the peer sent close_notify); `Ok(None)`: nothing yet.
fn take_plaintext(conn: &mut Connection, out: &mut Vec<u8>) -> io::Result<Option<usize>> {
    let mut total = 0;
    let mut reader = conn.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) => return Ok(Some(total)),
            Ok(chunk) => {
                let n = chunk.len();
                out.extend_from_slice(chunk);
                reader.consume(n);
                total += n;
            }
            Err(_) if total > 0 => return Ok(Some(total)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Feeds ciphertext to rustls, moving any plaintext to `out` as it comes
/// (so that rustls's plaintext buffer never fills up).
fn feed(conn: &mut Connection, mut cipher: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
    let mut total = 0;
    while !cipher.is_empty() {
        // 0: after close_notify rustls takes no more.
        let n = conn.read_tls(&mut cipher)?;
        conn.process_new_packets().map_err(tls_err)?;
        total += take_plaintext(conn, out)?.unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    Ok(total)
}

impl<IO> TlsIo<IO> {
    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.borrow().handshake_kind()
    }

    /// Negotiated version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub fn describe(&self) -> String {
        let c = self.conn.borrow();
        format!(
            "{} {}",
            c.protocol_version()
                .map_or("?".into(), |v| format!("{v:?}")),
            c.negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite()))
        )
    }
}

impl<IO: AsyncReadRent> TlsIo<IO> {
    /// Reads plaintext to the end of `buf` (it grows as needed): the
    /// counterpart of [`net::read_more`]. `Ok(0)`: the peer closed.
    pub async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if !self.pending.is_empty() {
            let n = self.pending.len();
            buf.append(&mut self.pending);
            self.pending = Vec::new();
            return (Ok(n), buf);
        }
        loop {
            match take_plaintext(&mut self.conn.borrow_mut(), &mut buf) {
                Ok(Some(n)) => return (Ok(n), buf),
                Ok(None) => {}
                Err(e) => return (Err(e), buf),
            }
            let cipher = match self.read_cipher().await {
                Ok(c) if c.is_empty() => return (Ok(0), buf),
                Ok(c) => c,
                Err(e) => return (Err(e), buf),
            };
            match feed(&mut self.conn.borrow_mut(), &cipher, &mut buf) {
                Ok(0) => {}
                Ok(n) => return (Ok(n), buf),
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// One socket read of ciphertext (empty: the peer closed). The buffer
    /// is not kept: an idle connection holds none.
    async fn read_cipher(&mut self) -> io::Result<Vec<u8>> {
        let (res, cipher) = net::read_more(&mut self.io, Vec::with_capacity(CIPHER_READ)).await;
        res.map(|_| cipher)
    }
}

impl<IO: AsyncWriteRent> TlsIo<IO> {
    /// Sends close_notify, as a well-behaved peer does before closing.
    pub async fn close_notify(&mut self) {
        self.conn.borrow_mut().send_close_notify();
        let _ = self.flush().await;
    }

    /// Encrypts and writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.borrow_mut().writer().write_all(data)?;
        self.flush().await
    }

    /// Writes whatever rustls has queued (records, alerts, tickets).
    pub async fn flush(&mut self) -> io::Result<()> {
        loop {
            let mut out = std::mem::take(&mut self.buf);
            out.clear();
            {
                let mut conn = self.conn.borrow_mut();
                while conn.wants_write() {
                    conn.write_tls(&mut out)?;
                }
            }
            if out.is_empty() {
                self.buf = out;
                return Ok(());
            }
            let (res, mut b) = self.io.write_all(out).await;
            if b.capacity() > 1 << 20 {
                b = Vec::new();
            }
            self.buf = b;
            res?;
        }
    }
}

impl TlsIo<TcpStream> {
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.io)
    }

    fn new(io: TcpStream, conn: Connection) -> Self {
        let conn = Rc::new(RefCell::new(conn));
        // Whole messages are encrypted at once, whatever their size.
        conn.borrow_mut().set_buffer_limit(None);
        Self {
            io,
            conn,
            buf: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Runs the handshake to its end. On a TLS error the alert rustls
    /// queued is sent before the error is returned.
    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.flush().await?;
            if !self.conn.borrow().is_handshaking() {
                return Ok(());
            }
            let cipher = self.read_cipher().await?;
            if cipher.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Application data may follow the last handshake message in
            // the same read (a client's upgrade request after its
            // Finished): it waits in `pending` for the first read.
            let res = feed(&mut self.conn.borrow_mut(), &cipher, &mut self.pending);
            if let Err(e) = res {
                let _ = self.flush().await;
                return Err(e);
            }
        }
    }

    pub fn into_split(
        self,
    ) -> (
        TlsIo<OwnedReadHalf<TcpStream>>,
        TlsIo<OwnedWriteHalf<TcpStream>>,
    ) {
        let (rd, wr) = self.io.into_split();
        (
            TlsIo {
                io: rd,
                conn: self.conn.clone(),
                buf: Vec::new(),
                pending: self.pending,
            },
            TlsIo {
                io: wr,
                conn: self.conn,
                buf: self.buf,
                pending: Vec::new(),
            },
        )
    }
}

/// Dials TLS over a connected socket: SNI `name`, then the full handshake.
pub async fn connect(
    io: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> io::Result<TlsIo<TcpStream>> {
    let conn = ClientConnection::new(config, name).map_err(tls_err)?;
    let mut s = TlsIo::new(io, Connection::Client(conn));
    s.handshake().await?;
    Ok(s)
}

/// Accepts TLS on an accepted socket.
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsIo<TcpStream>> {
    let conn = ServerConnection::new(config).map_err(tls_err)?;
    let mut s = TlsIo::new(io, Connection::Server(conn));
    s.handshake().await?;
    Ok(s)
}
