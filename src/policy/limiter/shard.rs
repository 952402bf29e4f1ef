//! One shard of the limiter's table: open addressing with linear probing
//! over a slot array sized once, at construction, and never grown (so an
//! insert allocates nothing); deletion shifts the rest of the cluster back
//! (no tombstones, so probes stay short however many keys come and go); and
//! eviction of an idle key, in bounded work, when the shard is at capacity.
//!
//! A slot is 32 bytes (the key, the GCRA's theoretical arrival time, the
//! count of open connections and the key's home slot) and the array holds
//! 4/3 of a slot per key of capacity, so the load never passes 3/4.

use super::{KeyLimits, Over, admit};

/// The slot array holds `capacity × SLOTS_NUM / SLOTS_DEN` slots (rounded up).
pub(super) const SLOTS_NUM: usize = 4;
/// See [`SLOTS_NUM`].
pub(super) const SLOTS_DEN: usize = 3;

/// Eviction looks at this many slots from its cursor before it settles for
/// the oldest idle key it has seen (it stops sooner at a drained one).
const SCAN: usize = 32;

/// `Slot::home` of an empty slot (a real home is below the slot count,
/// which is far below this).
const EMPTY: u32 = u32::MAX;

/// One key's state. 32 bytes: `u128` is 16-aligned, and `home` fills what
/// would otherwise be padding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    key: u128,
    /// The GCRA's theoretical arrival time on the caller's clock (µs); at or
    /// before now, the bucket has drained and the key may as well be new.
    tat: u64,
    /// Connections open (permits alive).
    active: u32,
    /// The slot the key hashes to, or [`EMPTY`].
    home: u32,
}

impl Slot {
    const VACANT: Slot = Slot {
        key: 0,
        tat: 0,
        active: 0,
        home: EMPTY,
    };

    fn is_empty(&self) -> bool {
        self.home == EMPTY
    }
}

/// Where a key is, or where it would go.
enum Probe {
    Found(usize),
    Vacant(usize),
}

/// One shard: at most `capacity` keys in `slots`.
#[derive(Debug)]
pub(super) struct Shard {
    slots: Box<[Slot]>,
    capacity: usize,
    /// Keys held.
    len: usize,
    /// Keys with `active > 0` (never evicted).
    busy: usize,
    /// Where the next eviction scan starts.
    hand: usize,
    /// The latest clock reading an `acquire` brought (µs); a release has no
    /// clock of its own and judges "drained" by this one.
    now_us: u64,
}

impl Shard {
    /// A shard for `capacity` keys (at least 1), its slots allocated now.
    pub(super) fn new(capacity: usize) -> Shard {
        let capacity = capacity.max(1);
        let n = (capacity * SLOTS_NUM).div_ceil(SLOTS_DEN).max(capacity + 1);
        Shard {
            slots: vec![Slot::VACANT; n].into_boxed_slice(),
            capacity,
            len: 0,
            busy: 0,
            hand: 0,
            now_us: 0,
        }
    }

    /// Keys held now.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Bytes of the slot array.
    pub(super) fn bytes(&self) -> usize {
        self.slots.len() * size_of::<Slot>()
    }

    /// Admits one connection for `key` (whose hash's low 32 bits are
    /// `hash`) at `now_us`, or says why not. A refusal changes nothing but
    /// the shard's idea of the time.
    pub(super) fn acquire(
        &mut self,
        key: u128,
        hash: u32,
        limits: &KeyLimits,
        now_us: u64,
    ) -> Result<(), Over> {
        self.now_us = self.now_us.max(now_us);
        let home = self.home(hash);
        match self.probe(key, home) {
            Some(Probe::Found(i)) => {
                let slot = &mut self.slots[i];
                slot.tat = admit(limits, slot.tat, slot.active, now_us)?;
                if slot.active == 0 {
                    self.busy += 1;
                }
                slot.active = slot.active.saturating_add(1);
                Ok(())
            }
            Some(Probe::Vacant(_)) => {
                // Decide as for a new key before making room for it, so a
                // refusal evicts nobody.
                let tat = admit(limits, 0, 0, now_us)?;
                if self.len >= self.capacity && !self.evict() {
                    return Err(Over::Full);
                }
                // Eviction shifts slots about: look again.
                let Some(Probe::Vacant(i)) = self.probe(key, home) else {
                    return Err(Over::Full);
                };
                self.slots[i] = Slot {
                    key,
                    tat,
                    active: 1,
                    home: home as u32,
                };
                self.len += 1;
                self.busy += 1;
                Ok(())
            }
            None => Err(Over::Full),
        }
    }

    /// Releases one connection of `key`; the key goes when it was the last
    /// one and its bucket has drained.
    pub(super) fn release(&mut self, key: u128, hash: u32) {
        let Some(Probe::Found(i)) = self.probe(key, self.home(hash)) else {
            return;
        };
        let slot = &mut self.slots[i];
        if slot.active == 0 {
            return;
        }
        slot.active -= 1;
        if slot.active == 0 {
            self.busy = self.busy.saturating_sub(1);
            if slot.tat <= self.now_us {
                self.remove(i);
            }
        }
    }

    /// Open connections of `key`.
    pub(super) fn active(&self, key: u128, hash: u32) -> u32 {
        match self.probe(key, self.home(hash)) {
            Some(Probe::Found(i)) => self.slots[i].active,
            _ => 0,
        }
    }

