//! One client connection's life: request head → route → backend connect →
//! backend handshake → 101 → relay → close.
//!
//! Every way a handshake can fail is a `HandshakeError`: which side failed
//! (the client, a backend server, or wsedge's own limits), what wsedge was
//! doing, and the cause (an `io::ErrorKind`, a timeout, a closed
//! connection, a broken rule). It knows its HTTP status (400, 404, 405,
//! 408, 426, 431, 502, 503, 504, or the backend's own answer relayed, or
//! none when the client left), and becomes one log line in words.
//!
//! Heads are read with a [`HeadScanner`] (each byte looked at once, the
//! parser run once per head). A refusal is written, then the connection is
//! half-closed and what the client still sends is drained before closing
//! (`linger`), so that unread request bytes do not turn the close into a
//! TCP reset that destroys the answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tracing::{debug, info, warn};

use crate::config::{Balance, ProxyVersion, Server};
use crate::fleet;
use crate::generation::WorkerGen;
use crate::policy::admit::{self, Admission};
use crate::policy::client_ip::client_addr;
use crate::policy::refusal::{Reason, Refusal};
use crate::policy::state::{Held, PendingHandshake};
use crate::proto::handshake::{
    self, BackendRequest, BackendResponse, BodyError, BodyReader, BodyState, Expect, HeadKind,
    HeadScanner, Rejection, RelayedAnswer, ResponseError, Scan, build_backend_request,
    build_switching_response, parse_request, parse_response, simple_response, with_set_cookie,
};
use crate::proto::proxy_protocol::{self, Parsed, ProxyError};
use crate::relay::limit::{Gcra, Policy, RateLimit};
use crate::relay::{Ending, Outcome, Relay, RelayConfig, Tag};
use crate::route::RequestView;
use crate::tls::{self, Established, TlsStream};
use crate::transport::{self, Stream, Transport, into_poll};
use crate::worker::WorkerCtx;

/// Which side of the proxy a handshake failure comes from (pingora's
/// `ErrorSource::{Downstream, Upstream, Internal}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The client's connection or request.
    Client,
    /// A backend server: its connection or its answer.
    Backend(Server),
    /// wsedge's own limits and routes.
    Proxy,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Side::Client => f.write_str("client"),
            Side::Backend(server) => write!(f, "backend {server}"),
            Side::Proxy => f.write_str("wsedge"),
        }
    }
}

/// What wsedge was doing when the handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Checking `limits.max_connections`.
    Admitting,
    /// Waiting for the first byte of the request.
    AwaitingRequest,
    /// Reading the rest of the request head.
    ReadingRequestHead,
    /// Choosing the route for the request.
    Routing,
    /// Connecting to the upstream's servers.
    Connecting,
    /// Writing the upgrade request to the backend.
    WritingUpgradeRequest,
    /// Reading the backend's response head.
    ReadingResponseHead,
    /// Reading the body of a backend's answer other than 101.
    ReadingResponseBody,
    /// Writing the `101 Switching Protocols` to the client.
    WritingSwitch,
    /// The TLS handshake with the backend.
    TlsHandshake,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::Admitting => "admitting the connection",
            Step::AwaitingRequest => "waiting for the request",
            Step::ReadingRequestHead => "reading the request head",
            Step::Routing => "routing the request",
            Step::Connecting => "connecting",
            Step::WritingUpgradeRequest => "writing the upgrade request",
            Step::ReadingResponseHead => "reading the response head",
            Step::ReadingResponseBody => "reading the response body",
            Step::WritingSwitch => "writing the 101",
            Step::TlsHandshake => "in the TLS handshake",
        }
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// A socket call failed.
    Io(io::ErrorKind),
    /// `timeouts.handshake` (or `timeouts.connect`) passed.
    TimedOut,
    /// The peer closed its side (end of stream).
    Closed,
    /// The client's request broke a rule.
    Rejected(Rejection),
    /// The backend's answer broke a rule.
    BadResponse(ResponseError),
    /// No route matches the request (its target and Host).
    NoRoute(Box<str>),
    /// `limits.max_connections` open connections on this worker.
    Overloaded,
    /// No server of the upstream can take a connection now (all down,
    /// ejected, draining or at their limits).
    NoServer,
    /// The backend's answer has a body framing that cannot be relayed
    /// (conflicting lengths, a bad chunk, ...).
    BadBody(BodyError),
    /// The backend answered with a status other than 101, relayed to the
    /// client with as much of its body as came.
    Answered(u16, BodyEnd),
    /// The TLS handshake with the backend failed (certificate not
    /// verified, no common version, ...).
    Tls(Box<str>),
    /// The handshake policy refused it (address, Origin, authentication,
    /// limits).
    Policy(Box<Refusal>),
    /// The process has no file descriptor left (EMFILE/ENFILE): 503.
    OutOfFds,
    /// The host has no local port left for a backend connection
    /// (EADDRNOTAVAIL): 503.
    OutOfPorts,
}

/// How the body of a relayed backend answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// Where its framing says.
    Complete,
    /// Cut at `limits.max_response_body`.
    Truncated,
    /// The backend closed its connection before the end.
    Closed,
    /// `timeouts.handshake` passed before the end.
    TimedOut,
    /// A read failed before the end.
    Io(io::ErrorKind),
}

impl std::fmt::Display for BodyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyEnd::Complete => Ok(()),
            BodyEnd::Truncated => f.write_str(" (body cut at limits.max_response_body)"),
            BodyEnd::Closed => f.write_str(" (the backend closed before the end of its body)"),
            BodyEnd::TimedOut => f.write_str(" (body timed out; relayed what came)"),
            BodyEnd::Io(kind) => write!(f, " ({kind} reading the body; relayed what came)"),
        }
    }
}

/// Why a handshake ended without a relay: which side failed, what wsedge
/// was doing, and the cause. It knows what the client is told
/// ([`HandshakeError::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct HandshakeError {
    side: Side,
    step: Step,
    cause: Cause,
}

impl HandshakeError {
    fn client(step: Step, cause: Cause) -> Self {
        Self {
            side: Side::Client,
            step,
            cause,
        }
    }

    fn backend(server: Server, step: Step, cause: Cause) -> Self {
        Self {
            side: Side::Backend(server),
            step,
            cause,
        }
    }

    fn proxy(step: Step, cause: Cause) -> Self {
        Self {
            side: Side::Proxy,
            step,
            cause,
        }
    }

    /// The HTTP status the client is answered with, or `None` when the
    /// connection is closed without an answer (the client left, or sent
    /// nothing at all).
    fn status(&self) -> Option<u16> {
        match (&self.cause, self.side) {
            (Cause::Rejected(r), _) => Some(r.status()),
            (Cause::BadResponse(e), _) => Some(e.status()),
            (Cause::BadBody(e), _) => Some(e.status()),
            (Cause::Answered(status, _), _) => Some(*status),
            (Cause::Policy(r), _) => Some(r.status()),
            (Cause::NoRoute(_), _) => Some(404),
            (Cause::Overloaded | Cause::NoServer | Cause::OutOfFds | Cause::OutOfPorts, _) => {
                Some(503)
            }
            (Cause::TimedOut, Side::Client) if self.step == Step::ReadingRequestHead => Some(408),
            (_, Side::Client) => None,
            (Cause::TimedOut, Side::Backend(_)) => Some(504),
            (_, Side::Backend(_)) => Some(502),
            (_, Side::Proxy) => Some(500),
        }
    }

