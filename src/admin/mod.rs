//! The admin listener (`[admin] address`, `--admin ADDR`): Prometheus
//! metrics, health and readiness probes, and a JSON API. It runs on a
//! thread of its own (`wsedge-admin`, one short-lived thread per request,
//! a few at once), away from the workers: numbers are read from the
//! workers' counters and the servers' shared slots (plain atomic loads),
//! never through a lock the relay takes.

mod connections;
mod http;
mod metrics;
mod status;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;
use crate::fleet::Fleet;
use crate::stats::Stats;

pub use http::{Request, Response};

/// `[admin]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where to listen.
    pub address: SocketAddr,
    /// A file holding the bearer token (read at start).
    pub token_file: Option<PathBuf>,
    /// With a token: reads (`GET`) need none; changes still do.
    pub read_open: bool,
}

/// What the admin endpoint reads: shared with the server. A request
/// reads the configuration generation current when it came
/// ([`AdminView::refreshed`]).
#[derive(Debug, Clone)]
pub struct AdminView {
    /// The running configuration.
    pub config: Arc<Config>,
    /// Each worker's counters.
    pub stats: Vec<Arc<Stats>>,
    /// Every server's shared slot.
    pub fleet: Arc<Fleet>,
    /// The generation `config` and `fleet` are of (per-route counters).
    pub generation: Arc<crate::generation::Generation>,
    /// Set when the server starts draining (SIGTERM): `/readyz` says 503.
    pub draining: Arc<AtomicBool>,
    /// Each worker's control channel (the connection list and closes fan
    /// out over them).
    pub control: Vec<crate::control::ControlSender>,
    /// The generations and what `POST /api/reload` does (as SIGHUP);
    /// `None` in tests that do not need it.
    pub reload: Option<Arc<crate::reload::Reloader>>,
}

impl AdminView {
    /// The view of a running server.
    pub fn new(
        live: Arc<crate::reload::Reloader>,
        stats: Vec<Arc<Stats>>,
        draining: Arc<AtomicBool>,
        control: Vec<crate::control::ControlSender>,
    ) -> AdminView {
        let generation = live.current();
        AdminView {
            config: Arc::clone(&generation.config),
            fleet: Arc::clone(&generation.fleet),
            generation,
            stats,
            draining,
            control,
            reload: Some(live),
        }
    }
}

/// What the accept loop makes each request's view from: a running
/// server's views are of the generation current when the request comes
/// (the loop holds none, so an old generation is freed once its
/// connections end).
enum Views {
    Live {
        live: Arc<crate::reload::Reloader>,
        stats: Vec<Arc<Stats>>,
        draining: Arc<AtomicBool>,
        control: Vec<crate::control::ControlSender>,
    },
    Fixed(Box<AdminView>),
}

impl Views {
    fn of(view: AdminView) -> Views {
        match view.reload {
            Some(live) => Views::Live {
                live,
                stats: view.stats,
                draining: view.draining,
                control: view.control,
            },
            None => Views::Fixed(Box::new(view)),
        }
    }

    fn now(&self) -> AdminView {
        match self {
            Views::Live {
                live,
                stats,
                draining,
                control,
            } => AdminView::new(
                Arc::clone(live),
                stats.clone(),
                Arc::clone(draining),
                control.clone(),
            ),
            Views::Fixed(v) => (**v).clone(),
        }
    }
}

/// A running admin listener; stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct Admin {
    /// Where it listens (the port resolved when 0 was asked).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests served at once; more wait in the accept queue.
const MAX_IN_FLIGHT: usize = 8;

