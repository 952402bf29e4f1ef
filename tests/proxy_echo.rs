//! Messages go through the proxy and come back intact: text and binary at
//! every length-encoding boundary up to the default 16 MiB limit, through a
//! tokio-tungstenite echo backend and through `builtin:echo`; fragmented
//! messages with pings between the fragments, both directions; pings and
//! pongs end to end.

#[macro_use]
mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Every payload-length encoding and its boundaries (7-bit, 16-bit, 64-bit),
/// and the largest message the default configuration allows.
const SIZES: &[usize] = &[0, 1, 125, 126, 65535, 65536, 16 << 20];

async fn echo_all_sizes(client: &mut Client) {
    for &len in SIZES {
        for text in [true, false] {
            let m = message(text, len);
            // The 16 MiB message is written whole before its echo is read,
            // through a debug build: a CI machine running the other tests
            // alongside may need more than one ordinary step for it.
            let limit = if len >= 1 << 20 { 6 * STEP } else { STEP };
            within_for(limit, "sending", client.send(m.clone()))
                .await
                .unwrap();
            let back = next_data(client).await;
            assert!(
                back == m,
                "{} message of {len} bytes came back different ({} bytes, {})",
                if text { "text" } else { "binary" },
                back.len(),
                if back.is_text() { "text" } else { "binary" },
            );
        }
    }
}

async fn echo_through_tungstenite(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let mut client = connect(&proxy.url("/echo")).await;
    echo_all_sizes(&mut client).await;
    close_normally(&mut client).await;
}

/// Sends close 1000 and expects 1000 back.
async fn close_normally(client: &mut Client) {
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    client.close(Some(bye)).await.unwrap();
    expect_close_code(client, 1000, "client").await;
}

async fn echo_through_builtin(driver: IoDriver) {
    let proxy = Proxy::start(driver, &["builtin:echo".to_string()]);
    let mut client = connect(&proxy.url("/")).await;
    echo_all_sizes(&mut client).await;
    close_normally(&mut client).await;
}

/// Many small messages written back to back, to exercise frames split and
/// joined across the relay's reads.
async fn pipelined_small_messages(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let client = connect(&proxy.url("/")).await;
    let (mut tx, mut rx) = client.split();
    let n = 2000;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            tx.feed(Message::Text(format!(
                "message {i} {}",
                "x".repeat(i % 300)
            )))
            .await
            .unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    for i in 0..n {
        let m = within("an echo", rx.next()).await.unwrap().unwrap();
        assert_eq!(
            m,
            Message::Text(format!("message {i} {}", "x".repeat(i % 300)))
        );
    }
    drop(writer.await.unwrap());
}

