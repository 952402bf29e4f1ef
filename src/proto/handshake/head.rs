//! Finding the end of a request or response head as it arrives, sans-IO.
//!
//! A head can come in any number of reads, down to one byte each. Running
//! the full parser after every read re-reads the whole head each time:
//! quadratic in its length. A [`HeadScanner`] keeps its place instead. It
//! looks at each byte once, checks the start line as it goes (a TLS
//! ClientHello or an SSH banner is refused at its first byte, not when the
//! size limit or the timeout is reached), and says when the head is
//! complete, so that [`parse_request`](super::parse_request) or
//! [`parse_response`](super::parse_response) runs once.
//!
//! The scanner never accepts less than the parsers: it flags as
//! [`Scan::Malformed`] only bytes the parsers refuse too, and the length it
//! reports with [`Scan::Complete`] is the parsers' head length (both are
//! checked against `httparse` in the tests).

use super::super::token::is_tchar;

/// Which head is scanned: their start lines differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadKind {
    /// A request: `method SP target SP HTTP/1.x CRLF`.
    Request,
    /// A response: `HTTP/1.x SP status ...CRLF`.
    Response,
}

/// What the bytes scanned so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No end of the head yet and nothing wrong yet: read more.
    Partial,
    /// The head is `buf[..len]`, its final empty line included: parse it.
    Complete(usize),
    /// `limit` bytes without the end of the head.
    TooLarge,
    /// A byte no valid head has there (in the start line, or a CR not
    /// followed by LF at the start of a line): the head can never parse.
    Malformed,
}

/// Finds the end of a head in a buffer that grows between calls, looking
/// at each byte once and checking the start line as it arrives, so the full
/// parser runs once per head (not after every read).
///
/// ```
/// use wsedge::proto::handshake::{HeadKind, HeadScanner, Scan};
///
/// let mut scanner = HeadScanner::new(HeadKind::Request);
/// let mut buf = b"GET / HTTP/1.1\r\nHost: a".to_vec();
/// assert_eq!(scanner.scan(&buf, 1024), Scan::Partial);
/// buf.extend_from_slice(b"\r\n\r\nframes");
/// assert_eq!(scanner.scan(&buf, 1024), Scan::Complete(buf.len() - 6));
/// ```
#[derive(Debug, Clone)]
pub struct HeadScanner {
    kind: HeadKind,
    state: State,
    /// Bytes of the buffer already examined; the next call starts here.
    pos: usize,
}

/// `HTTP/1.` before the minor version digit.
const VERSION: &[u8; 7] = b"HTTP/1.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the start line: empty lines are skipped (as `httparse` does).
    Lead,
    /// A CR before the start line; LF must follow.
    LeadCr,
    /// The request method; `true` once it has a character.
    Method(bool),
    /// The request target; `true` once it has a character.
    Target(bool),
    /// `HTTP/1.`, this many bytes of it matched.
    Version(u8),
    /// The minor version digit.
    Minor,
    /// After a request line's version: CR or LF.
    RequestLineEnd,
    /// A CR ending the request line; LF must follow.
    RequestLineCr,
    /// The rest of a status line, up to its LF.
    StatusRest,
    /// At the start of a header line (or of the final empty line).
    LineStart,
    /// A CR at the start of a line; LF must follow, ending the head.
    LineStartCr,
    /// Inside a header line, up to its LF.
    InLine,
    /// The head ends before this offset.
    Done(usize),
    /// The head can never parse.
    Bad,
}

impl HeadScanner {
    /// A scanner at the start of a head of `kind`.
    pub fn new(kind: HeadKind) -> Self {
        Self {
            kind,
            state: State::Lead,
            pos: 0,
        }
    }

    /// How many bytes of the buffer have been examined: each is looked at
    /// once, however many calls it takes.
    pub fn scanned(&self) -> usize {
        self.pos
    }

