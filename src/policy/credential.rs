//! Where a credential is looked for in an upgrade request (`token_from`),
//! and how it is taken out of what the backend sees.
//!
//! `protocol` is the usual trick for browsers, which cannot set headers on
//! a WebSocket: `Sec-WebSocket-Protocol: bearer, <token>, chat.v1`. The
//! marker and the token are removed from the request sent to the backend
//! (so the backend can never choose them, and they are never echoed in the
//! 101). A token taken from the query string is removed from the target.

use std::borrow::Cow;
use std::fmt;

use httparse::Header;

use crate::proto::token::{header_values, trim_ows};

/// One place to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A request header; `Authorization` values lose a `Bearer ` scheme.
    Header(String),
    /// A query parameter of the request target.
    Query(String),
    /// A cookie.
    Cookie(String),
    /// The `Sec-WebSocket-Protocol` entry after a `bearer` marker.
    Protocol,
}

impl TokenSource {
    /// Parses `"header:NAME"`, `"query:NAME"`, `"cookie:NAME"` or `"protocol"`.
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        if s == "protocol" {
            return Ok(TokenSource::Protocol);
        }
        let bad = || {
            format!(
                "token_from: {s:?}: expected \"header:NAME\", \"query:NAME\", \"cookie:NAME\" or \"protocol\""
            )
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b"=;,&#\x7f".contains(&b)) {
            return Err(bad());
        }
        match kind {
            "header" => Ok(TokenSource::Header(name.to_string())),
            "query" => Ok(TokenSource::Query(name.to_string())),
            "cookie" => Ok(TokenSource::Cookie(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Header(n) => write!(f, "header:{n}"),
            TokenSource::Query(n) => write!(f, "query:{n}"),
            TokenSource::Cookie(n) => write!(f, "cookie:{n}"),
            TokenSource::Protocol => f.write_str("protocol"),
        }
    }
}

/// The marker before a token in `Sec-WebSocket-Protocol`.
pub const PROTOCOL_MARKER: &str = "bearer";

/// The first credential found, in the order of `sources`, with where it
/// was found. Empty values count as absent.
pub fn find<'b, 's>(
    sources: &'s [TokenSource],
    target: &'b str,
    headers: &[Header<'b>],
) -> Option<(Cow<'b, str>, &'s TokenSource)> {
    sources.iter().find_map(|s| {
        let found = match s {
            TokenSource::Header(name) => from_header(headers, name),
            TokenSource::Query(name) => query_param(target, name),
            TokenSource::Cookie(name) => cookie(headers, name).map(Cow::Borrowed),
            TokenSource::Protocol => from_protocol(headers).map(Cow::Borrowed),
        };
        found.filter(|t| !t.is_empty()).map(|t| (t, s))
    })
}

fn from_header<'b>(headers: &[Header<'b>], name: &str) -> Option<Cow<'b, str>> {
    let value = trim_ows(header_values(headers, name).next()?);
    let value = std::str::from_utf8(value).ok()?;
    // `Authorization: Bearer <token>` (the scheme is case-insensitive).
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    };
    Some(Cow::Borrowed(token))
}

/// A query parameter's value, percent-decoded (`+` is a space).
pub fn query_param<'b>(target: &'b str, name: &str) -> Option<Cow<'b, str>> {
    let (_, query) = target.split_once('?')?;
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k).as_deref() == Some(name))
            .then(|| percent_decode(v))
            .flatten()
    })
}

fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// A cookie's value from the `Cookie` headers.
pub fn cookie<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b str> {
    header_values(headers, "cookie").find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        line.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
    })
}

/// The entry after a `bearer` marker in `Sec-WebSocket-Protocol`.
fn from_protocol<'b>(headers: &[Header<'b>]) -> Option<&'b str> {
    let mut entries = protocol_entries(headers);
    entries.find(|e| e.eq_ignore_ascii_case(PROTOCOL_MARKER))?;
    entries.next()
}

