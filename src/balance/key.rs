//! Stable 64-bit hashes: of a request's hash key (a header, a cookie, the
//! client address) and of a server's address (its sticky-cookie id).
//!
//! FNV-1a over the bytes, then the splitmix64 finalizer so that every output
//! bit depends on every input bit (FNV-1a alone leaves the high bits of short
//! keys poorly mixed, and the Maglev table is indexed modulo a prime). Both
//! steps are fixed: the same bytes hash the same on every build, host and
//! restart, which sticky cookies and consistent hashing need. It is not
//! keyed, so it offers no protection against chosen keys; a client that
//! picks its keys can aim at one server, and the bounded-load rule of
//! [`HashPicker`](super::HashPicker) is what limits the damage.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable hash of a key: FNV-1a 64, then the splitmix64 finalizer.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// The splitmix64 finalizer: a bijection on `u64` with full avalanche.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_values() {
        // Pinned: a change here breaks every sticky cookie in the field.
        assert_eq!(key_hash(b""), mix64(FNV_OFFSET));
        assert_eq!(key_hash(b"10.0.0.1:8080"), key_hash(b"10.0.0.1:8080"));
        assert_ne!(key_hash(b"10.0.0.1:8080"), key_hash(b"10.0.0.2:8080"));
        // FNV-1a("a") = 0xaf63dc4c8601ec8c, then splitmix64's finalizer;
        // computed independently (Python) from the published constants.
        assert_eq!(key_hash(b"a"), 0x02c0_bdbf_4814_20f8);
    }
}
