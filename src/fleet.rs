//! The upstreams at run time: each server's shared state ([`ServerSlot`]:
//! connections, handshakes in progress, health, ejection), built once per
//! process and shared by every worker, and each worker's own pickers and
//! retry budgets.
//!
//! Shared state is touched at connect and close only (atomics; see
//! [`crate::balance`]). Nothing here runs per frame.

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::balance::key::key_hash;
use crate::balance::maglev::{HashPicker, Maglev};
use crate::balance::outlier::{self, OutlierConfig};
use crate::balance::pick::{LeastConn, Picker, RandomTwo, RoundRobin};
use crate::balance::retry::{self, RetryBudget};
use crate::balance::server::{ServerSlot, find_by_id};
use crate::config::{Balance, Config, HashKey, Upstream};
use crate::proto::handshake::UpgradeRequest;
use crate::route;

/// Milliseconds since the process's first call: the clock every worker
/// gives the balancing code (one epoch, so slot timestamps compare).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Start at 1 so that 0 can mean "never" in the slots.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream's shared state.
#[derive(Debug)]
pub struct UpstreamState {
    /// One slot per server, in [`Upstream::servers`] order.
    pub slots: Vec<Arc<ServerSlot>>,
    /// The consistent-hashing table, with `balance = "hash"`.
    pub maglev: Option<Arc<Maglev>>,
    /// Passive ejection settings.
    pub outlier: OutlierConfig,
    /// `slow_start` in milliseconds.
    pub slow_start_ms: u64,
}

/// Every upstream's shared state, by index into [`Config::upstreams`].
#[derive(Debug)]
pub struct Fleet {
    /// By upstream index.
    pub upstreams: Vec<UpstreamState>,
}

impl Fleet {
    /// Slots for every server of `config`, all up.
    pub fn new(config: &Config) -> Fleet {
        let now = now_ms();
        Fleet {
            upstreams: config.upstreams.iter().map(|u| state(u, now)).collect(),
        }
    }
}

fn state(u: &Upstream, now: u64) -> UpstreamState {
    let slots: Vec<Arc<ServerSlot>> = u
        .servers
        .iter()
        .map(|s| {
            let slot = ServerSlot::new(&s.addr.to_string(), u32::from(s.weight))
                .with_backup(s.backup)
                .with_limits(u.max_connections, u.max_pending);
            slot.mark_up(now);
            Arc::new(slot)
        })
        .collect();
    let maglev = matches!(u.balance, Balance::Hash { .. }).then(|| Arc::new(Maglev::new(&slots)));
    UpstreamState {
        slots,
        maglev,
        outlier: OutlierConfig {
            eject_after: u.eject.after,
            eject_base_ms: u.eject.base.as_millis() as u64,
            eject_max_ms: u.eject.max.as_millis() as u64,
        },
        slow_start_ms: u.slow_start.as_millis() as u64,
    }
}

/// A worker's pickers and retry budgets, one per upstream.
#[derive(Debug)]
pub struct Balancers {
    pickers: Vec<RefCell<Picker>>,
    budgets: Vec<RefCell<RetryBudget>>,
    rng: RefCell<ChaCha8Rng>,
}

/// Retries a worker may always make in the budget's 10 s window, whatever
/// the ratio: 10 a second, Finagle's default. It lets a quiet proxy retry
/// every handshake that meets a dead server until that server is ejected,
/// and still caps what a failing fleet sees at 10/s + `retry_budget`.
const MIN_RETRIES: u32 = 100;

impl Balancers {
    /// A worker's state; `seed` differs per worker so that they do not move
    /// in step.
    pub fn new(config: &Config, fleet: &Fleet, seed: u64) -> Balancers {
        let pickers = config
            .upstreams
            .iter()
            .zip(&fleet.upstreams)
            .enumerate()
            .map(|(i, (u, st))| {
                let seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64;
                RefCell::new(match &u.balance {
                    Balance::RoundRobin => {
                        // Workers start at different servers.
                        let mut rr = RoundRobin::new(st.slots.len());
                        for _ in 0..(seed as usize % st.slots.len().max(1)) {
                            let _ = rr.pick(&st.slots, 0, 0, 0);
                        }
                        Picker::RoundRobin(rr)
                    }
                    Balance::LeastConn => Picker::LeastConn(LeastConn::new(seed as usize)),
                    Balance::RandomTwo => Picker::RandomTwo(RandomTwo::new(seed)),
                    Balance::Hash { factor, .. } => Picker::Hash(HashPicker::new(
                        Arc::clone(st.maglev.as_ref().expect("hash upstreams have a table")),
                        Some(*factor),
                        seed,
                    )),
                })
            })
            .collect();
        let budgets = config
            .upstreams
            .iter()
            .map(|u| RefCell::new(RetryBudget::new(u.retry_budget, MIN_RETRIES)))
            .collect();
        Balancers {
            pickers,
            budgets,
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed)),
        }
    }

    /// The server for one attempt of a handshake to `upstream`: the sticky
    /// server first when it can take it, else the upstream's algorithm.
    /// `skip` masks servers already tried in this handshake.
    pub fn pick(
        &self,
        fleet: &Fleet,
        upstream: usize,
        key: Option<u64>,
        sticky: Option<u64>,
        skip: u64,
    ) -> Option<usize> {
        let st = &fleet.upstreams[upstream];
        let now = now_ms();
        if let Some(id) = sticky
            && let Some(i) = find_by_id(&st.slots, id)
            && (i >= 64 || (skip >> i) & 1 == 0)
            && st.slots[i].eligible(now)
        {
            return Some(i);
        }
        self.pickers[upstream]
            .borrow_mut()
            .pick(&st.slots, key, skip, now, st.slow_start_ms)
    }

    /// Counts a handshake toward the retry budget.
    pub fn handshake_started(&self, upstream: usize) {
        self.budgets[upstream]
            .borrow_mut()
            .record_handshake(now_ms());
    }

    /// Whether one more attempt may be made (the budget allows a retry),
    /// and how long to wait before it (full jitter).
    pub fn retry(&self, upstream: &Upstream, index: usize, attempt: u32) -> Option<u64> {
        if !self.budgets[index].borrow_mut().try_acquire_retry(now_ms()) {
            return None;
        }
        let base = upstream.retry_backoff.as_millis() as u64;
        let cap = base.saturating_mul(32);
        Some(retry::backoff_ms(
            attempt,
            base,
            cap,
            &mut *self.rng.borrow_mut(),
        ))
    }
}

