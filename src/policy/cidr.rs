//! CIDR blocks and lists of them (`allow`, `deny`, `trusted_proxies`).
//!
//! IPv4 and IPv6 both; an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what
//! a dual-stack socket reports) matches the IPv4 blocks.

use std::fmt;
use std::net::IpAddr;

/// One block: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address as 128 bits (IPv4 in the low 32), masked.
    bits: u128,
    /// Prefix length in bits of its own family (0–32 or 0–128).
    len: u8,
    v4: bool,
}

impl Cidr {
    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"`, or a lone address (a /32
    /// or /128). Bits set past the prefix are an error (`10.0.0.1/8` is
    /// most likely a typo for something else).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let ip: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let ip = ip.to_canonical();
        let (bits, max, v4) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u8, true),
            IpAddr::V6(a) => (u128::from(a), 128u8, false),
        };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0–{max}"))?,
        };
        let cidr = Cidr { bits, len, v4 };
        if cidr.bits & !cidr.mask() != 0 {
            return Err(format!(
                "{s:?} has bits set past its /{len} prefix (did you mean {}?)",
                Cidr {
                    bits: bits & cidr.mask(),
                    ..cidr
                }
            ));
        }
        Ok(cidr)
    }

    fn mask(&self) -> u128 {
        let (width, all) = if self.v4 {
            (32, u128::from(u32::MAX))
        } else {
            (128, u128::MAX)
        };
        let host_bits = width - u32::from(self.len);
        if host_bits >= 128 {
            0
        } else {
            all & !((1u128 << host_bits) - 1)
        }
    }

    /// Whether `ip` is in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) if self.v4 => u128::from(u32::from(a)) & self.mask() == self.bits,
            IpAddr::V6(a) if !self.v4 => u128::from(a) & self.mask() == self.bits,
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            write!(
                f,
                "{}/{}",
                std::net::Ipv4Addr::from(self.bits as u32),
                self.len
            )
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(self.bits), self.len)
        }
    }
}

/// A list of blocks; empty matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(Vec<Cidr>);

impl CidrList {
    /// Parses every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<CidrList, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(CidrList)
    }

    /// Whether any block holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// No blocks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An `allow` / `deny` pair: denied when in `deny`, or when `allow` is not
/// empty and the address is not in it (a deny entry wins over an allow
/// entry, as in nginx's usual ordering of specific denies first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    /// Only these may connect (empty: everyone not denied).
    pub allow: CidrList,
    /// These may not.
    pub deny: CidrList,
}

impl Acl {
    /// Whether `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// No entries: everyone may connect.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_match_their_addresses_only() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::a00:1")));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let all4 = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all4.contains(ip("255.255.255.255")));
        assert!(!all4.contains(ip("::1")));
        let all6 = Cidr::parse("::/0").unwrap();
        assert!(all6.contains(ip("::1")));
        let odd = Cidr::parse("172.16.0.0/12").unwrap();
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.0")));
        let v6_65 = Cidr::parse("2001:db8::8000:0:0:0/65").unwrap();
        assert!(v6_65.contains(ip("2001:db8::ffff:0:0:1")));
        assert!(!v6_65.contains(ip("2001:db8::7fff:0:0:1")));
    }

    #[test]
    fn bad_blocks_say_why() {
        assert!(
            Cidr::parse("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::/129").is_err());
        assert!(Cidr::parse("example.com").is_err());
        assert!(Cidr::parse("10.0.0.0/x").is_err());
        assert_eq!(
            Cidr::parse("::ffff:10.0.0.0/8").map(|c| c.to_string()),
            Ok("10.0.0.0/8".into()),
            "a mapped address is its IPv4 self"
        );
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl {
            allow: CidrList::parse(&["10.0.0.0/8"]).unwrap(),
            deny: CidrList::parse(&["10.6.6.0/24"]).unwrap(),
        };
        assert!(acl.permits(ip("10.1.1.1")));
        assert!(!acl.permits(ip("10.6.6.6")));
        assert!(!acl.permits(ip("192.0.2.1")));
        assert!(Acl::default().permits(ip("192.0.2.1")));
    }
}
