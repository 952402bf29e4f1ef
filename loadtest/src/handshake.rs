//! The HTTP/1.1 upgrade (RFC 6455 §4), both sides, sans-IO.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 32;
/// A response or request head longer than this is refused.
pub const MAX_HEAD: usize = 16 * 1024;

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_for(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    STANDARD.encode(h.finalize())
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
pub fn new_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

/// Writes the client's upgrade request; `extra`: more header lines, each
/// ending in CRLF.
pub fn write_request(out: &mut Vec<u8>, host: &str, path: &str, key: &str, extra: &str) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Why the server's answer is not a valid upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered, but not with 101.
    Status(u16),
    /// 101, but a header is missing or wrong (which one).
    Invalid(&'static str),
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks the server's response. `Ok(Some(n))`: valid, the head took `n`
/// bytes (what follows is frame data). `Ok(None)`: need more bytes.
pub fn check_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Invalid("head too long")),
        Err(_) => return Err(HandshakeError::Invalid("malformed response")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let h = resp.headers;
    if !header(h, "upgrade").is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return Err(HandshakeError::Invalid("upgrade"));
    }
    if !header(h, "connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::Invalid("connection"));
    }
    let expected = accept_for(key.as_bytes());
    if header(h, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(expected.as_bytes()) {
        return Err(HandshakeError::Invalid("accept"));
    }
    Ok(Some(n))
}

/// The server's verdict on an upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Complete and valid: the head took this many bytes; answer with this.
    Upgrade { head_len: usize, response: Vec<u8> },
    /// Invalid: answer with this and close.
    Reject(Vec<u8>),
}

fn reject(status: &str) -> Request {
    Request::Reject(
        format!("HTTP/1.1 {status}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    )
}

/// Parses a client's upgrade request (`Ok(None)`: need more bytes).
pub fn parse_request(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return None,
        Ok(httparse::Status::Partial) => {
            return Some(reject("431 Request Header Fields Too Large"));
        }
        Err(_) => return Some(reject("400 Bad Request")),
    };
    if req.method != Some("GET") {
        return Some(reject("405 Method Not Allowed"));
    }
    let h = req.headers;
    let upgrade_ok = header(h, "upgrade").is_some_and(|v| has_token(v, "websocket"));
    let conn_ok = header(h, "connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade_ok || !conn_ok {
        return Some(reject("426 Upgrade Required"));
    }
    if header(h, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Some(reject("426 Upgrade Required"));
    }
    let Some(key) = header(h, "sec-websocket-key").map(<[u8]>::trim_ascii) else {
        return Some(reject("400 Bad Request"));
    };
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    response.extend_from_slice(accept_for(key).as_bytes());
    response.extend_from_slice(b"\r\n\r\n");
    Some(Request::Upgrade {
        head_len: n,
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_accept() {
        assert_eq!(
            accept_for(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn client_and_server_agree() {
        let key = new_key([7; 16]);
        let mut req = Vec::new();
        write_request(&mut req, "example:80", "/chat", &key, "");
        let Some(Request::Upgrade { head_len, response }) = parse_request(&req) else {
            panic!("request refused");
        };
        assert_eq!(head_len, req.len());
        let mut resp = response.clone();
        resp.extend_from_slice(b"\x81\x00");
        assert_eq!(check_response(&resp, &key), Ok(Some(response.len())));
        assert_eq!(check_response(&response[..20], &key), Ok(None));
        assert_eq!(
            check_response(&response, "AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(HandshakeError::Invalid("accept"))
        );
    }

    #[test]
    fn status_is_reported() {
        let r = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check_response(r, "x"), Err(HandshakeError::Status(502)));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Reject(_))
        ));
    }
}
