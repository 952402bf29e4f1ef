//! DNS re-resolution: every `resolve_interval`, the host names in an
//! upstream's `servers` are resolved again on a thread of their own
//! (`wsedge-resolve`), never on a worker. Every A/AAAA record is a server.
//!
//! When the addresses change, the upstream gets a new
//! [`ServerSet`](crate::fleet::ServerSet): servers that stay keep their
//! slot (connection counts, health, ejection); new ones come up and ramp
//! over `slow_start`; those that left are marked draining (no new
//! connections) and their open connections are left alone. A name that
//! fails to resolve, or resolves to nothing, keeps its last addresses (and
//! the log says why): a DNS outage never empties an upstream.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::balance::server::ServerState;
use crate::config::{Config, Server, ServerSpec, Upstream, resolve_entry};
use crate::fleet::{Fleet, ServerSet, now_ms};

/// How host names become addresses (the system's resolver, or a test's).
pub type Resolver = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The running re-resolution; stopped (and its thread joined) on
/// [`Resolving::stop`] or drop.
#[derive(Debug)]
pub struct Resolving {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Resolving {
    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Resolving {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an upstream has names to re-resolve.
fn watched(u: &Upstream) -> bool {
    !u.resolve_interval.is_zero()
        && u.entries
            .iter()
            .any(|e| e.port != 0 && e.host.parse::<std::net::IpAddr>().is_err())
}

/// Starts re-resolving every upstream that has host names and a nonzero
/// `resolve_interval`; `None` when there is none.
pub fn spawn(config: Arc<Config>, fleet: Arc<Fleet>, resolver: Resolver) -> Option<Resolving> {
    if !config.upstreams.iter().any(watched) {
        return None;
    }
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let s = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("wsedge-resolve".into())
        .spawn(move || run(&config, &fleet, &*resolver, &s));
    match thread {
        Ok(t) => Some(Resolving {
            stop,
            thread: Some(t),
        }),
        Err(e) => {
            error!("DNS re-resolution not running: cannot start its thread: {e}");
            None
        }
    }
}

fn run(
    config: &Config,
    fleet: &Fleet,
    resolver: &(dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync),
    stop: &(Mutex<bool>, Condvar),
) {
    let start = Instant::now();
    let mut due: Vec<Option<Duration>> = config
        .upstreams
        .iter()
        .map(|u| watched(u).then_some(u.resolve_interval))
        .collect();
    loop {
        let next = due.iter().flatten().min().copied().unwrap_or(Duration::MAX);
        {
            let (flag, wake) = stop;
            let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped && start.elapsed() < next {
                let left = next.saturating_sub(start.elapsed());
                stopped = wake
                    .wait_timeout(stopped, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if *stopped {
                return;
            }
        }
        let now = start.elapsed();
        for (i, d) in due.iter_mut().enumerate() {
            if let Some(at) = d
                && *at <= now
            {
                let u = &config.upstreams[i];
                refresh(u, &fleet.upstreams[i], resolver);
                *d = Some(now + u.resolve_interval);
            }
        }
    }
}

/// Resolves an upstream's entries once and installs a new server set if
/// the addresses changed. Public for tests.
pub fn refresh(
    u: &Upstream,
    st: &crate::fleet::UpstreamState,
    resolver: &(dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync),
) {
    let current = st.current();
    let mut specs: Vec<ServerSpec> = Vec::new();
    for (index, entry) in u.entries.iter().enumerate() {
        match resolve_entry(entry, index, resolver) {
            Ok(found) => specs.extend(found),
            Err(why) => {
                warn!(upstream = %u.name, "{why}: keeping its last addresses");
                specs.extend(current.specs.iter().filter(|s| s.entry == index).cloned());
            }
        }
    }
    let addrs = |v: &[ServerSpec]| v.iter().map(|s| s.addr).collect::<Vec<Server>>();
    if addrs(&specs) == addrs(&current.specs) {
        return;
    }
    let added: Vec<String> = specs
        .iter()
        .filter(|s| !current.specs.iter().any(|c| c.addr == s.addr))
        .map(|s| s.addr.to_string())
        .collect();
    let removed: Vec<usize> = (0..current.specs.len())
        .filter(|&i| !specs.iter().any(|s| s.addr == current.specs[i].addr))
        .collect();
    let next = ServerSet::build(u, specs, Some(&current), current.generation + 1, now_ms());
    for &i in &removed {
        current.slots[i].set_state(ServerState::Draining);
    }
    info!(
        upstream = %u.name,
        added = ?added,
        removed = ?removed.iter().map(|&i| current.specs[i].addr.to_string()).collect::<Vec<_>>(),
        servers = next.specs.len(),
        "DNS: the upstream's servers changed (those removed drain: no new connections, open ones untouched)"
    );
    st.replace(next);
}
