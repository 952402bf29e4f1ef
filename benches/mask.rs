//! Payload masking: `apply_mask` and `remask` against tungstenite 0.24's
//! `apply_mask_fast32`, at 16 B, 125 B, 1 KiB, 64 KiB and 1 MiB.
//!
//! `cargo bench --bench mask`. Every size prints a `RATIO` line with both
//! throughputs in GB/s and tungstenite's time over ours.

mod support;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsedge::proto::mask::{apply_mask, remask};

/// tungstenite's masking, vendored because its `mask` module is private.
///
/// Copied from tungstenite 0.24.0, `src/protocol/frame/mask.rs`
/// (<https://github.com/snapview/tungstenite-rs>), MIT licence,
/// Copyright (c) 2017 Alexey Galakhov, Daniel Abramov. Only the SAFETY
/// comment and the names are ours.
mod tungstenite_mask {
    /// A safe unoptimized mask application.
    #[inline]
    fn apply_mask_fallback(buf: &mut [u8], mask: [u8; 4]) {
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte ^= mask[i & 3];
        }
    }

    /// Faster version of `apply_mask()` which operates on 4-byte blocks.
    #[inline]
    pub fn apply_mask_fast32(buf: &mut [u8], mask: [u8; 4]) {
        let mask_u32 = u32::from_ne_bytes(mask);

        // SAFETY: every bit pattern is a valid `u32`, so viewing aligned
        // runs of bytes as `u32`s is sound; `align_to_mut` does the aligning.
        let (prefix, words, suffix) = unsafe { buf.align_to_mut::<u32>() };
        apply_mask_fallback(prefix, mask);
        let head = prefix.len() & 3;
        let mask_u32 = if head > 0 {
            if cfg!(target_endian = "big") {
                mask_u32.rotate_left(8 * head as u32)
            } else {
                mask_u32.rotate_right(8 * head as u32)
            }
        } else {
            mask_u32
        };
        for word in words.iter_mut() {
            *word ^= mask_u32;
        }
        apply_mask_fallback(suffix, mask_u32.to_ne_bytes());
    }
}

use tungstenite_mask::apply_mask_fast32;

const KEY: [u8; 4] = [0x6d, 0xb6, 0xb2, 0x80];
const NEW_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A tiny frame, the largest control frame, a typical message, a large one,
/// and one the size of a Zen 4 core's whole L2.
const SIZES: [(usize, &str); 5] = [
    (16, "16B"),
    (125, "125B"),
    (1024, "1KiB"),
    (64 * 1024, "64KiB"),
    (1024 * 1024, "1MiB"),
];

/// A payload buffer that starts `skew` bytes past a 64-byte boundary, so
/// every run sees the same alignment whatever the allocator hands out
/// (32-byte vector stores that straddle cache lines cost up to 25 % at
/// 1 KiB on the reference machine).
#[derive(Debug)]
struct Payload {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Payload {
    fn new(len: usize, skew: usize) -> Self {
        let mut bytes = vec![0u8; len + 64 + skew];
        let start = bytes.as_ptr().align_offset(64) + skew;
        for (i, b) in bytes[start..start + len].iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        Payload { bytes, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// Checks once, before timing, that both implementations agree.
fn check_same(len: usize, skew: usize) {
    let mut ours = Payload::new(len, skew);
    let mut theirs = Payload::new(len, skew);
    apply_mask(ours.get(), KEY, 0);
    apply_mask_fast32(theirs.get(), KEY);
    assert_eq!(
        ours.get(),
        theirs.get(),
        "mask mismatch at len {len}, skew {skew}"
    );
}

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for (len, label) in SIZES {
        check_same(len, 0);
        g.throughput(Throughput::Bytes(len as u64));
        let mut a = Payload::new(len, 0);
        let mut b = Payload::new(len, 0);
        let ours = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            apply_mask(black_box(a.get()), black_box(KEY), black_box(0))
        });
        let theirs = support::run(&mut g, BenchmarkId::new("tungstenite", label), || {
            apply_mask_fast32(black_box(b.get()), black_box(KEY))
        });
        support::compare(
            &format!("mask/{label}"),
            Some(len as u64),
            &ours,
            "tungstenite",
            &theirs,
        );
    }
    g.finish();
}

/// The same one byte past a 64-byte boundary, with the payload offset at 3:
/// the shape of a chunk that starts mid-frame. tungstenite's loop realigns
/// to 4 bytes; ours uses unaligned loads.
fn mask_unaligned(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask_unaligned");
    for (len, label) in [(1024, "1KiB"), (64 * 1024, "64KiB")] {
        check_same(len, 1);
        g.throughput(Throughput::Bytes(len as u64));
        let mut a = Payload::new(len, 1);
        let mut b = Payload::new(len, 1);
        let ours = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            apply_mask(black_box(a.get()), black_box(KEY), black_box(3))
        });
        // tungstenite has no offset parameter: the caller rotates the key.
        let rotated = [KEY[3], KEY[0], KEY[1], KEY[2]];
        let theirs = support::run(&mut g, BenchmarkId::new("tungstenite", label), || {
            apply_mask_fast32(black_box(b.get()), black_box(rotated))
        });
        support::compare(
            &format!("mask_unaligned/{label}"),
            Some(len as u64),
            &ours,
            "tungstenite",
            &theirs,
        );
    }
    g.finish();
}

/// Re-masking a client frame with a fresh key for the backend. tungstenite
/// has no single-pass remask, so its equivalent is unmask then mask.
fn remask_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("remask");
    for (len, label) in SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let mut a = Payload::new(len, 0);
        let mut b = Payload::new(len, 0);
        let ours = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            remask(
                black_box(a.get()),
                black_box(KEY),
                black_box(NEW_KEY),
                black_box(0),
            )
        });
        let theirs = support::run(
            &mut g,
            BenchmarkId::new("tungstenite_unmask_mask", label),
            || {
                let buf = black_box(b.get());
                apply_mask_fast32(buf, black_box(KEY));
                apply_mask_fast32(buf, black_box(NEW_KEY));
            },
        );
        support::compare(
            &format!("remask/{label}"),
            Some(len as u64),
            &ours,
            "tungstenite",
            &theirs,
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = mask, mask_unaligned, remask_group
}
criterion_main!(benches);
