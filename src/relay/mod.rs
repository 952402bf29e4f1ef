//! The relay: frames both ways between a client and its backend, after the
//! handshake.
//!
//! It is split the way quinn-proto splits a connection from its endpoint's
//! sockets:
//!
//! - [`core`]: the sans-IO per-connection logic ([`Core`]): bytes and the
//!   time in, decisions out (what to write to which leg, which close to send,
//!   when to be woken). It walks frames in place with [`walk`], follows the
//!   close rules of [`closing`], keeps the deadlines (idle, close,
//!   keepalive), counts, and runs the policy hooks of [`limit`].
//! - [`driver`]: the I/O around it ([`Relay`], a hand-written future over
//!   monoio's poll-io sockets): reads into pool buffers, writes out of the
//!   same buffers, one timer, a bounded amount of work per poll.
//! - [`harness`]: an in-memory driver for tests and fuzzing: both legs as
//!   byte pipes with chosen chunking, a fake clock.
//!
//! The close codes wsedge sends, and why, are in `docs/architecture.md`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::pool::Pool;
use crate::proto::close::CloseCode;
use crate::proto::error::ProtocolError;
use crate::proto::mask::MaskKeyGen;

pub mod closing;
pub mod core;
pub mod driver;
pub mod harness;
pub mod limit;
pub mod walk;

pub use self::core::{Core, DirStats};
pub use self::driver::Relay;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The client (downstream).
    Client,
    /// The backend (upstream).
    Backend,
}

impl Leg {
    /// The other side.
    pub fn other(self) -> Leg {
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
    /// A side's TCP connection ended without a close frame: at EOF
    /// (`None`) or with an error of this kind (reset, ...).
    Vanished(Leg, Option<std::io::ErrorKind>),
    /// A side did not answer wsedge's keepalive ping in time; it was dropped.
    Dead(Leg),
    /// A side broke the protocol.
    ProtocolError(Leg, ProtocolError),
    /// wsedge closed it: idle timeout.
    Idle,
    /// wsedge closed it: shutdown.
    Shutdown,
    /// wsedge closed it: the connection's deadline passed (a token expired).
    Expired,
    /// wsedge closed it: a side went over its rate limit (close mode).
    RateLimited(Leg),
    /// wsedge closed it: an operator asked.
    ByOperator,
    /// wsedge closed it (1012) to move it off a server holding more than
    /// its share (`rebalance`).
    Rebalanced,
    /// The close handshake did not finish in time; sockets dropped.
    CloseTimeout,
    /// Tunnel mode: both byte streams ended.
    TunnelEnded,
}

impl Ending {
    /// Labels of [`Ending::label_index`], for metrics.
    pub const LABELS: [&'static str; 13] = [
        "closed",
        "vanished",
        "dead",
        "protocol_error",
        "idle",
        "shutdown",
        "expired",
        "rate_limited",
        "operator",
        "rebalanced",
        "close_timeout",
        "tunnel_ended",
        "other",
    ];

    /// Its index in [`Ending::LABELS`].
    pub fn label_index(&self) -> usize {
        match self {
            Ending::Closed { .. } => 0,
            Ending::Vanished(..) => 1,
            Ending::Dead(_) => 2,
            Ending::ProtocolError(..) => 3,
            Ending::Idle => 4,
            Ending::Shutdown => 5,
            Ending::Expired => 6,
            Ending::RateLimited(_) => 7,
            Ending::ByOperator => 8,
            Ending::Rebalanced => 9,
            Ending::CloseTimeout => 10,
            Ending::TunnelEnded => 11,
        }
    }
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
    /// What the client sent: bytes, messages, frames by opcode.
    pub client: DirStats,
    /// What the backend sent.
    pub backend: DirStats,
}

/// A worker-wide "shutting down" flag that wakes every relay registered
/// with it, and the worker's registry of its relays: one slot per relay,
/// with what it belongs to ([`Tag`]) and a close request an operator or the
/// rebalancer can leave for it. One per worker; relays register their
/// waker once.
#[derive(Debug, Default)]
pub struct Shutdown {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
    tags: RefCell<Vec<Option<Tag>>>,
    requests: RefCell<Vec<Option<CloseRequest>>>,
    /// Some request is waiting: relays look only when this is set.
    requested: Cell<bool>,
    /// Bumped when the admin API wants every connection's figures.
    report_epoch: Cell<u64>,
}

/// What a registered relay belongs to, for choosing which to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// Its upstream's index.
    pub upstream: usize,
    /// Its server, as the address of the server's shared slot.
    pub server: usize,
    /// When it was upgraded (`fleet::now_ms`).
    pub since_ms: u64,
    /// A close was requested already.
    pub closing: bool,
}

