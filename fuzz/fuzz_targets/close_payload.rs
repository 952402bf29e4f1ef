//! A close payload parsed whole (`parse_close_payload`) and streamed in two
//! pieces (`CloseValidator`): same verdict, same error, and an accepted
//! payload carries a wire-valid code and exactly its UTF-8 rest as reason.
//!
//! Input: `[split] [payload...]`; the payload is cut at `split % (len + 1)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::proto::close::{CloseValidator, encode_close_payload, parse_close_payload};
use wsedge::proto::error::ProtocolError;

fuzz_target!(|data: &[u8]| {
    let [split, payload @ ..] = data else { return };
    let cut = *split as usize % (payload.len() + 1);

    let whole = parse_close_payload(payload);
    let mut v = CloseValidator::new();
    let streamed = v
        .feed(&payload[..cut])
        .and_then(|()| v.feed(&payload[cut..]))
        .and_then(|()| v.finish());

    // The rules, spelled out.
    let expected = match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseOneByte),
        [hi, lo, rest @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                Err(ProtocolError::InvalidCloseCode(code))
            } else if std::str::from_utf8(rest).is_err() {
                Err(ProtocolError::InvalidUtf8)
            } else {
                Ok(Some(code))
            }
        }
    };

    assert_eq!(
        whole.map(|f| f.map(|f| f.code.0)),
        expected,
        "parse_close_payload"
    );
    assert_eq!(
        streamed.map(|c| c.map(|c| c.0)),
        expected,
        "CloseValidator cut at {cut}"
    );

    if let Ok(Some(frame)) = whole {
        assert!(frame.code.is_valid_on_wire());
        assert_eq!(Ok(frame.reason), std::str::from_utf8(&payload[2..]));
        // Re-encoding gives back the code and the reason, cut to 123 bytes
        // at a character boundary.
        let mut out = [0u8; 125];
        let n = encode_close_payload(frame.code, frame.reason, &mut out);
        let again = parse_close_payload(&out[..n])
            .expect("re-encoded payload parses")
            .expect("has a code");
        assert_eq!(again.code, frame.code);
        assert!(frame.reason.starts_with(again.reason));
        assert!(again.reason.len() <= 123);
        assert!(
            again.reason.len() + 3 >= frame.reason.len().min(123),
            "cut too short"
        );
        if frame.reason.len() <= 123 {
            assert_eq!(again.reason, frame.reason);
        }
    }
});
