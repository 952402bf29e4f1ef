//! Routes end to end: host, path (segment-boundary prefix and exact),
//! header and query conditions with their precedence; the target the
//! backend receives after `strip_prefix` / `rewrite_prefix`; each
//! `host_header` mode; 404 when nothing matches. The backends are
//! tokio-tungstenite servers, which report the request they received.

#[macro_use]
mod common;

use common::*;
use wsedge::config::Config;

/// An upgrade request with this `Host`.
fn request(host: &str, target: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let r = String::from_utf8(upgrade_request(target, extra)).unwrap();
    r.replacen("Host: example.test", &format!("Host: {host}"), 1)
        .into_bytes()
}

struct Fleet {
    proxy: Proxy,
    backends: Vec<(&'static str, Backend)>,
}

impl Fleet {
    /// One backend per upstream name, the routes from `routes`.
    async fn start(driver: IoDriver, names: &[&'static str], routes: &str) -> Fleet {
        let mut text = String::from("[[listener]]\naddress = \"127.0.0.1:0\"\n");
        let mut backends = Vec::new();
        for name in names {
            let b = Backend::start().await;
            text.push_str(&format!(
                "[[upstream]]\nname = \"{name}\"\nservers = [\"{}\"]\n",
                b.addr
            ));
            backends.push((*name, b));
        }
        text.push_str(routes);
        let config = Config::parse(&text, "routes.toml").expect("config");
        Fleet {
            proxy: Proxy::start_config(driver, config),
            backends,
        }
    }

    /// Sends the request; returns which backend took it, with the target
    /// and `Host` it received.
    async fn route(
        &mut self,
        host: &str,
        target: &str,
        extra: &[(&str, &str)],
    ) -> (String, String, String) {
        let (_client, resp) =
            RawWs::connect(self.proxy.addr, &request(host, target, extra), &[]).await;
        assert_eq!(resp.status, 101, "{host} {target}: {resp:?}");
        // The backend that answered 101 hands its connection over just
        // after answering: look until one has it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            for (name, b) in &mut self.backends {
                if let Ok(Some(a)) =
                    tokio::time::timeout(std::time::Duration::from_millis(1), b.try_accept()).await
                {
                    let uri = a.request.uri().to_string();
                    let host = a.request.headers()["host"].to_str().unwrap().to_string();
                    return (name.to_string(), uri, host);
                }
            }
        }
        panic!("no backend got {host} {target}");
    }
}

async fn precedence(driver: IoDriver) {
    let mut f = Fleet::start(
        driver,
        &["web", "chat", "chat_v2", "tenants", "api", "lobby"],
        r#"
[[route]]
path = "/"
upstream = "web"
[[route]]
path = "/chat"
headers = { "X-Version" = "2" }
upstream = "chat_v2"
[[route]]
path = "/chat"
upstream = "chat"
[[route]]
host = "*.example.com"
path = "/"
upstream = "tenants"
[[route]]
host = "api.example.com"
upstream = "api"
[[route]]
path_exact = "/chat/lobby"
query = { room = "*" }
upstream = "lobby"
"#,
    )
    .await;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let table: &[Case<'_>] = &[
        ("h.test", "/", &[], "web"),
        ("h.test", "/chatroom", &[], "web"),
        ("h.test", "/chat", &[], "chat"),
        ("h.test", "/chat/x?y=1", &[], "chat"),
        ("h.test", "/chat/x", &[("X-Version", "2")], "chat_v2"),
        ("h.test", "/chat", &[("x-version", "3")], "chat"),
        ("h.test", "/chat/lobby?room=7", &[], "lobby"),
        ("h.test", "/chat/lobby", &[], "chat"),
        ("t1.example.com", "/chat", &[], "tenants"),
        ("T1.Example.com:8443", "/", &[], "tenants"),
        ("a.b.example.com", "/chat", &[], "chat"),
        ("api.example.com", "/chat", &[("X-Version", "2")], "api"),
    ];
    for (host, target, extra, want) in table {
        let (got, uri, _) = f.route(host, target, extra).await;
        assert_eq!(&got, want, "{host} {target} {extra:?}");
        assert_eq!(&uri, target, "the target is forwarded as sent");
    }
    // Nothing matches: 404, and no backend is contacted.
    let mut g = Fleet::start(
        driver,
        &["chat"],
        "[[route]]\npath = \"/chat\"\nupstream = \"chat\"\n",
    )
    .await;
    let resp = http_exchange(g.proxy.addr, &request("h", "/chatroom", &[])).await;
    assert_eq!(resp.status, 404, "{resp:?}");
    let b = &mut g.backends[0].1;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(50), b.try_accept())
            .await
            .is_err()
    );
}

async fn rewrites_and_host_header(driver: IoDriver) {
    let mut f = Fleet::start(
        driver,
        &["strip", "rewrite", "literal", "keep"],
        r#"
[[route]]
path = "/ws"
strip_prefix = "/ws"
host_header = "backend"
upstream = "strip"
[[route]]
path = "/v1"
rewrite_prefix = { from = "/v1", to = "/api/v2" }
host_header = "internal.example:9000"
upstream = "rewrite"
[[route]]
path = "/lit"
host_header = "internal.example"
upstream = "literal"
[[route]]
path = "/"
upstream = "keep"
"#,
    )
    .await;
    let strip_addr = f.backends[0].1.addr.to_string();
    let (b, uri, host) = f.route("client.test:8080", "/ws/chat?x=1", &[]).await;
    assert_eq!((b.as_str(), uri.as_str()), ("strip", "/chat?x=1"));
    assert_eq!(host, strip_addr, "host_header = backend");
    let (_, uri, _) = f.route("client.test", "/ws", &[]).await;
    assert_eq!(uri, "/");
    let (_, uri, _) = f.route("client.test", "/ws?t=1", &[]).await;
    assert_eq!(uri, "/?t=1");
    let (b, uri, host) = f.route("client.test", "/v1/rooms/7", &[]).await;
    assert_eq!((b.as_str(), uri.as_str()), ("rewrite", "/api/v2/rooms/7"));
    assert_eq!(host, "internal.example:9000");
    let (b, uri, host) = f.route("client.test", "/lit/x", &[]).await;
    assert_eq!((b.as_str(), uri.as_str()), ("literal", "/lit/x"));
    assert_eq!(host, "internal.example");
    let (b, uri, host) = f.route("client.test:8080", "/wsx", &[]).await;
    assert_eq!((b.as_str(), uri.as_str()), ("keep", "/wsx"));
    assert_eq!(
        host, "client.test:8080",
        "host_header = preserve (the default)"
    );
}

both_drivers!(precedence, rewrites_and_host_header);