/// A connection counted on its server until dropped.
#[derive(Debug)]
pub struct Active(Arc<ServerSlot>);

impl Active {
    /// Counts a connection on `slot`.
    pub fn new(slot: &Arc<ServerSlot>) -> Active {
        slot.acquire();
        Active(Arc::clone(slot))
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A handshake in progress on a server, counted until dropped.
#[derive(Debug)]
pub struct Pending(Arc<ServerSlot>);

impl Pending {
    /// Counts a handshake on `slot`.
    pub fn new(slot: &Arc<ServerSlot>) -> Pending {
        slot.begin_handshake();
        Pending(Arc::clone(slot))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.end_handshake();
    }
}

/// Whether a server not yet tried (`skip`) could take a connection now.
pub fn has_candidate(st: &UpstreamState, skip: u64) -> bool {
    let now = now_ms();
    st.slots
        .iter()
        .enumerate()
        .any(|(i, s)| (i >= 64 || (skip >> i) & 1 == 0) && s.eligible(now))
}

/// Records the outcome of an attempt on a server (passive ejection).
pub fn record(st: &UpstreamState, server: usize, ok: bool) -> bool {
    let slot = &st.slots[server];
    if ok {
        outlier::record_success(slot, now_ms(), &st.outlier);
        false
    } else {
        outlier::record_failure(slot, now_ms(), &st.outlier)
    }
}

/// The hash of the request's `hash_key`, or `None` when the request has no
/// such key (the picker falls back to `random_two`).
pub fn request_key(
    key: &HashKey,
    req: &UpgradeRequest<'_, '_>,
    client: std::net::IpAddr,
) -> Option<u64> {
    match key {
        HashKey::Ip => Some(match client.to_canonical() {
            std::net::IpAddr::V4(a) => key_hash(&a.octets()),
            std::net::IpAddr::V6(a) => key_hash(&a.octets()),
        }),
        HashKey::Path => Some(key_hash(route::path_of(req.path()).as_bytes())),
        HashKey::Header(name) => req.header(name).map(key_hash),
        HashKey::Cookie(name) => cookie(req, name).map(|v| key_hash(v.as_bytes())),
        HashKey::Query(name) => {
            let q = req.path().split_once('?')?.1;
            route::query_params(q)
                .find(|(k, _)| k == name)
                .map(|(_, v)| key_hash(v.as_bytes()))
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'b>(req: &UpgradeRequest<'_, 'b>, name: &str) -> Option<&'b str> {
    req.headers()
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The sticky cookie's server id, parsed (`None` when absent or not ours).
pub fn sticky_id(req: &UpgradeRequest<'_, '_>, name: &str) -> Option<u64> {
    u64::from_str_radix(cookie(req, name)?, 16).ok()
}

/// The `Set-Cookie` value pinning a client to `slot`.
pub fn sticky_set_cookie(name: &str, slot: &ServerSlot, secure: bool) -> String {
    format!(
        "{name}={:016x}; Path=/; HttpOnly{}",
        slot.id(),
        if secure { "; Secure" } else { "" }
    )
}

/// One attempt on a server after its connect succeeded: recorded as a
/// failure toward ejection when dropped, unless marked [`Attempt::ok`]
/// (the backend answered, below 500).
#[derive(Debug)]
pub struct Attempt<'a> {
    st: &'a UpstreamState,
    server: usize,
    ok: bool,
}

impl<'a> Attempt<'a> {
    /// An attempt on server `server` of `st`.
    pub fn new(st: &'a UpstreamState, server: usize) -> Attempt<'a> {
        Attempt {
            st,
            server,
            ok: false,
        }
    }

    /// The backend answered as a live server does.
    pub fn ok(&mut self) {
        self.ok = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if record(self.st, self.server, self.ok) {
            tracing::warn!(
                backend = self.st.slots[self.server].addr(),
                "ejected after {} failures in a row",
                self.st.outlier.eject_after
            );
        }
    }
}
