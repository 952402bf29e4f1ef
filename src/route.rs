//! Routes: which `[[route]]` a handshake matches, and the request target and
//! `Host` its backend receives.
//!
//! Pure functions over the parsed request: no I/O, no allocation to match
//! (a rewritten path is the one allocation, and only when a route rewrites).
//!
//! A route matches when all of its conditions hold:
//! - `host`: the client's `Host` without its port, ASCII case-insensitive,
//!   equal to the name, or for `*.example.com` one label followed by
//!   `.example.com` (as a Kubernetes Ingress host wildcard: `a.example.com`,
//!   not `example.com` nor `a.b.example.com`);
//! - `path`: a prefix on path-segment boundaries (a Kubernetes Ingress
//!   `Prefix`): `/chat` matches `/chat`, `/chat/x` and `/chat?q`, not
//!   `/chatroom`; a trailing `/` on the prefix is ignored (`/chat/` is
//!   `/chat`); `/` matches everything. `path_exact` instead: the path (the
//!   target before any `?`) equals it;
//! - `headers`: every listed header is present with exactly that value (any
//!   of its lines), or present at all for `"*"`; names ASCII
//!   case-insensitive, values byte for byte after trimming spaces;
//! - `query`: every listed parameter is present with exactly that value (the
//!   raw, still percent-encoded text), or present at all for `"*"`.
//!
//! Paths are compared as sent, without percent-decoding or resolving `..`
//! (the backend sees the same bytes the route was chosen on).
//!
//! Precedence ([`Matcher::rank`]): routes with an exact `host` first, then
//! those with a wildcard `host`, then those without; within each, the
//! longer `path` / `path_exact` first (at equal length, exact before
//! prefix); then file order. The first route in that order that matches
//! wins; none → 404.

use std::borrow::Cow;

use httparse::Header;

/// A `host` condition, lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Wildcard(String),
}

impl HostMatch {
    /// Parses a configured `host`: a name, or `*.` and a name. Ports are
    /// not part of it (the client's port is ignored when matching).
    pub fn parse(s: &str) -> Result<HostMatch, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // An IPv6 literal is written in brackets, as in a Host header.
        let ipv6 = name.starts_with('[') && name.ends_with(']') && name.len() > 2;
        if name.is_empty() || !(ipv6 || name.split('.').all(label_ok)) || (wild && ipv6) {
            return Err(format!(
                "host {s:?} is not a host name (e.g. \"api.example.com\" or \"*.example.com\"; no port, no scheme)"
            ));
        }
        Ok(if wild {
            HostMatch::Wildcard(format!(".{name}"))
        } else {
            HostMatch::Exact(name.to_string())
        })
    }

    /// Whether the client's `Host` (port and all) matches.
    pub fn matches(&self, host: &str) -> bool {
        let name = host_name(host);
        match self {
            HostMatch::Exact(h) => name.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                name.len() > suffix.len()
                    && name.is_char_boundary(name.len() - suffix.len())
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !name[..name.len() - suffix.len()].contains('.')
            }
        }
    }
}

/// The name part of a `Host` value: without the port, and without a
/// trailing dot (`example.com.` is `example.com`).
pub fn host_name(host: &str) -> &str {
    let name = if host.starts_with('[') {
        // [v6]:port
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// A `path` or `path_exact` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// A prefix on segment boundaries, without its trailing `/` (`""` for `/`).
    Prefix(String),
    /// The whole path, query excluded.
    Exact(String),
}

impl PathMatch {
    /// A `path` prefix; it must start with `/`.
    pub fn prefix(p: &str) -> Result<PathMatch, String> {
        check_path("path", p)?;
        Ok(PathMatch::Prefix(p.trim_end_matches('/').to_string()))
    }

    /// A `path_exact`; it must start with `/`.
    pub fn exact(p: &str) -> Result<PathMatch, String> {
        check_path("path_exact", p)?;
        Ok(PathMatch::Exact(p.to_string()))
    }

    /// Whether a request target (`/a/b?q`) matches.
    pub fn matches(&self, target: &str) -> bool {
        let path = path_of(target);
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_at_boundary(path, p),
        }
    }

    /// The length precedence goes by.
    fn len(&self) -> usize {
        match self {
            PathMatch::Prefix(p) | PathMatch::Exact(p) => p.len(),
        }
    }
}

