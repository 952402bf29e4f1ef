//! The relay core driven deterministically through the in-memory harness
//! (`wsedge::relay::harness::Pair`): both legs as byte pipes with chosen
//! read sizes and write room, a fake clock. No sockets and no sleeps, so
//! the edge cases (mid-frame closes, split points, close ordering, timers)
//! are reached exactly, every time. Frames are hand-written bytes
//! (`common::frame`), checked with the harness's independent parser.

#[allow(unused_macros)]
mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{Frame, client_frame, close_payload, frame, op, parse_frame};
use wsedge::proto::close::CloseCode;
use wsedge::relay::closing::TcpAction;
use wsedge::relay::harness::Pair;
use wsedge::relay::limit::{Gcra, OnLimit, Policy, RateLimit};
use wsedge::relay::{Ending, Leg, RelayConfig};

fn cfg() -> RelayConfig {
    RelayConfig {
        frames: true,
        max_message_size: 1 << 20,
        validate_utf8: true,
        compressed: false,
        close_timeout: Duration::from_secs(5),
        idle_timeout: Duration::ZERO,
        ping_interval: Duration::ZERO,
        pong_timeout: Duration::from_secs(10),
    }
}

fn pair() -> Pair {
    Pair::new(&cfg(), 4096)
}

/// Every whole frame in `bytes` (panics on a partial one at the end).
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let (f, n) = parse_frame(&bytes[pos..]).expect("whole frames only");
        out.push(f);
        pos += n;
    }
    out
}

fn close_code_of(f: &Frame) -> Option<u16> {
    f.close_code()
}

#[test]
fn frames_pass_both_ways_remasked_toward_the_backend() {
    let mut p = pair();
    p.send(Leg::Client, &client_frame(true, op::TEXT, b"hello"));
    p.send(Leg::Backend, &frame(true, op::BINARY, b"\x01\x02", None));
    p.run();
    let up = p.take_written(Leg::Backend);
    let f = frames(&up);
    assert_eq!(f.len(), 1);
    assert!(f[0].masked);
    assert_eq!(f[0].payload, b"hello");
    // A fresh key, not the client's.
    assert_ne!(&up[2..6], &common::MASK);
    assert_eq!(
        p.take_written(Leg::Client),
        frame(true, op::BINARY, b"\x01\x02", None)
    );
    let s = p.core.stats(Leg::Client);
    assert_eq!((s.bytes, s.messages), (11, 1));
}

/// A stream mixing fragments, control frames and sizes around 125/126.
fn mixed_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(client_frame(false, op::TEXT, "héllo ".as_bytes()));
    s.extend(client_frame(true, op::PING, b"ping!"));
    s.extend(client_frame(true, op::CONT, "wörld".as_bytes()));
    s.extend(client_frame(true, op::BINARY, &[7u8; 126]));
    s.extend(client_frame(true, op::BINARY, &[]));
    s.extend(client_frame(true, op::PONG, b""));
    s.extend(client_frame(true, op::TEXT, &[b'x'; 300]));
    s.extend(client_frame(true, op::CLOSE, &close_payload(1000, "bye")));
    s
}

fn relay_in_reads(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<Ending>) {
    let mut p = pair();
    let mut last = 0;
    for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
        p.leg(Leg::Client).read_sizes.push_back(c - last);
        last = c;
    }
    p.send(Leg::Client, stream);
    p.run();
    (p.take_written(Leg::Backend), p.core.outcome().ending.into())
}

#[test]
fn every_split_point_gives_the_same_output() {
    let stream = mixed_stream();
    let (whole, ending) = relay_in_reads(&stream, &[]);
    let f = frames(&whole);
    assert_eq!(f.len(), 8);
    assert_eq!(f[0].payload, "héllo ".as_bytes());
    assert_eq!(f[7].close_code(), Some(1000));
    assert_eq!(
        ending,
        Some(Ending::Closed {
            by: Leg::Client,
            code: Some(1000)
        })
    );
    for a in 0..=stream.len() {
        assert_eq!(relay_in_reads(&stream, &[a]).0, whole, "split at {a}");
    }
    // Three reads: every pair of cut points over the first 60 bytes (the
    // headers and the small frames), every 7th further on.
    for a in 0..stream.len() {
        for b in (a + 1..stream.len()).filter(|b| *b < 60 || b % 7 == 0) {
            assert_eq!(relay_in_reads(&stream, &[a, b]).0, whole, "cuts {a} {b}");
        }
    }
}

