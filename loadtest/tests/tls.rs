//! `wss://`: `wsload echo --tls-cert/--tls-key` against `wsload run` and
//! `wsload connect`, with the server's certificate as `--ca`, with
//! `--insecure`, with a CA that did not sign it, and with `--tls-resume`.

mod common;

use std::path::PathBuf;

use common::{echo_server, wsload_json};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM
/// (certificate, key) to files that are removed when the value is dropped.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

impl Cert {
    fn new(name: &str) -> Self {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("certificate parameters");
        // Each its own issuer name, as different CAs have.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("wsload test {name}"));
        let signing_key = rcgen::KeyPair::generate().expect("a key pair");
        let cert = params.self_signed(&signing_key).expect("self-signing");
        let dir = std::env::temp_dir();
        let id = std::process::id();
        let cert_file = dir.join(format!("wsload-test-{name}-{id}-cert.pem"));
        let key_file = dir.join(format!("wsload-test-{name}-{id}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("writing the certificate");
        std::fs::write(&key_file, signing_key.serialize_pem()).expect("writing the key");
        Self {
            cert: cert_file,
            key: key_file,
        }
    }

    fn cert(&self) -> &str {
        self.cert.to_str().expect("UTF-8 temp path")
    }

    fn key(&self) -> &str {
        self.key.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cert);
        let _ = std::fs::remove_file(&self.key);
    }
}

const CLIENT: [&str; 4] = ["--workers", "1", "--no-pin", "--timeout"];

fn run(name: &str, url: &str, duration: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["run", url, "--connections", "4", "--duration", duration];
    args.extend(["--warmup", "100ms"]);
    args.extend(CLIENT);
    args.push("3s");
    args.extend(extra);
    wsload_json(name, &args)
}

#[test]
fn wss_echo_round_trips_with_ca_and_insecure() {
    let cert = Cert::new("wss");
    let (_echo, addr) = echo_server(&["--tls-cert", cert.cert(), "--tls-key", cert.key()]);
    let url = format!("wss://localhost:{}/tls", addr.port());
    for (name, extra, version) in [
        (
            "ca-tls13",
            &["--ca", cert.cert(), "--size", "64,1k,70k"][..],
            "TLSv1_3",
        ),
        (
            "ca-tls12",
            &[
                "--ca",
                cert.cert(),
                "--tls-version",
                "1.2",
                "--in-flight",
                "4",
            ][..],
            "TLSv1_2",
        ),
        ("insecure", &["--insecure", "--text"][..], "TLSv1_3"),
    ] {
        let r = run(name, &url, "500ms", extra);
        assert_eq!(r["errors_total"], 0, "{name}: errors: {}", r["errors"]);
        assert!(r["messages"].as_u64().unwrap() > 0, "{name}: no messages");
        assert_eq!(r["handshakes"], 4, "{name}");
        let session = r["tls_session"].as_str().unwrap_or_default();
        assert!(session.starts_with(version), "{name}: {session}");
    }
    // The IP address in the URL is checked against the certificate's
    // IP address (no SNI is sent for an address).
    let url = format!("wss://{addr}/");
    let r = run("ip", &url, "300ms", &["--ca", cert.cert()]);
    assert_eq!(r["errors_total"], 0, "ip: errors: {}", r["errors"]);
}

#[test]
fn wrong_ca_fails_with_a_clear_error() {
    let cert = Cert::new("served");
    let other = Cert::new("other");
    let (_echo, addr) = echo_server(&["--tls-cert", cert.cert(), "--tls-key", cert.key()]);
    let url = format!("wss://localhost:{}/", addr.port());
    let r = run("wrong-ca", &url, "300ms", &["--ca", other.cert()]);
    assert_eq!(r["messages"], 0);
    assert_eq!(r["handshakes"], 0);
    let errors = r["errors"].as_object().unwrap();
    let (label, n) = errors.iter().next().expect("an error is counted");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(n.as_u64().unwrap() > 0);
    assert!(
        label.starts_with("tls handshake (certificate not trusted: unknown issuer"),
        "{label}"
    );
}

#[test]
fn wss_against_a_plain_server_says_not_tls() {
    let cert = Cert::new("mixed");
    let (_echo, addr) = echo_server(&[]);
    let url = format!("wss://localhost:{}/", addr.port());
    let r = run("wss-to-plain", &url, "300ms", &["--ca", cert.cert()]);
    assert_eq!(r["messages"], 0);
    let errors = r["errors"].to_string();
    assert!(errors.contains("tls handshake (not TLS"), "{errors}");
}

fn churn(name: &str, url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["connect", url, "--max", "--concurrency", "4"];
    args.extend(["--duration", "500ms", "--warmup", "100ms"]);
    args.extend(CLIENT);
    args.push("3s");
    args.extend(extra);
    wsload_json(name, &args)
}

#[test]
fn connect_counts_resumed_handshakes() {
    let cert = Cert::new("resume");
    let (_echo, addr) = echo_server(&["--tls-cert", cert.cert(), "--tls-key", cert.key()]);
    let url = format!("wss://localhost:{}/", addr.port());
    for (name, extra) in [
        ("resume-tls13", &["--tls-resume"][..]),
        (
            "resume-tls12",
            &["--tls-resume", "--tls-version", "1.2"][..],
        ),
    ] {
        let mut args = vec!["--ca", cert.cert()];
        args.extend(extra);
        let r = churn(name, &url, &args);
        assert_eq!(r["errors_total"], 0, "{name}: errors: {}", r["errors"]);
        assert_eq!(r["params"]["tls_resume"], true);
        let resumed = r["tls_resumed"].as_u64().unwrap();
        let full = r["tls_full"].as_u64().unwrap();
        assert!(resumed > 0, "{name}: no resumed handshake ({full} full)");
        assert_eq!(resumed + full, r["handshakes"].as_u64().unwrap(), "{name}");
    }
    let r = churn("full", &url, &["--ca", cert.cert()]);
    assert_eq!(r["errors_total"], 0, "full: errors: {}", r["errors"]);
    assert_eq!(r["tls_resumed"], 0);
    assert!(r["tls_full"].as_u64().unwrap() > 0);
}
