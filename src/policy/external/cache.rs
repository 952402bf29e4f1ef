//! Decisions per credential, per worker: a bounded map from a digest of the
//! credential to the service's last decision, until its time to live runs
//! out. Time is a parameter; nothing here reads a clock.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use ring::digest;

use super::request::{forward_names, occurrences};
use super::{AuthRequest, Decision, ExternalSettings};

/// A cache key: SHA-256 of the auth block and the credential.
type Key = [u8; 32];

/// A worker's cache of the service's decisions (held in an `Rc`; the
/// worker is single-threaded, so the state sits in a `RefCell`).
///
/// At most `capacity` entries: a new one first evicts an expired entry if
/// there is one, else the oldest. Only [`Decision::Allow`] and
/// [`Decision::Deny`] are kept; an unavailable service is asked again.
#[derive(Debug)]
pub struct DecisionCache {
    capacity: usize,
    entries: RefCell<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Key, Entry>,
    /// Insertion order: sequence number → key.
    by_age: BTreeMap<u64, Key>,
    /// Expiry order: (expiry, sequence number) → key.
    by_expiry: BTreeMap<(Instant, u64), Key>,
    /// The next sequence number.
    next: u64,
}

#[derive(Debug)]
struct Entry {
    decision: Decision,
    expires: Instant,
    seq: u64,
}

impl Entries {
    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.by_age.remove(&entry.seq);
        self.by_expiry.remove(&(entry.expires, entry.seq));
        Some(entry)
    }

    /// Makes room for one entry: an expired one goes if there is one, else
    /// the oldest. `false` when there was nothing to evict.
    fn evict_one(&mut self, now: Instant) -> bool {
        let expired = self
            .by_expiry
            .first_key_value()
            .filter(|((expires, _), _)| *expires <= now)
            .map(|(_, key)| *key);
        let victim = expired.or_else(|| self.by_age.first_key_value().map(|(_, key)| *key));
        victim.and_then(|key| self.remove(&key)).is_some()
    }
}

impl DecisionCache {
    /// An empty cache of at most `capacity` entries (0: nothing is kept).
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache {
            capacity,
            entries: RefCell::new(Entries::default()),
        }
    }

    /// The cache key for `req` under the auth block numbered `scope` (two
    /// blocks never share decisions): SHA-256 over the scope, the service's
    /// URL and, for each forwarded header name, the values the service is
    /// sent (each length-prefixed, so no two inputs run together).
    ///
    /// The key is the credential only: a service whose decision depends on
    /// the client's method, target or address should be given
    /// `cache_ttl = 0`.
    pub fn key(scope: usize, settings: &ExternalSettings, req: &AuthRequest<'_>) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_le_bytes());
            ctx.update(bytes);
        };
        field(b"wsedge external auth v1");
        field(&(scope as u64).to_le_bytes());
        field(settings.url.as_bytes());
        for name in forward_names(settings) {
            field(name.to_ascii_lowercase().as_bytes());
            for h in occurrences(req, name) {
                field(h.value);
            }
            // Ends this name's values: ("a", ["x"]), ("b", []) differs from
            // ("a", []), ("b", ["x"]).
            field(b"");
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// The decision cached under `key`, if it has not expired by `now`.
    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Decision> {
        let mut entries = self.entries.borrow_mut();
        let expires = entries.map.get(key)?.expires;
        if expires <= now {
            entries.remove(key);
            return None;
        }
        entries.map.get(key).map(|e| e.decision.clone())
    }

    /// Keeps `decision` under `key` until `now + ttl`, replacing what was
    /// there. Nothing is kept for [`Decision::Unavailable`], a zero `ttl`,
    /// a zero capacity, or a `ttl` too far for the clock to represent.
    pub fn put(&self, key: [u8; 32], decision: &Decision, ttl: Duration, now: Instant) {
        if matches!(decision, Decision::Unavailable(_)) || ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let Some(expires) = now.checked_add(ttl) else {
            return;
        };
        let mut entries = self.entries.borrow_mut();
        entries.remove(&key);
        while entries.map.len() >= self.capacity {
            if !entries.evict_one(now) {
                break;
            }
        }
        let seq = entries.next;
        entries.next = seq.wrapping_add(1);
        entries.by_age.insert(seq, key);
        entries.by_expiry.insert((expires, seq), key);
        entries.map.insert(
            key,
            Entry {
                decision: decision.clone(),
                expires,
                seq,
            },
        );
    }

    /// How many entries are held (expired ones not yet evicted included).
    pub fn len(&self) -> usize {
        self.entries.borrow().map.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