#[test]
fn one_byte_reads_give_the_same_output() {
    let stream = mixed_stream();
    let cuts: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(
        relay_in_reads(&stream, &cuts).0,
        relay_in_reads(&stream, &[]).0
    );
}

#[test]
fn close_handshake_relayed_and_finished() {
    let mut p = pair();
    p.send(
        Leg::Client,
        &client_frame(true, op::CLOSE, &close_payload(1000, "")),
    );
    p.run();
    let f = frames(&p.take_written(Leg::Backend));
    assert_eq!(close_code_of(&f[0]), Some(1000));
    assert!(p.outcome().is_none(), "waits for the backend's reply");
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1000, ""), None),
    );
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Client))[0].close_code(),
        Some(1000)
    );
    assert_eq!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Closed {
            by: Leg::Client,
            code: Some(1000)
        })
    );
}

#[test]
fn both_sides_closing_at_once() {
    let mut p = pair();
    p.send(
        Leg::Client,
        &client_frame(true, op::CLOSE, &close_payload(1000, "c")),
    );
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, "b"), None),
    );
    p.run();
    let to_backend = frames(&p.take_written(Leg::Backend));
    let to_client = frames(&p.take_written(Leg::Client));
    assert_eq!(to_backend.len(), 1);
    assert_eq!(to_client.len(), 1);
    assert_eq!(to_backend[0].close_code(), Some(1000));
    assert_eq!(to_client[0].close_code(), Some(1001));
    assert!(matches!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Closed { .. })
    ));
}

#[test]
fn client_protocol_error_close_held_until_backend_answers() {
    let mut p = pair();
    // A valid message, then an unmasked frame (1002).
    p.send(Leg::Client, &client_frame(true, op::TEXT, b"last"));
    p.send(Leg::Client, &frame(true, op::TEXT, b"bad", None));
    p.run();
    let up = frames(&p.take_written(Leg::Backend));
    assert_eq!(up[0].payload, b"last");
    assert_eq!(up[1].close_code(), Some(1001));
    // Nothing to the client yet: its close is held.
    assert!(p.take_written(Leg::Client).is_empty());
    // The backend's echo of "last", then its close reply.
    p.send(Leg::Backend, &frame(true, op::TEXT, b"last", None));
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down[0].payload, b"last", "the echo first");
    assert_eq!(
        down[1].close_code(),
        Some(1002),
        "then the client's own code"
    );
    assert_eq!(down.len(), 2, "the backend's 1001 is not for the client");
}

#[test]
fn client_protocol_error_close_released_by_close_timeout() {
    let mut p = pair();
    p.send(Leg::Client, &frame(true, op::TEXT, b"bad", None));
    p.run();
    assert!(p.take_written(Leg::Client).is_empty());
    p.advance(Duration::from_secs(5));
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down[0].close_code(), Some(1002));
    assert!(p.outcome().is_none(), "then another close timeout");
    p.advance(Duration::from_secs(5));
    assert_eq!(p.outcome().map(|o| o.ending), Some(Ending::CloseTimeout));
}

#[test]
fn backend_vanishing_while_client_is_mid_frame_ends_the_client_tcp() {
    let mut p = pair();
    // Half of a 1000-byte frame toward the client...
    let big = frame(true, op::BINARY, &[5u8; 1000], None);
    p.send(Leg::Backend, &big[..500]);
    p.run();
    assert_eq!(p.take_written(Leg::Client), big[..500]);
    // ...then the backend's TCP ends: no close frame can go out cleanly.
    p.end(Leg::Backend, Some(ErrorKind::ConnectionReset));
    p.run();
    assert!(p.take_written(Leg::Client).is_empty());
    assert_eq!(p.leg(Leg::Client).tcp, vec![TcpAction::ShutdownWrite]);
    assert_eq!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Vanished(
            Leg::Backend,
            Some(ErrorKind::ConnectionReset)
        ))
    );
}

