//! Choosing a server for one new connection: [`Picker`] and the
//! load-independent algorithms ([`RoundRobin`], [`LeastConn`],
//! [`RandomTwo`]); the hash picker is in [`maglev`](super::maglev).
//!
//! Each worker owns one picker per upstream (its state is small and
//! unshared); the servers' load is read from the shared
//! [`ServerSlot`]s. Every `pick` takes the same arguments:
//!
//! - `servers`: the upstream's list, the same one (same order) on every call;
//! - `key`: the request's hash key, [`key_hash`](super::key_hash) of
//!   whatever the route hashes on (only the hash picker uses it);
//! - `skip`: bit `i` set = server `i` was already tried in this handshake.
//!   Only servers 0..64 can be skipped: a server at index 64 or above is
//!   never masked and may be picked again on a retry;
//! - `now_ms`, `slow_start_ms`: for eligibility and effective weights.
//!
//! A *candidate* is a server that is [`eligible`](ServerSlot::eligible) and
//! not skipped. Backup servers are candidates only when no primary is: the
//! algorithm runs over the primaries, and over the backups only if it found
//! nothing. `None` means no candidate at all. `pick` never allocates, with
//! one exception: [`RoundRobin`] grows its per-server state if the list
//! grew since it was built.

use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::maglev::HashPicker;
use super::server::ServerSlot;

/// Whether bit `i` of the skip mask is set (never for `i >= 64`).
#[inline]
pub fn skipped(skip: u64, i: usize) -> bool {
    i < 64 && (skip >> i) & 1 == 1
}

/// Whether server `i` is a candidate in the primary (`backup` false) or the
/// backup tier.
#[inline]
pub(super) fn candidate(s: &ServerSlot, i: usize, skip: u64, now_ms: u64, backup: bool) -> bool {
    s.is_backup() == backup && !skipped(skip, i) && s.eligible(now_ms)
}

/// Whether `a` (connections, effective weight) is less loaded than `b`,
/// counting the connection about to be added: `(a + 1) / wa < (b + 1) / wb`,
/// as HAProxy's leastconn does. The `+ 1` makes an empty heavy server
/// preferred over an empty light one.
#[inline]
pub(super) fn less_loaded(a: (u32, u32), b: (u32, u32)) -> bool {
    (u64::from(a.0) + 1) * u64::from(b.1) < (u64::from(b.0) + 1) * u64::from(a.1)
}

/// A uniform integer in `0..n` (`n > 0`), by multiply-shift.
#[inline]
pub(super) fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

/// The balancing algorithm of one upstream, with one worker's state.
#[derive(Debug)]
pub enum Picker {
    /// Smooth weighted round robin.
    RoundRobin(RoundRobin),
    /// Fewest connections per unit of weight.
    LeastConn(LeastConn),
    /// The less loaded of two random servers.
    RandomTwo(RandomTwo),
    /// Consistent hashing with bounded loads.
    Hash(HashPicker),
}

impl Picker {
    /// The server for one new connection (see the module docs for the
    /// arguments), or `None` when no server is a candidate.
    #[inline]
    pub fn pick(
        &mut self,
        servers: &[Arc<ServerSlot>],
        key: Option<u64>,
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        match self {
            Picker::RoundRobin(p) => p.pick(servers, skip, now_ms, slow_start_ms),
            Picker::LeastConn(p) => p.pick(servers, skip, now_ms, slow_start_ms),
            Picker::RandomTwo(p) => p.pick(servers, skip, now_ms, slow_start_ms),
            Picker::Hash(p) => p.pick(servers, key, skip, now_ms, slow_start_ms),
        }
    }
}

/// Smooth weighted round robin, nginx's algorithm: every candidate's
/// current weight grows by its effective weight, the largest is chosen and
/// pays back the sum. Weights 5, 1, 1 give `a a b a c a a`: spread out, not
/// `a a a a a b c`. Servers that are not candidates keep their current
/// weight untouched.
#[derive(Debug, Clone, Default)]
pub struct RoundRobin {
    current: Vec<i64>,
}

impl RoundRobin {
    /// A picker for a list of `n` servers.
    pub fn new(n: usize) -> RoundRobin {
        RoundRobin {
            current: vec![0; n],
        }
    }

