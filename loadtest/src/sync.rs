//! Single-threaded wake-ups between the tasks of one worker.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A flag one task waits on and others raise (at most one waiter).
#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("raised", &self.raised.get())
            .finish_non_exhaustive()
    }
}

impl Signal {
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Returns once the flag is raised, lowering it again.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.raised.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
    }
}

/// A counting semaphore for tasks of one thread (bounds concurrent connects).
#[derive(Debug)]
pub struct Gate {
    permits: Cell<usize>,
    waiters: RefCell<VecDeque<Waker>>,
}

impl Gate {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Cell::new(permits),
            waiters: RefCell::new(VecDeque::new()),
        }
    }

    pub async fn acquire(&self) -> Permit<'_> {
        poll_fn(|cx| {
            let p = self.permits.get();
            if p > 0 {
                self.permits.set(p - 1);
                Poll::Ready(())
            } else {
                self.waiters.borrow_mut().push_back(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        Permit(self)
    }
}

/// Returns its permit to the gate when dropped.
#[derive(Debug)]
pub struct Permit<'a>(&'a Gate);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.permits.set(self.0.permits.get() + 1);
        let w = self.0.waiters.borrow_mut().pop_front();
        if let Some(w) = w {
            w.wake();
        }
    }
}
