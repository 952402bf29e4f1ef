//! Limits keyed by client IP or identity, exact across workers: concurrent
//! connections and a handshake rate (GCRA) per key, in a sharded table
//! touched only at handshake and close. The table is bounded: idle keys
//! (no connection open, rate bucket drained) are evicted, so spraying
//! addresses cannot exhaust memory.
//!
//! One [`KeyedLimiter`] is shared (an `Arc`) by every worker, so a client
//! whose connections land on several workers (`SO_REUSEPORT`) is counted
//! once. [`KeyedLimiter::acquire`] decides at the handshake and hands back a
//! [`Permit`]; dropping the permit, on any thread, closes the connection's
//! count. The table reads no clock: the caller passes a monotonic
//! millisecond time.
//!
//! The table is split into up to 64 shards by the key's hash, each a mutex
//! over a fixed array (see `shard.rs`): at most `capacity` keys in all,
//! about 44 bytes each. When a shard is full, a new key evicts an idle key
//! (first choice: one whose bucket has drained, which loses nothing; else
//! the one whose bucket drains soonest among those scanned, which forgives
//! it at most one burst). Only a shard whose every key has a connection
//! open answers [`Over::Full`].

mod shard;

#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use self::shard::Shard;

/// A handshake rate as a GCRA: one handshake per `interval_us` on average,
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds per handshake; 0: no rate limit.
    pub interval_us: u64,
    /// Handshakes allowed at once (0 counts as 1).
    pub burst: u32,
}

impl Rate {
    /// `count` per `per` (10 per second, say) with `burst` at once. A
    /// `count` of 0 counts as 1; the interval is at least 1 µs.
    pub fn new(count: u64, per: Duration, burst: u32) -> Rate {
        let interval = per.as_micros() / u128::from(count.max(1));
        Rate {
            interval_us: u64::try_from(interval).unwrap_or(u64::MAX).max(1),
            burst: burst.max(1),
        }
    }

    /// The bucket's theoretical arrival time after one more handshake at
    /// `now_us`, or how long until there is room for it.
    fn next_tat(self, tat: u64, now_us: u64) -> Result<u64, Over> {
        if self.interval_us == 0 {
            return Ok(tat);
        }
        let next = tat.max(now_us).saturating_add(self.interval_us);
        let tolerance = self
            .interval_us
            .saturating_mul(u64::from(self.burst.max(1)));
        let ahead = next - now_us;
        if ahead <= tolerance {
            Ok(next)
        } else {
            Err(Over::Rate {
                retry_after_ms: (ahead - tolerance).div_ceil(1000),
            })
        }
    }
}

/// The limits one key is held to; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Connections open at once.
    pub max_concurrent: Option<u32>,
    /// Handshakes over time.
    pub rate: Option<Rate>,
}

/// Why [`KeyedLimiter::acquire`] refused; each knows its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Over {
    /// The key is at `max_concurrent` (429).
    Connections,
    /// The key is over its handshake rate; there is room again after this
    /// long (429 with `Retry-After`, [`Over::retry_after_secs`]).
    Rate {
        /// Milliseconds until one more handshake fits (at least 1).
        retry_after_ms: u64,
    },
    /// The key's shard is full of keys with connections open (503).
    Full,
}

impl Over {
    /// The HTTP status to answer with: 429 or 503.
    pub const fn status(&self) -> u16 {
        match self {
            Self::Connections | Self::Rate { .. } => 429,
            Self::Full => 503,
        }
    }

    /// The `Retry-After` value (whole seconds, rounded up, at least 1) for
    /// [`Over::Rate`].
    pub const fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Rate { retry_after_ms } => {
                let secs = retry_after_ms.div_ceil(1000);
                Some(if secs == 0 { 1 } else { secs })
            }
            Self::Connections | Self::Full => None,
        }
    }
}

impl fmt::Display for Over {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connections => f.write_str("too many connections"),
            Self::Rate { .. } => f.write_str("handshake rate exceeded"),
            Self::Full => f.write_str("limiter table full"),
        }
    }
}

/// Decides one acquire for a key in state (`tat`, `active`): the new `tat`,
/// or the refusal. Rate first, then the concurrency cap.
fn admit(limits: &KeyLimits, tat: u64, active: u32, now_us: u64) -> Result<u64, Over> {
    let tat = match limits.rate {
        Some(rate) => rate.next_tat(tat, now_us)?,
        None => tat,
    };
    if limits.max_concurrent.is_some_and(|max| active >= max) || active == u32::MAX {
        return Err(Over::Connections);
    }
    Ok(tat)
}

/// The most keys a table tracks; a larger `capacity` is cut to this.
pub const MAX_CAPACITY: usize = 1 << 24;
/// The fewest keys a table tracks; a smaller `capacity` is raised to this.
pub const MIN_CAPACITY: usize = 16;
const MAX_SHARDS: usize = 64;
const MIN_KEYS_PER_SHARD: usize = 16;

/// A shard on its own pair of cache lines, so that workers locking
/// neighbouring shards do not contend for one line.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The shared table of per-key limits. See the module documentation.
pub struct KeyedLimiter {
    shards: Box<[Padded]>,
    hasher: RandomState,
    capacity: usize,
}

