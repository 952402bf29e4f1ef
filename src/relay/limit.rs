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

/// A generic cell rate algorithm over a microsecond clock: `rate` units per
/// second with a burst of `burst` units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Theoretical arrival time of the next unit (µs).
    tat: u64,
    /// µs per unit.
    interval: u64,
    /// How far ahead of now `tat` may run (µs): `burst × interval`.
    tolerance: u64,
}

impl Gcra {
    /// `rate` units per second (at least 1), `burst` units at once (at least 1).
    pub fn new(rate: u64, burst: u64) -> Gcra {
        let interval = (1_000_000 / rate.max(1)).max(1);
        Gcra {
            tat: 0,
            interval,
            tolerance: interval.saturating_mul(burst.max(1)),
        }
    }

    /// Charges `n` units at `now` (they have already arrived). `Ok`: within
    /// the rate. `Err(at)`: over it; the bucket has room again at `at`.
    #[inline]
    pub fn charge(&mut self, now: u64, n: u64) -> Result<(), u64> {
        let tat = self
            .tat
            .max(now)
            .saturating_add(n.saturating_mul(self.interval));
        self.tat = tat;
        let ahead = tat - now;
        if ahead <= self.tolerance {
            Ok(())
        } else {
            Err(now + (ahead - self.tolerance))
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
    fn bytes_in_bulk() {
        let mut g = Gcra::new(1000, 1000);
        assert_eq!(g.charge(0, 1000), Ok(()));
        assert_eq!(g.charge(0, 500), Err(500_000));
    }
}
