//! `GET /status`: an HTML page an operator leaves open (HAProxy's stats
//! page is the model), and `GET /api/status`, the JSON snapshot it polls.
//!
//! The page is rendered on the server, so it shows every number without
//! JavaScript (a `<noscript>` refresh reloads it); its inline script then
//! fetches `/api/status` every 2 s, updates the cells and works out the
//! per-second rates from two successive snapshots (the counters are
//! totals; the snapshot carries the server's monotonic clock). Nothing is
//! loaded from elsewhere: the CSS and the script are inline.
//!
//! What the data has: process-wide counters and each route's counters
//! (summed over workers; a route's messages and bytes are added when its
//! connections end), each server's shared slot (state, active, pending,
//! failures, ejections), and the live connection list (asked of every
//! worker, as `GET /api/connections` does). Figures wsedge does not collect
//! (per-server totals and rates, errors per route, the time of the last
//! health check) are shown as "—" with a footnote, never made up.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{AdminView, state_word};
use crate::config::{Balance, HealthKind};
use crate::control::ConnRow;
use crate::policy::refusal::Reason;

/// Figures the page has a place for but wsedge does not collect.
const NOT_COLLECTED: &[&str] = &[
    "per-server totals, handshakes, messages and bytes",
    "errors per route",
    "time of the last health check",
];

/// Rows in each of the longest-lived and busiest tables.
const TOP: usize = 5;

/// One look at everything the page shows.
#[derive(Debug, Serialize)]
struct Snapshot {
    version: &'static str,
    /// Wall clock, milliseconds since the Unix epoch.
    time_ms: u64,
    /// The process's monotonic clock ([`crate::fleet::now_ms`]): rates are
    /// computed from its differences.
    clock_ms: u64,
    /// Shutdown has begun.
    draining: bool,
    workers: usize,
    /// [`crate::stats::sum`] without the refusal reasons.
    counters: BTreeMap<&'static str, u64>,
    /// Policy refusals by reason label, and `other` (a bad request, no
    /// route, a backend's refusal).
    refused_by: BTreeMap<&'static str, u64>,
    /// The sum of the policy's reasons in `refused_by`.
    policy_refusals: u64,
    /// Data messages over all routes: `[from clients, from backends]`
    /// (added when each connection ends).
    messages: [u64; 2],
    /// Servers over all upstreams, by state.
    servers: ServerCount,
    routes: Vec<RouteRow>,
    upstreams: Vec<UpstreamRow>,
    /// The open connections that have lived longest, the oldest first.
    longest: Vec<ConnView>,
    /// The open connections that moved the most bytes (both ways), the
    /// busiest first.
    busiest: Vec<ConnView>,
    not_collected: &'static [&'static str],
}

#[derive(Debug, Default, Serialize)]
struct ServerCount {
    total: usize,
    /// Taking new connections.
    eligible: usize,
    draining: usize,
    ejected: usize,
    down: usize,
}

#[derive(Debug, Serialize)]
struct RouteRow {
    #[serde(rename = "match")]
    label: String,
    upstream: String,
    fallback: Option<String>,
    /// The state of its upstream: `UP` while a server takes connections.
    state: &'static str,
    /// Open now: `upgraded - ended` (0 if the two reads cross).
    active: u64,
    /// Handshakes that got a 101.
    upgraded: u64,
    /// Its connections that ended.
    ended: u64,
    /// Data messages `[from clients, from backends]`, of ended connections.
    messages: [u64; 2],
    /// Bytes `[from clients, from backends]`, of ended connections.
    bytes: [u64; 2],
}

/// One open connection (a row of `GET /api/connections`).
#[derive(Debug, Serialize)]
struct ConnView {
    id: String,
    client: String,
    route: String,
    server: String,
    age_ms: u64,
    /// `[from the client, from the backend]`, so far.
    messages: [u64; 2],
    /// `[from the client, from the backend]`, so far.
    bytes: [u64; 2],
}

impl From<&ConnRow> for ConnView {
    fn from(r: &ConnRow) -> ConnView {
        ConnView {
            id: r.id.clone(),
            client: r.client.to_string(),
            route: r.route.clone(),
            server: r.server.clone(),
            age_ms: r.age_ms,
            messages: [r.messages_from_client, r.messages_from_backend],
            bytes: [r.from_client, r.from_backend],
        }
    }
}

/// The [`TOP`] longest-lived and the [`TOP`] busiest of `rows`.
fn top(mut rows: Vec<ConnRow>) -> (Vec<ConnView>, Vec<ConnView>) {
    rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
    let longest = rows.iter().take(TOP).map(ConnView::from).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.from_client.saturating_add(r.from_backend)));
    let busiest = rows.iter().take(TOP).map(ConnView::from).collect();
    (longest, busiest)
}

#[derive(Debug, Serialize)]
struct UpstreamRow {
    upstream: String,
    balance: &'static str,
    /// `UP` while one of its servers takes new connections, else `DOWN`.
    state: &'static str,
    /// Servers that take new connections.
    up: usize,
    active: u64,
    pending: u64,
    /// `None` when the upstream has no `[upstream.health]`.
    health: Option<HealthRow>,
    servers: Vec<ServerRow>,
}