    /// The complete answer for the client (for a status from
    /// [`Self::status`]; a relayed backend answer is the backend's own).
    fn response(&self, status: u16) -> Vec<u8> {
        match &self.cause {
            Cause::Rejected(r) => r.response(),
            Cause::BadResponse(e) => e.response(),
            Cause::Policy(r) => r.response(),
            Cause::NoServer => {
                let mut r = simple_response(503, "no backend server available");
                let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
                r.splice(at + 2..at + 2, b"Retry-After: 5\r\n".iter().copied());
                r
            }
            _ => {
                let body = match status {
                    404 => "no route for this request",
                    408 => "request head timed out",
                    500 => "internal error",
                    503 if self.cause == Cause::OutOfFds => "server out of file descriptors",
                    503 => "too many connections",
                    504 => "backend timed out",
                    _ => "backend unavailable",
                };
                simple_response(status, body)
            }
        }
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (side, doing) = (self.side, self.step.doing());
        match &self.cause {
            Cause::Io(kind) => write!(f, "{side}: {kind} while {doing}"),
            Cause::TimedOut => write!(f, "{side}: timed out {doing}"),
            Cause::Closed => write!(f, "{side}: closed the connection while {doing}"),
            Cause::Rejected(r) => write!(f, "{side}: {r}"),
            Cause::BadResponse(e) => write!(f, "{side}: {e}"),
            Cause::NoRoute(path) => write!(f, "no route for {path}"),
            Cause::Overloaded => f.write_str("max_connections reached"),
            Cause::NoServer => write!(f, "{side}: no server can take a connection now"),
            Cause::BadBody(e) => write!(f, "{side}: {e} while {doing}"),
            Cause::Answered(status, body) => {
                write!(f, "{side}: answered {status}, relayed to the client{body}")
            }
            Cause::Tls(e) => write!(f, "{side}: {e}"),
            Cause::Policy(r) => write!(f, "{r}"),
            Cause::OutOfFds => f.write_str(
                "out of file descriptors connecting to a backend (raise the open-file limit)",
            ),
            Cause::OutOfPorts => f.write_str(
                "no local port left for a backend connection (see net.ipv4.ip_local_port_range and tcp_tw_reuse)",
            ),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A handshake that ends without a relay: why, and the backend's own
/// answer when it is relayed (otherwise the answer comes from the error).
#[derive(Debug)]
struct Refused {
    error: HandshakeError,
    relayed: Option<Vec<u8>>,
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        HandshakeError::client(Step::Admitting, Cause::Policy(Box::new(r))).into()
    }
}

impl From<HandshakeError> for Refused {
    fn from(error: HandshakeError) -> Self {
        Self {
            error,
            relayed: None,
        }
    }
}

/// One accepted client connection, as the future its worker runs: first
/// the handshake (a boxed future, freed when done), then the relay. Kept
/// small on purpose: this is what an idle connection costs (see
/// `docs/benchmarks.md`).
pub struct Session {
    ctx: Rc<WorkerCtx>,
    state: State,
}

type Relayed = Relay<Stream, Stream>;
type HandshakeFuture = Pin<Box<dyn Future<Output = Option<(Handed, Box<Info>)>>>>;

/// Where a connection relays once its handshake is done (moved once, into
/// the session's state: not boxed on purpose, as for [`State`]).
#[allow(clippy::large_enum_variant)]
enum Handed {
    /// The poll-io driver, in this session's future.
    Poll(Relayed),
    /// The worker's relay ring (experimental): its id there.
    Native(u32),
}

// The relay is inline on purpose: it is the session's steady state, and
// boxing it would add an allocation per connection, not save memory.
#[allow(clippy::large_enum_variant)]
enum State {
    Handshake(HandshakeFuture),
    Relaying(Relayed, Box<Info>),
    Native(u32, Box<Info>),
    Done,
}

/// What the closing log line says about a relayed connection.
struct Info {
    peer: SocketAddr,
    path: String,
    server: Server,
    started: Instant,
    /// When it was upgraded, on the balancers' clock.
    since_ms: u64,
    /// Counts the connection on its server until the session ends.
    active: fleet::Active,
    /// Its upstream's index.
    upstream: usize,
    /// Its entry in the worker's registry is written.
    tagged: bool,
    /// Its counts in the policy's limit tables, and its identity.
    held: Option<Box<Held>>,
    /// Its route's index.
    route: usize,
    /// The client's TLS version, if any.
    tls: Option<&'static str>,
    /// The last report epoch it answered.
    reported: u64,
    /// The configuration generation it started under (kept to its end).
    generation: Rc<WorkerGen>,
}

/// What a handshake reads: its worker, and the configuration generation
/// it started under (a reload meanwhile changes nothing for it).
struct Ctx {
    w: Rc<WorkerCtx>,
    g: Rc<WorkerGen>,
}

impl std::ops::Deref for Ctx {
    type Target = WorkerCtx;

    fn deref(&self) -> &WorkerCtx {
        &self.w
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("worker", &self.ctx.id)
            .finish_non_exhaustive()
    }
}

/// Serves one client connection accepted on the listener configured at
/// `listener` to its end, under the configuration generation current now.
/// The caller counted it in `ctx.stats.active`; the session uncounts it
/// when it ends or is dropped.
pub fn serve(
    ctx: Rc<WorkerCtx>,
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) -> Session {
    let hs_ctx = Ctx {
        g: ctx.current(),
        w: Rc::clone(&ctx),
    };
    let handshake: HandshakeFuture =
        Box::pin(async move { start(hs_ctx, client, peer, listener).await });
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
                    Some((Handed::Poll(relay), info)) => {
                        this.state = State::Relaying(relay, info);
                    }
                    Some((Handed::Native(id), info)) => this.state = State::Native(id, info),
                    None => {
                        this.state = State::Done;
                        return Poll::Ready(());
                    }
                },
                State::Relaying(relay, info) => {
                    let polled = Pin::new(&mut *relay).poll(cx);
                    if !info.tagged
                        && let Some(slot) = relay.registry_slot()
                    {
                        // What the rebalancer and operators choose by.
                        this.ctx.relay.shutdown.set_tag(
                            slot,
                            Tag {
                                upstream: info.upstream,
                                server: info.active.slot_key(),
                                since_ms: info.since_ms,
                                closing: false,
                            },
                        );
                        info.tagged = true;
                    }
                    let epoch = this.ctx.relay.shutdown.report_epoch();
                    if info.reported != epoch {
                        info.reported = epoch;
                        report(&this.ctx, relay, info);
                    }
                    let outcome = ready!(polled);
                    closed(&this.ctx, info, &outcome);
                    let rtt = [
                        relay.ping_rtt(crate::relay::Leg::Client),
                        relay.ping_rtt(crate::relay::Leg::Backend),
                    ];
                    ws_counts(&this.ctx, rtt, info, &outcome);
                    this.state = State::Done;
                    return Poll::Ready(());
                }
                State::Native(id, info) => {
                    let Some(native) = &this.ctx.native else {
                        return Poll::Ready(());
                    };
                    let outcome = ready!(native.poll_outcome(*id, cx));
                    closed(&this.ctx, info, &outcome);
                    ws_counts(&this.ctx, [None, None], info, &outcome);
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
        self.ctx.session_ended();
    }
}

/// Writes this connection's row for the admin API's list.
fn report(ctx: &WorkerCtx, relay: &Relayed, info: &Info) {
    let Some(slot) = relay.registry_slot() else {
        return;
    };
    let (client, backend) = relay.counters();
    let route = &info.generation.config.routes[info.route];
    ctx.reports.borrow_mut().push(crate::control::ConnRow {
        id: format!("{}-{slot}-{}", ctx.id, info.since_ms),
        client: info.peer,
        route: route.label.clone(),
        upstream: info.generation.config.upstreams[info.upstream].name.clone(),
        server: info.server.to_string(),
        identity: info
            .held
            .as_ref()
            .and_then(|h| h.identity_name.as_deref())
            .map(str::to_string),
        age_ms: fleet::now_ms().saturating_sub(info.since_ms),
        from_client: client.bytes,
        from_backend: backend.bytes,
        messages_from_client: client.messages,
        messages_from_backend: backend.messages,
    });
}

/// A retried backend attempt, counted on its upstream.
fn count_retry(ctx: &Ctx, upstream: usize) {
    if let Some(c) = ctx.g.retries.get(upstream) {
        c.inc();
    }
}

/// The WebSocket-level counters of a relayed connection that ended: its
/// route's messages, frames by opcode and bytes each way; who began the
/// close and with which code; the protocol error's kind; the last ping
/// round trip of each leg. Counted once per connection, off the data path.
fn ws_counts(ctx: &WorkerCtx, rtt: [Option<Duration>; 2], info: &Info, outcome: &Outcome) {
    use crate::stats::close_code_bucket;
    let ws = &ctx.stats.ws;
    ws.endings[outcome.ending.label_index()].inc();
    info.active.slot().record_ended(
        [outcome.client.messages, outcome.backend.messages],
        [outcome.client.bytes, outcome.backend.bytes],
    );
    if let Some(r) = info.generation.routes.get(info.route) {
        r.ended.inc();
        for (i, d) in [&outcome.client, &outcome.backend].into_iter().enumerate() {
            r.messages[i].add(d.messages);
            r.bytes[i].add(d.bytes);
            for (k, n) in d.frames.0.iter().enumerate() {
                r.frames[i][k].add(u64::from(*n));
            }
        }
    }
    match outcome.ending {
        Ending::Closed { by, code } => {
            ws.closes[by as usize][close_code_bucket(code.unwrap_or(1005))].inc();
        }
        Ending::ProtocolError(leg, e) => ws.protocol_errors[leg as usize][e.index()].inc(),
        _ => {}
    }
    for (leg, rtt) in rtt.into_iter().enumerate() {
        if let Some(rtt) = rtt {
            ws.ping_rtt_seconds[leg].observe(rtt);
        }
    }
}

/// Counts and logs a relayed connection that ended.
fn closed(ctx: &WorkerCtx, info: &Info, outcome: &Outcome) {
    ctx.stats.record_ending(&outcome.ending);
    ctx.stats.bytes_from_client.add(outcome.from_client);
    ctx.stats.bytes_from_backend.add(outcome.from_backend);
    if !info.generation.config.log.access {
        return;
    }
    // The access line: field names are documented (docs/operations.md,
    // "Logs") and stable.
    let (closed_by, close_code) = match outcome.ending {
        Ending::Closed { by, code } => (leg_name(by), code.unwrap_or(1005)),
        Ending::Vanished(leg, _) | Ending::Dead(leg) => (leg_name(leg.other()), 1006),
        Ending::ProtocolError(_, e) => ("wsedge", e.close_code().0),
        Ending::RateLimited(_) => ("wsedge", 1008),
        Ending::TunnelEnded => ("-", 0),
        _ => ("wsedge", 1001),
    };
    info!(
        worker = ctx.id,
        client = %info.peer,
        route = %info.generation.config.routes[info.route].label,
        path = %info.path,
        backend = %info.server,
        identity = info.held.as_ref().and_then(|h| h.identity_name.as_deref()).unwrap_or("-"),
        tls = info.tls.unwrap_or("-"),
        closed_by,
        close_code,
        from_client = outcome.from_client,
        from_backend = outcome.from_backend,
        messages_from_client = outcome.client.messages,
        messages_from_backend = outcome.backend.messages,
        secs = info.started.elapsed().as_secs_f32(),
        "closed: {}",
        outcome.ending
    );
}

fn leg_name(leg: crate::relay::Leg) -> &'static str {
    match leg {
        crate::relay::Leg::Client => "client",
        crate::relay::Leg::Backend => "backend",
    }
}

