//! RFC 6455 §5.2 frame headers: decode from a byte slice, encode into a
//! caller's buffer.
//!
//! Decoding never consumes anything: it answers "complete, this header is
//! `len` bytes" or "need more bytes" (`Ok(None)`), so the caller can retry
//! after the next read with the same slice grown. Every rule that can be
//! checked from the bytes at hand is checked as soon as they are there (fail
//! fast): opcode, RSV bits and mask from the first two bytes, the payload
//! limit as soon as the extended length is complete.

use super::error::ProtocolError;

/// The longest header: 2 bytes + 8 bytes of extended length + 4 bytes of key.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload a control frame may carry (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// RSV1 as it sits in the [`FrameHeader::rsv`] field (bit 2 of the 3 bits).
pub const RSV1: u8 = 0b100;

/// A frame opcode (§5.2). Reserved opcodes are not representable: decoding
/// one is a [`ProtocolError::ReservedOpcode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation = 0x0,
    /// 0x1: starts a text message.
    Text = 0x1,
    /// 0x2: starts a binary message.
    Binary = 0x2,
    /// 0x8: close.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode for a 4-bit value, or `None` if it is reserved.
    #[inline]
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong are control frames (opcodes with the top bit set).
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Who sent the frames being decoded: it decides the masking rule (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Frames from a client: a mask is required.
    Client,
    /// Frames from a server: a mask is forbidden.
    Server,
}

/// What the decoder checks besides the RFC's fixed rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeConfig {
    /// The sender of the frames: decides whether a mask is required.
    pub peer: Peer,
    /// The largest payload accepted in one frame; larger is
    /// [`ProtocolError::FrameTooLarge`] (close 1009).
    pub max_payload: u64,
    /// RSV bits (in [`FrameHeader::rsv`] layout) that a negotiated extension
    /// allows on the first frame of a data message, e.g. [`RSV1`] for
    /// permessage-deflate. Control and continuation frames never carry them.
    pub allowed_rsv: u8,
}

impl DecodeConfig {
    /// A config for frames from `peer` with no extension and no limit beyond
    /// the RFC's `2^63 - 1`.
    pub const fn new(peer: Peer) -> Self {
        DecodeConfig {
            peer,
            max_payload: i64::MAX as u64,
            allowed_rsv: 0,
        }
    }
}

/// A decoded (or to-be-encoded) frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// FIN: the last frame of a message.
    pub fin: bool,
    /// RSV1..RSV3 as a 3-bit value (RSV1 is `0b100`).
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub payload_len: u64,
}

