//! Starting and stopping the workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, anyhow};
use tracing::info;

use crate::config::Config;
use crate::listener::bind_all;
use crate::stats::Stats;
use crate::worker::{self, WorkerSpec};

/// Running workers.
#[derive(Debug)]
pub struct Server {
    /// The addresses clients can connect to (ports resolved when 0 was asked).
    pub addrs: Vec<SocketAddr>,
    /// The built-in echo server's address, if configured.
    pub echo_addr: Option<SocketAddr>,
    /// The io driver each worker got, by worker index.
    pub drivers: Vec<&'static str>,
    /// Each worker's counters.
    pub stats: Vec<Arc<Stats>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How many workers `workers = 0` means: the CPUs this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Server {
    /// Binds every listener and starts the workers. Returns once each worker
    /// has its runtime up; errors (address in use, io_uring refused when
    /// forced) are returned here, before anything is served.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        let n = if config.workers == 0 {
            default_workers()
        } else {
            config.workers
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default();

        let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for l in &config.listeners {
            let socks = bind_all(l.address, l.backlog, n)
                .with_context(|| format!("cannot listen on {}", l.address))?;
            addrs.push(socks[0].local_addr()?);
            for (w, s) in socks.into_iter().enumerate() {
                per_worker[w].push(s);
            }
        }
        let mut echo: Vec<Option<std::net::TcpListener>> = (0..n).map(|_| None).collect();
        let mut echo_addr = None;
        if config.uses_builtin_echo() {
            let socks = bind_all("127.0.0.1:0".parse()?, 1024, n)
                .context("cannot start the built-in echo server")?;
            echo_addr = Some(socks[0].local_addr()?);
            for (w, s) in socks.into_iter().enumerate() {
                echo[w] = Some(s);
            }
        }

        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut drivers = Vec::new();
        let mut stats = Vec::new();
        for (id, (listeners, echo)) in per_worker.into_iter().zip(echo).enumerate() {
            let (tx, rx) = std::sync::mpsc::channel();
            let s = Arc::new(Stats::default());
            stats.push(Arc::clone(&s));
            let spec = WorkerSpec {
                id,
                core: if cores.is_empty() {
                    None
                } else {
                    Some(cores[id % cores.len()])
                },
                listeners,
                echo,
                config: Arc::clone(&config),
                stats: s,
                stop: Arc::clone(&stop),
                ready: tx,
            };
            let t = std::thread::Builder::new()
                .name(format!("wsedge-worker-{id}"))
                .spawn(move || worker::run(spec))
                .context("cannot start a worker thread")?;
            threads.push(t);
            match rx.recv() {
                Ok(Ok(driver)) => {
                    info!(worker = id, core = ?cores.get(id % cores.len().max(1)).map(|c| c.id), driver, "worker started");
                    drivers.push(driver);
                }
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(anyhow!("worker {id}: {e}"));
                }
                Err(_) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(anyhow!("worker {id} died while starting"));
                }
            }
        }
        Ok(Server {
            addrs,
            echo_addr,
            drivers,
            stats,
            stop,
            threads,
        })
    }

    /// Stops accepting, sends 1001 to every client and backend, waits up to
    /// the grace period for the close handshakes, and joins the workers.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// The counters summed over the workers.
    pub fn totals(&self) -> Vec<(&'static str, u64)> {
        crate::stats::sum(&self.stats)
    }
}

/// Blocks the calling thread until SIGINT or SIGTERM arrives. Call
/// [`block_shutdown_signals`] first, before any thread is started.
pub fn wait_for_shutdown_signal() -> i32 {
    crate::sys::wait_for_signals(&[libc::SIGINT, libc::SIGTERM])
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts
/// afterwards, so that [`wait_for_shutdown_signal`] receives them.
pub fn block_shutdown_signals() {
    crate::sys::block_signals(&[libc::SIGINT, libc::SIGTERM]);
}
