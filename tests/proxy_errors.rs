//! When the backend cannot be reached or will not upgrade, the client gets
//! an HTTP answer that says so: the backend's own non-101 answer relayed
//! (status line, headers, body framed as its head says, sent with an exact
//! `Content-Length` and `Connection: close`), 502 for a refused connection
//! or a bad answer, 504 for a connect or handshake timeout.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that reads the upgrade request and answers `answer` (then, if
/// `hold`, keeps the connection open for a while instead of closing it).
async fn scripted_backend(answer: &'static [u8], hold: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = vec![0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                if answer.is_empty() {
                    return; // close without answering
                }
                let _ = s.write_all(answer).await;
                if hold {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    addr
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn backend_403_relayed(driver: IoDriver) {
    let backend = scripted_backend(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nX-Reason: nope\r\n\
          Content-Length: 10\r\n\r\nforbidden\n",
        true,
    )
    .await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let started = Instant::now();
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status_line, "HTTP/1.1 403 Forbidden", "{resp:?}");
    assert_eq!(resp.header("X-Reason"), Some("nope"));
    assert_eq!(resp.header("Content-Type"), Some("text/plain"));
    assert_eq!(resp.body, b"forbidden\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the answer waited for the backend to close: {:?}",
        started.elapsed()
    );
}

/// A body without `Content-Length` ends with the backend's connection.
async fn backend_503_until_eof_relayed(driver: IoDriver) {
    let backend = scripted_backend(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nConnection: close\r\n\r\n\
          come back later",
        false,
    )
    .await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.header("Retry-After"), Some("7"));
    assert_eq!(resp.body, b"come back later");
}

async fn backend_down_is_502(driver: IoDriver) {
    let proxy = Proxy::start(driver, &[closed_port().await.to_string()]);
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(proxy.counter("upgraded"), 0);
}

/// With a second server in the upstream, a refused connection fails over.
async fn backend_down_fails_over(driver: IoDriver) {
    let down = closed_port().await.to_string();
    let up = echo_backend().await.to_string();
    let proxy = Proxy::start(driver, &[down, up]);
    for _ in 0..4 {
        let mut ws = RawWs::client(proxy.addr).await;
        ws.send(&client_frame(true, op::TEXT, b"still here")).await;
        assert_eq!(ws.read_frame().await.payload, b"still here");
    }
}

async fn backend_closes_without_answer_is_502(driver: IoDriver) {
    let backend = scripted_backend(b"", false).await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

async fn backend_garbage_is_502(driver: IoDriver) {
    let backend = scripted_backend(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", true).await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

async fn backend_wrong_accept_is_502(driver: IoDriver) {
    let backend = scripted_backend(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        true,
    )
    .await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

/// A backend that accepts the TCP connection but never answers the upgrade
/// request: 504 once `timeouts.handshake` has passed.
async fn backend_slow_is_504(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let proxy = Proxy::start_with(driver, &[addr.to_string()], |c| {
        c.timeouts.handshake = Duration::from_millis(500);
    });
    let started = Instant::now();
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "504 after {took:?} with a 500 ms handshake timeout"
    );
    held.abort();
}

/// A backend whose accept queue is full (SYNs are dropped): 504 once
/// `timeouts.connect` has passed.
async fn backend_connect_timeout_is_504(driver: IoDriver) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue; the first connect that hangs shows it is full.
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    assert!(fillers.len() < 16, "the accept queue never filled up");
    let proxy = Proxy::start_with(driver, &[addr.to_string()], |c| {
        c.timeouts.connect = Duration::from_millis(300);
    });
    let started = Instant::now();
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "504 after {took:?} with a 300 ms connect timeout"
    );
    drop((listener, fillers));
}

/// Above `limits.max_connections` open clients (per worker), new clients get
/// 503; once one leaves, a new one gets in.
async fn max_connections_is_503(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start_with(driver, &[backend.to_string()], |c| {
        c.limits.max_connections = 2;
    });
    let mut first = RawWs::client(proxy.addr).await;
    let _second = RawWs::client(proxy.addr).await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    first
        .send(&client_frame(true, op::CLOSE, &close_payload(1000, "")))
        .await;
    first.read_eof().await;
    proxy.wait_counter("active", 1).await;
    let mut third = RawWs::client(proxy.addr).await;
    third.send(&client_frame(true, op::TEXT, b"in")).await;
    assert_eq!(third.read_frame().await.payload, b"in");
}

/// A body without `Content-Length` from a backend that keeps its connection
/// open: the client gets what came before `timeouts.handshake`, nothing else.
async fn backend_answer_body_held_open(driver: IoDriver) {
    let backend = scripted_backend(
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\r\nwho are you?",
        true,
    )
    .await;
    let proxy = Proxy::start_with(driver, &[backend.to_string()], |c| {
        c.timeouts.handshake = Duration::from_millis(300);
    });
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 401, "{resp:?}");
    assert_eq!(resp.header("WWW-Authenticate"), Some("Bearer"));
    assert!(
        resp.body == b"who are you?",
        "body of {} bytes: {:?}...",
        resp.body.len(),
        String::from_utf8_lossy(&resp.body[..resp.body.len().min(40)])
    );
}