#[derive(Debug, Serialize)]
struct HealthRow {
    kind: &'static str,
    interval_ms: u64,
    /// Not exported by the health checker yet: always `null`.
    last_check_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ServerRow {
    server: String,
    state: &'static str,
    weight: u32,
    backup: bool,
    active: u32,
    pending: u32,
    failures: u32,
    ejections: u32,
    /// Time left of an ejection in force (0 when none).
    ejected_for_ms: u64,
}

fn gather(view: &AdminView, with_connections: bool) -> Snapshot {
    let now = crate::fleet::now_ms();
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let labels: Vec<&str> = Reason::ALL.iter().map(|r| r.label()).collect();
    let (reasons, counters): (Vec<_>, Vec<_>) = crate::stats::sum(&view.stats)
        .into_iter()
        .partition(|(name, _)| labels.contains(name));
    let counters: BTreeMap<&'static str, u64> = counters.into_iter().collect();
    let mut refused_by: BTreeMap<&'static str, u64> = reasons.into_iter().collect();
    let policy_refusals: u64 = refused_by.values().sum();
    let refused = counters.get("refused").copied().unwrap_or(0);
    refused_by.insert("other", refused.saturating_sub(policy_refusals));

    let upstreams: Vec<UpstreamRow> = view
        .config
        .upstreams
        .iter()
        .zip(&view.fleet.upstreams)
        .map(|(u, st)| {
            let set = st.current();
            let servers: Vec<ServerRow> = set
                .slots
                .iter()
                .map(|s| {
                    let state = state_word(s, now);
                    ServerRow {
                        server: s.addr().to_string(),
                        state,
                        weight: s.weight(),
                        backup: s.is_backup(),
                        active: s.active(),
                        pending: s.pending(),
                        failures: s.failures(),
                        ejections: s.ejections(),
                        ejected_for_ms: if state == "EJECTED" {
                            s.ejected_until_ms().saturating_sub(now)
                        } else {
                            0
                        },
                    }
                })
                .collect();
            let up = set.slots.iter().filter(|s| s.eligible(now)).count();
            UpstreamRow {
                upstream: u.name.clone(),
                balance: match u.balance {
                    Balance::RoundRobin => "round_robin",
                    Balance::LeastConn => "least_conn",
                    Balance::RandomTwo => "random_two",
                    Balance::Hash { .. } => "hash",
                },
                state: if up > 0 { "UP" } else { "DOWN" },
                up,
                active: servers.iter().map(|s| u64::from(s.active)).sum(),
                pending: servers.iter().map(|s| u64::from(s.pending)).sum(),
                health: u.health.as_ref().map(|h| HealthRow {
                    kind: match h.kind {
                        HealthKind::Tcp => "tcp",
                        HealthKind::WebSocket => "websocket",
                    },
                    interval_ms: h.interval.as_millis() as u64,
                    last_check_ms: None,
                }),
                servers,
            }
        })
        .collect();
    let mut servers = ServerCount::default();
    for u in &upstreams {
        servers.total += u.servers.len();
        servers.eligible += u.up;
        for sv in &u.servers {
            match sv.state {
                "DRAINING" => servers.draining += 1,
                "EJECTED" => servers.ejected += 1,
                "DOWN" => servers.down += 1,
                _ => {}
            }
        }
    }
    let routes: Vec<RouteRow> = view
        .config
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let sum = |f: &dyn Fn(&crate::stats::RouteStats) -> u64| -> u64 {
                view.generation
                    .routes
                    .iter()
                    .filter_map(|w| w.get(i))
                    .map(|x| f(x))
                    .sum()
            };
            let upgraded = sum(&|x| x.upgraded.get());
            let ended = sum(&|x| x.ended.get());
            RouteRow {
                label: r.label.clone(),
                upstream: view.config.upstreams[r.upstream].name.clone(),
                fallback: r
                    .fallback_upstream
                    .map(|i| view.config.upstreams[i].name.clone()),
                state: upstreams.get(r.upstream).map_or("DOWN", |u| u.state),
                active: upgraded.saturating_sub(ended),
                upgraded,
                ended,
                messages: [0, 1].map(|l| sum(&|x| x.messages[l].get())),
                bytes: [0, 1].map(|l| sum(&|x| x.bytes[l].get())),
            }
        })
        .collect();
    let messages = [0, 1].map(|l| routes.iter().map(|r| r.messages[l]).sum());
    // The connection tables ask every worker for its list (each wakes all
    // its relays): the page asks for them every fifth poll only.
    let (longest, busiest) = if with_connections {
        top(super::connections::gather(view))
    } else {
        (Vec::new(), Vec::new())
    };
    Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        time_ms,
        clock_ms: now,
        draining: view.draining.load(std::sync::atomic::Ordering::Acquire),
        workers: view.stats.len(),
        counters,
        refused_by,
        policy_refusals,
        messages,
        servers,
        routes,
        upstreams,
        longest,
        busiest,
        not_collected: NOT_COLLECTED,
    }
}

/// `GET /api/status`: counters, routes, upstreams and servers, and, unless
/// `with_connections` is off (`?connections=0`), the longest-lived and
/// busiest connections (asking every worker for its list).
pub fn snapshot_of(view: &AdminView, with_connections: bool) -> serde_json::Value {
    let mut v = serde_json::to_value(gather(view, with_connections)).unwrap_or_default();
    if !with_connections && let Some(o) = v.as_object_mut() {
        o.remove("longest");
        o.remove("busiest");
    }
    v
}

