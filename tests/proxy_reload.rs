//! Configuration reload (SIGHUP, `POST /api/reload`): new connections get
//! the new configuration, live ones keep theirs and are never closed,
//! listeners come and go, a bad file changes nothing, and an old
//! generation is freed once its last connection ends.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use wsedge::server::{Server, Source};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("proxy_reload");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}.toml", std::process::id()))
}

/// A configuration: `/` to `servers`, on 127.0.0.1:0 and on `extra`
/// listeners; an admin endpoint.
fn config_text(servers: &[SocketAddr], extra: &[&str]) -> String {
    let mut t = String::from(
        "[admin]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n",
    );
    for a in extra {
        t.push_str(&format!("[[listener]]\naddress = \"{a}\"\n"));
    }
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    t.push_str(&format!(
        "[[upstream]]\nname = \"u\"\nservers = [{}]\n[[route]]\npath = \"/\"\nupstream = \"u\"\n[timeouts]\nshutdown_grace = \"300ms\"\n",
        list.join(", ")
    ));
    t
}

fn start(driver: IoDriver, path: &std::path::Path, workers: usize) -> Server {
    let mut config = Config::load(path).expect("valid config");
    config.workers = workers;
    config.io_driver = driver;
    let source = Source {
        path: path.to_path_buf(),
        adjust: Box::new(move |c: &mut Config| {
            c.workers = workers;
            c.io_driver = driver;
        }),
    };
    Server::start_reloadable(
        config,
        Arc::new(wsedge::config::system_resolve),
        Some(source),
    )
    .expect("wsedge starts")
}

/// One round trip from the client through the proxy to the backend's
/// accepted end and back.
async fn round_trip(client: &mut Client, backend: &mut BackendWs, text: &str) {
    client.send(Message::text(text)).await.unwrap();
    let got = within("the backend to get the message", backend.next())
        .await
        .expect("backend open")
        .expect("backend reads");
    assert_eq!(got, Message::text(text));
    backend
        .send(Message::text(format!("re: {text}")))
        .await
        .unwrap();
    assert_eq!(
        next_data(client).await,
        Message::text(format!("re: {text}"))
    );
}

