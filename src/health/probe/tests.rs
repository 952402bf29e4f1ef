//! The probe against hand-written servers on std threads (raw bytes, so
//! every wrong answer can be made), and its sans-IO parts byte by byte.

use super::*;
use crate::proto::handshake::accept_key_str;
use crate::proto::mask::apply_mask;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream as StdStream};
use std::time::Instant;

/// Runs `f` on a monoio epoll runtime with timers, as the health thread does.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A server on a std thread that handles one connection with `serve`.
fn server(serve: impl FnOnce(StdStream) + Send + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            serve(s);
        }
    });
    addr
}

/// Reads a request head; returns it as text.
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

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

fn switching(accept: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// Answers the upgrade with a correct 101; returns the request head.
fn upgrade(s: &mut StdStream) -> String {
    let head = read_head(s);
    let accept = accept_key_str(header(&head, "sec-websocket-key").as_bytes());
    s.write_all(switching(&accept).as_bytes()).unwrap();
    head
}

/// Reads one masked client frame: opcode and unmasked payload.
fn read_client_frame(s: &mut StdStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
    let len = (h[1] & 0x7f) as usize;
    assert!(len <= 125);
    let mut key = [0u8; 4];
    s.read_exact(&mut key).unwrap();
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    apply_mask(&mut payload, key, 0);
    (h[0] & 0x0f, payload)
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn target(addr: SocketAddr, kind: HealthKind, timeout_ms: u64) -> Target {
    Target {
        tls: None,
        addr,
        kind,
        path: "/health?x=1".into(),
        authority: "chat.internal:9001".into(),
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn nonces() -> Nonces {
    Nonces {
        key: *b"0123456789abcdef",
        ping: *b"pingpong",
        masks: [[1, 2, 3, 4], [5, 6, 7, 8]],
    }
}

fn probe(addr: SocketAddr, kind: HealthKind, timeout_ms: u64) -> Result<(), Failure> {
    block_on(check(&target(addr, kind, timeout_ms), &nonces()))
}

#[test]
fn good_upgrade_and_pong_pass() {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = server(move |mut s| {
        let head = upgrade(&mut s);
        let (op, ping) = read_client_frame(&mut s);
        // Data frames and an unrelated pong come first: skipped.
        s.write_all(&server_frame(0x1, b"welcome")).unwrap();
        s.write_all(&server_frame(0xA, b"other")).unwrap();
        s.write_all(&server_frame(0x2, &vec![7u8; 70_000])).unwrap();
        s.write_all(&server_frame(0xA, &ping)).unwrap();
        let close = read_client_frame(&mut s);
        tx.send((head, op, ping, close)).unwrap();
    });
    assert_eq!(probe(addr, HealthKind::WebSocket, 2_000), Ok(()));
    let (head, op, ping, close) = rx.recv().unwrap();
    assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(&head, "host"), "chat.internal:9001");
    assert_eq!(header(&head, "sec-websocket-version"), "13");
    assert_eq!(header(&head, "user-agent"), "wsedge-health");
    assert_eq!(
        header(&head, "sec-websocket-key").as_bytes(),
        key_from_nonce(b"0123456789abcdef")
    );
    assert_eq!((op, ping.as_slice()), (0x9, &b"pingpong"[..]));
    assert_eq!(close, (0x8, 1000u16.to_be_bytes().to_vec()));
}

#[test]
fn wrong_accept_key_fails() {
    let addr = server(|mut s| {
        read_head(&mut s);
        let wrong = accept_key_str(b"dGhlIHNhbXBsZSBub25jZQ==");
        s.write_all(switching(&wrong).as_bytes()).unwrap();
        let _ = s.read(&mut [0u8; 64]);
    });
    let r = probe(addr, HealthKind::WebSocket, 2_000);
    assert_eq!(r, Err(Failure::BadUpgrade(ResponseError::AcceptMismatch)));
    assert_eq!(r.unwrap_err().to_string(), "bad accept key in the 101");
}

#[test]
fn status_500_fails() {
    let addr = server(|mut s| {
        read_head(&mut s);
        s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno")
            .unwrap();
    });
    let r = probe(addr, HealthKind::WebSocket, 2_000);
    assert_eq!(r, Err(Failure::Status(500)));
    assert_eq!(r.unwrap_err().to_string(), "answered 500 to the upgrade");
}

#[test]
fn interim_answer_is_skipped() {
    let addr = server(|mut s| {
        let head = read_head(&mut s);
        let accept = accept_key_str(header(&head, "sec-websocket-key").as_bytes());
        // The 101 and the pong in one write, after a 103.
        let mut out = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n".to_vec();
        out.extend_from_slice(switching(&accept).as_bytes());
        out.extend_from_slice(&server_frame(0xA, b"pingpong"));
        s.write_all(&out).unwrap();
        let _ = read_client_frame(&mut s);
        let _ = read_client_frame(&mut s);
    });
    assert_eq!(probe(addr, HealthKind::WebSocket, 2_000), Ok(()));
}

#[test]
fn no_pong_fails_within_the_timeout() {
    let addr = server(|mut s| {
        upgrade(&mut s);
        // Reads (and ignores) the ping; never answers; holds on until the
        // probe goes.
        let mut sink = [0u8; 256];
        while s.read(&mut sink).unwrap_or(0) > 0 {}
    });
    let started = Instant::now();
    let r = probe(addr, HealthKind::WebSocket, 300);
    let took = started.elapsed();
    assert_eq!(r, Err(Failure::TimedOut(Step::AwaitingPong)));
    assert_eq!(r.unwrap_err().to_string(), "no pong within the timeout");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1_500),
        "{took:?}"
    );
}

#[test]
fn eof_fails() {
    let addr = server(|mut s| {
        upgrade(&mut s);
        let _ = read_client_frame(&mut s);
        // Dropped: end of stream instead of a pong.
    });
    assert_eq!(
        probe(addr, HealthKind::WebSocket, 2_000),
        Err(Failure::Closed(Step::AwaitingPong))
    );
    let addr = server(|mut s| {
        read_head(&mut s);
    });
    let r = probe(addr, HealthKind::WebSocket, 2_000);
    assert_eq!(r, Err(Failure::Closed(Step::Upgrading)));
    assert_eq!(
        r.unwrap_err().to_string(),
        "closed the connection while waiting for the answer to the upgrade"
    );
}

#[test]
fn close_instead_of_pong_fails() {
    let addr = server(|mut s| {
        upgrade(&mut s);
        let _ = read_client_frame(&mut s);
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        s.write_all(&server_frame(0x8, &payload)).unwrap();
        let _ = s.read(&mut [0u8; 64]);
    });
    assert_eq!(
        probe(addr, HealthKind::WebSocket, 2_000),
        Err(Failure::CloseFrame(Some(1001)))
    );
}

#[test]
fn refused_and_tcp() {
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    for kind in [HealthKind::Tcp, HealthKind::WebSocket] {
        let r = probe(addr, kind, 1_000);
        assert_eq!(r, Err(Failure::Refused));
        assert_eq!(r.unwrap_err().to_string(), "connection refused");
    }
    // A tcp check passes on a connect, whatever the server then does.
    let addr = server(|mut s| {
        let _ = s.read(&mut [0u8; 64]);
    });
    assert_eq!(probe(addr, HealthKind::Tcp, 1_000), Ok(()));
}

#[test]
fn silent_server_times_out_upgrading() {
    let addr = server(|mut s| {
        let mut sink = [0u8; 256];
        while s.read(&mut sink).unwrap_or(0) > 0 {}
    });
    assert_eq!(
        probe(addr, HealthKind::WebSocket, 200),
        Err(Failure::TimedOut(Step::Upgrading))
    );
}

#[test]
fn our_request_is_a_valid_upgrade() {
    let key = key_from_nonce(&[9; 16]);
    let req = upgrade_request("/h", "[::1]:80", &key);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let (parsed, len) = parse_request(&req, &mut headers, &Limits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(len, req.len());
    assert_eq!(parsed.key().as_bytes(), key);
    assert_eq!(parsed.host(), "[::1]:80");
}

#[test]
fn pong_wait_byte_by_byte() {
    let mut stream = server_frame(0x1, &[b'x'; 300]);
    stream.extend(server_frame(0x9, b"theirs"));
    stream.extend(server_frame(0xA, b"pingpong"));
    let mut wait = PongWait::new(*b"pingpong");
    let mut pending = Vec::new();
    let mut done_at = None;
    for (i, &b) in stream.iter().enumerate() {
        pending.push(b);
        let (used, pong) = wait.feed(&pending).unwrap();
        pending.drain(..used);
        if pong {
            done_at = Some(i);
            break;
        }
    }
    assert_eq!(done_at, Some(stream.len() - 1), "the pong's last byte");
    assert!(pending.is_empty());
}

#[test]
fn pong_wait_refuses_masked_and_bad_close() {
    let mut masked = server_frame(0xA, b"");
    masked[1] |= 0x80;
    masked.extend_from_slice(&[0; 4]);
    assert!(matches!(
        PongWait::new([0; 8]).feed(&masked),
        Err(Failure::BadFrame(_))
    ));
    assert_eq!(
        PongWait::new([0; 8]).feed(&server_frame(0x8, b"")),
        Err(Failure::CloseFrame(None))
    );
    assert!(matches!(
        PongWait::new([0; 8]).feed(&server_frame(0x8, &[3])),
        Err(Failure::BadFrame(_))
    ));
}
