//! The frame walker: one direction's frames, walked in place in the buffer
//! they were read into.
//!
//! [`Walker::walk`] takes the bytes of one read (with the few bytes carried
//! over from the last one already in front of them), decodes every header,
//! checks sequencing, sizes, UTF-8 and close payloads, and rewrites the
//! frames for their destination in the same buffer: a client frame gets a
//! fresh key written over its own and its payload re-masked in one pass; a
//! server frame passes as it is; for an endpoint that answers itself (the
//! built-in echo server) the mask is stripped. The bytes to send are
//! `buf[..out_end]`; normally that is the input itself, unmoved. Only when a
//! frame is dropped (the pong that answers wsedge's own ping, a close that is
//! not for the destination) or a header shrinks (mask stripped) are the
//! bytes after it moved down over the gap.
//!
//! No allocation, no clock, no socket: the relay core, the echo server and
//! the fuzz target all drive this same code.

use crate::proto::close::{CloseCode, CloseValidator};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{DecodeConfig, FrameHeader, MAX_HEADER_LEN, OpCode, Peer, RSV1};
use crate::proto::mask::{MaskKeyGen, apply_mask, remask};
use crate::proto::message::{FrameKind, MessageConfig, MessageState};

/// What the walker does to a frame's mask on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Client frames to a server: a fresh key replaces the client's.
    Remask,
    /// Server frames to a client: unmasked in, unmasked out.
    Keep,
    /// Client frames answered by an endpoint (the echo server): unmasked,
    /// the key removed from the header, pings turned into pongs.
    Echo,
}

/// The walker's fixed settings.
#[derive(Debug, Clone, Copy)]
pub struct WalkConfig {
    /// Who sends the frames walked: [`Peer::Client`] frames must be masked,
    /// [`Peer::Server`] frames must not be.
    pub source: Peer,
    /// Largest message, summed over its fragments (and so the largest frame).
    pub max_message_size: u64,
    /// Validate text as UTF-8.
    pub validate_utf8: bool,
    /// permessage-deflate was negotiated: RSV1 allowed on data frames.
    pub compressed: bool,
    /// What happens to masks.
    pub output: Output,
}

/// The payload of wsedge's own pings: 8 bytes, so a pong that answers one
/// fits the walker's carry with its header and is recognised whole.
pub const PING_TOKEN_LEN: usize = 8;

/// Per-call switches, decided by the close policy.
#[derive(Debug, Clone, Copy)]
pub struct WalkOpts {
    /// The destination still takes frames; when `false` the frames are only
    /// checked (a close reply is still looked for) and nothing is output.
    pub forward: bool,
    /// A close frame from the source goes out too (else it is cut out).
    pub forward_close: bool,
    /// The token of wsedge's unanswered ping to the source: the pong that
    /// carries it is consumed, not output.
    pub own_ping: Option<[u8; PING_TOKEN_LEN]>,
}

/// What stopped a walk early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A complete close frame from the source, with its code.
    Close {
        /// The code it carried (`None`: an empty close payload).
        code: Option<CloseCode>,
        /// It is part of the output.
        forwarded: bool,
    },
    /// The source broke the protocol; the output stops before the frame at fault.
    Error(ProtocolError),
}

/// The result of walking one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Send `buf[..out_end]`.
    pub out_end: usize,
    /// After that, the destination is in the middle of a frame.
    pub open: bool,
    /// What stopped the walk, if anything; bytes after it are discarded.
    pub event: Option<Event>,
    /// The pong answering wsedge's ping was found (and consumed).
    pub own_pong: bool,
    /// Data messages that ended in this buffer.
    pub messages: u32,
    /// Those messages by size.
    pub sizes: MessageSizes,
}

/// Data messages by size: the payload bytes of all their frames as they
/// crossed the wire (compressed, with permessage-deflate), in buckets of
/// up to 64 B, 256 B, 1 KiB, 4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB, and
/// more.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageSizes {
    /// Messages by bucket.
    pub counts: [u32; MessageSizes::BUCKETS],
    /// Their bytes, all buckets.
    pub bytes: u64,
}

impl MessageSizes {
    /// Buckets, the last unbounded.
    pub const BUCKETS: usize = 9;
    /// The bounded buckets' upper bounds (inclusive), in bytes.
    pub const BOUNDS: [u64; MessageSizes::BUCKETS - 1] = [
        64,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
    ];

