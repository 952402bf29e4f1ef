//! Authentication at the handshake: JWTs made by PyJWT (fixtures in
//! `tests/fixtures/jwt`, made by its `make.py`), from a header, the query,
//! a cookie or the subprotocol list; identity forwarding; `require`; close
//! at expiry (a token minted here by hand with HMAC-SHA256); API keys; an
//! external authorization service (a small HTTP server in the test);
//! per-identity limits.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wsedge::config::Config;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn tokens() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixture("tokens.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["tokens"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

/// A proxy whose route `/` needs `[[auth]]` "a" with `auth_keys`, and
/// `route` keys; upstream on `backend`.
fn config(auth_keys: &str, route: &str, limits: &str, backend: &str) -> Config {
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [[auth]]\nname = \"a\"\n{auth_keys}\n\
         [[route]]\npath = \"/\"\nupstream = \"u\"\nauth = \"a\"\n{route}\n\
         [[upstream]]\nname = \"u\"\nservers = [\"{backend}\"]\n[limits]\n{limits}\n"
    );
    Config::parse(&text, "auth.toml").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn jwt_keys(extra: &str) -> String {
    format!(
        "kind = \"jwt\"\njwks_file = \"{}\"\nissuer = \"https://issuer.test\"\naudience = \"wsedge-test\"\n\
         forward = {{ sub = \"X-User-Id\", scope = \"X-User-Scopes\" }}\n{extra}",
        fixture("jwks.json")
    )
}

async fn every_algorithm_is_accepted_and_the_identity_forwarded(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let proxy = Proxy::start_config(
        driver,
        config(&jwt_keys(""), "", "", &backend.addr.to_string()),
    );
    let t = tokens();
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ] {
        let token = &t[&format!("valid_{alg}")];
        let auth = format!("Bearer {token}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("X-User-Id", "forged-admin"),
            ("x-user-scopes", "everything"),
        ];
        let (_ws, resp) =
            RawWs::try_connect(proxy.addr, &upgrade_request("/", &headers), &[]).await;
        assert_eq!(resp.status, 101, "{alg}: {resp:?}");
        let got = backend.accept().await;
        let h = got.request.headers();
        let ids: Vec<_> = h.get_all("x-user-id").iter().collect();
        assert_eq!(
            ids,
            [&format!("user-{alg}")],
            "{alg}: the forged one is gone"
        );
        let scopes: Vec<_> = h.get_all("x-user-scopes").iter().collect();
        assert_eq!(scopes, ["chat:read chat:write"]);
    }
}

async fn each_failure_gets_its_status(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let proxy = Proxy::start_config(
        driver,
        config(
            &jwt_keys(""),
            "require = { scope = \"chat:write\" }",
            "",
            &backend,
        ),
    );
    let t = tokens();
    for (name, status) in [
        ("expired", 401),
        ("not_yet_valid", 401),
        ("wrong_issuer", 401),
        ("wrong_audience", 401),
        ("missing_aud", 401),
        ("bad_signature", 401),
        ("bad_signature_other_key", 401),
        ("alg_none", 401),
        ("hs256_confusion", 401),
        ("unknown_kid", 401),
        ("missing_scope", 403),
        ("valid_ES256", 101),
    ] {
        let auth = format!("Bearer {}", t[name]);
        let req = upgrade_request("/", &[("Authorization", &auth)]);
        let (_ws, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
        assert_eq!(resp.status, status, "{name}: {resp:?}");
        if status == 401 {
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"), "{name}");
        }
    }
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request("/", &[]), &[]).await;
    assert_eq!(resp.status, 401, "no token");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    proxy.wait_counter("no_credential", 1).await;
    proxy.wait_counter("bad_credential", 10).await;
    proxy.wait_counter("forbidden", 1).await;
}

