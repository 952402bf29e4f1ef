//! A backend's final answer other than 101, as relayed to the client: how
//! its body is framed (RFC 9112 §6.3), reading that body within a limit,
//! and the head the client gets with it. Sans-IO.
//!
//! The proxy reads the whole (bounded) body before answering, so the client
//! always gets an exact `Content-Length` and `Connection: close`, whatever
//! the backend's framing was: a chunked body is de-chunked (extensions and
//! trailers dropped), a body that runs to the end of the connection gets
//! its length, and a body cut at the limit is announced with the length
//! that is actually sent.

use std::fmt;

use httparse::Header;

use super::super::token::{header_tokens, header_values, trim_ows};
use super::chunked::{ChunkError, Chunked, ChunkedDecoder};
use super::{put_header, reason_phrase};

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: `1xx`, `204 No Content` and `304 Not Modified` (the request
    /// was a `GET`, never a `HEAD`).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

/// Why a backend's answer cannot be relayed; the client gets a 502
/// ([`BodyError::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BodyError {
    /// The head does not parse (only for a head that was not checked with
    /// [`parse_response`](super::parse_response) first).
    Malformed,
    /// A `Content-Length` that is not a decimal number that fits 64 bits.
    InvalidLength,
    /// `Content-Length` values that differ.
    ConflictingLengths,
    /// Both `Transfer-Encoding` and `Content-Length` (a smuggling attempt,
    /// RFC 9112 §6.3 says to treat it as an error).
    LengthWithTransferEncoding,
    /// A `Transfer-Encoding` other than exactly `chunked`.
    UnsupportedTransferEncoding,
    /// A chunked body that does not decode.
    Chunk(ChunkError),
}

