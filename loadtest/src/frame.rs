//! RFC 6455 frame headers: a small, sans-IO codec of wsload's own.
//!
//! wsload deliberately does not reuse the proxy's protocol code: a load
//! generator that shares a bug with the code it measures cannot catch it.
//! Parsing takes `&[u8]` and answers "complete header, this long" or "need
//! more" without consuming anything.

use std::fmt;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may not be fragmented and carry at
    /// most 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: Opcode,
    pub mask: Option<[u8; 4]>,
    /// Payload length, already checked against the caller's limit.
    pub payload_len: usize,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why a header is not acceptable. Each maps to a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1-3 set without a negotiated extension.
    ReservedBits,
    /// Opcode 3-7 or B-F.
    ReservedOpcode(u8),
    /// Control frame fragmented or longer than 125 bytes.
    BadControl,
    /// 64-bit length with the top bit set (RFC 6455 §5.2).
    LengthOverflow,
    /// Longer than the configured limit.
    TooLarge(u64),
}

impl FrameError {
    /// The close code this error is reported with.
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooLarge(_) => 1009,
            _ => 1002,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits => write!(f, "reserved bits set"),
            Self::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::BadControl => write!(f, "fragmented or oversized control frame"),
            Self::LengthOverflow => write!(f, "64-bit length with the top bit set"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes exceeds the limit"),
        }
    }
}

/// Parses a frame header. `Ok(None)` means more bytes are needed.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let (len, mut pos): (u64, usize) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let n = u64::from_be_bytes(b);
            if n >> 63 != 0 {
                return Err(FrameError::LengthOverflow);
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    // Check against the limit before converting: a 64-bit length need not
    // fit usize.
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(key)
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload_len: len as usize,
        header_len: pos,
    }))
}

/// Appends a frame header to `out`.
pub fn encode_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    len: usize,
) {
    let b0 = (if fin { 0x80 } else { 0 }) | opcode.bits();
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.extend_from_slice(&[b0, mbit | len as u8]);
    } else if len <= usize::from(u16::MAX) {
        let l = (len as u16).to_be_bytes();
        out.extend_from_slice(&[b0, mbit | 126, l[0], l[1]]);
    } else {
        out.extend_from_slice(&[b0, mbit | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Length of a header for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Appends a complete close frame with `code` (and no reason).
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, mask: Option<[u8; 4]>) {
    let payload = code.map(u16::to_be_bytes);
    let len = if payload.is_some() { 2 } else { 0 };
    encode_header(out, true, Opcode::Close, mask, len);
    if let Some(p) = payload {
        let start = out.len();
        out.extend_from_slice(&p);
        if let Some(key) = mask {
            crate::mask::apply_mask(&mut out[start..], key);
        }
    }
}

/// Close codes a peer may send on the wire (RFC 6455 §7.4).
pub fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_class() {
        for &len in &[0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                encode_header(&mut out, true, Opcode::Binary, mask, len);
                assert_eq!(out.len(), header_len(len, mask.is_some()));
                let h = parse_header(&out, usize::MAX).unwrap().unwrap();
                assert_eq!(h.payload_len, len);
                assert_eq!(h.mask, mask);
                assert_eq!(h.header_len, out.len());
                // Every proper prefix needs more bytes.
                for cut in 0..out.len() {
                    assert_eq!(parse_header(&out[..cut], usize::MAX), Ok(None));
                }
            }
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            parse_header(&[0xC2, 0x00], 10),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse_header(&[0x83, 0x00], 10),
            Err(FrameError::ReservedOpcode(3))
        );
        assert_eq!(parse_header(&[0x09, 0x00], 10), Err(FrameError::BadControl));
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126], 1000),
            Err(FrameError::BadControl)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_header(&huge, 10), Err(FrameError::LengthOverflow));
        assert_eq!(
            parse_header(&[0x82, 126, 1, 0], 10),
            Err(FrameError::TooLarge(256))
        );
    }

    #[test]
    fn close_frame_carries_code() {
        let mut out = Vec::new();
        encode_close(&mut out, Some(1000), None);
        assert_eq!(out, [0x88, 0x02, 0x03, 0xE8]);
    }
}
