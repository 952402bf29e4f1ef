//! `Utf8Validator` fed in chunks against `std::str::from_utf8` of the whole:
//! same verdict, and it fails fast — in the chunk whose bytes first make the
//! text impossible, never earlier, never later.
//!
//! Input: `[n] [n cut bytes] [text...]`; n & 3 cuts, each taken
//! `% (len + 1)` and sorted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::proto::utf8::Utf8Validator;

/// Whether no continuation can make `b` valid UTF-8.
fn definitely_bad(b: &[u8]) -> bool {
    matches!(std::str::from_utf8(b), Err(e) if e.error_len().is_some())
}

fuzz_target!(|data: &[u8]| {
    let [n, rest @ ..] = data else { return };
    let n = (*n & 3) as usize;
    if rest.len() < n {
        return;
    }
    let (cuts, text) = rest.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (text.len() + 1))
        .collect();
    at.push(0);
    at.push(text.len());
    at.sort_unstable();

    let whole_ok = std::str::from_utf8(text).is_ok();
    let mut v = Utf8Validator::new();
    let mut failed = false;
    for w in at.windows(2) {
        let (start, end) = (w[0], w[1]);
        let r = v.feed(&text[start..end]);
        let bad = definitely_bad(&text[..end]);
        // The first chunk alone, and every later prefix: an error exactly
        // when the bytes so far are already impossible.
        assert_eq!(r.is_err(), bad, "feed of {start}..{end}");
        if bad {
            failed = true;
            break;
        }
        let mid = std::str::from_utf8(&text[..end]).is_err();
        assert_eq!(v.is_mid_code_point(), mid, "pending after {start}..{end}");
    }
    if !failed {
        assert_eq!(v.finish().is_ok(), whole_ok, "finish");
        assert!(!v.is_mid_code_point());
        // finish resets: the same validator takes the text again in one piece.
        let again = v.feed(text).and_then(|()| v.finish());
        assert_eq!(again.is_ok(), whole_ok, "after reset");
    } else {
        assert!(!whole_ok);
    }
});
