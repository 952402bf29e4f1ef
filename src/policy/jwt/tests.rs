//! Tests against tokens and keys made by another implementation (PyJWT and
//! cryptography: `tests/fixtures/jwt/make.py`), plus tokens signed here
//! with ring's HMAC for the claim edge cases. Nothing is minted by
//! `jsonwebtoken`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// Before every fixture's `exp` (2100), after its `iat`-free issue.
const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://issuer.test";
const AUD: &str = "wsedge-test";
const ALGS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn token(name: &str) -> &'static str {
    static TOKENS: OnceLock<Value> = OnceLock::new();
    let all = TOKENS.get_or_init(|| {
        let text = std::fs::read(fixture("tokens.json")).expect("tokens.json");
        serde_json::from_slice(&text).expect("tokens.json is JSON")
    });
    all["tokens"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no token {name:?} in tokens.json"))
}

fn settings() -> JwtSettings {
    JwtSettings {
        secret_file: None,
        public_key_file: None,
        jwks_file: None,
        jwks_url: None,
        jwks_refresh: Duration::from_secs(300),
        issuer: vec![ISS.into()],
        audience: vec![AUD.into()],
        required_claims: Vec::new(),
        leeway: Duration::from_secs(60),
    }
}

fn pem(file: &str) -> JwtVerifier {
    JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture(file)),
        ..settings()
    })
    .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn secret() -> JwtVerifier {
    JwtVerifier::load(&JwtSettings {
        secret_file: Some(fixture("hmac.secret")),
        ..settings()
    })
    .unwrap()
}

fn jwks() -> JwtVerifier {
    JwtVerifier::load(&JwtSettings {
        jwks_file: Some(fixture("jwks.json")),
        ..settings()
    })
    .unwrap()
}

/// The verifier for `alg` from single-key files.
fn for_alg(alg: &str) -> JwtVerifier {
    match alg {
        a if a.starts_with("HS") => secret(),
        a if a.starts_with("RS") || a.starts_with("PS") => pem("rsa.pem"),
        "ES256" => pem("ec256.pem"),
        "ES384" => pem("ec384.pem"),
        "EdDSA" => pem("ed25519.pem"),
        other => panic!("{other}"),
    }
}

/// An HS256 token over `header` and `payload` with the fixture secret,
/// signed with ring directly.
fn hs256(header: &str, payload: &str) -> String {
    let secret = std::fs::read(fixture("hmac.secret")).unwrap();
    let secret = secret.strip_suffix(b"\n").unwrap();
    let msg = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, msg.as_bytes());
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// `hs256` with the standard header and these claims.
fn hs256_claims(claims: Value) -> String {
    hs256(r#"{"alg":"HS256","typ":"JWT"}"#, &claims.to_string())
}

fn temp(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("wsedge-jwt-{}-{n}-{name}", std::process::id()))
}

#[test]
fn every_algorithm_from_pem_and_secret() {
    for alg in ALGS {
        let claims = for_alg(alg)
            .verify(token(&format!("valid_{alg}")), NOW)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.text("sub").as_deref(), Some(&*format!("user-{alg}")));
        assert_eq!(claims.exp(), Some(4_102_444_800));
    }
}

#[test]
fn every_algorithm_from_jwks() {
    let v = jwks();
    for alg in ALGS {
        let claims = v
            .verify(token(&format!("valid_{alg}")), NOW)
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert!(claims.satisfies("scope", "chat:read"), "{alg}");
    }
    // No kid: every RSA key is tried (two in this set).
    v.verify(token("valid_RS256_nokid"), NOW).unwrap();
}

#[test]
fn pkcs1_and_certificates() {
    pem("rsa_pkcs1.pem")
        .verify(token("valid_PS512"), NOW)
        .unwrap();
    pem("rsa_cert.pem")
        .verify(token("valid_RS384"), NOW)
        .unwrap();
    let p384 = pem("ec384_cert.pem");
    p384.verify(token("valid_ES384"), NOW).unwrap();
    // The certificate's curve is P-384: ES256 has no key here.
    assert_eq!(
        p384.verify(token("valid_ES256"), NOW),
        Err(JwtError::UnknownKey)
    );
}

