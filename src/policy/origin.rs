//! Origin lists (`origins` on a route): the defence against cross-site
//! WebSocket hijacking. A browser always sends `Origin` with a WebSocket
//! handshake and a page cannot forge it; a page on another site that opens
//! a WebSocket to wsedge with the user's cookies is refused with 403.

use std::fmt;

/// One allowed origin: `scheme://host[:port]`, where the host may start
/// with `*.` (one or more labels: `https://*.example.com` matches
/// `https://a.example.com` and `https://a.b.example.com`, not
/// `https://example.com`). The port is the scheme's default when not
/// written. `null` (sandboxed frames, `file:` pages) is matched only by an
/// entry `"null"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// Lowercase; without the `*.` for a wildcard.
    host: String,
    wildcard: bool,
    port: Option<u16>,
    null: bool,
}

impl OriginPattern {
    /// Parses one entry of `origins`.
    pub fn parse(s: &str) -> Result<OriginPattern, String> {
        if s == "null" {
            return Ok(OriginPattern {
                scheme: String::new(),
                host: String::new(),
                wildcard: false,
                port: None,
                null: true,
            });
        }
        let Some(parsed) = Origin::parse(s.strip_suffix('/').unwrap_or(s), true) else {
            return Err(format!(
                "origins: {s:?} is not an origin (scheme://host[:port], the host may start with *.)"
            ));
        };
        let (wildcard, host) = match parsed.host.strip_prefix("*.") {
            Some(rest) if !rest.is_empty() && !rest.contains('*') => (true, rest.to_string()),
            Some(_) => return Err(format!("origins: {s:?}: `*.` must precede a domain")),
            None if parsed.host.contains('*') => {
                return Err(format!(
                    "origins: {s:?}: a wildcard is only allowed as the first label (*.example.com)"
                ));
            }
            None => (false, parsed.host),
        };
        Ok(OriginPattern {
            scheme: parsed.scheme,
            host,
            wildcard,
            port: parsed.port,
            null: false,
        })
    }

    fn matches(&self, o: &Origin) -> bool {
        if self.scheme != o.scheme || self.port != o.port {
            return false;
        }
        if self.wildcard {
            o.host.len() > self.host.len() + 1
                && o.host.ends_with(&self.host)
                && o.host.as_bytes()[o.host.len() - self.host.len() - 1] == b'.'
        } else {
            o.host == self.host
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.null {
            return f.write_str("null");
        }
        let star = if self.wildcard { "*." } else { "" };
        write!(f, "{}://{star}{}", self.scheme, self.host)?;
        match self.port {
            Some(p) if Some(p) != default_port(&self.scheme) => write!(f, ":{p}"),
            _ => Ok(()),
        }
    }
}

/// A parsed `Origin` header value.
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl Origin {
    /// `scheme://host[:port]` (no path). `pattern`: `*` allowed in the host.
    fn parse(s: &str, pattern: bool) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        if scheme.is_empty()
            || !scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
            };
            (format!("[{}]", h.to_ascii_lowercase()), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p.parse::<u16>().ok()?)),
                None => (rest.to_ascii_lowercase(), None),
            }
        };
        let ok =
            |b: u8| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b) || (pattern && b == b'*');
        if host.is_empty() || !host.bytes().all(ok) {
            return None;
        }
        let port = port.or_else(|| default_port(&scheme));
        Some(Origin { scheme, host, port })
    }
}

/// A route's `origins` with `allow_missing_origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPolicy {
    /// The allowed origins; empty: no check.
    pub allowed: Vec<OriginPattern>,
    /// A request without `Origin` (not from a browser) passes.
    pub allow_missing: bool,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        OriginPolicy {
            allowed: Vec::new(),
            allow_missing: true,
        }
    }
}

impl OriginPolicy {
    /// Whether a request with this `Origin` value (or none) may connect.
    pub fn permits(&self, origin: Option<&[u8]>) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        let Some(value) = origin else {
            return self.allow_missing;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            return false;
        };
        let value = value.trim();
        if value == "null" {
            return self.allowed.iter().any(|p| p.null);
        }
        match Origin::parse(value, false) {
            Some(o) => self.allowed.iter().any(|p| !p.null && p.matches(&o)),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            allowed: list
                .iter()
                .map(|s| OriginPattern::parse(s).unwrap())
                .collect(),
            allow_missing,
        }
    }

    fn ok(p: &OriginPolicy, o: &str) -> bool {
        p.permits(Some(o.as_bytes()))
    }

    #[test]
    fn exact_and_wildcard_origins() {
        let p = policy(&["https://app.example.com", "https://*.example.com"], true);
        assert!(ok(&p, "https://app.example.com"));
        assert!(ok(&p, "HTTPS://App.Example.COM"));
        assert!(ok(&p, "https://app.example.com:443"), "default port");
        assert!(ok(&p, "https://a.b.example.com"));
        assert!(!ok(&p, "https://example.com"), "the wildcard needs a label");
        assert!(!ok(&p, "https://evilexample.com"));
        assert!(!ok(&p, "https://example.com.evil.net"));
        assert!(!ok(&p, "http://app.example.com"), "scheme");
        assert!(!ok(&p, "https://app.example.com:8443"), "port");
        assert!(!ok(&p, "null"));
        assert!(!ok(&p, "garbage"));
        assert!(!p.permits(Some(b"https://app.example.com\xff")));
        assert!(p.permits(None));
        assert!(!policy(&["https://app.example.com"], false).permits(None));
        assert!(OriginPolicy::default().permits(Some(b"https://anything")));
    }

    #[test]
    fn ports_null_and_ipv6() {
        let p = policy(
            &["http://localhost:3000", "null", "http://[::1]:8080"],
            true,
        );
        assert!(ok(&p, "http://localhost:3000"));
        assert!(!ok(&p, "http://localhost"));
        assert!(ok(&p, "null"));
        assert!(ok(&p, "http://[::1]:8080"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(OriginPattern::parse("app.example.com").is_err());
        assert!(OriginPattern::parse("https://a.*.example.com").is_err());
        assert!(OriginPattern::parse("https://*.").is_err());
        assert!(OriginPattern::parse("https://host:99999").is_err());
        assert_eq!(
            OriginPattern::parse("https://*.Example.com:443/")
                .unwrap()
                .to_string(),
            "https://*.example.com"
        );
    }
}
