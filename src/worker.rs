//! A worker: one monoio runtime on one pinned thread, with its own
//! `SO_REUSEPORT` listener on every configured address, its own buffer pool,
//! masking keys and counters. A client and its backend connection live and
//! die on the worker that accepted the client; nothing here is shared with
//! another worker except the read-only config and the counters it alone writes.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use monoio::net::TcpListener;
use tracing::{debug, error, info};

use crate::config::IoDriver;
use crate::control::{Control, ControlReceiver};
use crate::generation::{Generation, WorkerGen};
use crate::pool::{self, Pool, TRIM_INTERVAL};
use crate::proto::mask::MaskKeyGen;
use crate::relay::{Shutdown, Worker as RelayWorker};
use crate::stats::Stats;

/// Spare buffers a worker's pool keeps for good (2 MiB at the default
/// 64 KiB buffer size); more are kept after a burst and trimmed back to
/// this over a few seconds (see [`crate::pool`]).
const POOL_KEEP: usize = 32;

/// What one worker owns and every session on it borrows.
#[derive(Debug)]
pub struct WorkerCtx {
    /// The worker's index (its thread is `wsedge-worker-{id}`).
    pub id: usize,
    /// The relays' buffer pool, masking keys (also used for backend
    /// handshake nonces) and shutdown flag.
    pub relay: Rc<RelayWorker>,
    /// This worker's counters.
    pub stats: Arc<Stats>,
    /// Where this worker's built-in echo server listens, if configured.
    pub echo_addr: Option<SocketAddr>,
    /// The configuration generation new connections start under (a
    /// session keeps the one it started with; a reload replaces this).
    current: RefCell<Rc<WorkerGen>>,
    /// The shutdown wait, woken when the last connection ends.
    drained: RefCell<Option<Waker>>,
    /// Rows written by sessions for the admin API's connection list.
    pub reports: RefCell<Vec<crate::control::ConnRow>>,
    /// The experimental native relay ring (`WSEDGE_NATIVE_RELAY=1`, io_uring).
    pub native: Option<Rc<crate::uring::native::Native>>,
}

impl WorkerCtx {
    /// The current configuration generation.
    pub fn current(&self) -> Rc<WorkerGen> {
        Rc::clone(&self.current.borrow())
    }

    /// Called by each session as it ends (after uncounting itself): wakes
    /// the shutdown wait when it was the last one.
    pub(crate) fn session_ended(&self) {
        if self.stats.active.get() == 0 {
            let waiter = self.drained.borrow_mut().take();
            if let Some(w) = waiter {
                w.wake();
            }
        }
    }