#[test]
fn aud_array_and_protocol_token() {
    pem("ec256.pem")
        .verify(token("valid_aud_array"), NOW)
        .unwrap();
    let t = token("protocol");
    // Usable as a Sec-WebSocket-Protocol value: token characters only.
    assert!(
        t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    );
    let claims = pem("ed25519.pem").verify(t, NOW).unwrap();
    assert_eq!(claims.text("sub").as_deref(), Some("proto-user"));
}

#[test]
fn failures() {
    let es = pem("ec256.pem");
    let required = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        required_claims: vec!["sub".into(), "scope".into()],
        ..settings()
    })
    .unwrap();
    let cases: Vec<(&str, &JwtVerifier, JwtError)> = vec![
        ("expired", &es, JwtError::Expired),
        ("not_yet_valid", &es, JwtError::NotYetValid),
        ("wrong_issuer", &es, JwtError::WrongIssuer),
        ("wrong_audience", &es, JwtError::WrongAudience),
        ("missing_aud", &es, JwtError::WrongAudience),
        (
            "missing_scope",
            &required,
            JwtError::MissingClaim("scope".into()),
        ),
        (
            "alg_none",
            &es,
            JwtError::UnsupportedAlgorithm("none".into()),
        ),
        ("es512", &es, JwtError::UnsupportedAlgorithm("ES512".into())),
    ];
    for (name, v, want) in cases {
        assert_eq!(v.verify(token(name), NOW), Err(want), "{name}");
    }
    // The valid ones pass the same verifiers.
    required.verify(token("valid_ES256"), NOW).unwrap();

    let rsa = pem("rsa.pem");
    let set = jwks();
    for v in [&rsa, &set] {
        assert_eq!(
            v.verify(token("bad_signature"), NOW),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            v.verify(token("bad_signature_other_key"), NOW),
            Err(JwtError::BadSignature)
        );
        assert_eq!(
            v.verify(token("alg_none"), NOW),
            Err(JwtError::UnsupportedAlgorithm("none".into()))
        );
    }
    assert_eq!(
        secret().verify(token("bad_signature_hmac"), NOW),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        set.verify(token("bad_signature_hmac"), NOW),
        Err(JwtError::BadSignature)
    );
    assert_eq!(
        set.verify(token("unknown_kid"), NOW),
        Err(JwtError::UnknownKey)
    );
    // kid "rsa-rs256" pins RS256; the token says PS256.
    assert_eq!(
        set.verify(token("kid_alg_mismatch"), NOW),
        Err(JwtError::UnknownKey)
    );
    // A key without a kid (the PEM one) is tried whatever the token's kid.
    rsa.verify(token("unknown_kid"), NOW).unwrap();
    rsa.verify(token("kid_alg_mismatch"), NOW).unwrap();
}

#[test]
fn algorithm_confusion_is_refused() {
    // HS256 keyed with the RSA public key's PEM text: the RSA key never
    // verifies HS*, with or without a kid.
    let confusion = token("hs256_confusion");
    assert_eq!(
        pem("rsa.pem").verify(confusion, NOW),
        Err(JwtError::UnknownKey)
    );
    assert_eq!(jwks().verify(confusion, NOW), Err(JwtError::UnknownKey));
    // With a real HMAC secret loaded too, it is just a bad signature.
    let both = JwtVerifier::load(&JwtSettings {
        secret_file: Some(fixture("hmac.secret")),
        public_key_file: Some(fixture("rsa.pem")),
        ..settings()
    })
    .unwrap();
    assert_eq!(both.verify(confusion, NOW), Err(JwtError::BadSignature));
    both.verify(token("valid_HS512"), NOW).unwrap();
    both.verify(token("valid_PS256"), NOW).unwrap();
    // Every single-key verifier refuses every other family's token.
    fn family(alg: &str) -> &str {
        match &alg[..2] {
            "HS" => "hmac",
            "RS" | "PS" => "rsa",
            _ => alg,
        }
    }
    for key_alg in ALGS {
        let v = for_alg(key_alg);
        for alg in ALGS {
            let got = v.verify(token(&format!("valid_{alg}")), NOW);
            if family(key_alg) == family(alg) {
                assert!(got.is_ok(), "{key_alg} key, {alg} token: {got:?}");
            } else {
                assert_eq!(got, Err(JwtError::UnknownKey), "{key_alg} key, {alg} token");
            }
        }
    }
}

