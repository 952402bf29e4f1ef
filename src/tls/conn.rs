//! One TLS connection after its handshake, sans-IO: ciphertext in, the
//! plaintext left in the same buffer; plaintext in, records out.
//!
//! Besides application data, what a peer may send after the handshake is
//! handled here: alerts (close_notify ends the stream; a fatal alert is an
//! error), a TLS 1.3 KeyUpdate (new receiving key; when the peer asks, our
//! own KeyUpdate goes out before any more data), and, on a connection to a
//! backend, TLS 1.3 NewSessionTickets (stored by rustls for resumption).
//! The sending key is updated by itself long before AES-GCM's
//! confidentiality limit (TLS 1.3).

use std::fmt;

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;

use super::record::{self, MAX_PLAIN, RecordError, Records, Version, content};

/// TLS 1.3: records sealed under one key before wsedge updates it
/// (AES-GCM's limit is 2^24.5, RFC 8446 §5.5).
const KEY_UPDATE_AT: u64 = 1 << 23;
/// TLS 1.2 has no key update: a connection ends before the limit.
const TLS12_RECORD_LIMIT: u64 = 1 << 24;

/// Why a TLS connection ended with an error.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// A record could not be opened or sealed.
    Record(RecordError),
    /// The peer sent a fatal alert (its description code).
    Alert(u8),
    /// The peer broke the protocol after the handshake.
    Protocol(&'static str),
    /// rustls refused (a key update, a ticket).
    Rustls(rustls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Record(e) => write!(f, "TLS: {e}"),
            TlsError::Alert(d) => write!(f, "TLS alert from the peer: {}", alert_name(*d)),
            TlsError::Protocol(what) => write!(f, "TLS: {what}"),
            TlsError::Rustls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<RecordError> for TlsError {
    fn from(e: RecordError) -> Self {
        TlsError::Record(e)
    }
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// The name of an alert description (RFC 8446 §6).
pub fn alert_name(d: u8) -> String {
    let name = match d {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        100 => "no_renegotiation",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => return format!("alert {d}"),
    };
    name.to_string()
}

/// rustls's view of the connection, kept for key updates and tickets.
pub(crate) enum Kernel {
    /// wsedge is the server (a client leg).
    Server(KernelConnection<ServerConnectionData>),
    /// wsedge is the client (a backend leg).
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
    }
}

/// What [`TlsConn::read`] made of a buffer of ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    /// Plaintext now at the start of the buffer.
    pub plain: usize,
    /// Ciphertext used; the rest (`buf[used..]`) is the start of a record
    /// to keep for the next read.
    pub used: usize,
    /// The peer sent close_notify: nothing more will come.
    pub closed: bool,
}

/// A TLS connection past its handshake.
pub struct TlsConn {
    records: Records,
    kernel: Kernel,
    peer_closed: bool,
    sent_close: bool,
    /// Sealed control records (a KeyUpdate) owed before more data.
    control: Vec<u8>,
}

impl fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("records", &self.records)
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// A connection from what rustls hands over after the handshake.
    pub(crate) fn new(records: Records, kernel: Kernel) -> TlsConn {
        TlsConn {
            records,
            kernel,
            peer_closed: false,
            sent_close: false,
            control: Vec::new(),
        }
    }

    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.records.version()
    }

    /// The peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Opens every whole record in `buf`, moving the application data they
    /// carry to the start of `buf`, in order.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Read, TlsError> {
        let mut pos = 0;
        let mut out = 0;
        while !self.peer_closed {
            let Some(rec) = self.records.open(&mut buf[pos..])? else {
                break;
            };
            let start = pos + rec.start;
            let body = start..start + rec.len;
            match rec.typ {
                content::APP_DATA => {
                    if body.start != out {
                        buf.copy_within(body, out);
                    }
                    out += rec.len;
                }
                content::ALERT => self.on_alert(&buf[body])?,
                content::HANDSHAKE => self.on_handshake(&buf[body])?,
                _ => return Err(TlsError::Record(RecordError::Unexpected)),
            }
            pos += rec.used;
        }
        if self.peer_closed {
            // Whatever follows close_notify is ignored (RFC 8446 §6.1).
            pos = buf.len();
        }
        Ok(Read {
            plain: out,
            used: pos,
            closed: self.peer_closed,
        })
    }

    fn on_alert(&mut self, a: &[u8]) -> Result<(), TlsError> {
        let &[level, desc] = a else {
            return Err(TlsError::Protocol("malformed alert"));
        };
        match (desc, level, self.version()) {
            (0, _, _) => self.peer_closed = true,
            (90, _, _) => {} // user_canceled: a close_notify follows
            (_, 1, Version::Tls12) => {}
            _ => return Err(TlsError::Alert(desc)),
        }
        Ok(())
    }

    fn on_handshake(&mut self, mut msgs: &[u8]) -> Result<(), TlsError> {
        while !msgs.is_empty() {
            let &[typ, a, b, c, ref rest @ ..] = msgs else {
                return Err(TlsError::Protocol("fragmented post-handshake message"));
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if rest.len() < len {
                return Err(TlsError::Protocol("fragmented post-handshake message"));
            }
            let (body, next) = rest.split_at(len);
            msgs = next;
            match (typ, self.version()) {
                // key_update
                (24, Version::Tls13) => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(TlsError::Protocol("malformed key_update")),
                    };
                    let rx = self.kernel.update_rx().map_err(TlsError::Rustls)?;
                    if !self.records.set_rx(rx) {
                        return Err(TlsError::Protocol("key update to an unknown suite"));
                    }
                    if requested {
                        self.update_tx_key()?;
                    }
                }
                // new_session_ticket, from a backend
                (4, Version::Tls13) => match &mut self.kernel {
                    Kernel::Client(k) => k
                        .handle_new_session_ticket(body)
                        .map_err(TlsError::Rustls)?,
                    Kernel::Server(_) => {
                        return Err(TlsError::Protocol("new_session_ticket from a client"));
                    }
                },
                // hello_request from a TLS 1.2 backend: renegotiation is
                // not done; the request may be ignored (RFC 5246 §7.4.1.1).
                (0, Version::Tls12) if matches!(self.kernel, Kernel::Client(_)) => {}
                _ => return Err(TlsError::Protocol("unexpected post-handshake message")),
            }
        }
        Ok(())
    }

    /// Queues a KeyUpdate (not requesting one back) under the current key,
    /// then switches to the next one.
    fn update_tx_key(&mut self) -> Result<(), TlsError> {
        let at = self.control.len();
        self.control.resize(at + 5 + self.records.overhead(), 0);
        let n = self.records.seal(
            content::HANDSHAKE,
            &[24, 0, 0, 1, 0],
            &mut self.control[at..],
        )?;
        self.control.truncate(at + n);
        let tx = self.kernel.update_tx().map_err(TlsError::Rustls)?;
        if !self.records.set_tx(tx) {
            return Err(TlsError::Protocol("key update to an unknown suite"));
        }
        Ok(())
    }

    /// Queues records rustls sealed at the end of the handshake (a TLS 1.3
    /// server's NewSessionTickets), to go out with the first data written
    /// instead of in a send of their own. They were sealed before any record
    /// of this layer (their sequence numbers come first), so they go ahead
    /// of whatever is owed already.
    pub(crate) fn owe_first(&mut self, mut records: Vec<u8>) {
        records.extend_from_slice(&self.control);
        self.control = records;
    }

    /// Control records owed to the peer (written before any more data).
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// Seals owed control records, then as much of `plain` as fits, into
    /// `out`, in records of at most 16 KiB. Returns (plaintext taken, bytes
    /// written). `out` must hold at least one byte of data with its record
    /// ([`record::MAX_OVERHEAD`] + 1), or the control records alone.
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<(usize, usize), TlsError> {
        let mut w = 0;
        if !self.control.is_empty() {
            let n = self.control.len().min(out.len());
            out[..n].copy_from_slice(&self.control[..n]);
            self.control.drain(..n);
            w = n;
            if !self.control.is_empty() {
                return Ok((0, w));
            }
            self.control = Vec::new();
        }
        let overhead = self.records.overhead();
        let mut taken = 0;
        while taken < plain.len() && out.len() - w > overhead {
            if self.records.version() == Version::Tls13 && self.records.tx_seq() >= KEY_UPDATE_AT {
                if out.len() - w < 2 * overhead + 6 {
                    break;
                }
                self.update_tx_key()?;
                let c = std::mem::take(&mut self.control);
                out[w..w + c.len()].copy_from_slice(&c);
                w += c.len();
                continue;
            }
            if self.records.version() == Version::Tls12
                && self.records.tx_seq() >= TLS12_RECORD_LIMIT
            {
                return Err(TlsError::Record(RecordError::Exhausted));
            }
            let n = (plain.len() - taken)
                .min(MAX_PLAIN)
                .min(out.len() - w - overhead);
            w += self
                .records
                .seal(content::APP_DATA, &plain[taken..taken + n], &mut out[w..])?;
            taken += n;
        }
        Ok((taken, w))
    }

    /// Seals a close_notify alert into `out` (at most
    /// [`record::MAX_OVERHEAD`] + 2 bytes); 0 if one was sent already.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, TlsError> {
        if self.sent_close {
            return Ok(0);
        }
        self.sent_close = true;
        Ok(self.records.seal(content::ALERT, &[1, 0], out)?)
    }
}

/// A close_notify fits in this many bytes.
pub const CLOSE_NOTIFY_MAX: usize = record::MAX_OVERHEAD + 2;
