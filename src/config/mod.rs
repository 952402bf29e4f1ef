//! Configuration: the TOML file (or the command line's `--listen` /
//! `--upstream`), parsed and validated once into an immutable [`Config`].
//!
//! Unknown keys and bad values are refused with the file, the line and a
//! sentence saying what is wrong. Every key and its default is documented in
//! `docs/configuration.md`.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::proto::handshake::Limits as HeadLimits;
use crate::route::{
    HostHeader, HostMatch, Matcher, PathMatch, PathRewrite, RequestView, ValueMatch,
};
use crate::tls::certs::CertFiles;
use crate::tls::record::MAX_RECORD;
use crate::tls::setup::{ClientAuth, MinVersion, ServerTls};

mod policy;
mod upstream;

pub use policy::{
    Auth, AuthKind, ConnectionRates, DirectionRates, HandshakeRate, PolicyLimits, RoutePolicy,
    UnitRate, parse_rate,
};

pub use upstream::{
    Balance, Ejection, HashKey, HealthCheck, HealthKind, ProxyVersion, Rebalance, Resolve, Server,
    ServerEntry, ServerSpec, Upstream, UpstreamTls, resolve_entry, system_resolve,
};

/// The configuration `wsedge` runs with when given no arguments.
pub const DEFAULT_CONFIG: &str = include_str!("../default.toml");

/// The longest timeout accepted (timers add timeouts to the current time).
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The server address that names the built-in echo upstream.
pub const BUILTIN_ECHO: &str = "builtin:echo";

/// Which io driver each worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoDriver {
    /// io_uring where it can be set up, epoll otherwise.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll.
    Epoll,
}

impl std::str::FromStr for IoDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoDriver::Auto),
            "uring" | "io_uring" | "iouring" => Ok(IoDriver::Uring),
            "epoll" | "legacy" => Ok(IoDriver::Epoll),
            _ => Err(format!(
                "unknown io driver {s:?} (expected auto, uring or epoll)"
            )),
        }
    }
}

/// How a route relays after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Parse, validate and re-mask every frame (the default).
    #[default]
    Frames,
    /// Copy bytes without parsing frames.
    Tunnel,
}

/// A whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads; 0 means one per CPU the process may run on.
    pub workers: usize,
    /// The io driver.
    pub io_driver: IoDriver,
    /// Pin each worker to a core (`pin = false` / `--no-pin` for
    /// containers with CPU quotas, where pinning can stack workers).
    pub pin: bool,
    /// Addresses to accept clients on.
    pub listeners: Vec<Listener>,
    /// Named groups of backend servers.
    pub upstreams: Vec<Upstream>,
    /// Routes, in precedence order (see [`crate::route`]): the first that
    /// matches a request is its route.
    pub routes: Vec<Route>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits on what clients and backends control.
    pub limits: Limits,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: crate::policy::cidr::CidrList,
    /// `[[auth]]` blocks, in file order (routes name them by index).
    pub auths: Vec<Auth>,
    /// `[log]`.
    pub log: crate::logging::LogSettings,
    /// `[admin]`: the admin endpoint, off when `None`.
    pub admin: Option<crate::admin::AdminSettings>,
    /// `pid_file`: written at start, removed at exit; `wsedge --reload`
    /// signals the process it names.
    pub pid_file: Option<PathBuf>,
}

/// A listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `IP:port`.
    pub address: SocketAddr,
    /// The accept backlog of each worker's socket.
    pub backlog: u32,
    /// TLS settings: clients connect with `wss://`.
    pub tls: Option<ServerTls>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header,
    /// whose source is the client's address.
    pub proxy_protocol: bool,
    /// `allow` / `deny`: a denied client is closed at accept, nothing written.
    pub acl: crate::policy::cidr::Acl,
}

/// A route: requests that match go to `upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Its conditions, as written, for logs (`host=a.example.com path=/chat`).
    pub label: String,
    /// What a request must look like.
    pub matcher: Matcher,
    /// The request target the backend receives.
    pub rewrite: PathRewrite,
    /// The `Host` the backend receives.
    pub host_header: HostHeader,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// `fallback_upstream`: where handshakes go when no server of
    /// `upstream` can take them (index into [`Config::upstreams`]).
    pub fallback_upstream: Option<usize>,
    /// How to relay.
    pub relay: RelayMode,
    /// Largest message (summed over fragments) in either direction; close 1009 above.
    pub max_message_size: u64,
    /// Validate text messages as UTF-8 (close 1007 when invalid).
    pub validate_utf8: bool,
    /// Pass `permessage-deflate` through end to end.
    pub permessage_deflate: bool,
    /// Ping a leg that has sent nothing for this long (0 = keepalive off).
    pub ping_interval: Duration,
    /// A leg that sends nothing for this long after wsedge's ping is dead.
    pub pong_timeout: Duration,
    /// Who may use it, authentication, limits.
    pub policy: RoutePolicy,
}

/// Timeouts. Zero means none where noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to a backend (→ 504).
    pub connect: Duration,
    /// Receiving a client's request head, and a backend's response head (→ 504).
    pub handshake: Duration,
    /// Waiting for the close handshake to complete once begun.
    pub close: Duration,
    /// Closing a connection with no traffic either way (0 = never).
    pub idle: Duration,
    /// On SIGINT/SIGTERM, how long to wait for close handshakes (after
    /// the drain period).
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long listeners go on accepting after `/readyz`
    /// turns 503 (for balancers to notice).
    pub drain_delay: Duration,
    /// On SIGTERM, the closes (1001) are spread evenly over this long.
    pub drain_period: Duration,
}

/// Limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or response head (→ 431 for clients).
    pub max_head_bytes: usize,
    /// Most header lines in a head (→ 431 for clients).
    pub max_headers: usize,
    /// The relay buffer of each direction: the in-flight bytes per direction.
    pub buffer_size: usize,
    /// Open client connections per worker; above it new clients get 503.
    pub max_connections: usize,
    /// Largest body of a backend's non-101 answer relayed to the client.
    pub max_response_body: usize,
    /// Handshakes in progress per worker (they do not take the slots of
    /// `max_connections`); above it new clients get 503.
    pub max_pending_handshakes: usize,
    /// Keys (client IPs, identities) each limit table tracks at most.
    pub max_tracked_clients: usize,
    /// Per-IP and per-identity limits and per-connection rates.
    pub policy: PolicyLimits,
}

impl Limits {
    /// The handshake limits for the protocol core.
    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_head_bytes: self.max_head_bytes,
            max_headers: self.max_headers,
        }
    }
}

fn default_backlog() -> u32 {
    1024
}

/// With TLS, a relay buffer holds a whole record and the start of a frame.
pub(crate) const MIN_TLS_BUFFER: usize = MAX_RECORD + 1024;
const TLS_BUFFER_MESSAGE: &str =
    "limits.buffer_size must be at least 18KiB with TLS (a TLS record is up to 16KiB + 261 bytes)";

/// `[listener.tls]`, validated (the files are read when the server starts,
/// or by `--check-config`).
fn listener_tls(t: &FileListenerTls) -> Result<ServerTls, String> {
    let mut certificates = Vec::new();
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => certificates.push(CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None) => {}
        _ => return Err("[listener.tls]: `cert` and `key` go together".into()),
    }
    certificates.extend(t.certificates.iter().map(|c| CertFiles {
        cert: c.cert.clone(),
        key: c.key.clone(),
    }));
    if certificates.is_empty() {
        return Err(
            "[listener.tls] needs a certificate: `cert` and `key`, or [[listener.tls.certificate]] entries".into(),
        );
    }
    let min_version = match t.min_version.as_deref() {
        None | Some("1.2") => MinVersion::Tls12,
        Some("1.3") => MinVersion::Tls13,
        Some(v) => return Err(format!("min_version {v:?}: expected \"1.2\" or \"1.3\"")),
    };
    let client_auth = match t.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(v) => {
            return Err(format!(
                "client_auth {v:?}: expected \"required\" or \"optional\""
            ));
        }
    };
    if t.client_auth.is_some() && t.client_ca.is_none() {
        return Err("client_auth needs client_ca (the CA that signs client certificates)".into());
    }
    Ok(ServerTls {
        certificates,
        sni_strict: t.sni_strict,
        min_version,
        client_ca: t.client_ca.clone(),
        client_auth,
    })
}

/// A configuration error with the span of the key at fault, when known.
type SpannedError = (Option<Range<usize>>, String);

/// A route's conditions and its label.
fn route_matcher(r: &FileRoute) -> Result<(Matcher, String), SpannedError> {
    let mut label = Vec::new();
    let host = match &r.host {
        Some(h) => {
            label.push(format!("host={}", h.get_ref()));
            Some(HostMatch::parse(h.get_ref()).map_err(|m| (Some(h.span()), m))?)
        }
        None => None,
    };
    let path = match (&r.path, &r.path_exact) {
        (Some(_), Some(e)) => {
            return Err((
                Some(e.span()),
                "path and path_exact exclude each other".into(),
            ));
        }
        (Some(p), None) => {
            label.push(format!("path={}", p.get_ref()));
            PathMatch::prefix(p.get_ref()).map_err(|m| (Some(p.span()), m))?
        }
        (None, Some(e)) => {
            label.push(format!("path_exact={}", e.get_ref()));
            PathMatch::exact(e.get_ref()).map_err(|m| (Some(e.span()), m))?
        }
        (None, None) => {
            if host.is_none() && r.headers.is_none() && r.query.is_none() {
                return Err((
                    None,
                    "a [[route]] needs a condition: path, path_exact, host, headers or query (path = \"/\" matches everything)".into(),
                ));
            }
            PathMatch::prefix("/").map_err(|m| (None, m))?
        }
    };
    let mut headers = Vec::new();
    let no_span = || 0..0;
    let headers_span = r.headers.as_ref().map_or_else(no_span, |h| h.span());
    for (name, value) in r.headers.iter().flat_map(|h| h.get_ref()) {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err((
                Some(headers_span.clone()),
                format!("headers: {name:?} is not a header name"),
            ));
        }
        if value.bytes().any(|b| b < b' ' && b != b'\t' || b == 0x7f) {
            return Err((
                Some(headers_span.clone()),
                format!("headers: the value for {name:?} has control characters"),
            ));
        }
        label.push(format!("header:{name}={value}"));
        headers.push((name.to_ascii_lowercase(), ValueMatch::parse(value.trim())));
    }
    let mut query = Vec::new();
    let query_span = r.query.as_ref().map_or_else(no_span, |q| q.span());
    for (name, value) in r.query.iter().flat_map(|q| q.get_ref()) {
        if name.is_empty() || name.contains(['&', '=', '#']) {
            return Err((
                Some(query_span.clone()),
                format!("query: {name:?} is not a parameter name"),
            ));
        }
        label.push(format!("query:{name}={value}"));
        query.push((name.clone(), ValueMatch::parse(value)));
    }
    Ok((
        Matcher {
            host,
            path,
            headers,
            query,
        },
        label.join(" "),
    ))
}

/// An HTTP token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A configuration the file (or arguments) could not be turned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the configuration came from.
    pub source: String,
    /// The 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.source, l, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The file format. Spanned values where a later check needs the line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    workers: usize,
    #[serde(default)]
    io_driver: IoDriver,
    #[serde(default = "yes")]
    pin: bool,
    pid_file: Option<PathBuf>,
    #[serde(default, rename = "listener")]
    listeners: Vec<toml::Spanned<FileListener>>,
    #[serde(default, rename = "upstream")]
    upstreams: Vec<toml::Spanned<upstream::FileUpstream>>,
    #[serde(default, rename = "route")]
    routes: Vec<toml::Spanned<FileRoute>>,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default, rename = "auth")]
    auths: Vec<toml::Spanned<policy::FileAuth>>,
    #[serde(default)]
    log: FileLog,
    admin: Option<FileAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    address: ListenAddress,
    token_file: Option<PathBuf>,
    #[serde(default)]
    read_open: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLog {
    format: crate::logging::LogFormat,
    level: String,
    access: bool,
}