/// A POST to the admin endpoint: (status, body).
async fn admin_post(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within("the admin answer", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// The old connection keeps its backend across a reload that moves the
/// route to another server and adds a listener; new connections (on both
/// listeners) go to the new server; removing the listener closes it; the
/// first generation is freed when its connection ends.
async fn reload_switches_new_connections_only(driver: IoDriver) {
    let mut a = Backend::start().await;
    let mut b = Backend::start().await;
    let path = scratch(&format!("switch-{driver:?}"));
    std::fs::write(&path, config_text(&[a.addr], &[])).unwrap();
    let server = start(driver, &path, 2);
    let url = format!("ws://{}/", server.addrs[0]);
    let first = Arc::downgrade(&server.generation());

    let mut old = connect(&url).await;
    let mut old_backend = a.accept().await.ws;
    round_trip(&mut old, &mut old_backend, "before").await;

    std::fs::write(&path, config_text(&[b.addr], &["127.0.0.2:0"])).unwrap();
    let done = server.reload().expect("the reload succeeds");
    assert_eq!(done.generation, 2);
    assert_eq!(done.added.len(), 1, "{done:?}");
    assert!(done.removed.is_empty(), "{done:?}");
    let extra = done.added[0];

    // The live connection: same backend, still relaying both ways.
    round_trip(&mut old, &mut old_backend, "after").await;
    // New ones: the new server, on the old listener and the new one.
    let mut new = connect(&url).await;
    let mut new_backend = b.accept().await.ws;
    round_trip(&mut new, &mut new_backend, "new").await;
    let mut on_extra = connect(&format!("ws://{extra}/")).await;
    let mut extra_backend = b.accept().await.ws;
    round_trip(&mut on_extra, &mut extra_backend, "extra").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), a.try_accept())
            .await
            .is_err(),
        "nothing new reached the old server"
    );

    // Reloading without the extra listener closes it; the connection made
    // through it stays.
    std::fs::write(&path, config_text(&[b.addr], &[])).unwrap();
    let done = server.reload().expect("the second reload succeeds");
    assert_eq!(done.removed, vec!["127.0.0.2:0".parse().unwrap()]);
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(extra).await.is_ok() {
        assert!(Instant::now() < deadline, "{extra} still accepts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_trip(&mut on_extra, &mut extra_backend, "still here").await;

    // The first generation lives as long as its connection.
    assert!(first.upgrade().is_some(), "the old connection holds it");
    old.close(None).await.unwrap();
    let _ = expect_close(&mut old_backend).await;
    let _ = old_backend.flush().await;
    let _ = expect_close(&mut old).await;
    let deadline = Instant::now() + STEP;
    while first.upgrade().is_some() {
        assert!(
            Instant::now() < deadline,
            "generation 1 outlived its last connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    round_trip(&mut new, &mut new_backend, "end").await;
    server.shutdown();
}

/// A file with an error changes nothing: the reload and `POST /api/reload`
/// say where the error is, and connections still go where they went.
async fn a_bad_reload_changes_nothing(driver: IoDriver) {
    let mut a = Backend::start().await;
    let path = scratch(&format!("bad-{driver:?}"));
    std::fs::write(&path, config_text(&[a.addr], &[])).unwrap();
    let server = start(driver, &path, 1);
    let url = format!("ws://{}/", server.addrs[0]);
    let admin = server.admin_addr().expect("admin endpoint");

    let mut bad = config_text(&[a.addr], &["127.0.0.2:0"]);
    bad.push_str("[[route]]\npath = \"/x\"\nupstream = \"nowhere\"\n");
    std::fs::write(&path, &bad).unwrap();
    let line = bad.lines().count();
    let err = server.reload().expect_err("the reload is refused");
    let file = path.display().to_string();
    assert!(err.contains(&file), "{err}");
    assert!(err.contains(&format!(":{line}")), "line {line} in {err}");
    let (status, body) = admin_post(admin, "/api/reload").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("nowhere") && body.contains(&format!(":{line}")),
        "{body}"
    );

    assert_eq!(server.generation().serial, 1);
    assert_eq!(server.generation().config.listeners.len(), 1);
    let mut c = connect(&url).await;
    let mut s = a.accept().await.ws;
    round_trip(&mut c, &mut s, "unchanged").await;

    // Fixed, the API reloads it.
    std::fs::write(&path, config_text(&[a.addr], &[])).unwrap();
    let (status, body) = admin_post(admin, "/api/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"generation\": 2"), "{body}");
    server.shutdown();
}

both_drivers!(
    reload_switches_new_connections_only,
    a_bad_reload_changes_nothing
);

/// An echo backend that answers `NAME: text`.
async fn named_echo(name: &'static str) -> SocketAddr {
    let mut b = Backend::start().await;
    let addr = b.addr;
    tokio::spawn(async move {
        while let Some(Accepted { mut ws, .. }) = b.try_accept().await {
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t)
                            if ws
                                .send(Message::text(format!("{name}: {t}")))
                                .await
                                .is_err() =>
                        {
                            break;
                        }
                        Message::Close(_) => {
                            let _ = ws.flush().await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

/// 100 reloads under load (heavy; run before resolving: `cargo test
/// --release --test proxy_reload -- --ignored --nocapture`): 200 clients
/// send a message every 10 ms while a handshake loop runs, and the route
/// alternates between two servers with every reload. No client is closed,
/// no message lost, no handshake fails, and every old generation is
/// freed once its connections end.
#[test]
#[ignore]
fn a_hundred_reloads_under_load() {
    run_for(IoDriver::Auto, Duration::from_secs(300), |_| async {
        let a = named_echo("a").await;
        let b = named_echo("b").await;
        let path = scratch("hundred");
        std::fs::write(&path, config_text(&[a], &[])).unwrap();
        let server = Arc::new(start(IoDriver::Auto, &path, 2));
        let url = format!("ws://{}/", server.addrs[0]);
        let rss = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 4096
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sent, failed, handshakes) = (
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
        );
        // Warm up once (pools, first connections) before the baseline.
        for _ in 0..2 {
            let mut c = connect(&url).await;
            c.send(Message::text("warm")).await.unwrap();
            let _ = next_data(&mut c).await;
            c.close(None).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let baseline = rss();
        let mut clients = Vec::new();
        for i in 0..200 {
            let (url, stop, sent) = (url.clone(), Arc::clone(&stop), Arc::clone(&sent));
            clients.push(tokio::spawn(async move {
                let mut c = connect(&url).await;
                let mut server_name = None;
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = format!("{i}-{n}");
                    c.send(Message::text(text.clone()))
                        .await
                        .expect("client sends");
                    let Message::Text(got) = next_data(&mut c).await else {
                        panic!("a text answer");
                    };
                    let (name, echoed) = got.split_once(": ").expect("NAME: text");
                    assert_eq!(echoed, text, "the answer to this message");
                    // A connection stays on the server it started on.
                    assert_eq!(*server_name.get_or_insert(name.to_string()), name);
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                c.close(None).await.expect("client closes");
                let _ = expect_close(&mut c).await;
            }));
        }
        let churn = {
            let (url, stop, failed, handshakes) = (
                url.clone(),
                Arc::clone(&stop),
                Arc::clone(&failed),
                Arc::clone(&handshakes),
            );
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match tokio_tungstenite::connect_async(url.as_str()).await {
                        Ok((mut c, _)) => {
                            let ok = c.send(Message::text("hi")).await.is_ok()
                                && matches!(c.next().await, Some(Ok(Message::Text(_))));
                            if !ok {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            let _ = c.close(None).await;
                        }
                        Err(_) => {
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    handshakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        // The load's steady state, before any reload.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let steady = rss();
        let mut old = Vec::new();
        let started = Instant::now();
        for i in 0..100 {
            old.push(Arc::downgrade(&server.generation()));
            let to = if i % 2 == 0 { b } else { a };
            std::fs::write(&path, config_text(&[to], &[])).unwrap();
            let s = Arc::clone(&server);
            let done = tokio::task::spawn_blocking(move || s.reload())
                .await
                .unwrap()
                .expect("reload");
            assert_eq!(done.generation, i + 2);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let took = started.elapsed();
        // The same load after the reloads: the generations between the
        // first (the 200 clients' own) and the current one are freed as
        // soon as their handshake-loop connections end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let between_alive = old[1..].iter().filter(|w| w.upgrade().is_some()).count();
        let during = rss();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for c in clients {
            c.await.expect("no client saw an error or a close");
        }
        churn.await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.iter().any(|w| w.upgrade().is_some()) {
            assert!(Instant::now() < deadline, "old generations are still alive");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let after = rss();
        let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
        let handshakes = handshakes.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "100 reloads in {took:?} under 200 clients: {} messages relayed, {handshakes} handshakes ({failed} failed), 0 clients closed; RSS (test process, proxy included): {:.1} MB idle, {:.1} MB under load before the reloads, {:.1} MB under the same load 2 s after them ({between_alive} of generations 2-100 alive then), {:.1} MB idle at the end; {} of 100 old generations alive at the end",
            sent.load(std::sync::atomic::Ordering::Relaxed),
            baseline as f64 / 1e6,
            steady as f64 / 1e6,
            during as f64 / 1e6,
            after as f64 / 1e6,
            old.iter().filter(|w| w.upgrade().is_some()).count()
        );
        assert_eq!(failed, 0, "failed handshakes");
        assert_eq!(between_alive, 0, "generations left behind under load");
        match Arc::try_unwrap(server) {
            Ok(s) => s.shutdown(),
            Err(_) => panic!("server still shared"),
        }
    });
}

/// TLS sessions resume across a reload: the listener keeps its ticket key
/// and session cache (OpenSSL's client, TLS 1.3 tickets and TLS 1.2 ids).
#[test]
fn tls_sessions_resume_across_a_reload() {
    run(IoDriver::Auto, |driver| async move {
        let dir = scratch(&format!("tls-{driver:?}")).with_extension("d");
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let text = |route: &str| {
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\
                 [[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n[[route]]\npath = \"{route}\"\nupstream = \"e\"\n"
            )
        };
        let path = dir.join("wsedge.toml");
        std::fs::write(&path, text("/")).unwrap();
        let server = start(driver, &path, 1);
        let addr = server.addrs[0];
        let sess = dir.join("sess.pem");
        let s_client = move |args: &[&str]| {
            use std::io::Write;
            let mut child = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr.to_string(), "-ign_eof"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl runs");
            let _ = child
                .stdin
                .take()
                .unwrap()
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
            let out = child.wait_with_output().unwrap();
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        let mut generation = 1;
        for v in ["-tls1_3", "-tls1_2"] {
            let sess = sess.to_str().unwrap().to_string();
            let first = {
                let s = s_client;
                let sess = sess.clone();
                tokio::task::spawn_blocking(move || s(&[v, "-sess_out", &sess]))
                    .await
                    .unwrap()
            };
            assert!(first.contains("New, "), "{v}: {first}");
            // Another route: a real change, same listener.
            generation += 1;
            std::fs::write(&path, text(&format!("/g{generation}"))).unwrap();
            assert_eq!(server.reload().unwrap().generation, generation);
            let again = {
                let s = s_client;
                tokio::task::spawn_blocking(move || s(&[v, "-sess_in", &sess]))
                    .await
                    .unwrap()
            };
            assert!(
                again.contains("Reused, "),
                "{v} did not resume across the reload: {again}"
            );
        }
        server.shutdown();
    });
}
