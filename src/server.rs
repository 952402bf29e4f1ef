//! Starting and stopping the workers.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::config::system_resolve;
use crate::config::{Config, IoDriver};
use crate::control::{self, Control, ControlSender};
use crate::fleet::Fleet;
use crate::generation::Generation;
use crate::health;
use crate::listener::bind_all;
use crate::reload::{Moving, Reloaded, Reloader};
use crate::resolve::{self, Resolver};
use crate::stats::Stats;
use crate::tls::setup::TlsSetup;
use crate::worker::{self, WorkerSpec};

/// Where a reload re-reads the configuration from.
pub struct Source {
    /// The configuration file.
    pub path: PathBuf,
    /// Applies what the command line overrides (`--workers`, `--admin`,
    /// ...) to the file as re-read, as at start.
    pub adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Running workers (and the health checks). Stop them with
/// [`Server::shutdown`]; dropping the server also tells the workers to stop
/// (their control channels close), but without waiting for them; the
/// health checks stop and their thread is joined either way.
#[derive(Debug)]
pub struct Server {
    /// The addresses clients can connect to (ports resolved when 0 was asked).
    pub addrs: Vec<SocketAddr>,
    /// The built-in echo server's address, if configured.
    pub echo_addr: Option<SocketAddr>,
    /// The io driver each worker got, by worker index.
    pub drivers: Vec<&'static str>,
    /// Each worker's counters.
    pub stats: Vec<Arc<Stats>>,
    /// The configuration generations and reloads.
    live: Arc<Reloader>,
    control: Vec<ControlSender>,
    threads: Vec<JoinHandle<()>>,
    /// The admin endpoint, when configured.
    admin: Option<crate::admin::Admin>,
    /// Set when shutting down: `/readyz` answers 503.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// Why [`Server::start`] failed. Nothing is served when it is returned;
/// the workers already started stop on their own.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A TLS certificate, key or CA file could not be used.
    Tls(String),
    /// A key file of an `[[auth]]` block could not be used.
    Policy(String),
    /// A configured listener address could not be bound (in use, not a
    /// local address, no permission for the port, ...).
    Bind {
        /// The address from the configuration.
        address: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The built-in echo server's loopback listener could not be bound.
    Echo(io::Error),
    /// A worker's io runtime would not start (io_uring refused when it is
    /// forced with `io_driver = "uring"`, or no runtime at all).
    Runtime {
        /// The worker's index.
        worker: usize,
        /// The driver the configuration asked for.
        driver: IoDriver,
        /// Why the runtime did not start.
        source: io::Error,
    },
    /// The operating system refused to start a worker thread.
    Thread {
        /// The worker's index.
        worker: usize,
        /// Why.
        source: io::Error,
    },
    /// A worker thread ended (panicked) before its runtime was up.
    WorkerDied {
        /// The worker's index.
        worker: usize,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Tls(e) => write!(f, "TLS: {e}"),
            StartError::Policy(e) => write!(f, "{e}"),
            StartError::Bind { address, .. } => write!(f, "cannot listen on {address}"),
            StartError::Echo(_) => f.write_str("cannot start the built-in echo server"),
            StartError::Runtime { worker, driver, .. } => {
                let what = match driver {
                    IoDriver::Auto => "cannot start a runtime",
                    IoDriver::Uring => "io_uring unavailable",
                    IoDriver::Epoll => "cannot start the epoll driver",
                };
                write!(f, "worker {worker}: {what}")
            }
            StartError::Thread { worker, .. } => {
                write!(f, "worker {worker}: cannot start a worker thread")
            }
            StartError::WorkerDied { worker } => write!(f, "worker {worker} died while starting"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. }
            | StartError::Echo(source)
            | StartError::Runtime { source, .. }
            | StartError::Thread { source, .. } => Some(source),
            StartError::WorkerDied { .. } | StartError::Tls(_) | StartError::Policy(_) => None,
        }
    }
}

/// How many workers `workers = 0` means: the CPUs this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Server {
    /// Binds every listener and starts the workers. Returns once each worker
    /// has its runtime up; errors (address in use, io_uring refused when
    /// forced) are returned here, before anything is served.
    pub fn start(config: Config) -> Result<Server, StartError> {
        Server::start_with_resolver(config, Arc::new(system_resolve))
    }

