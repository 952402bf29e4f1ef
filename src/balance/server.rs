//! One upstream server's shared state ([`ServerSlot`]): its configuration
//! and the counters every worker reads when it picks and writes when a
//! backend connection opens or closes.
//!
//! A slot lives in an `Arc` shared by all workers. Everything mutable is an
//! atomic with `Relaxed` ordering: the counters are load *estimates* that
//! steer a choice, nothing is published through them, and a worker that
//! reads a count one connection stale makes a choice that is just as
//! good. Two workers can therefore both see a server one below its
//! `max_connections` and both pick it; the limit is a soft one, overshot by
//! at most one connection per worker.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use super::key::key_hash;

/// Effective weights are in units of `1 / WEIGHT_SCALE` of a configured
/// weight point, so that slow start can ramp a weight-1 server smoothly.
pub const WEIGHT_SCALE: u32 = 64;

/// The largest configured weight; larger values are clamped to it.
pub const MAX_WEIGHT: u32 = 256;

/// Where a server stands, as far as new connections go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    /// Takes new connections.
    Up = 0,
    /// Failed its active health checks; takes none until it passes `rise`
    /// of them.
    Down = 1,
    /// An operator is taking it out: no new connections, existing ones
    /// stay. Only [`ServerSlot::set_state`] leaves this state; health checks
    /// and outlier ejection never override it.
    Draining = 2,
    /// Ejected by passive outlier detection until
    /// [`ServerSlot::ejected_until_ms`]; eligible again once that passes.
    Ejected = 3,
}

impl ServerState {
    fn from_u8(v: u8) -> ServerState {
        match v {
            0 => ServerState::Up,
            1 => ServerState::Down,
            2 => ServerState::Draining,
            _ => ServerState::Ejected,
        }
    }
}

/// One upstream server, shared by every worker through an `Arc`.
#[derive(Debug)]
pub struct ServerSlot {
    addr: Box<str>,
    id: u64,
    weight: u32,
    backup: bool,
    max_connections: u32,
    max_pending: u32,
    active: AtomicU32,
    pending: AtomicU32,
    state: AtomicU8,
    up_since_ms: AtomicU64,
    /// Consecutive failures (outlier detection).
    pub(super) failures: AtomicU32,
    /// Ejections so far; the next lasts `base × 2^ejections`.
    pub(super) ejections: AtomicU32,
    /// Ejected until this time; also the start of the slow-start ramp after
    /// an ejection ends.
    pub(super) ejected_until_ms: AtomicU64,
    /// Relayed connections that ended, and their data messages and bytes
    /// by sending leg (0: client, 1: backend), counted as each ends.
    ended: AtomicU64,
    traffic: [[AtomicU64; 2]; 2],
}

impl ServerSlot {
    /// A server at `addr` with `weight` (clamped to `1..=256`), up since time
    /// 0, not a backup, without circuit limits.
    pub fn new(addr: &str, weight: u32) -> ServerSlot {
        ServerSlot {
            addr: addr.into(),
            id: key_hash(addr.as_bytes()),
            weight: weight.clamp(1, MAX_WEIGHT),
            backup: false,
            max_connections: 0,
            max_pending: 0,
            active: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            state: AtomicU8::new(ServerState::Up as u8),
            up_since_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            traffic: Default::default(),
        }
    }

    /// Counts a relayed connection that ended, with the data messages and
    /// bytes each leg sent (`[client, backend]`): once per connection.
    pub fn record_ended(&self, messages: [u64; 2], bytes: [u64; 2]) {
        self.ended.fetch_add(1, Relaxed);
        for leg in 0..2 {
            self.traffic[0][leg].fetch_add(messages[leg], Relaxed);
            self.traffic[1][leg].fetch_add(bytes[leg], Relaxed);
        }
    }

    /// Relayed connections that ended.
    pub fn ended(&self) -> u64 {
        self.ended.load(Relaxed)
    }

    /// Data messages sent by `leg` (0: client, 1: backend) over the
    /// connections that ended.
    pub fn messages(&self, leg: usize) -> u64 {
        self.traffic[0][leg].load(Relaxed)
    }

    /// Bytes sent by `leg` over the connections that ended.
    pub fn bytes(&self, leg: usize) -> u64 {
        self.traffic[1][leg].load(Relaxed)
    }

    /// Marks it a backup: chosen only when no primary server is eligible.
    pub fn with_backup(mut self, backup: bool) -> ServerSlot {
        self.backup = backup;
        self
    }