impl Default for FileLog {
    fn default() -> Self {
        let d = crate::logging::LogSettings::default();
        FileLog {
            format: d.format,
            level: d.level,
            access: d.access,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    address: ListenAddress,
    #[serde(default = "default_backlog")]
    backlog: u32,
    tls: Option<toml::Spanned<FileListenerTls>>,
    #[serde(default)]
    proxy_protocol: bool,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListenerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default, rename = "certificate")]
    certificates: Vec<FileCertKey>,
    #[serde(default)]
    sni_strict: bool,
    min_version: Option<String>,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertKey {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    host: Option<toml::Spanned<String>>,
    path: Option<toml::Spanned<String>>,
    path_exact: Option<toml::Spanned<String>>,
    headers: Option<toml::Spanned<std::collections::BTreeMap<String, String>>>,
    query: Option<toml::Spanned<std::collections::BTreeMap<String, String>>>,
    strip_prefix: Option<toml::Spanned<String>>,
    rewrite_prefix: Option<toml::Spanned<FileRewrite>>,
    host_header: Option<toml::Spanned<String>>,
    upstream: toml::Spanned<String>,
    fallback_upstream: Option<toml::Spanned<String>>,
    #[serde(default)]
    relay: RelayMode,
    #[serde(default = "default_max_message")]
    max_message_size: Size,
    #[serde(default = "yes")]
    validate_utf8: bool,
    #[serde(default)]
    permessage_deflate: bool,
    #[serde(default = "no_time")]
    ping_interval: Secs,
    #[serde(default = "default_pong_timeout")]
    pong_timeout: Secs,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    origins: Option<Vec<String>>,
    allow_missing_origin: Option<bool>,
    auth: Option<String>,
    require: Option<std::collections::BTreeMap<String, String>>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    handshake_rate_per_ip: Option<String>,
    handshake_burst: Option<u32>,
    max_connections_per_identity: Option<u32>,
    client_message_rate: Option<String>,
    client_message_burst: Option<u64>,
    client_byte_rate: Option<String>,
    backend_message_rate: Option<String>,
    backend_message_burst: Option<u64>,
    backend_byte_rate: Option<String>,
    on_limit: Option<String>,
}

/// The rate keys of `[limits]` or a route, as one value.
macro_rules! rate_keys {
    ($s:expr) => {
        policy::FileRateKeys {
            max_connections_per_ip: $s.max_connections_per_ip,
            handshake_rate_per_ip: $s.handshake_rate_per_ip.clone(),
            handshake_burst: $s.handshake_burst,
            max_connections_per_identity: $s.max_connections_per_identity,
            client_message_rate: $s.client_message_rate.clone(),
            client_message_burst: $s.client_message_burst,
            client_byte_rate: $s.client_byte_rate.clone(),
            backend_message_rate: $s.backend_message_rate.clone(),
            backend_message_burst: $s.backend_message_burst,
            backend_byte_rate: $s.backend_byte_rate.clone(),
            on_limit: $s.on_limit.clone(),
        }
    };
}

impl FileRoute {
    fn policy_keys(&self) -> (policy::FileRoutePolicy, policy::FileRateKeys) {
        (
            policy::FileRoutePolicy {
                allow: self.allow.clone(),
                deny: self.deny.clone(),
                origins: self.origins.clone(),
                allow_missing_origin: self.allow_missing_origin,
                auth: self.auth.clone(),
                require: self.require.clone(),
                max_connections: self.max_connections,
            },
            rate_keys!(self),
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRewrite {
    from: String,
    to: String,
}

fn no_time() -> Secs {
    Secs(Duration::ZERO)
}

fn default_pong_timeout() -> Secs {
    Secs(Duration::from_secs(10))
}

fn default_max_message() -> Size {
    Size(16 << 20)
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileTimeouts {
    connect: Secs,
    handshake: Secs,
    close: Secs,
    idle: Secs,
    shutdown_grace: Secs,
    drain_delay: Secs,
    drain_period: Secs,
}

impl Default for FileTimeouts {
    fn default() -> Self {
        FileTimeouts {
            connect: Secs(Duration::from_secs(5)),
            handshake: Secs(Duration::from_secs(10)),
            close: Secs(Duration::from_secs(5)),
            idle: Secs(Duration::ZERO),
            shutdown_grace: Secs(Duration::from_secs(10)),
            drain_delay: Secs(Duration::ZERO),
            drain_period: Secs(Duration::from_secs(30)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    max_head_bytes: Size,
    max_headers: usize,
    buffer_size: Size,
    max_connections: usize,
    max_response_body: Size,
    max_pending_handshakes: usize,
    max_tracked_clients: usize,
    max_connections_per_ip: Option<u32>,
    handshake_rate_per_ip: Option<String>,
    handshake_burst: Option<u32>,
    max_connections_per_identity: Option<u32>,
    client_message_rate: Option<String>,
    client_message_burst: Option<u64>,
    client_byte_rate: Option<String>,
    backend_message_rate: Option<String>,
    backend_message_burst: Option<u64>,
    backend_byte_rate: Option<String>,
    on_limit: Option<String>,
}

impl Default for FileLimits {
    fn default() -> Self {
        FileLimits {
            max_head_bytes: Size(16 << 10),
            max_headers: 64,
            buffer_size: Size(64 << 10),
            max_connections: 10_000,
            max_response_body: Size(64 << 10),
            max_pending_handshakes: 1024,
            max_tracked_clients: 1 << 17,
            max_connections_per_ip: None,
            handshake_rate_per_ip: None,
            handshake_burst: None,
            max_connections_per_identity: None,
            client_message_rate: None,
            client_message_burst: None,
            client_byte_rate: None,
            backend_message_rate: None,
            backend_message_burst: None,
            backend_byte_rate: None,
            on_limit: None,
        }
    }
}

/// A listener's address: `IP:PORT`, or `NAME:PORT` resolved when the
/// configuration is read (its first address).
struct ListenAddress(SocketAddr);

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(ListenAddress(a));
        }
        use std::net::ToSocketAddrs;
        match s.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Ok(ListenAddress(a)),
            _ => Err(de::Error::custom(format!(
                "address {s:?}: expected IP:PORT (\"127.0.0.1:8080\", \"0.0.0.0:443\", \"[::]:443\") or HOST:PORT with a name that resolves"
            ))),
        }
    }
}

/// A byte size: an integer, or a string like `"64KiB"`, `"16MiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(d, Size, |s| parse_size(s).map(Size))
    }
}

/// An integer, or a string for `parse`: how sizes and durations are written.
/// Anything else (a float, a bool, a table) is refused with what is expected.
fn int_or_str<'de, D: Deserializer<'de>, T>(
    d: D,
    from_int: fn(u64) -> T,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T> {
        from_int: fn(u64) -> T,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a whole number, or a string with a unit (a duration like \"5s\", \"250ms\", \"2m\"; a size like \"64KiB\")",
            )
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
            Ok((self.from_int)(n))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
            u64::try_from(n)
                .map(self.from_int)
                .map_err(|_| E::custom(format!("{n}: must not be negative")))
        }
        fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
            Err(E::custom(format!(
                "{n}: expected a whole number, or a string with a unit (\"{n}s\" is not read as a duration: write \"{}ms\")",
                (n * 1000.0).round()
            )))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.parse)(s).map_err(E::custom)
        }
    }
    d.deserialize_any(V { from_int, parse })
}

