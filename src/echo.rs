//! The built-in echo upstream (`builtin:echo`): a small RFC 6455 server on a
//! loopback port of its own, so `wsedge` with no arguments has something to
//! proxy to. It echoes text and binary frames as they come (fragments
//! included), answers pings with pongs and close with close.

use std::rc::Rc;

use monoio::net::{TcpListener, TcpStream};

use crate::pool::Pool;
use crate::proto::close::{CloseCode, parse_close_payload};
use crate::proto::frame::{
    DecodeConfig, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, Peer, SmallFrame,
};
use crate::proto::handshake::{Limits, build_switching_response, parse_request};
use crate::proto::mask::apply_mask;
use crate::transport::{Transport, into_poll, read, write_all};

/// Accepts and serves echo connections until the runtime stops.
pub async fn serve(listener: TcpListener, pool: Rc<Pool>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        monoio::spawn(connection(stream, Rc::clone(&pool)));
    }
}

async fn connection(s: TcpStream, pool: Rc<Pool>) {
    let Ok(mut s) = into_poll(s) else { return };
    // Handshake.
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let (accept, rest) = loop {
        let n = match read(&mut s, &mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        let mut h = [httparse::EMPTY_HEADER; 64];
        match parse_request(&head, &mut h, &Limits::default()) {
            Ok(Some((req, len))) => break (req.accept_key(), head[len..].to_vec()),
            Ok(None) => continue,
            Err(rej) => {
                let _ = write_all(&mut s, &rej.response()).await;
                return;
            }
        }
    };
    if write_all(&mut s, &build_switching_response(&accept, None, None))
        .await
        .is_err()
    {
        return;
    }
    // Frames: unmask in place and send back unmasked, streaming.
    let cfg = DecodeConfig::new(Peer::Client);
    let mut buf = pool.take();
    let mut filled = rest.len().min(buf.len());
    buf[..filled].copy_from_slice(&rest[..filled]);
    // (opcode, remaining, offset, key) of a data frame being streamed.
    let mut cur: Option<(u64, u64, [u8; 4])> = None;
    // A control frame being collected.
    let mut control: Option<(OpCode, Vec<u8>, usize, [u8; 4])> = None;
    loop {
        let mut pos = 0;
        let mut out = Vec::new();
        while pos < filled || control.as_ref().is_some_and(|c| c.1.len() == c.2) {
            if let Some((remaining, offset, key)) = &mut cur {
                let n = (*remaining).min((filled - pos) as u64) as usize;
                apply_mask(&mut buf[pos..pos + n], *key, *offset);
                out.extend_from_slice(&buf[pos..pos + n]);
                *remaining -= n as u64;
                *offset += n as u64;
                pos += n;
                if *remaining == 0 {
                    cur = None;
                }
                continue;
            }
            if let Some((op, data, want, key)) = &mut control {
                let n = (*want - data.len()).min(filled - pos);
                data.extend_from_slice(&buf[pos..pos + n]);
                pos += n;
                if data.len() < *want {
                    continue;
                }
                apply_mask(data, *key, 0);
                let (op, data) = (*op, std::mem::take(data));
                control = None;
                if control_reply(op, &data, &mut out) {
                    let _ = write_all(&mut s, &out).await;
                    let _ = s.shutdown_write();
                    return;
                }
                continue;
            }
            match FrameHeader::decode(&buf[pos..filled], &cfg) {
                Ok(Some((h, n))) => {
                    pos += n;
                    let key = h.mask.unwrap_or_default();
                    if h.opcode.is_control() {
                        control = Some((
                            h.opcode,
                            Vec::with_capacity(MAX_CONTROL_PAYLOAD),
                            h.payload_len as usize,
                            key,
                        ));
                    } else {
                        let mut hb = [0u8; MAX_HEADER_LEN];
                        let hn = FrameHeader { mask: None, ..h }.encode(&mut hb);
                        out.extend_from_slice(&hb[..hn]);
                        if h.payload_len > 0 {
                            cur = Some((h.payload_len, 0, key));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = write_all(
                        &mut s,
                        SmallFrame::close(e.close_code(), e.reason(), None).as_bytes(),
                    )
                    .await;
                    return;
                }
            }
        }
        if !out.is_empty() && write_all(&mut s, &out).await.is_err() {
            return;
        }
        // Keep an incomplete header for the next read.
        buf.copy_within(pos..filled, 0);
        filled -= pos;
        match read(&mut s, &mut buf[filled..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}

/// Appends the answer to a control frame; `true` for close (then hang up).
fn control_reply(op: OpCode, data: &[u8], out: &mut Vec<u8>) -> bool {
    match op {
        OpCode::Ping => {
            out.extend_from_slice(SmallFrame::new(OpCode::Pong, data, None).as_bytes());
            false
        }
        OpCode::Close => {
            let code = match parse_close_payload(data) {
                Ok(Some(c)) => c.code,
                Ok(None) => CloseCode::NORMAL,
                Err(e) => e.close_code(),
            };
            out.extend_from_slice(SmallFrame::close(code, "", None).as_bytes());
            true
        }
        _ => false,
    }
}
