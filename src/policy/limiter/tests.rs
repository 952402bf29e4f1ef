use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Barrier;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// 10 per second, burst 3: one every 100 ms.
fn ten_per_second() -> KeyLimits {
    KeyLimits {
        max_concurrent: None,
        rate: Some(Rate::new(10, Duration::from_secs(1), 3)),
    }
}

fn cap(n: u32) -> KeyLimits {
    KeyLimits {
        max_concurrent: Some(n),
        rate: None,
    }
}

/// A distinct IPv6 key per `i`.
fn v6(i: u64) -> u128 {
    ip_key(IpAddr::V6(Ipv6Addr::from(
        (0x2001_0db8u128 << 96) | u128::from(i),
    )))
}

#[test]
fn rate_new() {
    let r = Rate::new(10, Duration::from_secs(1), 3);
    assert_eq!(
        r,
        Rate {
            interval_us: 100_000,
            burst: 3
        }
    );
    let r = Rate::new(0, Duration::ZERO, 0);
    assert_eq!(
        r,
        Rate {
            interval_us: 1,
            burst: 1
        }
    );
    let r = Rate::new(1, Duration::MAX, 1);
    assert_eq!(r.interval_us, u64::MAX);
}

#[test]
fn burst_then_rate_with_exact_retry_after() {
    let t = KeyedLimiter::new(100);
    let l = ten_per_second();
    let k = v6(1);
    for _ in 0..3 {
        t.acquire(k, &l, 1000).unwrap();
    }
    // The fourth at once: room again in one interval.
    assert_eq!(
        t.acquire(k, &l, 1000).unwrap_err(),
        Over::Rate {
            retry_after_ms: 100
        }
    );
    assert_eq!(
        t.acquire(k, &l, 1099).unwrap_err(),
        Over::Rate { retry_after_ms: 1 }
    );
    t.acquire(k, &l, 1100).unwrap();
    // Then one per 100 ms, no more.
    for i in 2..50 {
        let now = 1000 + i * 100;
        t.acquire(k, &l, now).unwrap();
        assert_eq!(
            t.acquire(k, &l, now + 30).unwrap_err(),
            Over::Rate { retry_after_ms: 70 }
        );
    }
    // Idle long enough, the whole burst again.
    for _ in 0..3 {
        t.acquire(k, &l, 60_000).unwrap();
    }
    assert!(t.acquire(k, &l, 60_000).is_err());
    t.check();
}

#[test]
fn retry_after_rounds_up_an_uneven_interval() {
    // 3 per second: 333,333 µs.
    let t = KeyedLimiter::new(100);
    let l = KeyLimits {
        max_concurrent: None,
        rate: Some(Rate::new(3, Duration::from_secs(1), 1)),
    };
    t.acquire(7, &l, 0).unwrap();
    let over = t.acquire(7, &l, 0).unwrap_err();
    assert_eq!(
        over,
        Over::Rate {
            retry_after_ms: 334
        }
    );
    assert_eq!(over.retry_after_secs(), Some(1));
    assert_eq!(
        t.acquire(7, &l, 333).unwrap_err(),
        Over::Rate { retry_after_ms: 1 }
    );
    t.acquire(7, &l, 334).unwrap();
}

#[test]
fn a_refused_attempt_does_not_advance() {
    let t = KeyedLimiter::new(100);
    let l = ten_per_second();
    for _ in 0..3 {
        t.acquire(9, &l, 0).unwrap();
    }
    for now in 0..100 {
        for _ in 0..10 {
            assert!(matches!(t.acquire(9, &l, now), Err(Over::Rate { .. })));
        }
    }
    // Hammering changed nothing: the next one fits on time.
    t.acquire(9, &l, 100).unwrap();
    // Nor does a refusal by the cap use up the rate.
    let both = KeyLimits {
        max_concurrent: Some(1),
        rate: Some(Rate::new(10, Duration::from_secs(1), 3)),
    };
    let held = t.acquire(10, &both, 0).unwrap();
    for _ in 0..10 {
        assert_eq!(t.acquire(10, &both, 0).unwrap_err(), Over::Connections);
    }
    drop(held);
    t.acquire(10, &both, 0).unwrap();
}

