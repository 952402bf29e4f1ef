//! Consistent hashing with bounded loads: a Maglev lookup table
//! ([`Maglev`]) and the picker that walks it ([`HashPicker`]).
//!
//! The table (Eisenbud et al., "Maglev", NSDI 2016) has a prime number of
//! entries, each naming a primary server; every server fills entries along
//! its own permutation of the table, taking turns in proportion to its
//! configured weight (Envoy's weighted variant). A key's server is the entry
//! at `hash % size`. Removing one of N servers moves about 1/N of the keys
//! plus a little Maglev disruption; building allocates and takes
//! O(size × N) steps, so it happens once per server list and the table is
//! shared (`Arc`) by every worker's picker.
//!
//! Bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with
//! Bounded Loads", 2018): with a `factor` c ≥ 1, a server with effective
//! weight `w` out of `W` is full when `active ≥ ceil(c × (T + 1) × w / W)`,
//! `T` being the open connections over all primary candidates; the picker
//! walks on from the key's entry to the next entries until it finds a
//! candidate that is not full. With c ≥ 1 the bounds add up to more than
//! `T`, so one exists; a key keeps its server as long as that server is not
//! overloaded. A full walk (counts changing under the walk, a table built
//! for another list) ends at the first candidate seen, and it is bounded by
//! the table's size. A walk that meets no candidate at all (a table too
//! small for every server to own an entry, or built for another list)
//! falls back to rendezvous hashing over the primary candidates.
//!
//! Backup servers are not in the table: when no primary is a candidate,
//! a key goes to the backup candidate with the highest
//! `mix64(key ^ id)` (rendezvous hashing, unweighted).

use std::sync::Arc;

use super::key::mix64;
use super::pick::{RandomTwo, candidate};
use super::server::ServerSlot;

/// The default table size, a prime: ample for up to a few hundred servers
/// (Maglev wants the size ≥ 100 × N for even shares).
pub const DEFAULT_TABLE_SIZE: usize = 65_537;

/// The largest table [`Maglev::with_size`] builds (a larger request is
/// clamped to it): 2 MiB of entries.
pub const MAX_TABLE_SIZE: usize = 1 << 20;

/// An empty entry while building (and in a table with no primaries).
const EMPTY: u16 = u16::MAX;

/// A Maglev lookup table over a server list's primaries.
#[derive(Clone)]
pub struct Maglev {
    /// Server indices (into the list the table was built from).
    table: Box<[u16]>,
}

impl std::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maglev")
            .field("size", &self.table.len())
            .finish()
    }
}

impl Maglev {
    /// A table of [`DEFAULT_TABLE_SIZE`] entries.
    pub fn new(servers: &[Arc<ServerSlot>]) -> Maglev {
        Maglev::with_size(servers, DEFAULT_TABLE_SIZE)
    }

    /// A table of the smallest prime ≥ `size` entries (`size` clamped to
    /// `2..=MAX_TABLE_SIZE`; the default suits production, tests use small
    /// ones). Only primary
    /// servers at indices below 65,535 take part; a list with no primary
    /// server gives an empty table.
    pub fn with_size(servers: &[Arc<ServerSlot>], size: usize) -> Maglev {
        let m = next_prime(size.clamp(2, MAX_TABLE_SIZE));
        struct Entry {
            index: u16,
            offset: u64,
            skip: u64,
            weight: u64,
            target: u64,
            next: u64,
        }
        let mut entries: Vec<Entry> = servers
            .iter()
            .take(usize::from(EMPTY))
            .enumerate()
            .filter(|(_, s)| !s.is_backup())
            .map(|(i, s)| Entry {
                index: i as u16,
                offset: mix64(s.id()) % m as u64,
                skip: mix64(s.id() ^ 0x9e37_79b9_7f4a_7c15) % (m as u64 - 1) + 1,
                weight: u64::from(s.weight()),
                target: 0,
                next: 0,
            })
            .collect();
        let Some(max_w) = entries.iter().map(|e| e.weight).max() else {
            return Maglev {
                table: Box::new([]),
            };
        };
        for e in &mut entries {
            e.target = max_w;
        }
        let mut table = vec![EMPTY; m];
        let mut filled = 0;
        let mut round = 1u64;
        while filled < m {
            for e in &mut entries {
                // A server of the largest weight takes a turn every round,
                // one of a third of it every third round.
                if round * e.weight < e.target {
                    continue;
                }
                e.target += max_w;
                // The skip is coprime with the prime size, so the walk
                // visits every entry, and one is still empty.
                loop {
                    let c = ((e.offset + e.next * e.skip) % m as u64) as usize;
                    e.next += 1;
                    if table[c] == EMPTY {
                        table[c] = e.index;
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break;
                }
            }
            round += 1;
        }
        Maglev {
            table: table.into_boxed_slice(),
        }
    }

    /// Entries in the table (0 when it has no primary server).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The server index of entry `hash % size`, ignoring eligibility.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        self.table
            .get((hash % m as u64) as usize)
            .map(|&i| usize::from(i))
    }
}