#[test]
fn none_and_unknown_algorithms() {
    let body = URL_SAFE_NO_PAD.encode(json!({"iss": ISS, "aud": AUD}).to_string());
    let v = jwks();
    for alg in [
        "none", "None", "NONE", "nOnE", "HS1", "RS1", "ES512", "", "hs256",
    ] {
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": alg }).to_string());
        for sig in ["", "c2ln"] {
            let t = format!("{head}.{body}.{sig}");
            assert_eq!(
                v.verify(&t, NOW),
                Err(JwtError::UnsupportedAlgorithm(alg.into())),
                "{t}"
            );
        }
    }
    // The algorithm's text is cut short and printable.
    let head = URL_SAFE_NO_PAD.encode(json!({"alg": "\u{1}x\u{7f}".repeat(20)}).to_string());
    match v.verify(&format!("{head}.{body}.c2ln"), NOW) {
        Err(JwtError::UnsupportedAlgorithm(a)) => {
            assert_eq!(a.chars().count(), 16);
            assert!(a.chars().all(|c| c.is_ascii_graphic()), "{a:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn leeway() {
    let v = pem("ec256.pem");
    let expired = token("expired"); // exp 1_000_000_000, leeway 60
    v.verify(expired, 999_999_999).unwrap();
    v.verify(expired, 1_000_000_059).unwrap();
    assert_eq!(v.verify(expired, 1_000_000_060), Err(JwtError::Expired));
    let early = token("not_yet_valid"); // nbf 4_000_000_000
    assert_eq!(v.verify(early, 3_999_999_939), Err(JwtError::NotYetValid));
    v.verify(early, 3_999_999_940).unwrap();
    v.verify(early, 4_000_000_000).unwrap();
    let strict = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        leeway: Duration::ZERO,
        ..settings()
    })
    .unwrap();
    strict.verify(expired, 999_999_999).unwrap();
    assert_eq!(
        strict.verify(expired, 1_000_000_000),
        Err(JwtError::Expired)
    );
    assert_eq!(
        strict.verify(early, 3_999_999_999),
        Err(JwtError::NotYetValid)
    );
    strict.verify(early, 4_000_000_000).unwrap();
    // Near the ends of u64, no overflow.
    let v = secret();
    let far = hs256_claims(json!({"iss": ISS, "aud": AUD, "exp": u64::MAX, "nbf": u64::MAX}));
    assert_eq!(v.verify(&far, u64::MAX - 100), Err(JwtError::NotYetValid));
    assert_eq!(v.verify(&far, u64::MAX), Err(JwtError::Expired));
}

#[test]
fn issuer_and_audience_settings() {
    let open = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        issuer: Vec::new(),
        audience: Vec::new(),
        ..settings()
    })
    .unwrap();
    for name in [
        "wrong_issuer",
        "wrong_audience",
        "missing_aud",
        "valid_ES256",
    ] {
        open.verify(token(name), NOW).unwrap();
    }
    let several = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        issuer: vec!["https://evil.test".into(), ISS.into()],
        audience: vec!["someone-else".into(), AUD.into()],
        ..settings()
    })
    .unwrap();
    for name in ["wrong_issuer", "wrong_audience", "valid_aud_array"] {
        several.verify(token(name), NOW).unwrap();
    }
    let elsewhere = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        audience: vec!["x".into()],
        ..settings()
    })
    .unwrap();
    assert_eq!(
        elsewhere.verify(token("valid_aud_array"), NOW),
        Err(JwtError::WrongAudience)
    );

    let v = secret();
    let cases = [
        (json!({"aud": AUD}), Err(JwtError::WrongIssuer)),
        (json!({"iss": 7, "aud": AUD}), Err(JwtError::WrongIssuer)),
        (
            json!({"iss": [ISS], "aud": AUD}),
            Err(JwtError::WrongIssuer),
        ),
        (json!({"iss": ISS, "aud": 7}), Err(JwtError::WrongAudience)),
        (
            json!({"iss": ISS, "aud": [7, null]}),
            Err(JwtError::WrongAudience),
        ),
        (json!({"iss": ISS, "aud": []}), Err(JwtError::WrongAudience)),
        (
            json!({"iss": ISS, "aud": {"a": AUD}}),
            Err(JwtError::WrongAudience),
        ),
        (json!({"iss": ISS, "aud": [1, AUD]}), Ok(())),
        (json!({"iss": ISS, "aud": AUD}), Ok(())),
    ];
    for (claims, want) in cases {
        let got = v.verify(&hs256_claims(claims.clone()), NOW).map(|_| ());
        assert_eq!(got, want, "{claims}");
    }
}

