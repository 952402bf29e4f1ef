//! The relay: frames both ways between a client and its backend, after the
//! handshake.
//!
//! A relayed connection is one hand-written future, [`Relay`], that owns
//! both sockets and the small state of each direction. Each direction reads
//! its source into a buffer borrowed from the worker's pool, walks the frames
//! in place (validating, unmasking only where it must look at the payload,
//! re-masking client frames with a fresh key per frame), writes the
//! processed bytes to its destination out of the same buffer, and gives the
//! buffer back. It reads nothing more until the destination has taken those
//! bytes (backpressure: at most one buffer in flight per direction). A read
//! that finds nothing returns the buffer at once, so an idle connection holds
//! none.
//!
//! Each socket is written by exactly one direction: the client by
//! backend→client, the backend by client→backend. A close frame wsedge must
//! send on a leg (a protocol error, a peer that vanished, idle timeout,
//! shutdown) is posted for that leg and sent by the direction that writes
//! it, at a frame boundary — or, if that leg is in the middle of a frame, the
//! TCP connection is half-closed instead: a stream is never corrupted. The
//! close codes are listed in `docs/architecture.md`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::{Instant, Sleep};

use crate::pool::{Pool, PoolBuf};
use crate::proto::close::{CloseCode, CloseValidator};
use crate::proto::error::ProtocolError;
use crate::proto::frame::{
    DecodeConfig, FrameHeader, MAX_HEADER_LEN, OpCode, Peer, RSV1, SmallFrame,
};
use crate::proto::mask::{MaskKeyGen, apply_mask, remask};
use crate::proto::message::{FrameKind, MessageConfig, MessageState};
use crate::transport::Transport;

/// The relay's limits and switches, from the route and global config.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Parse frames (`true`) or copy bytes (`false`, tunnel mode).
    pub frames: bool,
    /// Largest message; also the largest frame.
    pub max_message_size: u64,
    /// Validate text as UTF-8.
    pub validate_utf8: bool,
    /// permessage-deflate was negotiated: RSV1 allowed on data frames.
    pub compressed: bool,
    /// Waiting for the close handshake once begun.
    pub close_timeout: Duration,
    /// No traffic either way for this long closes the connection (0 = never).
    pub idle_timeout: Duration,
    /// Ping a leg silent for this long (0 = keepalive off).
    pub ping_interval: Duration,
    /// A leg silent this long after wsedge's ping is dead.
    pub pong_timeout: Duration,
}

impl RelayConfig {
    /// The relay settings of a route.
    pub fn for_route(
        route: &crate::config::Route,
        timeouts: &crate::config::Timeouts,
        compressed: bool,
    ) -> RelayConfig {
        RelayConfig {
            frames: route.relay == crate::config::RelayMode::Frames,
            max_message_size: route.max_message_size,
            validate_utf8: route.validate_utf8,
            compressed,
            close_timeout: timeouts.close,
            idle_timeout: timeouts.idle,
            ping_interval: route.ping_interval,
            pong_timeout: route.pong_timeout,
        }
    }
}

/// One side of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// The client (downstream).
    Client,
    /// The backend (upstream).
    Backend,
}

impl Leg {
    fn other(self) -> Leg {
        match self {
            Leg::Client => Leg::Backend,
            Leg::Backend => Leg::Client,
        }
    }
}

/// How a relayed connection ended, for the log line and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Close frames went both ways.
    Closed {
        /// Who sent the first close frame.
        by: Leg,
        /// Its code.
        code: Option<u16>,
    },
    /// A side's TCP connection ended without a close frame.
    Vanished(Leg),
    /// A side broke the protocol.
    ProtocolError(Leg, ProtocolError),
    /// wsedge closed it: idle timeout.
    Idle,
    /// wsedge closed it: shutdown.
    Shutdown,
    /// The close handshake did not finish in time; sockets dropped.
    CloseTimeout,
    /// Tunnel mode: both byte streams ended.
    TunnelEnded,
}

/// What a relay did.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Bytes read from the client.
    pub from_client: u64,
    /// Bytes read from the backend.
    pub from_backend: u64,
    /// How it ended.
    pub ending: Ending,
}

