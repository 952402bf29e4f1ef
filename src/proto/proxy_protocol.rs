//! The PROXY protocol (HAProxy's, versions 1 and 2), sans-IO: the header an
//! L4 load balancer (HAProxy in TCP mode, an AWS NLB, IPVS with a helper)
//! puts before a connection's first byte so that the real client's address
//! survives, and the one wsedge sends to a backend
//! (<https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>).
//!
//! [`parse`] reads either version from the start of a buffer: `Incomplete`
//! while more bytes are needed (the caller bounds the wait), the header's
//! length and the addresses once whole, an error for anything else. A v2
//! `LOCAL` command (a health check from the balancer itself) and v1
//! `UNKNOWN` carry no address: the connection's own peer stands. TLVs in a
//! v2 header are skipped. [`encode_v1`] / [`encode_v2`] write a `PROXY`
//! header for a backend.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header (the spec's 107 bytes, CRLF included).
const V1_MAX: usize = 107;
/// The longest v2 header accepted: its 16-byte head and up to 1 KiB of
/// addresses and TLVs (balancers send a few dozen bytes).
pub const V2_MAX: usize = 16 + 1024;

/// A header read off the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; `source` and `destination` are the
    /// original connection's (`None` for v2 `LOCAL` and v1 `UNKNOWN`).
    Header {
        /// Bytes the header took.
        len: usize,
        /// The client.
        source: Option<SocketAddr>,
        /// The address the client connected to.
        destination: Option<SocketAddr>,
    },
}

/// Why a header was refused: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The connection does not start with a PROXY header.
    Missing,
    /// A header that breaks the spec (what is wrong).
    Malformed(&'static str),
    /// Longer than accepted.
    TooLarge,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Missing => f.write_str("no PROXY protocol header"),
            ProxyError::Malformed(why) => write!(f, "bad PROXY protocol header: {why}"),
            ProxyError::TooLarge => f.write_str("PROXY protocol header too long"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Reads a v1 or v2 header from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let v1 = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if n < V2_SIGNATURE.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(v1.len());
    if buf[..n] == v1[..n] {
        return if n < v1.len() {
            Ok(Parsed::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Err(ProxyError::Missing)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLarge)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ProxyError::Malformed("not ASCII"))?;
    let len = end + 2;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let family = parts.next().ok_or(ProxyError::Malformed("no protocol"))?;
    if family == "UNKNOWN" {
        return Ok(Parsed::Header {
            len,
            source: None,
            destination: None,
        });
    }
    let want_v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => {
            return Err(ProxyError::Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ));
        }
    };
    let mut next = |what| parts.next().ok_or(ProxyError::Malformed(what));
    let (src, dst, sport, dport) = (
        next("no source address")?,
        next("no destination address")?,
        next("no source port")?,
        next("no destination port")?,
    );
    if parts.next().is_some() {
        return Err(ProxyError::Malformed("extra fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| ProxyError::Malformed("bad address"))?;
        if ip.is_ipv6() != want_v6 {
            return Err(ProxyError::Malformed("address does not match the protocol"));
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        // No sign, no leading zeros (the spec), at most 65535.
        if s.is_empty()
            || (s.len() > 1 && s.starts_with('0'))
            || !s.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ProxyError::Malformed("bad port"));
        }
        s.parse().map_err(|_| ProxyError::Malformed("bad port"))
    };
    Ok(Parsed::Header {
        len,
        source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
        destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
    })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::Malformed("command is not LOCAL or PROXY")),
    };
    let fam = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if len > V2_MAX {
        return Err(ProxyError::TooLarge);
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let b = &buf[16..len];
    if local {
        return Ok(Parsed::Header {
            len,
            source: None,
            destination: None,
        });
    }
    let (source, destination) = match fam {
        // TCP over IPv4, then UDP over IPv4 (addresses read the same way).
        0x11 | 0x12 => {
            if b.len() < 12 {
                return Err(ProxyError::Malformed("IPv4 addresses cut short"));
            }
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        0x21 | 0x22 => {
            if b.len() < 36 {
                return Err(ProxyError::Malformed("IPv6 addresses cut short"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        // UNSPEC or a UNIX socket: no IP address to use.
        0x00 | 0x31 | 0x32 => {
            return Ok(Parsed::Header {
                len,
                source: None,
                destination: None,
            });
        }
        _ => return Err(ProxyError::Malformed("unknown address family")),
    };
    Ok(Parsed::Header {
        len,
        source: Some(source),
        destination: Some(destination),
    })
}

/// A v1 header: `PROXY TCP4 src dst sport dport\r\n`. Mixed families (an
/// IPv4 client reached over IPv6) are written as TCP6 with mapped
/// addresses.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(source, destination);
    let fam = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

/// A v2 header (PROXY command, TCP, no TLVs).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (s, d) = same_family(source, destination);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (s.ip(), d.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&a.octets());
            out.extend_from_slice(&b.octets());
        }
        (a, b) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(a).octets());
            out.extend_from_slice(&v6(b).octets());
        }
    }
    out.extend_from_slice(&s.port().to_be_bytes());
    out.extend_from_slice(&d.port().to_be_bytes());
    out
}

