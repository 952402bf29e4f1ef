//! The PROXY protocol: in (a listener with `proxy_protocol = true` takes the
//! client's address from a v1 or v2 header, and closes connections without
//! one) and out (an upstream with `send_proxy_protocol` starts each backend
//! connection with the header). Headers are written by hand from the spec,
//! not by wsedge's encoder.

#[macro_use]
mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wsedge::config::Config;

fn config(listener_extra: &str, upstream: &str, upstream_extra: &str) -> Config {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n{listener_extra}\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
         [[upstream]]\nname = \"u\"\nservers = [\"{upstream}\"]\n{upstream_extra}\n"
    );
    Config::parse(&text, "pp.toml").expect("config")
}

/// The v2 header for 198.51.100.7:40000 -> 192.0.2.1:443, by hand.
fn v2_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
    h.extend_from_slice(&[198, 51, 100, 7, 192, 0, 2, 1]);
    h.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
    h
}

async fn client_address_from_the_header(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_config(
        driver,
        config("proxy_protocol = true", &backend.addr.to_string(), ""),
    );
    for (header, want) in [
        (
            b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\n".to_vec(),
            "203.0.113.9",
        ),
        (v2_header(), "198.51.100.7"),
        (
            b"PROXY TCP6 2001:db8::9 2001:db8::1 5555 80\r\n".to_vec(),
            "2001:db8::9",
        ),
    ] {
        let request = [header, upgrade_request("/", &[])].concat();
        let (_ws, resp) = RawWs::connect(proxy.addr, &request, &[]).await;
        assert_eq!(resp.status, 101, "{resp:?}");
        let got = backend.accept().await;
        let xff = got.request.headers()["x-forwarded-for"].to_str().unwrap();
        assert_eq!(xff, want);
    }
    // A LOCAL v2 header (the balancer's own health check): the socket's
    // peer stands.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let request = [local, upgrade_request("/", &[])].concat();
    let (_ws, resp) = RawWs::connect(proxy.addr, &request, &[]).await;
    assert_eq!(resp.status, 101);
    let got = backend.accept().await;
    assert_eq!(got.request.headers()["x-forwarded-for"], "127.0.0.1");
}

async fn no_header_is_closed(driver: IoDriver) {
    let backend = Backend::start().await;
    let proxy = Proxy::start_config(
        driver,
        config("proxy_protocol = true", &backend.addr.to_string(), ""),
    );
    for bad in [
        upgrade_request("/", &[]),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&bad).await.unwrap();
        let mut out = Vec::new();
        within("the proxy to close", s.read_to_end(&mut out))
            .await
            .ok();
        assert!(
            out.is_empty(),
            "nothing is written: {:?}",
            String::from_utf8_lossy(&out)
        );
    }
}

async fn header_sent_to_the_backend(driver: IoDriver) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let proxy = Proxy::start_config(
        driver,
        config("", &backend.to_string(), "send_proxy_protocol = \"v2\""),
    );
    let addr = proxy.addr;
    let client = tokio::spawn(async move { http_exchange(addr, &upgrade_request("/", &[])).await });
    let (mut s, _) = within("the proxy to connect", listener.accept())
        .await
        .unwrap();
    let mut got = Vec::new();
    // The signature itself holds CRLF CRLF: look for the request's end after
    // the 28-byte header.
    while got.len() < 28 || !got[28..].windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = within("the request", s.read(&mut chunk)).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    // Signature, v2 PROXY, TCP over IPv4, 12 bytes of addresses: the
    // client's (127.0.0.1, its port) and the proxy's listener.
    assert_eq!(&got[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(&got[12..16], &[0x21, 0x11, 0x00, 0x0c]);
    assert_eq!(&got[16..20], &[127, 0, 0, 1], "source address");
    assert_eq!(&got[20..24], &[127, 0, 0, 1], "destination address");
    let dport = u16::from_be_bytes([got[26], got[27]]);
    assert_eq!(dport, proxy.addr.port(), "destination port: the listener's");
    assert!(
        got[28..].starts_with(b"GET / HTTP/1.1\r\n"),
        "then the upgrade request: {:?}",
        String::from_utf8_lossy(&got[..60.min(got.len())])
    );
    drop(s);
    let resp = within("the client's answer", client).await.unwrap();
    assert_eq!(resp.status, 502);
}

both_drivers!(
    client_address_from_the_header,
    no_header_is_closed,
    header_sent_to_the_backend
);
