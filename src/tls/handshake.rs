//! The TLS handshake, driven by rustls's unbuffered API over two growable
//! buffers: [`advance`] is sans-IO (ciphertext in, ciphertext to send out),
//! [`accept`] and [`connect`] run it over a [`Transport`].
//!
//! The handshake may allocate (certificates, rustls's state); what stays
//! once it is over is the record layer's keys ([`TlsConn`]). Application
//! data that arrived with the handshake's last flight (a client's HTTP
//! request often shares a packet with its Finished) is handed back as
//! plaintext; a record cut short after it is handed back as ciphertext.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};

use super::conn::{Kernel, TlsConn};
use super::record::{Records, Version};
use crate::transport::{self, Transport};

/// The most handshake bytes buffered from the peer (a client certificate
/// chain included); more is an error.
const MAX_INCOMING: usize = 64 << 10;
/// The most application data accepted before the handshake's end is seen.
const MAX_EARLY: usize = 64 << 10;

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The socket failed or closed.
    Io(io::ErrorKind),
    /// The peer closed before the handshake was over.
    Closed,
    /// rustls refused the peer (the alert went out when possible).
    Tls(rustls::Error),
    /// The peer sent more than a handshake needs.
    TooLarge,
    /// The negotiated suite cannot be handed to the record layer.
    Unsupported,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(k) => write!(f, "TLS handshake: {}", io::Error::from(*k)),
            HandshakeError::Closed => f.write_str("closed during the TLS handshake"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::TooLarge => f.write_str("TLS handshake larger than 64 KiB"),
            HandshakeError::Unsupported => f.write_str("TLS suite not supported"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What the handshake established, for logs, headers and metrics.
#[derive(Debug, Clone, Default)]
pub struct Established {
    /// TLS 1.2 or 1.3.
    pub version: Option<Version>,
    /// The session was resumed.
    pub resumed: bool,
    /// The peer's certificate chain (DER), end entity first, when it sent
    /// one and it was verified.
    pub peer_certs: Vec<Vec<u8>>,
}

/// A finished handshake.
#[derive(Debug)]
pub struct Done {
    /// The connection's record layer.
    pub conn: TlsConn,
    /// What was established.
    pub info: Established,
    /// Application data that came with the handshake.
    pub early: Vec<u8>,
    /// The start of the next record, if one was cut short.
    pub leftover: Vec<u8>,
}

/// Either side of rustls's unbuffered connection.
pub trait Side {
    /// rustls's per-side data.
    type Data;
    /// wsedge is the server.
    const SERVER: bool;
    /// Processes what is in `incoming`.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    /// The state for logs.
    fn common(&self) -> &CommonState;
    /// Hands the keys over to the record layer.
    fn finish(self) -> Result<TlsConn, HandshakeError>;
}

fn records(
    version: Option<rustls::ProtocolVersion>,
    s: rustls::ExtractedSecrets,
) -> Result<Records, HandshakeError> {
    let version = match version {
        Some(rustls::ProtocolVersion::TLSv1_3) => Version::Tls13,
        Some(rustls::ProtocolVersion::TLSv1_2) => Version::Tls12,
        _ => return Err(HandshakeError::Unsupported),
    };
    Records::new(version, s.tx, s.rx).ok_or(HandshakeError::Unsupported)
}

/// The two sides differ only in their types and in which [`Kernel`]
/// variant holds rustls's state.
macro_rules! side {
    ($conn:ty, $data:ty, $kernel:path, $server:expr) => {
        impl Side for $conn {
            type Data = $data;
            const SERVER: bool = $server;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn common(&self) -> &CommonState {
                self
            }
            fn finish(self) -> Result<TlsConn, HandshakeError> {
                let version = self.protocol_version();
                let (secrets, kernel) = self
                    .dangerous_into_kernel_connection()
                    .map_err(HandshakeError::Tls)?;
                Ok(TlsConn::new(records(version, secrets)?, $kernel(kernel)))
            }
        }
    };
}

side!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData,
    Kernel::Server,
    true
);
side!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData,
    Kernel::Client,
    false
);

/// Where a handshake stands after [`advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send `outgoing`, then read more into `incoming`.
    Read,
    /// Send `outgoing`; the handshake is over.
    Done,
}