fn next_prime(mut n: usize) -> usize {
    let is_prime = |n: usize| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    while !is_prime(n) {
        n += 1;
    }
    n
}

/// Consistent hashing with bounded loads over a shared [`Maglev`] table.
/// Requests without a key fall back to the power of two choices.
#[derive(Debug, Clone)]
pub struct HashPicker {
    table: Arc<Maglev>,
    /// The load factor in thousandths; `None` = no load bound.
    factor_milli: Option<u64>,
    fallback: RandomTwo,
}

impl HashPicker {
    /// A picker over `table` (built from the same server list that is passed
    /// to `pick`), with load factor `factor` (clamped to 1.0..=100.0;
    /// `None` for plain consistent hashing), and `seed` for the keyless
    /// fallback.
    pub fn new(table: Arc<Maglev>, factor: Option<f64>, seed: u64) -> HashPicker {
        HashPicker {
            table,
            factor_milli: factor.map(|f| {
                let f = if f.is_nan() { 1.0 } else { f.clamp(1.0, 100.0) };
                (f * 1000.0).round() as u64
            }),
            fallback: RandomTwo::new(seed),
        }
    }

    /// The server for a key (or, without one, the [`RandomTwo`] choice);
    /// see [`Picker::pick`](super::Picker::pick).
    pub fn pick(
        &mut self,
        servers: &[Arc<ServerSlot>],
        key: Option<u64>,
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(servers, skip, now_ms, slow_start_ms);
        };
        self.pick_primary(servers, key, skip, now_ms, slow_start_ms)
            .or_else(|| rendezvous(servers, key, skip, now_ms, true))
    }

    fn pick_primary(
        &self,
        servers: &[Arc<ServerSlot>],
        key: u64,
        skip: u64,
        now_ms: u64,
        slow_start_ms: u64,
    ) -> Option<usize> {
        let m = self.table.len();
        if m == 0 {
            return None;
        }
        // One pass: is there a primary candidate at all, and what are the
        // totals the bound needs.
        let mut total_active = 0u64;
        let mut total_weight = 0u64;
        let mut any = false;
        for (i, s) in servers.iter().enumerate() {
            if candidate(s, i, skip, now_ms, false) {
                any = true;
                if self.factor_milli.is_none() {
                    break;
                }
                total_active += u64::from(s.active());
                total_weight += u64::from(s.effective_weight(now_ms, slow_start_ms));
            }
        }
        if !any {
            return None;
        }
        // bound(w) = ceil(c × (T + 1) × w / W), in u128: no overflow for any
        // counts.
        let numerator = self
            .factor_milli
            .map(|c| u128::from(c) * u128::from(total_active + 1));
        let denominator = 1000 * u128::from(total_weight.max(1));
        let mut pos = (mix64(key) % m as u64) as usize;
        let mut first = None;
        for _ in 0..m {
            let entry = self.table.table.get(pos).copied().unwrap_or(EMPTY);
            let i = usize::from(entry);
            pos += 1;
            if pos == m {
                pos = 0;
            }
            let Some(s) = servers.get(i) else { continue };
            if !candidate(s, i, skip, now_ms, false) {
                continue;
            }
            let Some(num) = numerator else {
                return Some(i);
            };
            let w = u128::from(s.effective_weight(now_ms, slow_start_ms));
            let bound = (num * w).div_ceil(denominator);
            if u128::from(s.active()) < bound {
                return Some(i);
            }
            first.get_or_insert(i);
        }
        // No candidate in the whole table: a table built for another list,
        // or one too small for every server to get an entry.
        first.or_else(|| rendezvous(servers, key, skip, now_ms, false))
    }
}

