//! Per-connection policy hooks: a message and byte rate limiter per
//! direction (GCRA) and a deadline (a token's expiry). They live behind one
//! `Option<Box<_>>` in the core, so a connection without a policy pays one
//! pointer check per read and nothing per frame.

use crate::proto::close::CloseCode;

/// What happens when a direction goes over its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLimit {
    /// Close the leg at fault with 1008 "rate limit exceeded".
    Close,
    /// Stop reading the leg until the bucket has room again (TCP slows the
    /// sender down; nothing is dropped or buffered).
    Throttle,
}

/// A generic cell rate algorithm: `count` units per period with a burst of
/// `burst` units. Time comes in µs (the relay core's clock); inside it is
/// kept in ns × 2^32 (fixed point), so a byte rate of a GiB/s is as exact
/// as one message a minute, and a single byte counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Theoretical arrival time of the next unit (ns × 2^32).
    tat: u128,
    /// ns per unit, × 2^32.
    interval: u128,
    /// How far ahead of now `tat` may run: `burst × interval`.
    tolerance: u128,
}

/// Fixed-point shift of the times in [`Gcra`].
const FRAC: u32 = 32;

impl Gcra {
    /// `rate` units per second (at least 1), `burst` units at once (at least 1).
    pub fn new(rate: u64, burst: u64) -> Gcra {
        Gcra::per(rate, std::time::Duration::from_secs(1), burst)
    }

    /// `count` units per `per` (at most a day), `burst` units at once.
    pub fn per(count: u64, per: std::time::Duration, burst: u64) -> Gcra {
        let per_ns = per.as_nanos().min(86_400_000_000_000);
        let interval = ((per_ns << FRAC) / u128::from(count.max(1))).max(1);
        Gcra {
            tat: 0,
            interval,
            tolerance: interval * u128::from(burst.max(1)),
        }
    }

    /// Charges `n` units at `now` µs (they have already arrived). `Ok`:
    /// within the rate. `Err(at)`: over it; the bucket has room again at
    /// `at` µs.
    #[inline]
    pub fn charge(&mut self, now: u64, n: u64) -> Result<(), u64> {
        let now = (u128::from(now) * 1000) << FRAC;
        let tat = self.tat.max(now) + self.interval * u128::from(n);
        self.tat = tat;
        let ahead = tat - now;
        if ahead <= self.tolerance {
            Ok(())
        } else {
            let at_ns = (now + (ahead - self.tolerance)).div_ceil(1 << FRAC);
            Err(u64::try_from(at_ns.div_ceil(1000)).unwrap_or(u64::MAX))
        }
    }
}

/// One direction's rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Messages (complete data messages) per second.
    pub messages: Option<Gcra>,
    /// Bytes per second.
    pub bytes: Option<Gcra>,
    /// What to do when over.
    pub on_limit: OnLimit,
}

impl RateLimit {
    /// Charges what one read brought. `Err(at)`: over the rate until `at`.
    #[inline]
    pub fn charge(&mut self, now: u64, messages: u64, bytes: u64) -> Result<(), u64> {
        let m = match &mut self.messages {
            Some(g) if messages > 0 => g.charge(now, messages),
            _ => Ok(()),
        };
        let b = match &mut self.bytes {
            Some(g) if bytes > 0 => g.charge(now, bytes),
            _ => Ok(()),
        };
        match (m, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(a), _) | (_, Err(a)) => Err(a),
        }
    }
}

/// A connection's policy: limits per direction (indexed by source leg) and
/// a deadline at which wsedge closes both legs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Limits on what the client sends (`[0]`) and the backend sends (`[1]`).
    pub limits: [Option<RateLimit>; 2],
    /// At this time (µs since the relay started) both legs are closed with
    /// the given code and reason: a token's expiry, say.
    pub deadline: Option<(u64, CloseCode, &'static str)>,
    /// A throttled direction reads again at this time (µs), by source leg.
    pub throttled_until: [Option<u64>; 2],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        // 10 per second, burst 3.
        let mut g = Gcra::new(10, 3);
        assert_eq!(g.charge(0, 1), Ok(()));
        assert_eq!(g.charge(0, 1), Ok(()));
        assert_eq!(g.charge(0, 1), Ok(()));
        // The fourth at once is over; room again after one interval.
        assert_eq!(g.charge(0, 1), Err(100_000));
        // A second later the bucket has drained.
        let mut g = Gcra::new(10, 3);
        for i in 0..100u64 {
            assert_eq!(g.charge(i * 100_000, 1), Ok(()), "{i}");
        }
    }

    #[test]
    fn slow_rates_per_period() {
        // 6 per minute: one every 10 s, burst 2.
        let mut g = Gcra::per(6, std::time::Duration::from_secs(60), 2);
        assert_eq!(g.charge(0, 1), Ok(()));
        assert_eq!(g.charge(0, 1), Ok(()));
        assert_eq!(g.charge(0, 1), Err(10_000_000));
        assert_eq!(
            Gcra::per(10, std::time::Duration::from_secs(1), 3),
            Gcra::new(10, 3)
        );
    }

    #[test]
    fn fast_byte_rates_are_exact() {
        // 1 GiB/s with a 1 MiB burst: the burst at once, one byte more is over.
        let mut g = Gcra::per(1 << 30, std::time::Duration::from_secs(1), 1 << 20);
        assert_eq!(g.charge(0, 1 << 20), Ok(()));
        assert_eq!(g.charge(0, 1), Err(1));
        // A GiB beyond the burst: room again one second later.
        let mut g = Gcra::per(1 << 30, std::time::Duration::from_secs(1), 1 << 20);
        assert_eq!(g.charge(0, 1 << 20), Ok(()));
        assert_eq!(g.charge(0, 1 << 30), Err(1_000_000));
        // 3 MB/s is 3 MB/s (not rounded to whole µs per byte).
        let mut g = Gcra::per(3_000_000, std::time::Duration::from_secs(1), 1);
        assert_eq!(g.charge(0, 3_000_001), Err(1_000_000));
        // Sustained: 64 KiB every 61.04 µs (exactly 1 GiB/s) never goes over.
        let mut g = Gcra::per(1 << 30, std::time::Duration::from_secs(1), 128 << 10);
        for i in 1..=100_000u64 {
            let t = i * 1_000_000 / (1 << 14) + 1;
            assert_eq!(g.charge(t, 64 << 10), Ok(()), "read {i}");
        }
    }

    #[test]
    fn bytes_in_bulk() {
        let mut g = Gcra::new(1000, 1000);
        assert_eq!(g.charge(0, 1000), Ok(()));
        assert_eq!(g.charge(0, 500), Err(500_000));
    }
}