/// A close a relay is asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    /// What its outcome will report.
    pub why: Ending,
    /// The close code both legs get.
    pub code: CloseCode,
    /// The reason both legs get.
    pub reason: &'static str,
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
        if let Some(t) = self.tags.borrow_mut().get_mut(slot) {
            *t = None;
        }
        if let Some(r) = self.requests.borrow_mut().get_mut(slot) {
            *r = None;
        }
        self.free.borrow_mut().push(slot);
    }

    /// Records what the relay in `slot` belongs to.
    pub fn set_tag(&self, slot: usize, tag: Tag) {
        let mut tags = self.tags.borrow_mut();
        if tags.len() <= slot {
            tags.resize(slot + 1, None);
        }
        tags[slot] = Some(tag);
    }

    /// Asks every registered relay's task to report (its session writes a
    /// row when it sees the epoch change); returns the new epoch.
    pub fn request_reports(&self) -> u64 {
        let epoch = self.report_epoch.get() + 1;
        self.report_epoch.set(epoch);
        let wakers: Vec<Waker> = self.wakers.borrow().iter().flatten().cloned().collect();
        for w in wakers {
            w.wake();
        }
        epoch
    }

    /// The epoch of the latest [`Shutdown::request_reports`].
    #[inline]
    pub fn report_epoch(&self) -> u64 {
        self.report_epoch.get()
    }

    /// Whether a relay with a tag holds `slot` now.
    pub fn is_tagged(&self, slot: usize) -> bool {
        self.tags.borrow().get(slot).is_some_and(Option::is_some)
    }

    /// The registered relays with a tag: `(slot, tag)`.
    pub fn tagged(&self) -> Vec<(usize, Tag)> {
        self.tags
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .collect()
    }

    /// Asks the relay in `slot` to close, and wakes it.
    pub fn request_close(&self, slot: usize, request: CloseRequest) {
        {
            let mut r = self.requests.borrow_mut();
            if r.len() <= slot {
                r.resize(slot + 1, None);
            }
            r[slot] = Some(request);
        }
        self.requested.set(true);
        if let Some(Some(t)) = self.tags.borrow_mut().get_mut(slot) {
            t.closing = true;
        }
        let waker = self.wakers.borrow().get(slot).cloned().flatten();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The close request left for `slot`, if any (a `Cell` read when none
    /// is waiting anywhere).
    fn take_request(&self, slot: usize) -> Option<CloseRequest> {
        if !self.requested.get() {
            return None;
        }
        let mut r = self.requests.borrow_mut();
        let taken = r.get_mut(slot).and_then(Option::take);
        if r.iter().all(Option::is_none) {
            self.requested.set(false);
        }
        taken
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
    /// The worker's counters (message sizes are counted as they pass).
    pub stats: Option<std::sync::Arc<crate::stats::Stats>>,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |l: &Leg| match l {
            Leg::Client => "client",
            Leg::Backend => "backend",
        };
        match self {
            Ending::Closed { by, code: Some(c) } => write!(f, "{} sent close {c}", side(by)),
            Ending::Closed { by, code: None } => write!(f, "{} sent close (no code)", side(by)),
            Ending::Vanished(leg, None) => {
                write!(
                    f,
                    "{} TCP connection ended without a close frame",
                    side(leg)
                )
            }
            Ending::Vanished(leg, Some(kind)) => {
                write!(f, "{} TCP connection failed ({kind})", side(leg))
            }
            Ending::Dead(leg) => write!(f, "{} did not answer the keepalive ping", side(leg)),
            Ending::ProtocolError(leg, err) => write!(
                f,
                "{} protocol error: {err} (close {})",
                side(leg),
                err.close_code().0
            ),
            Ending::Idle => f.write_str("idle timeout"),
            Ending::Shutdown => f.write_str("server shutdown"),
            Ending::Expired => f.write_str("connection deadline passed"),
            Ending::RateLimited(leg) => write!(f, "{} over its rate limit", side(leg)),
            Ending::ByOperator => f.write_str("closed by operator"),
            Ending::Rebalanced => f.write_str("closed to rebalance (1012)"),
            Ending::CloseTimeout => f.write_str("close handshake timed out"),
            Ending::TunnelEnded => f.write_str("tunnel streams ended"),
        }
    }
}
