//! `ask` against hand-written services on std threads (raw bytes, so every
//! wrong answer can be made), under both io drivers; the request's bytes;
//! the decision cache with time passed in.

use super::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
use std::thread::JoinHandle;
use std::time::Instant;

use httparse::Header;

/// The io drivers the socket tests run under.
#[derive(Debug, Clone, Copy)]
enum Driver {
    Epoll,
    Uring,
}

const DRIVERS: [Driver; 2] = [Driver::Epoll, Driver::Uring];

/// Runs `ask` on a fresh monoio runtime with timers, as a worker would.
fn ask_on(driver: Driver, settings: &ExternalSettings, req: &AuthRequest<'_>) -> Decision {
    match driver {
        Driver::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(ask(settings, req)),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime")
            .block_on(ask(settings, req)),
    }
}

/// The settings of a service at `addr`: forwards `Authorization` and
/// `Cookie`, copies `X-User` and `X-Role`.
pub(super) fn settings(addr: SocketAddr, timeout: Duration) -> ExternalSettings {
    ExternalSettings {
        url: format!("http://{addr}/auth?v=1"),
        addr,
        authority: addr.to_string(),
        path: "/auth?v=1".into(),
        forward_headers: vec!["Authorization".into(), "Cookie".into()],
        copy_headers: vec!["X-User".into(), "X-Role".into()],
        timeout,
        fail_open: false,
        cache_ttl: Duration::from_secs(10),
    }
}

/// A client's request headers: the credential, and headers not forwarded.
pub(super) const HEADERS: &[Header<'static>] = &[
    Header {
        name: "Host",
        value: b"wsedge.example",
    },
    Header {
        name: "authorization",
        value: b"Bearer t0k3n",
    },
    Header {
        name: "Cookie",
        value: b"a=1",
    },
    Header {
        name: "X-Other",
        value: b"not forwarded",
    },
    Header {
        name: "COOKIE",
        value: b"b=2",
    },
    Header {
        name: "X-Forwarded-For",
        value: b"6.6.6.6",
    },
];

