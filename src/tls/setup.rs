//! rustls configurations built from wsedge's: one server configuration per
//! TLS listener (shared by every worker, with one rotating ticket key and
//! one session cache), one client configuration per TLS upstream.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use super::certs::{CertError, CertFiles, CertStore};

/// TLS 1.2 sessions kept for resumption, per listener.
const SESSION_CACHE: usize = 16_384;

/// The crypto provider: ring (see `docs/architecture.md` for the
/// measurement behind the choice).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// A verified client certificate is required.
    #[default]
    Required,
    /// Verified if sent; a client without one is let in.
    Optional,
}

/// A TLS listener's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Certificates, the default (no SNI or no match) first.
    pub certificates: Vec<CertFiles>,
    /// Refuse a client whose SNI matches no certificate.
    pub sni_strict: bool,
    /// The oldest version accepted.
    pub min_version: MinVersion,
    /// Verify client certificates against these roots.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: required or optional.
    pub client_auth: ClientAuth,
}

/// A TLS upstream's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTls {
    /// Trust these roots instead of the system's.
    pub ca: Option<PathBuf>,
    /// The name to ask for and verify (default: the server's host).
    pub sni: Option<String>,
    /// A client certificate for mTLS to the backend.
    pub cert: Option<CertFiles>,
    /// Skip verifying the backend's certificate.
    pub insecure_skip_verify: bool,
}

/// A TLS setup that failed.
#[derive(Debug)]
pub enum SetupError {
    /// A certificate or key.
    Cert(CertError),
    /// rustls refused the combination.
    Tls(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Cert(e) => e.fmt(f),
            SetupError::Tls(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SetupError {}

impl From<CertError> for SetupError {
    fn from(e: CertError) -> Self {
        SetupError::Cert(e)
    }
}

fn roots(path: &Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| CertError {
            path: path.to_path_buf(),
            reason: format!("{e:?}"),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError {
            path: path.to_path_buf(),
            reason: format!("bad PEM: {e:?}"),
        })?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(CertError {
            path: path.to_path_buf(),
            reason: "no usable CA certificate in the file".into(),
        });
    }
    Ok(roots)
}

/// A listener's server configuration and the certificate store behind it
/// (kept to reload).
#[derive(Debug, Clone)]
pub struct Acceptor {
    /// What each handshake uses.
    pub config: Arc<ServerConfig>,
    /// The certificates, re-read by [`CertStore::reload`].
    pub certs: Arc<CertStore>,
}

impl ServerTls {
    /// Loads the certificates and builds the server configuration.
    pub fn build(&self) -> Result<Acceptor, SetupError> {
        let provider = provider();
        let certs = Arc::new(CertStore::new(
            self.certificates.clone(),
            self.sni_strict,
            Arc::clone(&provider),
        )?);
        let versions: &[&rustls::SupportedProtocolVersion] = match self.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|e| SetupError::Tls(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let v = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    Arc::clone(&provider),
                );
                let v = match self.client_auth {
                    ClientAuth::Required => v,
                    ClientAuth::Optional => v.allow_unauthenticated(),
                };
                builder.with_client_cert_verifier(
                    v.build()
                        .map_err(|e| SetupError::Tls(format!("{}: {e}", ca.display())))?,
                )
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // TLS 1.3 tickets under a key that rotates every 6 hours, shared by
        // every worker (they share this configuration); TLS 1.2 resumes from
        // the session cache.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| SetupError::Tls(e.to_string()))?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.send_tls13_tickets = 1;
        // The record layer after the handshake is wsedge's own.
        config.enable_secret_extraction = true;
        Ok(Acceptor {
            config: Arc::new(config),
            certs,
        })
    }
}

impl ClientTls {
    /// Builds the client configuration for an upstream.
    pub fn build(&self) -> Result<Arc<ClientConfig>, SetupError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| SetupError::Tls(e.to_string()))?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        } else {
            let roots = match &self.ca {
                Some(ca) => roots(ca)?,
                None => system_roots()?,
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match &self.cert {
            Some(files) => {
                let chain = CertificateDer::pem_file_iter(&files.cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| CertError {
                        path: files.cert.clone(),
                        reason: format!("{e:?}"),
                    })?;
                let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| CertError {
                    path: files.key.clone(),
                    reason: format!("{e:?}"),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| SetupError::Tls(format!("{}: {e}", files.key.display())))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }
}

fn system_roots() -> Result<RootCertStore, SetupError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(SetupError::Tls(
            "no system CA certificates found (install ca-certificates, or set `ca`)".into(),
        ));
    }
    Ok(roots)
}

/// The TLS configurations a server runs with, built once at start and
/// shared by every worker (read at handshakes only).
#[derive(Debug, Default)]
pub struct TlsSetup {
    /// By listener index: the TLS listeners' acceptors.
    pub listeners: Vec<Option<Acceptor>>,
    /// By upstream index: the TLS upstreams' client configurations.
    pub upstreams: Vec<Option<Arc<ClientConfig>>>,
}

impl TlsSetup {
    /// After a reload: listener `i` keeps the session ticket key and the
    /// session cache of the old listener `old_index[i]` (the same address,
    /// TLS before and after), so that clients resume across the reload.
    pub fn keep_sessions(&mut self, old: &TlsSetup, old_index: &[Option<usize>]) {
        for (acc, o) in self.listeners.iter_mut().zip(old_index) {
            let (Some(acc), Some(o)) = (acc, o) else {
                continue;
            };
            let Some(Some(prev)) = old.listeners.get(*o) else {
                continue;
            };
            let mut c = (*acc.config).clone();
            c.ticketer = Arc::clone(&prev.config.ticketer);
            c.session_storage = Arc::clone(&prev.config.session_storage);
            acc.config = Arc::new(c);
        }
    }

