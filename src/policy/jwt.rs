//! JSON Web Token validation (`[[auth]] kind = "jwt"`): keys from a secret
//! file, a PEM public key or a JWKS (file, reloaded on SIGHUP; or URL,
//! fetched off the data path and refreshed), and the claim checks.
//!
//! Sans-IO where it counts: [`JwtVerifier::verify`] takes the time as a
//! parameter and reads no clock.

use std::path::PathBuf;
use std::time::Duration;

/// One `[[auth]] kind = "jwt"` block's settings, validated by `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// HMAC secret (HS256/384/512): the file's bytes, a trailing newline trimmed.
    pub secret_file: Option<PathBuf>,
    /// A PEM public key (RSA, EC P-256/P-384 or Ed25519) or certificate.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS document (`{"keys": [...]}`), re-read by [`JwtVerifier::reload`].
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`http://` or `https://`), fetched every `jwks_refresh`.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    pub jwks_refresh: Duration,
    /// Accepted issuers (`iss`); empty: any.
    pub issuer: Vec<String>,
    /// Accepted audiences (`aud`, a string or an array); empty: not checked.
    pub audience: Vec<String>,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}