#[test]
fn close_owed_mid_frame_waits_for_nothing_and_cuts_tcp() {
    let mut p = pair();
    let big = client_frame(true, op::BINARY, &[9u8; 3000]);
    p.send(Leg::Client, &big[..100]);
    p.run();
    p.close(
        Ending::Shutdown,
        CloseCode::GOING_AWAY,
        "server shutting down",
    );
    // The backend is mid-frame: its TCP is half-closed instead.
    assert_eq!(p.leg(Leg::Backend).tcp, vec![TcpAction::ShutdownWrite]);
    // The client is not: it gets a close frame.
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down[0].close_code(), Some(1001));
}

#[test]
fn close_frame_waits_for_the_frame_in_flight() {
    // The backend is given a frame in two writes (little write room); a
    // close owed meanwhile goes out only after the whole frame.
    let mut p = pair();
    p.leg(Leg::Backend).write_room = Some(10);
    p.send(Leg::Client, &client_frame(true, op::BINARY, &[1u8; 50]));
    p.run();
    p.close(Ending::Shutdown, CloseCode::GOING_AWAY, "bye");
    p.leg(Leg::Backend).write_room = None;
    p.run();
    let up = frames(&p.take_written(Leg::Backend));
    assert_eq!(up.len(), 2);
    assert_eq!(up[0].payload, vec![1u8; 50]);
    assert_eq!(up[1].close_code(), Some(1001));
}

#[test]
fn client_vanishing_mid_message_gets_backend_1001() {
    let mut p = pair();
    p.send(Leg::Client, &client_frame(false, op::TEXT, b"part"));
    p.end(Leg::Client, None);
    p.run();
    let up = frames(&p.take_written(Leg::Backend));
    assert_eq!(up.last().unwrap().close_code(), Some(1001));
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    assert_eq!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Vanished(Leg::Client, None))
    );
}

#[test]
fn utf8_split_across_fragments_and_reads() {
    let text = "añ€😀".as_bytes();
    let mut s = Vec::new();
    for chunk in text.chunks(3) {
        s.extend(client_frame(false, op::CONT, chunk));
    }
    s[0] = op::TEXT; // the first frame opens the message (FIN clear)
    s.extend(client_frame(true, op::CONT, b""));
    for cut in 0..s.len() {
        let (out, _) = relay_in_reads(&s, &[cut]);
        let payload: Vec<u8> = frames(&out).into_iter().flat_map(|f| f.payload).collect();
        assert_eq!(payload, text, "cut {cut}");
    }
}

#[test]
fn invalid_utf8_across_fragments_is_1007() {
    let mut p = pair();
    p.send(Leg::Client, &client_frame(false, op::TEXT, &[0xe2, 0x82]));
    p.send(Leg::Client, &client_frame(true, op::CONT, &[0x28]));
    p.run();
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down.last().unwrap().close_code(), Some(1007));
}

#[test]
fn oversized_message_is_1009_before_its_payload() {
    let mut c = cfg();
    c.max_message_size = 100;
    let mut p = Pair::new(&c, 4096);
    let f = client_frame(true, op::BINARY, &[0u8; 101]);
    p.send(Leg::Client, &f[..8]); // the header alone is enough
    p.run();
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Client))[0].close_code(),
        Some(1009)
    );
}

#[test]
fn backpressure_one_buffer_in_flight() {
    let mut p = Pair::new(&cfg(), 1024);
    p.leg(Leg::Backend).write_room = Some(0);
    let f = client_frame(true, op::BINARY, &vec![3u8; 10_000]);
    p.send(Leg::Client, &f);
    p.run();
    // One buffer read and held; the rest stays with the client.
    assert_eq!(p.leg(Leg::Client).incoming.len(), f.len() - 1024);
    p.leg(Leg::Backend).write_room = None;
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Backend))[0].payload.len(),
        10_000
    );
}