/// Both addresses in one family: IPv4-mapped IPv6 back to IPv4 when both
/// can be, else both as IPv6.
fn same_family(s: SocketAddr, d: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (canon(s), canon(d));
    if s.is_ipv4() == d.is_ipv4() {
        return (s, d);
    }
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    (v6(s), v6(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_as_haproxy_writes_it() {
        // The spec's own example line.
        let h = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Header {
                len: 47,
                source: Some(sa("192.168.0.1:56324")),
                destination: Some(sa("192.168.0.11:443")),
            })
        );
        let h6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n";
        assert!(
            matches!(parse(h6), Ok(Parsed::Header { source: Some(s), .. }) if s == sa("[2001:db8::1]:1000"))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parsed::Header {
                len: 15,
                source: None,
                destination: None
            })
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                .map(|p| matches!(p, Parsed::Header { source: None, .. })),
            Ok(true)
        );
    }

    #[test]
    fn v1_incomplete_then_whole() {
        let h = b"PROXY TCP4 10.0.0.1 10.0.0.2 1234 80\r\n";
        for cut in 0..h.len() {
            assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert!(matches!(parse(h), Ok(Parsed::Header { len, .. }) if len == h.len()));
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP5 1.1.1.1 1.1.1.2 1 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.2 1\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.2 1 2 3\r\n",
            b"PROXY TCP4 ::1 1.1.1.2 1 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.2 01 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.2 65536 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.2 -1 2\r\n",
            b"PROXY TCP4 999.1.1.1 1.1.1.2 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLarge));
    }

    #[test]
    fn v2_by_hand() {
        // TCP over IPv4, 192.0.2.1:51000 -> 198.51.100.2:443, with a TLV
        // (PP2_TYPE_AUTHORITY "a.example") after the addresses.
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 12 + 12]);
        h.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
        h.extend_from_slice(&51000u16.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(&[0x02, 0x00, 0x09]);
        h.extend_from_slice(b"a.example");
        let total = h.len();
        h.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&h),
            Ok(Parsed::Header {
                len: total,
                source: Some(sa("192.0.2.1:51000")),
                destination: Some(sa("198.51.100.2:443")),
            })
        );
        for cut in 0..total {
            assert_eq!(parse(&h[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        // LOCAL: no address.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Header {
                len: 16,
                source: None,
                destination: None
            })
        );
    }

    #[test]
    fn v2_refusals() {
        let head = |vc: u8, fam: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(vc);
            h.push(fam);
            h.extend_from_slice(&len.to_be_bytes());
            h.extend(std::iter::repeat_n(0u8, usize::from(len)));
            h
        };
        assert!(parse(&head(0x11, 0x11, 12)).is_err(), "version 1");
        assert!(parse(&head(0x22, 0x11, 12)).is_err(), "command 2");
        assert!(parse(&head(0x21, 0x11, 4)).is_err(), "short IPv4");
        assert!(parse(&head(0x21, 0x21, 20)).is_err(), "short IPv6");
        assert!(parse(&head(0x21, 0x41, 12)).is_err(), "family 4");
        assert_eq!(parse(&head(0x21, 0x11, 2000)), Err(ProxyError::TooLarge));
    }

    #[test]
    fn encode_round_trips() {
        let cases = [
            (sa("203.0.113.7:40000"), sa("10.0.0.1:8080")),
            (sa("[2001:db8::7]:40000"), sa("[2001:db8::1]:443")),
            (sa("203.0.113.7:40000"), sa("[2001:db8::1]:443")),
            (sa("[::ffff:203.0.113.7]:1"), sa("[::ffff:10.0.0.1]:2")),
        ];
        for (s, d) in cases {
            for enc in [encode_v1(s, d), encode_v2(s, d)] {
                let Ok(Parsed::Header {
                    len,
                    source: Some(ps),
                    destination: Some(pd),
                }) = parse(&enc)
                else {
                    panic!("{s} {d}: {enc:?}");
                };
                assert_eq!(len, enc.len());
                let same = |a: SocketAddr, b: SocketAddr| {
                    a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
                };
                assert!(same(ps, s) && same(pd, d), "{s} {d} -> {ps} {pd}");
            }
        }
        assert_eq!(
            encode_v1(sa("1.2.3.4:5"), sa("6.7.8.9:10")),
            b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n"
        );
    }
}
