//! The admin endpoint over real HTTP (requests written by hand, answers
//! parsed by the test harness): probes, metrics that move with known
//! traffic and pass `promtool check metrics`, the bearer token, and a
//! drain through the API that stops new connections to a server, and the
//! status page (`/status`, `/api/status`).

#[macro_use]
mod common;

use std::net::SocketAddr;

use common::*;
use wsedge::config::Config;

fn config(extra: &str, servers: &[String]) -> Config {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let text = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n{extra}\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/app\"\nupstream = \"u\"\n\
         [[upstream]]\nname = \"u\"\nservers = [{}]\n",
        list.join(", ")
    );
    Config::parse(&text, "admin.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpResponse {
    request(addr, "GET", path, token).await
}

async fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\n\r\n");
    http_exchange(addr, req.as_bytes()).await
}

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn probes_and_metrics_move_with_traffic(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(driver, config("", std::slice::from_ref(&backend)));
    let admin = proxy.server().admin_addr().expect("admin on");
    let r = get(admin, "/healthz", None).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    assert_eq!(get(admin, "/readyz", None).await.status, 200);

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            RawWs::connect(proxy.addr, &upgrade_request("/app", &[]), &[])
                .await
                .0,
        );
    }
    let r = http_exchange(proxy.addr, &upgrade_request("/nowhere", &[])).await;
    assert_eq!(r.status, 404);
    let m = get(admin, "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{m:?}"
    );
    let text = String::from_utf8(m.body).unwrap();
    assert_eq!(
        sample(&text, "wsedge_handshakes_total{outcome=\"101\"}"),
        3.0
    );
    assert_eq!(
        sample(&text, "wsedge_handshakes_total{outcome=\"refused_other\"}"),
        1.0
    );
    assert_eq!(sample(&text, "wsedge_refusals_total{status=\"404\"}"), 1.0);
    assert_eq!(sample(&text, "wsedge_connections_accepted_total"), 4.0);
    let active = format!("wsedge_server_active_connections{{upstream=\"u\",server=\"{backend}\"}}");
    assert_eq!(sample(&text, &active), 3.0);
    assert_eq!(
        sample(
            &text,
            &format!("wsedge_server_state{{upstream=\"u\",server=\"{backend}\",state=\"UP\"}}")
        ),
        1.0
    );
    assert!(sample(&text, "wsedge_process_open_fds") > 0.0);
    assert!(sample(&text, "wsedge_process_resident_memory_bytes") > 0.0);
    check_with_promtool(&text);

    // WebSocket-level figures: a text, a binary and a ping from one client,
    // then its close with 4001, appear under their labels once it ends.
    let mut ws = open.pop().unwrap();
    ws.send(&client_frame(true, op::TEXT, b"hi")).await;
    ws.read_frame().await;
    ws.send(&client_frame(true, op::BINARY, &[1, 2, 3])).await;
    ws.read_frame().await;
    ws.send(&client_frame(true, op::PING, b"p")).await;
    ws.read_frame().await;
    // A 300-byte message in two fragments: one message of 300 bytes.
    ws.send(&client_frame(false, op::BINARY, &[7; 150])).await;
    ws.send(&client_frame(true, op::CONT, &[8; 150])).await;
    ws.read_frame().await;
    ws.send(&client_frame(true, op::CLOSE, &close_payload(4001, "bye")))
        .await;
    ws.read_close().await;
    drop(ws);
    let text = within("the connection to be counted", async {
        loop {
            let m = get(admin, "/metrics", None).await;
            let text = String::from_utf8(m.body).unwrap();
            if sample(&text, "wsedge_connection_endings_total{ending=\"closed\"}") == 1.0 {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let route = "path=/app";
    let series = |name: &str, labels: &str| format!("{name}{{route=\"{route}\",{labels}}}");
    assert_eq!(
        sample(&text, &series("wsedge_messages_total", "from=\"client\"")),
        3.0
    );
    // Sizes: 2 and 3 bytes (≤ 64), 300 (≤ 1 KiB), each way (an echo).
    for from in ["client", "backend"] {
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("wsedge_message_size_bytes_bucket{{from=\"{from}\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("64"), 2.0, "{from}");
        assert_eq!(bucket("256"), 2.0, "{from}");
        assert_eq!(bucket("1024"), 3.0, "{from}");
        assert_eq!(bucket("+Inf"), 3.0, "{from}");
        let sum = format!("wsedge_message_size_bytes_sum{{from=\"{from}\"}}");
        assert_eq!(sample(&text, &sum), 305.0, "{from}");
        let server = format!(
            "wsedge_server_messages_total{{upstream=\"u\",server=\"{backend}\",from=\"{from}\"}}"
        );
        assert_eq!(sample(&text, &server), 3.0, "{from}");
    }
    assert_eq!(
        sample(
            &text,
            &series("wsedge_frames_total", "from=\"client\",opcode=\"ping\"")
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &series("wsedge_frames_total", "from=\"backend\",opcode=\"binary\"")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "wsedge_close_frames_total{started_by=\"client\",code=\"4xxx\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "wsedge_handshake_duration_seconds_count"),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "wsedge_handshake_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        3.0
    );
    check_with_promtool(&text);

    // The running configuration, and 404/405 for what is not there.
    let c = get(admin, "/api/config", None).await;
    let v: serde_json::Value = serde_json::from_slice(&c.body).unwrap();
    assert_eq!(v["upstreams"][0]["name"], "u");
    assert_eq!(get(admin, "/api/nothing", None).await.status, 404);
    assert_eq!(request(admin, "POST", "/metrics", None).await.status, 405);
}

/// `promtool check metrics`, where promtool is installed (Debian's
/// `prometheus` package; `.ci/run` installs it when it can).
fn check_with_promtool(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("NOTE: promtool not installed: `promtool check metrics` not run");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn a_token_guards_the_api(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let dir = std::env::temp_dir().join(format!("wsedge-admin-{}-{driver:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123\n").unwrap();
    let token = Some("s3cret-admin-token-0123");
    let extra = format!("token_file = \"{}\"", token_file.display());
    let proxy = Proxy::start_config(driver, config(&extra, std::slice::from_ref(&backend)));
    let admin = proxy.server().admin_addr().unwrap();
    let r = get(admin, "/metrics", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        get(admin, "/metrics", Some("wrong-token-00000000000"))
            .await
            .status,
        401
    );
    assert_eq!(get(admin, "/metrics", token).await.status, 200);
    // Probes stay open: balancers and kubelets have no token.
    assert_eq!(get(admin, "/healthz", None).await.status, 200);
    let drain = format!("/api/servers/u/{backend}/drain");
    assert_eq!(request(admin, "POST", &drain, None).await.status, 401);
    drop(proxy);

    // read_open: reads without a token, changes still with one.
    let extra = format!(
        "token_file = \"{}\"\nread_open = true",
        token_file.display()
    );
    let proxy = Proxy::start_config(driver, config(&extra, std::slice::from_ref(&backend)));
    let admin = proxy.server().admin_addr().unwrap();
    assert_eq!(get(admin, "/metrics", None).await.status, 200);
    assert_eq!(request(admin, "POST", &drain, None).await.status, 401);
    assert_eq!(request(admin, "POST", &drain, token).await.status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn a_drained_server_gets_no_new_connections(driver: IoDriver) {
    let mut a = Backend::start().await;
    let mut b = Backend::start().await;
    let (sa, sb) = (a.addr.to_string(), b.addr.to_string());
    let proxy = Proxy::start_config(driver, config("", &[sa.clone(), sb.clone()]));
    let admin = proxy.server().admin_addr().unwrap();
    let r = request(admin, "POST", &format!("/api/servers/u/{sa}/drain"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let servers = get(admin, "/api/servers", None).await;
    let v: serde_json::Value = serde_json::from_slice(&servers.body).unwrap();
    assert_eq!(v["upstreams"][0]["servers"][0]["state"], "DRAINING");
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            RawWs::connect(proxy.addr, &upgrade_request("/app", &[]), &[])
                .await
                .0,
        );
        b.accept().await;
    }
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(200), a.try_accept())
            .await
            .is_err(),
        "the drained server got a connection"
    );
    // Back in rotation.
    let r = request(admin, "POST", &format!("/api/servers/u/{sa}/enable"), None).await;
    assert_eq!(r.status, 200);
    let r = request(admin, "POST", "/api/servers/u/10.9.9.9:1/drain", None).await;
    assert_eq!(r.status, 404);
    // Every server draining: not ready.
    for s in [&sa, &sb] {
        request(admin, "POST", &format!("/api/servers/u/{s}/drain"), None).await;
    }
    let r = get(admin, "/readyz", None).await;
    assert_eq!(r.status, 503);
    assert!(
        String::from_utf8_lossy(&r.body).contains("upstream u"),
        "{r:?}"
    );
}

async fn connections_are_listed_and_closed(driver: IoDriver) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(driver, config("", std::slice::from_ref(&backend)));
    let admin = proxy.server().admin_addr().unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut ws = connect(&proxy.url("/app")).await;
        for _ in 0..=i {
            ws.send(Message::Text("hello".into())).await.unwrap();
            next_data(&mut ws).await;
        }
        clients.push(ws);
    }
    let r = get(admin, "/api/connections", None).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["total"], 3, "{v}");
    let rows = v["connections"].as_array().unwrap();
    let mut messages: Vec<u64> = rows
        .iter()
        .map(|c| c["messages_from_client"].as_u64().unwrap())
        .collect();
    messages.sort();
    assert_eq!(messages, [1, 2, 3]);
    for c in rows {
        assert_eq!(c["server"], backend.as_str());
        assert_eq!(c["upstream"], "u");
        assert!(c["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(c["bytes_from_client"].as_u64().unwrap() > 0);
    }
    // The oldest first; limit and filters.
    let one = get(admin, "/api/connections?limit=1", None).await;
    let one: serde_json::Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(one["connections"].as_array().unwrap().len(), 1);
    assert_eq!(one["connections"][0]["messages_from_client"], 1);
    let none = get(admin, "/api/connections?client=10.9.9.9", None).await;
    let none: serde_json::Value = serde_json::from_slice(&none.body).unwrap();
    assert_eq!(none["total"], 0);

    // Close the oldest with a code and reason of our choosing.
    let id = one["connections"][0]["id"].as_str().unwrap().to_string();
    let body = r#"{"code": 4000, "reason": "maintenance"}"#;
    let req = format!(
        "POST /api/connections/{id}/close HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = http_exchange(admin, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let reason = expect_close_code(&mut clients[0], 4000, "the oldest client").await;
    assert_eq!(reason, "maintenance");
    // Gone once its close handshake is over: then closing it again is a
    // 404. The default code is 1008.
    drop(clients.remove(0));
    let list = within("the closed connection to leave the list", async {
        loop {
            let r = get(admin, "/api/connections", None).await;
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            if v["total"] == 2 {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let again = request(admin, "POST", &format!("/api/connections/{id}/close"), None).await;
    assert_eq!(again.status, 404);
    let next = list["connections"][0]["id"].as_str().unwrap().to_string();
    let r = request(
        admin,
        "POST",
        &format!("/api/connections/{next}/close"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let reason = expect_close_code(&mut clients[0], 1008, "the next client").await;
    assert_eq!(reason, "closed by operator");
    assert_eq!(
        request(admin, "POST", "/api/connections/garbage/close", None)
            .await
            .status,
        400
    );
}

async fn status_page_shows_the_servers(driver: IoDriver) {
    let a = echo_backend().await.to_string();
    let b = echo_backend().await.to_string();
    let proxy = Proxy::start_config(driver, config("", &[a.clone(), b.clone()]));
    let admin = proxy.server().admin_addr().unwrap();
    let mut open = RawWs::connect(proxy.addr, &upgrade_request("/app", &[]), &[])
        .await
        .0;
    // One echo through: the relay runs (and is in its worker's registry).
    open.send(&client_frame(true, 0x1, b"hi")).await;
    assert_eq!(open.read_frame().await.payload, b"hi");
    let client = open.stream.local_addr().unwrap().to_string();
    let r = get(admin, "/status", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type").unwrap().starts_with("text/html"),
        "{r:?}"
    );
    let page = String::from_utf8(r.body).unwrap();
    // Self-contained: nothing loaded from elsewhere.
    for external in ["<script src", "<link", "@import", "http://", "https://"] {
        assert!(!page.contains(external), "{external} in:\n{page}");
    }
    assert!(page.contains(&a) && page.contains(&b), "{page}");
    assert!(page.contains(">UP<"), "{page}");
    assert!(!page.contains(">DRAINING<"), "{page}");
    // The route's open connection, and the client among the longest-lived.
    assert!(
        page.contains(r#"<tr data-p="routes.0">"#)
            && page.contains(
                r#"<td class="n" data-v=".active">1</td><td class="n" data-v=".upgraded">1</td>"#
            ),
        "{page}"
    );
    let longest = page
        .split(r#"<tbody id="longest">"#)
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .unwrap_or_else(|| panic!("no longest-lived table in:\n{page}"));
    assert!(
        longest.contains(&format!("<code>{client}</code>")),
        "{longest}"
    );
    assert!(longest.starts_with("<tr><td><code>127.0.0.1:"), "{longest}");

    let r = request(admin, "POST", &format!("/api/servers/u/{a}/drain"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let page = String::from_utf8(get(admin, "/status", None).await.body).unwrap();
    assert!(page.contains(">DRAINING<"), "{page}");

    let r = get(admin, "/api/status", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["time_ms"].as_u64().unwrap() > 0, "{v}");
    assert!(v["clock_ms"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["draining"], false);
    assert_eq!(v["counters"]["upgraded"], 1, "{v}");
    assert_eq!(v["counters"]["accepted"], 1, "{v}");
    for k in [
        "active",
        "refused",
        "closed_normally",
        "protocol_errors",
        "closed_otherwise",
        "bytes_from_client",
        "bytes_from_backend",
        "tls_full",
        "tls_resumed",
        "tls_failed",
    ] {
        assert!(v["counters"][k].is_u64(), "{k} in {v}");
    }
    assert!(v["refused_by"]["ip_handshake_rate"].is_u64(), "{v}");
    assert_eq!(v["routes"][0]["upstream"], "u");
    assert_eq!(v["routes"][0]["active"], 1, "{v}");
    assert_eq!(v["routes"][0]["upgraded"], 1, "{v}");
    assert_eq!(v["longest"][0]["client"], client.as_str(), "{v}");
    assert_eq!(v["busiest"][0]["client"], client.as_str(), "{v}");
    let u = &v["upstreams"][0];
    assert_eq!(
        (u["upstream"].as_str(), u["state"].as_str()),
        (Some("u"), Some("UP"))
    );
    assert_eq!(u["up"], 1, "the drained one no longer takes connections");
    let servers = u["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    let state = |addr: &str| {
        servers
            .iter()
            .find(|s| s["server"] == addr)
            .map(|s| s["state"].clone())
    };
    assert_eq!(state(&a), Some("DRAINING".into()));
    assert_eq!(state(&b), Some("UP".into()));
    assert_eq!(u["active"], 1, "{u}");
}

both_drivers!(
    connections_are_listed_and_closed,
    probes_and_metrics_move_with_traffic,
    a_token_guards_the_api,
    a_drained_server_gets_no_new_connections,
    status_page_shows_the_servers,
);
