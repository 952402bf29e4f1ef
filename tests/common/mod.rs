//! The end-to-end harness shared by the `tests/proxy_*.rs` files.
//!
//! Every scenario is an `async fn(IoDriver)` run on a fresh tokio runtime
//! under a time limit (a hang fails instead of blocking CI), once per io
//! driver ([`both_drivers!`]). The proxy under test is a real
//! [`wsedge::server::Server`] on a loopback port; the clients and backends
//! around it are someone else's implementation (tokio-tungstenite) or raw
//! sockets with hand-written bytes ([`RawWs`], [`frame`]) for the edge cases
//! tungstenite refuses to produce.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
pub use wsedge::config::{Config, IoDriver};
use wsedge::server::Server;

/// How long any single expected event may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The default limit on a whole scenario.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// Declares, for each scenario `name` (an `async fn name(driver: IoDriver)`
/// in the same file), a module `name` with the tests `uring` and `epoll`.
/// Attributes given before a name (`#[ignore = "..."]`) go on both tests.
#[allow(unused_macros)] // not every test file runs scenarios under both drivers
macro_rules! both_drivers {
    ($( $(#[$attr:meta])* $name:ident ),* $(,)?) => {$(
        mod $name {
            #[test]
            $(#[$attr])*
            fn uring() {
                crate::common::run(wsedge::config::IoDriver::Uring, super::$name);
            }

            #[test]
            $(#[$attr])*
            fn epoll() {
                crate::common::run(wsedge::config::IoDriver::Epoll, super::$name);
            }
        }
    )*};
}

/// Runs `scenario(driver)` on a fresh multi-threaded tokio runtime; panics
/// if it takes longer than [`SCENARIO_LIMIT`].
pub fn run<F, Fut>(driver: IoDriver, scenario: F)
where
    F: FnOnce(IoDriver) -> Fut,
    Fut: Future<Output = ()>,
{
    run_for(driver, SCENARIO_LIMIT, scenario)
}

/// [`run`] with a limit of its own.
pub fn run_for<F, Fut>(driver: IoDriver, limit: Duration, scenario: F)
where
    F: FnOnce(IoDriver) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Boxed: debug-build futures are large, and the test thread's stack small.
    rt.block_on(async {
        if tokio::time::timeout(limit, Box::pin(scenario(driver)))
            .await
            .is_err()
        {
            panic!("the scenario did not finish within {limit:?} ({driver:?})");
        }
    });
    rt.shutdown_background();
}

/// Awaits `f`, failing the test with `what` if it takes longer than [`STEP`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    within_for(STEP, what, f).await
}

/// Awaits `f`, failing the test with `what` if it takes longer than `limit`
/// (for steps that move many megabytes through debug builds).
pub async fn within_for<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// The proxy.

/// A running wsedge on `127.0.0.1:0`, one worker; shut down on drop.
#[derive(Debug)]
pub struct Proxy {
    server: Option<Server>,
    /// The address clients connect to.
    pub addr: SocketAddr,
}

impl Proxy {
    /// Proxies every path to `upstreams` (`"builtin:echo"` or `IP:port`).
    pub fn start(driver: IoDriver, upstreams: &[String]) -> Proxy {
        Proxy::start_with(driver, upstreams, |_| {})
    }

    /// [`Proxy::start`], with `tweak` applied to the configuration first.
    pub fn start_with(
        driver: IoDriver,
        upstreams: &[String],
        tweak: impl FnOnce(&mut Config),
    ) -> Proxy {
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut config =
            Config::from_args(&[listen], upstreams, None, None).expect("config from args");
        tweak(&mut config);
        Proxy::start_config(driver, config)
    }

    /// Starts `config` (its listeners should be on port 0) with one worker
    /// and the given driver; a short shutdown grace unless it sets one.
    pub fn start_config(driver: IoDriver, config: Config) -> Proxy {
        Proxy::start_workers(driver, config, 1)
    }

    /// [`Proxy::start_config`] with `workers` workers.
    pub fn start_workers(driver: IoDriver, mut config: Config, workers: usize) -> Proxy {
        let defaults = Config::embedded_default();
        config.workers = workers;
        config.io_driver = driver;
        if config.timeouts.shutdown_grace == defaults.timeouts.shutdown_grace {
            config.timeouts.shutdown_grace = Duration::from_millis(300);
        }
        if config.timeouts.close == defaults.timeouts.close {
            config.timeouts.close = Duration::from_secs(2);
        }
        let server = Server::start(config).expect("wsedge starts");
        let want = match driver {
            IoDriver::Uring => "io_uring",
            IoDriver::Epoll => "epoll",
            IoDriver::Auto => server.drivers[0],
        };
        assert!(
            server.drivers.iter().all(|d| *d == want),
            "the io driver asked for: {:?}",
            server.drivers
        );
        Proxy {
            addr: server.addrs[0],
            server: Some(server),
        }
    }

    /// The running server (its fleet's shared server states, ...).
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Re-reads the TLS certificates, as SIGHUP does.
    pub fn reload_tls(&self) {
        self.server.as_ref().expect("running").reload_tls();
    }

    /// `ws://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// One of the server's counters, summed over workers.
    pub fn counter(&self, name: &str) -> u64 {
        let server = self.server.as_ref().expect("running");
        server
            .totals()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter {name:?}"))
            .1
    }

    /// Waits (up to [`STEP`]) until counter `name` reads `value`: counters
    /// are updated just after a connection's last bytes are written.
    pub async fn wait_counter(&self, name: &str, value: u64) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let now = self.counter(name);
            if now == value {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("counter {name} is {now}, expected {value}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

// ---------------------------------------------------------------------------
// tokio-tungstenite clients and backends.

/// A tungstenite config without size limits, so that only the proxy's
/// limits are being tested.
pub fn unlimited() -> WebSocketConfig {
    WebSocketConfig {
        max_message_size: None,
        max_frame_size: None,
        ..WebSocketConfig::default()
    }
}

/// A client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A backend's side of a connection.
pub type BackendWs = WebSocketStream<TcpStream>;

/// Connects a tokio-tungstenite client through the proxy.
pub async fn connect(url: &str) -> Client {
    let (ws, resp) = within(
        "the client handshake",
        tokio_tungstenite::connect_async_with_config(url, Some(unlimited()), true),
    )
    .await
    .unwrap_or_else(|e| panic!("client handshake with {url}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Reads the next message that is not a ping or pong.
pub async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = within("a message", ws.next())
            .await
            .expect("a message, not the end of the stream")
            .expect("a message, not an error");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

/// Reads until a close frame arrives (skipping anything else) and returns it.
pub async fn expect_close<S>(ws: &mut WebSocketStream<S>) -> Option<CloseFrame<'static>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a close frame", ws.next()).await {
            Some(Ok(Message::Close(c))) => return c,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("expected a close frame, got the error {e}"),
            None => panic!("expected a close frame, the stream ended"),
        }
    }
}

/// Expects a close frame with `code`, returning its reason.
pub async fn expect_close_code<S>(ws: &mut WebSocketStream<S>, code: u16, who: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = expect_close(ws).await;
    let frame = frame.unwrap_or_else(|| panic!("{who}: close without a code, expected {code}"));
    assert_eq!(
        u16::from(frame.code),
        code,
        "{who}: close code (reason {:?})",
        frame.reason
    );
    frame.reason.into_owned()
}

/// A connection a [`Backend`] accepted: the upgrade request the proxy sent,
/// and the backend's WebSocket.
#[derive(Debug)]
pub struct Accepted {
    /// The upgrade request as the backend received it.
    pub request: Request,
    /// The backend's side of the connection.
    pub ws: BackendWs,
}

/// A tokio-tungstenite backend that hands each accepted connection to the test.
#[derive(Debug)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Accepted>,
}

impl Backend {
    /// Starts a backend that chooses no subprotocol.
    pub async fn start() -> Backend {
        Backend::start_choosing(None).await
    }

    /// Starts a backend that answers `Sec-WebSocket-Protocol: protocol`
    /// (whatever the client offered).
    // tungstenite's callback type fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    pub async fn start_choosing(protocol: Option<&'static str>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut seen = None;
                    let callback = |req: &Request, mut resp: Response| {
                        seen = Some(req.clone());
                        if let Some(p) = protocol {
                            resp.headers_mut()
                                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
                        }
                        Ok::<Response, ErrorResponse>(resp)
                    };
                    let ws = tokio_tungstenite::accept_hdr_async_with_config(
                        stream,
                        callback,
                        Some(unlimited()),
                    )
                    .await;
                    if let (Ok(ws), Some(request)) = (ws, seen) {
                        let _ = tx.send(Accepted { request, ws });
                    }
                });
            }
        });
        Backend { addr, conns }
    }

    /// The address as an `--upstream` string.
    pub fn upstream(&self) -> Vec<String> {
        vec![self.addr.to_string()]
    }

    /// The next connection the proxy made, if it makes one (no timeout:
    /// wrap it in one).
    pub async fn try_accept(&mut self) -> Option<Accepted> {
        self.conns.recv().await
    }

    /// The next connection the proxy made.
    pub async fn accept(&mut self) -> Accepted {
        within("the proxy to connect to the backend", self.conns.recv())
            .await
            .expect("backend task alive")
    }
}