/// Runs the handshake as far as `incoming` allows. Handshake records to
/// send are appended to `outgoing` (also on error: the alert), application
/// data that came early to `early`; what was processed is removed from
/// `incoming`.
pub fn advance<S: Side>(
    conn: &mut S,
    incoming: &mut Vec<u8>,
    outgoing: &mut Vec<u8>,
    early: &mut Vec<u8>,
) -> Result<Step, HandshakeError> {
    enum Next {
        Again,
        Stop(Step),
        Fail(HandshakeError),
    }
    loop {
        let UnbufferedStatus { discard, state } = conn.process(incoming);
        let next = match state {
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut next = Next::Again;
                while let Some(rec) = r.next_record() {
                    match rec {
                        Ok(rec) if early.len() + rec.payload.len() <= MAX_EARLY => {
                            early.extend_from_slice(rec.payload)
                        }
                        Ok(_) => next = Next::Fail(HandshakeError::TooLarge),
                        Err(e) => next = Next::Fail(HandshakeError::Tls(e)),
                    }
                }
                next
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                let at = outgoing.len();
                outgoing.resize(at + 4096, 0);
                match e.encode(&mut outgoing[at..]) {
                    Ok(n) => {
                        outgoing.truncate(at + n);
                        Next::Again
                    }
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.resize(at + s.required_size, 0);
                        match e.encode(&mut outgoing[at..]) {
                            Ok(n) => {
                                outgoing.truncate(at + n);
                                Next::Again
                            }
                            Err(_) => Next::Fail(HandshakeError::Unsupported),
                        }
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        outgoing.truncate(at);
                        Next::Again
                    }
                }
            }
            // The caller sends `outgoing` before reading again: in order.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                Next::Again
            }
            Ok(ConnectionState::BlockedHandshake) => Next::Stop(Step::Read),
            Ok(ConnectionState::WriteTraffic(_)) => Next::Stop(Step::Done),
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                Next::Fail(HandshakeError::Closed)
            }
            Ok(_) => Next::Fail(HandshakeError::Unsupported),
            Err(e) => Next::Fail(HandshakeError::Tls(e)),
        };
        incoming.drain(..discard);
        match next {
            Next::Again => {}
            Next::Stop(step) => return Ok(step),
            Next::Fail(e) => {
                // rustls queued an alert describing the error: encode it.
                if let Ok(ConnectionState::EncodeTlsData(mut enc)) = conn.process(incoming).state {
                    let at = outgoing.len();
                    outgoing.resize(at + 512, 0);
                    let n = enc.encode(&mut outgoing[at..]).unwrap_or(0);
                    outgoing.truncate(at + n);
                }
                return Err(e);
            }
        }
    }
}

/// Runs a handshake over `io` (the caller bounds it in time).
pub async fn drive<S: Side, T: Transport>(
    io: &mut T,
    mut conn: S,
    mut incoming: Vec<u8>,
) -> Result<Done, HandshakeError> {
    let mut outgoing = Vec::new();
    let mut early = Vec::new();
    loop {
        let step = advance(&mut conn, &mut incoming, &mut outgoing, &mut early);
        // A TLS 1.3 server's last flight is only its session tickets (its
        // Finished went out before the client's): they wait for the first
        // data written (the 101), saving a send per handshake. Anything
        // else is sent now: the peer waits for it.
        if matches!(step, Ok(Step::Done))
            && S::SERVER
            && conn.common().protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
        {
            break;
        }
        if !outgoing.is_empty() {
            let sent = transport::write_all(io, &outgoing).await;
            outgoing.clear();
            if let Err(e) = sent {
                return Err(step.err().unwrap_or(HandshakeError::Io(e.kind())));
            }
        }
        match step? {
            Step::Done => break,
            Step::Read => {
                if incoming.len() >= MAX_INCOMING {
                    return Err(HandshakeError::TooLarge);
                }
                let at = incoming.len();
                incoming.resize(at + 4096, 0);
                let n = transport::read(io, &mut incoming[at..])
                    .await
                    .map_err(|e| HandshakeError::Io(e.kind()))?;
                incoming.truncate(at + n);
                if n == 0 {
                    return Err(HandshakeError::Closed);
                }
            }
        }
    }
    let common = conn.common();
    let info = Established {
        version: match common.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some(Version::Tls13),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some(Version::Tls12),
            _ => None,
        },
        resumed: common.handshake_kind() == Some(HandshakeKind::Resumed),
        peer_certs: common
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default(),
    };
    let mut tls = conn.finish()?;
    if !outgoing.is_empty() {
        tls.owe_first(outgoing);
    }
    Ok(Done {
        conn: tls,
        info,
        early,
        leftover: incoming,
    })
}

/// Accepts a TLS client on `io`.
pub async fn accept<T: Transport>(
    io: &mut T,
    config: Arc<ServerConfig>,
) -> Result<Done, HandshakeError> {
    accept_after(io, config, Vec::with_capacity(1024)).await
}

/// [`accept`] when the first bytes of the handshake were read already
/// (after a PROXY protocol header).
pub async fn accept_after<T: Transport>(
    io: &mut T,
    config: Arc<ServerConfig>,
    read: Vec<u8>,
) -> Result<Done, HandshakeError> {
    let conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::Tls)?;
    drive(io, conn, read).await
}

/// Opens TLS to a server on `io`, asking for `name`.
pub async fn connect<T: Transport>(
    io: &mut T,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Done, HandshakeError> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(HandshakeError::Tls)?;
    drive(io, conn, Vec::with_capacity(1024)).await
}