    /// [`Server::start`] with host names re-resolved (`resolve_interval`)
    /// by `resolver` (tests inject one).
    pub fn start_with_resolver(config: Config, resolver: Resolver) -> Result<Server, StartError> {
        Server::start_reloadable(config, resolver, None)
    }

    /// [`Server::start_with_resolver`], with SIGHUP and `POST /api/reload`
    /// re-reading the whole configuration from `source` ([`Server::reload`]).
    pub fn start_reloadable(
        config: Config,
        resolver: Resolver,
        source: Option<Source>,
    ) -> Result<Server, StartError> {
        let config = Arc::new(config);
        let n = if config.workers == 0 {
            default_workers()
        } else {
            config.workers
        };
        let cores = if config.pin {
            core_affinity::get_core_ids().unwrap_or_default()
        } else {
            Vec::new()
        };
        check_open_files(&config, n);
        let (tls, warnings) = TlsSetup::build(&config).map_err(StartError::Tls)?;
        for w in config.warnings().into_iter().chain(warnings) {
            warn!("{w}");
        }
        let tls = Arc::new(tls);
        let fleet = Arc::new(Fleet::new(&config));
        let policy = crate::policy::state::Shared::start(&config).map_err(StartError::Policy)?;

        let mut per_worker: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let bind_error = |source| StartError::Bind {
                address: l.address,
                source,
            };
            let socks = bind_all(l.address, l.backlog, n).map_err(bind_error)?;
            addrs.push(socks[0].local_addr().map_err(bind_error)?);
            for (i, s) in socks.into_iter().enumerate() {
                per_worker[i % n].push((l.address, s));
            }
        }
        let mut echo: Vec<Option<std::net::TcpListener>> = (0..n).map(|_| None).collect();
        let mut echo_addr = None;
        if config.uses_builtin_echo() {
            let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let socks = bind_all(loopback, 1024, n).map_err(StartError::Echo)?;
            echo_addr = Some(socks[0].local_addr().map_err(StartError::Echo)?);
            for (w, s) in socks.into_iter().enumerate() {
                echo[w] = Some(s);
            }
        }

