//! `[[upstream]]`: servers (with weights, backups and DNS names), the
//! balancing algorithm, health checks, outlier ejection, retries, circuit
//! limits, slow start and rebalancing. Every key and default is in
//! `docs/configuration.md`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::{BUILTIN_ECHO, MAX_TIMEOUT, Secs, SpannedError, is_tchar};
use crate::tls::certs::CertFiles;
use crate::tls::setup::ClientTls;

/// A named group of backend servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The name routes refer to.
    pub name: String,
    /// The `servers` entries as written (re-resolved every
    /// `resolve_interval`).
    pub entries: Vec<ServerEntry>,
    /// The servers as resolved at start: one per address of each entry.
    pub servers: Vec<ServerSpec>,
    /// TLS to the servers (`wss://` servers or `tls = true`).
    pub tls: Option<UpstreamTls>,
    /// How a server is chosen.
    pub balance: Balance,
    /// `sticky_cookie`: the cookie that pins a client to its server.
    pub sticky_cookie: Option<String>,
    /// Active health checks.
    pub health: Option<HealthCheck>,
    /// Passive outlier ejection.
    pub eject: Ejection,
    /// A server that comes (back) up gets its share ramped over this long.
    pub slow_start: Duration,
    /// Handshake retries on another server.
    pub retries: u32,
    /// Base of the exponential backoff (full jitter) between retries.
    pub retry_backoff: Duration,
    /// Retries may be at most this share of handshakes over 10 s.
    pub retry_budget: f64,
    /// Per server: most open connections (0 = no limit).
    pub max_connections: u32,
    /// Per server: most handshakes in progress (0 = no limit).
    pub max_pending: u32,
    /// Closing the excess of an overloaded server's connections.
    pub rebalance: Option<Rebalance>,
    /// How often host names are resolved again (zero = never).
    pub resolve_interval: Duration,
    /// `send_proxy_protocol`: each backend connection starts with a PROXY
    /// header carrying the client's address.
    pub send_proxy_protocol: Option<ProxyVersion>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// A `servers` entry as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// `HOST:PORT`, `wss://HOST:PORT`, `builtin:echo`, as written.
    pub written: String,
    /// The host as written (no brackets): SNI and the name verified.
    pub host: String,
    /// The port.
    pub port: u16,
    /// `HOST:PORT` as written: the `Host` sent with `host_header = "backend"`.
    pub authority: String,
    /// 1..=256.
    pub weight: u16,
    /// Used only when every non-backup server is down.
    pub backup: bool,
}

/// One server: an address of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where to connect.
    pub addr: Server,
    /// Index into [`Upstream::entries`].
    pub entry: usize,
    /// The entry's host as written (SNI and verification).
    pub host: String,
    /// The entry's `HOST:PORT` as written.
    pub authority: String,
    /// 1..=256.
    pub weight: u16,
    /// A backup server.
    pub backup: bool,
}

/// Where a server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// A TCP address.
    Addr(SocketAddr),
    /// The built-in echo server (`builtin:echo`).
    BuiltinEcho,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Server::Addr(a) => a.fmt(f),
            Server::BuiltinEcho => f.write_str(BUILTIN_ECHO),
        }
    }
}

/// TLS to an upstream's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Verification and client certificate.
    pub client: ClientTls,
}

/// `balance`.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    /// `"round_robin"` (the default): smooth weighted round robin.
    RoundRobin,
    /// `"least_conn"`: fewest active connections, weighted, over all workers.
    LeastConn,
    /// `"random_two"`: the less loaded of two random servers.
    RandomTwo,
    /// `"hash"`: consistent hashing of `hash_key` with bounded loads.
    Hash {
        /// What is hashed.
        key: HashKey,
        /// `hash_balance_factor`: no server above this × its fair share.
        factor: f64,
    },
}

/// `hash_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `"ip"`: the client's address.
    Ip,
    /// `"header:NAME"`.
    Header(String),
    /// `"cookie:NAME"`.
    Cookie(String),
    /// `"query:NAME"`.
    Query(String),
    /// `"path"`: the request path (without the query).
    Path,
}