    /// Circuit limits: at most `max_connections` open and `max_pending`
    /// handshakes in flight across all workers (0 = unlimited).
    pub fn with_limits(mut self, max_connections: u32, max_pending: u32) -> ServerSlot {
        self.max_connections = max_connections;
        self.max_pending = max_pending;
        self
    }

    /// The address it was built with.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A stable opaque id: [`key_hash`] of the address. The same address
    /// gets the same id in every process, so it can go in a sticky cookie.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The configured weight, `1..=256`.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether it is a backup server.
    pub fn is_backup(&self) -> bool {
        self.backup
    }

    /// Open connections, across all workers.
    pub fn active(&self) -> u32 {
        self.active.load(Relaxed)
    }

    /// Handshakes in flight, across all workers.
    pub fn pending(&self) -> u32 {
        self.pending.load(Relaxed)
    }

    /// Its state as stored. An `Ejected` server whose time is up is still
    /// stored as `Ejected` (until a success or a passing check tidies it)
    /// but is already [`eligible`](Self::eligible).
    pub fn state(&self) -> ServerState {
        ServerState::from_u8(self.state.load(Relaxed))
    }

    /// Sets the state outright: the admin path (drain, undrain, force down).
    pub fn set_state(&self, state: ServerState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Moves it from `from` to `to` only if it is still in `from`: the
    /// health and outlier paths, which must not undo an operator's drain.
    pub(super) fn transition(&self, from: ServerState, to: ServerState) -> bool {
        self.state
            .compare_exchange(from as u8, to as u8, Relaxed, Relaxed)
            .is_ok()
    }

    /// Marks it up as of `now_ms` (starts its slow-start ramp).
    pub fn mark_up(&self, now_ms: u64) {
        self.up_since_ms.store(now_ms, Relaxed);
        self.set_state(ServerState::Up);
    }

    /// When it last came up (0 for a server up since it was built).
    pub fn up_since_ms(&self) -> u64 {
        self.up_since_ms.load(Relaxed)
    }

    pub(super) fn set_up_since(&self, now_ms: u64) {
        self.up_since_ms.store(now_ms, Relaxed);
    }

    /// Consecutive failures recorded by outlier detection.
    pub fn failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// How many times outlier detection has ejected it (reset after a
    /// quiet period; see [`outlier`](super::outlier)).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    /// The end of its current or last ejection (0 if never ejected).
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Relaxed)
    }

    /// Whether a new connection may go to it at `now_ms`: up (or its
    /// ejection has run out), not draining or down, and under both circuit
    /// limits.
    #[inline]
    pub fn eligible(&self, now_ms: u64) -> bool {
        let up = match self.state() {
            ServerState::Up => true,
            ServerState::Ejected => self.ejected_until_ms.load(Relaxed) <= now_ms,
            ServerState::Down | ServerState::Draining => false,
        };
        up && under(&self.active, self.max_connections) && under(&self.pending, self.max_pending)
    }

    /// The weight to balance with at `now_ms`, in units of
    /// `1 / WEIGHT_SCALE`: `weight × WEIGHT_SCALE` once the server has been
    /// up for `slow_start_ms`, before that a linear ramp from a floor of a
    /// tenth of it (at least 1). The ramp starts when the server came up or
    /// when its last ejection ended, whichever is later. `slow_start_ms` 0
    /// turns slow start off. Never 0.
    #[inline]
    pub fn effective_weight(&self, now_ms: u64, slow_start_ms: u64) -> u32 {
        let full = self.weight * WEIGHT_SCALE;
        if slow_start_ms == 0 {
            return full;
        }
        let mut since = self.up_since_ms.load(Relaxed);
        let until = self.ejected_until_ms.load(Relaxed);
        if until <= now_ms {
            since = since.max(until);
        }
        let elapsed = now_ms.saturating_sub(since);
        if elapsed >= slow_start_ms {
            return full;
        }
        let floor = (full / 10).max(1);
        // elapsed < slow_start_ms, so the ramp stays below full - floor.
        let ramp = u64::from(full - floor) * elapsed / slow_start_ms;
        floor + ramp as u32
    }

    /// Counts one more open connection. Not RAII: the caller pairs every
    /// `acquire` with exactly one [`release`](Self::release), whatever way
    /// the connection ends. Call it right after the pick, before the
    /// connect, so that other workers see the load at once.
    #[inline]
    pub fn acquire(&self) {
        self.active.fetch_add(1, Relaxed);
    }

    /// Counts one connection closed. Never goes below 0 (an unpaired
    /// release is a caller bug, absorbed rather than wrapped).
    #[inline]
    pub fn release(&self) {
        decrement(&self.active);
    }

    /// Counts one handshake in flight; pair with
    /// [`end_handshake`](Self::end_handshake), like `acquire`.
    #[inline]
    pub fn begin_handshake(&self) {
        self.pending.fetch_add(1, Relaxed);
    }

    /// Counts one handshake finished, either way.
    #[inline]
    pub fn end_handshake(&self) {
        decrement(&self.pending);
    }
}

