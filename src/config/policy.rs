//! The handshake-policy part of the configuration: `trusted_proxies`,
//! `allow`/`deny`, `origins`, `[[auth]]` blocks, `require`, the per-IP,
//! per-identity and per-route limits, and the per-connection rates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Resolve, Secs, parse_duration, parse_size};
use crate::policy::cidr::{Acl, CidrList};
use crate::policy::credential::TokenSource;
use crate::policy::external::ExternalSettings;
use crate::policy::jwt::JwtSettings;
use crate::policy::origin::{OriginPattern, OriginPolicy};
use crate::proto::close::CloseCode;
use crate::relay::limit::OnLimit;

/// One `[[auth]]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// What routes name it by (`auth = "NAME"`).
    pub name: String,
    /// How credentials are checked.
    pub kind: AuthKind,
    /// Where the credential is looked for, in order.
    pub token_from: Vec<TokenSource>,
    /// Claims (or `sub`, the key's name) sent to the backend as headers:
    /// (claim, header name). Client headers of those names are removed.
    pub forward: Vec<(String, String)>,
    /// Close both legs when the token's `exp` passes (jwt only).
    pub close_on_expiry: bool,
    /// The close code used then: 1008 or 4000–4999.
    pub expiry_close_code: CloseCode,
}

/// How an `[[auth]]` block checks credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// `kind = "jwt"`.
    Jwt(JwtSettings),
    /// `kind = "api_key"`: `name:key` lines in `keys_file`.
    ApiKey {
        /// The keys file.
        keys_file: PathBuf,
    },
    /// `kind = "external"`.
    External(ExternalSettings),
}

impl AuthKind {
    /// The word of `kind`.
    pub fn word(&self) -> &'static str {
        match self {
            AuthKind::Jwt(_) => "jwt",
            AuthKind::ApiKey { .. } => "api_key",
            AuthKind::External(_) => "external",
        }
    }
}

/// A handshake rate: `count` per `per`, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeRate {
    /// Handshakes…
    pub count: u64,
    /// …per this long.
    pub per: Duration,
    /// At once.
    pub burst: u32,
}

/// A message or byte rate for one direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitRate {
    /// Units (messages or bytes)…
    pub count: u64,
    /// …per this long.
    pub per: Duration,
    /// At once.
    pub burst: u64,
}

/// One direction's rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionRates {
    /// Complete data messages.
    pub messages: Option<UnitRate>,
    /// Bytes.
    pub bytes: Option<UnitRate>,
}

impl DirectionRates {
    /// Neither rate set.
    pub fn is_none(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }
}

/// The per-connection rates of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRates {
    /// What the client sends.
    pub client: DirectionRates,
    /// What the backend sends.
    pub backend: DirectionRates,
    /// What happens over the rate.
    pub on_limit: OnLimit,
}

impl Default for ConnectionRates {
    fn default() -> Self {
        ConnectionRates {
            client: DirectionRates::default(),
            backend: DirectionRates::default(),
            on_limit: OnLimit::Close,
        }
    }
}

/// The policy limits (`[limits]`, or a route's overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyLimits {
    /// Concurrent connections per client IP, on all workers.
    pub max_connections_per_ip: Option<u32>,
    /// Handshakes per client IP.
    pub handshake_rate_per_ip: Option<HandshakeRate>,
    /// Concurrent connections per identity (JWT `sub`, API key name).
    pub max_connections_per_identity: Option<u32>,
    /// Per-connection rates.
    pub rates: ConnectionRates,
}

/// The policy of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// `allow` / `deny` (403).
    pub acl: Acl,
    /// `origins` / `allow_missing_origin` (403).
    pub origins: OriginPolicy,
    /// `auth`: index into [`super::Config::auths`].
    pub auth: Option<usize>,
    /// `require`: (claim, value) pairs that must all hold (403).
    pub require: Vec<(String, String)>,
    /// `max_connections` on this route, on all workers (503).
    pub max_connections: Option<u32>,
    /// Per-IP limits that replace `[limits]` for this route (counted
    /// separately); `None`: `[limits]` applies.
    pub ip_override: Option<(Option<u32>, Option<HandshakeRate>)>,
    /// Per-identity cap.
    pub max_connections_per_identity: Option<u32>,
    /// Per-connection rates.
    pub rates: ConnectionRates,
}

// ---------------------------------------------------------------------------
// The file format.