/// The handshake phase: returns the relay to run, or `None` when the
/// connection was refused (answered and logged here).
async fn start(
    ctx: Ctx,
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) -> Option<(Handed, Box<Info>)> {
    let _ = client.set_nodelay(true);
    let started = Instant::now();
    let cfg = Arc::clone(&ctx.g.config);
    // Its index in this generation (a reload that removed it has stopped
    // the accept loop; a connection accepted just before is closed).
    let listener = cfg.listeners.iter().position(|l| l.address == listener)?;
    // The address the client connected to (for a PROXY header to a backend).
    let local = client.local_addr().ok();
    let mut tcp = match into_poll(client) {
        Ok(c) => c,
        Err(e) => {
            warn!(worker = ctx.id, client = %peer, "cannot register the socket: {e}");
            return None;
        }
    };
    // Behind an L4 balancer: the PROXY header names the real client.
    let (peer, local, first) = if cfg.listeners[listener].proxy_protocol {
        match timed(cfg.timeouts.handshake, read_proxy_header(&mut tcp)).await {
            Ok(Ok((source, destination, rest))) => {
                (source.unwrap_or(peer), destination.or(local), rest)
            }
            Ok(Err(e)) => {
                ctx.stats.refused.inc();
                info!(worker = ctx.id, client = %peer, "dropped: {e}");
                return None;
            }
            Err(cause) => {
                ctx.stats.refused.inc();
                info!(worker = ctx.id, client = %peer, "dropped: PROXY protocol header: {cause:?}");
                return None;
            }
        }
    } else {
        (peer, local, Vec::new())
    };
    // The listener's address lists: closed at once, nothing written.
    if !cfg.listeners[listener].acl.permits(peer.ip()) {
        ctx.stats.refused_by[Reason::AddressDenied.index()].inc();
        log_refusal(&ctx, peer, None, "address_denied", || {
            format!(
                "address_denied: {} is not allowed on listener {}",
                peer.ip(),
                cfg.listeners[listener].address
            )
        });
        return None;
    }
    // Handshakes in progress have their own cap (per worker): they never
    // take the slots of established connections.
    let Some(pending) =
        PendingHandshake::enter(&ctx.g.policy.pending, cfg.limits.max_pending_handshakes)
    else {
        let refusal = Refusal::new(
            Reason::PendingHandshakes,
            format!(
                "{} handshakes in progress on this worker",
                cfg.limits.max_pending_handshakes
            ),
        );
        ctx.stats.refused_by[refusal.reason.index()].inc();
        ctx.stats.refused.inc();
        ctx.stats.refused_with(503);
        log_refusal(&ctx, peer, Some(503), refusal.reason.label(), || {
            refusal.to_string()
        });
        // A plain client gets its 503 (one write, no waiting); a TLS one
        // is closed before the TLS handshake's cost.
        if ctx
            .g
            .tls
            .listeners
            .get(listener)
            .and_then(Option::as_ref)
            .is_none()
        {
            let _ = monoio::time::timeout(
                Duration::from_millis(100),
                transport::write_all(&mut tcp, &refusal.response()),
            )
            .await;
        }
        return None;
    };
    // Per-IP limits, counted from accept (a handshake in progress counts).
    // A trusted proxy's connections are counted by the client it names,
    // once the request head is read.
    let mut held = Held::default();
    let mut early: Option<Refusal> = None;
    if !cfg.trusted_proxies.contains(peer.ip()) {
        match admit::admit_ip(&ctx.g.shared_policy, &cfg, peer.ip(), fleet::now_ms()) {
            Ok(permit) => held.ip = permit,
            Err(r) => early = Some(r),
        }
    }
    // TLS first on a TLS listener, within the handshake timeout.
    let (mut client, early_bytes, tls_info) = match ctx
        .g
        .tls
        .listeners
        .get(listener)
        .and_then(Option::as_ref)
    {
        None => (Stream::Tcp(tcp), first, None),
        Some(acc) => {
            let accepted = monoio::time::timeout(
                cfg.timeouts.handshake,
                tls::handshake::accept_after(&mut tcp, Arc::clone(&acc.config), first),
            )
            .await;
            let done = match accepted {
                Ok(Ok(done)) => done,
                Ok(Err(e)) => {
                    ctx.stats.tls_failed.inc();
                    info!(worker = ctx.id, client = %peer, "dropped: {e}");
                    return None;
                }
                Err(_) => {
                    ctx.stats.tls_failed.inc();
                    info!(worker = ctx.id, client = %peer, "dropped: timed out in the TLS handshake");
                    return None;
                }
            };
            if done.info.resumed {
                ctx.stats.tls_resumed.inc();
            } else {
                ctx.stats.tls_full.inc();
            }
            let v = usize::from(done.info.version == Some(tls::record::Version::Tls13));
            ctx.stats.ws.tls_versions[v].inc();
            debug!(worker = ctx.id, client = %peer, version = ?done.info.version, resumed = done.info.resumed, "TLS established");
            let stream = TlsStream::new(tcp, done.conn, &done.leftover, Rc::clone(&ctx.relay.pool));
            (Stream::Tls(Box::new(stream)), done.early, Some(done.info))
        }
    };
    if let Some(refusal) = early {
        refuse(&ctx, &mut client, peer, refusal.into()).await;
        return None;
    }
    let up = match handshake(
        &ctx,
        &mut client,
        peer,
        local,
        early_bytes,
        tls_info.as_ref(),
        &mut held,
    )
    .await
    {
        Ok(up) => up,
        Err(refused) => {
            refuse(&ctx, &mut client, peer, refused).await;
            return None;
        }
    };
    drop(pending);
    let route = &cfg.routes[up.route];
    let relay_cfg = RelayConfig::for_route(route, &cfg.timeouts, up.compressed);
    let policy = relay_policy(&route.policy.rates, up.expires);
    let handed = match (&ctx.native, client, up.backend) {
        (Some(native), Stream::Tcp(c), Stream::Tcp(b)) => {
            match (crate::transport::into_fd(c), crate::transport::into_fd(b)) {
                (Ok(c), Ok(b)) => {
                    let mut core = crate::relay::Core::new(&relay_cfg, Instant::now());
                    if let Some(policy) = policy {
                        core.set_policy(policy);
                    }
                    Handed::Native(native.add(c, b, core, up.from_client, up.from_backend))
                }
                (Err(e), _) | (_, Err(e)) => {
                    warn!(worker = ctx.id, "native relay: taking the sockets: {e}");
                    return None;
                }
            }
        }
        (_, client, backend) => {
            let mut relay = Relay::new(
                client,
                backend,
                up.from_client,
                up.from_backend,
                &relay_cfg,
                Rc::clone(&ctx.relay),
            );
            if let Some(policy) = policy {
                relay.set_policy(policy);
            }
            Handed::Poll(relay)
        }
    };
    Some((
        handed,
        Box::new(Info {
            peer: up.client,
            path: up.path,
            server: up.server,
            started,
            since_ms: fleet::now_ms(),
            active: up.active,
            upstream: up.upstream,
            tagged: false,
            held: (!held.is_empty()).then(|| Box::new(held)),
            route: up.route,
            reported: ctx.relay.shutdown.report_epoch(),
            generation: Rc::clone(&ctx.g),
            tls: tls_info.as_ref().map(|t| match t.version {
                Some(tls::record::Version::Tls13) => "TLSv1.3",
                Some(tls::record::Version::Tls12) => "TLSv1.2",
                None => "TLS",
            }),
        }),
    ))
}