fn check_path(key: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{key} {p:?} must start with '/'"));
    }
    if p.contains(['?', '#']) || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "{key} {p:?} must be a path only: no query, fragment, spaces or control characters"
        ));
    }
    Ok(())
}

/// The path of a request target: up to the `?`.
pub fn path_of(target: &str) -> &str {
    match target.find('?') {
        Some(i) => &target[..i],
        None => target,
    }
}

/// `path` starts with `prefix` (no trailing `/`) and the next byte, if any,
/// begins a new segment.
fn prefix_at_boundary(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// A header or query parameter condition's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// `"*"`: present, whatever the value.
    Present,
    /// Exactly this value.
    Equals(String),
}

impl ValueMatch {
    /// `"*"` or a literal.
    pub fn parse(v: &str) -> ValueMatch {
        if v == "*" {
            ValueMatch::Present
        } else {
            ValueMatch::Equals(v.to_string())
        }
    }

    fn accepts(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Equals(want) => v == want.as_bytes(),
        }
    }
}

/// What a request is matched on.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a, 'h> {
    /// The `Host` header as sent.
    pub host: &'a str,
    /// The request target, query included.
    pub target: &'a str,
    /// Every header line.
    pub headers: &'h [Header<'a>],
}

/// A route's conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// `host`, if any.
    pub host: Option<HostMatch>,
    /// `path` or `path_exact` (`path = "/"` when neither is given).
    pub path: PathMatch,
    /// `headers`: lowercased name → value.
    pub headers: Vec<(String, ValueMatch)>,
    /// `query`: parameter name → value.
    pub query: Vec<(String, ValueMatch)>,
}

impl Matcher {
    /// Whether every condition holds for `req`.
    pub fn matches(&self, req: &RequestView<'_, '_>) -> bool {
        if let Some(h) = &self.host
            && !h.matches(req.host)
        {
            return false;
        }
        if !self.path.matches(req.target) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .any(|h| want.accepts(trim(h.value)))
        });
        if !headers_ok {
            return false;
        }
        let query = match req.target.find('?') {
            Some(i) => &req.target[i + 1..],
            None => "",
        };
        self.query.iter().all(|(name, want)| {
            query_params(query).any(|(k, v)| k == name && want.accepts(v.as_bytes()))
        })
    }

    /// The sort key for precedence: smaller first (see the module docs).
    pub fn rank(&self) -> (u8, std::cmp::Reverse<usize>, u8) {
        let host = match self.host {
            Some(HostMatch::Exact(_)) => 0,
            Some(HostMatch::Wildcard(_)) => 1,
            None => 2,
        };
        let exact = match self.path {
            PathMatch::Exact(_) => 0,
            PathMatch::Prefix(_) => 1,
        };
        (host, std::cmp::Reverse(self.path.len()), exact)
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// `a=1&b&c=` → `("a", "1")`, `("b", "")`, `("c", "")`; empty pieces skipped.
pub fn query_params(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// What the backend's request target becomes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PathRewrite {
    /// As the client sent it.
    #[default]
    Keep,
    /// `strip_prefix = "/ws"`: `/ws/chat?x` → `/chat?x`, `/ws` → `/`.
    Strip(String),
    /// `rewrite_prefix = { from = "/ws", to = "/v2" }`: `/ws/chat` →
    /// `/v2/chat`.
    Replace {
        /// The prefix taken off (segment boundaries, as `path`).
        from: String,
        /// What is put in its place.
        to: String,
    },
}

impl PathRewrite {
    /// `strip_prefix`; must start with `/`.
    pub fn strip(p: &str) -> Result<PathRewrite, String> {
        check_path("strip_prefix", p)?;
        Ok(PathRewrite::Strip(p.trim_end_matches('/').to_string()))
    }

    /// `rewrite_prefix`; both must start with `/`.
    pub fn replace(from: &str, to: &str) -> Result<PathRewrite, String> {
        check_path("rewrite_prefix.from", from)?;
        check_path("rewrite_prefix.to", to)?;
        Ok(PathRewrite::Replace {
            from: from.trim_end_matches('/').to_string(),
            to: to.to_string(),
        })
    }

    /// The target the backend receives for the client's `target`. A target
    /// the prefix does not start (on a segment boundary) is kept as it is.
    pub fn apply<'t>(&self, target: &'t str) -> Cow<'t, str> {
        let (from, to) = match self {
            PathRewrite::Keep => return Cow::Borrowed(target),
            PathRewrite::Strip(from) => (from.as_str(), "/"),
            PathRewrite::Replace { from, to } => (from.as_str(), to.as_str()),
        };
        if !prefix_at_boundary(path_of(target), from) {
            return Cow::Borrowed(target);
        }
        // `rest` is empty, or starts with '/' or '?'.
        let rest = &target[from.len()..];
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if let Some(r) = rest.strip_prefix('/') {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(r);
        } else {
            // Nothing, or a query, after the prefix: `to` is the path.
            out.push_str(rest);
        }
        Cow::Owned(out)
    }
}

