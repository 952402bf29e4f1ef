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
//! The parsers take the bytes read so far and never consume anything: they
//! answer `Ok(None)` (need more), or the parsed head with its length. Bytes
//! after the head belong to the caller: a client may send its first frames
//! in the same packet as its request, a backend its first frames with its
//! `101`. Header storage is passed in (`[httparse::EMPTY_HEADER; N]`), so
//! parsing does not allocate; building heads does.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use httparse::Header;
use sha1::{Digest, Sha1};

use super::token::{element_name, header_tokens, header_values, is_token, tokens, trim_ows};

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

/// Why a client's upgrade request is refused; each rule knows the HTTP
/// status to answer with ([`Rejection::status`]).
///
/// Rules are checked in the order of the variants below, from
/// [`Rejection::Malformed`] to [`Rejection::DuplicateKey`], so a request that
/// breaks several gets the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// The head is not valid HTTP/1.x syntax (400).
    Malformed,
    /// The head is larger than [`Limits::max_head_bytes`] (431).
    HeadTooLarge,
    /// The head has more header lines than allowed (431).
    TooManyHeaders,
    /// The method is not `GET` (405, answered with `Allow: GET`).
    MethodNotAllowed,
    /// The request is HTTP/1.0, which cannot upgrade (400).
    HttpVersion,
    /// The request target is not in origin form (`/path?query`) (400).
    InvalidTarget,
    /// There is no `Host` header (400, RFC 9112 §3.2).
    MissingHost,
    /// `Host` is repeated, empty or not an authority (400).
    InvalidHost,
    /// The request announces a body: `Transfer-Encoding`, or a
    /// `Content-Length` other than 0 (400).
    UnexpectedBody,
    /// No `Upgrade` header lists the `websocket` token: a plain HTTP request
    /// (426, answered with `Upgrade: websocket`).
    NotUpgrade,
    /// No `Connection` header lists the `upgrade` token (426, answered with
    /// `Upgrade: websocket`).
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` is absent or not `13` (426, answered with
    /// `Sec-WebSocket-Version: 13`, RFC 6455 §4.4).
    UnsupportedVersion,
    /// `Sec-WebSocket-Version` is repeated (400).
    DuplicateVersion,
    /// There is no `Sec-WebSocket-Key` (400).
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 of 16 bytes (400).
    InvalidKey,
    /// `Sec-WebSocket-Key` is repeated (400).
    DuplicateKey,
}

impl Rejection {
    /// The HTTP status to answer with: 400, 405, 426 or 431.
    pub const fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::MethodNotAllowed => 405,
            Self::NotUpgrade | Self::ConnectionNotUpgrade | Self::UnsupportedVersion => 426,
            Self::Malformed
            | Self::HttpVersion
            | Self::InvalidTarget
            | Self::MissingHost
            | Self::InvalidHost
            | Self::UnexpectedBody
            | Self::DuplicateVersion
            | Self::MissingKey
            | Self::InvalidKey
            | Self::DuplicateKey => 400,
        }
    }

    /// A short, human-readable reason; also the body of [`Self::response`].
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed HTTP request",
            Self::HeadTooLarge => "request head too large",
            Self::TooManyHeaders => "too many request headers",
            Self::MethodNotAllowed => "method must be GET",
            Self::HttpVersion => "HTTP/1.1 required",
            Self::InvalidTarget => "request target must be a path",
            Self::MissingHost => "missing Host header",
            Self::InvalidHost => "invalid Host header",
            Self::UnexpectedBody => "upgrade request must not have a body",
            Self::NotUpgrade => "Upgrade: websocket required",
            Self::ConnectionNotUpgrade => "Connection: upgrade required",
            Self::UnsupportedVersion => "Sec-WebSocket-Version: 13 required",
            Self::DuplicateVersion => "repeated Sec-WebSocket-Version header",
            Self::MissingKey => "missing Sec-WebSocket-Key header",
            Self::InvalidKey => "Sec-WebSocket-Key must be base64 of 16 bytes",
            Self::DuplicateKey => "repeated Sec-WebSocket-Key header",
        }
    }

    /// The complete HTTP/1.1 answer: status line, `Content-Type`,
    /// `Content-Length`, `Connection: close`, the headers the status calls
    /// for (`Allow: GET` with 405; `Upgrade: websocket` and
    /// `Sec-WebSocket-Version: 13` with 426) and the reason as body.
    pub fn response(&self) -> Vec<u8> {
        let (extra, connection): (&[(&str, &str)], &str) = match self.status() {
            405 => (&[("Allow", "GET")], "close"),
            426 => (
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", VERSION)],
                "Upgrade, close",
            ),
            _ => (&[], "close"),
        };
        error_response(self.status(), self.reason(), extra, connection)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for Rejection {}

/// A validated client upgrade request, borrowing the caller's buffer (`'b`)
/// and header storage (`'h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeRequest<'h, 'b> {
    method: &'b str,
    path: &'b str,
    host: &'b str,
    key: &'b str,
    headers: &'h [Header<'b>],
}

impl<'h, 'b> UpgradeRequest<'h, 'b> {
    /// The method; always `GET` once validated.
    pub fn method(&self) -> &'b str {
        self.method
    }

    /// The request target in origin form, query included (`/chat?x=1`).
    pub fn path(&self) -> &'b str {
        self.path
    }

    /// The HTTP minor version; always 1 (HTTP/1.1) once validated.
    pub fn version(&self) -> u8 {
        1
    }

    /// The `Host` header, trimmed.
    pub fn host(&self) -> &'b str {
        self.host
    }

    /// The `Sec-WebSocket-Key`, trimmed; known to be base64 of 16 bytes.
    pub fn key(&self) -> &'b str {
        self.key
    }

    /// The `Sec-WebSocket-Accept` value that answers [`Self::key`].
    pub fn accept_key(&self) -> [u8; 28] {
        accept_key(self.key.as_bytes())
    }

    /// Every header line, in the order received, names and values as sent.
    pub fn headers(&self) -> &'h [Header<'b>] {
        self.headers
    }

    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header_values(self.headers, name).next()
    }

    /// The subprotocols offered, in order, over all `Sec-WebSocket-Protocol`
    /// headers.
    pub fn protocols(&self) -> impl Iterator<Item = &'b [u8]> + Clone + use<'h, 'b> {
        header_tokens(self.headers, "sec-websocket-protocol")
    }

    /// The raw `Sec-WebSocket-Extensions` values, in order; split them with
    /// [`tokens`] and name them with [`element_name`].
    pub fn extensions(&self) -> impl Iterator<Item = &'b [u8]> + Clone + use<'h, 'b> {
        header_values(self.headers, "sec-websocket-extensions")
    }
}

