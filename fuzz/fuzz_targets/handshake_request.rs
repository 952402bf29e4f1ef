//! `parse_request` on arbitrary bytes: never panics, the head length it
//! reports is exact (parsing just `input[..n]` gives the same request), and
//! growing prefixes answer "need more" until the answer, then the answer.
//! An accepted request also survives the proxy's rewrite: the request
//! `build_backend_request` writes from it parses and validates again.
//!
//! Input: `[limits] [steps] [head...]`.
//! - limits bits 0-1: `max_head_bytes` from `HEAD`; bits 2-3: `max_headers`
//!   from `COUNT`; bit 4: header storage of 64 or 4 slots.
//! - steps: how many growing prefixes to try (1-4) and a short prefix length.
#![no_main]

#[path = "common/heads.rs"]
mod heads;

use std::net::{IpAddr, Ipv4Addr};

use httparse::EMPTY_HEADER;
use libfuzzer_sys::fuzz_target;
use wsedge::proto::handshake::{
    BackendRequest, Limits, Rejection, accept_key, build_backend_request, parse_request,
};
use wsedge::proto::token::header_has_token;

const HEAD: [usize; 4] = [16 * 1024, 512, 128, 40];
const COUNT: [usize; 4] = [64, 8, 2, 0];

/// An accepted request, owned, so answers from different buffers compare.
#[derive(Debug, PartialEq, Eq)]
struct Accepted {
    len: usize,
    path: String,
    host: String,
    key: String,
    headers: Vec<(String, Vec<u8>)>,
}

type Answer = Result<Option<Accepted>, Rejection>;

fn parse(buf: &[u8], limits: &Limits, slots: usize) -> Answer {
    let mut storage = [EMPTY_HEADER; 64];
    let answer = parse_request(buf, &mut storage[..slots], limits)?;
    Ok(answer.map(|(req, len)| {
        assert!(
            len <= buf.len(),
            "head length {len} beyond the {} bytes given",
            buf.len()
        );
        assert!(len <= limits.max_head_bytes);
        assert_eq!(req.method(), "GET");
        assert_eq!(req.version(), 1);
        assert!(req.path().starts_with('/'));
        assert!(!req.host().is_empty() && req.host().is_ascii());
        assert_eq!(req.key().len(), 24);
        assert!(
            accept_key(req.key().as_bytes())
                .iter()
                .all(|b| b.is_ascii_graphic())
        );
        assert!(buf[..len].ends_with(b"\n"));
        assert!(req.headers().len() <= slots.min(limits.max_headers));
        let _ = req.protocols().count() + req.extensions().count();
        Accepted {
            len,
            path: req.path().to_owned(),
            host: req.host().to_owned(),
            key: req.key().to_owned(),
            headers: req
                .headers()
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        }
    }))
}

fuzz_target!(|data: &[u8]| {
    let [config, steps, head @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_head_bytes: HEAD[(config & 3) as usize],
        max_headers: COUNT[((config >> 2) & 3) as usize],
    };
    let slots = if config & 0x10 == 0 { 64 } else { 4 };

    let full = parse(head, &limits, slots);
    if let Err(e) = &full {
        let _ = e.response();
    }

    heads::check_prefixes(
        head,
        limits.max_head_bytes,
        *steps,
        &full,
        |a| a.len,
        |b| parse(b, &limits, slots),
    );

    // The proxy's rewrite of an accepted request is itself acceptable.
    if let Ok(Some(_)) = &full {
        let mut storage = [EMPTY_HEADER; 64];
        let (req, _) = parse_request(head, &mut storage[..slots], &limits)
            .unwrap()
            .unwrap();
        let opts = BackendRequest {
            path: req.path(),
            host: "backend.internal:8080",
            key: "AQIDBAUGBwgJCgsMDQ4PEA==",
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            forwarded_proto: "https",
            forward_extensions: steps & 0x80 != 0,
            client_cert: None,
            forwarded_for_trusted: true,
            protocols: None,
            drop_headers: &[],
            add_headers: &[],
        };
        let out = build_backend_request(&req, &opts);
        let big = Limits {
            max_head_bytes: 1 << 20,
            max_headers: 256,
        };
        let mut storage = [EMPTY_HEADER; 256];
        let again = parse_request(&out, &mut storage, &big);
        let Ok(Some((back, len))) = again else {
            panic!(
                "rewritten request rejected: {again:?}\n{}",
                String::from_utf8_lossy(&out)
            );
        };
        assert_eq!(len, out.len());
        assert_eq!(
            (back.path(), back.host(), back.key()),
            (opts.path, opts.host, opts.key)
        );
        // (Unless the client's `Connection` names the header hop-by-hop.)
        if !header_has_token(req.headers(), "connection", "sec-websocket-protocol") {
            assert_eq!(
                back.protocols().collect::<Vec<_>>(),
                req.protocols().collect::<Vec<_>>(),
                "offered subprotocols survive the rewrite"
            );
        }
    }
});
