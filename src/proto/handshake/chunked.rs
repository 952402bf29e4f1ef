//! The chunked transfer coding (RFC 9112 §7.1), decoded as it arrives,
//! sans-IO.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! The decoder keeps its place between calls, so any split of the input
//! (down to one byte per call) decodes the same. Chunk extensions and
//! trailer fields are read and dropped. Limits: a chunk size has at most 16
//! hex digits (as in `httparse`), a chunk-size line at most 4 KiB,
//! extensions at most 16 KiB over the whole body, trailers at most 16 KiB;
//! line ends are CRLF.

use std::fmt;

/// Longest chunk-size line accepted (size, extensions, CRLF).
const MAX_LINE: usize = 4096;

/// Most bytes of chunk extensions accepted over one body.
const MAX_EXTENSIONS: usize = 16 << 10;

/// Largest trailer section accepted (the final CRLF included).
const MAX_TRAILERS: usize = 16 << 10;

/// Why a chunked body cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk-size line that does not start with a hex digit, or has a
    /// byte after the size that is neither `;`, whitespace before it, nor
    /// CRLF.
    InvalidSize,
    /// More than 16 hex digits of chunk size.
    SizeTooLong,
    /// A chunk-size line over 4 KiB (`MAX_LINE`).
    LineTooLong,
    /// More than 16 KiB of chunk extensions over the body (`MAX_EXTENSIONS`).
    ExtensionsTooLong,
    /// A trailer section over 16 KiB (`MAX_TRAILERS`).
    TrailersTooLong,
    /// A line end that is not CRLF (after a size line, after chunk data, in
    /// the trailers), or a control character in a line.
    InvalidLineEnd,
}

impl ChunkError {
    /// A short, human-readable reason, for logs.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSize => "invalid chunk size",
            Self::SizeTooLong => "chunk size of more than 16 hex digits",
            Self::LineTooLong => "chunk-size line too long",
            Self::ExtensionsTooLong => "chunk extensions too long",
            Self::TrailersTooLong => "chunked trailers too long",
            Self::InvalidLineEnd => "chunked body with a bad line end",
        }
    }
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ChunkError {}

/// Where a decode call left the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// All input was used; the body goes on.
    NeedMore,
    /// The body ended (last chunk, trailers, final CRLF) after this many
    /// bytes of the input; the rest is not part of it.
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of the chunk size: the value and how many digits.
    Size(u64, u8),
    /// Whitespace after the size (only `;` or more whitespace may follow).
    SizeSpace(u64),
    /// A chunk extension, up to CR.
    Extension(u64),
    /// The CR that ends a size line was seen; LF must follow.
    SizeLf(u64),
    /// Chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// The CR ending a trailer line; LF must follow.
    TrailerLf,
    /// The CR of the final CRLF; LF must follow.
    EndLf,
    /// The body is over.
    Done,
}

