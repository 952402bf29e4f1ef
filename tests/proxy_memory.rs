//! Memory per idle connection: a relayed connection that has moved data and
//! is now quiet holds no relay buffer (docs/operations.md, "Memory"), so a
//! thousand of them cost the proxy a few MiB, not a buffer per direction
//! each. And memory after a burst: the relay buffers a burst of blocked
//! connections held go back to the allocator, and the proxy's RSS back near
//! where it was, within seconds of the connections closing. The proxy runs
//! as a child process so that its resident set size can be read from /proc.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

const CONNECTIONS: usize = 1000;
/// Bigger than half the relay buffer, so every connection has used one
/// full buffer in each direction before going quiet.
const MESSAGE: usize = 60 << 10;
/// Allowed RSS per idle connection. Holding the 64 KiB relay buffer of
/// either direction would be four times this.
const PER_CONNECTION: u64 = 16 << 10;

async fn idle_connections_hold_no_buffers(driver: IoDriver) {
    let backend = echo_backend().await;
    let mut proxy = ProxyProcess::one_worker(&backend.to_string(), driver);
    let addr = proxy.wait_listening();
    let payload: Vec<u8> = (0..MESSAGE).map(|i| (i % 253) as u8).collect();
    let message = client_frame(true, op::BINARY, &payload);

    let mut open = Vec::with_capacity(CONNECTIONS);
    // A few first, so the baseline has the runtime and the pool warmed up.
    for _ in 0..20 {
        let mut ws = RawWs::client(addr).await;
        ws.send(&message).await;
        assert!(ws.read_frame().await.payload == payload);
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = proxy.rss();
    for _ in 20..CONNECTIONS {
        let mut ws = RawWs::client(addr).await;
        ws.send(&message).await;
        assert!(ws.read_frame().await.payload == payload);
        open.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = proxy.rss();
    let per = after.saturating_sub(before) / (CONNECTIONS as u64 - 20);
    eprintln!(
        "{driver:?}: proxy RSS {} KiB -> {} KiB for {} more idle connections: {per} bytes each",
        before >> 10,
        after >> 10,
        CONNECTIONS - 20
    );
    assert!(
        per < PER_CONNECTION,
        "{per} bytes of proxy RSS per idle connection (limit {PER_CONNECTION})"
    );
    // They all still work.
    for ws in open.iter_mut().step_by(97) {
        ws.send(&client_frame(true, op::TEXT, b"still there")).await;
        assert_eq!(ws.read_frame().await.payload, b"still there");
    }
}

both_drivers!(idle_connections_hold_no_buffers);

/// The relay buffer (the default `limits.buffer_size`).
const BUFFER: u64 = 64 << 10;
/// What the backend sends on each burst connection: far more than the
/// socket buffers between it and a client that reads nothing, so the
/// proxy's backend-to-client direction ends up holding a relay buffer.
const FLOOD: usize = 256 << 10;
/// The client's receive buffer: small, so that little of the flood fits.
const CLIENT_RCVBUF: u32 = 4 << 10;
/// The segment size the client announces: Ethernet's. Loopback's 64 KiB
/// segments would let the kernel grow the proxy's send buffer to megabytes
/// and take in the whole flood.
const ETHERNET_MSS: u32 = 1460;
/// How long the proxy's RSS may take to come back after the burst (the
/// pool trims over about 3 s; the allocator purges freed memory after 1 s).
const RETURN_LIMIT: Duration = Duration::from_secs(20);
/// How long one burst client's handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);
/// Burst clients connecting at a time.
const CONCURRENT_CONNECTS: usize = 32;
/// How often RSS is read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// A client that completes the handshake and then reads nothing.
async fn stalled_client(addr: SocketAddr) -> RawWs {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
    socket2::SockRef::from(&socket)
        .set_mss(ETHERNET_MSS)
        .unwrap();
    let mut ws = RawWs::from_stream(socket.connect(addr).await.unwrap());
    ws.send(&upgrade_request("/", &[])).await;
    // Longer than `within`'s step: hundreds of handshakes through a debug
    // build on a loaded machine.
    let head = tokio::time::timeout(HANDSHAKE_LIMIT, ws.read_head())
        .await
        .unwrap_or_else(|_| panic!("no 101 within {HANDSHAKE_LIMIT:?}"));
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    ws
}

/// Accepts `n` proxied connections and floods each with one
/// [`FLOOD`]-byte frame, sent in the same write as the 101 so that it is
/// queued before the proxy's relay first reads (which then fills whole
/// buffers). Answers the proxy's close frame, as a backend should, so that
/// the proxy ends each connection as soon as its client is gone.
async fn flooding_backend(listener: TcpListener, n: usize) {
    let flood = Arc::new(frame(true, op::BINARY, &vec![0x5a; FLOOD], None));
    for _ in 0..n {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::spawn(flood_one(stream, Arc::clone(&flood)));
    }
}

async fn flood_one(stream: TcpStream, flood: Arc<Vec<u8>>) {
    let mut ws = RawWs::from_stream(stream);
    let head = String::from_utf8(ws.read_head().await).unwrap();
    let mut out = upgrade_answer(&head).into_bytes();
    out.extend_from_slice(&flood);
    let (mut rd, mut wr) = ws.stream.into_split();
    let (close_tx, close_rx) = oneshot::channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        wr.write_all(&out).await?;
        if let Ok(code) = close_rx.await {
            wr.write_all(&frame(true, op::CLOSE, &code, None)).await?;
        }
        std::io::Result::Ok(())
    });
    // Read until the proxy's close (skipping anything else), then answer
    // it with the same code once the flood is out.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((f, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if f.opcode == op::CLOSE {
                let _ = close_tx.send(f.payload[..f.payload.len().min(2)].to_vec());
                break;
            }
            continue;
        }
        match rd.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let _ = writer.await;
}

