//! One health check of one server: a TCP connect, or a WebSocket upgrade,
//! a ping answered by its pong and a close 1000, all within a timeout.
//!
//! The protocol part is sans-IO and reuses the proxy's own code: the
//! request is checked by [`parse_request`] as any client's would be, the
//! answer by [`parse_response`] (so a wrong `Sec-WebSocket-Accept` fails
//! the check exactly as it fails a proxied handshake), and frames are
//! walked by [`PongWait`] on top of [`FrameHeader::decode`]. Only
//! [`check`] and [`websocket`] touch a socket.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use rand_core::RngCore;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::config::HealthKind;
use crate::pool::Pool;
use crate::proto::close::{CloseCode, parse_close_payload};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{DecodeConfig, FrameHeader, OpCode, Peer, SmallFrame};
use crate::proto::handshake::{
    BackendResponse, Expect, HeadKind, HeadScanner, Limits, ResponseError, Scan, accept_key,
    key_from_nonce, parse_request, parse_response,
};
use crate::tls::record::MAX_RECORD;
use crate::tls::{self, TlsStream};
use crate::transport::{self, Transport, into_poll};

/// What a check was doing when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The TCP connect.
    Connecting,
    /// Sending the upgrade request and reading the answer's head.
    Upgrading,
    /// Sending the ping and reading frames until its pong.
    AwaitingPong,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connecting => "connecting",
            Step::Upgrading => "waiting for the answer to the upgrade",
            Step::AwaitingPong => "waiting for the pong",
        })
    }
}

/// Why a check failed; its `Display` is the reason in the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The connect was refused: nothing listens there.
    Refused,
    /// The check's `timeout` passed during this step.
    TimedOut(Step),
    /// An I/O error other than a refusal, during this step.
    Io(Step, io::ErrorKind),
    /// The server closed the connection (end of stream) during this step.
    Closed(Step),
    /// A final status other than 101 answered the upgrade.
    Status(u16),
    /// A 101 that breaks RFC 6455 §4.1 (a wrong accept key, no `Upgrade`
    /// ...), or a head that is not HTTP.
    BadUpgrade(ResponseError),
    /// A frame that breaks RFC 6455 §5.
    BadFrame(ProtocolError),
    /// A close frame (with its code, if any) instead of the pong.
    CloseFrame(Option<u16>),
    /// The TLS handshake with the server failed (a `wss://` upstream).
    Tls(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Refused => f.write_str("connection refused"),
            Failure::Tls(e) => f.write_str(e),
            Failure::TimedOut(Step::AwaitingPong) => f.write_str("no pong within the timeout"),
            Failure::TimedOut(step) => write!(f, "timed out {step}"),
            Failure::Io(step, kind) => write!(f, "{kind} while {step}"),
            Failure::Closed(step) => write!(f, "closed the connection while {step}"),
            Failure::Status(status) => write!(f, "answered {status} to the upgrade"),
            Failure::BadUpgrade(ResponseError::AcceptMismatch) => {
                f.write_str("bad accept key in the 101")
            }
            Failure::BadUpgrade(e) => f.write_str(e.reason()),
            Failure::BadFrame(e) => write!(f, "bad frame: {e}"),
            Failure::CloseFrame(Some(code)) => write!(f, "closed with {code} instead of a pong"),
            Failure::CloseFrame(None) => f.write_str("closed instead of a pong"),
        }
    }
}

impl std::error::Error for Failure {}

/// The random values one WebSocket check uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonces {
    /// The 16 bytes behind `Sec-WebSocket-Key`.
    pub key: [u8; 16],
    /// The ping's payload, which the pong must echo.
    pub ping: [u8; 8],
    /// Masking keys: the ping's and the close's.
    pub masks: [[u8; 4]; 2],
}

impl Nonces {
    /// Fresh values from `rng`.
    pub fn draw(rng: &mut impl RngCore) -> Nonces {
        let mut n = Nonces {
            key: [0; 16],
            ping: [0; 8],
            masks: [[0; 4]; 2],
        };
        rng.fill_bytes(&mut n.key);
        rng.fill_bytes(&mut n.ping);
        for m in &mut n.masks {
            rng.fill_bytes(m);
        }
        n
    }
}

