//! What the backend sees of the client's request, and what the client sees
//! of the backend's answer: the path and query as sent, end-to-end headers
//! forwarded, hop-by-hop ones removed, `X-Forwarded-*` added, and the
//! subprotocol the backend chose (only one the client offered).

#[macro_use]
mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wsedge::config::Config;

fn values<'a>(req: &'a Request, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

fn one<'a>(req: &'a Request, name: &str) -> &'a str {
    match values(req, name).as_slice() {
        [v] => v,
        other => panic!("the backend got {name}: {other:?} (expected exactly one)"),
    }
}

async fn headers_path_and_query(driver: IoDriver) {
    let mut backend = Backend::start_choosing(Some("superchat")).await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let path = "/chat/room%201?x=1&y=a%2Fb&empty=&x=2";
    let request = upgrade_request(
        path,
        &[
            ("Origin", "https://app.example"),
            ("Cookie", "session=abc; theme=dark"),
            ("Authorization", "Bearer t0ken"),
            ("Sec-WebSocket-Protocol", "chat, superchat"),
            ("X-Custom", "hello world"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
            ("X-Forwarded-For", "203.0.113.9"),
            // Hop-by-hop: never forwarded.
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authorization", "Basic c2VjcmV0"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            // Named by Connection: hop-by-hop too.
            ("Connection", "X-Secret"),
            ("X-Secret", "do not forward"),
        ],
    );
    let (mut client, resp) = RawWs::connect(proxy.addr, &request, &[]).await;
    assert_eq!(
        resp.header("Sec-WebSocket-Protocol"),
        Some("superchat"),
        "the backend's choice reaches the client: {resp:?}"
    );

    let Accepted { request: req, ws } = backend.accept().await;
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_default();
    assert_eq!(target, path, "the request target as the client sent it");
    assert_eq!(one(&req, "Host"), "example.test");
    assert_eq!(one(&req, "Origin"), "https://app.example");
    assert_eq!(one(&req, "Cookie"), "session=abc; theme=dark");
    assert_eq!(one(&req, "Authorization"), "Bearer t0ken");
    assert_eq!(one(&req, "Sec-WebSocket-Protocol"), "chat, superchat");
    assert_eq!(one(&req, "X-Custom"), "hello world");
    assert_eq!(values(&req, "X-Multi"), ["1", "2"]);
    // Not from a trusted proxy: the client's claim is replaced.
    assert_eq!(one(&req, "X-Forwarded-For"), "127.0.0.1");
    assert_eq!(one(&req, "X-Forwarded-Proto"), "http");
    assert_eq!(one(&req, "X-Forwarded-Host"), "example.test");
    assert_eq!(one(&req, "Sec-WebSocket-Version"), "13");
    for gone in [
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "X-Secret",
    ] {
        assert!(
            values(&req, gone).is_empty(),
            "hop-by-hop {gone} was forwarded: {:?}",
            req.headers()
        );
    }
    let connection = values(&req, "Connection").join(",").to_ascii_lowercase();
    assert!(
        !connection.contains("x-secret"),
        "Connection: {connection:?}"
    );

    // And the connection works.
    let mut ws = ws;
    client.send(&client_frame(true, op::TEXT, b"hi")).await;
    assert_eq!(
        within("the message", ws.next()).await.unwrap().unwrap(),
        Message::Text("hi".into())
    );
}

/// Without an `X-Forwarded-For` from the client, the proxy starts one.
async fn forwarded_for_started(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let _client = connect(&proxy.url("/plain")).await;
    let req = backend.accept().await.request;
    assert_eq!(one(&req, "X-Forwarded-For"), "127.0.0.1");
    assert_eq!(one(&req, "X-Forwarded-Proto"), "http");
    assert_eq!(one(&req, "X-Forwarded-Host"), proxy.addr.to_string());
    assert_eq!(req.uri().path(), "/plain");
    assert!(
        values(&req, "Sec-WebSocket-Protocol").is_empty(),
        "no subprotocol was offered"
    );
}

/// A tungstenite client offering two subprotocols gets the backend's pick.
async fn subprotocol_chosen(driver: IoDriver) {
    let mut backend = Backend::start_choosing(Some("v2.chat")).await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let mut request = proxy.url("/").into_client_request().unwrap();
    // No space after the comma: tungstenite 0.24's client does not trim
    // the elements of its own list when it checks the answer.
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("v1.chat,v2.chat"),
    );
    let (mut client, resp) = within("the handshake", tokio_tungstenite::connect_async(request))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("v2.chat")
    );
    let mut be = backend.accept().await.ws;
    be.send(Message::Text("chosen".into())).await.unwrap();
    assert_eq!(next_data(&mut client).await, Message::Text("chosen".into()));
}

