//! Retries of a failed backend handshake: how many the proxy may afford
//! ([`RetryBudget`]) and how long to wait before each ([`backoff_ms`]).
//!
//! A budget rather than a per-request count: when a backend fleet is
//! failing, "retry each request up to 3 times" multiplies the load on it by
//! four at the worst moment, while a budget of a fifth of recent handshakes
//! adds at most a fifth (the idea of Finagle's `RetryBudget` and gRPC's
//! retry throttling).

use rand_core::RngCore;

/// Seconds in the sliding window.
pub const WINDOW_SECS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// The second (`now_ms / 1000`) this bucket counts; older ones are stale.
    second: u64,
    handshakes: u32,
    retries: u32,
}

/// Retries allowed over a sliding 10-second window: up to `ratio` of the
/// handshakes started in it, and at least `min_retries` whatever the
/// traffic, so that one failure on a quiet proxy can still be retried.
///
/// Per worker (`&mut self`, no atomics): each worker holds its own budget,
/// so the ratio holds per worker and over the whole proxy alike, and the
/// floor is `min_retries` per worker (a proxy of N workers may spend up to
/// N × `min_retries` retries per window beyond the ratio). The window is ten
/// one-second buckets; a bucket older than the window counts nothing, so
/// the window slides in one-second steps. Retries are not handshakes: only
/// first attempts feed the budget.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    buckets: [Bucket; WINDOW_SECS],
    /// Retries per handshake, in thousandths.
    ratio_milli: u64,
    min_retries: u32,
}

impl RetryBudget {
    /// A budget of `ratio` (clamped to 0.0..=10.0) of the handshakes, and at
    /// least `min_retries` per window.
    pub fn new(ratio: f64, min_retries: u32) -> RetryBudget {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 10.0)
        };
        RetryBudget {
            buckets: [Bucket::default(); WINDOW_SECS],
            ratio_milli: (ratio * 1000.0).round() as u64,
            min_retries,
        }
    }

    /// The bucket for `now_ms`, emptied if it held an older second.
    fn bucket(&mut self, now_ms: u64) -> &mut Bucket {
        let second = now_ms / 1000;
        let b = &mut self.buckets[(second % WINDOW_SECS as u64) as usize];
        if b.second != second {
            *b = Bucket {
                second,
                ..Bucket::default()
            };
        }
        b
    }

    /// Handshakes and retries in the window ending at `now_ms`.
    pub fn window(&self, now_ms: u64) -> (u64, u64) {
        let second = now_ms / 1000;
        self.buckets
            .iter()
            .filter(|b| b.second <= second && second - b.second < WINDOW_SECS as u64)
            .fold((0, 0), |(h, r), b| {
                (h + u64::from(b.handshakes), r + u64::from(b.retries))
            })
    }

    /// Counts a first attempt at a backend handshake.
    pub fn record_handshake(&mut self, now_ms: u64) {
        let b = self.bucket(now_ms);
        b.handshakes = b.handshakes.saturating_add(1);
    }

    /// Whether a retry may go out now; if so, it is counted.
    pub fn try_acquire_retry(&mut self, now_ms: u64) -> bool {
        let (handshakes, retries) = self.window(now_ms);
        let allowed = (handshakes * self.ratio_milli / 1000).max(u64::from(self.min_retries));
        if retries >= allowed {
            return false;
        }
        let b = self.bucket(now_ms);
        b.retries = b.retries.saturating_add(1);
        true
    }
}

