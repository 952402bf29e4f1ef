//! A timer wheel for a worker's relayed connections: one entry per
//! connection (its earliest deadline), intrusive links in a table indexed
//! by the connection's slot, so arming, moving and cancelling a timer are
//! O(1) and allocate nothing, and no timer object exists per connection.
//!
//! Sans-IO like the relay core: times are the core's microseconds, given
//! in. A deadline fires at the first tick at or after it (never early);
//! [`Wheel::next_due`] tells the driver how long it may sleep. Deadlines
//! more than a turn of the wheel ahead stay in their slot and are passed
//! over until their turn comes.

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// The tick it fires at.
    at: u64,
    prev: u32,
    next: u32,
    armed: bool,
}

impl Default for Node {
    fn default() -> Self {
        Node {
            at: 0,
            prev: NIL,
            next: NIL,
            armed: false,
        }
    }
}

/// Deadlines of connections `0..capacity`, at a tick's granularity.
#[derive(Debug)]
pub struct Wheel {
    tick_us: u64,
    /// Head of each slot's list.
    slots: Box<[u32]>,
    /// Which slots have entries (one bit per slot).
    occupied: Box<[u64]>,
    nodes: Vec<Node>,
    /// Every tick before this one has been processed.
    now_tick: u64,
    armed: usize,
}

impl Wheel {
    /// A wheel of `slots` slots (a power of two, at least 64) of `tick_us`
    /// each, starting at time `now_us`.
    pub fn new(tick_us: u64, slots: usize, now_us: u64) -> Self {
        assert!(slots.is_power_of_two() && slots >= 64 && tick_us > 0);
        Wheel {
            tick_us,
            slots: vec![NIL; slots].into_boxed_slice(),
            occupied: vec![0; slots / 64].into_boxed_slice(),
            nodes: Vec::new(),
            now_tick: now_us / tick_us,
            armed: 0,
        }
    }

    /// Armed deadlines.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// No deadline armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// Arms (or moves) the deadline of connection `id` to `at_us`. A time
    /// already past fires at the next [`Wheel::advance`].
    pub fn set(&mut self, id: u32, at_us: u64) {
        let i = id as usize;
        if i >= self.nodes.len() {
            self.nodes.resize(i + 1, Node::default());
        }
        if self.nodes[i].armed {
            self.unlink(id);
        }
        let at = at_us.div_ceil(self.tick_us).max(self.now_tick);
        let slot = self.slot(at);
        let head = self.slots[slot];
        self.nodes[i] = Node {
            at,
            prev: NIL,
            next: head,
            armed: true,
        };
        if head != NIL {
            self.nodes[head as usize].prev = id;
        }
        self.slots[slot] = id;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.armed += 1;
    }

    /// Disarms connection `id`'s deadline, if armed.
    pub fn cancel(&mut self, id: u32) {
        if self.nodes.get(id as usize).is_some_and(|n| n.armed) {
            self.unlink(id);
        }
    }

    /// The deadline armed for `id`, rounded up to its tick (µs).
    pub fn deadline(&self, id: u32) -> Option<u64> {
        self.nodes
            .get(id as usize)
            .filter(|n| n.armed)
            .map(|n| n.at * self.tick_us)
    }

