//! Per-worker buffer pool.
//!
//! Buffers are fixed-size boxed slices. A relay direction takes one when its
//! source is readable and gives it back when the bytes have been written on,
//! so an idle connection holds none.
//!
//! Every buffer given back is kept, so a burst that returns finds its
//! buffers again; the spares above `keep` are then given back to the
//! allocator gradually by [`Pool::trim`], which the worker calls every
//! [`TRIM_INTERVAL`] while there is a surplus (see [`Pool::surplus`]).
//! `trim` frees only buffers that stayed idle for the whole interval since
//! the previous call, and half of those at a time, so a load that keeps
//! coming back keeps its buffers and a burst that is over is returned to the
//! allocator within a few seconds. The pool reads no clock: the caller's
//! timer is the interval.
//!
//! Freeing a buffer does not by itself lower the process's resident memory:
//! an allocator such as mimalloc keeps freed pages and returns them to the
//! OS later, on later allocator activity, which an idle worker does not
//! have. The binary therefore registers its allocator's "return freed
//! memory now" with [`set_release_hook`], and the worker calls
//! [`release`] once a round of trimming is over.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Poll, Waker};
use std::time::Duration;

/// How often a worker calls [`Pool::trim`] while its pool holds a surplus.
/// Each call frees half of the buffers that stayed idle since the previous
/// one, so 1,000 spare buffers are down to `keep` in about 11 intervals.
pub const TRIM_INTERVAL: Duration = Duration::from_millis(250);

/// The allocator's "return freed memory to the OS now", for the calling
/// thread. Process-wide, as the global allocator is.
static RELEASE_HOOK: OnceLock<fn()> = OnceLock::new();

/// Registers `hook`, called on a worker's thread when its pool has freed a
/// surplus (at most once per round of trimming, so at most every few
/// seconds). Set it once, before the workers start; returns false if one
/// was set already.
pub fn set_release_hook(hook: fn()) -> bool {
    RELEASE_HOOK.set(hook).is_ok()
}

/// Calls the hook registered with [`set_release_hook`], if any.
pub fn release() {
    if let Some(hook) = RELEASE_HOOK.get() {
        hook();
    }
}

/// A worker's pool. Not `Send`: it lives and dies on its worker thread.
#[derive(Debug)]
pub struct Pool {
    size: usize,
    keep: usize,
    free: RefCell<Vec<Box<[u8]>>>,
    /// The fewest spare buffers seen since the last [`Pool::trim`]: those
    /// above it were not needed during the whole interval.
    low: Cell<usize>,
    /// The task waiting in [`Pool::surplus`], woken when a returned buffer
    /// takes the spares above `keep`.
    trimmer: RefCell<Option<Waker>>,
}

impl Pool {
    /// A pool of `size`-byte buffers that keeps `keep` spare ones for good
    /// and frees the spares above that through [`Pool::trim`].
    pub fn new(size: usize, keep: usize) -> Rc<Pool> {
        Rc::new(Pool {
            size,
            keep,
            free: RefCell::new(Vec::new()),
            low: Cell::new(0),
            trimmer: RefCell::new(None),
        })
    }

