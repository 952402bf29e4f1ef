//! `wsload run`: echo round trips over many connections, closed loop
//! (`--in-flight K` per connection) or open loop (`--rate R` in total, with
//! latency measured from the intended send time, which corrects for
//! coordinated omission). Every echoed message is checked for content and
//! order.
//!
//! Per connection a writer task and a reader task share a [`Conn`]: the
//! writer sends (closed loop: when the reader hands back a credit; open loop:
//! when messages fall due), the reader checks answers in send order.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{self, ServerFrame};
use crate::frame::{self, Opcode};
use crate::mask::{KeyGen, apply_mask};
use crate::net::{self, Target};
use crate::payload::{Mismatch, Pattern};
use crate::report::{self, Machine, Watched};
use crate::stats::{ErrKind, Percentiles, Progress, Tally, percentile_curve};
use crate::stream::{ReadHalf, WriteHalf};
use crate::sync::{Gate, Signal};
use crate::sys;

/// Message sizes: a fixed list picked uniformly, or a uniform range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizes {
    List(Vec<usize>),
    Range(usize, usize),
}

impl Sizes {
    /// `64`, `64,1024,16384` or `64..4096`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let num = |t: &str| -> anyhow::Result<usize> {
            let t = t.trim();
            let (n, mul) = if let Some(n) = t.strip_suffix(['k', 'K']) {
                (n, 1024)
            } else if let Some(n) = t.strip_suffix(['m', 'M']) {
                (n, 1 << 20)
            } else {
                (t, 1)
            };
            Ok(n.parse::<usize>()? * mul)
        };
        if let Some((a, b)) = s.split_once("..") {
            let (a, b) = (num(a)?, num(b)?);
            anyhow::ensure!(a <= b, "empty size range {s}");
            Ok(Self::Range(a, b))
        } else {
            let v = s.split(',').map(num).collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(!v.is_empty(), "no size given");
            Ok(Self::List(v))
        }
    }

    pub fn max(&self) -> usize {
        match self {
            Self::List(v) => v.iter().copied().max().unwrap_or(0),
            Self::Range(_, b) => *b,
        }
    }

    fn pick(&self, rng: &mut KeyGen) -> usize {
        match self {
            Self::List(v) if v.len() == 1 => v[0],
            Self::List(v) => v[(rng.next_u64() % v.len() as u64) as usize],
            Self::Range(a, b) => a + (rng.next_u64() % (b - a + 1) as u64) as usize,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::List(v) => v.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
            Self::Range(a, b) => format!("{a}..{b}"),
        }
    }
}

/// Options of `wsload run`.
#[derive(Debug, Clone)]
pub struct RunOpts {
    pub target: Target,
    pub connections: usize,
    pub sizes: Sizes,
    pub in_flight: usize,
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub text: bool,
    /// One write for all ready messages instead of one per message.
    pub coalesce: bool,
    pub workers: usize,
    pub pin: bool,
    pub timeout: Duration,
    pub sources: Vec<IpAddr>,
    pub max_message: usize,
    pub watch: Vec<(String, u32)>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// The parameters as recorded in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunParams {
    pub url: String,
    pub connections: usize,
    pub size: String,
    pub in_flight: usize,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub text: bool,
    pub coalesce: bool,
    pub workers: usize,
    pub timeout_s: f64,
    pub source_ips: usize,
}

/// Everything `wsload run` measured (the `--json` document).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub command: String,
    pub params: RunParams,
    pub machine: Machine,
    pub measured_s: f64,
    /// Round trips completed inside the window.
    pub messages: u64,
    pub messages_per_s: f64,
    /// Payload bytes received inside the window.
    pub bytes: u64,
    /// Payload MB (10^6 bytes) per second, one way.
    pub mb_per_s: f64,
    pub sent: u64,
    pub handshakes: u64,
    /// `wss://`: negotiated TLS version and cipher suite.
    #[serde(default)]
    pub tls_session: Option<String>,
    /// `wss://`: handshakes that resumed a TLS session.
    #[serde(default)]
    pub tls_resumed: u64,
    /// Round-trip latency; open loop: from the intended send time.
    pub latency_us: Percentiles,
    /// Open loop only: from the actual send time (not corrected).
    pub latency_uncorrected_us: Option<Percentiles>,
    /// `(percentile, µs)` points of the latency curve.
    pub percentile_curve: Vec<(f64, f64)>,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// wsload's own CPU in the window, µs, and per round trip.
    pub generator_cpu_us: u64,
    pub generator_cpu_us_per_op: f64,
    pub watched: Vec<Watched>,
}

