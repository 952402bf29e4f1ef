//! Certificates a TLS listener serves: loaded from PEM files, checked (the
//! key matches, the certificate is valid now), picked by the client's SNI,
//! and re-read on reload without touching open connections.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A certificate expiring within this many days is warned about.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM: the certificate, then its intermediates.
    pub cert: PathBuf,
    /// PEM: PKCS#8, RSA or SEC1.
    pub key: PathBuf,
}

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for CertError {}

fn err(path: &Path, reason: impl Into<String>) -> CertError {
    CertError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A loaded certificate with what SNI matching and checks need.
#[derive(Debug)]
pub struct Loaded {
    /// The files it came from.
    pub files: CertFiles,
    /// DNS names (lowercase; `*.` wildcards kept) and IP addresses of its
    /// subjectAltName, or its CN when it has none.
    pub names: Vec<String>,
    /// The end of its validity, Unix seconds.
    pub not_after: i64,
    /// Its subject, for logs.
    pub subject: String,
    key: Arc<CertifiedKey>,
}

impl Loaded {
    /// Days left before it expires (negative: expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now).div_euclid(86_400)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Loads a chain and its key and checks them: parseable, the key matches
/// the certificate, valid now.
pub fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err(&files.cert, pem_error(e)))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(&files.cert, pem_error(e)))?;
    let Some(leaf) = chain.first() else {
        return Err(err(&files.cert, "no certificate in the file"));
    };
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, pem_error(e)))?;
    let (names, not_before, not_after, subject) = inspect(leaf.as_ref())
        .map_err(|e| err(&files.cert, format!("not a valid X.509 certificate: {e}")))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| err(&files.key, format!("unusable private key: {e}")))?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().map_err(|e| {
        err(
            &files.key,
            format!(
                "the key does not match the certificate in {} ({e})",
                files.cert.display()
            ),
        )
    })?;
    let now = unix_now();
    if now > not_after {
        return Err(err(&files.cert, format!("expired ({})", date(not_after))));
    }
    if now < not_before {
        return Err(err(
            &files.cert,
            format!("not valid before {}", date(not_before)),
        ));
    }
    Ok(Loaded {
        files: files.clone(),
        names,
        not_after,
        subject,
        key: Arc::new(key),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        e => format!("bad PEM: {e:?}"),
    }
}

/// A date for messages, `2026-12-03`.
pub fn date(unix: i64) -> String {
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

type Inspected = (Vec<String>, i64, i64, String);

/// SAN names (or CN), validity and subject of a DER certificate.
fn inspect(der: &[u8]) -> Result<Inspected, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    let v = cert.validity();
    Ok((
        names,
        v.not_before.timestamp(),
        v.not_after.timestamp(),
        cert.subject().to_string(),
    ))
}

/// The subject and subjectAltName entries of a client certificate, as
/// forwarded to the backend: (`CN=dev1,O=Acme`, `DNS:a.example, IP:10.0.0.1`).
pub fn subject_and_san(der: &[u8]) -> Option<(String, String)> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut san = Vec::new();
    if let Ok(Some(s)) = cert.subject_alternative_name() {
        for n in &s.value.general_names {
            match n {
                GeneralName::DNSName(d) => san.push(format!("DNS:{d}")),
                GeneralName::RFC822Name(e) => san.push(format!("email:{e}")),
                GeneralName::URI(u) => san.push(format!("URI:{u}")),
                GeneralName::IPAddress(ip) if ip.len() == 4 => san.push(format!(
                    "IP:{}",
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                )),
                GeneralName::IPAddress(ip) if ip.len() == 16 => san.push(format!(
                    "IP:{}",
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                )),
                _ => {}
            }
        }
    }
    Some((cert.subject().to_string(), san.join(", ")))
}

/// Whether certificate name `pattern` (lowercase) covers `host`: exactly,
/// or as a wildcard `*.rest` standing for one whole leftmost label
/// (RFC 6125 §6.4.3; `*.example.com` covers `a.example.com`, not
/// `example.com` nor `a.b.example.com`).
pub fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if let Some(rest) = pattern.strip_prefix("*.") {
        match host.split_once('.') {
            Some((label, tail)) => {
                !label.is_empty() && !rest.is_empty() && tail.eq_ignore_ascii_case(rest)
            }
            None => false,
        }
    } else {
        pattern.eq_ignore_ascii_case(host)
    }
}

/// A listener's certificates, picked per handshake by SNI; replaced as a
/// whole on reload.
#[derive(Debug)]
pub struct CertStore {
    files: Vec<CertFiles>,
    sni_strict: bool,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Vec<Loaded>>>,
}

impl CertStore {
    /// Loads every certificate (all must load).
    pub fn new(
        files: Vec<CertFiles>,
        sni_strict: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<CertStore, CertError> {
        let loaded = files
            .iter()
            .map(|f| load(f, &provider))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CertStore {
            files,
            sni_strict,
            provider,
            current: RwLock::new(Arc::new(loaded)),
        })
    }

    /// The certificates in use.
    pub fn current(&self) -> Arc<Vec<Loaded>> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Re-reads every file. A file that fails keeps its old certificate
    /// (the error says which and why); the rest are replaced. New
    /// handshakes use what this leaves; open connections are untouched.
    pub fn reload(&self) -> Vec<CertError> {
        let old = self.current();
        let mut errors = Vec::new();
        let mut next = Vec::with_capacity(self.files.len());
        for (i, f) in self.files.iter().enumerate() {
            match load(f, &self.provider) {
                Ok(l) => next.push(l),
                Err(e) => {
                    errors.push(e);
                    if let Some(o) = old.get(i) {
                        next.push(Loaded {
                            files: o.files.clone(),
                            names: o.names.clone(),
                            not_after: o.not_after,
                            subject: o.subject.clone(),
                            key: Arc::clone(&o.key),
                        });
                    }
                }
            }
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        errors
    }

    /// The certificate for a client asking for `sni`: the first whose names
    /// cover it (an exact name before a wildcard), else the first one, or
    /// none when strict.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.read().unwrap_or_else(|e| e.into_inner());
        if let Some(host) = sni {
            let exact = set.iter().find(|l| {
                l.names
                    .iter()
                    .any(|n| !n.starts_with("*.") && name_matches(n, host))
            });
            let any = exact.or_else(|| {
                set.iter()
                    .find(|l| l.names.iter().any(|n| name_matches(n, host)))
            });
            if let Some(l) = any {
                return Some(Arc::clone(&l.key));
            }
        }
        if self.sni_strict {
            return None;
        }
        set.first().map(|l| Arc::clone(&l.key))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("a.example.com", "A.Example.com"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.example.com."));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("a.example.com", "b.example.com"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_796_256_000), "2026-12-03");
        assert_eq!(date(951_782_400), "2000-02-29");
    }
}
