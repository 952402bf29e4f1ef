//! The client's upgrade request, validated by the proxy with hand-written
//! bytes: every refusal gets its HTTP status (400, 405, 426 with
//! `Sec-WebSocket-Version: 13`, 431) and never reaches the backend; bytes
//! the client sends in the same write as its request (its first frames) are
//! relayed.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use tokio::net::TcpListener;

/// A backend that must never be connected to, and a proxy in front of it.
async fn proxy_with_silent_backend(driver: IoDriver) -> (Proxy, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    (proxy, listener)
}

/// Sends `request`, expects `status`, and checks that the backend was not
/// contacted and the refusal was counted.
async fn refused(driver: IoDriver, request: &[u8], status: u16) -> HttpResponse {
    let (proxy, backend) = proxy_with_silent_backend(driver).await;
    let resp = http_exchange(proxy.addr, request).await;
    assert_eq!(
        resp.status,
        status,
        "answer to {:?}: {resp:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    assert!(
        resp.status_line.starts_with("HTTP/1.1 "),
        "{:?}",
        resp.status_line
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), backend.accept())
            .await
            .is_err(),
        "a refused request reached the backend"
    );
    assert_eq!(proxy.counter("refused"), 1);
    assert_eq!(proxy.counter("upgraded"), 0);
    resp
}

async fn garbage_is_400(driver: IoDriver) {
    refused(
        driver,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        400,
    )
    .await;
    refused(driver, b"this is not http at all\r\n\r\n", 400).await;
}

/// Garbage that never ends a line or a head (a TLS ClientHello to the
/// plain-text port) is refused at once, not after the handshake timeout.
async fn tls_client_hello_is_400_at_once(driver: IoDriver) {
    let started = std::time::Instant::now();
    refused(driver, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
}

async fn missing_key_is_400(driver: IoDriver) {
    let req = "GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";
    refused(driver, req.as_bytes(), 400).await;
}

async fn bad_key_is_400(driver: IoDriver) {
    let req = "GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n";
    refused(driver, req.as_bytes(), 400).await;
}

async fn missing_host_is_400(driver: IoDriver) {
    let req = format!(
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    refused(driver, req.as_bytes(), 400).await;
}

async fn http10_is_400(driver: IoDriver) {
    let req = String::from_utf8(upgrade_request("/", &[]))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    refused(driver, req.as_bytes(), 400).await;
}

async fn post_is_405(driver: IoDriver) {
    let req = String::from_utf8(upgrade_request("/", &[]))
        .unwrap()
        .replacen("GET", "POST", 1);
    let resp = refused(driver, req.as_bytes(), 405).await;
    assert_eq!(resp.header("Allow"), Some("GET"));
}

async fn version_8_is_426(driver: IoDriver) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let resp = refused(driver, req.as_bytes(), 426).await;
    assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"), "{resp:?}");
}

async fn missing_version_is_426(driver: IoDriver) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    let resp = refused(driver, req.as_bytes(), 426).await;
    assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"), "{resp:?}");
}

async fn plain_http_is_426(driver: IoDriver) {
    // No Upgrade header at all.
    let req = "GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";
    let resp = refused(driver, req.as_bytes(), 426).await;
    assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"), "{resp:?}");
    // Upgrade without the token in Connection.
    let req = format!(
        "GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    refused(driver, req.as_bytes(), 426).await;
}

async fn huge_header_is_431(driver: IoDriver) {
    let big = "a".repeat(70_000);
    let req = upgrade_request("/", &[("X-Big", &big)]);
    refused(driver, &req, 431).await;
}

async fn too_many_headers_is_431(driver: IoDriver) {
    let names: Vec<String> = (0..100).map(|i| format!("X-H{i}")).collect();
    let extra: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let req = upgrade_request("/", &extra);
    assert!(req.len() < 16 << 10, "under the byte limit, over the count");
    refused(driver, &req, 431).await;
}

/// A request head that arrives a byte at a time is still accepted.
async fn request_in_tiny_pieces(driver: IoDriver) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = echo_backend().await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for b in upgrade_request("/", &[]) {
        s.write_all(&[b]).await.unwrap();
    }
    let mut got = Vec::new();
    within("the 101", async {
        while !got.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(s.read(&mut byte).await.unwrap(), 1, "EOF before the 101");
            got.push(byte[0]);
        }
    })
    .await;
    assert!(got.starts_with(b"HTTP/1.1 101 "), "{got:?}");
}

/// The client's first frames, written together with its request, reach the
/// backend (and are echoed back).
async fn first_frame_in_same_write(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let mut first = client_frame(true, op::TEXT, b"early bird");
    first.extend(client_frame(true, op::BINARY, &[1, 2, 3]));
    let (mut ws, _) = RawWs::connect(proxy.addr, &upgrade_request("/", &[]), &first).await;
    let f = ws.read_frame().await;
    assert_eq!((f.opcode, f.fin, f.masked), (op::TEXT, true, false));
    assert_eq!(f.payload, b"early bird");
    let f = ws.read_frame().await;
    assert_eq!((f.opcode, f.payload), (op::BINARY, vec![1, 2, 3]));
}

/// A client that sends part of a head and stops gets 408 after
/// `timeouts.handshake`.
async fn slow_client_is_408(driver: IoDriver) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.timeouts.handshake = Duration::from_millis(300);
    });
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: exa").await.unwrap();
    let mut got = Vec::new();
    within("the 408 and EOF", s.read_to_end(&mut got))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        got.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(took >= Duration::from_millis(250), "408 after {took:?}");
}

/// A client that connects and sends nothing is closed without an answer
/// after `timeouts.handshake` (docs/configuration.md: "408 if some bytes
/// came, silent close if none").
async fn silent_client_closed_silently(driver: IoDriver) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.timeouts.handshake = Duration::from_millis(300);
    });
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    within("EOF", s.read_to_end(&mut got)).await.unwrap();
    assert!(
        got.is_empty(),
        "a silent client got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(proxy.counter("refused"), 0);
}

async fn absolute_form_target_is_400(driver: IoDriver) {
    let req = String::from_utf8(upgrade_request("/", &[]))
        .unwrap()
        .replacen("GET / ", "GET http://example.test/ ", 1);
    refused(driver, req.as_bytes(), 400).await;
}

async fn duplicate_key_is_400(driver: IoDriver) {
    let req = upgrade_request("/", &[("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw==")]);
    refused(driver, &req, 400).await;
}

async fn request_with_body_is_400(driver: IoDriver) {
    let req = upgrade_request("/", &[("Content-Length", "5")]);
    refused(driver, &req, 400).await;
}

both_drivers!(
    garbage_is_400,
    tls_client_hello_is_400_at_once,
    missing_key_is_400,
    bad_key_is_400,
    missing_host_is_400,
    http10_is_400,
    post_is_405,
    version_8_is_426,
    missing_version_is_426,
    plain_http_is_426,
    huge_header_is_431,
    absolute_form_target_is_400,
    duplicate_key_is_400,
    request_with_body_is_400,
    too_many_headers_is_431,
    request_in_tiny_pieces,
    first_frame_in_same_write,
    slow_client_is_408,
    silent_client_closed_silently,
);
