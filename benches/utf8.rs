//! UTF-8 validation of text payloads: `Utf8Validator` (simdutf8 underneath)
//! beside `std::str::from_utf8`, on ASCII, mixed-script and 4-byte-heavy
//! text at 1 KiB and 64 KiB.
//!
//! `cargo bench --bench utf8`. Every case prints a `RATIO` line with both
//! throughputs in GB/s and std's time over ours.

mod support;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsedge::proto::utf8::Utf8Validator;

/// Sample text per kind; repeated to the wanted size.
const KINDS: [(&str, &str); 3] = [
    (
        "ascii",
        r#"{"op":"update","id":1234567,"symbol":"BTC-USD","price":"64123.50","size":"0.0125"} "#,
    ),
    (
        // Latin with diacritics (2 bytes), Greek and Cyrillic (2), CJK and
        // punctuation (3): the text of a chat in several languages.
        "mixed",
        "Grüße aus Köln, ça va? Καλημέρα κόσμε! Привет, мир. こんにちは世界。你好，世界！안녕하세요 — «ok» ",
    ),
    (
        // Mostly emoji (4 bytes) with a few ASCII separators.
        "4byte_heavy",
        "😀😃😄😁🚀🎉🔥👍🏽🦀🧪 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🎶🎸🥁🎹 ",
    ),
];

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (64 * 1024, "64KiB")];

/// `sample` repeated to exactly `len` bytes: whole characters, then ASCII
/// padding if the next character would not fit.
fn text(sample: &str, len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len);
    for ch in sample.chars().cycle() {
        if out.len() + ch.len_utf8() > len {
            break;
        }
        out.push(ch);
    }
    while out.len() < len {
        out.push(' ');
    }
    out.into_bytes()
}

fn validate_whole(bytes: &[u8]) -> Result<(), wsedge::proto::utf8::Utf8Error> {
    let mut v = Utf8Validator::new();
    v.feed(bytes)?;
    v.finish()
}

/// The same message arriving in 1400-byte reads (about one TCP segment),
/// code points split across reads.
fn validate_chunked(bytes: &[u8]) -> Result<(), wsedge::proto::utf8::Utf8Error> {
    let mut v = Utf8Validator::new();
    for chunk in bytes.chunks(1400) {
        v.feed(chunk)?;
    }
    v.finish()
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    for (kind, sample) in KINDS {
        for (len, size) in SIZES {
            let bytes = text(sample, len);
            assert_eq!(bytes.len(), len);
            assert!(std::str::from_utf8(&bytes).is_ok());
            assert!(validate_whole(&bytes).is_ok() && validate_chunked(&bytes).is_ok());
            let label = format!("{kind}_{size}");
            g.throughput(Throughput::Bytes(len as u64));
            let ours = support::run(&mut g, BenchmarkId::new("wsedge", &label), || {
                validate_whole(black_box(&bytes[..]))
            });
            let theirs = support::run(&mut g, BenchmarkId::new("std", &label), || {
                std::str::from_utf8(black_box(&bytes[..])).is_ok()
            });
            support::compare(
                &format!("utf8/{label}"),
                Some(len as u64),
                &ours,
                "std",
                &theirs,
            );
            if len > 1400 {
                let chunked = support::run(
                    &mut g,
                    BenchmarkId::new("wsedge_chunked_1400B", &label),
                    || validate_chunked(black_box(&bytes[..])),
                );
                support::compare(
                    &format!("utf8_chunked_1400B/{label}"),
                    Some(len as u64),
                    &chunked,
                    "std",
                    &theirs,
                );
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = utf8
}
criterion_main!(benches);
