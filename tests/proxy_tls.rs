//! TLS on both legs, end to end, against independent implementations:
//! tokio-rustls + tokio-tungstenite clients and backends (rustls's own
//! record layer, not wsedge's), and `openssl s_client` (OpenSSL) for
//! version refusals and session resumption. Certificates are made here
//! with rcgen, under a test CA.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use wsedge::tls::certs::CertFiles;
use wsedge::tls::setup::{ClientAuth, ClientTls, MinVersion, ServerTls};

/// A test CA and the files it signs, in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("wsedge-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("wsedge test CA {name}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_params,
            ca_key,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `NAME.pem` and `NAME.key`: a leaf for `sans` with CN `cn`.
    fn leaf(&self, name: &str, cn: &str, sans: &[&str]) -> CertFiles {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        roots
    }

    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        client_cert: Option<&CertFiles>,
    ) -> Arc<rustls::ClientConfig> {
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(self.roots());
        let mut c = match client_cert {
            Some(f) => b
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&f.cert)
                        .unwrap()
                        .map(|c| c.unwrap())
                        .collect(),
                    PrivateKeyDer::from_pem_file(&f.key).unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_tls(certs: Vec<CertFiles>) -> ServerTls {
    ServerTls {
        certificates: certs,
        sni_strict: false,
        min_version: MinVersion::Tls12,
        client_ca: None,
        client_auth: ClientAuth::Required,
    }
}

fn tls_proxy(driver: IoDriver, upstreams: &[String], tls: ServerTls) -> Proxy {
    Proxy::start_with(driver, upstreams, |c| {
        c.listeners[0].tls = Some(tls);
    })
}

type TlsClient = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the proxy asking for `sni`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsClient> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The peer certificate's CN.
fn peer_cn(s: &TlsClient) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (subject, _) = wsedge::tls::certs::subject_and_san(&der).unwrap();
    subject
}

async fn wss(s: TlsClient, url: &str) -> tokio_tungstenite::WebSocketStream<TlsClient> {
    let (ws, resp) = tokio_tungstenite::client_async_with_config(url, s, Some(unlimited()))
        .await
        .expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(msg.clone()).await.unwrap();
    let got = within_for(Duration::from_secs(30), "the echo", next_data(ws)).await;
    assert_eq!(got, msg);
}

// ---------------------------------------------------------------------------

async fn echo_over_wss(driver: IoDriver) {
    let pki = Pki::new(&format!("echo-{driver:?}"));
    let leaf = pki.leaf("leaf", "localhost", &["localhost", "127.0.0.1"]);
    let proxy = tls_proxy(driver, &["builtin:echo".into()], server_tls(vec![leaf]));
    let config = pki.client_config(&[&rustls::version::TLS13], None);
    let s = tls_connect(proxy.addr, config, "localhost").await.unwrap();
    let mut ws = wss(s, &format!("wss://localhost:{}/", proxy.addr.port())).await;
    for size in [0usize, 125, 64 << 10, 16 << 20] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        echo_once(&mut ws, Message::Binary(data)).await;
    }
    echo_once(&mut ws, Message::Text("héllo over TLS".into())).await;
    ws.close(None).await.unwrap();
    let _ = expect_close(&mut ws).await;
    proxy.wait_counter("tls_full", 1).await;
}

