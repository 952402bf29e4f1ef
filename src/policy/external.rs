//! Delegated authentication (`[[auth]] kind = "external"`, like nginx's
//! `auth_request` and Envoy's `ext_authz`): an HTTP request to an
//! authorization service per handshake, without blocking the worker, with
//! decisions cached per credential.

use std::time::Duration;

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
