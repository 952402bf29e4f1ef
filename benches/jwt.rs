//! One token verification per iteration (`JwtVerifier::verify`: header,
//! key choice, signature, `exp`/`nbf`/`iss`/`aud`), for an ES256, RS256
//! (RSA 2048), HS256 and EdDSA token from `tests/fixtures/jwt` (made by
//! PyJWT), beside `jsonwebtoken::decode` with the same key and checks.
//!
//! Also `ApiKeys::identify` (SHA-256 of the presented key, an index lookup
//! and a constant-time compare) with 10 and 100,000 keys loaded.
//!
//! `cargo bench --bench jwt`. Every case prints a `RATIO` line with
//! jsonwebtoken's time over ours; the signature check (ring, through
//! jsonwebtoken in both) is nearly all of it for the public-key algorithms.

mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use wsedge::policy::jwt::*;

/// Before every fixture's `exp` (2100).
const NOW: u64 = 1_700_000_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn settings() -> JwtSettings {
    JwtSettings {
        secret_file: None,
        public_key_file: None,
        jwks_file: None,
        jwks_url: None,
        jwks_refresh: Duration::from_secs(300),
        issuer: vec!["https://issuer.test".into()],
        audience: vec!["wsedge-test".into()],
        required_claims: vec!["sub".into()],
        leeway: Duration::from_secs(60),
    }
}

fn verify(c: &mut Criterion) {
    let tokens: Value =
        serde_json::from_slice(&std::fs::read(fixture("tokens.json")).unwrap()).unwrap();
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    let secret = read("hmac.secret");
    let secret = secret.strip_suffix(b"\n").unwrap();
    let cases = [
        (
            Algorithm::ES256,
            "ec256.pem",
            DecodingKey::from_ec_pem(&read("ec256.pem")),
        ),
        (
            Algorithm::RS256,
            "rsa.pem",
            DecodingKey::from_rsa_pem(&read("rsa.pem")),
        ),
        (Algorithm::HS256, "", Ok(DecodingKey::from_secret(secret))),
        (
            Algorithm::EdDSA,
            "ed25519.pem",
            DecodingKey::from_ed_pem(&read("ed25519.pem")),
        ),
    ];
    let mut g = c.benchmark_group("jwt_verify");
    g.throughput(Throughput::Elements(1));
    for (alg, pem, key) in cases {
        let label = format!("{alg:?}");
        let token = tokens["tokens"][format!("valid_{label}")].as_str().unwrap();
        let s = if pem.is_empty() {
            JwtSettings {
                secret_file: Some(fixture("hmac.secret")),
                ..settings()
            }
        } else {
            JwtSettings {
                public_key_file: Some(fixture(pem)),
                ..settings()
            }
        };
        let verifier = JwtVerifier::load(&s).unwrap();
        let claims = verifier.verify(token, NOW).unwrap();
        assert_eq!(claims.text("sub"), Some(format!("user-{label}")));

        let key = key.unwrap();
        let mut validation = Validation::new(alg);
        validation.leeway = 60;
        validation.set_issuer(&["https://issuer.test"]);
        validation.set_audience(&["wsedge-test"]);
        validation.set_required_spec_claims(&["exp", "sub"]);
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).unwrap();

        let ours = support::run(&mut g, BenchmarkId::new("wsedge", &label), || {
            verifier.verify(black_box(token), black_box(NOW)).is_ok()
        });
        let theirs = support::run(&mut g, BenchmarkId::new("jsonwebtoken", &label), || {
            jsonwebtoken::decode::<Map<String, Value>>(black_box(token), &key, &validation).is_ok()
        });
        support::compare(
            &format!("jwt_verify/{label}"),
            None,
            &ours,
            "jsonwebtoken::decode",
            &theirs,
        );
    }
    g.finish();
}

fn api_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_key_identify");
    g.throughput(Throughput::Elements(1));
    let dir = std::env::temp_dir().join(format!("wsedge-bench-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for n in [10usize, 100_000] {
        let file = dir.join(format!("keys-{n}"));
        let text: String = (0..n)
            .map(|i| format!("client-{i}:key-{i:016}-secret\n"))
            .collect();
        std::fs::write(&file, text).unwrap();
        let keys = wsedge::policy::api_key::ApiKeys::load(&file).unwrap();
        let presented = format!("key-{:016}-secret", n / 2);
        assert!(keys.identify(&presented).is_some());
        support::run(&mut g, BenchmarkId::new("known", n), || {
            keys.identify(black_box(&presented)).is_some()
        });
        support::run(&mut g, BenchmarkId::new("unknown", n), || {
            keys.identify(black_box("not-a-key-0000000000")).is_some()
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = verify, api_key
}
criterion_main!(benches);
