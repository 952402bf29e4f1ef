//! The handshake against an independent implementation: tungstenite's client
//! writes requests we parse and reads the responses we write; its server
//! reads the requests we send to backends and answers what we validate.

use std::io::{self, Read, Write};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::server::{Request, Response};
use tungstenite::handshake::{HandshakeError, derive_accept_key};
use tungstenite::http::{HeaderValue, StatusCode};
use wsedge::proto::handshake::{
    BackendRequest, BackendResponse, Expect, Limits, Rejection, accept_key, build_backend_request,
    build_switching_response, parse_request, parse_response,
};

/// An in-memory stream: reads drain `input` (then would block), writes are
/// recorded in `output`.
#[derive(Debug, Default)]
struct Mem {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
}

impl Mem {
    fn with_input(input: Vec<u8>) -> Self {
        Self {
            input,
            ..Self::default()
        }
    }
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.read..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What tungstenite's client sends for `ws://example.com/chat?x=1` offering
/// two subprotocols, and the key in it.
fn tungstenite_request() -> (Vec<u8>, String) {
    let mut request = "ws://example.com/chat?x=1".into_client_request().unwrap();
    let protocols = HeaderValue::from_static("chat, superchat");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols);
    request
        .headers_mut()
        .insert("Cookie", HeaderValue::from_static("session=abc"));
    generate_request(request).unwrap()
}

fn backend_opts() -> BackendRequest<'static> {
    BackendRequest {
        path: "/chat?x=1",
        host: "backend.internal:8080",
        key: "AAECAwQFBgcICQoLDA0ODw==",
        client_ip: "198.51.100.4".parse().unwrap(),
        forwarded_proto: "https",
        forward_extensions: false,
        client_cert: None,
        forwarded_for_trusted: true,
        protocols: None,
        drop_headers: &[],
        add_headers: &[],
    }
}

#[test]
fn tungstenite_request_is_accepted() {
    for _ in 0..32 {
        let (bytes, key) = tungstenite_request();
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (req, len) = parse_request(&bytes, &mut headers, &Limits::default())
            .expect("accepted")
            .expect("complete");
        assert_eq!(len, bytes.len());
        assert_eq!(req.path(), "/chat?x=1");
        assert_eq!(req.host(), "example.com");
        assert_eq!(req.key(), key);
        assert_eq!(
            req.protocols().collect::<Vec<_>>(),
            [&b"chat"[..], b"superchat"]
        );
        assert_eq!(req.header("cookie"), Some(&b"session=abc"[..]));
        let ours = accept_key(key.as_bytes());
        assert_eq!(
            std::str::from_utf8(&ours).unwrap(),
            derive_accept_key(key.as_bytes())
        );
    }
}

#[test]
fn tungstenite_server_accepts_our_backend_request() {
    let (client_bytes, _) = tungstenite_request();
    let mut client_headers = [httparse::EMPTY_HEADER; 64];
    let (req, _) = parse_request(&client_bytes, &mut client_headers, &Limits::default())
        .unwrap()
        .unwrap();
    let opts = backend_opts();
    let backend_request = build_backend_request(&req, &opts);

    // The backend: tungstenite's server, choosing the first offered subprotocol.
    let mut seen = None;
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback`.
    #[allow(clippy::result_large_err)]
    let choose_first = |request: &Request, mut response: Response| {
        let offered = request.headers()["Sec-WebSocket-Protocol"]
            .to_str()
            .unwrap();
        let first = offered.split(',').next().unwrap().trim().to_owned();
        response
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", first.parse().unwrap());
        seen = Some(request.clone());
        Ok(response)
    };
    let ws = tungstenite::accept_hdr(Mem::with_input(backend_request), choose_first)
        .expect("tungstenite accepts the backend request");
    let seen = seen.unwrap();
    let header = |name: &str| seen.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(seen.uri(), "/chat?x=1");
    assert_eq!(header("host"), "backend.internal:8080");
    assert_eq!(header("sec-websocket-key"), opts.key);
    assert_eq!(header("cookie"), "session=abc");
    assert_eq!(header("x-forwarded-for"), "198.51.100.4");
    assert_eq!(header("x-forwarded-proto"), "https");
    assert_eq!(header("x-forwarded-host"), "example.com");

    // Its answer is an upgrade we accept, with the key we sent.
    let answer = &ws.get_ref().output;
    let expect = Expect::new(&req, &opts);
    assert_eq!(expect.accept, accept_key(opts.key.as_bytes()));
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (response, len) = parse_response(answer, &mut headers, &Limits::default(), &expect)
        .expect("valid 101")
        .expect("complete");
    assert_eq!(len, answer.len());
    let upgraded = BackendResponse::Upgraded {
        protocol: Some("chat"),
        extensions: None,
    };
    assert_eq!(response, upgraded);
}

#[test]
fn tungstenite_server_and_our_check_agree_on_a_wrong_key() {
    let (client_bytes, _) = tungstenite_request();
    let mut client_headers = [httparse::EMPTY_HEADER; 64];
    let (req, _) = parse_request(&client_bytes, &mut client_headers, &Limits::default())
        .unwrap()
        .unwrap();
    let opts = backend_opts();
    let ws = tungstenite::accept(Mem::with_input(build_backend_request(&req, &opts))).unwrap();
    // Expecting the answer to some other key fails.
    let other = BackendRequest {
        key: "dGhlIHNhbXBsZSBub25jZQ==",
        ..opts
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let answer = &ws.get_ref().output;
    let result = parse_response(
        answer,
        &mut headers,
        &Limits::default(),
        &Expect::new(&req, &other),
    );
    assert_eq!(
        result,
        Err(wsedge::proto::handshake::ResponseError::AcceptMismatch)
    );
}

/// Starts tungstenite's client until it waits for an answer; returns the
/// handshake and the request it wrote.
fn start_client() -> (
    tungstenite::handshake::MidHandshake<tungstenite::ClientHandshake<Mem>>,
    Vec<u8>,
) {
    let mut request = "ws://example.com/chat".into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("chat"));
    match tungstenite::client(request, Mem::default()) {
        Err(HandshakeError::Interrupted(mut mid)) => {
            let written = std::mem::take(&mut mid.get_mut().get_mut().output);
            (mid, written)
        }
        other => panic!("client did not wait for the answer: {other:?}"),
    }
}

#[test]
fn tungstenite_client_accepts_our_switching_response() {
    let (mut mid, written) = start_client();
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let (req, _) = parse_request(&written, &mut headers, &Limits::default())
        .unwrap()
        .unwrap();
    let answer = build_switching_response(&req.accept_key(), Some("chat"), None);
    mid.get_mut().get_mut().input = answer;
    let (_ws, response) = mid.handshake().expect("tungstenite accepts our 101");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
}

#[test]
fn tungstenite_client_rejects_a_wrong_accept() {
    let (mut mid, _) = start_client();
    let wrong = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    mid.get_mut().get_mut().input = build_switching_response(&wrong, Some("chat"), None);
    assert!(matches!(mid.handshake(), Err(HandshakeError::Failure(_))));
}

#[test]
fn tungstenite_client_reads_our_rejection() {
    let (mut mid, _) = start_client();
    let rejection = Rejection::UnsupportedVersion;
    mid.get_mut().get_mut().input = rejection.response();
    match mid.handshake() {
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
            assert_eq!(response.headers()["sec-websocket-version"], "13");
            assert_eq!(response.headers()["upgrade"], "websocket");
            let body = response.body().as_deref().unwrap();
            assert_eq!(body, format!("{}\n", rejection.reason()).as_bytes());
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}
