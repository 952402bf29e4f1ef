//! Binary upgrade (`wsedge --upgrade`, SIGUSR2): under a loop of about 200
//! handshakes a second, the running binary starts a new one that inherits
//! its listening sockets, and drains once the new one is ready; not one
//! handshake is refused (every client gets its 101). A new process that cannot start (the configuration it
//! re-reads is broken) leaves the old one serving, and a later upgrade
//! still works.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// One handshake every 5 ms: 200 a second.
const INTERVAL: Duration = Duration::from_millis(5);

fn scratch_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy_upgrade");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nobody listens on (bound, then released): the
/// configuration needs a fixed port, since port 0 is not handed on.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config_text(driver: IoDriver, port: u16, pid_file: &Path) -> String {
    format!(
        "workers = 2\nio_driver = \"{}\"\npid_file = \"{}\"\n\
         [[listener]]\naddress = \"127.0.0.1:{port}\"\n\
         [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n\
         [[route]]\npath = \"/\"\nupstream = \"e\"\n\
         [timeouts]\ndrain_period = \"1s\"\n",
        driver_arg(driver),
        pid_file.display()
    )
}

/// Becomes the reaper of orphaned descendants: the new wsedge is the old
/// one's child, and is reparented to this test process when the old one
/// exits, so that its exit status can be read here.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer argument, no
    // pointers; it only changes who reaps orphans of this process's tree.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl: {}", std::io::Error::last_os_error());
}

fn read_pid(pid_file: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Waits for the pid file to name a process other than `old`.
fn wait_new_pid(pid_file: &Path, old: u32, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(pid) = read_pid(pid_file).filter(|&p| p != old) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the pid file still names {old} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process this test did not start but reaps (as subreaper): killed on
/// drop unless [`Adopted::terminate`] saw it exit.
struct Adopted(Option<i32>);

impl Adopted {
    /// SIGTERM, then its exit status (waits up to `limit`).
    fn terminate(&mut self, limit: Duration) -> i32 {
        let pid = self.0.take().expect("running");
        // SAFETY: kill takes no pointers; `pid` is our reaped descendant,
        // not yet waited for, so the id cannot have been reused.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid, writable int; WNOHANG never blocks.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                assert!(libc::WIFEXITED(status), "process {pid}: status {status:#x}");
                return libc::WEXITSTATUS(status);
            }
            assert!(
                r == 0,
                "waitpid({pid}): {}",
                std::io::Error::last_os_error()
            );
            assert!(Instant::now() < deadline, "process {pid} still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: as in `terminate`; then reaped, so no zombie is left.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut status = 0;
            // SAFETY: `status` is a valid, writable int.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        }
    }
}

/// What went wrong with one client.
#[derive(Debug)]
enum Failure {
    /// No 101: refused, reset, timed out or answered otherwise before the
    /// handshake completed. What the contract counts.
    Refused(String),
    /// After the 101: the echo or the close handshake. Reported, not what
    /// "refused" means (an old process's drain may close a connection it
    /// accepted with 1001, as SIGTERM does).
    Later(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(e) => write!(f, "refused: {e}"),
            Failure::Later(e) => write!(f, "after the 101: {e}"),
        }
    }
}

/// One client: connect, handshake (101), one echo round trip, close. Each
/// step has [`STEP`] to finish; the error names the step that failed.
async fn one_handshake(url: &str, n: u64) -> Result<(), Failure> {
    let (mut ws, resp) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| Failure::Refused("connect/handshake: timed out".into()))?
        .map_err(|e| Failure::Refused(format!("connect/handshake: {e}")))?;
    if resp.status() != 101 {
        return Err(Failure::Refused(format!("status {}", resp.status())));
    }
    later(&mut ws, n).await.map_err(Failure::Later)
}

