//! A worker's control channel: how another thread (the server, an operator
//! command) tells a worker what to do.
//!
//! Any thread may send; the worker awaits [`ControlReceiver::recv`] in a
//! task of its own, and a send wakes that task across threads through the
//! runtime's waker (monoio's `sync` feature: the waker queues the task on
//! its owner and unparks the owner's io_uring or epoll driver). Nothing is
//! polled: an idle worker sleeps in its driver until a message or I/O comes.
//!
//! When every [`ControlSender`] is gone the receiver yields `None`, which a
//! worker treats as [`Control::Stop`]: a dropped server stops its workers.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// One live connection as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    /// `WORKER-SLOT-SERIAL`: what `POST /api/connections/{id}/close` takes.
    pub id: String,
    /// The client's address (as believed: PROXY header, trusted proxy).
    pub client: std::net::SocketAddr,
    /// Its route's conditions.
    pub route: String,
    /// Its upstream's name.
    pub upstream: String,
    /// Its server.
    pub server: String,
    /// JWT `sub` or API key name.
    pub identity: Option<String>,
    /// Since the upgrade.
    pub age_ms: u64,
    /// Bytes read from the client.
    pub from_client: u64,
    /// Bytes read from the backend.
    pub from_backend: u64,
    /// Data messages the client sent.
    pub messages_from_client: u64,
    /// Data messages the backend sent.
    pub messages_from_backend: u64,
}

/// A reply channel for an operator request.
pub type Reply<T> = std::sync::mpsc::Sender<T>;

/// A reloaded configuration, for every worker.
#[derive(Debug)]
pub struct Reload {
    /// What new connections start under.
    pub generation: std::sync::Arc<crate::generation::Generation>,
    /// New listening sockets, by worker index: `(configured address,
    /// socket)`; each worker takes its own.
    pub added: Mutex<Vec<Vec<(std::net::SocketAddr, std::net::TcpListener)>>>,
    /// Configured addresses no longer listened on.
    pub removed: Vec<std::net::SocketAddr>,
    /// Each worker sends its index once it has switched.
    pub reply: Reply<usize>,
}

/// What a worker can be told.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Control {
    /// Stop accepting, close every relayed connection with 1001, wait up to
    /// `timeouts.shutdown_grace` for them, and exit.
    Stop,
    /// Drain, then stop: keep accepting for `delay` (balancers notice the
    /// failing readiness probe), stop accepting, close the relayed
    /// connections with 1001 "going away" spread evenly over `period` (in
    /// a random order, at jittered times), then as [`Control::Stop`]. A
    /// `Stop` sent meanwhile cuts the drain short.
    Drain {
        /// Accepting goes on this long.
        delay: std::time::Duration,
        /// The closes are spread over this long.
        period: std::time::Duration,
    },
    /// Report every relayed connection.
    Connections(Reply<Vec<ConnRow>>),
    /// Switch to a reloaded configuration.
    Reload(Arc<Reload>),
    /// Close the connection in registry `slot` if its serial is `serial`,
    /// with `code` and `reason` on both legs; replies whether it was there.
    Close {
        /// Its slot in the worker's registry.
        slot: usize,
        /// Its serial (a slot is reused by later connections).
        serial: u64,
        /// The close code.
        code: u16,
        /// The close reason.
        reason: &'static str,
        /// Whether it was found.
        reply: Reply<bool>,
    },
}

/// Creates a worker's control channel.
pub fn channel() -> (ControlSender, ControlReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            waker: None,
            senders: 1,
            receiver: true,
        }),
    });
    (
        ControlSender {
            shared: Arc::clone(&shared),
        },
        ControlReceiver { shared },
    )
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Control>,
    /// The receiving task, while it waits.
    waker: Option<Waker>,
    senders: usize,
    receiver: bool,
}

impl Shared {
    /// The state; a panic elsewhere while it was held leaves it consistent
    /// (every update is a single push, pop or assignment).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half: `Send`, cloneable, usable from any thread.
#[derive(Debug)]
pub struct ControlSender {
    shared: Arc<Shared>,
}

impl ControlSender {
    /// Queues `msg` and wakes the worker. Gives `msg` back if the worker
    /// has already exited (its receiver is gone).
    pub fn send(&self, msg: Control) -> Result<(), Control> {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver {
                return Err(msg);
            }
            state.queue.push_back(msg);
            state.waker.take()
        };
        // Woken outside the lock: the wake may run the receiver inline.
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl Clone for ControlSender {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        ControlSender {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for ControlSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The receiving half, owned by the worker.
#[derive(Debug)]
pub struct ControlReceiver {
    shared: Arc<Shared>,
}

impl ControlReceiver {
    /// The next message, in the order sent; `None` once every sender is
    /// gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Control> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// [`ControlReceiver::recv`] as a poll function.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Control>> {
        let mut state = self.shared.lock();
        if let Some(msg) = state.queue.pop_front() {
            return Poll::Ready(Some(msg));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ControlReceiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver = false;
        state.queue.clear();
        state.waker = None;
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::{Duration, Instant};

    use super::*;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<CountWakes>, Waker) {
        let c = Arc::new(CountWakes(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    #[test]
    fn messages_arrive_in_order_and_wake_the_receiver_once_each_wait() {
        let (tx, mut rx) = channel();
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.send(Control::Stop).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // A second message while nobody waits wakes nothing more.
        tx.send(Control::Stop).unwrap();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Control::Stop))
        ));
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Control::Stop))
        ));
        assert!(rx.poll_recv(&mut cx).is_pending());
    }

    #[test]
    fn receiver_sees_none_when_every_sender_is_gone() {
        let (tx, mut rx) = channel();
        let tx2 = tx.clone();
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx2.send(Control::Stop).unwrap();
        drop(tx);
        drop(tx2);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // What was sent still arrives first.
        assert!(matches!(
            rx.poll_recv(&mut cx),
            Poll::Ready(Some(Control::Stop))
        ));
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn send_to_a_gone_worker_gives_the_message_back() {
        let (tx, rx) = channel();
        drop(rx);
        assert!(matches!(tx.send(Control::Stop), Err(Control::Stop)));
    }

    /// The wake-up crosses threads on a real runtime, with nothing else to
    /// wake the worker: no timer, no I/O.
    fn wakes_an_idle_runtime<D: monoio::Buildable + monoio::Driver>() {
        let (tx, mut rx) = channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut rt =
                monoio::Buildable::build(monoio::RuntimeBuilder::<D>::new()).expect("runtime");
            rt.block_on(async move {
                let mut recv = pin!(rx.recv());
                // Register the waker, then let the sender go.
                poll_fn(|cx| {
                    let _ = recv.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
                ready_tx.send(()).unwrap();
                recv.await
            })
        });
        ready_rx.recv().unwrap();
        // Not needed for correctness; makes it likely that the worker is
        // already parked in its driver's wait when the message comes.
        std::thread::sleep(Duration::from_millis(20));
        let sent = Instant::now();
        tx.send(Control::Stop).unwrap();
        assert!(matches!(worker.join().unwrap(), Some(Control::Stop)));
        assert!(sent.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wakes_an_idle_io_uring_worker() {
        wakes_an_idle_runtime::<monoio::IoUringDriver>();
    }

    #[test]
    fn wakes_an_idle_epoll_worker() {
        wakes_an_idle_runtime::<monoio::LegacyDriver>();
    }
}
