//! The handshake policy that needs no credentials: listener and route
//! address lists, Origin lists, trusted proxies and `X-Forwarded-For`,
//! per-IP limits (exact across workers), the handshake rate, the pending
//! handshake cap, a route's cap, and per-connection message rates (close
//! and throttle). Requests and frames are hand-written bytes.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsedge::config::Config;

/// A configuration: `top` at the top level, `[limits]` with `limits`, one
/// listener with `listener` keys, routes from `routes` (each a block of
/// keys; `upstream = "u"` is added), upstream `u` on `backend`.
fn config(top: &str, limits: &str, listener: &str, routes: &[&str], backend: &str) -> Config {
    let mut text = format!("{top}\n[[listener]]\naddress = \"127.0.0.1:0\"\n{listener}\n");
    for r in routes {
        text.push_str(&format!("[[route]]\nupstream = \"u\"\n{r}\n"));
    }
    text.push_str(&format!(
        "[[upstream]]\nname = \"u\"\nservers = [\"{backend}\"]\n[limits]\n{limits}\n"
    ));
    Config::parse(&text, "policy.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Connects, writes `bytes`, reads until the proxy closes: what came back.
async fn answer_to(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = within("the proxy to close", s.read_to_end(&mut out)).await;
    out
}

async fn listener_lists_close_at_accept(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "",
            "deny = [\"127.0.0.0/8\"]",
            &["path = \"/\""],
            &backend,
        ),
    );
    let out = answer_to(proxy.addr, &upgrade_request("/", &[])).await;
    assert!(
        out.is_empty(),
        "nothing written to a denied client: {out:?}"
    );
    proxy.wait_counter("address_denied", 1).await;
    drop(proxy);

    // Behind a balancer: the PROXY header's source is what the lists see.
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "",
            "proxy_protocol = true\nallow = [\"203.0.113.0/24\", \"2001:db8::/32\"]",
            &["path = \"/\""],
            &backend,
        ),
    );
    for (source, admitted) in [
        ("TCP4 203.0.113.9 10.0.0.1 5555 80", true),
        ("TCP4 198.51.100.7 10.0.0.1 5555 80", false),
        ("TCP6 2001:db8::9 2001:db8::1 5555 80", true),
    ] {
        let request = [
            format!("PROXY {source}\r\n").into_bytes(),
            upgrade_request("/", &[]),
        ]
        .concat();
        let out = answer_to_or_101(proxy.addr, &request).await;
        assert_eq!(out, admitted, "{source}");
    }
}

/// Whether the proxy answered 101 (the connection is then dropped).
async fn answer_to_or_101(addr: std::net::SocketAddr, request: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = [0u8; 12];
    match within("an answer or a close", s.read(&mut buf)).await {
        Ok(n) if n >= 12 => &buf == b"HTTP/1.1 101",
        _ => false,
    }
}

async fn route_lists_and_origins_answer_403(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "",
            "",
            &[
                "path = \"/private\"\ndeny = [\"127.0.0.1\"]",
                "path = \"/app\"\norigins = [\"https://app.example.com\", \"https://*.example.com\"]",
                "path = \"/browser\"\norigins = [\"https://app.example.com\"]\nallow_missing_origin = false",
                "path = \"/\"",
            ],
            &backend,
        ),
    );
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: &[Case<'_>] = &[
        ("/private", &[], 403),
        ("/open", &[], 101),
        ("/app", &[], 101),
        ("/app", &[("Origin", "https://app.example.com")], 101),
        ("/app", &[("Origin", "https://eu.west.example.com")], 101),
        ("/app", &[("Origin", "https://evil.test")], 403),
        ("/app", &[("Origin", "http://app.example.com")], 403),
        ("/app", &[("Origin", "https://example.com")], 403),
        ("/browser", &[], 403),
        ("/browser", &[("Origin", "https://app.example.com")], 101),
    ];
    for (path, headers, status) in cases {
        let (_ws, resp) =
            RawWs::try_connect(proxy.addr, &upgrade_request(path, headers), &[]).await;
        assert_eq!(resp.status, *status, "{path} {headers:?}: {resp:?}");
    }
    proxy.wait_counter("address_denied", 1).await;
    proxy.wait_counter("origin_denied", 4).await;
}

