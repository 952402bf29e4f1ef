//! What a run counts: messages, bytes, latency histograms and errors by
//! kind; merged across workers at the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Error kinds, as they appear in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrKind {
    /// TCP connect failed or timed out.
    Connect,
    /// The TLS handshake failed (why, in short).
    Tls(&'static str),
    /// The upgrade was answered with another status.
    HandshakeStatus(u16),
    /// 101, but the response was not a valid upgrade.
    HandshakeInvalid(&'static str),
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The server closed with this code (1005: no code; 1006: no close frame).
    Close(u16),
    /// A message was not answered in time.
    Timeout,
    /// The close handshake did not finish in time after the run.
    CloseTimeout,
    /// An echoed message differs from what was sent.
    Corrupt,
    /// An intact message came back out of turn.
    OutOfOrder,
    /// A message arrived that was not sent (or after all were answered).
    Unexpected,
    /// The server broke the framing rules (what rule).
    Protocol(&'static str),
    /// A socket error.
    Io,
    /// More than the allowed messages were waiting for an answer (open loop).
    Backlog,
}

impl ErrKind {
    pub fn label(&self) -> String {
        match self {
            Self::Connect => "connect".into(),
            Self::Tls(why) => format!("tls handshake ({why})"),
            Self::HandshakeStatus(s) => format!("handshake status {s}"),
            Self::HandshakeInvalid(what) => format!("handshake invalid ({what})"),
            Self::HandshakeTimeout => "handshake timeout".into(),
            Self::Close(c) => format!("close code {c}"),
            Self::Timeout => "timeout".into(),
            Self::CloseTimeout => "close timeout".into(),
            Self::Corrupt => "corrupt message".into(),
            Self::OutOfOrder => "out of order".into(),
            Self::Unexpected => "unexpected message".into(),
            Self::Protocol(what) => format!("protocol ({what})"),
            Self::Io => "socket error".into(),
            Self::Backlog => "generator backlog".into(),
        }
    }
}

/// Live counters one worker publishes for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub open: AtomicU64,
}

impl Progress {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn sum(all: &[Arc<Progress>], f: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        all.iter().map(|p| f(p).load(Ordering::Relaxed)).sum()
    }
}

/// Latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One worker's tally.
#[derive(Debug)]
pub struct Tally {
    /// Round trips (or handshakes) completed inside the measured window.
    pub done: u64,
    /// Payload bytes received inside the window.
    pub bytes: u64,
    /// Messages sent (all, window or not).
    pub sent: u64,
    /// Successful handshakes (all).
    pub handshakes: u64,
    /// `wss://`: TLS handshakes that resumed a session, and full ones
    /// (counted where `done` is).
    pub tls_resumed: u64,
    pub tls_full: u64,
    /// `wss://`: the negotiated version and cipher suite (of one connection).
    pub tls_session: Option<String>,
    pub latency: Histogram<u64>,
    /// Open loop only: latency from the actual send instead of the intended.
    pub latency_raw: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            done: 0,
            bytes: 0,
            sent: 0,
            handshakes: 0,
            tls_resumed: 0,
            tls_full: 0,
            tls_session: None,
            latency: new_histogram(),
            latency_raw: new_histogram(),
            errors: BTreeMap::new(),
        }
    }
}

impl Tally {
    pub fn error(&mut self, kind: &ErrKind) {
        *self.errors.entry(kind.label()).or_default() += 1;
    }

    /// Counts a `wss://` connection's handshake as resumed or full.
    pub fn note_tls(&mut self, s: &crate::stream::Stream) {
        match s.tls_resumed() {
            None => {}
            Some(true) => self.tls_resumed += 1,
            Some(false) => self.tls_full += 1,
        }
        if self.tls_session.is_none() {
            self.tls_session = s.tls_session();
        }
    }

    pub fn record(hist: &mut Histogram<u64>, d: Duration) {
        hist.saturating_record(d.as_nanos().max(1) as u64);
    }

    pub fn merge(mut parts: Vec<Tally>) -> Tally {
        let mut total = parts.pop().unwrap_or_default();
        for p in parts {
            total.done += p.done;
            total.bytes += p.bytes;
            total.sent += p.sent;
            total.handshakes += p.handshakes;
            total.tls_resumed += p.tls_resumed;
            total.tls_full += p.tls_full;
            if total.tls_session.is_none() {
                total.tls_session = p.tls_session;
            }
            // Same bounds everywhere: adding cannot fail.
            let _ = total.latency.add(&p.latency);
            let _ = total.latency_raw.add(&p.latency_raw);
            for (k, v) in p.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
        total
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// The percentile curve `(percentile, µs)` for plotting, up to the maximum.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    // 0 to 99.999 % in steps that are even on a log(1/(1-p)) axis.
    let mut nines = 0.0f64;
    while nines <= 5.0 {
        let q = 1.0 - 10f64.powf(-nines);
        out.push((q * 100.0, us(h.value_at_quantile(q))));
        nines += 0.05;
    }
    out.push((100.0, us(h.max())));
    out
}
