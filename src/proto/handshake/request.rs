//! The client's upgrade request: parsing, validation, refusals.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use httparse::Header;

use super::super::token::{header_tokens, header_values, tokens, trim_ows};
use super::{Limits, VERSION, accept_key, error_response};

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
    /// [`tokens`] and name them with [`element_name`](crate::proto::token::element_name).
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
