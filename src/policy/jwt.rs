//! JSON Web Token validation (`[[auth]] kind = "jwt"`): keys from a secret
//! file, a PEM public key or a JWKS (file, reloaded on SIGHUP; or URL,
//! fetched off the data path and refreshed), and the claim checks.
//!
//! Sans-IO where it counts: [`JwtVerifier::verify`] takes the time as a
//! parameter and reads no clock.
//!
//! The parts: `keys` turns files and JWKS documents into verification
//! keys, each bound to the algorithms its type allows (no algorithm
//! confusion: an HMAC secret verifies HS* only, an RSA key RS*/PS*, a P-256
//! key ES256, a P-384 key ES384, an Ed25519 key EdDSA); `claims` holds what
//! a valid token says; `fetch` is the JWKS URL refresher (its own thread,
//! blocking sockets, never a worker). Signatures are checked by
//! `jsonwebtoken` (ring); the header, the key choice and every claim check
//! are done here, with `now` given by the caller.

mod claims;
mod fetch;
mod keys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

pub use claims::Claims;
pub use fetch::{JwksRefresher, check_jwks_url, spawn_refresher};
use keys::Key;

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

/// Longest token looked at (bytes); longer ones are [`JwtError::Malformed`]
/// without being decoded.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. Every refusal is an HTTP 401 ([`JwtError::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, a header or payload that is not a JSON
    /// object, a `kid` that is not a string, a `crit` header (no extension
    /// is understood), a time claim that is not a number, or too long.
    Malformed,
    /// The header's `alg` is not one of the twelve accepted (`none`
    /// included); the text is the token's, cut short and made printable.
    UnsupportedAlgorithm(String),
    /// No key fits: none with the token's `kid`, or none of a type (or a
    /// JWK `alg`) that allows the token's algorithm.
    UnknownKey,
    /// Keys fit, and none of them verifies the signature.
    BadSignature,
    /// `exp` is past (beyond the leeway).
    Expired,
    /// `nbf` is ahead (beyond the leeway).
    NotYetValid,
    /// `iss` is missing or not an accepted issuer.
    WrongIssuer,
    /// `aud` is missing or names no accepted audience.
    WrongAudience,
    /// A required claim is missing (or null).
    MissingClaim(String),
}

impl JwtError {
    /// A short snake_case label for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::UnsupportedAlgorithm(_) => "bad_algorithm",
            JwtError::UnknownKey => "unknown_key",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingClaim(_) => "missing_claim",
        }
    }

    /// The HTTP status the handshake answers with: 401 for every refusal
    /// (the credential is what is wrong, never the request).
    pub fn status(&self) -> u16 {
        401
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => f.write_str("malformed token"),
            JwtError::UnsupportedAlgorithm(alg) => write!(f, "algorithm {alg:?} not accepted"),
            JwtError::UnknownKey => f.write_str("no key for the token's kid or algorithm"),
            JwtError::BadSignature => f.write_str("bad signature"),
            JwtError::Expired => f.write_str("token expired"),
            JwtError::NotYetValid => f.write_str("token not yet valid"),
            JwtError::WrongIssuer => f.write_str("issuer not accepted"),
            JwtError::WrongAudience => f.write_str("audience not accepted"),
            JwtError::MissingClaim(name) => write!(f, "missing claim {name:?}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// The keys in use: those read from the files (secret, PEM, JWKS file;
/// replaced by [`JwtVerifier::reload`]) and those fetched from the JWKS URL
/// (replaced by [`JwtVerifier::set_jwks`]). Each half is shared, so
/// swapping one keeps the other without copying it.
#[derive(Debug, Default)]
struct KeySet {
    files: Arc<[Key]>,
    fetched: Arc<[Key]>,
}

/// Validates tokens against one `[[auth]] kind = "jwt"` block. Shared by
/// every worker (`Arc`); the keys sit behind an [`ArcSwap`], so a reload or
/// a JWKS refresh swaps them atomically while tokens are being verified.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: ArcSwap<KeySet>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .field("file_keys", &keys.files.len())
            .field("fetched_keys", &keys.fetched.len())
            .finish()
    }
}

impl JwtVerifier {
    /// Reads the key files named in `settings` (`secret_file`,
    /// `public_key_file`, `jwks_file`). With only `jwks_url`, starts with
    /// no key (every token refused with [`JwtError::UnknownKey`] until the
    /// first fetch: see [`spawn_refresher`]). Errors are one-line messages
    /// naming the file.
    pub fn load(settings: &JwtSettings) -> Result<JwtVerifier, String> {
        let files = keys::read_files(settings)?;
        Ok(JwtVerifier {
            settings: settings.clone(),
            keys: ArcSwap::from_pointee(KeySet {
                files: files.into(),
                fetched: Arc::from(Vec::new()),
            }),
        })
    }

