//! JWT validation (`wsedge::policy::jwt`) over arbitrary tokens, with the
//! committed fixture keys (a JWKS of RSA, EC, Ed25519 and HMAC keys): no
//! panic, and nothing the fuzzer makes without the keys is accepted.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsedge::policy::jwt::{JwtSettings, JwtVerifier};

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt");
        JwtVerifier::load(&JwtSettings {
            secret_file: None,
            public_key_file: None,
            jwks_file: Some(dir.join("jwks.json")),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: vec![],
            audience: vec![],
            required_claims: vec![],
            leeway: Duration::from_secs(0),
        })
        .expect("the fixture JWKS loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(claims) = verifier().verify(token, 1_800_000_000) {
        // Only a token signed with a fixture key passes: the fuzzer can
        // only get here by replaying a seed's signature on its claims.
        let _ = claims.exp();
    }
});
