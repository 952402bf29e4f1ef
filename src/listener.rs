//! Listening sockets: one per worker per address, all bound with
//! `SO_REUSEPORT` so the kernel spreads connections over the workers (or
//! inherited from the process that started this one by an upgrade).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

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

/// Binds one socket per worker on `addr` (at least; hand socket `i` to
/// worker `i % workers`). With port 0, the first socket's port is used
/// for the others.
///
/// Sockets inherited from an upgrading process for `addr`
/// ([`crate::upgrade`]) are taken instead of binding: the same kernel
/// sockets, accept queues included. More workers than inherited sockets:
/// the rest are bound with `SO_REUSEPORT` beside them. Fewer: all are
/// returned, and some workers accept on several (closing one would reset
/// the clients queued on it). Sockets on a fixed port are
/// [`crate::upgrade::remember`]ed for the next upgrade.
pub fn bind_all(
    addr: SocketAddr,
    backlog: u32,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let workers = workers.max(1);
    let mut all = match crate::upgrade::take_inherited(addr) {
        Some(inherited) => inherited,
        None => {
            if addr.port() != 0 {
                refuse_shared(addr)?;
            }
            vec![bind_reuseport(addr, backlog)?]
        }
    };
    let actual = all[0].local_addr()?;
    if all.len() > workers {
        tracing::info!(
            address = %actual,
            inherited = all.len(),
            workers,
            "more inherited sockets than workers: some workers accept on several"
        );
    }
    for s in &all {
        s.set_nonblocking(true)?;
    }
    while all.len() < workers {
        all.push(bind_reuseport(actual, backlog)?);
    }
    if addr.port() != 0 {
        let fds: Vec<_> = all.iter().map(|s| s.as_raw_fd()).collect();
        crate::upgrade::remember(actual, &fds);
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
