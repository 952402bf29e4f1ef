//! One client connection's life: request head → route → backend connect →
//! backend handshake → 101 → relay → close.
//!
//! Every way a handshake can fail ends in an HTTP answer that says so (400,
//! 404, 405, 408, 426, 431, 502, 503, 504, or the backend's own answer
//! relayed) and one log line.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tracing::{debug, info, warn};

use crate::config::{Route, Server};
use crate::proto::handshake::{
    self, BackendRequest, BackendResponse, Expect, build_backend_request, build_switching_response,
    parse_request, parse_response, simple_response,
};
use crate::relay::{Outcome, Relay, RelayConfig};
use crate::transport::{self, Transport, into_poll};
use crate::worker::WorkerCtx;

/// Why a session ended before relaying.
#[derive(Debug)]
enum Refused {
    /// The client left (or sent nothing) before a complete request.
    Silent(&'static str),
    /// Answered with an HTTP error.
    Answered(u16, String),
}

/// One accepted client connection, as the future its worker runs: first
/// the handshake (a boxed future, freed when done), then the relay. Kept
/// small on purpose: this is what an idle connection costs (see
/// `docs/benchmarks.md`).
pub struct Session {
    ctx: Rc<WorkerCtx>,
    state: State,
}

type Relayed = Relay<TcpStreamPoll, TcpStreamPoll>;
type HandshakeFuture = Pin<Box<dyn Future<Output = Option<(Relayed, Box<Info>)>>>>;

// The relay is inline on purpose: it is the session's steady state, and
// boxing it would add an allocation per connection, not save memory.
#[allow(clippy::large_enum_variant)]
enum State {
    Handshake(HandshakeFuture),
    Relaying(Relayed, Box<Info>),
    Done,
}

/// What the closing log line says about a relayed connection.
struct Info {
    peer: SocketAddr,
    path: String,
    server: Server,
    started: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("worker", &self.ctx.id)
            .finish_non_exhaustive()
    }
}

/// Serves one accepted client connection to its end. The caller counted
/// it in `ctx.stats.active`; the session uncounts it when it ends or is dropped.
pub fn serve(ctx: Rc<WorkerCtx>, client: TcpStream, peer: SocketAddr) -> Session {
    let hs_ctx = Rc::clone(&ctx);
    let handshake: HandshakeFuture = Box::pin(async move { start(hs_ctx, client, peer).await });
    Session {
        ctx,
        state: State::Handshake(handshake),
    }
}

impl Future for Session {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Handshake(f) => match ready!(f.as_mut().poll(cx)) {
                    Some((relay, info)) => this.state = State::Relaying(relay, info),
                    None => {
                        this.state = State::Done;
                        return Poll::Ready(());
                    }
                },
                State::Relaying(relay, info) => {
                    let outcome = ready!(Pin::new(relay).poll(cx));
                    closed(&this.ctx, info, &outcome);
                    this.state = State::Done;
                    return Poll::Ready(());
                }
                State::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.stats.active.sub(1);
    }
}

/// Counts and logs a relayed connection that ended.
fn closed(ctx: &WorkerCtx, info: &Info, outcome: &Outcome) {
    ctx.stats.record_ending(&outcome.ending);
    ctx.stats.bytes_from_client.add(outcome.from_client);
    ctx.stats.bytes_from_backend.add(outcome.from_backend);
    info!(
        worker = ctx.id,
        client = %info.peer,
        path = %info.path,
        backend = %info.server,
        from_client = outcome.from_client,
        from_backend = outcome.from_backend,
        secs = info.started.elapsed().as_secs_f32(),
        "closed: {}",
        outcome.ending
    );
}

