//! `wsload echo`: a fast RFC 6455 echo server for benchmarks.
//!
//! Text and binary messages come back with the same opcode and content
//! (fragmented ones reassembled into one frame), pings are answered with
//! pongs, a close is answered with the same code and the server then closes
//! the TCP connection, as RFC 6455 §7.1.1 asks of servers. Broken framing is
//! answered with 1002, bad UTF-8 in text with 1007, oversized messages
//! with 1009.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use monoio::net::TcpStream;

use crate::frame::{self, Opcode};
use crate::handshake::{self, Request};
use crate::mask::extend_masked;
use crate::net;
use crate::stream::Stream;

/// Options of `wsload echo`.
#[derive(Debug, Clone)]
pub struct EchoOpts {
    pub listen: SocketAddr,
    pub workers: usize,
    pub pin: bool,
    /// Flip a byte in every Nth echoed message (tests that corruption is caught).
    pub corrupt_every: u64,
    pub max_message: usize,
    /// `--tls-cert`/`--tls-key`: serve wss://.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

const MIN_CHUNK: usize = 4 * 1024;
const MAX_CHUNK: usize = 256 * 1024;

impl EchoOpts {
    pub fn from_args(a: crate::cli::EchoArgs) -> anyhow::Result<Self> {
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::server_config(cert, key).context("--tls-cert/--tls-key")?)
            }
            _ => None,
        };
        Ok(Self {
            listen: a.listen,
            workers: a
                .workers
                .unwrap_or_else(|| net::allowed_cpus().len().max(1)),
            pin: !a.no_pin,
            corrupt_every: a.corrupt_every,
            max_message: a.max_message,
            tls,
        })
    }
}

/// Runs the echo server until the process is stopped.
pub fn serve(opts: EchoOpts) -> anyhow::Result<()> {
    crate::sys::raise_nofile_limit();
    // Bind once here so that a bad address fails before workers start.
    drop(std::net::TcpListener::bind(opts.listen).ok());
    eprintln!(
        "wsload echo: listening on {}{} (workers {}, {})",
        opts.listen,
        if opts.tls.is_some() { ", TLS" } else { "" },
        opts.workers,
        if net::uring() { "io_uring" } else { "epoll" }
    );
    let o = opts.clone();
    let handles = net::spawn_workers("wsload-echo", opts.workers, opts.pin, 4096, move |_| {
        let o = o.clone();
        async move {
            let listener = net::listen(o.listen)?;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let o = o.clone();
                        monoio::spawn(async move {
                            let _ = connection(stream, &o).await;
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly.
                        eprintln!("wsload echo: accept: {e}");
                        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                }
            }
        }
    })?;
    net::join_all::<()>(handles)?;
    Ok(())
}

/// State of one echoed connection between reads.
struct Echo {
    /// Opcode of the fragmented message being reassembled, if any.
    frag: Option<Opcode>,
    msg: Vec<u8>,
    count: u64,
    corrupt_every: u64,
    max_message: usize,
}

/// What to do after a batch of frames.
#[derive(PartialEq, Eq)]
enum Next {
    Continue,
    /// Write what is queued and close the connection.
    Close,
}

async fn connection(s: TcpStream, o: &EchoOpts) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut s = match &o.tls {
        None => Stream::Plain(s),
        Some(config) => Stream::tls(crate::tls::accept(s, config.clone()).await?),
    };
    let mut rbuf: Vec<u8> = Vec::with_capacity(4096);
    // The upgrade.
    loop {
        let (res, b) = s.read_more(rbuf).await;
        rbuf = b;
        if res? == 0 {
            return Ok(());
        }
        match handshake::parse_request(&rbuf) {
            None => {
                if rbuf.len() == rbuf.capacity() {
                    rbuf.reserve(4096);
                }
            }
            Some(Request::Reject(r)) => {
                let _ = s.write_all(r).await;
                s.close_notify().await;
                return Ok(());
            }
            Some(Request::Upgrade { head_len, response }) => {
                let (res, _) = s.write_all(response).await;
                res?;
                rbuf.drain(..head_len);
                rbuf.shrink_to(MIN_CHUNK);
                break;
            }
        }
    }
    let mut st = Echo {
        frag: None,
        msg: Vec::new(),
        count: 0,
        corrupt_every: o.corrupt_every,
        max_message: o.max_message,
    };
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // Reads start small (idle connections stay cheap) and grow while they
    // fill the buffer.
    let mut chunk = MIN_CHUNK;
    loop {
        let (consumed, next, need) = st.process(&rbuf, &mut out);
        rbuf.drain(..consumed);
        if !out.is_empty() {
            let (res, b) = s.write_all(out).await;
            out = b;
            res?;
            out.clear();
        }
        if next == Next::Close {
            s.close_notify().await;
            return Ok(());
        }
        let want = need.max(rbuf.len() + chunk);
        if rbuf.capacity() < want {
            rbuf.reserve(want - rbuf.len());
        }
        let room = rbuf.capacity() - rbuf.len();
        let (res, b) = s.read_more(rbuf).await;
        rbuf = b;
        let n = res?;
        if n == 0 {
            return Ok(());
        }
        // (TLS reads may hand over more than the room there was.)
        if n >= room {
            chunk = (chunk * 2).min(MAX_CHUNK);
        }
        // Give back memory a large message left behind.
        if rbuf.is_empty() && rbuf.capacity() > 1 << 20 {
            rbuf = Vec::with_capacity(MIN_CHUNK);
        }
    }
}

