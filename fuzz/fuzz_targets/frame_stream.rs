//! A stream of frames, decoded the way the relay does it (chunk by chunk,
//! header by header, payloads skipped across chunks), checked against a
//! plain reference parser that sees the whole stream at once.
//!
//! Input: `[config] [n] [n chunk lengths] [stream...]`.
//! - config bit 0: sender (0 client, 1 server); bits 1-3: `allowed_rsv`;
//!   bits 4-6: `max_payload` from `MAX_PAYLOADS`.
//! - n & 7 chunk lengths (each byte + 1), used cyclically to cut the stream;
//!   n & 7 == 0 delivers the stream in one chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::proto::error::ProtocolError;
use wsedge::proto::frame::{DecodeConfig, FrameHeader, MAX_HEADER_LEN, OpCode, Peer};

const MAX_PAYLOADS: [u64; 8] = [
    i64::MAX as u64,
    u64::MAX,
    0,
    125,
    126,
    0xffff,
    0x1_0000,
    1000,
];

fuzz_target!(|data: &[u8]| {
    let [config, n, rest @ ..] = data else { return };
    let n = (*n & 7) as usize;
    if rest.len() < n {
        return;
    }
    let (cuts, stream) = rest.split_at(n);
    let cfg = DecodeConfig {
        peer: if config & 1 == 0 {
            Peer::Client
        } else {
            Peer::Server
        },
        allowed_rsv: (config >> 1) & 7,
        max_payload: MAX_PAYLOADS[((config >> 4) & 7) as usize],
    };

    let expected = reference(stream, &cfg);
    let got = streaming(stream, cuts, &cfg);
    assert_eq!(got.headers.len(), expected.headers.len(), "header count");
    for (i, (g, e)) in got.headers.iter().zip(&expected.headers).enumerate() {
        assert_eq!(g, e, "header {i}");
    }
    assert_eq!(got.error, expected.error.map(|(e, _, _)| e), "first error");

    // Fail fast: the error is reported from exactly the bytes that prove it.
    if let Some((err, at, need)) = expected.error {
        let bytes = &stream[at..];
        for k in 0..need {
            assert_eq!(
                FrameHeader::decode(&bytes[..k], &cfg),
                Ok(None),
                "prefix {k}"
            );
        }
        assert_eq!(FrameHeader::decode(&bytes[..need], &cfg), Err(err));
    }

    // Every header survives encode → decode; a minimal one byte for byte.
    for &(h, at, n) in &expected.headers {
        let mut out = [0u8; MAX_HEADER_LEN];
        let len = h.encode(&mut out);
        assert_eq!(len, h.encoded_len());
        assert_eq!(FrameHeader::decode(&out[..len], &cfg), Ok(Some((h, len))));
        for k in 0..len {
            assert_eq!(
                FrameHeader::decode(&out[..k], &cfg),
                Ok(None),
                "encoded prefix {k}"
            );
        }
        if len == n {
            assert_eq!(&out[..len], &stream[at..at + n], "minimal encoding");
        } else {
            assert!(len < n, "encode is never longer than what was decoded");
        }
    }
});

struct Streamed {
    headers: Vec<(FrameHeader, usize, usize)>,
    error: Option<ProtocolError>,
}

