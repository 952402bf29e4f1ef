//! The byte streams a session relays between, driven poll-style.
//!
//! Sockets are in monoio's poll-io mode: registered once with the driver's
//! readiness poller (an edge-triggered epoll, itself watched through the
//! io_uring ring when io_uring runs), read and written with plain
//! non-blocking syscalls. A `poll_read` that finds nothing returns `Pending`
//! and keeps no reference to the buffer it was given, so a waiting
//! connection holds no buffer: it borrows one from the pool only for the
//! span of a read and the write that follows (see `docs/architecture.md`).
//! Relay and session code is generic over [`Transport`], so TLS streams plug
//! in beside TCP.

use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use monoio::net::tcp::stream_poll::TcpStreamPoll;

/// A connected byte stream.
pub trait Transport: Unpin {
    /// Reads into `buf`: `Ready(Ok(0))` is end of stream; `Pending` means
    /// nothing yet (the task is woken when there is).
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes from `buf` what the socket takes.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// Half-closes the write side (TCP FIN).
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Ends the connection both ways (a dead peer is dropped); the socket
    /// itself is closed when the stream is dropped.
    fn shutdown_both(&mut self) -> io::Result<()>;
}

/// Reads at least one byte (or end of stream) into `buf`.
pub async fn read<T: Transport + ?Sized>(t: &mut T, buf: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| {
        loop {
            match ready!(t.poll_read(cx, buf)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return Poll::Ready(r),
            }
        }
    })
    .await
}

/// Writes all of `buf`.
pub async fn write_all<T: Transport + ?Sized>(t: &mut T, mut buf: &[u8]) -> io::Result<()> {
    poll_fn(|cx| {
        while !buf.is_empty() {
            match ready!(t.poll_write(cx, buf)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

impl Transport for TcpStreamPoll {
    #[inline]
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        ready!(tokio::io::AsyncRead::poll_read(Pin::new(self), cx, &mut rb))?;
        Poll::Ready(Ok(rb.filled().len()))
    }

    #[inline]
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(self), cx, buf)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        crate::sys::shutdown_write(self.as_raw_fd())
    }

    fn shutdown_both(&mut self) -> io::Result<()> {
        crate::sys::shutdown_both(self.as_raw_fd())
    }
}

/// A client or backend connection: plain TCP, or TLS over it (boxed: the
/// record layer's keys would otherwise make every plain connection as big).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStreamPoll),
    /// TLS over TCP.
    Tls(Box<crate::tls::TlsStream<TcpStreamPoll>>),
}

impl Transport for Stream {
    #[inline]
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => s.poll_read(cx, buf),
            Stream::Tls(s) => s.poll_read(cx, buf),
        }
    }

    #[inline]
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(s) => s.poll_write(cx, buf),
            Stream::Tls(s) => s.poll_write(cx, buf),
        }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown_write(),
            Stream::Tls(s) => s.shutdown_write(),
        }
    }

    fn shutdown_both(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown_both(),
            Stream::Tls(s) => s.shutdown_both(),
        }
    }
}

/// Takes a poll-io socket out of monoio (for the native relay ring).
pub fn into_fd(s: TcpStreamPoll) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let s = s.try_into_comp_io().map_err(|(e, _)| e)?;
    let fd = s.into_raw_fd();
    // SAFETY: monoio gave up the descriptor; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Switches an accepted or connected socket to poll-style IO.
pub fn into_poll(s: monoio::net::TcpStream) -> io::Result<TcpStreamPoll> {
    s.try_into_poll_io().map_err(|(e, _)| e)
}
