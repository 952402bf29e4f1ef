//! Configuration generations: everything a handshake reads that a reload
//! replaces (the configuration, certificates, server slots, policy tables,
//! per-route counters), bundled so that one swap changes it all at once.
//!
//! A worker holds the current [`WorkerGen`]; a session takes it when it
//! starts and keeps it to its end, so a reload never changes anything under
//! a live connection. A generation is freed when the last connection that
//! started under it ends ([`live`] counts them: back to 1 when the old
//! connections are gone).
//!
//! What carries over from one generation to the next, so that a reload
//! does not reset what the live connections hold or what Prometheus has
//! scraped: server slots (by upstream name and address: health, ejection,
//! connection counts, operator drains), the per-IP and per-identity limit
//! tables (while their size stays), a route's connection count and its
//! counters (by the route's label), an upstream's retry counter (by name).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;
use crate::fleet::{Balancers, Fleet};
use crate::policy::state::{Shared, WorkerPolicy};
use crate::stats::{Counter, RouteStats};
use crate::tls::setup::TlsSetup;

/// Generations alive now (the current one and any still held by
/// connections that started under an older one).
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many configuration generations are alive: 1 when no connection
/// holds an older one.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// One configuration as every worker serves it.
#[derive(Debug)]
pub struct Generation {
    /// 1 for the configuration the process started with, then one more per
    /// reload.
    pub serial: u64,
    /// The configuration.
    pub config: Arc<Config>,
    /// TLS configurations by listener and upstream.
    pub tls: Arc<TlsSetup>,
    /// Every server's shared state.
    pub fleet: Arc<Fleet>,
    /// The policy's keys and limit tables.
    pub policy: Arc<Shared>,
    /// Per worker, per route index: that route's counters.
    pub routes: Vec<Box<[Arc<RouteStats>]>>,
    /// Per worker, per upstream index: retried backend attempts.
    pub retries: Vec<Box<[Arc<Counter>]>>,
}

impl Generation {
    /// A generation of `config` for `workers` workers; counters of routes
    /// (by label) and upstreams (by name) that `old` had are kept.
    pub fn new(
        serial: u64,
        config: Arc<Config>,
        tls: Arc<TlsSetup>,
        fleet: Arc<Fleet>,
        policy: Arc<Shared>,
        workers: usize,
        old: Option<&Generation>,
    ) -> Generation {
        let routes = (0..workers)
            .map(|w| {
                config
                    .routes
                    .iter()
                    .map(|r| {
                        old.and_then(|o| {
                            let i = o.config.routes.iter().position(|x| x.label == r.label)?;
                            o.routes.get(w).map(|t| Arc::clone(&t[i]))
                        })
                        .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        let retries = (0..workers)
            .map(|w| {
                config
                    .upstreams
                    .iter()
                    .map(|u| {
                        old.and_then(|o| {
                            let i = o.config.upstreams.iter().position(|x| x.name == u.name)?;
                            o.retries.get(w).map(|t| Arc::clone(&t[i]))
                        })
                        .unwrap_or_default()
                    })
                    .collect()
            })
            .collect();
        LIVE.fetch_add(1, Ordering::Relaxed);
        Generation {
            serial,
            config,
            tls,
            fleet,
            policy,
            routes,
            retries,
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A generation as one worker serves it: the shared part and the worker's
/// own pickers, retry budgets and policy caches.
#[derive(Debug)]
pub struct WorkerGen {
    /// The shared part.
    pub shared: Arc<Generation>,
    /// The configuration (the shared part's).
    pub config: Arc<Config>,
    /// TLS configurations (the shared part's).
    pub tls: Arc<TlsSetup>,
    /// Server slots (the shared part's).
    pub fleet: Arc<Fleet>,
    /// Policy keys and tables (the shared part's).
    pub shared_policy: Arc<Shared>,
    /// This worker's pickers and retry budgets.
    pub balancers: Balancers,
    /// This worker's decision caches, refusal log limiter and pending
    /// handshakes.
    pub policy: WorkerPolicy,
    /// This worker's counters by route index.
    pub routes: Box<[Arc<RouteStats>]>,
    /// This worker's retry counters by upstream index.
    pub retries: Box<[Arc<Counter>]>,
}

impl WorkerGen {
    /// Worker `worker`'s view of `shared`.
    pub fn new(shared: Arc<Generation>, worker: usize) -> WorkerGen {
        WorkerGen {
            config: Arc::clone(&shared.config),
            tls: Arc::clone(&shared.tls),
            fleet: Arc::clone(&shared.fleet),
            shared_policy: Arc::clone(&shared.policy),
            balancers: Balancers::new(&shared.config, &shared.fleet, worker as u64 + 1),
            policy: WorkerPolicy::new(&shared.config),
            routes: shared.routes.get(worker).cloned().unwrap_or_default(),
            retries: shared.retries.get(worker).cloned().unwrap_or_default(),
            shared,
        }
    }
}
