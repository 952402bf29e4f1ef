//! `wsload idle`: opens N connections and holds them (answering pings) until
//! a duration passes or SIGINT/SIGTERM, for memory-per-connection figures.
//! With `--source-ips` the connections come from many loopback addresses,
//! past the ~28k ephemeral ports of one address pair.

use std::cell::RefCell;
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
use crate::report::{self, Machine};
use crate::stats::{ErrKind, Progress, Tally};
use crate::stream::Stream;
use crate::sync::Gate;
use crate::sys;

#[derive(Debug, Clone)]
pub struct IdleOpts {
    pub target: Target,
    pub connections: usize,
    pub duration: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub concurrency: usize,
    pub workers: usize,
    pub pin: bool,
    pub timeout: Duration,
    pub sources: Vec<IpAddr>,
    pub watch: Vec<(String, u32)>,
    pub json: Option<PathBuf>,
}

/// A watched process's memory with the connections open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchedRss {
    pub name: String,
    pub pid: u32,
    pub rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleReport {
    pub command: String,
    pub url: String,
    pub connections: usize,
    pub workers: usize,
    pub source_ips: usize,
    pub machine: Machine,
    /// Open once all attempts were done.
    pub established: u64,
    /// Seconds until all attempts were done.
    pub ramp_s: f64,
    /// Open when the hold ended.
    pub open_at_end: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// RSS of watched processes one second after all were open.
    pub watched: Vec<WatchedRss>,
}

pub fn from_args(a: crate::cli::IdleArgs) -> anyhow::Result<IdleOpts> {
    let c = a.client;
    Ok(IdleOpts {
        target: c.target(&a.url, false)?,
        connections: a.connections,
        duration: a.duration,
        ready_file: a.ready_file,
        concurrency: a.concurrency.max(1),
        workers: c.worker_count(a.connections),
        pin: !c.no_pin,
        timeout: c.timeout,
        sources: c.sources()?,
        watch: c.watched()?,
        json: c.json,
    })
}

pub fn run(o: IdleOpts) -> anyhow::Result<IdleReport> {
    sys::raise_nofile_limit();
    sys::install_stop_handler();
    println!(
        "wsload idle {} | connections {} | hold {} | workers {}{}",
        o.target.url,
        o.connections,
        o.duration
            .map_or("until SIGINT/SIGTERM".into(), |d| format!("{d:?}")),
        o.workers,
        if o.sources.is_empty() {
            String::new()
        } else {
            format!(" | {} source addresses", o.sources.len())
        }
    );
    let o = Arc::new(o);
    let progress: Vec<Arc<Progress>> = (0..o.workers).map(|_| Arc::default()).collect();
    let errors: Vec<Arc<std::sync::Mutex<Tally>>> =
        (0..o.workers).map(|_| Arc::default()).collect();
    let start = Instant::now();
    let _handles = {
        let (o, progress, errors) = (o.clone(), progress.clone(), errors.clone());
        net::spawn_workers("wsload-idle", o.workers, o.pin, 8192, move |i| {
            worker(i, o.clone(), progress[i].clone(), errors[i].clone())
        })?
    };
    // Ramp up: wait until every connection is open or has failed.
    let mut last_print = Instant::now();
    while Progress::sum(&progress, |p| &p.done) < o.connections as u64 && !sys::stop_requested() {
        std::thread::sleep(Duration::from_millis(20));
        if last_print.elapsed() > Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "  opening: {} open, {} failed",
                Progress::sum(&progress, |p| &p.open),
                Progress::sum(&progress, |p| &p.errors)
            );
        }
    }
    let ramp = start.elapsed();
    let established = Progress::sum(&progress, |p| &p.open);
    println!(
        "ready: {established} open, {} failed, in {:.2} s",
        Progress::sum(&progress, |p| &p.errors),
        ramp.as_secs_f64()
    );
    if let Some(f) = &o.ready_file {
        std::fs::write(f, format!("{established}\n"))?;
    }
    std::thread::sleep(Duration::from_secs(1));
    let watched: Vec<WatchedRss> = o
        .watch
        .iter()
        .map(|(name, pid)| WatchedRss {
            name: name.clone(),
            pid: *pid,
            rss_bytes: sys::tree_rss_bytes(*pid).unwrap_or(0),
        })
        .collect();
    for w in &watched {
        println!(
            "  rss {:<18} {:.1} MB ({:.0} B per open connection, all included)",
            w.name,
            w.rss_bytes as f64 / 1e6,
            w.rss_bytes as f64 / established.max(1) as f64
        );
    }
    let until = o.duration.map(|d| Instant::now() + d);
    while !sys::stop_requested() && until.is_none_or(|u| Instant::now() < u) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tally = Tally::merge(
        errors
            .iter()
            .map(|e| std::mem::take(&mut *e.lock().unwrap_or_else(|p| p.into_inner())))
            .collect(),
    );
    let r = IdleReport {
        command: "idle".into(),
        url: o.target.url.clone(),
        connections: o.connections,
        workers: o.workers,
        source_ips: o.sources.len(),
        machine: Machine::describe(),
        established,
        ramp_s: ramp.as_secs_f64(),
        open_at_end: Progress::sum(&progress, |p| &p.open),
        errors_total: tally.errors_total(),
        errors: tally.errors.clone(),
        watched,
    };
    println!(
        "held: {} open at the end of {} opened",
        r.open_at_end, r.established
    );
    report::print_errors(&r.errors);
    if let Some(p) = &o.json {
        report::write_json(p, &r)?;
    }
    // The connections close with the process.
    Ok(r)
}

