//! Frame validation in the relay: the side that breaks the protocol gets the
//! close code for what it did (1002 unmasked/masked frame, 1007 invalid
//! UTF-8, 1009 oversized message), the other side 1001 (client at fault) or
//! 1014 (backend at fault), and the offending frame is not relayed.

#[macro_use]
mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wsedge::config::Config;

/// The next thing the backend receives must be a close with `code`.
async fn backend_first_gets_close(be: &mut BackendWs, code: u16) {
    match within("the backend's close", be.next()).await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), code, "backend close ({:?})", f.reason)
        }
        other => panic!("the backend expected close {code} first, got {other:?}"),
    }
}

/// A raw client and a tungstenite backend behind a proxy configured by `tweak`.
async fn raw_client_setup(
    driver: IoDriver,
    tweak: impl FnOnce(&mut Config),
) -> (Proxy, RawWs, BackendWs) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), tweak);
    let client = RawWs::client(proxy.addr).await;
    let be = backend.accept().await.ws;
    (proxy, client, be)
}

/// The client sent something it must be closed for: it gets `code`, the
/// backend 1001, and after the client answers the close its TCP connection ends.
async fn client_at_fault(
    driver: IoDriver,
    tweak: impl FnOnce(&mut Config),
    bytes: &[u8],
    code: u16,
) {
    let (proxy, mut client, mut be) = raw_client_setup(driver, tweak).await;
    client.send(bytes).await;
    // The backend gets 1001 first; the client's close follows the
    // backend's answer (frames the backend had under way come before it).
    backend_first_gets_close(&mut be, 1001).await;
    be.flush().await.unwrap(); // tungstenite's close answer
    let close = client.read_close().await;
    assert_eq!(close.close_code(), Some(code), "client close: {close:?}");
    assert!(!close.masked);
    client
        .send(&client_frame(true, op::CLOSE, &close_payload(code, "")))
        .await;
    client.read_eof().await;
    proxy.wait_counter("protocol_errors", 1).await;
}

async fn unmasked_client_frame_is_1002(driver: IoDriver) {
    client_at_fault(
        driver,
        |_| {},
        &frame(true, op::TEXT, b"not masked", None),
        1002,
    )
    .await;
}

async fn reserved_opcode_is_1002(driver: IoDriver) {
    client_at_fault(driver, |_| {}, &client_frame(true, 0x3, b"?"), 1002).await;
}

async fn invalid_utf8_is_1007(driver: IoDriver) {
    client_at_fault(
        driver,
        |_| {},
        &client_frame(true, op::TEXT, b"abc\xff\xfedef"),
        1007,
    )
    .await;
}

/// A code point cut by a fragment boundary and then completed wrongly.
async fn invalid_utf8_across_fragments_is_1007(driver: IoDriver) {
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |_| {}).await;
    client
        .send(&client_frame(false, op::TEXT, b"euro: \xe2\x82"))
        .await;
    client.send(&client_frame(true, op::CONT, b"\x28")).await;
    let close = client.read_close().await;
    assert_eq!(close.close_code(), Some(1007), "{close:?}");
    // The first fragment may have been relayed already; the message must not complete.
    loop {
        match within("the backend's close", be.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(Message::Close(None))) => panic!("close without code"),
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                panic!("the backend got an invalid message: {m:?}")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("backend: {e}"),
            None => panic!("backend: stream ended without a close"),
        }
    }
}

/// Valid UTF-8 cut mid-code-point by fragment boundaries passes.
async fn utf8_split_across_fragments_passes(driver: IoDriver) {
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |_| {}).await;
    let text = "€uro ✓ 🦀".as_bytes();
    let mut bytes = client_frame(false, op::TEXT, &text[..1]);
    bytes.extend(client_frame(false, op::CONT, &text[1..9]));
    bytes.extend(client_frame(true, op::CONT, &text[9..]));
    client.send(&bytes).await;
    assert_eq!(
        within("the message", be.next()).await.unwrap().unwrap(),
        Message::Text("€uro ✓ 🦀".into())
    );
}

async fn invalid_utf8_passes_when_not_validated(driver: IoDriver) {
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |c| {
        c.routes[0].validate_utf8 = false;
    })
    .await;
    client
        .send(&client_frame(true, op::TEXT, b"abc\xff\xfedef"))
        .await;
    // tungstenite (which validates) refuses it: it did arrive unchanged.
    match within("the message", be.next()).await {
        Some(Err(e)) => assert!(e.to_string().contains("UTF-8"), "{e}"),
        other => panic!("expected tungstenite's UTF-8 error, got {other:?}"),
    }
}