/// Parses `"16MiB"`, `"64 KiB"`, `"1000"`, `"2k"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size (expected e.g. 65536, \"64KiB\" or \"16MiB\")")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// A duration: an integer number of seconds, or a string like `"250ms"`,
/// `"5s"`, `"2m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Secs(Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(
            d,
            |n| Secs(Duration::from_secs(n)),
            |s| parse_duration(s).map(Secs),
        )
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration (expected e.g. 5, \"250ms\", \"5s\" or \"2m\")")
    })?;
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    })
}

/// The 1-based line of a byte offset in `text`.
fn line_of(text: &str, span: Range<usize>) -> usize {
    text[..span.start.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Parses and validates a configuration file's text. `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, &system_resolve)
    }

    /// [`Config::parse`] with host names resolved by `resolve`.
    pub fn parse_with(
        text: &str,
        source: &str,
        resolve: Resolve<'_>,
    ) -> Result<Config, ConfigError> {
        let err = |line: Option<usize>, message: String| ConfigError {
            source: source.to_string(),
            line,
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s));
            err(line, e.message().trim_end_matches('\n').to_string())
        })?;

        if file.listeners.is_empty() {
            return Err(err(
                None,
                "no [[listener]]: wsedge needs at least one address to listen on".into(),
            ));
        }
        let mut upstreams: Vec<Upstream> = Vec::new();
        for u in &file.upstreams {
            let line = line_of(text, u.span());
            if upstreams.iter().any(|x| x.name == u.get_ref().name) {
                return Err(err(
                    Some(line),
                    format!("upstream {:?} is defined twice", u.get_ref().name),
                ));
            }
            let up = upstream::build(u.get_ref(), resolve)
                .map_err(|(span, m)| err(Some(span.map_or(line, |s| line_of(text, s))), m))?;
            upstreams.push(up);
        }
        let l = &file.limits;
        let limits = Limits {
            max_head_bytes: l.max_head_bytes.0 as usize,
            max_headers: l.max_headers,
            buffer_size: l.buffer_size.0 as usize,
            max_connections: l.max_connections,
            max_response_body: l.max_response_body.0 as usize,
            max_pending_handshakes: l.max_pending_handshakes,
            max_tracked_clients: l.max_tracked_clients,
            policy: policy::policy_limits(&rate_keys!(l), None, l.buffer_size.0 as usize)
                .map_err(|m| err(None, format!("limits.{m}")))?,
        };
        if limits.max_pending_handshakes == 0 {
            return Err(err(
                None,
                "limits.max_pending_handshakes must be at least 1".into(),
            ));
        }
        if !(1024..=1 << 26).contains(&limits.max_tracked_clients) {
            return Err(err(
                None,
                "limits.max_tracked_clients must be between 1024 and 67108864".into(),
            ));
        }
        crate::logging::check_level(&file.log.level).map_err(|m| err(None, m))?;
        if let Some(a) = &file.admin
            && a.read_open
            && a.token_file.is_none()
        {
            return Err(err(
                None,
                "[admin] read_open needs token_file (without a token everything is open)".into(),
            ));
        }
        let trusted_proxies = crate::policy::cidr::CidrList::parse(&file.trusted_proxies)
            .map_err(|m| err(None, format!("trusted_proxies: {m}")))?;
        let mut auths: Vec<Auth> = Vec::new();
        for a in &file.auths {
            let line = Some(line_of(text, a.span()));
            let built = policy::auth(a.get_ref(), resolve).map_err(|m| err(line, m))?;
            if auths.iter().any(|x| x.name == built.name) {
                return Err(err(
                    line,
                    format!("[[auth]] {:?} is defined twice", built.name),
                ));
            }
            auths.push(built);
        }
        if !(1024..=1 << 20).contains(&limits.max_head_bytes) {
            return Err(err(
                None,
                "limits.max_head_bytes must be between 1KiB and 1MiB".into(),
            ));
        }
        if !(4..=1024).contains(&limits.max_headers) {
            return Err(err(
                None,
                "limits.max_headers must be between 4 and 1024".into(),
            ));
        }
        if !(4096..=64 << 20).contains(&limits.buffer_size) {
            return Err(err(
                None,
                "limits.buffer_size must be between 4KiB and 64MiB".into(),
            ));
        }
        if limits.max_response_body > 64 << 20 {
            return Err(err(
                None,
                "limits.max_response_body must be at most 64MiB".into(),
            ));
        }
        if limits.max_connections == 0 {
            return Err(err(
                None,
                "limits.max_connections must be at least 1".into(),
            ));
        }
        if file.routes.is_empty() {
            return Err(err(
                None,
                "no [[route]]: add one, e.g. path = \"/\" with an upstream".into(),
            ));
        }
        let mut routes = Vec::new();
        for r in &file.routes {
            let line = line_of(text, r.span());
            let r = r.get_ref();
            let at = |span: Range<usize>| Some(line_of(text, span));
            let (matcher, label) = route_matcher(r).map_err(|(span, m)| {
                err(span.map_or(Some(line), |s| line_of(text, s).into()), m)
            })?;
            let rewrite = match (&r.strip_prefix, &r.rewrite_prefix) {
                (Some(_), Some(w)) => {
                    return Err(err(
                        at(w.span()),
                        "strip_prefix and rewrite_prefix exclude each other".into(),
                    ));
                }
                (Some(p), None) => {
                    PathRewrite::strip(p.get_ref()).map_err(|m| err(at(p.span()), m))?
                }
                (None, Some(w)) => PathRewrite::replace(&w.get_ref().from, &w.get_ref().to)
                    .map_err(|m| err(at(w.span()), m))?,
                (None, None) => PathRewrite::Keep,
            };
            let host_header = match &r.host_header {
                Some(h) => HostHeader::parse(h.get_ref()).map_err(|m| err(at(h.span()), m))?,
                None => HostHeader::Preserve,
            };
            let upstream = upstreams
                .iter()
                .position(|u| &u.name == r.upstream.get_ref())
                .ok_or_else(|| {
                    err(
                        Some(line_of(text, r.upstream.span())),
                        format!(
                            "route {label} names upstream {:?}, which is not defined",
                            r.upstream.get_ref()
                        ),
                    )
                })?;
            if r.max_message_size.0 == 0 || r.max_message_size.0 > i64::MAX as u64 {
                return Err(err(
                    Some(line),
                    "max_message_size must be between 1 byte and 2^63-1".into(),
                ));
            }
            for (name, d, zero_ok) in [
                ("ping_interval", r.ping_interval.0, true),
                ("pong_timeout", r.pong_timeout.0, false),
            ] {
                if d.is_zero() && !zero_ok {
                    return Err(err(Some(line), format!("{name} must be greater than zero")));
                }
                if d > MAX_TIMEOUT {
                    return Err(err(Some(line), format!("{name} must be at most 7 days")));
                }
            }
            let (policy_keys, rate_keys) = r.policy_keys();
            let policy = policy::route_policy(
                &policy_keys,
                &rate_keys,
                &limits.policy,
                &auths,
                limits.buffer_size,
            )
            .map_err(|m| err(Some(line), format!("route {label}: {m}")))?;
            let fallback_upstream = match &r.fallback_upstream {
                Some(f) => Some(
                    upstreams
                        .iter()
                        .position(|u| &u.name == f.get_ref())
                        .filter(|&i| i != upstream)
                        .ok_or_else(|| {
                            err(
                                at(f.span()),
                                format!(
                                    "route {label}: fallback_upstream {:?} is not another defined upstream",
                                    f.get_ref()
                                ),
                            )
                        })?,
                ),
                None => None,
            };
            routes.push(Route {
                label,
                matcher,
                rewrite,
                host_header,
                upstream,
                fallback_upstream,
                relay: r.relay,
                max_message_size: r.max_message_size.0,
                validate_utf8: r.validate_utf8,
                permessage_deflate: r.permessage_deflate,
                ping_interval: r.ping_interval.0,
                pong_timeout: r.pong_timeout.0,
                policy,
            });
        }
        // Stable: file order among equals.
        routes.sort_by_key(|r| r.matcher.rank());

        let t = &file.timeouts;
        let timeouts = Timeouts {
            connect: t.connect.0,
            handshake: t.handshake.0,
            close: t.close.0,
            idle: t.idle.0,
            shutdown_grace: t.shutdown_grace.0,
            drain_delay: t.drain_delay.0,
            drain_period: t.drain_period.0,
        };
        for (name, d, zero_ok) in [
            ("connect", timeouts.connect, false),
            ("handshake", timeouts.handshake, false),
            ("close", timeouts.close, false),
            ("idle", timeouts.idle, true),
            ("shutdown_grace", timeouts.shutdown_grace, true),
            ("drain_delay", timeouts.drain_delay, true),
            ("drain_period", timeouts.drain_period, true),
        ] {
            if d.is_zero() && !zero_ok {
                return Err(err(
                    None,
                    format!("timeouts.{name} must be greater than zero"),
                ));
            }
            // Timers add these to the current time: keep them sane.
            if d > MAX_TIMEOUT {
                return Err(err(None, format!("timeouts.{name} must be at most 7 days")));
            }
        }
        let mut listeners = Vec::new();
        for l in &file.listeners {
            let line = line_of(text, l.span());
            let l = l.get_ref();
            let tls = match &l.tls {
                Some(t) => Some(
                    listener_tls(t.get_ref()).map_err(|m| err(Some(line_of(text, t.span())), m))?,
                ),
                None => None,
            };
            if tls.is_some() && limits.buffer_size < MIN_TLS_BUFFER {
                return Err(err(Some(line), TLS_BUFFER_MESSAGE.into()));
            }
            listeners.push(Listener {
                address: l.address.0,
                backlog: l.backlog,
                tls,
                proxy_protocol: l.proxy_protocol,
                acl: crate::policy::cidr::Acl {
                    allow: crate::policy::cidr::CidrList::parse(&l.allow)
                        .map_err(|m| err(Some(line), format!("allow: {m}")))?,
                    deny: crate::policy::cidr::CidrList::parse(&l.deny)
                        .map_err(|m| err(Some(line), format!("deny: {m}")))?,
                },
            });
        }
        if upstreams.iter().any(|u| u.tls.is_some()) && limits.buffer_size < MIN_TLS_BUFFER {
            return Err(err(None, TLS_BUFFER_MESSAGE.into()));
        }

        Ok(Config {
            workers: file.workers,
            io_driver: file.io_driver,
            pin: file.pin,
            listeners,
            upstreams,
            routes,
            timeouts,
            limits,
            trusted_proxies,
            auths,
            log: crate::logging::LogSettings {
                format: file.log.format,
                level: file.log.level.clone(),
                access: file.log.access,
            },
            pid_file: file.pid_file.clone(),
            admin: file.admin.as_ref().map(|a| crate::admin::AdminSettings {
                address: a.address.0,
                token_file: a.token_file.clone(),
                read_open: a.read_open,
            }),
        })
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: path.display().to_string(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        if let Some(dir) = path.parent() {
            c.resolve_paths(dir);
        }
        Ok(c)
    }

    /// Makes the relative file names in the configuration relative to
    /// `dir` (the configuration file's directory).
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(t) = &mut l.tls {
                for c in &mut t.certificates {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
                if let Some(ca) = &mut t.client_ca {
                    fix(ca);
                }
            }
        }
        for u in &mut self.upstreams {
            if let Some(t) = &mut u.tls {
                if let Some(ca) = &mut t.client.ca {
                    fix(ca);
                }
                if let Some(c) = &mut t.client.cert {
                    fix(&mut c.cert);
                    fix(&mut c.key);
                }
            }
        }
    }

    /// The embedded default: `127.0.0.1:8080`, every path to the built-in echo server.
    pub fn embedded_default() -> Config {
        match Config::parse(DEFAULT_CONFIG, "<embedded default>") {
            Ok(c) => c,
            Err(e) => unreachable!("the embedded default config is valid (tested): {e}"),
        }
    }

    /// A configuration from `--listen` and `--upstream` arguments: every
    /// path proxied to the upstream servers, round-robin. `tls` (from
    /// `--tls-cert`/`--tls-key`) makes every listener TLS; `upstream_ca`
    /// (`--upstream-ca`) is what `wss://` upstreams are verified against.
    pub fn from_args(
        listen: &[SocketAddr],
        upstreams: &[String],
        tls: Option<CertFiles>,
        upstream_ca: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let mut c = Config::embedded_default();
        let err = |message: String| ConfigError {
            source: "command line".into(),
            line: None,
            message,
        };
        if !listen.is_empty() {
            c.listeners = listen
                .iter()
                .map(|&address| Listener {
                    address,
                    backlog: default_backlog(),
                    tls: None,
                    proxy_protocol: false,
                    acl: Default::default(),
                })
                .collect();
        }
        if let Some(files) = tls {
            for l in &mut c.listeners {
                l.tls = Some(ServerTls {
                    certificates: vec![files.clone()],
                    sni_strict: false,
                    min_version: MinVersion::Tls12,
                    client_ca: None,
                    client_auth: ClientAuth::Required,
                });
            }
        }
        if !upstreams.is_empty() {
            let up = upstream::from_args(upstreams, upstream_ca.clone(), &system_resolve)
                .map_err(|m| err(format!("--upstream: {m}")))?;
            c.upstreams = vec![up];
            for r in &mut c.routes {
                r.upstream = 0;
            }
        }
        if upstream_ca.is_some() && c.upstreams.iter().all(|u| u.tls.is_none()) {
            return Err(err("--upstream-ca needs a wss:// --upstream".into()));
        }
        Ok(c)
    }

    /// The route for a request: the first in precedence order whose
    /// conditions hold, with its index in [`Config::routes`].
    pub fn route(&self, req: &RequestView<'_, '_>) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(req))
    }

    /// What the configuration asks for that this build does not do yet
    /// (keys of issue 9 that are parsed and validated before their
    /// behaviour lands): logged at start and by `--check-config`, so that
    /// no key is silently ignored.
    pub fn warnings(&self) -> Vec<String> {
        // Every key of issue 9 is active now; keys that land before their
        // behaviour are named here.
        Vec::new()
    }

    /// Whether any upstream uses the built-in echo server.
    pub fn uses_builtin_echo(&self) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.servers.iter().any(|s| s.addr == Server::BuiltinEcho))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route a request with this target, Host and headers takes: its
    /// upstream's name.
    fn route_of(c: &Config, host: &str, target: &str, headers: &[(&str, &str)]) -> Option<String> {
        let hs: Vec<httparse::Header<'_>> = headers
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        let view = RequestView {
            host,
            target,
            headers: &hs,
        };
        c.route(&view)
            .map(|(_, r)| c.upstreams[r.upstream].name.clone())
    }

    fn with_upstreams(routes: &str) -> String {
        let mut t = String::from("[[listener]]\naddress = \"127.0.0.1:1\"\n");
        for n in ["a", "b", "c", "d", "e", "f"] {
            t.push_str(&format!(
                "[[upstream]]\nname = \"{n}\"\nservers = [\"127.0.0.1:2\"]\n"
            ));
        }
        t + routes
    }

    #[test]
    fn route_precedence_table() {
        let text = with_upstreams(
            r#"
[[route]]
path = "/"
upstream = "a"
[[route]]
path = "/chat"
upstream = "b"
[[route]]
path = "/chat"
headers = { "X-Version" = "2" }
upstream = "f"
[[route]]
host = "*.example.com"
path = "/"
upstream = "c"
[[route]]
host = "api.example.com"
upstream = "d"
[[route]]
path_exact = "/chat/lobby"
query = { room = "*" }
upstream = "e"
"#,
        );
        let c = Config::parse(&text, "x").unwrap();
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case<'_>] = &[
            ("h", "/", &[], "a"),
            ("h", "/chatroom", &[], "a"),
            ("h", "/chat", &[], "b"),
            ("h", "/chat/x?y", &[], "b"),
            // Equal rank, so file order: the header route is written after
            // the plain one and never wins (the next test turns them round).
            ("h", "/chat", &[("X-Version", "2")], "b"),
            ("h", "/chat/lobby?room=1", &[], "e"),
            ("h", "/chat/lobby", &[], "b"),
            ("h", "/chat/lobby/x?room=1", &[], "b"),
            ("x.example.com", "/chat", &[], "c"),
            ("x.example.com:8443", "/", &[], "c"),
            ("a.b.example.com", "/chat", &[], "b"),
            ("API.example.com", "/chat", &[], "d"),
            ("api.example.com:443", "/anything", &[], "d"),
        ];
        for (host, target, headers, want) in cases {
            assert_eq!(
                route_of(&c, host, target, headers).as_deref(),
                Some(*want),
                "{host} {target} {headers:?}"
            );
        }
    }

    #[test]
    fn header_route_first_in_file_wins_over_equal() {
        let text = with_upstreams(
            r#"
[[route]]
path = "/chat"
headers = { "X-Version" = "2" }
upstream = "f"
[[route]]
path = "/chat"
upstream = "b"
"#,
        );
        let c = Config::parse(&text, "x").unwrap();
        assert_eq!(
            route_of(&c, "h", "/chat", &[("x-version", "2")]).as_deref(),
            Some("f")
        );
        assert_eq!(
            route_of(&c, "h", "/chat", &[("x-version", "3")]).as_deref(),
            Some("b")
        );
        assert_eq!(route_of(&c, "h", "/", &[]), None, "no match: 404");
    }

    #[test]
    fn route_rewrites_and_host_header() {
        let text = with_upstreams(
            r#"
[[route]]
path = "/ws"
strip_prefix = "/ws"
host_header = "backend"
upstream = "a"
[[route]]
path = "/v1"
rewrite_prefix = { from = "/v1", to = "/api/v2" }
host_header = "internal.example:9000"
upstream = "b"
"#,
        );
        let c = Config::parse(&text, "x").unwrap();
        let (_, ws) = c
            .route(&RequestView {
                host: "h",
                target: "/ws/x",
                headers: &[],
            })
            .unwrap();
        assert_eq!(ws.rewrite.apply("/ws/x?q"), "/x?q");
        assert_eq!(
            ws.host_header
                .value("client", &c.upstreams[0].servers[0].authority),
            "127.0.0.1:2"
        );
        let v1 = c.routes.iter().find(|r| r.label == "path=/v1").unwrap();
        assert_eq!(v1.rewrite.apply("/v1/a"), "/api/v2/a");
        assert_eq!(v1.host_header.value("client", "s"), "internal.example:9000");
    }

    #[test]
    fn route_errors_name_their_line() {
        for (routes, line, needle) in [
            ("[[route]]\nupstream = \"a\"\n", 1, "needs a condition"),
            (
                "[[route]]\npath = \"/\"\npath_exact = \"/x\"\nupstream = \"a\"\n",
                3,
                "exclude each other",
            ),
            (
                "[[route]]\npath = \"x\"\nupstream = \"a\"\n",
                2,
                "must start with '/'",
            ),
            (
                "[[route]]\nhost = \"a b\"\nupstream = \"a\"\n",
                2,
                "not a host name",
            ),
            (
                "[[route]]\npath = \"/\"\nstrip_prefix = \"/a\"\nrewrite_prefix = { from = \"/a\", to = \"/\" }\nupstream = \"a\"\n",
                4,
                "exclude each other",
            ),
            (
                "[[route]]\npath = \"/\"\nhost_header = \"a b\"\nupstream = \"a\"\n",
                3,
                "host_header",
            ),
            (
                "[[route]]\npath = \"/\"\nheaders = { \"a b\" = \"1\" }\nupstream = \"a\"\n",
                3,
                "not a header name",
            ),
        ] {
            let text = with_upstreams(routes);
            let base = text.lines().count() - routes.lines().count();
            let e = Config::parse(&text, "x.toml").unwrap_err();
            assert_eq!(e.line, Some(base + line), "{routes}: {e}");
            assert!(e.message.contains(needle), "{routes}: {e}");
        }
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::embedded_default();
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.upstreams[0].servers[0].addr, Server::BuiltinEcho);
        assert_eq!(
            route_of(&c, "localhost", "/anything", &[]).as_deref(),
            Some("echo")
        );
        assert_eq!(c.io_driver, IoDriver::Auto);
    }

    #[test]
    fn unknown_key_reports_its_line() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\nbogus = 1\n";
        let e = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("bogus"), "{e}");
        assert!(e.to_string().starts_with("x.toml:3:"), "{e}");
    }

    #[test]
    fn bad_value_reports_its_line() {
        let text = r#"
[[listener]]
address = "127.0.0.1:1"
[[upstream]]
name = "a"
servers = ["127.0.0.1:2"]
[[route]]
path = "/"
upstream = "a"
max_message_size = "12 parsecs"
"#;
        let e = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("parsecs"), "{e}");
    }

    #[test]
    fn route_to_undefined_upstream() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n[[route]]\npath = \"/\"\nupstream = \"b\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.message.contains("not defined"), "{e}");
    }

    #[test]
    fn bad_server_address() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\nservers = [\"nowhere\"]\n[[route]]\npath = \"/\"\nupstream = \"a\"\n";
        let e = Config::parse(text, "x.toml").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("x").is_err());
        assert!(parse_size("99999999999GiB").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn longest_prefix_wins_and_tunnel_parses() {
        let text = r#"
[[listener]]
address = "127.0.0.1:1"
[[upstream]]
name = "a"
servers = ["127.0.0.1:2", "127.0.0.1:3"]
[[upstream]]
name = "b"
servers = ["builtin:echo"]
[[route]]
path = "/"
upstream = "a"
[[route]]
path = "/chat"
upstream = "b"
relay = "tunnel"
[timeouts]
idle = "30s"
[limits]
buffer_size = "16KiB"
"#;
        let c = Config::parse(text, "x").unwrap();
        assert_eq!(route_of(&c, "h", "/chat/x", &[]).as_deref(), Some("b"));
        assert_eq!(c.routes[0].relay, RelayMode::Tunnel, "longest first");
        assert_eq!(route_of(&c, "h", "/other", &[]).as_deref(), Some("a"));
        assert_eq!(c.timeouts.idle, Duration::from_secs(30));
        assert_eq!(c.limits.buffer_size, 16384);
    }

    #[test]
    fn from_args() {
        let c = Config::from_args(
            &["127.0.0.1:9".parse().unwrap()],
            &["127.0.0.1:10".into(), "127.0.0.1:11".into()],
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.upstreams[0].servers.len(), 2);
        assert!(c.upstreams[0].tls.is_none());
        assert!(Config::from_args(&[], &["nope".into()], None, None).is_err());
        let files = CertFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        let c = Config::from_args(
            &[
                "127.0.0.1:9".parse().unwrap(),
                "127.0.0.1:8".parse().unwrap(),
            ],
            &["wss://localhost:10".into()],
            Some(files.clone()),
            Some("ca.pem".into()),
        )
        .unwrap();
        assert!(
            c.listeners
                .iter()
                .all(|l| l.tls.as_ref().unwrap().certificates == [files.clone()])
        );
        let t = c.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(c.upstreams[0].entries[0].host, "localhost");
        assert_eq!(t.client.ca.as_deref(), Some(Path::new("ca.pem")));
        assert!(
            Config::from_args(&[], &["127.0.0.1:1".into()], None, Some("ca.pem".into())).is_err()
        );
    }

    #[test]
    fn tls_keys() {
        let base = "[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n[[route]]\npath = \"/\"\nupstream = \"a\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n";
        let c = Config::parse(
            &format!("{base}[listener.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\nsni_strict = true\nmin_version = \"1.3\"\nclient_ca = \"ca.pem\"\nclient_auth = \"optional\"\n[[listener.tls.certificate]]\ncert = \"b.pem\"\nkey = \"b.key\"\n"),
            "x",
        )
        .unwrap();
        let t = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(t.certificates.len(), 2);
        assert_eq!(t.certificates[0].cert, Path::new("a.pem"));
        assert_eq!(t.certificates[1].key, Path::new("b.key"));
        assert!(t.sni_strict);
        assert_eq!(t.min_version, MinVersion::Tls13);
        assert_eq!(t.client_auth, ClientAuth::Optional);
        for (extra, says) in [
            ("[listener.tls]\ncert = \"a.pem\"\n", "go together"),
            ("[listener.tls]\nsni_strict = true\n", "needs a certificate"),
            (
                "[listener.tls]\ncert = \"a\"\nkey = \"b\"\nmin_version = \"1.1\"\n",
                "min_version",
            ),
            (
                "[listener.tls]\ncert = \"a\"\nkey = \"b\"\nclient_auth = \"optional\"\n",
                "needs client_ca",
            ),
            (
                "[listener.tls]\ncert = \"a\"\nkey = \"b\"\n[limits]\nbuffer_size = \"16KiB\"\n",
                "at least 18KiB",
            ),
        ] {
            let e = Config::parse(&format!("{base}{extra}"), "x").unwrap_err();
            assert!(e.message.contains(says), "{extra}: {e}");
            assert!(e.line.is_some() || says == "at least 18KiB", "{extra}: {e}");
        }
        let up = "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/\"\nupstream = \"a\"\n[[upstream]]\nname = \"a\"\n";
        let c = Config::parse(
            &format!("{up}servers = [\"wss://localhost:2\"]\nca = \"ca.pem\"\nsni = \"api\"\n"),
            "x",
        )
        .unwrap();
        let t = c.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(t.client.sni.as_deref(), Some("api"));
        let c = Config::parse(
            &format!("{up}servers = [\"127.0.0.1:2\"]\ntls = true\ninsecure_skip_verify = true\n"),
            "x",
        )
        .unwrap();
        assert!(
            c.upstreams[0]
                .tls
                .as_ref()
                .unwrap()
                .client
                .insecure_skip_verify
        );
        for (extra, says) in [
            (
                "servers = [\"wss://127.0.0.1:2\", \"ws://127.0.0.1:3\"]\n",
                "mixes",
            ),
            ("servers = [\"127.0.0.1:2\"]\nca = \"x\"\n", "no TLS"),
            (
                "servers = [\"wss://127.0.0.1:2\"]\ncert = \"x\"\n",
                "go together",
            ),
            (
                "servers = [\"builtin:echo\"]\ntls = true\n",
                "speaks no TLS",
            ),
            (
                "servers = [\"wss://no-such-host.invalid:2\"]\n",
                "cannot resolve",
            ),
        ] {
            let e = Config::parse(&format!("{up}{extra}"), "x").unwrap_err();
            assert!(e.message.contains(says), "{extra}: {e}");
        }
    }

    #[test]
    fn absurd_timeouts_and_body_limit_are_refused() {
        let base = "[[listener]]\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n[[route]]\npath = \"/\"\nupstream = \"a\"\n";
        for extra in [
            "[timeouts]\nidle = 99999999999\n",
            "[timeouts]\nclose = \"9999h\"\n",
            "[limits]\nmax_response_body = \"1GiB\"\n",
        ] {
            let e = Config::parse(&format!("{base}{extra}"), "x").unwrap_err();
            assert!(e.message.contains("at most"), "{extra}: {e}");
        }
        let ok = Config::parse(&format!("{base}[timeouts]\nidle = \"5m\"\n"), "x").unwrap();
        assert_eq!(ok.timeouts.idle, Duration::from_secs(300));
    }
}