#[test]
fn concurrency_cap_is_exact_and_released_by_drop() {
    let t = KeyedLimiter::new(100);
    let k = ip_key(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut held: Vec<Permit> = (0..5).map(|_| t.acquire(k, &cap(5), 0).unwrap()).collect();
    assert_eq!(t.active(k), 5);
    assert_eq!(t.acquire(k, &cap(5), 0).unwrap_err(), Over::Connections);
    held.pop();
    assert_eq!(t.active(k), 4);
    held.push(t.acquire(k, &cap(5), 0).unwrap());
    assert_eq!(t.acquire(k, &cap(5), 0).unwrap_err(), Over::Connections);
    // Dropped on another thread.
    std::thread::spawn(move || drop(held)).join().unwrap();
    assert_eq!(t.active(k), 0);
    // No rate: nothing left behind.
    assert_eq!(t.tracked(), 0);
    assert_eq!(t.acquire(k, &cap(0), 0).unwrap_err(), Over::Connections);
}

#[test]
fn cap_is_exact_across_threads() {
    const THREADS: usize = 4;
    const CAP: u32 = 3;
    let t = KeyedLimiter::new(100);
    let key = v6(42);
    let limits = cap(CAP);

    // Hammer: whoever holds a permit counts itself before and after, so
    // `holding` never exceeds what the table admitted.
    let holding = AtomicU32::new(0);
    let admitted = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..5_000 {
                    if let Ok(p) = t.acquire(key, &limits, 0) {
                        let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now <= CAP, "{now} held at once");
                        admitted.fetch_add(1, Ordering::Relaxed);
                        holding.fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                }
            });
        }
    });
    assert!(admitted.load(Ordering::Relaxed) > 0);
    assert_eq!(t.active(key), 0);

    // Rounds: every thread grabs what it can and holds it; together they
    // got exactly CAP.
    let barrier = Barrier::new(THREADS);
    let got = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for round in 0..200 {
                    let held: Vec<Permit> = (0..2)
                        .filter_map(|_| t.acquire(key, &limits, 0).ok())
                        .collect();
                    got.fetch_add(held.len() as u32, Ordering::SeqCst);
                    barrier.wait();
                    assert_eq!(got.load(Ordering::SeqCst), CAP, "round {round}");
                    assert_eq!(t.active(key), CAP);
                    barrier.wait();
                    drop(held);
                    if barrier.wait().is_leader() {
                        got.store(0, Ordering::SeqCst);
                    }
                    barrier.wait();
                }
            });
        }
    });
    assert_eq!(t.active(key), 0);
    t.check();
}

#[test]
fn ip_keys() {
    let v4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
    assert_eq!(ip_key(v4), ip_key(mapped));
    assert_eq!(ip_key(v4), 0xffff_c633_6407);
    let v6: Ipv6Addr = "2001:db8::c633:6407".parse().unwrap();
    assert_eq!(ip_key(IpAddr::V6(v6)), u128::from(v6));
    assert_ne!(ip_key(IpAddr::V6(v6)), ip_key(v4));
    // IPv4-compatible (deprecated) is not mapped: a different key.
    let compat = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_compatible());
    assert_ne!(ip_key(compat), ip_key(v4));

    let t = KeyedLimiter::new(100);
    let _p = t.acquire(ip_key(v4), &cap(1), 0).unwrap();
    assert_eq!(
        t.acquire(ip_key(mapped), &cap(1), 0).unwrap_err(),
        Over::Connections
    );
}

#[test]
fn identity_keys() {
    let a = identity_key("alice");
    assert_eq!(a, identity_key("alice"));
    assert_ne!(a, identity_key("bob"));
    assert_ne!(a, identity_key("alice "));
    assert_ne!(identity_key(""), 0);
    for id in ["", "alice", "bob", "0.0.0.0", "::"] {
        // In 0100::/8, no client's address.
        assert_eq!(identity_key(id) >> 120, 1, "{id}");
    }
}