/// Reads the proxy's RSS every [`POLL`] until `done(rss)` or `limit`;
/// returns the readings, with when each was taken.
async fn poll_rss(
    proxy: &ProxyProcess,
    limit: Duration,
    done: impl Fn(u64) -> bool,
) -> Vec<(Duration, u64)> {
    let started = Instant::now();
    let mut seen = Vec::new();
    loop {
        let rss = proxy.rss();
        seen.push((started.elapsed(), rss));
        if done(rss) || started.elapsed() >= limit {
            return seen;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `t: RSS` for every half second of `seen`, in MiB.
fn timeline(seen: &[(Duration, u64)]) -> String {
    let mut next = Duration::ZERO;
    let mut out = Vec::new();
    for (i, &(t, rss)) in seen.iter().enumerate() {
        if t >= next || i + 1 == seen.len() {
            out.push(format!(
                "{:.1}s {:.1}",
                t.as_secs_f64(),
                rss as f64 / 1048576.0
            ));
            next = t + Duration::from_millis(500);
        }
    }
    out.join(", ")
}

/// `connections` clients that read nothing while their backends flood
/// them: the proxy holds a relay buffer for each. Once they are gone, its
/// RSS must come back to within `margin` of the level before the burst;
/// then it is watched for `settle` more, for the record.
async fn burst_is_given_back(driver: IoDriver, connections: usize, margin: u64, settle: Duration) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let mut proxy = ProxyProcess::one_worker(&upstream, driver);
    let addr = proxy.wait_listening();
    let backend = tokio::spawn(flooding_backend(listener, connections + 1));

    // One connection that moves the whole flood, so the baseline has the
    // runtime and the relay path warmed up.
    let mut warm = stalled_client(addr).await;
    let f = warm.read_frame().await;
    assert_eq!(f.payload.len(), FLOOD);
    drop(warm);
    let seen = poll_rss(&proxy, Duration::from_millis(300), |_| false).await;
    let before = seen.last().unwrap().1;

    let started = Instant::now();
    let mut connecting = JoinSet::new();
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        connecting.spawn(stalled_client(addr));
        if connecting.len() >= CONCURRENT_CONNECTS || i + 1 == connections {
            while let Some(ws) = connecting.join_next().await {
                clients.push(ws.unwrap());
            }
        }
    }
    backend.await.unwrap();
    // Each blocked connection holds one buffer; wait for most of them.
    let expect = connections as u64 * BUFFER * 3 / 4;
    let seen = poll_rss(&proxy, RETURN_LIMIT, |rss| rss >= before + expect).await;
    let peak = seen.last().unwrap().1;
    assert!(
        peak >= before + expect,
        "proxy RSS {} KiB -> {} KiB with {connections} blocked connections: \
         the burst did not make the proxy hold its buffers",
        before >> 10,
        peak >> 10
    );
    eprintln!(
        "{driver:?}: {connections} connections blocked after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    drop(clients);
    let mut seen = poll_rss(&proxy, RETURN_LIMIT, |rss| rss <= before + margin).await;
    let (took, back) = *seen.last().unwrap();
    if back <= before + margin && !settle.is_zero() {
        let more = poll_rss(&proxy, settle, |_| false).await;
        seen.extend(more.into_iter().map(|(t, rss)| (took + t, rss)));
    }
    eprintln!(
        "{driver:?}: proxy RSS {} KiB before, {} KiB with {connections} blocked connections, \
         {} KiB {:.1} s after they closed; MiB after closing: {}",
        before >> 10,
        peak >> 10,
        back >> 10,
        took.as_secs_f64(),
        timeline(&seen)
    );
    assert!(
        back <= before + margin,
        "proxy RSS still {} KiB after {RETURN_LIMIT:?} (before the burst {} KiB, margin {} KiB)",
        back >> 10,
        before >> 10,
        margin >> 10
    );
}

/// 250 connections: 16 MiB of buffers at the peak.
async fn burst_of_250_is_given_back(driver: IoDriver) {
    burst_is_given_back(driver, 250, 6 << 20, Duration::ZERO).await;
}

/// 1,000 connections: 64 MiB of buffers at the peak; watched for 6 s
/// after it is back, for docs/benchmarks.md.
async fn burst_of_1000_is_given_back(driver: IoDriver) {
    burst_is_given_back(driver, 1000, 12 << 20, Duration::from_secs(6)).await;
}

both_drivers!(
    burst_of_250_is_given_back,
    #[ignore = "heavy: 1,000 connections, about 15 s"]
    burst_of_1000_is_given_back
);
