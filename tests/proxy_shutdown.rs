//! Stopping: `Server::shutdown` reaches idle workers through their control
//! channels (nothing else would wake them), and the wait for open
//! connections ends when the last one does, not when the grace period runs
//! out. `Server::start` reports a bind failure with the address.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use wsedge::server::{Server, StartError};

/// Far longer than any bound below: a wait that ran to the end of the grace
/// period fails the test.
const LONG_GRACE: Duration = Duration::from_secs(60);
/// Generous, for a loaded machine; a prompt stop takes milliseconds.
const PROMPT: Duration = Duration::from_secs(10);

fn config(driver: IoDriver, workers: usize, upstream: &str) -> Config {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut c = Config::from_args(&[listen], &[upstream.to_string()], None, None).unwrap();
    c.workers = workers;
    c.io_driver = driver;
    c.timeouts.shutdown_grace = LONG_GRACE;
    c
}

/// Runs `server.shutdown()` on a thread of its own; the receiver resolves
/// when it has returned. (Not `spawn_blocking`: a shutdown that hangs would
/// hang the test runtime's drop instead of failing the test.)
fn stop_in_background(server: Server) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    rx
}

/// Waits up to [`PROMPT`] for `stopping`.
async fn stopped_promptly(stopping: oneshot::Receiver<()>, what: &str) {
    tokio::time::timeout(PROMPT, stopping)
        .await
        .unwrap_or_else(|_| panic!("{what}: shutdown still waiting after {PROMPT:?}"))
        .expect("shutdown returned");
}

/// Four workers with nothing to do: each gets the stop message and exits.
async fn idle_server_stops_promptly(driver: IoDriver) {
    let server = Server::start(config(driver, 4, "builtin:echo")).expect("wsedge starts");
    assert_eq!(server.drivers.len(), 4);
    let started = Instant::now();
    stopped_promptly(stop_in_background(server), "idle server").await;
    eprintln!("{driver:?}: stopped {:?} after asking", started.elapsed());
}

/// One relayed connection whose client and backend both answer the 1001:
/// shutdown returns as soon as it has ended.
async fn shutdown_ends_with_the_last_connection(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let server = Server::start(config(driver, 1, &backend.upstream()[0])).expect("wsedge starts");
    let mut client = connect(&format!("ws://{}/", server.addrs[0])).await;
    let mut be = backend.accept().await.ws;
    client.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_data(&mut be).await, Message::Text("hello".into()));

    let started = Instant::now();
    let stopping = stop_in_background(server);
    let (c, b) = tokio::join!(expect_close(&mut client), expect_close(&mut be));
    assert_eq!(c.map(|f| u16::from(f.code)), Some(1001), "client");
    assert_eq!(b.map(|f| u16::from(f.code)), Some(1001), "backend");
    let (_, _) = tokio::join!(client.flush(), be.flush());
    stopped_promptly(stopping, "one connection, both sides answering").await;
    eprintln!("{driver:?}: stopped {:?} after asking", started.elapsed());
}

both_drivers!(
    idle_server_stops_promptly,
    shutdown_ends_with_the_last_connection
);

#[test]
fn address_in_use_is_a_bind_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let mut c = Config::from_args(&[address], &["builtin:echo".to_string()], None, None).unwrap();
    c.workers = 1;
    c.io_driver = IoDriver::Epoll;
    match Server::start(c) {
        Err(e @ StartError::Bind { .. }) => {
            assert_eq!(e.to_string(), format!("cannot listen on {address}"));
            let StartError::Bind { address: a, source } = &e else {
                unreachable!()
            };
            assert_eq!(*a, address);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            let cause = std::error::Error::source(&e).expect("the io error as source");
            assert_eq!(cause.to_string(), source.to_string());
        }
        Err(e) => panic!("expected a bind error, got {e:?}"),
        Ok(s) => {
            s.shutdown();
            panic!("started on an address in use");
        }
    }
}
