//! The poll-io driver: a relayed connection as one hand-written future over
//! monoio's poll-io sockets, around the sans-IO [`Core`].
//!
//! The driver owns the two sockets, the buffer each direction has in flight
//! (borrowed from the worker's pool for one read and the write that follows,
//! so an idle connection holds none), and one timer. Everything else — what
//! to write, which close to send, when to read, when to be woken — is the
//! core's decision. Each poll does a bounded amount of work per direction
//! ([`READS_PER_POLL`]) and re-wakes itself when it stops with work left,
//! so one busy connection cannot starve the others on its worker.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::time::Sleep;

use super::closing::TcpAction;
use super::walk::MessageSizes;
use super::{Core, Leg, Outcome, RelayConfig, Worker};
use crate::pool::PoolBuf;
use crate::transport::Transport;

/// Reads per direction in one poll before the relay yields to its
/// neighbours (readiness is edge-triggered: the task wakes itself again).
pub const READS_PER_POLL: u32 = 16;

// A relayed connection's whole state while idle (the core, two sockets, no
// buffer): grows only on purpose (see docs/benchmarks.md). A TLS leg adds
// its boxed record layer.
const _: () = assert!(
    std::mem::size_of::<Relay<crate::transport::Stream, crate::transport::Stream>>() <= 896
);

/// Bytes on their way out of the buffer they were read into.
struct Out {
    buf: PoolBuf,
    written: u32,
    end: u32,
}

/// A relayed connection: resolves when both close handshakes are done (or
/// timed out), with what happened.
pub struct Relay<C, B> {
    client: C,
    backend: B,
    core: Core,
    /// In flight, by source leg.
    out: [Option<Out>; 2],
    /// Bytes that came with the handshake heads, relayed before any read.
    pending: Option<Box<[Vec<u8>; 2]>>,
    timer: Option<Pin<Box<Sleep>>>,
    worker: Rc<Worker>,
    shutdown_slot: Option<usize>,
}

impl<C, B> std::fmt::Debug for Relay<C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl<C, B> Relay<C, B> {
    /// Installs per-connection policy (rate limits, a deadline); before the
    /// first poll. Deadlines count from when the relay was made.
    pub fn set_policy(&mut self, policy: super::limit::Policy) {
        self.core.set_policy(policy);
    }

    /// The last keepalive ping round trip of `leg`, if it was pinged.
    pub fn ping_rtt(&self, leg: super::Leg) -> Option<std::time::Duration> {
        self.core.ping_rtt(leg)
    }

    /// What each side has sent so far: (client, backend).
    pub fn counters(&self) -> (super::core::DirStats, super::core::DirStats) {
        (
            self.core.stats(super::Leg::Client),
            self.core.stats(super::Leg::Backend),
        )
    }

    /// Its slot in the worker's registry, once it has been polled.
    pub fn registry_slot(&self) -> Option<usize> {
        self.shutdown_slot
    }
}

impl<C: Transport, B: Transport> Relay<C, B> {
    /// A relay between `client` and `backend`. `from_client` and
    /// `from_backend` are bytes that came after the handshake heads,
    /// relayed first.
    pub fn new(
        client: C,
        backend: B,
        from_client: Vec<u8>,
        from_backend: Vec<u8>,
        cfg: &RelayConfig,
        worker: Rc<Worker>,
    ) -> Self {
        let pending = (!from_client.is_empty() || !from_backend.is_empty())
            .then(|| Box::new([from_client, from_backend]));
        Relay {
            client,
            backend,
            core: Core::new(cfg, Instant::now()),
            out: [None, None],
            pending,
            timer: None,
            worker,
            shutdown_slot: None,
        }
    }
}