    /// When the driver must next call [`Wheel::advance`] (µs): the start of
    /// the first tick whose slot has entries. An entry of a later turn may
    /// make this early; never late.
    pub fn next_due(&self) -> Option<u64> {
        if self.armed == 0 {
            return None;
        }
        let n = self.slots.len();
        let start = self.slot(self.now_tick);
        // Scan the bitmap from `start`, wrapping once.
        for k in 0..=self.occupied.len() {
            let w = (start / 64 + k) % self.occupied.len();
            let mut bits = self.occupied[w];
            if k == 0 {
                bits &= !0u64 << (start % 64);
            } else if k == self.occupied.len() {
                bits &= !(!0u64 << (start % 64));
            }
            if bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                let ahead = (slot + n - start) % n;
                return Some((self.now_tick + ahead as u64) * self.tick_us);
            }
        }
        None
    }

    /// Fires every deadline at or before `now_us`: their ids are pushed to
    /// `fired` (disarmed; the driver re-arms what the core still needs).
    pub fn advance(&mut self, now_us: u64, fired: &mut Vec<u32>) {
        let target = now_us / self.tick_us;
        if target < self.now_tick {
            return;
        }
        let n = self.slots.len() as u64;
        // More than a turn passed: every slot once.
        let ticks = (target - self.now_tick + 1).min(n);
        for t in self.now_tick..self.now_tick + ticks {
            let slot = self.slot(t);
            let mut id = self.slots[slot];
            while id != NIL {
                let node = self.nodes[id as usize];
                if node.at <= target {
                    self.unlink(id);
                    fired.push(id);
                }
                id = node.next;
            }
        }
        self.now_tick = target + 1;
    }

    fn slot(&self, tick: u64) -> usize {
        (tick & (self.slots.len() as u64 - 1)) as usize
    }

    fn unlink(&mut self, id: u32) {
        let node = self.nodes[id as usize];
        let slot = self.slot(node.at);
        if node.prev == NIL {
            self.slots[slot] = node.next;
        } else {
            self.nodes[node.prev as usize].next = node.next;
        }
        if node.next != NIL {
            self.nodes[node.next as usize].prev = node.prev;
        }
        if self.slots[slot] == NIL {
            self.occupied[slot / 64] &= !(1 << (slot % 64));
        }
        self.nodes[id as usize] = Node::default();
        self.armed -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn fires_at_the_first_tick_at_or_after_the_deadline() {
        let mut w = Wheel::new(1000, 64, 0);
        w.set(3, 2500);
        assert_eq!(w.next_due(), Some(3000));
        let mut fired = Vec::new();
        w.advance(2999, &mut fired);
        assert!(fired.is_empty(), "never early");
        w.advance(3000, &mut fired);
        assert_eq!(fired, [3]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn a_deadline_turns_ahead_waits_for_its_turn() {
        // 64 slots of 1 ms: 200 ms is three turns ahead.
        let mut w = Wheel::new(1000, 64, 0);
        w.set(1, 200_000);
        let mut fired = Vec::new();
        let mut t = 0;
        while fired.is_empty() {
            t = w.next_due().unwrap();
            w.advance(t, &mut fired);
        }
        assert_eq!((t, fired.as_slice()), (200_000, &[1][..]));
    }

    #[test]
    fn moving_and_cancelling() {
        let mut w = Wheel::new(1000, 64, 0);
        w.set(0, 5000);
        w.set(1, 5000);
        w.set(2, 5000);
        w.set(1, 9000); // moved out of the middle of a slot's list
        w.cancel(0);
        w.cancel(0);
        assert_eq!(w.len(), 2);
        assert_eq!(w.deadline(1), Some(9000));
        let mut fired = Vec::new();
        w.advance(10_000_000, &mut fired);
        fired.sort_unstable();
        assert_eq!(fired, [1, 2]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u32, u64),
        Cancel(u32),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..40, 0u64..300_000).prop_map(|(id, d)| Op::Set(id, d)),
            (0u32..40).prop_map(Op::Cancel),
            (0u64..100_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a plain map of deadlines: the same ids fire at the same
        /// advances, and `next_due` is never later than the earliest.
        #[test]
        fn behaves_as_a_map_of_deadlines(ops in proptest::collection::vec(op(), 1..200)) {
            let tick = 1000;
            let mut w = Wheel::new(tick, 64, 0);
            let mut model: BTreeMap<u32, u64> = BTreeMap::new();
            let mut now = 0u64;
            // Ticks before this one are processed.
            let mut done = 0u64;
            let mut fired = Vec::new();
            for op in ops {
                match op {
                    Op::Set(id, d) => {
                        w.set(id, now + d);
                        // Rounded up to a tick, and not before the next one
                        // to be processed.
                        let at = ((now + d).div_ceil(tick)).max(done) * tick;
                        model.insert(id, at);
                    }
                    Op::Cancel(id) => {
                        w.cancel(id);
                        model.remove(&id);
                    }
                    Op::Advance(d) => {
                        match (w.next_due(), model.values().min()) {
                            (Some(due), Some(&earliest)) => {
                                prop_assert!(due <= earliest, "next_due {due} after {earliest}");
                            }
                            (None, None) => {}
                            (due, earliest) => prop_assert!(false, "next_due {due:?}, earliest {earliest:?}"),
                        }
                        now += d;
                        fired.clear();
                        w.advance(now, &mut fired);
                        done = done.max(now / tick + 1);
                        fired.sort_unstable();
                        let due: Vec<u32> = model.iter().filter(|&(_, &at)| at <= now).map(|(&id, _)| id).collect();
                        model.retain(|_, at| *at > now);
                        prop_assert_eq!(&fired, &due);
                    }
                }
                prop_assert_eq!(w.len(), model.len());
            }
        }
    }
}
