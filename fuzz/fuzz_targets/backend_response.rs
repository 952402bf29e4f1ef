//! `parse_response` on arbitrary bytes, against a fixed request (RFC 6455's
//! sample key; subprotocols `chat, superchat`; extensions
//! `permessage-deflate` and `x-webkit-deflate-frame`): never panics, the head
//! length is exact, growing prefixes answer "need more" until the answer,
//! an accepted 101 only picks what was offered, and the 101 the proxy then
//! writes to its client (`build_switching_response`) passes the same checks.
//!
//! Input: `[config] [steps] [response...]`.
//! - config bit 0: extensions forwarded; bits 1-2: `max_head_bytes` from
//!   `HEAD`; bits 3-4: `max_headers` from `COUNT`.
//! - steps: how many growing prefixes to try (1-4) and a short prefix length.
#![no_main]

#[path = "common/heads.rs"]
mod heads;

use std::sync::OnceLock;

use httparse::{EMPTY_HEADER, Header};
use libfuzzer_sys::fuzz_target;
use wsedge::proto::handshake::{
    BackendResponse, Expect, Limits, ResponseError, UpgradeRequest, accept_key,
    build_switching_response, parse_request, parse_response,
};
use wsedge::proto::token::{element_name, tokens};

const HEAD: [usize; 4] = [16 * 1024, 512, 128, 40];
const COUNT: [usize; 4] = [64, 8, 2, 0];
const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-webkit-deflate-frame\r\n\
\r\n";

fn request() -> &'static UpgradeRequest<'static, 'static> {
    static REQ: OnceLock<UpgradeRequest<'static, 'static>> = OnceLock::new();
    REQ.get_or_init(|| {
        let storage: &'static mut [Header<'static>; 16] = Box::leak(Box::new([EMPTY_HEADER; 16]));
        parse_request(REQUEST, storage, &Limits::default())
            .unwrap()
            .unwrap()
            .0
    })
}

/// An answer, owned, so answers from different buffers compare.
#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Upgraded {
        protocol: Option<String>,
        extensions: Option<Vec<u8>>,
    },
    Interim(u16),
    Other(u16),
}

type Answer = Result<Option<(Owned, usize)>, ResponseError>;

fn parse(buf: &[u8], limits: &Limits, expect: &Expect<'_>) -> Answer {
    let mut storage = [EMPTY_HEADER; 64];
    let answer = parse_response(buf, &mut storage, limits, expect)?;
    Ok(answer.map(|(resp, len)| {
        assert!(
            len <= buf.len(),
            "head length {len} beyond the {} bytes given",
            buf.len()
        );
        assert!(len <= limits.max_head_bytes);
        assert!(buf[..len].ends_with(b"\n"));
        let owned = match resp {
            BackendResponse::Upgraded {
                protocol,
                extensions,
            } => {
                if let Some(p) = protocol {
                    assert!(p == "chat" || p == "superchat", "chose {p:?}");
                }
                if let Some(e) = extensions {
                    assert!(
                        expect.forward_extensions,
                        "extension chosen though none forwarded"
                    );
                    for chosen in tokens(e) {
                        let name = element_name(chosen);
                        assert!(
                            name.eq_ignore_ascii_case(b"permessage-deflate")
                                || name.eq_ignore_ascii_case(b"x-webkit-deflate-frame"),
                            "chose {:?}",
                            String::from_utf8_lossy(name)
                        );
                    }
                }
                Owned::Upgraded {
                    protocol: protocol.map(str::to_owned),
                    extensions: extensions.map(<[u8]>::to_vec),
                }
            }
            BackendResponse::Interim { status } => {
                assert!((100..=199).contains(&status) && status != 101);
                Owned::Interim(status)
            }
            BackendResponse::Other { status } => {
                assert!(!(100..=199).contains(&status));
                Owned::Other(status)
            }
        };
        (owned, len)
    }))
}

fuzz_target!(|data: &[u8]| {
    let [config, steps, head @ ..] = data else {
        return;
    };
    let expect = Expect {
        accept: accept_key(KEY),
        request: request(),
        forward_extensions: config & 1 != 0,
        protocols: None,
    };
    let limits = Limits {
        max_head_bytes: HEAD[((config >> 1) & 3) as usize],
        max_headers: COUNT[((config >> 3) & 3) as usize],
    };

    let full = parse(head, &limits, &expect);
    if let Err(e) = &full {
        assert_eq!(e.status(), 502);
        let _ = e.response();
    }

    heads::check_prefixes(
        head,
        limits.max_head_bytes,
        *steps,
        &full,
        |a| a.1,
        |b| parse(b, &limits, &expect),
    );

    // The 101 the proxy forwards to its client passes the checks it made.
    if let Ok(Some((
        Owned::Upgraded {
            protocol,
            extensions,
        },
        _,
    ))) = &full
    {
        let out =
            build_switching_response(&expect.accept, protocol.as_deref(), extensions.as_deref());
        let big = Limits {
            max_head_bytes: 1 << 20,
            max_headers: 64,
        };
        let again = parse(&out, &big, &expect);
        assert_eq!(
            again,
            Ok(Some((
                Owned::Upgraded {
                    protocol: protocol.clone(),
                    extensions: extensions.clone()
                },
                out.len()
            ))),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
});
