//! Backpressure: when one side stops reading while the other floods, the
//! proxy stops reading too (each direction holds at most
//! `limits.buffer_size` bytes in flight), so the flooding side blocks on
//! TCP and the proxy's memory stays flat. The proxy runs as a child process
//! so its resident set size can be read from /proc; once the reader
//! resumes, every frame arrives, in order.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Payload bytes per flooding frame.
const FRAME: usize = 64 << 10;
/// The most the flooding side tries to push: far more than socket buffers.
const CAP: u64 = 200 << 20;
/// What "blocked" means: nothing more accepted for this long.
const STALL: Duration = Duration::from_secs(1);
/// Growth of the proxy's resident memory allowed while it is blocked.
const MAX_RSS_GROWTH: u64 = 30 << 20;
/// Bytes the flooding side may have pushed before blocking: socket buffers
/// on the way (autotuned up to the system's maxima) plus the relay's
/// buffer, and far less than [`CAP`].
const MAX_PUSHED: u64 = 100 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flooder {
    Backend,
    Client,
}

async fn flood_while_peer_stalls(driver: IoDriver, who: Flooder) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let mut proxy = ProxyProcess::one_worker(&upstream, driver);
    let addr = proxy.wait_listening();
    let (mut client, (mut backend, _)) =
        tokio::join!(RawWs::client(addr), RawWs::accept(&listener));

    // Warm up both directions with a full-size frame, so the relay's
    // buffers exist before the baseline is taken.
    client
        .send(&client_frame(true, op::BINARY, &[1; FRAME]))
        .await;
    assert_eq!(backend.read_frame().await.payload.len(), FRAME);
    backend
        .send(&frame(true, op::BINARY, &[2; FRAME], None))
        .await;
    assert_eq!(client.read_frame().await.payload.len(), FRAME);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = proxy.rss();

    let (mut flooder, mut reader) = match who {
        Flooder::Backend => (backend, client),
        Flooder::Client => (client, backend),
    };
    let payload: Vec<u8> = (0..FRAME).map(|i| (i % 251) as u8).collect();
    let mask = (who == Flooder::Client).then_some(MASK);
    let flood_frame = frame(true, op::BINARY, &payload, mask);
    let end_frame = frame(true, op::TEXT, b"end", mask);

    let frames = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (frames, stop) = (Arc::clone(&frames), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed)
                && frames.load(Ordering::Relaxed) * (FRAME as u64) < CAP
            {
                flooder.stream.write_all(&flood_frame).await.unwrap();
                frames.fetch_add(1, Ordering::Relaxed);
            }
            flooder.stream.write_all(&end_frame).await.unwrap();
            flooder
        })
    };

    // Wait until the flooder is blocked (or has pushed everything).
    let mut last = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = frames.load(Ordering::Relaxed);
        if now * (FRAME as u64) >= CAP {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= STALL {
            break;
        }
    }
    let pushed = frames.load(Ordering::Relaxed) * (FRAME as u64);
    let rss_after = proxy.rss();
    let growth = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{who:?} flooding ({driver:?}): pushed {} MiB before blocking; proxy RSS {} -> {} MiB",
        pushed >> 20,
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        pushed < MAX_PUSHED,
        "the flooding {who:?} pushed {} MiB into a peer that reads nothing: no backpressure",
        pushed >> 20
    );
    assert!(
        growth < MAX_RSS_GROWTH,
        "the proxy's RSS grew by {} MiB while blocked",
        growth >> 20
    );

    // The reader resumes: everything written arrives, whole and in order.
    stop.store(true, Ordering::Relaxed);
    let mut received = 0u64;
    loop {
        let f = reader.read_frame().await;
        if f.opcode == op::TEXT {
            assert_eq!(f.payload, b"end");
            break;
        }
        assert_eq!(f.opcode, op::BINARY);
        assert!(f.payload == payload, "frame {received} differs");
        received += 1;
    }
    within("the flooder to stop", writer).await.unwrap();
    assert_eq!(received, frames.load(Ordering::Relaxed));
}

async fn client_stops_reading(driver: IoDriver) {
    flood_while_peer_stalls(driver, Flooder::Backend).await;
}

async fn backend_stops_reading(driver: IoDriver) {
    flood_while_peer_stalls(driver, Flooder::Client).await;
}

both_drivers!(client_stops_reading, backend_stops_reading);