/// The handshake phase: returns the relay to run, or `None` when the
/// connection was refused (answered and logged here).
async fn start(
    ctx: Rc<WorkerCtx>,
    client: TcpStream,
    peer: SocketAddr,
) -> Option<(Relayed, Box<Info>)> {
    let _ = client.set_nodelay(true);
    let started = Instant::now();
    let mut client = match into_poll(client) {
        Ok(c) => c,
        Err(e) => {
            warn!(worker = ctx.id, client = %peer, "cannot register the socket: {e}");
            return None;
        }
    };
    let up = match handshake(&ctx, &mut client, peer).await {
        Ok(up) => up,
        Err(Refused::Silent(why)) => {
            debug!(worker = ctx.id, client = %peer, "dropped: {why}");
            return None;
        }
        Err(Refused::Answered(status, why)) => {
            ctx.stats.refused.inc();
            info!(worker = ctx.id, client = %peer, status, "refused: {why}");
            return None;
        }
    };
    let cfg = &ctx.config;
    let route = &cfg.routes[up.route];
    let relay_cfg = RelayConfig::for_route(route, &cfg.timeouts, up.compressed);
    let relay = Relay::new(
        client,
        up.backend,
        up.from_client,
        up.from_backend,
        &relay_cfg,
        Rc::clone(&ctx.relay),
    );
    Some((
        relay,
        Box::new(Info {
            peer,
            path: up.path,
            server: up.server,
            started,
        }),
    ))
}

/// Writes an HTTP error to the client and half-closes.
async fn answer<T: Transport>(client: &mut T, timeout: Duration, bytes: &[u8]) {
    let _ = monoio::time::timeout(timeout, transport::write_all(client, bytes)).await;
    let _ = client.shutdown_write();
}

/// Answers the client with `status` and a short body, and gives the
/// refusal to log.
async fn refuse<T: Transport>(
    client: &mut T,
    timeout: Duration,
    status: u16,
    why: String,
) -> Refused {
    let body = match status {
        404 => "no route for this path",
        408 => "request head timed out",
        503 => "too many connections",
        504 => "backend timed out",
        _ => "backend unavailable",
    };
    answer(client, timeout, &simple_response(status, body)).await;
    Refused::Answered(status, why)
}

