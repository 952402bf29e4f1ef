//! Active health checks, end to end: a server answering 500 to the
//! upgrade is taken down by `websocket` checks (not by `tcp` ones), one
//! that never answers pings too; a server killed under load goes down
//! within `fall × interval` with no client seeing a failure, and when it
//! comes back it is up after `rise` checks and ramped by `slow_start`.
//!
//! The slots' states are read through `Server::fleet` (what every worker's
//! picker reads); the backends tell health checks (`/health`) from proxied
//! handshakes by path.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use wsedge::balance::server::{ServerSlot, ServerState};
use wsedge::config::Config;

const HEALTH_PATH: &str = "/health";

/// A tokio-tungstenite backend that answers pings (so `websocket` checks
/// pass) and counts checks and proxied handshakes apart. Killing it stops
/// its listener: connects are refused from then on.
struct Live {
    addr: SocketAddr,
    checks: Arc<AtomicUsize>,
    proxied: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Live {
    async fn start() -> Live {
        Live::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    /// Listens again on `addr` (a port this test held a moment ago).
    async fn restart(addr: SocketAddr) -> Live {
        for _ in 0..50 {
            if let Ok(l) = TcpListener::bind(addr).await {
                return Live::on(l);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot listen on {addr} again");
    }

    fn on(listener: TcpListener) -> Live {
        let addr = listener.local_addr().unwrap();
        let checks = Arc::new(AtomicUsize::new(0));
        let proxied = Arc::new(AtomicUsize::new(0));
        let (c, p) = (Arc::clone(&checks), Arc::clone(&proxied));
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (c, p) = (Arc::clone(&c), Arc::clone(&p));
                tokio::spawn(async move {
                    #[allow(clippy::result_large_err)] // tungstenite's callback type
                    let count = |req: &Request, resp: Response| {
                        let n = if req.uri().path() == HEALTH_PATH {
                            &c
                        } else {
                            &p
                        };
                        n.fetch_add(1, Relaxed);
                        Ok::<Response, ErrorResponse>(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, count).await
                    else {
                        return;
                    };
                    // Reading answers pings (tungstenite queues the pong and
                    // flushes it on the next read) and closes.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        Live {
            addr,
            checks,
            proxied,
            accept,
        }
    }

    /// Stops listening; returns once the listener is closed.
    async fn kill(self) {
        self.accept.abort();
        let _ = self.accept.await;
    }
}

/// A raw backend that reads each request head and answers `answer`:
/// `None` keeps the connection open and answers nothing more. Counts
/// connections (a `tcp` check is a connection without a request) and
/// requests that are not health checks.
struct Raw {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    proxied: Arc<AtomicUsize>,
}

#[derive(Clone, Copy)]
enum Answer {
    /// `HTTP/1.1 500`, then close.
    Status500,
    /// A valid 101, then silence: pings are read and never answered.
    Deaf,
}

impl Raw {
    async fn start(answer: Answer) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let proxied = Arc::new(AtomicUsize::new(0));
        let (c, p) = (Arc::clone(&connections), Arc::clone(&proxied));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Relaxed);
                let p = Arc::clone(&p);
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut s).await else {
                        return;
                    };
                    if !head.contains("User-Agent: wsedge-health") {
                        p.fetch_add(1, Relaxed);
                    }
                    match answer {
                        Answer::Status500 => {
                            let _ = s
                                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                        }
                        Answer::Deaf => {
                            let _ = s.write_all(upgrade_answer(&head).as_bytes()).await;
                            let mut sink = [0u8; 512];
                            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        }
                    }
                });
            }
        });
        Raw {
            addr,
            connections,
            proxied,
        }
    }
}

/// A request head, or `None` at end of stream first.
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A proxy with one upstream `u` over `servers`, health-checked with
/// `health` (TOML lines of `[upstream.health]`) and the upstream `extra`
/// lines. Passive ejection is off: only health checks take servers out.
fn proxy(driver: IoDriver, servers: &[SocketAddr], extra: &str, health: &str) -> Proxy {
    let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
         [[upstream]]\nname = \"u\"\nservers = [{}]\neject_after = 0\n{extra}\n\
         [upstream.health]\n{health}\n",
        list.join(", ")
    );
    let config = Config::parse(&text, "health.toml").expect("config");
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    Proxy::start_config(driver, config)
}

const WEBSOCKET: &str = "kind = \"websocket\"\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";
const TCP: &str = "kind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2";

fn slot(p: &Proxy, i: usize) -> Arc<ServerSlot> {
    Arc::clone(&p.server().fleet().upstreams[0].current().slots[i])
}

