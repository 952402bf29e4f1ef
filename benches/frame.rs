//! Frame header decode, every length form masked and unmasked, beside
//! tungstenite 0.24's `FrameHeader::parse`; and close payload parsing.
//!
//! `cargo bench --bench frame`. Every header form prints a `RATIO` line with
//! tungstenite's time over ours.

mod support;

use std::hint::black_box;
use std::io::Cursor;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsedge::proto::close::parse_close_payload;
use wsedge::proto::frame::{DecodeConfig, FrameHeader, OpCode, Peer};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A binary frame header for `len` bytes, in the length form `len` calls
/// for, followed by a few payload bytes, as it sits at the start of a read
/// buffer.
fn frame(len: u64, masked: bool) -> Vec<u8> {
    let mut head = [0u8; 14];
    let mask = masked.then_some(KEY);
    let n = FrameHeader::new(OpCode::Binary, len, mask).encode(&mut head);
    let mut buf = head[..n].to_vec();
    buf.extend_from_slice(&[0xa5; 16]);
    buf
}

fn header_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("header_decode");
    g.throughput(Throughput::Elements(1));
    let forms = [("7bit", 125u64), ("16bit", 1024), ("64bit", 1024 * 1024)];
    for (form, len) in forms {
        for masked in [true, false] {
            let label = format!("{form}_{}", if masked { "masked" } else { "unmasked" });
            let buf = frame(len, masked);
            // A masked frame comes from a client, an unmasked one from a server.
            let cfg = DecodeConfig::new(if masked { Peer::Client } else { Peer::Server });

            // Both must see the same header before we time them.
            let (ours, used) = FrameHeader::decode(&buf, &cfg).unwrap().unwrap();
            let mut cursor = Cursor::new(&buf[..]);
            let (theirs, their_len) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
                .unwrap()
                .unwrap();
            assert_eq!(
                (ours.payload_len, ours.mask, used as u64),
                (their_len, theirs.mask, cursor.position()),
                "{label}"
            );

            let a = support::run(&mut g, BenchmarkId::new("wsedge", &label), || {
                FrameHeader::decode(black_box(&buf[..]), black_box(&cfg))
            });
            // The result is consumed here rather than returned: tungstenite's
            // 136-byte error type would trip clippy's `result_large_err`.
            let b = support::run(&mut g, BenchmarkId::new("tungstenite", &label), || {
                let mut cursor = Cursor::new(black_box(&buf[..]));
                let _ = black_box(tungstenite::protocol::frame::FrameHeader::parse(
                    &mut cursor,
                ));
            });
            support::compare(
                &format!("header_decode/{label}"),
                None,
                &a,
                "tungstenite",
                &b,
            );
        }
    }
    g.finish();
}

/// Close payloads. tungstenite parses these inside `Frame::into_close`,
/// which is crate-private, so there is no peer here.
fn close_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("close_parse");
    let ascii_reason = "x".repeat(123);
    // Mixed 1- to 4-byte characters, padded with ASCII to exactly 123 bytes.
    let mut utf8_reason = String::new();
    for ch in "ünïcødé ✓ 🚀 ".chars().cycle() {
        if utf8_reason.len() + ch.len_utf8() > 123 {
            break;
        }
        utf8_reason.push(ch);
    }
    while utf8_reason.len() < 123 {
        utf8_reason.push('.');
    }
    let with_reason = |code: u16, reason: &str| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        p
    };
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty", Vec::new()),
        ("code_only", 1000u16.to_be_bytes().to_vec()),
        ("reason_ascii_123B", with_reason(1001, &ascii_reason)),
        ("reason_utf8_123B", with_reason(4000, &utf8_reason)),
    ];
    for (label, payload) in &cases {
        assert!(parse_close_payload(payload).is_ok(), "{label}");
        let s = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            parse_close_payload(black_box(&payload[..]))
        });
        support::report(&format!("close_parse/{label}"), None, &s);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = header_decode, close_parse
}
criterion_main!(benches);