impl HashKey {
    fn parse(s: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "hash_key {s:?}: expected \"ip\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\""
            )
        };
        Ok(match s.split_once(':') {
            None if s == "ip" => HashKey::Ip,
            None if s == "path" => HashKey::Path,
            Some(("header", n)) if !n.is_empty() && n.bytes().all(is_tchar) => {
                HashKey::Header(n.to_ascii_lowercase())
            }
            Some(("cookie", n)) if !n.is_empty() && n.bytes().all(is_tchar) => {
                HashKey::Cookie(n.to_string())
            }
            Some(("query", n)) if !n.is_empty() && !n.contains(['&', '=', '#']) => {
                HashKey::Query(n.to_string())
            }
            _ => return Err(bad()),
        })
    }
}

/// `[upstream.health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a check does.
    pub kind: HealthKind,
    /// The path a `websocket` check upgrades.
    pub path: String,
    /// Between checks of one server (jittered).
    pub interval: Duration,
    /// For one check.
    pub timeout: Duration,
    /// Passes in a row that bring a down server up.
    pub rise: u32,
    /// Failures in a row that take an up server down.
    pub fall: u32,
}

/// `kind` of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    /// A TCP connect.
    Tcp,
    /// An upgrade (101 with the right accept key), a ping answered by a
    /// pong, a close 1000.
    WebSocket,
}

/// Passive outlier ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// `eject_after` consecutive failures eject a server (0 = never).
    pub after: u32,
    /// `eject_base`: the first ejection's length; doubled each time.
    pub base: Duration,
    /// `eject_max`: the longest ejection.
    pub max: Duration,
}

/// `rebalance = { max_skew, closes_per_second }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rebalance {
    /// A server above this × its weighted fair share for 30 s is over.
    pub max_skew: f64,
    /// Most connections closed (with 1012) per second, over the upstream.
    pub closes_per_second: f64,
    /// How long a server must stay over before its excess is closed.
    pub sustain: Duration,
}

// ---------------------------------------------------------------------------
// The file format.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstream {
    pub(super) name: String,
    servers: Vec<toml::Spanned<FileServer>>,
    #[serde(default)]
    tls: bool,
    ca: Option<PathBuf>,
    sni: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: bool,
    balance: Option<toml::Spanned<String>>,
    hash_key: Option<toml::Spanned<String>>,
    hash_balance_factor: Option<toml::Spanned<f64>>,
    sticky_cookie: Option<toml::Spanned<String>>,
    health: Option<toml::Spanned<FileHealth>>,
    eject_after: Option<u32>,
    eject_base: Option<toml::Spanned<Secs>>,
    eject_max: Option<toml::Spanned<Secs>>,
    slow_start: Option<toml::Spanned<Secs>>,
    retries: Option<toml::Spanned<u32>>,
    retry_backoff: Option<toml::Spanned<Secs>>,
    retry_budget: Option<toml::Spanned<f64>>,
    max_connections: Option<u32>,
    max_pending: Option<u32>,
    rebalance: Option<toml::Spanned<FileRebalance>>,
    resolve_interval: Option<toml::Spanned<Secs>>,
    send_proxy_protocol: Option<toml::Spanned<String>>,
}

/// A `servers` entry: a string, or a table with `address`.
struct FileServer {
    address: String,
    weight: u16,
    backup: bool,
}