/// One direction's I/O: finish the write in flight, write wsedge's own
/// frames, take TCP actions, then read and hand the bytes to the core.
#[allow(clippy::too_many_arguments)]
fn poll_dir<S: Transport, D: Transport>(
    cx: &mut Context<'_>,
    core: &mut Core,
    out: &mut Option<Out>,
    pending: &mut Option<Box<[Vec<u8>; 2]>>,
    sl: Leg,
    src: &mut S,
    dst: &mut D,
    w: &Worker,
    now: u64,
) -> Poll<()> {
    let dl = sl.other();
    let mut reads = READS_PER_POLL;
    loop {
        // A dead destination is dropped, whatever is pending for it.
        if core.must_drop(dl) {
            *out = None;
            let _ = core.take_tcp_action(dl);
            let _ = dst.shutdown_both();
        }
        // 1. Finish writing what was read.
        if let Some(o) = out {
            while o.written < o.end {
                match dst.poll_write(cx, &o.buf[o.written as usize..o.end as usize]) {
                    Poll::Ready(Ok(n)) if n > 0 => o.written += n as u32,
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(r) => {
                        *out = None;
                        core.on_write_error(dl, error_kind(r), now);
                        break;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if out.take().is_some() {
                core.on_forwarded(sl, now);
            }
        }
        // 2. wsedge's own frames (close, ping) on the destination.
        while core.owes_frame(dl) {
            let Some(bytes) = core.own_frame(dl, now, &mut w.keys.borrow_mut()) else {
                break;
            };
            match dst.poll_write(cx, bytes) {
                Poll::Ready(Ok(n)) if n > 0 => core.own_frame_written(dl, n),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Poll::Ready(r) => {
                    core.on_write_error(dl, error_kind(r), now);
                    break;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        // 3. What the core decided for the destination's TCP connection.
        match core.take_tcp_action(dl) {
            Some(TcpAction::ShutdownWrite) => {
                let _ = dst.shutdown_write();
            }
            Some(TcpAction::Drop) => {
                let _ = dst.shutdown_both();
            }
            None => {}
        }
        // 4. Read, if the core wants it. The buffer goes back to the pool
        // if nothing is there.
        if !core.wants_read(sl) {
            return Poll::Pending;
        }
        if reads == 0 {
            // Fair share used: let the worker's other connections run.
            wake_after_others(cx);
            return Poll::Pending;
        }
        reads -= 1;
        let mut buf = w.pool.take();
        let carried = core.begin_read(sl, &mut buf);
        let n = match pending.as_mut().map(|p| &mut p[sl as usize]) {
            Some(p) if !p.is_empty() => {
                let n = p.len().min(buf.len() - carried);
                buf[carried..carried + n].copy_from_slice(&p[..n]);
                p.drain(..n);
                if pending
                    .as_ref()
                    .is_some_and(|p| p.iter().all(Vec::is_empty))
                {
                    *pending = None;
                }
                n
            }
            _ => match src.poll_read(cx, &mut buf[carried..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    core.on_read_end(sl, None, now);
                    continue;
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => {
                    core.on_read_end(sl, Some(e.kind()), now);
                    continue;
                }
            },
        };
        let mut sizes = MessageSizes::default();
        let end = core.on_read(
            sl,
            &mut buf[..carried + n],
            now,
            &mut w.keys.borrow_mut(),
            &mut sizes,
        );
        if sizes.counts.iter().any(|&n| n > 0)
            && let Some(stats) = &w.stats
        {
            stats.ws.message_sizes[sl as usize].record(&sizes);
        }
        if end > 0 {
            *out = Some(Out {
                buf,
                written: 0,
                // Buffers are at most 64 MiB (config).
                end: end as u32,
            });
        }
    }
}

/// Wakes the task polling `cx` after its neighbours on this worker have run
/// and the io driver has been polled. A plain `wake_by_ref` does neither:
/// monoio (0.2) puts a task that wakes itself while running at the *front*
/// of its run queue, and under io_uring it collects poll-io readiness only
/// when the worker parks, which it never does while tasks are queued. So a
/// fresh task (queued at the back) waits for a timer that is already due: it
/// fires at the worker's next park, which does not block, or at once if the
/// worker parked within the last millisecond; then it wakes this one.
fn wake_after_others(cx: &Context<'_>) {
    let waker = cx.waker().clone();
    let due = monoio::time::Instant::now() - Duration::from_millis(1);
    monoio::spawn(async move {
        monoio::time::sleep_until(due).await;
        waker.wake();
    });
}

fn error_kind(r: io::Result<usize>) -> io::ErrorKind {
    match r {
        Ok(_) => io::ErrorKind::WriteZero,
        Err(e) => e.kind(),
    }
}

impl<C: Transport, B: Transport> Future for Relay<C, B> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        // One clock read per poll; the core works in µs on its own clock.
        let now = this.core.clock(Instant::now());
        let shutdown = &this.worker.shutdown;
        match this.shutdown_slot {
            None => this.shutdown_slot = Some(shutdown.register(cx.waker())),
            Some(slot) => shutdown.update(slot, cx.waker()),
        }
        if shutdown.is_fired() {
            this.core.shutdown(now);
        }
        if let Some(r) = this
            .shutdown_slot
            .and_then(|slot| shutdown.take_request(slot))
        {
            this.core.close(r.why, r.code, r.reason, now);
        }
        let mut timer_fires = 0;
        loop {
            let w = &*this.worker;
            let _ = poll_dir(
                cx,
                &mut this.core,
                &mut this.out[0],
                &mut this.pending,
                Leg::Client,
                &mut this.client,
                &mut this.backend,
                w,
                now,
            );
            let _ = poll_dir(
                cx,
                &mut this.core,
                &mut this.out[1],
                &mut this.pending,
                Leg::Backend,
                &mut this.backend,
                &mut this.client,
                w,
                now,
            );
            if this.core.is_done() {
                // Both sockets are closed when the relay is dropped, right
                // after this; the client's FIN goes out with that close (the
                // server side closes first, RFC 6455 §7.1.1).
                return Poll::Ready(this.core.outcome());
            }
            let mut fired = false;
            if let Some(at) = this.core.poll_timeout() {
                let at = monoio::time::Instant::from_std(at);
                let timer = match &mut this.timer {
                    // Armed for later than needed (or already spent): re-arm.
                    // Armed earlier is fine: it fires, the core does what is
                    // due (perhaps nothing), and the timer is re-armed.
                    Some(t) if t.deadline() > at || t.is_elapsed() => {
                        t.as_mut().reset(at);
                        t
                    }
                    Some(t) => t,
                    None => this.timer.insert(Box::pin(monoio::time::sleep_until(at))),
                };
                if timer.as_mut().poll(cx).is_ready() {
                    if timer_fires == 4 {
                        // Never spin here: come back on the next turn.
                        wake_after_others(cx);
                        return Poll::Pending;
                    }
                    timer_fires += 1;
                    let now = this.core.clock(Instant::now());
                    this.core
                        .on_timeout(now, &mut this.worker.keys.borrow_mut());
                    fired = true;
                }
            }
            if !this.core.take_repoll() && !fired {
                return Poll::Pending;
            }
        }
    }
}

impl<C, B> Drop for Relay<C, B> {
    fn drop(&mut self) {
        if let Some(slot) = self.shutdown_slot {
            self.worker.shutdown.unregister(slot);
        }
    }
}