#[test]
fn idle_timeout_fires_at_last_activity_plus_idle() {
    let mut c = cfg();
    c.idle_timeout = Duration::from_secs(10);
    let mut p = Pair::new(&c, 4096);
    p.advance(Duration::from_secs(6));
    p.send(Leg::Client, &client_frame(true, op::TEXT, b"hi"));
    p.run();
    p.take_written(Leg::Backend);
    // 15.999 s after the start, 9.999 s after the activity: nothing yet.
    p.advance(Duration::from_millis(9_999));
    assert!(p.take_written(Leg::Client).is_empty());
    assert!(p.take_written(Leg::Backend).is_empty());
    // At 16 s: activity + idle.
    p.advance(Duration::from_millis(1));
    assert_eq!(
        frames(&p.take_written(Leg::Client))[0].close_code(),
        Some(1001)
    );
    assert_eq!(
        frames(&p.take_written(Leg::Backend))[0].close_code(),
        Some(1001)
    );
}

#[test]
fn unanswered_close_times_out() {
    let mut p = pair();
    p.send(
        Leg::Client,
        &client_frame(true, op::CLOSE, &close_payload(1000, "")),
    );
    p.run();
    p.advance(Duration::from_millis(4_999));
    assert!(p.outcome().is_none());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.outcome().map(|o| o.ending), Some(Ending::CloseTimeout));
}

fn keepalive() -> Pair {
    let mut c = cfg();
    c.ping_interval = Duration::from_secs(30);
    c.pong_timeout = Duration::from_secs(10);
    Pair::new(&c, 4096)
}

#[test]
fn silent_leg_is_pinged_and_its_pong_consumed() {
    let mut p = keepalive();
    p.advance(Duration::from_secs(30));
    let ping = frames(&p.take_written(Leg::Client));
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0].opcode, op::PING);
    assert!(!ping[0].masked, "to a client: unmasked");
    assert_eq!(ping[0].payload.len(), 8);
    let to_backend = frames(&p.take_written(Leg::Backend));
    assert_eq!(to_backend[0].opcode, op::PING);
    assert!(to_backend[0].masked, "to a backend: masked");
    // The client answers after 40 ms; the backend does too.
    p.advance(Duration::from_millis(40));
    p.send(Leg::Client, &client_frame(true, op::PONG, &ping[0].payload));
    p.send(
        Leg::Backend,
        &frame(true, op::PONG, &to_backend[0].payload, None),
    );
    p.run();
    // Consumed: neither side sees the other's answer.
    assert!(p.take_written(Leg::Backend).is_empty());
    assert!(p.take_written(Leg::Client).is_empty());
    assert_eq!(
        p.core.ping_rtt(Leg::Client),
        Some(Duration::from_millis(40))
    );
    // Well past the pong timeout: still open, pinged again later.
    p.advance(Duration::from_secs(29));
    assert!(p.outcome().is_none());
    assert!(p.take_written(Leg::Client).is_empty());
    p.advance(Duration::from_secs(2));
    assert_eq!(frames(&p.take_written(Leg::Client))[0].opcode, op::PING);
}

#[test]
fn a_pong_with_another_payload_is_relayed() {
    let mut p = keepalive();
    p.advance(Duration::from_secs(30));
    p.take_written(Leg::Client);
    p.send(Leg::Client, &client_frame(true, op::PONG, b"12345678"));
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Backend))
            .last()
            .unwrap()
            .payload,
        b"12345678"
    );
}

#[test]
fn dead_client_dropped_backend_gets_1001() {
    let mut p = keepalive();
    // The backend keeps talking; the client hears but never answers.
    p.advance(Duration::from_secs(30));
    let ping = frames(&p.take_written(Leg::Backend));
    p.send(Leg::Backend, &frame(true, op::PONG, &ping[0].payload, None));
    p.advance(Duration::from_millis(9_999));
    assert!(p.leg(Leg::Client).tcp.is_empty());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.leg(Leg::Client).tcp, vec![TcpAction::Drop]);
    let up = frames(&p.take_written(Leg::Backend));
    assert_eq!(up.last().unwrap().close_code(), Some(1001));
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    assert_eq!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Dead(Leg::Client))
    );
}

#[test]
fn dead_backend_dropped_client_gets_1011() {
    let mut p = keepalive();
    p.advance(Duration::from_secs(30));
    let ping = frames(&p.take_written(Leg::Client));
    p.send(Leg::Client, &client_frame(true, op::PONG, &ping[0].payload));
    p.advance(Duration::from_secs(10));
    assert_eq!(p.leg(Leg::Backend).tcp, vec![TcpAction::Drop]);
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down.last().unwrap().close_code(), Some(1011));
}

