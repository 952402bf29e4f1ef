//! Listening sockets: one per worker per address, all bound with
//! `SO_REUSEPORT` so the kernel spreads connections over the workers.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a listening socket with `SO_REUSEPORT` and `SO_REUSEADDR`.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Binds one socket per worker on `addr`. With port 0, the first socket's
/// port is used for the others.
pub fn bind_all(
    addr: SocketAddr,
    backlog: u32,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let first = bind_reuseport(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_reuseport(actual, backlog)?);
    }
    Ok(all)
}