        // On an early return, dropping `senders` stops the workers started
        // so far (a worker whose senders are all gone stops).
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        let mut drivers = Vec::new();
        let mut stats = Vec::new();
        let generation = Arc::new(Generation::new(
            1,
            Arc::clone(&config),
            Arc::clone(&tls),
            Arc::clone(&fleet),
            Arc::clone(&policy),
            n,
            None,
        ));
        let relaying = Arc::new(std::sync::atomic::AtomicUsize::new(n));
        for (id, (listeners, echo)) in per_worker.into_iter().zip(echo).enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let (sender, receiver) = control::channel();
            senders.push(sender);
            let s = Arc::new(Stats::default());
            stats.push(Arc::clone(&s));
            let spec = WorkerSpec {
                id,
                core: if cores.is_empty() {
                    None
                } else {
                    Some(cores[id % cores.len()])
                },
                listeners,
                echo,
                generation: Arc::clone(&generation),
                workers: n,
                relaying: Arc::clone(&relaying),
                stats: s,
                control: receiver,
                ready: tx,
            };
            let t = std::thread::Builder::new()
                .name(format!("wsedge-worker-{id}"))
                .spawn(move || worker::run(spec))
                .map_err(|source| StartError::Thread { worker: id, source })?;
            threads.push(t);
            match rx.recv() {
                Ok(Ok(driver)) => {
                    info!(worker = id, core = ?cores.get(id % cores.len().max(1)).map(|c| c.id), driver, "worker started");
                    drivers.push(driver);
                }
                Ok(Err(source)) => {
                    return Err(StartError::Runtime {
                        worker: id,
                        driver: config.io_driver,
                        source,
                    });
                }
                Err(_) => return Err(StartError::WorkerDied { worker: id }),
            }
        }
        let health = health::spawn(Arc::clone(&config), Arc::clone(&fleet), &tls);
        let resolving = resolve::spawn(Arc::clone(&config), Arc::clone(&fleet), resolver.clone());
        let live = Arc::new(Reloader {
            current: ArcSwap::new(Arc::clone(&generation)),
            source,
            workers: n,
            control: senders.clone(),
            moving: Mutex::new(Moving {
                health,
                resolving,
                resolver,
                bound: config.listeners.iter().map(|l| l.address).collect(),
                echo: echo_addr.is_some(),
            }),
        });
        drop(generation);
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = match &config.admin {
            Some(settings) => Some(
                crate::admin::spawn(
                    settings,
                    crate::admin::AdminView::new(
                        Arc::clone(&live),
                        stats.clone(),
                        Arc::clone(&draining),
                        senders.clone(),
                    ),
                )
                .map_err(|source| StartError::Bind {
                    address: settings.address,
                    source,
                })?,
            ),
            None => None,
        };
        Ok(Server {
            addrs,
            echo_addr,
            drivers,
            stats,
            live,
            control: senders,
            threads,
            admin,
            draining,
        })
    }

    /// SIGTERM's shutdown: `/readyz` turns 503 at once; the listeners go on
    /// accepting for `timeouts.drain_delay`, then close; the relayed
    /// connections get 1001 "going away" spread evenly over
    /// `timeouts.drain_period`; what is left then gets the
    /// `timeouts.shutdown_grace` of [`Server::shutdown`].
    pub fn drain_and_shutdown(self) {
        let t = self.live.current().config.timeouts;
        info!(
            delay = ?t.drain_delay,
            period = ?t.drain_period,
            grace = ?t.shutdown_grace,
            "draining: not ready from now; closing connections over the drain period"
        );
        self.finish(Control::Drain {
            delay: t.drain_delay,
            period: t.drain_period,
        });
    }

    /// Stops accepting, sends 1001 to every client and backend, waits up to
    /// the grace period for the close handshakes, and joins the workers.
    pub fn shutdown(self) {
        self.finish(Control::Stop);
    }

    /// Tells every worker `msg`, waits for them to exit (the admin
    /// endpoint answers meanwhile, `/readyz` with 503), then stops the
    /// rest.
    fn finish(mut self, msg: Control) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        for c in &self.control {
            // Err: that worker has exited already; nothing to tell it.
            let _ = c.send(msg.clone());
        }
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        drop(self.admin.take());
        self.live.stop();
    }

    /// Re-reads the TLS listeners' certificates and keys and the `[[auth]]`
    /// key files, and nothing else: new handshakes use them; open
    /// connections are untouched; a file that fails to load keeps its old
    /// certificate, and the log says why.
    pub fn reload_tls(&self) {
        let g = self.live.current();
        reload_files(&g.config, &g.tls, &g.policy);
    }

    /// Reloads the configuration (SIGHUP, `POST /api/reload`); see
    /// [`Reloader::reload`].
    pub fn reload(&self) -> Result<Reloaded, String> {
        self.live.reload()
    }

    /// The configuration generation new connections start under.
    pub fn generation(&self) -> Arc<Generation> {
        self.live.current()
    }

    /// Drains server `server` (`IP:PORT`) of upstream `upstream`: no new
    /// connections; with `close_per_second` > 0 its open connections are
    /// closed with 1001 at that pace. The admin API's `drain` calls this.
    pub fn drain(&self, upstream: &str, server: &str, close_per_second: u32) -> Result<(), String> {
        let u = self.upstream_state(upstream)?;
        u.0.upstreams[u.1].drain(server, close_per_second)
    }

    /// Takes a drained server back into rotation.
    pub fn enable(&self, upstream: &str, server: &str) -> Result<(), String> {
        let u = self.upstream_state(upstream)?;
        u.0.upstreams[u.1].enable(server)
    }

    fn upstream_state(&self, upstream: &str) -> Result<UpstreamRef, String> {
        let g = self.live.current();
        let i = g
            .config
            .upstreams
            .iter()
            .position(|u| u.name == upstream)
            .ok_or_else(|| format!("no upstream {upstream:?}"))?;
        Ok(UpstreamRef(Arc::clone(&g.fleet), i))
    }

    /// Every server's shared state (health, ejection, load), as the
    /// workers see it now.
    pub fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.live.current().fleet)
    }

    /// Where the admin endpoint listens, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// The counters summed over the workers.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        crate::stats::sum(&self.stats)
    }
}

