//! The JWKS URL refresher: a thread of its own (`wsedge-jwks`), never a
//! worker, fetches the document with a small blocking HTTP/1.1 client
//! (rustls for `https://`, the system's CA certificates) and hands it to
//! [`JwtVerifier::set_jwks`]. A failed fetch keeps the last good keys,
//! logs why, and is retried sooner (5 s, doubling up to the interval).
//!
//! The response parser ([`parse_response`]) is sans-IO: it takes the bytes
//! read so far and answers "complete, here is the body", "need more" or an
//! error, without consuming anything.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tracing::{debug, error, warn};

use super::JwtVerifier;

/// Connect, read and write timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one fetch may take, all reads together.
const FETCH_DEADLINE: Duration = Duration::from_secs(30);
/// Largest JWKS body.
const MAX_BODY: usize = 1 << 20;
/// Largest response header, and largest chunk-size or trailer line run.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response as read (header, body and chunk framing).
const MAX_RESPONSE: usize = MAX_BODY + 2 * MAX_HEAD;
/// The first retry after a failure; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The shortest interval (a zero one would spin).
const MIN_EVERY: Duration = Duration::from_millis(10);

/// The running refresher. [`JwksRefresher::stop`] stops it and waits for
/// the thread; dropping it stops it without waiting (a fetch in flight
/// ends on its own, at most 30 s later, and its result is dropped).
#[derive(Debug)]
pub struct JwksRefresher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl JwksRefresher {
    /// Stops the thread and waits for it: at once when it is waiting for
    /// the next fetch, or when the fetch in flight ends.
    pub fn stop(mut self) {
        self.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal(&self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
    }
}

impl Drop for JwksRefresher {
    fn drop(&mut self) {
        self.signal();
    }
}

/// Starts the `wsedge-jwks` thread: fetches `url` (`http://` or
/// `https://`) at once and then every `every`, calling
/// [`JwtVerifier::set_jwks`] with the body. On any failure it logs a
/// warning and keeps the last good keys.
pub fn spawn_refresher(verifier: Arc<JwtVerifier>, url: String, every: Duration) -> JwksRefresher {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let s = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("wsedge-jwks".into())
        .spawn(move || run(&verifier, &url, every, &s));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            error!("JWKS refresh not running: cannot start its thread: {e}");
            None
        }
    };
    JwksRefresher { stop, thread }
}

/// Whether `url` is one [`spawn_refresher`] can fetch (`http://` or
/// `https://`, a host, an optional port, no user info, no spaces or
/// control characters), for `config` to refuse a bad `jwks_url` at load
/// time; the error is one line.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    Target::parse(url).map(|_| ())
}

fn run(verifier: &JwtVerifier, url: &str, every: Duration, stop: &(Mutex<bool>, Condvar)) {
    let every = every.max(MIN_EVERY);
    let target = match Target::parse(url) {
        Ok(t) => t,
        Err(why) => {
            error!(url, "JWKS refresh not running: {why}");
            return;
        }
    };
    let mut client = Client::default();
    let mut retry = FIRST_RETRY;
    loop {
        let fetched = client.fetch(&target);
        if stopped(stop) {
            return;
        }
        let wait = match fetched.and_then(|body| verifier.set_jwks(&body)) {
            Ok(n) => {
                debug!(url, keys = n, "JWKS refreshed");
                retry = FIRST_RETRY;
                every
            }
            Err(why) => {
                warn!(
                    url,
                    "JWKS refresh failed: {why}; keeping the last good keys"
                );
                let wait = retry.min(every);
                retry = retry.saturating_mul(2).min(every);
                wait
            }
        };
        if wait_or_stop(stop, wait) {
            return;
        }
    }
}

fn stopped(stop: &(Mutex<bool>, Condvar)) -> bool {
    *stop.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits `wait` unless stopped first; true when stopped.
fn wait_or_stop(stop: &(Mutex<bool>, Condvar), wait: Duration) -> bool {
    let (flag, wake) = stop;
    let start = Instant::now();
    let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return false;
        }
        stopped = wake
            .wait_timeout(stopped, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) tls: bool,
    /// The host to connect to (an IPv6 address without brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// The `Host` header: the URL's authority as written.
    pub(super) authority: String,
    /// The request target: path and query (`/` when empty).
    pub(super) path: String,
}