async fn tls12_client(driver: IoDriver) {
    let pki = Pki::new(&format!("v12-{driver:?}"));
    let leaf = pki.leaf("leaf", "localhost", &["localhost"]);
    let proxy = tls_proxy(
        driver,
        &["builtin:echo".into()],
        server_tls(vec![leaf.clone()]),
    );
    let s = tls_connect(
        proxy.addr,
        pki.client_config(&[&rustls::version::TLS12], None),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut ws = wss(s, "wss://localhost/").await;
    echo_once(&mut ws, Message::Binary(vec![7; 70_000])).await;
    drop(proxy);

    // min_version = "1.3": a 1.2-only client is refused in the handshake.
    let mut t = server_tls(vec![leaf]);
    t.min_version = MinVersion::Tls13;
    let proxy = tls_proxy(driver, &["builtin:echo".into()], t);
    let r = tls_connect(
        proxy.addr,
        pki.client_config(&[&rustls::version::TLS12], None),
        "localhost",
    )
    .await;
    assert!(r.is_err(), "TLS 1.2 refused with min_version 1.3");
    proxy.wait_counter("tls_failed", 1).await;
}

async fn sni_picks_the_certificate(driver: IoDriver) {
    let pki = Pki::new(&format!("sni-{driver:?}"));
    let default = pki.leaf("default", "default", &["default.test", "127.0.0.1"]);
    let wild = pki.leaf("wild", "wildcard", &["*.example.test"]);
    let exact = pki.leaf("exact", "exact", &["api.example.test"]);
    let proxy = tls_proxy(
        driver,
        &["builtin:echo".into()],
        server_tls(vec![default.clone(), wild.clone(), exact.clone()]),
    );
    let config = pki.client_config(&[&rustls::version::TLS13], None);
    for (sni, cn) in [
        ("chat.example.test", "CN=wildcard"),
        ("api.example.test", "CN=exact"),
        ("default.test", "CN=default"),
        // An IP address: rustls sends no SNI, the first certificate answers.
        ("127.0.0.1", "CN=default"),
    ] {
        let s = tls_connect(proxy.addr, config.clone(), sni).await.unwrap();
        assert_eq!(peer_cn(&s), cn, "{sni}");
    }
    // No match: the first one (the client then refuses its name).
    let r = tls_connect(proxy.addr, config.clone(), "other.test").await;
    assert!(
        r.is_err(),
        "the default certificate does not name other.test"
    );
    drop(proxy);

    // sni_strict: no match is a handshake failure.
    let mut t = server_tls(vec![default, wild]);
    t.sni_strict = true;
    let proxy = tls_proxy(driver, &["builtin:echo".into()], t);
    let insecure = insecure_client();
    assert!(
        tls_connect(proxy.addr, insecure.clone(), "other.test")
            .await
            .is_err()
    );
    let s = tls_connect(proxy.addr, insecure, "x.example.test")
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "CN=wildcard");
}

/// A client that verifies nothing (to see what the server sends).
fn insecure_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth(),
    )
}

