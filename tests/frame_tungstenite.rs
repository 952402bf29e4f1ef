//! Frames against an independent implementation: what tungstenite encodes
//! decodes to the same values here, and what we encode decodes in tungstenite.

use std::io::Cursor;

use proptest::prelude::*;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode as TOp};
use tungstenite::protocol::frame::{Frame, FrameHeader as THeader};
use wsedge::proto::frame::{DecodeConfig, FrameHeader, MAX_HEADER_LEN, OpCode, Peer};
use wsedge::proto::mask::apply_mask;

fn to_ours(op: TOp) -> OpCode {
    match op {
        TOp::Data(Data::Continue) => OpCode::Continuation,
        TOp::Data(Data::Text) => OpCode::Text,
        TOp::Data(Data::Binary) => OpCode::Binary,
        TOp::Control(Control::Close) => OpCode::Close,
        TOp::Control(Control::Ping) => OpCode::Ping,
        TOp::Control(Control::Pong) => OpCode::Pong,
        other => panic!("reserved opcode {other:?}"),
    }
}

fn to_theirs(op: OpCode) -> TOp {
    match op {
        OpCode::Continuation => TOp::Data(Data::Continue),
        OpCode::Text => TOp::Data(Data::Text),
        OpCode::Binary => TOp::Data(Data::Binary),
        OpCode::Close => TOp::Control(Control::Close),
        OpCode::Ping => TOp::Control(Control::Ping),
        OpCode::Pong => TOp::Control(Control::Pong),
    }
}

fn opcode() -> impl Strategy<Value = OpCode> {
    prop_oneof![
        Just(OpCode::Continuation),
        Just(OpCode::Text),
        Just(OpCode::Binary),
        Just(OpCode::Close),
        Just(OpCode::Ping),
        Just(OpCode::Pong),
    ]
}

fn payload_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..=125,
        126usize..=300,
        65530usize..=65540,
        Just(70_000)
    ]
}

fn unmask(payload: &mut [u8], mask: Option<[u8; 4]>) {
    if let Some(key) = mask {
        apply_mask(payload, key, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// tungstenite encodes a whole frame (header + masked payload); we decode
    /// the header and unmask the payload in place.
    #[test]
    fn tungstenite_encodes_we_decode(
        op in opcode(),
        fin in any::<bool>(),
        len in payload_len(),
        mask in proptest::option::of(any::<[u8; 4]>()),
        seed in any::<u8>(),
    ) {
        let control = op.is_control();
        let len = if control { len.min(125) } else { len };
        let fin = fin || control;
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        let th = THeader { is_final: fin, opcode: to_theirs(op), mask, ..THeader::default() };
        let frame = Frame::from_payload(th, payload.clone());
        let mut wire = Vec::new();
        frame.format(&mut wire).unwrap();

        let peer = if mask.is_some() { Peer::Client } else { Peer::Server };
        let (h, n) = FrameHeader::decode(&wire, &DecodeConfig::new(peer)).unwrap().unwrap();
        prop_assert_eq!(h, FrameHeader { fin, rsv: 0, opcode: op, mask, payload_len: len as u64 });
        prop_assert_eq!(wire.len(), n + len);
        let mut got = wire[n..].to_vec();
        unmask(&mut got, mask);
        prop_assert_eq!(got, payload);
    }

    /// We encode the header and mask the payload in place; tungstenite
    /// parses the header and gets the payload back.
    #[test]
    fn we_encode_tungstenite_decodes(
        op in opcode(),
        fin in any::<bool>(),
        len in payload_len(),
        mask in proptest::option::of(any::<[u8; 4]>()),
    ) {
        let control = op.is_control();
        let len = if control { len.min(125) } else { len };
        let fin = fin || control;
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let h = FrameHeader { fin, rsv: 0, opcode: op, mask, payload_len: len as u64 };
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = h.encode(&mut head);
        let mut wire = head[..n].to_vec();
        let mut body = payload.clone();
        unmask(&mut body, mask);
        wire.extend_from_slice(&body);

        let mut cursor = Cursor::new(&wire[..]);
        let (th, tlen) = THeader::parse(&mut cursor).unwrap().unwrap();
        prop_assert_eq!(cursor.position() as usize, n);
        prop_assert_eq!(tlen, len as u64);
        prop_assert_eq!(th.is_final, fin);
        prop_assert_eq!(to_ours(th.opcode), op);
        prop_assert_eq!(th.mask, mask);
        let mut frame = Frame::from_payload(th, wire[n..].to_vec());
        if let Some(key) = frame.header().mask {
            // tungstenite unmasks in its read path; do it with its header's key.
            apply_mask(frame.payload_mut(), key, 0);
        }
        prop_assert_eq!(frame.payload(), &payload);
    }
}

/// A whole message stream written by tungstenite's WebSocket (client role:
/// masked frames), decoded frame by frame here.
#[test]
fn tungstenite_client_stream_decodes() {
    use tungstenite::Message;
    use tungstenite::protocol::{Role, WebSocket};

    #[derive(Default)]
    struct Sink(Vec<u8>);
    impl std::io::Read for Sink {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let mut ws = WebSocket::from_raw_socket(Sink::default(), Role::Client, None);
    let big = "ü".repeat(40_000);
    ws.send(Message::text("hello")).unwrap();
    ws.send(Message::binary(vec![1u8; 300])).unwrap();
    ws.send(Message::text(big.clone())).unwrap();
    ws.send(Message::Ping(b"p".to_vec())).unwrap();
    let wire = std::mem::take(&mut ws.get_mut().0);

    let cfg = DecodeConfig::new(Peer::Client);
    let mut at = 0;
    let mut got = Vec::new();
    while at < wire.len() {
        let (h, n) = FrameHeader::decode(&wire[at..], &cfg).unwrap().unwrap();
        let mut payload = wire[at + n..at + n + h.payload_len as usize].to_vec();
        unmask(&mut payload, h.mask);
        assert!(h.mask.is_some());
        got.push((h.opcode, payload));
        at += n + h.payload_len as usize;
    }
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], (OpCode::Text, b"hello".to_vec()));
    assert_eq!(got[1], (OpCode::Binary, vec![1u8; 300]));
    assert_eq!(got[2], (OpCode::Text, big.into_bytes()));
    assert_eq!(got[3], (OpCode::Ping, b"p".to_vec()));
}