/// The `Host` header the backend receives (`host_header`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostHeader {
    /// `"preserve"` (the default): the client's.
    #[default]
    Preserve,
    /// `"backend"`: the server's `host:port` as configured.
    Backend,
    /// Any other value, sent as it is.
    Literal(String),
}

impl HostHeader {
    /// `"preserve"`, `"backend"` or a literal `Host` value.
    pub fn parse(s: &str) -> Result<HostHeader, String> {
        match s {
            "preserve" => Ok(HostHeader::Preserve),
            "backend" => Ok(HostHeader::Backend),
            _ if s.is_empty()
                || s.bytes()
                    .any(|b| b <= b' ' || b == 0x7f || matches!(b, b'/' | b'?' | b'#' | b'@')) =>
            {
                Err(format!(
                    "host_header {s:?}: expected \"preserve\", \"backend\" or a host[:port] to send"
                ))
            }
            _ => Ok(HostHeader::Literal(s.to_string())),
        }
    }

    /// The value to send: `client` is the client's `Host`, `server` the
    /// chosen server's `host:port`.
    pub fn value<'a>(&'a self, client: &'a str, server: &'a str) -> &'a str {
        match self {
            HostHeader::Preserve => client,
            HostHeader::Backend => server,
            HostHeader::Literal(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(host: &'a str, target: &'a str, headers: &'a [Header<'a>]) -> RequestView<'a, 'a> {
        RequestView {
            host,
            target,
            headers,
        }
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let p = PathMatch::prefix("/chat").unwrap();
        for t in ["/chat", "/chat/", "/chat/x", "/chat?q", "/chat/x?y=1"] {
            assert!(p.matches(t), "{t}");
        }
        for t in ["/chatroom", "/cha", "/", "/x/chat"] {
            assert!(!p.matches(t), "{t}");
        }
        // A trailing slash on the prefix is ignored.
        assert_eq!(PathMatch::prefix("/chat/").unwrap(), p);
        let root = PathMatch::prefix("/").unwrap();
        for t in ["/", "/x", "/?q", "/chat/x"] {
            assert!(root.matches(t), "{t}");
        }
        assert!(PathMatch::prefix("chat").is_err());
        assert!(PathMatch::prefix("/a?b").is_err());
    }

    #[test]
    fn exact_path_ignores_the_query() {
        let p = PathMatch::exact("/ws").unwrap();
        assert!(p.matches("/ws"));
        assert!(p.matches("/ws?token=1"));
        assert!(!p.matches("/ws/"));
        assert!(!p.matches("/ws/x"));
    }

    #[test]
    fn hosts_exact_and_wildcard_ignore_port_and_case() {
        let h = HostMatch::parse("API.example.com").unwrap();
        assert!(h.matches("api.example.com"));
        assert!(h.matches("Api.Example.Com:8443"));
        assert!(h.matches("api.example.com."));
        assert!(!h.matches("api.example.org"));
        let w = HostMatch::parse("*.example.com").unwrap();
        assert!(w.matches("a.example.com"));
        assert!(w.matches("B.Example.com:443"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("a.b.example.com"));
        assert!(!w.matches("aexample.com"));
        assert!(!w.matches(".example.com"));
        let v6 = HostMatch::parse("[::1]").unwrap();
        assert!(v6.matches("[::1]:9000"));
        for bad in ["", "*.", "a b", "http://x", "x:80", "*.[::1]", "a..b"] {
            assert!(HostMatch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_name_strips_the_port() {
        assert_eq!(host_name("a.example:80"), "a.example");
        assert_eq!(host_name("a.example"), "a.example");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("x.:1"), "x");
    }

    #[test]
    fn headers_and_query_all_must_hold() {
        let m = Matcher {
            host: None,
            path: PathMatch::prefix("/").unwrap(),
            headers: vec![
                ("x-version".into(), ValueMatch::parse("2")),
                ("x-tenant".into(), ValueMatch::parse("*")),
            ],
            query: vec![("room".into(), ValueMatch::parse("*"))],
        };
        let hs = [
            Header {
                name: "X-Version",
                value: b" 2 ",
            },
            Header {
                name: "X-Tenant",
                value: b"",
            },
        ];
        assert!(m.matches(&view("h", "/?room=1", &hs)));
        assert!(m.matches(&view("h", "/?a=1&room", &hs)));
        assert!(!m.matches(&view("h", "/", &hs)), "query missing");
        assert!(!m.matches(&view("h", "/?rooms=1", &hs)));
        assert!(
            !m.matches(&view("h", "/?room=1", &hs[..1])),
            "header missing"
        );
        let v3 = [
            Header {
                name: "x-version",
                value: b"3",
            },
            hs[1],
        ];
        assert!(!m.matches(&view("h", "/?room=1", &v3)), "wrong value");
        // Any of several lines of one header may match.
        let both = [v3[0], hs[0], hs[1]];
        assert!(m.matches(&view("h", "/?room=1", &both)));
    }

    #[test]
    fn precedence_host_then_length_then_exact() {
        let m = |host: Option<&str>, path: PathMatch| Matcher {
            host: host.map(|h| HostMatch::parse(h).unwrap()),
            path,
            headers: vec![],
            query: vec![],
        };
        let mut routes = [
            m(None, PathMatch::prefix("/").unwrap()),
            m(None, PathMatch::prefix("/chat").unwrap()),
            m(Some("*.example.com"), PathMatch::prefix("/").unwrap()),
            m(Some("a.example.com"), PathMatch::prefix("/").unwrap()),
            m(None, PathMatch::exact("/chat").unwrap()),
        ];
        routes.sort_by_key(Matcher::rank);
        let order: Vec<String> = routes
            .iter()
            .map(|r| format!("{:?} {:?}", r.host, r.path))
            .collect();
        assert_eq!(
            order,
            [
                "Some(Exact(\"a.example.com\")) Prefix(\"\")",
                "Some(Wildcard(\".example.com\")) Prefix(\"\")",
                "None Exact(\"/chat\")",
                "None Prefix(\"/chat\")",
                "None Prefix(\"\")",
            ]
        );
    }

    #[test]
    fn strip_and_rewrite_prefix() {
        let s = PathRewrite::strip("/ws").unwrap();
        assert_eq!(s.apply("/ws/chat?x=1"), "/chat?x=1");
        assert_eq!(s.apply("/ws"), "/");
        assert_eq!(s.apply("/ws?x"), "/?x");
        assert_eq!(s.apply("/ws/"), "/");
        assert_eq!(s.apply("/wsx"), "/wsx", "not on a segment boundary");
        assert_eq!(s.apply("/other"), "/other");
        let r = PathRewrite::replace("/ws", "/").unwrap();
        assert_eq!(r.apply("/ws/chat"), "/chat");
        assert_eq!(r.apply("/ws"), "/");
        let r = PathRewrite::replace("/ws/", "/v2").unwrap();
        assert_eq!(r.apply("/ws/chat?q"), "/v2/chat?q");
        assert_eq!(r.apply("/ws"), "/v2");
        assert_eq!(r.apply("/ws?q"), "/v2?q");
        let r = PathRewrite::replace("/", "/api").unwrap();
        assert_eq!(r.apply("/x"), "/api/x");
        assert_eq!(r.apply("/"), "/api/");
        assert_eq!(PathRewrite::Keep.apply("/a"), "/a");
        assert!(PathRewrite::strip("ws").is_err());
        assert!(PathRewrite::replace("/a", "b").is_err());
    }

    #[test]
    fn host_header_modes() {
        assert_eq!(
            HostHeader::parse("preserve").unwrap().value("c:1", "s:2"),
            "c:1"
        );
        assert_eq!(
            HostHeader::parse("backend").unwrap().value("c:1", "s:2"),
            "s:2"
        );
        assert_eq!(
            HostHeader::parse("api.internal:9000")
                .unwrap()
                .value("c", "s"),
            "api.internal:9000"
        );
        for bad in ["", "a b", "a\r\nX: y", "http://x", "a/b"] {
            assert!(HostHeader::parse(bad).is_err(), "{bad:?}");
        }
    }
}
