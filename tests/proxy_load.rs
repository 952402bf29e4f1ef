//! Many connections at once, each echoing its own messages through a
//! tokio-tungstenite backend: every message comes back to the connection
//! that sent it, whole and in order. 200 connections by default; the full
//! 1,000 is `#[ignore]`d (run it with `--ignored`).

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 100;
/// The longest wait for one echo.
const ECHO_WAIT: Duration = Duration::from_secs(30);

/// Message `i` of connection `c`: text or binary, 1 to ~2 KB, unique.
fn payload(c: usize, i: usize) -> Message {
    let len = 1 + (c * 7 + i * 131) % 2048;
    let tag = format!("{c}:{i}:");
    if i % 2 == 0 {
        Message::Text(format!("{tag}{}", "t".repeat(len)))
    } else {
        let mut b = tag.into_bytes();
        b.extend((0..len).map(|k| (k * 13 + c + i) as u8));
        Message::Binary(b)
    }
}

async fn concurrent_echo(driver: IoDriver, connections: usize) {
    let backend = echo_backend().await;
    let proxy = Proxy::start_with(driver, &[backend.to_string()], |c| {
        c.listeners[0].backlog = 4096;
        // Thousands of close handshakes at once on a loaded machine.
        c.timeouts.close = Duration::from_secs(30);
    });
    let url = proxy.url("/load");
    let started = Instant::now();
    let all_connected = Arc::new(Barrier::new(connections + 1));
    // The longest wait for one round of 10 echoes, in microseconds.
    let slowest_round = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let url = url.clone();
        let all_connected = Arc::clone(&all_connected);
        let slowest_round = Arc::clone(&slowest_round);
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url).await;
            all_connected.wait().await;
            // Pipeline up to 10 messages, then read their echoes.
            // Correctness, not latency, is checked here: a loaded machine
            // may delay a round by seconds, so the wait for an echo is long.
            for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(10) {
                let round = Instant::now();
                for &i in chunk {
                    ws.feed(payload(c, i)).await.unwrap();
                }
                ws.flush().await.unwrap();
                for &i in chunk {
                    let m = tokio::time::timeout(ECHO_WAIT, ws.next())
                        .await
                        .unwrap_or_else(|_| {
                            panic!("connection {c}: no echo of {i} in {ECHO_WAIT:?}")
                        })
                        .expect("an echo, not the end of the stream")
                        .expect("an echo, not an error");
                    assert!(m == payload(c, i), "connection {c}, message {i} differs");
                }
                slowest_round.fetch_max(round.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            ws.close(None).await.unwrap();
            expect_close(&mut ws).await;
        }));
    }
    within("every connection to open", all_connected.wait()).await;
    let connected = started.elapsed();
    assert_eq!(
        proxy.counter("active"),
        connections as u64,
        "all open at once"
    );
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a connection finished")
            .expect("a connection's checks passed");
    }
    proxy
        .wait_counter("closed_normally", connections as u64)
        .await;
    assert_eq!(proxy.counter("upgraded"), connections as u64);
    eprintln!(
        "{connections} connections x {MESSAGES} messages ({driver:?}): connected in {connected:?}, \
         done in {:?}, slowest round of 10 echoes {:?}",
        started.elapsed(),
        Duration::from_micros(slowest_round.load(Ordering::Relaxed))
    );
}

async fn concurrent_200(driver: IoDriver) {
    concurrent_echo(driver, 200).await;
}

async fn concurrent_1000(driver: IoDriver) {
    concurrent_echo(driver, 1000).await;
}

both_drivers!(
    concurrent_200,
    #[ignore = "heavy: 1,000 connections (run with --ignored)"]
    concurrent_1000,
);