/// A backend that records the upgrade request's headers and echoes.
// tungstenite's callback type fixes the (large) error type.
#[allow(clippy::result_large_err)]
async fn header_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let cb = |req: &Request, resp: Response| {
                    let _ = tx.send(req.clone());
                    Ok::<Response, ErrorResponse>(resp)
                };
                if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(s, cb).await {
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn mtls_forwards_the_subject(driver: IoDriver) {
    let pki = Pki::new(&format!("mtls-{driver:?}"));
    let leaf = pki.leaf("leaf", "localhost", &["localhost"]);
    let device = pki.leaf("device", "device-17", &["device17.example.test"]);
    let (backend, mut requests) = header_backend().await;
    let mut t = server_tls(vec![leaf]);
    t.client_ca = Some(pki.ca());
    let proxy = tls_proxy(driver, &[backend.to_string()], t.clone());

    // Required, none sent: the handshake fails (the client sees the alert
    // when it reads).
    let config = pki.client_config(&[&rustls::version::TLS13], None);
    let refused = async {
        let mut s = tls_connect(proxy.addr, config, "localhost").await?;
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        let mut b = [0u8; 64];
        s.read(&mut b).await
    }
    .await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");

    // With one: the backend learns who it is; forged headers are dropped.
    let config = pki.client_config(&[&rustls::version::TLS13], Some(&device));
    let s = tls_connect(proxy.addr, config, "localhost").await.unwrap();
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "wss://localhost/",
    )
    .unwrap();
    req.headers_mut()
        .insert("X-Client-Cert-Subject", "CN=forged".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(req, s).await.unwrap();
    let seen = within("the backend's request", requests.recv())
        .await
        .unwrap();
    let h = |n: &str| {
        seen.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h("x-client-cert-subject").as_deref(), Some("CN=device-17"));
    assert_eq!(
        h("x-client-cert-san").as_deref(),
        Some("DNS:device17.example.test")
    );
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(
        seen.headers()
            .get_all("x-client-cert-subject")
            .iter()
            .count(),
        1
    );
    echo_once(&mut ws, Message::Text("hi".into())).await;
    drop(proxy);

    // Optional: a client without a certificate gets in, with no subject.
    t.client_auth = ClientAuth::Optional;
    let proxy = tls_proxy(driver, &[backend.to_string()], t);
    let s = tls_connect(
        proxy.addr,
        pki.client_config(&[&rustls::version::TLS13], None),
        "localhost",
    )
    .await
    .unwrap();
    let mut ws = wss(s, "wss://localhost/").await;
    let seen = within("the backend's request", requests.recv())
        .await
        .unwrap();
    assert!(seen.headers().get("x-client-cert-subject").is_none());
    echo_once(&mut ws, Message::Text("hi".into())).await;
}

/// A wss:// echo backend (tokio-rustls + tokio-tungstenite).
async fn tls_backend(files: &CertFiles) -> SocketAddr {
    let chain: Vec<_> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                if let Ok(mut ws) =
                    tokio_tungstenite::accept_async_with_config(tls, Some(unlimited())).await
                {
                    while let Some(Ok(m)) = ws.next().await {
                        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn wss_backend(driver: IoDriver) {
    let pki = Pki::new(&format!("backend-{driver:?}"));
    let files = pki.leaf("backend", "backend", &["localhost"]);
    let backend = tls_backend(&files).await;
    let upstream = format!("wss://localhost:{}", backend.port());
    // Verified against the test CA: works, both ways, large messages too.
    let proxy = Proxy::start_with(driver, std::slice::from_ref(&upstream), |c| {
        c.upstreams[0].tls.as_mut().unwrap().client.ca = Some(pki.ca());
    });
    let mut ws = connect(&proxy.url("/")).await;
    for size in [1usize, 20_000, 1 << 20] {
        echo_once(&mut ws, Message::Binary(vec![3; size])).await;
    }
    drop(ws);
    drop(proxy);

    // Another CA: the certificate fails verification: 502.
    let other = Pki::new(&format!("other-{driver:?}"));
    let proxy = Proxy::start_with(driver, std::slice::from_ref(&upstream), |c| {
        c.upstreams[0].tls.as_mut().unwrap().client.ca = Some(other.ca());
    });
    let resp = http_exchange(proxy.addr, &upgrade_request("/", &[])).await;
    assert_eq!(resp.status, 502);
    drop(proxy);

    // insecure_skip_verify: connects anyway.
    let proxy = Proxy::start_with(driver, &[upstream], |c| {
        c.upstreams[0].tls.as_mut().unwrap().client = ClientTls {
            insecure_skip_verify: true,
            ..ClientTls::default()
        };
    });
    let mut ws = connect(&proxy.url("/")).await;
    echo_once(&mut ws, Message::Text("insecure".into())).await;
}

/// `[upstream.health] kind = "websocket"` over a wss:// upstream: the probe
/// speaks TLS, verified as proxied connections are: up against the right
/// CA, down against another.
async fn wss_health_check(driver: IoDriver) {
    use wsedge::balance::server::ServerState;
    let pki = Pki::new(&format!("health-{driver:?}"));
    let files = pki.leaf("backend", "backend", &["localhost"]);
    let backend = tls_backend(&files).await;
    let other = Pki::new(&format!("health-other-{driver:?}"));
    for (ca, want) in [(pki.ca(), ServerState::Up), (other.ca(), ServerState::Down)] {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nservers = [\"wss://localhost:{}\"]\nca = {:?}\neject_after = 0\n\
             [upstream.health]\nkind = \"websocket\"\ninterval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n",
            backend.port(),
            ca
        );
        let proxy = Proxy::start_config(driver, wsedge::config::Config::parse(&text, "x").unwrap());
        let slot = Arc::clone(&proxy.server().fleet().upstreams[0].current().slots[0]);
        if want == ServerState::Down {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while slot.state() != want && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        } else {
            // Four checks' worth: a failing probe would have taken it down.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        assert_eq!(slot.state(), want, "CA {ca:?}");
    }
}

async fn reload_swaps_certificates(driver: IoDriver) {
    let pki = Pki::new(&format!("reload-{driver:?}"));
    let files = pki.leaf("live", "first", &["localhost"]);
    let proxy = tls_proxy(
        driver,
        &["builtin:echo".into()],
        server_tls(vec![files.clone()]),
    );
    let config = pki.client_config(&[&rustls::version::TLS13], None);
    let s = tls_connect(proxy.addr, config.clone(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "CN=first");
    let mut old = wss(s, "wss://localhost/").await;

    // New files, reload: new handshakes get the new certificate, the old
    // connection goes on.
    let next = pki.leaf("next", "second", &["localhost"]);
    std::fs::copy(&next.cert, &files.cert).unwrap();
    std::fs::copy(&next.key, &files.key).unwrap();
    proxy.reload_tls();
    // (A fresh client each time: one that resumes sees its session's
    // certificate.)
    let config = || pki.client_config(&[&rustls::version::TLS13], None);
    let s = tls_connect(proxy.addr, config(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "CN=second");
    echo_once(&mut old, Message::Text("still here".into())).await;

    // A broken file keeps the certificate in use.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    proxy.reload_tls();
    let s = tls_connect(proxy.addr, config(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cn(&s), "CN=second");
    let mut ws = wss(s, "wss://localhost/").await;
    echo_once(&mut ws, Message::Text("ok".into())).await;
}

async fn garbage_and_stalls_hurt_no_one(driver: IoDriver) {
    let pki = Pki::new(&format!("garbage-{driver:?}"));
    let leaf = pki.leaf("leaf", "localhost", &["localhost"]);
    let proxy = Proxy::start_with(driver, &["builtin:echo".into()], |c| {
        c.listeners[0].tls = Some(server_tls(vec![leaf]));
        c.timeouts.handshake = Duration::from_secs(1);
    });
    let config = pki.client_config(&[&rustls::version::TLS13], None);
    let s = tls_connect(proxy.addr, config.clone(), "localhost")
        .await
        .unwrap();
    let mut neighbour = wss(s, "wss://localhost/").await;

    // Plain HTTP on the TLS port: closed.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    plain.write_all(&upgrade_request("/", &[])).await.unwrap();
    let mut buf = Vec::new();
    let r = within(
        "the garbage connection to close",
        plain.read_to_end(&mut buf),
    )
    .await;
    assert!(r.is_err() || !buf.starts_with(b"HTTP/1.1 101"), "{buf:?}");
    // A stalled handshake: half a ClientHello, then nothing; closed after
    // timeouts.handshake.
    let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
    stalled.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
    let mut buf = Vec::new();
    let _ = within(
        "the stalled handshake to be closed",
        stalled.read_to_end(&mut buf),
    )
    .await;
    echo_once(&mut neighbour, Message::Text("unaffected".into())).await;
    proxy.wait_counter("tls_failed", 2).await;
}

async fn alert_ends_the_client_leg(driver: IoDriver) {
    let pki = Pki::new(&format!("alert-{driver:?}"));
    let leaf = pki.leaf("leaf", "localhost", &["localhost"]);
    let mut backend = Backend::start().await;
    let proxy = tls_proxy(driver, &backend.upstream(), server_tls(vec![leaf]));
    let s = tls_connect(
        proxy.addr,
        pki.client_config(&[&rustls::version::TLS13], None),
        "localhost",
    )
    .await
    .unwrap();
    let mut ws = wss(s, "wss://localhost/").await;
    let mut b = backend.accept().await;
    ws.send(Message::Text("x".into())).await.unwrap();
    assert_eq!(next_data(&mut b.ws).await, Message::Text("x".into()));
    // close_notify and a TCP end, no WebSocket close: the backend gets 1001.
    ws.get_mut().shutdown().await.unwrap();
    expect_close_code(&mut b.ws, 1001, "the backend").await;
}

both_drivers!(
    wss_health_check,
    echo_over_wss,
    tls12_client,
    sni_picks_the_certificate,
    mtls_forwards_the_subject,
    wss_backend,
    reload_swaps_certificates,
    garbage_and_stalls_hurt_no_one,
    alert_ends_the_client_leg,
);

// ---------------------------------------------------------------------------
// OpenSSL's client, and the binary.

fn openssl_available() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `openssl s_client` against `addr`. It sends a plain HTTP request
/// (answered 426) and waits for the server to close (`-ign_eof`), so that
/// it has read the TLS 1.3 session ticket that follows the handshake.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-ign_eof")
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
    let out = child.wait_with_output().expect("openssl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn openssl_versions_and_resumption() {
    assert!(
        openssl_available(),
        "openssl is needed (apt-get install openssl)"
    );
    run(IoDriver::Auto, |driver| async move {
        let pki = Pki::new("openssl");
        let leaf = pki.leaf("leaf", "localhost", &["localhost"]);
        let proxy = tls_proxy(driver, &["builtin:echo".into()], server_tls(vec![leaf]));
        let addr = proxy.addr;
        let ca = pki.ca();
        let sess = pki.dir.join("sess.pem");
        tokio::task::spawn_blocking(move || {
            let ca = ca.to_str().unwrap();
            let sess = sess.to_str().unwrap();
            for v in ["-tls1_3", "-tls1_2"] {
                let out = s_client(
                    addr,
                    &[v, "-CAfile", ca, "-servername", "localhost", "-brief"],
                );
                assert!(out.contains("Verification: OK"), "{v}: {out}");
            }
            for v in ["-tls1", "-tls1_1"] {
                let out = s_client(addr, &[v, "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"]);
                assert!(
                    !out.contains("CONNECTION ESTABLISHED"),
                    "{v} accepted: {out}"
                );
            }
            for v in ["-tls1_3", "-tls1_2"] {
                let first = s_client(addr, &[v, "-CAfile", ca, "-sess_out", sess]);
                assert!(first.contains("New, "), "{v}: {first}");
                let again = s_client(addr, &[v, "-CAfile", ca, "-sess_in", sess]);
                assert!(again.contains("Reused, "), "{v} did not resume: {again}");
            }
        })
        .await
        .unwrap();
        assert!(proxy.counter("tls_resumed") >= 2);
    });
}

#[test]
fn check_config_loads_every_certificate() {
    let pki = Pki::new("check");
    let a = pki.leaf("a", "a", &["localhost"]);
    let b = pki.leaf("b", "b", &["localhost"]);
    let write = |name: &str, cert: &Path, key: &Path| {
        let p = pki.dir.join(name);
        std::fs::write(
            &p,
            format!(
                "[[listener]]\naddress = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[upstream]]\nname = \"e\"\nservers = [\"builtin:echo\"]\n[[route]]\npath = \"/\"\nupstream = \"e\"\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        p
    };
    let check = |p: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsedge"))
            .arg("--check-config")
            .arg(p)
            .output()
            .unwrap()
    };
    let good = check(&write("good.toml", &a.cert, &a.key));
    assert!(good.status.success(), "{good:?}");
    let bad = check(&write("bad.toml", &a.cert, &b.key));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not match"), "{err}");
    let missing = check(&write("missing.toml", &pki.dir.join("nope.pem"), &a.key));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.pem"));
    // Relative names are relative to the file.
    let rel = check(&write("rel.toml", Path::new("a.pem"), Path::new("a.key")));
    assert!(rel.status.success(), "{rel:?}");
}

#[test]
fn sighup_reloads_in_the_binary() {
    let pki = Pki::new("sighup");
    let files = pki.leaf("live", "first", &["localhost"]);
    let mut p = ProxyProcess::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ]);
    let line = p.wait_for_line("listening on wss://", Duration::from_secs(10));
    let addr: SocketAddr = line
        .split("wss://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .parse()
        .unwrap();
    let next = pki.leaf("next", "second", &["localhost"]);
    std::fs::copy(&next.cert, &files.cert).unwrap();
    std::fs::copy(&next.key, &files.key).unwrap();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    p.wait_for_line("certificates reloaded", Duration::from_secs(10));
    let out = s_client(
        addr,
        &[
            "-CAfile",
            pki.ca().to_str().unwrap(),
            "-servername",
            "localhost",
        ],
    );
    assert!(
        out.contains("CN=second") || out.contains("CN = second"),
        "{out}"
    );
    let _ = p.child.kill();
}
