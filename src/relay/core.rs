//! The relay core: one proxied connection's logic, sans-IO.
//!
//! [`Core`] holds everything per connection that is not a socket: the frame
//! walker of each direction, the close policy, the deadlines (idle, close,
//! keepalive, a policy's), ping tokens and round-trip times, counters, and
//! the per-connection policy hooks. It never touches a socket, never reads
//! a clock (every call that needs the time is given `now`, in µs on the
//! core's own clock: [`Core::clock`] of an `Instant`, taken once per turn by
//! the driver) and allocates nothing per frame. A driver moves bytes and time in and out:
//!
//! ```text
//!   driver                                   core
//!   ------                                   ----
//!   wants_read(leg)?  ─────────────────────▶ backpressure, close state, throttle
//!   take a pool buffer; begin_read(leg, buf) carried header bytes put in front
//!   read(socket) into buf after them
//!   on_read(leg, buf, now, keys) ─────────▶ walk frames in place, count, police
//!   ◀──────────── n: write buf[..n] to the other leg, from this same buffer
//!   on_forwarded(leg, now) when all written  close/error events applied now
//!   own_frame(leg) / own_frame_written(...)  wsedge's close and ping frames
//!   take_tcp_action(leg)                     FIN or drop a leg
//!   poll_timeout() / on_timeout(now, keys)   one timer per connection
//! ```
//!
//! Ordering rules the driver keeps: per destination leg, the bytes handed
//! out by [`Core::on_read`] are written before [`Core::own_frame`] is asked,
//! and own frames before [`Core::take_tcp_action`]; a leg's read is not
//! retried while [`Core::wants_read`] says no.

use std::io;
use std::time::{Duration, Instant};

use crate::proto::close::CloseCode;
use crate::proto::frame::{OpCode, Peer, SmallFrame};
use crate::proto::mask::MaskKeyGen;

use super::closing::{Closing, TcpAction};
use super::limit::{OnLimit, Policy};
use super::walk::{
    Event, FrameCounts, MessageSizes, Output, PING_TOKEN_LEN, WalkConfig, WalkOpts, Walker,
};
use super::{Ending, Leg, Outcome, RelayConfig};

/// Counters of one direction (named by the leg that sends).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Bytes read from the leg.
    pub bytes: u64,
    /// Data messages completed.
    pub messages: u64,
    /// Frames by opcode (wrapping).
    pub frames: FrameCounts,
}

/// One direction: reads its source leg, writes the other.
#[derive(Debug)]
struct Dir {
    walker: Walker,
    /// Bytes handed out by `on_read` are being written.
    writing: bool,
    /// The destination is mid-frame on the wire (after the completed writes).
    out_open: bool,
    /// `out_open` once the pending write is done.
    open_after: bool,
    /// To apply once the pending write is done.
    after: Option<Event>,
    /// Over its rate with `on_limit = close`: closed once the pending write is done.
    over_limit: bool,
    bytes: u64,
    messages: u64,
}

/// wsedge's ping on a leg, until answered.
#[derive(Debug, Clone, Copy)]
struct Ping {
    token: [u8; PING_TOKEN_LEN],
    /// When it went out on the wire (µs); `None` while it waits its turn.
    sent_at: Option<u64>,
    /// No sign of life from the leg by then: it is dead.
    deadline: u64,
}

/// Keepalive state of one leg.
#[derive(Debug, Clone, Copy, Default)]
struct Keepalive {
    /// Last bytes from the leg (µs).
    last_rx: u64,
    ping: Option<Ping>,
    /// Round-trip time of the last answered ping (µs; 0 = none yet).
    rtt: u32,
}

/// A frame of wsedge's own (close, ping) being written on a leg. Boxed:
/// it exists only for the few writes it takes, a few times per connection.
#[derive(Debug, Clone, Copy)]
struct OwnFrame {
    frame: SmallFrame,
    written: u8,
}

/// Timings in ms (0 = off where it may be); read in µs through [`ms`].
#[derive(Debug, Clone, Copy)]
struct Timing {
    close: u32,
    idle: u32,
    ping_interval: u32,
    pong_timeout: u32,
}