#[test]
fn claim_types() {
    let v = secret();
    let base = |extra: Value| {
        let mut c = json!({"iss": ISS, "aud": AUD});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        hs256_claims(c)
    };
    let cases = [
        (json!({"exp": "4102444800"}), Err(JwtError::Malformed)),
        (json!({"exp": null}), Err(JwtError::Malformed)),
        (json!({"nbf": true}), Err(JwtError::Malformed)),
        (json!({"exp": 4102444800.5}), Ok(())),
        (json!({"exp": 1e300}), Ok(())),
        (json!({"exp": -5}), Err(JwtError::Expired)),
        (json!({"exp": -1e300}), Err(JwtError::Expired)),
        (json!({"nbf": 1699999999.9}), Ok(())),
        (json!({"nbf": -3}), Ok(())),
        (json!({"nbf": 1e300}), Err(JwtError::NotYetValid)),
    ];
    for (extra, want) in cases {
        let got = v.verify(&base(extra.clone()), NOW).map(|_| ());
        assert_eq!(got, want, "{extra}");
    }
    let claims = v.verify(&base(json!({"exp": 4102444800.9})), NOW).unwrap();
    assert_eq!(claims.exp(), Some(4_102_444_800));
    let claims = v.verify(&base(json!({})), NOW).unwrap();
    assert_eq!(claims.exp(), None);
    // Payloads that are not a JSON object, correctly signed.
    for payload in ["", "[]", "7", "\"x\"", "{", "{\"a\":1}x", "\u{0}"] {
        let t = hs256(r#"{"alg":"HS256"}"#, payload);
        assert_eq!(v.verify(&t, NOW), Err(JwtError::Malformed), "{payload:?}");
    }
}

#[test]
fn required_claims() {
    let v = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        required_claims: vec!["tenant".into(), "nothing".into()],
        ..settings()
    })
    .unwrap();
    // "nothing" is present but null: missing.
    assert_eq!(
        v.verify(token("claims"), NOW),
        Err(JwtError::MissingClaim("nothing".into()))
    );
    let v = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(fixture("ec256.pem")),
        required_claims: vec!["tenant".into(), "exp".into(), "obj".into()],
        ..settings()
    })
    .unwrap();
    v.verify(token("claims"), NOW).unwrap();
    assert_eq!(
        v.verify(token("valid_ES256"), NOW),
        Err(JwtError::MissingClaim("tenant".into()))
    );
}

#[test]
fn claims_text_and_satisfies() {
    let c = pem("ec256.pem").verify(token("claims"), NOW).unwrap();
    let text = |n: &str| c.text(n);
    assert_eq!(text("sub").as_deref(), Some("user-ES256"));
    assert_eq!(text("scope").as_deref(), Some("chat:read chat:write"));
    assert_eq!(text("roles").as_deref(), Some("admin ops"));
    assert_eq!(text("n").as_deref(), Some("42"));
    assert_eq!(text("f").as_deref(), Some("1.5"));
    assert_eq!(text("flag").as_deref(), Some("true"));
    assert_eq!(text("ctrl").as_deref(), Some("a?b?c?d"));
    assert_eq!(text("exp").as_deref(), Some("4102444800"));
    for none in ["obj", "mixed", "nothing", "absent"] {
        assert_eq!(text(none), None, "{none}");
    }
    let yes = [
        ("scope", "chat:read"),
        ("scope", "chat:write"),
        ("scope", "chat:read chat:write"),
        ("roles", "admin"),
        ("roles", "ops"),
        ("tenant", "acme"),
        ("n", "42"),
        ("flag", "true"),
        ("sub", "user-ES256"),
    ];
    for (name, value) in yes {
        assert!(c.satisfies(name, value), "{name} {value}");
    }
    let no = [
        ("scope", "chat"),
        ("scope", "read"),
        ("scope", ""),
        ("scope", "chat:read "),
        ("roles", "admin ops"),
        ("roles", ""),
        ("tenant", "acm"),
        ("n", "4"),
        ("flag", "false"),
        ("obj", "a"),
        ("mixed", "1"),
        ("nothing", "null"),
        ("absent", ""),
    ];
    for (name, value) in no {
        assert!(!c.satisfies(name, value), "{name} {value}");
    }
    // A control character inside an array element, and in C1.
    let v = secret();
    let c = v
        .verify(
            &hs256_claims(json!({"iss": ISS, "aud": AUD, "g": ["a\tb", "c\u{85}"], "s": ""})),
            NOW,
        )
        .unwrap();
    assert_eq!(c.text("g").as_deref(), Some("a?b c?"));
    assert_eq!(c.text("s").as_deref(), Some(""));
    assert!(c.satisfies("s", ""));
}

