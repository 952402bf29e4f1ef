//! The policy's running state: loaded keys, the limit tables shared by all
//! workers (touched at handshake and close only), and each worker's own
//! part (decision caches, the refusal log limiter, pending handshakes).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::api_key::ApiKeys;
use super::external::DecisionCache;
use super::jwt::{JwksRefresher, JwtVerifier, spawn_refresher};
use super::limiter::{KeyedLimiter, Permit};
use super::refusal::LogLimiter;
use crate::config::{AuthKind, Config};

/// An `[[auth]]` block's loaded state.
#[derive(Debug)]
pub enum AuthState {
    /// Keys for JWT validation.
    Jwt(Arc<JwtVerifier>),
    /// API key digests.
    ApiKey(ApiKeys),
    /// Nothing loaded: each worker asks the service (and caches).
    External,
}

/// State shared by every worker.
#[derive(Debug)]
pub struct Shared {
    /// By `[[auth]]` index.
    pub auths: Vec<AuthState>,
    /// Per client IP, `[limits]`.
    pub ip: Arc<KeyedLimiter>,
    /// Per client IP, for routes that override the per-IP limits.
    pub route_ip: Vec<Option<Arc<KeyedLimiter>>>,
    /// Per identity.
    pub identity: Arc<KeyedLimiter>,
    /// Open connections per route (for a route's `max_connections`).
    pub route_active: Box<[Arc<AtomicU32>]>,
    refreshers: Mutex<Vec<JwksRefresher>>,
}

impl Shared {
    /// Loads every key file the configuration names and starts the JWKS
    /// URL refreshers.
    pub fn start(config: &Config) -> Result<Arc<Shared>, String> {
        Shared::start_after(config, None)
    }

    /// [`Shared::start`] for a reload from `old` (with its configuration):
    /// the per-IP and per-identity tables are kept while
    /// `max_tracked_clients` stays, and a route keeps its tables and its
    /// connection count (by label), so that the live connections stay
    /// counted against the new limits.
    pub fn start_after(
        config: &Config,
        old: Option<(&Shared, &Config)>,
    ) -> Result<Arc<Shared>, String> {
        let mut auths = Vec::new();
        let mut refreshers = Vec::new();
        for a in &config.auths {
            let state = match &a.kind {
                AuthKind::Jwt(settings) => {
                    let v = Arc::new(
                        JwtVerifier::load(settings)
                            .map_err(|m| format!("auth {:?}: {m}", a.name))?,
                    );
                    if let Some(url) = &settings.jwks_url {
                        refreshers.push(spawn_refresher(
                            Arc::clone(&v),
                            url.clone(),
                            settings.jwks_refresh,
                        ));
                    }
                    AuthState::Jwt(v)
                }
                AuthKind::ApiKey { keys_file } => AuthState::ApiKey(
                    ApiKeys::load(keys_file).map_err(|m| format!("auth {:?}: {m}", a.name))?,
                ),
                AuthKind::External(_) => AuthState::External,
            };
            auths.push(state);
        }
        let capacity = config.limits.max_tracked_clients;
        let old = old.filter(|(_, c)| c.limits.max_tracked_clients == capacity);
        let old_route = |label: &str| {
            let (shared, c) = old?;
            let i = c.routes.iter().position(|r| r.label == label)?;
            Some((shared, i))
        };
        let route_ip = config
            .routes
            .iter()
            .map(|r| {
                r.policy.ip_override.map(|_| {
                    old_route(&r.label)
                        .and_then(|(o, i)| o.route_ip[i].clone())
                        .unwrap_or_else(|| KeyedLimiter::new(capacity))
                })
            })
            .collect();
        let route_active = config
            .routes
            .iter()
            .map(|r| {
                old_route(&r.label)
                    .map(|(o, i)| Arc::clone(&o.route_active[i]))
                    .unwrap_or_default()
            })
            .collect();
        Ok(Arc::new(Shared {
            auths,
            ip: old.map_or_else(|| KeyedLimiter::new(capacity), |(o, _)| Arc::clone(&o.ip)),
            route_ip,
            identity: old.map_or_else(
                || KeyedLimiter::new(capacity),
                |(o, _)| Arc::clone(&o.identity),
            ),
            route_active,
            refreshers: Mutex::new(refreshers),
        }))
    }