impl FrameHeader {
    /// A header for an unfragmented frame of `opcode` with `payload_len` bytes.
    pub const fn new(opcode: OpCode, payload_len: u64, mask: Option<[u8; 4]>) -> Self {
        FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask,
            payload_len,
        }
    }

    /// Decodes a header from the start of `buf`.
    ///
    /// `Ok(Some((header, len)))`: the header is complete and `len` bytes long
    /// (the payload starts at `buf[len]`). `Ok(None)`: more bytes are needed;
    /// nothing was consumed. `Err`: the bytes break a rule; the connection
    /// must be closed with the error's close code.
    #[inline]
    pub fn decode(
        buf: &[u8],
        cfg: &DecodeConfig,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0f))?;
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;

        if rsv != 0 {
            let first_data_frame = matches!(opcode, OpCode::Text | OpCode::Binary);
            if !first_data_frame || rsv & !cfg.allowed_rsv != 0 {
                return Err(ProtocolError::ReservedBits(rsv));
            }
        }
        match (cfg.peer, masked) {
            (Peer::Client, false) => return Err(ProtocolError::UnmaskedClientFrame),
            (Peer::Server, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len7 as usize > MAX_CONTROL_PAYLOAD {
                return Err(ProtocolError::ControlTooLong(len7 as u64));
            }
        }

        let (payload_len, mut len) = match len7 {
            126 => match buf.get(2..4) {
                Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut be = [0u8; 8];
                    be.copy_from_slice(b);
                    let n = u64::from_be_bytes(be);
                    if n >> 63 != 0 {
                        return Err(ProtocolError::LengthTopBit);
                    }
                    (n, 10)
                }
                None => return Ok(None),
            },
            n => (n as u64, 2),
        };
        if payload_len > cfg.max_payload {
            return Err(ProtocolError::FrameTooLarge {
                len: payload_len,
                max: cfg.max_payload,
            });
        }

        let mask = if masked {
            match buf.get(len..len + 4) {
                Some(k) => {
                    len += 4;
                    Some([k[0], k[1], k[2], k[3]])
                }
                None => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin,
                rsv,
                opcode,
                mask,
                payload_len,
            },
            len,
        )))
    }

    /// The number of bytes [`FrameHeader::encode`] writes (always the
    /// minimal length encoding).
    #[inline]
    pub fn encoded_len(&self) -> usize {
        let ext = match self.payload_len {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        2 + ext + if self.mask.is_some() { 4 } else { 0 }
    }

    /// Encodes the header into `out` with the minimal length encoding and
    /// returns how many bytes were written (2 to 14).
    ///
    /// `payload_len` must be below `2^63` and `rsv` within 3 bits; this
    /// holds for every header [`FrameHeader::decode`] returns.
    #[inline]
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        debug_assert!(self.payload_len >> 63 == 0 && self.rsv <= 7);
        out[0] = (self.fin as u8) << 7 | (self.rsv & 7) << 4 | self.opcode as u8;
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = match self.payload_len {
            n @ 0..=125 => {
                out[1] = mask_bit | n as u8;
                2
            }
            n @ 126..=0xffff => {
                out[1] = mask_bit | 126;
                out[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                out[1] = mask_bit | 127;
                out[2..10].copy_from_slice(&n.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// A complete small frame (close, ping, pong, or a short data frame) built
/// on the stack, for the frames the proxy writes itself. No allocation.
#[derive(Clone, Copy)]
pub struct SmallFrame {
    bytes: [u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD],
    len: u8,
}

impl SmallFrame {
    /// Builds a final frame of `opcode` carrying `payload`, masked with
    /// `mask` if given (frames the proxy sends to a backend must be masked).
    /// The payload is cut to 125 bytes.
    pub fn new(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Self {
        let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
        let mut bytes = [0u8; MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD];
        let mut head = [0u8; MAX_HEADER_LEN];
        let h = FrameHeader::new(opcode, payload.len() as u64, mask).encode(&mut head);
        bytes[..h].copy_from_slice(&head[..h]);
        bytes[h..h + payload.len()].copy_from_slice(payload);
        if let Some(key) = mask {
            super::mask::apply_mask(&mut bytes[h..h + payload.len()], key, 0);
        }
        SmallFrame {
            bytes,
            len: (h + payload.len()) as u8,
        }
    }

    /// A close frame with `code` and `reason` (cut at a character boundary to
    /// fit 123 bytes).
    pub fn close(code: super::close::CloseCode, reason: &str, mask: Option<[u8; 4]>) -> Self {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let n = super::close::encode_close_payload(code, reason, &mut payload);
        SmallFrame::new(OpCode::Close, &payload[..n], mask)
    }

    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for SmallFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SmallFrame").field(&self.as_bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM_CLIENT: DecodeConfig = DecodeConfig::new(Peer::Client);
    const FROM_SERVER: DecodeConfig = DecodeConfig::new(Peer::Server);

    fn decode(
        buf: &[u8],
        cfg: &DecodeConfig,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        FrameHeader::decode(buf, cfg)
    }

    /// RFC 6455 §5.7, the example frames byte for byte.
    #[test]
    fn rfc_examples() {
        // A single-frame unmasked text message "Hello".
        let f = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = decode(&f, &FROM_SERVER).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.opcode, h.mask, h.payload_len, n),
            (true, OpCode::Text, None, 5, 2)
        );
        assert_eq!(&f[n..], b"Hello");

        // A single-frame masked text message "Hello".
        let mut f = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode(&f, &FROM_CLIENT).unwrap().unwrap();
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(n, 6);
        crate::proto::mask::apply_mask(&mut f[n..], h.mask.unwrap(), 0);
        assert_eq!(&f[n..], b"Hello");

        // A fragmented unmasked text message: "Hel" then "lo".
        let (h, _) = decode(&[0x01, 0x03, 0x48, 0x65, 0x6c], &FROM_SERVER)
            .unwrap()
            .unwrap();
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = decode(&[0x80, 0x02, 0x6c, 0x6f], &FROM_SERVER)
            .unwrap()
            .unwrap();
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));

        // Unmasked ping "Hello" and masked pong "Hello".
        let (h, _) = decode(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], &FROM_SERVER)
            .unwrap()
            .unwrap();
        assert_eq!((h.opcode, h.payload_len), (OpCode::Ping, 5));
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = decode(&pong, &FROM_CLIENT).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Pong, 5, 6));

        // 256 bytes binary in a single unmasked frame: 0x82 0x7E 0x0100.
        let (h, n) = decode(&[0x82, 0x7e, 0x01, 0x00], &FROM_SERVER)
            .unwrap()
            .unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Binary, 256, 4));

        // 64 KiB binary in a single unmasked frame: 0x82 0x7F 0x0000000000010000.
        let f = [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0];
        let (h, n) = decode(&f, &FROM_SERVER).unwrap().unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn rfc_examples_encode_byte_for_byte() {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = FrameHeader::new(OpCode::Text, 5, None).encode(&mut out);
        assert_eq!(&out[..n], &[0x81, 0x05]);
        let n = FrameHeader::new(OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d])).encode(&mut out);
        assert_eq!(&out[..n], &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        let n = FrameHeader::new(OpCode::Binary, 256, None).encode(&mut out);
        assert_eq!(&out[..n], &[0x82, 0x7e, 0x01, 0x00]);
        let n = FrameHeader::new(OpCode::Binary, 65536, None).encode(&mut out);
        assert_eq!(&out[..n], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
        let f = SmallFrame::new(OpCode::Pong, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(
            f.as_bytes(),
            &[
                0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58
            ]
        );
        let f = SmallFrame::new(OpCode::Ping, b"Hello", None);
        assert_eq!(f.as_bytes(), &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn incomplete_needs_more_at_every_prefix() {
        let full = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for i in 0..full.len() {
            assert_eq!(decode(&full[..i], &FROM_CLIENT), Ok(None), "prefix {i}");
        }
        let (h, n) = decode(&full, &FROM_CLIENT).unwrap().unwrap();
        assert_eq!((h.payload_len, h.mask, n), (65536, Some([1, 2, 3, 4]), 14));
    }

    #[test]
    fn length_top_bit_is_an_error() {
        let f = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(decode(&f, &FROM_SERVER), Err(ProtocolError::LengthTopBit));
        let f = [0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&f, &FROM_SERVER).unwrap().unwrap().0.payload_len,
            i64::MAX as u64
        );
    }

    #[test]
    fn max_payload_checked_before_the_mask_arrives() {
        let cfg = DecodeConfig {
            max_payload: 1000,
            ..FROM_CLIENT
        };
        // 16-bit length 1001, key not yet received: the limit fires already.
        assert_eq!(
            decode(&[0x82, 0xfe, 0x03, 0xe9], &cfg),
            Err(ProtocolError::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        assert!(
            decode(&[0x82, 0xfe, 0x03, 0xe8, 0, 0, 0, 0], &cfg)
                .unwrap()
                .is_some()
        );
        let huge = [0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode(&huge, &cfg),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        assert_eq!(
            decode(&[0x09, 0x00], &FROM_SERVER),
            Err(ProtocolError::FragmentedControl)
        );
        assert_eq!(
            decode(&[0x08, 0x00], &FROM_SERVER),
            Err(ProtocolError::FragmentedControl)
        );
        assert_eq!(
            decode(&[0x89, 0x7e], &FROM_SERVER),
            Err(ProtocolError::ControlTooLong(126))
        );
        assert_eq!(
            decode(&[0x8a, 0x7f], &FROM_SERVER),
            Err(ProtocolError::ControlTooLong(127))
        );
        assert!(decode(&[0x89, 0x7d], &FROM_SERVER).unwrap().is_some());
    }

    #[test]
    fn reserved_opcodes_are_errors() {
        for op in (3..=7).chain(11..=15) {
            assert_eq!(
                decode(&[0x80 | op, 0x80], &FROM_CLIENT),
                Err(ProtocolError::ReservedOpcode(op))
            );
        }
        for op in [0, 1, 2, 8, 9, 10] {
            assert!(decode(&[0x80 | op, 0x80, 0, 0, 0, 0], &FROM_CLIENT).is_ok());
        }
    }

    #[test]
    fn rsv_bits_need_an_extension() {
        for rsv in 1..=7u8 {
            let b0 = 0x81 | rsv << 4;
            assert_eq!(
                decode(&[b0, 0x00], &FROM_SERVER),
                Err(ProtocolError::ReservedBits(rsv))
            );
        }
        let deflate = DecodeConfig {
            allowed_rsv: RSV1,
            ..FROM_SERVER
        };
        assert!(decode(&[0xc1, 0x00], &deflate).unwrap().is_some());
        assert!(decode(&[0xc2, 0x00], &deflate).unwrap().is_some());
        // RSV2 is still reserved, and RSV1 never applies to control or
        // continuation frames.
        assert_eq!(
            decode(&[0xa1, 0x00], &deflate),
            Err(ProtocolError::ReservedBits(2))
        );
        assert_eq!(
            decode(&[0xc9, 0x00], &deflate),
            Err(ProtocolError::ReservedBits(4))
        );
        assert_eq!(
            decode(&[0xc0, 0x00], &deflate),
            Err(ProtocolError::ReservedBits(4))
        );
    }

    #[test]
    fn masking_rule_follows_the_sender() {
        assert_eq!(
            decode(&[0x81, 0x00], &FROM_CLIENT),
            Err(ProtocolError::UnmaskedClientFrame)
        );
        assert_eq!(
            decode(&[0x81, 0x80, 1, 2, 3, 4], &FROM_SERVER),
            Err(ProtocolError::MaskedServerFrame)
        );
    }

    #[test]
    fn errors_are_reported_before_the_header_is_complete() {
        // Only two bytes of a frame whose 64-bit length has not arrived.
        assert_eq!(
            decode(&[0x83, 0xff], &FROM_CLIENT),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            decode(&[0x82, 0x7f], &FROM_CLIENT),
            Err(ProtocolError::UnmaskedClientFrame)
        );
    }

    #[test]
    fn non_minimal_lengths_are_accepted() {
        let (h, n) = decode(&[0x82, 0x7e, 0x00, 0x05], &FROM_SERVER)
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (5, 4));
    }

    #[test]
    fn encoded_len_matches_encode() {
        let mut out = [0u8; MAX_HEADER_LEN];
        for len in [0u64, 125, 126, 65535, 65536, i64::MAX as u64] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader::new(OpCode::Binary, len, mask);
                assert_eq!(h.encode(&mut out), h.encoded_len());
                assert_eq!(
                    decode(
                        &out,
                        &DecodeConfig::new(if mask.is_some() {
                            Peer::Client
                        } else {
                            Peer::Server
                        })
                    )
                    .unwrap()
                    .unwrap(),
                    (h, h.encoded_len())
                );
            }
        }
    }

    fn any_header() -> impl proptest::strategy::Strategy<Value = FrameHeader> {
        use proptest::prelude::*;
        let opcode = prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ];
        let len = prop_oneof![0u64..=125, 126u64..=0xffff, 0x1_0000u64..=(i64::MAX as u64)];
        (
            opcode,
            any::<bool>(),
            0u8..8,
            proptest::option::of(any::<[u8; 4]>()),
            len,
        )
            .prop_map(|(opcode, fin, rsv, mask, payload_len)| {
                let control = opcode.is_control();
                FrameHeader {
                    fin: fin || control,
                    rsv: if matches!(opcode, OpCode::Text | OpCode::Binary) {
                        rsv
                    } else {
                        0
                    },
                    opcode,
                    mask,
                    payload_len: if control {
                        payload_len % 126
                    } else {
                        payload_len
                    },
                }
            })
    }

    proptest::proptest! {
        /// Every valid header shape: encode, then decode (with every RSV bit
        /// allowed and the masking rule of the sender it implies) gives the
        /// same header and the same length, and no prefix decodes.
        #[test]
        fn encode_decode_round_trip(h in any_header()) {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = h.encode(&mut out);
            proptest::prop_assert_eq!(n, h.encoded_len());
            let peer = if h.mask.is_some() { Peer::Client } else { Peer::Server };
            let cfg = DecodeConfig { allowed_rsv: 0b111, ..DecodeConfig::new(peer) };
            proptest::prop_assert_eq!(decode(&out[..n], &cfg), Ok(Some((h, n))));
            for i in 0..n {
                proptest::prop_assert_eq!(decode(&out[..i], &cfg), Ok(None));
            }
        }
    }

    #[test]
    fn small_frame_cuts_payload_to_125() {
        let f = SmallFrame::new(OpCode::Ping, &[7u8; 300], None);
        assert_eq!(f.as_bytes().len(), 127);
    }
}
