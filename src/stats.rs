//! Per-worker counters. Each worker writes only its own (a plain load and
//! store, no locked instruction on the data path); readers sum the workers'
//! values when they look.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::relay::Ending;

/// A counter written by one thread, read by any.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtracts `n` (gauges). Only the owning worker may call this.
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: Counter,
    /// Client connections open now (gauge).
    pub active: Counter,
    /// Handshakes completed (client got a 101).
    pub upgraded: Counter,
    /// Clients answered with an HTTP error.
    pub refused: Counter,
    /// Backend connects that failed on every server of the upstream.
    pub backend_failures: Counter,
    /// Relays ended by a close handshake.
    pub closed_normally: Counter,
    /// Relays ended by a protocol error (either side).
    pub protocol_errors: Counter,
    /// Relays ended by a side vanishing, a timeout or shutdown.
    pub closed_otherwise: Counter,
    /// Bytes read from clients while relaying.
    pub bytes_from_client: Counter,
    /// Bytes read from backends while relaying.
    pub bytes_from_backend: Counter,
    /// TLS handshakes completed with clients, full ones.
    pub tls_full: Counter,
    /// TLS handshakes completed with clients, resumed ones.
    pub tls_resumed: Counter,
    /// TLS handshakes with clients that failed (refused, garbage, timeout).
    pub tls_failed: Counter,
    /// Handshakes refused by the policy, by reason
    /// ([`crate::policy::refusal::Reason::index`]).
    pub refused_by: [Counter; crate::policy::refusal::Reason::ALL.len()],
    /// The worker thread's id (for its CPU time in `/proc`); 0 until it runs.
    pub tid: std::sync::atomic::AtomicU32,
}

impl Stats {
    /// Counts how a relay ended.
    pub fn record_ending(&self, e: &Ending) {
        match e {
            Ending::Closed { .. } | Ending::TunnelEnded => self.closed_normally.inc(),
            Ending::ProtocolError(..) => self.protocol_errors.inc(),
            _ => self.closed_otherwise.inc(),
        }
    }
}

/// The sum over workers of every counter, as `(name, value)` pairs.
pub fn sum(workers: &[std::sync::Arc<Stats>]) -> Vec<(&'static str, u64)> {
    type Pick = fn(&Stats) -> &Counter;
    let pick: [(&'static str, Pick); 13] = [
        ("accepted", |s| &s.accepted),
        ("active", |s| &s.active),
        ("upgraded", |s| &s.upgraded),
        ("refused", |s| &s.refused),
        ("backend_failures", |s| &s.backend_failures),
        ("closed_normally", |s| &s.closed_normally),
        ("protocol_errors", |s| &s.protocol_errors),
        ("closed_otherwise", |s| &s.closed_otherwise),
        ("bytes_from_client", |s| &s.bytes_from_client),
        ("bytes_from_backend", |s| &s.bytes_from_backend),
        ("tls_full", |s| &s.tls_full),
        ("tls_resumed", |s| &s.tls_resumed),
        ("tls_failed", |s| &s.tls_failed),
    ];
    let mut out: Vec<(&'static str, u64)> = pick
        .iter()
        .map(|(name, f)| (*name, workers.iter().map(|w| f(w).get()).sum()))
        .collect();
    // The policy's refusals by reason, under their labels.
    for reason in crate::policy::refusal::Reason::ALL {
        let n = workers
            .iter()
            .map(|w| w.refused_by[reason.index()].get())
            .sum();
        out.push((reason.label(), n));
    }
    out
}