impl BodyError {
    /// The HTTP status the client gets: always 502 Bad Gateway.
    pub const fn status(&self) -> u16 {
        502
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed => f.write_str("malformed HTTP response from backend"),
            Self::InvalidLength => f.write_str("invalid Content-Length"),
            Self::ConflictingLengths => f.write_str("conflicting Content-Length values"),
            Self::LengthWithTransferEncoding => {
                f.write_str("both Content-Length and Transfer-Encoding")
            }
            Self::UnsupportedTransferEncoding => {
                f.write_str("Transfer-Encoding other than chunked")
            }
            Self::Chunk(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BodyError {}

impl From<ChunkError> for BodyError {
    fn from(e: ChunkError) -> Self {
        Self::Chunk(e)
    }
}

/// How the body of a response with `status` and `headers` is framed
/// (RFC 9112 §6.3).
///
/// # Errors
///
/// A [`BodyError`] for an invalid or ambiguous framing; not checked for
/// statuses that have no body.
pub fn response_framing(status: u16, headers: &[Header<'_>]) -> Result<Framing, BodyError> {
    if matches!(status, 100..=199 | 204 | 304) {
        return Ok(Framing::Empty);
    }
    let mut lengths = header_values(headers, "content-length").peekable();
    let mut codings = header_tokens(headers, "transfer-encoding");
    if header_values(headers, "transfer-encoding").next().is_some() {
        if lengths.peek().is_some() {
            return Err(BodyError::LengthWithTransferEncoding);
        }
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(BodyError::UnsupportedTransferEncoding),
        };
    }
    let mut length = None;
    for value in lengths {
        // `Content-Length: 5, 5` and repeated headers are one length when
        // all agree (RFC 9110 §8.6).
        for element in value.split(|&b| b == b',') {
            let n = parse_length(trim_ows(element)).ok_or(BodyError::InvalidLength)?;
            match length {
                Some(m) if m != n => return Err(BodyError::ConflictingLengths),
                _ => length = Some(n),
            }
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// `1*DIGIT` as a `u64`.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A backend's answer (its head), ready to be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayedAnswer<'h, 'b> {
    status: u16,
    reason: &'b str,
    headers: &'h [Header<'b>],
    framing: Framing,
}

/// Headers the client never gets from a relayed answer: hop-by-hop ones
/// (RFC 9110 §7.6.1) and the framing, which the proxy writes itself.
const NOT_RELAYED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

impl<'h, 'b> RelayedAnswer<'h, 'b> {
    /// Parses a complete response head (`head` ends with its empty line;
    /// `headers` is the header storage) and its body's framing.
    ///
    /// # Errors
    ///
    /// [`BodyError::Malformed`] if the head does not parse completely; the
    /// framing's errors from [`response_framing`].
    pub fn parse(head: &'b [u8], headers: &'h mut [Header<'b>]) -> Result<Self, BodyError> {
        let mut resp = httparse::Response::new(headers);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(n)) if n == head.len() => {}
            _ => return Err(BodyError::Malformed),
        }
        let httparse::Response {
            code,
            reason,
            headers,
            ..
        } = resp;
        let status = code.ok_or(BodyError::Malformed)?;
        Ok(Self {
            status,
            reason: reason.unwrap_or_default(),
            framing: response_framing(status, headers)?,
            headers,
        })
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// How the body that follows the head is framed.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// The head the client gets before a body of `body_len` bytes:
    /// `HTTP/1.1`, the backend's status and reason, its end-to-end headers
    /// byte for byte (hop-by-hop headers, those its `Connection` names, and
    /// its framing left out), `Content-Length: body_len` (not for
    /// [`Framing::Empty`], where a `304` keeps its own) and
    /// `Connection: close`.
    pub fn head(&self, body_len: usize) -> Vec<u8> {
        let size: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum();
        let mut out = Vec::with_capacity(size + 96);
        let reason = match self.reason {
            "" => reason_phrase(self.status),
            reason => reason,
        };
        out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", self.status).as_bytes());
        let named: Vec<&[u8]> = header_tokens(self.headers, "connection").collect();
        for h in self.headers {
            let keep_length = self.framing == Framing::Empty
                && self.status == 304
                && h.name.eq_ignore_ascii_case("content-length");
            let dropped = NOT_RELAYED.iter().any(|n| h.name.eq_ignore_ascii_case(n))
                || named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()));
            if !dropped || keep_length {
                put_header(&mut out, h.name, h.value);
            }
        }
        if self.framing != Framing::Empty {
            put_header(&mut out, "Content-Length", body_len.to_string().as_bytes());
        }
        put_header(&mut out, "Connection", b"close");
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Where reading a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// The body goes on: feed more (or [`BodyReader::at_end_of_stream`]).
    NeedMore,
    /// The whole body is in the output.
    Complete,
    /// The output holds the limit, and the body is longer: it is cut.
    Truncated,
}

/// Reads a body of a given [`Framing`] from the bytes fed to it, keeping
/// at most `max` bytes of it (sans-IO: the caller reads the socket).
#[derive(Debug, Clone)]
pub struct BodyReader {
    framing: Framing,
    /// Bytes of a `Length` body still to come.
    left: u64,
    chunked: ChunkedDecoder,
    max: usize,
    state: BodyState,
}

impl BodyReader {
    /// A reader at the start of a body framed by `framing`, keeping at most
    /// `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Self {
        let (left, state) = match framing {
            Framing::Empty | Framing::Length(0) => (0, BodyState::Complete),
            Framing::Length(n) => (n, BodyState::NeedMore),
            Framing::Chunked | Framing::UntilClose => (0, BodyState::NeedMore),
        };
        Self {
            framing,
            left,
            chunked: ChunkedDecoder::new(),
            max,
            state,
        }
    }

    /// Where the body stands.
    pub fn state(&self) -> BodyState {
        self.state
    }

    /// Feeds the next bytes from the backend; appends body bytes to `body`
    /// (which holds the bytes of earlier calls) up to the limit. Bytes after
    /// the end of the body are ignored.
    ///
    /// # Errors
    ///
    /// A [`BodyError`] when a chunked body does not decode.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<BodyState, BodyError> {
        if self.state != BodyState::NeedMore {
            return Ok(self.state);
        }
        let max = self.max;
        let mut over = false;
        let mut keep = |data: &[u8]| {
            let room = max.saturating_sub(body.len());
            over |= data.len() > room;
            body.extend_from_slice(&data[..data.len().min(room)]);
        };
        self.state = match self.framing {
            Framing::Empty => BodyState::Complete,
            Framing::Length(_) => {
                let n = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                keep(&input[..n]);
                self.left -= n as u64;
                match self.left {
                    0 if !over => BodyState::Complete,
                    // The rest was announced: the cut is certain at the limit.
                    _ if over || body.len() >= max => BodyState::Truncated,
                    _ => BodyState::NeedMore,
                }
            }
            Framing::Chunked => match self.chunked.decode(input, &mut keep)? {
                _ if over => BodyState::Truncated,
                Chunked::Done(_) => BodyState::Complete,
                Chunked::NeedMore => BodyState::NeedMore,
            },
            Framing::UntilClose => {
                keep(input);
                match over {
                    true => BodyState::Truncated,
                    false => BodyState::NeedMore,
                }
            }
        };
        Ok(self.state)
    }

    /// The backend's stream ended: `true` when that completes the body
    /// (it runs to the end of the connection, or was already complete),
    /// `false` when it was cut short.
    pub fn at_end_of_stream(&mut self) -> bool {
        if self.state == BodyState::NeedMore && self.framing == Framing::UntilClose {
            self.state = BodyState::Complete;
        }
        self.state != BodyState::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn framing_of(status: u16, headers: &[(&str, &str)]) -> Result<Framing, BodyError> {
        let headers: Vec<Header<'_>> = headers
            .iter()
            .map(|&(name, value)| Header {
                name,
                value: value.as_bytes(),
            })
            .collect();
        response_framing(status, &headers)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        use BodyError::*;
        use Framing::*;
        let cl = |v| ("Content-Length", v);
        let te = |v| ("Transfer-Encoding", v);
        assert_eq!(framing_of(204, &[cl("10")]), Ok(Empty));
        assert_eq!(framing_of(304, &[te("chunked")]), Ok(Empty));
        assert_eq!(framing_of(103, &[]), Ok(Empty));
        assert_eq!(framing_of(200, &[]), Ok(UntilClose));
        assert_eq!(framing_of(403, &[cl("10")]), Ok(Length(10)));
        assert_eq!(framing_of(403, &[cl(" 0 ")]), Ok(Length(0)));
        assert_eq!(framing_of(403, &[cl("7, 7"), cl("7")]), Ok(Length(7)));
        assert_eq!(
            framing_of(403, &[cl("7"), cl("8")]),
            Err(ConflictingLengths)
        );
        assert_eq!(framing_of(403, &[cl("7,8")]), Err(ConflictingLengths));
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "0x10",
            "1 2",
            "7,",
            "18446744073709551616",
        ] {
            assert_eq!(framing_of(403, &[cl(bad)]), Err(InvalidLength), "{bad:?}");
        }
        assert_eq!(
            framing_of(403, &[cl("18446744073709551615")]),
            Ok(Length(u64::MAX))
        );
        assert_eq!(framing_of(403, &[te("chunked")]), Ok(Chunked));
        assert_eq!(framing_of(403, &[te(" Chunked ")]), Ok(Chunked));
        assert_eq!(
            framing_of(403, &[te("chunked"), cl("5")]),
            Err(LengthWithTransferEncoding)
        );
        for bad in ["gzip", "gzip, chunked", "chunked, chunked", "", "identity"] {
            assert_eq!(
                framing_of(403, &[te(bad)]),
                Err(UnsupportedTransferEncoding),
                "{bad:?}"
            );
        }
        assert_eq!(
            framing_of(403, &[te("gzip"), te("chunked")]),
            Err(UnsupportedTransferEncoding)
        );
    }

    fn relayed_head(head: &[u8], body_len: usize) -> String {
        let mut h = [httparse::EMPTY_HEADER; 32];
        let answer = RelayedAnswer::parse(head, &mut h).unwrap();
        String::from_utf8(answer.head(body_len)).unwrap()
    }

    #[test]
    fn head_for_the_client() {
        let head = b"HTTP/1.0 403 Go Away\r\nX-A: 1\r\nConnection: keep-alive, X-Secret\r\n\
                     X-Secret: s\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
                     Trailer: X-T\r\nSet-Cookie: a=b\r\n\r\n";
        assert_eq!(
            relayed_head(head, 42),
            "HTTP/1.1 403 Go Away\r\nX-A: 1\r\nSet-Cookie: a=b\r\n\
             Content-Length: 42\r\nConnection: close\r\n\r\n"
        );
        let head = b"HTTP/1.1 500\r\nContent-Length: 99999\r\n\r\n";
        assert_eq!(
            relayed_head(head, 7),
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 7\r\nConnection: close\r\n\r\n"
        );
        let head = b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\nX: y\r\n\r\n";
        assert_eq!(
            relayed_head(head, 0),
            "HTTP/1.1 204 No Content\r\nX: y\r\nConnection: close\r\n\r\n"
        );
        let head = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            relayed_head(head, 0),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn parse_needs_a_whole_head() {
        let mut h = [httparse::EMPTY_HEADER; 4];
        assert_eq!(
            RelayedAnswer::parse(b"HTTP/1.1 403 No\r\n", &mut h),
            Err(BodyError::Malformed)
        );
        let mut h = [httparse::EMPTY_HEADER; 4];
        assert_eq!(
            RelayedAnswer::parse(b"HTTP/1.1 403 No\r\n\r\nbody", &mut h),
            Err(BodyError::Malformed)
        );
        let mut h = [httparse::EMPTY_HEADER; 4];
        let head = b"HTTP/1.1 403 No\r\nContent-Length: x\r\n\r\n";
        assert_eq!(
            RelayedAnswer::parse(head, &mut h),
            Err(BodyError::InvalidLength)
        );
    }

    /// Feeds `input` in pieces of `step`; the body kept and the final state
    /// (after the end of stream when `eof`).
    fn read(
        framing: Framing,
        max: usize,
        input: &[u8],
        step: usize,
        eof: bool,
    ) -> (Vec<u8>, BodyState) {
        let mut reader = BodyReader::new(framing, max);
        let mut body = Vec::new();
        for piece in input.chunks(step.max(1)) {
            if reader.feed(piece, &mut body).unwrap() != BodyState::NeedMore {
                break;
            }
        }
        if eof {
            reader.at_end_of_stream();
        }
        (body, reader.state())
    }

    #[test]
    fn bodies_end_where_their_framing_says() {
        use BodyState::*;
        assert_eq!(
            read(Framing::Empty, 10, b"junk", 1, false),
            (vec![], Complete)
        );
        assert_eq!(
            read(Framing::Length(0), 10, b"junk", 1, false),
            (vec![], Complete)
        );
        let (body, state) = read(Framing::Length(5), 10, b"hello, more", 3, false);
        assert_eq!((body.as_slice(), state), (&b"hello"[..], Complete));
        let (body, state) = read(Framing::Length(5), 10, b"hel", 3, true);
        assert_eq!(
            (body.as_slice(), state),
            (&b"hel"[..], NeedMore),
            "cut short"
        );
        let (body, state) = read(Framing::Length(50), 10, &[b'x'; 10], 4, false);
        assert_eq!(
            (body.len(), state),
            (10, Truncated),
            "cut at the limit at once"
        );
        let (body, state) = read(Framing::UntilClose, 10, b"0123456789", 4, true);
        assert_eq!((body.len(), state), (10, Complete), "exactly the limit");
        let (body, state) = read(Framing::UntilClose, 10, b"0123456789A", 4, false);
        assert_eq!((body.len(), state), (10, Truncated));
        let chunked = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (body, state) = read(Framing::Chunked, 10, chunked, 1, false);
        assert_eq!((body.as_slice(), state), (&b"abcde"[..], Complete));
        let (body, state) = read(Framing::Chunked, 5, chunked, 2, false);
        assert_eq!(
            (body.as_slice(), state),
            (&b"abcde"[..], Complete),
            "exactly the limit"
        );
        let (body, state) = read(Framing::Chunked, 4, chunked, 2, false);
        assert_eq!((body.as_slice(), state), (&b"abcd"[..], Truncated));
        let (_, state) = read(Framing::Chunked, 10, &chunked[..10], 2, true);
        assert_eq!(state, NeedMore, "cut short");
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut reader = BodyReader::new(Framing::Chunked, 100);
        let mut body = Vec::new();
        assert_eq!(
            reader.feed(b"zz\r\n", &mut body),
            Err(BodyError::Chunk(ChunkError::InvalidSize))
        );
    }

    proptest! {
        /// Any body, limit and split: the body kept is the body's first
        /// `max` bytes, and the state says whether it was cut.
        #[test]
        fn limit_and_split(data in prop::collection::vec(any::<u8>(), 0..400),
                           chunk in 1usize..50, max in 0usize..450, step in 1usize..40,
                           framing in 0..3) {
            let (framing, input, eof) = match framing {
                0 => (Framing::Length(data.len() as u64), data.clone(), false),
                1 => (Framing::UntilClose, data.clone(), true),
                _ => {
                    let mut enc = Vec::new();
                    for c in data.chunks(chunk) {
                        enc.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                        enc.extend_from_slice(c);
                        enc.extend_from_slice(b"\r\n");
                    }
                    enc.extend_from_slice(b"0\r\n\r\n");
                    (Framing::Chunked, enc, false)
                }
            };
            let (body, state) = read(framing, max, &input, step, eof);
            prop_assert_eq!(&body[..], &data[..data.len().min(max)]);
            let want = if data.len() > max { BodyState::Truncated } else { BodyState::Complete };
            prop_assert_eq!(state, want);
        }
    }
}
