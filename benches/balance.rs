//! One load-balancing decision per iteration: `pick`, then `acquire` and
//! `release` on the chosen server, for each algorithm over 64 servers of
//! mixed weights (1 to 8) holding uneven connection counts. The goal is
//! under 1 µs per decision.
//!
//! `cargo bench --bench balance`. Each case prints a `TIME` line.

mod support;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wsedge::balance::{
    HashPicker, LeastConn, Maglev, Picker, RandomTwo, RoundRobin, ServerSlot, ServerState, key_hash,
};

const SERVERS: usize = 64;
const NOW_MS: u64 = 3_600_000;
const SLOW_START_MS: u64 = 30_000;

/// 64 servers, weights 1..=8, 0 to 60 connections each; with `down`, every
/// fourth one is down (the rejection draws of random_two miss, the hash
/// walk steps over them).
fn servers(down: bool) -> Vec<Arc<ServerSlot>> {
    (0..SERVERS)
        .map(|i| {
            let s = ServerSlot::new(
                &format!("10.2.{}.{}:8080", i / 16, i % 16),
                1 + (i as u32 * 5) % 8,
            );
            for _ in 0..(i * 37) % 61 {
                s.acquire();
            }
            if down && i % 4 == 3 {
                s.set_state(ServerState::Down);
            }
            Arc::new(s)
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick_64");
    g.throughput(Throughput::Elements(1));
    let keys: Vec<u64> = (0..1024)
        .map(|k| key_hash(format!("session-{k}").as_bytes()))
        .collect();
    let s = servers(false);
    let table = Arc::new(Maglev::new(&s));
    let cases: Vec<(&str, bool, Picker)> = vec![
        (
            "round_robin",
            false,
            Picker::RoundRobin(RoundRobin::new(SERVERS)),
        ),
        ("least_conn", false, Picker::LeastConn(LeastConn::new(0))),
        ("random_two", false, Picker::RandomTwo(RandomTwo::new(1))),
        (
            "random_two_quarter_down",
            true,
            Picker::RandomTwo(RandomTwo::new(1)),
        ),
        (
            "hash_bounded_1.25",
            false,
            Picker::Hash(HashPicker::new(table.clone(), Some(1.25), 1)),
        ),
        (
            "hash_unbounded",
            false,
            Picker::Hash(HashPicker::new(table.clone(), None, 1)),
        ),
    ];
    for (label, down, mut picker) in cases {
        let s = servers(down);
        let mut k = 0usize;
        let samples = support::run(&mut g, BenchmarkId::new("wsedge", label), || {
            k = (k + 1) & 1023;
            let i = picker.pick(
                black_box(&s),
                Some(keys[k]),
                black_box(0),
                black_box(NOW_MS),
                SLOW_START_MS,
            );
            if let Some(i) = i {
                s[i].acquire();
                s[i].release();
            }
            i
        });
        support::report(&format!("pick_64/{label}"), None, &samples);
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = pick
}
criterion_main!(benches);
