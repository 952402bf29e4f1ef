//! Sockets and workers: target URLs, connecting (optionally from a chosen
//! source address), SO_REUSEPORT listeners, and pinned monoio workers.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, bail};
use monoio::buf::SliceMut;
use monoio::io::AsyncReadRent;
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

/// A `ws://host:port/path` target, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
    pub url: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if url.starts_with("wss://") {
            bail!("wss:// is not supported (wsload speaks plain ws://)");
        } else {
            url
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .with_context(|| format!("no address for {with_port}"))?;
        Ok(Self {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            url: format!("ws://{authority}{path}"),
        })
    }
}

/// Parses `A-B` (an IPv4 range such as `127.0.0.2-127.0.0.255`) or a comma
/// list of addresses.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    if let Some((a, b)) = spec.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().context("range start")?;
        let b: Ipv4Addr = b.trim().parse().context("range end")?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a {
            bail!("empty source address range {spec}");
        }
        Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect())
    } else {
        spec.split(',')
            .map(|s| s.trim().parse().with_context(|| format!("address {s:?}")))
            .collect()
    }
}

/// Whether the runtimes use io_uring (monoio's fusion driver picks it when
/// the kernel offers it, else epoll).
/// `WSLOAD_DRIVER=epoll` forces epoll.
pub fn uring() -> bool {
    std::env::var("WSLOAD_DRIVER").map_or(true, |v| v != "epoll") && monoio::utils::detect_uring()
}

/// Connects to `addr`, from `source` if given, with TCP_NODELAY.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_addr(addr).await?,
        Some(src) => {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            sock.bind(&SocketAddr::new(src, 0).into())?;
            sock.set_nonblocking(true)?;
            match sock.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            let std_stream: std::net::TcpStream = sock.into();
            let stream = TcpStream::from_std(std_stream)?;
            stream.writable(false).await?;
            // A failed connect leaves the socket unconnected.
            stream.peer_addr()?;
            if uring() {
                // io_uring completes reads on blocking sockets by polling;
                // on O_NONBLOCK ones it would hand EAGAIN back to us.
                crate::sys::set_blocking(std::os::fd::AsRawFd::as_raw_fd(&stream))?;
            }
            stream
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads into the spare capacity of `buf`, after the bytes it holds.
/// (monoio reads into a `Vec` from its start; a `SliceMut` keeps the
/// unconsumed bytes.) The caller makes sure there is spare capacity.
pub async fn read_more<R: AsyncReadRent>(r: &mut R, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let (len, cap) = (buf.len(), buf.capacity());
    let (res, slice) = r.read(SliceMut::new(buf, len, cap)).await;
    (res, slice.into_inner())
}

/// A SO_REUSEPORT listener: one per worker on the same address.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096);
    TcpListener::bind_with_config(addr, &opts)
}

/// CPUs this process may run on (respects `taskset`).
pub fn allowed_cpus() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Starts `n` threads named `{name}-{i}`, each pinned to one allowed CPU (round
/// robin) when `pin`, each running its own monoio runtime with `make(i)`.
pub fn spawn_workers<T, F, Fut>(
    name: &str,
    n: usize,
    pin: bool,
    entries: u32,
    make: F,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<T>>>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let make = Arc::new(make);
    let cpus = allowed_cpus();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let make = make.clone();
        let core = if pin && !cpus.is_empty() {
            Some(cpus[i % cpus.len()])
        } else {
            None
        };
        let h = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                if uring() {
                    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                        .enable_timer()
                        .with_entries(entries)
                        .build()
                        .context("building the io_uring runtime")?;
                    rt.block_on(make(i))
                } else {
                    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .context("building the epoll runtime")?;
                    rt.block_on(make(i))
                }
            })
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    Ok(handles)
}

/// Joins workers, turning a panic into an error.
pub fn join_all<T>(handles: Vec<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(r) => r,
            Err(_) => bail!("a worker thread panicked"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("ws://127.0.0.1:9001/echo").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/echo");
        assert_eq!(t.host, "127.0.0.1:9001");
        let t = Target::parse("127.0.0.1:80").unwrap();
        assert_eq!(t.path, "/");
        assert!(Target::parse("wss://x:1/").is_err());
    }

    #[test]
    fn parses_source_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.255").unwrap();
        assert_eq!(v.len(), 254);
        assert_eq!(parse_source_ips("127.0.0.2,127.0.0.3").unwrap().len(), 2);
    }
}