/// Parses and validates a client's upgrade request from the bytes read so
/// far.
///
/// `headers` is the header storage (`[httparse::EMPTY_HEADER; 64]`); at most
/// `min(headers.len(), limits.max_headers)` lines are accepted. Answers
/// `Ok(None)` while the head is incomplete and still within
/// `limits.max_head_bytes`, and `Ok(Some((request, head_len)))` once it is
/// complete; `buf[head_len..]` is not part of the request.
///
/// # Errors
///
/// A [`Rejection`]; the rules are checked in the order its variants are
/// declared. Version is checked before key, so a client speaking another
/// version learns which one to speak.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    limits: &Limits,
) -> Result<Option<(UpgradeRequest<'h, 'b>, usize)>, Rejection> {
    let count = headers.len().min(limits.max_headers);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut req = httparse::Request::new(&mut headers[..count]);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() < limits.max_head_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(Rejection::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(Rejection::TooManyHeaders),
        Err(_) => return Err(Rejection::Malformed),
    };
    let httparse::Request {
        method,
        path,
        version,
        headers,
    } = req;
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return Err(Rejection::Malformed);
    };
    let request = validate_request(method, path, version, headers)?;
    Ok(Some((request, len)))
}

fn validate_request<'h, 'b>(
    method: &'b str,
    path: &'b str,
    version: u8,
    headers: &'h [Header<'b>],
) -> Result<UpgradeRequest<'h, 'b>, Rejection> {
    if method != "GET" {
        return Err(Rejection::MethodNotAllowed);
    }
    if version != 1 {
        return Err(Rejection::HttpVersion);
    }
    if !path.starts_with('/') {
        return Err(Rejection::InvalidTarget);
    }

    // One pass over the headers, then the rules in order.
    let mut hosts = (0, &b""[..]);
    let mut keys = (0, &b""[..]);
    let mut versions = (0, &b""[..]);
    let (mut upgrade, mut connection, mut body) = (false, false, false);
    for h in headers {
        let name = h.name;
        let value = trim_ows(h.value);
        if name.eq_ignore_ascii_case("host") {
            hosts = (hosts.0 + 1, value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            keys = (keys.0 + 1, value);
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            versions = (versions.0 + 1, value);
        } else if name.eq_ignore_ascii_case("content-length") {
            body |= value.is_empty() || value.iter().any(|&b| b != b'0');
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            body = true;
        }
    }

    let host = match hosts {
        (0, _) => return Err(Rejection::MissingHost),
        (1, host) if is_authority(host) => host,
        _ => return Err(Rejection::InvalidHost),
    };
    if body {
        return Err(Rejection::UnexpectedBody);
    }
    if !upgrade {
        return Err(Rejection::NotUpgrade);
    }
    if !connection {
        return Err(Rejection::ConnectionNotUpgrade);
    }
    match versions {
        (0, _) => return Err(Rejection::UnsupportedVersion),
        (1, v) if v == VERSION.as_bytes() => {}
        (1, _) => return Err(Rejection::UnsupportedVersion),
        _ => return Err(Rejection::DuplicateVersion),
    }
    let key = match keys {
        (0, _) => return Err(Rejection::MissingKey),
        (1, key) if is_valid_key(key) => key,
        (1, _) => return Err(Rejection::InvalidKey),
        _ => return Err(Rejection::DuplicateKey),
    };

    // Both were checked to be ASCII above.
    let host = std::str::from_utf8(host).map_err(|_| Rejection::InvalidHost)?;
    let key = std::str::from_utf8(key).map_err(|_| Rejection::InvalidKey)?;
    Ok(UpgradeRequest {
        method,
        path,
        host,
        key,
        headers,
    })
}

/// Whether `host` is a non-empty `host[:port]` made of RFC 3986 authority
/// characters (unreserved, percent, sub-delims, `:`, `[`, `]`).
fn is_authority(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// Whether `key` is canonical base64 of exactly 16 bytes.
fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key, &mut decoded) == Ok(16)
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

/// How the proxy's request to a backend differs from the client's.
///
/// The `&str` fields go into the head verbatim and must not contain CR, LF
/// or NUL; they come from configuration and the proxy, not from the client.
#[derive(Debug, Clone, Copy)]
pub struct BackendRequest<'a> {
    /// Request target to send, in origin form (often the client's
    /// [`UpgradeRequest::path`]).
    pub path: &'a str,
    /// `Host` header to send.
    pub host: &'a str,
    /// The proxy's own fresh `Sec-WebSocket-Key` (see [`key_from_nonce`]).
    pub key: &'a str,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// `X-Forwarded-Proto`: `"http"` or `"https"`.
    pub forwarded_proto: &'a str,
    /// Whether the client's `Sec-WebSocket-Extensions` are passed on; when
    /// off the backend must not choose any extension.
    pub forward_extensions: bool,
}