/// The relay's loop: bytes arrive in chunks into a buffer; decode headers
/// from the unconsumed bytes, skip payloads (which may span chunks).
fn streaming(stream: &[u8], cuts: &[u8], cfg: &DecodeConfig) -> Streamed {
    let mut out = Streamed {
        headers: Vec::new(),
        error: None,
    };
    let mut chunks = Chunks {
        rest: stream,
        cuts,
        i: 0,
    };
    let mut buf: Vec<u8> = Vec::new();
    // Stream offset of buf[0], and payload bytes still to skip.
    let mut base = 0usize;
    let mut skip: u64 = 0;
    loop {
        loop {
            if skip > 0 {
                let k = (skip.min(buf.len() as u64)) as usize;
                buf.drain(..k);
                base += k;
                skip -= k as u64;
                if skip > 0 {
                    break;
                }
            }
            match FrameHeader::decode(&buf, cfg) {
                Ok(None) => {
                    assert!(
                        buf.len() < MAX_HEADER_LEN,
                        "need more with a full header at hand"
                    );
                    break;
                }
                Ok(Some((h, n))) => {
                    assert!((2..=MAX_HEADER_LEN).contains(&n) && n <= buf.len());
                    out.headers.push((h, base, n));
                    buf.drain(..n);
                    base += n;
                    skip = h.payload_len;
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
        match chunks.next() {
            Some(c) => buf.extend_from_slice(c),
            None => return out,
        }
    }
}

struct Chunks<'a> {
    rest: &'a [u8],
    cuts: &'a [u8],
    i: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = if self.cuts.is_empty() {
            self.rest.len()
        } else {
            let c = self.cuts[self.i % self.cuts.len()] as usize + 1;
            self.i += 1;
            c.min(self.rest.len())
        };
        let (c, r) = self.rest.split_at(len);
        self.rest = r;
        Some(c)
    }
}

struct Reference {
    /// Header, its stream offset and its length.
    headers: Vec<(FrameHeader, usize, usize)>,
    /// The first error, the offset of its frame, and how many bytes of that
    /// frame prove it.
    error: Option<(ProtocolError, usize, usize)>,
}

/// RFC 6455 §5.2 read bit by bit over the whole stream. The checks come in
/// the order the bits arrive; when several rules break on the same bytes the
/// first listed wins: opcode, RSV bits, mask, control FIN, control length,
/// 64-bit top bit, payload limit.
fn reference(s: &[u8], cfg: &DecodeConfig) -> Reference {
    let bit = |byte: u8, i: u32| (byte >> (7 - i)) & 1;
    let mut r = Reference {
        headers: Vec::new(),
        error: None,
    };
    let mut at = 0usize;
    while s.len() - at >= 2 {
        let (b0, b1) = (s[at], s[at + 1]);
        let fin = bit(b0, 0) == 1;
        let rsv = bit(b0, 1) << 2 | bit(b0, 2) << 1 | bit(b0, 3);
        let op = bit(b0, 4) << 3 | bit(b0, 5) << 2 | bit(b0, 6) << 1 | bit(b0, 7);
        let masked = bit(b1, 0) == 1;
        let mut len7 = 0u8;
        for i in 1..8 {
            len7 = len7 << 1 | bit(b1, i);
        }
        let opcode = match op {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            _ => {
                r.error = Some((ProtocolError::ReservedOpcode(op), at, 2));
                return r;
            }
        };
        let control = op >= 8;
        let data_start = op == 1 || op == 2;
        for (mask_bit, allowed) in [
            (4u8, cfg.allowed_rsv & 4),
            (2, cfg.allowed_rsv & 2),
            (1, cfg.allowed_rsv & 1),
        ] {
            if rsv & mask_bit != 0 && (allowed == 0 || !data_start) {
                r.error = Some((ProtocolError::ReservedBits(rsv), at, 2));
                return r;
            }
        }
        let mask_error = match cfg.peer {
            Peer::Client if !masked => Some(ProtocolError::UnmaskedClientFrame),
            Peer::Server if masked => Some(ProtocolError::MaskedServerFrame),
            _ => None,
        };
        if let Some(e) = mask_error {
            r.error = Some((e, at, 2));
            return r;
        }
        if control && !fin {
            r.error = Some((ProtocolError::FragmentedControl, at, 2));
            return r;
        }
        if control && len7 > 125 {
            r.error = Some((ProtocolError::ControlTooLong(len7 as u64), at, 2));
            return r;
        }
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if s.len() - at < 2 + ext {
            return r;
        }
        let mut payload_len: u64 = if ext == 0 { len7 as u64 } else { 0 };
        for &b in &s[at + 2..at + 2 + ext] {
            payload_len = payload_len << 8 | b as u64;
        }
        if ext == 8 && payload_len >= 1 << 63 {
            r.error = Some((ProtocolError::LengthTopBit, at, 10));
            return r;
        }
        if payload_len > cfg.max_payload {
            let e = ProtocolError::FrameTooLarge {
                len: payload_len,
                max: cfg.max_payload,
            };
            r.error = Some((e, at, 2 + ext));
            return r;
        }
        let hlen = 2 + ext + if masked { 4 } else { 0 };
        if s.len() - at < hlen {
            return r;
        }
        let mask = masked.then(|| {
            let k = &s[at + 2 + ext..at + hlen];
            [k[0], k[1], k[2], k[3]]
        });
        let h = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        };
        r.headers.push((h, at, hlen));
        let left = (s.len() - at - hlen) as u64;
        if payload_len > left {
            return r;
        }
        at += hlen + payload_len as usize;
    }
    r
}
