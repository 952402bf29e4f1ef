//! Shared by the bench targets (`mod support;`): configuration, and a way to
//! print wsedge's time relative to a well-known peer after each comparison.
//!
//! Each comparison runs ours and the peer's in the same criterion group, in
//! the same process, one after the other, so the ratio is not skewed by
//! another build or another moment on a shared machine.
//!
//! [`run`] wraps the routine in `iter_custom` and keeps every (iterations,
//! elapsed) pair criterion asks for. The per-iteration time printed by
//! [`compare`] is criterion's own point estimate recomputed from the
//! measurement samples: the slope of elapsed over iterations through the
//! origin (linear sampling), which equals the mean for flat sampling.
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not
//! wall time: the development machines are shared (builds, a niced fuzzer),
//! and time spent descheduled is not time spent in our code. Set
//! `WSEDGE_BENCH_CLOCK=wall` for criterion's usual wall clock; on an idle
//! machine the two agree.

// Each bench target compiles its own copy; not every target uses every helper.
#![allow(dead_code)]

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};

/// The configuration every bench target uses: 100 samples, 1 s warm-up,
/// 2 s measurement. Command-line flags (`--sample-size`,
/// `--measurement-time`, ...) still override it.
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(100)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
}

/// The (iterations, elapsed) pairs criterion asked one benchmark for, in
/// order: warm-up first, then the measurement samples.
#[derive(Debug, Default, Clone)]
pub struct Samples(Rc<RefCell<Vec<(u64, Duration)>>>);

impl Samples {
    /// Criterion's point estimate of the time per iteration in nanoseconds,
    /// or `None` when the benchmark was filtered out or ran in `--test` mode.
    pub fn per_iter_ns(&self) -> Option<f64> {
        let all = self.0.borrow();
        // Warm-up doubles the iteration count on every call; the measurement
        // then starts over with a much smaller count (linear sampling grows
        // from there, flat sampling stays put). The last drop is its start.
        let start = (1..all.len()).rev().find(|&i| all[i].0 < all[i - 1].0)?;
        let samples = &all[start..];
        if samples.len() < 10 {
            return None;
        }
        let (xy, xx) = samples.iter().fold((0.0, 0.0), |(xy, xx), &(n, t)| {
            let n = n as f64;
            (xy + n * t.as_nanos() as f64, xx + n * n)
        });
        Some(xy / xx)
    }
}

/// Benchmarks `f` as `id` in `group` and keeps the samples for [`compare`].
/// The result of every call goes through `black_box`; inputs should too.
pub fn run<R>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    mut f: impl FnMut() -> R,
) -> Samples {
    let samples = Samples::default();
    let record = samples.clone();
    group.bench_function(id, move |b| {
        b.iter_custom(|iters| {
            let clock = Clock::get();
            let start = clock.now();
            for _ in 0..iters {
                black_box(f());
            }
            let elapsed = clock.now() - start;
            record.0.borrow_mut().push((iters, elapsed));
            elapsed
        })
    });
    samples
}

/// Prints one `RATIO` line: both times per iteration, both throughputs in
/// decimal GB/s when `bytes` is given (the goals are stated in GB/s;
/// criterion's own `thrpt` column is GiB/s), and the peer's time divided by
/// ours (above 1: wsedge is faster).
pub fn compare(case: &str, bytes: Option<u64>, ours: &Samples, peer: &str, theirs: &Samples) {
    let (Some(a), Some(b)) = (ours.per_iter_ns(), theirs.per_iter_ns()) else {
        return;
    };
    let gbps = |ns: f64| match bytes {
        Some(n) => format!(" ({:.2} GB/s)", n as f64 / ns),
        None => String::new(),
    };
    println!(
        "RATIO {case}: wsedge {}{}, {peer} {}{}, {peer}/wsedge = {:.2}x",
        fmt_ns(a),
        gbps(a),
        fmt_ns(b),
        gbps(b),
        b / a
    );
}

/// Prints one `TIME` line for a benchmark that has no peer to compare with.
pub fn report(case: &str, bytes: Option<u64>, ours: &Samples) {
    let Some(a) = ours.per_iter_ns() else {
        return;
    };
    let gbps = match bytes {
        Some(n) => format!(" ({:.2} GB/s)", n as f64 / a),
        None => String::new(),
    };
    println!("TIME {case}: wsedge {}{gbps}", fmt_ns(a));
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.2} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// What [`run`] measures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// This thread's CPU time.
    ThreadCpu,
    /// Monotonic wall time, since the first use.
    Wall(Instant),
}

impl Clock {
    /// The clock chosen by `WSEDGE_BENCH_CLOCK` (`cpu`, the default, or
    /// `wall`), announced once.
    fn get() -> Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        *CLOCK.get_or_init(|| {
            let wall = std::env::var("WSEDGE_BENCH_CLOCK").is_ok_and(|v| v == "wall");
            let clock = if wall {
                Clock::Wall(Instant::now())
            } else {
                Clock::ThreadCpu
            };
            println!("(timing with {clock:?}; WSEDGE_BENCH_CLOCK=wall|cpu)");
            clock
        })
    }

    /// The time since an arbitrary origin, fixed per clock and thread.
    fn now(self) -> Duration {
        match self {
            Clock::Wall(origin) => origin.elapsed(),
            Clock::ThreadCpu => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: `ts` is a valid, writable `timespec` for the whole
                // call, and CLOCK_THREAD_CPUTIME_ID is a clock every Linux
                // kernel since 2.6.12 provides.
                let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
                assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
                Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
            }
        }
    }
}