impl RunOpts {
    pub fn params(&self) -> RunParams {
        RunParams {
            url: self.target.url.clone(),
            connections: self.connections,
            size: self.sizes.describe(),
            in_flight: self.in_flight,
            rate: self.rate,
            duration_s: self.duration.as_secs_f64(),
            warmup_s: self.warmup.as_secs_f64(),
            text: self.text,
            coalesce: self.coalesce,
            workers: self.workers,
            timeout_s: self.timeout.as_secs_f64(),
            source_ips: self.sources.len(),
        }
    }
}

/// Options from the command line.
pub fn from_args(a: crate::cli::RunArgs) -> anyhow::Result<RunOpts> {
    let c = a.client;
    anyhow::ensure!(a.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(a.in_flight > 0, "--in-flight must be at least 1");
    if let Some(r) = a.rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
    }
    let workers = c.worker_count(a.connections);
    Ok(RunOpts {
        target: c.target(&a.url, false)?,
        connections: a.connections,
        sizes: Sizes::parse(&a.size)?,
        in_flight: a.in_flight,
        rate: a.rate,
        duration: a.duration,
        warmup: a.warmup,
        text: a.text,
        coalesce: a.coalesce,
        workers,
        pin: !c.no_pin,
        timeout: c.timeout,
        sources: c.sources()?,
        max_message: a.max_message,
        watch: c.watched()?,
        json: c.json,
        plot: c.plot,
    })
}

