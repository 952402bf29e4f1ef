//! `wsload connect`: handshake churn. Each cycle connects, upgrades, sends a
//! close, waits for the close answer and for the server to close TCP (so
//! that TIME_WAIT stays on the server side). Open loop with `--rate`
//! (latency from the intended start), or `--max`: back-to-back loops.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client;
use crate::frame::Opcode;
use crate::mask::KeyGen;
use crate::net::{self, Target};
use crate::report::{self, Machine, Watched};
use crate::stats::{ErrKind, Percentiles, Progress, Tally, percentile_curve};
use crate::stream::Stream;
use crate::sys;

/// Options of `wsload connect`.
#[derive(Debug, Clone)]
pub struct ConnectOpts {
    pub target: Target,
    pub rate: Option<f64>,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub workers: usize,
    pub pin: bool,
    pub timeout: Duration,
    pub sources: Vec<IpAddr>,
    /// `wss://`: resume TLS sessions (the target's configuration has the
    /// shared session store).
    pub tls_resume: bool,
    pub watch: Vec<(String, u32)>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectParams {
    pub url: String,
    pub rate: Option<f64>,
    /// Back-to-back loops per worker (closed loop).
    pub concurrency: Option<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub workers: usize,
    pub timeout_s: f64,
    pub source_ips: usize,
    /// `wss://` with `--tls-resume`: sessions are resumed where they can be.
    #[serde(default)]
    pub tls_resume: bool,
}

/// Everything `wsload connect` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectReport {
    pub command: String,
    pub params: ConnectParams,
    pub machine: Machine,
    pub measured_s: f64,
    /// Complete cycles (upgrade and close) that ended in the window.
    pub handshakes: u64,
    pub handshakes_per_s: f64,
    /// `wss://`: of `handshakes`, those whose TLS handshake resumed a
    /// session (rustls `HandshakeKind::Resumed`), and the full ones.
    #[serde(default)]
    pub tls_resumed: u64,
    #[serde(default)]
    pub tls_full: u64,
    /// `wss://`: negotiated TLS version and cipher suite.
    #[serde(default)]
    pub tls_session: Option<String>,
    /// From connect (open loop: from the intended start) to a validated 101.
    pub latency_us: Percentiles,
    pub percentile_curve: Vec<(f64, f64)>,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub generator_cpu_us: u64,
    pub generator_cpu_us_per_op: f64,
    pub watched: Vec<Watched>,
}

pub fn from_args(a: crate::cli::ConnectArgs) -> anyhow::Result<ConnectOpts> {
    anyhow::ensure!(
        a.rate.is_some() || a.max,
        "give --rate R (handshakes/s) or --max"
    );
    if let Some(r) = a.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    let c = a.client;
    Ok(ConnectOpts {
        target: c.target(&a.url, a.tls_resume)?,
        rate: a.rate,
        concurrency: a.concurrency.max(1),
        duration: a.duration,
        warmup: a.warmup,
        workers: c.worker_count(usize::MAX),
        pin: !c.no_pin,
        timeout: c.timeout,
        sources: c.sources()?,
        tls_resume: a.tls_resume,
        watch: c.watched()?,
        json: c.json,
        plot: c.plot,
    })
}

