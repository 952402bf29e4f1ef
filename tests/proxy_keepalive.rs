//! Keepalive (per-route `ping_interval` and `pong_timeout`): wsedge pings a
//! leg that has sent nothing for `ping_interval` with an 8-byte token
//! (masked toward the backend, unmasked toward the client) and consumes the
//! pong that answers it; a leg that sends nothing for `pong_timeout` after
//! that ping has its TCP connection dropped, and the other leg gets 1001
//! (client dead) or 1011 (backend dead). The endpoints' own pings and pongs
//! are relayed end to end, and a leg that keeps sending is never pinged.

#[macro_use]
mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// `ping_interval` in these tests.
const PING_INTERVAL: Duration = Duration::from_millis(200);

/// `pong_timeout` in these tests, unless one needs a slower peer.
const PONG_TIMEOUT: Duration = Duration::from_millis(400);

/// Long enough for several keepalive pings on a silent leg.
const SILENCE: Duration = Duration::from_millis(1200);

/// The pings a silent leg must get in [`SILENCE`] (6 intervals, less slack
/// for the pong round trips and a loaded machine).
const MIN_PINGS: usize = 3;

/// Keepalive on every route.
fn keepalive(pong_timeout: Duration) -> impl FnOnce(&mut Config) {
    move |c| {
        for r in &mut c.routes {
            r.ping_interval = PING_INTERVAL;
            r.pong_timeout = pong_timeout;
        }
    }
}

/// A proxy with keepalive, a raw client and a raw backend.
async fn raw_pair(driver: IoDriver, pong_timeout: Duration) -> (Proxy, RawWs, RawWs) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = [listener.local_addr().unwrap().to_string()];
    let proxy = Proxy::start_with(driver, &upstream, keepalive(pong_timeout));
    let (client, (be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    (proxy, client, be)
}

/// Which end a raw peer is: a client masks what it sends, a backend does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

/// Asserts that `f` is one of wsedge's keepalive pings to `side` (masked
/// only toward a backend, an 8-byte payload); returns its token.
fn keepalive_token(f: &Frame, side: Side) -> [u8; 8] {
    assert_eq!(
        (f.opcode, f.fin),
        (op::PING, true),
        "{side:?}: expected wsedge's ping, got {f:?}"
    );
    assert_eq!(
        f.masked,
        side == Side::Backend,
        "{side:?}: wsedge's ping is masked toward the backend only: {f:?}"
    );
    f.payload
        .as_slice()
        .try_into()
        .unwrap_or_else(|_| panic!("{side:?}: an 8-byte ping token, got {f:?}"))
}

/// The pong `side` sends with `payload`.
fn pong(side: Side, payload: &[u8]) -> Vec<u8> {
    match side {
        Side::Client => client_frame(true, op::PONG, payload),
        Side::Backend => frame(true, op::PONG, payload, None),
    }
}

/// Reads `ws` until `stop` resolves, answering each of wsedge's keepalive
/// pings with the right pong; any other frame (or EOF) fails the test.
/// Returns the tokens.
async fn keep_answering(
    ws: &mut RawWs,
    side: Side,
    stop: impl Future<Output = ()>,
) -> Vec<[u8; 8]> {
    let mut stop = std::pin::pin!(stop);
    let mut tokens = Vec::new();
    loop {
        // Reading a frame is cancel-safe; the pong is written outside the select.
        let f = tokio::select! {
            () = &mut stop => return tokens,
            f = ws.try_read_frame() => f,
        };
        let f = f.unwrap_or_else(|| panic!("{side:?}: EOF while answering pings"));
        let token = keepalive_token(&f, side);
        ws.send(&pong(side, &token)).await;
        tokens.push(token);
    }
}

/// Reads `ws`, answering wsedge's keepalive pings (8-byte pings other than
/// `except`), until another frame comes; returns it.
async fn next_endpoint_frame(ws: &mut RawWs, side: Side, except: Option<&[u8]>) -> Frame {
    loop {
        let f = ws.read_frame().await;
        if f.opcode == op::PING && f.payload.len() == 8 && except != Some(&f.payload[..]) {
            let token = keepalive_token(&f, side);
            ws.send(&pong(side, &token)).await;
        } else {
            return f;
        }
    }
}

/// Every message a tungstenite peer receives until `until` (it answers pings
/// as it reads).
async fn listen<S>(ws: &mut WebSocketStream<S>, until: tokio::time::Instant) -> Vec<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut got = Vec::new();
    while let Ok(m) = tokio::time::timeout_at(until, ws.next()).await {
        got.push(m.expect("the stream goes on").expect("a message"));
    }
    got
}