/// A client that sent its first frame with its request (bytes the proxy
/// never reads) and reads slowly (a small receive buffer): the backend's
/// 60 KB answer reaches it whole. Closing on the unread frame would reset
/// the connection and throw away what the client's window held back.
async fn large_answer_reaches_a_slow_client(driver: IoDriver) {
    let mut answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 60000\r\n\r\n".to_vec();
    answer.extend((0..60_000).map(|i| b'a' + (i % 26) as u8));
    let backend = scripted_backend(answer.leak(), true).await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(proxy.addr).await.unwrap();
    let mut request = upgrade_request("/", &[]);
    // More than the proxy reads with the head.
    request.extend(client_frame(true, op::BINARY, &[7; 16 << 10]));
    s.write_all(&request).await.unwrap();
    let mut got = Vec::new();
    within("the answer", async {
        let mut chunk = vec![0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 403 "));
    assert_eq!(got.len() - end, 60_000, "the body was cut");
}

/// A proxy in front of a backend that answers `answer` and then keeps its
/// connection open; the handshake timeout is longer than a test step, so a
/// proxy that waits for it fails the test.
async fn proxy_before_held_answer(
    driver: IoDriver,
    answer: &'static [u8],
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    let backend = scripted_backend(answer, true).await;
    Proxy::start_with(driver, &[backend.to_string()], |c| {
        c.timeouts.handshake = Duration::from_secs(30);
        tweak(c);
    })
}

/// A 204 has no body: answered as soon as its head is there.
async fn backend_204_answered_at_once(driver: IoDriver) {
    let proxy = proxy_before_held_answer(
        driver,
        b"HTTP/1.1 204 No Content\r\nX-Why: empty\r\n\r\n",
        |_| {},
    )
    .await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status_line, "HTTP/1.1 204 No Content", "{resp:?}");
    assert_eq!(resp.header("X-Why"), Some("empty"));
    assert_eq!(resp.header("Connection"), Some("close"));
    assert_eq!(resp.header("Content-Length"), None);
    assert!(resp.body.is_empty(), "{resp:?}");
}

/// A chunked body (with an extension and a trailer) reaches the client
/// de-chunked, with its length, as soon as the last chunk is there.
async fn backend_chunked_answer_relayed(driver: IoDriver) {
    let proxy = proxy_before_held_answer(
        driver,
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\
          X-Reason: nope\r\n\r\n5;lang=en\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        |_| {},
    )
    .await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.header("X-Reason"), Some("nope"));
    assert_eq!(resp.header("Transfer-Encoding"), None);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert_eq!(resp.header("Content-Length"), Some("11"));
    assert_eq!(resp.body, b"hello world");
}

/// A body over `limits.max_response_body` is cut, and the Content-Length
/// the client gets is the length it gets.
async fn backend_body_over_limit_truncated(driver: IoDriver) {
    let mut answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5000\r\n\r\n".to_vec();
    answer.resize(answer.len() + 5000, b'x');
    let proxy = proxy_before_held_answer(driver, answer.leak(), |c| {
        c.limits.max_response_body = 1000;
    })
    .await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 500, "{resp:?}");
    assert_eq!(resp.header("Content-Length"), Some("1000"));
    assert_eq!(resp.body.len(), 1000);
    assert_eq!(resp.header("Connection"), Some("close"));
}

/// The same for a chunked body: cut at the limit, with a matching length.
async fn backend_chunked_over_limit_truncated(driver: IoDriver) {
    let mut answer = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        answer.extend_from_slice(b"100\r\n");
        answer.resize(answer.len() + 256, b'y');
        answer.extend_from_slice(b"\r\n");
    }
    answer.extend_from_slice(b"0\r\n\r\n");
    let proxy = proxy_before_held_answer(driver, answer.leak(), |c| {
        c.limits.max_response_body = 1000;
    })
    .await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(resp.header("Content-Length"), Some("1000"));
    assert_eq!(resp.body, vec![b'y'; 1000]);
}

/// Conflicting Content-Length values are not relayed: 502.
async fn backend_conflicting_lengths_is_502(driver: IoDriver) {
    let proxy = proxy_before_held_answer(
        driver,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nnope!\n",
        |_| {},
    )
    .await;
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
}

both_drivers!(
    backend_204_answered_at_once,
    backend_chunked_answer_relayed,
    backend_body_over_limit_truncated,
    backend_chunked_over_limit_truncated,
    backend_conflicting_lengths_is_502,
    large_answer_reaches_a_slow_client,
    backend_403_relayed,
    backend_503_until_eof_relayed,
    backend_down_is_502,
    backend_down_fails_over,
    backend_closes_without_answer_is_502,
    backend_garbage_is_502,
    backend_wrong_accept_is_502,
    backend_slow_is_504,
    backend_connect_timeout_is_504,
    max_connections_is_503,
    backend_answer_body_held_open,
);