    /// See [`Picker::pick`].
    pub fn pick(
        &mut self,
        servers: &[Arc<ServerSlot>],
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        if self.current.len() != servers.len() {
            // A new list: start over (allocates only if it grew).
            self.current.clear();
            self.current.resize(servers.len(), 0);
        }
        self.pick_tier(servers, skip, now_ms, slow_start_ms, false)
            .or_else(|| self.pick_tier(servers, skip, now_ms, slow_start_ms, true))
    }

    fn pick_tier(
        &mut self,
        servers: &[Arc<ServerSlot>],
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
        backup: bool,
    ) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, (s, cur)) in servers.iter().zip(self.current.iter_mut()).enumerate() {
            if !candidate(s, i, skip, now_ms, backup) {
                continue;
            }
            let w = i64::from(s.effective_weight(now_ms, slow_start_ms));
            *cur = cur.saturating_add(w);
            total += w;
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((i, *cur));
            }
        }
        let (i, _) = best?;
        if let Some(cur) = self.current.get_mut(i) {
            *cur = cur.saturating_sub(total);
        }
        Some(i)
    }
}

/// Fewest connections per unit of effective weight (`(active + 1) / w`).
/// Ties go to the first candidate from a starting point that moves on by
/// one on every pick and is seeded per worker, so that workers picking at
/// the same moment from the same counts do not all land on one server.
#[derive(Debug, Clone)]
pub struct LeastConn {
    next: usize,
}

impl LeastConn {
    /// A picker whose tie rotation starts at `seed` (the worker's index,
    /// say).
    pub fn new(seed: usize) -> LeastConn {
        LeastConn { next: seed }
    }

    /// See [`Picker::pick`].
    pub fn pick(
        &mut self,
        servers: &[Arc<ServerSlot>],
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        let tier = |backup: bool| {
            let mut best: Option<(usize, (u32, u32))> = None;
            for k in 0..n {
                let i = if start + k >= n {
                    start + k - n
                } else {
                    start + k
                };
                let Some(s) = servers.get(i) else { continue };
                if !candidate(s, i, skip, now_ms, backup) {
                    continue;
                }
                let load = (s.active(), s.effective_weight(now_ms, slow_start_ms));
                if best.is_none_or(|(_, b)| less_loaded(load, b)) {
                    best = Some((i, load));
                }
            }
            best.map(|(i, _)| i)
        };
        tier(false).or_else(|| tier(true))
    }
}

/// The power of two choices: two distinct candidates drawn uniformly, the
/// less loaded (`(active + 1) / w`) wins. With one candidate, that one.
///
/// Draws are tried first by rejection (a random index of the whole list,
/// kept if it is a primary candidate, up to [`RandomTwo::TRIES`] times per
/// choice), which costs two or three slot reads when most servers are up;
/// when that fails it counts the candidates and draws among them, which is
/// exact whatever the mix. Both ways are uniform over the candidates.
#[derive(Debug, Clone)]
pub struct RandomTwo {
    rng: ChaCha8Rng,
}

impl RandomTwo {
    /// Rejection draws per choice before counting.
    pub const TRIES: usize = 4;