/// The wait before retry number `attempt` (from 0), with full jitter: a
/// uniform value in `0..=min(cap_ms, base_ms × 2^attempt)`.
pub fn backoff_ms(attempt: u32, base_ms: u64, cap_ms: u64, rng: &mut impl RngCore) -> u64 {
    let ceiling = base_ms
        .saturating_mul(1u64.checked_shl(attempt).unwrap_or(u64::MAX))
        .min(cap_ms);
    ((u128::from(rng.next_u64()) * (u128::from(ceiling) + 1)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_quiet_proxy_can_still_retry() {
        let mut b = RetryBudget::new(0.2, 3);
        b.record_handshake(0);
        assert!(b.try_acquire_retry(0));
        assert!(b.try_acquire_retry(0));
        assert!(b.try_acquire_retry(0));
        assert!(!b.try_acquire_retry(0), "floor spent");
        // Ten seconds on, the window has forgotten them.
        assert!(b.try_acquire_retry(10_000));
    }

    #[test]
    fn retries_stop_when_every_handshake_fails() {
        // 100 handshakes a second for a minute, every one fails, and every
        // failure asks for retries until refused.
        let mut b = RetryBudget::new(0.2, 3);
        let mut handshakes = 0u64;
        let mut retries = 0u64;
        let mut per_window = [0u64; 6];
        for ms in (0..60_000u64).step_by(10) {
            b.record_handshake(ms);
            handshakes += 1;
            while b.try_acquire_retry(ms) {
                retries += 1;
                per_window[(ms / 10_000) as usize] += 1;
            }
        }
        // Each full window: 20 % of its 1,000 handshakes.
        for (w, &r) in per_window.iter().enumerate() {
            assert!(r <= 200 + 3, "window {w}: {r} retries");
        }
        assert!(retries <= handshakes / 5 + 3, "{retries} of {handshakes}");
        assert!(
            retries >= handshakes / 5 - 50,
            "the budget is used: {retries}"
        );
        // And no more right now.
        assert!(!b.try_acquire_retry(59_990));
    }

    #[test]
    fn the_window_slides() {
        let mut b = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            b.record_handshake(0);
        }
        assert_eq!(b.window(9_999), (10, 0));
        assert_eq!(b.window(10_000), (0, 0));
        for _ in 0..5 {
            assert!(b.try_acquire_retry(9_000));
        }
        assert!(!b.try_acquire_retry(9_000));
        assert!(!b.try_acquire_retry(10_000), "handshakes gone, floor 0");
    }

    #[test]
    fn zero_ratio_and_floor_means_no_retries() {
        let mut b = RetryBudget::new(f64::NAN, 0);
        b.record_handshake(0);
        assert!(!b.try_acquire_retry(0));
    }

    proptest! {
        #[test]
        fn backoff_within_bounds(
            attempt in 0u32..200,
            base in 0u64..100_000,
            cap in 0u64..10_000_000,
            seed: u64,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let ceiling = if attempt >= 64 {
                if base == 0 { 0 } else { cap }
            } else {
                base.saturating_mul(1 << attempt).min(cap)
            };
            for _ in 0..8 {
                let d = backoff_ms(attempt, base, cap, &mut rng);
                prop_assert!(d <= ceiling, "{d} > {ceiling}");
            }
        }

        #[test]
        fn budget_never_exceeds_ratio_plus_floor(
            events in proptest::collection::vec((0u64..2_000, any::<bool>()), 0..500),
        ) {
            let mut b = RetryBudget::new(0.25, 2);
            let mut now = 0;
            for (dt, handshake) in events {
                now += dt;
                if handshake {
                    b.record_handshake(now);
                } else if b.try_acquire_retry(now) {
                    // Right after a granted retry, the window is within
                    // budget (later, handshakes may age out first).
                    let (h, r) = b.window(now);
                    prop_assert!(r <= (h / 4).max(2), "{r} retries, {h} handshakes");
                }
            }
        }
    }

    #[test]
    fn backoff_uses_the_full_range() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let draws: Vec<u64> = (0..1_000)
            .map(|_| backoff_ms(3, 100, 10_000, &mut rng))
            .collect();
        assert!(draws.iter().all(|&d| d <= 800));
        assert!(draws.iter().any(|&d| d < 80) && draws.iter().any(|&d| d > 720));
        // Extremes do not overflow.
        backoff_ms(u32::MAX, u64::MAX, u64::MAX, &mut rng);
        assert_eq!(backoff_ms(u32::MAX, 5, 0, &mut rng), 0);
    }
}
