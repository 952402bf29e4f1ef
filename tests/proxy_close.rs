//! How relayed connections end: close frames relayed both ways with their
//! codes and reasons; a client that vanishes (reset or EOF) gets its backend
//! a 1001 within a second; a backend that vanishes gets its client a 1011;
//! shutdown sends 1001 to both sides.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn raw_pair(driver: IoDriver) -> (Proxy, RawWs, RawWs) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let (client, (be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    (proxy, client, be)
}

/// The client's close (code and reason) reaches the backend; the backend's
/// answer, with a different code, reaches the client; both TCP connections end.
async fn client_close_relayed(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let url = proxy.url("/");
    let (mut client, (mut be, _)) = tokio::join!(connect(&url), RawWs::accept(&listener));

    let bye = CloseFrame {
        code: CloseCode::Library(4000),
        reason: "client bye".into(),
    };
    client.send(Message::Close(Some(bye))).await.unwrap();
    let close = be.read_close().await;
    assert_eq!(close.payload, close_payload(4000, "client bye"));
    be.send(&frame(
        true,
        op::CLOSE,
        &close_payload(4001, "backend ack"),
        None,
    ))
    .await;
    let got = expect_close(&mut client).await.expect("a close code");
    assert_eq!((u16::from(got.code), &*got.reason), (4001, "backend ack"));
    assert!(
        within("the client's stream to end", client.next())
            .await
            .is_none()
    );
    be.read_eof().await;
    proxy.wait_counter("closed_normally", 1).await;
}

/// The backend's close reaches a tungstenite client, whose answer reaches
/// the backend.
async fn backend_close_relayed(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let url = proxy.url("/");
    let (mut client, (mut be, _)) = tokio::join!(connect(&url), RawWs::accept(&listener));

    be.send(&frame(
        true,
        op::CLOSE,
        &close_payload(4002, "server bye"),
        None,
    ))
    .await;
    let got = expect_close(&mut client).await.expect("a close code");
    assert_eq!((u16::from(got.code), &*got.reason), (4002, "server bye"));
    client.flush().await.unwrap(); // tungstenite's answer
    let answer = be.read_close().await;
    assert!(answer.masked);
    assert_eq!(
        answer.close_code(),
        Some(4002),
        "tungstenite echoes the code"
    );
    be.read_eof().await;
    assert!(
        within("the client's stream to end", client.next())
            .await
            .is_none()
    );
    proxy.wait_counter("closed_normally", 1).await;
}

/// Both sides send close at once: each gets the other's.
async fn simultaneous_close(driver: IoDriver) {
    let (proxy, mut client, mut be) = raw_pair(driver).await;
    let from_client = client_frame(true, op::CLOSE, &close_payload(4100, "c"));
    let from_backend = frame(true, op::CLOSE, &close_payload(4200, "b"), None);
    let (_, _) = tokio::join!(client.send(&from_client), be.send(&from_backend));
    assert_eq!(client.read_close().await.payload, close_payload(4200, "b"));
    assert_eq!(be.read_close().await.payload, close_payload(4100, "c"));
    client.read_eof().await;
    proxy.wait_counter("closed_normally", 1).await;
}

/// How a client vanishes.
#[derive(Debug, Clone, Copy)]
enum Vanish {
    /// TCP reset (SO_LINGER 0, then close).
    Reset,
    /// TCP FIN.
    Eof,
}

/// The client vanishes between two fragments of a message: the backend gets
/// close 1001 within a second.
async fn client_vanishes_mid_message(driver: IoDriver, how: Vanish) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start(driver, &backend.upstream());
    let mut client = RawWs::client(proxy.addr).await;
    let mut be = backend.accept().await.ws;
    client
        .send(&client_frame(false, op::BINARY, &[5; 1000]))
        .await;
    // Whether or not the proxy has read the fragment when the client goes,
    // the backend gets 1001; the mid-message case itself is pinned exactly
    // (no timing) in tests/relay_core.rs.
    let started = Instant::now();
    match how {
        Vanish::Reset => {
            reset(client.stream);
        }
        Vanish::Eof => client.stream.shutdown().await.unwrap(),
    }
    // (tungstenite holds the unfinished message: the close comes first.)
    let close = match within("the backend's close", be.next()).await {
        Some(Ok(Message::Close(c))) => c,
        other => panic!("backend: no close frame after the client vanished: {other:?}"),
    };
    let took = started.elapsed();
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1001, "{close:?}");
    assert!(took < Duration::from_secs(1), "1001 after {took:?}");
    be.flush().await.unwrap();
    proxy.wait_counter("closed_otherwise", 1).await;
}

async fn client_reset_mid_message(driver: IoDriver) {
    client_vanishes_mid_message(driver, Vanish::Reset).await;
}

async fn client_eof_mid_message(driver: IoDriver) {
    client_vanishes_mid_message(driver, Vanish::Eof).await;
}

/// The client vanishes in the middle of a frame: a close frame cannot be
/// sent to the backend without corrupting its stream, so its TCP connection
/// ends instead, within a second, with no more bytes of the frame.
async fn client_reset_mid_frame(driver: IoDriver) {
    let (proxy, mut client, mut be) = raw_pair(driver).await;
    let whole = client_frame(true, op::BINARY, &[9; 100_000]);
    client.send(&whole[..5000]).await;
    // The backend has the whole prefix: the proxy is mid-frame for sure.
    let mut prefix = vec![0u8; 5000];
    within(
        "the prefix at the backend",
        tokio::io::AsyncReadExt::read_exact(&mut be.stream, &mut prefix),
    )
    .await
    .unwrap();
    let started = Instant::now();
    reset(client.stream);
    within("the backend's connection to end", async {
        let mut more = 0;
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut be.stream, &mut [0u8; 65536]).await {
            if n == 0 {
                break;
            }
            more += n;
        }
        assert_eq!(more, 0, "bytes after the 5000-byte prefix");
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "ended after {took:?}");
    proxy.wait_counter("closed_otherwise", 1).await;
}