impl fmt::Debug for KeyedLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("capacity", &self.capacity)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl KeyedLimiter {
    /// A table for at most `capacity` keys in all, between [`MIN_CAPACITY`]
    /// and [`MAX_CAPACITY`], rounded up to whole shards
    /// ([`KeyedLimiter::capacity`] says how many). Up to 64 shards of at
    /// least 16 keys each; all memory is allocated here.
    pub fn new(capacity: usize) -> Arc<KeyedLimiter> {
        let capacity = capacity.clamp(MIN_CAPACITY, MAX_CAPACITY);
        let shards = (capacity / MIN_KEYS_PER_SHARD).clamp(1, MAX_SHARDS);
        // The largest power of two not above it.
        let shards = 1usize << (usize::BITS - 1 - shards.leading_zeros());
        let per_shard = capacity.div_ceil(shards);
        Arc::new(KeyedLimiter {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::new(per_shard))))
                .collect(),
            hasher: RandomState::new(),
            capacity: shards * per_shard,
        })
    }

    /// Admits one handshake and connection for `key` at `now_ms` (a
    /// monotonic clock in milliseconds): checks the rate, then the
    /// concurrency cap, then makes room for a new key. A refused attempt
    /// changes nothing (it does not use up the rate). On success the key's
    /// count of open connections is one higher until the [`Permit`] drops.
    ///
    /// With no limit at all in `limits`, nothing is tracked: the permit is
    /// a token that releases nothing.
    pub fn acquire(
        self: &Arc<Self>,
        key: u128,
        limits: &KeyLimits,
        now_ms: u64,
    ) -> Result<Permit, Over> {
        if limits.max_concurrent.is_none() && limits.rate.is_none() {
            return Ok(Permit { table: None, key });
        }
        let (shard, hash) = self.shard(key);
        lock(shard).acquire(key, hash, limits, now_ms.saturating_mul(1000))?;
        Ok(Permit {
            table: Some(Arc::clone(self)),
            key,
        })
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.0).len()).sum()
    }

    /// Open connections counted for `key`.
    pub fn active(&self, key: u128) -> u32 {
        let (shard, hash) = self.shard(key);
        lock(shard).active(key, hash)
    }

    /// Keys the table can track: the `capacity` asked for, clamped and
    /// rounded up to whole shards.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes the table allocates per key of capacity: every shard's slot
    /// array (32-byte slots at a load of at most 3/4) plus the shards
    /// themselves (128 bytes each), divided by [`KeyedLimiter::capacity`],
    /// rounded up. About 44; at most 53 for any capacity.
    pub fn bytes_per_key(&self) -> usize {
        let slots: usize = self.shards.iter().map(|s| lock(&s.0).bytes()).sum();
        let shards = self.shards.len() * size_of::<Padded>();
        (slots + shards).div_ceil(self.capacity)
    }

    /// The shard `key` lives in and the low half of its hash (the slot).
    fn shard(&self, key: u128) -> (&Mutex<Shard>, u32) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        (&self.shards[index].0, hash as u32)
    }

    fn release(&self, key: u128) {
        let (shard, hash) = self.shard(key);
        lock(shard).release(key, hash);
    }

    /// Whether `key` has an entry.
    #[cfg(test)]
    fn contains(&self, key: u128) -> bool {
        let (shard, hash) = self.shard(key);
        lock(shard).contains(key, hash)
    }

    /// Checks every shard's consistency.
    #[cfg(test)]
    fn check(&self) {
        for s in self.shards.iter() {
            lock(&s.0).check();
        }
    }
}

/// Locks a shard. Nothing panics while holding the lock, but a poisoned
/// shard is still consistent, so it is used rather than propagated.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One open connection of a key; dropping it, on any thread, releases it.
pub struct Permit {
    /// `None` when nothing is tracked (no limits).
    table: Option<Arc<KeyedLimiter>>,
    key: u128,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(table) = self.table.take() {
            table.release(self.key);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("key", &format_args!("{:#034x}", self.key))
            .field("tracked", &self.table.is_some())
            .finish()
    }
}

/// The key for a client address: the IPv6 address, IPv4 as its mapped form
/// (`::ffff:a.b.c.d`), so an IPv4 client is one key whichever way the
/// socket reports it.
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Hashed with the identity so the digest is this use's alone.
const IDENTITY_DOMAIN: &[u8] = b"wsedge limiter identity\0";

/// The key for an authenticated identity: 120 bits of SHA-256 under the
/// top byte `0x01`. As an IPv6 address that is in `0100::/8`, which is
/// reserved and never a client's, so an identity key is never an
/// [`ip_key`] and the two kinds may share a table.
pub fn identity_key(identity: &str) -> u128 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(IDENTITY_DOMAIN);
    ctx.update(identity.as_bytes());
    let digest = ctx.finish();
    let mut head = [0u8; 16];
    for (h, d) in head.iter_mut().zip(digest.as_ref()) {
        *h = *d;
    }
    (u128::from_be_bytes(head) >> 8) | (1 << 120)
}