/// A string or a list of strings.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    name: String,
    kind: String,
    token_from: Option<Vec<String>>,
    #[serde(default)]
    forward: BTreeMap<String, String>,
    close_on_expiry: Option<bool>,
    expiry_close_code: Option<u16>,
    // jwt
    secret_file: Option<PathBuf>,
    public_key_file: Option<PathBuf>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_refresh: Option<Secs>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    required_claims: Option<Vec<String>>,
    leeway: Option<Secs>,
    // api_key
    keys_file: Option<PathBuf>,
    // external
    url: Option<String>,
    forward_headers: Option<Vec<String>>,
    copy_headers: Option<Vec<String>>,
    timeout: Option<Secs>,
    fail_open: Option<bool>,
    cache_ttl: Option<Secs>,
}

/// The policy keys shared by `[limits]` and `[[route]]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRateKeys {
    pub max_connections_per_ip: Option<u32>,
    pub handshake_rate_per_ip: Option<String>,
    pub handshake_burst: Option<u32>,
    pub max_connections_per_identity: Option<u32>,
    pub client_message_rate: Option<String>,
    pub client_message_burst: Option<u64>,
    pub client_byte_rate: Option<String>,
    pub backend_message_rate: Option<String>,
    pub backend_message_burst: Option<u64>,
    pub backend_byte_rate: Option<String>,
    pub on_limit: Option<String>,
}

/// A route's policy keys.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRoutePolicy {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub origins: Option<Vec<String>>,
    pub allow_missing_origin: Option<bool>,
    pub auth: Option<String>,
    pub require: Option<BTreeMap<String, String>>,
    pub max_connections: Option<u32>,
}

/// Is `name` an HTTP header name (a token)?
fn header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(super::is_tchar)
}