async fn forwarded_for_is_believed_only_from_trusted_proxies(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let b = backend.addr.to_string();
    let forged = [("X-Forwarded-For", "6.6.6.6, 198.51.100.7")];
    // Not trusted: replaced, never appended to.
    let proxy = Proxy::start_config(
        driver,
        config(
            "trusted_proxies = [\"10.0.0.0/8\"]",
            "",
            "",
            &["path = \"/\""],
            &b,
        ),
    );
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &forged), &[]).await;
    assert_eq!(resp.status, 101);
    let got = backend.accept().await;
    assert_eq!(got.request.headers()["x-forwarded-for"], "127.0.0.1");
    drop(proxy);

    // Trusted: the chain goes on with the proxy appended, and the route's
    // list judges the rightmost untrusted address.
    let proxy = Proxy::start_config(
        driver,
        config(
            "trusted_proxies = [\"127.0.0.0/8\"]",
            "",
            "",
            &["path = \"/\"\nallow = [\"198.51.100.0/24\"]"],
            &b,
        ),
    );
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &forged), &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let got = backend.accept().await;
    assert_eq!(
        got.request.headers()["x-forwarded-for"],
        "6.6.6.6, 198.51.100.7, 127.0.0.1"
    );
    let other = [("X-Forwarded-For", "198.51.100.7, 6.6.6.6")];
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &other), &[]).await;
    assert_eq!(resp.status, 403, "6.6.6.6 is the client: {resp:?}");
}

async fn per_ip_cap_is_exact_across_workers(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_workers(
        driver,
        config(
            "",
            "max_connections_per_ip = 3",
            "",
            &["path = \"/\""],
            &backend,
        ),
        2,
    );
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..24 {
        let (ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
        match resp.status {
            101 => open.push(ws),
            429 => refused += 1,
            s => panic!("unexpected {s}: {resp:?}"),
        }
    }
    assert_eq!(open.len(), 3, "exactly the cap, over both workers");
    assert_eq!(refused, 21);
    // SO_REUSEPORT spread the attempts over both workers.
    let per_worker: Vec<u64> = proxy
        .server()
        .stats
        .iter()
        .map(|s| s.accepted.get())
        .collect();
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
    // A closed connection frees its slot.
    drop(open.pop());
    proxy.wait_counter("active", 2).await;
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 101);
    proxy.wait_counter("ip_connections", 21).await;
}

async fn handshake_rate_answers_429_with_retry_after(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "handshake_rate_per_ip = \"2/s\"\nhandshake_burst = 2",
            "",
            &["path = \"/\""],
            &backend,
        ),
    );
    for _ in 0..2 {
        let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
        assert_eq!(resp.status, 101);
    }
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("retry-after"), Some("1"));
    proxy.wait_counter("ip_handshake_rate", 1).await;
}

async fn slow_handshakes_do_not_take_established_slots(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "max_connections = 5\nmax_pending_handshakes = 40",
            "",
            &["path = \"/\""],
            &backend,
        ),
    );
    // 30 clients that send half a head and wait (slowloris).
    let mut slow = Vec::new();
    for _ in 0..30 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(s);
    }
    proxy.wait_counter("active", 30).await;
    // Legitimate clients still get in, up to max_connections.
    let mut open = Vec::new();
    for i in 0..5 {
        let (ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
        assert_eq!(resp.status, 101, "client {i}: {resp:?}");
        open.push(ws);
    }
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(
        resp.status, 503,
        "established connections at max_connections"
    );
    // Past the pending cap, a new client is refused with 503 at once.
    for _ in 0..10 {
        slow.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    proxy.wait_counter("active", 5 + 40).await;
    let out = answer_to(proxy.addr, &upgrade_request("/", &[])).await;
    assert!(
        out.starts_with(b"HTTP/1.1 503 "),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(proxy.counter("pending_handshakes") >= 1);
}

async fn a_route_cap_answers_503(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "",
            "",
            &["path = \"/capped\"\nmax_connections = 2", "path = \"/\""],
            &backend,
        ),
    );
    let mut open = Vec::new();
    for _ in 0..2 {
        let (ws, resp) =
            RawWs::try_connect(proxy.addr, &upgrade_request("/capped", &[]), &[]).await;
        assert_eq!(resp.status, 101);
        open.push(ws);
    }
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/capped", &[]), &[]).await;
    assert_eq!(resp.status, 503);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/other", &[]), &[]).await;
    assert_eq!(resp.status, 101, "other routes are not counted");
    drop(open.pop());
    proxy.wait_counter("active", 2).await;
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/capped", &[]), &[]).await;
    assert_eq!(resp.status, 101);
}