impl<'de> Deserialize<'de> for FileServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileServer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "\"HOST:PORT\" or { address = \"HOST:PORT\", weight = 1, backup = false }",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FileServer, E> {
                Ok(FileServer {
                    address: s.to_string(),
                    weight: 1,
                    backup: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FileServer, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    address: String,
                    #[serde(default = "one")]
                    weight: u16,
                    #[serde(default)]
                    backup: bool,
                }
                fn one() -> u16 {
                    1
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FileServer {
                    address: t.address,
                    weight: t.weight,
                    backup: t.backup,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    kind: String,
    path: Option<String>,
    interval: Option<Secs>,
    timeout: Option<Secs>,
    rise: Option<u32>,
    fall: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRebalance {
    max_skew: f64,
    closes_per_second: f64,
    sustain: Option<Secs>,
}

/// How a host name becomes addresses (injectable for tests).
pub type Resolve<'a> = &'a dyn Fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

/// The system resolver: every address of `host`, in the order given,
/// without duplicates.
pub fn system_resolve(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in (host, port).to_socket_addrs()? {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

/// A `servers` entry's parts: the entry (weight and backup from the
/// table), and `Some(tls)` when a scheme was given.
pub(super) fn parse_entry(
    s: &str,
    weight: u16,
    backup: bool,
) -> Result<(ServerEntry, Option<bool>), String> {
    if s == BUILTIN_ECHO {
        return Ok((
            ServerEntry {
                written: s.into(),
                host: "localhost".into(),
                port: 0,
                authority: "localhost".into(),
                weight,
                backup,
            },
            None,
        ));
    }
    let (rest, tls) = if let Some(r) = s.strip_prefix("wss://") {
        (r, Some(true))
    } else if let Some(r) = s.strip_prefix("ws://") {
        (r, Some(false))
    } else {
        (s, None)
    };
    let rest = rest.trim_end_matches('/');
    let bad = || format!("server {s:?} is not HOST:PORT (or wss://HOST:PORT, or {BUILTIN_ECHO:?})");
    let (host, port) = match rest.parse::<SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => {
            let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse::<u16>().map_err(|_| bad())?;
            let host = host.trim_matches(['[', ']']);
            if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
                return Err(bad());
            }
            (host.to_string(), port)
        }
    };
    Ok((
        ServerEntry {
            written: s.into(),
            host,
            port,
            authority: rest.to_string(),
            weight,
            backup,
        },
        tls,
    ))
}

/// The servers an entry stands for now.
pub fn resolve_entry(
    entry: &ServerEntry,
    index: usize,
    resolve: Resolve<'_>,
) -> Result<Vec<ServerSpec>, String> {
    let spec = |addr| ServerSpec {
        addr,
        entry: index,
        host: entry.host.clone(),
        authority: entry.authority.clone(),
        weight: entry.weight,
        backup: entry.backup,
    };
    if entry.written == BUILTIN_ECHO {
        return Ok(vec![spec(Server::BuiltinEcho)]);
    }
    if let Ok(ip) = entry.host.parse::<std::net::IpAddr>() {
        return Ok(vec![spec(Server::Addr(SocketAddr::new(ip, entry.port)))]);
    }
    let addrs = resolve(&entry.host, entry.port).map_err(|e| {
        format!(
            "server {:?}: cannot resolve {:?}: {e}",
            entry.written, entry.host
        )
    })?;
    if addrs.is_empty() {
        return Err(format!(
            "server {:?}: {:?} has no address",
            entry.written, entry.host
        ));
    }
    Ok(addrs.into_iter().map(|a| spec(Server::Addr(a))).collect())
}

/// An upstream's entries from `--upstream` arguments (weight 1, no backup).
pub(super) fn from_args(
    upstreams: &[String],
    upstream_ca: Option<PathBuf>,
    resolve: Resolve<'_>,
) -> Result<Upstream, String> {
    let mut entries = Vec::new();
    let mut wss = false;
    for s in upstreams {
        let (e, tls) = parse_entry(s, 1, false)?;
        wss |= tls == Some(true);
        entries.push(e);
    }
    let mut servers = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        servers.extend(resolve_entry(e, i, resolve)?);
    }
    let mut u = Upstream::defaults("default".into(), entries, servers);
    u.tls = wss.then(|| UpstreamTls {
        client: ClientTls {
            ca: upstream_ca,
            ..ClientTls::default()
        },
    });
    Ok(u)
}

impl Upstream {
    /// An upstream with every setting at its default.
    pub fn defaults(name: String, entries: Vec<ServerEntry>, servers: Vec<ServerSpec>) -> Upstream {
        Upstream {
            name,
            entries,
            servers,
            tls: None,
            balance: Balance::RoundRobin,
            sticky_cookie: None,
            health: None,
            eject: Ejection {
                after: 5,
                base: Duration::from_secs(30),
                max: Duration::from_secs(300),
            },
            slow_start: Duration::ZERO,
            retries: 2,
            retry_backoff: Duration::from_millis(25),
            retry_budget: 0.2,
            max_connections: 0,
            max_pending: 0,
            rebalance: None,
            resolve_interval: Duration::from_secs(30),
            send_proxy_protocol: None,
        }
    }
}

/// Builds an upstream from its table; errors carry the span at fault.
pub(super) fn build(u: &FileUpstream, resolve: Resolve<'_>) -> Result<Upstream, SpannedError> {
    let whole = |m: String| (None, m);
    let name = &u.name;
    if u.servers.is_empty() {
        return Err(whole(format!("upstream {name:?} has no servers")));
    }
    let mut entries = Vec::new();
    let mut schemes = Vec::new();
    let mut servers = Vec::new();
    for s in &u.servers {
        let at = |m: String| (Some(s.span()), m);
        let f = s.get_ref();
        if !(1..=256).contains(&f.weight) {
            return Err(at(format!(
                "server {:?}: weight {} is not between 1 and 256",
                f.address, f.weight
            )));
        }
        let (entry, tls) = parse_entry(&f.address, f.weight, f.backup).map_err(at)?;
        servers.extend(resolve_entry(&entry, entries.len(), resolve).map_err(at)?);
        entries.push(entry);
        schemes.push(tls);
    }
    if entries.iter().all(|e| e.backup) {
        return Err(whole(format!(
            "upstream {name:?}: every server is a backup; at least one must not be"
        )));
    }
    let wss = schemes.iter().filter(|t| **t == Some(true)).count();
    if wss > 0 && schemes.contains(&Some(false)) {
        return Err(whole(format!(
            "upstream {name:?} mixes ws:// and wss:// servers"
        )));
    }
    let builtin = entries.iter().any(|e| e.written == BUILTIN_ECHO);
    let tls = if u.tls || wss > 0 {
        if builtin {
            return Err(whole(format!(
                "upstream {name:?}: the built-in echo server speaks no TLS"
            )));
        }
        let cert = match (&u.cert, &u.key) {
            (Some(cert), Some(key)) => Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => {
                return Err(whole(format!(
                    "upstream {name:?}: `cert` and `key` go together"
                )));
            }
        };
        Some(UpstreamTls {
            client: ClientTls {
                ca: u.ca.clone(),
                sni: u.sni.clone(),
                cert,
                insecure_skip_verify: u.insecure_skip_verify,
            },
        })
    } else {
        if u.ca.is_some()
            || u.sni.is_some()
            || u.cert.is_some()
            || u.key.is_some()
            || u.insecure_skip_verify
        {
            return Err(whole(format!(
                "upstream {name:?} has TLS settings but no TLS: use wss:// servers or `tls = true`"
            )));
        }
        None
    };

    let mut up = Upstream::defaults(name.clone(), entries, servers);
    up.tls = tls;

    let key = match &u.hash_key {
        Some(k) => Some(HashKey::parse(k.get_ref()).map_err(|m| (Some(k.span()), m))?),
        None => None,
    };
    let factor = match &u.hash_balance_factor {
        Some(f) if !(1.0..=100.0).contains(f.get_ref()) => {
            return Err((
                Some(f.span()),
                format!(
                    "hash_balance_factor {} must be between 1.0 (perfectly even) and 100",
                    f.get_ref()
                ),
            ));
        }
        Some(f) => Some(*f.get_ref()),
        None => None,
    };
    up.balance = match u.balance.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some(("least_conn", _)) => Balance::LeastConn,
        Some(("random_two", _)) => Balance::RandomTwo,
        Some(("hash", _)) => Balance::Hash {
            key: key.clone().unwrap_or(HashKey::Ip),
            factor: factor.unwrap_or(1.25),
        },
        Some((other, span)) => {
            return Err((
                Some(span),
                format!(
                    "balance {other:?}: expected \"round_robin\", \"least_conn\", \"random_two\" or \"hash\""
                ),
            ));
        }
    };
    if !matches!(up.balance, Balance::Hash { .. }) && (key.is_some() || factor.is_some()) {
        return Err(whole(format!(
            "upstream {name:?}: hash_key and hash_balance_factor need balance = \"hash\""
        )));
    }

    if let Some(c) = &u.sticky_cookie {
        let v = c.get_ref();
        if v.is_empty() || !v.bytes().all(is_tchar) {
            return Err((
                Some(c.span()),
                format!("sticky_cookie {v:?} is not a cookie name"),
            ));
        }
        up.sticky_cookie = Some(v.clone());
    }

    if let Some(h) = &u.health {
        up.health = Some(health(h.get_ref()).map_err(|m| (Some(h.span()), m))?);
    }

    if let Some(n) = u.eject_after {
        up.eject.after = n;
    }
    if let Some(b) = &u.eject_base {
        up.eject.base = duration("eject_base", b, false)?;
    }
    if let Some(m) = &u.eject_max {
        up.eject.max = duration("eject_max", m, false)?;
    }
    if up.eject.max < up.eject.base {
        return Err(whole(format!(
            "upstream {name:?}: eject_max must be at least eject_base"
        )));
    }
    if let Some(s) = &u.slow_start {
        up.slow_start = duration("slow_start", s, true)?;
    }
    if let Some(r) = &u.retries {
        if *r.get_ref() > 10 {
            return Err((Some(r.span()), "retries must be at most 10".into()));
        }
        up.retries = *r.get_ref();
    }
    if let Some(b) = &u.retry_backoff {
        up.retry_backoff = duration("retry_backoff", b, true)?;
    }
    if let Some(b) = &u.retry_budget {
        if !(0.0..=1.0).contains(b.get_ref()) {
            return Err((
                Some(b.span()),
                "retry_budget must be between 0.0 and 1.0 (a share of handshakes)".into(),
            ));
        }
        up.retry_budget = *b.get_ref();
    }
    up.max_connections = u.max_connections.unwrap_or(0);
    up.max_pending = u.max_pending.unwrap_or(0);
    if let Some(r) = &u.rebalance {
        let f = r.get_ref();
        if !(f.max_skew > 1.0 && f.max_skew <= 100.0) {
            return Err((
                Some(r.span()),
                "rebalance.max_skew must be above 1.0 (e.g. 1.5)".into(),
            ));
        }
        if !(f.closes_per_second > 0.0 && f.closes_per_second <= 100_000.0) {
            return Err((
                Some(r.span()),
                "rebalance.closes_per_second must be above 0".into(),
            ));
        }
        let sustain = f.sustain.map_or(Duration::from_secs(30), |s| s.0);
        if sustain > MAX_TIMEOUT {
            return Err((
                Some(r.span()),
                "rebalance.sustain must be at most 7 days".into(),
            ));
        }
        up.rebalance = Some(Rebalance {
            max_skew: f.max_skew,
            closes_per_second: f.closes_per_second,
            sustain,
        });
    }
    if let Some(r) = &u.resolve_interval {
        up.resolve_interval = duration("resolve_interval", r, true)?;
    }
    if let Some(p) = &u.send_proxy_protocol {
        up.send_proxy_protocol = Some(match p.get_ref().as_str() {
            "v1" => ProxyVersion::V1,
            "v2" => ProxyVersion::V2,
            other => {
                return Err((
                    Some(p.span()),
                    format!("send_proxy_protocol {other:?}: expected \"v1\" or \"v2\""),
                ));
            }
        });
        if builtin {
            return Err(whole(format!(
                "upstream {name:?}: the built-in echo server reads no PROXY header"
            )));
        }
    }
    Ok(up)
}

fn duration(name: &str, d: &toml::Spanned<Secs>, zero_ok: bool) -> Result<Duration, SpannedError> {
    let v = d.get_ref().0;
    let at = |m: String| (Some(d.span()), m);
    if v.is_zero() && !zero_ok {
        return Err(at(format!("{name} must be greater than zero")));
    }
    if v > MAX_TIMEOUT {
        return Err(at(format!("{name} must be at most 7 days")));
    }
    Ok(v)
}

fn health(h: &FileHealth) -> Result<HealthCheck, String> {
    let kind = match h.kind.as_str() {
        "tcp" => HealthKind::Tcp,
        "websocket" => HealthKind::WebSocket,
        k => {
            return Err(format!(
                "health kind {k:?}: expected \"tcp\" or \"websocket\""
            ));
        }
    };
    if kind == HealthKind::Tcp && h.path.is_some() {
        return Err("health: `path` is for kind = \"websocket\"".into());
    }
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "health path {path:?} must start with '/' and have no spaces"
        ));
    }
    let interval = h.interval.map_or(Duration::from_secs(5), |s| s.0);
    let timeout = h.timeout.map_or(Duration::from_secs(2), |s| s.0);
    if interval < Duration::from_millis(100) || interval > MAX_TIMEOUT {
        return Err("health interval must be between 100ms and 7 days".into());
    }
    if timeout.is_zero() || timeout > interval {
        return Err("health timeout must be above zero and at most the interval".into());
    }
    let rise = h.rise.unwrap_or(2);
    let fall = h.fall.unwrap_or(3);
    if !(1..=100).contains(&rise) || !(1..=100).contains(&fall) {
        return Err("health rise and fall must be between 1 and 100".into());
    }
    Ok(HealthCheck {
        kind,
        path,
        interval,
        timeout,
        rise,
        fall,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    fn config(upstream: &str) -> Result<Config, super::super::ConfigError> {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\n{upstream}"
        );
        let fake = |host: &str, port: u16| -> std::io::Result<Vec<SocketAddr>> {
            match host {
                "api.internal" => Ok(vec![
                    SocketAddr::from(([10, 0, 0, 1], port)),
                    SocketAddr::from(([10, 0, 0, 2], port)),
                ]),
                "gone.internal" => Ok(vec![]),
                _ => Err(std::io::Error::other("no such host")),
            }
        };
        Config::parse_with(&text, "u.toml", &fake)
    }

    #[test]
    fn servers_strings_and_tables() {
        let c = config(
            r#"servers = ["127.0.0.1:9000", { address = "api.internal:9001", weight = 3 }, { address = "127.0.0.1:9002", backup = true }]"#,
        )
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(u.entries.len(), 3);
        // A host name with two addresses is two servers, both weight 3.
        let got: Vec<(String, usize, u16, bool)> = u
            .servers
            .iter()
            .map(|s| (s.addr.to_string(), s.entry, s.weight, s.backup))
            .collect();
        assert_eq!(
            got,
            [
                ("127.0.0.1:9000".into(), 0, 1, false),
                ("10.0.0.1:9001".into(), 1, 3, false),
                ("10.0.0.2:9001".into(), 1, 3, false),
                ("127.0.0.1:9002".into(), 2, 1, true),
            ]
        );
        assert_eq!(u.servers[1].authority, "api.internal:9001");
        assert_eq!(u.servers[1].host, "api.internal");
        // Defaults.
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.retries, 2);
        assert_eq!(u.retry_backoff, Duration::from_millis(25));
        assert_eq!(u.retry_budget, 0.2);
        assert_eq!(u.resolve_interval, Duration::from_secs(30));
        assert_eq!(u.eject.after, 5);
        assert!(u.health.is_none() && u.rebalance.is_none() && u.sticky_cookie.is_none());
    }

    #[test]
    fn every_key() {
        let c = config(
            r#"servers = ["127.0.0.1:9000"]
balance = "hash"
hash_key = "cookie:session"
hash_balance_factor = 1.5
sticky_cookie = "srv"
eject_after = 3
eject_base = "10s"
eject_max = "2m"
slow_start = "30s"
retries = 4
retry_backoff = "50ms"
retry_budget = 0.1
max_connections = 1000
max_pending = 50
rebalance = { max_skew = 1.5, closes_per_second = 20 }
resolve_interval = 0
[upstream.health]
kind = "websocket"
path = "/health"
interval = "2s"
timeout = "1s"
rise = 3
fall = 2
"#,
        )
        .unwrap();
        let u = &c.upstreams[0];
        assert_eq!(
            u.balance,
            Balance::Hash {
                key: HashKey::Cookie("session".into()),
                factor: 1.5
            }
        );
        assert_eq!(u.sticky_cookie.as_deref(), Some("srv"));
        assert_eq!(
            u.eject,
            Ejection {
                after: 3,
                base: Duration::from_secs(10),
                max: Duration::from_secs(120)
            }
        );
        assert_eq!(u.slow_start, Duration::from_secs(30));
        assert_eq!((u.retries, u.retry_budget), (4, 0.1));
        assert_eq!((u.max_connections, u.max_pending), (1000, 50));
        assert_eq!(
            u.rebalance,
            Some(Rebalance {
                max_skew: 1.5,
                closes_per_second: 20.0,
                sustain: Duration::from_secs(30),
            })
        );
        assert_eq!(u.resolve_interval, Duration::ZERO);
        assert_eq!(
            u.health,
            Some(HealthCheck {
                kind: HealthKind::WebSocket,
                path: "/health".into(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 3,
                fall: 2,
            })
        );
    }

    #[test]
    fn hash_keys() {
        for (k, want) in [
            ("ip", HashKey::Ip),
            ("path", HashKey::Path),
            ("header:X-User", HashKey::Header("x-user".into())),
            ("query:room", HashKey::Query("room".into())),
        ] {
            assert_eq!(HashKey::parse(k).unwrap(), want);
        }
        for bad in ["", "header:", "cookie:a b", "host", "query:a=b"] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
        let c = config("servers = [\"127.0.0.1:1\"]\nbalance = \"hash\"\n").unwrap();
        assert_eq!(
            c.upstreams[0].balance,
            Balance::Hash {
                key: HashKey::Ip,
                factor: 1.25
            }
        );
    }

    #[test]
    fn errors_name_their_line() {
        // Line 8 is the first line after `name = "u"`.
        for (body, line, needle) in [
            (
                "servers = [{ address = \"127.0.0.1:1\", weight = 0 }]",
                8,
                "between 1 and 256",
            ),
            (
                "servers = [{ address = \"127.0.0.1:1\", wieght = 2 }]",
                8,
                "unknown field",
            ),
            ("servers = [\"nohost.invalid:1\"]", 8, "cannot resolve"),
            ("servers = [\"gone.internal:1\"]", 8, "has no address"),
            (
                "servers = [\"127.0.0.1:1\"]\nbalance = \"fastest\"",
                9,
                "balance",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\nhash_key = \"ip\"",
                6,
                "need balance = \"hash\"",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\nbalance = \"hash\"\nhash_balance_factor = 0.5",
                10,
                "hash_balance_factor",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\nretry_budget = 2.0",
                9,
                "retry_budget",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\nsticky_cookie = \"a;b\"",
                9,
                "cookie name",
            ),
            (
                "servers = [{ address = \"127.0.0.1:1\", backup = true }]",
                6,
                "every server is a backup",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\nrebalance = { max_skew = 1.0, closes_per_second = 5 }",
                9,
                "max_skew",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\n[upstream.health]\nkind = \"http\"",
                9,
                "health kind",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\n[upstream.health]\nkind = \"tcp\"\ninterval = \"1s\"\ntimeout = \"2s\"",
                9,
                "timeout",
            ),
            (
                "servers = [\"127.0.0.1:1\"]\neject_base = \"1m\"\neject_max = \"10s\"",
                6,
                "eject_max",
            ),
        ] {
            let e = config(body).unwrap_err();
            assert_eq!(e.line, Some(line), "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn fallback_upstream() {
        let text = "[[listener]]\naddress = \"127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:2\"]\n[[upstream]]\nname = \"b\"\nservers = [\"127.0.0.1:3\"]\n[[route]]\npath = \"/\"\nupstream = \"a\"\nfallback_upstream = \"b\"\n";
        let c = Config::parse(text, "x").unwrap();
        assert_eq!(c.routes[0].fallback_upstream, Some(1));
        let bad = text.replace("fallback_upstream = \"b\"", "fallback_upstream = \"a\"");
        let e = Config::parse(&bad, "x").unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
    }
}
