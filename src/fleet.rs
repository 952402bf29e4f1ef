//! The upstreams at run time: each server's shared state ([`ServerSlot`]:
//! connections, handshakes in progress, health, ejection), built once per
//! process and shared by every worker, and each worker's own pickers and
//! retry budgets.
//!
//! Shared state is touched at connect and close only (atomics; see
//! [`crate::balance`]). Nothing here runs per frame.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::balance::key::key_hash;
use crate::balance::maglev::{HashPicker, Maglev};
use crate::balance::outlier::{self, OutlierConfig};
use crate::balance::pick::{LeastConn, Picker, RandomTwo, RoundRobin, skipped};
use crate::balance::retry::{self, RetryBudget};
use crate::balance::server::{ServerSlot, ServerState, find_by_id};
use crate::config::{Balance, Config, HashKey, ServerSpec, Upstream};
use crate::proto::handshake::UpgradeRequest;
use crate::route;

/// Milliseconds since the process's first call: the clock every worker
/// gives the balancing code (one epoch, so slot timestamps compare).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Start at 1 so that 0 can mean "never" in the slots.
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// An upstream's servers as of one resolution: what a handshake picks
/// from. Replaced whole (never changed in place) when DNS re-resolution
/// finds other addresses; a handshake keeps the set it started with.
#[derive(Debug)]
pub struct ServerSet {
    /// The servers, in entry order.
    pub specs: Vec<ServerSpec>,
    /// One slot per server, in the same order. A server that stays across
    /// sets keeps its slot (and its counts).
    pub slots: Vec<Arc<ServerSlot>>,
    /// The consistent-hashing table, with `balance = "hash"`.
    pub maglev: Option<Arc<Maglev>>,
    /// Increases with each new set: pickers rebuild when it changes.
    pub generation: u64,
}

impl ServerSet {
    /// A set of `specs`, reusing `old` slots for addresses it had; new
    /// servers come up now (and ramp up over slow start).
    pub fn build(
        u: &Upstream,
        specs: Vec<ServerSpec>,
        old: Option<&ServerSet>,
        generation: u64,
        now: u64,
    ) -> ServerSet {
        let slots: Vec<Arc<ServerSlot>> = specs
            .iter()
            .map(|s| {
                let reused = old.and_then(|o| {
                    o.specs
                        .iter()
                        .position(|x| x.addr == s.addr)
                        .map(|i| Arc::clone(&o.slots[i]))
                });
                reused.unwrap_or_else(|| {
                    let slot = ServerSlot::new(&s.addr.to_string(), u32::from(s.weight))
                        .with_backup(s.backup)
                        .with_limits(u.max_connections, u.max_pending);
                    slot.mark_up(now);
                    Arc::new(slot)
                })
            })
            .collect();
        let maglev =
            matches!(u.balance, Balance::Hash { .. }).then(|| Arc::new(Maglev::new(&slots)));
        ServerSet {
            specs,
            slots,
            maglev,
            generation,
        }
    }
}

/// One upstream's shared state.
#[derive(Debug)]
pub struct UpstreamState {
    set: ArcSwap<ServerSet>,
    /// Servers an operator drains, by [`slot_key`], with the closes per
    /// second asked of their open connections (0: left to end on their
    /// own). Read by each worker four times a second, never per frame.
    drains: Mutex<HashMap<usize, u32>>,
    /// Passive ejection settings.
    pub outlier: OutlierConfig,
    /// `slow_start` in milliseconds.
    pub slow_start_ms: u64,
}

impl UpstreamState {
    /// The current servers.
    pub fn current(&self) -> Arc<ServerSet> {
        self.set.load_full()
    }

    /// Replaces the servers (DNS re-resolution).
    pub fn replace(&self, set: ServerSet) {
        self.set.store(Arc::new(set));
    }