impl Echo {
    /// Handles the complete frames in `buf`, queueing answers in `out`.
    /// Returns bytes consumed, what next, and how many bytes the buffer must
    /// be able to hold for the next frame.
    fn process(&mut self, buf: &[u8], out: &mut Vec<u8>) -> (usize, Next, usize) {
        let mut pos = 0;
        loop {
            let h = match frame::parse_header(&buf[pos..], self.max_message) {
                Ok(Some(h)) => h,
                Ok(None) => return (pos, Next::Continue, 0),
                Err(e) => {
                    frame::encode_close(out, Some(e.close_code()), None);
                    return (pos, Next::Close, 0);
                }
            };
            if buf.len() - pos < h.frame_len() {
                return (pos, Next::Continue, h.frame_len());
            }
            let Some(key) = h.mask else {
                frame::encode_close(out, Some(1002), None);
                return (pos, Next::Close, 0);
            };
            let payload = &buf[pos + h.header_len..pos + h.frame_len()];
            pos += h.frame_len();
            if let Err(code) = self.frame(h.fin, h.opcode, key, payload, out) {
                if code != 0 {
                    frame::encode_close(out, Some(code), None);
                }
                return (pos, Next::Close, 0);
            }
            if out.len() > 1 << 20 {
                // Flush before echoing more.
                return (pos, Next::Continue, 0);
            }
        }
    }

    /// One frame. `Err(code)`: close with `code` (0: the close is queued).
    fn frame(
        &mut self,
        fin: bool,
        op: Opcode,
        key: [u8; 4],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), u16> {
        match op {
            Opcode::Text | Opcode::Binary if self.frag.is_some() => Err(1002),
            Opcode::Text | Opcode::Binary if fin => {
                frame::encode_header(out, true, op, None, payload.len());
                let start = out.len();
                extend_masked(out, payload, key);
                if op == Opcode::Text && simdutf8::basic::from_utf8(&out[start..]).is_err() {
                    out.truncate(start - frame::header_len(payload.len(), false));
                    return Err(1007);
                }
                self.corrupt(&mut out[start..]);
                Ok(())
            }
            Opcode::Text | Opcode::Binary => {
                self.frag = Some(op);
                self.msg.clear();
                extend_masked(&mut self.msg, payload, key);
                Ok(())
            }
            Opcode::Continuation => {
                let Some(first) = self.frag else {
                    return Err(1002);
                };
                if self.msg.len() + payload.len() > self.max_message {
                    return Err(1009);
                }
                extend_masked(&mut self.msg, payload, key);
                if fin {
                    self.frag = None;
                    if first == Opcode::Text && simdutf8::basic::from_utf8(&self.msg).is_err() {
                        return Err(1007);
                    }
                    frame::encode_header(out, true, first, None, self.msg.len());
                    let start = out.len();
                    out.extend_from_slice(&self.msg);
                    self.corrupt(&mut out[start..]);
                    if self.msg.capacity() > 1 << 20 {
                        self.msg = Vec::new();
                    }
                }
                Ok(())
            }
            Opcode::Ping => {
                frame::encode_header(out, true, Opcode::Pong, None, payload.len());
                extend_masked(out, payload, key);
                Ok(())
            }
            Opcode::Pong => Ok(()),
            Opcode::Close => {
                let mut body = Vec::with_capacity(payload.len());
                extend_masked(&mut body, payload, key);
                match body.len() {
                    0 => frame::encode_close(out, None, None),
                    1 => return Err(1002),
                    _ => {
                        let code = u16::from_be_bytes([body[0], body[1]]);
                        if !frame::close_code_is_valid(code) {
                            return Err(1002);
                        }
                        if std::str::from_utf8(&body[2..]).is_err() {
                            return Err(1007);
                        }
                        frame::encode_close(out, Some(code), None);
                    }
                }
                Err(0)
            }
        }
    }

    fn corrupt(&mut self, msg: &mut [u8]) {
        self.count += 1;
        if self.corrupt_every > 0 && self.count % self.corrupt_every == 0 {
            if let Some(last) = msg.last_mut() {
                // Stays ASCII, hence valid UTF-8 for text.
                *last ^= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::apply_mask;

    fn client_frame(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let mut out = Vec::new();
        frame::encode_header(&mut out, fin, op, Some(key), payload.len());
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], key);
        out
    }

    fn echo() -> Echo {
        Echo {
            frag: None,
            msg: Vec::new(),
            count: 0,
            corrupt_every: 0,
            max_message: 1 << 20,
        }
    }

    #[test]
    fn echoes_reassembled_fragments_and_answers_pings() {
        let mut input = client_frame(false, Opcode::Text, b"hel");
        input.extend(client_frame(true, Opcode::Ping, b"p"));
        input.extend(client_frame(true, Opcode::Continuation, b"lo"));
        let mut out = Vec::new();
        let mut e = echo();
        let (used, next, _) = e.process(&input, &mut out);
        assert_eq!(used, input.len());
        assert!(next == Next::Continue);
        assert_eq!(out, b"\x8a\x01p\x81\x05hello");
    }

    #[test]
    fn refuses_unmasked_and_bad_utf8() {
        let mut out = Vec::new();
        let (_, next, _) = echo().process(b"\x82\x01x", &mut out);
        assert!(next == Next::Close);
        assert_eq!(out, [0x88, 2, 0x03, 0xEA]);
        let mut out = Vec::new();
        let (_, next, _) = echo().process(&client_frame(true, Opcode::Text, b"\xff"), &mut out);
        assert!(next == Next::Close);
        assert_eq!(out, [0x88, 2, 0x03, 0xEF]);
    }

    #[test]
    fn close_is_echoed() {
        let mut out = Vec::new();
        let (_, next, _) =
            echo().process(&client_frame(true, Opcode::Close, b"\x03\xe8bye"), &mut out);
        assert!(next == Next::Close);
        assert_eq!(out, [0x88, 2, 0x03, 0xE8]);
    }
}