/// The upgrade request a check sends: `GET path` with `Host: authority`,
/// the key, version 13 and `User-Agent: wsedge-health`.
pub fn upgrade_request(path: &str, authority: &str, key: &[u8; 24]) -> Vec<u8> {
    let key = std::str::from_utf8(key).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsedge-health\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the answer to `request` (as built by [`upgrade_request`]) in
/// `head`, one complete response head: `Ok(None)` for an interim `1xx`
/// (read the next head), `Ok(Some(()))` for a valid 101.
pub fn check_answer(request: &[u8], head: &[u8]) -> Result<Option<()>, Failure> {
    let limits = Limits::default();
    let mut req_headers = [httparse::EMPTY_HEADER; 16];
    // The request is ours: it always parses (checked in the tests).
    let Ok(Some((req, _))) = parse_request(request, &mut req_headers, &limits) else {
        return Err(Failure::BadUpgrade(ResponseError::Malformed));
    };
    let expect = Expect {
        accept: accept_key(req.key().as_bytes()),
        request: &req,
        forward_extensions: false,
        protocols: None,
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match parse_response(head, &mut headers, &limits, &expect) {
        Ok(Some((BackendResponse::Upgraded { .. }, _))) => Ok(Some(())),
        Ok(Some((BackendResponse::Interim { .. }, _))) => Ok(None),
        Ok(Some((BackendResponse::Other { status }, _))) => Err(Failure::Status(status)),
        // A complete head always parses to an answer or an error.
        Ok(None) => Err(Failure::BadUpgrade(ResponseError::Malformed)),
        Err(e) => Err(Failure::BadUpgrade(e)),
    }
}

/// Walks a server's frames until the pong that echoes a ping's payload:
/// other pongs, pings and data frames are skipped (a data frame's payload
/// streams past without being buffered); a close frame fails the check.
#[derive(Debug, Clone)]
pub struct PongWait {
    payload: [u8; 8],
    /// Payload bytes of a skipped data frame still to come.
    skip: u64,
    cfg: DecodeConfig,
}

impl PongWait {
    /// Waits for a pong carrying `payload`.
    pub fn new(payload: [u8; 8]) -> PongWait {
        PongWait {
            payload,
            skip: 0,
            cfg: DecodeConfig::new(Peer::Server),
        }
    }

    /// Looks at `buf`, the bytes received and not yet used: how many it
    /// used (drop them; keep the rest for the next call, with more bytes
    /// after it) and whether the pong came. Never uses part of a control
    /// frame.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, bool), Failure> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            if self.skip > 0 {
                let n = self.skip.min(rest.len() as u64);
                self.skip -= n;
                used += n as usize;
                if self.skip > 0 {
                    return Ok((used, false));
                }
                continue;
            }
            let Some((h, hlen)) =
                FrameHeader::decode(rest, &self.cfg).map_err(Failure::BadFrame)?
            else {
                return Ok((used, false));
            };
            if !h.opcode.is_control() {
                self.skip = h.payload_len;
                used += hlen;
                continue;
            }
            // Control payloads are at most 125 bytes: wait for all of it.
            let end = hlen + h.payload_len as usize;
            let Some(payload) = rest.get(hlen..end) else {
                return Ok((used, false));
            };
            used += end;
            match h.opcode {
                OpCode::Pong if payload == self.payload => return Ok((used, true)),
                OpCode::Close => {
                    let code = parse_close_payload(payload)
                        .map_err(Failure::BadFrame)?
                        .map(|c| c.code.0);
                    return Err(Failure::CloseFrame(code));
                }
                _ => {}
            }
        }
    }
}