/// One upstream of a fleet.
struct UpstreamRef(Arc<Fleet>, usize);

/// Re-reads the certificates and key files: the TLS listeners' certificates and keys
/// and the `[[auth]]` key files (JWKS, API keys). New handshakes use them;
/// open connections are untouched; a file that fails keeps what was in
/// use, and the log says why. Returns the errors.
pub fn reload_files(
    config: &Config,
    tls: &TlsSetup,
    policy: &crate::policy::state::Shared,
) -> Vec<String> {
    let mut errors = policy.reload_keys(config);
    if tls.listeners.iter().all(Option::is_none) {
        return errors;
    }
    let tls_errors = tls.reload();
    for e in &tls_errors {
        error!("certificate reload: {e}; keeping the certificate in use");
    }
    let now = crate::tls::certs::unix_now();
    for acc in tls.listeners.iter().flatten() {
        for c in acc.certs.current().iter() {
            info!(
                cert = %c.files.cert.display(),
                subject = %c.subject,
                expires = %crate::tls::certs::date(c.not_after),
                days_left = c.days_left(now),
                "certificate in use"
            );
        }
    }
    if tls_errors.is_empty() {
        info!("certificates reloaded");
    }
    errors.extend(tls_errors);
    errors
}

/// Raises the open-file limit to its hard limit, and warns when even that
/// is short of what the configuration may need: two descriptors per
/// connection (client and backend) for `max_connections` established and
/// `max_pending_handshakes` in progress on every worker, plus a margin.
fn check_open_files(config: &Config, workers: usize) {
    let per_worker = 2 * (config.limits.max_connections + config.limits.max_pending_handshakes);
    let needed = (workers * per_worker + 64 * workers + 64) as u64;
    match crate::sys::raise_nofile_limit() {
        Ok(limit) if limit < needed => warn!(
            limit,
            needed,
            "the open-file limit ({limit}) is below what {workers} workers × 2 × (limits.max_connections + limits.max_pending_handshakes) may need ({needed}): past it clients get 503; raise it (LimitNOFILE= in the systemd unit, ulimit -Hn) or lower limits.max_connections"
        ),
        Ok(limit) => info!(limit, needed, "open-file limit"),
        Err(e) => warn!("cannot read the open-file limit: {e}"),
    }
}

/// Blocks the calling thread until SIGINT, SIGTERM or SIGUSR2 arrives
/// (returned: SIGUSR2 asks for a binary upgrade, which the caller starts),
/// reloading the TLS certificates of `server` on each SIGHUP meanwhile.
/// Call [`block_shutdown_signals`] first, before any thread is started.
pub fn wait_for_shutdown_signal(server: &Server) -> i32 {
    loop {
        let sig = crate::sys::wait_for_signals(&[
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR2,
        ]);
        if sig != libc::SIGHUP {
            return sig;
        }
        info!("SIGHUP: reloading the configuration");
        let _ = crate::notify::reloading();
        let _ = server.reload();
        let _ = crate::notify::ready();
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGUSR2 in this thread and every
/// thread it starts afterwards, so that [`wait_for_shutdown_signal`]
/// receives them.
pub fn block_shutdown_signals() {
    crate::sys::block_signals(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR2]);
}