/// A worker-wide "shutting down" flag that wakes every relay registered
/// with it. One per worker; relays register their waker once.
#[derive(Debug, Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl Shutdown {
    /// Sets the flag and wakes every registered relay.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self.wakers.borrow().iter().flatten().cloned().collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Whether [`Shutdown::fire`] was called.
    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once [`Shutdown::fire`] has been called.
    pub async fn fired(&self) {
        struct Wait<'a> {
            shutdown: &'a Shutdown,
            slot: Option<usize>,
        }
        impl Future for Wait<'_> {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.shutdown.is_fired() {
                    return Poll::Ready(());
                }
                match self.slot {
                    None => self.slot = Some(self.shutdown.register(cx.waker())),
                    Some(slot) => self.shutdown.update(slot, cx.waker()),
                }
                Poll::Pending
            }
        }
        impl Drop for Wait<'_> {
            fn drop(&mut self) {
                if let Some(slot) = self.slot {
                    self.shutdown.unregister(slot);
                }
            }
        }
        Wait {
            shutdown: self,
            slot: None,
        }
        .await
    }

    fn register(&self, w: &Waker) -> usize {
        let mut all = self.wakers.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                all[i] = Some(w.clone());
                i
            }
            None => {
                all.push(Some(w.clone()));
                all.len() - 1
            }
        }
    }

    fn update(&self, slot: usize, w: &Waker) {
        let mut all = self.wakers.borrow_mut();
        if !all[slot].as_ref().is_some_and(|old| old.will_wake(w)) {
            all[slot] = Some(w.clone());
        }
    }

    fn unregister(&self, slot: usize) {
        self.wakers.borrow_mut()[slot] = None;
        self.free.borrow_mut().push(slot);
    }
}

/// What relays borrow from their worker: the buffer pool, the masking keys
/// and the shutdown flag. One per worker, shared by its relays.
#[derive(Debug)]
pub struct Worker {
    /// The worker's buffer pool.
    pub pool: std::rc::Rc<Pool>,
    /// The worker's masking keys.
    pub keys: RefCell<MaskKeyGen>,
    /// The worker's shutdown flag.
    pub shutdown: Shutdown,
}

/// Close bookkeeping of one leg.
#[derive(Debug, Default, Clone, Copy)]
struct LegState {
    /// A close frame came from this leg (or its TCP ended): read no more.
    recv_close: bool,
    /// A close frame went to this leg (or its TCP is gone): write no more.
    sent_close: bool,
    /// A close wsedge must send on this leg.
    post: Option<(CloseCode, &'static str)>,
}

/// Close bookkeeping of the connection.
#[derive(Debug, Default)]
struct Closing {
    legs: [LegState; 2],
    ending: Option<Ending>,
    /// A close has begun somewhere: the close timer runs.
    started: bool,
    /// Something changed that the other direction must see: poll again.
    repoll: bool,
    /// The close owed to a client that broke the protocol, held until the
    /// backend has answered its 1001 (or is gone), so that the backend's
    /// frames already under way still reach the client first.
    deferred: Option<(CloseCode, &'static str)>,
}

impl Closing {
    fn leg(&mut self, leg: Leg) -> &mut LegState {
        &mut self.legs[leg as usize]
    }

    fn set_ending(&mut self, e: Ending) {
        self.ending.get_or_insert(e);
    }

    fn post_close(&mut self, leg: Leg, code: CloseCode, reason: &'static str) {
        let l = self.leg(leg);
        if !l.sent_close && l.post.is_none() {
            l.post = Some((code, reason));
        }
        self.started = true;
        self.repoll = true;
    }

    /// A leg's TCP connection ended or failed: the other side learns why.
    fn leg_gone(&mut self, leg: Leg) {
        let l = self.leg(leg);
        let already = l.recv_close && l.sent_close;
        l.recv_close = true;
        l.sent_close = true;
        self.repoll = true;
        if already {
            return;
        }
        self.set_ending(Ending::Vanished(leg));
        match leg {
            Leg::Client => self.post_close(Leg::Backend, CloseCode::GOING_AWAY, "client went away"),
            // A client that broke the protocol gets its own close code.
            Leg::Backend if self.deferred.is_some() => self.release_deferred(),
            Leg::Backend => self.post_close(
                Leg::Client,
                CloseCode::INTERNAL_ERROR,
                "backend connection lost",
            ),
        }
    }