/// µs of a timing.
#[inline]
fn ms(t: u32) -> u64 {
    t as u64 * 1000
}

/// One relayed connection's state. See the module documentation.
#[derive(Debug)]
pub struct Core {
    born: Instant,
    dirs: [Dir; 2],
    closing: Closing,
    /// Present when keepalive is on (`ping_interval` > 0).
    keepalive: Option<Box<[Keepalive; 2]>>,
    own: [Option<Box<OwnFrame>>; 2],
    timing: Timing,
    frames: bool,
    /// Last bytes from either leg, wsedge's own pongs aside (µs).
    last_activity: u64,
    /// When the close began (µs), for the close timer.
    close_started: Option<u64>,
    /// The latest time the core was given (µs).
    now: u64,
    /// How it ended, when it ended other than by finishing the close handshakes.
    end: Option<Ending>,
    policy: Option<Box<Policy>>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Config timeouts are at most 7 days: they fit u32 milliseconds.
fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}

impl Core {
    /// A connection that starts relaying at `now`.
    pub fn new(cfg: &RelayConfig, now: Instant) -> Core {
        let dir = |source, output| Dir {
            walker: Walker::new(&WalkConfig {
                source,
                max_message_size: cfg.max_message_size,
                validate_utf8: cfg.validate_utf8,
                compressed: cfg.compressed,
                output,
            }),
            writing: false,
            out_open: false,
            open_after: false,
            after: None,
            over_limit: false,
            bytes: 0,
            messages: 0,
        };
        Core {
            born: now,
            dirs: [
                dir(Peer::Client, Output::Remask),
                dir(Peer::Server, Output::Keep),
            ],
            closing: Closing::default(),
            keepalive: (cfg.frames && !cfg.ping_interval.is_zero())
                .then(|| Box::new([Keepalive::default(); 2])),
            own: [None, None],
            timing: Timing {
                close: millis(cfg.close_timeout),
                idle: millis(cfg.idle_timeout),
                ping_interval: match millis(cfg.ping_interval) {
                    _ if !cfg.frames => 0,
                    0 if !cfg.ping_interval.is_zero() => 1,
                    t => t,
                },
                pong_timeout: millis(cfg.pong_timeout).max(1),
            },
            frames: cfg.frames,
            last_activity: 0,
            close_started: None,
            now: 0,
            end: None,
            policy: None,
        }
    }