/// `GET /status`: the page, as of now.
pub fn render(view: &AdminView) -> String {
    page(&gather(view, true))
}

/// `s` safe inside HTML text and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` as `1,234,567` (the script's `num` does the same).
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in SI units, three significant figures (the script's `bytes`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    match i {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.2} {}", UNITS[i]),
        _ if v < 100.0 => format!("{v:.1} {}", UNITS[i]),
        _ => format!("{v:.0} {}", UNITS[i]),
    }
}

/// `3725000` ms as `1h 2m` (the script's `dur`).
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// A placeholder for a per-server figure wsedge does not collect
/// (footnote 1).
const NA: &str = r#"<td class="n na" title="not collected per server">—<sup>1</sup></td>"#;
/// A route's errors: protocol errors are counted for the process only.
const NO_ROUTE_ERRORS: &str = r#"<td class="n na" title="not counted per route: see the Protocol errors tile">—<sup>1</sup></td>"#;
/// The connection tables when nothing is open (the script's `NONE`).
const NO_CONNECTIONS: &str = r#"<tr><td class="sub" colspan="6">no open connections</td></tr>"#;
fn badge(state: &str, path: &str) -> String {
    format!(
        r#"<span class="st st-{}" data-v="{path}" data-f="state">{state}</span>"#,
        state.to_ascii_lowercase()
    )
}

