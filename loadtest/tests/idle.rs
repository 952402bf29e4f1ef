//! `wsload idle`: opens and holds connections, from spread source addresses.

mod common;

use common::{echo_server, wsload_json};

#[test]
fn idle_opens_and_holds() {
    let (echo, addr) = echo_server(&[]);
    let url = format!("ws://{addr}/");
    let pid = format!("echo={}", echo.0.id());
    let r = wsload_json(
        "idle",
        &[
            "idle",
            &url,
            "--connections",
            "200",
            "--duration",
            "300ms",
            "--source-ips",
            "--workers",
            "1",
            "--no-pin",
            "--watch",
            &pid,
        ],
    );
    assert_eq!(r["established"], 200, "errors: {}", r["errors"]);
    assert_eq!(r["open_at_end"], 200);
    assert_eq!(r["source_ips"], 254);
    assert!(r["watched"][0]["rss_bytes"].as_u64().unwrap() > 0);
}
