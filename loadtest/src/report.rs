//! Output: the machine description, watched processes, the live progress
//! line, final tables, `--json` and `--plot`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::stats::{Percentiles, Progress};
use crate::sys;

/// Where the figures were taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub io: String,
}

impl Machine {
    pub fn describe() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kernel,
            io: if crate::net::uring() {
                "io_uring".into()
            } else {
                "epoll".into()
            },
        }
    }
}

/// A process whose CPU time is read at the edges of the measured window
/// (`--watch NAME=PID`; descendants included).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
    /// utime + stime inside the window, µs.
    pub cpu_us: u64,
    /// Per round trip (or handshake) completed in the window.
    pub cpu_us_per_op: f64,
    /// RSS at the end of the window.
    pub rss_bytes: u64,
}

/// Parses `NAME=PID` or `PID`.
pub fn parse_watch(s: &str) -> anyhow::Result<(String, u32)> {
    match s.split_once('=') {
        Some((n, p)) => Ok((n.to_string(), p.parse().context("pid in --watch")?)),
        None => Ok((format!("pid{s}"), s.parse().context("pid in --watch")?)),
    }
}

/// CPU samples of the watched processes and of wsload itself.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub watched: Vec<u64>,
    pub me: u64,
}

impl CpuSample {
    pub fn take(watch: &[(String, u32)]) -> Self {
        Self {
            watched: watch
                .iter()
                .map(|(_, p)| sys::tree_cpu_us(*p).unwrap_or(0))
                .collect(),
            me: sys::cpu_us(std::process::id()).unwrap_or(0),
        }
    }
}

/// Turns two samples into per-operation figures.
pub fn watched_between(
    watch: &[(String, u32)],
    a: &CpuSample,
    b: &CpuSample,
    ops: u64,
) -> Vec<Watched> {
    watch
        .iter()
        .enumerate()
        .map(|(i, (name, pid))| {
            let cpu = b.watched[i].saturating_sub(a.watched[i]);
            Watched {
                name: name.clone(),
                pid: *pid,
                cpu_us: cpu,
                cpu_us_per_op: if ops > 0 {
                    cpu as f64 / ops as f64
                } else {
                    0.0
                },
                rss_bytes: sys::tree_rss_bytes(*pid).unwrap_or(0),
            }
        })
        .collect()
}

/// The measured window, its CPU samples, and the live progress line.
#[derive(Debug)]
pub struct Window {
    pub measure_from: Instant,
    pub measure_to: Instant,
    pub first: Option<CpuSample>,
    pub last: Option<CpuSample>,
}

/// Drives the progress line and samples CPU at the window's edges until
/// `finished()` says the workers are done. `unit` names what is counted.
pub fn supervise(
    progress: &[Arc<Progress>],
    watch: &[(String, u32)],
    measure_from: Instant,
    measure_to: Instant,
    unit: &str,
    finished: impl Fn() -> bool,
) -> Window {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let mut w = Window {
        measure_from,
        measure_to,
        first: None,
        last: None,
    };
    let mut last_done = 0u64;
    let mut last_at = Instant::now();
    loop {
        let now = Instant::now();
        if w.first.is_none() && now >= measure_from {
            w.first = Some(CpuSample::take(watch));
        }
        let stopping = sys::stop_requested() && w.last.is_none();
        if w.last.is_none() && (now >= measure_to || stopping) {
            w.last = Some(CpuSample::take(watch));
            w.measure_to = now.min(measure_to);
            if w.first.is_none() {
                w.first = w.last.clone();
                w.measure_from = w.measure_to;
            }
        }
        if finished() {
            break;
        }
        if now.duration_since(last_at) >= Duration::from_millis(500) {
            let done = Progress::sum(progress, |p| &p.done);
            let rate = (done - last_done) as f64 / now.duration_since(last_at).as_secs_f64();
            last_done = done;
            last_at = now;
            let phase = if now < measure_from {
                "warming up"
            } else if now < measure_to {
                "measuring"
            } else {
                "closing"
            };
            bar.set_message(format!(
                "{phase} | open {} | {rate:.0} {unit}/s | errors {}",
                Progress::sum(progress, |p| &p.open),
                Progress::sum(progress, |p| &p.errors),
            ));
            bar.tick();
        }
        let mut next = now + Duration::from_millis(100);
        if w.first.is_none() {
            next = next.min(measure_from);
        }
        if w.last.is_none() {
            next = next.min(measure_to);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    bar.finish_and_clear();
    if w.last.is_none() {
        w.last = Some(CpuSample::take(watch));
    }
    if w.first.is_none() {
        w.first = w.last.clone();
    }
    w
}

/// Prints a latency row block.
pub fn print_latency(title: &str, p: &Percentiles) {
    println!(
        "  {title:<22} p50 {:>9.1}  p90 {:>9.1}  p99 {:>9.1}  p99.9 {:>9.1}  max {:>9.1}  (µs)",
        p.p50, p.p90, p.p99, p.p999, p.max
    );
}

pub fn print_errors(errors: &std::collections::BTreeMap<String, u64>) {
    if errors.is_empty() {
        println!("  errors                 none");
    } else {
        for (k, v) in errors {
            println!("  error: {k:<30} {v}");
        }
    }
}

pub fn print_watched(watched: &[Watched], unit: &str) {
    for w in watched {
        println!(
            "  cpu {:<18} {:>10.2} µs/{unit}  ({} µs in window, RSS {:.1} MB)",
            w.name,
            w.cpu_us_per_op,
            w.cpu_us,
            w.rss_bytes as f64 / 1e6
        );
    }
}

/// Writes any serialisable report as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> anyhow::Result<()> {
    let s = serde_json::to_string_pretty(report)?;
    std::fs::write(path, s + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Plots latency-by-percentile curves (`(percentile, µs)` points) as SVG,
/// with the percentile on a log(1/(1-p)) axis as HdrHistogram plots do.
pub fn plot_percentiles(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let to_x = |p: f64| -> f64 { -(1.0 - p / 100.0).max(1e-6).log10() };
    let max_x = 5.0f64;
    let max_y = series
        .iter()
        .flat_map(|(_, pts)| {
            pts.iter()
                .filter(|(p, _)| to_x(*p) <= max_x)
                .map(|(_, y)| *y)
        })
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            match x.round() as i64 {
                0 => "0%".into(),
                1 => "90%".into(),
                2 => "99%".into(),
                3 => "99.9%".into(),
                4 => "99.99%".into(),
                5 => "99.999%".into(),
                _ => format!("{p:.3}%"),
            }
        })
        .x_desc("percentile")
        .y_desc("round-trip latency (µs)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = pts
            .iter()
            .map(|(p, y)| (to_x(*p), *y))
            .filter(|(x, _)| *x <= max_x)
            .collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