#[test]
fn malformed_tokens() {
    let v = jwks();
    let good = token("valid_ES256");
    let (head, rest) = good.split_once('.').unwrap();
    let (body, sig) = rest.split_once('.').unwrap();
    let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_LEN));
    let cases = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "a.b.c".into(),
        format!("{head}.{body}"),
        format!("{good}.{sig}"),
        format!("{head}.{body}.{sig}="),
        format!("{head}.{body}.{sig}!"),
        format!("{head}={}", &good[head.len()..]),
        format!("{head}.{body}."),
        format!("{}.{body}.{sig}", enc("[]")),
        format!("{}.{body}.{sig}", enc("{\"alg\":7}")),
        format!("{}.{body}.{sig}", enc("{}")),
        format!("{}.{body}.{sig}", enc("{\"alg\":\"ES256\",\"kid\":7}")),
        format!(
            "{}.{body}.{sig}",
            enc("{\"alg\":\"ES256\",\"kid\":\"ec256-1\",\"crit\":[\"exp\"]}")
        ),
        format!("{}.{body}.{sig}", enc("not json")),
        format!(" {good}"),
        long,
    ];
    for t in &cases {
        assert_eq!(v.verify(t, NOW), Err(JwtError::Malformed), "{t}");
    }
}

#[test]
fn reload_swaps_keys() {
    let path = temp("jwks.json");
    let full: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    std::fs::write(&path, full.to_string()).unwrap();
    let v = JwtVerifier::load(&JwtSettings {
        jwks_file: Some(path.clone()),
        ..settings()
    })
    .unwrap();
    v.verify(token("valid_RS256"), NOW).unwrap();

    // The RSA keys leave the set.
    let mut fewer = full.clone();
    fewer["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kty"] != "RSA");
    std::fs::write(&path, fewer.to_string()).unwrap();
    v.reload().unwrap();
    assert_eq!(
        v.verify(token("valid_RS256"), NOW),
        Err(JwtError::UnknownKey)
    );
    assert_eq!(
        v.verify(token("valid_RS256_nokid"), NOW),
        Err(JwtError::UnknownKey)
    );
    v.verify(token("valid_ES256"), NOW).unwrap();

    // A broken file: the error names it, and the keys stay.
    std::fs::write(&path, b"{\"keys\": [").unwrap();
    let err = v.reload().unwrap_err();
    assert!(err.contains(&*path.display().to_string()), "{err}");
    v.verify(token("valid_ES256"), NOW).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = v.reload().unwrap_err();
    assert!(err.contains(&*path.display().to_string()), "{err}");
    v.verify(token("valid_EdDSA"), NOW).unwrap();
    assert_eq!(
        v.verify(token("valid_RS256"), NOW),
        Err(JwtError::UnknownKey)
    );

    // Back again.
    std::fs::write(&path, full.to_string()).unwrap();
    v.reload().unwrap();
    v.verify(token("valid_RS256"), NOW).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn set_jwks_replaces_only_the_fetched_keys() {
    let v = JwtVerifier::load(&JwtSettings {
        secret_file: Some(fixture("hmac.secret")),
        jwks_url: Some("http://127.0.0.1:9/jwks".into()),
        ..settings()
    })
    .unwrap();
    assert_eq!(
        v.verify(token("valid_ES256"), NOW),
        Err(JwtError::UnknownKey)
    );
    let doc = std::fs::read(fixture("jwks.json")).unwrap();
    // rsa-1, rsa-rs256, ec256-1, ec384-1, ed-1, hmac-1 (enc-1, p521-1 skipped).
    assert_eq!(v.set_jwks(&doc), Ok(6));
    v.verify(token("valid_ES256"), NOW).unwrap();
    for garbage in [
        &b""[..],
        b"nope",
        b"[]",
        b"{}",
        b"{\"keys\": {}}",
        b"{\"keys\": []}",
        b"{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-521\", \"x\": \"AA\", \"y\": \"AA\"}]}",
        b"{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}",
        b"{\"keys\": [7, null, \"x\"]}",
    ] {
        assert!(
            v.set_jwks(garbage).is_err(),
            "{}",
            String::from_utf8_lossy(garbage)
        );
        v.verify(token("valid_ES256"), NOW).unwrap();
    }
    // Only the P-256 key now: the rest of the fetched set is gone, the
    // secret file's key stays.
    let mut one: Value = serde_json::from_slice(&doc).unwrap();
    one["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] == "ec256-1");
    assert_eq!(v.set_jwks(one.to_string().as_bytes()), Ok(1));
    v.verify(token("valid_ES256"), NOW).unwrap();
    assert_eq!(
        v.verify(token("valid_EdDSA"), NOW),
        Err(JwtError::UnknownKey)
    );
    v.verify(token("valid_HS384"), NOW).unwrap();
    // And a reload keeps the fetched keys.
    v.reload().unwrap();
    v.verify(token("valid_ES256"), NOW).unwrap();
}

#[test]
fn jwk_details() {
    let doc: Value = serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    let key = |kid: &str| {
        doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap()
            .clone()
    };
    let v = JwtVerifier::load(&JwtSettings {
        jwks_url: Some("http://127.0.0.1:9/".into()),
        ..settings()
    })
    .unwrap();
    let set = |keys: Vec<Value>| v.set_jwks(json!({ "keys": keys }).to_string().as_bytes());
    // A leading zero on n: tolerated; key_ops with "verify": usable.
    let mut rsa = key("rsa-1");
    let n = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
    rsa["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
    rsa["key_ops"] = json!(["verify"]);
    assert_eq!(set(vec![rsa.clone()]), Ok(1));
    v.verify(token("valid_PS384"), NOW).unwrap();
    // Skipped: key_ops without verify, a pinned alg of another family, an
    // unknown alg, a short RSA modulus, EC coordinates of the wrong curve.
    let mut ops = rsa.clone();
    ops["key_ops"] = json!(["encrypt"]);
    let mut wrong_alg = rsa.clone();
    wrong_alg["alg"] = json!("ES256");
    let mut unknown_alg = rsa.clone();
    unknown_alg["alg"] = json!("RS1");
    let mut short = rsa.clone();
    short["n"] = json!(URL_SAFE_NO_PAD.encode(&n[..128]));
    let mut curve = key("ec384-1");
    curve["crv"] = json!("P-256");
    for bad in [ops, wrong_alg, unknown_alg, short, curve] {
        assert!(set(vec![bad.clone()]).is_err(), "{bad}");
    }
    // A JWK with no kid serves tokens with any kid.
    let mut ed = key("ed-1");
    ed.as_object_mut().unwrap().remove("kid");
    assert_eq!(set(vec![ed]), Ok(1));
    v.verify(token("valid_EdDSA"), NOW).unwrap();
    v.verify(token("protocol"), NOW).unwrap();
}

#[test]
fn load_errors() {
    let missing = fixture("no-such-file.pem");
    let err = JwtVerifier::load(&JwtSettings {
        public_key_file: Some(missing.clone()),
        ..settings()
    })
    .unwrap_err();
    assert!(err.contains("no-such-file.pem"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    let file = |name: &str, contents: &[u8]| {
        let p = temp(name);
        std::fs::write(&p, contents).unwrap();
        p
    };
    let read = |p: &Path| std::fs::read(p).unwrap();
    let two = [read(&fixture("rsa.pem")), read(&fixture("ec256.pem"))].concat();
    let pems: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.pem", Vec::new(), "no PUBLIC KEY"),
        ("junk.pem", b"hello\x00\xff world".to_vec(), "no PUBLIC KEY"),
        (
            "private.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec(),
            "private key",
        ),
        (
            "badb64.pem",
            b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n".to_vec(),
            "bad PEM",
        ),
        (
            "notspki.pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec(),
            "bad public key",
        ),
        (
            "cut.pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n".to_vec(),
            "bad PEM",
        ),
        ("two.pem", two, "holds 2 keys"),
        ("p521.pem", read(&fixture("ec521.pem")), "EC curve"),
    ];
    for (name, contents, want) in pems {
        let p = file(name, &contents);
        let err = JwtVerifier::load(&JwtSettings {
            public_key_file: Some(p.clone()),
            ..settings()
        })
        .unwrap_err();
        assert!(err.contains(want), "{name}: {err}");
        assert!(err.contains(&*p.display().to_string()), "{name}: {err}");
        assert!(!err.contains('\n'), "{name}: {err}");
        std::fs::remove_file(&p).unwrap();
    }

    for (name, contents, want) in [
        ("empty.secret", &b""[..], "empty"),
        ("newline.secret", b"\n", "empty"),
        ("crlf.secret", b"\r\n", "empty"),
    ] {
        let p = file(name, contents);
        let err = JwtVerifier::load(&JwtSettings {
            secret_file: Some(p.clone()),
            ..settings()
        })
        .unwrap_err();
        assert!(err.contains(want) && err.contains(name), "{err}");
        std::fs::remove_file(&p).unwrap();
    }
    // A CRLF-terminated secret is the same secret.
    let mut crlf = read(&fixture("hmac.secret"));
    crlf.pop();
    crlf.extend_from_slice(b"\r\n");
    let p = file("crlf-ok.secret", &crlf);
    JwtVerifier::load(&JwtSettings {
        secret_file: Some(p.clone()),
        ..settings()
    })
    .unwrap()
    .verify(token("valid_HS256"), NOW)
    .unwrap();
    std::fs::remove_file(&p).unwrap();

    let p = file(
        "nokeys.json",
        b"{\"keys\": [{\"kty\": \"EC\", \"use\": \"enc\"}]}",
    );
    let err = JwtVerifier::load(&JwtSettings {
        jwks_file: Some(p.clone()),
        ..settings()
    })
    .unwrap_err();
    assert!(
        err.contains("nokeys.json") && err.contains("no usable key"),
        "{err}"
    );
    std::fs::remove_file(&p).unwrap();
}

#[test]
fn error_labels_and_words() {
    let all = [
        (JwtError::Malformed, "malformed", "malformed token"),
        (
            JwtError::UnsupportedAlgorithm("none".into()),
            "bad_algorithm",
            "algorithm \"none\" not accepted",
        ),
        (
            JwtError::UnknownKey,
            "unknown_key",
            "no key for the token's kid or algorithm",
        ),
        (JwtError::BadSignature, "bad_signature", "bad signature"),
        (JwtError::Expired, "expired", "token expired"),
        (
            JwtError::NotYetValid,
            "not_yet_valid",
            "token not yet valid",
        ),
        (JwtError::WrongIssuer, "wrong_issuer", "issuer not accepted"),
        (
            JwtError::WrongAudience,
            "wrong_audience",
            "audience not accepted",
        ),
        (
            JwtError::MissingClaim("scope".into()),
            "missing_claim",
            "missing claim \"scope\"",
        ),
    ];
    for (e, reason, words) in all {
        assert_eq!(e.reason(), reason);
        assert_eq!(e.to_string(), words);
        assert_eq!(e.status(), 401);
    }
}

#[test]
fn only_a_url_starts_empty() {
    let v = JwtVerifier::load(&JwtSettings {
        jwks_url: Some("https://idp.example/jwks".into()),
        ..settings()
    })
    .unwrap();
    for alg in ALGS {
        assert_eq!(
            v.verify(token(&format!("valid_{alg}")), NOW),
            Err(JwtError::UnknownKey)
        );
    }
    assert!(format!("{v:?}").contains("fetched_keys: 0"));
}

/// A JWKS server on 127.0.0.1 answering `responses` in turn, one per
/// connection, then closing the listener. Each request line it has read
/// goes to the returned channel once the answer is written.
fn serve(responses: Vec<Vec<u8>>) -> (String, mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/keys?v=1", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        for response in responses {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut stream = reader.into_inner();
            stream.write_all(&response).unwrap();
            drop(stream);
            let _ = tx.send(first.trim_end().to_string());
        }
    });
    (url, rx, server)
}

