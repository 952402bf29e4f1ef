//! Checks shared by the two head-parser targets (`handshake_request`,
//! `backend_response`): "need more" is only answered while the head can
//! still end within the limit, and growing prefixes answer "need more" until
//! the whole head is there, then the whole input's answer from then on.

use std::fmt::Debug;

/// `full` is the parser's answer for all of `head`; `head_len` reads the
/// head length out of a complete answer; `steps` picks the prefixes.
pub fn check_prefixes<A: Debug + PartialEq, E: Debug + PartialEq>(
    head: &[u8],
    max_head_bytes: usize,
    steps: u8,
    full: &Result<Option<A>, E>,
    head_len: impl Fn(&A) -> usize,
    parse: impl Fn(&[u8]) -> Result<Option<A>, E>,
) {
    // "Need more" only while the head can still end within the limit.
    if let Ok(None) = full {
        assert!(
            head.len() < max_head_bytes,
            "Ok(None) with {} bytes at hand",
            head.len()
        );
        let start = head
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(head.len());
        let rest = &head[start..];
        assert!(
            !rest.windows(2).any(|w| w == b"\n\n") && !rest.windows(3).any(|w| w == b"\n\r\n"),
            "Ok(None) though an empty line ends the head"
        );
    }

    // Growing prefixes: "need more" until the answer, then the answer.
    let complete = match full {
        Ok(Some(a)) => Some(head_len(a)),
        _ => None,
    };
    let mut cuts: Vec<usize> = Vec::new();
    let n_steps = 1 + (steps & 3) as usize;
    cuts.extend((1..=n_steps).map(|j| head.len() * j / (n_steps + 1)));
    cuts.push(((steps >> 2) as usize).min(head.len()));
    if let Some(n) = complete {
        cuts.extend([n - 1, n]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut settled: Option<Result<Option<A>, E>> = None;
    for k in cuts {
        let got = parse(&head[..k]);
        if let Some(n) = complete {
            if k < n {
                assert!(
                    matches!(got, Ok(None)),
                    "prefix {k} of a {n}-byte head: {got:?}"
                );
            } else {
                assert_eq!(&got, full, "prefix {k} holds the whole head");
            }
        }
        match (&settled, got) {
            (Some(s), got) => assert_eq!(&got, s, "prefix {k} after an answer"),
            (None, Ok(None)) => {}
            (None, got) => {
                assert_eq!(&got, full, "prefix {k} answers differently from the whole");
                settled = Some(got);
            }
        }
    }
}
