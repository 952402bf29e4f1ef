//! Delegated authentication (`[[auth]] kind = "external"`, like nginx's
//! `auth_request` and Envoy's `ext_authz`): an HTTP request to an
//! authorization service per handshake, without blocking the worker, with
//! decisions cached per credential.
//!
//! [`ask`] sends one `GET` on a new connection (`Connection: close`) and
//! decides as soon as the answer's head is complete: 2xx allows (with the
//! answer's `copy_headers` for the backend), 401 and 403 deny with that
//! status, anything else (a timeout, a refused connection, a malformed
//! answer, another status) leaves the service unavailable. The bytes are
//! built and read sans-IO (`request`, `answer`); this module only
//! moves them. [`DecisionCache`] keeps decisions per worker, keyed by a
//! digest of the credential.

mod answer;
mod cache;
mod request;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::transport::{self, into_poll};

pub use cache::DecisionCache;

/// One `[[auth]] kind = "external"` block's settings, validated by `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalSettings {
    /// The service's URL: `http://host:port/path` (the host an IP address
    /// or a name resolved when the configuration is loaded).
    pub url: String,
    /// The address `url` names.
    pub addr: std::net::SocketAddr,
    /// The `Host` header sent (host[:port] from `url`).
    pub authority: String,
    /// The request target (path and query from `url`).
    pub path: String,
    /// Headers of the client's request forwarded to the service (their
    /// values are also the credential decisions are cached by).
    pub forward_headers: Vec<String>,
    /// Headers of the service's 2xx answer added to the backend request.
    pub copy_headers: Vec<String>,
    /// How long to wait for the answer (default 1 s).
    pub timeout: Duration,
    /// Allow the connection when the service cannot be asked (timeout,
    /// refused, garbage) instead of answering 503.
    pub fail_open: bool,
    /// How long a decision is reused for the same credential (0: never).
    pub cache_ttl: Duration,
}

/// What is asked about one handshake.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The client's request method.
    pub method: &'a str,
    /// The client's original request target.
    pub path: &'a str,
    /// The client's address (sent as `X-Forwarded-For`).
    pub client: IpAddr,
    /// All the client's request headers; only those named in
    /// `forward_headers` (case-insensitive) are sent.
    pub headers: &'a [httparse::Header<'a>],
}

/// The service's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: allowed; the answer's headers named in `copy_headers` (name as
    /// configured, value bytes as sent), to add to the backend request.
    Allow(Vec<(String, Vec<u8>)>),
    /// 401 or 403: that status goes to the client.
    Deny(u16),
    /// Timeout, connect error, malformed answer or any other status: a
    /// short reason for the log. The caller answers 503, or allows when
    /// `fail_open`.
    Unavailable(String),
}

/// Asks the service about `req`: one HTTP/1.1 request on a new connection,
/// within `settings.timeout` for the whole exchange (connect, write, the
/// answer's head). The answer's body is never read: the connection is
/// closed once the head is complete.
pub async fn ask(settings: &ExternalSettings, req: &AuthRequest<'_>) -> Decision {
    let bytes = match request::build(settings, req) {
        Ok(bytes) => bytes,
        Err(unsafe_part) => return Decision::Unavailable(Failure::Unsafe(unsafe_part).to_string()),
    };
    let mut step = Step::Connecting;
    let outcome =
        monoio::time::timeout(settings.timeout, exchange(settings, &bytes, &mut step)).await;
    match outcome {
        Ok(Ok(decision)) => decision,
        Ok(Err(failure)) => Decision::Unavailable(failure.to_string()),
        Err(_) => Decision::Unavailable(Failure::TimedOut(settings.timeout, step).to_string()),
    }
}

/// Reads at most this much at a time.
const READ_CHUNK: usize = 4096;