#[test]
fn a_dead_peer_that_stopped_reading_is_dropped_too() {
    // The client neither reads nor answers: the ping cannot even be written.
    let mut p = keepalive();
    p.leg(Leg::Client).write_room = Some(0);
    p.advance(Duration::from_secs(40));
    assert_eq!(p.leg(Leg::Client).tcp, vec![TcpAction::Drop]);
}

#[test]
fn busy_leg_is_not_pinged() {
    let mut p = keepalive();
    for _ in 0..10 {
        p.advance(Duration::from_secs(20));
        p.send(Leg::Client, &client_frame(true, op::TEXT, b"tick"));
        p.send(Leg::Backend, &frame(true, op::TEXT, b"tock", None));
        p.run();
    }
    let pings = |b: &[u8]| frames(b).iter().filter(|f| f.opcode == op::PING).count();
    assert_eq!(pings(&p.take_written(Leg::Client)), 0);
    assert_eq!(pings(&p.take_written(Leg::Backend)), 0);
}

#[test]
fn tunnel_half_close_keeps_the_other_way_open() {
    let mut c = cfg();
    c.frames = false;
    let mut p = Pair::new(&c, 4096);
    p.send(Leg::Client, b"request");
    p.end(Leg::Client, None);
    p.run();
    assert_eq!(p.take_written(Leg::Backend), b"request");
    assert_eq!(p.leg(Leg::Backend).tcp, vec![TcpAction::ShutdownWrite]);
    // Long after any close timeout, the backend still gets through.
    p.advance(Duration::from_secs(60));
    assert!(p.outcome().is_none());
    p.send(Leg::Backend, b"response");
    p.end(Leg::Backend, None);
    p.run();
    assert_eq!(p.take_written(Leg::Client), b"response");
    assert_eq!(p.outcome().map(|o| o.ending), Some(Ending::TunnelEnded));
}

/// A policy limiting the client to `rate` messages per second, `burst` at once.
fn client_message_rate(rate: u64, burst: u64, on_limit: OnLimit) -> Policy {
    Policy {
        limits: [
            Some(RateLimit {
                messages: Some(Gcra::new(rate, burst)),
                bytes: None,
                on_limit,
            }),
            None,
        ],
        ..Policy::default()
    }
}

#[test]
fn rate_limit_close_is_1008() {
    let mut p = pair();
    p.core
        .set_policy(client_message_rate(10, 2, OnLimit::Close));
    for _ in 0..3 {
        p.send(Leg::Client, &client_frame(true, op::TEXT, b"m"));
        p.run();
    }
    let up = frames(&p.take_written(Leg::Backend));
    assert_eq!(up.iter().filter(|f| f.opcode == op::TEXT).count(), 3);
    assert_eq!(up.last().unwrap().close_code(), Some(1001));
    p.send(
        Leg::Backend,
        &frame(true, op::CLOSE, &close_payload(1001, ""), None),
    );
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Client))[0].close_code(),
        Some(1008)
    );
}

#[test]
fn rate_limit_throttle_stops_reading_until_the_bucket_refills() {
    let mut p = pair();
    p.core
        .set_policy(client_message_rate(10, 1, OnLimit::Throttle));
    let m = client_frame(true, op::TEXT, b"m");
    p.leg(Leg::Client).read_sizes.extend([m.len(); 5]);
    for _ in 0..5 {
        p.send(Leg::Client, &m);
    }
    p.run();
    let count = |p: &mut Pair| frames(&p.take_written(Leg::Backend)).len();
    // Burst of 1, the second read goes over: reading stops.
    assert_eq!(count(&mut p), 2);
    p.advance(Duration::from_millis(100));
    assert_eq!(count(&mut p), 1);
    p.advance(Duration::from_millis(250));
    assert_eq!(count(&mut p), 2, "nothing dropped, just slowed");
}