    /// Installs per-connection policy: rate limits, a deadline.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = Some(Box::new(policy));
    }

    /// `now` on the core's clock: µs since the relay started.
    #[inline]
    pub fn clock(&self, now: Instant) -> u64 {
        micros(now.saturating_duration_since(self.born))
    }

    /// Takes `now` (µs on the core's clock) as the latest time seen.
    #[inline]
    fn tick(&mut self, now: u64) -> u64 {
        self.now = self.now.max(now);
        self.now
    }

    /// The instant of a time on the core's clock.
    pub fn instant(&self, t: u64) -> Instant {
        self.born + Duration::from_micros(t)
    }

    // ---------------------------------------------------------------- reads

    /// Whether the driver should read `leg` now: it has not closed, the
    /// bytes last read from it have been written on (backpressure: one
    /// buffer in flight per direction), and it is not throttled.
    #[inline]
    pub fn wants_read(&self, leg: Leg) -> bool {
        let d = &self.dirs[leg as usize];
        !d.writing
            && self
                .policy
                .as_ref()
                .is_none_or(|p| p.throttled_until[leg as usize].is_none())
            && !self.closing.legs[leg as usize].recv_close
            && self.end.is_none()
    }

    /// Puts the bytes carried from the last read of `leg` at the start of
    /// `buf` (at least 14 bytes); the read goes after them. Returns their count.
    #[inline]
    pub fn begin_read(&self, leg: Leg, buf: &mut [u8]) -> usize {
        self.dirs[leg as usize].walker.put_carry(buf)
    }

    /// `buf` holds what [`Core::begin_read`] put there followed by bytes
    /// just read from `leg`. Walks them in place; returns `n`: write
    /// `buf[..n]` to the other leg, then call [`Core::on_forwarded`]. With
    /// `n == 0` nothing is to be written (and no call is owed). The data
    /// messages that ended in `buf` are added to `sizes`.
    pub fn on_read(
        &mut self,
        leg: Leg,
        buf: &mut [u8],
        now: u64,
        keys: &mut MaskKeyGen,
        sizes: &mut MessageSizes,
    ) -> usize {
        let now = self.tick(now);
        let s = leg as usize;
        let dst = leg.other();
        let pong_timeout = ms(self.timing.pong_timeout);
        let mut own_ping = None;
        if let Some(ka) = &mut self.keepalive {
            let ka = &mut ka[s];
            ka.last_rx = now;
            if let Some(p) = &mut ka.ping {
                // Any bytes are a sign of life; the pong may be queued behind them.
                p.deadline = p.deadline.max(now + pong_timeout);
                own_ping = Some(p.token);
            }
        }
        let forward = !self.closing.legs[dst as usize].sent_close;
        let d = &mut self.dirs[s];
        let new = (buf.len() - d.walker.carried()) as u64;
        d.bytes += new;
        if !self.frames {
            self.last_activity = now;
            let n = if forward { buf.len() } else { 0 };
            d.writing = n > 0;
            return n;
        }
        // The backend's answer to our 1001 is not for a client that owes us
        // a protocol error: that client gets its own close instead.
        let forward_close = forward && !(leg == Leg::Backend && self.closing.deferred.is_some());
        let walk = d.walker.walk(
            buf,
            WalkOpts {
                forward,
                forward_close,
                own_ping,
            },
            keys,
        );
        d.messages += walk.messages as u64;
        if walk.messages > 0 {
            sizes.add(&walk.sizes);
        }
        if walk.own_pong {
            if let Some(ka) = &mut self.keepalive {
                let ka = &mut ka[s];
                if let Some(sent) = ka.ping.take().and_then(|p| p.sent_at) {
                    ka.rtt = (now - sent).clamp(1, u32::MAX as u64) as u32;
                }
            }
        }
        if walk.out_end > 0 || walk.event.is_some() || !walk.own_pong {
            self.last_activity = now;
        }
        let d = &mut self.dirs[s];
        d.open_after = if walk.out_end > 0 {
            walk.open
        } else {
            d.out_open
        };
        d.after = walk.event;
        if let Some(p) = &mut self.policy {
            if let Some(limit) = &mut p.limits[s] {
                if let Err(until) = limit.charge(now, walk.messages as u64, new) {
                    match limit.on_limit {
                        OnLimit::Throttle => p.throttled_until[s] = Some(until),
                        OnLimit::Close => d.over_limit = true,
                    }
                }
            }
        }
        if walk.out_end > 0 {
            d.writing = true;
        } else {
            self.apply_after(leg);
        }
        walk.out_end
    }

    /// `leg`'s stream ended: `None` at EOF, else the read error's kind.
    pub fn on_read_end(&mut self, leg: Leg, cause: Option<io::ErrorKind>, now: u64) {
        self.tick(now);
        if self.frames {
            self.closing.leg_gone(leg, cause);
            self.settle();
        } else {
            // Tunnel: pass the end on as a half-close; the other direction
            // goes on until its own source ends.
            let dst = leg.other();
            self.closing.leg(leg).recv_close = true;
            let d = self.closing.leg(dst);
            if !d.sent_close {
                d.sent_close = true;
                d.tcp = Some(TcpAction::ShutdownWrite);
            }
            self.closing.repoll = true;
        }
    }

    // --------------------------------------------------------------- writes

    /// Everything [`Core::on_read`] handed out for bytes read from `src`
    /// has been written to the other leg.
    pub fn on_forwarded(&mut self, src: Leg, now: u64) {
        let d = &mut self.dirs[src as usize];
        d.writing = false;
        d.out_open = d.open_after;
        // A ping waiting behind these bytes could not have been answered:
        // the leg taking them is alive.
        let now = self.tick(now);
        let dst = src.other() as usize;
        let pong_timeout = ms(self.timing.pong_timeout);
        if let Some(p) = self.keepalive.as_mut().and_then(|ka| ka[dst].ping.as_mut()) {
            if p.sent_at.is_none() {
                p.deadline = p.deadline.max(now + pong_timeout);
            }
        }
        self.apply_after(src);
    }

    /// Writing to `leg` failed (an error, or a write of zero bytes).
    pub fn on_write_error(&mut self, leg: Leg, cause: io::ErrorKind, now: u64) {
        self.tick(now);
        let src = leg.other();
        self.dirs[src as usize].writing = false;
        self.dirs[src as usize].after = None;
        if self.own[leg as usize].take().is_some() {
            // Gone while we closed it: no close reply will come either.
            self.closing.leg(leg).recv_close = true;
            self.closing.repoll = true;
        }
        self.closing.leg_gone(leg, Some(cause));
        self.settle();
    }

    /// The bytes of wsedge's own frame (close, ping) still to write on
    /// `leg`; `None` when there is none (or it must wait for a frame
    /// boundary). Call [`Core::own_frame_written`] after each write.
    pub fn own_frame(&mut self, leg: Leg, now: u64, keys: &mut MaskKeyGen) -> Option<&[u8]> {
        self.tick(now);
        let l = leg as usize;
        let src = leg.other() as usize;
        if self.own[l].is_none() && !self.dirs[src].writing {
            let mask = |keys: &mut MaskKeyGen| (leg == Leg::Backend).then(|| keys.next_key());
            let started = self.closing.started;
            if let Some((code, reason)) = self.closing.leg(leg).post.take() {
                let st = self.closing.leg(leg);
                if !st.sent_close {
                    st.sent_close = true;
                    if self.dirs[src].out_open || !self.frames {
                        // Mid-frame (or a tunnel): no close frame can go out
                        // cleanly; end the TCP stream instead.
                        st.tcp = Some(TcpAction::ShutdownWrite);
                        if self.frames {
                            st.recv_close = true;
                        }
                        self.closing.repoll = true;
                        self.settle();
                    } else {
                        self.own[l] = Some(Box::new(OwnFrame {
                            frame: SmallFrame::close(code, reason, mask(keys)),
                            written: 0,
                        }));
                    }
                }
            } else if let Some(p) = self.keepalive.as_mut().and_then(|ka| ka[l].ping.as_mut()) {
                let st = &self.closing.legs[l];
                if p.sent_at.is_none() && !self.dirs[src].out_open && !st.sent_close && !started {
                    p.sent_at = Some(self.now);
                    p.deadline = self.now + ms(self.timing.pong_timeout);
                    self.own[l] = Some(Box::new(OwnFrame {
                        frame: SmallFrame::new(OpCode::Ping, &p.token, mask(keys)),
                        written: 0,
                    }));
                }
            }
        }
        self.own[l]
            .as_deref()
            .map(|f| &f.frame.as_bytes()[f.written as usize..])
    }

    /// Whether [`Core::own_frame`] may have something for `leg` (a cheap
    /// check before the driver borrows the key generator).
    #[inline]
    pub fn owes_frame(&self, leg: Leg) -> bool {
        let l = leg as usize;
        self.own[l].is_some()
            || self.closing.legs[l].post.is_some()
            || self
                .keepalive
                .as_ref()
                .is_some_and(|ka| ka[l].ping.is_some_and(|p| p.sent_at.is_none()))
    }

    /// `n` more bytes of the own frame on `leg` were written.
    pub fn own_frame_written(&mut self, leg: Leg, n: usize) {
        let l = leg as usize;
        if let Some(f) = &mut self.own[l] {
            let len = f.frame.as_bytes().len();
            f.written = (f.written as usize + n).min(len) as u8;
            if f.written as usize == len {
                self.own[l] = None;
                self.closing.repoll = true;
                self.settle();
            }
        }
    }

    /// A TCP action the driver must take on `leg` (once).
    #[inline]
    pub fn take_tcp_action(&mut self, leg: Leg) -> Option<TcpAction> {
        self.closing.leg(leg).tcp.take()
    }

    /// `leg` must be dropped now (dead peer), whatever is pending on it:
    /// the driver abandons the write to it.
    pub fn must_drop(&self, leg: Leg) -> bool {
        self.closing.legs[leg as usize].tcp == Some(TcpAction::Drop)
    }

    // ----------------------------------------------------------------- time

    /// When [`Core::on_timeout`] must next be called; `None`: no deadline.
    /// Arming a timer for it early is harmless: `on_timeout` does what is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_deadline().map(|t| self.instant(t))
    }

    fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut at = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        if self.end.is_some() {
            return None;
        }
        if let Some(started) = self.close_started {
            at(started + ms(self.timing.close));
        } else {
            if self.timing.idle > 0 {
                at(self.last_activity + ms(self.timing.idle));
            }
            if let Some(kas) = &self.keepalive {
                for (l, ka) in kas.iter().enumerate() {
                    if self.closing.legs[l].recv_close {
                        continue;
                    }
                    match ka.ping {
                        Some(p) => at(p.deadline),
                        None => at(ka.last_rx + ms(self.timing.ping_interval)),
                    }
                }
            }
        }
        if let Some(p) = &self.policy {
            for t in p.throttled_until.iter().flatten() {
                at(*t);
            }
            if let Some((t, ..)) = p.deadline {
                at(t);
            }
        }
        next
    }

    /// Does what is due at `now`: timeouts, pings, throttles ending.
    pub fn on_timeout(&mut self, now: u64, keys: &mut MaskKeyGen) {
        let now = self.tick(now);
        if self.end.is_some() {
            return;
        }
        if let Some(p) = &mut self.policy {
            for t in &mut p.throttled_until {
                if t.is_some_and(|t| t <= now) {
                    *t = None;
                    self.closing.repoll = true;
                }
            }
            if let Some((t, code, reason)) = p.deadline {
                if t <= now {
                    p.deadline = None;
                    self.close_at(Ending::Expired, code, reason);
                }
            }
        }
        if let Some(started) = self.close_started {
            if now >= started + ms(self.timing.close) {
                if self.closing.deferred.is_none() {
                    self.end = Some(Ending::CloseTimeout);
                } else {
                    // The backend never answered: the client still gets its
                    // close, then the handshake gets another close timeout.
                    self.closing.release_deferred();
                    self.close_started = Some(now);
                }
                self.closing.repoll = true;
            }
            return;
        }
        if self.timing.idle > 0 && now >= self.last_activity + ms(self.timing.idle) {
            if self.frames {
                self.close_at(Ending::Idle, CloseCode::GOING_AWAY, "idle timeout");
            } else {
                self.end = Some(Ending::Idle);
            }
            return;
        }
        let Some(kas) = &mut self.keepalive else {
            return;
        };
        for leg in [Leg::Client, Leg::Backend] {
            let l = leg as usize;
            if self.closing.legs[l].recv_close {
                continue;
            }
            match kas[l].ping {
                Some(p) if now >= p.deadline => {
                    kas[l].ping = None;
                    self.closing.leg_dead(leg);
                    self.dirs[leg.other() as usize].writing = false;
                    self.dirs[leg.other() as usize].after = None;
                    self.own[l] = None;
                    self.settle();
                    break;
                }
                None if now >= kas[l].last_rx + ms(self.timing.ping_interval) => {
                    let mut token = [0u8; PING_TOKEN_LEN];
                    token[..4].copy_from_slice(&keys.next_key());
                    token[4..].copy_from_slice(&keys.next_key());
                    kas[l].ping = Some(Ping {
                        token,
                        sent_at: None,
                        deadline: now + ms(self.timing.pong_timeout),
                    });
                    self.closing.repoll = true;
                }
                _ => {}
            }
        }
    }

    // ------------------------------------------------------ wsedge's closes

    /// wsedge closes both legs with `code` and `reason`; `why` is the ending
    /// reported. Does nothing once a close has begun.
    pub fn close(&mut self, why: Ending, code: CloseCode, reason: &'static str, now: u64) {
        self.tick(now);
        self.close_at(why, code, reason);
    }

    fn close_at(&mut self, why: Ending, code: CloseCode, reason: &'static str) {
        if self.closing.started || self.end.is_some() {
            return;
        }
        if self.frames {
            self.closing.close_both(why, code, reason);
        } else if why == Ending::Idle {
            // An idle tunnel is simply dropped.
            self.end = Some(why);
            return;
        } else {
            // A tunnel has no close frame: both legs get a FIN, and the
            // relay ends when both have ended theirs (or the close timer).
            self.closing.set_ending(why);
            for leg in [Leg::Client, Leg::Backend] {
                let l = self.closing.leg(leg);
                if !l.sent_close {
                    l.sent_close = true;
                    l.tcp = Some(TcpAction::ShutdownWrite);
                }
            }
            self.closing.started = true;
            self.closing.repoll = true;
        }
        self.settle();
    }

    /// Server shutdown: 1001 to both legs.
    pub fn shutdown(&mut self, now: u64) {
        self.close(
            Ending::Shutdown,
            CloseCode::GOING_AWAY,
            "server shutting down",
            now,
        );
    }

    // ---------------------------------------------------------------- state

    /// The relay is over: both close handshakes done (or both streams ended
    /// in a tunnel), or a timeout ended it. The driver then drops both legs.
    pub fn is_done(&self) -> bool {
        if self.end.is_some() {
            return true;
        }
        let idle = |s: usize| !self.dirs[s].writing && self.own[1 - s].is_none();
        self.closing.finished()
            && idle(0)
            && idle(1)
            && self.closing.legs.iter().all(|l| l.tcp.is_none())
    }

    /// Whether state changed that the driver must act on (poll both
    /// directions again); clears the flag.
    #[inline]
    pub fn take_repoll(&mut self) -> bool {
        std::mem::take(&mut self.closing.repoll)
    }

    /// What happened, for the log line and counters.
    pub fn outcome(&self) -> Outcome {
        let ending = match (self.end, self.closing.ending) {
            (Some(e), _) => e,
            (None, Some(e)) if self.frames => e,
            // A tunnel closed by wsedge (shutdown, expiry, operator).
            (None, Some(e @ (Ending::Shutdown | Ending::Expired | Ending::ByOperator))) => e,
            _ => Ending::TunnelEnded,
        };
        Outcome {
            from_client: self.dirs[0].bytes,
            from_backend: self.dirs[1].bytes,
            ending,
            client: self.stats(Leg::Client),
            backend: self.stats(Leg::Backend),
        }
    }

    /// Counters of what `leg` sent.
    pub fn stats(&self, leg: Leg) -> DirStats {
        let d = &self.dirs[leg as usize];
        DirStats {
            bytes: d.bytes,
            messages: d.messages,
            frames: d.walker.frames,
        }
    }

    /// Round-trip time of the last answered keepalive ping on `leg`.
    pub fn ping_rtt(&self, leg: Leg) -> Option<Duration> {
        match self.keepalive.as_ref().map_or(0, |ka| ka[leg as usize].rtt) {
            0 => None,
            us => Some(Duration::from_micros(us as u64)),
        }
    }

    /// Applies what the walk of `src`'s last read found, once its bytes are out.
    fn apply_after(&mut self, src: Leg) {
        let dst = src.other();
        match self.dirs[src as usize].after.take() {
            None => {}
            Some(Event::Close { code, forwarded }) => {
                self.closing.leg(src).recv_close = true;
                if forwarded {
                    self.closing.leg(dst).sent_close = true;
                    self.closing.set_ending(Ending::Closed {
                        by: src,
                        code: code.map(|c| c.0),
                    });
                }
                if src == Leg::Backend {
                    self.closing.release_deferred();
                }
                self.closing.started = true;
                self.closing.repoll = true;
            }
            Some(Event::Error(e)) => self.closing.protocol_error(src, e),
        }
        if std::mem::take(&mut self.dirs[src as usize].over_limit) {
            self.closing
                .over_limit(src, CloseCode::POLICY, "rate limit exceeded");
        }
        self.settle();
    }

    /// Follow-ups of any state change: the held client close goes out once
    /// the backend can no longer answer; the close timer starts.
    fn settle(&mut self) {
        if self.closing.deferred.is_some() && self.closing.legs[Leg::Backend as usize].recv_close {
            self.closing.release_deferred();
        }
        if self.closing.started && self.close_started.is_none() {
            self.close_started = Some(self.now);
        }
    }
}

// The per-connection state, held by every open connection: it grows only
// on purpose (see the idle-memory figures in docs/benchmarks.md).
const _: () = assert!(std::mem::size_of::<Core>() <= 640);