/// Reads into `buf` until `complete(buf)` says the head is whole or bad.
/// `Ok(false)` on EOF before that.
async fn read_head<T: Transport>(
    s: &mut T,
    buf: &mut Vec<u8>,
    max: usize,
    mut complete: impl FnMut(&[u8]) -> bool,
) -> io::Result<bool> {
    loop {
        if complete(buf) {
            return Ok(true);
        }
        if buf.len() > max {
            // The parser refuses oversized heads itself; never read past them.
            return Ok(true);
        }
        // Read into a chunk of its own: if a timeout cancels the read, `buf`
        // holds only bytes that arrived.
        let mut chunk = [0u8; 2048];
        let room = (max + 1 - buf.len()).min(chunk.len());
        let n = transport::read(s, &mut chunk[..room]).await?;
        if n == 0 {
            return Ok(false);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a completed handshake hands to the relay. The handshake's own
/// buffers (heads, header arrays) are freed before relaying starts.
struct Upgraded {
    backend: TcpStreamPoll,
    server: Server,
    path: String,
    route: usize,
    compressed: bool,
    from_client: Vec<u8>,
    from_backend: Vec<u8>,
}

async fn handshake(
    ctx: &WorkerCtx,
    client: &mut TcpStreamPoll,
    peer: SocketAddr,
) -> Result<Upgraded, Refused> {
    let cfg = &ctx.config;
    let limits = cfg.limits.head_limits();
    let hs_timeout = cfg.timeouts.handshake;

    if ctx.stats.active.get() > cfg.limits.max_connections as u64 {
        return Err(refuse(client, hs_timeout, 503, "max_connections reached".into()).await);
    }

    // 1. The client's request head.
    let mut head = Vec::with_capacity(1024);
    let probe_headers = cfg.limits.max_headers;
    let read = monoio::time::timeout(
        hs_timeout,
        read_head(client, &mut head, limits.max_head_bytes, |b| {
            let mut h = vec![httparse::EMPTY_HEADER; probe_headers];
            !matches!(parse_request(b, &mut h, &limits), Ok(None))
        }),
    )
    .await;
    match read {
        Err(_) if head.is_empty() => {
            return Err(Refused::Silent("no request before the handshake timeout"));
        }
        Err(_) => {
            return Err(refuse(client, hs_timeout, 408, "request head timed out".into()).await);
        }
        Ok(Err(_)) | Ok(Ok(false)) => {
            return Err(Refused::Silent("client closed before a complete request"));
        }
        Ok(Ok(true)) => {}
    }
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.limits.max_headers];
    let (req, head_len) = match parse_request(&head, &mut headers, &limits) {
        Ok(Some(r)) => r,
        Ok(None) => return Err(Refused::Silent("incomplete request")),
        Err(rej) => {
            answer(client, hs_timeout, &rej.response()).await;
            return Err(Refused::Answered(rej.status(), rej.to_string()));
        }
    };

    // 2. Route.
    let path = req.path().to_string();
    let Some(route) = cfg.route(&path) else {
        return Err(refuse(client, hs_timeout, 404, format!("no route for {path}")).await);
    };

    // 3. Backend connect (each server of the upstream once, round-robin start).
    let (mut backend, server) = match connect_upstream(ctx, route).await {
        Ok(x) => x,
        Err((status, why)) => return Err(refuse(client, hs_timeout, status, why).await),
    };

    // 4. Backend handshake.
    let mut nonce = [0u8; 16];
    {
        let mut keys = ctx.relay.keys.borrow_mut();
        for chunk in nonce.chunks_mut(4) {
            chunk.copy_from_slice(&keys.next_key());
        }
    }
    let key = handshake::key_from_nonce(&nonce);
    let key = std::str::from_utf8(&key).unwrap_or_default();
    let opts = BackendRequest {
        path: &path,
        host: req.host(),
        key,
        client_ip: peer.ip(),
        forwarded_proto: "http",
        forward_extensions: route.permessage_deflate,
    };
    let request = build_backend_request(&req, &opts);
    let expect = Expect::new(&req, &opts);
    let backend_failed = |why: String| format!("backend {server}: {why}");

    match monoio::time::timeout(hs_timeout, transport::write_all(&mut backend, &request)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(refuse(
                client,
                hs_timeout,
                502,
                backend_failed(format!("writing the upgrade request: {e}")),
            )
            .await);
        }
        Err(_) => {
            return Err(refuse(
                client,
                hs_timeout,
                504,
                backend_failed("timed out writing the upgrade request".into()),
            )
            .await);
        }
    }

    let mut resp = Vec::with_capacity(512);
    let resp_read = monoio::time::timeout(hs_timeout, async {
        loop {
            let r = read_head(&mut backend, &mut resp, limits.max_head_bytes, |b| {
                let mut h = vec![httparse::EMPTY_HEADER; probe_headers];
                !matches!(parse_response(b, &mut h, &limits, &expect), Ok(None))
            })
            .await;
            if !matches!(r, Ok(true)) {
                return r;
            }
            // An interim answer (103 Early Hints, ...) is skipped: the 101
            // or the final answer follows it.
            let mut h = vec![httparse::EMPTY_HEADER; probe_headers];
            let interim = match parse_response(&resp, &mut h, &limits, &expect) {
                Ok(Some((BackendResponse::Interim { .. }, n))) => Some(n),
                _ => None,
            };
            drop(h);
            match interim {
                Some(n) => drop(resp.drain(..n)),
                None => return r,
            }
        }
    })
    .await;
    match resp_read {
        Err(_) => {
            return Err(refuse(
                client,
                hs_timeout,
                504,
                backend_failed("no response head before the handshake timeout".into()),
            )
            .await);
        }
        Ok(Err(e)) => {
            return Err(refuse(
                client,
                hs_timeout,
                502,
                backend_failed(format!("reading the response: {e}")),
            )
            .await);
        }
        Ok(Ok(false)) => {
            return Err(refuse(
                client,
                hs_timeout,
                502,
                backend_failed("closed the connection before answering".into()),
            )
            .await);
        }
        Ok(Ok(true)) => {}
    }
    let mut resp_headers = vec![httparse::EMPTY_HEADER; cfg.limits.max_headers];
    let (protocol, extensions, resp_len) =
        match parse_response(&resp, &mut resp_headers, &limits, &expect) {
            Ok(Some((
                BackendResponse::Upgraded {
                    protocol,
                    extensions,
                },
                n,
            ))) => (protocol, extensions, n),
            Ok(Some((
                BackendResponse::Other { status } | BackendResponse::Interim { status },
                n,
            ))) => {
                relay_answer(ctx, client, &mut backend, &resp, n).await;
                let why = backend_failed(format!("answered {status}, relayed to the client"));
                return Err(Refused::Answered(status, why));
            }
            Ok(None) => {
                return Err(refuse(
                    client,
                    hs_timeout,
                    502,
                    backend_failed("incomplete response".into()),
                )
                .await);
            }
            Err(e) => {
                answer(client, hs_timeout, &e.response()).await;
                return Err(Refused::Answered(502, backend_failed(e.to_string())));
            }
        };

    // 5. Answer the client.
    let switching = build_switching_response(&req.accept_key(), protocol, extensions);
    if !matches!(
        monoio::time::timeout(hs_timeout, transport::write_all(client, &switching)).await,
        Ok(Ok(()))
    ) {
        return Err(Refused::Silent("client left before the 101 was written"));
    }
    ctx.stats.upgraded.inc();
    debug!(worker = ctx.id, client = %peer, path = %path, backend = %server, protocol = ?protocol, "upgraded");

    // 6. Hand over, with the bytes that came after the heads.
    Ok(Upgraded {
        compressed: extensions.is_some(),
        from_client: head[head_len..].to_vec(),
        from_backend: resp[resp_len..].to_vec(),
        route: cfg
            .routes
            .iter()
            .position(|r| std::ptr::eq(r, route))
            .unwrap_or(0),
        backend,
        server,
        path,
    })
}

/// Relays a backend's non-101 answer (head and a bounded body) to the client.
async fn relay_answer(
    ctx: &WorkerCtx,
    client: &mut TcpStreamPoll,
    backend: &mut TcpStreamPoll,
    resp: &[u8],
    head_len: usize,
) {
    let t = ctx.config.timeouts.handshake;
    let max = ctx.config.limits.max_response_body;
    let mut headers = vec![httparse::EMPTY_HEADER; ctx.config.limits.max_headers];
    let mut r = httparse::Response::new(&mut headers);
    let _ = r.parse(resp);
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let mut body = resp[head_len..].to_vec();
    let want = length.unwrap_or(max).min(max);
    let _ = monoio::time::timeout(t, async {
        let mut chunk = [0u8; 2048];
        while body.len() < want {
            match transport::read(backend, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    body.truncate(want);
    let mut out = resp[..head_len].to_vec();
    out.extend_from_slice(&body);
    answer(client, t, &out).await;
}

/// Connects to a server of the route's upstream: tries each once, starting
/// at the worker's round-robin position. `Err((502|504, why))` if none answers.
async fn connect_upstream(
    ctx: &WorkerCtx,
    route: &Route,
) -> Result<(TcpStreamPoll, Server), (u16, String)> {
    let upstream = &ctx.config.upstreams[route.upstream];
    let n = upstream.servers.len();
    let start = ctx.next_rr(route.upstream);
    let mut timed_out = false;
    let mut last_err = String::new();
    for i in 0..n {
        let server = upstream.servers[(start + i) % n];
        let addr = match server {
            Server::Addr(a) => a,
            Server::BuiltinEcho => match ctx.echo_addr {
                Some(a) => a,
                None => continue,
            },
        };
        match monoio::time::timeout(ctx.config.timeouts.connect, TcpStream::connect_addr(addr))
            .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                match into_poll(s) {
                    Ok(s) => return Ok((s, server)),
                    Err(e) => last_err = format!("registering the socket to {server}: {e}"),
                }
            }
            Ok(Err(e)) => {
                warn!(worker = ctx.id, backend = %server, "connect failed: {e}");
                last_err = format!("connect to {server}: {e}");
            }
            Err(_) => {
                warn!(worker = ctx.id, backend = %server, "connect timed out");
                timed_out = true;
                last_err = format!("connect to {server} timed out");
            }
        }
    }
    ctx.stats.backend_failures.inc();
    Err((if timed_out { 504 } else { 502 }, last_err))
}