#[test]
fn deadline_closes_both_legs_with_its_code() {
    let mut p = pair();
    p.core.set_policy(Policy {
        deadline: Some((2_000_000, CloseCode::POLICY, "token expired")),
        ..Policy::default()
    });
    p.advance(Duration::from_millis(1_999));
    assert!(p.take_written(Leg::Client).is_empty());
    p.advance(Duration::from_millis(1));
    let down = frames(&p.take_written(Leg::Client));
    assert_eq!(down[0].close_code(), Some(1008));
    assert_eq!(&down[0].payload[2..], b"token expired");
    assert_eq!(
        frames(&p.take_written(Leg::Backend))[0].close_code(),
        Some(1008)
    );
}

#[test]
fn write_error_on_a_leg_closes_the_other_with_its_code() {
    let mut p = pair();
    p.leg(Leg::Backend).write_error = Some(ErrorKind::BrokenPipe);
    p.send(Leg::Client, &client_frame(true, op::TEXT, b"x"));
    p.run();
    assert_eq!(
        frames(&p.take_written(Leg::Client))[0].close_code(),
        Some(1011)
    );
    assert!(p.outcome().is_none(), "the client answers first");
    p.send(
        Leg::Client,
        &client_frame(true, op::CLOSE, &close_payload(1011, "")),
    );
    p.run();
    assert_eq!(
        p.outcome().map(|o| o.ending),
        Some(Ending::Vanished(Leg::Backend, Some(ErrorKind::BrokenPipe)))
    );
}

#[test]
fn tunnel_shutdown_half_closes_both_and_waits_for_their_ends() {
    let mut c = cfg();
    c.frames = false;
    let mut p = Pair::new(&c, 4096);
    p.send(Leg::Client, b"abc");
    p.run();
    p.close(
        Ending::Shutdown,
        CloseCode::GOING_AWAY,
        "server shutting down",
    );
    assert_eq!(p.leg(Leg::Client).tcp, vec![TcpAction::ShutdownWrite]);
    assert_eq!(p.leg(Leg::Backend).tcp, vec![TcpAction::ShutdownWrite]);
    assert!(p.outcome().is_none(), "the peers may still finish sending");
    p.send(Leg::Backend, b"last words");
    p.end(Leg::Backend, None);
    p.end(Leg::Client, None);
    p.run();
    assert_eq!(p.take_written(Leg::Backend), b"abc");
    assert_eq!(p.outcome().map(|o| o.ending), Some(Ending::Shutdown));
}

#[test]
fn tunnel_shutdown_is_bounded_by_the_close_timeout() {
    let mut c = cfg();
    c.frames = false;
    let mut p = Pair::new(&c, 4096);
    p.close(
        Ending::Shutdown,
        CloseCode::GOING_AWAY,
        "server shutting down",
    );
    p.advance(Duration::from_millis(4_999));
    assert!(p.outcome().is_none());
    p.advance(Duration::from_millis(1));
    assert_eq!(p.outcome().map(|o| o.ending), Some(Ending::CloseTimeout));
}

/// A drain's 1001 crossing the client's own close: the client's close is
/// the answer to wsedge's, the backend answers wsedge's, and the relay
/// ends without waiting for the close timeout (in either order).
#[test]
fn shutdown_crossing_the_clients_close_ends_at_once() {
    for client_first in [false, true] {
        let mut p = pair();
        if client_first {
            p.send(
                Leg::Client,
                &client_frame(true, op::CLOSE, &close_payload(1000, "")),
            );
            p.close(Ending::Shutdown, CloseCode::GOING_AWAY, "going away");
        } else {
            p.close(Ending::Shutdown, CloseCode::GOING_AWAY, "going away");
            p.send(
                Leg::Client,
                &client_frame(true, op::CLOSE, &close_payload(1000, "")),
            );
        }
        p.run();
        let to_backend = frames(&p.take_written(Leg::Backend));
        assert!(
            to_backend.iter().any(|f| f.close_code().is_some()),
            "{client_first}: {to_backend:?}"
        );
        p.send(
            Leg::Backend,
            &frame(true, op::CLOSE, &close_payload(1001, ""), None),
        );
        p.run();
        let to_client = frames(&p.take_written(Leg::Client));
        assert!(
            to_client.iter().any(|f| f.close_code().is_some()),
            "{client_first}: {to_client:?}"
        );
        assert!(
            p.outcome().is_some(),
            "{client_first}: the relay ended without the close timeout: {:?}",
            p.core
        );
    }
}