/// A request from `::ffff:10.0.0.7` (sent as `10.0.0.7`) with `headers`.
pub(super) fn request<'a>(headers: &'a [Header<'a>]) -> AuthRequest<'a> {
    AuthRequest {
        method: "GET",
        path: "/chat?room=1",
        client: "::ffff:10.0.0.7".parse().unwrap(),
        headers,
    }
}

/// How a test service answers its one connection.
enum Answer {
    /// These pieces, written one by one, then close.
    Pieces(Vec<Vec<u8>>),
    /// These bytes, then nothing until the client leaves.
    ThenHold(Vec<u8>),
}

/// A service on a std thread for one connection: reads the request head,
/// answers; the thread gives back the request head it read.
fn service(answer: Answer) -> (SocketAddr, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        let head = read_head(&mut s);
        match answer {
            Answer::Pieces(pieces) => {
                for piece in pieces {
                    if s.write_all(&piece).is_err() {
                        break;
                    }
                    // Not needed for correctness: makes it likely that
                    // each piece arrives in a read of its own.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Answer::ThenHold(bytes) => {
                let _ = s.write_all(&bytes);
                // Until the client closes (or the read timeout).
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
        }
        head
    });
    (addr, handle)
}

/// Reads a request head byte by byte; returns it as text.
fn read_head(s: &mut StdStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The values of header `name` in `head`, in order.
fn values<'h>(head: &'h str, name: &str) -> Vec<&'h str> {
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

fn once(bytes: &[u8]) -> Answer {
    Answer::Pieces(vec![bytes.to_vec()])
}

fn unavailable(d: &Decision) -> &str {
    match d {
        Decision::Unavailable(why) => why,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn allows_and_copies_the_named_headers() {
    for driver in DRIVERS {
        let (addr, got) = service(once(
            b"HTTP/1.1 200 OK\r\nX-User: ann\r\nX-Secret: s3\r\nx-role: admin\r\n\
              Content-Length: 5\r\n\r\nhello",
        ));
        let s = settings(addr, Duration::from_secs(5));
        let decision = ask_on(driver, &s, &request(HEADERS));
        assert_eq!(
            decision,
            Decision::Allow(vec![
                ("X-User".into(), b"ann".to_vec()),
                ("X-Role".into(), b"admin".to_vec()),
            ]),
            "{driver:?}"
        );

        let head = got.join().unwrap();
        assert!(head.starts_with("GET /auth?v=1 HTTP/1.1\r\n"), "{head}");
        assert_eq!(values(&head, "host"), [addr.to_string()]);
        assert_eq!(values(&head, "x-original-method"), ["GET"]);
        assert_eq!(values(&head, "x-original-uri"), ["/chat?room=1"]);
        assert_eq!(values(&head, "x-forwarded-for"), ["10.0.0.7"]);
        assert_eq!(values(&head, "authorization"), ["Bearer t0k3n"]);
        assert_eq!(values(&head, "cookie"), ["a=1", "b=2"]);
        assert_eq!(values(&head, "content-length"), ["0"]);
        assert_eq!(values(&head, "connection"), ["close"]);
        assert!(values(&head, "x-other").is_empty(), "{head}");
        // Host, Authorization, 2 Cookie, X-Original-*, XFF, CL, Connection.
        assert_eq!(
            head.lines().filter(|l| l.contains(':')).count(),
            9,
            "{head}"
        );
    }
}

#[test]
fn denies_with_401_and_403() {
    for driver in DRIVERS {
        for status in [401u16, 403] {
            let answer =
                format!("HTTP/1.1 {status} No\r\nX-User: ann\r\nContent-Length: 0\r\n\r\n");
            let (addr, got) = service(once(answer.as_bytes()));
            let s = settings(addr, Duration::from_secs(5));
            assert_eq!(
                ask_on(driver, &s, &request(HEADERS)),
                Decision::Deny(status)
            );
            got.join().unwrap();
        }
    }
}

#[test]
fn other_statuses_leave_it_unavailable() {
    for driver in DRIVERS {
        for (status, why) in [
            (500, "answered 500"),
            (404, "answered 404"),
            (302, "answered 302"),
        ] {
            let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            let (addr, got) = service(once(answer.as_bytes()));
            let s = settings(addr, Duration::from_secs(5));
            let d = ask_on(driver, &s, &request(HEADERS));
            assert_eq!(unavailable(&d), why, "{driver:?}");
            got.join().unwrap();
        }
    }
}

#[test]
fn a_silent_service_times_out() {
    for driver in DRIVERS {
        let (addr, got) = service(Answer::ThenHold(Vec::new()));
        let s = settings(addr, Duration::from_millis(200));
        let start = Instant::now();
        let d = ask_on(driver, &s, &request(HEADERS));
        let took = start.elapsed();
        assert_eq!(unavailable(&d), "timed out after 200ms reading the answer");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // The connection was closed: the service's read ends.
        got.join().unwrap();
    }
}

#[test]
fn half_an_answer_times_out_too() {
    for driver in DRIVERS {
        let (addr, got) = service(Answer::ThenHold(b"HTTP/1.1 200 OK\r\nX-User:".to_vec()));
        let s = settings(addr, Duration::from_millis(200));
        let d = ask_on(driver, &s, &request(HEADERS));
        assert!(
            unavailable(&d).starts_with("timed out after 200ms"),
            "{d:?}"
        );
        got.join().unwrap();
    }
}

#[test]
fn decides_at_the_head_without_waiting_for_the_body() {
    for driver in DRIVERS {
        // A body announced and never sent; the connection stays open.
        let (addr, got) = service(Answer::ThenHold(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-User: bob\r\n\r\npart".to_vec(),
        ));
        let s = settings(addr, Duration::from_secs(5));
        let start = Instant::now();
        let d = ask_on(driver, &s, &request(HEADERS));
        assert_eq!(d, Decision::Allow(vec![("X-User".into(), b"bob".to_vec())]));
        assert!(start.elapsed() < Duration::from_secs(4));
        got.join().unwrap();
    }
}

#[test]
fn a_closed_port_is_refused() {
    for driver in DRIVERS {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let s = settings(addr, Duration::from_secs(5));
        let d = ask_on(driver, &s, &request(HEADERS));
        assert_eq!(unavailable(&d), "connection refused", "{driver:?}");
    }
}

#[test]
fn garbage_and_silence_are_unavailable() {
    for driver in DRIVERS {
        let cases: &[(&[u8], &str)] = &[
            (b"SSH-2.0-OpenSSH_9.6\r\n", "malformed answer"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed answer"),
            (b"\x00\xff\x00\xff", "malformed answer"),
            (b"", "closed without answering"),
            (
                b"HTTP/1.1 200 OK\r\n",
                "closed before the end of the answer's head",
            ),
        ];
        for (answer, why) in cases {
            let (addr, got) = service(once(answer));
            let s = settings(addr, Duration::from_secs(5));
            let d = ask_on(driver, &s, &request(HEADERS));
            assert!(
                unavailable(&d).starts_with(why),
                "{driver:?} {answer:?}: {d:?}"
            );
            got.join().unwrap();
        }
    }
}

#[test]
fn an_answer_in_many_small_writes() {
    for driver in DRIVERS {
        let answer: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\
                              X-Role: ops\r\nX-User: cy\r\nX-Role: dev\r\n\r\n";
        let pieces = answer.chunks(3).map(<[u8]>::to_vec).collect();
        let (addr, got) = service(Answer::Pieces(pieces));
        let s = settings(addr, Duration::from_secs(5));
        let d = ask_on(driver, &s, &request(HEADERS));
        assert_eq!(
            d,
            Decision::Allow(vec![
                ("X-User".into(), b"cy".to_vec()),
                ("X-Role".into(), b"ops".to_vec()),
                ("X-Role".into(), b"dev".to_vec()),
            ])
        );
        got.join().unwrap();
    }
}

#[test]
fn an_unsafe_request_is_not_sent() {
    // Nothing listens: a request that is refused before connecting never
    // gets as far as "connection refused".
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let s = settings(addr, Duration::from_secs(1));
    let mut req = request(HEADERS);
    req.path = "/a\r\nX-Injected: 1";
    let d = ask_on(Driver::Epoll, &s, &req);
    assert_eq!(
        unavailable(&d),
        "not asked: the client's request target has control characters"
    );
}

mod request_bytes {
    use super::*;

    fn built(s: &ExternalSettings, req: &AuthRequest<'_>) -> String {
        String::from_utf8(request::build(s, req).unwrap()).unwrap()
    }

    fn any_addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn the_request_head_exactly() {
        let s = settings(any_addr(), Duration::from_secs(1));
        assert_eq!(
            built(&s, &request(HEADERS)),
            "GET /auth?v=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nX-Original-Method: GET\r\n\
             X-Original-URI: /chat?room=1\r\nX-Forwarded-For: 10.0.0.7\r\n\
             authorization: Bearer t0k3n\r\nCookie: a=1\r\nCOOKIE: b=2\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut req = request(&[]);
        req.client = "2001:db8::1".parse().unwrap();
        let head = built(&s, &req);
        assert!(
            head.contains("\r\nX-Forwarded-For: 2001:db8::1\r\n"),
            "{head}"
        );
    }

    #[test]
    fn own_repeated_and_unsafe_headers_are_not_forwarded() {
        let mut s = settings(any_addr(), Duration::from_secs(1));
        s.forward_headers = [
            "X-Key",
            "x-key",
            "Host",
            "Content-Length",
            "X-Forwarded-For",
            "bad name",
        ]
        .map(String::from)
        .to_vec();
        let headers = [
            Header {
                name: "X-Key",
                value: b"one",
            },
            Header {
                name: "X-Key",
                value: b"two\r\nX-Injected: 1",
            },
            Header {
                name: "X-Key",
                value: b"th\tree",
            },
            Header {
                name: "Host",
                value: b"client.example",
            },
            Header {
                name: "Content-Length",
                value: b"10",
            },
            Header {
                name: "bad name",
                value: b"x",
            },
        ];
        let head = built(&s, &request(&headers));
        assert_eq!(values(&head, "x-key"), ["one", "th\tree"]);
        assert_eq!(values(&head, "host"), ["127.0.0.1:9"]);
        assert_eq!(values(&head, "content-length"), ["0"]);
        assert!(
            !head.contains("Injected") && !head.contains("bad name"),
            "{head}"
        );
    }

    #[test]
    fn unsafe_parts_refuse_the_request() {
        let good = settings(any_addr(), Duration::from_secs(1));
        let mut s = good.clone();
        s.path = "/a b".into();
        assert_eq!(
            request::build(&s, &request(HEADERS)),
            Err("the service's path")
        );
        let mut s = good.clone();
        s.authority = "a\nb".into();
        assert_eq!(
            request::build(&s, &request(HEADERS)),
            Err("the service's authority")
        );
        let mut req = request(HEADERS);
        req.method = "GET /x";
        assert_eq!(request::build(&good, &req), Err("the client's method"));
        let mut req = request(HEADERS);
        req.path = "/\x7f";
        assert_eq!(
            request::build(&good, &req),
            Err("the client's request target")
        );
    }
}

mod caching {
    use super::*;

    fn any_settings() -> ExternalSettings {
        settings("127.0.0.1:9".parse().unwrap(), Duration::from_secs(1))
    }

    fn key_of(headers: &[Header<'_>]) -> [u8; 32] {
        DecisionCache::key(0, &any_settings(), &request(headers))
    }

    fn allow(user: &str) -> Decision {
        Decision::Allow(vec![("X-User".into(), user.as_bytes().to_vec())])
    }

    fn k(n: u8) -> [u8; 32] {
        [n; 32]
    }

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_hit_returns_the_decision() {
        let c = DecisionCache::new(8);
        let now = Instant::now();
        assert_eq!(c.get(&k(1), now), None);
        c.put(k(1), &allow("ann"), TTL, now);
        c.put(k(2), &Decision::Deny(403), TTL, now);
        assert_eq!(c.get(&k(1), now), Some(allow("ann")));
        assert_eq!(
            c.get(&k(2), now + Duration::from_secs(1)),
            Some(Decision::Deny(403))
        );
        assert_eq!(c.len(), 2);
        // Replaced, not added.
        c.put(k(1), &Decision::Deny(401), TTL, now);
        assert_eq!(c.get(&k(1), now), Some(Decision::Deny(401)));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let c = DecisionCache::new(8);
        let now = Instant::now();
        c.put(k(1), &allow("ann"), TTL, now);
        assert_eq!(
            c.get(&k(1), now + TTL - Duration::from_nanos(1)),
            Some(allow("ann"))
        );
        assert_eq!(c.get(&k(1), now + TTL), None);
        assert!(c.is_empty(), "an expired entry found is dropped");
        // An earlier `now` than the put's does not panic.
        c.put(k(2), &allow("bo"), TTL, now + TTL);
        assert_eq!(c.get(&k(2), now), Some(allow("bo")));
    }

    #[test]
    fn only_allow_and_deny_are_kept() {
        let c = DecisionCache::new(8);
        let now = Instant::now();
        c.put(
            k(1),
            &Decision::Unavailable("answered 500".into()),
            TTL,
            now,
        );
        c.put(k(2), &allow("ann"), Duration::ZERO, now);
        c.put(k(3), &allow("ann"), Duration::MAX, now);
        assert!(c.is_empty());
        assert_eq!(c.get(&k(1), now), None);
        let none = DecisionCache::new(0);
        none.put(k(1), &allow("ann"), TTL, now);
        assert!(none.is_empty());
    }

    #[test]
    fn capacity_evicts_expired_then_oldest() {
        let c = DecisionCache::new(3);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        c.put(k(1), &allow("1"), TTL, t0);
        c.put(k(2), &allow("2"), s, t0 + s);
        c.put(k(3), &allow("3"), TTL, t0 + 2 * s);
        // At t0+3s, k2 has expired: it goes, though k1 is older.
        c.put(k(4), &allow("4"), TTL, t0 + 3 * s);
        assert_eq!(c.len(), 3);
        let at = t0 + 3 * s;
        assert_eq!(c.get(&k(1), at), Some(allow("1")));
        assert_eq!(c.get(&k(2), at), None);
        // None expired: the oldest (k1) goes.
        c.put(k(5), &allow("5"), TTL, at);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&k(1), at), None);
        for n in 3..=5 {
            assert_eq!(c.get(&k(n), at), Some(allow(&n.to_string())));
        }
        // Many more: never above capacity.
        for n in 0..200u8 {
            c.put(k(n), &allow("x"), TTL, at);
            assert!(c.len() <= 3);
        }
    }

    #[test]
    fn keys_follow_scope_and_credential() {
        let s = any_settings();
        let req = request(HEADERS);
        let base = DecisionCache::key(0, &s, &req);
        assert_eq!(base, DecisionCache::key(0, &s, &req));
        assert_ne!(base, DecisionCache::key(1, &s, &req), "scopes never share");

        // Headers not forwarded, and the client's name case, do not count.
        let same = [
            Header {
                name: "AUTHORIZATION",
                value: b"Bearer t0k3n",
            },
            Header {
                name: "X-Other",
                value: b"something else",
            },
            Header {
                name: "cookie",
                value: b"a=1",
            },
            Header {
                name: "cookie",
                value: b"b=2",
            },
        ];
        assert_eq!(key_of(&same), base);
        // Another token, another key; cookies in another order too.
        let other = [
            Header {
                name: "Authorization",
                value: b"Bearer other",
            },
            Header {
                name: "Cookie",
                value: b"a=1",
            },
            Header {
                name: "Cookie",
                value: b"b=2",
            },
        ];
        assert_ne!(key_of(&other), base);
        let swapped = [same[0], same[3], same[2]];
        assert_ne!(key_of(&swapped), base);
        // The same value under another forwarded name is another credential.
        let as_auth = [Header {
            name: "Authorization",
            value: b"x",
        }];
        let as_cookie = [Header {
            name: "Cookie",
            value: b"x",
        }];
        assert_ne!(key_of(&as_auth), key_of(&as_cookie));
        assert_ne!(key_of(&[]), key_of(&as_auth));
    }

    #[test]
    fn an_ask_then_a_hit() {
        // The way the session uses both: ask once, then the cache answers.
        let (addr, got) = service(once(b"HTTP/1.1 200 OK\r\nX-User: ann\r\n\r\n"));
        let s = settings(addr, Duration::from_secs(5));
        let cache = DecisionCache::new(16);
        let req = request(HEADERS);
        let key = DecisionCache::key(3, &s, &req);
        let now = Instant::now();
        assert_eq!(cache.get(&key, now), None);
        let d = ask_on(Driver::Epoll, &s, &req);
        cache.put(key, &d, s.cache_ttl, now);
        got.join().unwrap();
        assert_eq!(
            cache.get(&key, now + Duration::from_secs(1)),
            Some(allow("ann"))
        );
    }
}