/// Headers never forwarded as they are: hop-by-hop ones (RFC 9110 §7.6.1),
/// the ones the proxy writes itself, and ones an upgrade has no use for.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-accept",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Writes the upgrade request the proxy sends to a backend.
///
/// `GET {path} HTTP/1.1`, then `Host`, `Upgrade`, `Connection`,
/// `Sec-WebSocket-Key` and `Sec-WebSocket-Version` from `opts`; then the
/// client's end-to-end headers in order, names and values byte for byte
/// (hop-by-hop headers, headers the client's `Connection` names, its own
/// handshake and forwarding headers, and `Sec-WebSocket-Extensions` unless
/// forwarded, are left out); then `X-Forwarded-For` (the client's list with
/// `opts.client_ip` appended), `X-Forwarded-Proto` and `X-Forwarded-Host`
/// (the client's `Host`).
pub fn build_backend_request(req: &UpgradeRequest<'_, '_>, opts: &BackendRequest<'_>) -> Vec<u8> {
    for s in [opts.path, opts.host, opts.key, opts.forwarded_proto] {
        debug_assert!(
            !s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "CR/LF/NUL in {s:?}"
        );
    }
    let headers = req.headers();
    let size: usize = headers
        .iter()
        .map(|h| h.name.len() + h.value.len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + opts.path.len() + opts.host.len() + 256);

    out.extend_from_slice(b"GET ");
    out.extend_from_slice(opts.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_header(&mut out, "Host", opts.host.as_bytes());
    put_header(&mut out, "Upgrade", b"websocket");
    put_header(&mut out, "Connection", b"Upgrade");
    put_header(&mut out, "Sec-WebSocket-Key", opts.key.as_bytes());
    put_header(&mut out, "Sec-WebSocket-Version", VERSION.as_bytes());

    for h in headers {
        let dropped = NOT_FORWARDED.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            || (!opts.forward_extensions
                && h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            || header_tokens(headers, "connection")
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()));
        if !dropped {
            put_header(&mut out, h.name, h.value);
        }
    }

    out.extend_from_slice(b"X-Forwarded-For: ");
    for value in header_values(headers, "x-forwarded-for") {
        let value = trim_ows(value);
        if !value.is_empty() {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(opts.client_ip.to_canonical().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    put_header(
        &mut out,
        "X-Forwarded-Proto",
        opts.forwarded_proto.as_bytes(),
    );
    put_header(&mut out, "X-Forwarded-Host", req.host().as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// What a backend's answer must satisfy to be accepted as an upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// `Sec-WebSocket-Accept` for the key the proxy sent.
    pub accept: [u8; 28],
    /// The client's request: the backend may only choose a subprotocol it
    /// offers, and an extension it offers if extensions were forwarded.
    pub request: &'a UpgradeRequest<'a, 'a>,
    /// Whether the client's extensions were forwarded; when off, the backend
    /// must not choose any.
    pub forward_extensions: bool,
}

impl<'a> Expect<'a> {
    /// The expectations that go with `build_backend_request(request, opts)`.
    pub fn new(request: &'a UpgradeRequest<'a, 'a>, opts: &BackendRequest<'_>) -> Self {
        Self {
            accept: accept_key(opts.key.as_bytes()),
            request,
            forward_extensions: opts.forward_extensions,
        }
    }
}

/// A backend's answer to the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendResponse<'b> {
    /// A valid `101 Switching Protocols`: frames follow the head.
    Upgraded {
        /// The subprotocol the backend chose, one the client offered.
        protocol: Option<&'b str>,
        /// The backend's `Sec-WebSocket-Extensions` value, trimmed, when it
        /// chose any (only possible when extensions were forwarded).
        extensions: Option<&'b [u8]>,
    },
    /// An interim `1xx` other than 101 (such as `103 Early Hints`): skip (or
    /// relay) the head and parse again after it.
    Interim {
        /// The status code.
        status: u16,
    },
    /// Any final status other than 101: relay the head (and a bounded body)
    /// to the client, then close.
    Other {
        /// The status code.
        status: u16,
    },
}

/// Why a backend's answer cannot be accepted; the client gets a 502
/// ([`ResponseError::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResponseError {
    /// The head is not valid HTTP/1.x syntax.
    Malformed,
    /// The head is larger than [`Limits::max_head_bytes`].
    HeadTooLarge,
    /// The head has more header lines than allowed.
    TooManyHeaders,
    /// A 101 that is not HTTP/1.1.
    HttpVersion,
    /// A 101 without the `websocket` token in `Upgrade`.
    NotUpgrade,
    /// A 101 without the `upgrade` token in `Connection`.
    ConnectionNotUpgrade,
    /// A 101 without `Sec-WebSocket-Accept`.
    MissingAccept,
    /// A 101 whose `Sec-WebSocket-Accept` does not answer the proxy's key
    /// (or is repeated).
    AcceptMismatch,
    /// A 101 whose `Sec-WebSocket-Protocol` is repeated, a list, or not a
    /// token.
    InvalidProtocol,
    /// A 101 choosing a subprotocol the client did not offer.
    ProtocolNotOffered,
    /// A 101 choosing an extension that was not offered (any extension, when
    /// extensions are not forwarded).
    ExtensionNotOffered,
    /// A 101 with more than one `Sec-WebSocket-Extensions` header.
    RepeatedExtensions,
}

impl ResponseError {
    /// The HTTP status the client gets: always 502 Bad Gateway.
    pub const fn status(&self) -> u16 {
        502
    }

    /// A short, human-readable reason, for logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed HTTP response from backend",
            Self::HeadTooLarge => "backend response head too large",
            Self::TooManyHeaders => "too many backend response headers",
            Self::HttpVersion => "backend 101 is not HTTP/1.1",
            Self::NotUpgrade => "backend 101 without Upgrade: websocket",
            Self::ConnectionNotUpgrade => "backend 101 without Connection: upgrade",
            Self::MissingAccept => "backend 101 without Sec-WebSocket-Accept",
            Self::AcceptMismatch => "backend 101 with wrong Sec-WebSocket-Accept",
            Self::InvalidProtocol => "backend 101 with invalid Sec-WebSocket-Protocol",
            Self::ProtocolNotOffered => "backend chose a subprotocol the client did not offer",
            Self::ExtensionNotOffered => "backend chose an extension that was not offered",
            Self::RepeatedExtensions => "backend 101 with repeated Sec-WebSocket-Extensions",
        }
    }

    /// The complete HTTP/1.1 answer for the client: a 502 with
    /// `Connection: close` and a generic body (the reason stays in the logs).
    pub fn response(&self) -> Vec<u8> {
        simple_response(self.status(), "backend handshake failed")
    }
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ResponseError {}

/// Parses a backend's answer to the upgrade request from the bytes read so
/// far, and checks a 101 against `expect`.
///
/// Same contract as [`parse_request`]: `Ok(None)` while incomplete and
/// within `limits.max_head_bytes`, else the answer with its head length;
/// bytes after the head are the backend's first frames (after a 101) or the
/// body (otherwise).
///
/// # Errors
///
/// A [`ResponseError`] for a malformed or oversized head, or a 101 that
/// breaks RFC 6455 §4.1 (checked in the order the variants are declared).
pub fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [Header<'b>],
    limits: &Limits,
    expect: &Expect<'_>,
) -> Result<Option<(BackendResponse<'b>, usize)>, ResponseError> {
    let count = headers.len().min(limits.max_headers);
    let window = &buf[..buf.len().min(limits.max_head_bytes)];
    let mut resp = httparse::Response::new(&mut headers[..count]);
    let len = match resp.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if window.len() < limits.max_head_bytes => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(ResponseError::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let httparse::Response {
        version,
        code,
        headers,
        ..
    } = resp;
    let (Some(version), Some(status)) = (version, code) else {
        return Err(ResponseError::Malformed);
    };
    let answer = match status {
        101 => validate_switch(version, headers, expect)?,
        100..=199 => BackendResponse::Interim { status },
        _ => BackendResponse::Other { status },
    };
    Ok(Some((answer, len)))
}

fn validate_switch<'b>(
    version: u8,
    headers: &[Header<'b>],
    expect: &Expect<'_>,
) -> Result<BackendResponse<'b>, ResponseError> {
    if version != 1 {
        return Err(ResponseError::HttpVersion);
    }
    let has =
        |name, token: &[u8]| header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token));
    if !has("upgrade", b"websocket") {
        return Err(ResponseError::NotUpgrade);
    }
    if !has("connection", b"upgrade") {
        return Err(ResponseError::ConnectionNotUpgrade);
    }
    match single(headers, "sec-websocket-accept") {
        Single::None => return Err(ResponseError::MissingAccept),
        Single::One(accept) if accept == expect.accept => {}
        _ => return Err(ResponseError::AcceptMismatch),
    }

    let protocol = match single(headers, "sec-websocket-protocol") {
        Single::None => None,
        Single::One(p) if is_token(p) => {
            if !expect.request.protocols().any(|offered| offered == p) {
                return Err(ResponseError::ProtocolNotOffered);
            }
            Some(std::str::from_utf8(p).map_err(|_| ResponseError::InvalidProtocol)?)
        }
        _ => return Err(ResponseError::InvalidProtocol),
    };

    let extensions = match single(headers, "sec-websocket-extensions") {
        Single::None => None,
        Single::One(e) if tokens(e).next().is_none() => None,
        Single::One(e) => {
            let offered = |name: &[u8]| {
                expect.forward_extensions
                    && expect
                        .request
                        .extensions()
                        .flat_map(tokens)
                        .any(|o| element_name(o).eq_ignore_ascii_case(name))
            };
            if !tokens(e).all(|chosen| offered(element_name(chosen))) {
                return Err(ResponseError::ExtensionNotOffered);
            }
            Some(e)
        }
        Single::Many => return Err(ResponseError::RepeatedExtensions),
    };
    Ok(BackendResponse::Upgraded {
        protocol,
        extensions,
    })
}