/// A backend choosing no subprotocol: the client's 101 names none.
async fn subprotocol_none(driver: IoDriver) {
    let backend = Backend::start().await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let req = upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat")]);
    let (_client, resp) = RawWs::connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), None, "{resp:?}");
}

/// A backend choosing a subprotocol the client did not offer: 502.
async fn subprotocol_not_offered_is_502(driver: IoDriver) {
    let backend = Backend::start_choosing(Some("mqtt")).await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let req = upgrade_request("/", &[("Sec-WebSocket-Protocol", "chat, superchat")]);
    let resp = http_exchange(proxy.addr, &req).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    // Offering nothing at all, the backend may choose nothing either.
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(proxy.counter("upgraded"), 0);
}

/// From a trusted proxy, several `X-Forwarded-For` headers (and a list)
/// are joined in order, then the peer's address appended; from anyone
/// else the header is the peer alone.
async fn forwarded_for_appended_to_several(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), |c| {
        c.trusted_proxies = wsedge::policy::cidr::CidrList::parse(&["127.0.0.1"]).unwrap();
    });
    let req = upgrade_request(
        "/",
        &[
            ("X-Forwarded-For", "198.51.100.1, 2001:db8::1"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "spoofed.example"),
        ],
    );
    let _client = RawWs::connect(proxy.addr, &req, &[]).await;
    let req = backend.accept().await.request;
    assert_eq!(
        one(&req, "X-Forwarded-For"),
        "198.51.100.1, 2001:db8::1, 203.0.113.7, 127.0.0.1"
    );
    assert_eq!(
        one(&req, "X-Forwarded-Proto"),
        "http",
        "the proxy's own, not the client's"
    );
    assert_eq!(
        one(&req, "X-Forwarded-Host"),
        "example.test",
        "the client's Host"
    );
}

/// By default the client's extensions are not offered to the backend.
async fn extensions_not_forwarded_by_default(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let req = upgrade_request(
        "/",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    );
    let (_client, resp) = RawWs::connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.header("Sec-WebSocket-Extensions"), None);
    let req = backend.accept().await.request;
    assert!(
        values(&req, "Sec-WebSocket-Extensions").is_empty(),
        "{req:?}"
    );
}

/// With `permessage_deflate = true`, the offer goes to the backend, its
/// answer to the client, and compressed (RSV1) frames pass both ways.
async fn permessage_deflate_passed_through(driver: IoDriver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.routes[0].permessage_deflate = true;
    });
    let offer = "permessage-deflate; client_max_window_bits";
    let req = upgrade_request("/", &[("Sec-WebSocket-Extensions", offer)]);
    // A raw backend that accepts the extension.
    let backend = async {
        let (stream, _) = within("the proxy to connect", listener.accept())
            .await
            .unwrap();
        let mut ws = RawWsBackend::new(stream);
        let head = ws.read_head().await;
        assert!(
            head.contains(offer),
            "the offer reached the backend: {head}"
        );
        ws.answer_101(&head, &["Sec-WebSocket-Extensions: permessage-deflate"])
            .await;
        ws.0
    };
    let ((mut client, resp), mut be) = tokio::join!(RawWs::connect(proxy.addr, &req, &[]), backend);
    assert_eq!(
        resp.header("Sec-WebSocket-Extensions"),
        Some("permessage-deflate")
    );

    // "Hello" compressed (RFC 7692 §7.2.3.1), RSV1 set.
    let deflated = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let mut up = client_frame(true, op::TEXT, &deflated);
    up[0] |= 0x40;
    client.send(&up).await;
    let mut down = frame(true, op::TEXT, &deflated, None);
    down[0] |= 0x40;
    be.send(&down).await;
    let (at_backend, at_client) = tokio::join!(be.read_frame_raw(), client.read_frame_raw());
    for (what, got) in [("backend", at_backend), ("client", at_client)] {
        let (first, f) = got;
        assert_eq!(first & 0x40, 0x40, "RSV1 reached the {what}");
        assert_eq!(
            f.payload, deflated,
            "the compressed payload reached the {what}"
        );
    }
}