async fn oversized_message_is_1009(driver: IoDriver) {
    let limit = |c: &mut Config| c.routes[0].max_message_size = 1024;
    client_at_fault(
        driver,
        limit,
        &client_frame(true, op::BINARY, &[7; 1025]),
        1009,
    )
    .await;
}

/// Exactly the limit passes; one byte more over two fragments does not.
async fn oversized_fragmented_message_is_1009(driver: IoDriver) {
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |c| {
        c.routes[0].max_message_size = 1024;
    })
    .await;
    let mut bytes = client_frame(false, op::BINARY, &[1; 600]);
    bytes.extend(client_frame(true, op::CONT, &[2; 424]));
    client.send(&bytes).await;
    match within("the message", be.next()).await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(b.len(), 1024),
        m => panic!("{m:?}"),
    }
    let mut bytes = client_frame(false, op::BINARY, &[1; 600]);
    bytes.extend(client_frame(true, op::CONT, &[2; 425]));
    client.send(&bytes).await;
    let close = client.read_close().await;
    assert_eq!(close.close_code(), Some(1009), "{close:?}");
    loop {
        match within("the backend's close", be.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(Message::Binary(b))) => panic!("an oversized message got through: {}", b.len()),
            Some(Ok(_)) => {}
            other => panic!("backend: {other:?}"),
        }
    }
}

/// A raw client and a raw backend. (Raw on the client side too: tungstenite
/// 0.24 does not know close code 1014, answers it with 1002 and reports
/// 1002 "Protocol violation" in its place.)
async fn raw_backend_setup(
    driver: IoDriver,
    tweak: impl FnOnce(&mut Config),
) -> (Proxy, RawWs, RawWs) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], tweak);
    let (client, (be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    (proxy, client, be)
}

/// The backend sent something it must be closed for: it gets `code`, the
/// client 1014, and the offending frame reaches neither.
async fn backend_at_fault(
    driver: IoDriver,
    tweak: impl FnOnce(&mut Config),
    bytes: &[u8],
    code: u16,
) {
    let (proxy, mut client, mut be) = raw_backend_setup(driver, tweak).await;
    be.send(bytes).await;
    let close = be.read_close().await;
    assert_eq!(close.close_code(), Some(code), "backend close: {close:?}");
    assert!(close.masked, "frames to the backend are masked");
    let first = client.read_frame().await;
    assert_eq!(
        first.opcode,
        op::CLOSE,
        "the client's first frame: {first:?}"
    );
    assert_eq!(first.close_code(), Some(1014), "client close: {first:?}");
    client
        .send(&client_frame(true, op::CLOSE, &close_payload(1014, "")))
        .await;
    be.send(&frame(true, op::CLOSE, &close_payload(code, ""), None))
        .await;
    client.read_eof().await;
    proxy.wait_counter("protocol_errors", 1).await;
}

async fn masked_backend_frame_is_1002(driver: IoDriver) {
    backend_at_fault(
        driver,
        |_| {},
        &frame(true, op::TEXT, b"masked", Some(MASK)),
        1002,
    )
    .await;
}

async fn invalid_utf8_from_backend_is_1007(driver: IoDriver) {
    backend_at_fault(
        driver,
        |_| {},
        &frame(true, op::TEXT, b"\xc3\x28", None),
        1007,
    )
    .await;
}

async fn oversized_from_backend_is_1009(driver: IoDriver) {
    backend_at_fault(
        driver,
        |c| c.routes[0].max_message_size = 1024,
        &frame(true, op::BINARY, &[0; 2000], None),
        1009,
    )
    .await;
}

async fn reserved_rsv_bits_is_1002(driver: IoDriver) {
    let mut f = client_frame(true, op::TEXT, b"rsv");
    f[0] |= 0x40; // RSV1 without a negotiated extension
    client_at_fault(driver, |_| {}, &f, 1002).await;
}

async fn oversized_control_frame_is_1002(driver: IoDriver) {
    client_at_fault(
        driver,
        |_| {},
        &client_frame(true, op::PING, &[0; 126]),
        1002,
    )
    .await;
}

async fn fragmented_control_frame_is_1002(driver: IoDriver) {
    client_at_fault(driver, |_| {}, &client_frame(false, op::PING, b"p"), 1002).await;
}

async fn continuation_without_message_is_1002(driver: IoDriver) {
    client_at_fault(
        driver,
        |_| {},
        &client_frame(true, op::CONT, b"orphan"),
        1002,
    )
    .await;
}

async fn new_message_inside_fragmented_is_1002(driver: IoDriver) {
    let mut bytes = client_frame(false, op::TEXT, b"first ");
    bytes.extend(client_frame(true, op::TEXT, b"second"));
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |_| {}).await;
    client.send(&bytes).await;
    loop {
        match within("the backend's close", be.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 1001);
                break;
            }
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                panic!("the backend got a message: {m:?}")
            }
            Some(Ok(_)) => {}
            other => panic!("backend: {other:?}"),
        }
    }
    be.flush().await.unwrap(); // tungstenite's close answer
    let close = client.read_close().await;
    assert_eq!(close.close_code(), Some(1002), "{close:?}");
}

