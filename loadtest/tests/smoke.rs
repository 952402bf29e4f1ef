//! `wsload echo` plus `wsload run` for about a second: messages flow and no
//! error is counted; a corrupting echo server is caught as errors.

mod common;

use common::{echo_server, wsload_json};

fn run_against(addr: std::net::SocketAddr, name: &str, extra: &[&str]) -> serde_json::Value {
    let url = format!("ws://{addr}/smoke");
    let mut args = vec!["run", url.as_str()];
    args.extend([
        "--connections",
        "8",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
    ]);
    args.extend(["--workers", "1", "--no-pin", "--timeout", "3s"]);
    args.extend(extra);
    wsload_json(name, &args)
}

#[test]
fn run_against_echo_has_no_errors() {
    let (_echo, addr) = echo_server(&[]);
    for (name, extra) in [
        ("binary", &["--size", "64,1k,70k"][..]),
        ("text", &["--text", "--in-flight", "4"][..]),
        ("coalesced", &["--in-flight", "16", "--coalesce"][..]),
        ("rate", &["--rate", "2000"][..]),
    ] {
        let r = run_against(addr, name, extra);
        assert_eq!(r["errors_total"], 0, "{name}: errors: {}", r["errors"]);
        assert!(r["messages"].as_u64().unwrap() > 0, "{name}: no messages");
        assert_eq!(r["handshakes"], 8, "{name}");
        assert!(r["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{name}");
    }
}

#[test]
fn corrupting_echo_is_caught() {
    let (_echo, addr) = echo_server(&["--corrupt-every", "10"]);
    let r = run_against(addr, "corrupt", &[]);
    let corrupt = r["errors"]["corrupt message"].as_u64().unwrap_or(0);
    assert!(corrupt > 0, "corruption not reported: {}", r["errors"]);
    assert_eq!(r["errors_total"].as_u64().unwrap(), corrupt);
}