/// Binds `settings.address` and serves it on a thread of its own.
pub fn spawn(settings: &AdminSettings, view: AdminView) -> io::Result<Admin> {
    let token = match &settings.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f).map_err(|e| {
                io::Error::new(e.kind(), format!("admin token_file {}: {e}", f.display()))
            })?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "admin token_file {}: the token must be at least 16 characters",
                        f.display()
                    ),
                ));
            }
            Some(t)
        }
        None => None,
    };
    if token.is_none() && !settings.address.ip().is_loopback() {
        warn!(address = %settings.address, "the admin endpoint listens beyond loopback without [admin] token_file: anyone who reaches it can drain servers and read the configuration");
    }
    // Inherited from an upgrading process, or bound; handed on either way.
    let listener = match crate::upgrade::take_inherited(settings.address) {
        Some(mut socks) if !socks.is_empty() => socks.swap_remove(0),
        _ => TcpListener::bind(settings.address)?,
    };
    let addr = listener.local_addr()?;
    if settings.address.port() != 0 {
        use std::os::fd::AsRawFd;
        crate::upgrade::remember(addr, &[listener.as_raw_fd()]);
    }
    // Non-blocking, polled: the accept loop sees the stop flag within
    // POLL_INTERVAL even when the connection that Drop makes to wake it is
    // accepted by another process (a new one, after an upgrade, shares
    // this socket).
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let auth = Arc::new(Auth {
        token,
        read_open: settings.read_open,
    });
    let stopping = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("wsedge-admin".into())
        .spawn(move || serve(listener, view, auth, stopping))?;
    info!(%addr, "admin endpoint: /metrics, /status, /healthz, /readyz, /api/");
    Ok(Admin {
        addr,
        stop,
        thread: Some(thread),
    })
}

#[derive(Debug)]
struct Auth {
    token: Option<String>,
    read_open: bool,
}

impl Auth {
    /// Whether `req` may do what it asks.
    fn allows(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if req.method == "GET" && self.read_open {
            return true;
        }
        let presented = req
            .header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        crate::policy::api_key::ct_eq(presented.as_bytes(), token.as_bytes())
    }
}

/// How often a waiting accept loop looks at its stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