    /// Loads every certificate and key the configuration names and builds
    /// the rustls configurations. Returns warnings to log (a certificate
    /// expiring soon, verification switched off) with it.
    pub fn build(config: &crate::config::Config) -> Result<(TlsSetup, Vec<String>), String> {
        let mut warnings = Vec::new();
        let now = super::certs::unix_now();
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let Some(t) = &l.tls else {
                listeners.push(None);
                continue;
            };
            let acc = t
                .build()
                .map_err(|e| format!("listener {}: {e}", l.address))?;
            for c in acc.certs.current().iter() {
                let days = c.days_left(now);
                if days < super::certs::EXPIRY_WARNING_DAYS {
                    warnings.push(format!(
                        "listener {}: {} expires in {days} days ({})",
                        l.address,
                        c.files.cert.display(),
                        super::certs::date(c.not_after)
                    ));
                }
            }
            listeners.push(Some(acc));
        }
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let Some(t) = &u.tls else {
                upstreams.push(None);
                continue;
            };
            if t.client.insecure_skip_verify {
                warnings.push(format!(
                    "upstream {:?}: insecure_skip_verify = true: backend certificates are NOT verified; anyone on the path can impersonate these backends",
                    u.name
                ));
            }
            for h in u.entries.iter().map(|e| &e.host) {
                server_name(t.client.sni.as_deref().unwrap_or(h))
                    .map_err(|e| format!("upstream {:?}: {e}", u.name))?;
            }
            upstreams.push(Some(
                t.client
                    .build()
                    .map_err(|e| format!("upstream {:?}: {e}", u.name))?,
            ));
        }
        Ok((
            TlsSetup {
                listeners,
                upstreams,
            },
            warnings,
        ))
    }

    /// Re-reads every listener's certificates: new handshakes use the new
    /// ones. Returns what could not be loaded (the old certificate stays).
    pub fn reload(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for acc in self.listeners.iter().flatten() {
            errors.extend(acc.certs.reload().into_iter().map(|e| e.to_string()));
        }
        errors
    }
}

/// The name a backend is asked for and verified against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, SetupError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| SetupError::Tls(format!("{name:?} is not a valid TLS server name")))
}

/// `insecure_skip_verify`: signatures are still checked (the handshake
/// must be with the holder of the key the certificate names), the
/// certificate itself is not.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
