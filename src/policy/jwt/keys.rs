//! Verification keys: an HMAC secret file, a PEM public key or certificate,
//! and JWKS documents. Each key knows its type, and its type decides which
//! algorithms it may verify; that, not the token's header, is what stops
//! algorithm confusion (an RSA public key is never used as an HMAC secret).

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, Pem, SubjectPublicKeyInfo, X509Certificate};

use super::JwtSettings;

/// Smallest RSA modulus accepted (ring refuses smaller ones anyway).
const MIN_RSA_BITS: usize = 2048;

/// What a key is, and so which algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyType {
    /// An HMAC secret: HS256, HS384, HS512.
    Hmac,
    /// An RSA public key: RS256/384/512 and PS256/384/512.
    Rsa,
    /// An EC P-256 public key: ES256.
    P256,
    /// An EC P-384 public key: ES384.
    P384,
    /// An Ed25519 public key: EdDSA.
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type may verify `alg`.
    pub(super) fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Hmac => matches!(alg, HS256 | HS384 | HS512),
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

/// One verification key.
pub(super) struct Key {
    /// The JWK's `kid`; `None` for the secret and PEM keys (and JWKs
    /// without one), which are tried for any token whose algorithm fits.
    kid: Option<String>,
    /// The JWK's `alg`, when it pins one.
    alg: Option<Algorithm>,
    kind: KeyType,
    key: DecodingKey,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Key {
    fn new(kind: KeyType, key: DecodingKey) -> Key {
        Key {
            kid: None,
            alg: None,
            kind,
            key,
        }
    }

    /// Whether this key is one to try for a token with `kid` and `alg`:
    /// its type allows `alg`, its JWK `alg` (if any) is `alg`, and its
    /// `kid` (if any) is the token's (a token without a `kid` may use any).
    pub(super) fn fits(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.kind.allows(alg)
            && self.alg.is_none_or(|a| a == alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                _ => true,
            }
    }

    /// Whether `signature` (base64url) over `message` verifies with this
    /// key. Only called when [`Key::fits`]: `jsonwebtoken` then never sees
    /// a key of the wrong family for `alg`.
    pub(super) fn verifies(&self, signature: &str, message: &[u8], alg: Algorithm) -> bool {
        debug_assert!(self.kind.allows(alg));
        self.kind.allows(alg)
            && jsonwebtoken::crypto::verify(signature, message, &self.key, alg).unwrap_or(false)
    }
}

/// The keys of every file `settings` names, in order: secret, public key,
/// JWKS. Errors name the file.
pub(super) fn read_files(settings: &JwtSettings) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    if let Some(path) = &settings.secret_file {
        keys.push(secret(path)?);
    }
    if let Some(path) = &settings.public_key_file {
        keys.push(pem_file(path)?);
    }
    if let Some(path) = &settings.jwks_file {
        let data = read(path)?;
        keys.extend(jwks(&data).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// An HMAC secret: the file's bytes, one trailing newline (LF or CRLF)
/// trimmed.
fn secret(path: &Path) -> Result<Key, String> {
    let data = read(path)?;
    let mut s = data.as_slice();
    if let Some(rest) = s.strip_suffix(b"\n") {
        s = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if s.is_empty() {
        return Err(format!("{}: the secret is empty", path.display()));
    }
    Ok(Key::new(KeyType::Hmac, DecodingKey::from_secret(s)))
}

/// The one public key in a PEM file: a `PUBLIC KEY` (SPKI), an
/// `RSA PUBLIC KEY` (PKCS#1) or a `CERTIFICATE` block. A private key is an
/// error (the wrong file given), and so is more than one key.
fn pem_file(path: &Path) -> Result<Key, String> {
    let data = read(path)?;
    let named = |e: String| format!("{}: {e}", path.display());
    let mut found = Vec::new();
    for block in Pem::iter_from_buffer(&data) {
        let block = block.map_err(|e| named(format!("bad PEM: {e}")))?;
        match block.label.as_str() {
            "PUBLIC KEY" => found.push(spki_der(&block.contents)),
            "RSA PUBLIC KEY" => found.push(rsa_pkcs1(&block.contents)),
            "CERTIFICATE" => found.push(certificate(&block.contents)),
            label if label.contains("PRIVATE KEY") => {
                return Err(named(
                    "holds a private key; give the public key or a certificate".into(),
                ));
            }
            _ => {}
        }
    }
    match found.len() {
        0 => Err(named(
            "no PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE PEM block".into(),
        )),
        1 => found.remove(0).map_err(named),
        n => Err(named(format!(
            "holds {n} keys; give one (a JWKS file holds several)"
        ))),
    }
}

fn certificate(der: &[u8]) -> Result<Key, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("bad certificate: {e}"))?;
    from_spki(cert.public_key())
}

fn spki_der(der: &[u8]) -> Result<Key, String> {
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(der).map_err(|e| format!("bad public key: {e}"))?;
    from_spki(&spki)
}

/// A key from its SubjectPublicKeyInfo: the algorithm OID says the type,
/// and for EC the curve OID says P-256 or P-384.
fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Key, String> {
    let oid = &spki.algorithm.algorithm;
    let data: &[u8] = &spki.subject_public_key.data;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        rsa_pkcs1(data)
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| Oid::try_from(p).ok());
        match curve {
            Some(c) if c == OID_EC_P256 => ec_point(KeyType::P256, data),
            Some(c) if c == OID_NIST_EC_P384 => ec_point(KeyType::P384, data),
            Some(c) => Err(format!("EC curve {c} not supported (P-256, P-384)")),
            None => Err("EC key without a named curve".into()),
        }
    } else if *oid == OID_SIG_ED25519 {
        if data.len() != 32 {
            return Err("bad Ed25519 key length".into());
        }
        Ok(Key::new(KeyType::Ed25519, DecodingKey::from_ed_der(data)))
    } else {
        Err(format!(
            "key type {oid} not supported (RSA, EC P-256/P-384, Ed25519)"
        ))
    }
}

