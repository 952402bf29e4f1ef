//! Active health checks (`[upstream.health]`), once per process: every
//! server of every upstream with a `[upstream.health]` table is checked
//! every `interval` (±10 % jitter), and the result goes to its shared
//! [`ServerSlot`], which every worker's picker reads. A server that fails
//! `fall` checks in a row is `Down` (no new connections from any worker)
//! until it passes `rise` in a row; it then comes back `Up` with its
//! `slow_start` ramp. A passing check also lifts a passive ejection early.
//!
//! # One thread, one runtime, one task per server
//!
//! [`spawn`] starts one thread, `wsedge-health`, running a monoio runtime
//! of its own (the epoll driver with timers, which every kernel has: this
//! thread does a few connects a second and needs no io_uring ring) with
//! one task per server. Each check is bounded by `timeout`, and the tasks
//! run concurrently, so a blackholed server delays no other server's
//! checks. The workers are not involved: checks cost them nothing, and no
//! worker's load delays a check (or makes it fail). A thread per server
//! would do the same with a thread's stack per server; tasks cost a few
//! hundred bytes each.
//!
//! # Stopping
//!
//! [`HealthChecker`] holds the sending half of a [`control`] channel; the
//! runtime's main task waits on the other half. [`HealthChecker::stop`]
//! (or dropping it) sends [`Control::Stop`], which wakes that task across
//! threads at once (nothing polls a flag); it fires a [`Shutdown`] that
//! every server task selects on, in its sleep and in its check, awaits
//! them, and the thread ends and is joined. A stop takes as long as a wake
//! and a few task polls, not a check's timeout.
//!
//! # What is not checked as configured
//!
//! - `builtin:echo` servers are not checked: the echo server runs inside
//!   every worker of this process, so while the proxy serves, it does. They
//!   are always up.
//! - Upstreams with TLS (`wss://` servers or `tls = true`): a `websocket`
//!   check speaks TLS first, verified as the proxied connections are (the
//!   upstream's `ca`, `sni`, client certificate); a `tcp` check is a TCP
//!   connect.

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::{debug, error, info, warn};

use crate::balance::health::{HealthState, Transition, next_check_ms};
use crate::balance::server::ServerSlot;
use crate::config::{Config, HealthKind, Server};
use crate::control::{self, Control, ControlReceiver, ControlSender};
use crate::fleet::{Fleet, now_ms};
use crate::relay::Shutdown;
use crate::tls::setup::{TlsSetup, server_name};
use rustls::ClientConfig;

pub mod probe;

use probe::{Nonces, Target};

