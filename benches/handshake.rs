//! The upgrade handshake: `parse_request` and `accept_key`, beside
//! tungstenite 0.24's `Request::try_parse` and `derive_accept_key`.
//!
//! `cargo bench --bench handshake`. Every case prints a `RATIO` line with
//! tungstenite's time over ours.
//!
//! The parse comparison is not quite like for like, and says so: ours
//! validates every RFC 6455 §4.2.1 rule and borrows the buffer, tungstenite's
//! `try_parse` only builds an `http::Request` (allocating its header map)
//! and leaves the checks to its handshake state machine.

mod support;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tungstenite::handshake::machine::TryParse;
use wsedge::proto::handshake::{Limits, accept_key, parse_request};

/// What a current desktop browser sends (13 header lines).
const BROWSER: &[u8] = b"GET /chat?room=lobby HTTP/1.1\r\n\
Host: edge.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://app.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9,de;q=0.8\r\n\
Cookie: session=3q2+7wAAAAAAAAAAAAAAAA; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// The smallest valid upgrade request (RFC 6455 §1.2's example, 5 lines).
const MINIMAL: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

/// The header storage a worker would pass in for each new connection.
const STORAGE: usize = 64;

fn request_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake_parse");
    let limits = Limits::default();
    for (label, head) in [("browser", BROWSER), ("minimal", MINIMAL)] {
        // Both must accept the whole head before we time them.
        let mut headers = [httparse::EMPTY_HEADER; STORAGE];
        let (req, used) = parse_request(head, &mut headers, &limits).unwrap().unwrap();
        assert_eq!((used, req.key()), (head.len(), "dGhlIHNhbXBsZSBub25jZQ=="));
        let (their_len, _) = tungstenite::http::Request::<()>::try_parse(head)
            .unwrap()
            .unwrap();
        assert_eq!(their_len, head.len());

        g.throughput(Throughput::Bytes(head.len() as u64));
        let ours = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            // The storage is set up per connection, so it is part of the cost
            // (tungstenite's `try_parse` sets up its own 124 inside).
            let mut headers = [httparse::EMPTY_HEADER; STORAGE];
            let parsed = parse_request(black_box(head), &mut headers, black_box(&limits));
            black_box(parsed.map(|r| r.map(|(req, n)| (req.key().len(), n))))
        });
        // Consumed here rather than returned: tungstenite's 136-byte error
        // type would trip clippy's `result_large_err`.
        let theirs = support::run(&mut g, BenchmarkId::new("tungstenite", label), || {
            let _ = black_box(tungstenite::http::Request::<()>::try_parse(black_box(head)));
        });
        support::compare(
            &format!("handshake_parse/{label}"),
            None,
            &ours,
            "tungstenite",
            &theirs,
        );
    }
    g.finish();
}

fn accept(c: &mut Criterion) {
    let mut g = c.benchmark_group("accept_key");
    let key = b"dGhlIHNhbXBsZSBub25jZQ==";
    // RFC 6455 §1.3's example answer.
    assert_eq!(&accept_key(key), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(
        tungstenite::handshake::derive_accept_key(key),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    let ours = support::run(&mut g, BenchmarkId::new("wsedge", "rfc_key"), || {
        accept_key(black_box(key))
    });
    let theirs = support::run(&mut g, BenchmarkId::new("tungstenite", "rfc_key"), || {
        tungstenite::handshake::derive_accept_key(black_box(key))
    });
    support::compare("accept_key", None, &ours, "tungstenite", &theirs);
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = request_parse, accept
}
criterion_main!(benches);
