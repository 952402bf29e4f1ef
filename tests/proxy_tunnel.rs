//! `relay = "tunnel"`: after the handshake, bytes pass both ways unparsed and
//! unchanged, even ones the frame relay would refuse; each side's end of
//! stream is passed on as a half-close.

#[macro_use]
mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsedge::config::RelayMode;

async fn tunnel_passes_bytes_unparsed(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.routes[0].relay = RelayMode::Tunnel
    });
    let (client, (be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    let (mut client, mut be) = (client.stream, be.stream);

    // An unmasked client frame and a masked backend frame (both refused by
    // the frame relay), invalid UTF-8 and bytes that are no frame at all.
    let mut up = frame(true, op::TEXT, b"\xff\xfe unmasked", None);
    up.extend_from_slice(b"\x00\x01 not a frame \xff");
    up.extend((0..200_000u32).map(|i| (i % 249) as u8));
    let mut down = frame(true, op::BINARY, b"masked", Some(MASK));
    down.extend((0..150_000u32).map(|i| (i % 241) as u8));

    let (mut client_rd, mut client_wr) = client.split();
    let (mut be_rd, mut be_wr) = be.split();
    let send_up = async {
        client_wr.write_all(&up).await.unwrap();
        client_wr.shutdown().await.unwrap();
    };
    let send_down = async {
        be_wr.write_all(&down).await.unwrap();
        be_wr.shutdown().await.unwrap();
    };
    let recv_up = async {
        let mut got = Vec::new();
        be_rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let recv_down = async {
        let mut got = Vec::new();
        client_rd.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), (), at_backend, at_client) = within("the tunnel", async {
        tokio::join!(send_up, send_down, recv_up, recv_down)
    })
    .await;
    assert!(at_backend == up, "client → backend bytes changed");
    assert!(at_client == down, "backend → client bytes changed");
    proxy.wait_counter("closed_normally", 1).await;
}

/// One side ending its stream leaves the other direction open.
async fn tunnel_half_close(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start_with(driver, &[listener.local_addr().unwrap().to_string()], |c| {
        c.routes[0].relay = RelayMode::Tunnel
    });
    let (client, (be, _)) = tokio::join!(RawWs::client(proxy.addr), RawWs::accept(&listener));
    let (mut client, mut be) = (client.stream, be.stream);
    client.write_all(b"request").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("the client's bytes and EOF", be.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"request");
    // The backend can still answer after the client's half-close.
    be.write_all(b"response").await.unwrap();
    be.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("the backend's bytes and EOF", client.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"response");
}

both_drivers!(tunnel_passes_bytes_unparsed, tunnel_half_close);
