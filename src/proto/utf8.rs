//! Incremental UTF-8 validation for text messages (RFC 6455 §8.1).
//!
//! A text message arrives in fragments, and each fragment in reads of any
//! size, so a code point may be split between two chunks. [`Utf8Validator`]
//! validates each chunk as it arrives with `simdutf8` and carries at most
//! three bytes of an unfinished code point over to the next one. An invalid
//! byte is reported in the chunk where it appears (fail fast): a truncated
//! sequence is only an error at the end of the message, but a byte that can
//! never continue the sequence is an error at once.

use simdutf8::compat::from_utf8;

/// Where validation found the message not to be UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

impl std::fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid utf-8")
    }
}

impl std::error::Error for Utf8Error {}

/// Validates one message's bytes chunk by chunk.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// The bytes of a code point begun at the end of the previous chunk.
    partial: [u8; 4],
    partial_len: u8,
}

/// The length of the sequence a lead byte starts (0 for a byte that cannot
/// start one). `simdutf8` decides finer validity (overlongs, surrogates).
#[inline]
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

/// Where a code point that the end of `chunk` cuts short begins (`chunk.len()`
/// if none does): the last lead byte within 3 bytes of the end whose
/// sequence does not fit.
#[inline]
fn unfinished_tail_start(chunk: &[u8]) -> usize {
    let len = chunk.len();
    for back in 1..=len.min(3) {
        let b = chunk[len - back];
        if b & 0xc0 != 0x80 {
            // A lead (or ASCII) byte: is its sequence cut by the end?
            return if sequence_len(b) > back {
                len - back
            } else {
                len
            };
        }
    }
    len
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            partial: [0; 4],
            partial_len: 0,
        }
    }

    /// Validates the next chunk of the message. `Err` as soon as a byte that
    /// cannot be part of valid UTF-8 is seen.
    #[inline]
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Utf8Error> {
        if self.partial_len > 0 {
            let have = self.partial_len as usize;
            let need = sequence_len(self.partial[0]);
            let take = (need - have).min(chunk.len());
            self.partial[have..have + take].copy_from_slice(&chunk[..take]);
            let filled = have + take;
            chunk = &chunk[take..];
            match from_utf8(&self.partial[..filled]) {
                Ok(_) => self.partial_len = 0,
                // Still a valid prefix, and the chunk is used up.
                Err(e) if e.error_len().is_none() => {
                    self.partial_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        // Split off a code point left unfinished at the end of the chunk,
        // validate the rest with simdutf8's fast yes/no validator, and check
        // the unfinished tail (at most 3 bytes) as a prefix: a byte that can
        // never continue it is still an error in this chunk (fail fast).
        let (body, tail) = chunk.split_at(unfinished_tail_start(chunk));
        if simdutf8::basic::from_utf8(body).is_err() {
            return Err(Utf8Error);
        }
        if !tail.is_empty() {
            match from_utf8(tail) {
                Err(e) if e.error_len().is_none() && e.valid_up_to() == 0 => {}
                _ => return Err(Utf8Error),
            }
            self.partial[..tail.len()].copy_from_slice(tail);
            self.partial_len = tail.len() as u8;
        }
        Ok(())
    }

    /// Ends the message: a code point left unfinished is an error. The
    /// validator is reset for the next message either way.
    #[inline]
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.partial_len != 0;
        self.partial_len = 0;
        if incomplete { Err(Utf8Error) } else { Ok(()) }
    }

    /// Whether a code point is pending across a chunk boundary.
    pub fn is_mid_code_point(&self) -> bool {
        self.partial_len != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `chunks` and finishes; `Ok` if the whole is valid, plus the
    /// index of the chunk where the error was reported.
    fn run(chunks: &[&[u8]]) -> Result<(), usize> {
        let mut v = Utf8Validator::new();
        for (i, c) in chunks.iter().enumerate() {
            v.feed(c).map_err(|_| i)?;
        }
        v.finish().map_err(|_| chunks.len())
    }

    /// Autobahn 6.x style inputs, valid and invalid.
    fn corpus() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            "Hello-µ@ßöäüàá-UTF-8!!".into(),
            "κόσμε".into(),
            "\u{0}\u{80}\u{800}\u{10000}\u{7ff}\u{ffff}\u{10ffff}".into(),
            "\u{d7ff}\u{e000}\u{fffd}".into(),
            vec![
                0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
            vec![0xf4, 0x90, 0x80, 0x80],             // above U+10FFFF
            vec![0xf8, 0x88, 0x80, 0x80, 0x80],       // 5-byte form
            vec![0xc0, 0xaf],                         // overlong '/'
            vec![0xe0, 0x80, 0xaf],                   // overlong 3-byte
            vec![0xf0, 0x80, 0x80, 0xaf],             // overlong 4-byte
            vec![0xc1, 0xbf],                         // overlong 2-byte max
            vec![0xed, 0xa0, 0x80],                   // surrogate U+D800
            vec![0xed, 0xbf, 0xbf],                   // surrogate U+DFFF
            vec![0xed, 0xa0, 0x80, 0xed, 0xb0, 0x80], // surrogate pair
            vec![0x80],                               // lone continuation
            vec![0xbf, 0x80, 0xbf],
            vec![0xc2], // truncated
            vec![0xe2, 0x82],
            vec![0xf0, 0x9f, 0x98],
            vec![0x61, 0xf0, 0x9f, 0x98, 0x61], // truncated in the middle
            vec![0xfe],
            vec![0xff, 0xfe],
            vec![0xef, 0xbf, 0xbe], // U+FFFE is valid UTF-8
        ];
        let mut long = "0123456789abcdef€".repeat(20).into_bytes();
        v.push(long.clone());
        long[150] = 0xff;
        v.push(long);
        v
    }

    #[test]
    fn every_two_and_three_way_split_agrees_with_std() {
        for input in corpus() {
            let expect_ok = std::str::from_utf8(&input).is_ok();
            for i in 0..=input.len() {
                for j in i..=input.len() {
                    let r = run(&[&input[..i], &input[i..j], &input[j..]]);
                    assert_eq!(r.is_ok(), expect_ok, "{input:x?} split at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn fails_fast_in_the_chunk_with_the_bad_byte() {
        // 0xf4 0x90: no code point above U+10FFFF can follow; error at chunk 1.
        assert_eq!(run(&[b"ab\xf4", b"\x90\x80\x80", b"cd"]), Err(1));
        // A surrogate's second byte is already wrong.
        assert_eq!(run(&[b"\xed", b"\xa0", b"\x80"]), Err(1));
        // A byte that can never appear fails in its own chunk.
        assert_eq!(run(&[b"abc", b"\xff", b"x"]), Err(1));
        // A valid-so-far prefix is only an error at the end.
        assert_eq!(run(&[b"ab", b"\xe2\x82"]), Err(2));
        // A pending prefix broken by the next chunk's first byte.
        assert_eq!(run(&[b"\xe2\x82", b"a"]), Err(1));
    }

    #[test]
    fn partial_code_point_across_many_one_byte_chunks() {
        let s = "€𝄞".as_bytes();
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(run(&chunks), Ok(()));
    }

    #[test]
    fn finish_resets() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xe2").unwrap();
        assert!(v.is_mid_code_point());
        assert!(v.finish().is_err());
        assert!(v.feed(b"ok").is_ok());
        assert!(v.finish().is_ok());
    }

    fn utf8ish() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..64),
            // Valid text with one byte replaced: exercises near-valid input.
            (any::<String>(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(s, i, b)| {
                let mut v = s.into_bytes();
                if !v.is_empty() {
                    let at = i.index(v.len());
                    v[at] = b;
                }
                v
            }),
        ]
    }

    proptest! {
        #[test]
        fn incremental_equals_std_for_every_split(
            input in utf8ish(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            at.push(0);
            at.push(input.len());
            at.sort_unstable();
            let chunks: Vec<&[u8]> = at.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            prop_assert_eq!(run(&chunks).is_ok(), std::str::from_utf8(&input).is_ok());
        }

        #[test]
        fn error_is_reported_in_the_first_chunk_that_proves_it(
            input in utf8ish(),
            cut in any::<prop::sample::Index>(),
        ) {
            // Fail fast: as soon as the bytes seen so far cannot be the
            // start of valid UTF-8, the chunk that brought them fails.
            let cut = cut.index(input.len() + 1);
            let definitely_bad = |b: &[u8]| matches!(std::str::from_utf8(b), Err(e) if e.error_len().is_some());
            let expect = if definitely_bad(&input[..cut]) {
                Err(0)
            } else if definitely_bad(&input) {
                Err(1)
            } else if std::str::from_utf8(&input).is_err() {
                Err(2)
            } else {
                Ok(())
            };
            prop_assert_eq!(run(&[&input[..cut], &input[cut..]]), expect);
        }
    }
}