    /// The servers being drained with a close rate: `(slot key, closes per
    /// second)`.
    pub fn drains(&self) -> Vec<(usize, u32)> {
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, r)| **r > 0)
            .map(|(&k, &r)| (k, r))
            .collect()
    }

    /// The server whose address is `server` (as `IP:PORT`), in the current
    /// set.
    fn find(&self, server: &str) -> Option<Arc<ServerSlot>> {
        let set = self.current();
        set.slots.iter().find(|s| s.addr() == server).cloned()
    }

    /// Drains `server`: no new connections; with `close_per_second` > 0 its
    /// open connections are closed with 1001 at that pace (over all
    /// workers), oldest first.
    pub fn drain(&self, server: &str, close_per_second: u32) -> Result<(), String> {
        let slot = self
            .find(server)
            .ok_or_else(|| format!("no server {server}"))?;
        slot.set_state(ServerState::Draining);
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot_key(&slot), close_per_second);
        Ok(())
    }

    /// Takes `server` out of draining: it is up again (ramping over
    /// `slow_start`).
    pub fn enable(&self, server: &str) -> Result<(), String> {
        let slot = self
            .find(server)
            .ok_or_else(|| format!("no server {server}"))?;
        self.drains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&slot_key(&slot));
        slot.mark_up(now_ms());
        Ok(())
    }
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

impl Fleet {
    /// The slots for `config` after a reload from `old_config`: a server
    /// of an upstream of the same name, at the same address, with the same
    /// weight, role and limits keeps its slot (health, ejection, counts),
    /// and an operator's drain of it stays; any other server is new (up).
    pub fn carry(config: &Config, old: &Fleet, old_config: &Config) -> Fleet {
        let now = now_ms();
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let Some(i) = old_config.upstreams.iter().position(|x| x.name == u.name) else {
                    return state(u, now);
                };
                let (ou, ost) = (&old_config.upstreams[i], &old.upstreams[i]);
                let prev = ost.current();
                let same_limits =
                    ou.max_connections == u.max_connections && ou.max_pending == u.max_pending;
                let kept: Vec<usize> = prev
                    .specs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        same_limits
                            && u.servers.iter().any(|n| {
                                n.addr == s.addr && n.weight == s.weight && n.backup == s.backup
                            })
                    })
                    .map(|(j, _)| j)
                    .collect();
                let reusable = ServerSet {
                    specs: kept.iter().map(|&j| prev.specs[j].clone()).collect(),
                    slots: kept.iter().map(|&j| Arc::clone(&prev.slots[j])).collect(),
                    maglev: None,
                    generation: prev.generation,
                };
                let st = state_with(
                    u,
                    ServerSet::build(
                        u,
                        u.servers.clone(),
                        Some(&reusable),
                        prev.generation + 1,
                        now,
                    ),
                );
                let set = st.current();
                let old_drains = ost.drains.lock().unwrap_or_else(|e| e.into_inner());
                let mut drains = st.drains.lock().unwrap_or_else(|e| e.into_inner());
                for (key, rate) in old_drains.iter() {
                    if set.slots.iter().any(|s| slot_key(s) == *key) {
                        drains.insert(*key, *rate);
                    }
                }
                drop(drains);
                st
            })
            .collect();
        Fleet { upstreams }
    }
}

fn state(u: &Upstream, now: u64) -> UpstreamState {
    state_with(u, ServerSet::build(u, u.servers.clone(), None, 0, now))
}

fn state_with(u: &Upstream, set: ServerSet) -> UpstreamState {
    UpstreamState {
        set: ArcSwap::from_pointee(set),
        drains: Mutex::new(HashMap::new()),
        outlier: OutlierConfig {
            eject_after: u.eject.after,
            eject_base_ms: u.eject.base.as_millis() as u64,
            eject_max_ms: u.eject.max.as_millis() as u64,
        },
        slow_start_ms: u.slow_start.as_millis() as u64,
    }
}

/// A picker for `set`, seeded per worker so that workers do not move in step.
fn picker(u: &Upstream, set: &ServerSet, seed: u64) -> Picker {
    match &u.balance {
        Balance::RoundRobin => {
            // Workers start at different servers.
            let mut rr = RoundRobin::new(set.slots.len());
            for _ in 0..(seed as usize % set.slots.len().max(1)) {
                let _ = rr.pick(&set.slots, 0, 0, 0);
            }
            Picker::RoundRobin(rr)
        }
        Balance::LeastConn => Picker::LeastConn(LeastConn::new(seed as usize)),
        Balance::RandomTwo => Picker::RandomTwo(RandomTwo::new(seed)),
        Balance::Hash { factor, .. } => Picker::Hash(HashPicker::new(
            Arc::clone(set.maglev.as_ref().expect("hash upstreams have a table")),
            Some(*factor),
            seed,
        )),
    }
}

