//! The proxy's side towards a backend: the upgrade request it sends, and
//! the checks on the backend's answer.

use std::fmt;
use std::net::IpAddr;

use httparse::Header;

use super::super::token::{element_name, header_tokens, header_values, is_token, tokens, trim_ows};
use super::{Limits, UpgradeRequest, VERSION, accept_key, put_header, simple_response};

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
    /// The proxy's own fresh `Sec-WebSocket-Key` (see [`key_from_nonce`](super::key_from_nonce)).
    pub key: &'a str,
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// `X-Forwarded-Proto`: `"http"` or `"https"`.
    pub forwarded_proto: &'a str,
    /// Whether the client's `Sec-WebSocket-Extensions` are passed on; when
    /// off the backend must not choose any extension.
    pub forward_extensions: bool,
    /// The verified client certificate's subject and subjectAltName
    /// entries, sent as `X-Client-Cert-Subject` and `X-Client-Cert-SAN`
    /// (headers of those names from the client are never forwarded).
    pub client_cert: Option<(&'a str, &'a str)>,
    /// The client's `X-Forwarded-For` is kept (the peer is a trusted
    /// proxy) and `client_ip` appended; otherwise the header sent is
    /// `client_ip` alone, whatever the client wrote.
    pub forwarded_for_trusted: bool,
    /// The `Sec-WebSocket-Protocol` list to send instead of the client's
    /// (a credential taken out of it); `Some("")` leaves the header out.
    /// The backend may only choose from this list.
    pub protocols: Option<&'a str>,
    /// Client headers never forwarded, besides the usual ones (identity
    /// headers wsedge writes itself).
    pub drop_headers: &'a [&'a str],
    /// Headers added after the forwarding headers (identity, the external
    /// authorization service's answer). Values must hold no CR, LF or NUL.
    pub add_headers: &'a [(&'a str, &'a [u8])],
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
    "x-client-cert-subject",
    "x-client-cert-san",
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

    if let Some(list) = opts.protocols
        && !list.is_empty()
    {
        put_header(&mut out, "Sec-WebSocket-Protocol", list.as_bytes());
    }
    for h in headers {
        let dropped = NOT_FORWARDED.iter().any(|n| h.name.eq_ignore_ascii_case(n))
            || opts
                .drop_headers
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n))
            || (opts.protocols.is_some() && h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
            || (!opts.forward_extensions
                && h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
            || header_tokens(headers, "connection")
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()));
        if !dropped {
            put_header(&mut out, h.name, h.value);
        }
    }

    out.extend_from_slice(b"X-Forwarded-For: ");
    let believed = opts.forwarded_for_trusted;
    for value in header_values(headers, "x-forwarded-for").filter(|_| believed) {
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
    if let Some((subject, san)) = opts.client_cert {
        put_header(&mut out, "X-Client-Cert-Subject", &header_safe(subject));
        put_header(&mut out, "X-Client-Cert-SAN", &header_safe(san));
    }
    for (name, value) in opts.add_headers {
        put_header(&mut out, name, &header_safe_bytes(value));
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Bytes fit for a header line: control characters other than HTAB become `?`.
fn header_safe_bytes(s: &[u8]) -> Vec<u8> {
    s.iter()
        .map(|&b| {
            if (b < 0x20 && b != b'\t') || b == 0x7f {
                b'?'
            } else {
                b
            }
        })
        .collect()
}

/// A value fit for a header line: control characters become `?`.
fn header_safe(s: &str) -> Vec<u8> {
    s.bytes()
        .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
        .collect()
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
    /// The subprotocol list sent instead of the client's, if any.
    pub protocols: Option<&'a str>,
}

impl<'a> Expect<'a> {
    /// The expectations that go with `build_backend_request(request, opts)`.
    pub fn new(request: &'a UpgradeRequest<'a, 'a>, opts: &BackendRequest<'a>) -> Self {
        Self {
            accept: accept_key(opts.key.as_bytes()),
            request,
            forward_extensions: opts.forward_extensions,
            protocols: opts.protocols,
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
    /// The head is not valid HTTP/1.x syntax, or its status is outside
    /// 100–599.
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
/// Same contract as [`parse_request`](super::parse_request): `Ok(None)` while incomplete and
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
        200..=599 => BackendResponse::Other { status },
        // RFC 9110 §15: only 100–599 exist; anything else is not relayed.
        _ => return Err(ResponseError::Malformed),
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
            let offered = match expect.protocols {
                Some(list) => tokens(list.as_bytes()).any(|offered| offered == p),
                None => expect.request.protocols().any(|offered| offered == p),
            };
            if !offered {
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
