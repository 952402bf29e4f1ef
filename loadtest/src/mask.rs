//! Payload masking (RFC 6455 §5.3) and the source of fresh masking keys.
//!
//! Word-at-a-time in safe code: `chunks_exact` over 8-byte words lets the
//! compiler vectorise; a plain scalar twin is kept for the tests.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// XORs `buf` with `key`, the first byte of `buf` being payload byte 0.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, hence of 4: key offset 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Appends `src` XORed with `key` to `out` (unmask-and-copy in one pass).
pub fn extend_masked(out: &mut Vec<u8>, src: &[u8], key: [u8; 4]) {
    let start = out.len();
    out.extend_from_slice(src);
    apply_mask(&mut out[start..], key);
}

/// Fresh masking keys from a fast CSPRNG seeded from the OS, one per worker.
#[derive(Debug)]
pub struct KeyGen(ChaCha8Rng);

impl KeyGen {
    pub fn from_os() -> Self {
        Self(ChaCha8Rng::from_entropy())
    }

    /// A new generator seeded from this one (one per connection, so that
    /// no borrow is held across an await).
    pub fn fork(&mut self) -> Self {
        let mut seed = [0u8; 32];
        self.0.fill_bytes(&mut seed);
        Self(ChaCha8Rng::from_seed(seed))
    }

    pub fn key(&mut self) -> [u8; 4] {
        self.0.next_u32().to_ne_bytes()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(buf: &mut [u8], key: [u8; 4]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }

    #[test]
    fn matches_scalar_at_every_length_and_alignment() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        for start in 0..8 {
            for len in 0..100 {
                let mut fast = data[start..start + len].to_vec();
                let mut slow = fast.clone();
                apply_mask(&mut fast, key);
                scalar(&mut slow, key);
                assert_eq!(fast, slow, "start {start} len {len}");
                let mut out = vec![9];
                extend_masked(&mut out, &data[start..start + len], key);
                assert_eq!(out[1..], slow[..]);
            }
        }
    }

    #[test]
    fn keys_are_fresh() {
        let mut g = KeyGen::from_os();
        let a = g.key();
        let b = g.key();
        let c = g.key();
        assert!(a != b || b != c);
    }
}
