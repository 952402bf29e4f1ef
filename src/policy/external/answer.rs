//! The service's answer, sans-IO: find the end of its head as bytes arrive,
//! skip interim 1xx heads, parse the final one once and decide.

use httparse::{EMPTY_HEADER, Response};

use super::request::is_safe_value;
use super::{Decision, Failure};
use crate::proto::handshake::{HeadKind, HeadScanner, Scan};
use crate::proto::token::is_token;

/// The most bytes of answer heads read (interim heads included).
pub(super) const HEAD_LIMIT: usize = 16 * 1024;

/// The most header lines one head may have.
const MAX_HEADERS: usize = 64;

/// Reads an answer from a buffer that grows between calls.
#[derive(Debug, Clone)]
pub(super) struct AnswerReader {
    /// Where the current head starts in the buffer (after interim heads).
    start: usize,
    scanner: HeadScanner,
}

impl AnswerReader {
    pub(super) fn new() -> Self {
        Self {
            start: 0,
            scanner: HeadScanner::new(HeadKind::Response),
        }
    }

    /// Looks at what `buf` holds now (the buffer of the earlier calls,
    /// possibly longer): `None` until the final head is complete or cannot
    /// be; then the decision, with the headers named in `copy` when it
    /// allows.
    pub(super) fn feed(
        &mut self,
        buf: &[u8],
        copy: &[String],
    ) -> Option<Result<Decision, Failure>> {
        loop {
            let rest = buf.get(self.start..)?;
            let limit = HEAD_LIMIT.saturating_sub(self.start);
            let len = match self.scanner.scan(rest, limit) {
                Scan::Partial => return None,
                Scan::TooLarge => return Some(Err(Failure::HeadTooLarge)),
                Scan::Malformed => return Some(Err(Failure::Malformed("not an HTTP/1.x answer"))),
                Scan::Complete(len) => len,
            };
            match decide(&rest[..len], copy) {
                Head::Interim => {
                    self.start += len;
                    self.scanner = HeadScanner::new(HeadKind::Response);
                }
                Head::Final(verdict) => return Some(verdict),
            }
        }
    }
}

/// What one complete head says.
#[derive(Debug)]
enum Head {
    /// A 1xx other than 101 (`100 Continue`, `103 Early Hints`): the final
    /// answer follows.
    Interim,
    /// The decision, or why there is none.
    Final(Result<Decision, Failure>),
}

/// Parses one complete head and decides.
fn decide(head: &[u8], copy: &[String]) -> Head {
    let mut headers = [EMPTY_HEADER; MAX_HEADERS];
    let mut response = Response::new(&mut headers);
    let status = match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => response.code,
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Final(Err(Failure::Malformed("over 64 headers")));
        }
        Err(_) => None,
    };
    let Some(status) = status else {
        return Head::Final(Err(Failure::Malformed("head does not parse")));
    };
    let verdict = match status {
        100 | 102..=199 => return Head::Interim,
        200..=299 => Ok(Decision::Allow(copied(response.headers, copy))),
        401 | 403 => Ok(Decision::Deny(status)),
        other => Err(Failure::Status(other)),
    };
    Head::Final(verdict)
}