    /// A leg broke the protocol: it gets the error's close code, the other
    /// side 1001 (client at fault) or 1014 (backend at fault).
    fn protocol_error(&mut self, leg: Leg, e: ProtocolError) {
        self.set_ending(Ending::ProtocolError(leg, e));
        self.leg(leg).recv_close = true;
        match leg {
            // The client's close waits for the backend's answer to its 1001
            // (see `deferred`), so the backend's frames already under way
            // (say, the echo of the client's last valid message) reach the
            // client first.
            Leg::Client => {
                self.deferred = Some((e.close_code(), e.reason()));
                self.post_close(Leg::Backend, CloseCode::GOING_AWAY, "client protocol error");
                if self.leg(Leg::Backend).recv_close {
                    self.release_deferred();
                }
            }
            Leg::Backend => {
                self.post_close(leg, e.close_code(), e.reason());
                self.post_close(
                    Leg::Client,
                    CloseCode::BAD_GATEWAY,
                    "backend protocol error",
                );
            }
        }
    }

    /// Sends the client the close held for it (see `deferred`).
    fn release_deferred(&mut self) {
        if let Some((code, reason)) = self.deferred.take() {
            self.post_close(Leg::Client, code, reason);
        }
    }

    /// Starts closing both legs with 1001 (shutdown, idle timeout).
    fn going_away(&mut self, why: Ending, reason: &'static str) {
        self.set_ending(why);
        self.post_close(Leg::Client, CloseCode::GOING_AWAY, reason);
        self.post_close(Leg::Backend, CloseCode::GOING_AWAY, reason);
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
    opcode: OpCode,
}

/// What walking one buffer found, besides the bytes to write.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A complete close frame from the source; `forwarded`: it goes out too.
    Close {
        code: Option<CloseCode>,
        forwarded: bool,
    },
    /// The source broke the protocol.
    Error(ProtocolError),
}

/// The result of walking one buffer.
struct Walk {
    /// Write `buf[..write_end]`.
    write_end: usize,
    /// After that write, the destination is in the middle of a frame.
    open: bool,
    /// What stopped the walk early, if anything.
    event: Option<Event>,
}

/// A close frame of wsedge's own being written.
struct Control {
    frame: SmallFrame,
    written: usize,
}

/// One direction's state: reads `src` leg, writes the other.
struct Dir {
    src: Leg,
    /// Parse frames (else tunnel: copy bytes).
    frames: bool,
    decode: DecodeConfig,
    msg: MessageState,
    frame: Option<InFrame>,
    close: CloseValidator,
    /// An incomplete header left at the end of the last buffer.
    carry: [u8; MAX_HEADER_LEN],
    carry_len: u8,
    /// The destination has a frame begun but not finished on the wire.
    out_open: bool,
    /// After the pending write: `out_open` becomes this.
    open_after: bool,
    /// Bytes being written: `out[written..write_end]`.
    out: Option<PoolBuf>,
    written: usize,
    write_end: usize,
    /// To handle once the pending write is done.
    after: Option<Event>,
    /// A close frame of wsedge's own being written.
    control: Option<Box<Control>>,
    /// Bytes that came with the handshake, relayed before any read.
    pending: Vec<u8>,
    bytes_in: u64,
}

impl Dir {
    fn new(src: Leg, cfg: &RelayConfig, pending: Vec<u8>) -> Dir {
        let peer = match src {
            Leg::Client => Peer::Client,
            Leg::Backend => Peer::Server,
        };
        Dir {
            src,
            frames: cfg.frames,
            decode: DecodeConfig {
                peer,
                max_payload: cfg.max_message_size,
                allowed_rsv: if cfg.compressed { RSV1 } else { 0 },
            },
            msg: MessageState::new(MessageConfig {
                max_message_size: cfg.max_message_size,
                validate_utf8: cfg.validate_utf8,
            }),
            frame: None,
            close: CloseValidator::new(),
            carry: [0; MAX_HEADER_LEN],
            carry_len: 0,
            out_open: false,
            open_after: false,
            out: None,
            written: 0,
            write_end: 0,
            after: None,
            control: None,
            pending,
            bytes_in: 0,
        }
    }

