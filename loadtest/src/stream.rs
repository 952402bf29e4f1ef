//! A connection, plain (`ws://`) or TLS (`wss://`), with the few operations
//! the clients and the echo server use: read more into a buffer, write a
//! buffer (or a range of it) whole, split into a read and a write half.
//! The plain case is the monoio socket as before, behind one `match`.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::IoBuf;
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::HandshakeKind;

use crate::net;
use crate::tls::TlsIo;

#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsIo<TcpStream>>),
}

#[derive(Debug)]
pub enum ReadHalf {
    Plain(OwnedReadHalf<TcpStream>),
    Tls(Box<TlsIo<OwnedReadHalf<TcpStream>>>),
}

#[derive(Debug)]
pub enum WriteHalf {
    Plain(OwnedWriteHalf<TcpStream>),
    Tls(Box<TlsIo<OwnedWriteHalf<TcpStream>>>),
}

impl Stream {
    pub fn tls(s: TlsIo<TcpStream>) -> Self {
        Self::Tls(Box::new(s))
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Self::Plain(s) => s.as_raw_fd(),
            Self::Tls(t) => t.raw_fd(),
        }
    }

    /// TLS only: whether the handshake resumed a session.
    pub fn tls_resumed(&self) -> Option<bool> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(t) => Some(t.handshake_kind() == Some(HandshakeKind::Resumed)),
        }
    }

    /// TLS only: the negotiated version and cipher suite.
    pub fn tls_session(&self) -> Option<String> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(t) => Some(t.describe()),
        }
    }

    /// Reads into `buf` after the bytes it holds (plain: into its spare
    /// capacity, which the caller provides; TLS: it grows as needed).
    /// `Ok(0)`: the peer closed.
    pub async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Self::Plain(s) => net::read_more(s, buf).await,
            Self::Tls(t) => t.read_more(buf).await,
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Self::Plain(s) => {
                let (res, buf) = s.write_all(buf).await;
                (res.map(|_| ()), buf)
            }
            Self::Tls(t) => {
                let res = t.write_all(&buf).await;
                (res, buf)
            }
        }
    }

    /// TLS: sends close_notify (before the socket is closed). Plain: nothing.
    pub async fn close_notify(&mut self) {
        if let Self::Tls(t) = self {
            t.close_notify().await;
        }
    }

    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Self::Tls(t) => {
                let (r, w) = t.into_split();
                (ReadHalf::Tls(Box::new(r)), WriteHalf::Tls(Box::new(w)))
            }
        }
    }
}

impl ReadHalf {
    /// As [`Stream::read_more`].
    pub async fn read_more(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Self::Plain(s) => net::read_more(s, buf).await,
            Self::Tls(t) => t.read_more(buf).await,
        }
    }
}

impl WriteHalf {
    /// Writes `buf[range]` whole (TLS: as its own records).
    pub async fn write_range(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        match self {
            Self::Plain(s) => {
                let (res, slice) = s.write_all(buf.slice(range)).await;
                (res.map(|_| ()), slice.into_inner())
            }
            Self::Tls(t) => {
                let res = t.write_all(&buf[range]).await;
                (res, buf)
            }
        }
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Self::Plain(s) => {
                let (res, buf) = s.write_all(buf).await;
                (res.map(|_| ()), buf)
            }
            Self::Tls(t) => {
                let res = t.write_all(&buf).await;
                (res, buf)
            }
        }
    }
}
