//! The close policy: who gets which close code, and in what order.
//!
//! Each leg records whether a close (or the end of its TCP stream) came from
//! it and whether one went to it, plus the close wsedge owes it. The rules:
//!
//! - A close frame from one side is relayed to the other; the connection
//!   ends when close frames went both ways.
//! - A side that vanishes (TCP end or error without a close frame) gets the
//!   other side a 1001 (client gone) or 1011 (backend gone).
//! - A side that breaks the protocol gets the error's code (1002, 1007,
//!   1009); the other side gets 1001 (client at fault) or 1014 (backend at
//!   fault). A client's close is *held* until the backend has answered the
//!   1001 sent to it (or can no longer answer), so the backend's frames
//!   already under way still reach the client first.
//! - wsedge itself closes both legs with one code: 1001 for shutdown and the
//!   idle timeout, a policy's code (1008) for a token that expired or an
//!   operator's close.
//! - A leg that stops answering wsedge's pings is dropped; the other side
//!   gets 1001 (client dead) or 1011 (backend dead).
//!
//! The close codes and why are listed in `docs/architecture.md`.

use std::io;

use crate::proto::close::CloseCode;
use crate::proto::error::ProtocolError;

use super::{Ending, Leg};

/// What wsedge does to a leg's TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpAction {
    /// Half-close (FIN): no close frame could go out cleanly (mid-frame or tunnel).
    ShutdownWrite,
    /// Drop it: the peer is dead.
    Drop,
}

/// Close bookkeeping of one leg.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LegState {
    /// A close frame came from this leg (or its TCP ended): read no more.
    pub recv_close: bool,
    /// A close frame went to this leg (or its TCP is gone): write no more.
    pub sent_close: bool,
    /// A close wsedge must send on this leg.
    pub post: Option<(CloseCode, &'static str)>,
    /// A TCP action the driver must take on this leg.
    pub tcp: Option<TcpAction>,
}

/// Close bookkeeping of the connection.
#[derive(Debug, Default)]
pub(super) struct Closing {
    pub legs: [LegState; 2],
    pub ending: Option<Ending>,
    /// A close has begun somewhere: the close timer runs.
    pub started: bool,
    /// Something changed that the other direction must see: poll again.
    pub repoll: bool,
    /// The close owed to a client that broke the protocol, held until the
    /// backend has answered its 1001 (or is gone).
    pub deferred: Option<(CloseCode, &'static str)>,
}

impl Closing {
    pub fn leg(&mut self, leg: Leg) -> &mut LegState {
        &mut self.legs[leg as usize]
    }

    pub fn set_ending(&mut self, e: Ending) {
        self.ending.get_or_insert(e);
    }

    /// Both close handshakes are over (or both legs gone).
    pub fn finished(&self) -> bool {
        self.legs.iter().all(|l| l.recv_close && l.sent_close)
    }

    pub fn post_close(&mut self, leg: Leg, code: CloseCode, reason: &'static str) {
        let l = self.leg(leg);
        if !l.sent_close && l.post.is_none() {
            l.post = Some((code, reason));
        }
        self.started = true;
        self.repoll = true;
    }

    /// A leg's TCP connection ended (`None`: EOF) or failed: the other side
    /// learns why.
    pub fn leg_gone(&mut self, leg: Leg, cause: Option<io::ErrorKind>) {
        let l = self.leg(leg);
        let already = l.recv_close && l.sent_close;
        l.recv_close = true;
        l.sent_close = true;
        self.repoll = true;
        if already {
            return;
        }
        self.set_ending(Ending::Vanished(leg, cause));
        self.other_side_learns(leg, "client went away", "backend connection lost");
    }

    /// A leg did not answer wsedge's ping in time: it is dropped.
    pub fn leg_dead(&mut self, leg: Leg) {
        let l = self.leg(leg);
        l.recv_close = true;
        l.sent_close = true;
        l.post = None;
        l.tcp = Some(TcpAction::Drop);
        self.repoll = true;
        self.set_ending(Ending::Dead(leg));
        self.other_side_learns(leg, "client not responding", "backend not responding");
    }

    fn other_side_learns(
        &mut self,
        gone: Leg,
        client_why: &'static str,
        backend_why: &'static str,
    ) {
        match gone {
            Leg::Client => self.post_close(Leg::Backend, CloseCode::GOING_AWAY, client_why),
            // A client that broke the protocol gets its own close code.
            Leg::Backend if self.deferred.is_some() => self.release_deferred(),
            Leg::Backend => self.post_close(Leg::Client, CloseCode::INTERNAL_ERROR, backend_why),
        }
    }

    /// A leg broke the protocol: it gets the error's close code, the other
    /// side 1001 (client at fault) or 1014 (backend at fault).
    pub fn protocol_error(&mut self, leg: Leg, e: ProtocolError) {
        self.set_ending(Ending::ProtocolError(leg, e));
        let other = match leg {
            Leg::Client => "client protocol error",
            Leg::Backend => "backend protocol error",
        };
        self.at_fault(leg, e.close_code(), e.reason(), other);
    }

    /// A leg broke a per-connection limit (rate): it gets `code`, the other
    /// side as for a protocol error.
    pub fn over_limit(&mut self, leg: Leg, code: CloseCode, reason: &'static str) {
        self.set_ending(Ending::RateLimited(leg));
        let other = match leg {
            Leg::Client => "client over its rate limit",
            Leg::Backend => "backend over its rate limit",
        };
        self.at_fault(leg, code, reason, other);
    }

    /// `leg` broke a rule: it gets `code`/`reason`; the other leg hears
    /// `other` (1001 to a backend, 1014 to a client).
    fn at_fault(&mut self, leg: Leg, code: CloseCode, reason: &'static str, other: &'static str) {
        self.leg(leg).recv_close = true;
        match leg {
            Leg::Client => {
                self.deferred = Some((code, reason));
                self.post_close(Leg::Backend, CloseCode::GOING_AWAY, other);
                if self.leg(Leg::Backend).recv_close {
                    self.release_deferred();
                }
            }
            Leg::Backend => {
                self.post_close(leg, code, reason);
                self.post_close(Leg::Client, CloseCode::BAD_GATEWAY, other);
            }
        }
    }

    /// Sends the client the close held for it (see `deferred`).
    pub fn release_deferred(&mut self) {
        if let Some((code, reason)) = self.deferred.take() {
            self.post_close(Leg::Client, code, reason);
        }
    }

    /// wsedge closes both legs with `code` (shutdown, idle timeout, expiry,
    /// an operator's close).
    pub fn close_both(&mut self, why: Ending, code: CloseCode, reason: &'static str) {
        self.set_ending(why);
        self.post_close(Leg::Client, code, reason);
        self.post_close(Leg::Backend, code, reason);
    }
}
