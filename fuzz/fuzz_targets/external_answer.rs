//! The external authorization service's answer reader
//! (`wsedge::policy::external::read_answer`), fed in arbitrary splits: no
//! panic, and the verdict does not depend on how the bytes were split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::policy::external::{Decision, read_answer};

fuzz_target!(|data: &[u8]| {
    let copy = vec!["X-User".to_string(), "x-user".to_string(), "Bad Name".to_string()];
    let whole = read_answer(data, &[], &copy);
    // Splits from the first bytes' values.
    let splits: Vec<usize> = data.iter().take(8).map(|&b| usize::from(b)).collect();
    let mut sorted = splits.clone();
    sorted.sort_unstable();
    let split = read_answer(data, &sorted, &copy);
    assert_eq!(whole, split, "split at {sorted:?}");
    if let Some(Ok(Decision::Allow(headers))) = whole {
        for (_, v) in headers {
            assert!(!v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
        }
    }
});