/// Starts a tokio-tungstenite echo backend (no size limits): text and binary
/// messages come back as they were; pings are answered by tungstenite.
pub async fn echo_backend() -> SocketAddr {
    let mut b = Backend::start().await;
    let addr = b.addr;
    tokio::spawn(async move {
        while let Some(Accepted { mut ws, .. }) = b.conns.recv().await {
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(_) | Message::Binary(_) => {
                            let sent = ws.send(m).await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        Message::Close(_) => {
                            // tungstenite has queued the reply; flush it.
                            let _ = ws.flush().await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// Raw bytes.

/// A fixed client key (RFC 6455 §1.3's sample nonce).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An upgrade request for `path`, `Host: example.test`, with `extra` header
/// lines after the required ones.
pub fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in extra {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Frame opcodes.
pub mod op {
    /// Continuation.
    pub const CONT: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A mask key for client frames in raw tests.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Encodes one frame by hand (RFC 6455 §5.2), masked with `mask` if given.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(m | n as u8),
        n @ 126..=0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A masked client frame.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, Some(MASK))
}

/// A close frame payload: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as read off the wire, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// Whether it was masked.
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The close code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, op::CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// An HTTP response read off a raw socket.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status line, without CRLF.
    pub status_line: String,
    /// The status code.
    pub status: u16,
    /// The header lines, as (name, value).
    pub headers: Vec<(String, String)>,
    /// Whatever followed the head.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn parse(head: &[u8], body: Vec<u8>) -> HttpResponse {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_string();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap_or((l, ""));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        HttpResponse {
            status_line,
            status,
            headers,
            body,
        }
    }
}

/// Writes `request` to `addr` in one write and reads the whole answer (to
/// EOF: the proxy closes after an HTTP error).
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut all = Vec::new();
    within("the proxy's answer and EOF", async {
        let mut chunk = vec![0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                // A reset after the answer (unread request bytes) still ends it.
                Err(_) if !all.is_empty() => break,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
    })
    .await;
    let end = find(&all, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete HTTP head in {:?}",
            String::from_utf8_lossy(&all)
        )
    });
    HttpResponse::parse(&all[..end + 2], all[end + 4..].to_vec())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A WebSocket spoken by hand over a tokio `TcpStream`: raw frames out, raw
/// frames in. Used on either side of the proxy.
#[derive(Debug)]
pub struct RawWs {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to the proxy, sends `request` followed by `first` in one
    /// write, and reads the answer's head, whatever its status (a 101 must
    /// carry the right `Sec-WebSocket-Accept`).
    pub async fn try_connect(
        addr: SocketAddr,
        request: &[u8],
        first: &[u8],
    ) -> (RawWs, HttpResponse) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut out = request.to_vec();
        out.extend_from_slice(first);
        stream.write_all(&out).await.unwrap();
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head = within("the answer", ws.read_head()).await;
        let resp = HttpResponse::parse(&head, Vec::new());
        if resp.status == 101 {
            assert_eq!(
                resp.header("Sec-WebSocket-Accept"),
                Some(derive_accept_key(KEY.as_bytes()).as_str())
            );
        }
        (ws, resp)
    }

    /// Connects to the proxy, sends `request` followed by `first` in one
    /// write, and expects a 101.
    pub async fn connect(addr: SocketAddr, request: &[u8], first: &[u8]) -> (RawWs, HttpResponse) {
        let (ws, resp) = RawWs::try_connect(addr, request, first).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        (ws, resp)
    }

    /// Connects a client with the plain upgrade request for `/`.
    pub async fn client(addr: SocketAddr) -> RawWs {
        RawWs::connect(addr, &upgrade_request("/", &[]), &[])
            .await
            .0
    }

    /// Accepts one connection on `listener` as a backend: reads the upgrade
    /// request, answers 101 with the right accept key. Returns the request head.
    pub async fn accept(listener: &TcpListener) -> (RawWs, String) {
        let (stream, _) = within("the proxy to connect", listener.accept())
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut ws = RawWs {
            stream,
            buf: Vec::new(),
        };
        let head = within("the upgrade request", ws.read_head()).await;
        let head = String::from_utf8(head).unwrap();
        ws.send(upgrade_answer(&head).as_bytes()).await;
        (ws, head)
    }

    /// Wraps a connected socket (no handshake done).
    pub fn from_stream(stream: TcpStream) -> RawWs {
        RawWs {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads one frame within [`STEP`] and also returns its first byte
    /// (FIN, RSV bits, opcode); panics at EOF.
    pub async fn read_frame_raw(&mut self) -> (u8, Frame) {
        within("a frame", async {
            loop {
                if let Some((frame, used)) = parse_frame(&self.buf) {
                    let first = self.buf[0];
                    self.buf.drain(..used);
                    return (first, frame);
                }
                assert!(self.fill().await > 0, "EOF where a frame was expected");
            }
        })
        .await
    }

    /// Reads an HTTP head (through the blank line); keeps what follows.
    pub async fn read_head(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..end + 2].to_vec();
                self.buf.drain(..end + 4);
                return head;
            }
            if self.fill().await == 0 {
                panic!(
                    "EOF before a complete HTTP head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at EOF (or reset).
    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 65536];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one frame; `None` at EOF.
    pub async fn try_read_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Reads one frame, within [`STEP`]; panics at EOF.
    pub async fn read_frame(&mut self) -> Frame {
        within("a frame", self.try_read_frame())
            .await
            .expect("a frame, not EOF")
    }

    /// Reads frames until a close frame arrives; returns it. Panics at EOF.
    pub async fn read_close(&mut self) -> Frame {
        loop {
            let f = within("a close frame", self.try_read_frame())
                .await
                .unwrap_or_else(|| panic!("EOF where a close frame was expected"));
            if f.opcode == op::CLOSE {
                return f;
            }
        }
    }

    /// Waits for EOF, skipping whatever frames come first.
    pub async fn read_eof(&mut self) {
        within("EOF", async {
            while self.try_read_frame().await.is_some() {}
        })
        .await;
    }
}

/// Closes `stream` with a TCP reset (`SO_LINGER` 0, then close).
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(stream);
}

/// Parses one frame from the front of `buf`: the frame and its length, or
/// `None` if `buf` holds less than a whole frame.
pub fn parse_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(pos..pos + 4)?.try_into().unwrap();
        pos += 4;
        Some(k)
    } else {
        None
    };
    let mut payload = buf.get(pos..pos + len)?.to_vec();
    if let Some(k) = key {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= k[i % 4];
        }
    }
    Some((
        Frame {
            fin,
            opcode,
            masked,
            payload,
        },
        pos + len,
    ))
}