    /// The settings this verifier was loaded with.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Reads the key files again (on SIGHUP). On error the current keys
    /// stay and the error says which file.
    pub fn reload(&self) -> Result<(), String> {
        let files: Arc<[Key]> = keys::read_files(&self.settings)?.into();
        self.keys.rcu(|cur| KeySet {
            files: Arc::clone(&files),
            fetched: Arc::clone(&cur.fetched),
        });
        Ok(())
    }

    /// Replaces the keys fetched from the JWKS URL with those of `json`, a
    /// JWKS document; returns how many are usable. Keys that are not for
    /// signatures or of an unsupported type are skipped; a document that is
    /// not a JWKS, or has no usable key, is an error and the old keys stay.
    pub fn set_jwks(&self, json: &[u8]) -> Result<usize, String> {
        let fetched: Arc<[Key]> = keys::jwks(json)?.into();
        let n = fetched.len();
        self.keys.rcu(|cur| KeySet {
            files: Arc::clone(&cur.files),
            fetched: Arc::clone(&fetched),
        });
        Ok(n)
    }

    /// Validates `token` at `now` (seconds since the Unix epoch): the
    /// signature, then `exp` and `nbf` (with the leeway), `iss`, `aud` and
    /// the required claims.
    ///
    /// The keys tried are those whose type allows the header's `alg`,
    /// whose JWK `alg` (if set) is that `alg`, and whose `kid` (if set) is
    /// the token's; a token without a `kid` tries every key of a fitting
    /// type. `exp` is checked when present (list it in `required_claims`
    /// to refuse tokens without one): expired means `now >= exp + leeway`,
    /// not yet valid `now + leeway < nbf`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, JwtError> {
        let Parts {
            header,
            payload,
            message,
            signature,
        } = split(token)?;
        let header = decode_json(header)?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => algorithm(alg)?,
            _ => return Err(JwtError::Malformed),
        };
        if header.contains_key("crit") {
            return Err(JwtError::Malformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(JwtError::Malformed),
        };
        // The signature part must be canonical base64url before any key is
        // tried (`jsonwebtoken` decodes it again for the RSA/EC/Ed checks).
        if signature.is_empty() || URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(JwtError::Malformed);
        }
        let set = self.keys.load();
        let mut fitting = set
            .files
            .iter()
            .chain(set.fetched.iter())
            .filter(|k| k.fits(kid, alg))
            .peekable();
        if fitting.peek().is_none() {
            return Err(JwtError::UnknownKey);
        }
        if !fitting.any(|k| k.verifies(signature, message.as_bytes(), alg)) {
            return Err(JwtError::BadSignature);
        }
        let claims = decode_json(payload)?;
        self.check(&claims, now)?;
        Ok(Claims::new(claims))
    }

    /// The claim checks, in order: `exp`, `nbf`, `iss`, `aud`, required.
    fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<(), JwtError> {
        let s = &self.settings;
        let leeway = s.leeway.as_secs();
        if let Some(exp) = claims.get("exp") {
            let exp = claims::numeric_date(exp).ok_or(JwtError::Malformed)?;
            if now >= exp.saturating_add(leeway) {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = claims::numeric_date(nbf).ok_or(JwtError::Malformed)?;
            if now.saturating_add(leeway) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if !s.issuer.is_empty() {
            match claims.get("iss") {
                Some(Value::String(iss)) if s.issuer.iter().any(|i| i == iss) => {}
                _ => return Err(JwtError::WrongIssuer),
            }
        }
        if !s.audience.is_empty() {
            let accepted = |a: &str| s.audience.iter().any(|x| x == a);
            let ok = match claims.get("aud") {
                Some(Value::String(aud)) => accepted(aud),
                Some(Value::Array(auds)) => auds
                    .iter()
                    .any(|a| matches!(a, Value::String(a) if accepted(a))),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        for name in &s.required_claims {
            if matches!(claims.get(name), None | Some(Value::Null)) {
                return Err(JwtError::MissingClaim(name.clone()));
            }
        }
        Ok(())
    }
}

/// The three parts of a compact JWS, and the signing input.
struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    /// `header.payload`, what the signature covers.
    message: &'a str,
    signature: &'a str,
}

/// Splits a compact JWS: exactly three parts.
fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let (message, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header, payload) = message.split_once('.').ok_or(JwtError::Malformed)?;
    if payload.contains('.') {
        return Err(JwtError::Malformed);
    }
    Ok(Parts {
        header,
        payload,
        message,
        signature,
    })
}

/// A base64url part holding a JSON object.
fn decode_json(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed),
    }
}

/// The header's `alg`, one of the twelve accepted ones.
fn algorithm(alg: &str) -> Result<Algorithm, JwtError> {
    Ok(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        other => {
            let shown: String = other
                .chars()
                .take(16)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            return Err(JwtError::UnsupportedAlgorithm(shown));
        }
    })
}