/// The candidate of a tier with the highest `mix64(key ^ id)`.
fn rendezvous(
    servers: &[Arc<ServerSlot>],
    key: u64,
    skip: u64,
    now_ms: u64,
    backup: bool,
) -> Option<usize> {
    servers
        .iter()
        .enumerate()
        .filter(|(i, s)| candidate(s, *i, skip, now_ms, backup))
        .max_by_key(|(_, s)| mix64(key ^ s.id()))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::key::key_hash;
    use crate::balance::server::ServerState;

    fn servers(n: usize) -> Vec<Arc<ServerSlot>> {
        (0..n)
            .map(|i| Arc::new(ServerSlot::new(&format!("10.1.0.{i}:443"), 1)))
            .collect()
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|k| key_hash(format!("user-{k}").as_bytes()))
            .collect()
    }

    /// The server id each key lands on, picked in order; with `hold`, each
    /// key keeps a connection open.
    fn assign(s: &[Arc<ServerSlot>], factor: Option<f64>, hold: bool) -> Vec<u64> {
        let mut p = HashPicker::new(Arc::new(Maglev::new(s)), factor, 0);
        keys(1_000)
            .into_iter()
            .map(|k| {
                let i = p.pick(s, Some(k), 0, 0, 0).unwrap();
                if hold {
                    s[i].acquire();
                }
                s[i].id()
            })
            .collect()
    }

    #[test]
    fn same_key_same_server() {
        let s = servers(5);
        let table = Arc::new(Maglev::new(&s));
        let mut a = HashPicker::new(table.clone(), Some(1.25), 1);
        let mut b = HashPicker::new(table, Some(1.25), 2);
        for k in keys(200) {
            let first = a.pick(&s, Some(k), 0, 0, 0);
            assert!(first.is_some());
            for _ in 0..3 {
                assert_eq!(a.pick(&s, Some(k), 0, 0, 0), first);
                assert_eq!(b.pick(&s, Some(k), 0, 0, 0), first, "another worker");
            }
        }
    }

    #[test]
    fn table_shares_follow_weights() {
        let s: Vec<Arc<ServerSlot>> = [1, 2, 3]
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(ServerSlot::new(&format!("w{i}"), w)))
            .collect();
        let t = Maglev::new(&s);
        let mut counts = [0usize; 3];
        for &e in t.table.iter() {
            counts[usize::from(e)] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            let want = t.len() * (i + 1) / 6;
            assert!(c.abs_diff(want) * 100 <= want, "{counts:?}");
        }
    }

    fn moved(a: &[u64], b: &[u64]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn removing_one_of_five_moves_few_keys() {
        let five = servers(5);
        let four: Vec<Arc<ServerSlot>> = servers(5).into_iter().skip(1).collect();
        let before = assign(&five, None, false);
        let after = assign(&four, None, false);
        let m = moved(&before, &after);
        assert!(m <= 250, "unbounded: {m} of 1000 keys moved");
        // The removed server's keys had to move; few others did.
        let gone = five[0].id();
        let extra = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **x != gone)
            .count();
        assert!(extra <= 30, "{extra} keys moved off surviving servers");

        let five = servers(5);
        let four: Vec<Arc<ServerSlot>> = servers(5).into_iter().skip(1).collect();
        let before = assign(&five, Some(1.25), true);
        let after = assign(&four, Some(1.25), true);
        let m = moved(&before, &after);
        assert!(m <= 250, "factor 1.25: {m} of 1000 keys moved");
    }

    #[test]
    fn bounded_loads_cap_every_server() {
        let s = servers(5);
        assign(&s, Some(1.25), true);
        let total: u32 = s.iter().map(|x| x.active()).sum();
        assert_eq!(total, 1_000);
        for x in &s {
            assert!(
                f64::from(x.active()) <= 1.25 * 200.0 + 1.0,
                "{}",
                x.active()
            );
        }
        // Weighted: shares follow effective weights.
        let w: Vec<Arc<ServerSlot>> = [1, 2, 3, 1, 1]
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(ServerSlot::new(&format!("w{i}"), w)))
            .collect();
        assign(&w, Some(1.25), true);
        for x in &w {
            let fair = 1_000.0 * f64::from(x.weight()) / 8.0;
            assert!(f64::from(x.active()) <= 1.25 * fair + 1.0, "{}", x.active());
        }
    }

    #[test]
    fn a_hot_key_spills_over() {
        let s = servers(4);
        let mut p = HashPicker::new(Arc::new(Maglev::new(&s)), Some(1.25), 0);
        let k = key_hash(b"hot");
        for _ in 0..400 {
            let i = p.pick(&s, Some(k), 0, 0, 0).unwrap();
            s[i].acquire();
        }
        for x in &s {
            assert!(x.active() <= 126, "{}", x.active());
        }
        // Without a bound, everything goes to one server.
        let s = servers(4);
        let mut p = HashPicker::new(Arc::new(Maglev::new(&s)), None, 0);
        let first = p.pick(&s, Some(k), 0, 0, 0);
        for _ in 0..100 {
            let i = p.pick(&s, Some(k), 0, 0, 0).unwrap();
            s[i].acquire();
            assert_eq!(Some(i), first);
        }
    }

    #[test]
    fn skips_ineligible_and_uses_backups() {
        let s: Vec<Arc<ServerSlot>> = (0..4)
            .map(|i| Arc::new(ServerSlot::new(&format!("b{i}"), 1).with_backup(i >= 2)))
            .collect();
        let mut p = HashPicker::new(Arc::new(Maglev::with_size(&s, 101)), Some(1.25), 0);
        let ks = keys(100);
        for &k in &ks {
            let i = p.pick(&s, Some(k), 0, 0, 0).unwrap();
            assert!(i < 2);
            // Skipping the key's server moves it to the other primary.
            assert_eq!(p.pick(&s, Some(k), 1 << i, 0, 0), Some(1 - i));
        }
        s[0].set_state(ServerState::Down);
        s[1].set_state(ServerState::Draining);
        for &k in &ks {
            let i = p.pick(&s, Some(k), 0, 0, 0).unwrap();
            assert!(i >= 2);
            assert_eq!(
                p.pick(&s, Some(k), 0, 0, 0),
                Some(i),
                "sticky among backups"
            );
        }
        assert_eq!(p.pick(&s, Some(1), 0b1100, 0, 0), None);
        assert_eq!(p.pick(&s, None, 0b1100, 0, 0), None);
    }

    #[test]
    fn keyless_requests_fall_back() {
        let s = servers(3);
        let mut p = HashPicker::new(Arc::new(Maglev::new(&s)), Some(1.25), 0);
        let mut seen = [false; 3];
        for _ in 0..100 {
            seen[p.pick(&s, None, 0, 0, 0).unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn a_table_for_another_list_does_not_panic() {
        let big = servers(8);
        let small = servers(3);
        let mut p = HashPicker::new(Arc::new(Maglev::with_size(&big, 97)), Some(2.0), 0);
        for k in keys(50) {
            assert!(p.pick(&small, Some(k), 0, 0, 0).is_some_and(|i| i < 3));
        }
        let mut p = HashPicker::new(Arc::new(Maglev::with_size(&[], 97)), None, 0);
        assert_eq!(p.pick(&small, Some(1), 0, 0, 0), None);
        assert!(Maglev::with_size(&small, 0).len() >= 2);
    }

    #[test]
    fn huge_sizes_are_clamped() {
        let t = Maglev::with_size(&servers(2), usize::MAX);
        assert!(t.len() >= MAX_TABLE_SIZE && t.len() < MAX_TABLE_SIZE + 1_000);
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(2), 2);
    }
}
