//! Memory per idle connection: a relayed connection that has moved data and
//! is now quiet holds no relay buffer (docs/operations.md, "Memory"), so a
//! thousand of them cost the proxy a few MiB, not a buffer per direction
//! each. The proxy runs as a child process so that its resident set size can
//! be read from /proc.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;

const CONNECTIONS: usize = 1000;
/// Bigger than half the relay buffer, so every connection has used one
/// full buffer in each direction before going quiet.
const MESSAGE: usize = 60 << 10;
/// Allowed RSS per idle connection. Holding the 64 KiB relay buffer of
/// either direction would be four times this.
const PER_CONNECTION: u64 = 16 << 10;

async fn idle_connections_hold_no_buffers(driver: IoDriver) {
    let backend = echo_backend().await;
    let mut proxy = ProxyProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &backend.to_string(),
        "--workers",
        "1",
        "--io-driver",
        driver_arg(driver),
    ]);
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
