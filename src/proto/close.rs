//! Close frames (RFC 6455 §5.5.1, §7.4): status codes, parsing and building
//! close payloads.
//!
//! Valid on the wire: 1000–1003, 1007–1014 and 3000–4999. Never on the wire:
//! 0–999, 1004 (reserved), 1005 and 1006 (only local: "no status" and
//! "abnormal closure"), 1015 (TLS failure, local only), 1016–2999 (reserved
//! for the RFC and its extensions, unassigned) and 5000 and above.

use super::error::ProtocolError;
use super::utf8::Utf8Validator;

/// A close status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: going away (server shutdown, or a client that left).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type the endpoint cannot accept.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1005: no status code was present (local only, never sent).
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: closed without a close frame (local only, never sent).
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: payload inconsistent with the message type (bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: policy violation.
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009: message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: an extension the client needed was not negotiated.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: internal error.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: service restart.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: bad gateway (the upstream failed).
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);

    /// Whether the code may appear in a close frame.
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A parsed close payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// The status code.
    pub code: CloseCode,
    /// The reason, valid UTF-8 (possibly empty).
    pub reason: &'a str,
}

/// Parses and validates a close frame's (unmasked) payload: empty (no status,
/// `Ok(None)`), or a valid code followed by a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseOneByte),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                simdutf8::basic::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Writes a close payload (code, then `reason` cut at a character boundary
/// to fit the 125-byte control frame limit) into `out`; returns its length.
pub fn encode_close_payload(code: CloseCode, reason: &str, out: &mut [u8; 125]) -> usize {
    out[..2].copy_from_slice(&code.0.to_be_bytes());
    let mut n = reason.len().min(123);
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    out[2..2 + n].copy_from_slice(&reason.as_bytes()[..n]);
    2 + n
}

/// Validates a close payload that arrives in pieces (the relay streams
/// control frames straight out of its read buffer and may see a close frame
/// split over two reads). Feed the unmasked bytes in order, then call
/// [`CloseValidator::finish`].
#[derive(Debug, Clone, Default)]
pub struct CloseValidator {
    seen: u8,
    code: [u8; 2],
    utf8: Utf8Validator,
}

impl CloseValidator {
    /// Starts a new close payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next (unmasked) chunk of the payload.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ProtocolError> {
        while self.seen < 2 {
            let Some((&b, rest)) = chunk.split_first() else {
                return Ok(());
            };
            self.code[self.seen as usize] = b;
            self.seen += 1;
            chunk = rest;
            if self.seen == 2 {
                let code = u16::from_be_bytes(self.code);
                if !CloseCode(code).is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code));
                }
            }
        }
        self.utf8
            .feed(chunk)
            .map_err(|_| ProtocolError::InvalidUtf8)
    }

    /// Ends the payload: the code it carried, if any.
    pub fn finish(&mut self) -> Result<Option<CloseCode>, ProtocolError> {
        let seen = std::mem::take(&mut self.seen);
        match seen {
            0 => Ok(None),
            1 => Err(ProtocolError::CloseOneByte),
            _ => {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                Ok(Some(CloseCode(u16::from_be_bytes(self.code))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_of_every_code() {
        for c in 0..=u16::MAX {
            let valid = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(CloseCode(c).is_valid_on_wire(), valid, "{c}");
        }
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert!(CloseCode(c).is_valid_on_wire(), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(c).is_valid_on_wire(), "{c}");
        }
    }

    #[test]
    fn parse() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ProtocolError::CloseOneByte)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8bye"),
            Ok(Some(CloseFrame {
                code: CloseCode::NORMAL,
                reason: "bye"
            }))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ProtocolError::InvalidCloseCode(1005))
        );
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            ProtocolError::InvalidUtf8.close_code(),
            CloseCode::INVALID_PAYLOAD
        );
    }

    #[test]
    fn build_cuts_reason_at_char_boundary() {
        let mut out = [0u8; 125];
        let n = encode_close_payload(CloseCode::GOING_AWAY, "going away", &mut out);
        assert_eq!(&out[..n], b"\x03\xe9going away");
        let long = "é".repeat(100); // 200 bytes
        let n = encode_close_payload(CloseCode::NORMAL, &long, &mut out);
        assert_eq!(n, 2 + 122);
        assert!(parse_close_payload(&out[..n]).is_ok());
    }

    #[test]
    fn streaming_validator_agrees_with_parse() {
        let cases: [&[u8]; 7] = [
            b"",
            b"\x03",
            b"\x03\xe8",
            b"\x03\xe8ok\xe2\x82\xac",
            b"\x03\xed",
            b"\x0f\xa0\xe2\x82",
            b"\x13\x88",
        ];
        for p in cases {
            for cut in 0..=p.len() {
                let mut v = CloseValidator::new();
                let r = v
                    .feed(&p[..cut])
                    .and_then(|_| v.feed(&p[cut..]))
                    .and_then(|_| v.finish());
                assert_eq!(
                    r.is_ok(),
                    parse_close_payload(p).is_ok(),
                    "{p:x?} cut {cut}"
                );
            }
        }
    }
}