/// Runs the load and reports.
pub fn run(o: RunOpts) -> anyhow::Result<RunReport> {
    sys::raise_nofile_limit();
    sys::install_stop_handler();
    let mode = match o.rate {
        Some(r) => format!("open loop, {r} msg/s in total"),
        None => format!("closed loop, {} in flight per connection", o.in_flight),
    };
    println!(
        "wsload run {} | connections {} | size {} B {}{} | {mode} | warmup {:?} | duration {:?} | workers {} | timeout {:?}{}",
        o.target.url,
        o.connections,
        o.sizes.describe(),
        if o.text { "text" } else { "binary" },
        if o.coalesce { ", coalesced writes" } else { "" },
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
    let pattern = Arc::new(Pattern::new(o.sizes.max()));
    let start = Instant::now();
    let measure_from = start + o.warmup;
    let measure_to = measure_from + o.duration;
    let progress: Vec<Arc<Progress>> = (0..o.workers).map(|_| Arc::default()).collect();
    let handles = {
        let (o, pattern, progress) = (o.clone(), pattern.clone(), progress.clone());
        net::spawn_workers("wsload-run", o.workers, o.pin, 8192, move |i| {
            worker(
                i,
                o.clone(),
                pattern.clone(),
                progress[i].clone(),
                measure_from,
                measure_to,
            )
        })?
    };
    let window = report::supervise(&progress, &o.watch, measure_from, measure_to, "msg", || {
        handles.iter().all(|h| h.is_finished())
    });
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
    let per = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let gen_cpu = b.me.saturating_sub(a.me);
    let report = RunReport {
        command: "run".into(),
        params: o.params(),
        machine: Machine::describe(),
        measured_s: secs,
        messages: tally.done,
        messages_per_s: per(tally.done),
        bytes: tally.bytes,
        mb_per_s: per(tally.bytes) / 1e6,
        sent: tally.sent,
        handshakes: tally.handshakes,
        tls_session: tally.tls_session.clone(),
        tls_resumed: tally.tls_resumed,
        latency_us: Percentiles::of(&tally.latency),
        latency_uncorrected_us: o.rate.map(|_| Percentiles::of(&tally.latency_raw)),
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
    print_run(&report);
    if let Some(p) = &o.json {
        report::write_json(p, &report)?;
    }
    if let Some(p) = &o.plot {
        report::plot_percentiles(
            p,
            &format!(
                "{} — {} conns, {} B",
                report.params.url, report.params.connections, report.params.size
            ),
            &[("latency".into(), report.percentile_curve.clone())],
        )?;
    }
    Ok(report)
}

fn print_run(r: &RunReport) {
    println!("results over {:.2} s:", r.measured_s);
    println!(
        "  messages               {} ({:.0} msg/s, {:.2} MB/s payload each way)",
        r.messages, r.messages_per_s, r.mb_per_s
    );
    println!(
        "  sent                   {} | handshakes {}",
        r.sent, r.handshakes
    );
    if let Some(tls) = &r.tls_session {
        println!(
            "  tls                    {tls} ({} of {} handshakes resumed)",
            r.tls_resumed, r.handshakes
        );
    }
    let corrected = if r.latency_uncorrected_us.is_some() {
        "latency (corrected)"
    } else {
        "latency"
    };
    report::print_latency(corrected, &r.latency_us);
    if let Some(u) = &r.latency_uncorrected_us {
        report::print_latency("latency (from send)", u);
    }
    report::print_errors(&r.errors);
    println!(
        "  cpu wsload             {:>10.2} µs/msg",
        r.generator_cpu_us_per_op
    );
    report::print_watched(&r.watched, "msg");
}

/// A message waiting for its echo.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    len: usize,
    /// When it was due (open loop) or sent (closed loop).
    intended: Instant,
    sent: Instant,
}

/// State shared by the writer and reader of one connection.
#[derive(Debug)]
struct Conn {
    fd: RawFd,
    /// Sockets still open (the watchdog may shut them down).
    alive: Cell<bool>,
    inflight: RefCell<VecDeque<Pending>>,
    /// Closed loop: messages the writer may send now.
    credits: Cell<usize>,
    /// Control frames (opcode, payload) for the writer to send.
    ctrl: RefCell<Vec<(Opcode, Vec<u8>)>>,
    wake: Signal,
    /// No new messages: wait for the answers, then close.
    draining: Cell<bool>,
    close_sent: Cell<bool>,
    /// The reader is done: the writer must return.
    stopped: Cell<bool>,
    /// Shut down by the watchdog (a message timed out).
    timed_out: Cell<Option<ErrKind>>,
}

/// One worker: its connections, counters and random source.
struct Worker {
    o: Arc<RunOpts>,
    pattern: Arc<Pattern>,
    measure_from: Instant,
    measure_to: Instant,
    opcode: Opcode,
    tally: RefCell<Tally>,
    rng: RefCell<KeyGen>,
    conns: RefCell<Vec<Weak<Conn>>>,
    progress: Arc<Progress>,
    gate: Gate,
    finished: Cell<bool>,
}

/// Messages that may wait for an answer per connection in open loop.
const MAX_BACKLOG: usize = 100_000;
const READ_CHUNK: usize = 16 * 1024;
/// monoio's timer has millisecond resolution and wakes about 1.1 ms late at
/// the median (measured): messages due within this much are sent early.
const TIMER_SLACK: Duration = Duration::from_millis(2);

async fn worker(
    idx: usize,
    o: Arc<RunOpts>,
    pattern: Arc<Pattern>,
    progress: Arc<Progress>,
    measure_from: Instant,
    measure_to: Instant,
) -> anyhow::Result<Tally> {
    let w = Rc::new(Worker {
        opcode: if o.text { Opcode::Text } else { Opcode::Binary },
        o: o.clone(),
        pattern,
        measure_from,
        measure_to,
        tally: RefCell::new(Tally::default()),
        rng: RefCell::new(KeyGen::from_os()),
        conns: RefCell::new(Vec::new()),
        progress,
        gate: Gate::new(128),
        finished: Cell::new(false),
    });
    let mut slots = Vec::new();
    for j in (idx..o.connections).step_by(o.workers.max(1)) {
        slots.push(monoio::spawn(slot(w.clone(), j)));
    }
    let dog = monoio::spawn(watchdog(w.clone()));
    for s in slots {
        s.await;
    }
    w.finished.set(true);
    dog.await;
    Ok(std::mem::take(&mut *w.tally.borrow_mut()))
}

impl Worker {
    fn error(&self, kind: &ErrKind) {
        self.tally.borrow_mut().error(kind);
        Progress::add(&self.progress.errors, 1);
    }

    fn over(&self) -> bool {
        Instant::now() >= self.measure_to || sys::stop_requested()
    }

    /// Appends message `seq` as a masked frame to `out`.
    fn message(
        &self,
        rng: &mut KeyGen,
        seq: u64,
        intended: Instant,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Pending {
        let len = self.o.sizes.pick(rng);
        let key = rng.key();
        frame::encode_header(out, true, self.opcode, Some(key), len);
        let start = out.len();
        self.pattern.write(seq, len, out);
        apply_mask(&mut out[start..], key);
        Pending {
            seq,
            len,
            intended,
            sent: now,
        }
    }

    /// An echoed message (reassembled if it was fragmented).
    fn on_message(&self, conn: &Conn, op: Opcode, payload: &[u8]) {
        let now = Instant::now();
        let Some(p) = conn.inflight.borrow_mut().pop_front() else {
            self.error(&ErrKind::Unexpected);
            return;
        };
        let verdict = if op == self.opcode {
            self.pattern.check(p.seq, p.len, payload)
        } else {
            Err(Mismatch::Corrupt)
        };
        match verdict {
            Err(Mismatch::Corrupt) => self.error(&ErrKind::Corrupt),
            Err(Mismatch::OutOfOrder) => self.error(&ErrKind::OutOfOrder),
            Ok(()) => {
                if now >= self.measure_from && now <= self.measure_to {
                    let mut t = self.tally.borrow_mut();
                    t.done += 1;
                    t.bytes += payload.len() as u64;
                    Tally::record(&mut t.latency, now - p.intended);
                    if self.o.rate.is_some() {
                        Tally::record(&mut t.latency_raw, now - p.sent);
                    }
                }
            }
        }
        Progress::add(&self.progress.done, 1);
        if self.o.rate.is_none() {
            conn.credits.set(conn.credits.get() + 1);
            conn.wake.raise();
        } else if conn.draining.get() && conn.inflight.borrow().is_empty() {
            conn.wake.raise();
        }
    }
}

/// One connection slot: connects, runs a session, reconnects after errors
/// until the run is over.
async fn slot(w: Rc<Worker>, j: usize) {
    let source = (!w.o.sources.is_empty()).then(|| w.o.sources[j % w.o.sources.len()]);
    // Spread the open-loop schedules of the connections evenly.
    let phase = j as f64 / w.o.connections as f64;
    while !w.over() {
        match session(&w, source, phase).await {
            Ok(()) => break,
            Err(kind) => {
                w.error(&kind);
                if !w.over() {
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn session(w: &Rc<Worker>, source: Option<IpAddr>, phase: f64) -> Result<(), ErrKind> {
    let mut rng = w.rng.borrow_mut().fork();
    let (stream, leftover) = {
        let _permit = w.gate.acquire().await;
        client::open(&w.o.target, source, &mut rng, w.o.timeout).await?
    };
    {
        let mut t = w.tally.borrow_mut();
        t.handshakes += 1;
        t.note_tls(&stream);
    }
    Progress::add(&w.progress.open, 1);
    let conn = Rc::new(Conn {
        fd: stream.raw_fd(),
        alive: Cell::new(true),
        inflight: RefCell::new(VecDeque::new()),
        credits: Cell::new(w.o.in_flight),
        ctrl: RefCell::new(Vec::new()),
        wake: Signal::default(),
        draining: Cell::new(false),
        close_sent: Cell::new(false),
        stopped: Cell::new(false),
        timed_out: Cell::new(None),
    });
    w.conns.borrow_mut().push(Rc::downgrade(&conn));
    let (rd, wr) = stream.into_split();
    let writer = monoio::spawn(write_loop(w.clone(), conn.clone(), wr, rng, phase));
    let (read_res, rd) = read_loop(w, &conn, rd, leftover).await;
    conn.stopped.set(true);
    conn.wake.raise();
    let (write_res, wr) = writer.await;
    drop(rd);
    drop(wr);
    conn.alive.set(false);
    Progress::sub(&w.progress.open, 1);
    if let Some(k) = conn.timed_out.take() {
        return Err(k);
    }
    read_res.and(write_res)
}

async fn read_loop(
    w: &Worker,
    conn: &Conn,
    mut rd: ReadHalf,
    mut buf: Vec<u8>,
) -> (Result<(), ErrKind>, ReadHalf) {
    let mut frag: Option<Opcode> = None;
    let mut msg: Vec<u8> = Vec::new();
    buf.reserve(READ_CHUNK);
    loop {
        let mut pos = 0;
        loop {
            let (f, need) = match client::next_frame(&buf, pos, w.o.max_message) {
                Ok(x) => x,
                Err(k) => return (Err(k), rd),
            };
            let Some(ServerFrame {
                header: h,
                start,
                end,
            }) = f
            else {
                buf.drain(..pos);
                let want = need.max(buf.len() + READ_CHUNK);
                if buf.capacity() < want {
                    buf.reserve(want - buf.len());
                }
                break;
            };
            pos = end;
            let payload = &buf[start..end];
            match h.opcode {
                Opcode::Text | Opcode::Binary => {
                    if frag.is_some() {
                        return (
                            Err(ErrKind::Protocol("message inside a fragmented one")),
                            rd,
                        );
                    }
                    if h.fin {
                        w.on_message(conn, h.opcode, payload);
                    } else {
                        frag = Some(h.opcode);
                        msg.clear();
                        msg.extend_from_slice(payload);
                    }
                }
                Opcode::Continuation => {
                    let Some(op) = frag else {
                        return (Err(ErrKind::Protocol("continuation without a start")), rd);
                    };
                    msg.extend_from_slice(payload);
                    if h.fin {
                        frag = None;
                        w.on_message(conn, op, &msg);
                    }
                }
                Opcode::Ping => {
                    conn.ctrl
                        .borrow_mut()
                        .push((Opcode::Pong, payload.to_vec()));
                    conn.wake.raise();
                }
                Opcode::Pong => {}
                Opcode::Close => {
                    let code = client::close_code(payload);
                    if conn.close_sent.get() {
                        let r = if code == 1000 {
                            Ok(())
                        } else {
                            Err(ErrKind::Close(code))
                        };
                        return (r, rd);
                    }
                    // The server closed first, mid-run: answer, then end.
                    conn.ctrl
                        .borrow_mut()
                        .push((Opcode::Close, payload.get(..2).unwrap_or(&[]).to_vec()));
                    conn.wake.raise();
                    return (Err(ErrKind::Close(code)), rd);
                }
            }
        }
        let (res, b) = rd.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return (Err(ErrKind::Close(1006)), rd),
            Ok(_) => {}
            Err(_) => return (Err(ErrKind::Io), rd),
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            buf = Vec::with_capacity(READ_CHUNK);
        }
    }
}

async fn write_loop(
    w: Rc<Worker>,
    conn: Rc<Conn>,
    mut wr: WriteHalf,
    mut rng: KeyGen,
    phase: f64,
) -> (Result<(), ErrKind>, WriteHalf) {
    let interval =
        w.o.rate
            .map(|r| Duration::from_secs_f64(w.o.connections as f64 / r));
    let mut next_due = Instant::now() + interval.map_or(Duration::ZERO, |iv| iv.mul_f64(phase));
    let mut seq = 0u64;
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // End offsets of the messages in `out`, when each is its own write.
    let mut ends: Vec<usize> = Vec::new();
    loop {
        if conn.stopped.get() {
            return (Ok(()), wr);
        }
        let now = Instant::now();
        if !conn.draining.get() && w.over() {
            conn.draining.set(true);
        }
        for (op, payload) in conn.ctrl.borrow_mut().drain(..) {
            client::push_frame(&mut out, op, &payload, &mut rng);
            if op == Opcode::Close {
                conn.close_sent.set(true);
            }
        }
        if !conn.draining.get() {
            let mut inflight = conn.inflight.borrow_mut();
            let mut n = 0u64;
            let mut due = Vec::new();
            match interval {
                None => due.extend(std::iter::repeat_n(now, conn.credits.replace(0))),
                Some(iv) => {
                    // The timer wakes late: send what falls due within the
                    // slack now. Latency counts from
                    // when a message was due, or from when it left if that
                    // was earlier.
                    while next_due <= now + TIMER_SLACK {
                        due.push(next_due.min(now));
                        next_due += iv;
                    }
                }
            }
            for intended in due {
                if inflight.len() >= MAX_BACKLOG {
                    w.error(&ErrKind::Backlog);
                    continue;
                }
                inflight.push_back(w.message(&mut rng, seq, intended, now, &mut out));
                ends.push(out.len());
                seq += 1;
                n += 1;
            }
            if n > 0 {
                w.tally.borrow_mut().sent += n;
                Progress::add(&w.progress.sent, n);
            }
        } else if !conn.close_sent.get() && conn.inflight.borrow().is_empty() {
            let mut payload = Vec::with_capacity(2);
            payload.extend_from_slice(&1000u16.to_be_bytes());
            client::push_frame(&mut out, Opcode::Close, &payload, &mut rng);
            conn.close_sent.set(true);
        }
        if !out.is_empty() {
            let res = if w.o.coalesce || ends.len() <= 1 {
                let (res, b) = wr.write_all(out).await;
                out = b;
                res
            } else {
                // Control frames (before the first end) go with the first.
                let mut res = Ok(());
                let mut start = 0;
                ends.pop();
                ends.push(out.len());
                for &end in &ends {
                    let (r, b) = wr.write_range(out, start..end).await;
                    out = b;
                    start = end;
                    res = r;
                    if res.is_err() {
                        break;
                    }
                }
                res
            };
            out.clear();
            ends.clear();
            if res.is_err() {
                return (Err(ErrKind::Io), wr);
            }
            if out.capacity() > 1 << 20 {
                out = Vec::with_capacity(4096);
            }
        }
        if conn.close_sent.get() {
            // Keep the write half (no FIN) until the reader sees the answer.
            return (Ok(()), wr);
        }
        match interval {
            Some(_) if !conn.draining.get() => {
                let until = next_due
                    .checked_sub(TIMER_SLACK)
                    .unwrap_or(next_due)
                    .min(w.measure_to.max(now));
                let _ = monoio::time::timeout_at(
                    monoio::time::Instant::from_std(until),
                    conn.wake.wait(),
                )
                .await;
            }
            _ => conn.wake.wait().await,
        }
    }
}

/// Times out unanswered messages, tells connections when the run is over,
/// and abandons those that do not close in time.
async fn watchdog(w: Rc<Worker>) {
    let mut told = false;
    let grace = w.o.timeout + Duration::from_secs(1);
    loop {
        monoio::time::sleep(Duration::from_millis(50)).await;
        if w.finished.get() {
            return;
        }
        let now = Instant::now();
        let over = w.over();
        let hard = now >= w.measure_to + grace;
        let mut conns = w.conns.borrow_mut();
        conns.retain(|c| c.strong_count() > 0);
        for c in conns.iter().filter_map(Weak::upgrade) {
            if over && !told {
                c.wake.raise();
            }
            if !c.alive.get() || c.timed_out.get().is_some() {
                continue;
            }
            let oldest = c.inflight.borrow().front().map(|p| p.sent);
            let kind = if oldest.is_some_and(|t| now.duration_since(t) > w.o.timeout) {
                Some(ErrKind::Timeout)
            } else if hard {
                Some(ErrKind::CloseTimeout)
            } else {
                None
            };
            if kind.is_some() {
                c.timed_out.set(kind);
                sys::shutdown(c.fd);
            }
        }
        told |= over;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(Sizes::parse("64").unwrap(), Sizes::List(vec![64]));
        assert_eq!(
            Sizes::parse("1k,16K").unwrap(),
            Sizes::List(vec![1024, 16384])
        );
        assert_eq!(Sizes::parse("1..1k").unwrap(), Sizes::Range(1, 1024));
        assert!(Sizes::parse("5..1").is_err());
        assert_eq!(Sizes::parse("64..1k").unwrap().max(), 1024);
    }
}