fn page(s: &Snapshot) -> String {
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    let mut h = String::with_capacity(16 << 10);
    let _ = write!(
        h,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsedge status</title>
<noscript><meta http-equiv="refresh" content="10"></noscript>
<style>{CSS}</style></head>
<body><header><h1>wsedge <small>{version}</small></h1>
<p class="meta">up <span data-v="clock_ms" data-f="dur">{up}</span> · <span data-v="workers">{workers}</span> workers · <span id="live">as of <time id="at" data-ms="{time_ms}">{time_ms} ms</time></span></p>
<p id="draining" class="banner"{drain_hidden}>Shutting down: draining connections, <code>/readyz</code> answers 503.</p>
</header><main>
"#,
        version = html_escape(s.version),
        up = duration(s.clock_ms),
        workers = s.workers,
        time_ms = s.time_ms,
        drain_hidden = if s.draining { "" } else { " hidden" },
    );

    // Process-wide figures: (label, main figure, line under it).
    let sc = &s.servers;
    let tiles: [(&str, String, String); 8] = [
        (
            "Active connections",
            format!(
                r#"<span data-v="counters.active">{}</span>"#,
                count(c("active"))
            ),
            format!(
                r#"<span data-v="counters.accepted">{}</span> accepted"#,
                count(c("accepted"))
            ),
        ),
        (
            "Handshakes/s",
            r#"<span data-v="counters.upgraded" data-f="rate">…</span>"#.into(),
            format!(
                r#"<span data-v="counters.upgraded">{}</span> upgraded (101)"#,
                count(c("upgraded"))
            ),
        ),
        (
            "Client → backend<sup>2</sup>",
            r#"<span data-v="counters.bytes_from_client" data-f="brate">…</span>"#.into(),
            format!(
                r#"<span data-v="counters.bytes_from_client" data-f="bytes">{}</span> total"#,
                bytes(c("bytes_from_client"))
            ),
        ),
        (
            "Backend → client<sup>2</sup>",
            r#"<span data-v="counters.bytes_from_backend" data-f="brate">…</span>"#.into(),
            format!(
                r#"<span data-v="counters.bytes_from_backend" data-f="bytes">{}</span> total"#,
                bytes(c("bytes_from_backend"))
            ),
        ),
        (
            "Servers in rotation",
            format!(
                r#"<span data-v="servers.eligible">{}</span> / <span data-v="servers.total">{}</span>"#,
                sc.eligible, sc.total
            ),
            format!(
                r#"<span data-v="servers.draining">{}</span> draining · <span data-v="servers.ejected">{}</span> ejected · <span data-v="servers.down">{}</span> down"#,
                sc.draining, sc.ejected, sc.down
            ),
        ),
        (
            "Refused/s",
            r#"<span data-v="counters.refused" data-f="rate">…</span>"#.into(),
            format!(
                r#"<span data-v="counters.refused">{}</span> refused"#,
                count(c("refused"))
            ),
        ),
        (
            "Protocol errors",
            format!(
                r#"<span data-v="counters.protocol_errors">{}</span>"#,
                count(c("protocol_errors"))
            ),
            format!(
                r#"<span data-v="counters.backend_failures">{}</span> found no backend"#,
                count(c("backend_failures"))
            ),
        ),
        (
            "Messages/s in / out<sup>2</sup>",
            r#"<span data-v="messages.0" data-f="rate">…</span> / <span data-v="messages.1" data-f="rate">…</span>"#.into(),
            format!(
                r#"<span data-v="messages.0">{}</span> / <span data-v="messages.1">{}</span> total"#,
                count(s.messages[0]),
                count(s.messages[1])
            ),
        ),
    ];
    h.push_str(r#"<section><h2>Proxy</h2><div class="tiles">"#);
    for (label, main, sub) in tiles {
        let _ = write!(
            h,
            r#"<div class="tile"><div class="k">{label}</div><div class="v">{main}</div><div class="s">{sub}</div></div>"#
        );
    }
    h.push_str("</div></section>\n");

    // Routes.
    h.push_str(
        r#"<section><h2>Routes</h2><div class="scroll"><table><thead><tr><th>Route</th><th>Upstream</th><th>State</th><th class="n">Active</th><th class="n">Total</th><th class="n">Handshakes/s</th><th class="n">Msgs/s in / out<sup>2</sup></th><th class="n">Bytes/s in / out<sup>2</sup></th><th class="n">Errors</th></tr></thead><tbody>"#,
    );
    for (i, r) in s.routes.iter().enumerate() {
        let upstream = match &r.fallback {
            Some(f) => format!(
                r#"{} <span class="tag">fallback {}</span>"#,
                html_escape(&r.upstream),
                html_escape(f)
            ),
            None => html_escape(&r.upstream),
        };
        let _ = write!(
            h,
            r#"<tr data-p="routes.{i}"><td><code>{}</code></td><td>{upstream}</td><td>{}</td><td class="n" data-v=".active">{}</td><td class="n" data-v=".upgraded">{}</td><td class="n"><span data-v=".upgraded" data-f="rate">…</span></td><td class="n"><span data-v=".messages.0" data-f="rate">…</span> / <span data-v=".messages.1" data-f="rate">…</span></td><td class="n"><span data-v=".bytes.0" data-f="brate">…</span> / <span data-v=".bytes.1" data-f="brate">…</span></td>{NO_ROUTE_ERRORS}</tr>"#,
            html_escape(&r.label),
            badge(r.state, ".state"),
            count(r.active),
            count(r.upgraded),
        );
    }
    h.push_str("</tbody></table></div></section>\n");

    // Upstreams and their servers.
    h.push_str(
        r#"<section><h2>Upstreams and servers</h2><div class="scroll"><table><thead><tr><th>Server</th><th>State</th><th class="n">Active</th><th class="n">Pending</th><th class="n" title="failed attempts in a row">Failures</th><th class="n">Ejections</th><th class="n">Weight</th><th class="n">Total</th><th class="n">Handshakes/s</th><th class="n">Msgs/s in / out</th><th class="n">Bytes/s in / out</th><th>Last check</th></tr></thead>"#,
    );
    for (ui, u) in s.upstreams.iter().enumerate() {
        let health = match &u.health {
            Some(hc) => format!("{} every {}", hc.kind, duration(hc.interval_ms)),
            None => "health checks off".into(),
        };
        let _ = write!(
            h,
            r#"<tbody data-p="upstreams.{ui}"><tr class="up-row"><th scope="rowgroup">{name} <span class="tag">{balance}</span></th><td>{state} <span class="sub"><span data-v=".up">{up}</span>/{n} up</span></td><td class="n" data-v=".active">{active}</td><td class="n" data-v=".pending">{pending}</td><td></td><td></td><td></td>{NA}{NA}{NA}{NA}<td class="sub">{health}</td></tr>"#,
            name = html_escape(&u.upstream),
            balance = u.balance,
            state = badge(u.state, ".state"),
            up = u.up,
            n = u.servers.len(),
            active = count(u.active),
            pending = count(u.pending),
        );
        for (si, sv) in u.servers.iter().enumerate() {
            let last = if u.health.is_some() {
                r#"<td class="na" title="not exported yet">—<sup>3</sup></td>"#
            } else {
                r#"<td class="sub">off</td>"#
            };
            let _ = write!(
                h,
                r#"<tr class="srv s-{lc}" data-p="upstreams.{ui}.servers.{si}" data-addr="{addr}"><td><code>{addr}</code>{backup}</td><td>{state}</td><td class="n" data-v=".active">{active}</td><td class="n" data-v=".pending">{pending}</td><td class="n" data-v=".failures">{failures}</td><td class="n" data-v=".ejections">{ejections}</td><td class="n">{weight}</td>{NA}{NA}{NA}{NA}{last}</tr>"#,
                lc = sv.state.to_ascii_lowercase(),
                addr = html_escape(&sv.server),
                backup = if sv.backup {
                    r#" <span class="tag">backup</span>"#
                } else {
                    ""
                },
                state = badge(sv.state, ".state"),
                weight = sv.weight,
                active = count(u64::from(sv.active)),
                pending = count(u64::from(sv.pending)),
                failures = count(u64::from(sv.failures)),
                ejections = count(u64::from(sv.ejections)),
            );
        }
        h.push_str("</tbody>");
    }
    h.push_str("</table></div></section>\n");

    // The open connections: the longest-lived and the busiest, side by
    // side where both fit whole (`.pair`), else one above the other.
    h.push_str(r#"<section><h2>Connections</h2><div class="pair">"#);
    for (id, title, rows) in [
        ("longest", "Longest-lived", &s.longest),
        ("busiest", "Busiest", &s.busiest),
    ] {
        let _ = write!(
            h,
            r#"<div class="scroll"><table><caption>{title}</caption><thead><tr><th>Client</th><th>Route</th><th>Server</th><th class="n">Age</th><th class="n">Msgs in / out</th><th class="n">Bytes in / out</th></tr></thead><tbody id="{id}">"#
        );
        for r in rows.iter() {
            let _ = write!(
                h,
                r#"<tr><td><code>{}</code></td><td><code>{}</code></td><td><code>{}</code></td><td class="n">{}</td><td class="n">{} / {}</td><td class="n">{} / {}</td></tr>"#,
                html_escape(&r.client),
                html_escape(&r.route),
                html_escape(&r.server),
                duration(r.age_ms),
                count(r.messages[0]),
                count(r.messages[1]),
                bytes(r.bytes[0]),
                bytes(r.bytes[1]),
            );
        }
        if rows.is_empty() {
            h.push_str(NO_CONNECTIONS);
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</div></section>\n");

    // Counters by kind.
    h.push_str(r#"<section><h2>Counters</h2><div class="trio">"#);
    let kv = |h: &mut String, caption: &str, rows: &[(&str, String, u64)]| {
        let _ = write!(
            h,
            r#"<div class="scroll"><table class="kv"><caption>{caption}</caption><tbody>"#
        );
        for (label, path, v) in rows {
            let _ = write!(
                h,
                r#"<tr{}><th>{label}</th><td class="n" data-v="{path}" data-z>{}</td></tr>"#,
                if *v == 0 { r#" class="z""# } else { "" },
                count(*v)
            );
        }
        h.push_str("</tbody></table></div>");
    };
    let row = |label, key: &str| (label, format!("counters.{key}"), c(key));
    let refused = |key: &str| s.refused_by.get(key).copied().unwrap_or(0);
    kv(
        &mut h,
        "Handshakes",
        &[
            row("101 upgraded", "upgraded"),
            (
                "refused by the policy",
                "policy_refusals".into(),
                s.policy_refusals,
            ),
            (
                "other refusals",
                "refused_by.other".into(),
                refused("other"),
            ),
            row("… of which no backend", "backend_failures"),
        ],
    );
    kv(
        &mut h,
        "Connections ended",
        &[
            row("close handshake", "closed_normally"),
            row("protocol error", "protocol_errors"),
            row("other (vanished, timeout, limit)", "closed_otherwise"),
        ],
    );
    kv(
        &mut h,
        "TLS with clients",
        &[
            row("full handshakes", "tls_full"),
            row("resumed", "tls_resumed"),
            row("failed", "tls_failed"),
        ],
    );
    let reasons: Vec<(&str, String, u64)> = Reason::ALL
        .iter()
        .map(|r| {
            let label = r.label();
            (label, format!("refused_by.{label}"), refused(label))
        })
        .collect();
    kv(&mut h, "Policy refusals by reason", &reasons);
    h.push_str("</div></section>\n");

    let health_note = if s.upstreams.iter().any(|u| u.health.is_some()) {
        "\n<li>Health checks run, but the time of the last one is not exported yet.</li>"
    } else {
        ""
    };
    let _ = write!(
        h,
        r#"<footer><ol>
<li>Not collected: per-server totals, handshakes, messages and bytes (a server keeps only its open and pending connections, failures and ejections); errors per route (protocol errors are counted for the whole process, in the Protocol errors tile).</li>
<li>Counted when connections end: messages and bytes are added as each connection ends, so with long-lived connections these rates move in steps. A route's Active and Total, and the connection tables, are live.</li>{health_note}
</ol><p>Rates are computed in the page from two snapshots of <a href="api/status">/api/status</a>, polled every 2 s. Also: <a href="metrics">/metrics</a>, <a href="api/servers">/api/servers</a>.</p></footer>
</main>"#,
    );
    let _ = writeln!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

const CSS: &str = r#"
:root{--fg:#1f2328;--mut:#656d76;--bg:#fff;--alt:#f6f8fa;--line:#d0d7de;
--up:#1a7f37;--up-bg:#dafbe1;--down:#cf222e;--down-bg:#ffebe9;
--dr:#9a6700;--dr-bg:#fff8c5;--ej:#8250df;--ej-bg:#fbefff}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--mut:#8d96a0;--bg:#0d1117;--alt:#161b22;--line:#30363d;
--up:#3fb950;--up-bg:#12261e;--down:#f85149;--down-bg:#2d1214;--dr:#d29922;--dr-bg:#2b2111;--ej:#bc8cff;--ej-bg:#231a33}}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header,main{max-width:1400px;margin:0 auto;padding:0 16px}
header{padding-top:12px}
h1{font-size:20px;margin:0}h1 small{font-size:13px;font-weight:400;color:var(--mut)}
h2{font-size:15px;margin:20px 0 8px}
.meta{margin:2px 0 0;color:var(--mut)}
.stale{color:var(--down);font-weight:600}
.banner{background:var(--dr-bg);color:var(--dr);border:1px solid var(--dr);border-radius:6px;padding:6px 10px;font-weight:600}
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:8px}
.tile{border:1px solid var(--line);border-radius:6px;padding:8px 10px;background:var(--alt)}
.tile .k{color:var(--mut);font-size:12px}.tile .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .s{color:var(--mut);font-size:12px;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%;white-space:nowrap}
caption{text-align:left;font-weight:600;padding:6px 8px;background:var(--alt);border-bottom:1px solid var(--line)}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left}
thead th{font-size:12px;color:var(--mut);font-weight:600;background:var(--alt)}
tbody tr:last-child>*{border-bottom:0}
tbody+tbody{border-top:2px solid var(--line)}
.n{text-align:right;font-variant-numeric:tabular-nums}
.na,.sub{color:var(--mut)}.na sup,h2 sup,.k sup,th sup{font-size:9px}
.up-row{background:var(--alt)}.up-row th{font-weight:600}
.srv td:first-child{padding-left:22px;border-left:4px solid transparent}
.s-up td:first-child{border-left-color:var(--up)}.s-down td:first-child{border-left-color:var(--down)}
.s-draining td:first-child{border-left-color:var(--dr)}.s-ejected td:first-child{border-left-color:var(--ej)}
.s-down{background:var(--down-bg)}.s-ejected{background:var(--ej-bg)}.s-draining{background:var(--dr-bg)}
.st{display:inline-block;min-width:74px;text-align:center;border-radius:10px;padding:0 8px;font-size:12px;font-weight:700;letter-spacing:.02em}
.st-up{color:var(--up);background:var(--up-bg);border:1px solid var(--up)}
.st-down{color:var(--down);background:var(--down-bg);border:1px solid var(--down)}
.st-draining{color:var(--dr);background:var(--dr-bg);border:1px solid var(--dr)}
.st-ejected{color:var(--ej);background:var(--ej-bg);border:1px solid var(--ej)}
.tag{font-size:11px;color:var(--mut);border:1px solid var(--line);border-radius:4px;padding:0 4px;font-weight:400}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,660px),1fr));gap:8px}
.trio{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:8px;align-items:start}
.kv th{font-weight:400}.kv tr.z>*{color:var(--mut)}
footer{color:var(--mut);font-size:12px;margin:20px 0 24px}footer ol{padding-left:18px;margin:0 0 6px}
a{color:inherit}
@media (max-width:700px){header,main{padding:0 8px}.tile .v{font-size:18px}.tiles{grid-template-columns:repeat(2,1fr)}}
"#;

/// Polls `api/status` (relative to the page, so a path prefix in front of
/// the admin endpoint keeps working), fills every `data-v` element from
/// the snapshot (paths starting with `.` are relative to the nearest
/// `data-p`), and computes rates from the previous snapshot. A change in
/// the set of servers reloads the page.
const SCRIPT: &str = r#"
(function(){
var url=location.pathname.replace(/status\/?$/,'')+'api/status',prev=null,okAt=null;
function num(n){return String(n).replace(/\B(?=(\d{3})+(?!\d))/g,',');}
function bytes(n){var u=['B','kB','MB','GB','TB'],i=0;while(n>=1000&&i<4){n/=1000;i++;}
 return i?(n<10?n.toFixed(2):n<100?n.toFixed(1):n.toFixed(0))+' '+u[i]:Math.round(n)+' B';}
function dur(ms){var s=Math.floor(ms/1000);if(s<60)return s+'s';if(s<3600)return Math.floor(s/60)+'m '+s%60+'s';
 if(s<86400)return Math.floor(s/3600)+'h '+Math.floor(s%3600/60)+'m';return Math.floor(s/86400)+'d '+Math.floor(s%86400/3600)+'h';}
function get(o,p){return p.split('.').reduce(function(a,k){return a==null?a:a[k];},o);}
function path(el){var p=el.getAttribute('data-v');if(p.charAt(0)!=='.')return p;
 var c=el.parentElement.closest('[data-p]');return c?c.getAttribute('data-p')+p:p.slice(1);}
function set(el,t){if(el.textContent!==t)el.textContent=t;}
function td(t,code,cls){var c=document.createElement('td');if(cls)c.className=cls;
 if(code){var k=document.createElement('code');k.textContent=t;c.appendChild(k);}else c.textContent=t;return c;}
function conns(id,list){var tb=document.getElementById(id);if(!tb||!list)return;
 var rows=list.map(function(c){var tr=document.createElement('tr');
  [td(c.client,1),td(c.route,1),td(c.server,1),td(dur(c.age_ms),0,'n'),
   td(num(c.messages[0])+' / '+num(c.messages[1]),0,'n'),td(bytes(c.bytes[0])+' / '+bytes(c.bytes[1]),0,'n')]
  .forEach(function(c){tr.appendChild(c);});return tr;});
 if(!rows.length){var tr=document.createElement('tr'),c=td('no open connections',0,'sub');c.colSpan=6;tr.appendChild(c);rows=[tr];}
 tb.replaceChildren.apply(tb,rows);}
function apply(s){
 var rows=document.querySelectorAll('tr[data-addr]');
 for(var i=0;i<rows.length;i++){if(get(s,rows[i].getAttribute('data-p')+'.server')!==rows[i].getAttribute('data-addr')){location.reload();return;}}
 var n=0;(s.upstreams||[]).forEach(function(u){n+=u.servers.length;});if(n!==rows.length){location.reload();return;}
 var dt=prev?(s.clock_ms-prev.clock_ms)/1000:0;
 document.querySelectorAll('[data-v]').forEach(function(el){
  var p=path(el),v=get(s,p),f=el.getAttribute('data-f');if(v==null)return;
  if(f==='rate'||f==='brate'){var a=prev&&get(prev,p);
   if(!(dt>0)||a==null||v<a){set(el,'…');return;}
   var r=(v-a)/dt;set(el,f==='brate'?bytes(r)+'/s':(r<10?r.toFixed(1):num(Math.round(r))));el.removeAttribute('title');}
  else if(f==='bytes')set(el,bytes(v));
  else if(f==='dur')set(el,dur(v));
  else if(f==='state'){set(el,v);el.className='st st-'+v.toLowerCase();
   var tr=el.closest('tr.srv');if(tr)tr.className='srv s-'+v.toLowerCase();}
  else{set(el,typeof v==='number'?num(v):String(v));
   if(el.hasAttribute('data-z'))el.parentElement.classList.toggle('z',v===0);}});
 conns('longest',s.longest);conns('busiest',s.busiest);
 document.getElementById('draining').hidden=!s.draining;
 prev=s;okAt=new Date(s.time_ms);
 var live=document.getElementById('live');live.className='';
 set(live,'live, every 2 s · '+okAt.toLocaleTimeString());}
function fail(e){var live=document.getElementById('live');live.className='stale';
 set(live,'stale'+(okAt?' since '+okAt.toLocaleTimeString():'')+': '+(e&&e.message||e));}
var polls=0;
function tick(){fetch(url+(polls++%5?'?connections=0':''),{cache:'no-store',credentials:'same-origin'})
 .then(function(r){if(!r.ok)throw new Error('HTTP '+r.status+(r.status===401?' (the page needs read_open = true with a token)':''));return r.json();})
 .then(apply,fail).then(function(){setTimeout(tick,2000);});}
var at=document.getElementById('at');at.textContent=new Date(+at.getAttribute('data-ms')).toLocaleTimeString();
tick();
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with(label: &str, server: &str, client: &str) -> Snapshot {
        Snapshot {
            version: "0",
            time_ms: 1,
            clock_ms: 61_000,
            draining: false,
            workers: 2,
            counters: [("active", 3), ("bytes_from_client", 1_234_567)]
                .into_iter()
                .collect(),
            refused_by: BTreeMap::new(),
            policy_refusals: 0,
            messages: [10, 20],
            servers: ServerCount::default(),
            routes: vec![RouteRow {
                label: label.into(),
                upstream: "u<".into(),
                fallback: None,
                state: "UP",
                active: 3,
                upgraded: 7,
                ended: 4,
                messages: [10, 20],
                bytes: [1000, 2000],
            }],
            upstreams: vec![UpstreamRow {
                upstream: "u<".into(),
                balance: "round_robin",
                state: "UP",
                up: 1,
                active: 3,
                pending: 0,
                health: None,
                servers: vec![ServerRow {
                    server: server.into(),
                    state: "DRAINING",
                    weight: 1,
                    backup: false,
                    active: 3,
                    pending: 0,
                    failures: 0,
                    ejections: 0,
                    ejected_for_ms: 0,
                }],
            }],
            longest: vec![ConnView {
                id: "0-1-2".into(),
                client: client.into(),
                route: label.into(),
                server: server.into(),
                age_ms: 125_000,
                messages: [4, 5],
                bytes: [45_600, 7],
            }],
            busiest: Vec::new(),
            not_collected: NOT_COLLECTED,
        }
    }

    #[test]
    fn escapes_what_config_supplies() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let page = page(&snapshot_with(
            "path=/<script>alert(1)</script>",
            "a\"><img src=x>",
            "<b>",
        ));
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains("<b>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("u&lt;"));
    }

    #[test]
    fn the_page_is_self_contained() {
        let page = page(&snapshot_with(
            "path=/app",
            "10.0.0.1:9000",
            "10.1.1.1:5000",
        ));
        assert!(page.starts_with("<!doctype html>"));
        assert!(page.contains(r#"name="viewport""#));
        for external in [
            "<script src",
            "<link",
            "@import",
            "url(",
            "http://",
            "https://",
        ] {
            assert!(!page.contains(external), "{external} in the page");
        }
        assert!(page.contains("10.0.0.1:9000"));
        assert!(page.contains(r#"class="st st-draining""#));
        assert!(page.contains("1.23 MB"), "bytes as SI");
        assert!(page.contains("up <span data-v=\"clock_ms\" data-f=\"dur\">1m 1s</span>"));
        // A route's live figures, and the connection tables.
        assert!(page.contains(
            r#"<td class="n" data-v=".active">3</td><td class="n" data-v=".upgraded">7</td>"#
        ));
        assert!(page.contains(
            r#"<span data-v="messages.0">10</span> / <span data-v="messages.1">20</span> total"#
        ));
        let longest = page.split(r#"<tbody id="longest">"#).nth(1).unwrap();
        let longest = &longest[..longest.find("</tbody>").unwrap()];
        assert!(longest.contains("<code>10.1.1.1:5000</code>"), "{longest}");
        assert!(longest.contains(r#"<td class="n">2m 5s</td><td class="n">4 / 5</td><td class="n">45.6 kB / 7 B</td>"#), "{longest}");
        let busiest = page.split(r#"<tbody id="busiest">"#).nth(1).unwrap();
        assert!(busiest.starts_with(NO_CONNECTIONS), "{busiest}");
        // Without JavaScript it still refreshes.
        assert!(page.contains(r#"<noscript><meta http-equiv="refresh""#));
    }

    #[test]
    fn the_top_connections_by_age_and_by_bytes() {
        let row = |n: u64, age_ms: u64, from_client: u64| ConnRow {
            id: format!("0-{n}-1"),
            client: std::net::SocketAddr::from(([10, 0, 0, 1], 1000 + n as u16)),
            route: "path=/app".into(),
            upstream: "u".into(),
            server: "10.0.0.9:9000".into(),
            identity: None,
            age_ms,
            from_client,
            from_backend: n,
            messages_from_client: 0,
            messages_from_backend: 0,
        };
        let rows: Vec<ConnRow> = (0..8).map(|n| row(n, n * 1000, 800 - n * 100)).collect();
        let (longest, busiest) = top(rows);
        let ids = |v: &[ConnView]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&longest), ["0-7-1", "0-6-1", "0-5-1", "0-4-1", "0-3-1"]);
        assert_eq!(ids(&busiest), ["0-0-1", "0-1-1", "0-2-1", "0-3-1", "0-4-1"]);
        assert_eq!(busiest[1].bytes, [700, 1]);
        assert_eq!(busiest[1].client, "10.0.0.1:1001");
        assert_eq!(top(Vec::new()).0.len(), 0);
    }

    #[test]
    fn figures_format_like_the_script() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.00 kB");
        assert_eq!(bytes(45_600), "45.6 kB");
        assert_eq!(bytes(999_999), "1000 kB");
        assert_eq!(bytes(7_200_000_000), "7.20 GB");
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(3_725_000), "1h 2m");
        assert_eq!(duration(90_000_000), "1d 1h");
    }

    #[test]
    fn a_snapshot_of_a_running_config() {
        let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n\
                    [[route]]\npath = \"/app\"\nupstream = \"u\"\n\
                    [[upstream]]\nname = \"u\"\nservers = [\"127.0.0.1:9001\", \"127.0.0.1:9002\"]\n";
        let config = std::sync::Arc::new(crate::config::Config::parse(text, "t.toml").unwrap());
        let fleet = std::sync::Arc::new(crate::fleet::Fleet::new(&config));
        let stats: Vec<_> = (0..2)
            .map(|_| std::sync::Arc::new(crate::stats::Stats::default()))
            .collect();
        let generation = std::sync::Arc::new(crate::generation::Generation::new(
            1,
            std::sync::Arc::clone(&config),
            std::sync::Arc::new(crate::tls::setup::TlsSetup::build(&config).unwrap().0),
            std::sync::Arc::clone(&fleet),
            crate::policy::state::Shared::start(&config).unwrap(),
            2,
            None,
        ));
        stats[0].upgraded.add(5);
        for (w, (up, ended, msgs)) in [(5, 2, 30), (2, 1, 12)].into_iter().enumerate() {
            let r = &generation.routes[w][0];
            r.upgraded.add(up);
            r.ended.add(ended);
            r.messages[1].add(msgs);
            r.bytes[0].add(100);
        }
        stats[1].upgraded.add(2);
        stats[1].refused.add(3);
        stats[1].refused_by[Reason::IpRate.index()].add(1);
        let view = AdminView {
            config,
            stats,
            fleet: std::sync::Arc::clone(&fleet),
            generation,
            draining: Default::default(),
            control: Vec::new(),
            reload: None,
        };
        fleet.upstreams[0].drain("127.0.0.1:9002", 0).unwrap();
        let v = snapshot_of(&view, true);
        assert_eq!(v["counters"]["upgraded"], 7);
        assert_eq!(v["refused_by"]["ip_handshake_rate"], 1);
        assert_eq!(v["refused_by"]["other"], 2);
        assert_eq!(v["policy_refusals"], 1);
        assert_eq!(v["servers"]["total"], 2);
        assert_eq!(v["servers"]["draining"], 1);
        assert_eq!(v["servers"]["eligible"], 1);
        assert!(v["counters"].get("ip_handshake_rate").is_none());
        assert_eq!(v["routes"][0]["match"], view.config.routes[0].label);
        assert_eq!(v["routes"][0]["upgraded"], 7);
        assert_eq!(v["routes"][0]["active"], 4);
        assert_eq!(v["routes"][0]["messages"], serde_json::json!([0, 42]));
        assert_eq!(v["routes"][0]["bytes"], serde_json::json!([200, 0]));
        assert_eq!(v["messages"], serde_json::json!([0, 42]));
        assert_eq!(v["longest"], serde_json::json!([]), "no workers to ask");
        assert_eq!(v["upstreams"][0]["state"], "UP");
        assert_eq!(v["upstreams"][0]["up"], 1);
        assert_eq!(v["upstreams"][0]["servers"][1]["state"], "DRAINING");
        assert!(v["clock_ms"].as_u64().unwrap() > 0);
        let html = render(&view);
        assert!(html.contains("127.0.0.1:9001") && html.contains(">DRAINING<"));
    }
}
