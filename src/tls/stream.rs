//! A [`Transport`] that speaks TLS over another one, with the record layer
//! working in the caller's buffers.
//!
//! - **Reading** lands ciphertext in the buffer the caller passes, opens
//!   the records there and leaves their plaintext at its start. A record
//!   cut short by the read is kept in a pool buffer until the rest comes
//!   (then copied in front of the next read), so an idle connection, whose
//!   peer sent whole records, holds no buffer.
//! - **Writing** seals the caller's bytes into a pool buffer and writes that
//!   out. The caller's bytes count as written only once their records are
//!   all on the socket: until then `poll_write` answers `Pending`, and the
//!   caller retries with the same bytes (as the relay and
//!   [`transport::write_all`](crate::transport::write_all) do).
//! - **Closing**: `shutdown_write` sends close_notify, then the TCP FIN;
//!   dropping the stream sends close_notify if it was not sent.

use std::fmt;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use super::conn::{CLOSE_NOTIFY_MAX, TlsConn};
use super::record::MAX_RECORD;
use crate::pool::{Pool, PoolBuf};
use crate::transport::Transport;

struct Sealed {
    buf: PoolBuf,
    pos: u32,
    end: u32,
    /// Caller bytes these records carry.
    plain: u32,
}

/// A pool buffer the stream keeps between reads: the start of a record
/// (`cipher`), and after a read into a buffer too small for a record, the
/// plaintext not yet handed out (`plain`).
struct Carry {
    buf: PoolBuf,
    plain: (u32, u32),
    cipher: (u32, u32),
}

impl Carry {
    fn cipher_len(&self) -> usize {
        (self.cipher.1 - self.cipher.0) as usize
    }
}

// A TLS leg's state while idle (boxed beside the relay): the record layer's
// raw keys (expanded per record, see `record::Dir`) and rustls's key-update
// state (~570 B). 896 B today, a mimalloc size class of its own. Grows only
// on purpose (see docs/benchmarks.md).
const _: () =
    assert!(std::mem::size_of::<TlsStream<monoio::net::tcp::stream_poll::TcpStreamPoll>>() <= 1024);

/// TLS over `S`.
pub struct TlsStream<S: Transport> {
    io: S,
    conn: TlsConn,
    pool: Rc<Pool>,
    carry: Option<Carry>,
    sealed: Option<Sealed>,
    read_closed: bool,
}

impl<S: Transport> fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl<S: Transport> TlsStream<S> {
    /// A stream over `io` for the connection `conn` whose handshake is
    /// done; `leftover` is the start of a record that came with it.
    /// Buffers come from `pool`, whose buffers must hold a whole record
    /// ([`MAX_RECORD`]) and some.
    pub fn new(io: S, conn: TlsConn, leftover: &[u8], pool: Rc<Pool>) -> Self {
        let carry = (!leftover.is_empty()).then(|| {
            let mut buf = pool.take();
            buf[..leftover.len()].copy_from_slice(leftover);
            Carry {
                buf,
                plain: (0, 0),
                cipher: (0, leftover.len() as u32),
            }
        });
        TlsStream {
            io,
            conn,
            pool,
            carry,
            sealed: None,
            read_closed: false,
        }
    }

    /// The record layer.
    pub fn conn(&self) -> &TlsConn {
        &self.conn
    }

    /// Writes what is sealed; `Ready(Ok(plain))` once all of it is out.
    fn flush_sealed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(s) = &mut self.sealed else {
            return Poll::Ready(Ok(0));
        };
        while s.pos < s.end {
            match ready!(
                self.io
                    .poll_write(cx, &s.buf[s.pos as usize..s.end as usize])
            ) {
                Ok(0) => {
                    self.sealed = None;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => s.pos += n as u32,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.sealed = None;
                    return Poll::Ready(Err(e));
                }
            }
        }
        let plain = s.plain as usize;
        self.sealed = None;
        Poll::Ready(Ok(plain))
    }

    /// Seals `plain` (and owed control records) into a fresh pool buffer.
    fn seal(&mut self, plain: &[u8]) -> io::Result<()> {
        let mut buf = self.pool.take();
        let (taken, written) = self.conn.seal(plain, &mut buf)?;
        if written > 0 {
            self.sealed = Some(Sealed {
                buf,
                pos: 0,
                end: written as u32,
                plain: taken as u32,
            });
        }
        Ok(())
    }

    /// The end of the underlying stream with `c` bytes of a record kept.
    fn at_end(&mut self, c: usize) -> io::Result<usize> {
        self.carry = None;
        if c > 0 {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "TLS record cut short by the end of the stream",
            ))
        } else {
            // An end without close_notify is a TCP end, as the relay sees it
            // (what came is authenticated record by record).
            Ok(0)
        }
    }

    /// A KeyUpdate answer owed: sent now if the socket takes it; otherwise
    /// the next write finishes it before its data.
    fn answer_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.conn.has_control() && self.sealed.is_none() {
            self.seal(&[])?;
            let _ = self.flush_sealed(cx);
        }
        Ok(())
    }

    /// Sends close_notify if nothing is half written, without waiting.
    fn send_close_notify(&mut self) {
        if self.sealed.is_some() {
            return; // a record is half out: a close_notify now would corrupt it
        }
        let mut alert = [0u8; CLOSE_NOTIFY_MAX];
        let Ok(n) = self.conn.close_notify(&mut alert) else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut at = 0;
        while at < n {
            match self.io.poll_write(&mut cx, &alert[at..n]) {
                Poll::Ready(Ok(w)) if w > 0 => at += w,
                _ => return,
            }
        }
    }
}

