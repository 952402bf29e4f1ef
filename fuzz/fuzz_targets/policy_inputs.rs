//! The handshake policy's parsers over client-controlled bytes: a request
//! head (from the input) goes through every credential source, the
//! `bearer` subprotocol removal, the query-parameter removal, the
//! trusted-proxy `X-Forwarded-For` walk and an Origin check; the input's
//! lines also go through the CIDR, Origin-pattern, token-source and rate
//! parsers. Nothing may panic; what is removed must be gone.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use wsedge::config::parse_rate;
use wsedge::policy::cidr::{Cidr, CidrList};
use wsedge::policy::client_ip::client_addr;
use wsedge::policy::credential::{self, TokenSource};
use wsedge::policy::origin::{OriginPattern, OriginPolicy};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines().take(8) {
            let _ = Cidr::parse(line);
            let _ = OriginPattern::parse(line);
            let _ = TokenSource::parse(line);
            let _ = parse_rate(line, false);
            let _ = parse_rate(line, true);
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let target = req.path.unwrap_or("/");
    let headers = req.headers;
    let sources = [
        TokenSource::Header("Authorization".into()),
        TokenSource::Query("access_token".into()),
        TokenSource::Cookie("session".into()),
        TokenSource::Protocol,
    ];
    let _ = credential::find(&sources, target, headers);
    let _ = credential::protocols_without_token(headers);
    let stripped = credential::without_query_param(target, "access_token");
    assert!(
        credential::query_param(&stripped, "access_token").is_none(),
        "{target:?} -> {stripped:?}"
    );
    let trusted = CidrList::parse(&["127.0.0.0/8", "10.0.0.0/8", "::1"]).unwrap();
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let who = client_addr(peer, &trusted, headers);
    assert!(who.via_trusted);
    let policy = OriginPolicy {
        allowed: vec![
            OriginPattern::parse("https://*.example.com").unwrap(),
            OriginPattern::parse("null").unwrap(),
        ],
        allow_missing: false,
    };
    let origin = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("origin"))
        .map(|h| h.value);
    let _ = policy.permits(origin);
});