/// An RSA key from a PKCS#1 RSAPublicKey (DER), at least 2048 bits.
fn rsa_pkcs1(der: &[u8]) -> Result<Key, String> {
    let (_, key) = x509_parser::public_key::RSAPublicKey::from_der(der)
        .map_err(|_| "bad RSA public key".to_string())?;
    rsa_size(key.modulus)?;
    Ok(Key::new(KeyType::Rsa, DecodingKey::from_rsa_der(der)))
}

fn rsa_size(modulus: &[u8]) -> Result<(), String> {
    let bits = bit_length(modulus);
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA key of {bits} bits; {MIN_RSA_BITS} at least"));
    }
    Ok(())
}

/// The bit length of a big-endian unsigned integer.
fn bit_length(n: &[u8]) -> usize {
    match n.iter().position(|&b| b != 0) {
        Some(i) => (n.len() - i - 1) * 8 + (8 - n[i].leading_zeros() as usize),
        None => 0,
    }
}

/// An EC key from an uncompressed point (`04 || x || y`) of the curve's size.
fn ec_point(kind: KeyType, point: &[u8]) -> Result<Key, String> {
    let size = if kind == KeyType::P256 { 32 } else { 48 };
    if point.len() != 1 + 2 * size || point[0] != 4 {
        return Err("EC key is not an uncompressed point of its curve".into());
    }
    Ok(Key::new(kind, DecodingKey::from_ec_der(point)))
}

/// The usable keys of a JWKS document. Keys not for signatures (`use`
/// other than `sig`, `key_ops` without `verify`), of another type or
/// curve, or with an `alg` that is not accepted are skipped (and logged at
/// debug); no usable key at all is an error.
pub(super) fn jwks(json: &[u8]) -> Result<Vec<Key>, String> {
    let doc: Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let Some(Value::Array(list)) = doc.get("keys") else {
        return Err("not a JWKS (no \"keys\" array)".into());
    };
    let mut keys = Vec::with_capacity(list.len());
    let mut skipped = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        match jwk_key(jwk) {
            Ok(key) => keys.push(key),
            Err(why) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::debug!(index = i, kid, "JWKS key skipped: {why}");
                skipped.push(why);
            }
        }
    }
    if keys.is_empty() {
        return Err(match skipped.first() {
            Some(why) => format!(
                "no usable key ({} skipped; the first: {why})",
                skipped.len()
            ),
            None => "no key".into(),
        });
    }
    Ok(keys)
}

/// One JWK (RFC 7517/7518/8037): RSA, EC P-256/P-384, OKP Ed25519 or oct.
fn jwk_key(jwk: &Value) -> Result<Key, String> {
    let Value::Object(m) = jwk else {
        return Err("not an object".into());
    };
    let kid = match m.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    if let Some(u) = m.get("use")
        && u != "sig"
    {
        return Err(format!("use {u} is not \"sig\""));
    }
    if let Some(ops) = m.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops without \"verify\"".into());
    }
    let alg = match m.get("alg") {
        None => None,
        Some(Value::String(a)) => {
            Some(super::algorithm(a).map_err(|_| format!("alg {a:?} not accepted"))?)
        }
        Some(_) => return Err("alg is not a string".into()),
    };
    let mut key = match text(m, "kty")? {
        "RSA" => {
            let n = b64(m, "n")?;
            let e = b64(m, "e")?;
            let start = n.iter().position(|&b| b != 0).unwrap_or(n.len());
            let n = &n[start..];
            rsa_size(n)?;
            if e.is_empty() {
                return Err("empty RSA exponent".into());
            }
            Key::new(KeyType::Rsa, DecodingKey::from_rsa_raw_components(n, &e))
        }
        "EC" => {
            let (kind, size) = match text(m, "crv")? {
                "P-256" => (KeyType::P256, 32),
                "P-384" => (KeyType::P384, 48),
                crv => return Err(format!("curve {crv:?} not supported (P-256, P-384)")),
            };
            let (x, y) = (b64(m, "x")?, b64(m, "y")?);
            if x.len() != size || y.len() != size {
                return Err("EC coordinates of the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ec_point(kind, &point)?
        }
        "OKP" => {
            let crv = text(m, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("curve {crv:?} not supported (Ed25519)"));
            }
            let x = b64(m, "x")?;
            if x.len() != 32 {
                return Err("bad Ed25519 key length".into());
            }
            Key::new(KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => {
            let k = b64(m, "k")?;
            if k.is_empty() {
                return Err("empty secret".into());
            }
            Key::new(KeyType::Hmac, DecodingKey::from_secret(&k))
        }
        kty => return Err(format!("kty {kty:?} not supported")),
    };
    if let Some(a) = alg
        && !key.kind.allows(a)
    {
        return Err(format!("alg {a:?} does not fit the key type"));
    }
    key.kid = kid;
    key.alg = alg;
    Ok(key)
}

fn text<'a>(m: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    m.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no {name:?} string"))
}

/// A base64url member (unpadded per RFC 7515; trailing `=` tolerated).
fn b64(m: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text(m, name)?.trim_end_matches('='))
        .map_err(|_| format!("{name:?} is not base64url"))
}