/// The relay's per-connection policy: the route's rates, and the
/// credential's expiry as a deadline (µs from now, when the relay starts).
fn relay_policy(
    rates: &crate::config::ConnectionRates,
    expires: Option<(u64, crate::proto::close::CloseCode)>,
) -> Option<Policy> {
    let direction = |d: &crate::config::DirectionRates| {
        (!d.is_none()).then(|| RateLimit {
            messages: d.messages.map(|r| Gcra::per(r.count, r.per, r.burst)),
            bytes: d.bytes.map(|r| Gcra::per(r.count, r.per, r.burst)),
            on_limit: rates.on_limit,
        })
    };
    let limits = [direction(&rates.client), direction(&rates.backend)];
    let deadline = expires.map(|(exp, code)| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now);
        (
            u64::try_from(left.as_micros()).unwrap_or(u64::MAX),
            code,
            "token expired",
        )
    });
    (limits.iter().any(Option::is_some) || deadline.is_some()).then_some(Policy {
        limits,
        deadline,
        throttled_until: [None, None],
    })
}

/// Logs one refusal line, rate-limited per label on this worker (with a
/// summary of the lines left out in the second before).
fn log_refusal(
    ctx: &Ctx,
    peer: SocketAddr,
    status: Option<u16>,
    label: &'static str,
    line: impl FnOnce() -> String,
) {
    let now_s = fleet::now_ms() / 1000;
    let d = ctx.g.policy.log.admit(label, now_s);
    if let Some(n) = d.summary {
        info!(
            worker = ctx.id,
            "{n} more refused for {label} in the last second"
        );
    }
    if d.log && ctx.g.config.log.access {
        match status {
            Some(status) => {
                info!(worker = ctx.id, client = %peer, status, reason = label, "refused: {}", line())
            }
            None => info!(worker = ctx.id, client = %peer, reason = label, "dropped: {}", line()),
        }
    }
}

/// Logs and counts a refused handshake and answers the client: with the
/// error's status, or the backend's own answer; nothing when the client
/// left or sent nothing.
async fn refuse<T: Transport>(ctx: &Ctx, client: &mut T, peer: SocketAddr, refused: Refused) {
    let Refused { error, relayed } = refused;
    let Some(status) = error.status() else {
        debug!(worker = ctx.id, client = %peer, "dropped: {error}");
        return;
    };
    ctx.stats.refused.inc();
    ctx.stats.refused_with(status);
    let label = match &error.cause {
        Cause::Policy(r) => {
            ctx.stats.refused_by[r.reason.index()].inc();
            r.reason.label()
        }
        _ => status_label(status),
    };
    log_refusal(ctx, peer, Some(status), label, || error.to_string());
    let answer = relayed.unwrap_or_else(|| error.response(status));
    let t = ctx.g.config.timeouts.handshake;
    if timed(t, transport::write_all(client, &answer))
        .await
        .is_ok()
    {
        linger(client, LINGER_TIME.min(t)).await;
    }
}

/// The log limiter's label for a refusal that is not the policy's.
fn status_label(status: u16) -> &'static str {
    match status {
        400 => "status_400",
        404 => "status_404",
        408 => "status_408",
        426 => "status_426",
        431 => "status_431",
        500..=599 => "status_5xx",
        _ => "status_other",
    }
}

/// At most this much of what a refused client still sends is read (and
/// dropped) before its connection is closed; see [`linger`].
const LINGER_BYTES: usize = 1 << 20;

/// For at most this long (and never longer than `timeouts.handshake`).
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Closes a refused client's connection without a reset.
///
/// Closing a socket whose receive buffer holds unread bytes (the rest of a
/// request over the limit, a request that came after an early 503, a
/// client's first frames) makes the kernel send a TCP reset, and a reset
/// discards whatever of the answer the client has not received yet. So the
/// write side is shut down first (the FIN follows the answer), and what the
/// client still sends is read and dropped until it closes too, up to
/// [`LINGER_BYTES`] and `limit`. A client that goes on past those gets its
/// reset then; by that time its answer has long arrived.
async fn linger<T: Transport>(client: &mut T, limit: Duration) {
    if client.shutdown_write().is_err() {
        return; // not connected any more: nothing to protect
    }
    let _ = monoio::time::timeout(limit, async {
        let mut chunk = [0u8; 2048];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match transport::read(client, &mut chunk[..left.min(2048)]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
    })
    .await;
}

/// Runs a socket call under `limit`: its error becomes [`Cause::Io`], the
/// end of the time [`Cause::TimedOut`].
async fn timed<T>(limit: Duration, f: impl Future<Output = io::Result<T>>) -> Result<T, Cause> {
    match monoio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Cause::Io(e.kind())),
        Err(_) => Err(Cause::TimedOut),
    }
}