    /// The bucket of a message of `len` bytes: one per factor of 4 above
    /// 64 B, from the bit length of `len - 1`.
    #[inline]
    pub fn bucket(len: u64) -> usize {
        let bits = 64 - len.saturating_sub(1).leading_zeros();
        (bits.saturating_sub(5) / 2).min(Self::BUCKETS as u32 - 1) as usize
    }

    /// Counts a message of `len` bytes.
    #[inline]
    pub fn count(&mut self, len: u64) {
        let b = &mut self.counts[Self::bucket(len)];
        *b = b.wrapping_add(1);
        self.bytes = self.bytes.wrapping_add(len);
    }

    /// Adds `other`'s counts to these.
    #[inline]
    pub fn add(&mut self, other: &MessageSizes) {
        for (total, n) in self.counts.iter_mut().zip(other.counts) {
            *total = total.wrapping_add(n);
        }
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Frames seen, by opcode: continuation, text, binary, close, ping, pong.
/// Wrapping counters (readers take differences).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts(pub [u32; 6]);

impl FrameCounts {
    /// The slot of an opcode.
    pub fn index(op: OpCode) -> usize {
        match op {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 3,
            OpCode::Ping => 4,
            OpCode::Pong => 5,
        }
    }

    /// Frames of `op` seen.
    pub fn get(&self, op: OpCode) -> u32 {
        self.0[Self::index(op)]
    }
}

/// The frame a direction is in the middle of.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    remaining: u64,
    offset: u64,
    src_key: Option<[u8; 4]>,
    dst_key: Option<[u8; 4]>,
    /// Look at the payload: UTF-8 text, or a close frame.
    inspect: bool,
    /// Ends a data message.
    fin: bool,
    /// Checked but not output.
    drop: bool,
    opcode: OpCode,
}

/// One direction's frame state between reads.
#[derive(Debug, Clone)]
pub struct Walker {
    decode: DecodeConfig,
    output: Output,
    msg: MessageState,
    frame: Option<InFrame>,
    close: CloseValidator,
    /// Bytes of a frame not yet decided on (an incomplete header, or a
    /// possible own pong), put back in front of the next read.
    carry: [u8; MAX_HEADER_LEN],
    carry_len: u8,
    /// Frames seen, by opcode.
    pub frames: FrameCounts,
}

impl Walker {
    /// A direction at a message boundary.
    pub fn new(cfg: &WalkConfig) -> Walker {
        Walker {
            decode: DecodeConfig {
                peer: cfg.source,
                max_payload: cfg.max_message_size,
                allowed_rsv: if cfg.compressed { RSV1 } else { 0 },
            },
            output: cfg.output,
            msg: MessageState::new(MessageConfig {
                max_message_size: cfg.max_message_size,
                validate_utf8: cfg.validate_utf8,
            }),
            frame: None,
            close: CloseValidator::new(),
            carry: [0; MAX_HEADER_LEN],
            carry_len: 0,
            frames: FrameCounts::default(),
        }
    }

    /// Copies the carried bytes to the start of `buf` (which must hold at
    /// least [`MAX_HEADER_LEN`] bytes); the next read goes after them, and
    /// [`Walker::walk`] is given both. Returns how many there are. (They stay
    /// carried until that walk, so a read that finds nothing loses nothing.)
    #[inline]
    pub fn put_carry(&self, buf: &mut [u8]) -> usize {
        let n = self.carry_len as usize;
        if n > 0 {
            buf[..n].copy_from_slice(&self.carry[..n]);
        }
        n
    }

    /// Bytes carried to the next read.
    pub fn carried(&self) -> usize {
        self.carry_len as usize
    }