    /// Drives this direction as far as it goes without blocking. `true`
    /// once it is finished: its source closed and its destination closed.
    fn poll<S: Transport, D: Transport>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        cl: &mut Closing,
        w: &Worker,
    ) -> Poll<()> {
        let (sl, dl) = (self.src, self.src.other());
        let frames = self.frames;
        loop {
            // 1. Finish writing what was read.
            if let Some(buf) = &self.out {
                while self.written < self.write_end {
                    match dst.poll_write(cx, &buf[self.written..self.write_end]) {
                        Poll::Ready(Ok(n)) if n > 0 => self.written += n,
                        Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Poll::Ready(_) => {
                            // The destination is gone.
                            self.out = None;
                            self.after = None;
                            cl.leg_gone(dl);
                            break;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if self.out.take().is_some() {
                    self.out_open = self.open_after;
                    match self.after.take() {
                        None => {}
                        Some(Event::Close { code, forwarded }) => {
                            cl.leg(sl).recv_close = true;
                            if forwarded {
                                cl.leg(dl).sent_close = true;
                                cl.set_ending(Ending::Closed {
                                    by: sl,
                                    code: code.map(|c| c.0),
                                });
                            }
                            if sl == Leg::Backend {
                                cl.release_deferred();
                            }
                            cl.started = true;
                            cl.repoll = true;
                        }
                        Some(Event::Error(e)) => cl.protocol_error(sl, e),
                    }
                }
            }

            // 2. A close of wsedge's own to send on the destination.
            if self.control.is_none() {
                if let Some((code, reason)) = cl.leg(dl).post.take() {
                    if !cl.leg(dl).sent_close {
                        cl.leg(dl).sent_close = true;
                        if self.out_open || !frames {
                            // Mid-frame (or a tunnel): no close frame can go
                            // out cleanly; end the TCP stream instead.
                            let _ = dst.shutdown_write();
                            if frames {
                                cl.leg(dl).recv_close = true;
                            }
                            cl.repoll = true;
                        } else {
                            let mask = (dl == Leg::Backend).then(|| w.keys.borrow_mut().next_key());
                            self.control = Some(Box::new(Control {
                                frame: SmallFrame::close(code, reason, mask),
                                written: 0,
                            }));
                        }
                    }
                }
            }
            if let Some(c) = &mut self.control {
                let bytes = c.frame.as_bytes();
                while c.written < bytes.len() {
                    match dst.poll_write(cx, &bytes[c.written..]) {
                        Poll::Ready(Ok(n)) if n > 0 => c.written += n,
                        Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Poll::Ready(_) => {
                            // Gone: no close reply will come either.
                            cl.leg(dl).recv_close = true;
                            cl.repoll = true;
                            break;
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.control = None;
            }

            // 3. Finished, or waiting only for a close to send?
            if cl.leg(sl).recv_close {
                return if cl.leg(dl).sent_close {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }

            // 4. Read. The buffer goes back to the pool if nothing is there.
            let mut buf = w.pool.take();
            let carry = self.carry_len as usize;
            buf[..carry].copy_from_slice(&self.carry[..carry]);
            let n = if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.len() - carry);
                buf[carry..carry + n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                if self.pending.is_empty() {
                    self.pending = Vec::new();
                }
                n
            } else {
                match src.poll_read(cx, &mut buf[carry..]) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        self.source_ended(cl, frames);
                        continue;
                    }
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Poll::Ready(Err(_)) => {
                        self.source_ended(cl, frames);
                        continue;
                    }
                }
            };
            self.bytes_in += n as u64;
            self.carry_len = 0;
            let len = carry + n;
            let forwarding = !cl.leg(dl).sent_close;
            // The backend's answer to our 1001 is not for a client that owes
            // us a protocol error: that client gets its own close instead.
            let forward_close = forwarding && !(sl == Leg::Backend && cl.deferred.is_some());
            let walk = if frames {
                self.walk(&mut buf[..len], forwarding, forward_close, &w.keys)
            } else {
                Walk {
                    write_end: if forwarding { len } else { 0 },
                    open: false,
                    event: None,
                }
            };
            self.out = Some(buf);
            self.written = 0;
            self.write_end = walk.write_end;
            self.open_after = if walk.write_end > 0 {
                walk.open
            } else {
                self.out_open
            };
            self.after = walk.event;
        }
    }

    /// The source's TCP stream ended (EOF or error) without a close frame.
    fn source_ended(&mut self, cl: &mut Closing, frames: bool) {
        if frames {
            cl.leg_gone(self.src);
        } else {
            // Tunnel: pass the end on as a half-close; the other direction
            // goes on until its own source ends.
            cl.leg(self.src).recv_close = true;
            cl.post_close(self.src.other(), CloseCode::GOING_AWAY, "");
        }
    }

    /// Walks the frames in `buf`: validates, re-masks in place. Says how
    /// many leading bytes to write and whether the destination is then
    /// mid-frame.
    fn walk(
        &mut self,
        buf: &mut [u8],
        forwarding: bool,
        forward_close: bool,
        keys: &RefCell<MaskKeyGen>,
    ) -> Walk {
        let mut pos = 0;
        // Where the current frame's header sits in this buffer, if it does.
        let mut frame_start: Option<usize> = None;
        let done = |write_end: usize, open: bool, event| Walk {
            write_end: if forwarding { write_end } else { 0 },
            open: forwarding && open,
            event,
        };
        // A frame found bad after its start is dropped. If its header went
        // out with an earlier buffer, the destination stays mid-frame (and
        // gets its TCP connection ended instead of a close frame).
        let bad_frame = |frame_start: Option<usize>, e| match frame_start {
            Some(at) => done(at, false, Some(Event::Error(e))),
            None => Walk {
                write_end: 0,
                open: true,
                event: Some(Event::Error(e)),
            },
        };
        loop {
            if let Some(f) = &mut self.frame {
                let n = f.remaining.min((buf.len() - pos) as u64) as usize;
                if let Err(e) = payload(&mut buf[pos..pos + n], f, &mut self.msg, &mut self.close) {
                    return bad_frame(frame_start, e);
                }
                f.remaining -= n as u64;
                f.offset += n as u64;
                pos += n;
                if f.remaining > 0 {
                    return done(pos, true, None);
                }
                let opcode = f.opcode;
                self.frame = None;
                if opcode == OpCode::Close {
                    return match (self.close.finish(), frame_start) {
                        // Not for the client (see `Closing::deferred`): cut it out.
                        (Ok(code), Some(at)) if !forward_close => done(
                            at,
                            false,
                            Some(Event::Close {
                                code,
                                forwarded: false,
                            }),
                        ),
                        (Ok(code), _) => done(
                            pos,
                            false,
                            Some(Event::Close {
                                code,
                                forwarded: forwarding,
                            }),
                        ),
                        (Err(e), _) => bad_frame(frame_start, e),
                    };
                }
                if let Err(e) = self.msg.on_frame_end() {
                    return bad_frame(frame_start, e);
                }
                frame_start = None;
                continue;
            }
            let (h, hlen) = match FrameHeader::decode(&buf[pos..], &self.decode) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    let rest = buf.len() - pos;
                    self.carry[..rest].copy_from_slice(&buf[pos..]);
                    self.carry_len = rest as u8;
                    return done(pos, false, None);
                }
                Err(e) => return done(pos, false, Some(Event::Error(e))),
            };
            let inspect = match self.msg.on_header(&h) {
                Ok(FrameKind::Data { validate_utf8 }) => validate_utf8,
                Ok(FrameKind::Control(OpCode::Close)) => {
                    self.close = CloseValidator::new();
                    true
                }
                Ok(FrameKind::Control(_)) => false,
                Err(e) => return done(pos, false, Some(Event::Error(e))),
            };
            let dst_key = h.mask.map(|_| {
                // A client frame: a fresh key replaces the client's, in place.
                let key = keys.borrow_mut().next_key();
                buf[pos + hlen - 4..pos + hlen].copy_from_slice(&key);
                key
            });
            self.frame = Some(InFrame {
                remaining: h.payload_len,
                offset: 0,
                src_key: h.mask,
                dst_key,
                inspect,
                opcode: h.opcode,
            });
            frame_start = Some(pos);
            pos += hlen;
        }
    }
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
        if let (Some(old), Some(new)) = (f.src_key, f.dst_key) {
            remask(chunk, old, new, f.offset);
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

/// A relayed connection: resolves when both close handshakes are done (or
/// timed out), with what happened.
pub struct Relay<C, B> {
    client: C,
    backend: B,
    up: Dir,
    down: Dir,
    closing: Closing,
    worker: std::rc::Rc<Worker>,
    frames: bool,
    close_timeout: Duration,
    idle_timeout: Duration,
    close_timer: Option<Pin<Box<Sleep>>>,
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read both ways at the last idle check.
    activity_seen: u64,
    up_done: bool,
    down_done: bool,
    shutdown_slot: Option<usize>,
}

impl<C, B> std::fmt::Debug for Relay<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<C: Transport, B: Transport> Relay<C, B> {
    /// A relay between `client` and `backend`. `from_client` and
    /// `from_backend` are bytes that came after the handshake heads,
    /// relayed first.
    pub fn new(
        client: C,
        backend: B,
        from_client: Vec<u8>,
        from_backend: Vec<u8>,
        cfg: &RelayConfig,
        worker: std::rc::Rc<Worker>,
    ) -> Self {
        Relay {
            client,
            backend,
            up: Dir::new(Leg::Client, cfg, from_client),
            down: Dir::new(Leg::Backend, cfg, from_backend),
            closing: Closing::default(),
            worker,
            frames: cfg.frames,
            close_timeout: cfg.close_timeout,
            idle_timeout: cfg.idle_timeout,
            close_timer: None,
            idle_timer: None,
            activity_seen: 0,
            up_done: false,
            down_done: false,
            shutdown_slot: None,
        }
    }

    fn outcome(&self, ending: Ending) -> Outcome {
        Outcome {
            from_client: self.up.bytes_in,
            from_backend: self.down.bytes_in,
            ending,
        }
    }
}

impl<C: Transport, B: Transport> Future for Relay<C, B> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        let shutdown = &this.worker.shutdown;
        match this.shutdown_slot {
            None => this.shutdown_slot = Some(shutdown.register(cx.waker())),
            Some(slot) => shutdown.update(slot, cx.waker()),
        }
        if shutdown.is_fired() && !this.closing.started {
            this.closing
                .going_away(Ending::Shutdown, "server shutting down");
        }
        if !this.idle_timeout.is_zero() && this.idle_timer.is_none() {
            this.idle_timer = Some(Box::pin(monoio::time::sleep(this.idle_timeout)));
        }
        loop {
            this.closing.repoll = false;
            let w = &*this.worker;
            if !this.up_done {
                let r = this.up.poll(
                    cx,
                    &mut this.client,
                    &mut this.backend,
                    &mut this.closing,
                    w,
                );
                this.up_done = r.is_ready();
            }
            if !this.down_done {
                let r = this.down.poll(
                    cx,
                    &mut this.backend,
                    &mut this.client,
                    &mut this.closing,
                    w,
                );
                this.down_done = r.is_ready();
            }
            // The backend can no longer answer (it did, or its TCP ended or
            // was cut mid-frame): the client's held close goes out now.
            if this.closing.deferred.is_some()
                && this.closing.legs[Leg::Backend as usize].recv_close
            {
                this.closing.release_deferred();
                continue;
            }
            if this.up_done && this.down_done {
                // Both sockets are closed when the relay is dropped, right
                // after this; the client's FIN goes out with that close (the
                // server side closes first, RFC 6455 §7.1.1).
                let ending = if this.frames {
                    this.closing.ending
                } else {
                    Some(Ending::TunnelEnded)
                };
                return Poll::Ready(this.outcome(ending.unwrap_or(Ending::TunnelEnded)));
            }
            if this.closing.started && this.close_timer.is_none() {
                this.close_timer = Some(Box::pin(monoio::time::sleep(this.close_timeout)));
            }
            if let Some(t) = &mut this.close_timer {
                if t.as_mut().poll(cx).is_ready() {
                    if this.closing.deferred.is_none() {
                        return Poll::Ready(this.outcome(Ending::CloseTimeout));
                    }
                    // The backend never answered: the client still gets its
                    // close, then the handshake gets another close timeout.
                    this.closing.release_deferred();
                    t.as_mut().reset(Instant::now() + this.close_timeout);
                }
            }
            if !this.closing.started {
                if let Some(t) = &mut this.idle_timer {
                    if t.as_mut().poll(cx).is_ready() {
                        let activity = this.up.bytes_in + this.down.bytes_in;
                        if activity == this.activity_seen {
                            if this.frames {
                                this.closing.going_away(Ending::Idle, "idle timeout");
                            } else {
                                return Poll::Ready(this.outcome(Ending::Idle));
                            }
                        } else {
                            this.activity_seen = activity;
                            t.as_mut().reset(Instant::now() + this.idle_timeout);
                            this.closing.repoll = true;
                        }
                    }
                }
            }
            if !this.closing.repoll {
                return Poll::Pending;
            }
        }
    }
}

impl<C, B> Drop for Relay<C, B> {
    fn drop(&mut self) {
        if let Some(slot) = self.shutdown_slot {
            self.worker.shutdown.unregister(slot);
        }
    }
}