fn ok_chunked(body: &[u8]) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(700) {
        r.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        r.extend_from_slice(part);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// Waits for `cond` (a state the refresher thread reaches), up to 10 s.
fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn refresher_fetches_then_keeps_the_last_good_keys() {
    let doc = std::fs::read(fixture("jwks.json")).unwrap();
    let (url, served, server) = serve(vec![
        ok_chunked(&doc),
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnope".to_vec(),
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]);
    let v = Arc::new(
        JwtVerifier::load(&JwtSettings {
            jwks_url: Some(url.clone()),
            ..settings()
        })
        .unwrap(),
    );
    assert_eq!(
        v.verify(token("valid_ES256"), NOW),
        Err(JwtError::UnknownKey)
    );
    let refresher = spawn_refresher(Arc::clone(&v), url, Duration::from_millis(20));
    let wait = Duration::from_secs(10);
    assert_eq!(served.recv_timeout(wait).unwrap(), "GET /keys?v=1 HTTP/1.1");
    until("the first JWKS", || {
        v.verify(token("valid_ES256"), NOW).is_ok()
    });
    // Three failed refreshes (500, not a JWKS, 500). When the server has
    // taken the fourth request, the refresher is done with the third answer.
    for _ in 0..3 {
        served.recv_timeout(wait).unwrap();
    }
    server.join().unwrap();
    for alg in ALGS {
        v.verify(token(&format!("valid_{alg}")), NOW).unwrap();
    }
    let start = Instant::now();
    refresher.stop();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    v.verify(token("valid_ES256"), NOW).unwrap();
}

#[test]
fn refresher_stops_at_once_while_waiting() {
    let doc = std::fs::read(fixture("jwks.json")).unwrap();
    let mut ok = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", doc.len()).into_bytes();
    ok.extend_from_slice(&doc);
    let (url, served, server) = serve(vec![ok]);
    let v = Arc::new(
        JwtVerifier::load(&JwtSettings {
            jwks_url: Some(url.clone()),
            ..settings()
        })
        .unwrap(),
    );
    let refresher = spawn_refresher(Arc::clone(&v), url, Duration::from_secs(3600));
    served.recv_timeout(Duration::from_secs(10)).unwrap();
    server.join().unwrap();
    until("the JWKS", || v.verify(token("valid_RS512"), NOW).is_ok());
    let start = Instant::now();
    refresher.stop();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    // A URL it cannot use: the thread ends by itself; stop returns.
    let bad = spawn_refresher(Arc::clone(&v), "ftp://x/".into(), Duration::from_secs(1));
    bad.stop();
    // Dropping signals the thread without waiting.
    drop(spawn_refresher(
        v,
        "http://127.0.0.1:9/".into(),
        Duration::from_secs(1),
    ));
}

/// Bytes of every token in the fixtures, for mutation.
fn all_tokens() -> Vec<&'static str> {
    let mut names: Vec<String> = ALGS.iter().map(|a| format!("valid_{a}")).collect();
    names.extend(
        [
            "expired",
            "alg_none",
            "hs256_confusion",
            "bad_signature",
            "claims",
            "protocol",
        ]
        .map(String::from),
    );
    names.iter().map(|n| token(n)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,400}") {
        let v = jwks();
        let _ = v.verify(&s, NOW);
    }

    #[test]
    fn token_shaped_garbage_never_panics(
        parts in proptest::collection::vec("[A-Za-z0-9_=+/-]{0,120}", 0..5),
    ) {
        let v = jwks();
        let _ = v.verify(&parts.join("."), NOW);
    }

    #[test]
    fn mutated_tokens_never_pass(which in 0usize..18, at in any::<usize>(), byte in any::<u8>()) {
        let v = jwks();
        let tokens = all_tokens();
        let t = tokens[which % tokens.len()];
        let mut bytes = t.as_bytes().to_vec();
        let i = at % bytes.len();
        let changed = bytes[i] != byte;
        bytes[i] = byte;
        let s = String::from_utf8_lossy(&bytes);
        // Base64url is decoded strictly (canonical, unpadded), so a changed
        // byte changes the decoded header, payload or signature: the
        // signature no longer verifies.
        prop_assert!(!(changed && v.verify(&s, NOW).is_ok()), "{}", s);
    }
}
