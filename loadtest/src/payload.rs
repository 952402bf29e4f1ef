//! Message contents: every message says which one it is, so that the echo
//! can be checked for content and order.
//!
//! A message of `len` bytes for sequence number `seq` is 16 lowercase hex
//! digits of `seq` followed by a slice of a fixed pattern that starts at an
//! offset derived from `seq`. Both are printable ASCII, so text messages are
//! valid UTF-8. Messages shorter than 16 bytes carry only the pattern slice.

/// Bytes taken by the sequence number.
pub const SEQ_LEN: usize = 16;
/// Pattern offsets cycle through this many values (a prime).
const OFFSETS: usize = 251;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The pattern the messages are cut from, long enough for `max_len`.
#[derive(Debug, Clone)]
pub struct Pattern(Vec<u8>);

/// What is wrong with an echoed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The bytes differ from what was sent.
    Corrupt,
    /// A whole, intact message arrived out of turn.
    OutOfOrder,
}

impl Pattern {
    pub fn new(max_len: usize) -> Self {
        let n = max_len + OFFSETS + 1;
        // A sequence that does not repeat with period 64, so that a shifted
        // slice is not mistaken for the right one.
        Self(
            (0..n)
                .map(|i| ALPHABET[(i + i / 64 + i / 4096) % 64])
                .collect(),
        )
    }

    fn body(&self, seq: u64, len: usize) -> &[u8] {
        let off = (seq % OFFSETS as u64) as usize;
        &self.0[off..off + len]
    }

    /// Appends message `seq` of `len` bytes to `out`.
    pub fn write(&self, seq: u64, len: usize, out: &mut Vec<u8>) {
        if len >= SEQ_LEN {
            out.extend_from_slice(&hex(seq));
            out.extend_from_slice(self.body(seq, len - SEQ_LEN));
        } else {
            out.extend_from_slice(self.body(seq, len));
        }
    }

    /// Checks that `msg` is message `seq` of `len` bytes.
    pub fn check(&self, seq: u64, len: usize, msg: &[u8]) -> Result<(), Mismatch> {
        if len >= SEQ_LEN && msg.len() >= SEQ_LEN {
            if msg[..SEQ_LEN] != hex(seq) {
                // Another message of ours, intact, is a reordering; anything
                // else is corruption.
                return match parse_hex(&msg[..SEQ_LEN]) {
                    Some(other) if self.is_intact(other, msg) => Err(Mismatch::OutOfOrder),
                    _ => Err(Mismatch::Corrupt),
                };
            }
            if msg.len() != len || msg[SEQ_LEN..] != *self.body(seq, len - SEQ_LEN) {
                return Err(Mismatch::Corrupt);
            }
            Ok(())
        } else if msg.len() == len && msg == self.body(seq, len) {
            Ok(())
        } else {
            Err(Mismatch::Corrupt)
        }
    }

    fn is_intact(&self, seq: u64, msg: &[u8]) -> bool {
        let body_len = msg.len() - SEQ_LEN;
        let off = (seq % OFFSETS as u64) as usize;
        off + body_len <= self.0.len() && msg[SEQ_LEN..] == *self.body(seq, body_len)
    }
}

fn hex(seq: u64) -> [u8; SEQ_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; SEQ_LEN];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((seq >> ((15 - i) * 4)) & 0xF) as usize];
    }
    out
}

fn parse_hex(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_check_out() {
        let p = Pattern::new(1000);
        for len in [0, 1, 15, 16, 17, 64, 1000] {
            for seq in [0, 1, 250, 251, 12345] {
                let mut m = Vec::new();
                p.write(seq, len, &mut m);
                assert_eq!(m.len(), len);
                assert!(std::str::from_utf8(&m).is_ok());
                assert_eq!(p.check(seq, len, &m), Ok(()));
            }
        }
    }

    #[test]
    fn corruption_and_reordering_are_told_apart() {
        let p = Pattern::new(100);
        let mut m = Vec::new();
        p.write(7, 64, &mut m);
        assert_eq!(p.check(8, 64, &m), Err(Mismatch::OutOfOrder));
        let mut bad = m.clone();
        bad[40] ^= 1;
        assert_eq!(p.check(7, 64, &bad), Err(Mismatch::Corrupt));
        assert_eq!(p.check(7, 64, &m[..63]), Err(Mismatch::Corrupt));
        let mut small = Vec::new();
        p.write(3, 8, &mut small);
        assert_eq!(p.check(4, 8, &small), Err(Mismatch::Corrupt));
    }
}
