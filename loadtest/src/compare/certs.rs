//! The certificates of `wsload compare --tls`: self-signed, for `localhost`
//! and 127.0.0.1, made with `openssl req -x509` (ECDSA P-256, and RSA 2048
//! with `--tls-rsa`). Every proxy serves the same files; wsload trusts them
//! with `--ca`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A kind of certificate (its key type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CertKind {
    /// ECDSA P-256 (with SHA-256 signatures).
    Ecdsa,
    /// RSA 2048 (RSA-PSS signatures in TLS 1.3).
    Rsa,
}

impl CertKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ecdsa => "ecdsa",
            Self::Rsa => "rsa",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Ecdsa => "ECDSA P-256",
            Self::Rsa => "RSA 2048",
        }
    }

    fn key_args(self) -> &'static [&'static str] {
        match self {
            Self::Ecdsa => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Self::Rsa => &["-newkey", "rsa:2048"],
        }
    }
}

/// A certificate and its key as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub kind: CertKind,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate then key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
}

/// The `openssl` arguments that make a certificate of `kind`.
pub fn openssl_args(kind: CertKind, cert: &Path, key: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["req", "-x509"].map(String::from).to_vec();
    v.extend(kind.key_args().iter().map(|s| s.to_string()));
    v.extend(
        [
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            // `req -x509` marks the certificate as a CA by default, and
            // webpki (wsload's client, as any rustls client) refuses a CA
            // certificate as a server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ]
        .map(String::from),
    );
    v.push(key.display().to_string());
    v.push("-out".into());
    v.push(cert.display().to_string());
    v
}

/// Makes a certificate of `kind` in `dir` with openssl.
pub fn generate(dir: &Path, kind: CertKind) -> anyhow::Result<CertFiles> {
    std::fs::create_dir_all(dir)?;
    let cert = dir.join(format!("{}-cert.pem", kind.name()));
    let key = dir.join(format!("{}-key.pem", kind.name()));
    let combined = dir.join(format!("{}-combined.pem", kind.name()));
    let out = Command::new("openssl")
        .args(openssl_args(kind, &cert, &key))
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl req -x509 ({}) failed: {}",
            kind.describe(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut both = std::fs::read(&cert).context("reading the new certificate")?;
    both.extend(std::fs::read(&key).context("reading the new key")?);
    std::fs::write(&combined, both)?;
    Ok(CertFiles {
        kind,
        cert,
        key,
        combined,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_certificate_serves_and_verifies_with_rustls() {
        let dir = std::env::temp_dir().join(format!("wsload-certs-test-{}", std::process::id()));
        let files = match generate(&dir, CertKind::Ecdsa) {
            Ok(f) => f,
            Err(e) if Command::new("openssl").arg("version").output().is_err() => {
                eprintln!("skipped: no openssl ({e:#})");
                return;
            }
            Err(e) => panic!("{e:#}"),
        };
        // wsload echo takes it, and wsload's client trusts it with --ca.
        crate::tls::server_config(&files.cert, &files.key).unwrap();
        let client = crate::tls::ClientTls {
            ca: Some(files.cert.clone()),
            ..Default::default()
        };
        let config = crate::tls::client_config(&client).unwrap();
        let combined = std::fs::read_to_string(&files.combined).unwrap();
        assert!(combined.contains("BEGIN CERTIFICATE") && combined.contains("PRIVATE KEY"));
        // A handshake in memory: the certificate verifies for localhost.
        let server = crate::tls::server_config(&files.cert, &files.key).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(config, name).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..4 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets().unwrap();
            }
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