async fn worker(
    idx: usize,
    o: Arc<IdleOpts>,
    progress: Arc<Progress>,
    errors: Arc<std::sync::Mutex<Tally>>,
) -> anyhow::Result<()> {
    let gate = Rc::new(Gate::new(o.concurrency));
    let rng = Rc::new(RefCell::new(KeyGen::from_os()));
    let mut tasks = Vec::new();
    for j in (idx..o.connections).step_by(o.workers.max(1)) {
        let (o, gate, rng, progress, errors) = (
            o.clone(),
            gate.clone(),
            rng.clone(),
            progress.clone(),
            errors.clone(),
        );
        tasks.push(monoio::spawn(async move {
            let source = (!o.sources.is_empty()).then(|| o.sources[j % o.sources.len()]);
            let mut rng = rng.borrow_mut().fork();
            let opened = {
                let _p = gate.acquire().await;
                client::open(&o.target, source, &mut rng, o.timeout).await
            };
            let fail = |k: ErrKind| {
                if let Ok(mut t) = errors.lock() {
                    t.error(&k);
                }
                Progress::add(&progress.errors, 1);
            };
            match opened {
                Err(k) => {
                    fail(k);
                    Progress::add(&progress.done, 1);
                }
                Ok((stream, leftover)) => {
                    Progress::add(&progress.open, 1);
                    Progress::add(&progress.done, 1);
                    let r = hold(stream, leftover, &mut rng).await;
                    Progress::sub(&progress.open, 1);
                    fail(r);
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    // Keep the runtime (and nothing else) alive until the process exits.
    loop {
        monoio::time::sleep(Duration::from_secs(3600)).await;
    }
}

/// Holds a connection, answering pings, until the server ends it.
async fn hold(mut stream: Stream, mut buf: Vec<u8>, rng: &mut KeyGen) -> ErrKind {
    buf.reserve(256);
    loop {
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            match client::next_frame(&buf, pos, 1 << 20) {
                Err(k) => return k,
                Ok((None, need)) => {
                    buf.drain(..pos);
                    if buf.capacity() < need.max(buf.len() + 256) {
                        buf.reserve(need.max(256));
                    }
                    break;
                }
                Ok((Some(f), _)) => {
                    pos = f.end;
                    match f.header.opcode {
                        Opcode::Ping => {
                            client::push_frame(&mut out, Opcode::Pong, &buf[f.start..f.end], rng)
                        }
                        Opcode::Close => {
                            return ErrKind::Close(client::close_code(&buf[f.start..f.end]));
                        }
                        _ => {}
                    }
                }
            }
        }
        if !out.is_empty() {
            let (res, _) = stream.write_all(out).await;
            if res.is_err() {
                return ErrKind::Io;
            }
        }
        let (res, b) = stream.read_more(buf).await;
        buf = b;
        match res {
            Ok(0) => return ErrKind::Close(1006),
            Ok(_) => {}
            Err(_) => return ErrKind::Io,
        }
    }
}