pub fn run(o: ConnectOpts) -> anyhow::Result<ConnectReport> {
    sys::raise_nofile_limit();
    sys::install_stop_handler();
    let mode = match o.rate {
        Some(r) => format!("open loop, {r} handshakes/s in total"),
        None => format!("max, {} loops per worker", o.concurrency),
    };
    println!(
        "wsload connect {} | {mode} | warmup {:?} | duration {:?} | workers {} | timeout {:?}{}",
        o.target.url,
        o.warmup,
        o.duration,
        o.workers,
        o.timeout,
        if o.sources.is_empty() {
            String::new()
        } else {
            format!(" | {} source addresses", o.sources.len())
        }
    );
    let o = Arc::new(o);
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let measure_to = measure_from + o.duration;
    let progress: Vec<Arc<Progress>> = (0..o.workers).map(|_| Arc::default()).collect();
    let handles = {
        let (o, progress) = (o.clone(), progress.clone());
        net::spawn_workers("wsload-connect", o.workers, o.pin, 8192, move |i| {
            worker(i, o.clone(), progress[i].clone(), measure_from, measure_to)
        })?
    };
    let window = report::supervise(
        &progress,
        &o.watch,
        measure_from,
        measure_to,
        "handshakes",
        || handles.iter().all(|h| h.is_finished()),
    );
    let tally = Tally::merge(net::join_all(handles)?);
    let (a, b) = (
        window
            .first
            .clone()
            .unwrap_or_else(|| report::CpuSample::take(&[])),
        window
            .last
            .clone()
            .unwrap_or_else(|| report::CpuSample::take(&[])),
    );
    let secs = window
        .measure_to
        .saturating_duration_since(window.measure_from)
        .as_secs_f64();
    let gen_cpu = b.me.saturating_sub(a.me);
    let r = ConnectReport {
        command: "connect".into(),
        params: ConnectParams {
            url: o.target.url.clone(),
            rate: o.rate,
            concurrency: o.rate.is_none().then_some(o.concurrency),
            duration_s: o.duration.as_secs_f64(),
            warmup_s: o.warmup.as_secs_f64(),
            workers: o.workers,
            timeout_s: o.timeout.as_secs_f64(),
            source_ips: o.sources.len(),
            tls_resume: o.tls_resume,
        },
        machine: Machine::describe(),
        measured_s: secs,
        handshakes: tally.done,
        handshakes_per_s: if secs > 0.0 {
            tally.done as f64 / secs
        } else {
            0.0
        },
        tls_resumed: tally.tls_resumed,
        tls_full: tally.tls_full,
        tls_session: tally.tls_session.clone(),
        latency_us: Percentiles::of(&tally.latency),
        percentile_curve: percentile_curve(&tally.latency),
        errors_total: tally.errors_total(),
        errors: tally.errors.clone(),
        generator_cpu_us: gen_cpu,
        generator_cpu_us_per_op: if tally.done > 0 {
            gen_cpu as f64 / tally.done as f64
        } else {
            0.0
        },
        watched: report::watched_between(&o.watch, &a, &b, tally.done),
    };
    println!("results over {:.2} s:", r.measured_s);
    println!(
        "  handshakes             {} ({:.0}/s, each: connect, upgrade, close)",
        r.handshakes, r.handshakes_per_s
    );
    if let Some(tls) = &r.tls_session {
        println!(
            "  tls                    {tls}: {} resumed, {} full handshakes{}",
            r.tls_resumed,
            r.tls_full,
            if r.params.tls_resume {
                " (--tls-resume)"
            } else {
                " (resumption off)"
            }
        );
    }
    report::print_latency("upgrade latency", &r.latency_us);
    report::print_errors(&r.errors);
    println!(
        "  cpu wsload             {:>10.2} µs/handshake",
        r.generator_cpu_us_per_op
    );
    report::print_watched(&r.watched, "handshake");
    if let Some(p) = &o.json {
        report::write_json(p, &r)?;
    }
    if let Some(p) = &o.plot {
        report::plot_percentiles(
            p,
            &format!("{} — upgrade latency", r.params.url),
            &[("upgrade".into(), r.percentile_curve.clone())],
        )?;
    }
    Ok(r)
}

struct Worker {
    o: Arc<ConnectOpts>,
    measure_from: Instant,
    measure_to: Instant,
    tally: RefCell<Tally>,
    rng: RefCell<KeyGen>,
    progress: Arc<Progress>,
    outstanding: Cell<usize>,
    next_source: Cell<usize>,
}

/// Cycles that may be under way at once per worker in open loop.
const MAX_OUTSTANDING: usize = 4096;