async fn length_with_top_bit_is_1002(driver: IoDriver) {
    let mut f = vec![0x82, 0x80 | 127];
    f.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
    f.extend_from_slice(&MASK);
    f.extend_from_slice(&[0; 5]);
    client_at_fault(driver, |_| {}, &f, 1002).await;
}

async fn one_byte_close_payload_is_1002(driver: IoDriver) {
    client_at_fault(driver, |_| {}, &client_frame(true, op::CLOSE, &[3]), 1002).await;
}

async fn invalid_close_codes_are_1002(driver: IoDriver) {
    // 1005 and 1006 must never be on the wire; 999 and 1016 are not codes.
    for code in [1005, 1006, 999, 1016] {
        let (_proxy, mut client, mut be) = raw_client_setup(driver, |_| {}).await;
        client
            .send(&client_frame(true, op::CLOSE, &close_payload(code, "")))
            .await;
        let close = client.read_close().await;
        assert_eq!(
            close.close_code(),
            Some(1002),
            "after close {code}: {close:?}"
        );
        backend_first_gets_close(&mut be, 1001).await;
    }
}

async fn close_reason_invalid_utf8_is_1007(driver: IoDriver) {
    let mut payload = close_payload(1000, "");
    payload.extend_from_slice(b"bye \xff");
    client_at_fault(
        driver,
        |_| {},
        &client_frame(true, op::CLOSE, &payload),
        1007,
    )
    .await;
}

/// Autobahn 3.2 and kin: a valid message, then a bad frame, in one write.
/// The backend's echo of the valid message reaches the client before the
/// client's 1002 (which waits for the backend's answer to its 1001).
async fn echo_under_way_arrives_before_the_error_close(driver: IoDriver) {
    let (_proxy, mut client, mut be) = raw_client_setup(driver, |_| {}).await;
    let mut bytes = client_frame(true, op::TEXT, b"Hello, world!");
    bytes.extend(client_frame(true, 0x3, b"?"));
    bytes.extend(client_frame(true, op::PING, b""));
    client.send(&bytes).await;
    match within("the valid message", be.next()).await {
        Some(Ok(Message::Text(t))) => {
            assert_eq!(t.as_str(), "Hello, world!");
            be.send(Message::text("Hello, world!")).await.unwrap();
        }
        other => panic!("backend: {other:?}"),
    }
    backend_first_gets_close(&mut be, 1001).await;
    be.flush().await.unwrap();
    let echo = client.read_frame().await;
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (op::TEXT, &b"Hello, world!"[..])
    );
    let close = client.read_close().await;
    assert_eq!(close.close_code(), Some(1002), "{close:?}");
}

both_drivers!(
    echo_under_way_arrives_before_the_error_close,
    unmasked_client_frame_is_1002,
    reserved_opcode_is_1002,
    invalid_utf8_is_1007,
    invalid_utf8_across_fragments_is_1007,
    utf8_split_across_fragments_passes,
    invalid_utf8_passes_when_not_validated,
    oversized_message_is_1009,
    oversized_fragmented_message_is_1009,
    masked_backend_frame_is_1002,
    invalid_utf8_from_backend_is_1007,
    oversized_from_backend_is_1009,
    reserved_rsv_bits_is_1002,
    oversized_control_frame_is_1002,
    fragmented_control_frame_is_1002,
    continuation_without_message_is_1002,
    new_message_inside_fragmented_is_1002,
    length_with_top_bit_is_1002,
    one_byte_close_payload_is_1002,
    invalid_close_codes_are_1002,
    close_reason_invalid_utf8_is_1007,
);