/// Reads into `buf` until `scanner` has a verdict on the head it holds
/// (complete, too large or malformed); `Ok(None)` on end of stream before
/// that. Each byte is scanned once however the head is split into reads;
/// the caller runs the full parser once, on the verdict. Never reads past
/// `max` bytes.
async fn read_head<T: Transport>(
    s: &mut T,
    buf: &mut Vec<u8>,
    scanner: &mut HeadScanner,
    max: usize,
) -> io::Result<Option<Scan>> {
    loop {
        match scanner.scan(buf, max) {
            Scan::Partial => {}
            verdict => return Ok(Some(verdict)),
        }
        // Read into a chunk of its own: if a timeout cancels the read, `buf`
        // holds only bytes that arrived.
        let mut chunk = [0u8; 2048];
        let room = max.saturating_sub(buf.len()).clamp(1, chunk.len());
        let n = transport::read(s, &mut chunk[..room]).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What a completed handshake hands to the relay. The handshake's own
/// buffers (heads, header arrays) are freed before relaying starts.
struct Upgraded {
    backend: Stream,
    server: Server,
    active: fleet::Active,
    upstream: usize,
    path: String,
    route: usize,
    compressed: bool,
    from_client: Vec<u8>,
    from_backend: Vec<u8>,
    /// The client's address as believed (a trusted proxy's word).
    client: SocketAddr,
    /// When the credential expires (Unix seconds) and the close code then.
    expires: Option<(u64, crate::proto::close::CloseCode)>,
}

async fn handshake(
    ctx: &Ctx,
    client: &mut Stream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    early: Vec<u8>,
    tls: Option<&Established>,
    held: &mut Held,
) -> Result<Upgraded, Refused> {
    let cfg = &ctx.g.config;
    let limits = cfg.limits.head_limits();
    let hs_timeout = cfg.timeouts.handshake;

    // Established connections only: handshakes in progress have their own
    // cap (`max_pending_handshakes`), this one among them.
    let established = ctx
        .stats
        .active
        .get()
        .saturating_sub(ctx.g.policy.pending.get() as u64);
    if established >= cfg.limits.max_connections as u64 {
        return Err(HandshakeError::proxy(Step::Admitting, Cause::Overloaded).into());
    }

    // 1. The client's request head, parsed once it is complete (or can
    // never be).
    // Bytes that came with the TLS handshake are the start of the head.
    let mut head = early;
    head.reserve(1024);
    let mut scanner = HeadScanner::new(HeadKind::Request);
    let read = timed(
        hs_timeout,
        read_head(client, &mut head, &mut scanner, limits.max_head_bytes),
    )
    .await;
    let step = if head.is_empty() {
        Step::AwaitingRequest
    } else {
        Step::ReadingRequestHead
    };
    let verdict = match read {
        Ok(Some(verdict)) => verdict,
        Ok(None) => return Err(HandshakeError::client(step, Cause::Closed).into()),
        Err(cause) => return Err(HandshakeError::client(step, cause).into()),
    };
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.limits.max_headers];
    let (req, head_len) = match parse_request(&head, &mut headers, &limits) {
        Ok(Some(r)) => r,
        Err(rej) => return Err(HandshakeError::client(step, Cause::Rejected(rej)).into()),
        // The scanner's verdict stands where the parser wants more.
        Ok(None) => {
            let rej = match verdict {
                Scan::TooLarge => Rejection::HeadTooLarge,
                _ => Rejection::Malformed,
            };
            return Err(HandshakeError::client(step, Cause::Rejected(rej)).into());
        }
    };

    // The handshake's duration counts from here (request complete) to the 101.
    let requested = Instant::now();
    // Who the client is: the peer, or whom a trusted proxy names (then
    // counted per IP now, by that address).
    let who = client_addr(peer.ip(), &cfg.trusted_proxies, req.headers());
    if who.via_trusted {
        held.ip = admit::admit_ip(&ctx.g.shared_policy, cfg, who.ip, fleet::now_ms())?;
    }
    let client_sock = SocketAddr::new(who.ip, peer.port());

    // 2. Route.
    let path = req.path().to_string();
    let view = RequestView {
        host: req.host(),
        target: req.path(),
        headers: req.headers(),
    };
    let Some((route_index, route)) = cfg.route(&view) else {
        let what = format!("{path} (host {:?})", req.host());
        return Err(HandshakeError::proxy(Step::Routing, Cause::NoRoute(what.into())).into());
    };

    // The route's policy: address and Origin lists, authentication,
    // limits.
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let admission: Admission = admit::admit_route(
        &ctx.g.shared_policy,
        &ctx.g.policy,
        cfg,
        route_index,
        route,
        &req,
        who.ip,
        held,
        fleet::now_ms(),
        now_unix,
    )
    .await?;

    // 3-4. Backend connect and handshake: a server chosen by the upstream's
    // algorithm (the sticky one first). A failed connect, a close before
    // the 101 or a 502/503/504 answer is retried on another server, at most
    // `retries` times, after a full-jitter backoff, while the budget allows.
    // When no server of the route's upstream can take the connection, its
    // `fallback_upstream` is tried the same way (once).
    let mut up_index = route.upstream;
    let mut fallback = route.fallback_upstream;
    let mut up_cfg = &cfg.upstreams[up_index];
    let mut fleet_up = &ctx.g.fleet.upstreams[up_index];
    let keys = |up_cfg: &crate::config::Upstream| {
        let hash_key = match &up_cfg.balance {
            Balance::Hash { key, .. } => fleet::request_key(key, &req, who.ip),
            _ => None,
        };
        let sticky = up_cfg
            .sticky_cookie
            .as_deref()
            .and_then(|name| fleet::sticky_id(&req, name));
        (hash_key, sticky)
    };
    let (mut hash_key, mut sticky) = keys(up_cfg);
    let cert = tls
        .and_then(|t| t.peer_certs.first())
        .and_then(|der| tls::certs::subject_and_san(der));
    let target = route.rewrite.apply(&path);
    let target = match &admission.strip_query {
        Some(name) => crate::policy::credential::without_query_param(&target, name).into(),
        None => target,
    };
    let drop_headers: Vec<&str> = admission.drop_headers.iter().map(String::as_str).collect();
    let add_headers: Vec<(&str, &[u8])> = admission
        .add_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    ctx.g.balancers.handshake_started(up_index);
    let mut skip = 0u64;
    let mut retried = 0u32;
    let mut last: Option<HandshakeError> = None;
    // Retries, their backoff included, stay within `timeouts.handshake` from
    // the first attempt.
    let first_attempt = Instant::now();
    let may_retry = |up_cfg: &crate::config::Upstream, up_index: usize, retried: u32| {
        if retried >= up_cfg.retries {
            return None;
        }
        let wait = ctx.g.balancers.retry(up_cfg, up_index, retried);
        if wait.is_none() {
            debug!(worker = ctx.id, upstream = %up_cfg.name, "retry budget spent: no retry");
        }
        let wait = wait?;
        let left = hs_timeout.saturating_sub(first_attempt.elapsed());
        if Duration::from_millis(wait) >= left {
            debug!(worker = ctx.id, upstream = %up_cfg.name, "no time left in timeouts.handshake: no retry");
            return None;
        }
        Some(wait)
    };
    // The servers as of now (DNS re-resolution may replace them; this
    // handshake keeps the set it started with).
    let mut set = fleet_up.current();
    let (backend, server, slot, up, attempt, _pending) = loop {
        let Some(i) = ctx.g.balancers.pick(up_index, &set, hash_key, sticky, skip) else {
            if let Some(f) = fallback.take() {
                info!(worker = ctx.id, client = %peer, upstream = %up_cfg.name, fallback = %cfg.upstreams[f].name, "no server can take the connection: trying the fallback upstream");
                up_index = f;
                up_cfg = &cfg.upstreams[f];
                fleet_up = &ctx.g.fleet.upstreams[f];
                set = fleet_up.current();
                (hash_key, sticky) = keys(up_cfg);
                skip = 0;
                ctx.g.balancers.handshake_started(up_index);
                continue;
            }
            ctx.stats.backend_failures.inc();
            return Err(last
                .unwrap_or(HandshakeError::proxy(Step::Connecting, Cause::NoServer))
                .into());
        };
        if i < 64 {
            skip |= 1 << i;
        }
        let spec = &set.specs[i];
        let server = spec.addr;
        let slot = Arc::clone(&set.slots[i]);
        let pending = fleet::Pending::new(&slot);
        let proxy_header = up_cfg.send_proxy_protocol.map(|v| {
            let dst = local.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            match v {
                ProxyVersion::V1 => proxy_protocol::encode_v1(client_sock, dst),
                ProxyVersion::V2 => proxy_protocol::encode_v2(client_sock, dst),
            }
        });
        let connecting = Instant::now();
        let connected =
            connect_one(ctx, up_index, &spec.host, server, proxy_header.as_deref()).await;
        ctx.stats.ws.connect_seconds.observe(connecting.elapsed());
        let mut backend = match connected {
            Ok(b) => b,
            Err(error) if matches!(error.cause, Cause::OutOfFds | Cause::OutOfPorts) => {
                // Not the server's fault: no ejection, no retry.
                drop(pending);
                fleet::Attempt::new(fleet_up, &slot).ok();
                return Err(error.into());
            }
            Err(error) => {
                drop(pending);
                drop(fleet::Attempt::new(fleet_up, &slot));
                warn!(worker = ctx.id, backend = %server, "{error}");
                // A backend whose certificate fails is not retried on the
                // next server: the client hears why (502), the log says it.
                let fatal = matches!(error.cause, Cause::Tls(_));
                // A timeout is kept over later refusals: the client is told 504.
                if !matches!(&last, Some(f) if f.cause == Cause::TimedOut) {
                    last = Some(error);
                }
                match (!fatal)
                    .then(|| may_retry(up_cfg, up_index, retried))
                    .flatten()
                {
                    Some(wait) => {
                        retried += 1;
                        count_retry(ctx, up_index);
                        count_retry(ctx, up_index);
                        count_retry(ctx, up_index);
                        backoff(wait).await;
                        continue;
                    }
                    None => {
                        ctx.stats.backend_failures.inc();
                        return Err(last.expect("set above").into());
                    }
                }
            }
        };
        // Passive health: the attempt counts as a failure unless the
        // backend gives an answer below 500.
        let mut attempt = fleet::Attempt::new(fleet_up, &slot);
        let host = route.host_header.value(req.host(), &spec.authority);
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
            path: &target,
            host,
            key,
            client_ip: peer.ip(),
            forwarded_proto: if tls.is_some() { "https" } else { "http" },
            forward_extensions: route.permessage_deflate,
            client_cert: cert.as_ref().map(|(s, a)| (s.as_str(), a.as_str())),
            forwarded_for_trusted: who.via_trusted,
            protocols: admission.protocols.as_deref(),
            drop_headers: &drop_headers,
            add_headers: &add_headers,
        };
        let request = build_backend_request(&req, &opts);
        let expect = Expect::new(&req, &opts);
        let error = match exchange(ctx, &mut backend, server, &request, &expect).await {
            Ok(Exchanged::Upgraded(up)) => {
                attempt.ok();
                break (backend, server, slot, up, attempt, pending);
            }
            Ok(Exchanged::Answered { status, resp, n }) => {
                if status < 500 {
                    attempt.ok();
                }
                // Retried only where another server could answer; otherwise
                // the client gets this backend's own answer.
                if matches!(status, 502..=504)
                    && fleet::has_candidate(&set, skip)
                    && let Some(wait) = may_retry(up_cfg, up_index, retried)
                {
                    warn!(worker = ctx.id, backend = %server, status, "answered {status} to the upgrade: retrying on another server");
                    drop((attempt, pending, backend));
                    retried += 1;
                    count_retry(ctx, up_index);
                    count_retry(ctx, up_index);
                    backoff(wait).await;
                    continue;
                }
                return Err(relay_answer(ctx, &mut backend, server, status, &resp, n).await);
            }
            Err(e) => e,
        };
        drop((attempt, pending, backend));
        warn!(worker = ctx.id, backend = %server, "{error}");
        let retryable = matches!(error.cause, Cause::Closed | Cause::Io(_));
        last = Some(error);
        match retryable
            .then(|| may_retry(up_cfg, up_index, retried))
            .flatten()
        {
            Some(wait) => {
                retried += 1;
                count_retry(ctx, up_index);
                backoff(wait).await;
            }
            None => {
                ctx.stats.backend_failures.inc();
                return Err(last.expect("set above").into());
            }
        }
    };
    let BackendUpgraded {
        protocol,
        extensions,
        resp,
        n: resp_len,
    } = up;

    // The connection counts on its server from the backend's 101 on (before
    // the client hears of it: balancing decisions see it at once).
    let active = fleet::Active::new(&slot);

    // 5. Answer the client.
    let mut switching = build_switching_response(
        &req.accept_key(),
        protocol.as_deref(),
        extensions.as_deref(),
    );
    if let Some(name) = &up_cfg.sticky_cookie
        && sticky != Some(slot.id())
    {
        let cookie = fleet::sticky_set_cookie(name, &slot, tls.is_some());
        switching = with_set_cookie(switching, &cookie);
    }
    timed(hs_timeout, transport::write_all(client, &switching))
        .await
        .map_err(|cause| HandshakeError::client(Step::WritingSwitch, cause))?;
    ctx.stats.upgraded.inc();
    ctx.stats.ws.handshake_seconds.observe(requested.elapsed());
    if let Some(r) = ctx.g.routes.get(route_index) {
        r.upgraded.inc();
    }
    debug!(worker = ctx.id, client = %who.ip, path = %path, backend = %server, protocol = ?protocol, "upgraded");

    // 6. Hand over, with the bytes that came after the heads.
    drop(attempt);
    Ok(Upgraded {
        active,
        upstream: up_index,
        compressed: extensions.is_some(),
        from_client: head[head_len..].to_vec(),
        from_backend: resp[resp_len..].to_vec(),
        route: route_index,
        backend,
        server,
        path,
        client: client_sock,
        expires: admission.expires,
    })
}