/// How often a header occurs, with its trimmed value when exactly once.
enum Single<'b> {
    None,
    One(&'b [u8]),
    Many,
}

fn single<'b>(headers: &[Header<'b>], name: &str) -> Single<'b> {
    let mut values = header_values(headers, name);
    match (values.next(), values.next()) {
        (None, _) => Single::None,
        (Some(v), None) => Single::One(trim_ows(v)),
        (Some(_), Some(_)) => Single::Many,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const BASE: [(&str, &str); 5] = [
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];

    /// Header edits: `Some(v)` replaces the first header of that name (or
    /// appends it), `None` removes it; a `+` before the name always appends.
    type Changes<'a> = &'a [(&'a str, Option<&'a str>)];

    fn head(start: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut out = format!("{start}\r\n");
        for (name, value) in headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn edit<'a>(
        mut headers: Vec<(&'a str, &'a str)>,
        changes: Changes<'a>,
    ) -> Vec<(&'a str, &'a str)> {
        for &(name, value) in changes {
            if let Some(name) = name.strip_prefix('+') {
                headers.push((name, value.unwrap_or("")));
                continue;
            }
            let pos = headers
                .iter()
                .position(|(n, _)| n.eq_ignore_ascii_case(name));
            match (pos, value) {
                (Some(i), Some(v)) => headers[i].1 = v,
                (Some(i), None) => drop(headers.remove(i)),
                (None, Some(v)) => headers.push((name, v)),
                (None, None) => {}
            }
        }
        headers
    }

    fn request_with(changes: Changes<'_>) -> Vec<u8> {
        head("GET /chat?x=1 HTTP/1.1", &edit(BASE.to_vec(), changes))
    }

    /// Parses a complete head: its length or the rejection.
    fn check_with(buf: &[u8], limits: &Limits) -> Result<usize, Rejection> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        parse_request(buf, &mut headers, limits).map(|r| r.expect("complete head").1)
    }

    fn check(buf: &[u8]) -> Result<usize, Rejection> {
        check_with(buf, &Limits::default())
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn rfc_accept_vector() {
        assert_eq!(&accept_key(KEY.as_bytes()), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            accept_key_str(KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(&key_from_nonce(b"the sample nonce"), KEY.as_bytes());
    }

    #[test]
    fn valid_request_exposes_its_parts() {
        let buf = request_with(&[
            ("Sec-WebSocket-Protocol", Some("chat, superchat")),
            ("+sec-websocket-protocol", Some("v3")),
            ("Sec-WebSocket-Extensions", Some("permessage-deflate")),
        ]);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let (req, len) = parse_request(&buf, &mut headers, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(
            (req.method(), req.path(), req.version()),
            ("GET", "/chat?x=1", 1)
        );
        assert_eq!((req.host(), req.key()), ("example.com", KEY));
        assert_eq!(&req.accept_key(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(req.headers().len(), 8);
        assert_eq!(req.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(req.header("origin"), None);
        let protocols: Vec<_> = req.protocols().collect();
        assert_eq!(protocols, [&b"chat"[..], b"superchat", b"v3"]);
        assert_eq!(
            req.extensions().collect::<Vec<_>>(),
            [b"permessage-deflate"]
        );
    }

    #[test]
    fn tolerated_variations_are_accepted() {
        let cases: &[Changes<'_>] = &[
            &[("Upgrade", Some("WebSocket"))],
            &[("Upgrade", Some("h2c, websocket"))],
            &[("Upgrade", Some("h2c")), ("+upgrade", Some("websocket"))],
            &[("Connection", Some("keep-alive, Upgrade"))],
            &[("Connection", Some("UPGRADE"))],
            &[
                ("Connection", Some("keep-alive")),
                ("+connection", Some("upgrade")),
            ],
            &[("Host", Some("[::1]:8080"))],
            &[("Content-Length", Some("0"))],
            &[("Sec-WebSocket-Key", Some("AAECAwQFBgcICQoLDA0ODw=="))],
        ];
        for changes in cases {
            let buf = request_with(changes);
            assert_eq!(check(&buf), Ok(buf.len()), "{changes:?}");
        }
    }

    #[test]
    fn every_header_rule_rejects() {
        use Rejection::*;
        let cases: &[(Changes<'_>, Rejection)] = &[
            (&[("Host", None)], MissingHost),
            (&[("Host", Some(""))], InvalidHost),
            (&[("Host", Some("a/b"))], InvalidHost),
            (&[("+host", Some("other.example"))], InvalidHost),
            (&[("Content-Length", Some("5"))], UnexpectedBody),
            (&[("Content-Length", Some("x"))], UnexpectedBody),
            (&[("Transfer-Encoding", Some("chunked"))], UnexpectedBody),
            (&[("Upgrade", None)], NotUpgrade),
            (&[("Upgrade", Some("h2c"))], NotUpgrade),
            (&[("Upgrade", Some("websocketx"))], NotUpgrade),
            (&[("Connection", None)], ConnectionNotUpgrade),
            (&[("Connection", Some("keep-alive"))], ConnectionNotUpgrade),
            (&[("Sec-WebSocket-Version", Some("8"))], UnsupportedVersion),
            (
                &[("Sec-WebSocket-Version", Some("13, 8"))],
                UnsupportedVersion,
            ),
            (&[("Sec-WebSocket-Version", None)], UnsupportedVersion),
            (&[("+Sec-WebSocket-Version", Some("13"))], DuplicateVersion),
            // The version is checked before the key.
            (
                &[
                    ("Sec-WebSocket-Version", Some("8")),
                    ("Sec-WebSocket-Key", None),
                ],
                UnsupportedVersion,
            ),
            (&[("Sec-WebSocket-Key", None)], MissingKey),
            // base64 of 15 bytes, of 17 bytes, and 24 characters that are not base64
            (
                &[("Sec-WebSocket-Key", Some("AAECAwQFBgcICQoLDA0O"))],
                InvalidKey,
            ),
            (
                &[("Sec-WebSocket-Key", Some("AAECAwQFBgcICQoLDA0ODxA="))],
                InvalidKey,
            ),
            (
                &[("Sec-WebSocket-Key", Some("!!!!!!!!!!!!!!!!!!!!!!=="))],
                InvalidKey,
            ),
            (&[("+Sec-WebSocket-Key", Some(KEY))], DuplicateKey),
        ];
        for &(changes, rule) in cases {
            assert_eq!(check(&request_with(changes)), Err(rule), "{changes:?}");
        }
    }

    #[test]
    fn every_request_line_rule_rejects() {
        let cases = [
            ("POST /chat HTTP/1.1", Rejection::MethodNotAllowed),
            ("get /chat HTTP/1.1", Rejection::MethodNotAllowed),
            ("GET /chat HTTP/1.0", Rejection::HttpVersion),
            ("GET http://example.com/ HTTP/1.1", Rejection::InvalidTarget),
            ("GET * HTTP/1.1", Rejection::InvalidTarget),
            ("GET /chat HTTP/2.0", Rejection::Malformed),
        ];
        for (start, rule) in cases {
            assert_eq!(check(&head(start, &BASE)), Err(rule), "{start}");
        }
        assert_eq!(
            check(b"GET / HTTP/1.1\r\nHost example.com\r\n\r\n"),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            check(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn statuses() {
        use Rejection::*;
        for (rule, status) in [
            (Malformed, 400),
            (HeadTooLarge, 431),
            (TooManyHeaders, 431),
            (MethodNotAllowed, 405),
            (HttpVersion, 400),
            (MissingHost, 400),
            (NotUpgrade, 426),
            (ConnectionNotUpgrade, 426),
            (UnsupportedVersion, 426),
            (DuplicateVersion, 400),
            (InvalidKey, 400),
        ] {
            assert_eq!(rule.status(), status, "{rule:?}");
        }
        assert_eq!(
            MissingKey.to_string(),
            "missing Sec-WebSocket-Key header (400)"
        );
    }

    #[test]
    fn responses_carry_what_their_status_needs() {
        let r405 = Rejection::MethodNotAllowed.response();
        assert!(r405.starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(contains(&r405, "\r\nAllow: GET\r\n"));
        for rule in [Rejection::NotUpgrade, Rejection::UnsupportedVersion] {
            let r426 = rule.response();
            assert!(r426.starts_with(b"HTTP/1.1 426 Upgrade Required\r\n"));
            assert!(contains(&r426, "\r\nUpgrade: websocket\r\n"));
            assert!(contains(&r426, "\r\nConnection: Upgrade, close\r\n"));
            assert!(contains(&r426, "\r\nSec-WebSocket-Version: 13\r\n"));
        }
        assert!(!contains(&Rejection::InvalidKey.response(), "Upgrade"));
        let r431 = Rejection::HeadTooLarge.response();
        assert!(r431.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(simple_response(503, "busy").starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    }

    #[test]
    fn responses_are_well_formed() {
        for rule in [
            Rejection::Malformed,
            Rejection::MethodNotAllowed,
            Rejection::UnsupportedVersion,
        ] {
            let bytes = rule.response();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let len = resp.parse(&bytes).unwrap().unwrap();
            assert_eq!((resp.version, resp.code), (Some(1), Some(rule.status())));
            let body = &bytes[len..];
            assert_eq!(body, format!("{}\n", rule.reason()).as_bytes());
            let length = header_values(resp.headers, "content-length").next();
            assert_eq!(length, Some(body.len().to_string().as_bytes()));
            assert!(header_tokens(resp.headers, "connection").any(|t| t == b"close"));
        }
    }

    #[test]
    fn header_count_is_limited() {
        let buf = request_with(&[("Origin", Some("https://example.com"))]);
        let limits = Limits {
            max_headers: 5,
            ..Limits::default()
        };
        assert_eq!(check_with(&buf, &limits), Err(Rejection::TooManyHeaders));
        assert_eq!(
            check_with(
                &buf,
                &Limits {
                    max_headers: 6,
                    ..limits
                }
            ),
            Ok(buf.len())
        );
        // Short header storage is a limit too.
        let mut small = [httparse::EMPTY_HEADER; 5];
        let short = parse_request(&buf, &mut small, &Limits::default());
        assert_eq!(short, Err(Rejection::TooManyHeaders));
    }

    #[test]
    fn head_size_is_limited() {
        let buf = request_with(&[]);
        let exact = Limits {
            max_head_bytes: buf.len(),
            ..Limits::default()
        };
        assert_eq!(check_with(&buf, &exact), Ok(buf.len()));
        let short = Limits {
            max_head_bytes: buf.len() - 1,
            ..Limits::default()
        };
        assert_eq!(check_with(&buf, &short), Err(Rejection::HeadTooLarge));

        let mut headers = [httparse::EMPTY_HEADER; 64];
        let partial = &buf[..buf.len() - 2];
        let tiny = Limits {
            max_head_bytes: 40,
            ..Limits::default()
        };
        // Incomplete, but already past the limit.
        assert_eq!(
            parse_request(partial, &mut headers, &tiny),
            Err(Rejection::HeadTooLarge)
        );
        assert_eq!(
            parse_request(&buf[..40], &mut headers, &tiny),
            Err(Rejection::HeadTooLarge)
        );
        // Incomplete and within the limit.
        assert_eq!(
            parse_request(partial, &mut headers, &Limits::default()),
            Ok(None)
        );
        assert_eq!(parse_request(&buf[..39], &mut headers, &tiny), Ok(None));
    }

    #[test]
    fn bytes_after_the_head_are_left_alone() {
        let buf = request_with(&[]);
        let with_frame = [&buf[..], &[0x81, 0x85, 1, 2, 3, 4, 5][..]].concat();
        assert_eq!(check(&with_frame), Ok(buf.len()));
    }

    fn client_request() -> Vec<u8> {
        head(
            "GET /chat?x=1 HTTP/1.1",
            &[
                ("Host", "edge.example.com"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade, X-Hop, keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Sec-WebSocket-Key", KEY),
                ("Sec-WebSocket-Version", "13"),
                ("Origin", "https://app.example.com"),
                ("cOOkie", "a=1; b=\"two\""),
                ("Authorization", "Bearer abc.def"),
                ("X-Hop", "secret"),
                ("Proxy-Authorization", "Basic eA=="),
                ("TE", "trailers"),
                ("Sec-WebSocket-Protocol", "chat, superchat"),
                (
                    "Sec-WebSocket-Extensions",
                    "permessage-deflate; client_max_window_bits",
                ),
                ("X-Forwarded-For", "203.0.113.9"),
                ("x-forwarded-for", "10.0.0.1"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "spoofed.example"),
                ("X-Custom", "kept \t value"),
            ],
        )
    }

    fn opts(forward_extensions: bool) -> BackendRequest<'static> {
        BackendRequest {
            path: "/internal/chat?x=1",
            host: "backend.local:9000",
            key: "AAECAwQFBgcICQoLDA0ODw==",
            client_ip: "192.0.2.7".parse().unwrap(),
            forwarded_proto: "http",
            forward_extensions,
        }
    }

    #[test]
    fn backend_request_rewrites_the_handshake() {
        let client = client_request();
        let mut ch = [httparse::EMPTY_HEADER; 64];
        let (req, _) = parse_request(&client, &mut ch, &Limits::default())
            .unwrap()
            .unwrap();
        let out = build_backend_request(&req, &opts(false));

        let mut bh = [httparse::EMPTY_HEADER; 64];
        let (back, len) = parse_request(&out, &mut bh, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(len, out.len());
        assert_eq!(back.path(), "/internal/chat?x=1");
        assert_eq!(back.host(), "backend.local:9000");
        assert_eq!(back.key(), "AAECAwQFBgcICQoLDA0ODw==");
        let names: Vec<&str> = back.headers().iter().map(|h| h.name).collect();
        let expected = [
            "Host",
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Origin",
            "cOOkie",
            "Authorization",
            "Sec-WebSocket-Protocol",
            "X-Custom",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
            "X-Forwarded-Host",
        ];
        assert_eq!(names, expected);
        let value = |name| std::str::from_utf8(back.header(name).unwrap()).unwrap();
        assert_eq!(value("connection"), "Upgrade");
        assert_eq!(value("cookie"), "a=1; b=\"two\"");
        assert_eq!(value("authorization"), "Bearer abc.def");
        assert_eq!(value("origin"), "https://app.example.com");
        assert_eq!(value("x-custom"), "kept \t value");
        assert_eq!(value("sec-websocket-protocol"), "chat, superchat");
        assert_eq!(value("x-forwarded-for"), "203.0.113.9, 10.0.0.1, 192.0.2.7");
        assert_eq!(value("x-forwarded-proto"), "http");
        assert_eq!(value("x-forwarded-host"), "edge.example.com");

        let with_ext = build_backend_request(&req, &opts(true));
        let ext = "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        assert!(contains(&with_ext, ext));
    }

    #[test]
    fn forwarded_for_starts_fresh_and_is_canonical() {
        let client = request_with(&[]);
        let mut ch = [httparse::EMPTY_HEADER; 64];
        let (req, _) = parse_request(&client, &mut ch, &Limits::default())
            .unwrap()
            .unwrap();
        for (ip, xff) in [
            ("::ffff:192.0.2.8", "192.0.2.8"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let o = BackendRequest {
                client_ip: ip.parse().unwrap(),
                ..opts(false)
            };
            let out = build_backend_request(&req, &o);
            assert!(
                contains(&out, &format!("\r\nX-Forwarded-For: {xff}\r\n")),
                "{ip}"
            );
        }
    }

    /// Runs `f` with the [`Expect`] for [`client_request`] (offering
    /// `chat, superchat` and `permessage-deflate`) sent with [`opts`].
    fn with_expect(forward_extensions: bool, f: impl FnOnce(&Expect<'_>)) {
        let client = client_request();
        let mut ch = [httparse::EMPTY_HEADER; 64];
        let (req, _) = parse_request(&client, &mut ch, &Limits::default())
            .unwrap()
            .unwrap();
        f(&Expect::new(&req, &opts(forward_extensions)));
    }

    /// A good 101 for [`opts`]'s key, with header edits (see [`Changes`]).
    fn response_with(changes: Changes<'_>) -> Vec<u8> {
        let headers = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", "Bz3qJYTGdOe8gUSpLosEdiLKDrk="),
        ];
        head("HTTP/1.1 101 Switching Protocols", &edit(headers, changes))
    }

    type Answer<'b> = Result<Option<(BackendResponse<'b>, usize)>, ResponseError>;

    fn answer<'b>(buf: &'b [u8], expect: &Expect<'_>) -> Answer<'b> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        parse_response(buf, &mut headers, &Limits::default(), expect)
    }

    #[test]
    fn expected_accept_is_for_the_proxy_key() {
        with_expect(false, |e| {
            assert_eq!(&e.accept, b"Bz3qJYTGdOe8gUSpLosEdiLKDrk=")
        });
    }

    #[test]
    fn good_101_is_upgraded() {
        with_expect(false, |e| {
            let buf = response_with(&[("Sec-WebSocket-Protocol", Some("superchat"))]);
            let with_frame = [&buf[..], b"\x81\x02hi"].concat();
            let chosen = BackendResponse::Upgraded {
                protocol: Some("superchat"),
                extensions: None,
            };
            assert_eq!(answer(&with_frame, e), Ok(Some((chosen, buf.len()))));
            assert_eq!(answer(&buf[..buf.len() - 1], e), Ok(None));

            let listed = response_with(&[
                ("Connection", Some("keep-alive, upgrade")),
                ("Upgrade", Some("WebSocket")),
            ]);
            let plain = BackendResponse::Upgraded {
                protocol: None,
                extensions: None,
            };
            assert_eq!(answer(&listed, e), Ok(Some((plain, listed.len()))));
        });
    }

    #[test]
    fn every_101_rule_fails() {
        use ResponseError::*;
        let cases: &[(Changes<'_>, ResponseError)] = &[
            (&[("Upgrade", None)], NotUpgrade),
            (&[("Connection", None)], ConnectionNotUpgrade),
            (&[("Connection", Some("keep-alive"))], ConnectionNotUpgrade),
            (&[("Sec-WebSocket-Accept", None)], MissingAccept),
            (
                &[("Sec-WebSocket-Accept", Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))],
                AcceptMismatch,
            ),
            (
                &[(
                    "+Sec-WebSocket-Accept",
                    Some("Bz3qJYTGdOe8gUSpLosEdiLKDrk="),
                )],
                AcceptMismatch,
            ),
            (
                &[("Sec-WebSocket-Protocol", Some("mqtt"))],
                ProtocolNotOffered,
            ),
            (
                &[("Sec-WebSocket-Protocol", Some("chat, superchat"))],
                InvalidProtocol,
            ),
            (
                &[
                    ("Sec-WebSocket-Protocol", Some("chat")),
                    ("+Sec-WebSocket-Protocol", Some("chat")),
                ],
                InvalidProtocol,
            ),
            (
                &[("Sec-WebSocket-Extensions", Some("permessage-deflate"))],
                ExtensionNotOffered,
            ),
        ];
        with_expect(false, |e| {
            for &(changes, error) in cases {
                assert_eq!(
                    answer(&response_with(changes), e),
                    Err(error),
                    "{changes:?}"
                );
            }
            let old = [b"HTTP/1.0".as_slice(), &response_with(&[])[8..]].concat();
            assert_eq!(answer(&old, e), Err(HttpVersion));
            assert_eq!(
                answer(b"HTTP/1.1 101 \r\nbad header\r\n\r\n", e),
                Err(Malformed)
            );
        });
        assert_eq!(AcceptMismatch.status(), 502);
        assert!(
            AcceptMismatch
                .response()
                .starts_with(b"HTTP/1.1 502 Bad Gateway\r\n")
        );
    }

    #[test]
    fn forwarded_extensions_may_be_chosen() {
        with_expect(true, |e| {
            let value = "permessage-deflate; server_no_context_takeover";
            let ext = response_with(&[("Sec-WebSocket-Extensions", Some(value))]);
            let chosen = BackendResponse::Upgraded {
                protocol: None,
                extensions: Some(value.as_bytes()),
            };
            assert_eq!(answer(&ext, e), Ok(Some((chosen, ext.len()))));

            let other =
                response_with(&[("Sec-WebSocket-Extensions", Some("x-webkit-deflate-frame"))]);
            assert_eq!(answer(&other, e), Err(ResponseError::ExtensionNotOffered));
            let twice = response_with(&[
                ("Sec-WebSocket-Extensions", Some("permessage-deflate")),
                ("+Sec-WebSocket-Extensions", Some("permessage-deflate")),
            ]);
            assert_eq!(answer(&twice, e), Err(ResponseError::RepeatedExtensions));
        });
    }

    #[test]
    fn other_statuses_are_relayed() {
        with_expect(false, |e| {
            let buf = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nnope!\n";
            let other = BackendResponse::Other { status: 403 };
            assert_eq!(answer(buf, e), Ok(Some((other, buf.len() - 6))));
            let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 101 Switching";
            let interim = BackendResponse::Interim { status: 103 };
            assert_eq!(answer(hints, e), Ok(Some((interim, 44))));
        });
    }

    #[test]
    fn backend_head_is_limited() {
        with_expect(false, |e| {
            let buf = response_with(&[]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let tiny = Limits {
                max_head_bytes: 20,
                max_headers: 64,
            };
            let too_large = parse_response(&buf, &mut headers, &tiny, e);
            assert_eq!(too_large, Err(ResponseError::HeadTooLarge));
            let few = Limits {
                max_head_bytes: 1024,
                max_headers: 2,
            };
            let too_many = parse_response(&buf, &mut headers, &few, e);
            assert_eq!(too_many, Err(ResponseError::TooManyHeaders));
        });
    }

    #[test]
    fn switching_response_is_exact() {
        let accept = accept_key(KEY.as_bytes());
        let out = build_switching_response(&accept, Some("chat"), Some(b"permessage-deflate"));
        let expected = "HTTP/1.1 101 Switching Protocols\r\n\
                        Upgrade: websocket\r\n\
                        Connection: Upgrade\r\n\
                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
                        Sec-WebSocket-Protocol: chat\r\n\
                        Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let bare = build_switching_response(&accept, None, None);
        assert!(bare.ends_with(
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        ));
    }

    /// Up to 8 `X-…` headers with printable values (no edge whitespace).
    fn extra_headers() -> impl Strategy<Value = Vec<(String, String)>> {
        let header = ("X-[A-Za-z0-9-]{1,12}", "[!-~]([ -~]{0,30}[!-~])?");
        prop::collection::vec(header, 0..8)
    }

    fn with_extra(extra: &[(String, String)]) -> Vec<u8> {
        let changes: Vec<_> = extra
            .iter()
            .map(|(n, v)| (n.as_str(), Some(v.as_str())))
            .collect();
        request_with(&changes)
    }

    proptest! {
        #[test]
        fn parse_request_never_panics(
            buf in prop::collection::vec(any::<u8>(), 0..2048),
            max_head_bytes in 0usize..3000,
            max_headers in 0usize..70,
        ) {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let _ = parse_request(&buf, &mut headers, &Limits { max_head_bytes, max_headers });
            let _ = parse_request(&buf, &mut headers, &Limits::default());
        }

        #[test]
        fn parse_response_never_panics(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
            with_expect(true, |e| {
                let _ = answer(&buf, e);
                let _ = answer(&[b"HTTP/1.1 101 OK\r\n".as_slice(), &buf].concat(), e);
            });
        }

        #[test]
        fn every_prefix_is_incomplete(
            extra in extra_headers(),
            tail in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let buf = with_extra(&extra);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            for end in 0..buf.len() {
                let partial = parse_request(&buf[..end], &mut headers, &Limits::default());
                prop_assert_eq!(partial, Ok(None), "{}", end);
            }
            prop_assert_eq!(check(&[&buf[..], &tail[..]].concat()), Ok(buf.len()));
        }

        #[test]
        fn backend_request_round_trips(extra in extra_headers(), ip in any::<IpAddr>()) {
            let client = with_extra(&extra);
            let mut ch = [httparse::EMPTY_HEADER; 64];
            let (req, _) = parse_request(&client, &mut ch, &Limits::default()).unwrap().unwrap();
            let o = BackendRequest { client_ip: ip, ..opts(false) };
            let out = build_backend_request(&req, &o);
            let mut bh = [httparse::EMPTY_HEADER; 64];
            let (back, len) = parse_request(&out, &mut bh, &Limits::default()).unwrap().unwrap();
            prop_assert_eq!(len, out.len());
            prop_assert_eq!(back.key(), o.key);
            let custom = |h: &&Header<'_>| {
                h.name.starts_with("X-") && !h.name.to_ascii_lowercase().starts_with("x-forwarded-")
            };
            let sent: Vec<_> = req.headers().iter().filter(custom).collect();
            let forwarded: Vec<_> = back.headers().iter().filter(custom).collect();
            prop_assert_eq!(forwarded, sent);
            let xff = back.header("x-forwarded-for").unwrap();
            prop_assert!(xff.ends_with(ip.to_canonical().to_string().as_bytes()));
        }
    }
}
