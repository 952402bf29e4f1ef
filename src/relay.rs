//! The relay: frames both ways between a client and its backend, after the
//! handshake.
//!
//! Two pumps run concurrently in the connection's task, one per direction.
//! A pump waits for its source to be readable (holding no buffer), takes a
//! buffer from the worker's pool, reads, walks the frames in place
//! (validating, unmasking only where it must look at the payload, re-masking
//! client frames with a fresh key per frame) and writes the processed bytes
//! to its destination out of the same buffer, then gives the buffer back. It
//! reads nothing more until the destination has taken those bytes, so each
//! direction has at most one buffer of bytes in flight (backpressure).
//!
//! Each socket is written by exactly one pump: the client by the
//! backend→client pump, the backend by the client→backend pump. A close
//! frame that wsedge itself must send on a leg (a protocol error, a peer
//! that vanished, idle timeout, shutdown) is posted to the pump that writes
//! that leg, which sends it at the next frame boundary, or drops the TCP
//! connection if that leg is in the middle of a frame: a stream is never
//! corrupted. The close codes are listed in `docs/architecture.md`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

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

    fn idx(self) -> usize {
        self as usize
    }
}

/// How a relayed connection ended, for the log line and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Close frames went both ways (the code of the first one, if any).
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

/// A one-waiter wake-up flag, for a pump's "a close was posted for you".
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Close bookkeeping of one leg.
#[derive(Default)]
struct LegState {
    /// A close frame came from this leg (or its TCP ended): read no more.
    recv_close: Cell<bool>,
    /// A close frame went to this leg (or its TCP is gone): write no more.
    sent_close: Cell<bool>,
    /// A close wsedge must send on this leg.
    post: Cell<Option<(CloseCode, &'static str)>>,
    /// Wakes the pump that writes this leg.
    wake: Signal,
}

/// State the two pumps and the watchdog share. One per connection; only
/// ever touched from the connection's own task.
pub struct Shared {
    legs: [LegState; 2],
    ending: Cell<Option<Ending>>,
    /// Set when the first close begins: starts the close timer.
    closing: Signal,
    closing_started: Cell<bool>,
    last_activity: Cell<Instant>,
    track_activity: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("ending", &self.ending.get())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Fresh state for a connection about to be relayed.
    pub fn new(track_activity: bool) -> Rc<Shared> {
        Rc::new(Shared {
            legs: Default::default(),
            ending: Cell::new(None),
            closing: Signal::default(),
            closing_started: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
            track_activity,
        })
    }

    fn leg(&self, leg: Leg) -> &LegState {
        &self.legs[leg.idx()]
    }

    fn set_ending(&self, e: Ending) {
        if self.ending.get().is_none() {
            self.ending.set(Some(e));
        }
    }

    fn begin_closing(&self) {
        if !self.closing_started.replace(true) {
            self.closing.notify();
        }
    }

    /// Posts a close for `leg` (sent by the pump that writes it).
    fn post_close(&self, leg: Leg, code: CloseCode, reason: &'static str) {
        let l = self.leg(leg);
        if !l.sent_close.get() && l.post.get().is_none() {
            l.post.set(Some((code, reason)));
            l.wake.notify();
        }
        self.begin_closing();
    }

    /// A leg's TCP connection ended or failed: nothing more to read from or
    /// write to it; the other side learns why.
    fn leg_gone(&self, leg: Leg) {
        let l = self.leg(leg);
        let already = l.recv_close.get() && l.sent_close.get();
        l.recv_close.set(true);
        l.sent_close.set(true);
        l.wake.notify();
        if already {
            return;
        }
        self.set_ending(Ending::Vanished(leg));
        match leg {
            Leg::Client => self.post_close(Leg::Backend, CloseCode::GOING_AWAY, "client went away"),
            Leg::Backend => self.post_close(
                Leg::Client,
                CloseCode::INTERNAL_ERROR,
                "backend connection lost",
            ),
        }
    }

