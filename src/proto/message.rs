//! Message sequencing (RFC 6455 §5.4): which frames may follow which, the
//! message size limit across fragments, and UTF-8 validation of text.
//!
//! One [`MessageState`] per direction. The relay calls
//! [`MessageState::on_header`] for each decoded header, then
//! [`MessageState::on_payload`] with each chunk of unmasked payload as it
//! passes (any chunking), then [`MessageState::on_frame_end`] when the
//! frame's last byte has passed.

use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode, RSV1};
use super::utf8::Utf8Validator;

/// Limits and switches for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageConfig {
    /// The largest message, summed over its fragments; larger is close 1009.
    pub max_message_size: u64,
    /// Validate text messages as UTF-8 (close 1007 when invalid).
    pub validate_utf8: bool,
}

impl Default for MessageConfig {
    fn default() -> Self {
        MessageConfig {
            max_message_size: 16 << 20,
            validate_utf8: true,
        }
    }
}

/// What the relay should do with the payload of the frame just announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A data frame (text, binary or continuation).
    Data {
        /// Pass its payload to [`MessageState::on_payload`] (unmasked):
        /// part of an uncompressed text message with validation on.
        validate_utf8: bool,
    },
    /// A control frame; it does not touch the message in progress.
    Control(OpCode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InMessage {
    None,
    /// A fragmented message has started and awaits continuations.
    Open {
        validate: bool,
    },
}

/// The sequencing state of one direction.
#[derive(Debug, Clone)]
pub struct MessageState {
    cfg: MessageConfig,
    msg: InMessage,
    /// Payload bytes of the message in progress, announced so far.
    size: u64,
    /// The frame being relayed: validate its payload, and does it end the message?
    frame_validates: bool,
    frame_fin: bool,
    frame_is_data: bool,
    utf8: Utf8Validator,
}

impl MessageState {
    /// A direction with no message in progress.
    pub fn new(cfg: MessageConfig) -> Self {
        MessageState {
            cfg,
            msg: InMessage::None,
            size: 0,
            frame_validates: false,
            frame_fin: false,
            frame_is_data: false,
            utf8: Utf8Validator::new(),
        }
    }

    /// Checks a frame header against the sequence so far and the size limit.
    #[inline]
    pub fn on_header(&mut self, h: &FrameHeader) -> Result<FrameKind, ProtocolError> {
        if h.opcode.is_control() {
            self.frame_is_data = false;
            return Ok(FrameKind::Control(h.opcode));
        }
        let validate = match (h.opcode, self.msg) {
            (OpCode::Continuation, InMessage::None) => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            (OpCode::Continuation, InMessage::Open { validate }) => validate,
            (_, InMessage::Open { .. }) => return Err(ProtocolError::ExpectedContinuation),
            (op, InMessage::None) => {
                self.size = 0;
                // A compressed text message (permessage-deflate, RSV1) is
                // not UTF-8 on the wire: the endpoints check it.
                op == OpCode::Text && self.cfg.validate_utf8 && h.rsv & RSV1 == 0
            }
        };
        let size = self.size.saturating_add(h.payload_len);
        if size > self.cfg.max_message_size {
            return Err(ProtocolError::MessageTooLarge {
                len: size,
                max: self.cfg.max_message_size,
            });
        }
        self.size = size;
        self.msg = InMessage::Open { validate };
        self.frame_validates = validate;
        self.frame_fin = h.fin;
        self.frame_is_data = true;
        Ok(FrameKind::Data {
            validate_utf8: validate,
        })
    }

    /// Validates a chunk of the current data frame's unmasked payload (a
    /// no-op unless [`FrameKind::Data`] said `validate_utf8`).
    #[inline]
    pub fn on_payload(&mut self, unmasked: &[u8]) -> Result<(), ProtocolError> {
        if self.frame_validates {
            self.utf8
                .feed(unmasked)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        Ok(())
    }

    /// The current frame's payload has fully passed. Ends the message if the
    /// frame was final (a code point left unfinished is then an error).
    #[inline]
    pub fn on_frame_end(&mut self) -> Result<(), ProtocolError> {
        if !self.frame_is_data {
            return Ok(());
        }
        self.frame_is_data = false;
        if self.frame_fin {
            self.msg = InMessage::None;
            if self.frame_validates {
                self.frame_validates = false;
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        Ok(())
    }

    /// The payload bytes of the message in progress (or of the one that
    /// just ended), over all its frames.
    #[inline]
    pub fn message_size(&self) -> u64 {
        self.size
    }

    /// Whether a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.msg != InMessage::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(opcode: OpCode, fin: bool, len: u64) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: len,
        }
    }

    fn state() -> MessageState {
        MessageState::new(MessageConfig {
            max_message_size: 100,
            validate_utf8: true,
        })
    }

    #[test]
    fn continuation_without_message() {
        assert_eq!(
            state().on_header(&h(OpCode::Continuation, true, 0)),
            Err(ProtocolError::UnexpectedContinuation)
        );
    }

    #[test]
    fn new_message_inside_fragmented_one() {
        let mut s = state();
        s.on_header(&h(OpCode::Text, false, 1)).unwrap();
        s.on_frame_end().unwrap();
        assert_eq!(
            s.on_header(&h(OpCode::Binary, true, 1)),
            Err(ProtocolError::ExpectedContinuation)
        );
        assert_eq!(
            s.on_header(&h(OpCode::Text, true, 1)),
            Err(ProtocolError::ExpectedContinuation)
        );
    }

    #[test]
    fn control_frames_interleave() {
        let mut s = state();
        assert!(matches!(
            s.on_header(&h(OpCode::Text, false, 3)).unwrap(),
            FrameKind::Data {
                validate_utf8: true
            }
        ));
        s.on_payload(b"he\xe2").unwrap();
        s.on_frame_end().unwrap();
        assert_eq!(
            s.on_header(&h(OpCode::Ping, true, 2)).unwrap(),
            FrameKind::Control(OpCode::Ping)
        );
        s.on_frame_end().unwrap();
        assert!(s.in_message());
        s.on_header(&h(OpCode::Continuation, true, 2)).unwrap();
        // The code point begun before the ping continues after it.
        s.on_payload(b"\x82\xac").unwrap();
        s.on_frame_end().unwrap();
        assert!(!s.in_message());
        s.on_header(&h(OpCode::Binary, true, 0)).unwrap();
    }

    #[test]
    fn size_limit_across_fragments() {
        let mut s = state();
        s.on_header(&h(OpCode::Binary, false, 60)).unwrap();
        s.on_frame_end().unwrap();
        assert_eq!(
            s.on_header(&h(OpCode::Continuation, true, 41)),
            Err(ProtocolError::MessageTooLarge { len: 101, max: 100 })
        );
        let mut s = state();
        s.on_header(&h(OpCode::Binary, true, 100)).unwrap();
        s.on_frame_end().unwrap();
        // The count starts over with each message.
        s.on_header(&h(OpCode::Binary, true, 100)).unwrap();
    }

    #[test]
    fn utf8_checked_for_text_only_and_at_message_end() {
        let mut s = state();
        s.on_header(&h(OpCode::Binary, true, 1)).unwrap();
        s.on_payload(b"\xff").unwrap();
        s.on_frame_end().unwrap();
        s.on_header(&h(OpCode::Text, true, 1)).unwrap();
        assert_eq!(s.on_payload(b"\xff"), Err(ProtocolError::InvalidUtf8));
        let mut s = state();
        s.on_header(&h(OpCode::Text, true, 1)).unwrap();
        s.on_payload(b"\xe2").unwrap();
        assert_eq!(s.on_frame_end(), Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn validation_can_be_switched_off_and_skips_compressed() {
        let mut s = MessageState::new(MessageConfig {
            max_message_size: 100,
            validate_utf8: false,
        });
        assert_eq!(
            s.on_header(&h(OpCode::Text, true, 1)).unwrap(),
            FrameKind::Data {
                validate_utf8: false
            }
        );
        let mut s = state();
        let compressed = FrameHeader {
            rsv: RSV1,
            ..h(OpCode::Text, true, 1)
        };
        assert_eq!(
            s.on_header(&compressed).unwrap(),
            FrameKind::Data {
                validate_utf8: false
            }
        );
    }
}
