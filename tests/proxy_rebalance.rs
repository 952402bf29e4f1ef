//! Rebalancing after a scale-out from 2 to 4 servers (issue 9's goal): 40
//! connections on two servers, DNS adds two more; after `sustain`, the first
//! two servers' excess is closed with 1012, paced, and the clients that
//! reconnect land on the new servers (least_conn) until all four hold their
//! share within ±10 %.

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
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(Backend::start().await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let answers: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(addrs[..2].to_vec()));
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
    for _ in 0..40 {
        clients.push(open().await);
    }
    assert_eq!((active(0), active(1)), (20, 20));

    // Scale out: two more servers appear.
    *answers.lock().unwrap() = addrs.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.fleet().upstreams[0].current().slots.len() < 4 {
        assert!(Instant::now() < deadline, "the new servers never resolved");
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
        let counts: Vec<u32> = (0..4).map(active).collect();
        let settled = closes
            .last()
            .is_some_and(|&t| added.elapsed() > t + Duration::from_secs(1));
        // Within ±10 % of the fair share (10).
        if settled && counts.iter().all(|c| (9..=11).contains(c)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not balanced: {counts:?}, {} closes",
            closes.len()
        );
    }
    eprintln!(
        "rebalanced 2 -> 4: {} closes from {:?} to {:?} after the scale-out; counts {:?}",
        closes.len(),
        closes[0],
        closes[closes.len() - 1],
        (0..4).map(active).collect::<Vec<_>>()
    );
    // Nothing before `sustain`; about the excess (20) closed; never faster
    // than 20/s over any second.
    assert!(closes[0] >= Duration::from_millis(300), "{closes:?}");
    assert!((18..=22).contains(&closes.len()), "{} closes", closes.len());
    for (i, &t) in closes.iter().enumerate() {
        let in_second = closes[i..]
            .iter()
            .take_while(|&&u| u < t + Duration::from_secs(1))
            .count();
        assert!(in_second <= 21, "{in_second} closes within 1 s from {t:?}");
    }
    server.shutdown();
}

both_drivers!(scale_out_rebalances);