/// Polls `cond` every 5 ms until it holds; fails with `what` after
/// `limit`. Returns how long it took.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            panic!("not within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// One handshake through the proxy: the status it answered (0: no answer).
async fn handshake(proxy: SocketAddr) -> u16 {
    let Ok(mut s) = TcpStream::connect(proxy).await else {
        return 0;
    };
    if s.write_all(&upgrade_request("/", &[])).await.is_err() {
        return 0;
    }
    let head = within("the proxy's answer", read_head(&mut s)).await;
    head.and_then(|h| h.split(' ').nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn answered_500_is_down_for_websocket(driver: IoDriver) {
    let good = Live::start().await;
    let bad = Raw::start(Answer::Status500).await;
    let p = proxy(driver, &[good.addr, bad.addr], "", WEBSOCKET);
    until("the 500 server is down", STEP, || {
        slot(&p, 1).state() == ServerState::Down
    })
    .await;
    assert_eq!(slot(&p, 0).state(), ServerState::Up);
    for _ in 0..20 {
        assert_eq!(handshake(p.addr).await, 101);
    }
    assert_eq!(good.proxied.load(Relaxed), 20, "every handshake");
    assert_eq!(bad.proxied.load(Relaxed), 0, "none to the down server");
}

async fn answered_500_is_up_for_tcp(driver: IoDriver) {
    let good = Live::start().await;
    let bad = Raw::start(Answer::Status500).await;
    let p = proxy(driver, &[good.addr, bad.addr], "", TCP);
    // Five checks (fall is 2) have connected: still up.
    until("five tcp checks", STEP, || {
        bad.connections.load(Relaxed) >= 6
    })
    .await;
    assert_eq!(slot(&p, 1).state(), ServerState::Up);
    assert_eq!(slot(&p, 0).state(), ServerState::Up);
    assert_eq!(good.checks.load(Relaxed), 0, "tcp checks do not upgrade");
}

async fn no_pong_is_down(driver: IoDriver) {
    let good = Live::start().await;
    let deaf = Raw::start(Answer::Deaf).await;
    let p = proxy(driver, &[good.addr, deaf.addr], "", WEBSOCKET);
    until("the deaf server is down", STEP, || {
        slot(&p, 1).state() == ServerState::Down
    })
    .await;
    assert!(good.checks.load(Relaxed) > 0);
    for _ in 0..10 {
        assert_eq!(handshake(p.addr).await, 101);
    }
    assert_eq!(good.proxied.load(Relaxed), 10);
    assert_eq!(deaf.proxied.load(Relaxed), 0);
}

async fn killed_then_revived(driver: IoDriver) {
    let mut live = vec![
        Live::start().await,
        Live::start().await,
        Live::start().await,
    ];
    let addrs: Vec<SocketAddr> = live.iter().map(|l| l.addr).collect();
    let p = proxy(driver, &addrs, "slow_start = \"2s\"", WEBSOCKET);
    let proxy_addr = p.addr;

    // Handshakes in a loop, paced (about 100 a second) so that the retry
    // budget is not what is being tested.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let (mut total, mut failed) = (0u32, Vec::new());
            while !stop.load(Relaxed) {
                let status = handshake(proxy_addr).await;
                total += 1;
                if status != 101 {
                    failed.push(status);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (total, failed)
        })
    };
    until("handshakes on every server", STEP, || {
        live.iter().all(|l| l.proxied.load(Relaxed) > 0)
    })
    .await;

    // Kill server 1: down within fall × interval (+ 1 s of slack).
    let dead = live.remove(1);
    dead.kill().await;
    let took = until("the killed server is down", STEP, || {
        slot(&p, 1).state() == ServerState::Down
    })
    .await;
    assert!(
        took <= Duration::from_millis(2 * 100 + 1_000),
        "down after {took:?}"
    );
    let before: Vec<usize> = live.iter().map(|l| l.proxied.load(Relaxed)).collect();
    until("more handshakes on both live servers", STEP, || {
        live.iter()
            .zip(&before)
            .all(|(l, b)| l.proxied.load(Relaxed) >= b + 10)
    })
    .await;
    stop.store(true, Relaxed);
    let (total, failed) = within("the handshake loop", looping).await.unwrap();
    assert!(total >= 30, "{total}");
    assert!(failed.is_empty(), "client-visible failures: {failed:?}");

    // The others' own slow start (from the proxy's start) is over.
    let slow_start_ms = 2_000;
    until("the first ramp is over", STEP, || {
        let now = wsedge::fleet::now_ms();
        [0, 2].iter().all(|&i| {
            let s = slot(&p, i);
            s.effective_weight(now, slow_start_ms) == s.weight() * 64
        })
    })
    .await;

    // It comes back: up after `rise` passing checks.
    let back = Live::restart(addrs[1]).await;
    until("the revived server is up", STEP, || {
        slot(&p, 1).state() == ServerState::Up
    })
    .await;
    assert!(back.checks.load(Relaxed) >= 2, "rise = 2 checks passed");
    // Slow start: it gets less than its fair third of the next handshakes.
    for _ in 0..30 {
        assert_eq!(handshake(p.addr).await, 101);
    }
    let got = back.proxied.load(Relaxed);
    assert!(got < 10, "{got} of 30 right after coming back");
}

both_drivers!(
    answered_500_is_down_for_websocket,
    answered_500_is_up_for_tcp,
    no_pong_is_down,
    killed_then_revived,
);