/// Builds one `[[auth]]` block.
pub(super) fn auth(a: &FileAuth, resolve: Resolve<'_>) -> Result<Auth, String> {
    let at = |m: String| format!("[[auth]] {:?}: {m}", a.name);
    if a.name.is_empty() {
        return Err("[[auth]] needs a name".into());
    }
    let keys = |kind: &str, allowed: &[&str]| -> Result<(), String> {
        let present: [(&str, bool); 15] = [
            ("secret_file", a.secret_file.is_some()),
            ("public_key_file", a.public_key_file.is_some()),
            ("jwks_file", a.jwks_file.is_some()),
            ("jwks_url", a.jwks_url.is_some()),
            ("jwks_refresh", a.jwks_refresh.is_some()),
            ("issuer", a.issuer.is_some()),
            ("audience", a.audience.is_some()),
            ("required_claims", a.required_claims.is_some()),
            ("leeway", a.leeway.is_some()),
            ("keys_file", a.keys_file.is_some()),
            ("url", a.url.is_some()),
            ("forward_headers", a.forward_headers.is_some()),
            ("copy_headers", a.copy_headers.is_some()),
            ("timeout", a.timeout.is_some()),
            ("fail_open", a.fail_open.is_some() || a.cache_ttl.is_some()),
        ];
        match present.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(at(format!("`{k}` does not apply to kind = \"{kind}\""))),
            None => Ok(()),
        }
    };
    let token_from = |default: &[&str]| -> Result<Vec<TokenSource>, String> {
        let list: Vec<String> = match &a.token_from {
            Some(l) => l.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        };
        if list.is_empty() {
            return Err(at("token_from is empty".into()));
        }
        list.iter()
            .map(|s| TokenSource::parse(s).map_err(&at))
            .collect()
    };
    let mut forward = Vec::new();
    for (claim, header) in &a.forward {
        if !header_name(header) {
            return Err(at(format!("forward: {header:?} is not a header name")));
        }
        forward.push((claim.clone(), header.clone()));
    }
    let (kind, token_from) = match a.kind.as_str() {
        "jwt" => {
            keys(
                "jwt",
                &[
                    "secret_file",
                    "public_key_file",
                    "jwks_file",
                    "jwks_url",
                    "jwks_refresh",
                    "issuer",
                    "audience",
                    "required_claims",
                    "leeway",
                ],
            )?;
            let sources = [&a.secret_file, &a.public_key_file, &a.jwks_file]
                .iter()
                .filter(|s| s.is_some())
                .count();
            if sources + usize::from(a.jwks_url.is_some()) == 0 {
                return Err(at(
                    "needs keys: secret_file, public_key_file, jwks_file or jwks_url".into(),
                ));
            }
            if a.secret_file.is_some() && sources > 1 {
                return Err(at(
                    "secret_file (HMAC) does not mix with public keys: use another [[auth]] block"
                        .into(),
                ));
            }
            if let Some(u) = &a.jwks_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(at(format!("jwks_url {u:?}: expected http:// or https://")));
            }
            let refresh = a.jwks_refresh.map_or(Duration::from_secs(300), |s| s.0);
            if refresh < Duration::from_secs(1) {
                return Err(at("jwks_refresh must be at least 1s".into()));
            }
            let settings = JwtSettings {
                secret_file: a.secret_file.clone(),
                public_key_file: a.public_key_file.clone(),
                jwks_file: a.jwks_file.clone(),
                jwks_url: a.jwks_url.clone(),
                jwks_refresh: refresh,
                issuer: a
                    .issuer
                    .clone()
                    .map(OneOrMany::into_vec)
                    .unwrap_or_default(),
                audience: a
                    .audience
                    .clone()
                    .map(OneOrMany::into_vec)
                    .unwrap_or_default(),
                required_claims: a.required_claims.clone().unwrap_or_default(),
                leeway: a.leeway.map_or(Duration::from_secs(0), |s| s.0),
            };
            (
                AuthKind::Jwt(settings),
                token_from(&["header:Authorization"])?,
            )
        }
        "api_key" => {
            keys("api_key", &["keys_file"])?;
            let keys_file = a
                .keys_file
                .clone()
                .ok_or_else(|| at("needs keys_file (one name:key a line)".into()))?;
            if let Some((claim, _)) = forward.iter().find(|(c, _)| c != "sub") {
                return Err(at(format!(
                    "forward: an API key has no claim {claim:?} (only `sub`, the key's name)"
                )));
            }
            let sources = token_from(&["header:X-API-Key"])?;
            if let Some(s) = sources
                .iter()
                .find(|s| !matches!(s, TokenSource::Header(_) | TokenSource::Query(_)))
            {
                return Err(at(format!(
                    "token_from: {s}: an API key comes from header:NAME or query:NAME"
                )));
            }
            (AuthKind::ApiKey { keys_file }, sources)
        }
        "external" => {
            keys(
                "external",
                &[
                    "url",
                    "forward_headers",
                    "copy_headers",
                    "timeout",
                    "fail_open",
                ],
            )?;
            if a.token_from.is_some() {
                return Err(at(
                    "token_from does not apply to kind = \"external\": name the headers to send in forward_headers".into(),
                ));
            }
            if !forward.is_empty() {
                return Err(at(
                    "forward does not apply to kind = \"external\": use copy_headers".into(),
                ));
            }
            let url = a
                .url
                .clone()
                .ok_or_else(|| at("needs url (http://host:port/path)".into()))?;
            let (addr, authority, path) = http_url(&url, resolve).map_err(&at)?;
            let names = |list: &Option<Vec<String>>, key: &str| -> Result<Vec<String>, String> {
                let list = list.clone().unwrap_or_default();
                match list.iter().find(|n| !header_name(n)) {
                    Some(n) => Err(at(format!("{key}: {n:?} is not a header name"))),
                    None => Ok(list),
                }
            };
            let forward_headers = match &a.forward_headers {
                Some(_) => names(&a.forward_headers, "forward_headers")?,
                None => vec!["Authorization".into(), "Cookie".into()],
            };
            let timeout = a.timeout.map_or(Duration::from_secs(1), |s| s.0);
            if timeout.is_zero() || timeout > Duration::from_secs(60) {
                return Err(at("timeout must be between 1ms and 60s".into()));
            }
            let settings = ExternalSettings {
                url,
                addr,
                authority,
                path,
                forward_headers,
                copy_headers: names(&a.copy_headers, "copy_headers")?,
                timeout,
                fail_open: a.fail_open.unwrap_or(false),
                cache_ttl: a.cache_ttl.map_or(Duration::ZERO, |s| s.0),
            };
            (AuthKind::External(settings), Vec::new())
        }
        k => {
            return Err(at(format!(
                "kind {k:?}: expected \"jwt\", \"api_key\" or \"external\""
            )));
        }
    };
    let is_jwt = matches!(kind, AuthKind::Jwt(_));
    if a.close_on_expiry == Some(true) && !is_jwt {
        return Err(at(
            "close_on_expiry needs kind = \"jwt\" (a token with exp)".into(),
        ));
    }
    let code = a.expiry_close_code.unwrap_or(1008);
    if code != 1008 && !(4000..=4999).contains(&code) {
        return Err(at(format!(
            "expiry_close_code {code}: expected 1008 or a code in 4000–4999"
        )));
    }
    Ok(Auth {
        name: a.name.clone(),
        kind,
        token_from,
        forward,
        close_on_expiry: is_jwt && a.close_on_expiry.unwrap_or(true),
        expiry_close_code: CloseCode(code),
    })
}

