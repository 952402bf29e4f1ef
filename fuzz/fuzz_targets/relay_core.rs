//! The real relay core (`wsedge::relay::Core`, through the in-memory
//! harness), fed arbitrary bytes from both legs at arbitrary read sizes,
//! write room and time steps. Checks, whatever the input:
//!
//! - no panic;
//! - what goes to the backend is a sequence of well-formed *masked* frames
//!   and what goes to the client of *unmasked* ones; a leg's stream may end
//!   mid-frame only if wsedge ended that leg's TCP connection;
//! - every frame relayed is the next frame its sender sent, payload
//!   unmasked equal (the last one possibly cut short), except wsedge's own
//!   frames: pings with an 8-byte token, and close frames whose code is one
//!   wsedge documents; wsedge's own pongs are consumed from the input, and a
//!   close not meant for the destination is left out;
//! - nothing is buffered: bytes written to a leg never exceed the bytes read
//!   from the other plus wsedge's own frames;
//! - liveness: once both peers have ended and time has passed every
//!   timeout, the relay is over.
//!
//! Input: `[config] ops...`, each op `[kind] [arg] [payload...]`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsedge::proto::close::CloseCode;
use wsedge::relay::harness::Pair;
use wsedge::relay::{Ending, Leg, Outcome, RelayConfig};

/// Close codes wsedge may send of its own (docs/architecture.md).
const OWN_CODES: [u16; 7] = [1001, 1002, 1007, 1008, 1009, 1011, 1014];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    /// The stream ended inside this frame (payload is what arrived).
    partial: bool,
}

/// Splits a byte stream into frames the plain way (whole stream at once).
/// Stops at the first header that cannot be a frame at all.
fn parse(mut b: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let (b0, b1) = (b[0], b[1]);
        let masked = b1 & 0x80 != 0;
        let (len, mut pos) = match b1 & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()), 10),
            126 | 127 => return out,
            n => (n as u64, 2),
        };
        let key = if masked {
            if b.len() < pos + 4 {
                return out;
            }
            let k = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
            pos += 4;
            Some(k)
        } else {
            None
        };
        let avail = (b.len() - pos) as u64;
        let take = len.min(avail) as usize;
        let mut payload = b[pos..pos + take].to_vec();
        if let Some(k) = key {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= k[i % 4];
            }
        }
        out.push(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0f,
            masked,
            payload,
            partial: (take as u64) < len,
        });
        b = &b[pos + take..];
    }
    out
}

/// Whether `out[k..]` is `inp[i..]`'s frames in order (the last possibly
/// cut short), with wsedge's own frames added (pings with an 8-byte token,
/// a close with a documented code, after which nothing follows) and some
/// input frames left out (8-byte pongs: wsedge's own consumed; a close not
/// meant for the destination). A small search: own frames and relayed ones
/// can look alike.
fn explains(
    out: &[Frame],
    k: usize,
    inp: &[Frame],
    i: usize,
    memo: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    let Some(f) = out.get(k) else { return true };
    if !memo.insert((k, i)) {
        return false;
    }
    if let Some(x) = inp.get(i) {
        let same = x.opcode == f.opcode
            && x.fin == f.fin
            && x.rsv == f.rsv
            && (x.payload == f.payload || (f.partial && x.payload.starts_with(&f.payload)));
        if same && explains(out, k + 1, inp, i + 1, memo) {
            return true;
        }
        let skippable = (x.opcode == 0xA && x.payload.len() == 8) || x.opcode == 0x8;
        if skippable && explains(out, k, inp, i + 1, memo) {
            return true;
        }
    }
    let own_ping = f.opcode == 0x9 && (f.payload.len() == 8 || (f.partial && f.payload.len() < 8));
    let own_close = f.opcode == 0x8
        && k + 1 == out.len()
        && match f.payload[..] {
            [a, b, ..] => OWN_CODES.contains(&u16::from_be_bytes([a, b])),
            _ => f.partial,
        };
    own_close || (own_ping && explains(out, k + 1, inp, i, memo))
}

