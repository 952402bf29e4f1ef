//! The request to the authorization service, sans-IO: which of the
//! client's headers are forwarded (also what the cache key is made of), and
//! the bytes of the head.

use httparse::Header;

use super::{AuthRequest, ExternalSettings};
use crate::proto::token::is_token;

/// Headers the request sets itself: a forwarded header of one of these
/// names would contradict (or smuggle past) the one wsedge writes, so it is
/// never forwarded.
const OWN: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "x-original-method",
    "x-original-uri",
    "x-forwarded-for",
];

/// Whether `value` can go into a header line as it is: no control
/// characters other than HTAB (so no CR or LF), no DEL.
pub(super) fn is_safe_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The forwarded header names, in configuration order: each once
/// (case-insensitively), only tokens, none of the request's own headers.
pub(super) fn forward_names(settings: &ExternalSettings) -> impl Iterator<Item = &str> {
    let names = &settings.forward_headers;
    names.iter().enumerate().filter_map(move |(i, name)| {
        let first = !names[..i].iter().any(|n| n.eq_ignore_ascii_case(name));
        let own = OWN.iter().any(|o| o.eq_ignore_ascii_case(name));
        (first && !own && is_token(name.as_bytes())).then_some(name.as_str())
    })
}

/// The client's headers called `name` that are forwarded: every occurrence,
/// in the client's order, except those whose name or value cannot be
/// written into a head as they are.
pub(super) fn occurrences<'r, 'h>(
    req: &'r AuthRequest<'h>,
    name: &'r str,
) -> impl Iterator<Item = &'r Header<'h>> {
    req.headers.iter().filter(move |h| {
        h.name.eq_ignore_ascii_case(name) && is_token(h.name.as_bytes()) && is_safe_value(h.value)
    })
}

/// The request's head: `GET {path} HTTP/1.1`, `Host`, `X-Original-Method`,
/// `X-Original-URI`, `X-Forwarded-For`, the forwarded headers,
/// `Content-Length: 0`, `Connection: close`. Refused (naming the part)
/// when a part that must be sent cannot be written into a head.
pub(super) fn build(
    settings: &ExternalSettings,
    req: &AuthRequest<'_>,
) -> Result<Vec<u8>, &'static str> {
    let target = settings.path.as_bytes();
    if target.is_empty() || !target.iter().all(|&b| b > b' ' && b != 0x7f) {
        return Err("the service's path");
    }
    if !is_safe_value(settings.authority.as_bytes()) {
        return Err("the service's authority");
    }
    if !is_token(req.method.as_bytes()) {
        return Err("the client's method");
    }
    if !is_safe_value(req.path.as_bytes()) {
        return Err("the client's request target");
    }
    let client = req.client.to_canonical().to_string();

    let mut head = Vec::with_capacity(256 + target.len() + req.path.len());
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target);
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let mut line = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    line(b"Host", settings.authority.as_bytes());
    line(b"X-Original-Method", req.method.as_bytes());
    line(b"X-Original-URI", req.path.as_bytes());
    line(b"X-Forwarded-For", client.as_bytes());
    for name in forward_names(settings) {
        for h in occurrences(req, name) {
            line(h.name.as_bytes(), h.value);
        }
    }
    line(b"Content-Length", b"0");
    line(b"Connection", b"close");
    head.extend_from_slice(b"\r\n");
    Ok(head)
}