/// `http://host[:port]/path`: the address, the `Host` value, the target.
fn http_url(url: &str, resolve: Resolve<'_>) -> Result<(SocketAddr, String, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("url {url:?}: expected http://host:port/path"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'#') {
        return Err(format!("url {url:?}: expected http://host:port/path"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(p) => (h, p),
            Err(_) if h.contains(':') && !h.starts_with('[') => (authority, 80),
            Err(_) => return Err(format!("url {url:?}: bad port {p:?}")),
        },
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = resolve(host, port)
        .map_err(|e| format!("url {url:?}: cannot resolve {host}: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| format!("url {url:?}: {host} has no address"))?;
    Ok((addr, authority.to_string(), path.to_string()))
}

/// `"10/s"`, `"600/m"`, `"1MiB/s"` (with `bytes`), `"5/10s"`: a count and
/// the period it is counted over.
pub fn parse_rate(s: &str, bytes: bool) -> Result<(u64, Duration), String> {
    let bad = || {
        if bytes {
            format!("{s:?}: expected a byte rate like \"1MiB/s\" or \"64KiB/s\"")
        } else {
            format!("{s:?}: expected a rate like \"10/s\", \"600/m\" or \"5/10s\"")
        }
    };
    let (count, per) = s.split_once('/').ok_or_else(bad)?;
    let count = if bytes {
        parse_size(count.trim()).map_err(|_| bad())?
    } else {
        count.trim().parse::<u64>().map_err(|_| bad())?
    };
    let per = match per.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => parse_duration(other).map_err(|_| bad())?,
    };
    if count == 0 || per.is_zero() || per > Duration::from_secs(24 * 3600) {
        return Err(bad());
    }
    Ok((count, per))
}

/// The policy limits from `[limits]` keys; `base` fills what a route
/// leaves out. `buffer_size` bounds a byte burst from below (a single
/// read may bring that much).
pub(super) fn policy_limits(
    k: &FileRateKeys,
    base: Option<&PolicyLimits>,
    buffer_size: usize,
) -> Result<PolicyLimits, String> {
    let rate =
        |key: &str, v: &Option<String>, bytes: bool| -> Result<Option<(u64, Duration)>, String> {
            v.as_deref()
                .map(|s| parse_rate(s, bytes).map_err(|m| format!("{key}: {m}")))
                .transpose()
        };
    let handshake = match rate("handshake_rate_per_ip", &k.handshake_rate_per_ip, false)? {
        Some((count, per)) => {
            let burst = k
                .handshake_burst
                .unwrap_or(count.min(u64::from(u32::MAX)) as u32);
            if burst == 0 {
                return Err("handshake_burst must be at least 1".into());
            }
            Some(HandshakeRate { count, per, burst })
        }
        None if k.handshake_burst.is_some() => {
            return Err("handshake_burst needs handshake_rate_per_ip".into());
        }
        None => base.and_then(|b| b.handshake_rate_per_ip),
    };
    let direction = |m_key: &str,
                     m: &Option<String>,
                     burst: Option<u64>,
                     b_key: &str,
                     b: &Option<String>,
                     base: DirectionRates|
     -> Result<DirectionRates, String> {
        let messages = match rate(m_key, m, false)? {
            Some((count, per)) => Some(UnitRate {
                count,
                per,
                burst: burst.unwrap_or(count).max(1),
            }),
            None if burst.is_some() => {
                return Err(format!("{m_key}'s burst needs {m_key}"));
            }
            None => base.messages,
        };
        let bytes = match rate(b_key, b, true)? {
            Some((count, per)) => Some(UnitRate {
                count,
                per,
                burst: count.max(buffer_size as u64),
            }),
            None => base.bytes,
        };
        Ok(DirectionRates { messages, bytes })
    };
    let base_rates = base.map(|b| b.rates).unwrap_or_default();
    let on_limit = match k.on_limit.as_deref() {
        None => base_rates.on_limit,
        Some("close") => OnLimit::Close,
        Some("throttle") => OnLimit::Throttle,
        Some(v) => {
            return Err(format!(
                "on_limit {v:?}: expected \"close\" or \"throttle\""
            ));
        }
    };
    let rates = ConnectionRates {
        client: direction(
            "client_message_rate",
            &k.client_message_rate,
            k.client_message_burst,
            "client_byte_rate",
            &k.client_byte_rate,
            base_rates.client,
        )?,
        backend: direction(
            "backend_message_rate",
            &k.backend_message_rate,
            k.backend_message_burst,
            "backend_byte_rate",
            &k.backend_byte_rate,
            base_rates.backend,
        )?,
        on_limit,
    };
    for (key, v) in [
        ("max_connections_per_ip", k.max_connections_per_ip),
        (
            "max_connections_per_identity",
            k.max_connections_per_identity,
        ),
    ] {
        if v == Some(0) {
            return Err(format!("{key} must be at least 1"));
        }
    }
    Ok(PolicyLimits {
        max_connections_per_ip: k
            .max_connections_per_ip
            .or(base.and_then(|b| b.max_connections_per_ip)),
        handshake_rate_per_ip: handshake,
        max_connections_per_identity: k
            .max_connections_per_identity
            .or(base.and_then(|b| b.max_connections_per_identity)),
        rates,
    })
}

/// A route's policy.
pub(super) fn route_policy(
    p: &FileRoutePolicy,
    k: &FileRateKeys,
    global: &PolicyLimits,
    auths: &[Auth],
    buffer_size: usize,
) -> Result<RoutePolicy, String> {
    let acl = Acl {
        allow: CidrList::parse(p.allow.as_deref().unwrap_or_default())
            .map_err(|m| format!("allow: {m}"))?,
        deny: CidrList::parse(p.deny.as_deref().unwrap_or_default())
            .map_err(|m| format!("deny: {m}"))?,
    };
    let origins = OriginPolicy {
        allowed: p
            .origins
            .iter()
            .flatten()
            .map(|o| OriginPattern::parse(o))
            .collect::<Result<_, _>>()?,
        allow_missing: p.allow_missing_origin.unwrap_or(true),
    };
    if p.allow_missing_origin.is_some() && p.origins.is_none() {
        return Err("allow_missing_origin needs origins".into());
    }
    let auth = match &p.auth {
        Some(name) => Some(
            auths
                .iter()
                .position(|a| &a.name == name)
                .ok_or_else(|| format!("auth {name:?}: no [[auth]] block has that name"))?,
        ),
        None => None,
    };
    let require: Vec<(String, String)> = p
        .require
        .iter()
        .flatten()
        .map(|(c, v)| (c.clone(), v.clone()))
        .collect();
    if !require.is_empty() {
        match auth.map(|i| &auths[i].kind) {
            None => return Err("require needs auth (claims come from a credential)".into()),
            Some(AuthKind::External(_)) => {
                return Err(
                    "require does not apply to an external [[auth]]: the service decides".into(),
                );
            }
            Some(AuthKind::ApiKey { .. }) if require.iter().any(|(c, _)| c != "sub") => {
                return Err("require: an API key has only `sub` (its name)".into());
            }
            _ => {}
        }
    }
    if p.max_connections == Some(0) {
        return Err("max_connections must be at least 1".into());
    }
    let limits = policy_limits(k, Some(global), buffer_size)?;
    let ip_override = (k.max_connections_per_ip.is_some() || k.handshake_rate_per_ip.is_some())
        .then_some((limits.max_connections_per_ip, limits.handshake_rate_per_ip));
    Ok(RoutePolicy {
        acl,
        origins,
        auth,
        require,
        max_connections: p.max_connections,
        ip_override,
        max_connections_per_identity: limits.max_connections_per_identity,
        rates: limits.rates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/s", false), Ok((10, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("600/m", false),
            Ok((600, Duration::from_secs(60)))
        );
        assert_eq!(parse_rate("5/10s", false), Ok((5, Duration::from_secs(10))));
        assert_eq!(
            parse_rate("1MiB/s", true),
            Ok((1 << 20, Duration::from_secs(1)))
        );
        assert!(parse_rate("1MiB/s", false).is_err());
        assert!(parse_rate("0/s", false).is_err());
        assert!(parse_rate("10", false).is_err());
        assert!(parse_rate("10/fortnight", false).is_err());
    }
}
