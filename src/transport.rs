//! The byte streams a session relays between: readiness from the runtime,
//! then non-blocking reads and writes into buffers the caller owns.
//!
//! Waiting for readiness holds no buffer, which is how an idle connection
//! costs no read buffer: the buffer is taken from the pool only once bytes
//! are known to be there (see `docs/architecture.md`). Relay and session
//! code is generic over [`Transport`], so TLS streams plug in beside TCP.

use std::io;
use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

/// A connected byte stream, used through shared references so that the two
/// directions of a relay can each read one side and write the other.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Waits until a read would not block (data, EOF or an error pending).
    async fn readable(&self) -> io::Result<()>;
    /// Waits until a write would not block.
    async fn writable(&self) -> io::Result<()>;
    /// Reads what is there without blocking: `Ok(0)` is end of stream,
    /// `WouldBlock` means nothing yet.
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits without blocking.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Half-closes the write side (TCP FIN).
    fn shutdown_write(&self) -> io::Result<()>;

    /// Writes all of `buf`, waiting for the peer to take it.
    async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.try_write(buf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads at least one byte (or EOF) into `buf`, waiting for readiness.
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl Transport for TcpStream {
    #[inline]
    async fn readable(&self) -> io::Result<()> {
        // Not relaxed: on the epoll driver our own reads do not update the
        // runtime's readiness cache, so it must re-check before waiting.
        TcpStream::readable(self, false).await
    }

    #[inline]
    async fn writable(&self) -> io::Result<()> {
        TcpStream::writable(self, false).await
    }

    #[inline]
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::recv_nonblocking(self.as_raw_fd(), buf)
    }

    #[inline]
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send_nonblocking(self.as_raw_fd(), buf)
    }

    fn shutdown_write(&self) -> io::Result<()> {
        crate::sys::shutdown_write(self.as_raw_fd())
    }
}
