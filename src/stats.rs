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
    /// WebSocket-level counters and histograms.
    pub ws: WsStats,
    /// Handshakes answered with an HTTP error, by status ([`STATUSES`]).
    pub refused_status: [Counter; STATUSES.len() + 1],
}

/// The statuses counted one by one in [`Stats::refused_status`]; the last
/// slot holds the others.
pub const STATUSES: [u16; 13] = [
    400, 401, 403, 404, 405, 408, 426, 429, 431, 500, 502, 503, 504,
];

impl Stats {
    /// Counts a handshake answered with `status`.
    pub fn refused_with(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len());
        self.refused_status[i].inc();
    }
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

/// Upper bounds (seconds) of the histogram buckets (+Inf implied).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram written by one worker: cumulative buckets are
/// computed by the reader.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (the last: above every bound).
    pub buckets: [Counter; BUCKETS.len() + 1],
    /// Sum of the observations, µs.
    pub sum_us: Counter,
}

impl Histogram {
    /// Records one observation. Only the owning worker may call this.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].inc();
        self.sum_us
            .add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

/// The close codes counted one by one; others fall in `4xxx` or `other`.
pub const CLOSE_CODES: [u16; 14] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
];

/// The label of a close code's bucket.
pub fn close_code_label(i: usize) -> &'static str {
    const LABELS: [&str; CLOSE_CODES.len() + 2] = [
        "1000", "1001", "1002", "1003", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
        "1012", "1013", "1014", "4xxx", "other",
    ];
    LABELS[i.min(LABELS.len() - 1)]
}

/// The bucket of a close code.
pub fn close_code_bucket(code: u16) -> usize {
    match CLOSE_CODES.iter().position(|&c| c == code) {
        Some(i) => i,
        None if (4000..=4999).contains(&code) => CLOSE_CODES.len(),
        None => CLOSE_CODES.len() + 1,
    }
}

/// Frames by opcode, in [`crate::relay::walk::FrameCounts`] order.
pub const OPCODES: [&str; 6] = ["continuation", "text", "binary", "close", "ping", "pong"];

/// What one route's connections did (counted when each ends).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Handshakes that got a 101.
    pub upgraded: Counter,
    /// Relayed connections that ended.
    pub ended: Counter,
    /// Data messages, by the leg that sent them (0: client, 1: backend).
    pub messages: [Counter; 2],
    /// Frames by sending leg and opcode ([`OPCODES`]).
    pub frames: [[Counter; 6]; 2],
    /// Bytes by sending leg.
    pub bytes: [Counter; 2],
}

/// The WebSocket-level counters of a worker. Those by route and by
/// upstream are in the configuration's generation
/// ([`crate::generation::Generation::routes`]), which a reload replaces.
#[derive(Debug, Default)]
pub struct WsStats {
    /// Close frames that began a close handshake, by who began it (0:
    /// client, 1: backend) and code bucket ([`close_code_bucket`]).
    pub closes: [[Counter; CLOSE_CODES.len() + 2]; 2],
    /// Connections ended by a protocol error, by leg at fault and kind
    /// ([`crate::proto::error::ProtocolError::index`]).
    pub protocol_errors: [[Counter; crate::proto::error::ProtocolError::KINDS]; 2],
    /// Connections ended, by [`crate::relay::Ending::label`] index.
    pub endings: [Counter; crate::relay::Ending::LABELS.len()],
    /// Client request head complete → 101 written.
    pub handshake_seconds: Histogram,
    /// Backend TCP connect (and TLS, when the upstream has it).
    pub connect_seconds: Histogram,
    /// The last keepalive ping round trip of each ended connection, by
    /// leg (0: client, 1: backend); only legs that were pinged.
    pub ping_rtt_seconds: [Histogram; 2],
    /// Client TLS handshakes by version (0: 1.2, 1: 1.3).
    pub tls_versions: [Counter; 2],
    /// Data messages by sending leg (0: client, 1: backend) and size
    /// bucket ([`crate::relay::walk::MessageSizes`]), counted as they pass.
    pub message_sizes: [SizeHistogram; 2],
}

/// Data messages by size, as [`crate::relay::walk::MessageSizes`] counts
/// them.
#[derive(Debug, Default)]
pub struct SizeHistogram {
    /// By bucket (not cumulative).
    pub counts: [Counter; crate::relay::walk::MessageSizes::BUCKETS],
    /// Their bytes.
    pub bytes: Counter,
}

impl SizeHistogram {
    /// Adds one read's messages.
    pub fn record(&self, sizes: &crate::relay::walk::MessageSizes) {
        for (c, &n) in self.counts.iter().zip(&sizes.counts) {
            if n > 0 {
                c.add(u64::from(n));
            }
        }
        self.bytes.add(sizes.bytes);
    }
}
