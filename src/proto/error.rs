//! Protocol errors of the frame layer and the close codes they map to.
//!
//! Every variant knows the close code wsedge answers it with, so the relay
//! never has to guess: framing and sequencing violations are 1002, bad UTF-8
//! is 1007, anything over a configured size limit is 1009.

use std::fmt;

use super::close::CloseCode;

/// A violation of RFC 6455 (or of a configured limit) found in a frame or a
/// message. Fatal for the connection: the relay answers with
/// [`ProtocolError::close_code`] and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Opcode 3–7 or 11–15 (RFC 6455 §5.2: reserved).
    ReservedOpcode(u8),
    /// An RSV bit set that no negotiated extension gives a meaning to.
    ReservedBits(u8),
    /// A frame from a client without a mask (RFC 6455 §5.1).
    UnmaskedClientFrame,
    /// A frame from a server with a mask (RFC 6455 §5.1).
    MaskedServerFrame,
    /// A 64-bit payload length with its most significant bit set (§5.2).
    LengthTopBit,
    /// A control frame (close, ping, pong) with FIN clear (§5.5).
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload (§5.5).
    ControlTooLong(u64),
    /// A frame's payload exceeds the configured maximum.
    FrameTooLarge {
        /// The announced payload length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A message's payload, summed over its fragments, exceeds the maximum.
    MessageTooLarge {
        /// Bytes of the message announced so far, this frame included.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// A continuation frame with no message in progress (§5.4).
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    ExpectedContinuation,
    /// A text message (or close reason) that is not valid UTF-8 (§8.1).
    InvalidUtf8,
    /// A close frame with a one-byte payload (§5.5.1).
    CloseOneByte,
    /// A close frame with a status code that may not appear on the wire.
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// How many kinds [`ProtocolError::index`] tells apart.
    pub const KINDS: usize = 14;

    /// Short labels of the kinds, by [`ProtocolError::index`] (metrics).
    pub const KIND_LABELS: [&'static str; Self::KINDS] = [
        "reserved_opcode",
        "reserved_bits",
        "unmasked_client_frame",
        "masked_server_frame",
        "length_top_bit",
        "fragmented_control",
        "control_too_long",
        "frame_too_large",
        "message_too_large",
        "unexpected_continuation",
        "expected_continuation",
        "invalid_utf8",
        "close_one_byte",
        "invalid_close_code",
    ];

    /// Its kind, as an index into [`ProtocolError::KIND_LABELS`].
    pub fn index(&self) -> usize {
        match self {
            ProtocolError::ReservedOpcode(_) => 0,
            ProtocolError::ReservedBits(_) => 1,
            ProtocolError::UnmaskedClientFrame => 2,
            ProtocolError::MaskedServerFrame => 3,
            ProtocolError::LengthTopBit => 4,
            ProtocolError::FragmentedControl => 5,
            ProtocolError::ControlTooLong(_) => 6,
            ProtocolError::FrameTooLarge { .. } => 7,
            ProtocolError::MessageTooLarge { .. } => 8,
            ProtocolError::UnexpectedContinuation => 9,
            ProtocolError::ExpectedContinuation => 10,
            ProtocolError::InvalidUtf8 => 11,
            ProtocolError::CloseOneByte => 12,
            ProtocolError::InvalidCloseCode(_) => 13,
        }
    }

    /// The close code to send to the peer that committed this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::TOO_BIG
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason, fit for the reason field of a close frame (≤ 123 bytes).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::ReservedBits(_) => "reserved bits set",
            ProtocolError::UnmaskedClientFrame => "client frame not masked",
            ProtocolError::MaskedServerFrame => "server frame masked",
            ProtocolError::LengthTopBit => "payload length top bit set",
            ProtocolError::FragmentedControl => "fragmented control frame",
            ProtocolError::ControlTooLong(_) => "control frame too long",
            ProtocolError::FrameTooLarge { .. } => "frame too large",
            ProtocolError::MessageTooLarge { .. } => "message too large",
            ProtocolError::UnexpectedContinuation => "continuation without message",
            ProtocolError::ExpectedContinuation => "expected continuation frame",
            ProtocolError::InvalidUtf8 => "invalid utf-8",
            ProtocolError::CloseOneByte => "one-byte close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ReservedBits(rsv) => write!(f, "reserved bits {rsv:#05b} set"),
            ProtocolError::ControlTooLong(n) => write!(f, "control frame of {n} bytes (max 125)"),
            ProtocolError::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            ProtocolError::MessageTooLarge { len, max } => {
                write!(f, "message of {len}+ bytes exceeds the limit of {max}")
            }
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code().0, 1007);
        assert_eq!(
            ProtocolError::FrameTooLarge { len: 2, max: 1 }
                .close_code()
                .0,
            1009
        );
        assert_eq!(
            ProtocolError::MessageTooLarge { len: 2, max: 1 }
                .close_code()
                .0,
            1009
        );
        assert_eq!(ProtocolError::UnmaskedClientFrame.close_code().0, 1002);
        assert_eq!(ProtocolError::InvalidCloseCode(1005).close_code().0, 1002);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let all = [
            ProtocolError::ReservedOpcode(3),
            ProtocolError::ReservedBits(1),
            ProtocolError::UnmaskedClientFrame,
            ProtocolError::MaskedServerFrame,
            ProtocolError::LengthTopBit,
            ProtocolError::FragmentedControl,
            ProtocolError::ControlTooLong(126),
            ProtocolError::FrameTooLarge { len: 2, max: 1 },
            ProtocolError::MessageTooLarge { len: 2, max: 1 },
            ProtocolError::UnexpectedContinuation,
            ProtocolError::ExpectedContinuation,
            ProtocolError::InvalidUtf8,
            ProtocolError::CloseOneByte,
            ProtocolError::InvalidCloseCode(5),
        ];
        for e in all {
            assert!(e.reason().len() <= 123);
            assert!(!e.to_string().is_empty());
        }
    }
}
