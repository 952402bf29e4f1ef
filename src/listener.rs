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
    if addr.port() != 0 {
        refuse_shared(addr)?;
    }
    let first = bind_reuseport(addr, backlog)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..workers {
        all.push(bind_reuseport(actual, backlog)?);
    }
    Ok(all)
}

/// Fails when another socket already listens on `addr`: a second process
/// binding it with `SO_REUSEPORT` too would silently take a share of its
/// connections. A socket bound without `SO_REUSEPORT` cannot share the
/// address, so binding one (then dropping it) tells.
fn refuse_shared(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "Address already in use: another process listens there (a second wsedge would \
             silently share its connections through SO_REUSEPORT; stop it first)",
        )),
        other => other,
    }
}