fn protocol_entries<'h, 'b>(headers: &'h [Header<'b>]) -> impl Iterator<Item = &'b str> + 'h {
    header_values(headers, "sec-websocket-protocol")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

/// The `Sec-WebSocket-Protocol` list to send to the backend when a
/// `bearer` marker is present: the client's entries without the marker
/// and the token after it (`Some("")` when nothing is left: the header is
/// then left out). `None`: no marker, the header goes on as it is.
pub fn protocols_without_token(headers: &[Header<'_>]) -> Option<String> {
    let entries: Vec<&str> = protocol_entries(headers).collect();
    let at = entries
        .iter()
        .position(|e| e.eq_ignore_ascii_case(PROTOCOL_MARKER))?;
    let kept: Vec<&str> = entries
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != at && i != at + 1)
        .map(|(_, e)| *e)
        .collect();
    Some(kept.join(", "))
}

/// `target` without the query parameter `name` (every occurrence); the
/// `?` goes too when nothing is left.
pub fn without_query_param(target: &str, name: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            percent_decode(k).as_deref() != Some(name)
        })
        .collect();
    let mut out = path.to_string();
    let kept = kept.join("&");
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept);
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    fn sources(list: &[&str]) -> Vec<TokenSource> {
        list.iter()
            .map(|s| TokenSource::parse(s).unwrap())
            .collect()
    }

    #[test]
    fn sources_are_tried_in_order() {
        let s = sources(&[
            "header:Authorization",
            "query:access_token",
            "cookie:session",
            "protocol",
        ]);
        let headers = [
            h("Cookie", "a=1; session=\"c00kie\""),
            h("Sec-WebSocket-Protocol", "bearer, pr0t0, chat.v1"),
        ];
        let (t, from) = find(&s, "/chat?x=1&access_token=qu%2Ery", &headers).unwrap();
        assert_eq!((t.as_ref(), from), ("qu.ry", &s[1]));
        let (t, from) = find(&s, "/chat", &headers).unwrap();
        assert_eq!((t.as_ref(), from), ("c00kie", &s[2]));
        let (t, _) = find(&s, "/chat", &headers[1..]).unwrap();
        assert_eq!(t, "pr0t0");
        let auth = [h("authorization", "bEaReR   hdr.tok.en ")];
        assert_eq!(
            find(&s, "/chat?access_token=q", &auth).unwrap().0,
            "hdr.tok.en"
        );
        assert!(
            find(&s, "/chat?access_token=", &[]).is_none(),
            "empty is absent"
        );
        let key = sources(&["header:X-API-Key"]);
        assert_eq!(find(&key, "/", &[h("x-api-key", "k1")]).unwrap().0, "k1");
    }

    #[test]
    fn the_bearer_entries_leave_the_protocol_list() {
        let with = [
            h("Sec-WebSocket-Protocol", "bearer, tok, chat.v1"),
            h("Sec-WebSocket-Protocol", "v2"),
        ];
        assert_eq!(
            protocols_without_token(&with).as_deref(),
            Some("chat.v1, v2")
        );
        let only = [h("Sec-WebSocket-Protocol", "Bearer,tok")];
        assert_eq!(protocols_without_token(&only).as_deref(), Some(""));
        let none = [h("Sec-WebSocket-Protocol", "chat.v1")];
        assert_eq!(protocols_without_token(&none), None);
        // A marker at the end with no token: the marker still goes.
        let dangling = [h("Sec-WebSocket-Protocol", "chat, bearer")];
        assert_eq!(protocols_without_token(&dangling).as_deref(), Some("chat"));
        assert!(find(&sources(&["protocol"]), "/", &dangling).is_none());
    }

    #[test]
    fn the_query_token_leaves_the_target() {
        assert_eq!(
            without_query_param("/c?access_token=t&x=1", "access_token"),
            "/c?x=1"
        );
        assert_eq!(
            without_query_param("/c?x=1&access_token=t", "access_token"),
            "/c?x=1"
        );
        assert_eq!(
            without_query_param("/c?access_token=t", "access_token"),
            "/c"
        );
        assert_eq!(
            without_query_param("/c?access%5Ftoken=t&access_token=u&y", "access_token"),
            "/c?y"
        );
        assert_eq!(without_query_param("/c", "access_token"), "/c");
        assert_eq!(without_query_param("/c?a=1#f", "b"), "/c?a=1#f");
    }

    #[test]
    fn bad_sources_say_why() {
        for bad in ["header:", "query", "bearer", "cookie:a b", "form:x"] {
            assert!(TokenSource::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            TokenSource::parse("cookie:sid").unwrap().to_string(),
            "cookie:sid"
        );
    }
}
