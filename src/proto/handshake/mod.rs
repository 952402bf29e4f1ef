//! The HTTP/1.1 upgrade handshake (RFC 6455 §4), sans-IO.
//!
//! Three heads pass through the proxy for every connection:
//!
//! 1. client → proxy: [`parse_request`] parses and validates the upgrade
//!    request. A refusal is a [`Rejection`] that knows its HTTP status and
//!    renders the answer with [`Rejection::response`].
//! 2. proxy → backend: [`build_backend_request`] writes the request the proxy
//!    sends upstream (its own key, hop-by-hop headers stripped,
//!    `X-Forwarded-*` added); [`parse_response`] checks the backend's answer
//!    against an [`Expect`] and either accepts the upgrade or hands back the
//!    status of a response to relay. A bad answer is a [`ResponseError`]
//!    (always 502 towards the client).
//! 3. proxy → client: [`build_switching_response`] writes the `101`.
//!
//! Around them: [`HeadScanner`] finds where a head ends as it arrives (so
//! the parsers run once per head), and a backend's answer other than 101
//! is relayed through [`RelayedAnswer`] and [`BodyReader`]: its body framed
//! by [`response_framing`] (a chunked body decoded by [`ChunkedDecoder`]),
//! read up to a limit, and sent with an exact `Content-Length`.
//!
//! The parsers take the bytes read so far and never consume anything: they
//! answer `Ok(None)` (need more), or the parsed head with its length. Bytes
//! after the head belong to the caller: a client may send its first frames
//! in the same packet as its request, a backend its first frames with its
//! `101`. Header storage is passed in (`[httparse::EMPTY_HEADER; N]`), so
//! parsing does not allocate; building heads does.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

mod backend;
mod body;
mod chunked;
mod head;
mod request;
#[cfg(test)]
mod tests;

pub use backend::{
    BackendRequest, BackendResponse, Expect, ResponseError, build_backend_request, parse_response,
};
pub use body::{BodyError, BodyReader, BodyState, Framing, RelayedAnswer, response_framing};
pub use chunked::{ChunkError, Chunked, ChunkedDecoder};
pub use head::{HeadKind, HeadScanner, Scan};
pub use request::{Rejection, UpgradeRequest, parse_request};

/// The GUID RFC 6455 §1.3 appends to the key before hashing it.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version spoken (`Sec-WebSocket-Version: 13`).
pub const VERSION: &str = "13";

/// Bounds on a request or response head, checked before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest head accepted, request line and final blank line included
    /// (default 16 KiB). A head that is, or is bound to become, larger is a
    /// `431` (or a [`ResponseError::HeadTooLarge`] from a backend).
    pub max_head_bytes: usize,
    /// Most header lines accepted (default 64). The effective limit is the
    /// smaller of this and the length of the header storage passed in.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64 of SHA-1 of the key followed by
/// [`GUID`] (RFC 6455 §4.2.2). `key` is the header value as sent, not its
/// decoded bytes.
pub fn accept_key(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    let digest = sha.finalize();
    let mut out = [0u8; 28];
    let written = STANDARD.encode_slice(digest, &mut out);
    debug_assert_eq!(written, Ok(28));
    out
}

/// [`accept_key`] as a `String`.
pub fn accept_key_str(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_key(key)).into_owned()
}

/// A `Sec-WebSocket-Key` made from 16 random bytes the caller draws (the
/// handshake holds no random source).
pub fn key_from_nonce(nonce: &[u8; 16]) -> [u8; 24] {
    let mut out = [0u8; 24];
    let written = STANDARD.encode_slice(nonce, &mut out);
    debug_assert_eq!(written, Ok(24));
    out
}

/// The `101 Switching Protocols` the proxy sends its client: `Upgrade`,
/// `Connection`, `Sec-WebSocket-Accept` (for the client's key) and, when
/// given, `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` (normally
/// the backend's choices, from [`BackendResponse::Upgraded`]).
pub fn build_switching_response(
    accept: &[u8; 28],
    protocol: Option<&str>,
    extensions: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    put_header(&mut out, "Upgrade", b"websocket");
    put_header(&mut out, "Connection", b"Upgrade");
    put_header(&mut out, "Sec-WebSocket-Accept", accept);
    if let Some(protocol) = protocol {
        put_header(&mut out, "Sec-WebSocket-Protocol", protocol.as_bytes());
    }
    if let Some(extensions) = extensions {
        put_header(&mut out, "Sec-WebSocket-Extensions", extensions);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `response` (a head ending in an empty line) with a `Set-Cookie: value`
/// header added at its end. `value` comes from the proxy, never from a
/// peer.
pub fn with_set_cookie(mut response: Vec<u8>, value: &str) -> Vec<u8> {
    debug_assert!(response.ends_with(b"\r\n\r\n"));
    debug_assert!(!value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    response.truncate(response.len().saturating_sub(2));
    put_header(&mut response, "Set-Cookie", value.as_bytes());
    response.extend_from_slice(b"\r\n");
    response
}

/// A complete plain-text HTTP/1.1 response with `Connection: close` (for
/// 502, 503, 504 and the like); `body` is sent followed by a newline.
pub fn simple_response(status: u16, body: &str) -> Vec<u8> {
    error_response(status, body, &[], "close")
}

fn error_response(status: u16, body: &str, extra: &[(&str, &str)], connection: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(192 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    put_header(&mut out, "Content-Type", b"text/plain; charset=utf-8");
    put_header(
        &mut out,
        "Content-Length",
        (body.len() + 1).to_string().as_bytes(),
    );
    put_header(&mut out, "Connection", connection.as_bytes());
    for (name, value) in extra {
        put_header(&mut out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    out
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase (RFC 9110 §15), empty for unlisted codes.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}