/// Connect, write `bytes`, read until the answer decides. `step` follows
/// along, so that the caller's timeout can say where it cut this short.
async fn exchange(
    settings: &ExternalSettings,
    bytes: &[u8],
    step: &mut Step,
) -> Result<Decision, Failure> {
    *step = Step::Connecting;
    let tcp = TcpStream::connect_addr(settings.addr)
        .await
        .map_err(|e| Failure::Io(Step::Connecting, e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = into_poll(tcp).map_err(|e| Failure::Io(Step::Connecting, e.kind()))?;

    *step = Step::Writing;
    transport::write_all(&mut stream, bytes)
        .await
        .map_err(|e| Failure::Io(Step::Writing, e.kind()))?;

    *step = Step::Reading;
    let mut reader = answer::AnswerReader::new();
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(verdict) = reader.feed(&buf, &settings.copy_headers) {
            // Dropping the stream closes the connection; the body, if any,
            // is not wanted.
            return verdict;
        }
        // The reader says "too large" before the buffer reaches the limit,
        // so there is always room for at least one byte here.
        let used = buf.len();
        let room = answer::HEAD_LIMIT.saturating_sub(used).clamp(1, READ_CHUNK);
        buf.resize(used + room, 0);
        let read = transport::read(&mut stream, &mut buf[used..]).await;
        let n = match read {
            Ok(n) => n,
            Err(e) => return Err(Failure::Io(Step::Reading, e.kind())),
        };
        buf.truncate(used + n);
        if n == 0 {
            return Err(Failure::Closed { partial: used > 0 });
        }
    }
}

/// What [`ask`] was doing when the service became unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Connecting to `settings.addr`.
    Connecting,
    /// Writing the request.
    Writing,
    /// Reading the answer's head.
    Reading,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::Connecting => "connecting",
            Step::Writing => "writing the request",
            Step::Reading => "reading the answer",
        }
    }
}

/// Reads a service's answer from bytes that arrive in `splits` (the ends
/// of successive reads into one buffer, as the network brings them): the
/// decision once a final head is complete, or why there is none; `None`
/// when more bytes are needed. What [`ask`] does with its reads, without
/// the sockets (for the fuzz target).
pub fn read_answer(
    buf: &[u8],
    splits: &[usize],
    copy: &[String],
) -> Option<Result<Decision, String>> {
    let mut reader = answer::AnswerReader::new();
    for &end in splits.iter().chain(std::iter::once(&buf.len())) {
        if let Some(verdict) = reader.feed(&buf[..end.min(buf.len())], copy) {
            return Some(verdict.map_err(|f| f.to_string()));
        }
    }
    None
}

/// Why the service could not decide; becomes [`Decision::Unavailable`]'s
/// reason.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// `settings.timeout` passed during this step.
    TimedOut(Duration, Step),
    /// A socket call failed.
    Io(Step, io::ErrorKind),
    /// The service closed the connection before its answer's head was
    /// complete (`partial`: after some of it).
    Closed { partial: bool },
    /// The answer is not HTTP/1.x, or its head does not parse.
    Malformed(&'static str),
    /// The answer's head is longer than [`answer::HEAD_LIMIT`].
    HeadTooLarge,
    /// A final status that is neither 2xx nor 401 or 403.
    Status(u16),
    /// A part of the request (named) cannot go into a request head.
    Unsafe(&'static str),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TimedOut(after, step) => {
                write!(f, "timed out after {after:?} {}", step.doing())
            }
            Failure::Io(Step::Connecting, kind) => write!(f, "{kind}"),
            Failure::Io(step, kind) => write!(f, "{kind} {}", step.doing()),
            Failure::Closed { partial: false } => f.write_str("closed without answering"),
            Failure::Closed { partial: true } => {
                f.write_str("closed before the end of the answer's head")
            }
            Failure::Malformed(what) => write!(f, "malformed answer ({what})"),
            Failure::HeadTooLarge => write!(
                f,
                "malformed answer (head over {} KiB)",
                answer::HEAD_LIMIT / 1024
            ),
            Failure::Status(status) => write!(f, "answered {status}"),
            Failure::Unsafe(what) => write!(f, "not asked: {what} has control characters"),
        }
    }
}

#[cfg(test)]
mod tests;