async fn message_rate_close_sends_1008(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            // Rates are charged per read: a small buffer makes a read a few
            // messages.
            "client_message_rate = \"5/s\"\nclient_message_burst = 5\non_limit = \"close\"\nbuffer_size = \"4KiB\"",
            "",
            &["path = \"/\""],
            &backend.addr.to_string(),
        ),
    );
    let (mut ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 101);
    let mut got = backend.accept().await;
    let flood: Vec<u8> = (0..50)
        .flat_map(|i| client_frame(true, op::TEXT, format!("{i:01000}").as_bytes()))
        .collect();
    ws.send(&flood).await;
    let close = ws.read_close().await;
    assert_eq!(close.close_code(), Some(1008));
    assert!(
        String::from_utf8_lossy(&close.payload[2..]).contains("rate limit"),
        "{close:?}"
    );
    // The backend hears of it too, after the messages within the rate.
    let mut delivered = 0;
    loop {
        match within("the backend's side", got.ws.next()).await {
            Some(Ok(m)) if m.is_text() => delivered += 1,
            Some(Ok(m)) if m.is_close() => break,
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    assert!((5..50).contains(&delivered), "{delivered} delivered");
}

async fn message_rate_throttle_slows_the_sender_and_loses_nothing(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_config(
        driver,
        config(
            "",
            "buffer_size = \"4KiB\"",
            "",
            &[
                "path = \"/\"\nclient_message_rate = \"20/s\"\nclient_message_burst = 5\non_limit = \"throttle\"",
            ],
            &backend.addr.to_string(),
        ),
    );
    let (mut ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 101);
    let mut got = backend.accept().await;
    let start = Instant::now();
    // One write per message, so that each read brings about one.
    let sender = tokio::spawn(async move {
        for i in 0..40 {
            ws.send(&client_frame(
                true,
                op::TEXT,
                format!("{i:01000}").as_bytes(),
            ))
            .await;
        }
        ws
    });
    for i in 0..40 {
        let m = within_for(
            Duration::from_secs(10),
            "a throttled message",
            got.ws.next(),
        )
        .await
        .expect("open")
        .expect("a message");
        assert_eq!(
            m.into_text().unwrap(),
            format!("{i:01000}"),
            "in order, none lost"
        );
    }
    let took = start.elapsed();
    // 40 messages at 20/s after a burst of 5: 1.75 s, less the last read's
    // few messages, which go on before their charge stops the next read (a
    // lower bound; a slow machine only makes it longer).
    assert!(took >= Duration::from_millis(1200), "took {took:?}");
    let _ws = sender.await.unwrap();
}

both_drivers!(
    listener_lists_close_at_accept,
    route_lists_and_origins_answer_403,
    forwarded_for_is_believed_only_from_trusted_proxies,
    per_ip_cap_is_exact_across_workers,
    handshake_rate_answers_429_with_retry_after,
    slow_handshakes_do_not_take_established_slots,
    a_route_cap_answers_503,
    message_rate_close_sends_1008,
    message_rate_throttle_slows_the_sender_and_loses_nothing,
);