/// Reads a PROXY protocol header (v1 or v2) off the start of `tcp`: the
/// client's and the original destination's addresses (none for a LOCAL
/// header) and the bytes read after it.
async fn read_proxy_header(
    tcp: &mut TcpStreamPoll,
) -> io::Result<Result<(Option<SocketAddr>, Option<SocketAddr>, Vec<u8>), ProxyError>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        match proxy_protocol::parse(&buf) {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Header {
                len,
                source,
                destination,
            }) => return Ok(Ok((source, destination, buf.split_off(len)))),
            Err(e) => return Ok(Err(e)),
        }
        if buf.len() > proxy_protocol::V2_MAX {
            return Ok(Err(ProxyError::TooLarge));
        }
        let n = transport::read(tcp, &mut chunk).await?;
        if n == 0 {
            return Ok(Err(ProxyError::Missing));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A backend's 101, checked: what it chose, and its head (`resp[..n]`, with
/// any bytes that followed it).
struct BackendUpgraded {
    protocol: Option<String>,
    extensions: Option<Vec<u8>>,
    resp: Vec<u8>,
    n: usize,
}

/// What a backend answered the upgrade request.
enum Exchanged {
    /// A valid 101.
    Upgraded(BackendUpgraded),
    /// Another final answer, head `resp[..n]` (its body not read yet).
    Answered {
        status: u16,
        resp: Vec<u8>,
        n: usize,
    },
}

/// Sends the upgrade request to a connected backend and reads its answer
/// head, skipping interim answers (103 Early Hints, ...), within
/// `timeouts.handshake`.
async fn exchange(
    ctx: &Ctx,
    backend: &mut Stream,
    server: Server,
    request: &[u8],
    expect: &Expect<'_>,
) -> Result<Exchanged, HandshakeError> {
    let cfg = &ctx.g.config;
    let limits = cfg.limits.head_limits();
    let hs_timeout = cfg.timeouts.handshake;
    let failed = |step, cause| HandshakeError::backend(server, step, cause);
    timed(hs_timeout, transport::write_all(backend, request))
        .await
        .map_err(|cause| failed(Step::WritingUpgradeRequest, cause))?;
    let mut resp = Vec::with_capacity(512);
    let resp_read = timed(hs_timeout, async {
        loop {
            let mut scanner = HeadScanner::new(HeadKind::Response);
            let Some(verdict) =
                read_head(backend, &mut resp, &mut scanner, limits.max_head_bytes).await?
            else {
                return Ok(None);
            };
            let mut h = vec![httparse::EMPTY_HEADER; cfg.limits.max_headers];
            match parse_response(&resp, &mut h, &limits, expect) {
                Ok(Some((BackendResponse::Interim { .. }, n))) => {
                    drop(h);
                    drop(resp.drain(..n));
                }
                _ => return Ok(Some(verdict)),
            }
        }
    })
    .await;
    let verdict = match resp_read {
        Ok(Some(verdict)) => verdict,
        Ok(None) => return Err(failed(Step::ReadingResponseHead, Cause::Closed)),
        Err(cause) => return Err(failed(Step::ReadingResponseHead, cause)),
    };
    let mut headers = vec![httparse::EMPTY_HEADER; cfg.limits.max_headers];
    let (protocol, extensions, n) = match parse_response(&resp, &mut headers, &limits, expect) {
        Ok(Some((
            BackendResponse::Upgraded {
                protocol,
                extensions,
            },
            n,
        ))) => (
            protocol.map(str::to_string),
            extensions.map(<[u8]>::to_vec),
            n,
        ),
        Ok(Some((BackendResponse::Other { status } | BackendResponse::Interim { status }, n))) => {
            drop(headers);
            return Ok(Exchanged::Answered { status, resp, n });
        }
        Err(e) => return Err(failed(Step::ReadingResponseHead, Cause::BadResponse(e))),
        // The scanner's verdict stands where the parser wants more.
        Ok(None) => {
            let e = match verdict {
                Scan::TooLarge => ResponseError::HeadTooLarge,
                _ => ResponseError::Malformed,
            };
            return Err(failed(Step::ReadingResponseHead, Cause::BadResponse(e)));
        }
    };
    drop(headers);
    Ok(Exchanged::Upgraded(BackendUpgraded {
        protocol,
        extensions,
        resp,
        n,
    }))
}

/// Waits `ms` milliseconds before a retry (nothing for 0).
async fn backoff(ms: u64) {
    if ms > 0 {
        monoio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Reads the body of a backend's answer other than 101 (framed as its head
/// says, within `timeouts.handshake`, at most `limits.max_response_body`
/// bytes of it) and builds the answer the client gets: the head with an
/// exact `Content-Length` and `Connection: close`, then the body. A body
/// cut short (limit, timeout, backend gone) is relayed as far as it came,
/// with that length; a framing that cannot be relayed is a 502.
async fn relay_answer(
    ctx: &Ctx,
    backend: &mut Stream,
    server: Server,
    status: u16,
    resp: &[u8],
    head_len: usize,
) -> Refused {
    let limits = &ctx.g.config.limits;
    let failed = |step, cause| Refused::from(HandshakeError::backend(server, step, cause));
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let answer = match RelayedAnswer::parse(&resp[..head_len], &mut storage) {
        Ok(a) => a,
        Err(e) => return failed(Step::ReadingResponseHead, Cause::BadBody(e)),
    };
    let mut reader = BodyReader::new(answer.framing(), limits.max_response_body);
    let mut body = Vec::new();
    if let Err(e) = reader.feed(&resp[head_len..], &mut body) {
        return failed(Step::ReadingResponseBody, Cause::BadBody(e));
    }
    let read = timed(ctx.g.config.timeouts.handshake, async {
        let mut chunk = [0u8; 2048];
        while reader.state() == BodyState::NeedMore {
            let n = transport::read(backend, &mut chunk).await?;
            if n == 0 {
                return Ok(Ok(reader.at_end_of_stream()));
            }
            if let Err(e) = reader.feed(&chunk[..n], &mut body) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(true))
    })
    .await;
    let end = match read {
        Ok(Ok(true)) if reader.state() == BodyState::Truncated => BodyEnd::Truncated,
        Ok(Ok(true)) => BodyEnd::Complete,
        Ok(Ok(false)) => BodyEnd::Closed,
        Ok(Err(e)) => return failed(Step::ReadingResponseBody, Cause::BadBody(e)),
        Err(Cause::Io(kind)) => BodyEnd::Io(kind),
        Err(_) => BodyEnd::TimedOut,
    };
    let mut relayed = answer.head(body.len());
    relayed.extend_from_slice(&body);
    Refused {
        error: HandshakeError::backend(
            server,
            Step::ReadingResponseBody,
            Cause::Answered(status, end),
        ),
        relayed: Some(relayed),
    }
}

/// One connect (then the PROXY header, when the upstream sends one, and
/// TLS, when it has it, verifying `host`) to `server`.
async fn connect_one(
    ctx: &Ctx,
    up: usize,
    host: &str,
    server: Server,
    proxy_header: Option<&[u8]>,
) -> Result<Stream, HandshakeError> {
    let addr = match server {
        Server::Addr(a) => a,
        Server::BuiltinEcho => ctx.echo_addr.ok_or_else(|| {
            // The built-in echo server is not running on this worker.
            HandshakeError::backend(
                server,
                Step::Connecting,
                Cause::Io(io::ErrorKind::AddrNotAvailable),
            )
        })?,
    };
    let connected =
        monoio::time::timeout(ctx.g.config.timeouts.connect, TcpStream::connect_addr(addr)).await;
    let tcp = match connected {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            into_poll(s).map_err(|e| Cause::Io(e.kind()))
        }
        // Not the backend's fault: this process has no descriptor left, or
        // this host no local port for one more connection (EADDRNOTAVAIL).
        Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            return Err(HandshakeError::proxy(Step::Connecting, Cause::OutOfFds));
        }
        Ok(Err(e))
            if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && !addr.ip().is_unspecified() =>
        {
            return Err(HandshakeError::proxy(Step::Connecting, Cause::OutOfPorts));
        }
        Ok(Err(e)) => Err(Cause::Io(e.kind())),
        Err(_) => Err(Cause::TimedOut),
    }
    .map_err(|cause| HandshakeError::backend(server, Step::Connecting, cause))?;
    let mut tcp = tcp;
    if let Some(h) = proxy_header {
        timed(
            ctx.g.config.timeouts.connect,
            transport::write_all(&mut tcp, h),
        )
        .await
        .map_err(|cause| HandshakeError::backend(server, Step::Connecting, cause))?;
    }
    secure(ctx, up, host, tcp)
        .await
        .map_err(|cause| HandshakeError::backend(server, Step::TlsHandshake, cause))
}

/// TLS to the backend when its upstream has it, within the handshake
/// timeout: SNI and verification use the server's host name (or `sni`).
async fn secure(
    ctx: &Ctx,
    upstream: usize,
    server_host: &str,
    mut tcp: TcpStreamPoll,
) -> Result<Stream, Cause> {
    let Some(config) = ctx.g.tls.upstreams.get(upstream).and_then(Option::as_ref) else {
        return Ok(Stream::Tcp(tcp));
    };
    let t = ctx.g.config.upstreams[upstream].tls.as_ref();
    let host = t
        .and_then(|t| t.client.sni.as_deref())
        .unwrap_or(server_host);
    let name = tls::setup::server_name(host).map_err(|e| Cause::Tls(e.to_string().into()))?;
    match monoio::time::timeout(
        ctx.g.config.timeouts.handshake,
        tls::connect(&mut tcp, Arc::clone(config), name),
    )
    .await
    {
        Ok(Ok(done)) => Ok(Stream::Tls(Box::new(TlsStream::new(
            tcp,
            done.conn,
            &done.leftover,
            Rc::clone(&ctx.relay.pool),
        )))),
        Ok(Err(tls::HandshakeError::Io(kind))) => Err(Cause::Io(kind)),
        Ok(Err(tls::HandshakeError::Closed)) => Err(Cause::Closed),
        Ok(Err(e)) => Err(Cause::Tls(e.to_string().into())),
        Err(_) => Err(Cause::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A peer that delivers `bytes` one per read, then end of stream.
    struct OneByte {
        bytes: Vec<u8>,
        at: usize,
        reads: usize,
    }

    impl Transport for OneByte {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            self.reads += 1;
            let Some(&b) = self.bytes.get(self.at) else {
                return Poll::Ready(Ok(0));
            };
            buf[0] = b;
            self.at += 1;
            Poll::Ready(Ok(1))
        }

        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn shutdown_both(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Polls a future that never waits (its transport is always ready).
    fn now<T>(f: impl Future<Output = T>) -> T {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the future waited"),
        }
    }

    /// A client that goes on sending after its answer: `total` bytes, then
    /// end of stream.
    /// With `hold`, it stays silent instead of ending its stream.
    struct Talker {
        total: usize,
        read: usize,
        shut: bool,
        hold: bool,
    }

    impl Transport for Talker {
        fn poll_read(&mut self, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            if self.hold && self.read == self.total {
                return Poll::Pending;
            }
            let n = buf.len().min(self.total - self.read);
            self.read += n;
            Poll::Ready(Ok(n))
        }

        fn poll_write(&mut self, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }

        fn shutdown_both(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
    }

    fn linger_on(total: usize, hold: bool, limit: Duration) -> Talker {
        let mut client = Talker {
            total,
            read: 0,
            shut: false,
            hold,
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(linger(&mut client, limit));
        client
    }

    /// The FIN goes first; what the client sends is read to its end, or
    /// to the byte cap.
    #[test]
    fn linger_drains_to_eof_or_the_cap() {
        let long = Duration::from_secs(60);
        let small = linger_on(100 << 10, false, long);
        assert!(small.shut);
        assert_eq!(small.read, 100 << 10, "read to the end of stream");
        let huge = linger_on(10 << 20, false, long);
        assert!(huge.shut);
        assert_eq!(huge.read, LINGER_BYTES, "stopped at the cap");
    }

    /// A client that neither sends nor closes is let go at the time limit.
    #[test]
    fn linger_ends_at_its_time_limit() {
        let started = Instant::now();
        let quiet = linger_on(10, true, Duration::from_millis(50));
        assert_eq!(quiet.read, 10);
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    /// An 8 KiB head sent a byte per read: each byte is scanned once and the
    /// full parser runs once. (Parsing the whole buffer after every read,
    /// as wsedge used to, examined 33.6 MB in 8197 parses for this head.)
    #[test]
    fn head_read_a_byte_at_a_time_is_linear() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nX-Pad: "
            .to_vec();
        head.resize(8 << 10, b'b');
        head.extend_from_slice(b"\r\n\r\n");
        let len = head.len();
        head.extend_from_slice(b"first frame");
        let mut peer = OneByte {
            bytes: head,
            at: 0,
            reads: 0,
        };
        let mut buf = Vec::new();
        let mut scanner = HeadScanner::new(HeadKind::Request);
        let verdict = now(read_head(&mut peer, &mut buf, &mut scanner, 16 << 10));
        assert_eq!(verdict.unwrap(), Some(Scan::Complete(len)));
        assert_eq!(peer.reads, len, "read past the head");
        assert_eq!(scanner.scanned(), len, "bytes examined by the scanner");
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let limits = handshake::Limits::default();
        let parsed = parse_request(&buf, &mut headers, &limits);
        assert_eq!(parsed.map(|r| r.map(|(_, n)| n)), Ok(Some(len)));
    }

    /// Garbage is refused at its first byte, without waiting for the end
    /// of a head or the size limit.
    #[test]
    fn garbage_is_judged_at_its_first_byte() {
        let mut peer = OneByte {
            bytes: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            at: 0,
            reads: 0,
        };
        let mut buf = Vec::new();
        let mut scanner = HeadScanner::new(HeadKind::Request);
        let verdict = now(read_head(&mut peer, &mut buf, &mut scanner, 16 << 10));
        assert_eq!(verdict.unwrap(), Some(Scan::Malformed));
        assert_eq!(peer.reads, 1);
    }

    /// A head over the limit: never more than `max` bytes are read.
    #[test]
    fn head_read_stops_at_the_limit() {
        let mut peer = OneByte {
            bytes: vec![b'a'; 100],
            at: 0,
            reads: 0,
        };
        let mut buf = b"GET /".to_vec();
        let mut scanner = HeadScanner::new(HeadKind::Request);
        let verdict = now(read_head(&mut peer, &mut buf, &mut scanner, 64));
        assert_eq!(verdict.unwrap(), Some(Scan::TooLarge));
        assert_eq!(buf.len(), 64);
    }

    fn server() -> Server {
        Server::Addr("10.0.0.5:9001".parse().unwrap())
    }

    #[test]
    fn each_failure_knows_its_status() {
        use Cause::*;
        let client = |step, cause| HandshakeError::client(step, cause).status();
        let backend = |step, cause| HandshakeError::backend(server(), step, cause).status();
        assert_eq!(client(Step::AwaitingRequest, TimedOut), None);
        assert_eq!(client(Step::ReadingRequestHead, TimedOut), Some(408));
        assert_eq!(client(Step::ReadingRequestHead, Closed), None);
        let reset = Io(io::ErrorKind::ConnectionReset);
        assert_eq!(client(Step::ReadingRequestHead, reset.clone()), None);
        assert_eq!(client(Step::WritingSwitch, TimedOut), None);
        let too_large = Rejected(Rejection::HeadTooLarge);
        assert_eq!(client(Step::ReadingRequestHead, too_large), Some(431));
        let overloaded = HandshakeError::proxy(Step::Admitting, Overloaded);
        assert_eq!(overloaded.status(), Some(503));
        let no_route = HandshakeError::proxy(Step::Routing, NoRoute("/x".into()));
        assert_eq!(no_route.status(), Some(404));
        assert_eq!(backend(Step::Connecting, TimedOut), Some(504));
        let refused = Io(io::ErrorKind::ConnectionRefused);
        assert_eq!(backend(Step::Connecting, refused), Some(502));
        assert_eq!(backend(Step::WritingUpgradeRequest, reset), Some(502));
        assert_eq!(backend(Step::ReadingResponseHead, TimedOut), Some(504));
        assert_eq!(backend(Step::ReadingResponseHead, Closed), Some(502));
        let bad = BadResponse(ResponseError::AcceptMismatch);
        assert_eq!(backend(Step::ReadingResponseHead, bad), Some(502));
        let answered = Answered(403, BodyEnd::Truncated);
        assert_eq!(backend(Step::ReadingResponseBody, answered), Some(403));
        let bad_body = BadBody(BodyError::ConflictingLengths);
        assert_eq!(backend(Step::ReadingResponseHead, bad_body), Some(502));
    }

    #[test]
    fn log_lines_say_who_failed_doing_what() {
        let e = HandshakeError::backend(
            server(),
            Step::WritingUpgradeRequest,
            Cause::Io(io::ErrorKind::ConnectionReset),
        );
        assert_eq!(
            e.to_string(),
            "backend 10.0.0.5:9001: connection reset while writing the upgrade request"
        );
        let e = HandshakeError::backend(server(), Step::ReadingResponseHead, Cause::TimedOut);
        assert_eq!(
            e.to_string(),
            "backend 10.0.0.5:9001: timed out reading the response head"
        );
        let answered = Cause::Answered(403, BodyEnd::Complete);
        let e = HandshakeError::backend(server(), Step::ReadingResponseBody, answered);
        assert_eq!(
            e.to_string(),
            "backend 10.0.0.5:9001: answered 403, relayed to the client"
        );
        let answered = Cause::Answered(401, BodyEnd::TimedOut);
        let e = HandshakeError::backend(server(), Step::ReadingResponseBody, answered);
        assert_eq!(
            e.to_string(),
            "backend 10.0.0.5:9001: answered 401, relayed to the client \
             (body timed out; relayed what came)"
        );
        let e = HandshakeError::client(Step::ReadingRequestHead, Cause::Closed);
        assert_eq!(
            e.to_string(),
            "client: closed the connection while reading the request head"
        );
        let e = HandshakeError::client(
            Step::ReadingRequestHead,
            Cause::Rejected(Rejection::MissingKey),
        );
        assert_eq!(
            e.to_string(),
            "client: missing Sec-WebSocket-Key header (400)"
        );
    }

    #[test]
    fn answers_carry_their_status() {
        for (e, status) in [
            (
                HandshakeError::proxy(Step::Admitting, Cause::Overloaded),
                503,
            ),
            (
                HandshakeError::client(Step::ReadingRequestHead, Cause::TimedOut),
                408,
            ),
            (
                HandshakeError::backend(server(), Step::Connecting, Cause::TimedOut),
                504,
            ),
            (
                HandshakeError::client(
                    Step::ReadingRequestHead,
                    Cause::Rejected(Rejection::MethodNotAllowed),
                ),
                405,
            ),
        ] {
            assert_eq!(e.status(), Some(status));
            let answer = e.response(status);
            let line = format!("HTTP/1.1 {status} ");
            assert!(answer.starts_with(line.as_bytes()), "{e}");
        }
    }
}