    /// The size of every buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// How many spare buffers are kept for good.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Takes a buffer (allocating one if none is spare).
    #[inline]
    pub fn take(self: &Rc<Self>) -> PoolBuf {
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        if free.len() < self.low.get() {
            self.low.set(free.len());
        }
        drop(free);
        PoolBuf {
            buf: Some(buf.unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())),
            pool: Rc::clone(self),
        }
    }

    /// Spare buffers held right now.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }

    /// Frees half (rounded up) of the spare buffers above `keep` that were
    /// not taken since the previous call, and returns how many it freed.
    /// Call it at a steady interval ([`TRIM_INTERVAL`]): a buffer is freed
    /// only after it sat unused for at least one whole interval.
    pub fn trim(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let idle = free.len();
        let unused = self.low.get().min(idle).saturating_sub(self.keep);
        let n = unused.div_ceil(2);
        free.truncate(idle - n);
        free.shrink_to(idle - n);
        self.low.set(free.len());
        n
    }

    /// Resolves when the pool holds more than `keep` spare buffers (at once
    /// if it does already). One waiter at a time: the worker's trim task.
    pub async fn surplus(&self) {
        poll_fn(|cx| {
            if self.idle() > self.keep {
                Poll::Ready(())
            } else {
                *self.trimmer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn give_back(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        free.push(buf);
        if free.len() > self.keep {
            drop(free);
            let trimmer = self.trimmer.borrow_mut().take();
            if let Some(w) = trimmer {
                w.wake();
            }
        }
    }
}

/// A buffer on loan from a [`Pool`]; goes back to it when dropped.
#[derive(Debug)]
pub struct PoolBuf {
    buf: Option<Box<[u8]>>,
    pool: Rc<Pool>,
}

impl Deref for PoolBuf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for PoolBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    use super::*;

    /// Takes `n` buffers at once and gives them all back.
    fn burst(pool: &Rc<Pool>, n: usize) {
        let bufs: Vec<PoolBuf> = (0..n).map(|_| pool.take()).collect();
        drop(bufs);
    }

    /// Calls `trim` until it frees nothing; returns what each call freed.
    fn trim_all(pool: &Pool) -> Vec<usize> {
        let mut freed = Vec::new();
        loop {
            let n = pool.trim();
            if n == 0 && pool.idle() <= pool.keep() {
                return freed;
            }
            freed.push(n);
            assert!(freed.len() < 100, "trim does not converge: {freed:?}");
        }
    }

    #[test]
    fn buffers_return_and_are_reused() {
        let pool = Pool::new(1024, 2);
        let a = pool.take();
        let b = pool.take();
        let c = pool.take();
        assert_eq!(a.len(), 1024);
        assert_eq!(pool.buffer_size(), 1024);
        assert_eq!(pool.idle(), 0);
        drop((a, b, c));
        // All three are kept until trimmed.
        assert_eq!(pool.idle(), 3);
        let _d = pool.take();
        assert_eq!(pool.idle(), 2);
    }

    #[test]
    fn trim_never_goes_below_keep() {
        let pool = Pool::new(64, 4);
        burst(&pool, 3);
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.idle(), 3);
        burst(&pool, 4);
        assert_eq!(trim_all(&pool), Vec::<usize>::new());
        assert_eq!(pool.idle(), 4);
    }

    #[test]
    fn a_burst_is_freed_gradually_down_to_keep() {
        let pool = Pool::new(64, 16);
        burst(&pool, 1000);
        assert_eq!(pool.idle(), 1000);
        // The first call sees the burst's interval: every buffer was in use
        // in it, so nothing is freed yet.
        assert_eq!(pool.trim(), 0);
        // Then half of the surplus per call.
        let freed = trim_all(&pool);
        assert_eq!(freed[..4], [492, 246, 123, 62]);
        assert_eq!(freed.iter().sum::<usize>(), 1000 - 16);
        assert!(freed.len() <= 12, "{freed:?}");
        assert_eq!(pool.idle(), 16);
    }

    #[test]
    fn buffers_in_use_during_the_interval_are_not_freed() {
        let pool = Pool::new(64, 8);
        burst(&pool, 108);
        pool.trim(); // start an interval
        // A load that comes back every interval and uses 60 of them.
        for _ in 0..10 {
            burst(&pool, 60);
            pool.trim();
        }
        // Those never used went; the 60 in use stayed, plus `keep`.
        assert_eq!(pool.idle(), 60 + 8);
        // The load stops: the rest goes down to `keep`.
        trim_all(&pool);
        assert_eq!(pool.idle(), 8);
    }

    #[test]
    fn held_buffers_are_not_the_pools_to_free() {
        let pool = Pool::new(64, 2);
        let held: Vec<PoolBuf> = (0..50).map(|_| pool.take()).collect();
        burst(&pool, 10);
        trim_all(&pool);
        assert_eq!(pool.idle(), 2);
        drop(held);
        assert_eq!(pool.idle(), 52);
        trim_all(&pool);
        assert_eq!(pool.idle(), 2);
    }

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn surplus_waits_for_more_than_keep_spares() {
        let pool = Pool::new(64, 2);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut wait = pin!(pool.surplus());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        burst(&pool, 2);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            0,
            "two spares are no surplus"
        );
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        burst(&pool, 3);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "woken once");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // Already a surplus: ready at once.
        assert!(pin!(pool.surplus()).poll(&mut cx).is_ready());
    }
}