/// A tungstenite message of `len` bytes: text (ASCII) or binary, with a
/// pattern that catches reordering and masking mistakes.
pub fn message(text: bool, len: usize) -> Message {
    if text {
        let s: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        Message::Text(s)
    } else {
        Message::Binary((0..len).map(|i| (i * 31 % 251) as u8).collect())
    }
}

// ---------------------------------------------------------------------------
// The binary.

/// The `wsedge` binary running as a child process, its stdout and stderr
/// collected line by line; killed on drop if still running.
#[derive(Debug)]
pub struct ProxyProcess {
    /// The child.
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line seen so far, stdout and stderr interleaved.
    pub output: Vec<String>,
}

impl ProxyProcess {
    /// Starts `wsedge ARGS` (logging at info level).
    pub fn spawn(args: &[&str]) -> ProxyProcess {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .args(args)
            .env("WSEDGE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the wsedge binary starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        ProxyProcess {
            child,
            lines,
            output: Vec::new(),
        }
    }

    /// Waits (blocking, up to `limit`) for a line containing `needle`; returns it.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        if let Some(l) = self.output.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.output.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?} within {limit:?}; output so far:\n{}",
                    self.output.join("\n")
                ),
            }
        }
    }

    /// Waits for the "listening on ws://ADDR/" line and returns ADDR.
    pub fn wait_listening(&mut self) -> SocketAddr {
        let line = self.wait_for_line("listening on ws://", Duration::from_secs(10));
        let rest = &line[line.find("ws://").unwrap() + 5..];
        rest[..rest.find('/').unwrap()]
            .parse()
            .unwrap_or_else(|e| panic!("no address in {line:?}: {e}"))
    }

    /// The child's resident set size in bytes (`VmRSS` in /proc/PID/status).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line");
        kb * 1024
    }

    /// Sends a signal with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits (blocking, up to `limit`) for the child to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Collect what is left of the output.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.output.push(l);
                }
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "wsedge did not exit within {limit:?}; output:\n{}",
                    self.output.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `--io-driver` argument for `driver`.
pub fn driver_arg(driver: IoDriver) -> &'static str {
    match driver {
        IoDriver::Uring => "uring",
        IoDriver::Epoll => "epoll",
        IoDriver::Auto => "auto",
    }
}

/// The 101 a backend answers the upgrade request `head` with (the accept
/// key derived from its `Sec-WebSocket-Key`).
pub fn upgrade_answer(head: &str) -> String {
    let key = head
        .split("\r\n")
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .expect("a Sec-WebSocket-Key");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
}

impl ProxyProcess {
    /// The binary with one worker on a free loopback port, every path to
    /// `upstream`, on `driver`.
    pub fn one_worker(upstream: &str, driver: IoDriver) -> ProxyProcess {
        ProxyProcess::spawn(&[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--workers",
            "1",
            "--io-driver",
            driver_arg(driver),
        ])
    }
}