#[test]
fn no_limits_track_nothing() {
    let t = KeyedLimiter::new(16);
    let permits: Vec<Permit> = (0..100)
        .map(|k| t.acquire(k, &KeyLimits::default(), 0).unwrap())
        .collect();
    assert_eq!(t.tracked(), 0);
    assert_eq!(t.active(3), 0);
    drop(permits);
    assert_eq!(t.tracked(), 0);
}

/// 100,000 keys through a table of 10,000, one at a time.
fn spray(limits: KeyLimits, step_ms: u64) {
    let t = KeyedLimiter::new(10_000);
    assert!(t.capacity() >= 10_000 && t.capacity() < 10_000 + 64);
    let mut now = 5_000;
    for i in 0..100_000 {
        let p = t
            .acquire(v6(i), &limits, now)
            .unwrap_or_else(|e| panic!("key {i}: {e:?}"));
        drop(p);
        now += step_ms;
        if i % 1000 == 0 {
            assert!(t.tracked() <= t.capacity());
        }
    }
    assert!(t.tracked() <= t.capacity());
    t.check();
}

#[test]
fn spray_of_distinct_keys_stays_bounded() {
    let one_per_minute = KeyLimits {
        max_concurrent: Some(4),
        rate: Some(Rate::new(1, Duration::from_secs(60), 1)),
    };
    // Buckets that never drain: every new key evicts an idle one.
    spray(one_per_minute, 0);
    spray(one_per_minute, 1);
    // Buckets that drain in 1 ms: old keys go as drained ones.
    let fast = KeyLimits {
        max_concurrent: None,
        rate: Some(Rate::new(1, Duration::from_millis(1), 1)),
    };
    spray(fast, 0);
    spray(fast, 1);
    spray(cap(1), 0);
}

#[test]
fn full_of_active_keys_answers_full_and_recovers() {
    let t = KeyedLimiter::new(16);
    assert_eq!(t.capacity(), 16);
    let l = KeyLimits {
        max_concurrent: Some(2),
        rate: Some(Rate::new(1, Duration::from_secs(60), 2)),
    };
    let mut held: Vec<Permit> = (0..16).map(|k| t.acquire(k, &l, 0).unwrap()).collect();
    assert_eq!(t.acquire(100, &l, 0).unwrap_err(), Over::Full);
    assert_eq!(Over::Full.status(), 503);
    // A key already there still gets its second connection.
    held.push(t.acquire(3, &l, 0).unwrap());
    assert_eq!(t.acquire(100, &l, 1).unwrap_err(), Over::Full);
    // One key goes idle: the newcomer takes its place.
    held.remove(5);
    assert!(t.contains(5));
    held.push(t.acquire(100, &l, 2).unwrap());
    assert!(!t.contains(5));
    assert_eq!(t.acquire(101, &l, 2).unwrap_err(), Over::Full);
    drop(held);
    assert_eq!(t.tracked(), 16);
    assert_eq!(t.active(3), 0);
    t.check();

    // Many shards: fill until some shard is full, then let go.
    let t = KeyedLimiter::new(10_000);
    let mut held = Vec::new();
    let mut k = 0;
    let full = loop {
        match t.acquire(v6(k), &l, 0) {
            Ok(p) => held.push(p),
            Err(e) => break e,
        }
        k += 1;
    };
    assert_eq!(full, Over::Full);
    assert!(held.len() <= t.capacity());
    drop(held);
    for k in 0..100_000 {
        drop(t.acquire(v6(1 << 40 | k), &l, 10).unwrap());
    }
    t.check();
}