async fn token_sources_and_what_the_backend_sees(driver: IoDriver) {
    let mut backend = Backend::start_choosing(Some("chat.v1")).await;
    let proxy = Proxy::start_config(
        driver,
        config(
            &jwt_keys(
                "token_from = [\"header:Authorization\", \"query:access_token\", \"cookie:session\", \"protocol\"]",
            ),
            "",
            "",
            &backend.addr.to_string(),
        ),
    );
    let t = tokens();
    let token = &t["valid_ES256"];

    // The query: the parameter is gone from the target the backend gets.
    let path = format!("/room?x=1&access_token={token}&y=2");
    // (This backend picks chat.v1: the client must offer it.)
    let chat = ("Sec-WebSocket-Protocol", "chat.v1");
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &upgrade_request(&path, &[chat]), &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let got = backend.accept().await;
    assert_eq!(got.request.uri().to_string(), "/room?x=1&y=2");

    // A cookie.
    let cookie = format!("theme=dark; session={token}");
    let req = upgrade_request("/", &[("Cookie", &cookie), chat]);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.status, 101);
    backend.accept().await;

    // The subprotocol list: marker and token never reach the backend and
    // are not echoed in the 101.
    let list = format!("bearer, {}, chat.v1", t["protocol"]);
    let req = upgrade_request("/", &[("Sec-WebSocket-Protocol", &list)]);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(resp.header("sec-websocket-protocol"), Some("chat.v1"));
    let got = backend.accept().await;
    let offered: Vec<_> = got
        .request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, ["chat.v1"]);
    assert_eq!(got.request.headers()["x-user-id"], "proto-user");
}

/// An HS256 token signed here with the fixture secret (by hand: HMAC-SHA256
/// over base64url JSON), expiring `secs` from now.
fn hs256_expiring_in(secs: u64) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + secs;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(format!(r#"{{"sub":"short-lived","exp":{exp}}}"#));
    let input = format!("{header}.{claims}");
    let secret = std::fs::read(fixture("hmac.secret")).unwrap();
    let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = b64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    format!("{input}.{sig}")
}

async fn the_connection_closes_when_its_token_expires(driver: IoDriver) {
    let mut backend = Backend::start().await;
    for (extra, code) in [("", 1008), ("expiry_close_code = 4001", 4001)] {
        let keys = format!(
            "kind = \"jwt\"\nsecret_file = \"{}\"\n{extra}",
            fixture("hmac.secret")
        );
        let proxy = Proxy::start_config(driver, config(&keys, "", "", &backend.addr.to_string()));
        let auth = format!("Bearer {}", hs256_expiring_in(2));
        let (mut ws, resp) = RawWs::try_connect(
            proxy.addr,
            &upgrade_request("/", &[("Authorization", &auth)]),
            &[],
        )
        .await;
        assert_eq!(resp.status, 101, "{resp:?}");
        let mut got = backend.accept().await;
        // Traffic flows until then.
        ws.send(&client_frame(true, op::TEXT, b"still valid")).await;
        let m = within("the message", got.ws.next()).await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap(), "still valid");
        let close = within_for(Duration::from_secs(6), "the expiry", ws.read_close()).await;
        assert_eq!(close.close_code(), Some(code));
        assert!(String::from_utf8_lossy(&close.payload[2..]).contains("token expired"));
        let closed = within("the backend's close", async {
            loop {
                match got.ws.next().await {
                    Some(Ok(m)) if m.is_close() => return m,
                    Some(Ok(_)) => continue,
                    other => panic!("{other:?}"),
                }
            }
        })
        .await;
        match closed {
            tungstenite::Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code),
            other => panic!("{other:?}"),
        }
    }
}

async fn api_keys_name_the_identity(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let dir =
        std::env::temp_dir().join(format!("wsedge-apikeys-{}-{driver:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "billing:k-billing-0123456789\nsearch:k-search-9876543210\n",
    )
    .unwrap();
    let keys = format!(
        "kind = \"api_key\"\nkeys_file = \"{}\"\ntoken_from = [\"header:X-API-Key\", \"query:api_key\"]\n\
         forward = {{ sub = \"X-Client-Name\" }}",
        file.display()
    );
    let proxy = Proxy::start_config(
        driver,
        config(
            &keys,
            "max_connections_per_identity = 1",
            "",
            &backend.addr.to_string(),
        ),
    );
    let req = upgrade_request("/", &[("X-API-Key", "k-billing-0123456789")]);
    let (_held, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.status, 101);
    let got = backend.accept().await;
    assert_eq!(got.request.headers()["x-client-name"], "billing");
    // One connection per identity.
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    proxy.wait_counter("identity_connections", 1).await;
    // From the query: gone from the target.
    let (_ws, resp) = RawWs::try_connect(
        proxy.addr,
        &upgrade_request("/q?api_key=k-search-9876543210", &[]),
        &[],
    )
    .await;
    assert_eq!(resp.status, 101);
    let got = backend.accept().await;
    assert_eq!(got.request.uri().to_string(), "/q");
    assert_eq!(got.request.headers()["x-client-name"], "search");
    let bad = upgrade_request("/", &[("X-API-Key", "k-billing-0123456788")]);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &bad, &[]).await;
    assert_eq!(resp.status, 401);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small authorization service: `Bearer allow*` → 200 with `X-User:
/// alice`, `Bearer slow` → never answers, anything else → 403. Counts the
/// requests it gets.
async fn auth_service() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let answer: &[u8] = if head.contains("authorization: bearer allow") {
                    assert!(head.contains("x-original-uri: /"), "{head}");
                    b"HTTP/1.1 200 OK\r\nX-User: alice\r\nX-Other: no\r\nContent-Length: 0\r\n\r\n"
                } else if head.contains("authorization: bearer slow") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                } else {
                    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
                };
                let _ = s.write_all(answer).await;
            });
        }
    });
    (addr, asked)
}