/// Checks what wsedge wrote to `dst` against what the other leg sent.
fn check_leg(pair: &Pair, dst: Leg, input: &[u8], read_from_src: usize) {
    let written = &pair.legs[dst as usize].written;
    let out = parse(written);
    // A stream may stop mid-frame only while the relay runs (the frame is
    // in progress), when the relay was cut short (timeouts), or when wsedge
    // or the peer ended that leg's TCP connection; a relay that ended by
    // its close handshake left every other stream whole.
    if let Some(Outcome {
        ending: Ending::Closed { .. },
        ..
    }) = pair.outcome()
    {
        let cut = !pair.legs[dst as usize].tcp.is_empty() || pair.legs[dst as usize].end.is_some();
        assert!(
            out.last().is_none_or(|f| !f.partial) || cut,
            "closed with {dst:?} left mid-frame, its TCP not ended"
        );
    }
    for f in &out {
        assert_eq!(
            f.masked,
            dst == Leg::Backend,
            "masking toward {dst:?}: {f:?}"
        );
    }
    let inp = parse(&input[..read_from_src.min(input.len())]);
    let mut memo = std::collections::HashSet::new();
    assert!(
        explains(&out, 0, &inp, 0, &mut memo),
        "toward {dst:?}: the output is not the input's frames in order plus wsedge's own\nout {out:?}\ninp {inp:?}"
    );
    // Nothing buffered: out <= in + own frames.
    let own = out
        .iter()
        .filter(|f| f.opcode == 0x9 || f.opcode == 0x8)
        .count();
    assert!(
        written.len() <= read_from_src + (own + 1) * 131,
        "{} bytes to {dst:?} for {read_from_src} read: {out:?} from {:?}",
        written.len(),
        parse(input)
    );
}

fuzz_target!(|data: &[u8]| {
    let [config, ops @ ..] = data else { return };
    let cfg = RelayConfig {
        frames: true,
        max_message_size: [125, 1000, 1 << 20, i64::MAX as u64][(config & 3) as usize],
        validate_utf8: config & 4 == 0,
        compressed: config & 8 != 0,
        close_timeout: Duration::from_secs(5),
        idle_timeout: if config & 16 != 0 {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        },
        ping_interval: if config & 32 != 0 {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        },
        pong_timeout: Duration::from_secs(3),
    };
    let mut p = Pair::new(&cfg, 64 + (*config as usize >> 6) * 200);
    let mut input: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut rest = ops;
    while let [kind, arg, tail @ ..] = rest {
        rest = tail;
        let leg = if kind & 0x10 == 0 {
            Leg::Client
        } else {
            Leg::Backend
        };
        match kind & 0x0f {
            0..=5 => {
                let n = (*arg as usize).min(rest.len());
                let (bytes, tail) = rest.split_at(n);
                rest = tail;
                if p.legs[leg as usize].end.is_none() {
                    p.send(leg, bytes);
                    input[leg as usize].extend_from_slice(bytes);
                }
            }
            6 => p.advance(Duration::from_millis(*arg as u64 * 50)),
            7 => p.leg(leg).read_sizes.push_back(*arg as usize + 1),
            8 => p.leg(leg).write_room = Some(*arg as usize),
            9 => p.leg(leg).write_room = None,
            10 => p.end(leg, (arg & 1 == 1).then_some(std::io::ErrorKind::ConnectionReset)),
            11 => p.close(Ending::Shutdown, CloseCode::GOING_AWAY, "server shutting down"),
            _ => {}
        }
        p.run();
    }
    // Let everything drain, then both peers end; past every timeout the
    // relay must be over.
    for leg in [Leg::Client, Leg::Backend] {
        p.leg(leg).write_room = None;
        p.leg(leg).read_sizes.clear();
    }
    p.run();
    let read = |p: &Pair, leg: Leg| input[leg as usize].len() - p.legs[leg as usize].incoming.len();
    check_leg(&p, Leg::Backend, &input[0], read(&p, Leg::Client));
    check_leg(&p, Leg::Client, &input[1], read(&p, Leg::Backend));
    for leg in [Leg::Client, Leg::Backend] {
        if p.legs[leg as usize].end.is_none() {
            p.end(leg, None);
        }
    }
    p.advance(Duration::from_secs(60));
    assert!(p.outcome().is_some(), "relay still open after both peers ended: {:?}", p.core);
    check_leg(&p, Leg::Backend, &input[0], read(&p, Leg::Client));
    check_leg(&p, Leg::Client, &input[1], read(&p, Leg::Backend));
});