#[test]
fn eviction_prefers_drained_then_oldest() {
    let t = KeyedLimiter::new(16);
    let slow = KeyLimits {
        max_concurrent: None,
        rate: Some(Rate::new(1, Duration::from_secs(1), 1)),
    };
    let quick = KeyLimits {
        max_concurrent: None,
        rate: Some(Rate::new(1, Duration::from_millis(1), 1)),
    };
    // Key k at k ms: its bucket drains at k ms + 1 s; key 7's at 8 ms.
    for k in 0..16u64 {
        let l = if k == 7 { quick } else { slow };
        drop(t.acquire(u128::from(k), &l, k).unwrap());
    }
    assert_eq!(t.tracked(), 16);
    // At 20 ms key 7 has drained: it goes, losing nothing.
    drop(t.acquire(100, &slow, 20).unwrap());
    assert!(!t.contains(7));
    assert!(t.contains(0));
    // Then the oldest: key 0, which is forgiven its burst.
    drop(t.acquire(101, &slow, 21).unwrap());
    assert!(!t.contains(0));
    drop(t.acquire(0, &slow, 22).unwrap());
    // Key 2 (not yet evicted: key 0's return took key 1) keeps its state.
    assert!(!t.contains(1));
    assert!(matches!(t.acquire(2, &slow, 23), Err(Over::Rate { .. })));
    t.check();
}

#[test]
fn bytes_per_key_is_at_most_64() {
    for capacity in (0..2000).chain([10_000, 65_537, 100_000, 1_000_000]) {
        let t = KeyedLimiter::new(capacity);
        let b = t.bytes_per_key();
        assert!(b <= 53, "{capacity}: {b} bytes per key");
        assert!(t.capacity() >= capacity.max(MIN_CAPACITY));
    }
    assert_eq!(KeyedLimiter::new(10_000).bytes_per_key(), 44);
    assert_eq!(size_of::<Padded>(), 128);
}

#[test]
fn permit_is_small_and_send() {
    fn send<T: Send>() {}
    send::<Permit>();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<KeyedLimiter>();
    assert!(size_of::<Permit>() <= 32);
}

#[test]
fn statuses() {
    assert_eq!(Over::Connections.status(), 429);
    let r = Over::Rate { retry_after_ms: 1 };
    assert_eq!((r.status(), r.retry_after_secs()), (429, Some(1)));
    let r = Over::Rate {
        retry_after_ms: 1001,
    };
    assert_eq!(r.retry_after_secs(), Some(2));
    assert_eq!(Over::Full.retry_after_secs(), None);
}

#[derive(Debug, Clone)]
enum Op {
    Acquire { key: u8, limits: u8, dt_ms: u16 },
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..48u8, 0..4u8, 0..300u16).prop_map(|(key, limits, dt_ms)| Op::Acquire { key, limits, dt_ms }),
        2 => any::<usize>().prop_map(Op::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Random acquires and drops on a 16-key table of 48 keys: it stays
    /// consistent, counts exactly what is held, and answers Full only when
    /// 16 keys are held.
    #[test]
    fn table_matches_the_permits_held(ops in proptest::collection::vec(op(), 1..400)) {
        let t = KeyedLimiter::new(16);
        let kinds = [
            cap(2),
            ten_per_second(),
            KeyLimits { max_concurrent: Some(3), rate: Some(Rate::new(1, Duration::from_millis(50), 2)) },
            KeyLimits { max_concurrent: None, rate: Some(Rate::new(1, Duration::from_secs(2), 1)) },
        ];
        let mut held: Vec<(u128, Permit)> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Acquire { key, limits, dt_ms } => {
                    now += u64::from(dt_ms);
                    let key = u128::from(key);
                    let l = kinds[usize::from(limits)];
                    let before = held.iter().filter(|(k, _)| *k == key).count() as u32;
                    match t.acquire(key, &l, now) {
                        Ok(p) => held.push((key, p)),
                        Err(Over::Connections) => prop_assert!(l.max_concurrent.is_some_and(|m| before >= m)),
                        Err(Over::Rate { retry_after_ms }) => prop_assert!(retry_after_ms >= 1),
                        Err(Over::Full) => {
                            let mut keys: Vec<u128> = held.iter().map(|(k, _)| *k).collect();
                            keys.sort_unstable();
                            keys.dedup();
                            prop_assert_eq!(keys.len(), 16);
                        }
                    }
                }
                Op::Drop(i) => {
                    if !held.is_empty() {
                        held.swap_remove(i % held.len());
                    }
                }
            }
            t.check();
            prop_assert!(t.tracked() <= 16);
            for key in 0..48u128 {
                let n = held.iter().filter(|(k, _)| *k == key).count() as u32;
                prop_assert_eq!(t.active(key), n);
            }
        }
    }
}