async fn worker(
    idx: usize,
    o: Arc<ConnectOpts>,
    progress: Arc<Progress>,
    measure_from: Instant,
    measure_to: Instant,
) -> anyhow::Result<Tally> {
    let w = Rc::new(Worker {
        o: o.clone(),
        measure_from,
        measure_to,
        tally: RefCell::new(Tally::default()),
        rng: RefCell::new(KeyGen::from_os()),
        progress,
        outstanding: Cell::new(0),
        next_source: Cell::new(idx),
    });
    let over = || Instant::now() >= measure_to || sys::stop_requested();
    match o.rate {
        Some(rate) => {
            let iv = Duration::from_secs_f64(o.workers as f64 / rate);
            let mut next_due = Instant::now() + iv.mul_f64(idx as f64 / o.workers as f64);
            while !over() {
                let now = Instant::now();
                while next_due <= now {
                    if w.outstanding.get() >= MAX_OUTSTANDING {
                        w.error(ErrKind::Backlog);
                    } else {
                        w.outstanding.set(w.outstanding.get() + 1);
                        let w2 = w.clone();
                        monoio::spawn(async move {
                            w2.cycle(next_due).await;
                            w2.outstanding.set(w2.outstanding.get() - 1);
                        });
                    }
                    next_due += iv;
                }
                monoio::time::sleep_until(monoio::time::Instant::from_std(next_due)).await;
            }
            let hard = Instant::now() + o.timeout * 3;
            while w.outstanding.get() > 0 && Instant::now() < hard {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        None => {
            let mut loops = Vec::new();
            for _ in 0..o.concurrency {
                let w2 = w.clone();
                loops.push(monoio::spawn(async move {
                    while !(Instant::now() >= w2.measure_to || sys::stop_requested()) {
                        w2.cycle(Instant::now()).await;
                    }
                }));
            }
            for l in loops {
                l.await;
            }
        }
    }
    Ok(std::mem::take(&mut *w.tally.borrow_mut()))
}

impl Worker {
    fn error(&self, k: ErrKind) {
        self.tally.borrow_mut().error(&k);
        Progress::add(&self.progress.errors, 1);
    }

    /// One connect–upgrade–close cycle; `t0` is when it should have started.
    async fn cycle(&self, t0: Instant) {
        let source = (!self.o.sources.is_empty()).then(|| {
            let i = self.next_source.get();
            self.next_source.set(i.wrapping_add(self.o.workers));
            self.o.sources[i % self.o.sources.len()]
        });
        let mut rng = self.rng.borrow_mut().fork();
        let (stream, leftover) =
            match client::open(&self.o.target, source, &mut rng, self.o.timeout).await {
                Ok(x) => x,
                Err(k) => {
                    self.error(k);
                    Progress::add(&self.progress.done, 1);
                    return;
                }
            };
        let upgraded = Instant::now();
        let resumed = stream.tls_resumed();
        if self.tally.borrow().tls_session.is_none() {
            self.tally.borrow_mut().tls_session = stream.tls_session();
        }
        Progress::add(&self.progress.open, 1);
        let res = monoio::time::timeout(self.o.timeout, close(stream, leftover, &mut rng)).await;
        Progress::sub(&self.progress.open, 1);
        Progress::add(&self.progress.done, 1);
        match res {
            Err(_) => self.error(ErrKind::Timeout),
            Ok(Err(k)) => self.error(k),
            Ok(Ok(())) => {
                let now = Instant::now();
                if now >= self.measure_from && now <= self.measure_to {
                    let mut t = self.tally.borrow_mut();
                    t.done += 1;
                    t.handshakes += 1;
                    match resumed {
                        Some(true) => t.tls_resumed += 1,
                        Some(false) => t.tls_full += 1,
                        None => {}
                    }
                    Tally::record(&mut t.latency, upgraded - t0);
                }
            }
        }
    }
}

/// Sends a close, expects it echoed and the TCP connection closed.
async fn close(mut stream: Stream, mut buf: Vec<u8>, rng: &mut KeyGen) -> Result<(), ErrKind> {
    let mut out = Vec::with_capacity(16);
    client::push_frame(&mut out, Opcode::Close, &1000u16.to_be_bytes(), rng);
    let (res, _) = stream.write_all(out).await;
    res.map_err(|_| ErrKind::Io)?;
    let mut got_close = false;
    loop {
        let mut pos = 0;
        while let (Some(f), _) = client::next_frame(&buf, pos, 1 << 20)? {
            pos = f.end;
            if f.header.opcode == Opcode::Close && !got_close {
                let code = client::close_code(&buf[f.start..f.end]);
                if code != 1000 {
                    return Err(ErrKind::Close(code));
                }
                got_close = true;
            }
        }
        buf.drain(..pos);
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) if got_close => return Ok(()),
            Ok(0) => return Err(ErrKind::Close(1006)),
            Ok(_) => {}
            // A reset after the close answer still completes the cycle.
            Err(_) if got_close => return Ok(()),
            Err(_) => return Err(ErrKind::Io),
        }
    }
}