/// The running health checks. [`stop`](Self::stop) or drop it to stop
/// them; either returns once the thread has ended.
#[derive(Debug)]
pub struct HealthChecker {
    control: Option<ControlSender>,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Stops every check and joins the thread: returns within a few
    /// milliseconds, checks in flight are abandoned.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(c) = self.control.take() {
            // Err: the thread is gone already (its runtime did not start).
            let _ = c.send(Control::Stop);
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            error!("the health-check thread panicked");
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// One server's checks: where, how, and what to write the results to.
#[derive(Debug)]
struct Watch {
    /// `backend ADDR (upstream "NAME")`, for the log lines.
    label: String,
    /// Index of its upstream.
    upstream: usize,
    target: Target,
    slot: Arc<ServerSlot>,
    rise: u32,
    fall: u32,
    interval_ms: u64,
    slow_start: Duration,
}

/// Starts checking every server of every upstream that has
/// `[upstream.health]`, writing the results to `fleet`'s slots (built from
/// `config`). `None` when no upstream has health checks, or when the
/// thread cannot be started (logged at `error`; the servers then stay up,
/// as without checks).
pub fn spawn(config: Arc<Config>, fleet: Arc<Fleet>, tls: &TlsSetup) -> Option<HealthChecker> {
    if config.upstreams.iter().all(|u| u.health.is_none()) {
        return None;
    }
    let clients = tls.upstreams.clone();
    let (sender, receiver) = control::channel();
    let thread = std::thread::Builder::new()
        .name("wsedge-health".into())
        .spawn(move || run(config, fleet, clients, receiver));
    match thread {
        Ok(t) => Some(HealthChecker {
            control: Some(sender),
            thread: Some(t),
        }),
        Err(e) => {
            error!("health checks not running: cannot start their thread: {e}");
            None
        }
    }
}

/// Watches for the servers of upstream `i` in its current set that are not
/// watched yet (`watched`: their slots' addresses), which it then records.
fn watches_for(
    config: &Config,
    fleet: &Fleet,
    clients: &[Option<Arc<ClientConfig>>],
    i: usize,
    watched: &mut HashSet<usize>,
) -> Vec<Watch> {
    let u = &config.upstreams[i];
    let Some(h) = &u.health else {
        return Vec::new();
    };
    let client = clients.get(i).and_then(Option::as_ref);
    let set = fleet.upstreams[i].current();
    let mut out = Vec::new();
    for (spec, slot) in set.specs.iter().zip(&set.slots) {
        let Server::Addr(addr) = spec.addr else {
            continue; // builtin:echo: up while the proxy is (see above)
        };
        if !watched.insert(Arc::as_ptr(slot) as usize) {
            continue;
        }
        let tls = match client {
            None => None,
            Some(c) => {
                let sni = u.tls.as_ref().and_then(|t| t.client.sni.as_deref());
                match server_name(sni.unwrap_or(&spec.host)) {
                    Ok(name) => Some((Arc::clone(c), name)),
                    // Checked at start (TlsSetup::build): cannot happen.
                    Err(e) => {
                        error!(upstream = %u.name, "health check of {addr}: {e}");
                        continue;
                    }
                }
            }
        };
        out.push(Watch {
            label: format!("backend {addr} (upstream {:?})", u.name),
            upstream: i,
            target: Target {
                addr,
                kind: h.kind,
                path: h.path.clone(),
                authority: spec.authority.clone(),
                timeout: h.timeout,
                tls,
            },
            slot: Arc::clone(slot),
            rise: h.rise,
            fall: h.fall,
            interval_ms: h.interval.as_millis() as u64,
            slow_start: u.slow_start,
        });
    }
    out
}

/// How often the thread looks for servers DNS re-resolution added.
const FOLLOW_SETS: Duration = Duration::from_secs(1);

/// The thread: a runtime with one task per server, until told to stop.
fn run(
    config: Arc<Config>,
    fleet: Arc<Fleet>,
    clients: Vec<Option<Arc<ClientConfig>>>,
    mut control: ControlReceiver,
) {
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            error!("health checks not running: cannot start their runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let stop = Rc::new(Shutdown::default());
        let mut watched: Vec<HashSet<usize>> = vec![HashSet::new(); config.upstreams.len()];
        let mut tasks = Vec::new();
        for (i, seen) in watched.iter_mut().enumerate() {
            for w in watches_for(&config, &fleet, &clients, i, seen) {
                tasks.push(monoio::spawn(watch(w, Arc::clone(&fleet), Rc::clone(&stop))));
            }
        }
        // Servers that DNS re-resolution adds get checks of their own; those
        // it removes stop being checked (see `watch`).
        let follows = config
            .upstreams
            .iter()
            .any(|u| u.health.is_some() && !u.resolve_interval.is_zero());
        let mut generations: Vec<u64> = fleet.upstreams.iter().map(|u| u.current().generation).collect();
        loop {
            monoio::select! {
                // Stop, or None: the checker is gone.
                _ = control.recv() => break,
                _ = monoio::time::sleep(FOLLOW_SETS), if follows => {
                    for (i, seen) in watched.iter_mut().enumerate() {
                        let g = fleet.upstreams[i].current().generation;
                        if g != generations[i] {
                            generations[i] = g;
                            for w in watches_for(&config, &fleet, &clients, i, seen) {
                                tasks.push(monoio::spawn(watch(w, Arc::clone(&fleet), Rc::clone(&stop))));
                            }
                        }
                    }
                }
            }
        }
        stop.fire();
        for t in tasks {
            t.await;
        }
    });
}

