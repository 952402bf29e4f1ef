//! A refusal reaches the client even when the client is still sending: the
//! proxy writes its answer, half-closes, and reads (and discards) what the
//! client still sends before closing, so the kernel does not answer the
//! unread bytes with a TCP reset that could destroy the answer.

#[macro_use]
mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Writes `request` (ignoring a write that fails: the proxy may close while
/// the client is still sending) while reading the answer to EOF or reset.
/// Returns the bytes read.
async fn send_while_reading(addr: std::net::SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut got = Vec::new();
    within("the answer and EOF", async {
        let mut chunk = vec![0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    drop(writer.await);
    got
}

/// The head and the `Content-Length` body of one response in `got`; panics
/// unless both are there in full.
fn whole_response(got: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(got);
    let Some(end) = text.find("\r\n\r\n") else {
        panic!("no complete answer: {text:?}");
    };
    let status: u16 = text[9..12].parse().expect("a status");
    let length: usize = text[..end]
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("Content-Length");
    let body = &got[end + 4..];
    assert_eq!(body.len(), length, "the body was cut: {text:?}");
    (status, body.to_vec())
}

/// A 10 MB request target: the proxy stops reading at `max_head_bytes`
/// and answers 431 while the client is still writing.
async fn ten_megabyte_target_gets_431(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let mut request = b"GET /".to_vec();
    request.resize(10_000_000, b'a');
    request.extend_from_slice(b" HTTP/1.1\r\nHost: example.test\r\n\r\n");
    let got = send_while_reading(proxy.addr, request).await;
    let (status, _) = whole_response(&got);
    assert_eq!(status, 431);
    proxy.wait_counter("refused", 1).await;
}

/// Sends `request` in full, half-closes, reads the answer to EOF, and checks
/// that nothing on the way was a TCP reset: the write, the half-close and
/// the read succeed, and once the proxy has let the connection go
/// (`active` back to `active_after`), no error is pending on the socket.
async fn exchange_without_reset(proxy: &Proxy, request: &[u8], active_after: u64) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    within("the request to be written", s.write_all(request))
        .await
        .expect("writing the request (a reset?)");
    s.shutdown().await.expect("half-closing (after a reset?)");
    let mut got = Vec::new();
    within("the answer and EOF", s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|e| panic!("{e} after {:?}", String::from_utf8_lossy(&got)));
    proxy.wait_counter("active", active_after).await;
    assert!(
        s.take_error().unwrap().is_none(),
        "the proxy reset the connection after {:?}",
        String::from_utf8_lossy(&got)
    );
    got
}

/// A request target of 512 KiB, over `max_head_bytes`: the client writes
/// it all, reads its 431 and a clean end of stream. (The proxy stops
/// parsing at the limit; it drains the rest instead of closing on it.)
async fn oversized_head_is_drained_not_reset(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let mut request = b"GET /".to_vec();
    request.resize(512 << 10, b'a');
    request.extend_from_slice(b" HTTP/1.1\r\nHost: example.test\r\n\r\n");
    let got = exchange_without_reset(&proxy, &request, 0).await;
    let (status, _) = whole_response(&got);
    assert_eq!(status, 431);
    assert_eq!(proxy.counter("refused"), 1);
}

/// A refusal decided on the request line (405) while the client is still
/// sending headers: drained too.
async fn early_refusal_is_drained_not_reset(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    // Garbage from its first byte, followed by a lot more.
    let mut request = b"\x16\x03\x01".to_vec();
    request.resize(256 << 10, 0);
    let got = exchange_without_reset(&proxy, &request, 0).await;
    let (status, _) = whole_response(&got);
    assert_eq!(status, 400);
}

/// Over `limits.max_connections`, the 503 is written before the request is
/// read; the client sends its request anyway and must read the 503.
async fn over_max_connections_reads_503(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start_with(driver, &[backend.to_string()], |c| {
        c.limits.max_connections = 1;
    });
    let _first = RawWs::client(proxy.addr).await;
    proxy.wait_counter("upgraded", 1).await;
    for _ in 0..5 {
        let got = exchange_without_reset(&proxy, &upgrade_request("/", &[]), 1).await;
        let (status, _) = whole_response(&got);
        assert_eq!(status, 503);
    }
}

both_drivers!(
    ten_megabyte_target_gets_431,
    oversized_head_is_drained_not_reset,
    early_refusal_is_drained_not_reset,
    over_max_connections_reads_503,
);
