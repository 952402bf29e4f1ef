//! Policy refusals: each knows its HTTP status, the short label it is
//! counted and logged under, and what the answer carries (`Retry-After`,
//! `WWW-Authenticate`). Refusal log lines are rate-limited per label
//! ([`LogLimiter`]), so one client cannot fill the disk.

use std::cell::RefCell;
use std::fmt;

use crate::proto::handshake::simple_response;

/// Why the policy refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The client's address is not allowed on the route (`allow`/`deny`): 403.
    AddressDenied,
    /// `Origin` not in the route's `origins`: 403.
    OriginDenied,
    /// No credential where `token_from` looks: 401 with `WWW-Authenticate`.
    NoCredential,
    /// A credential that did not check out (bad signature, expired, unknown
    /// key, ...): 401.
    BadCredential,
    /// Authenticated but not allowed (`require`, or the external service
    /// said 403): 403.
    Forbidden,
    /// The external authorization service could not be asked: 503.
    AuthUnavailable,
    /// `max_connections_per_ip`: 429.
    IpConnections,
    /// `handshake_rate_per_ip`: 429 with `Retry-After`.
    IpRate,
    /// `max_connections_per_identity`: 429.
    IdentityConnections,
    /// The route's `max_connections`: 503.
    RouteConnections,
    /// `max_pending_handshakes` on this worker: 503.
    PendingHandshakes,
    /// The per-key tables are full of open connections: 503.
    TrackingFull,
}

impl Reason {
    /// Every reason, in counter order.
    pub const ALL: [Reason; 12] = [
        Reason::AddressDenied,
        Reason::OriginDenied,
        Reason::NoCredential,
        Reason::BadCredential,
        Reason::Forbidden,
        Reason::AuthUnavailable,
        Reason::IpConnections,
        Reason::IpRate,
        Reason::IdentityConnections,
        Reason::RouteConnections,
        Reason::PendingHandshakes,
        Reason::TrackingFull,
    ];

    /// Its index in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }

    /// The label counters and log lines use.
    pub fn label(self) -> &'static str {
        match self {
            Reason::AddressDenied => "address_denied",
            Reason::OriginDenied => "origin_denied",
            Reason::NoCredential => "no_credential",
            Reason::BadCredential => "bad_credential",
            Reason::Forbidden => "forbidden",
            Reason::AuthUnavailable => "auth_unavailable",
            Reason::IpConnections => "ip_connections",
            Reason::IpRate => "ip_handshake_rate",
            Reason::IdentityConnections => "identity_connections",
            Reason::RouteConnections => "route_connections",
            Reason::PendingHandshakes => "pending_handshakes",
            Reason::TrackingFull => "tracking_full",
        }
    }

    /// The status the client is answered with.
    pub fn status(self) -> u16 {
        match self {
            Reason::AddressDenied | Reason::OriginDenied | Reason::Forbidden => 403,
            Reason::NoCredential | Reason::BadCredential => 401,
            Reason::IpConnections | Reason::IpRate | Reason::IdentityConnections => 429,
            Reason::AuthUnavailable
            | Reason::RouteConnections
            | Reason::PendingHandshakes
            | Reason::TrackingFull => 503,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reason::AddressDenied => "address not allowed",
            Reason::OriginDenied => "origin not allowed",
            Reason::NoCredential => "authentication required",
            Reason::BadCredential => "invalid credentials",
            Reason::Forbidden => "not allowed",
            Reason::AuthUnavailable => "authorization service unavailable",
            Reason::IpConnections => "too many connections from your address",
            Reason::IpRate => "too many handshakes from your address",
            Reason::IdentityConnections => "too many connections for this identity",
            Reason::RouteConnections => "too many connections",
            Reason::PendingHandshakes => "too many handshakes in progress",
            Reason::TrackingFull => "too many clients",
        }
    }
}

/// One refusal: why, in a word (the label) and in a sentence (the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// What the log line says after the label (which check, which claim).
    pub detail: String,
    /// Seconds for `Retry-After`.
    pub retry_after: Option<u64>,
    /// A status other than the reason's (the external service's 401/403).
    pub status: Option<u16>,
}

