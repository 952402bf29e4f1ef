//! The `wsedge` binary: the embedded default (built-in echo) works,
//! `--config` runs a file, `--check-config` names the file and line of an
//! error and exits 1 (0 when valid), `--print-default-config` prints a
//! valid file, an address in use is named on exit 1, and SIGTERM/SIGINT
//! stop it gracefully with exit code 0.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// A file under cargo's scratch directory for integration tests.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy_cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn wsedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(args)
        .output()
        .expect("the wsedge binary runs")
}

fn check_config(path: &Path) -> Output {
    wsedge(&["--check-config", path.to_str().unwrap()])
}

/// `--check-config` on a file with an error on `line`: exit 1 and
/// `FILE:LINE: message` on stderr.
fn expect_check_error(name: &str, text: &str, line: usize, mentions: &str) {
    let path = scratch_file(name, text);
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: stderr {stderr:?}");
    let prefix = format!("{}:{line}:", path.display());
    assert!(
        stderr.contains(&prefix),
        "{name}: stderr {stderr:?} does not start with {prefix:?}"
    );
    assert!(
        stderr.contains(mentions),
        "{name}: stderr {stderr:?} does not mention {mentions:?}"
    );
}

#[test]
fn check_config_reports_file_and_line() {
    expect_check_error(
        "unknown-key.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n",
        3,
        "bogus",
    );
    expect_check_error(
        "bad-size.toml",
        r#"# a comment
[[listener]]
address = "127.0.0.1:0"
[[upstream]]
name = "a"
servers = ["127.0.0.1:9"]
[[route]]
path = "/"
upstream = "a"
max_message_size = "12 parsecs"
"#,
        10,
        "parsecs",
    );
    expect_check_error(
        "undefined-upstream.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\n\
         servers = [\"builtin:echo\"]\n[[route]]\npath = \"/\"\nupstream = \"b\"\n",
        8,
        "\"b\"",
    );
    expect_check_error(
        "bad-server.toml",
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\n\
         servers = [\"builtin:echo\",\n  \"not an address\"]\n[[route]]\npath = \"/\"\nupstream = \"a\"\n",
        6,
        "not an address",
    );
}

#[test]
fn check_config_missing_file_exits_1() {
    let out = wsedge(&["--check-config", "/nonexistent/wsedge.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wsedge.toml"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let path = scratch_file(
        "good.toml",
        r#"
workers = 2
io_driver = "epoll"
[[listener]]
address = "127.0.0.1:0"
[[upstream]]
name = "app"
servers = ["10.0.0.5:9001", "10.0.0.6:9001"]
[[upstream]]
name = "echo"
servers = ["builtin:echo"]
[[route]]
path = "/"
upstream = "app"
[[route]]
path = "/echo"
upstream = "echo"
relay = "tunnel"
[timeouts]
handshake = "500ms"
[limits]
buffer_size = "16KiB"
"#,
    );
    let out = check_config(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn printed_default_config_passes_check() {
    let out = wsedge(&["--print-default-config"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, wsedge::config::DEFAULT_CONFIG);
    let path = scratch_file("default.toml", &text);
    let out = check_config(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_upstream_argument_exits_1() {
    let out = wsedge(&["--listen", "127.0.0.1:0", "--upstream", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
}

/// A listen address already taken: exit 1, and stderr names the address
/// and the kernel's reason.
#[test]
fn address_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut p = ProxyProcess::spawn(&["--listen", &addr, "--workers", "1"]);
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "output:\n{}", p.output.join("\n"));
    let want = format!("wsedge: cannot listen on {addr}: Address already in use");
    assert!(
        p.output.iter().any(|l| l.starts_with(&want)),
        "no line starting {want:?} in:\n{}",
        p.output.join("\n")
    );
}

/// Echoes a text and a binary message through `addr`.
async fn echo_through(addr: std::net::SocketAddr) -> Client {
    let mut ws = connect(&format!("ws://{addr}/anything?x=1")).await;
    for m in [
        Message::Text("hello from the cli test".into()),
        Message::Binary(vec![0, 1, 2, 254, 255]),
    ] {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(next_data(&mut ws).await, m);
    }
    ws
}

/// No `--upstream`: the embedded default's built-in echo server answers.
async fn default_config_echoes(driver: IoDriver) {
    let mut p = ProxyProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--io-driver",
        driver_arg(driver),
    ]);
    let addr = p.wait_listening();
    p.wait_for_line("built-in echo", Duration::from_secs(5));
    let mut ws = echo_through(addr).await;
    ws.close(None).await.unwrap();
    expect_close(&mut ws).await;
}

/// `--config FILE` runs what the file says.
async fn config_file_runs(driver: IoDriver) {
    let path = scratch_file(
        &format!("run-{driver:?}.toml"),
        &format!(
            "workers = 1\nio_driver = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"e\"\n",
            driver_arg(driver)
        ),
    );
    let mut p = ProxyProcess::spawn(&["--config", path.to_str().unwrap()]);
    let addr = p.wait_listening();
    echo_through(addr).await;
}

/// SIGTERM (and SIGINT): a connected client gets close 1001 and the
/// process exits 0.
async fn signal_stops_gracefully(driver: IoDriver, signal: &str) {
    // SIGTERM drains over `drain_period`: short here.
    let path = scratch_file(
        &format!("signal-{signal}-{driver:?}.toml"),
        &format!(
            "workers = 1\nio_driver = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"e\"\n[timeouts]\ndrain_period = \"500ms\"\n",
            driver_arg(driver)
        ),
    );
    let mut p = ProxyProcess::spawn(&["--config", path.to_str().unwrap()]);
    let addr = p.wait_listening();
    let mut ws = echo_through(addr).await;
    let started = Instant::now();
    p.signal(signal);
    let reason = expect_close_code(&mut ws, 1001, "client").await;
    eprintln!("close 1001 {reason:?} after {:?}", started.elapsed());
    let _ = ws.flush().await; // tungstenite's answer
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIG{signal}; output:\n{}",
        p.output.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to stop with the client answering",
        started.elapsed()
    );
}

async fn sigterm_exits_0(driver: IoDriver) {
    signal_stops_gracefully(driver, "TERM").await;
}

async fn sigint_exits_0(driver: IoDriver) {
    signal_stops_gracefully(driver, "INT").await;
}

/// SIGTERM: `/readyz` turns 503 at once, and 20 connections get their
/// 1001 spread over the 2 s drain period, not all at once.
async fn sigterm_drains_at_a_pace(driver: IoDriver) {
    let path = scratch_file(
        &format!("drain-{driver:?}.toml"),
        &format!(
            "workers = 1\nio_driver = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"e\"\n[timeouts]\ndrain_period = \"2s\"\n",
            driver_arg(driver)
        ),
    );
    let mut p = ProxyProcess::spawn(&["--config", path.to_str().unwrap()]);
    let addr = p.wait_listening();
    let line = p.wait_for_line("admin endpoint", Duration::from_secs(5));
    let admin: std::net::SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in {line:?}"));
    let ready = |admin| async move {
        http_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .status
    };
    assert_eq!(ready(admin).await, 200);
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(echo_through(addr).await);
    }
    let started = Instant::now();
    p.signal("TERM");
    let mut closes = Vec::new();
    let waits = clients.into_iter().map(|mut ws| async move {
        let reason = expect_close_code(&mut ws, 1001, "client").await;
        let _ = ws.flush().await;
        (Instant::now(), reason)
    });
    let not_ready = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ready(admin).await
    };
    let (done, status) = tokio::join!(
        within_for(
            Duration::from_secs(10),
            "every 1001",
            futures_util::future::join_all(waits)
        ),
        not_ready
    );
    assert_eq!(status, 503, "readyz during the drain");
    for (at, reason) in done {
        assert_eq!(reason, "going away");
        closes.push(at.duration_since(started));
    }
    closes.sort();
    let (first, last) = (closes[0], closes[closes.len() - 1]);
    eprintln!("closes from {first:?} to {last:?}");
    assert!(
        last - first >= Duration::from_millis(1000),
        "spread: {first:?}..{last:?}"
    );
    assert!(
        last <= Duration::from_millis(4000),
        "within the period: {last:?}"
    );
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0));
}

/// A drain over two workers with the built-in echo: the kernel spreads the
/// echo's connections over both workers' sockets, so a worker whose own
/// connections ended first must keep answering the other's. It did not
/// (io_uring): a relay's 1001 to an echo on a stopped worker waited for the
/// close timeout (30 s here) instead of its answer.
async fn a_drain_over_two_workers_waits_for_no_timeout(driver: IoDriver) {
    let path = scratch_file(
        &format!("drain2-{driver:?}.toml"),
        &format!(
            "workers = 2\nio_driver = \"{}\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
             [[route]]\npath = \"/\"\nupstream = \"e\"\n\
             [timeouts]\ndrain_period = \"1s\"\nclose = \"30s\"\nshutdown_grace = \"60s\"\n",
            driver_arg(driver)
        ),
    );
    let mut p = ProxyProcess::spawn(&["--config", path.to_str().unwrap()]);
    let addr = p.wait_listening();
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(echo_through(addr).await);
    }
    p.signal("TERM");
    let waits = clients.into_iter().map(|mut ws| async move {
        let reason = expect_close_code(&mut ws, 1001, "client").await;
        let _ = ws.flush().await;
        reason
    });
    within_for(
        Duration::from_secs(10),
        "every 1001",
        futures_util::future::join_all(waits),
    )
    .await;
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0));
}

both_drivers!(
    default_config_echoes,
    config_file_runs,
    sigterm_exits_0,
    sigint_exits_0,
    sigterm_drains_at_a_pace,
    a_drain_over_two_workers_waits_for_no_timeout
);