    /// A leg broke the protocol: it gets the error's close code, the other
    /// side 1001 (client at fault) or 1014 (backend at fault).
    fn protocol_error(&self, leg: Leg, e: ProtocolError) {
        self.set_ending(Ending::ProtocolError(leg, e));
        self.leg(leg).recv_close.set(true);
        self.post_close(leg, e.close_code(), e.reason());
        match leg {
            Leg::Client => {
                self.post_close(Leg::Backend, CloseCode::GOING_AWAY, "client protocol error")
            }
            Leg::Backend => self.post_close(
                Leg::Client,
                CloseCode::BAD_GATEWAY,
                "backend protocol error",
            ),
        }
        self.leg(leg.other()).wake.notify();
    }

    /// Starts closing both legs with 1001 (shutdown, idle timeout).
    pub fn going_away(&self, why: Ending, reason: &'static str) {
        self.set_ending(why);
        self.post_close(Leg::Client, CloseCode::GOING_AWAY, reason);
        self.post_close(Leg::Backend, CloseCode::GOING_AWAY, reason);
    }

    fn touch(&self) {
        if self.track_activity {
            self.last_activity.set(Instant::now());
        }
    }
}

/// The frame a pump is in the middle of.
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

/// What processing one buffer found, besides the bytes to write.
enum Event {
    /// A complete close frame from the source (with its code).
    Close(Option<CloseCode>),
    /// The source broke the protocol.
    Error(ProtocolError),
}

/// One direction: reads `src`, writes `dst`.
struct Pump<'a, S, D> {
    src: &'a S,
    dst: &'a D,
    src_leg: Leg,
    dst_leg: Leg,
    shared: &'a Shared,
    pool: &'a Rc<Pool>,
    keys: &'a RefCell<MaskKeyGen>,
    decode: DecodeConfig,
    msg: MessageState,
    frame: Option<InFrame>,
    close: CloseValidator,
    /// An incomplete header left at the end of the last buffer.
    carry: [u8; MAX_HEADER_LEN],
    carry_len: usize,
    /// Bytes that arrived with the handshake, relayed before any read.
    pending: Vec<u8>,
    /// `dst` has a frame begun but not finished on the wire.
    out_open: bool,
    bytes_in: u64,
}

