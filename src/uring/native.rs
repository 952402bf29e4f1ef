//! The bridge between a worker's monoio runtime and its [`RelayRing`]
//! (experimental, off unless `WSEDGE_NATIVE_RELAY=1` under io_uring; see
//! `docs/architecture.md`).
//!
//! The relay ring has an eventfd registered: the kernel signals it with
//! every completion. One task per worker keeps a read of that eventfd in
//! flight on monoio's own ring and runs a [`RelayRing::turn`] each time it
//! completes, or when the wheel's next timer is due. A session that handed
//! its connection over waits for its outcome here.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use super::relay::RelayRing;
use crate::proto::mask::MaskKeyGen;
use crate::relay::{Core, Outcome};

enum Slot {
    Waiting(Option<Waker>),
    Ended(Outcome),
}

/// A worker's relay ring and the sessions waiting on it.
pub struct Native {
    ring: RefCell<RelayRing>,
    slots: RefCell<Vec<Option<Slot>>>,
    efd: OwnedFd,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").finish_non_exhaustive()
    }
}

/// Whether the experimental native relay is asked for.
pub fn wanted() -> bool {
    std::env::var_os("WSEDGE_NATIVE_RELAY").is_some_and(|v| v == "1")
}

impl Native {
    /// A relay ring with `buffers` receive buffers of `buffer_size` bytes.
    pub fn new(buffers: u16, buffer_size: u32) -> io::Result<Rc<Native>> {
        let ring = RelayRing::new(4096, buffers, buffer_size, MaskKeyGen::from_os_rng())?;
        // SAFETY: eventfd has no memory arguments; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.register_eventfd(efd.as_raw_fd())?;
        Ok(Rc::new(Native {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            efd,
        }))
    }

    /// Hands a connection over; returns its id to wait on.
    pub fn add(
        &self,
        client: OwnedFd,
        backend: OwnedFd,
        core: Core,
        from_client: Vec<u8>,
        from_backend: Vec<u8>,
    ) -> u32 {
        let mut ring = self.ring.borrow_mut();
        let id = ring.add(
            client,
            backend,
            core,
            from_client,
            from_backend,
            Instant::now(),
        );
        let _ = ring.submit();
        let mut slots = self.slots.borrow_mut();
        if slots.len() <= id as usize {
            slots.resize_with(id as usize + 1, || None);
        }
        slots[id as usize] = Some(Slot::Waiting(None));
        id
    }

    /// Closes every connection with 1001 "server shutting down".
    pub fn shutdown(&self) {
        let mut ring = self.ring.borrow_mut();
        ring.shutdown(Instant::now());
        let _ = ring.submit();
    }

    /// Resolves with connection `id`'s outcome when it ends.
    pub fn poll_outcome(&self, id: u32, cx: &mut std::task::Context<'_>) -> Poll<Outcome> {
        let mut slots = self.slots.borrow_mut();
        match slots[id as usize].take() {
            Some(Slot::Ended(o)) => Poll::Ready(o),
            _ => {
                slots[id as usize] = Some(Slot::Waiting(Some(cx.waker().clone())));
                Poll::Pending
            }
        }
    }

    fn deliver(&self) {
        let ended = self.ring.borrow_mut().take_ended();
        let mut slots = self.slots.borrow_mut();
        for (id, o) in ended {
            if let Some(Slot::Waiting(Some(w))) = slots[id as usize].replace(Slot::Ended(o)) {
                w.wake();
            }
        }
    }

    /// The worker's ring task: turns the ring as completions come and
    /// timers fall due; closes every connection with 1001 once `stopping`
    /// says so.
    pub async fn run(self: Rc<Self>, stopping: impl Fn() -> bool) {
        // SAFETY: dup of a descriptor this value owns; the copy is owned by
        // the file below.
        let fd = unsafe { libc::dup(self.efd.as_raw_fd()) };
        if fd < 0 {
            tracing::error!("native relay: {}", io::Error::last_os_error());
            return;
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        let file = monoio::fs::File::from_std(file).expect("eventfd");
        let mut stopped = false;
        let mut read = Some(Box::pin(file.read_at(vec![0u8; 8], 0)));
        loop {
            if let Err(e) = self.ring.borrow_mut().turn(Instant::now(), false) {
                tracing::error!("native relay: {e}");
            }
            self.deliver();
            if !stopped && stopping() {
                stopped = true;
                self.ring.borrow_mut().shutdown(Instant::now());
                continue;
            }
            let cap = Instant::now() + Duration::from_millis(100);
            let until = self.ring.borrow().next_due().map_or(cap, |d| d.min(cap));
            let sleep = monoio::time::sleep_until(monoio::time::Instant::from_std(until));
            let r = read.as_mut().expect("armed");
            let woke = poll_fn(|cx| {
                if r.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(true);
                }
                Poll::Pending
            });
            let woke = monoio::select! {
                _ = woke => true,
                _ = sleep => false,
            };
            if woke {
                read = Some(Box::pin(file.read_at(vec![0u8; 8], 0)));
            }
        }
    }
}