/// The answer's headers named in `copy`: for each configured name (once,
/// case-insensitively; tokens only) in configuration order, every
/// occurrence in the answer's order, named as configured. Values that could
/// not go into a request head as they are are left out.
fn copied(headers: &[httparse::Header<'_>], copy: &[String]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, name) in copy.iter().enumerate() {
        let repeated = copy[..i].iter().any(|n| n.eq_ignore_ascii_case(name));
        if repeated || !is_token(name.as_bytes()) {
            continue;
        }
        for h in headers {
            if h.name.eq_ignore_ascii_case(name) && is_safe_value(h.value) {
                out.push((name.clone(), h.value.to_vec()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Feeds `answer` `step` bytes at a time; the first verdict.
    fn read_in_steps(
        answer: &[u8],
        step: usize,
        names: &[String],
    ) -> Option<Result<Decision, Failure>> {
        let mut reader = AnswerReader::new();
        let mut n = 0;
        loop {
            if let Some(v) = reader.feed(&answer[..n], names) {
                return Some(v);
            }
            if n == answer.len() {
                return None;
            }
            n = (n + step).min(answer.len());
        }
    }

    #[test]
    fn decides_by_status() {
        let none = copy(&[]);
        let cases: &[(&[u8], Result<Decision, Failure>)] = &[
            (b"HTTP/1.1 200 OK\r\n\r\n", Ok(Decision::Allow(vec![]))),
            (
                b"HTTP/1.0 204 No Content\r\n\r\n",
                Ok(Decision::Allow(vec![])),
            ),
            (b"HTTP/1.1 299 Whatever\n\n", Ok(Decision::Allow(vec![]))),
            (
                b"HTTP/1.1 401 Unauthorized\r\n\r\n",
                Ok(Decision::Deny(401)),
            ),
            (b"HTTP/1.1 403 Forbidden\r\n\r\n", Ok(Decision::Deny(403))),
            (b"HTTP/1.1 500 Oops\r\n\r\n", Err(Failure::Status(500))),
            (b"HTTP/1.1 404 Nope\r\n\r\n", Err(Failure::Status(404))),
            (
                b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n",
                Err(Failure::Status(302)),
            ),
            (b"HTTP/1.1 101 Switching\r\n\r\n", Err(Failure::Status(101))),
        ];
        for (answer, want) in cases {
            for step in [1, 3, answer.len()] {
                assert_eq!(
                    read_in_steps(answer, step, &none).as_ref(),
                    Some(want),
                    "{:?} in steps of {step}",
                    String::from_utf8_lossy(answer)
                );
            }
        }
    }

    #[test]
    fn interim_heads_are_skipped() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                       HTTP/1.1 200 OK\r\nX-User: ann\r\n\r\nbody";
        for step in [1, 7, answer.len()] {
            assert_eq!(
                read_in_steps(answer, step, &copy(&["x-user"])),
                Some(Ok(Decision::Allow(vec![(
                    "x-user".into(),
                    b"ann".to_vec()
                )])))
            );
        }
    }

    #[test]
    fn copies_the_named_headers_only() {
        let answer = b"HTTP/1.1 200 OK\r\nX-User: ann\r\nX-Secret: s\r\nx-role: a\r\n\
                       X-Role:  b \r\nX-Tab: a\tb\r\n\r\n";
        let names = copy(&[
            "X-Role",
            "X-User",
            "x-user",
            "X-Tab",
            "X-Missing",
            "Bad Name",
        ]);
        let want = Decision::Allow(vec![
            ("X-Role".into(), b"a".to_vec()),
            ("X-Role".into(), b"b".to_vec()),
            ("X-User".into(), b"ann".to_vec()),
            ("X-Tab".into(), b"a\tb".to_vec()),
        ]);
        assert_eq!(read_in_steps(answer, answer.len(), &names), Some(Ok(want)));
        // A control character in a value: httparse refuses the head.
        let bad = b"HTTP/1.1 200 OK\r\nX-User: a\x01b\r\n\r\n";
        assert!(matches!(
            read_in_steps(bad, bad.len(), &names),
            Some(Err(Failure::Malformed(_)))
        ));
    }

    #[test]
    fn unsafe_values_are_not_copied() {
        // A value httparse lets through but a head must not carry as is.
        let headers = [
            httparse::Header {
                name: "X-A",
                value: b"ok",
            },
            httparse::Header {
                name: "X-A",
                value: b"bad\x7f",
            },
            httparse::Header {
                name: "X-A",
                value: b"cr\rlf\n",
            },
        ];
        assert_eq!(
            copied(&headers, &copy(&["x-a"])),
            vec![("x-a".into(), b"ok".to_vec())]
        );
    }

    #[test]
    fn garbage_and_limits() {
        let none = copy(&[]);
        for answer in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"\x16\x03\x01\x00",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        ] {
            assert!(
                matches!(
                    read_in_steps(answer, 1, &none),
                    Some(Err(Failure::Malformed(_)))
                ),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
        // Not yet complete: no verdict.
        assert_eq!(
            read_in_steps(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", 1, &none),
            None
        );

        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            read_in_steps(&many, many.len(), &none),
            Some(Err(Failure::Malformed("over 64 headers")))
        );

        let mut long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        long.resize(HEAD_LIMIT, b'a');
        assert_eq!(
            read_in_steps(&long, 1000, &none),
            Some(Err(Failure::HeadTooLarge))
        );
        // The limit counts interim heads too.
        let mut interim = Vec::new();
        while interim.len() < HEAD_LIMIT {
            interim.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        interim.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(
            read_in_steps(&interim, 4096, &none),
            Some(Err(Failure::HeadTooLarge))
        );
    }
}