#[inline]
fn under(count: &AtomicU32, limit: u32) -> bool {
    limit == 0 || count.load(Relaxed) < limit
}

#[inline]
fn decrement(count: &AtomicU32) {
    let _ = count.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
}

/// The index of the server whose [`id`](ServerSlot::id) is `id` (a sticky
/// cookie's value), if it is still in the list.
pub fn find_by_id(servers: &[Arc<ServerSlot>], id: u64) -> Option<usize> {
    servers.iter().position(|s| s.id() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eligibility() {
        let s = ServerSlot::new("a:1", 1).with_limits(2, 1);
        assert!(s.eligible(0));
        s.acquire();
        s.acquire();
        assert!(!s.eligible(0), "at max_connections");
        s.release();
        assert!(s.eligible(0));
        s.begin_handshake();
        assert!(!s.eligible(0), "at max_pending");
        s.end_handshake();
        assert!(s.eligible(0));
        for (state, ok) in [
            (ServerState::Down, false),
            (ServerState::Draining, false),
            (ServerState::Up, true),
        ] {
            s.set_state(state);
            assert_eq!(s.eligible(0), ok, "{state:?}");
        }
        s.ejected_until_ms.store(100, Relaxed);
        s.set_state(ServerState::Ejected);
        assert!(!s.eligible(99));
        assert!(s.eligible(100), "ejection over");
    }

    #[test]
    fn release_never_wraps() {
        let s = ServerSlot::new("a:1", 1);
        s.release();
        s.end_handshake();
        assert_eq!((s.active(), s.pending()), (0, 0));
    }

    #[test]
    fn weight_clamped() {
        assert_eq!(ServerSlot::new("a", 0).weight(), 1);
        assert_eq!(ServerSlot::new("a", 1000).weight(), MAX_WEIGHT);
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let s = ServerSlot::new("a:1", 10);
        let full = 10 * WEIGHT_SCALE;
        s.mark_up(1_000);
        assert_eq!(s.effective_weight(5_000, 0), full, "off");
        let floor = full / 10;
        assert_eq!(s.effective_weight(1_000, 10_000), floor);
        let mut last = 0;
        for t in (0..=10_000).step_by(1_000) {
            let w = s.effective_weight(1_000 + t, 10_000);
            let want = floor + (full - floor) * t as u32 / 10_000;
            assert_eq!(w, want, "at {t}");
            assert!(w > last);
            last = w;
        }
        assert_eq!(s.effective_weight(11_000, 10_000), full);
        assert_eq!(s.effective_weight(u64::MAX, 10_000), full);
        // A clock before up_since (another worker's, slightly behind): floor.
        assert_eq!(s.effective_weight(0, 10_000), floor);
        // A weight-1 server still ramps, in 1/WEIGHT_SCALE steps.
        let one = ServerSlot::new("b:1", 1);
        one.mark_up(0);
        assert!(one.effective_weight(1, 100) < one.effective_weight(50, 100));
        assert!(one.effective_weight(0, 100) >= 1);
    }

    #[test]
    fn ramp_restarts_after_ejection() {
        let s = ServerSlot::new("a:1", 1);
        s.ejected_until_ms.store(50_000, Relaxed);
        s.set_state(ServerState::Ejected);
        assert_eq!(s.effective_weight(50_000, 10_000), WEIGHT_SCALE / 10);
        assert_eq!(s.effective_weight(60_000, 10_000), WEIGHT_SCALE);
    }

    #[test]
    fn ids_are_stable_and_findable() {
        let servers: Vec<Arc<ServerSlot>> = ["a:1", "b:1", "c:1"]
            .iter()
            .map(|a| Arc::new(ServerSlot::new(a, 1)))
            .collect();
        assert_eq!(servers[1].id(), ServerSlot::new("b:1", 7).id());
        assert_eq!(find_by_id(&servers, servers[2].id()), Some(2));
        assert_eq!(find_by_id(&servers, 42), None);
    }
}