    /// Walks `buf` (carried bytes first, then the read): validates and
    /// rewrites frames in place. See [`Walk`].
    #[inline]
    pub fn walk(&mut self, buf: &mut [u8], opts: WalkOpts, keys: &mut MaskKeyGen) -> Walk {
        // The carried bytes are at the front of `buf` now.
        self.carry_len = 0;
        let mut w = Walked {
            r: 0,
            w: 0,
            frame_start: None,
            own_pong: false,
            messages: 0,
            sizes: MessageSizes::default(),
            cut_open: false,
        };
        let event = self.walk_inner(buf, &opts, keys, &mut w);
        let open = match event {
            None => self.frame.is_some_and(|f| !f.drop),
            Some(Event::Close { .. }) => false,
            // A frame found bad after its header went out with an earlier
            // buffer leaves the destination mid-frame.
            Some(Event::Error(_)) => w.cut_open,
        };
        if matches!(event, Some(Event::Error(_))) {
            self.frame = None;
        }
        Walk {
            out_end: if opts.forward { w.w } else { 0 },
            open: opts.forward && open,
            event,
            own_pong: w.own_pong,
            messages: w.messages,
            sizes: w.sizes,
        }
    }

    fn walk_inner(
        &mut self,
        buf: &mut [u8],
        opts: &WalkOpts,
        keys: &mut MaskKeyGen,
        st: &mut Walked,
    ) -> Option<Event> {
        let len = buf.len();
        loop {
            if let Some(f) = &mut self.frame {
                let n = f.remaining.min((len - st.r) as u64) as usize;
                let chunk = st.r..st.r + n;
                if let Err(e) = payload(&mut buf[chunk.clone()], f, &mut self.msg, &mut self.close)
                {
                    let dropped = f.drop;
                    return Some(bad_frame(st, e, dropped));
                }
                if !f.drop {
                    if st.w != st.r {
                        buf.copy_within(chunk, st.w);
                    }
                    st.w += n;
                }
                st.r += n;
                f.remaining -= n as u64;
                f.offset += n as u64;
                if f.remaining > 0 {
                    return None;
                }
                let (opcode, fin, dropped) = (f.opcode, f.fin, f.drop);
                self.frame = None;
                if opcode == OpCode::Close {
                    return Some(match self.close.finish() {
                        Ok(code) => Event::Close {
                            code,
                            forwarded: !dropped && opts.forward,
                        },
                        Err(e) => bad_frame(st, e, dropped),
                    });
                }
                if let Err(e) = self.msg.on_frame_end() {
                    return Some(bad_frame(st, e, false));
                }
                if fin && !opcode.is_control() {
                    st.messages += 1;
                    st.sizes.count(self.msg.message_size());
                }
                st.frame_start = None;
                continue;
            }
            let (h, hlen) = match FrameHeader::decode(&buf[st.r..], &self.decode) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    self.carry_rest(buf, st.r);
                    return None;
                }
                Err(e) => return Some(Event::Error(e)),
            };
            let inspect = match self.msg.on_header(&h) {
                Ok(FrameKind::Data { validate_utf8 }) => validate_utf8,
                Ok(FrameKind::Control(OpCode::Close)) => {
                    self.close = CloseValidator::new();
                    true
                }
                Ok(FrameKind::Control(_)) => false,
                Err(e) => return Some(Event::Error(e)),
            };
            // The pong that answers wsedge's ping is consumed here, whole:
            // header and 8-byte payload (at most 14 bytes) are carried to the
            // next read until they are all in.
            if let (OpCode::Pong, Some(token)) = (h.opcode, opts.own_ping) {
                if h.payload_len == PING_TOKEN_LEN as u64 {
                    let end = st.r + hlen + PING_TOKEN_LEN;
                    if end > len {
                        self.carry_rest(buf, st.r);
                        return None;
                    }
                    let mut got = [0u8; PING_TOKEN_LEN];
                    got.copy_from_slice(&buf[st.r + hlen..end]);
                    if let Some(key) = h.mask {
                        apply_mask(&mut got, key, 0);
                    }
                    if got == token {
                        let i = FrameCounts::index(OpCode::Pong);
                        self.frames.0[i] = self.frames.0[i].wrapping_add(1);
                        st.own_pong = true;
                        st.r = end;
                        continue;
                    }
                }
            }
            let i = FrameCounts::index(h.opcode);
            self.frames.0[i] = self.frames.0[i].wrapping_add(1);
            let mut dst_key = None;
            let out_len = match (self.output, h.mask) {
                (Output::Remask, Some(_)) => {
                    // A fresh key replaces the client's, in place.
                    let key = keys.next_key();
                    buf[st.r + hlen - 4..st.r + hlen].copy_from_slice(&key);
                    dst_key = Some(key);
                    hlen
                }
                (Output::Echo, Some(_)) => {
                    let opcode = if h.opcode == OpCode::Ping {
                        OpCode::Pong
                    } else {
                        h.opcode
                    };
                    let mut out = [0u8; MAX_HEADER_LEN];
                    let n = FrameHeader {
                        mask: None,
                        opcode,
                        ..h
                    }
                    .encode(&mut out);
                    // The shorter header ends where the payload starts.
                    buf[st.r + hlen - n..st.r + hlen].copy_from_slice(&out[..n]);
                    st.r += hlen - n;
                    n
                }
                // Keep: a masked frame stays masked with its own key.
                (Output::Keep, key) => {
                    dst_key = key;
                    hlen
                }
                (_, None) => hlen,
            };
            // A close the destination must not get (see `forward_close`)
            // is checked but left out, header and all.
            let drop = h.opcode == OpCode::Close && !opts.forward_close;
            if drop {
                st.frame_start = Some(st.w);
                st.r += out_len;
            } else {
                if st.w != st.r {
                    buf.copy_within(st.r..st.r + out_len, st.w);
                }
                st.frame_start = Some(st.w);
                st.r += out_len;
                st.w += out_len;
            }
            self.frame = Some(InFrame {
                drop,
                remaining: h.payload_len,
                offset: 0,
                src_key: h.mask,
                dst_key,
                inspect,
                fin: h.fin,
                opcode: h.opcode,
            });
        }
    }

    /// Keeps `buf[from..]` (fewer than [`MAX_HEADER_LEN`] bytes) for the next read.
    fn carry_rest(&mut self, buf: &[u8], from: usize) {
        let rest = &buf[from..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len() as u8;
    }
}