impl Target {
    /// `http://host[:port][/path][?query]` or `https://...`; no user info;
    /// a fragment is dropped.
    pub(super) fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err("user info in the JWKS URL is not supported".into());
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("spaces or control characters in the JWKS URL".into());
        }
        let path = match path.as_bytes().first() {
            None => "/".to_string(),
            Some(b'?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        let default_port = if tls { 443 } else { 80 };
        let bad_port = || format!("bad port in {url:?}");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad_port)?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad_port)?,
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, p.parse().map_err(|_| bad_port())?),
                None => (authority, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("no host or port in {url:?}"));
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path,
        })
    }

    fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wsedge\r\nAccept: application/jwk-set+json, application/json\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        )
    }
}

/// A byte stream: plain TCP or rustls over TCP.
trait Io: Read + Write {}
impl<T: Read + Write> Io for T {}

/// The HTTP client: its TLS configuration is built at the first
/// `https://` fetch and kept.
#[derive(Debug, Default)]
struct Client {
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    /// One GET: the 200 response's body, or why not.
    fn fetch(&mut self, target: &Target) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + FETCH_DEADLINE;
        let tcp = connect(target)?;
        let mut stream: Box<dyn Io> = if target.tls {
            let config = match &self.tls {
                Some(c) => Arc::clone(c),
                None => {
                    let c = tls_config()?;
                    self.tls = Some(Arc::clone(&c));
                    c
                }
            };
            let name = ServerName::try_from(target.host.clone())
                .map_err(|e| format!("{}: {e}", target.host))?;
            let conn =
                rustls::ClientConnection::new(config, name).map_err(|e| format!("TLS: {e}"))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        exchange(&mut *stream, target.request().as_bytes(), deadline)
    }
}

fn connect(target: &Target) -> Result<TcpStream, String> {
    let addrs = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", target.host))?;
    let mut last = format!("{} resolves to no address", target.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                    .map_err(|e| format!("{addr}: {e}"))?;
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no system CA certificates found for https".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Sends `request` and reads until [`parse_response`] has the body.
fn exchange(stream: &mut dyn Io, request: &[u8], deadline: Instant) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "no complete response within {} s",
                FETCH_DEADLINE.as_secs()
            ));
        }
        let (n, eof) = match stream.read(&mut chunk) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A TLS peer that closes without close_notify: the framing
            // (Content-Length, chunked) still tells a truncated body.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => (0, true),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out reading the response".into());
            }
            Err(e) => return Err(format!("reading the response: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err("response too large (the body is limited to 1 MiB)".into());
        }
        if let Some(body) = parse_response(&buf, eof)? {
            return Ok(body);
        }
        if eof {
            return Err("connection closed before the response was complete".into());
        }
    }
}