/// A worker's pickers and retry budgets, one per upstream.
#[derive(Debug)]
pub struct Balancers {
    config: Arc<Config>,
    pickers: Vec<RefCell<(u64, Picker)>>,
    seeds: Vec<u64>,
    slow_start_ms: Vec<u64>,
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
    pub fn new(config: &Arc<Config>, fleet: &Fleet, seed: u64) -> Balancers {
        let seeds: Vec<u64> = (0..config.upstreams.len())
            .map(|i| seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64)
            .collect();
        let pickers = config
            .upstreams
            .iter()
            .zip(&fleet.upstreams)
            .zip(&seeds)
            .map(|((u, st), &seed)| {
                let set = st.current();
                RefCell::new((set.generation, picker(u, &set, seed)))
            })
            .collect();
        let budgets = config
            .upstreams
            .iter()
            .map(|u| RefCell::new(RetryBudget::new(u.retry_budget, MIN_RETRIES)))
            .collect();
        Balancers {
            config: Arc::clone(config),
            pickers,
            seeds,
            slow_start_ms: fleet.upstreams.iter().map(|u| u.slow_start_ms).collect(),
            budgets,
            rng: RefCell::new(ChaCha8Rng::seed_from_u64(seed ^ 0x5eed)),
        }
    }

    /// The server of `set` for one attempt of a handshake to `upstream`:
    /// the sticky server first when it can take it, else the upstream's
    /// algorithm. `skip` masks servers already tried in this handshake.
    pub fn pick(
        &self,
        upstream: usize,
        set: &ServerSet,
        key: Option<u64>,
        sticky: Option<u64>,
        skip: u64,
    ) -> Option<usize> {
        let now = now_ms();
        if let Some(id) = sticky
            && let Some(i) = find_by_id(&set.slots, id)
            && !skipped(skip, i)
            && set.slots[i].eligible(now)
        {
            return Some(i);
        }
        let mut p = self.pickers[upstream].borrow_mut();
        if p.0 != set.generation {
            // The servers changed: a picker for the new set.
            *p = (
                set.generation,
                picker(&self.config.upstreams[upstream], set, self.seeds[upstream]),
            );
        }
        p.1.pick(&set.slots, key, skip, now, self.slow_start_ms[upstream])
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

/// A server's key in the registry: its slot's address.
pub fn slot_key(slot: &Arc<ServerSlot>) -> usize {
    Arc::as_ptr(slot) as usize
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

    /// Its server, as a key: the address of the server's slot (what the
    /// registry's [`Tag::server`](crate::relay::Tag) holds).
    pub fn slot_key(&self) -> usize {
        slot_key(&self.0)
    }

    /// Its server.
    pub fn slot(&self) -> &ServerSlot {
        &self.0
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

/// Whether a server of `set` not yet tried (`skip`) could take a
/// connection now.
pub fn has_candidate(set: &ServerSet, skip: u64) -> bool {
    let now = now_ms();
    set.slots
        .iter()
        .enumerate()
        .any(|(i, s)| !skipped(skip, i) && s.eligible(now))
}

/// Records the outcome of an attempt on a server (passive ejection).
pub fn record(slot: &ServerSlot, outlier: &OutlierConfig, ok: bool) -> bool {
    if ok {
        outlier::record_success(slot, now_ms(), outlier);
        false
    } else {
        outlier::record_failure(slot, now_ms(), outlier)
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
    slot: Arc<ServerSlot>,
    ok: bool,
}

impl<'a> Attempt<'a> {
    /// An attempt on `slot`, a server of `st`.
    pub fn new(st: &'a UpstreamState, slot: &Arc<ServerSlot>) -> Attempt<'a> {
        Attempt {
            st,
            slot: Arc::clone(slot),
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
        if record(&self.slot, &self.st.outlier, self.ok) {
            tracing::warn!(
                backend = self.slot.addr(),
                "ejected after {} failures in a row",
                self.st.outlier.eject_after
            );
        }
    }
}