async fn an_external_service_decides(driver: IoDriver) {
    let mut backend = Backend::start().await;
    let (service, asked) = auth_service().await;
    let keys = |extra: &str| {
        format!(
            "kind = \"external\"\nurl = \"http://{service}/check\"\nforward_headers = [\"Authorization\"]\n\
             copy_headers = [\"X-User\"]\ntimeout = \"300ms\"\ncache_ttl = \"60s\"\n{extra}"
        )
    };
    let proxy = Proxy::start_config(driver, config(&keys(""), "", "", &backend.addr.to_string()));
    let allow = upgrade_request(
        "/",
        &[("Authorization", "Bearer allow-1"), ("X-User", "mallory")],
    );
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &allow, &[]).await;
    assert_eq!(resp.status, 101, "{resp:?}");
    let got = backend.accept().await;
    let users: Vec<_> = got.request.headers().get_all("x-user").iter().collect();
    assert_eq!(
        users,
        ["alice"],
        "copied from the service; the client's is gone"
    );
    assert!(got.request.headers().get("x-other").is_none());
    // Cached: the same credential does not ask again.
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &allow, &[]).await;
    assert_eq!(resp.status, 101);
    backend.accept().await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the second decision came from the cache"
    );
    let deny = upgrade_request("/", &[("Authorization", "Bearer nope")]);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &deny, &[]).await;
    assert_eq!(resp.status, 403);
    let slow = upgrade_request("/", &[("Authorization", "Bearer slow")]);
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &slow, &[]).await;
    assert_eq!(resp.status, 503, "timeout → 503");
    drop(proxy);
    // fail_open: the same timeout lets the client in.
    let proxy = Proxy::start_config(
        driver,
        config(&keys("fail_open = true"), "", "", &backend.addr.to_string()),
    );
    let (_ws, resp) = RawWs::try_connect(proxy.addr, &slow, &[]).await;
    assert_eq!(resp.status, 101);
    backend.accept().await;
}

async fn jwks_file_is_reloaded_on_sighup(driver: IoDriver) {
    let backend = echo_backend().await.to_string();
    let dir = std::env::temp_dir().join(format!("wsedge-jwks-{}-{driver:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    // First only the EC P-256 key.
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let only = |kid: &str| {
        let keys: Vec<_> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kid"] == kid)
            .cloned()
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    };
    std::fs::write(&jwks, only("ec256-1")).unwrap();
    let keys = format!("kind = \"jwt\"\njwks_file = \"{}\"", jwks.display());
    let proxy = Proxy::start_config(driver, config(&keys, "", "", &backend));
    let t = tokens();
    let with = |name: &str| {
        let auth = format!("Bearer {}", t[name]);
        upgrade_request("/", &[("Authorization", &auth)])
    };
    let status = |req: Vec<u8>| async move {
        let (_ws, resp) = RawWs::try_connect(proxy.addr, &req, &[]).await;
        resp.status
    };
    assert_eq!(status(with("valid_ES256")).await, 101);
    assert_eq!(status(with("valid_EdDSA")).await, 401);
    // Rotated: the Ed25519 key replaces it; SIGHUP (what reload_tls is).
    std::fs::write(&jwks, only("ed-1")).unwrap();
    proxy.reload_tls();
    assert_eq!(status(with("valid_EdDSA")).await, 101);
    assert_eq!(status(with("valid_ES256")).await, 401);
    // A broken file keeps the keys in use.
    std::fs::write(&jwks, "{ not json").unwrap();
    proxy.reload_tls();
    assert_eq!(status(with("valid_EdDSA")).await, 101);
    let _ = std::fs::remove_dir_all(&dir);
}

both_drivers!(
    jwks_file_is_reloaded_on_sighup,
    every_algorithm_is_accepted_and_the_identity_forwarded,
    each_failure_gets_its_status,
    token_sources_and_what_the_backend_sees,
    the_connection_closes_when_its_token_expires,
    api_keys_name_the_identity,
    an_external_service_decides,
);
