//! Passive outlier detection: a server whose connections keep failing is
//! ejected for a while, longer each time.
//!
//! - [`record_failure`] counts a failed connect or handshake; the
//!   `eject_after`-th in a row ejects the server for
//!   `eject_base_ms × 2^ejections`, capped at `eject_max_ms`.
//! - [`record_success`] resets the consecutive count, returns a server whose
//!   ejection has run out to `Up`, and forgets the ejection count once the
//!   server has stayed back for `eject_max_ms` (so a server that failed
//!   once last month is not ejected for the maximum today).
//! - An ejected server is eligible again as soon as its time is up (see
//!   [`ServerSlot::eligible`]); a passing active health check lifts the
//!   ejection early ([`on_check_passed`]).
//!
//! Only an `Up` server (or one whose ejection has run out) is ejected:
//! `Down` and `Draining` are left alone. Several workers may record at the
//! same moment; one wins the ejection (a compare-and-swap on its end time)
//! and the others see it ejected.

use std::sync::atomic::Ordering::Relaxed;

use super::server::{ServerSlot, ServerState};

/// Outlier-detection settings of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject (0 = never eject).
    pub eject_after: u32,
    /// The first ejection's length.
    pub eject_base_ms: u64,
    /// The longest ejection.
    pub eject_max_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> OutlierConfig {
        OutlierConfig {
            eject_after: 5,
            eject_base_ms: 30_000,
            eject_max_ms: 300_000,
        }
    }
}

/// How long the `n`-th ejection (from 0) lasts.
pub fn ejection_ms(n: u32, cfg: &OutlierConfig) -> u64 {
    let factor = 1u64.checked_shl(n).unwrap_or(u64::MAX);
    cfg.eject_base_ms
        .saturating_mul(factor)
        .min(cfg.eject_max_ms)
}

/// Counts a failed connection to `slot`; `true` if this failure ejected it.
pub fn record_failure(slot: &ServerSlot, now_ms: u64, cfg: &OutlierConfig) -> bool {
    let failures = slot.failures.fetch_add(1, Relaxed).saturating_add(1);
    if cfg.eject_after == 0 || failures < cfg.eject_after {
        return false;
    }
    let until = slot.ejected_until_ms.load(Relaxed);
    let state = slot.state();
    let ejectable = match state {
        ServerState::Up => true,
        ServerState::Ejected => until <= now_ms,
        ServerState::Down | ServerState::Draining => false,
    };
    if !ejectable || until > now_ms {
        return false;
    }
    let n = slot.ejections.load(Relaxed);
    let new_until = now_ms.saturating_add(ejection_ms(n, cfg)).max(1);
    if slot
        .ejected_until_ms
        .compare_exchange(until, new_until, Relaxed, Relaxed)
        .is_err()
    {
        return false; // another worker ejected it just now
    }
    slot.ejections.store(n.saturating_add(1), Relaxed);
    slot.failures.store(0, Relaxed);
    // Fails only if an operator or a health check moved it meanwhile;
    // their state wins.
    slot.transition(state, ServerState::Ejected);
    true
}

/// Counts a successful connection to `slot`.
pub fn record_success(slot: &ServerSlot, now_ms: u64, cfg: &OutlierConfig) {
    if slot.failures.load(Relaxed) != 0 {
        slot.failures.store(0, Relaxed);
    }
    let until = slot.ejected_until_ms.load(Relaxed);
    if until <= now_ms {
        if slot.state() == ServerState::Ejected {
            slot.transition(ServerState::Ejected, ServerState::Up);
        }
        if now_ms - until >= cfg.eject_max_ms && slot.ejections.load(Relaxed) != 0 {
            slot.ejections.store(0, Relaxed);
        }
    }
}

/// An active health check passed: lift an ejection now (the slow-start ramp
/// starts again from `now_ms`).
pub fn on_check_passed(slot: &ServerSlot, now_ms: u64) {
    if slot.transition(ServerState::Ejected, ServerState::Up) {
        let until = slot.ejected_until_ms.load(Relaxed);
        if until > now_ms {
            slot.ejected_until_ms.store(now_ms, Relaxed);
        }
        slot.failures.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: OutlierConfig = OutlierConfig {
        eject_after: 3,
        eject_base_ms: 1_000,
        eject_max_ms: 10_000,
    };

    /// Fails `slot` until it is ejected; the ejection's length.
    fn eject(slot: &ServerSlot, now: u64) -> u64 {
        for k in 1..=3 {
            let ejected = record_failure(slot, now, &CFG);
            assert_eq!(ejected, k == 3, "failure {k}");
        }
        assert!(!slot.eligible(now));
        slot.ejected_until_ms() - now
    }

    #[test]
    fn ejection_doubles_up_to_the_cap() {
        let s = ServerSlot::new("a", 1);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..7 {
            let len = eject(&s, now);
            lengths.push(len);
            now += len;
            assert!(s.eligible(now), "back when its time is up");
        }
        assert_eq!(
            lengths,
            [1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(ejection_ms(200, &CFG), 10_000, "no overflow");
    }

    #[test]
    fn success_resets_the_streak() {
        let s = ServerSlot::new("a", 1);
        for _ in 0..10 {
            assert!(!record_failure(&s, 0, &CFG));
            assert!(!record_failure(&s, 0, &CFG));
            record_success(&s, 0, &CFG);
        }
        assert!(s.eligible(0));
        assert_eq!(s.ejections(), 0);
    }

    #[test]
    fn failures_while_ejected_do_not_extend_it() {
        let s = ServerSlot::new("a", 1);
        eject(&s, 0);
        for _ in 0..10 {
            assert!(!record_failure(&s, 500, &CFG));
        }
        assert_eq!(s.ejected_until_ms(), 1_000);
    }

    #[test]
    fn ejection_count_forgotten_after_a_quiet_spell() {
        let s = ServerSlot::new("a", 1);
        eject(&s, 0);
        eject(&s, 1_000);
        record_success(&s, 3_000, &CFG);
        assert_eq!(s.state(), ServerState::Up);
        assert_eq!(s.ejections(), 2, "too soon to forget");
        record_success(&s, 3_000 + 10_000, &CFG);
        assert_eq!(s.ejections(), 0);
        assert_eq!(eject(&s, 20_000), 1_000);
    }

    #[test]
    fn a_passing_check_lifts_the_ejection() {
        let s = ServerSlot::new("a", 1);
        eject(&s, 0);
        on_check_passed(&s, 400);
        assert!(s.eligible(400));
        assert_eq!(s.state(), ServerState::Up);
        assert_eq!(s.ejected_until_ms(), 400, "slow start ramps from here");
    }

    #[test]
    fn drained_and_down_servers_are_not_ejected() {
        for state in [ServerState::Draining, ServerState::Down] {
            let s = ServerSlot::new("a", 1);
            s.set_state(state);
            for _ in 0..5 {
                assert!(!record_failure(&s, 0, &CFG));
            }
            on_check_passed(&s, 0);
            record_success(&s, 0, &CFG);
            assert_eq!(s.state(), state);
        }
    }

    #[test]
    fn never_with_eject_after_zero() {
        let s = ServerSlot::new("a", 1);
        let cfg = OutlierConfig {
            eject_after: 0,
            ..CFG
        };
        for _ in 0..100 {
            assert!(!record_failure(&s, 0, &cfg));
        }
        assert!(s.eligible(0));
    }
}
