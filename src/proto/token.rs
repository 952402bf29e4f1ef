//! Comma-separated header lists (RFC 9110 §5.6.1) as the handshake uses them.
//!
//! `Connection`, `Upgrade`, `Sec-WebSocket-Protocol` and
//! `Sec-WebSocket-Extensions` are all lists: elements separated by commas,
//! surrounded by optional whitespace, possibly spread over repeated header
//! lines, with empty elements allowed and ignored. Nothing here allocates;
//! every item borrows from the header value it came from.

use httparse::Header;

/// Strips optional whitespace (spaces and horizontal tabs, RFC 9110 `OWS`)
/// from both ends of `value`.
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Whether `b` may appear in an HTTP token (RFC 9110 §5.6.2 `tchar`).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `value` is a non-empty HTTP token.
pub fn is_token(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| is_tchar(b))
}

/// Splits one header value into its list elements: on commas outside
/// double-quoted strings, each element trimmed of optional whitespace,
/// empty elements skipped.
///
/// Quotes only matter for extension parameters
/// (`foo; bar="a,b"` is one element); for plain token lists the split is
/// the obvious one.
pub fn tokens(value: &[u8]) -> Tokens<'_> {
    Tokens { rest: Some(value) }
}

/// Iterator over the elements of a comma-separated list, returned by
/// [`tokens`].
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    /// What is left to split; `None` once the last element was produced.
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let rest = self.rest?;
            let item = match find_separator(rest) {
                Some(i) => {
                    self.rest = Some(&rest[i + 1..]);
                    &rest[..i]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };
            let item = trim_ows(item);
            if !item.is_empty() {
                return Some(item);
            }
        }
    }
}

/// Index of the first comma in `value` that is not inside a quoted string.
fn find_separator(value: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in value.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted {
            match b {
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => quoted = true,
                b',' => return Some(i),
                _ => {}
            }
        }
    }
    None
}

/// The name of a list element that may carry parameters
/// (`permessage-deflate; client_max_window_bits` → `permessage-deflate`).
pub fn element_name(element: &[u8]) -> &[u8] {
    let end = element
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(element.len());
    trim_ows(&element[..end])
}

/// The values of every header called `name` (ASCII case-insensitive), in
/// the order they were received.
pub fn header_values<'h, 'b>(
    headers: &'h [Header<'b>],
    name: &'h str,
) -> impl Iterator<Item = &'b [u8]> + Clone {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Every list element of every header called `name`, in order: the list
/// that repeated headers add up to (RFC 9110 §5.3).
pub fn header_tokens<'h, 'b>(
    headers: &'h [Header<'b>],
    name: &'h str,
) -> impl Iterator<Item = &'b [u8]> + Clone {
    header_values(headers, name).flat_map(tokens)
}

/// Whether any header called `name` lists `token`; names and tokens are
/// compared ASCII case-insensitively, as `Connection` and `Upgrade` need.
pub fn header_has_token(headers: &[Header<'_>], name: &str, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(value: &[u8]) -> Vec<&[u8]> {
        tokens(value).collect()
    }

    #[test]
    fn trims_only_spaces_and_tabs() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b""), b"");
        assert_eq!(trim_ows(b"\x0ba\x0b"), b"\x0ba\x0b");
    }

    #[test]
    fn splits_trims_and_skips_empties() {
        assert_eq!(
            collect(b"keep-alive, Upgrade"),
            [&b"keep-alive"[..], b"Upgrade"]
        );
        assert_eq!(collect(b" ,a,, \tb ,"), [&b"a"[..], b"b"]);
        assert_eq!(collect(b""), Vec::<&[u8]>::new());
        assert_eq!(collect(b" , ,"), Vec::<&[u8]>::new());
        assert_eq!(collect(b"one"), [&b"one"[..]]);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        assert_eq!(
            collect(br#"foo; bar="a,b", baz; q="x\",y", last"#),
            [&br#"foo; bar="a,b""#[..], br#"baz; q="x\",y""#, b"last"]
        );
    }

    #[test]
    fn element_names_drop_parameters() {
        assert_eq!(
            element_name(b"permessage-deflate; client_max_window_bits"),
            b"permessage-deflate"
        );
        assert_eq!(element_name(b"x-foo"), b"x-foo");
        assert_eq!(element_name(b" ; a=1"), b"");
    }

    #[test]
    fn tokens_are_checked() {
        assert!(is_token(b"chat.v2"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a,b"));
    }

    #[test]
    fn repeated_headers_form_one_list() {
        let headers = [
            Header {
                name: "Connection",
                value: b"keep-alive",
            },
            Header {
                name: "Host",
                value: b"x",
            },
            Header {
                name: "connection",
                value: b" UPGRADE ",
            },
        ];
        assert!(header_has_token(&headers, "Connection", "upgrade"));
        assert!(header_has_token(&headers, "CONNECTION", "Keep-Alive"));
        assert!(!header_has_token(&headers, "Connection", "close"));
        assert!(!header_has_token(&headers, "Upgrade", "websocket"));
        assert_eq!(header_tokens(&headers, "connection").count(), 2);
        assert_eq!(header_values(&headers, "HOST").collect::<Vec<_>>(), [b"x"]);
    }
}