/// The echo round trip and the close handshake.
async fn later(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    n: u64,
) -> Result<(), String> {
    let step = |what: &'static str| move |_| format!("{what}: timed out");
    let text = format!("hello {n}");
    ws.send(Message::Text(text.clone()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(STEP, ws.next())
        .await
        .map_err(step("echo"))?
    {
        Some(Ok(Message::Text(t))) if t == text => {}
        other => return Err(format!("echo: {other:?}")),
    }
    ws.close(None).await.map_err(|e| format!("close: {e}"))?;
    tokio::time::timeout(STEP, async {
        while let Some(m) = ws.next().await {
            m.map_err(|e| format!("after close: {e}"))?;
        }
        Ok(())
    })
    .await
    .map_err(step("close handshake"))?
}

/// The handshake loop, until told to stop.
#[derive(Clone, Default)]
struct Load {
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    later: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Load {
    /// Open loop: one client every `INTERVAL`, each a task of its own, so
    /// a slow one does not slow the rate. Ends (once every client is done)
    /// when told to stop.
    fn start(&self, addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
        let load = self.clone();
        let url = format!("ws://{addr}/loop");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            let mut clients = Vec::new();
            let mut n = 0;
            while !load.stop.load(Ordering::Acquire) {
                tick.tick().await;
                n += 1;
                let (load, url) = (load.clone(), url.clone());
                clients.push(tokio::spawn(async move {
                    match one_handshake(&url, n).await {
                        Ok(()) => load.ok.fetch_add(1, Ordering::AcqRel),
                        Err(e) => {
                            let count = match e {
                                Failure::Refused(_) => &load.refused,
                                Failure::Later(_) => &load.later,
                            };
                            load.errors.lock().unwrap().push(e.to_string());
                            count.fetch_add(1, Ordering::AcqRel)
                        }
                    };
                }));
            }
            for c in clients {
                c.await.unwrap();
            }
        })
    }
}

/// Waits for the old process to exit. (`ProxyProcess::wait_exit` reads
/// the output until it falls quiet, which it does not while the new
/// process, writing to the same pipes, logs under load.)
fn wait_old_exit(p: &mut ProxyProcess, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the old process still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `accepted=N` of the "stopped pid=PID" line.
fn accepted_by(p: &mut ProxyProcess, pid: u32) -> u64 {
    let line = p.wait_for_line(&format!("stopped pid={pid} "), Duration::from_secs(10));
    line.split("accepted=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accepted= in {line:?}"))
}

/// `wsedge --upgrade --config FILE`, blocking.
fn upgrade_cli(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wsedge"))
        .args(["--upgrade", "--config", config.to_str().unwrap()])
        .output()
        .expect("the wsedge binary runs")
}

/// `--upgrade` with a handshake loop running: 0 failed handshakes; the
/// old process exits 0, the new one serves and stops on SIGTERM with 0.
async fn upgrade_refuses_nothing(driver: IoDriver) {
    // One measurement at a time: the two drivers' loops would share the
    // CPUs (and the rate they reach) otherwise.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    become_subreaper();
    let dir = scratch_dir();
    let tag = format!("{}-{driver:?}", std::process::id());
    let pid_file = dir.join(format!("{tag}-load.pid"));
    let config = dir.join(format!("{tag}-load.toml"));
    std::fs::write(&config, config_text(driver, free_port(), &pid_file)).unwrap();

    let mut p = ProxyProcess::spawn(&["--config", config.to_str().unwrap()]);
    let addr = tokio::task::block_in_place(|| p.wait_listening());
    let old_pid = p.child.id();
    assert_eq!(read_pid(&pid_file), Some(old_pid));

    let load = Load::default();
    let started = Instant::now();
    let clients = load.start(addr);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = load.ok.load(Ordering::Acquire);
    let cfg = config.clone();
    let out = tokio::task::spawn_blocking(move || upgrade_cli(&cfg))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("upgraded: process"),
        "--upgrade: {:?}\nstdout {stdout}\nstderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let new_pid = wait_new_pid(&pid_file, old_pid, Duration::from_secs(5));
    let mut new = Adopted(Some(new_pid as i32));
    let status = tokio::task::block_in_place(|| wait_old_exit(&mut p, Duration::from_secs(15)));
    assert_eq!(
        status.code(),
        Some(0),
        "the old process's exit; output:\n{}",
        p.output.join("\n")
    );
    let at_old_exit = load.ok.load(Ordering::Acquire);
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop.store(true, Ordering::Release);
    let ran = started.elapsed();
    clients.await.unwrap();
    let get = |c: &AtomicU64| c.load(Ordering::Acquire);
    let (ok, refused, later) = (get(&load.ok), get(&load.refused), get(&load.later));
    let after = ok - at_old_exit;

    assert_eq!(read_pid(&pid_file), Some(new_pid));
    let code = tokio::task::block_in_place(|| new.terminate(Duration::from_secs(15)));
    assert_eq!(code, 0, "the new process's exit on SIGTERM");
    let by_old = tokio::task::block_in_place(|| accepted_by(&mut p, old_pid));
    let by_new = tokio::task::block_in_place(|| accepted_by(&mut p, new_pid));
    assert!(!pid_file.exists(), "the new process removes its pid file");

    let attempts = ok + refused + later;
    let rate = attempts as f64 / ran.as_secs_f64();
    let errors = load.errors.lock().unwrap();
    eprintln!(
        "{driver:?}: {attempts} handshakes in {ran:.1?} ({rate:.0}/s): {refused} refused, \
         {ok} complete (101, echo, close), {later} with a 101 but a failed echo or close \
         handshake {errors:?}; {before} complete before the upgrade, {after} after the old \
         process exited; accepted by the old process {by_old}, by the new one {by_new}"
    );
    assert_eq!(
        refused,
        0,
        "refused handshakes: {:?}; the processes' warnings and errors:\n{}",
        &errors[..errors.len().min(10)],
        p.output
            .iter()
            .filter(|l| !l.contains(" INFO "))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        rate >= 150.0,
        "the loop ran below 150 handshakes/s: the test measured too little"
    );
    assert!(before > 0 && after > 0 && by_old > 0 && by_new > 0);
    assert_eq!(
        by_old + by_new,
        attempts,
        "every client accepted by one of them"
    );
}

/// A new process that cannot start (the configuration it re-reads is
/// broken): the old one logs why and goes on serving; `--upgrade` refuses
/// the broken file without signalling; once the file is fixed, an upgrade
/// works.
async fn failed_upgrade_keeps_serving(driver: IoDriver) {
    become_subreaper();
    let dir = scratch_dir();
    let tag = format!("{}-{driver:?}", std::process::id());
    let pid_file = dir.join(format!("{tag}-fail.pid"));
    let config = dir.join(format!("{tag}-fail.toml"));
    let good = config_text(driver, free_port(), &pid_file);
    std::fs::write(&config, &good).unwrap();

    let mut p = ProxyProcess::spawn(&["--config", config.to_str().unwrap()]);
    let addr = tokio::task::block_in_place(|| p.wait_listening());
    let url = format!("ws://{addr}/");
    let old_pid = p.child.id();
    one_handshake(&url, 1).await.unwrap();

    std::fs::write(&config, good.replace("[[route]]", "[[route]]\nbogus = 1")).unwrap();
    let cfg = config.clone();
    let out = tokio::task::spawn_blocking(move || upgrade_cli(&cfg))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
    assert!(stderr.contains("nothing sent"), "stderr {stderr}");

    // Signalled by hand: the new process re-reads the broken file, exits.
    p.signal("USR2");
    let line =
        tokio::task::block_in_place(|| p.wait_for_line("upgrade failed", Duration::from_secs(40)));
    assert!(line.contains("exited before it was ready"), "{line}");
    assert!(line.contains("goes on serving"), "{line}");
    assert!(
        p.output.iter().any(|l| l.contains("bogus")),
        "the new process says what is wrong:\n{}",
        p.output.join("\n")
    );
    assert_eq!(read_pid(&pid_file), Some(old_pid));
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the old process runs"
    );
    for n in 0..5 {
        one_handshake(&url, n).await.unwrap();
    }

    // Fixed: the next upgrade goes through.
    std::fs::write(&config, &good).unwrap();
    p.signal("USR2");
    let new_pid =
        tokio::task::block_in_place(|| wait_new_pid(&pid_file, old_pid, Duration::from_secs(40)));
    let mut new = Adopted(Some(new_pid as i32));
    let status = tokio::task::block_in_place(|| wait_old_exit(&mut p, Duration::from_secs(15)));
    assert_eq!(status.code(), Some(0));
    one_handshake(&url, 99).await.unwrap();
    let code = tokio::task::block_in_place(|| new.terminate(Duration::from_secs(15)));
    assert_eq!(code, 0);
}

both_drivers!(upgrade_refuses_nothing, failed_upgrade_keeps_serving);