/// The next message that is not one of wsedge's keepalive pings (an 8-byte
/// ping, answered by tungstenite).
async fn next_not_keepalive<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = within("a message", ws.next())
            .await
            .expect("a message, not the end of the stream")
            .expect("a message, not an error");
        if !matches!(&m, Message::Ping(p) if p.len() == 8) {
            return m;
        }
    }
}

/// Two tungstenite peers (which answer pings) stay connected through several
/// silent intervals; each sees only wsedge's 8-byte pings, never a pong (the
/// pongs answering wsedge are consumed); then an echo and a clean close work.
async fn silent_tungstenite_peers_stay(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), keepalive(PONG_TIMEOUT));
    let mut client = connect(&proxy.url("/")).await;
    let mut be = backend.accept().await.ws;

    let until = tokio::time::Instant::now() + SILENCE;
    let (c, b) = tokio::join!(listen(&mut client, until), listen(&mut be, until));
    for (who, got) in [("client", &c), ("backend", &b)] {
        assert!(
            got.iter()
                .all(|m| matches!(m, Message::Ping(p) if p.len() == 8)),
            "{who}: only wsedge's 8-byte pings while silent, got {got:?}"
        );
        assert!(
            got.len() >= MIN_PINGS,
            "{who}: {} pings in {SILENCE:?} of silence, ping_interval {PING_INTERVAL:?}",
            got.len()
        );
    }

    client
        .send(Message::Text("still there?".into()))
        .await
        .unwrap();
    assert_eq!(
        next_not_keepalive(&mut be).await,
        Message::Text("still there?".into())
    );
    be.send(Message::Text("yes".into())).await.unwrap();
    assert_eq!(
        next_not_keepalive(&mut client).await,
        Message::Text("yes".into())
    );
    client.send(Message::Close(None)).await.unwrap();
    assert!(
        matches!(next_not_keepalive(&mut be).await, Message::Close(_)),
        "the backend gets the client's close, and no pong"
    );
    be.flush().await.unwrap();
    assert!(
        matches!(next_not_keepalive(&mut client).await, Message::Close(_)),
        "the client gets the backend's answer, and no pong"
    );
    proxy.wait_counter("closed_normally", 1).await;
}

/// A client that reads wsedge's ping and does not answer is dropped (its TCP
/// connection ends, nothing else sent) `pong_timeout` after the ping; the
/// backend gets 1001.
async fn silent_client_is_dropped(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), keepalive(PONG_TIMEOUT));
    let mut client = RawWs::client(proxy.addr).await;
    let connected = Instant::now();
    let mut be = backend.accept().await.ws;

    let client_side = async {
        let ping = client.read_frame().await;
        let pinged = Instant::now();
        keepalive_token(&ping, Side::Client);
        let after = within("the dead client's EOF", client.try_read_frame()).await;
        assert!(after.is_none(), "after the ping, only EOF: {after:?}");
        (pinged - connected, pinged.elapsed())
    };
    // The tungstenite backend answers its own pings while it waits; its
    // answer to the 1001 stays queued until the client saw EOF, so the EOF
    // is the drop, not the end of the relay.
    let ((first_ping, dead_after), reason) =
        tokio::join!(client_side, expect_close_code(&mut be, 1001, "backend"));
    be.flush().await.unwrap();
    assert!(
        first_ping >= PING_INTERVAL / 2,
        "pinged {first_ping:?} after connecting, ping_interval {PING_INTERVAL:?}"
    );
    assert!(
        dead_after >= PONG_TIMEOUT * 3 / 4 && dead_after < PONG_TIMEOUT + Duration::from_secs(1),
        "dropped {dead_after:?} after the ping, pong_timeout {PONG_TIMEOUT:?}"
    );
    assert_eq!(reason, "client not responding");
    proxy.wait_counter("closed_otherwise", 1).await;
}