    /// Scans what `buf` holds beyond the bytes examined by earlier calls,
    /// up to `limit` bytes in all.
    ///
    /// `buf` must be the buffer of the earlier calls, possibly longer: the
    /// bytes already examined are not looked at again. The verdicts agree
    /// with [`parse_request`](super::parse_request)'s `max_head_bytes`:
    /// a head of exactly `limit` bytes is complete, and [`Scan::TooLarge`]
    /// comes once `buf` holds `limit` bytes without the end of the head.
    /// [`Scan::Complete`] and [`Scan::Malformed`] are final: later calls
    /// repeat them.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Scan {
        let end = buf.len().min(limit);
        while self.pos < end {
            let b = buf[self.pos];
            let next = match self.state {
                State::Done(_) | State::Bad => break,
                State::InLine | State::StatusRest => {
                    // The bulk of a head: jump to the end of the line.
                    match buf[self.pos..end].iter().position(|&b| b == b'\n') {
                        Some(i) => {
                            self.pos += i + 1;
                            self.state = State::LineStart;
                        }
                        None => self.pos = end,
                    }
                    continue;
                }
                State::Lead => match b {
                    b'\r' => State::LeadCr,
                    b'\n' => State::Lead,
                    // The start line begins: look at this byte again there.
                    _ => {
                        self.state = match self.kind {
                            HeadKind::Request => State::Method(false),
                            HeadKind::Response => State::Version(0),
                        };
                        continue;
                    }
                },
                State::LeadCr | State::RequestLineCr | State::LineStartCr if b != b'\n' => {
                    State::Bad
                }
                State::LeadCr => State::Lead,
                State::RequestLineCr => State::LineStart,
                State::LineStartCr => State::Done(self.pos + 1),
                State::Method(any) => match b {
                    b' ' if any => State::Target(false),
                    _ if is_tchar(b) => State::Method(true),
                    _ => State::Bad,
                },
                State::Target(any) => match b {
                    b' ' if any => State::Version(0),
                    // `httparse`'s URI bytes: visible ASCII and obs-text.
                    b'!'..=b'~' | 0x80..=0xff => State::Target(true),
                    _ => State::Bad,
                },
                State::Version(n) if b == VERSION[usize::from(n)] => match n + 1 {
                    7 => State::Minor,
                    n => State::Version(n),
                },
                State::Version(_) => State::Bad,
                State::Minor => match (b, self.kind) {
                    (b'0' | b'1', HeadKind::Request) => State::RequestLineEnd,
                    (b'0' | b'1', HeadKind::Response) => State::StatusRest,
                    _ => State::Bad,
                },
                State::RequestLineEnd => match b {
                    b'\r' => State::RequestLineCr,
                    b'\n' => State::LineStart,
                    _ => State::Bad,
                },
                State::LineStart => match b {
                    b'\r' => State::LineStartCr,
                    b'\n' => State::Done(self.pos + 1),
                    _ => State::InLine,
                },
            };
            self.state = next;
            self.pos += 1;
        }
        match self.state {
            State::Done(len) => Scan::Complete(len),
            State::Bad => Scan::Malformed,
            _ if self.pos >= limit => Scan::TooLarge,
            _ => Scan::Partial,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    fn scan_all(kind: HeadKind, buf: &[u8], limit: usize) -> Scan {
        HeadScanner::new(kind).scan(buf, limit)
    }

    /// Feeds `buf` in pieces of `step` bytes; the verdict of the last call.
    fn scan_in_steps(kind: HeadKind, buf: &[u8], limit: usize, step: usize) -> Scan {
        let mut s = HeadScanner::new(kind);
        let mut verdict = Scan::Partial;
        let mut n = 0;
        while n < buf.len() {
            n = (n + step).min(buf.len());
            verdict = s.scan(&buf[..n], limit);
            if verdict != Scan::Partial {
                break;
            }
        }
        verdict
    }

    #[test]
    fn finds_the_end_of_heads() {
        assert_eq!(
            scan_all(HeadKind::Request, REQUEST, 1024),
            Scan::Complete(REQUEST.len())
        );
        assert_eq!(
            scan_all(HeadKind::Response, RESPONSE, 1024),
            Scan::Complete(RESPONSE.len())
        );
        // Bare LF line ends, leading empty lines, bytes after the head.
        let lf = b"\r\n\nGET / HTTP/1.0\nHost: a\n\nrest";
        assert_eq!(
            scan_all(HeadKind::Request, lf, 1024),
            Scan::Complete(lf.len() - 4)
        );
        let short = b"HTTP/1.1 204\r\n\r\n";
        assert_eq!(
            scan_all(HeadKind::Response, short, 1024),
            Scan::Complete(short.len())
        );
    }

    #[test]
    fn garbage_is_malformed_at_its_first_byte() {
        let cases: &[(HeadKind, &[u8])] = &[
            (HeadKind::Request, b"\x16\x03\x01\x02\x00"),
            (HeadKind::Request, b"SSH-2.0-OpenSSH_9.6\r"),
            (HeadKind::Request, b" GET"),
            (HeadKind::Request, b"GET  /"),
            (HeadKind::Request, b"GET / HTTP/2"),
            (HeadKind::Request, b"GET / HTTP/1.2"),
            (HeadKind::Request, b"GET / HTTP/1.1 "),
            (HeadKind::Request, b"GET /\x7f"),
            (HeadKind::Request, b"\rX"),
            (HeadKind::Request, b"GET / HTTP/1.1\r\nHost: a\r\n\rX"),
            (HeadKind::Response, b"SSH-2.0"),
            (HeadKind::Response, b"HTTP/1.2 200 OK\r\n"),
        ];
        for &(kind, bytes) in cases {
            assert_eq!(
                scan_all(kind, bytes, 1024),
                Scan::Malformed,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            // httparse refuses them too.
            let mut h = [httparse::EMPTY_HEADER; 8];
            match kind {
                HeadKind::Request => assert!(httparse::Request::new(&mut h).parse(bytes).is_err()),
                HeadKind::Response => {
                    assert!(httparse::Response::new(&mut h).parse(bytes).is_err())
                }
            }
        }
    }

    #[test]
    fn size_limit_matches_the_parsers() {
        let n = REQUEST.len();
        assert_eq!(scan_all(HeadKind::Request, REQUEST, n), Scan::Complete(n));
        assert_eq!(scan_all(HeadKind::Request, REQUEST, n - 1), Scan::TooLarge);
        assert_eq!(
            scan_all(HeadKind::Request, &REQUEST[..n - 1], n - 1),
            Scan::TooLarge
        );
        assert_eq!(
            scan_all(HeadKind::Request, &REQUEST[..n - 2], n - 1),
            Scan::Partial
        );
    }

    #[test]
    fn verdicts_are_final() {
        let mut s = HeadScanner::new(HeadKind::Request);
        let mut buf = REQUEST.to_vec();
        assert_eq!(s.scan(&buf, 1024), Scan::Complete(REQUEST.len()));
        buf.extend_from_slice(b"\x00\x00");
        assert_eq!(s.scan(&buf, 1024), Scan::Complete(REQUEST.len()));
        let mut s = HeadScanner::new(HeadKind::Request);
        assert_eq!(s.scan(b"\x00", 1024), Scan::Malformed);
        assert_eq!(s.scan(b"\x00GET / HTTP/1.1\r\n\r\n", 1024), Scan::Malformed);
    }

    /// The 8 KiB head of a client that sends it a byte per read: each byte
    /// is examined once, and bytes already examined are not looked at again
    /// (they are overwritten with garbage here, which a rescan would see).
    #[test]
    fn one_byte_at_a_time_is_linear() {
        let mut head = b"GET /".to_vec();
        head.resize(8 << 10, b'a');
        head.extend_from_slice(b" HTTP/1.1\r\nHost: example.com\r\nX-Pad: ");
        head.resize(16 << 10, b'b');
        head.extend_from_slice(b"\r\n\r\n");
        let mut s = HeadScanner::new(HeadKind::Request);
        let mut buf = Vec::new();
        let mut calls = 0;
        for (i, &b) in head.iter().enumerate() {
            buf.push(b);
            calls += 1;
            let before = s.scanned();
            let verdict = s.scan(&buf, 64 << 10);
            assert_eq!(s.scanned() - before, 1, "examined more than the new byte");
            if i + 1 < head.len() {
                assert_eq!(verdict, Scan::Partial, "at {i}");
            } else {
                assert_eq!(verdict, Scan::Complete(head.len()));
            }
            buf[i] = 0; // poison what was examined
        }
        assert_eq!(calls, head.len());
        assert_eq!(s.scanned(), head.len());
    }

    fn parse(kind: HeadKind, buf: &[u8]) -> Result<Option<usize>, httparse::Error> {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let status = match kind {
            HeadKind::Request => httparse::Request::new(&mut h).parse(buf),
            HeadKind::Response => httparse::Response::new(&mut h).parse(buf),
        };
        status.map(|s| match s {
            httparse::Status::Complete(n) => Some(n),
            httparse::Status::Partial => None,
        })
    }

    /// Heads that are mostly valid, with a byte or two changed.
    fn heads() -> impl Strategy<Value = (HeadKind, Vec<u8>)> {
        let base = prop_oneof![
            Just((HeadKind::Request, REQUEST.to_vec())),
            Just((HeadKind::Response, RESPONSE.to_vec())),
            Just((
                HeadKind::Request,
                b"\r\nGET /a?b=c HTTP/1.0\nX: y\n\n".to_vec()
            )),
            Just((
                HeadKind::Response,
                b"HTTP/1.0 403 Forbidden\r\nA: b\r\n\r\nbody".to_vec()
            )),
        ];
        let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3);
        let bytes = prop::sample::select(&b"\r\n :/H\x00\x7fa1."[..]);
        (base, edits, prop::collection::vec(bytes, 0..3)).prop_map(
            |((kind, mut head), edits, extra)| {
                for (i, b) in edits {
                    let i = i.index(head.len());
                    head[i] = b;
                }
                head.extend(extra);
                (kind, head)
            },
        )
    }

    proptest! {
        /// Malformed only where httparse refuses; complete exactly where
        /// httparse is complete (or refuses).
        #[test]
        fn agrees_with_httparse((kind, head) in heads()) {
            let limit = 1 << 20;
            match scan_all(kind, &head, limit) {
                Scan::Malformed => prop_assert!(parse(kind, &head).is_err()),
                Scan::Complete(n) => {
                    let parsed = parse(kind, &head);
                    prop_assert!(parsed == Ok(Some(n)) || parsed.is_err(), "{:?}", parsed);
                }
                Scan::Partial => prop_assert!(!matches!(parse(kind, &head), Ok(Some(_)))),
                Scan::TooLarge => prop_assert!(false, "over a 1 MiB limit"),
            }
            if let Ok(Some(n)) = parse(kind, &head) {
                prop_assert_eq!(scan_all(kind, &head, limit), Scan::Complete(n));
            }
        }

        /// The verdict does not depend on how the bytes were split.
        #[test]
        fn split_does_not_matter((kind, head) in heads(), step in 1usize..16, limit in 8usize..128) {
            prop_assert_eq!(
                scan_in_steps(kind, &head, limit, step),
                scan_all(kind, &head, limit)
            );
        }

        #[test]
        fn never_panics(kind in prop_oneof![Just(HeadKind::Request), Just(HeadKind::Response)],
                        buf in prop::collection::vec(any::<u8>(), 0..256),
                        limit in 0usize..300) {
            let _ = scan_in_steps(kind, &buf, limit, 3);
        }
    }
}
