//! DNS re-resolution with an injected resolver: a name's new addresses
//! become servers; an address that disappears drains (no new connections,
//! its open connection keeps working); a failed resolution keeps the last
//! addresses.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsedge::config::Config;
use wsedge::server::Server;

/// What the fake DNS answers for `svc.test` (an error when `None`).
type Answers = Arc<Mutex<Option<Vec<SocketAddr>>>>;

fn resolver(
    answers: &Answers,
) -> impl Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + Sync + 'static {
    let answers = Arc::clone(answers);
    move |host: &str, _port: u16| {
        assert_eq!(host, "svc.test");
        answers
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| std::io::Error::other("SERVFAIL"))
    }
}

/// Which of `backends` takes the next handshake (kept open: returned).
async fn next_backend(proxy: SocketAddr, backends: &mut [Backend]) -> (usize, RawWs, Accepted) {
    let (ws, resp) = RawWs::connect(proxy, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        for (i, b) in backends.iter_mut().enumerate() {
            if let Ok(Some(a)) =
                tokio::time::timeout(Duration::from_millis(1), b.try_accept()).await
            {
                return (i, ws, a);
            }
        }
    }
    panic!("no backend took the handshake");
}

async fn names_follow_dns(driver: IoDriver) {
    let mut backends = vec![Backend::start().await, Backend::start().await];
    let (a, b) = (backends[0].addr, backends[1].addr);
    let answers: Answers = Arc::new(Mutex::new(Some(vec![a])));
    let fake = resolver(&answers);
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
                [[upstream]]\nname = \"u\"\nservers = [\"svc.test:9\"]\nresolve_interval = \"100ms\"\n";
    let mut config = Config::parse_with(text, "dns.toml", &fake).expect("config");
    config.workers = 1;
    config.io_driver = driver;
    let server = Server::start_with_resolver(config, Arc::new(fake)).expect("starts");
    let proxy = server.addrs[0];

    for _ in 0..4 {
        assert_eq!(
            next_backend(proxy, &mut backends).await.0,
            0,
            "only A resolves"
        );
    }

    // The name gains B: within a few intervals, handshakes reach it.
    *answers.lock().unwrap() = Some(vec![a, b]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (i, _ws, _) = next_backend(proxy, &mut backends).await;
        if i == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never got a connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A connection open on A, then A leaves DNS: it drains. New handshakes
    // go to B only; the open one keeps working.
    let (mut on_a, mut a_side) = loop {
        let (i, ws, acc) = next_backend(proxy, &mut backends).await;
        if i == 0 {
            break (ws, acc);
        }
    };
    *answers.lock().unwrap() = Some(vec![b]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..6 {
        assert_eq!(next_backend(proxy, &mut backends).await.0, 1, "A drains");
    }
    a_side
        .ws
        .send(Message::Text("still here".into()))
        .await
        .expect("A's side of the open connection");
    let f = on_a.read_frame().await;
    assert_eq!(f.payload, b"still here");

    // DNS fails: the last addresses stay.
    *answers.lock().unwrap() = None;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        assert_eq!(next_backend(proxy, &mut backends).await.0, 1);
    }
    server.shutdown();
}

both_drivers!(names_follow_dns);