/// A backend that answers wsedge's first ping (masked, as to any server)
/// and not the second is dropped `pong_timeout` later; the client gets 1011.
async fn silent_backend_is_dropped(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = [listener.local_addr().unwrap().to_string()];
    let proxy = Proxy::start_with(driver, &upstream, keepalive(PONG_TIMEOUT));
    let url = proxy.url("/");
    let (mut client, (mut be, _)) = tokio::join!(connect(&url), RawWs::accept(&listener));

    let backend_side = async {
        let first = keepalive_token(&be.read_frame().await, Side::Backend);
        be.send(&pong(Side::Backend, &first)).await;
        // Alive: pinged again one interval later, with a fresh token.
        let second = keepalive_token(&be.read_frame().await, Side::Backend);
        let pinged = Instant::now();
        assert_ne!(first, second, "a fresh token for each ping");
        let after = within("the dead backend's EOF", be.try_read_frame()).await;
        assert!(after.is_none(), "after the ping, only EOF: {after:?}");
        pinged.elapsed()
    };
    // The tungstenite client answers its own pings while it waits; its
    // answer to the 1011 stays queued until the backend saw EOF, so the EOF
    // is the drop, not the end of the relay.
    let (dead_after, reason) =
        tokio::join!(backend_side, expect_close_code(&mut client, 1011, "client"));
    client.flush().await.unwrap();
    assert!(
        within("the client's stream to end", client.next())
            .await
            .is_none()
    );
    assert!(
        dead_after >= PONG_TIMEOUT * 3 / 4 && dead_after < PONG_TIMEOUT + Duration::from_secs(1),
        "dropped {dead_after:?} after the ping, pong_timeout {PONG_TIMEOUT:?}"
    );
    assert_eq!(reason, "backend not responding");
    proxy.wait_counter("closed_otherwise", 1).await;
}

/// Raw peers that answer wsedge's pings stay connected well past
/// `pong_timeout`; each gets only wsedge's pings, with fresh tokens (the
/// other's pongs are not forwarded); then data flows both ways.
async fn answering_raw_peers_stay(driver: IoDriver) {
    let (proxy, mut client, mut be) = raw_pair(driver, PONG_TIMEOUT).await;
    let (c, b) = tokio::join!(
        keep_answering(&mut client, Side::Client, tokio::time::sleep(SILENCE)),
        keep_answering(&mut be, Side::Backend, tokio::time::sleep(SILENCE)),
    );
    for (who, tokens) in [("client", &c), ("backend", &b)] {
        assert!(
            tokens.len() >= MIN_PINGS,
            "{who}: {} pings in {SILENCE:?}, ping_interval {PING_INTERVAL:?}",
            tokens.len()
        );
        let mut distinct = tokens.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            tokens.len(),
            "{who}: repeated tokens {tokens:?}"
        );
    }

    client
        .send(&client_frame(true, op::TEXT, b"from the client"))
        .await;
    let f = next_endpoint_frame(&mut be, Side::Backend, None).await;
    assert_eq!(
        (f.opcode, &f.payload[..]),
        (op::TEXT, &b"from the client"[..])
    );
    be.send(&frame(true, op::TEXT, b"from the backend", None))
        .await;
    let f = next_endpoint_frame(&mut client, Side::Client, None).await;
    assert_eq!(
        (f.opcode, &f.payload[..]),
        (op::TEXT, &b"from the backend"[..])
    );
    assert_eq!(proxy.counter("closed_otherwise"), 0);
}

/// With keepalive on, a tungstenite client's ping reaches the backend and the
/// backend's pong the client, and the other way round; no other pong arrives.
async fn endpoint_pings_relayed(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), keepalive(PONG_TIMEOUT));
    let mut client = connect(&proxy.url("/")).await;
    let mut be = backend.accept().await.ws;
    // Let wsedge's own pings start on both legs first.
    let until = tokio::time::Instant::now() + PING_INTERVAL * 2;
    let (c, b) = tokio::join!(listen(&mut client, until), listen(&mut be, until));
    assert!(
        !c.is_empty() && !b.is_empty(),
        "keepalive pings: {c:?} {b:?}"
    );

    client
        .send(Message::Ping(b"from client".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_not_keepalive(&mut be).await,
        Message::Ping(b"from client".to_vec())
    );
    be.flush().await.unwrap(); // tungstenite's pong
    assert_eq!(
        next_not_keepalive(&mut client).await,
        Message::Pong(b"from client".to_vec())
    );

    be.send(Message::Ping(b"from backend".to_vec()))
        .await
        .unwrap();
    assert_eq!(
        next_not_keepalive(&mut client).await,
        Message::Ping(b"from backend".to_vec())
    );
    client.flush().await.unwrap();
    assert_eq!(
        next_not_keepalive(&mut be).await,
        Message::Pong(b"from backend".to_vec())
    );
    // Nothing else: the next thing each gets is the other's text.
    client.send(Message::Text("c".into())).await.unwrap();
    be.send(Message::Text("b".into())).await.unwrap();
    assert_eq!(next_not_keepalive(&mut be).await, Message::Text("c".into()));
    assert_eq!(
        next_not_keepalive(&mut client).await,
        Message::Text("b".into())
    );
}

