//! What a valid token says: its claims, read as header-ready text and
//! tested against `require` rules.

use serde_json::{Map, Value};

/// The claims of a token that passed [`JwtVerifier::verify`](super::JwtVerifier::verify).
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    map: Map<String, Value>,
}

impl Claims {
    pub(super) fn new(map: Map<String, Value>) -> Claims {
        Claims { map }
    }

    /// `exp`, in seconds since the Unix epoch (a fractional one rounded
    /// down), when the token has one.
    pub fn exp(&self) -> Option<u64> {
        self.map.get("exp").and_then(numeric_date)
    }

    /// A claim as header-ready text: a string as is, a number or a bool as
    /// written, an array of strings joined by single spaces; `None` when
    /// absent, null, an object, or an array holding anything but strings.
    /// Control characters (C0, DEL, C1) come out as `?`.
    pub fn text(&self, name: &str) -> Option<String> {
        let raw = match self.map.get(name)? {
            Value::String(s) => return Some(printable(s)),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(items) => {
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    let Value::String(s) = item else {
                        return None;
                    };
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(s);
                }
                out
            }
            Value::Null | Value::Object(_) => return None,
        };
        Some(printable(&raw))
    }

    /// `require` semantics: the claim equals `value` (a number or bool as
    /// written), or is a space-separated string with `value` as one of its
    /// words (`scope = "chat:read chat:write"` satisfies `chat:write`), or
    /// an array with `value` as one of its string elements.
    pub fn satisfies(&self, name: &str, value: &str) -> bool {
        match self.map.get(name) {
            Some(Value::String(s)) => {
                s == value || (!value.is_empty() && s.split(' ').any(|w| w == value))
            }
            Some(Value::Array(items)) => items
                .iter()
                .any(|i| matches!(i, Value::String(s) if s == value)),
            Some(Value::Number(n)) => n.to_string() == value,
            Some(Value::Bool(b)) => value == if *b { "true" } else { "false" },
            _ => false,
        }
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, fractions rounded
/// down, negative ones as 0; `None` when not a number.
pub(super) fn numeric_date(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else {
        return None;
    };
    // `as` saturates: a negative or NaN float is 0, a huge one u64::MAX.
    n.as_u64().or_else(|| n.as_f64().map(|f| f as u64))
}

/// `s` with every control character replaced by `?`.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
