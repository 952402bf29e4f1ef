//! Who the client is when wsedge sits behind other proxies
//! (`trusted_proxies`): the client's `X-Forwarded-For` is believed only
//! when the connection comes from a trusted proxy, and then only up to the
//! rightmost address that is not itself a trusted proxy (what nginx's
//! `real_ip_recursive on` does). From anyone else the header is a claim the
//! client made up: it is replaced, never appended to.

use std::net::IpAddr;

use httparse::Header;

use super::cidr::CidrList;
use crate::proto::token::{header_values, trim_ows};

/// The client's address as wsedge believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client: the peer, or the address a trusted proxy vouches for.
    pub ip: IpAddr,
    /// The peer is a trusted proxy: its `X-Forwarded-For` is kept and the
    /// peer appended (otherwise the header sent on is the peer alone).
    pub via_trusted: bool,
}

/// The client's address for a connection from `peer` (the socket's peer,
/// or the source of a PROXY protocol header) whose request carries
/// `headers`.
pub fn client_addr(peer: IpAddr, trusted: &CidrList, headers: &[Header<'_>]) -> ClientAddr {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return ClientAddr {
            ip: peer,
            via_trusted: false,
        };
    }
    // Right to left over every X-Forwarded-For line, as one list.
    let mut lines: Vec<&[u8]> = header_values(headers, "x-forwarded-for").collect();
    lines.reverse();
    let mut client = peer;
    for line in lines {
        for entry in line.rsplit(|&b| b == b',') {
            let entry = trim_ows(entry);
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                // Garbage: nothing left of it can be believed.
                return ClientAddr {
                    ip: client,
                    via_trusted: true,
                };
            };
            client = ip;
            if !trusted.contains(ip) {
                return ClientAddr {
                    ip,
                    via_trusted: true,
                };
            }
        }
    }
    ClientAddr {
        ip: client,
        via_trusted: true,
    }
}

/// One `X-Forwarded-For` entry: an address, with a port or brackets as
/// some proxies write them (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff<'a>(values: &[&'a str]) -> Vec<Header<'a>> {
        values
            .iter()
            .map(|v| Header {
                name: "X-Forwarded-For",
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = CidrList::parse(&["10.0.0.0/8"]).unwrap();
        let got = client_addr(ip("203.0.113.9"), &trusted, &xff(&["1.2.3.4"]));
        assert_eq!(
            got,
            ClientAddr {
                ip: ip("203.0.113.9"),
                via_trusted: false
            }
        );
        let none = CidrList::default();
        let got = client_addr(ip("10.0.0.1"), &none, &xff(&["1.2.3.4"]));
        assert_eq!(got.ip, ip("10.0.0.1"));
        assert!(!got.via_trusted);
    }

    #[test]
    fn the_rightmost_untrusted_address_wins() {
        let trusted = CidrList::parse(&["10.0.0.0/8", "2001:db8::/32"]).unwrap();
        // A forged leftmost entry, the real client, then two of our proxies.
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        let got = client_addr(ip("10.2.2.2"), &trusted, &h);
        assert_eq!(
            got,
            ClientAddr {
                ip: ip("198.51.100.7"),
                via_trusted: true
            }
        );
        // Ports and brackets, IPv6.
        let h = xff(&["[2001:db9::5]:443, 10.0.0.3:80"]);
        assert_eq!(
            client_addr(ip("2001:db8::1"), &trusted, &h).ip,
            ip("2001:db9::5")
        );
        // All trusted: the leftmost.
        let h = xff(&["10.9.9.9, 10.8.8.8"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &trusted, &h).ip, ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(
            client_addr(ip("10.0.0.1"), &trusted, &[]).ip,
            ip("10.0.0.1")
        );
        // Garbage stops the walk at the last address believed.
        let h = xff(&["6.6.6.6, junk, 10.3.3.3"]);
        assert_eq!(client_addr(ip("10.0.0.1"), &trusted, &h).ip, ip("10.3.3.3"));
        // A mapped peer is its IPv4 self.
        let got = client_addr(ip("::ffff:10.0.0.1"), &trusted, &xff(&["192.0.2.4"]));
        assert_eq!(got.ip, ip("192.0.2.4"));
    }
}
