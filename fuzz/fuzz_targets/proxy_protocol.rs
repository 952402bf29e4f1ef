//! The PROXY protocol parser (`wsedge::proto::proxy_protocol`): arbitrary
//! bytes are refused or parsed without a panic, a parsed header never
//! claims more bytes than it was given, and every prefix of a header is
//! `Incomplete` or the same verdict; headers the encoders write for
//! arbitrary addresses parse back to those addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use wsedge::proto::proxy_protocol::{Parsed, encode_v1, encode_v2, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Header { len, .. }) => {
            assert!(len <= data.len());
            // The header alone parses the same.
            assert_eq!(parse(&data[..len]), parse(data));
        }
        Ok(Parsed::Incomplete) | Err(_) => {}
    }
    // Round trip from addresses taken from the input.
    if data.len() >= 36 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&data[..16]);
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[16..32]);
        let v4 = data[32] & 1 == 0;
        let (sip, dip) = if v4 {
            (
                IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            )
        } else {
            (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))
        };
        let s = SocketAddr::new(sip, u16::from_be_bytes([data[33], data[34]]));
        let d = SocketAddr::new(dip, u16::from_be_bytes([data[34], data[35]]));
        for enc in [encode_v1(s, d), encode_v2(s, d)] {
            let Ok(Parsed::Header {
                len,
                source: Some(ps),
                destination: Some(pd),
            }) = parse(&enc)
            else {
                panic!("{s} {d} did not round-trip");
            };
            assert_eq!(len, enc.len());
            assert_eq!(ps.ip().to_canonical(), s.ip().to_canonical());
            assert_eq!(pd.ip().to_canonical(), d.ip().to_canonical());
            assert_eq!((ps.port(), pd.port()), (s.port(), d.port()));
        }
    }
});