/// The frame in progress broke a rule: the output ends before it. If its
/// header went out with an earlier buffer, nothing of this buffer goes out
/// and the destination is left mid-frame (it gets its TCP connection ended
/// instead of a close frame).
fn bad_frame(st: &mut Walked, e: ProtocolError, dropped: bool) -> Event {
    match st.frame_start {
        Some(at) => st.w = at,
        None => {
            st.w = 0;
            st.cut_open = !dropped;
        }
    }
    Event::Error(e)
}

/// Cursor state of one walk.
struct Walked {
    /// Next byte to read.
    r: usize,
    /// End of the output so far (`w <= r`).
    w: usize,
    /// Where the current frame's header sits in the output, if in this buffer.
    frame_start: Option<usize>,
    own_pong: bool,
    messages: u32,
    sizes: MessageSizes,
    /// An error cut a frame whose header already went out.
    cut_open: bool,
}

/// Handles one chunk of a frame's payload in place: unmask, validate, mask
/// where the payload must be looked at; a one-pass re-mask otherwise.
#[inline]
fn payload(
    chunk: &mut [u8],
    f: &InFrame,
    msg: &mut MessageState,
    close: &mut CloseValidator,
) -> Result<(), ProtocolError> {
    if chunk.is_empty() {
        return Ok(());
    }
    if !f.inspect {
        match (f.src_key, f.dst_key) {
            (Some(old), Some(new)) if old != new => remask(chunk, old, new, f.offset),
            (Some(old), None) => apply_mask(chunk, old, f.offset),
            _ => {}
        }
        return Ok(());
    }
    if let Some(old) = f.src_key {
        apply_mask(chunk, old, f.offset);
    }
    if f.opcode == OpCode::Close {
        close.feed(chunk)?;
    } else {
        msg.on_payload(chunk)?;
    }
    if let Some(new) = f.dst_key {
        apply_mask(chunk, new, f.offset);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_cfg(output: Output) -> WalkConfig {
        WalkConfig {
            source: Peer::Client,
            max_message_size: 1 << 20,
            validate_utf8: true,
            compressed: false,
            output,
        }
    }

    fn masked(opcode: OpCode, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut h = [0u8; MAX_HEADER_LEN];
        let n = FrameHeader {
            fin,
            ..FrameHeader::new(opcode, payload.len() as u64, Some(key))
        }
        .encode(&mut h);
        let mut v = h[..n].to_vec();
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        v.extend_from_slice(&p);
        v
    }

    fn opts() -> WalkOpts {
        WalkOpts {
            forward: true,
            forward_close: true,
            own_ping: None,
        }
    }

    #[test]
    fn echo_strips_the_mask_and_turns_pings_into_pongs() {
        let mut w = Walker::new(&client_cfg(Output::Echo));
        let mut keys = MaskKeyGen::from_seed([1; 32]);
        let mut buf = masked(OpCode::Text, true, b"hello", [1, 2, 3, 4]);
        buf.extend(masked(OpCode::Ping, true, b"p", [9, 9, 9, 9]));
        let walk = w.walk(&mut buf, opts(), &mut keys);
        assert_eq!(walk.event, None);
        assert_eq!(&buf[..walk.out_end], b"\x81\x05hello\x8a\x01p");
        assert_eq!(walk.messages, 1);
    }

    #[test]
    fn message_size_buckets_match_their_bounds() {
        // The bit trick against the bounds it stands for, at and around
        // every bound, and at the extremes.
        let reference = |len: u64| {
            MessageSizes::BOUNDS
                .iter()
                .position(|&b| len <= b)
                .unwrap_or(MessageSizes::BUCKETS - 1)
        };
        let mut lens = vec![0, 1, 2, 3, u64::MAX - 1, u64::MAX];
        for b in MessageSizes::BOUNDS {
            lens.extend([b - 1, b, b + 1]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lens.push(x >> (x % 64));
        }
        for len in lens {
            assert_eq!(MessageSizes::bucket(len), reference(len), "{len}");
        }
    }

    #[test]
    fn a_fragmented_message_is_counted_once_at_its_full_size() {
        let mut stream = masked(OpCode::Binary, false, &[1; 150], [1, 2, 3, 4]);
        stream.extend(masked(OpCode::Ping, true, b"p", [9, 9, 9, 9]));
        stream.extend(masked(OpCode::Continuation, true, &[2; 150], [5, 6, 7, 8]));
        stream.extend(masked(OpCode::Text, true, b"", [5, 6, 7, 8]));
        for split in 0..=stream.len() {
            let mut w = Walker::new(&client_cfg(Output::Keep));
            let mut keys = MaskKeyGen::from_seed([1; 32]);
            let mut total = MessageSizes::default();
            for part in [&stream[..split], &stream[split..]] {
                let mut buf = vec![0u8; MAX_HEADER_LEN + part.len()];
                let c = w.put_carry(&mut buf);
                buf.truncate(c + part.len());
                buf[c..].copy_from_slice(part);
                let walk = w.walk(&mut buf, opts(), &mut keys);
                assert_eq!(walk.event, None);
                total.add(&walk.sizes);
            }
            let mut want = MessageSizes::default();
            want.count(300);
            want.count(0);
            assert_eq!(total, want, "split at {split}");
        }
    }

    #[test]
    fn own_pong_is_consumed_even_when_split() {
        let token = *b"wsedge01";
        let mut stream = masked(OpCode::Binary, true, b"ab", [1, 2, 3, 4]);
        stream.extend(masked(OpCode::Pong, true, &token, [5, 6, 7, 8]));
        stream.extend(masked(OpCode::Pong, true, b"theirs!!", [5, 6, 7, 8]));
        for split in 0..=stream.len() {
            let mut w = Walker::new(&client_cfg(Output::Keep));
            let mut keys = MaskKeyGen::from_seed([1; 32]);
            let o = WalkOpts {
                own_ping: Some(token),
                ..opts()
            };
            let mut out = Vec::new();
            let mut found = false;
            for part in [&stream[..split], &stream[split..]] {
                let mut buf = vec![0u8; MAX_HEADER_LEN + part.len()];
                let c = w.put_carry(&mut buf);
                buf.truncate(c + part.len());
                buf[c..].copy_from_slice(part);
                let walk = w.walk(&mut buf, o, &mut keys);
                found |= walk.own_pong;
                out.extend_from_slice(&buf[..walk.out_end]);
            }
            assert!(found, "split {split}");
            let mut want = masked(OpCode::Binary, true, b"ab", [1, 2, 3, 4]);
            want.extend(masked(OpCode::Pong, true, b"theirs!!", [5, 6, 7, 8]));
            assert_eq!(out, want, "split {split}");
        }
    }
}
