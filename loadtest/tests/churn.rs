//! `wsload connect`: handshake churn against the echo server completes
//! cycles (connect, upgrade, close) without errors.

mod common;

use common::{echo_server, wsload_json};

#[test]
fn churn_completes_handshakes() {
    let (_echo, addr) = echo_server(&[]);
    let url = format!("ws://{addr}/");
    let r = wsload_json(
        "churn",
        &[
            "connect",
            &url,
            "--max",
            "--concurrency",
            "4",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--workers",
            "1",
            "--no-pin",
        ],
    );
    assert_eq!(r["errors_total"], 0, "errors: {}", r["errors"]);
    assert!(r["handshakes"].as_u64().unwrap() > 0);
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // Nothing listens on this port.
    let addr = common::free_addr();
    let url = format!("ws://{addr}/");
    let r = wsload_json(
        "refused",
        &[
            "connect",
            &url,
            "--rate",
            "100",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--workers",
            "1",
            "--no-pin",
        ],
    );
    assert!(
        r["errors"]["connect"].as_u64().unwrap() > 0,
        "{}",
        r["errors"]
    );
    assert_eq!(r["handshakes"], 0);
}
