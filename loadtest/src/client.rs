//! The client side shared by `run`, `connect` and `idle`: connect (TLS for
//! `wss://`) and upgrade, then read server frames.

use std::net::IpAddr;
use std::time::Duration;

use crate::frame::{self, Header, Opcode};
use crate::handshake::{self, HandshakeError};
use crate::mask::KeyGen;
use crate::net::{self, Target};
use crate::stats::ErrKind;
use crate::stream::Stream;

/// Connects (`wss://`: and runs the TLS handshake) and upgrades. Returns
/// the stream and any bytes that followed the response head (the start of
/// frame data). The TLS handshake and the upgrade share one timeout.
pub async fn open(
    target: &Target,
    source: Option<IpAddr>,
    rng: &mut KeyGen,
    timeout: Duration,
) -> Result<(Stream, Vec<u8>), ErrKind> {
    let stream = match monoio::time::timeout(timeout, net::connect(target.addr, source)).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => return Err(ErrKind::Connect),
    };
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    let key = handshake::new_key(raw);
    let secure_upgrade = async {
        let stream = match &target.tls {
            None => Stream::Plain(stream),
            Some(t) => crate::tls::connect(stream, t.config.clone(), t.name.clone())
                .await
                .map(Stream::tls)
                .map_err(|e| ErrKind::Tls(crate::tls::error_label(&e)))?,
        };
        upgrade(stream, target, &key).await
    };
    match monoio::time::timeout(timeout, secure_upgrade).await {
        Ok(r) => r,
        Err(_) => Err(ErrKind::HandshakeTimeout),
    }
}

async fn upgrade(
    mut stream: Stream,
    target: &Target,
    key: &str,
) -> Result<(Stream, Vec<u8>), ErrKind> {
    let mut req = Vec::with_capacity(256);
    handshake::write_request(&mut req, &target.host, &target.path, key, &target.headers);
    let (res, _) = stream.write_all(req).await;
    res.map_err(|_| ErrKind::Io)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => {
                // Closed before a complete answer: report the status if any.
                return Err(match handshake::check_response(&buf, key) {
                    Err(HandshakeError::Status(s)) => ErrKind::HandshakeStatus(s),
                    _ => ErrKind::HandshakeInvalid("connection closed"),
                });
            }
            Ok(_) => {}
            Err(_) => return Err(ErrKind::Io),
        }
        match handshake::check_response(&buf, key) {
            Ok(None) => {}
            Ok(Some(n)) => {
                buf.drain(..n);
                return Ok((stream, buf));
            }
            Err(HandshakeError::Status(s)) => return Err(ErrKind::HandshakeStatus(s)),
            Err(HandshakeError::Invalid(what)) => return Err(ErrKind::HandshakeInvalid(what)),
        }
    }
}

/// A frame from the server, its payload a range of the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct ServerFrame {
    pub header: Header,
    pub start: usize,
    pub end: usize,
}

/// Finds the next complete server frame at `buf[pos..]`. `Ok(None)`: need
/// more; the second value is how many bytes the buffer must hold from `pos`.
pub fn next_frame(
    buf: &[u8],
    pos: usize,
    max: usize,
) -> Result<(Option<ServerFrame>, usize), ErrKind> {
    match frame::parse_header(&buf[pos..], max) {
        Ok(None) => Ok((None, 0)),
        Err(frame::FrameError::TooLarge(_)) => Err(ErrKind::Protocol("message too large")),
        Err(_) => Err(ErrKind::Protocol("bad frame header")),
        Ok(Some(h)) => {
            if h.mask.is_some() {
                return Err(ErrKind::Protocol("masked server frame"));
            }
            if buf.len() - pos < h.frame_len() {
                return Ok((None, h.frame_len()));
            }
            Ok((
                Some(ServerFrame {
                    header: h,
                    start: pos + h.header_len,
                    end: pos + h.frame_len(),
                }),
                0,
            ))
        }
    }
}

/// The code of a close frame's payload (1005 when it carries none).
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

/// Appends a masked frame with `payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, op: Opcode, payload: &[u8], rng: &mut KeyGen) {
    let key = rng.key();
    frame::encode_header(out, true, op, Some(key), payload.len());
    crate::mask::extend_masked(out, payload, key);
}
