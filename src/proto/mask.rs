//! In-place payload masking (RFC 6455 §5.3) and the per-worker key generator.
//!
//! [`apply_mask`] XORs a 4-byte key over a slice starting at any key phase,
//! so a payload that arrives in several reads is (un)masked chunk by chunk
//! with the payload offset carried over. [`remask`] turns a client's masking
//! into a fresh key's in one pass (XOR with `old ^ new`).
//!
//! Below 128 bytes (chat messages, control frames) a 4-byte-word loop does
//! the work with no dispatch. Above, the fast path works 32 bytes at a time
//! on a repeated key pattern, a loop LLVM turns into vector XORs; on x86-64
//! the same loop is also compiled with AVX2 enabled and picked at run time.
//! [`apply_mask_scalar`] is the plain byte loop every fast path is tested
//! against.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// Below this many bytes the word loop beats the AVX2 dispatch (measured:
/// `benches/mask.rs`).
const SMALL: usize = 128;

/// XORs `key` over `buf` in place, as if `buf` started at byte `offset` of
/// the payload (only `offset % 4` matters). Masking and unmasking are the
/// same operation.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    let key = rotate_key(key, offset);
    if buf.len() < SMALL {
        return xor_words(buf, key);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked on the line above, which is
        // the only requirement of `xor_pattern_avx2`.
        unsafe { xor_pattern_avx2(buf, key) };
        return;
    }
    xor_pattern(buf, key);
}

/// Changes the masking of `buf` from `old` to `new` in one pass: the bytes
/// end up as if unmasked with `old` and masked with `new`, both at `offset`.
#[inline]
pub fn remask(buf: &mut [u8], old: [u8; 4], new: [u8; 4], offset: u64) {
    let delta = u32::from_ne_bytes(old) ^ u32::from_ne_bytes(new);
    apply_mask(buf, delta.to_ne_bytes(), offset);
}

/// The reference implementation: one byte at a time.
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[((offset as usize).wrapping_add(i)) & 3];
    }
}

/// The key as seen from payload byte `offset`: `rotated[i] == key[(offset + i) % 4]`.
#[inline]
fn rotate_key(key: [u8; 4], offset: u64) -> [u8; 4] {
    // As a little-endian integer, byte `p` moves to the front when the
    // value is rotated right by `8 * p` bits (independent of the host's
    // endianness: both conversions are little-endian).
    u32::from_le_bytes(key)
        .rotate_right(8 * (offset & 3) as u32)
        .to_le_bytes()
}

/// XOR four bytes at a time; the last 0–3 bytes one by one.
#[inline(always)]
fn xor_words(buf: &mut [u8], key: [u8; 4]) {
    let k = u32::from_ne_bytes(key);
    let mut words = buf.chunks_exact_mut(4);
    for w in &mut words {
        let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) ^ k;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// XOR with the key repeated over 32-byte blocks; the tail is done bytewise.
#[inline(always)]
fn xor_pattern(buf: &mut [u8], key: [u8; 4]) {
    let k = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for word in block.chunks_exact_mut(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            word.copy_from_slice(&(u64::from_ne_bytes(w) ^ k).to_ne_bytes());
        }
    }
    // The tail starts at a multiple of 32, so the key phase is unchanged.
    xor_words(blocks.into_remainder(), key);
}

/// [`xor_pattern`] compiled with AVX2, for 32-byte vector XORs.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn xor_pattern_avx2(buf: &mut [u8], key: [u8; 4]) {
    xor_pattern(buf, key)
}

/// Masking keys for frames the proxy sends to backends: unpredictable
/// (RFC 6455 §5.3, §10.3), cheap enough to draw one per frame.
///
/// ChaCha8 seeded from the operating system's CSPRNG; one per worker, so
/// drawing a key takes no lock.
#[derive(Debug, Clone)]
pub struct MaskKeyGen {
    rng: ChaCha8Rng,
}

impl MaskKeyGen {
    /// A generator seeded from the OS CSPRNG (`getrandom`).
    pub fn from_os_rng() -> Self {
        MaskKeyGen {
            rng: ChaCha8Rng::from_entropy(),
        }
    }

    /// A deterministic generator, for tests and benchmarks only.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        MaskKeyGen {
            rng: ChaCha8Rng::from_seed(seed),
        }
    }

    /// The next key.
    #[inline]
    pub fn next_key(&mut self) -> [u8; 4] {
        self.rng.next_u32().to_ne_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn equals_scalar_for_every_length_alignment_and_phase() {
        let key = [0x6d, 0xb6, 0xb2, 0x80];
        let data = pattern(300 + 64);
        for len in 0..=300 {
            for align in 0..32 {
                for offset in 0..4u64 {
                    let mut fast = data[align..align + len].to_vec();
                    let mut slow = fast.clone();
                    // Work on the original allocation's alignment, not a fresh Vec's.
                    let mut in_place = data.clone();
                    apply_mask(&mut fast, key, offset);
                    apply_mask(&mut in_place[align..align + len], key, offset);
                    apply_mask_scalar(&mut slow, key, offset);
                    assert_eq!(fast, slow, "len {len} align {align} offset {offset}");
                    assert_eq!(&in_place[align..align + len], &slow[..]);
                }
            }
        }
    }

    #[test]
    fn rfc_hello() {
        let mut b = *b"Hello";
        apply_mask(&mut b, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(b, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn offset_only_matters_mod_4() {
        let mut a = pattern(100);
        let mut b = a.clone();
        apply_mask(&mut a, [1, 2, 3, 4], 1);
        apply_mask(&mut b, [1, 2, 3, 4], 4_000_000_001);
        assert_eq!(a, b);
    }

    #[test]
    fn keygen_differs_and_is_seeded() {
        let mut a = MaskKeyGen::from_os_rng();
        let keys: Vec<_> = (0..64).map(|_| a.next_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        assert!(distinct.len() > 60);
        let mut b = MaskKeyGen::from_os_rng();
        assert_ne!(
            keys[..8],
            (0..8).map(|_| b.next_key()).collect::<Vec<_>>()[..]
        );
        let mut c = MaskKeyGen::from_seed([1; 32]);
        let mut d = MaskKeyGen::from_seed([1; 32]);
        assert_eq!(c.next_key(), d.next_key());
    }

    proptest! {
        #[test]
        fn mask_in_chunks_equals_scalar(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 4]>(),
            start in 0u64..8,
            splits in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut expect = data.clone();
            apply_mask_scalar(&mut expect, key, start);
            // Mask in chunks cut at arbitrary points, carrying the offset.
            let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(data.len() + 1)).collect();
            cuts.push(0);
            cuts.push(data.len());
            cuts.sort_unstable();
            let mut got = data.clone();
            for w in cuts.windows(2) {
                apply_mask(&mut got[w[0]..w[1]], key, start + w[0] as u64);
            }
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn remask_equals_unmask_then_mask(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            old in any::<[u8; 4]>(),
            new in any::<[u8; 4]>(),
            offset in 0u64..8,
            split in any::<prop::sample::Index>(),
        ) {
            let mut expect = data.clone();
            apply_mask_scalar(&mut expect, old, offset);
            apply_mask_scalar(&mut expect, new, offset);
            let mut got = data.clone();
            let cut = split.index(data.len() + 1);
            remask(&mut got[..cut], old, new, offset);
            remask(&mut got[cut..], old, new, offset + cut as u64);
            prop_assert_eq!(got, expect);
        }
    }
}