    /// Re-reads the JWKS and key files (SIGHUP); a file that fails keeps
    /// its old keys and its error is logged.
    pub fn reload_keys(&self, config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        for (a, state) in config.auths.iter().zip(&self.auths) {
            let done = match state {
                AuthState::Jwt(v) => v.reload().map(|()| "keys".to_string()),
                AuthState::ApiKey(k) => k.reload().map(|n| format!("{n} keys")),
                AuthState::External => continue,
            };
            match done {
                Ok(what) => info!(auth = %a.name, "SIGHUP: reloaded {what}"),
                Err(e) => {
                    warn!(auth = %a.name, "SIGHUP: keeping the old keys: {e}");
                    errors.push(format!("auth {:?}: {e}", a.name));
                }
            }
        }
        errors
    }

    /// Counts a connection on route `route` unless it has `max` already.
    pub fn route_enter(self: &Arc<Self>, route: usize, max: u32) -> Option<RouteSlot> {
        let counter = self.route_active.get(route)?;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(RouteSlot(Arc::clone(counter)))
    }

    /// Stops the JWKS refreshers.
    pub fn stop(&self) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.clear();
        }
    }
}

/// One connection counted on its route until dropped.
#[derive(Debug)]
pub struct RouteSlot(Arc<AtomicU32>);

impl Drop for RouteSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a relayed connection holds for the policy until it ends: its
/// counts in the limit tables, and who it is.
#[derive(Debug, Default)]
pub struct Held {
    /// Counted per client IP (`[limits]`).
    pub ip: Option<Permit>,
    /// Counted per client IP on its route.
    pub route_ip: Option<Permit>,
    /// Counted per identity.
    pub identity: Option<Permit>,
    /// Counted on its route.
    pub route: Option<RouteSlot>,
    /// Who it is (JWT `sub`, the API key's name).
    pub identity_name: Option<Box<str>>,
}

impl Held {
    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.ip.is_none()
            && self.route_ip.is_none()
            && self.identity.is_none()
            && self.route.is_none()
            && self.identity_name.is_none()
    }
}

/// One worker's own policy state.
#[derive(Debug)]
pub struct WorkerPolicy {
    /// Per `[[auth]]` index: a decision cache for external ones.
    pub caches: Vec<Option<DecisionCache>>,
    /// Refusal log lines, rate-limited per reason.
    pub log: LogLimiter,
    /// Handshakes in progress on this worker.
    pub pending: Cell<usize>,
}

/// Decisions cached per external `[[auth]]` block and worker.
const CACHE_ENTRIES: usize = 10_000;

impl WorkerPolicy {
    /// The state for one worker.
    pub fn new(config: &Config) -> WorkerPolicy {
        WorkerPolicy {
            caches: config
                .auths
                .iter()
                .map(|a| {
                    matches!(a.kind, AuthKind::External(_))
                        .then(|| DecisionCache::new(CACHE_ENTRIES))
                })
                .collect(),
            log: LogLimiter::default(),
            pending: Cell::new(0),
        }
    }
}

/// Counts one handshake in progress on its worker until dropped.
#[derive(Debug)]
pub struct PendingHandshake<'a>(&'a Cell<usize>);

impl<'a> PendingHandshake<'a> {
    /// Counts one unless `max` are in progress.
    pub fn enter(pending: &'a Cell<usize>, max: usize) -> Option<PendingHandshake<'a>> {
        let n = pending.get();
        if n >= max {
            return None;
        }
        pending.set(n + 1);
        Some(PendingHandshake(pending))
    }
}

impl Drop for PendingHandshake<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
