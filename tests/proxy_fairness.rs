//! One flooding connection does not starve its neighbours on the same
//! worker: the relay bounds its reads per poll and re-wakes itself, so a
//! connection whose sockets never run dry still lets the others run.

#[macro_use]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpListener;

/// Echo round trips the quiet connection makes during the flood.
const ROUND_TRIPS: usize = 50;

/// The time all of them may take (each takes a few ms when the worker is fair).
const ROUND_TRIPS_LIMIT: Duration = Duration::from_secs(10);

/// The flooding client's frames.
const FLOOD_FRAME: usize = 64 * 1024;

/// Bytes the flood must have moved before the quiet connection starts.
const FLOOD_WARMUP: u64 = 16 << 20;

/// A connection kept busy by two threads: one writes masked binary frames
/// to the proxy as fast as it can, the other reads and discards what the
/// proxy relays to the backend. Stopped (and joined) on drop, also when the
/// test fails.
#[derive(Debug)]
struct Flood {
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(client: RawWs, backend: RawWs) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicU64::new(0));
        let blocking = |ws: RawWs| {
            let s = ws.stream.into_std().expect("a std socket");
            s.set_nonblocking(false).unwrap();
            // Short timeouts, so that the threads notice `stop`.
            s.set_write_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        };
        let mut client = blocking(client);
        let mut backend = blocking(backend);
        // Whole frames, written cyclically: a partial write resumes where it
        // stopped, so the stream stays well framed.
        let batch: Vec<u8> = (0..16)
            .flat_map(|i| client_frame(true, op::BINARY, &vec![i as u8; FLOOD_FRAME]))
            .collect();
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut at = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client.write(&batch[at..]) {
                        Ok(n) => at = (at + n) % batch.len(),
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        let reader = {
            let (stop, delivered) = (stop.clone(), delivered.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    match backend.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            delivered.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(_) => break,
                    }
                }
            })
        };
        Flood {
            stop,
            delivered,
            threads: vec![writer, reader],
        }
    }

    /// Bytes the flood's backend has received.
    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// On one worker, connection A floods client to backend while connection B
/// makes 50 small echo round trips: all of B's round trips finish within
/// 10 s, and A keeps moving meanwhile.
async fn flood_does_not_starve_neighbour(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = [listener.local_addr().unwrap().to_string()];
    let proxy = Proxy::start_with(driver, &upstream, |c| c.workers = 1);
    // Both connected before the flood starts (the worker does handshakes too).
    let (a_client, (a_be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    let (mut b_client, (mut b_be, _)) =
        tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));

    let flood = Flood::start(a_client, a_be);
    within("the flood to get going", async {
        while flood.delivered() < FLOOD_WARMUP {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let before = flood.delivered();
    let started = Instant::now();
    let mut done = 0;
    let mut slowest = Duration::ZERO;
    let finished = tokio::time::timeout(ROUND_TRIPS_LIMIT, async {
        for i in 0..ROUND_TRIPS {
            let t = Instant::now();
            let text = format!("round trip {i}");
            b_client
                .send(&client_frame(true, op::TEXT, text.as_bytes()))
                .await;
            let f = b_be.try_read_frame().await.expect("B's backend: a frame");
            assert_eq!((f.opcode, &f.payload[..]), (op::TEXT, text.as_bytes()));
            b_be.send(&frame(true, op::TEXT, &f.payload, None)).await;
            let f = b_client
                .try_read_frame()
                .await
                .expect("B's client: a frame");
            assert_eq!((f.opcode, &f.payload[..]), (op::TEXT, text.as_bytes()));
            slowest = slowest.max(t.elapsed());
            done += 1;
        }
    })
    .await;
    let took = started.elapsed();
    let moved = flood.delivered() - before;
    drop(flood);
    assert!(
        finished.is_ok(),
        "B made {done} of {ROUND_TRIPS} echo round trips in {ROUND_TRIPS_LIMIT:?} \
         while A flooded the same worker (slowest {slowest:?}; A moved {moved} bytes)"
    );
    assert!(moved > 0, "A was not flowing during B's round trips");
    eprintln!(
        "{driver:?}: {ROUND_TRIPS} round trips in {took:?} (slowest {slowest:?}) \
         while A moved {} MiB",
        moved >> 20
    );
}

both_drivers!(flood_does_not_starve_neighbour);