    /// Whether `key` is held.
    #[cfg(test)]
    pub(super) fn contains(&self, key: u128, hash: u32) -> bool {
        matches!(self.probe(key, self.home(hash)), Some(Probe::Found(_)))
    }

    /// The slot `hash` maps to: the high half of `hash × n` (Lemire's
    /// multiply-shift), so `n` need not be a power of two.
    fn home(&self, hash: u32) -> usize {
        ((u64::from(hash) * self.slots.len() as u64) >> 32) as usize
    }

    /// Walks from `home` to `key` or to the first empty slot. `None` only
    /// if the array had no empty slot, which `capacity < slots` rules out.
    fn probe(&self, key: u128, home: usize) -> Option<Probe> {
        let n = self.slots.len();
        let mut i = home;
        for _ in 0..n {
            let slot = &self.slots[i];
            if slot.is_empty() {
                return Some(Probe::Vacant(i));
            }
            if slot.key == key {
                return Some(Probe::Found(i));
            }
            i = next(i, n);
        }
        None
    }

    /// Removes the key in slot `i`, shifting later keys of its cluster back
    /// into the hole when that keeps them reachable from their homes.
    fn remove(&mut self, i: usize) {
        let n = self.slots.len();
        let mut hole = i;
        let mut j = i;
        for _ in 0..n {
            j = next(j, n);
            let slot = self.slots[j];
            if slot.is_empty() {
                break;
            }
            // `slot` may fill the hole if the hole lies on its probe path,
            // from its home up to `j`.
            if distance(slot.home as usize, j, n) >= distance(hole, j, n) {
                self.slots[hole] = slot;
                hole = j;
            }
        }
        self.slots[hole] = Slot::VACANT;
        self.len -= 1;
    }

    /// Makes room for one key by evicting an idle one (no connection open):
    /// the first drained one met (its state says nothing a new entry would
    /// not), else the one with the oldest arrival time among the idle ones
    /// in the next [`SCAN`] slots, which forgives it at most one burst.
    /// Scans further only while it has met no idle key at all. `false`:
    /// every key has a connection open.
    fn evict(&mut self) -> bool {
        if self.busy >= self.len {
            return false;
        }
        let n = self.slots.len();
        let mut i = self.hand % n;
        let mut victim: Option<(usize, u64)> = None;
        for scanned in 1..=n {
            let slot = &self.slots[i];
            let here = i;
            i = next(i, n);
            if slot.is_empty() || slot.active > 0 {
                // Not a candidate.
            } else if slot.tat <= self.now_us {
                victim = Some((here, slot.tat));
                break;
            } else if victim.is_none_or(|(_, tat)| slot.tat < tat) {
                victim = Some((here, slot.tat));
            }
            if scanned >= SCAN && victim.is_some() {
                break;
            }
        }
        self.hand = i;
        match victim {
            Some((v, _)) => {
                self.remove(v);
                true
            }
            None => false,
        }
    }

    /// Panics unless the shard is consistent: counts right, every key
    /// reachable from its home, no key twice.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let n = self.slots.len();
        let mut len = 0;
        let mut busy = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.is_empty() {
                continue;
            }
            len += 1;
            busy += usize::from(slot.active > 0);
            assert!((slot.home as usize) < n, "home out of range");
            // Nothing empty between its home and it.
            let mut k = slot.home as usize;
            while k != i {
                assert!(!self.slots[k].is_empty(), "slot {i} unreachable");
                assert_ne!(self.slots[k].key, slot.key, "key twice");
                k = next(k, n);
            }
        }
        assert_eq!(len, self.len, "len");
        assert_eq!(busy, self.busy, "busy");
        assert!(self.len <= self.capacity, "over capacity");
    }
}

/// The slot after `i` in an array of `n`.
fn next(i: usize, n: usize) -> usize {
    if i + 1 == n { 0 } else { i + 1 }
}

/// Steps forward from `from` to `to` in an array of `n`, wrapping.
fn distance(from: usize, to: usize, n: usize) -> usize {
    if to >= from { to - from } else { to + n - from }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_32_bytes() {
        assert_eq!(size_of::<Slot>(), 32);
    }

    #[test]
    fn load_stays_at_most_three_quarters() {
        for capacity in 1..200 {
            let s = Shard::new(capacity);
            assert!(s.slots.len() > capacity);
            assert!(s.slots.len() * 3 >= capacity * 4, "{capacity}");
        }
    }

    /// All keys on one home: the worst cluster, then removals from its
    /// middle, its start and its wrapped end keep the rest reachable.
    #[test]
    fn removal_keeps_a_wrapped_cluster_reachable() {
        let mut s = Shard::new(12); // 16 slots
        let n = s.slots.len();
        let limits = KeyLimits {
            max_concurrent: Some(1),
            rate: None,
        };
        // hash u32::MAX maps to the last slot, so the cluster wraps.
        let hash = u32::MAX;
        assert_eq!(s.home(hash), n - 1);
        for key in 0..12u128 {
            s.acquire(key, hash, &limits, 0).unwrap();
        }
        s.check();
        for key in [5u128, 0, 11, 6] {
            s.release(key, hash);
            s.check();
            assert!(!s.contains(key, hash));
        }
        for key in [1u128, 2, 3, 4, 7, 8, 9, 10] {
            assert!(s.contains(key, hash), "{key}");
            assert_eq!(s.active(key, hash), 1);
        }
    }
}
