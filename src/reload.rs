//! Configuration reload (SIGHUP, `POST /api/reload`, `wsedge --reload`):
//! the file is re-read and validated whole, every certificate and key file
//! it names is loaded, new listeners are bound; only then does anything
//! change. Each worker switches to the new [generation](crate::generation)
//! between two handshakes; connections already open keep the one they
//! started with and are never closed by a reload.
//!
//! What a reload cannot change (the worker threads, their io driver and
//! pinning, the buffer size, the admin listener, the log format, the pid
//! file) keeps its running value, and the answer says so.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::control::{self, Control, ControlSender};
use crate::fleet::Fleet;
use crate::generation::Generation;
use crate::health::{self, HealthChecker};
use crate::listener::bind_all;
use crate::policy::state::Shared;
use crate::resolve::{self, Resolver, Resolving};
use crate::server::{Source, reload_files};
use crate::tls::setup::TlsSetup;

/// Reloads that switched, and reloads refused.
static RELOADS: [std::sync::atomic::AtomicU64; 2] = [
    std::sync::atomic::AtomicU64::new(0),
    std::sync::atomic::AtomicU64::new(0),
];

/// Reloads done and refused since the process started.
pub fn counts() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (RELOADS[0].load(Relaxed), RELOADS[1].load(Relaxed))
}

/// How long the workers get to switch (each does it between two tasks:
/// microseconds, unless one is stuck).
const SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The current generation, and what a reload replaces.
#[derive(Debug)]
pub struct Reloader {
    pub(crate) current: ArcSwap<Generation>,
    pub(crate) source: Option<Source>,
    pub(crate) workers: usize,
    pub(crate) control: Vec<ControlSender>,
    pub(crate) moving: Mutex<Moving>,
}

/// What one reload at a time may change.
pub(crate) struct Moving {
    pub(crate) health: Option<HealthChecker>,
    pub(crate) resolving: Option<Resolving>,
    pub(crate) resolver: Resolver,
    /// The configured listener addresses being served.
    pub(crate) bound: Vec<SocketAddr>,
    /// Whether the built-in echo server runs.
    pub(crate) echo: bool,
}

impl std::fmt::Debug for Moving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moving")
            .field("bound", &self.bound)
            .field("echo", &self.echo)
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The generation now serving (1 at start, one more per reload).
    pub generation: u64,
    /// Listeners bound by this reload (the addresses bound: a port 0
    /// resolved).
    pub added: Vec<SocketAddr>,
    /// Listeners closed by this reload.
    pub removed: Vec<SocketAddr>,
    /// Things said about the new configuration (keys only a restart
    /// changes, ...).
    pub warnings: Vec<String>,
}

impl Reloader {
    /// The generation new connections start under.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    fn lock(&self) -> MutexGuard<'_, Moving> {
        self.moving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the configuration file and switches every worker to it;
    /// the error (with file and line for a bad file) when nothing changed.
    /// Started without a file (command-line flags or the embedded
    /// default), it re-reads the certificates and key files only.
    pub fn reload(&self) -> Result<Reloaded, String> {
        let started = Instant::now();
        let mut moving = self.lock();
        let old = self.current();
        let Some(source) = &self.source else {
            let errors = reload_files(&old.config, &old.tls, &old.policy);
            return if errors.is_empty() {
                Ok(Reloaded {
                    generation: old.serial,
                    added: Vec::new(),
                    removed: Vec::new(),
                    warnings: vec![
                        "started without a configuration file: certificates and key files re-read, nothing else".into(),
                    ],
                })
            } else {
                Err(errors.join("; "))
            };
        };
        let result = self.switch(&mut moving, &old, source);
        RELOADS[usize::from(result.is_err())].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &result {
            Ok(r) => {
                for w in &r.warnings {
                    warn!("reload: {w}");
                }
                info!(
                    generation = r.generation,
                    added = ?r.added,
                    removed = ?r.removed,
                    took = ?started.elapsed(),
                    "configuration reloaded: new connections use it; open ones keep theirs"
                );
            }
            Err(e) => error!("reload refused, nothing changed: {e}"),
        }
        result
    }

