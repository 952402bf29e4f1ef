//! The admission checks of one handshake, in order: per-IP limits at
//! accept ([`admit_peer`]), then, once the request is routed, the route's
//! address list, Origin list, per-IP overrides, authentication, `require`,
//! the per-identity cap and the route's cap ([`admit_route`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;

use super::credential::{self, TokenSource};
use super::external::{self, AuthRequest, Decision};
use super::limiter::{KeyLimits, Over, Permit, Rate, identity_key, ip_key};
use super::refusal::{Reason, Refusal};
use super::state::{AuthState, Held, Shared, WorkerPolicy};
use crate::config::{AuthKind, Config, HandshakeRate, Route};
use crate::proto::close::CloseCode;
use crate::proto::handshake::UpgradeRequest;

/// The per-IP limits as the limiter wants them.
fn key_limits(max: Option<u32>, rate: Option<HandshakeRate>) -> KeyLimits {
    KeyLimits {
        max_concurrent: max,
        rate: rate.map(|r| Rate::new(r.count, r.per, r.burst)),
    }
}

/// Counts one connection of `key`, or says why not.
fn acquire(
    table: &Arc<super::limiter::KeyedLimiter>,
    key: u128,
    limits: &KeyLimits,
    now_ms: u64,
    who: &str,
    connections: Reason,
) -> Result<Permit, Refusal> {
    table
        .acquire(key, limits, now_ms)
        .map_err(|over| match over {
            Over::Connections => Refusal::new(
                connections,
                format!(
                    "{who} has {} connections open",
                    limits.max_concurrent.unwrap_or(0)
                ),
            ),
            Over::Rate { retry_after_ms } => {
                Refusal::new(Reason::IpRate, format!("{who} is over its handshake rate"))
                    .retry_after(retry_after_ms.div_ceil(1000))
            }
            Over::Full => Refusal::new(
                Reason::TrackingFull,
                "every tracked client has open connections (limits.max_tracked_clients)",
            ),
        })
}

/// The `[limits]` per-IP checks for a client at `ip`: a permit held while
/// the connection lives (its handshake included), `None` when no per-IP
/// limit is configured.
pub fn admit_ip(
    shared: &Arc<Shared>,
    config: &Config,
    ip: IpAddr,
    now_ms: u64,
) -> Result<Option<Permit>, Refusal> {
    let p = &config.limits.policy;
    if p.max_connections_per_ip.is_none() && p.handshake_rate_per_ip.is_none() {
        return Ok(None);
    }
    let limits = key_limits(p.max_connections_per_ip, p.handshake_rate_per_ip);
    acquire(
        &shared.ip,
        ip_key(ip),
        &limits,
        now_ms,
        &ip.to_canonical().to_string(),
        Reason::IpConnections,
    )
    .map(Some)
}

/// What an admitted handshake changes in the request to the backend, and
/// what the relay must know.
#[derive(Debug, Default)]
pub struct Admission {
    /// Headers to add (identity, the external service's answer).
    pub add_headers: Vec<(String, Vec<u8>)>,
    /// Client headers never forwarded (the names wsedge writes itself).
    pub drop_headers: Vec<String>,
    /// The `Sec-WebSocket-Protocol` list without a `bearer` token.
    pub protocols: Option<String>,
    /// The query parameter the credential came from (removed from the
    /// target sent to the backend).
    pub strip_query: Option<String>,
    /// Close both legs at this Unix time, with this code.
    pub expires: Option<(u64, CloseCode)>,
}

