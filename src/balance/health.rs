//! Active health checks: the rise/fall state machine of one server
//! ([`HealthState`]) and when to probe next ([`next_check_ms`]).
//!
//! The probe itself (a WebSocket handshake, its answer) belongs to the
//! session code; this module only counts results. One worker owns a
//! server's checks, so the state is plain (`&mut self`); what the others
//! must see goes to the shared [`ServerSlot`] through
//! [`Transition::apply`].

use rand_core::RngCore;

use super::outlier;
use super::server::{ServerSlot, ServerState};

/// A change of a server's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It passed `rise` checks in a row.
    Up,
    /// It failed `fall` checks in a row.
    Down,
}

impl Transition {
    /// Writes the change to the shared slot at `now_ms`. `Up` moves a `Down`
    /// server to `Up` and starts its slow-start ramp; `Down` takes an `Up`
    /// or `Ejected` server down. A `Draining` server stays draining either
    /// way (the operator's word wins). Returns whether the slot changed.
    pub fn apply(self, slot: &ServerSlot, now_ms: u64) -> bool {
        match self {
            Transition::Up => {
                let up = slot.transition(ServerState::Down, ServerState::Up);
                if up {
                    slot.set_up_since(now_ms);
                }
                up
            }
            Transition::Down => {
                slot.transition(ServerState::Up, ServerState::Down)
                    || slot.transition(ServerState::Ejected, ServerState::Down)
            }
        }
    }
}

/// The rise/fall counters of one server's active checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results against the current state.
    streak: u32,
}

impl HealthState {
    /// Counters for a server that goes down after `fall` failed checks in a
    /// row and comes back after `rise` passed ones (both at least 1),
    /// starting up or down.
    pub fn new(rise: u32, fall: u32, up: bool) -> HealthState {
        HealthState {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
        }
    }

    /// Whether the checks consider it up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Counts one check result; the transition it completes, if any.
    pub fn observe(&mut self, passed: bool) -> Option<Transition> {
        if passed == self.up {
            // Agrees with the state: any streak against it is broken.
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.up = passed;
        Some(if passed {
            Transition::Up
        } else {
            Transition::Down
        })
    }

    /// [`observe`](Self::observe), then writes the result to the slot: the
    /// transition if any, and a passing check lifts an outlier ejection.
    pub fn observe_and_apply(
        &mut self,
        passed: bool,
        slot: &ServerSlot,
        now_ms: u64,
    ) -> Option<Transition> {
        let t = self.observe(passed);
        if let Some(t) = t {
            t.apply(slot, now_ms);
        }
        if passed {
            outlier::on_check_passed(slot, now_ms);
        }
        t
    }
}

/// When to run the next check: `now_ms + interval_ms`, moved by a uniform
/// jitter of up to ±10 % of the interval, so that the checks of many
/// servers (and of many proxies) do not fall in step. Saturates at
/// `u64::MAX`.
pub fn next_check_ms(now_ms: u64, interval_ms: u64, rng: &mut impl RngCore) -> u64 {
    let spread = interval_ms / 10;
    // A uniform value in 0..=2 × spread, by multiply-shift.
    let width = u128::from(spread) * 2 + 1;
    let offset = ((u128::from(rng.next_u64()) * width) >> 64) as u64;
    now_ms
        .saturating_add(interval_ms - spread)
        .saturating_add(offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    #[test]
    fn fall_then_rise() {
        let mut h = HealthState::new(2, 3, true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None, "streak broken");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None, "streak broken");
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(Transition::Up));
        assert!(h.is_up());
        assert_eq!(h.observe(true), None);
    }

    #[test]
    fn zero_counts_mean_one() {
        let mut h = HealthState::new(0, 0, true);
        assert_eq!(h.observe(false), Some(Transition::Down));
        assert_eq!(h.observe(true), Some(Transition::Up));
    }

    #[test]
    fn applied_to_the_slot() {
        let s = ServerSlot::new("a", 1);
        let mut h = HealthState::new(1, 1, true);
        assert_eq!(h.observe_and_apply(false, &s, 10), Some(Transition::Down));
        assert_eq!(s.state(), ServerState::Down);
        assert!(!s.eligible(10));
        assert_eq!(h.observe_and_apply(true, &s, 5_000), Some(Transition::Up));
        assert_eq!(s.state(), ServerState::Up);
        assert_eq!(s.up_since_ms(), 5_000, "slow start from here");
        // Draining is the operator's: checks do not undo it.
        s.set_state(ServerState::Draining);
        h.observe_and_apply(false, &s, 6_000);
        h.observe_and_apply(true, &s, 7_000);
        assert_eq!(s.state(), ServerState::Draining);
    }

    #[test]
    fn jitter_within_ten_percent() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut lo, mut hi) = (u64::MAX, 0);
        for _ in 0..10_000 {
            let t = next_check_ms(1_000, 10_000, &mut rng);
            lo = lo.min(t);
            hi = hi.max(t);
        }
        assert!(lo >= 1_000 + 9_000 && hi <= 1_000 + 11_000, "{lo}..{hi}");
        assert!(
            lo < 1_000 + 9_100 && hi > 1_000 + 10_900,
            "spread used: {lo}..{hi}"
        );
        assert_eq!(next_check_ms(u64::MAX - 1, 10_000, &mut rng), u64::MAX);
        assert_eq!(next_check_ms(5, 0, &mut rng), 5);
    }
}
