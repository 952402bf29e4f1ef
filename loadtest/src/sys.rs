//! The few things wsload asks of the OS directly: a stop flag set by
//! SIGINT/SIGTERM, and process CPU time and memory from `/proc`.
//! The only `unsafe` in the crate lives here.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set the stop flag instead of killing the process.
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `on_signal` is an `extern "C" fn(c_int)` that only stores to
        // an atomic, which is async-signal-safe; `signal` has no other
        // preconditions.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Clock ticks per second, the unit of `/proc/PID/stat` CPU times.
pub fn clock_ticks() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        // SAFETY: sysconf only reads a configuration value.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as u64 } else { 100 }
    })
}

/// Fields of `/proc/PID/stat` after the command name, starting at field 3.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// utime + stime of one process (all its threads), in microseconds.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 (utime, stime) sit at 11 and 12 from field 3.
    let ticks = f.get(11)? + f.get(12)?;
    Some(ticks * 1_000_000 / clock_ticks())
}

/// `pid` and all its descendants (nginx's workers under its master).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some(f) = stat_fields(p) {
                    parent_of.push((p, f.get(1).copied().unwrap_or(0) as u32));
                }
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let cur = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// CPU microseconds of a process and its descendants.
pub fn tree_cpu_us(pid: u32) -> Option<u64> {
    let tree = process_tree(pid);
    let first = cpu_us(tree[0])?;
    Some(first + tree[1..].iter().filter_map(|&p| cpu_us(p)).sum::<u64>())
}

/// Resident set size of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// RSS of a process and its descendants, in bytes.
pub fn tree_rss_bytes(pid: u32) -> Option<u64> {
    let tree = process_tree(pid);
    let first = rss_bytes(tree[0])?;
    Some(first + tree[1..].iter().filter_map(|&p| rss_bytes(p)).sum::<u64>())
}

/// Clears O_NONBLOCK on a socket.
pub fn set_blocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: the caller owns an open socket `fd` that outlives this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&borrowed).set_nonblocking(false)
}

/// Shuts a socket down both ways, waking any pending read or write on it
/// (how a timed-out connection is abandoned).
pub fn shutdown(fd: RawFd) {
    // SAFETY: shutdown(2) on a descriptor has no memory-safety preconditions;
    // on a closed or reused descriptor it fails or shuts a socket we own.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// System-wide network counters that tell a clean loopback run from one
/// that lost packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetCounters {
    /// Packets dropped because a CPU's input backlog was full
    /// (`net.core.netdev_max_backlog`), from `/proc/net/softnet_stat`.
    pub backlog_drops: u64,
    /// TCP segments retransmitted.
    pub retransmits: u64,
    /// SYNs dropped because a listen queue was full.
    pub listen_drops: u64,
}

fn named_counter(file: &str, prefix: &str, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with(prefix));
    // Pairs of lines: names, then values.
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(i) = names.split_whitespace().position(|n| n == name) {
            return values.split_whitespace().nth(i)?.parse().ok();
        }
    }
    None
}

impl NetCounters {
    pub fn read() -> Self {
        let backlog_drops = std::fs::read_to_string("/proc/net/softnet_stat")
            .map(|s| {
                s.lines()
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .filter_map(|h| u64::from_str_radix(h, 16).ok())
                    .sum()
            })
            .unwrap_or(0);
        Self {
            backlog_drops,
            retransmits: named_counter("/proc/net/snmp", "Tcp:", "RetransSegs").unwrap_or(0),
            listen_drops: named_counter("/proc/net/netstat", "TcpExt:", "ListenDrops").unwrap_or(0),
        }
    }

    /// What changed since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            backlog_drops: self.backlog_drops.saturating_sub(earlier.backlog_drops),
            retransmits: self.retransmits.saturating_sub(earlier.retransmits),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
        }
    }
}

/// Raises the open-file soft limit to the hard limit.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_us(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert_eq!(process_tree(me)[0], me);
        let n = NetCounters::read();
        assert_eq!(n.since(n).retransmits, 0);
    }
}