fn kind_name(kind: HealthKind) -> &'static str {
    match kind {
        HealthKind::Tcp => "tcp",
        HealthKind::WebSocket => "websocket",
    }
}

/// Checks one server until `stop` fires.
async fn watch(w: Watch, fleet: Arc<Fleet>, stop: Rc<Shutdown>) {
    let mut rng = ChaCha8Rng::from_entropy();
    let mut health = HealthState::new(w.rise, w.fall, true);
    let (mut passed, mut failed) = (0u32, 0u32);
    // Servers configured together do not all start in step.
    let mut wait = rng.next_u64() % (w.interval_ms / 10 + 1);
    loop {
        monoio::select! {
            _ = monoio::time::sleep(Duration::from_millis(wait)) => {}
            _ = stop.fired() => return,
        }
        // A server DNS re-resolution removed is no longer checked.
        if !fleet.upstreams[w.upstream]
            .current()
            .slots
            .iter()
            .any(|s| Arc::ptr_eq(s, &w.slot))
        {
            debug!(
                "{}: no longer a server of its upstream: checks end",
                w.label
            );
            return;
        }
        let started = now_ms();
        let nonces = Nonces::draw(&mut rng);
        let result = monoio::select! {
            r = probe::check(&w.target, &nonces) => r,
            _ = stop.fired() => return,
        };
        let now = now_ms();
        if result.is_ok() {
            (passed, failed) = (passed.saturating_add(1), 0);
        } else {
            (passed, failed) = (0, failed.saturating_add(1));
        }
        let kind = kind_name(w.target.kind);
        match (
            health.observe_and_apply(result.is_ok(), &w.slot, now),
            &result,
        ) {
            (Some(Transition::Down), Err(why)) => warn!(
                "{} DOWN: {kind} check: {why} ({failed} failures in a row)",
                w.label
            ),
            (Some(Transition::Up), _) if w.slow_start.is_zero() => {
                info!("{} UP: {passed} {kind} checks passed in a row", w.label)
            }
            (Some(Transition::Up), _) => info!(
                "{} UP: {passed} {kind} checks passed in a row; slow start over {:?}",
                w.label, w.slow_start
            ),
            (_, Err(why)) => debug!("{}: {kind} check failed: {why}", w.label),
            (_, Ok(())) => {}
        }
        wait = next_check_ms(started, w.interval_ms, &mut rng).saturating_sub(now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config(servers: &str, health: &str) -> Arc<Config> {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\nupstream = \"u\"\n\
             [[upstream]]\nname = \"u\"\nservers = [{servers}]\n{health}\n"
        );
        Arc::new(Config::parse(&text, "health.toml").expect("config"))
    }

    #[test]
    fn nothing_to_check_is_none() {
        let c = config("\"127.0.0.1:9\"", "");
        let fleet = Arc::new(Fleet::new(&c));
        assert!(spawn(c, fleet, &TlsSetup::default()).is_none());
    }

    #[test]
    fn stops_promptly_with_a_check_in_flight() {
        // A server that accepts and never answers: the check waits for its
        // 101 for up to 5 s.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((s, _)) = l.accept() {
                let _ = tx.send(());
                // Held open until the test ends.
                std::thread::sleep(Duration::from_secs(10));
                drop(s);
            }
        });
        let c = config(
            &format!("\"{addr}\", \"builtin:echo\""),
            "[upstream.health]\nkind = \"websocket\"\ninterval = \"10s\"\ntimeout = \"5s\"",
        );
        let fleet = Arc::new(Fleet::new(&c));
        let checker = spawn(c, Arc::clone(&fleet), &TlsSetup::default()).expect("checks to run");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the first check connects (within interval / 10)");
        let started = Instant::now();
        checker.stop();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(250), "stop took {took:?}");
        // Nothing was decided: one check never finished.
        assert!(
            fleet.upstreams[0]
                .current()
                .slots
                .iter()
                .all(|s| s.state() == crate::balance::server::ServerState::Up)
        );
    }
}
