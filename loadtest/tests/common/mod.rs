//! Helpers shared by the end-to-end tests: the built binary, free ports, an
//! echo server that is killed when the test ends, and `--json` output.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WSLOAD: &str = env!("CARGO_BIN_EXE_wsload");

/// Kills the child when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding port 0")
}

/// Starts `wsload echo` (with `extra` flags) and waits until it listens.
pub fn echo_server(extra: &[&str]) -> (Running, SocketAddr) {
    let addr = free_addr();
    let child = Command::new(WSLOAD)
        .args([
            "echo",
            "--listen",
            &addr.to_string(),
            "--workers",
            "1",
            "--no-pin",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting wsload echo");
    let guard = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "echo server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard, addr)
}

/// Runs `wsload ARGS --json FILE`, asserts success, returns the JSON.
pub fn wsload_json(name: &str, args: &[&str]) -> serde_json::Value {
    let json: PathBuf =
        std::env::temp_dir().join(format!("wsload-test-{name}-{}.json", std::process::id()));
    let out = Command::new(WSLOAD)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running wsload");
    assert!(
        out.status.success(),
        "wsload {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("reading --json output");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("--json output is JSON")
}