impl<S: Transport, D: Transport> Pump<'_, S, D> {
    async fn run(mut self) -> u64 {
        let shared = self.shared;
        loop {
            self.send_posted_close().await;
            let (src, dst) = (shared.leg(self.src_leg), shared.leg(self.dst_leg));
            if src.recv_close.get() && dst.sent_close.get() {
                break;
            }
            if src.recv_close.get() {
                dst.wake.wait().await;
                continue;
            }
            if self.pending.is_empty() {
                monoio::select! {
                    r = self.src.readable() => if r.is_err() {
                        self.shared.leg_gone(self.src_leg);
                        continue;
                    },
                    _ = dst.wake.wait() => continue,
                }
            }
            let mut buf = self.pool.take();
            buf[..self.carry_len].copy_from_slice(&self.carry[..self.carry_len]);
            let start = self.carry_len;
            let n = if self.pending.is_empty() {
                match self.src.try_read(&mut buf[start..]) {
                    Ok(0) => {
                        self.shared.leg_gone(self.src_leg);
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.shared.leg_gone(self.src_leg);
                        continue;
                    }
                }
            } else {
                let n = self.pending.len().min(buf.len() - start);
                buf[start..start + n].copy_from_slice(&self.pending[..n]);
                self.pending.drain(..n);
                n
            };
            self.bytes_in += n as u64;
            self.shared.touch();
            self.carry_len = 0;
            self.relay_buffer(buf, start + n).await;
        }
        self.bytes_in
    }

    /// Processes `buf[..len]` in place, writes what passed, handles events.
    async fn relay_buffer(&mut self, mut buf: PoolBuf, len: usize) {
        let forwarding = !self.shared.leg(self.dst_leg).sent_close.get();
        let walk = self.process(&mut buf[..len], forwarding);
        if walk.write_end > 0 {
            if self.dst.write_all(&buf[..walk.write_end]).await.is_err() {
                self.shared.leg_gone(self.dst_leg);
                return;
            }
            self.out_open = walk.open;
        }
        drop(buf);
        match walk.event {
            None => {}
            Some(Event::Close(code)) => {
                let shared = self.shared;
                shared.leg(self.src_leg).recv_close.set(true);
                if forwarding {
                    shared.leg(self.dst_leg).sent_close.set(true);
                    shared.set_ending(Ending::Closed {
                        by: self.src_leg,
                        code: code.map(|c| c.0),
                    });
                }
                shared.begin_closing();
            }
            Some(Event::Error(e)) => self.shared.protocol_error(self.src_leg, e),
        }
    }

    /// Sends a close posted for `dst`, at a frame boundary; mid-frame, the
    /// TCP connection is dropped instead.
    async fn send_posted_close(&mut self) {
        let leg = self.shared.leg(self.dst_leg);
        let Some((code, reason)) = leg.post.take() else {
            return;
        };
        if leg.sent_close.get() {
            return;
        }
        leg.sent_close.set(true);
        if self.out_open {
            let _ = self.dst.shutdown_write();
            leg.recv_close.set(true);
            return;
        }
        let mask = (self.dst_leg == Leg::Backend).then(|| self.keys.borrow_mut().next_key());
        let frame = SmallFrame::close(code, reason, mask);
        if self.dst.write_all(frame.as_bytes()).await.is_err() {
            leg.recv_close.set(true);
        }
    }

    /// Walks the frames in `buf`: validates, re-masks in place. Says how
    /// many leading bytes to write and whether `dst` is then mid-frame.
    fn process(&mut self, buf: &mut [u8], forwarding: bool) -> Walk {
        let mut pos = 0;
        let mut write_end = 0;
        // Where the current frame's header sits in this buffer, if it does.
        let mut frame_start: Option<usize> = None;
        let done = |write_end: usize, open: bool, event| Walk {
            write_end: if forwarding { write_end } else { 0 },
            open: forwarding && open,
            event,
        };
        // A frame found bad after its start: drop it. If its header went out
        // with an earlier buffer, `dst` stays mid-frame (and will be dropped).
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
                write_end = pos;
                if f.remaining > 0 {
                    return done(write_end, true, None);
                }
                let opcode = f.opcode;
                self.frame = None;
                if opcode == OpCode::Close {
                    return match self.close.finish() {
                        Ok(code) => done(write_end, false, Some(Event::Close(code))),
                        Err(e) => bad_frame(frame_start, e),
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
                    self.carry_len = rest;
                    return done(write_end, false, None);
                }
                Err(e) => return done(write_end, false, Some(Event::Error(e))),
            };
            let inspect = match self.msg.on_header(&h) {
                Ok(FrameKind::Data { validate_utf8 }) => validate_utf8,
                Ok(FrameKind::Control(OpCode::Close)) => {
                    self.close = CloseValidator::new();
                    true
                }
                Ok(FrameKind::Control(_)) => false,
                Err(e) => return done(write_end, false, Some(Event::Error(e))),
            };
            let dst_key = h.mask.map(|_| {
                // Client frame: a fresh key replaces the client's in place.
                let key = self.keys.borrow_mut().next_key();
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
            write_end = pos;
        }
    }
}

/// The result of walking one buffer.
struct Walk {
    /// Write `buf[..write_end]`.
    write_end: usize,
    /// After that write, `dst` is in the middle of a frame.
    open: bool,
    /// What stopped the walk early, if anything.
    event: Option<Event>,
}

/// Handles one chunk of a frame's payload in place: unmask/validate/mask
/// where the payload must be looked at, one-pass re-mask otherwise.
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

/// Everything a relay needs from its worker.
#[derive(Debug, Clone, Copy)]
pub struct Worker<'a> {
    /// The worker's buffer pool.
    pub pool: &'a Rc<Pool>,
    /// The worker's masking keys.
    pub keys: &'a RefCell<MaskKeyGen>,
}