/// The backend's first frame, written together with its 101, reaches the client.
async fn backend_first_frame_in_same_write(driver: IoDriver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let backend = async {
        let (stream, _) = within("the proxy to connect", listener.accept())
            .await
            .unwrap();
        let mut ws = RawWsBackend::new(stream);
        let head = ws.read_head().await;
        let mut answer = RawWsBackend::answer(&head, &[]);
        answer.extend(frame(true, op::TEXT, b"welcome", None));
        ws.0.send(&answer).await;
        ws.0
    };
    let request = upgrade_request("/", &[]);
    let ((mut client, _), _be) = tokio::join!(RawWs::connect(proxy.addr, &request, &[]), backend);
    let f = client.read_frame().await;
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (op::TEXT, &b"welcome"[..])
    );
}

/// A backend that sends `103 Early Hints` before its 101: the client ends
/// up with a working WebSocket (the 1xx relayed before the 101, or skipped).
async fn backend_interim_response_then_101(driver: IoDriver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let backend = async {
        let (stream, _) = within("the proxy to connect", listener.accept())
            .await
            .unwrap();
        let mut ws = RawWsBackend::new(stream);
        let head = ws.read_head().await;
        let mut answer =
            b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec();
        answer.extend(RawWsBackend::answer(&head, &[]));
        ws.0.send(&answer).await;
        ws.0
    };
    let client = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&upgrade_request("/", &[])).await.unwrap();
        // Read heads until a final one.
        let mut buf = Vec::new();
        loop {
            let mut chunk = vec![0u8; 4096];
            let n = within("the proxy's answer", s.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
            // Skip complete interim (1xx other than 101) heads.
            let text = String::from_utf8_lossy(&buf).into_owned();
            let mut rest = text.as_str();
            while let Some((head, after)) = rest.split_once("\r\n\r\n") {
                let interim = head.starts_with("HTTP/1.1 1") && !head.starts_with("HTTP/1.1 101");
                if !interim {
                    return head.to_string();
                }
                rest = after;
            }
        }
    };
    let (head, _be) = tokio::join!(client, backend);
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "the client's final answer: {head:?}"
    );
}

/// Routes: the longest matching prefix picks the upstream; no match is 404.
async fn routes_longest_prefix_and_404(driver: IoDriver) {
    let mut a = Backend::start().await;
    let mut b = Backend::start().await;
    let text = format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
[[upstream]]
name = "a"
servers = ["{}"]
[[upstream]]
name = "b"
servers = ["{}"]
[[route]]
path = "/api"
upstream = "a"
[[route]]
path = "/api/chat"
upstream = "b"
"#,
        a.addr, b.addr
    );
    let config = Config::parse(&text, "test").unwrap();
    let proxy = Proxy::start_config(driver, config);
    let _c1 = connect(&proxy.url("/api/chat/room?x=1")).await;
    assert_eq!(b.accept().await.request.uri().path(), "/api/chat/room");
    let _c2 = connect(&proxy.url("/api/other")).await;
    assert_eq!(a.accept().await.request.uri().path(), "/api/other");
    let resp = http_exchange(proxy.addr, &upgrade_request("/elsewhere", &[])).await;
    assert_eq!(resp.status, 404, "{resp:?}");
}

/// A raw backend's side of a handshake.
struct RawWsBackend(RawWs);

impl RawWsBackend {
    fn new(stream: tokio::net::TcpStream) -> Self {
        RawWsBackend(RawWs::from_stream(stream))
    }

    async fn read_head(&mut self) -> String {
        String::from_utf8(within("the upgrade request", self.0.read_head()).await).unwrap()
    }

    /// A 101 for the request `head`, with `extra` header lines.
    fn answer(head: &str, extra: &[&str]) -> Vec<u8> {
        let key = head
            .split("\r\n")
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim())
            })
            .expect("a key");
        let mut a = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
        );
        for l in extra {
            a.push_str(l);
            a.push_str("\r\n");
        }
        a.push_str("\r\n");
        a.into_bytes()
    }

    async fn answer_101(&mut self, head: &str, extra: &[&str]) {
        self.0.send(&Self::answer(head, extra)).await;
    }
}

both_drivers!(
    headers_path_and_query,
    forwarded_for_started,
    subprotocol_chosen,
    subprotocol_none,
    subprotocol_not_offered_is_502,
    forwarded_for_appended_to_several,
    extensions_not_forwarded_by_default,
    permessage_deflate_passed_through,
    backend_first_frame_in_same_write,
    backend_interim_response_then_101,
    routes_longest_prefix_and_404,
);