/// A client's fragmented text message with pings between the fragments
/// (hand-written frames) reaches the backend whole, and each ping's pong
/// comes back from the backend.
async fn client_fragments_with_pings(driver: IoDriver) {
    let backend = echo_backend().await;
    let proxy = Proxy::start(driver, &[backend.to_string()]);
    let mut ws = RawWs::client(proxy.addr).await;
    let mut bytes = client_frame(false, op::TEXT, "Hello, ".as_bytes());
    bytes.extend(client_frame(true, op::PING, b"p1"));
    bytes.extend(client_frame(false, op::CONT, "wörld".as_bytes()));
    ws.send(&bytes).await;
    // The rest in a later write, so a fragment boundary falls between reads.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut bytes = client_frame(true, op::PING, b"p2");
    bytes.extend(client_frame(false, op::CONT, b""));
    bytes.extend(client_frame(true, op::CONT, "!".as_bytes()));
    ws.send(&bytes).await;

    let mut pongs = Vec::new();
    let mut text = None;
    while text.is_none() || pongs.len() < 2 {
        let f = ws.read_frame().await;
        assert!(!f.masked, "a frame to the client is masked: {f:?}");
        match f.opcode {
            op::PONG => pongs.push(f.payload),
            op::TEXT => {
                assert!(f.fin, "tungstenite echoes unfragmented");
                text = Some(String::from_utf8(f.payload).unwrap());
            }
            other => panic!("unexpected frame {other:#x}: {f:?}"),
        }
    }
    assert_eq!(text.as_deref(), Some("Hello, wörld!"));
    assert_eq!(pongs, [b"p1".to_vec(), b"p2".to_vec()]);

    ws.send(&client_frame(true, op::CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(ws.read_close().await.close_code(), Some(1000));
}

/// A backend's fragmented message with pings between the fragments reaches a
/// tungstenite client whole (and the pings too); tungstenite's pongs reach
/// the backend.
async fn backend_fragments_with_pings(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let url = proxy.url("/");
    let client = tokio::spawn(async move {
        let mut c = connect(&url).await;
        let mut pings = Vec::new();
        let text = loop {
            match within("a message", c.next()).await.unwrap().unwrap() {
                Message::Ping(p) => pings.push(p),
                Message::Binary(b) => break b,
                m => panic!("unexpected {m:?}"),
            }
        };
        // Let tungstenite flush its pongs, then close.
        c.close(None).await.unwrap();
        assert_eq!(expect_close(&mut c).await, None);
        (pings, text)
    });
    let (mut be, _) = RawWs::accept(&listener).await;
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let mut bytes = frame(false, op::BINARY, &big[..10], None);
    bytes.extend(frame(true, op::PING, b"a", None));
    bytes.extend(frame(false, op::CONT, &big[10..66_000], None));
    bytes.extend(frame(true, op::PING, b"b", None));
    bytes.extend(frame(true, op::CONT, &big[66_000..], None));
    be.send(&bytes).await;

    let mut pongs = Vec::new();
    loop {
        let f = be.read_frame().await;
        assert!(f.masked, "a frame to the backend is unmasked: {f:?}");
        match f.opcode {
            op::PONG => pongs.push(f.payload),
            op::CLOSE => {
                be.send(&frame(true, op::CLOSE, &[], None)).await;
                break;
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert_eq!(pongs, [b"a".to_vec(), b"b".to_vec()]);
    let (pings, got) = within("the client", client).await.unwrap();
    assert_eq!(pings, [b"a".to_vec(), b"b".to_vec()]);
    assert!(got == big, "the reassembled message differs");
}

/// A client's ping is relayed to the backend and the backend's pong back;
/// a backend's ping reaches the client and its pong the backend.
async fn ping_pong_end_to_end(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let mut client = connect(&proxy.url("/")).await;
    let mut be = backend.accept().await.ws;

    client
        .send(Message::Ping(b"from client".to_vec()))
        .await
        .unwrap();
    match within("the ping", be.next()).await.unwrap().unwrap() {
        Message::Ping(p) => assert_eq!(p, b"from client"),
        m => panic!("backend got {m:?}"),
    }
    be.flush().await.unwrap(); // tungstenite's queued pong
    match within("the pong", client.next()).await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(p, b"from client"),
        m => panic!("client got {m:?}"),
    }

    be.send(Message::Ping(b"from backend".to_vec()))
        .await
        .unwrap();
    match within("the ping", client.next()).await.unwrap().unwrap() {
        Message::Ping(p) => assert_eq!(p, b"from backend"),
        m => panic!("client got {m:?}"),
    }
    client.flush().await.unwrap();
    match within("the pong", be.next()).await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(p, b"from backend"),
        m => panic!("backend got {m:?}"),
    }
    // An unsolicited pong passes too.
    be.send(Message::Pong(b"unsolicited".to_vec()))
        .await
        .unwrap();
    match within("the pong", client.next()).await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(p, b"unsolicited"),
        m => panic!("client got {m:?}"),
    }
}

/// Frames written a byte at a time, both ways: headers and payloads split
/// at every offset (including inside UTF-8 sequences) still relay intact.
async fn trickled_frames(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let (mut client, (mut be, _)) =
        tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    let text = "ünïcödé → 🦀 ".repeat(30); // > 125 bytes: a 16-bit length
    let messages: Vec<(u8, Vec<u8>)> = vec![
        (op::TEXT, text.clone().into_bytes()),
        (op::BINARY, vec![]),
        (op::PING, b"ping".to_vec()),
        (op::BINARY, (0..300u32).map(|i| i as u8).collect()),
        (op::TEXT, "x".repeat(125).into_bytes()),
    ];
    let mut up = Vec::new();
    let mut down = Vec::new();
    for (opcode, payload) in &messages {
        up.extend(client_frame(true, *opcode, payload));
        down.extend(frame(true, *opcode, payload, None));
    }
    for &b in &up {
        client.send(&[b]).await;
        tokio::task::yield_now().await;
    }
    for &b in &down {
        be.send(&[b]).await;
        tokio::task::yield_now().await;
    }
    for (opcode, payload) in &messages {
        let at_backend = be.read_frame().await;
        assert_eq!((at_backend.opcode, &at_backend.payload), (*opcode, payload));
        let at_client = client.read_frame().await;
        assert_eq!((at_client.opcode, &at_client.payload), (*opcode, payload));
    }
}

both_drivers!(
    echo_through_tungstenite,
    echo_through_builtin,
    pipelined_small_messages,
    client_fragments_with_pings,
    backend_fragments_with_pings,
    ping_pong_end_to_end,
    trickled_frames,
);
