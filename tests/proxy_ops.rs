//! What an operator hits first: JSON log lines that parse and carry the
//! documented fields, no colour codes in a redirected log, a bad
//! `WSEDGE_LOG` is an error, the built-in echo only on loopback from the
//! command line, a second wsedge on a taken address refuses to start, a
//! float duration says what is expected, and running out of file
//! descriptors answers 503 (never 502).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn wsedge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wsedge"))
}

/// Every line of a JSON log parses; the access line of a connection that
/// ended carries every documented field.
#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_carry_the_documented_fields() {
    let mut p = ProxyProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--log-format",
        "json",
    ]);
    let addr = p.wait_listening();
    let mut ws = connect(&format!("ws://{addr}/room?x=1")).await;
    ws.send(Message::Text("one".into())).await.unwrap();
    next_data(&mut ws).await;
    ws.close(None).await.unwrap();
    expect_close(&mut ws).await;
    let refused = http_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(refused.status, 426);
    let closed = tokio::task::block_in_place(|| p.wait_for_line("closed: ", STEP));
    let line: serde_json::Value = serde_json::from_str(&closed).expect("a JSON line");
    for field in [
        "timestamp",
        "level",
        "message",
        "threadName",
        "worker",
        "client",
        "route",
        "path",
        "backend",
        "identity",
        "tls",
        "closed_by",
        "close_code",
        "from_client",
        "from_backend",
        "messages_from_client",
        "messages_from_backend",
        "secs",
    ] {
        assert!(line.get(field).is_some(), "no {field:?} in {closed}");
    }
    assert_eq!(line["closed_by"], "client");
    assert_eq!(line["close_code"], 1005);
    assert_eq!(line["messages_from_client"], 1);
    assert_eq!(line["path"], "/room?x=1");
    let refused = tokio::task::block_in_place(|| p.wait_for_line("refused: ", STEP));
    let line: serde_json::Value = serde_json::from_str(&refused).expect("a JSON line");
    assert_eq!(line["status"], 426);
    assert_eq!(line["reason"], "status_426");
    for l in &p.output {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
}

/// A log redirected to a file has no escape codes, with or without
/// `NO_COLOR`; the lines can be grepped for `path=/x`.
#[tokio::test(flavor = "multi_thread")]
async fn no_colour_codes_in_a_redirected_log() {
    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ops-log-{}.txt", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = wsedge()
        .args(["--listen", &format!("127.0.0.1:{port}"), "--workers", "1"])
        .env_remove("NO_COLOR")
        .env("WSEDGE_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "wsedge did not come up");
    let mut ws = connect(&format!("ws://{addr}/x")).await;
    ws.close(None).await.unwrap();
    expect_close(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(!text.contains('\x1b'), "escape codes in:\n{text}");
    assert!(
        text.contains("path=/x"),
        "grep path=/x finds nothing in:\n{text}"
    );
}

#[test]
fn a_bad_wsedge_log_is_an_error() {
    let out = wsedge()
        .args(["--listen", "127.0.0.1:0"])
        .env("WSEDGE_LOG", "verbose")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WSEDGE_LOG \"verbose\""), "{err}");
}

#[test]
fn the_builtin_echo_is_served_only_on_loopback_from_the_command_line() {
    let out = wsedge()
        .args(["--listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--upstream builtin:echo"), "{err}");
}

/// A second wsedge on the address of a running one exits 1 instead of
/// taking half its connections through SO_REUSEPORT.
#[test]
fn a_second_wsedge_on_a_taken_address_refuses_to_start() {
    let mut first = ProxyProcess::spawn(&["--listen", "127.0.0.1:0", "--workers", "1"]);
    let addr = first.wait_listening().to_string();
    let mut second = ProxyProcess::spawn(&["--listen", &addr, "--workers", "1"]);
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{}", second.output.join("\n"));
    assert!(
        second
            .output
            .iter()
            .any(|l| l.contains("another process listens there")),
        "{}",
        second.output.join("\n")
    );
}

#[test]
fn a_float_duration_says_what_is_expected() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("ops-float-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[[listener]]\naddress = \"localhost:8080\"\n[[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
         [[route]]\npath = \"/\"\nupstream = \"e\"\n[timeouts]\nclose = 5.5\n",
    )
    .unwrap();
    let out = wsedge()
        .args(["--check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(":10: 5.5: expected a whole number"), "{err}");
    assert!(!err.contains("untagged"), "{err}");
}

/// Under a tiny open-file limit, clients past it get 503 (from the accept
/// reserve, or when the backend connect finds no descriptor), never 502.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_file_descriptors_is_503_not_502() {
    let backend = echo_backend().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cmd = format!(
        "ulimit -n 48 && exec {} --listen 127.0.0.1:{port} --upstream {backend} --workers 1",
        env!("CARGO_BIN_EXE_wsedge")
    );
    let mut child = Command::new("sh")
        .args(["-c", &cmd])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&upgrade_request("/", &[])).await.unwrap();
        let mut buf = [0u8; 12];
        let n = within("an answer", s.read(&mut buf)).await.unwrap_or(0);
        let status: u16 = std::str::from_utf8(&buf[9..n.clamp(9, 12)])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        statuses.push(status);
        if status == 101 {
            held.push(s);
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(statuses.contains(&101), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 101 || *s == 503),
        "only 101 or 503: {statuses:?}"
    );
}

/// `pid_file` is written at start and removed at exit; `wsedge --reload`
/// checks the file, then signals the process it names (a bad file sends
/// nothing); `POST /api/reload` reloads the same file.
#[tokio::test(flavor = "multi_thread")]
async fn reload_through_the_pid_file_and_the_api() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ops-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("wsedge.pid");
    let config = dir.join("wsedge.toml");
    let text = format!(
        "pid_file = \"{}\"\nworkers = 1\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n[[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
         [[route]]\npath = \"/\"\nupstream = \"e\"\n",
        pid_file.display()
    );
    std::fs::write(&config, &text).unwrap();
    let mut p = ProxyProcess::spawn(&["--config", config.to_str().unwrap()]);
    p.wait_listening();
    let line = p.wait_for_line("admin endpoint", STEP);
    let admin: std::net::SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), p.child.id().to_string());

    let out = wsedge()
        .args(["--reload", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    tokio::task::block_in_place(|| p.wait_for_line("SIGHUP: reloading", STEP));

    // A broken file: nothing is sent.
    std::fs::write(&config, format!("{text}\nbogus = 1\n")).unwrap();
    let out = wsedge()
        .args(["--reload", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing sent"));

    // The API reloads the file itself: refused while it is broken (400,
    // with file:line), done once it is fixed.
    let reload = || async {
        http_exchange(
            admin,
            b"POST /api/reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        )
        .await
    };
    let r = reload().await;
    assert_eq!(r.status, 400, "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("wsedge.toml:") && error.contains("bogus"),
        "{error}"
    );
    assert_eq!(v["changed"], false);
    std::fs::write(&config, &text).unwrap();
    let r = reload().await;
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["generation"], 3, "SIGHUP made 2: {v}");

    p.signal("INT");
    let status = tokio::task::block_in_place(|| p.wait_exit(Duration::from_secs(10)));
    assert_eq!(status.code(), Some(0));
    assert!(!pid_file.exists(), "the pid_file is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
}