impl<S: Transport> Transport for TlsStream<S> {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            // Plaintext a small read left behind goes first.
            if let Some(c) = &mut self.carry {
                let (from, to) = c.plain;
                if from < to {
                    let n = buf.len().min((to - from) as usize);
                    buf[..n].copy_from_slice(&c.buf[from as usize..from as usize + n]);
                    c.plain.0 += n as u32;
                    if c.plain.0 == to && c.cipher_len() == 0 {
                        self.carry = None;
                    }
                    return Poll::Ready(Ok(n));
                }
            }
            if self.read_closed {
                self.carry = None;
                return Poll::Ready(Ok(0));
            }
            let c = self.carry.as_ref().map_or(0, Carry::cipher_len);
            if buf.len() >= c + MAX_RECORD {
                // The relay's case: records opened where they were read.
                // Read after the room the carried bytes take, so that a
                // read that finds nothing leaves them where they are.
                let n = ready!(self.io.poll_read(cx, &mut buf[c..]))?;
                if n == 0 {
                    return Poll::Ready(self.at_end(c));
                }
                if let Some(carry) = self.carry.take() {
                    let (from, to) = carry.cipher;
                    buf[..c].copy_from_slice(&carry.buf[from as usize..to as usize]);
                }
                let total = c + n;
                let r = self.conn.read(&mut buf[..total])?;
                if r.used < total {
                    let rest = total - r.used;
                    let mut b = self.pool.take();
                    b[..rest].copy_from_slice(&buf[r.used..total]);
                    self.carry = Some(Carry {
                        buf: b,
                        plain: (0, 0),
                        cipher: (0, rest as u32),
                    });
                }
                self.read_closed = r.closed;
                self.answer_control(cx)?;
                if r.plain > 0 {
                    return Poll::Ready(Ok(r.plain));
                }
            } else {
                // A small buffer (the handshake's reads): open the records
                // in a pool buffer and hand their plaintext out from there.
                let mut carry = match self.carry.take() {
                    Some(mut k) => {
                        let (from, to) = k.cipher;
                        k.buf.copy_within(from as usize..to as usize, 0);
                        k.cipher = (0, c as u32);
                        k
                    }
                    None => Carry {
                        buf: self.pool.take(),
                        plain: (0, 0),
                        cipher: (0, 0),
                    },
                };
                let n = match self.io.poll_read(cx, &mut carry.buf[c..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(self.at_end(c)),
                    Poll::Ready(Ok(n)) => n,
                    other => {
                        if c > 0 {
                            self.carry = Some(carry);
                        }
                        return other;
                    }
                };
                let total = c + n;
                let r = self.conn.read(&mut carry.buf[..total])?;
                carry.plain = (0, r.plain as u32);
                carry.cipher = (r.used as u32, total as u32);
                if r.plain > 0 || carry.cipher_len() > 0 {
                    self.carry = Some(carry);
                }
                self.read_closed = r.closed;
                self.answer_control(cx)?;
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.sealed.is_some() {
                let plain = ready!(self.flush_sealed(cx))?;
                if plain > 0 {
                    return Poll::Ready(Ok(plain));
                }
            }
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            self.seal(buf)?;
            if self.sealed.is_none() {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
        }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.send_close_notify();
        self.io.shutdown_write()
    }

    fn shutdown_both(&mut self) -> io::Result<()> {
        self.io.shutdown_both()
    }
}

impl<S: Transport> Drop for TlsStream<S> {
    fn drop(&mut self) {
        // wsedge closes the TLS session before the socket (RFC 8446 §6.1).
        self.send_close_notify();
    }
}