/// Where and how to check one server.
#[derive(Debug, Clone)]
pub struct Target {
    /// The address connected to.
    pub addr: SocketAddr,
    /// `tcp` or `websocket`.
    pub kind: HealthKind,
    /// The path a `websocket` check upgrades.
    pub path: String,
    /// The `Host` a `websocket` check sends: the server's `HOST:PORT` as
    /// written.
    pub authority: String,
    /// For the whole check.
    pub timeout: Duration,
    /// TLS to the server (a `wss://` upstream): the upstream's client
    /// configuration and the name verified.
    pub tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// Runs one check of `target` within its timeout.
pub async fn check(target: &Target, nonces: &Nonces) -> Result<(), Failure> {
    let mut step = Step::Connecting;
    let outcome = monoio::time::timeout(target.timeout, run(target, nonces, &mut step)).await;
    match outcome {
        Ok(r) => r,
        Err(_) => Err(Failure::TimedOut(step)),
    }
}

async fn run(target: &Target, nonces: &Nonces, step: &mut Step) -> Result<(), Failure> {
    let tcp = TcpStream::connect_addr(target.addr)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            kind => Failure::Io(Step::Connecting, kind),
        })?;
    if target.kind == HealthKind::Tcp {
        return Ok(());
    }
    let _ = tcp.set_nodelay(true);
    let mut stream = into_poll(tcp).map_err(|e| Failure::Io(Step::Connecting, e.kind()))?;
    if let Some((config, name)) = &target.tls {
        let done = tls::connect(&mut stream, Arc::clone(config), name.clone())
            .await
            .map_err(|e| Failure::Tls(e.to_string()))?;
        // Checks are seconds apart: a pool of its own per check is cheap.
        let pool = Pool::new(MAX_RECORD + 1024, 1);
        let mut stream = TlsStream::new(stream, done.conn, &done.leftover, pool);
        websocket(&mut stream, &target.path, &target.authority, nonces, step).await?;
        let _ = stream.shutdown_write();
        return Ok(());
    }
    websocket(&mut stream, &target.path, &target.authority, nonces, step).await?;
    // The check has passed; what happens to the connection now is not the
    // server's health.
    let _ = stream.shutdown_both();
    Ok(())
}

/// The WebSocket part of a check over a connected `stream`: upgrade, ping,
/// its pong, close 1000. `step` follows along, so that a caller whose
/// timeout cuts this short can say where it was.
pub async fn websocket<T: Transport>(
    stream: &mut T,
    path: &str,
    authority: &str,
    nonces: &Nonces,
    step: &mut Step,
) -> Result<(), Failure> {
    *step = Step::Upgrading;
    let request = upgrade_request(path, authority, &key_from_nonce(&nonces.key));
    transport::write_all(stream, &request)
        .await
        .map_err(|e| Failure::Io(Step::Upgrading, e.kind()))?;

    // Heads until the 101 (interim 1xx are skipped), then its leftovers.
    let limit = Limits::default().max_head_bytes;
    let mut buf = Vec::with_capacity(1024);
    let mut scanner = HeadScanner::new(HeadKind::Response);
    loop {
        match scanner.scan(&buf, limit) {
            Scan::Complete(len) => {
                let upgraded = check_answer(&request, &buf[..len])?;
                buf.drain(..len);
                scanner = HeadScanner::new(HeadKind::Response);
                if upgraded.is_some() {
                    break;
                }
                continue;
            }
            Scan::TooLarge => return Err(Failure::BadUpgrade(ResponseError::HeadTooLarge)),
            Scan::Malformed => return Err(Failure::BadUpgrade(ResponseError::Malformed)),
            Scan::Partial => {}
        }
        read_more(stream, &mut buf, Step::Upgrading).await?;
    }

    *step = Step::AwaitingPong;
    let ping = SmallFrame::new(OpCode::Ping, &nonces.ping, Some(nonces.masks[0]));
    transport::write_all(stream, ping.as_bytes())
        .await
        .map_err(|e| Failure::Io(Step::AwaitingPong, e.kind()))?;
    let mut wait = PongWait::new(nonces.ping);
    loop {
        let (used, pong) = wait.feed(&buf)?;
        buf.drain(..used);
        if pong {
            break;
        }
        read_more(stream, &mut buf, Step::AwaitingPong).await?;
    }

    let close = SmallFrame::close(CloseCode::NORMAL, "", Some(nonces.masks[1]));
    let _ = transport::write_all(stream, close.as_bytes()).await;
    Ok(())
}

/// Appends what one read brings to `buf`; end of stream is a failure.
async fn read_more<T: Transport>(
    stream: &mut T,
    buf: &mut Vec<u8>,
    step: Step,
) -> Result<(), Failure> {
    let mut chunk = [0u8; 2048];
    match transport::read(stream, &mut chunk).await {
        Ok(0) => Err(Failure::Closed(step)),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(Failure::Io(step, e.kind())),
    }
}

#[cfg(test)]
mod tests;
