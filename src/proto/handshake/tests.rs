//! Tests of the handshake: every validation rule, the heads built, proptests.

use std::net::IpAddr;

use httparse::Header;

use super::super::token::{header_tokens, header_values};
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

fn edit<'a>(mut headers: Vec<(&'a str, &'a str)>, changes: Changes<'a>) -> Vec<(&'a str, &'a str)> {
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
        client_cert: None,
        forwarded_for_trusted: true,
        protocols: None,
        drop_headers: &[],
        add_headers: &[],
    }
}

#[test]
fn client_cert_headers_replace_the_clients() {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let raw = b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Client-Cert-Subject: CN=forged\r\nx-client-cert-san: DNS:forged\r\n\r\n";
    let (req, _) = parse_request(raw, &mut headers, &Limits::default())
        .unwrap()
        .unwrap();
    let out = build_backend_request(&req, &opts(false));
    assert!(!contains(&out, "forged"));
    let o = BackendRequest {
        client_cert: Some(("CN=dev1, O=Acme", "DNS:dev1.example\r\nX: y")),
        forwarded_for_trusted: true,
        protocols: None,
        drop_headers: &[],
        add_headers: &[],
        ..opts(false)
    };
    let out = build_backend_request(&req, &o);
    assert!(!contains(&out, "forged"));
    assert!(contains(
        &out,
        "\r\nX-Client-Cert-Subject: CN=dev1, O=Acme\r\n"
    ));
    assert!(contains(
        &out,
        "\r\nX-Client-Cert-SAN: DNS:dev1.example??X: y\r\n"
    ));
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

        let other = response_with(&[("Sec-WebSocket-Extensions", Some("x-webkit-deflate-frame"))]);
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

#[test]
fn backend_status_outside_100_to_599_is_malformed() {
    let req = request_with(&[]);
    let mut h = [httparse::EMPTY_HEADER; 64];
    let (request, _) = parse_request(&req, &mut h, &Limits::default())
        .unwrap()
        .unwrap();
    let opts = BackendRequest {
        path: "/",
        host: "example.com",
        key: KEY,
        client_ip: "127.0.0.1".parse().unwrap(),
        forwarded_proto: "http",
        forward_extensions: false,
        client_cert: None,
        forwarded_for_trusted: true,
        protocols: None,
        drop_headers: &[],
        add_headers: &[],
    };
    let expect = Expect::new(&request, &opts);
    for status in ["000", "099", "600", "999"] {
        let resp = format!("HTTP/1.1 {status} Weird\r\n\r\n");
        let mut rh = [httparse::EMPTY_HEADER; 64];
        let r = parse_response(resp.as_bytes(), &mut rh, &Limits::default(), &expect);
        assert_eq!(r, Err(ResponseError::Malformed), "{status}");
    }
    let mut rh = [httparse::EMPTY_HEADER; 64];
    let ok = parse_response(
        b"HTTP/1.1 599 Edge\r\n\r\n",
        &mut rh,
        &Limits::default(),
        &expect,
    );
    assert!(matches!(
        ok,
        Ok(Some((BackendResponse::Other { status: 599 }, _)))
    ));
}