    /// Resolves when no connection is open on this worker.
    async fn drained(&self) {
        poll_fn(|cx| {
            if self.stats.active.get() == 0 {
                Poll::Ready(())
            } else {
                *self.drained.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// Everything a worker thread is started with.
#[derive(Debug)]
pub struct WorkerSpec {
    /// Index.
    pub id: usize,
    /// The core to pin to.
    pub core: Option<core_affinity::CoreId>,
    /// Bound, listening sockets, by configured address.
    pub listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    /// The built-in echo server's socket, if configured.
    pub echo: Option<std::net::TcpListener>,
    /// The configuration generation to start with.
    pub generation: Arc<Generation>,
    /// The worker's counters.
    pub stats: Arc<Stats>,
    /// How many workers the server runs.
    pub workers: usize,
    /// Workers of this server whose connections have not all ended yet
    /// (starts at `workers`): a worker that serves the built-in echo keeps
    /// it running until this is zero, since any worker's relays may be
    /// connected to it.
    pub relaying: Arc<std::sync::atomic::AtomicUsize>,
    /// The worker's end of its control channel.
    pub control: ControlReceiver,
    /// Tells the starter which driver came up (or why the one configured
    /// did not).
    pub ready: std::sync::mpsc::Sender<io::Result<&'static str>>,
}

/// Runs a worker to completion on the current thread.
pub fn run(spec: WorkerSpec) {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    spec.stats.tid.store(
        u32::try_from(tid).unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(core) = spec.core {
        core_affinity::set_for_current(core);
    }
    let driver = spec.generation.config.io_driver;
    let entries = 4096;
    macro_rules! go {
        ($rt:expr, $name:expr) => {{
            let _ = spec.ready.send(Ok($name));
            $rt.block_on(worker_main(spec, $name == "io_uring"))
        }};
    }
    match driver {
        IoDriver::Auto => match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => {
                let name = match &rt {
                    monoio::FusionRuntime::Uring(_) => "io_uring",
                    monoio::FusionRuntime::Legacy(_) => "epoll",
                };
                go!(rt, name)
            }
            Err(e) => {
                let _ = spec.ready.send(Err(e));
            }
        },
        IoDriver::Uring => match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .enable_timer()
            .build()
        {
            Ok(mut rt) => go!(rt, "io_uring"),
            Err(e) => {
                let _ = spec.ready.send(Err(e));
            }
        },
        IoDriver::Epoll => match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(mut rt) => go!(rt, "epoll"),
            Err(e) => {
                let _ = spec.ready.send(Err(e));
            }
        },
    }
}

async fn worker_main(spec: WorkerSpec, uring: bool) {
    let buffer_size = spec.generation.config.limits.buffer_size;
    let native = (uring && crate::uring::native::wanted())
        .then(|| {
            // Receive buffers: `limits.buffer_size` each (the headroom
            // included), up to 1,024 per worker; only those in use and a
            // few warm ones hold memory.
            let size = u32::try_from(buffer_size).unwrap_or(u32::MAX);
            crate::uring::native::Native::new(1024, size)
                .inspect_err(|e| error!(worker = spec.id, "native relay ring: {e}"))
                .ok()
        })
        .flatten();
    let ctx = Rc::new(WorkerCtx {
        id: spec.id,
        relay: Rc::new(RelayWorker {
            pool: Pool::new(buffer_size, POOL_KEEP),
            keys: RefCell::new(MaskKeyGen::from_os_rng()),
            shutdown: Shutdown::default(),
            stats: Some(Arc::clone(&spec.stats)),
        }),
        stats: spec.stats,
        echo_addr: spec.echo.as_ref().and_then(|l| l.local_addr().ok()),
        current: RefCell::new(Rc::new(WorkerGen::new(spec.generation, spec.id))),
        drained: RefCell::new(None),
        reports: RefCell::new(Vec::new()),
        native,
    });
    if let Some(n) = &ctx.native {
        info!(worker = ctx.id, "native relay ring (experimental)");
        let c = Rc::clone(&ctx);
        monoio::spawn(Rc::clone(n).run(move || c.relay.shutdown.is_fired()));
    }
    monoio::spawn(trim_pool(Rc::clone(&ctx.relay.pool)));
    monoio::spawn(crate::rebalance::run(Rc::clone(&ctx), spec.workers));

    let serves_echo = spec.echo.is_some();
    if let Some(echo) = spec.echo {
        match TcpListener::from_std(echo) {
            Ok(l) => {
                monoio::spawn(crate::echo::serve(l, Rc::clone(&ctx.relay.pool)));
            }
            Err(e) => error!(worker = ctx.id, "built-in echo server: {e}"),
        }
    }
    let mut listening = Listening {
        loops: Vec::new(),
        all: Rc::new(crate::relay::Shutdown::default()),
    };
    for (key, l) in spec.listeners {
        listening.add(&ctx, key, l);
    }

    // Serve until told to stop, or until the server (which holds every
    // sender) is gone. The control channel wakes this task from the sending
    // thread; an idle worker does nothing until then.
    let mut control = spec.control;
    if let Some(Control::Drain { delay, period }) =
        operate(&ctx, &mut control, &mut listening).await
    {
        drain(&ctx, &mut control, &mut listening, delay, period).await;
    }
    // Stop accepting and close every relayed connection with 1001 (both
    // wait on the worker's shutdown flag), then give them the grace period,
    // ending early when the last one is gone.
    ctx.relay.shutdown.fire();
    for l in listening.loops {
        l.handle.await;
    }
    monoio::select! {
        _ = ctx.drained() => {}
        _ = monoio::time::sleep(ctx.current().config.timeouts.shutdown_grace) => {}
    }
    info!(
        worker = ctx.id,
        left = ctx.stats.active.get(),
        "worker stopped"
    );
    // The built-in echo serves every worker's relays (the kernel spreads
    // its connections over the workers' sockets): keep it answering until
    // the other workers' connections have ended too, or their closes and
    // handshakes to it would wait for a timeout.
    spec.relaying
        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    if serves_echo {
        let grace = ctx.current().config.timeouts.shutdown_grace;
        let others = async {
            while spec.relaying.load(std::sync::atomic::Ordering::Acquire) > 0 {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        monoio::select! {
            _ = others => {}
            _ = monoio::time::sleep(grace) => {}
        }
    }
}

/// A worker's accept loops, one per listening socket.
struct Listening {
    loops: Vec<AcceptLoop>,
    /// Stops them all (a drain's end of accepting).
    all: Rc<crate::relay::Shutdown>,
}

struct AcceptLoop {
    /// The configured address it serves.
    key: SocketAddr,
    /// Stops this one (its listener was removed by a reload).
    stop: Rc<crate::relay::Shutdown>,
    handle: monoio::task::JoinHandle<()>,
}

impl Listening {
    /// Starts accepting on `l` for the listener configured at `key`.
    fn add(&mut self, ctx: &Rc<WorkerCtx>, key: SocketAddr, l: std::net::TcpListener) {
        match TcpListener::from_std(l) {
            Ok(l) => {
                let stop = Rc::new(crate::relay::Shutdown::default());
                let handle = monoio::spawn(accept_loop(
                    Rc::clone(ctx),
                    l,
                    key,
                    Rc::clone(&self.all),
                    Rc::clone(&stop),
                ));
                self.loops.push(AcceptLoop { key, stop, handle });
            }
            Err(e) => error!(worker = ctx.id, "listener {key}: {e}"),
        }
    }

    /// Stops accepting on the listener configured at `key` and closes its
    /// sockets (once their loops have ended).
    fn remove(&mut self, key: SocketAddr) {
        for l in self.loops.iter().filter(|l| l.key == key) {
            l.stop.fire();
        }
        self.loops.retain(|l| l.key != key);
    }
}

/// Switches to a reloaded configuration: new connections start under
/// `generation`, new listeners accept, removed ones close. Connections
/// already open keep the generation they started with.
fn reload(ctx: &Rc<WorkerCtx>, listening: &mut Listening, r: &crate::control::Reload) {
    *ctx.current.borrow_mut() = Rc::new(WorkerGen::new(Arc::clone(&r.generation), ctx.id));
    for key in &r.removed {
        listening.remove(*key);
    }
    let added = r
        .added
        .lock()
        .ok()
        .and_then(|mut a| a.get_mut(ctx.id).map(std::mem::take))
        .unwrap_or_default();
    for (key, l) in added {
        listening.add(ctx, key, l);
    }
    debug!(
        worker = ctx.id,
        generation = r.generation.serial,
        "configuration generation switched"
    );
}

/// Answers operator requests (the connection list, closes, reloads) until
/// a stop comes (or every sender is gone): returns it.
async fn operate(
    ctx: &Rc<WorkerCtx>,
    control: &mut crate::control::ControlReceiver,
    listening: &mut Listening,
) -> Option<Control> {
    loop {
        match control.recv().await {
            Some(Control::Reload(r)) => {
                reload(ctx, listening, &r);
                let _ = r.reply.send(ctx.id);
            }
            Some(Control::Connections(reply)) => {
                let _ = reply.send(connections(ctx).await);
            }
            Some(Control::Close {
                slot,
                serial,
                code,
                reason,
                reply,
            }) => {
                let shutdown = &ctx.relay.shutdown;
                let found = shutdown
                    .tagged()
                    .into_iter()
                    .any(|(s, t)| s == slot && t.since_ms == serial);
                if found {
                    shutdown.request_close(
                        slot,
                        crate::relay::CloseRequest {
                            why: crate::relay::Ending::ByOperator,
                            code: crate::proto::close::CloseCode(code),
                            reason,
                        },
                    );
                    info!(
                        worker = ctx.id,
                        slot, code, reason, "closing a connection for the admin API"
                    );
                }
                let _ = reply.send(found);
            }
            other => return other,
        }
    }
}

/// Every relayed connection's row: each session writes its own when it
/// sees the report epoch change (no connection state is kept for this
/// meanwhile); the rows of the sessions woken are in after a moment.
async fn connections(ctx: &WorkerCtx) -> Vec<crate::control::ConnRow> {
    ctx.reports.borrow_mut().clear();
    ctx.relay.shutdown.request_reports();
    // The woken sessions run before this timer fires.
    monoio::time::sleep(Duration::from_millis(2)).await;
    std::mem::take(&mut *ctx.reports.borrow_mut())
}

/// The paced drain of [`Control::Drain`]: accept for `delay`, stop
/// accepting, then close the relayed connections with 1001 "going away"
/// one by one, in a random order, at jittered times spread evenly over
/// `period` (connection *i* of *n* at `period × (i + u) / n`, `u` uniform
/// in [0, 1)), so their clients do not all reconnect at once. Any message
/// on the control channel (a `Stop`: SIGINT during a drain) cuts it short.
async fn drain(
    ctx: &Rc<WorkerCtx>,
    control: &mut crate::control::ControlReceiver,
    listening: &mut Listening,
    delay: Duration,
    period: Duration,
) {
    let stop_accepting = Rc::clone(&listening.all);
    let paced = async {
        monoio::time::sleep(delay).await;
        stop_accepting.fire();
        // The native relay ring's connections are not paced yet: they all
        // get their 1001 now.
        if let Some(native) = &ctx.native {
            native.shutdown();
        }
        let mut slots: Vec<usize> = ctx
            .relay
            .shutdown
            .tagged()
            .into_iter()
            .map(|(slot, _)| slot)
            .collect();
        let n = slots.len();
        info!(worker = ctx.id, connections = n, period = ?period, "draining: closing connections with 1001, spread over the drain period");
        let random = || u32::from_le_bytes(ctx.relay.keys.borrow_mut().next_key());
        for i in (1..n).rev() {
            slots.swap(i, random() as usize % (i + 1));
        }
        let start = monoio::time::Instant::now();
        for (i, slot) in slots.into_iter().enumerate() {
            let at = (i as f64 + f64::from(random()) / f64::from(u32::MAX)) / n as f64;
            monoio::time::sleep_until(start + period.mul_f64(at)).await;
            // Only a relay still there (its slot may have been freed).
            if ctx.relay.shutdown.is_tagged(slot) {
                ctx.relay.shutdown.request_close(
                    slot,
                    crate::relay::CloseRequest {
                        why: crate::relay::Ending::Shutdown,
                        code: crate::proto::close::CloseCode::GOING_AWAY,
                        reason: "going away",
                    },
                );
            }
        }
        // The close handshakes asked for: let them finish (up to the grace
        // period) before what is left is closed as in a plain stop.
        // Connections whose handshake was under way when accepting stopped
        // start relaying after the list was taken: they get their 1001 as
        // they come.
        let grace = ctx.current().config.timeouts.shutdown_grace;
        let stragglers = async {
            loop {
                monoio::time::sleep(Duration::from_millis(100)).await;
                for (slot, tag) in ctx.relay.shutdown.tagged() {
                    if !tag.closing {
                        ctx.relay.shutdown.request_close(
                            slot,
                            crate::relay::CloseRequest {
                                why: crate::relay::Ending::Shutdown,
                                code: crate::proto::close::CloseCode::GOING_AWAY,
                                reason: "going away",
                            },
                        );
                    }
                }
            }
        };
        monoio::select! {
            _ = ctx.drained() => {}
            _ = stragglers => {}
            _ = monoio::time::sleep(grace) => {}
        }
    };
    monoio::select! {
        _ = paced => {}
        _ = operate(ctx, control, listening) => {
            info!(worker = ctx.id, "drain cut short: stopping now");
        }
    }
}

/// Gives the pool's surplus back to the allocator: sleeps while the pool
/// holds no more than it keeps, trims every [`TRIM_INTERVAL`] while it holds
/// more, and once it is down to what it keeps, asks the allocator to return
/// what was freed to the OS ([`pool::release`]).
async fn trim_pool(pool: Rc<Pool>) {
    loop {
        pool.surplus().await;
        let mut freed = 0;
        while pool.idle() > pool.keep() {
            monoio::time::sleep(TRIM_INTERVAL).await;
            freed += pool.trim();
        }
        if freed > 0 {
            let started = std::time::Instant::now();
            pool::release();
            debug!(freed, release = ?started.elapsed(), "pool trimmed");
        }
    }
}

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    key: SocketAddr,
    stop_all: Rc<crate::relay::Shutdown>,
    stop: Rc<crate::relay::Shutdown>,
) {
    use std::os::fd::AsRawFd;
    // A descriptor kept in reserve: when the process runs out, it is freed
    // to accept a waiting client and tell it 503, instead of leaving it in
    // the queue to time out (or reach a backend connect that fails: a
    // misleading 502).
    let mut reserve = std::fs::File::open("/dev/null").ok();
    let answer = crate::proto::handshake::simple_response(503, "server out of file descriptors");
    // An accept is cancelled, never dropped: with io_uring, an accept that
    // completes as it is dropped leaves a connection accepted that no one
    // serves (its client hangs). Cancelled, it either ends unaccepted or
    // yields the connection, which is then served. The listening socket
    // may live on in another process (a binary upgrade), still accepting.
    let mut canceller = monoio::io::Canceller::new();
    loop {
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let done = monoio::select! {
            r = &mut accept => Some(r),
            _ = ctx.relay.shutdown.fired() => None,
            _ = stop_all.fired() => None,
            _ = stop.fired() => None,
        };
        let (accepted, last) = match done {
            Some(r) => (r, false),
            None => {
                canceller = canceller.cancel();
                (accept.await, true)
            }
        };
        if last && accepted.is_err() {
            return;
        }
        match accepted {
            Ok((stream, peer)) if last => {
                ctx.stats.accepted.inc();
                ctx.stats.active.inc();
                monoio::spawn(crate::session::serve(Rc::clone(&ctx), stream, peer, key));
                return;
            }
            Ok((stream, peer)) => {
                ctx.stats.accepted.inc();
                ctx.stats.active.inc();
                // The session itself is the task (no async block around it:
                // that would hold the session twice, as a capture and as the
                // awaited future, and double what an idle connection costs).
                monoio::spawn(crate::session::serve(Rc::clone(&ctx), stream, peer, key));
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                let answered =
                    crate::sys::refuse_one_without_fds(listener.as_raw_fd(), &mut reserve, &answer);
                if answered {
                    ctx.stats.refused.inc();
                    ctx.stats.refused_with(503);
                }
                let now_s = crate::fleet::now_ms() / 1000;
                let d = ctx.current().policy.log.admit("out_of_fds", now_s);
                if let Some(n) = d.summary {
                    error!(
                        worker = ctx.id,
                        "{n} more clients refused with 503 for want of file descriptors in the last second"
                    );
                }
                if d.log {
                    error!(
                        worker = ctx.id,
                        "accept failed: {e}: the client got 503; raise the open-file limit (LimitNOFILE, ulimit -n) or lower limits.max_connections"
                    );
                }
                if !answered {
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e) => {
                // Back off instead of spinning.
                error!(worker = ctx.id, "accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