fn serve(listener: TcpListener, view: AdminView, auth: Arc<Auth>, stop: Arc<AtomicBool>) {
    let views = Views::of(view);
    use std::os::fd::AsRawFd;
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Err: treated as readable; accept says what is wrong.
                let _ = crate::sys::poll_readable(listener.as_raw_fd(), POLL_INTERVAL);
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if stop.load(Ordering::Acquire) {
            return;
        }
        // Blocking, as the request handler expects (Linux does not pass
        // the listener's O_NONBLOCK on to accepted sockets; not relied on).
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        while in_flight.load(Ordering::Acquire) >= MAX_IN_FLIGHT {
            std::thread::sleep(Duration::from_millis(5));
        }
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (view, auth, count) = (views.now(), Arc::clone(&auth), Arc::clone(&in_flight));
        let spawned = std::thread::Builder::new()
            .name("wsedge-admin-req".into())
            .spawn(move || {
                http::handle(stream, |req| route(&view, &auth, req));
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Answers one request.
fn route(view: &AdminView, auth: &Auth, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    // Probes answer without a token: balancers and kubelets have none.
    match (req.method.as_str(), path) {
        ("GET", "/healthz") => return Response::text(200, "ok\n"),
        ("GET", "/readyz") => return readyz(view),
        _ => {}
    }
    if !auth.allows(req) {
        let mut r = Response::text(401, "admin token required\n");
        r.headers.push(("WWW-Authenticate".into(), "Bearer".into()));
        return r;
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => Response {
            status: 200,
            headers: vec![(
                "Content-Type".into(),
                "text/plain; version=0.0.4; charset=utf-8".into(),
            )],
            body: metrics::render(view).into_bytes(),
        },
        ("GET", ["status"]) => Response::html(status::render(view)),
        ("GET", ["api", "status"]) => Response::json(
            200,
            &status::snapshot_of(view, req.query("connections") != Some("0")),
        ),
        ("GET", ["api", "config"]) => Response::json(200, &config_json(&view.config)),
        ("GET", ["api", "servers"]) => Response::json(200, &servers_json(view)),
        ("GET", ["api", "connections"]) => connections::list(view, req),
        ("POST", ["api", "reload"]) => reload(view),
        ("POST", ["api", "connections", id, "close"]) => connections::close(view, req, id),
        (
            "POST",
            [
                "api",
                "servers",
                upstream,
                server,
                action @ ("drain" | "enable"),
            ],
        ) => server_action(view, req, upstream, server, action),
        (
            _,
            ["metrics" | "status"]
            | [
                "api",
                "config" | "servers" | "connections" | "status" | "reload",
            ]
            | ["api", "connections", _, "close"]
            | ["api", "servers", _, _, "drain" | "enable"],
        ) => Response::json(
            405,
            &serde_json::json!({ "error": format!("{} is not allowed on {path}", req.method) }),
        ),
        _ => Response::json(
            404,
            &serde_json::json!({ "error": format!("no such endpoint: {path}") }),
        ),
    }
}

/// `POST /api/reload`: what SIGHUP does ([`crate::reload`]). 200 with the
/// new generation, the listeners bound and closed and any warning; 400
/// with the error (file and line for a bad file) when nothing changed.
fn reload(view: &AdminView) -> Response {
    let Some(r) = &view.reload else {
        return Response::json(
            503,
            &serde_json::json!({ "error": "reload is not available" }),
        );
    };
    info!("admin: reloading the configuration");
    let _ = crate::notify::reloading();
    let done = r.reload();
    let _ = crate::notify::ready();
    match done {
        Ok(d) => Response::json(
            200,
            &serde_json::json!({
                "generation": d.generation,
                "listeners_added": d.added.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "listeners_removed": d.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "warnings": d.warnings,
            }),
        ),
        Err(e) => Response::json(400, &serde_json::json!({ "error": e, "changed": false })),
    }
}

/// `/readyz`: 200 once every upstream has a server that takes connections
/// and until the server starts draining; 503 otherwise, saying why.
fn readyz(view: &AdminView) -> Response {
    if view.draining.load(Ordering::Acquire) {
        return Response::text(503, "draining\n");
    }
    let now = crate::fleet::now_ms();
    for (u, state) in view.config.upstreams.iter().zip(&view.fleet.upstreams) {
        let set = state.current();
        if !set.slots.iter().any(|s| s.eligible(now)) {
            return Response::text(503, &format!("upstream {} has no server up\n", u.name));
        }
    }
    Response::text(200, "ready\n")
}

/// A server's state as the API, the page and the metrics show it: an
/// ejection whose time has passed reads as UP (the slot is only reset on
/// its next pick).
fn state_word(s: &crate::balance::server::ServerSlot, now_ms: u64) -> &'static str {
    use crate::balance::server::ServerState;
    match s.state() {
        ServerState::Up => "UP",
        ServerState::Down => "DOWN",
        ServerState::Draining => "DRAINING",
        ServerState::Ejected if s.eligible(now_ms) => "UP",
        ServerState::Ejected => "EJECTED",
    }
}

fn servers_json(view: &AdminView) -> serde_json::Value {
    let now = crate::fleet::now_ms();
    let ups: Vec<serde_json::Value> = view
        .config
        .upstreams
        .iter()
        .zip(&view.fleet.upstreams)
        .map(|(u, st)| {
            let set = st.current();
            let servers: Vec<serde_json::Value> = set
                .slots
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "server": s.addr(),
                        "state": state_word(s, now),
                        "weight": s.weight(),
                        "backup": s.is_backup(),
                        "active": s.active(),
                        "pending": s.pending(),
                        "failures": s.failures(),
                        "ejections": s.ejections(),
                    })
                })
                .collect();
            serde_json::json!({ "upstream": u.name, "servers": servers })
        })
        .collect();
    serde_json::json!({ "upstreams": ups })
}

