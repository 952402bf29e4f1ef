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

/// A `ws://` or `wss://` `host:port/path` target, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
    pub url: String,
    /// Extra request header lines (`Name: value\r\n` each), from `--header`.
    pub headers: String,
    /// `wss://`: the TLS client configuration and the server name (SNI and
    /// the name the certificate must hold: the URL's host).
    pub tls: Option<TlsTarget>,
}

/// How to dial TLS to a target.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl Target {
    /// Parses the URL; `wss://` needs `tls` (how to verify the server).
    /// A host name that resolves to several addresses is dialled at its
    /// first IPv4 one (what `--source-ips` can reach), else its first.
    pub fn parse(url: &str, tls: Option<&crate::tls::ClientTls>) -> anyhow::Result<Self> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else {
            (false, url)
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in {url:?}");
        }
        let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
            p.parse::<u16>().is_ok() && (!h.starts_with('[') || h.ends_with(']'))
        });
        let with_port = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if secure { 443 } else { 80 })
        };
        let addrs: Vec<SocketAddr> = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .with_context(|| format!("no address for {with_port}"))?;
        let tls = if secure {
            let opts = tls.context("wss:// without TLS options")?;
            let host = with_port
                .rsplit_once(':')
                .map_or(with_port.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
            Some(TlsTarget {
                config: crate::tls::client_config(opts)?,
                name,
            })
        } else {
            if tls.is_some_and(|t| t.ca.is_some() || t.insecure || t.resume) {
                bail!("--ca, --insecure and --tls-resume are for wss:// URLs");
            }
            None
        };
        Ok(Self {
            addr,
            host: authority.to_string(),
            path: path.to_string(),
            url: format!("{}://{authority}{path}", if secure { "wss" } else { "ws" }),
            headers: String::new(),
            tls,
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
        let t = Target::parse("ws://127.0.0.1:9001/echo", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/echo");
        assert_eq!(t.host, "127.0.0.1:9001");
        assert!(t.tls.is_none());
        let t = Target::parse("127.0.0.1:80", None).unwrap();
        assert_eq!(t.path, "/");
        let insecure = crate::tls::ClientTls {
            insecure: true,
            ..Default::default()
        };
        let t = Target::parse("wss://localhost/x", Some(&insecure)).unwrap();
        assert_eq!(t.addr, "127.0.0.1:443".parse().unwrap());
        assert_eq!(t.url, "wss://localhost/x");
        assert_eq!(
            t.tls.unwrap().name,
            rustls::pki_types::ServerName::try_from("localhost").unwrap()
        );
        let t = Target::parse("wss://[::1]:8443/", Some(&insecure)).unwrap();
        assert_eq!(t.addr, "[::1]:8443".parse().unwrap());
        assert_eq!(t.host, "[::1]:8443");
        assert!(matches!(
            t.tls.unwrap().name,
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert!(Target::parse("ws://127.0.0.1:1/", Some(&insecure)).is_err());
    }

    #[test]
    fn parses_source_ranges() {
        let v = parse_source_ips("127.0.0.2-127.0.0.255").unwrap();
        assert_eq!(v.len(), 254);
        assert_eq!(parse_source_ips("127.0.0.2,127.0.0.3").unwrap().len(), 2);
    }
}