/// Relays between `client` and `backend` until both close handshakes are
/// done (or time out). `from_client` / `from_backend` are bytes that came
/// with the handshakes, relayed first.
pub async fn relay<C: Transport, B: Transport>(
    client: &C,
    backend: &B,
    from_client: Vec<u8>,
    from_backend: Vec<u8>,
    cfg: &RelayConfig,
    worker: Worker<'_>,
    shared: &Shared,
) -> Outcome {
    if !cfg.frames {
        return tunnel(
            client,
            backend,
            from_client,
            from_backend,
            worker.pool,
            shared,
            cfg,
        )
        .await;
    }
    let msg = MessageConfig {
        max_message_size: cfg.max_message_size,
        validate_utf8: cfg.validate_utf8,
    };
    let decode = |peer| DecodeConfig {
        peer,
        max_payload: cfg.max_message_size,
        allowed_rsv: if cfg.compressed { RSV1 } else { 0 },
    };
    let up = Pump {
        src: client,
        dst: backend,
        src_leg: Leg::Client,
        dst_leg: Leg::Backend,
        shared,
        pool: worker.pool,
        keys: worker.keys,
        decode: decode(Peer::Client),
        msg: MessageState::new(msg),
        frame: None,
        close: CloseValidator::new(),
        carry: [0; MAX_HEADER_LEN],
        carry_len: 0,
        pending: from_client,
        out_open: false,
        bytes_in: 0,
    };
    let down = Pump {
        src: backend,
        dst: client,
        src_leg: Leg::Backend,
        dst_leg: Leg::Client,
        shared,
        pool: worker.pool,
        keys: worker.keys,
        decode: decode(Peer::Server),
        msg: MessageState::new(msg),
        frame: None,
        close: CloseValidator::new(),
        carry: [0; MAX_HEADER_LEN],
        carry_len: 0,
        pending: from_backend,
        out_open: false,
        bytes_in: 0,
    };
    let pumps = async { monoio::join!(up.run(), down.run()) };
    monoio::select! {
        (a, b) = pumps => {
            // The server side closes the client's TCP connection first (RFC 6455 §7.1.1).
            let _ = client.shutdown_write();
            Outcome { from_client: a, from_backend: b, ending: shared.ending.get().unwrap_or(Ending::CloseTimeout) }
        },
        _ = watchdog(shared, cfg) => {
            Outcome { from_client: 0, from_backend: 0, ending: Ending::CloseTimeout }
        },
    }
}

/// Idle timeout, then close timeout: returns when the connection must be
/// dropped without waiting any longer.
async fn watchdog(shared: &Shared, cfg: &RelayConfig) {
    if !shared.closing_started.get() {
        if cfg.idle_timeout.is_zero() {
            shared.closing.wait().await;
        } else {
            loop {
                let idle_for = shared.last_activity.get().elapsed();
                if idle_for >= cfg.idle_timeout {
                    shared.going_away(Ending::Idle, "idle timeout");
                    break;
                }
                monoio::select! {
                    _ = shared.closing.wait() => break,
                    _ = monoio::time::sleep(cfg.idle_timeout - idle_for) => {},
                }
            }
        }
    }
    monoio::time::sleep(cfg.close_timeout).await;
}

/// Tunnel mode: bytes both ways, no frame parsing. Ends when both streams
/// have ended (each end passed on as a TCP half-close).
async fn tunnel<C: Transport, B: Transport>(
    client: &C,
    backend: &B,
    from_client: Vec<u8>,
    from_backend: Vec<u8>,
    pool: &Rc<Pool>,
    shared: &Shared,
    cfg: &RelayConfig,
) -> Outcome {
    async fn copy<S: Transport, D: Transport>(
        src: &S,
        dst: &D,
        pending: Vec<u8>,
        pool: &Rc<Pool>,
        shared: &Shared,
    ) -> u64 {
        let mut total = pending.len() as u64;
        if !pending.is_empty() && dst.write_all(&pending).await.is_err() {
            return total;
        }
        loop {
            if src.readable().await.is_err() {
                break;
            }
            let mut buf = pool.take();
            let n = match src.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(_) => break,
            };
            total += n as u64;
            shared.touch();
            if dst.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = dst.shutdown_write();
        total
    }
    let both = async {
        monoio::join!(
            copy(client, backend, from_client, pool, shared),
            copy(backend, client, from_backend, pool, shared)
        )
    };
    let idle = async {
        if cfg.idle_timeout.is_zero() {
            std::future::pending::<()>().await;
        }
        loop {
            let idle_for = shared.last_activity.get().elapsed();
            if idle_for >= cfg.idle_timeout {
                return;
            }
            monoio::time::sleep(cfg.idle_timeout - idle_for).await;
        }
    };
    monoio::select! {
        (a, b) = both => Outcome { from_client: a, from_backend: b, ending: Ending::TunnelEnded },
        _ = idle => Outcome { from_client: 0, from_backend: 0, ending: Ending::Idle },
        _ = shared.closing.wait() => Outcome { from_client: 0, from_backend: 0, ending: shared.ending.get().unwrap_or(Ending::Shutdown) },
    }
}