/// How a backend vanishes.
async fn backend_vanishes(driver: IoDriver, rst: bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(driver, &[listener.local_addr().unwrap().to_string()]);
    let url = proxy.url("/");
    let (mut client, (mut be, _)) = tokio::join!(connect(&url), RawWs::accept(&listener));
    be.send(&frame(true, op::TEXT, b"last words", None)).await;
    assert_eq!(
        next_data(&mut client).await,
        Message::Text("last words".into())
    );
    let started = Instant::now();
    if rst {
        reset(be.stream);
    } else {
        drop(be);
    }
    let close = expect_close(&mut client).await.expect("a close code");
    assert_eq!(u16::from(close.code), 1011, "{close:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        within("the client's stream to end", client.next())
            .await
            .is_none(),
        "after tungstenite answered the close"
    );
    proxy.wait_counter("closed_otherwise", 1).await;
}

async fn backend_killed_is_1011(driver: IoDriver) {
    backend_vanishes(driver, false).await;
}

async fn backend_reset_is_1011(driver: IoDriver) {
    backend_vanishes(driver, true).await;
}

/// `Server::shutdown` closes both sides with 1001 and returns once they
/// have answered (well within the grace period).
async fn shutdown_sends_1001(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), |c| {
        c.timeouts.shutdown_grace = Duration::from_secs(3);
    });
    let mut client = connect(&proxy.url("/")).await;
    let mut be = backend.accept().await.ws;
    client.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_data(&mut be).await, Message::Text("hello".into()));

    let started = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || drop(proxy));
    let (c, b) = tokio::join!(expect_close(&mut client), expect_close(&mut be));
    assert_eq!(c.map(|f| u16::from(f.code)), Some(1001), "client");
    assert_eq!(b.map(|f| u16::from(f.code)), Some(1001), "backend");
    let (_, _) = tokio::join!(client.flush(), be.flush());
    within("shutdown", stopping).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?} though both sides answered",
        started.elapsed()
    );
}

/// No traffic for `timeouts.idle`: both sides get 1001; traffic resets the timer.
async fn idle_timeout_sends_1001(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), |c| {
        c.timeouts.idle = Duration::from_millis(400);
    });
    let mut client = connect(&proxy.url("/")).await;
    let mut be = backend.accept().await.ws;
    let started = Instant::now();
    // Traffic every 200 ms for a second keeps it open.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        client
            .send(Message::Text(format!("tick {i}")))
            .await
            .unwrap();
        assert_eq!(next_data(&mut be).await, Message::Text(format!("tick {i}")));
    }
    let (c, b) = tokio::join!(expect_close(&mut client), expect_close(&mut be));
    let idle_for = started.elapsed();
    assert_eq!(c.map(|f| u16::from(f.code)), Some(1001), "client");
    assert_eq!(b.map(|f| u16::from(f.code)), Some(1001), "backend");
    assert!(
        idle_for >= Duration::from_millis(1300) && idle_for < Duration::from_secs(3),
        "closed {idle_for:?} after start, 1 s of traffic then a 400 ms idle timeout"
    );
    let (_, _) = tokio::join!(client.flush(), be.flush());
    proxy.wait_counter("closed_otherwise", 1).await;
}

/// A client that sends its close and then half-closes its TCP connection
/// (as many clients do) still gets the backend's close answer.
async fn client_close_then_half_close(driver: IoDriver) {
    let (proxy, mut client, mut be) = raw_pair(driver).await;
    client
        .send(&client_frame(true, op::CLOSE, &close_payload(1000, "done")))
        .await;
    client.stream.shutdown().await.unwrap();
    let close = be.read_close().await;
    assert_eq!(
        close.payload,
        close_payload(1000, "done"),
        "the client's close, not a 1001"
    );
    be.send(&frame(true, op::CLOSE, &close_payload(1000, "ack"), None))
        .await;
    let answer = client.read_close().await;
    assert_eq!(answer.payload, close_payload(1000, "ack"));
    client.read_eof().await;
    proxy.wait_counter("closed_normally", 1).await;
}

/// A close that is never answered: after `timeouts.close` both connections
/// are dropped.
async fn unanswered_close_times_out(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.timeouts.close = Duration::from_millis(300);
    });
    let (mut client, (mut be, _)) =
        tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    let started = Instant::now();
    be.send(&frame(true, op::CLOSE, &close_payload(1000, ""), None))
        .await;
    assert_eq!(client.read_close().await.close_code(), Some(1000));
    // The client never answers.
    let (_, _) = tokio::join!(client.read_eof(), be.read_eof());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "dropped after {took:?} with a 300 ms close timeout"
    );
}

both_drivers!(
    client_close_relayed,
    backend_close_relayed,
    simultaneous_close,
    client_reset_mid_message,
    client_eof_mid_message,
    client_reset_mid_frame,
    backend_killed_is_1011,
    backend_reset_is_1011,
    shutdown_sends_1001,
    idle_timeout_sends_1001,
    client_close_then_half_close,
    unanswered_close_times_out,
);