/// Parses the response read so far (`eof`: nothing more will come). A
/// 200's complete body (Content-Length, chunked, or up to the end of the
/// stream) is `Some`; `None` means more bytes are needed. Another status,
/// bad framing, a body over 1 MiB, or a truncated one are errors.
pub(super) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("response header larger than 64 KiB".into());
        }
        Ok(httparse::Status::Partial) if eof => {
            return Err("connection closed in the response header".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response: {e}")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 200 {
        return Err(format!("HTTP status {code}"));
    }
    let body = &buf[head..];
    match framing(resp.headers)? {
        Framing::Chunked => dechunk(body, eof),
        Framing::Length(n) if n > MAX_BODY => Err(format!("body of {n} bytes; 1 MiB at most")),
        Framing::Length(n) if body.len() >= n => Ok(Some(body[..n].to_vec())),
        Framing::Length(n) if eof => Err(format!(
            "connection closed after {} of {n} body bytes",
            body.len()
        )),
        Framing::Length(_) => Ok(None),
        Framing::Close if body.len() > MAX_BODY => Err("body over 1 MiB".into()),
        Framing::Close if eof => Ok(Some(body.to_vec())),
        Framing::Close => Ok(None),
    }
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(usize),
    /// Up to the end of the stream.
    Close,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, String> {
    let mut length = None;
    for h in headers {
        let value = std::str::from_utf8(h.value).map_err(|_| format!("bad {} header", h.name))?;
        let value = value.trim();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
            if value.eq_ignore_ascii_case("chunked") {
                return Ok(Framing::Chunked);
            }
            return Err(format!("transfer-encoding {value:?} not supported"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad content-length {value:?}"));
            }
            let n = value.parse::<usize>().unwrap_or(usize::MAX);
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length headers".into());
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// A chunked body (RFC 9112 §7.1) read so far: the data once the last
/// chunk and the trailer section are in, `None` before.
fn dechunk(data: &[u8], eof: bool) -> Result<Option<Vec<u8>>, String> {
    let incomplete = || {
        if eof {
            Err("connection closed in the chunked body".to_string())
        } else {
            Ok(None)
        }
    };
    let mut pos = 0;
    let mut total = 0usize;
    let mut chunks = Vec::new();
    loop {
        let Some(line) = crlf(&data[pos..]) else {
            if data.len() - pos > MAX_HEAD {
                return Err("chunk-size line too long".into());
            }
            return incomplete();
        };
        let size = chunk_size(&data[pos..pos + line])?;
        pos += line + 2;
        if size == 0 {
            // The trailer section: lines up to an empty one.
            loop {
                let Some(end) = crlf(&data[pos..]) else {
                    if data.len() - pos > MAX_HEAD {
                        return Err("chunked trailer too long".into());
                    }
                    return incomplete();
                };
                pos += end + 2;
                if end == 0 {
                    break;
                }
            }
            let mut body = Vec::with_capacity(total);
            for (start, len) in chunks {
                body.extend_from_slice(&data[start..start + len]);
            }
            return Ok(Some(body));
        }
        total = match total.checked_add(size) {
            Some(t) if t <= MAX_BODY => t,
            _ => return Err("body over 1 MiB".into()),
        };
        // `size` is at most 1 MiB here, so this cannot overflow.
        let end = pos + size;
        if data.len() < end + 2 {
            return incomplete();
        }
        if &data[end..end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        chunks.push((pos, size));
        pos = end + 2;
    }
}

/// Where the first CRLF starts.
fn crlf(data: &[u8]) -> Option<usize> {
    data.windows(2).position(|w| w == b"\r\n")
}

/// A chunk-size line: hex digits, then optional `;extensions`.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
    let hex = hex.trim_ascii();
    let bad = || "bad chunk size".to_string();
    if hex.is_empty() || hex.len() > 8 {
        return Err(bad());
    }
    let text = std::str::from_utf8(hex).map_err(|_| bad())?;
    usize::from_str_radix(text, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://idp.example/.well-known/jwks.json").unwrap();
        assert!(t.tls);
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.authority.as_str(),
                t.path.as_str()
            ),
            ("idp.example", 443, "idp.example", "/.well-known/jwks.json")
        );
        let t = Target::parse("HTTP://127.0.0.1:8080?x=1#frag").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.path, "/?x=1");
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = Target::parse("http://[::1]:9000/k").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9000, "[::1]:9000")
        );
        let t = Target::parse("http://[::1]").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        assert!(check_jwks_url("https://idp.example:8443/keys").is_ok());
        for bad in [
            "ftp://x/",
            "x/y",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://[::1/",
            "http://[::1]x/",
            "http://h/a b",
            "http://h/a\r\nX: y",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
        assert!(
            Target::parse("http://h:8/p")
                .unwrap()
                .request()
                .starts_with("GET /p HTTP/1.1\r\nHost: h:8\r\n")
        );
    }

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..r.len() {
            assert_eq!(parse_response(&r[..cut], false), Ok(None), "cut {cut}");
            assert!(parse_response(&r[..cut], true).is_err(), "cut {cut}");
        }
        assert_eq!(parse_response(r, false), Ok(Some(b"hello".to_vec())));
        // Bytes after the body (a server ignoring Connection: close).
        let mut more = r.to_vec();
        more.extend_from_slice(b"HTTP/1.1 200");
        assert_eq!(parse_response(&more, false), Ok(Some(b"hello".to_vec())));
    }

    #[test]
    fn read_to_eof() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"keys\":[]}";
        assert_eq!(parse_response(r, false), Ok(None));
        assert_eq!(parse_response(r, true), Ok(Some(b"{\"keys\":[]}".to_vec())));
    }

    #[test]
    fn chunked() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n\
                  4;ext=1\r\n{\"ke\r\n7\r\nys\":[]}\r\n0\r\nX-Trailer: y\r\n\r\n";
        for cut in 0..r.len() {
            assert_eq!(parse_response(&r[..cut], false), Ok(None), "cut {cut}");
            assert!(parse_response(&r[..cut], true).is_err(), "cut {cut}");
        }
        assert_eq!(parse_response(r, true), Ok(Some(b"{\"keys\":[]}".to_vec())));
        let plain = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        assert_eq!(parse_response(plain, false), Ok(Some(b"ab".to_vec())));
    }

    #[test]
    fn refusals() {
        let cases: &[&[u8]] = &[
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            b"\x00\x01garbage\r\n\r\n",
        ];
        for c in cases {
            assert!(
                parse_response(c, false).is_err(),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert!(parse_response(&long, false).is_err());
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.resize(big.len() + MAX_BODY + 1, b' ');
        assert!(parse_response(&big, false).is_err());
    }
}