/// The payload of the endpoints' own 8-byte ping and pong.
const P: &[u8; 8] = b"12345678";

/// An endpoint's 8-byte pong that is not wsedge's token is relayed, even
/// while wsedge's own ping on that leg waits for its answer; the answer to
/// wsedge's ping is then consumed.
async fn endpoint_pong_like_a_token_relayed(driver: IoDriver) {
    // A slow pong timeout: the backend holds wsedge's ping unanswered.
    let (_proxy, mut client, mut be) = raw_pair(driver, Duration::from_secs(3)).await;
    client.send(&client_frame(true, op::PING, P)).await;
    // The backend gets the client's ping and wsedge's, in either order.
    let mut theirs = false;
    let mut ours = None;
    while !theirs || ours.is_none() {
        let f = be.read_frame().await;
        if f.payload == P {
            assert_eq!((f.opcode, f.masked), (op::PING, true), "{f:?}");
            theirs = true;
        } else {
            assert!(ours.is_none(), "a second keepalive ping unanswered: {f:?}");
            ours = Some(keepalive_token(&f, Side::Backend));
        }
    }
    let token = ours.unwrap();
    // Answer the client, with wsedge's ping still outstanding.
    be.send(&pong(Side::Backend, P)).await;
    let f = next_endpoint_frame(&mut client, Side::Client, None).await;
    assert_eq!(
        (f.opcode, f.masked, &f.payload[..]),
        (op::PONG, false, &P[..]),
        "the backend's pong reaches the client"
    );
    // Now answer wsedge: consumed, so the client's next frame is the text.
    be.send(&pong(Side::Backend, &token)).await;
    be.send(&frame(true, op::TEXT, b"after", None)).await;
    let f = next_endpoint_frame(&mut client, Side::Client, None).await;
    assert_eq!(
        (f.opcode, &f.payload[..]),
        (op::TEXT, &b"after"[..]),
        "wsedge's pong is not forwarded"
    );
    // And the client's pongs to wsedge never reached the backend.
    client.send(&client_frame(true, op::TEXT, b"done")).await;
    let f = next_endpoint_frame(&mut be, Side::Backend, None).await;
    assert_eq!((f.opcode, &f.payload[..]), (op::TEXT, &b"done"[..]));
}

/// A client that sends a small message every 40 ms (ping_interval 200 ms)
/// is never pinged; the backend, which only receives, is.
async fn busy_leg_not_pinged(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_with(driver, &backend.upstream(), keepalive(PONG_TIMEOUT));
    let mut client = RawWs::client(proxy.addr).await;
    let mut be = backend.accept().await.ws;

    let until = tokio::time::Instant::now() + SILENCE;
    let client_side = async {
        let mut tick = tokio::time::interval(PING_INTERVAL / 5);
        let mut sent = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return sent,
                _ = tick.tick() => {}
                f = client.try_read_frame() => panic!("the busy client got {f:?}"),
            }
            let text = format!("message {sent}");
            client
                .send(&client_frame(true, op::TEXT, text.as_bytes()))
                .await;
            sent += 1;
        }
    };
    let (sent, got) = tokio::join!(client_side, listen(&mut be, until));
    let pings = got
        .iter()
        .filter(|m| matches!(m, Message::Ping(p) if p.len() == 8))
        .count();
    let texts = got.iter().filter(|m| m.is_text()).count();
    assert!(
        pings >= MIN_PINGS,
        "the receiving backend: {pings} pings in {SILENCE:?}"
    );
    assert_eq!(pings + texts, got.len(), "the backend got {got:?}");
    assert!(
        texts + 2 >= sent as usize,
        "{texts} of {sent} messages relayed"
    );
    assert_eq!(proxy.counter("closed_otherwise"), 0);
}

both_drivers!(
    silent_tungstenite_peers_stay,
    silent_client_is_dropped,
    silent_backend_is_dropped,
    answering_raw_peers_stay,
    endpoint_pings_relayed,
    endpoint_pong_like_a_token_relayed,
    busy_leg_not_pinged,
);