/// The route's checks for a request from `client`. Counts are added to
/// `held`; on a refusal whatever was counted is released with `held`.
#[allow(clippy::too_many_arguments)]
pub async fn admit_route(
    shared: &Arc<Shared>,
    worker: &WorkerPolicy,
    config: &Config,
    route_index: usize,
    route: &Route,
    req: &UpgradeRequest<'_, '_>,
    client: IpAddr,
    held: &mut Held,
    now_ms: u64,
    now_unix: u64,
) -> Result<Admission, Refusal> {
    let policy = &route.policy;
    let who = client.to_canonical().to_string();
    if !policy.acl.permits(client) {
        return Err(Refusal::new(
            Reason::AddressDenied,
            format!("{who} is not allowed on route {}", route.label),
        ));
    }
    let origin = req.header("origin");
    if !policy.origins.permits(origin) {
        let shown = origin.map_or_else(
            || "no Origin".to_string(),
            |o| {
                format!(
                    "Origin {:?}",
                    String::from_utf8_lossy(&o[..o.len().min(200)])
                )
            },
        );
        return Err(Refusal::new(
            Reason::OriginDenied,
            format!("{shown} is not allowed on route {}", route.label),
        ));
    }
    if let (Some((max, rate)), Some(table)) = (policy.ip_override, &shared.route_ip[route_index]) {
        let limits = key_limits(max, rate);
        held.route_ip = Some(acquire(
            table,
            ip_key(client),
            &limits,
            now_ms,
            &who,
            Reason::IpConnections,
        )?);
    }

    let mut admission = Admission::default();
    // Sec-WebSocket-Protocol entries after a `bearer` marker never reach
    // the backend on a route with authentication, whatever the source used.
    if let Some(a) = policy.auth.map(|i| &config.auths[i]) {
        if a.token_from.contains(&TokenSource::Protocol) {
            admission.protocols = credential::protocols_without_token(req.headers());
        }
        admission
            .drop_headers
            .extend(a.forward.iter().map(|(_, h)| h.clone()));
        if let AuthKind::External(s) = &a.kind {
            admission
                .drop_headers
                .extend(s.copy_headers.iter().cloned());
        }
    }

    if let Some(index) = policy.auth {
        let a = &config.auths[index];
        match (&a.kind, &shared.auths[index]) {
            (AuthKind::External(settings), _) => {
                let ask = AuthRequest {
                    method: req.method(),
                    path: req.path(),
                    client,
                    headers: req.headers(),
                };
                let cache = worker.caches[index].as_ref();
                let key = external::DecisionCache::key(index, settings, &ask);
                let now = Instant::now();
                let decision = match cache.and_then(|c| c.get(&key, now)) {
                    Some(d) => d,
                    None => {
                        let d = external::ask(settings, &ask).await;
                        if let Some(c) = cache {
                            c.put(key, &d, settings.cache_ttl, Instant::now());
                        }
                        d
                    }
                };
                match decision {
                    Decision::Allow(headers) => admission.add_headers.extend(headers),
                    Decision::Deny(status) => {
                        let mut r = Refusal::new(
                            if status == 401 {
                                Reason::BadCredential
                            } else {
                                Reason::Forbidden
                            },
                            format!("auth {:?} (external) answered {status}", a.name),
                        );
                        r.status = Some(status);
                        return Err(r);
                    }
                    Decision::Unavailable(why) if settings.fail_open => {
                        debug!(auth = %a.name, "external authorization unavailable ({why}): allowed (fail_open)");
                    }
                    Decision::Unavailable(why) => {
                        return Err(Refusal::new(
                            Reason::AuthUnavailable,
                            format!("auth {:?}: {why}", a.name),
                        ));
                    }
                }
            }
            (_, state) => {
                let Some((token, from)) =
                    credential::find(&a.token_from, req.path(), req.headers())
                else {
                    let places: Vec<String> = a.token_from.iter().map(|s| s.to_string()).collect();
                    return Err(Refusal::new(
                        Reason::NoCredential,
                        format!("auth {:?}: no credential in {}", a.name, places.join(", ")),
                    ));
                };
                if let TokenSource::Query(name) = from {
                    admission.strip_query = Some(name.clone());
                }
                let identity = match state {
                    AuthState::Jwt(v) => {
                        let claims = v.verify(&token, now_unix).map_err(|e| {
                            Refusal::new(
                                Reason::BadCredential,
                                format!("auth {:?}: {e} ({})", a.name, e.reason()),
                            )
                        })?;
                        for (claim, value) in &policy.require {
                            if !claims.satisfies(claim, value) {
                                return Err(Refusal::new(
                                    Reason::Forbidden,
                                    format!(
                                        "auth {:?}: claim {claim:?} does not hold {value:?} (require)",
                                        a.name
                                    ),
                                ));
                            }
                        }
                        for (claim, header) in &a.forward {
                            if let Some(v) = claims.text(claim) {
                                admission.add_headers.push((header.clone(), v.into_bytes()));
                            }
                        }
                        if a.close_on_expiry
                            && let Some(exp) = claims.exp()
                        {
                            // A token accepted within the leeway lives as long.
                            let leeway = match &a.kind {
                                AuthKind::Jwt(s) => s.leeway.as_secs(),
                                _ => 0,
                            };
                            admission.expires =
                                Some((exp.saturating_add(leeway), a.expiry_close_code));
                        }
                        claims.text("sub")
                    }
                    AuthState::ApiKey(keys) => {
                        let Some(name) = keys.identify(&token) else {
                            return Err(Refusal::new(
                                Reason::BadCredential,
                                format!("auth {:?}: unknown API key", a.name),
                            ));
                        };
                        for (_, value) in &policy.require {
                            if *value != name {
                                return Err(Refusal::new(
                                    Reason::Forbidden,
                                    format!(
                                        "auth {:?}: key {name:?} is not {value:?} (require)",
                                        a.name
                                    ),
                                ));
                            }
                        }
                        for (_, header) in &a.forward {
                            admission
                                .add_headers
                                .push((header.clone(), name.clone().into_bytes()));
                        }
                        Some(name)
                    }
                    AuthState::External => None,
                };
                if let Some(id) = &identity {
                    if let Some(max) = policy.max_connections_per_identity {
                        let limits = KeyLimits {
                            max_concurrent: Some(max),
                            rate: None,
                        };
                        held.identity = Some(acquire(
                            &shared.identity,
                            identity_key(id),
                            &limits,
                            now_ms,
                            &format!("identity {id:?}"),
                            Reason::IdentityConnections,
                        )?);
                    }
                    held.identity_name = Some(Box::from(&id[..]));
                }
            }
        }
    }

    if let Some(max) = policy.max_connections {
        held.route = Some(shared.route_enter(route_index, max).ok_or_else(|| {
            Refusal::new(
                Reason::RouteConnections,
                format!(
                    "route {} has {max} connections (max_connections)",
                    route.label
                ),
            )
        })?);
    }
    Ok(admission)
}