    fn switch(
        &self,
        moving: &mut Moving,
        old: &Arc<Generation>,
        source: &Source,
    ) -> Result<Reloaded, String> {
        let mut config = Config::load(&source.path).map_err(|e| e.to_string())?;
        (source.adjust)(&mut config);
        let mut warnings = config.warnings();
        warnings.extend(keep_restart_only(&old.config, &mut config, moving.echo));
        let tls_anywhere = config.listeners.iter().any(|l| l.tls.is_some())
            || config.upstreams.iter().any(|u| u.tls.is_some());
        if tls_anywhere && config.limits.buffer_size < crate::config::MIN_TLS_BUFFER {
            return Err(format!(
                "TLS needs limits.buffer_size of at least {} bytes, and the running buffers are {} bytes (the buffer size changes on restart only): restart to add TLS",
                crate::config::MIN_TLS_BUFFER,
                config.limits.buffer_size
            ));
        }
        let (mut tls, tls_warnings) = TlsSetup::build(&config).map_err(|e| format!("TLS: {e}"))?;
        warnings.extend(tls_warnings);
        let same_listener: Vec<Option<usize>> = config
            .listeners
            .iter()
            .map(|l| {
                old.config
                    .listeners
                    .iter()
                    .position(|o| o.address == l.address)
            })
            .collect();
        tls.keep_sessions(&old.tls, &same_listener);
        let policy = Shared::start_after(&config, Some((&old.policy, &old.config)))?;
        // New listeners are bound before anything changes; a failure drops
        // what was bound (and stops the new JWKS refreshers).
        let n = self.workers;
        let mut added_socks: Vec<Vec<(SocketAddr, std::net::TcpListener)>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut added = Vec::new();
        for l in &config.listeners {
            if let Some(at) = old.config.listeners.iter().find(|o| o.address == l.address)
                && at.backlog != l.backlog
            {
                warnings.push(format!(
                    "listener {}: backlog changes on restart only (the socket is kept)",
                    l.address
                ));
            }
            if moving.bound.contains(&l.address)
                || added_socks[0].iter().any(|(a, _)| *a == l.address)
            {
                continue;
            }
            let socks = match bind_all(l.address, l.backlog, n) {
                Ok(s) => s,
                Err(e) => {
                    policy.stop();
                    return Err(format!("cannot listen on {}: {e}", l.address));
                }
            };
            let actual = socks[0].local_addr().unwrap_or(l.address);
            for (i, s) in socks.into_iter().enumerate() {
                added_socks[i % n].push((l.address, s));
            }
            added.push(actual);
        }
        let removed: Vec<SocketAddr> = moving
            .bound
            .iter()
            .copied()
            .filter(|a| !config.listeners.iter().any(|l| l.address == *a))
            .collect();

        let config = Arc::new(config);
        let fleet = Arc::new(Fleet::carry(&config, &old.fleet, &old.config));
        let tls = Arc::new(tls);
        let generation = Arc::new(Generation::new(
            old.serial + 1,
            Arc::clone(&config),
            Arc::clone(&tls),
            Arc::clone(&fleet),
            Arc::clone(&policy),
            n,
            Some(old),
        ));
        let (reply, switched) = std::sync::mpsc::channel();
        let msg = Arc::new(control::Reload {
            generation: Arc::clone(&generation),
            added: Mutex::new(added_socks),
            removed: removed.clone(),
            reply,
        });
        let mut told = 0;
        for c in &self.control {
            if c.send(Control::Reload(Arc::clone(&msg))).is_ok() {
                told += 1;
            }
        }
        drop(msg);
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        for _ in 0..told {
            let left = deadline.saturating_duration_since(Instant::now());
            if switched.recv_timeout(left).is_err() {
                warnings.push(
                    "a worker did not confirm the switch within 5 s; it switches when it can"
                        .into(),
                );
                break;
            }
        }
        self.current.store(Arc::clone(&generation));
        old.policy.stop();
        moving.bound = config.listeners.iter().map(|l| l.address).collect();
        for a in &removed {
            // Not handed to the next binary any more.
            crate::upgrade::forget(*a);
        }
        // The health checks and DNS re-resolution follow the new servers
        // (their state is in the slots, which carried over).
        if let Some(h) = moving.health.take() {
            h.stop();
        }
        if let Some(mut r) = moving.resolving.take() {
            r.stop();
        }
        moving.health = health::spawn(Arc::clone(&config), Arc::clone(&fleet), &tls);
        moving.resolving = resolve::spawn(config, fleet, moving.resolver.clone());
        Ok(Reloaded {
            generation: generation.serial,
            added,
            removed,
            warnings,
        })
    }

    /// Stops the health checks, DNS re-resolution and JWKS refreshers (the
    /// server is shutting down).
    pub(crate) fn stop(&self) {
        let mut moving = self.lock();
        self.current().policy.stop();
        if let Some(h) = moving.health.take() {
            h.stop();
        }
        if let Some(mut r) = moving.resolving.take() {
            r.stop();
        }
    }
}

/// Puts back into `new` what only a restart changes, saying what was
/// asked: the running values stay.
fn keep_restart_only(old: &Config, new: &mut Config, echo_running: bool) -> Vec<String> {
    let mut said = Vec::new();
    let mut keep = |what: &str, changed: bool| {
        if changed {
            said.push(format!(
                "{what} changes on restart only: the running value is kept"
            ));
        }
    };
    keep("workers", old.workers != new.workers);
    new.workers = old.workers;
    keep("io_driver", old.io_driver != new.io_driver);
    new.io_driver = old.io_driver;
    keep("pin", old.pin != new.pin);
    new.pin = old.pin;
    keep(
        "limits.buffer_size",
        old.limits.buffer_size != new.limits.buffer_size,
    );
    new.limits.buffer_size = old.limits.buffer_size;
    keep("[admin]", old.admin != new.admin);
    new.admin.clone_from(&old.admin);
    keep("pid_file", old.pid_file != new.pid_file);
    new.pid_file.clone_from(&old.pid_file);
    keep(
        "log.format and log.level",
        old.log.format != new.log.format || old.log.level != new.log.level,
    );
    if new.uses_builtin_echo() && !echo_running {
        said.push(
            "builtin:echo servers start with the process: this one answers 502 until a restart"
                .into(),
        );
    }
    said
}
