//! Rebalancing after a scale-out: 20 connections on one server, DNS adds a
//! second; after `sustain`, the first server's excess is closed with 1012,
//! paced, and the clients that reconnect land on the new server (least_conn)
//! until both hold their share.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::time::Instant;
use wsedge::config::Config;
use wsedge::server::Server;

async fn scale_out_rebalances(driver: IoDriver) {
    let a = Backend::start().await;
    let b = Backend::start().await;
    let answers: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(vec![a.addr]));
    let dns = Arc::clone(&answers);
    let fake = move |_: &str, _: u16| -> std::io::Result<Vec<SocketAddr>> {
        Ok(dns.lock().unwrap().clone())
    };
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
                [[upstream]]\nname = \"u\"\nservers = [\"svc.test:9\"]\nbalance = \"least_conn\"\n\
                resolve_interval = \"100ms\"\n\
                rebalance = { max_skew = 1.5, closes_per_second = 20, sustain = \"300ms\" }\n";
    let mut config = Config::parse_with(text, "rebalance.toml", &fake).expect("config");
    config.workers = 1;
    config.io_driver = driver;
    config.timeouts.close = Duration::from_secs(2);
    let server = Server::start_with_resolver(config, Arc::new(fake)).expect("starts");
    let proxy = server.addrs[0];
    let active = |i: usize| server.fleet().upstreams[0].current().slots[i].active();

    let open = || async move {
        let (ws, resp) = RawWs::connect(proxy, &upgrade_request("/", &[]), &[]).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        ws
    };
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(open().await);
    }
    assert_eq!(active(0), 20);

    // Scale out: B appears.
    *answers.lock().unwrap() = vec![a.addr, b.addr];
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.fleet().upstreams[0].current().slots.len() < 2 {
        assert!(Instant::now() < deadline, "B never resolved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let added = Instant::now();

    // Clients that get 1012 answer the close and reconnect.
    let mut closes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for c in clients.iter_mut() {
            if let Ok(Some(f)) =
                tokio::time::timeout(Duration::from_millis(2), c.try_read_frame()).await
            {
                assert_eq!(f.close_code(), Some(1012), "only rebalancing closes: {f:?}");
                closes.push(added.elapsed());
                c.send(&client_frame(true, op::CLOSE, &close_payload(1012, "")))
                    .await;
                *c = open().await;
            }
        }
        let (on_a, on_b) = (active(0), active(1));
        let settled = closes
            .last()
            .is_some_and(|&t| added.elapsed() > t + Duration::from_secs(1));
        if settled && (9..=11).contains(&on_a) && (9..=11).contains(&on_b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced: A {on_a}, B {on_b}, {} closes",
            closes.len()
        );
    }
    eprintln!(
        "rebalanced: {} closes from {:?} to {:?} after the scale-out; A {}, B {}",
        closes.len(),
        closes[0],
        closes[closes.len() - 1],
        active(0),
        active(1)
    );
    // Nothing before `sustain`; about the excess (10) closed; paced at 20/s.
    assert!(closes[0] >= Duration::from_millis(300), "{closes:?}");
    assert!((9..=11).contains(&closes.len()), "{} closes", closes.len());
    let span = closes[closes.len() - 1] - closes[0];
    assert!(
        span >= Duration::from_millis(350),
        "{} closes within {span:?}: faster than 20/s",
        closes.len()
    );
    server.shutdown();
}

both_drivers!(scale_out_rebalances);