    /// A picker with its own RNG seeded from `seed` (one per worker: seed
    /// it from the OS once and from the worker index, or fixed in tests).
    pub fn new(seed: u64) -> RandomTwo {
        RandomTwo {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// See [`Picker::pick`].
    pub fn pick(
        &mut self,
        servers: &[Arc<ServerSlot>],
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        let n = servers.len();
        if n == 0 {
            return None;
        }
        let load = |i: usize| {
            servers.get(i).map_or((u32::MAX, 1), |s| {
                (s.active(), s.effective_weight(now_ms, slow_start_ms))
            })
        };
        // Fast path: two distinct primary candidates by rejection.
        let mut first = None;
        for _ in 0..Self::TRIES {
            let i = below(&mut self.rng, n);
            if servers
                .get(i)
                .is_some_and(|s| candidate(s, i, skip, now_ms, false))
            {
                first = Some(i);
                break;
            }
        }
        if let Some(a) = first {
            for _ in 0..Self::TRIES {
                let b = below(&mut self.rng, n);
                if b != a
                    && servers
                        .get(b)
                        .is_some_and(|s| candidate(s, b, skip, now_ms, false))
                {
                    return Some(if less_loaded(load(b), load(a)) { b } else { a });
                }
            }
        }
        // Exact path: count, draw two ranks, find them.
        let (a, b) = self
            .draw_counted(servers, skip, now_ms, false)
            .or_else(|| self.draw_counted(servers, skip, now_ms, true))?;
        Some(match b {
            Some(b) if less_loaded(load(b), load(a)) => b,
            _ => a,
        })
    }

    /// Two distinct candidates of a tier (the second `None` if it has only
    /// one), drawn uniformly by rank.
    fn draw_counted(
        &mut self,
        servers: &[Arc<ServerSlot>],
        skip: u64,
        now_ms: u64,
        backup: bool,
    ) -> Option<(usize, Option<usize>)> {
        let is = |(i, s): &(usize, &Arc<ServerSlot>)| candidate(s, *i, skip, now_ms, backup);
        let count = servers.iter().enumerate().filter(is).count();
        if count == 0 {
            return None;
        }
        let ra = below(&mut self.rng, count);
        let rb = if count > 1 {
            let r = below(&mut self.rng, count - 1);
            Some(if r >= ra { r + 1 } else { r })
        } else {
            None
        };
        let mut a = None;
        let mut b = None;
        for (rank, (i, _)) in servers.iter().enumerate().filter(is).enumerate() {
            if rank == ra {
                a = Some(i);
            }
            if Some(rank) == rb {
                b = Some(i);
            }
            if a.is_some() && (b.is_some() || rb.is_none()) {
                break;
            }
        }
        a.map(|a| (a, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::server::ServerState;

    pub(crate) fn servers(weights: &[u32]) -> Vec<Arc<ServerSlot>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(ServerSlot::new(&format!("10.0.0.{i}:80"), w)))
            .collect()
    }

    fn all_pickers(n: usize) -> Vec<(&'static str, Picker)> {
        vec![
            ("round_robin", Picker::RoundRobin(RoundRobin::new(n))),
            ("least_conn", Picker::LeastConn(LeastConn::new(0))),
            ("random_two", Picker::RandomTwo(RandomTwo::new(7))),
        ]
    }

    #[test]
    fn smooth_wrr_sequence_5_1_1() {
        let s = servers(&[5, 1, 1]);
        let mut rr = RoundRobin::new(3);
        let seq: String = (0..14)
            .map(|_| (b'a' + rr.pick(&s, 0, 0, 0).unwrap() as u8) as char)
            .collect();
        assert_eq!(seq, "aabacaaaabacaa");
    }

    #[test]
    fn round_robin_exactly_proportional() {
        let s = servers(&[1, 2, 3]);
        let mut rr = RoundRobin::new(3);
        let mut counts = [0u32; 3];
        for _ in 0..6_000 {
            counts[rr.pick(&s, 0, 0, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [1_000, 2_000, 3_000]);
    }

    /// Holds `held` connections; every step closes a random one and opens
    /// one with the picker. Returns the final active counts.
    fn steady_state(p: &mut Picker, s: &[Arc<ServerSlot>], held: usize, steps: usize) -> Vec<u32> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut open: Vec<usize> = Vec::new();
        for _ in 0..steps {
            if open.len() >= held {
                let k = below(&mut rng, open.len());
                s[open.swap_remove(k)].release();
            }
            let i = p.pick(s, None, 0, 0, 0).unwrap();
            s[i].acquire();
            open.push(i);
        }
        s.iter().map(|x| x.active()).collect()
    }

    fn assert_proportional(name: &str, active: &[u32], weights: &[u32], tolerance: f64) {
        let total: u32 = active.iter().sum();
        let wsum: u32 = weights.iter().sum();
        for (i, (&a, &w)) in active.iter().zip(weights).enumerate() {
            let fair = f64::from(total) * f64::from(w) / f64::from(wsum);
            let off = (f64::from(a) - fair).abs() / fair;
            assert!(
                off <= tolerance,
                "{name}: server {i} has {a}, fair {fair:.0} ({active:?})"
            );
        }
    }

    #[test]
    fn connection_counts_follow_weights() {
        // Round robin spreads picks (see above), not open connections: with
        // random closes its counts drift, so it is not held to this.
        let weights = [1, 2, 3];
        let pickers = [
            ("least_conn", Picker::LeastConn(LeastConn::new(0)), 0.02),
            ("random_two", Picker::RandomTwo(RandomTwo::new(7)), 0.05),
        ];
        for (name, mut p, tol) in pickers {
            let s = servers(&weights);
            let active = steady_state(&mut p, &s, 600, 6_000);
            assert_proportional(name, &active, &weights, tol);
        }
    }

    #[test]
    fn least_conn_balances_uneven_lifetimes() {
        // A fifth of the connections live 2,000 steps, the rest 1-20 steps.
        // Round robin would pile the long ones up wherever they happened to
        // land; least_conn keeps the open counts level.
        let weights = [1, 1, 1, 1, 1];
        let s = servers(&weights);
        let mut p = Picker::LeastConn(LeastConn::new(3));
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut open: Vec<(usize, usize)> = Vec::new(); // (server, closes at)
        for step in 0..20_000 {
            open.retain(|&(i, end)| {
                if end <= step {
                    s[i].release();
                }
                end > step
            });
            let life = if below(&mut rng, 5) == 0 {
                2_000
            } else {
                1 + below(&mut rng, 20)
            };
            let i = p.pick(&s, None, 0, 0, 0).unwrap();
            s[i].acquire();
            open.push((i, step + life));
        }
        let active: Vec<u32> = s.iter().map(|x| x.active()).collect();
        let (lo, hi) = (active.iter().min().unwrap(), active.iter().max().unwrap());
        assert!(hi - lo <= 1, "{active:?}");
    }

    #[test]
    fn least_conn_ties_rotate() {
        let s = servers(&[1, 1, 1]);
        let mut p = LeastConn::new(0);
        let picks: Vec<usize> = (0..3).map(|_| p.pick(&s, 0, 0, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2], "no acquire: all tied, rotation decides");
        let mut q = LeastConn::new(1);
        assert_eq!(
            q.pick(&s, 0, 0, 0),
            Some(1),
            "another worker starts elsewhere"
        );
    }

    #[test]
    fn backups_only_when_no_primary() {
        let s = servers(&[1, 1, 1, 1]);
        let s: Vec<Arc<ServerSlot>> = s
            .into_iter()
            .enumerate()
            .map(|(i, x)| {
                let x = Arc::try_unwrap(x).unwrap();
                Arc::new(x.with_backup(i >= 2))
            })
            .collect();
        for (name, mut p) in all_pickers(4) {
            for _ in 0..50 {
                assert!(p.pick(&s, None, 0, 0, 0).unwrap() < 2, "{name}");
            }
            s[0].set_state(ServerState::Down);
            for _ in 0..50 {
                assert_eq!(p.pick(&s, None, 0, 0, 0), Some(1), "{name}");
            }
            // The last primary was tried already: go to the backups.
            for _ in 0..50 {
                assert!(p.pick(&s, None, 0b10, 0, 0).unwrap() >= 2, "{name}");
            }
            s[1].set_state(ServerState::Draining);
            for _ in 0..50 {
                assert!(p.pick(&s, None, 0, 0, 0).unwrap() >= 2, "{name}");
            }
            assert_eq!(p.pick(&s, None, 0b1000, 0, 0), Some(2), "{name}");
            assert_eq!(p.pick(&s, None, 0b1100, 0, 0), None, "{name}");
            s[0].set_state(ServerState::Up);
            s[1].set_state(ServerState::Up);
        }
    }

    #[test]
    fn ineligible_and_skipped_servers_are_never_picked() {
        let s: Vec<Arc<ServerSlot>> = (0..5)
            .map(|i| Arc::new(ServerSlot::new(&format!("s{i}"), 1).with_limits(3, 0)))
            .collect();
        s[0].set_state(ServerState::Draining);
        s[1].ejected_until_ms
            .store(1_000, std::sync::atomic::Ordering::Relaxed);
        s[1].set_state(ServerState::Ejected);
        for _ in 0..3 {
            s[2].acquire(); // full
        }
        for (name, mut p) in all_pickers(5) {
            for _ in 0..200 {
                let i = p.pick(&s, None, 0b1000, 500, 0).unwrap();
                assert_eq!(i, 4, "{name}");
            }
            assert_eq!(
                p.pick(&s, None, 0b1_1000, 500, 0),
                None,
                "{name}: all skipped"
            );
            // The ejection runs out.
            let i = p.pick(&s, None, 0b1_1000, 1_000, 0);
            assert_eq!(i, Some(1), "{name}");
            assert_eq!(p.pick(&s, None, u64::MAX, 1_000, 0), None, "{name}");
        }
    }

    #[test]
    fn more_than_64_servers_beyond_the_mask_are_never_skipped() {
        let s = servers(&[1; 70]);
        for (name, mut p) in all_pickers(70) {
            for _ in 0..100 {
                let i = p.pick(&s, None, u64::MAX, 0, 0).unwrap();
                assert!(i >= 64, "{name}: {i}");
            }
        }
    }

    /// One server of the property test: state, backup, max_connections,
    /// active, ejected until.
    type Spec = (u8, bool, u32, u32, u64);

    fn build(specs: &[Spec]) -> Vec<Arc<ServerSlot>> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(state, backup, max, active, until))| {
                let s = ServerSlot::new(&format!("p{i}"), 1 + i as u32 % 7)
                    .with_backup(backup)
                    .with_limits(max, 0);
                for _ in 0..active {
                    s.acquire();
                }
                s.ejected_until_ms
                    .store(until, std::sync::atomic::Ordering::Relaxed);
                s.set_state(match state % 4 {
                    0 => ServerState::Up,
                    1 => ServerState::Down,
                    2 => ServerState::Draining,
                    _ => ServerState::Ejected,
                });
                Arc::new(s)
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Whatever the servers' states, every algorithm returns a
        /// candidate, a backup only when no primary is one, and `None` only
        /// when there is no candidate at all.
        #[test]
        fn picks_are_always_candidates(
            specs in proptest::collection::vec(
                (0u8..4, proptest::bool::weighted(0.2), 0u32..4, 0u32..4, 0u64..2_000),
                0..80,
            ),
            skip: u64,
            now in 0u64..2_000,
            slow in 0u64..3_000,
            key: Option<u64>,
            factor in proptest::option::of(0.5f64..3.0),
        ) {
            let s = build(&specs);
            let table = Arc::new(crate::balance::Maglev::with_size(&s, 101));
            let mut pickers = all_pickers(s.len());
            pickers.push(("hash", Picker::Hash(HashPicker::new(table, factor, 3))));
            let any = |backup: bool| {
                s.iter().enumerate().any(|(i, x)| candidate(x, i, skip, now, backup))
            };
            for (name, mut p) in pickers {
                for _ in 0..4 {
                    match p.pick(&s, key, skip, now, slow) {
                        Some(i) => {
                            proptest::prop_assert!(i < s.len(), "{name}");
                            proptest::prop_assert!(s[i].eligible(now), "{name}");
                            proptest::prop_assert!(!skipped(skip, i), "{name}");
                            if s[i].is_backup() {
                                proptest::prop_assert!(!any(false), "{name}: backup");
                            }
                        }
                        None => proptest::prop_assert!(!any(false) && !any(true), "{name}"),
                    }
                }
            }
        }
    }

    #[test]
    fn empty_list() {
        for (_, mut p) in all_pickers(0) {
            assert_eq!(p.pick(&[], None, 0, 0, 0), None);
        }
    }

    #[test]
    fn round_robin_survives_a_list_change() {
        let mut rr = RoundRobin::new(2);
        let s = servers(&[1, 1, 1]);
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[rr.pick(&s, 0, 0, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn slow_start_shifts_share_to_the_old_servers() {
        let s = servers(&[1, 1]);
        s[1].mark_up(100_000);
        let mut rr = RoundRobin::new(2);
        let mut counts = [0; 2];
        for _ in 0..700 {
            counts[rr.pick(&s, 0, 100_000, 10_000).unwrap()] += 1;
        }
        // At the start of its ramp server 1 weighs about a tenth of server
        // 0: 6 / 64 (a tenth, rounded down, in WEIGHT_SCALE units).
        assert_eq!(counts, [640, 60]);
        // Half-way: 6 + 58 / 2 = 35.
        let mut counts = [0; 2];
        for _ in 0..990 {
            counts[rr.pick(&s, 0, 105_000, 10_000).unwrap()] += 1;
        }
        assert_eq!(counts, [640, 350]);
    }
}