impl Refusal {
    /// A refusal for `reason` described by `detail`.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
            retry_after: None,
            status: None,
        }
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The status answered.
    pub fn status(&self) -> u16 {
        self.status.unwrap_or(self.reason.status())
    }

    /// The complete answer.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let body = if status == self.reason.status() {
            self.reason.body()
        } else if status == 401 {
            Reason::BadCredential.body()
        } else {
            Reason::Forbidden.body()
        };
        let mut r = simple_response(status, body);
        let mut extra = String::new();
        if status == 401 {
            extra.push_str("WWW-Authenticate: Bearer\r\n");
        }
        if let Some(s) = self.retry_after {
            extra.push_str(&format!("Retry-After: {s}\r\n"));
        }
        if !extra.is_empty() {
            let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
            r.splice(at + 2..at + 2, extra.bytes());
        }
        r
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

/// Lines logged per label per second before the rest are only counted.
pub const LOG_LINES_PER_SECOND: u32 = 5;

/// Rate-limits refusal log lines per label, per worker: the first
/// [`LOG_LINES_PER_SECOND`] of a second are logged, the rest counted and
/// summed up in one line ("N more refused for LABEL in the last second")
/// when the next refusal of that label comes.
#[derive(Debug, Default)]
pub struct LogLimiter {
    // (label, second, logged in it, suppressed in it); a handful of labels.
    state: RefCell<Vec<(&'static str, u64, u32, u64)>>,
}

/// What [`LogLimiter::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogDecision {
    /// Log this refusal's line.
    pub log: bool,
    /// First log "N more refused for LABEL" for an earlier second.
    pub summary: Option<u64>,
}

impl LogLimiter {
    /// Decides for one refusal of `label` at `now_s` (whole seconds).
    pub fn admit(&self, label: &'static str, now_s: u64) -> LogDecision {
        let mut state = self.state.borrow_mut();
        let i = match state.iter().position(|(l, ..)| *l == label) {
            Some(i) => i,
            None => {
                state.push((label, now_s, 0, 0));
                state.len() - 1
            }
        };
        let (_, second, logged, suppressed) = &mut state[i];
        let mut summary = None;
        if *second != now_s {
            if *suppressed > 0 {
                summary = Some(*suppressed);
            }
            *second = now_s;
            *logged = 0;
            *suppressed = 0;
        }
        let log = *logged < LOG_LINES_PER_SECOND;
        if log {
            *logged += 1;
        } else {
            *suppressed += 1;
        }
        LogDecision { log, summary }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_status_and_headers() {
        let r = Refusal::new(Reason::NoCredential, "no token").response();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 "), "{text}");
        assert!(text.contains("\r\nWWW-Authenticate: Bearer\r\n"), "{text}");
        let r = Refusal::new(Reason::IpRate, "10/s")
            .retry_after(3)
            .response();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(text.contains("\r\nRetry-After: 3\r\n"), "{text}");
        let mut r = Refusal::new(Reason::Forbidden, "external");
        r.status = Some(401);
        assert!(
            String::from_utf8(r.response())
                .unwrap()
                .contains("WWW-Authenticate")
        );
        for reason in Reason::ALL {
            assert_eq!(Reason::ALL[reason.index()], reason);
            assert!(matches!(reason.status(), 401 | 403 | 429 | 503));
        }
    }

    #[test]
    fn log_lines_are_limited_per_label_and_summed_up() {
        let l = LogLimiter::default();
        for _ in 0..LOG_LINES_PER_SECOND {
            assert!(l.admit("a", 7).log);
        }
        for _ in 0..100 {
            assert_eq!(
                l.admit("a", 7),
                LogDecision {
                    log: false,
                    summary: None
                }
            );
        }
        assert!(l.admit("b", 7).log, "labels are separate");
        assert_eq!(
            l.admit("a", 8),
            LogDecision {
                log: true,
                summary: Some(100)
            }
        );
        assert_eq!(
            l.admit("a", 9),
            LogDecision {
                log: true,
                summary: None
            }
        );
    }
}