fn server_action(
    view: &AdminView,
    req: &Request,
    upstream: &str,
    server: &str,
    action: &str,
) -> Response {
    let Some(i) = view
        .config
        .upstreams
        .iter()
        .position(|u| u.name == upstream)
    else {
        return Response::json(
            404,
            &serde_json::json!({ "error": format!("no upstream {upstream:?}") }),
        );
    };
    let state = &view.fleet.upstreams[i];
    let done = if action == "drain" {
        // Optional `?close_per_second=N`: pace closing its open connections.
        let pace = req
            .query("close_per_second")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        state.drain(server, pace)
    } else {
        state.enable(server)
    };
    match done {
        Ok(()) => {
            info!(upstream, server, "admin: {action}");
            Response::json(
                200,
                &serde_json::json!({ "upstream": upstream, "server": server, "done": action }),
            )
        }
        Err(e) => Response::json(404, &serde_json::json!({ "error": e })),
    }
}

/// The running configuration as JSON, without secrets (key material lives
/// in files, whose paths are shown; the admin token's file is not).
fn config_json(c: &Config) -> serde_json::Value {
    use crate::config::AuthKind;
    serde_json::json!({
        "workers": c.workers,
        "io_driver": format!("{:?}", c.io_driver).to_lowercase(),
        "pin": c.pin,
        "listeners": c.listeners.iter().map(|l| serde_json::json!({
            "address": l.address.to_string(),
            "tls": l.tls.as_ref().map(|t| t.certificates.iter().map(|f| f.cert.display().to_string()).collect::<Vec<_>>()),
            "proxy_protocol": l.proxy_protocol,
        })).collect::<Vec<_>>(),
        "upstreams": c.upstreams.iter().map(|u| serde_json::json!({
            "name": u.name,
            "servers": u.servers.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
            "balance": format!("{:?}", u.balance),
            "retries": u.retries,
        })).collect::<Vec<_>>(),
        "routes": c.routes.iter().map(|r| serde_json::json!({
            "match": r.label,
            "upstream": c.upstreams[r.upstream].name,
            "auth": r.policy.auth.map(|i| c.auths[i].name.clone()),
            "max_message_size": r.max_message_size,
        })).collect::<Vec<_>>(),
        "auth": c.auths.iter().map(|a| serde_json::json!({
            "name": a.name,
            "kind": a.kind.word(),
            "token_from": a.token_from.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "keys": match &a.kind {
                AuthKind::Jwt(s) => serde_json::json!({
                    "secret_file": s.secret_file.as_ref().map(|_| "<redacted>"),
                    "public_key_file": s.public_key_file.as_ref().map(|p| p.display().to_string()),
                    "jwks_file": s.jwks_file.as_ref().map(|p| p.display().to_string()),
                    "jwks_url": s.jwks_url,
                }),
                AuthKind::ApiKey { .. } => serde_json::json!({ "keys_file": "<redacted>" }),
                AuthKind::External(s) => serde_json::json!({ "url": s.url }),
            },
        })).collect::<Vec<_>>(),
        "timeouts": {
            "connect_ms": c.timeouts.connect.as_millis() as u64,
            "handshake_ms": c.timeouts.handshake.as_millis() as u64,
            "close_ms": c.timeouts.close.as_millis() as u64,
            "idle_ms": c.timeouts.idle.as_millis() as u64,
            "shutdown_grace_ms": c.timeouts.shutdown_grace.as_millis() as u64,
        },
        "limits": {
            "max_connections": c.limits.max_connections,
            "max_pending_handshakes": c.limits.max_pending_handshakes,
            "buffer_size": c.limits.buffer_size,
            "max_head_bytes": c.limits.max_head_bytes,
        },
        "admin": c.admin.as_ref().map(|a| serde_json::json!({
            "address": a.address.to_string(),
            "token_file": a.token_file.as_ref().map(|_| "<redacted>"),
            "read_open": a.read_open,
        })),
    })
}