/// Decodes a chunked body (RFC 9112 §7.1) fed in pieces of any size:
/// extensions and trailers are read and dropped; a chunk size has at most
/// 16 hex digits, a size line at most 4 KiB, extensions and trailers at
/// most 16 KiB each over the body; line ends are CRLF.
///
/// ```
/// use wsedge::proto::handshake::{Chunked, ChunkedDecoder};
///
/// let mut dec = ChunkedDecoder::new();
/// let mut body = Vec::new();
/// let input = b"5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\nafter";
/// let state = dec.decode(input, |data| body.extend_from_slice(data)).unwrap();
/// assert_eq!(state, Chunked::Done(input.len() - 5));
/// assert_eq!(body, b"hello");
/// ```
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current size line or trailer line.
    line: usize,
    /// Bytes of extensions so far.
    extensions: usize,
    /// Bytes of trailers so far.
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self {
            state: State::Size(0, 0),
            line: 0,
            extensions: 0,
            trailers: 0,
        }
    }

    /// Whether the whole body was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, the bytes that follow those of earlier calls,
    /// handing each piece of chunk data to `data` in order (pieces borrow
    /// from `input`; nothing is copied or allocated).
    ///
    /// # Errors
    ///
    /// A [`ChunkError`]; the decoder must not be used after one.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(&[u8]),
    ) -> Result<Chunked, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Data(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + n]);
                    i += n;
                    self.state = match left - n as u64 {
                        0 => State::DataCr,
                        left => State::Data(left),
                    };
                    continue;
                }
                State::Size(..) | State::SizeSpace(_) | State::Extension(_) | State::SizeLf(_) => {
                    self.size_line(b)?
                }
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError::InvalidLineEnd),
                },
                State::DataLf => match b {
                    b'\n' => State::Size(0, 0),
                    _ => return Err(ChunkError::InvalidLineEnd),
                },
                State::TrailerStart | State::Trailer | State::TrailerLf | State::EndLf => {
                    self.trailer(b)?
                }
                State::Done => return Ok(Chunked::Done(i)),
            };
            i += 1;
        }
        Ok(if self.state == State::Done {
            Chunked::Done(i)
        } else {
            Chunked::NeedMore
        })
    }

    /// The state after byte `b` of a chunk-size line.
    fn size_line(&mut self, b: u8) -> Result<State, ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(match self.state {
            State::Size(size, digits) => match (hex(b), b) {
                (Some(_), _) if digits == 16 => return Err(ChunkError::SizeTooLong),
                (Some(d), _) => State::Size(size << 4 | u64::from(d), digits + 1),
                (None, _) if digits == 0 => return Err(ChunkError::InvalidSize),
                (None, b' ' | b'\t') => State::SizeSpace(size),
                (None, b';') => State::Extension(size),
                (None, b'\r') => State::SizeLf(size),
                (None, b'\n') => return Err(ChunkError::InvalidLineEnd),
                (None, _) => return Err(ChunkError::InvalidSize),
            },
            State::SizeSpace(size) => match b {
                b' ' | b'\t' => State::SizeSpace(size),
                b';' => State::Extension(size),
                b'\r' => State::SizeLf(size),
                b'\n' => return Err(ChunkError::InvalidLineEnd),
                _ => return Err(ChunkError::InvalidSize),
            },
            State::Extension(size) => {
                self.extensions += 1;
                if self.extensions > MAX_EXTENSIONS {
                    return Err(ChunkError::ExtensionsTooLong);
                }
                match b {
                    b'\r' => State::SizeLf(size),
                    b'\n' | 0 => return Err(ChunkError::InvalidLineEnd),
                    _ => State::Extension(size),
                }
            }
            State::SizeLf(size) if b == b'\n' => {
                self.line = 0;
                match size {
                    0 => State::TrailerStart,
                    size => State::Data(size),
                }
            }
            _ => return Err(ChunkError::InvalidLineEnd),
        })
    }

    /// The state after byte `b` of the trailer section.
    fn trailer(&mut self, b: u8) -> Result<State, ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLong);
        }
        Ok(match (self.state, b) {
            (State::TrailerStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::TrailerLf, b'\n') => State::TrailerStart,
            (State::EndLf | State::TrailerLf, _) | (_, b'\n' | 0) => {
                return Err(ChunkError::InvalidLineEnd);
            }
            (_, b'\r') => State::TrailerLf,
            _ => State::Trailer,
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `input` fed `step` bytes at a time: the data and the verdict.
    fn decode_in_steps(input: &[u8], step: usize) -> (Vec<u8>, Result<Chunked, ChunkError>) {
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let end = (at + step).min(input.len());
            match dec.decode(&input[at..end], |d| out.extend_from_slice(d)) {
                Ok(Chunked::Done(n)) => return (out, Ok(Chunked::Done(at + n))),
                Ok(Chunked::NeedMore) if end == input.len() => {
                    return (out, Ok(Chunked::NeedMore));
                }
                Ok(Chunked::NeedMore) => at = end,
                Err(e) => return (out, Err(e)),
            }
        }
    }

    fn decode(input: &[u8]) -> (Vec<u8>, Result<Chunked, ChunkError>) {
        decode_in_steps(input, usize::MAX)
    }

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"4\r\nWiki\r\n5 ; a=1;b=\"x;y\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n\
                      0;last\r\nExpires: never\r\nX: y\r\n\r\nNEXT";
        let (data, r) = decode(input);
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(r, Ok(Chunked::Done(input.len() - 4)));
        for step in 1..8 {
            assert_eq!(decode_in_steps(input, step), (data.clone(), r));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(decode(b"0\r\n\r\n").1, Ok(Chunked::Done(5)));
        assert_eq!(decode(b"000\r\n\r\n").1, Ok(Chunked::Done(7)));
        let big = b"fFfFfFfFfFfFfFfF\r\n";
        assert_eq!(decode(big), (vec![], Ok(Chunked::NeedMore)));
        let long = b"0000000000000000A\r\n";
        assert_eq!(decode(long).1, Err(ChunkError::SizeTooLong));
        assert_eq!(decode(b"\r\n").1, Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"x\r\n").1, Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"-1\r\n").1, Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"1 2\r\n").1, Err(ChunkError::InvalidSize));
        assert_eq!(decode(b"0x10\r\n").1, Err(ChunkError::InvalidSize));
    }

    #[test]
    fn line_ends_must_be_crlf() {
        for bad in [
            &b"1\nx\r\n0\r\n\r\n"[..],
            b"1\r\nx\n0\r\n\r\n",
            b"1\r\nxy\r\n0\r\n\r\n",
            b"1\r\nx\r\n0\r\n\n",
            b"1\r\nx\r\n0\r\nA: b\n\r\n",
            b"1;a\nb\r\nx\r\n0\r\n\r\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(
                decode(bad).1,
                Err(ChunkError::InvalidLineEnd),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_LINE - 2, b'a');
        line.extend_from_slice(b"\r\n");
        assert_eq!(decode(&line).1, Ok(Chunked::NeedMore), "exactly MAX_LINE");
        line.insert(3, b'a');
        assert_eq!(decode(&line).1, Err(ChunkError::LineTooLong));

        let mut body = Vec::new();
        for _ in 0..10 {
            body.extend_from_slice(b"1;");
            body.resize(body.len() + 2000, b'e');
            body.extend_from_slice(b"\r\nx\r\n");
        }
        assert_eq!(decode(&body).1, Err(ChunkError::ExtensionsTooLong));

        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILERS / 10 {
            trailers.extend_from_slice(b"X-Abc: d\r\n");
        }
        trailers.extend_from_slice(b"\r\n");
        assert_eq!(decode(&trailers).1, Err(ChunkError::TrailersTooLong));
    }

    /// A chunk-size line and an optional extension.
    fn size_line() -> impl Strategy<Value = Vec<u8>> {
        (
            "[0-9a-fA-F]{1,18}",
            "[ \t]{0,2}",
            prop::option::of("[;][ -~]{0,20}"),
            prop::sample::select(vec!["\r\n", "\n", "\r", "\r\r\n", ""]),
        )
            .prop_map(|(digits, ws, ext, end)| {
                let mut line = digits.into_bytes();
                if ext.is_some() {
                    line.extend_from_slice(ws.as_bytes());
                }
                line.extend_from_slice(ext.unwrap_or_default().as_bytes());
                line.extend_from_slice(end.as_bytes());
                line
            })
    }

    /// Chunks of data with random sizes and extensions, a last chunk, and
    /// trailers: (the encoding, the data).
    fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
        let chunk = (
            prop::collection::vec(any::<u8>(), 1..300),
            prop::option::of("[;][a-z]{1,5}(=[a-z0-9]{1,5})?"),
            any::<bool>(),
        );
        let trailers = prop::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,20}", 0..3);
        (prop::collection::vec(chunk, 0..6), trailers).prop_map(|(chunks, trailers)| {
            let (mut enc, mut data) = (Vec::new(), Vec::new());
            for (bytes, ext, upper) in chunks {
                let size = match upper {
                    true => format!("{:X}", bytes.len()),
                    false => format!("{:08x}", bytes.len()),
                };
                enc.extend_from_slice(size.as_bytes());
                enc.extend_from_slice(ext.unwrap_or_default().as_bytes());
                enc.extend_from_slice(b"\r\n");
                enc.extend_from_slice(&bytes);
                enc.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            enc.extend_from_slice(b"0\r\n");
            for t in trailers {
                enc.extend_from_slice(t.as_bytes());
                enc.extend_from_slice(b"\r\n");
            }
            enc.extend_from_slice(b"\r\n");
            (enc, data)
        })
    }

    proptest! {
        /// Whatever the chunks, extensions, trailers and the split of the
        /// input: the data comes out as it went in, the end is found exactly.
        #[test]
        fn round_trip((enc, data) in chunked_body(), step in 1usize..64, tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let mut input = enc.clone();
            input.extend_from_slice(&tail);
            let (out, r) = decode_in_steps(&input, step);
            prop_assert_eq!(r, Ok(Chunked::Done(enc.len())));
            prop_assert_eq!(out, data);
        }

        /// Every proper prefix of a body needs more.
        #[test]
        fn prefixes_need_more((enc, _) in chunked_body(), cut in any::<prop::sample::Index>()) {
            let cut = cut.index(enc.len());
            prop_assert_eq!(decode(&enc[..cut]).1, Ok(Chunked::NeedMore));
        }

        /// The size line agrees with `httparse::parse_chunk_size` wherever
        /// both read a size: same value; and where httparse refuses a CRLF
        /// line, so does the decoder.
        #[test]
        fn size_line_agrees_with_httparse(line in size_line()) {
            let mut dec = ChunkedDecoder::new();
            let ours = dec.decode(&line, |_| {});
            match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((n, size))) => {
                    prop_assert!(ours.is_ok(), "{:?}", ours);
                    prop_assert_eq!(n, line.len());
                    let expect = if size == 0 { State::TrailerStart } else { State::Data(size) };
                    prop_assert_eq!(dec.state, expect);
                }
                Err(_) => prop_assert!(ours.is_err()),
                // Stricter: a bare LF in an extension is refused at once.
                Ok(httparse::Status::Partial) => {
                    prop_assert!(ours == Ok(Chunked::NeedMore) || line.ends_with(b"\n"));
                }
            }
        }

        #[test]
        fn never_panics(input in prop::collection::vec(any::<u8>(), 0..512), step in 1usize..32) {
            let _ = decode_in_steps(&input, step);
        }
    }
}
