//! Rate limiting, per message and per handshake:
//!
//! - `charge_64`: the relay's per-connection GCRA
//!   ([`wsedge::relay::limit::RateLimit::charge`]) for one 64-byte message
//!   under a message and a byte rate, clock advancing. Runs per message;
//!   the goal is under 20 ns.
//! - `keyed/one_key`: [`KeyedLimiter::acquire`] and the permit's drop for
//!   one key with a cap and a rate: what every handshake pays.
//! - `keyed/100k_keys_*`: the same over 100,000 distinct keys, in a table
//!   that holds them all (1M) and in one a tenth their number (10k), where
//!   every new key evicts an idle one (a drained one, or, at one
//!   handshake per minute, the oldest of 32 scanned).
//!
//! `cargo bench --bench limiter`. Each case prints a `TIME` line.

mod support;

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsedge::policy::limiter::{KeyLimits, KeyedLimiter, Rate, ip_key};
use wsedge::relay::limit::{Gcra, OnLimit, RateLimit};

fn charge(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_rate");
    g.throughput(Throughput::Elements(1));
    // 1M messages/s and 1M bytes/s (the finest byte rate a Gcra has: one
    // µs per byte), each with a second's burst; one 64-byte message every
    // 64 µs stays within both, so every charge takes the `Ok` path.
    let mut limit = RateLimit {
        messages: Some(Gcra::new(1_000_000, 1_000_000)),
        bytes: Some(Gcra::new(1_000_000, 1_000_000)),
        on_limit: OnLimit::Close,
    };
    let mut now = 0u64;
    let samples = support::run(&mut g, BenchmarkId::new("wsedge", "charge_64"), || {
        now += 64;
        limit.charge(black_box(now), 1, black_box(64))
    });
    support::report("relay_rate/charge_64", None, &samples);
    g.finish();
}

/// A handshake limit as configured per IP: 20 connections, 1,000
/// handshakes a second with a burst of 10.
fn limits() -> KeyLimits {
    KeyLimits {
        max_concurrent: Some(20),
        rate: Some(Rate::new(1000, Duration::from_secs(1), 10)),
    }
}

fn keyed(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyed");
    g.throughput(Throughput::Elements(1));
    let l = limits();

    // One key, one handshake per ms: always admitted.
    let table = KeyedLimiter::new(100_000);
    let key = ip_key(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    let mut now = 0u64;
    let samples = support::run(&mut g, BenchmarkId::new("wsedge", "one_key"), || {
        now += 1;
        let permit = table.acquire(black_box(key), &l, now);
        assert!(permit.is_ok());
        permit
    });
    support::report("keyed/one_key", None, &samples);

    // 100k keys in turn, the clock a ms further each time; each key's
    // bucket has not drained when it leaves, so it stays until evicted.
    let keys: Vec<u128> = (0..100_000u128)
        .map(|i| ip_key(IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | i))))
        .collect();
    // With 1 per minute instead, no bucket in the 10k table has drained and
    // each eviction scans its 32 slots for the oldest.
    let slow = KeyLimits {
        max_concurrent: Some(20),
        rate: Some(Rate::new(1, Duration::from_secs(60), 10)),
    };
    for (label, capacity, l) in [
        ("100k_keys_cap_1m", 1_000_000, l),
        ("100k_keys_cap_10k", 10_000, l),
        ("100k_keys_cap_10k_undrained", 10_000, slow),
    ] {
        let table = KeyedLimiter::new(capacity);
        let mut i = 0usize;
        let mut now = 0u64;
        let samples = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            i = if i + 1 == keys.len() { 0 } else { i + 1 };
            now += 1;
            let permit = table.acquire(black_box(keys[i]), &l, now);
            assert!(permit.is_ok());
            permit
        });
        support::report(&format!("keyed/{label}"), None, &samples);
        println!(
            "  {label}: {} keys tracked of {}, {} bytes per key",
            table.tracked(),
            table.capacity(),
            table.bytes_per_key()
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = charge, keyed
}
criterion_main!(benches);
