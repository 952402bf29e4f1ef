//! Binary upgrade without refusing a connection (`wsedge --upgrade`,
//! SIGUSR2).
//!
//! The running process starts the binary again (the file at its path, which
//! may have been replaced by a new version since), with its listening
//! sockets inherited: the same kernel sockets, so their accept queues are
//! never closed and no client is refused. The new process binds nothing it
//! inherited, starts its workers on those sockets, and reports ready; only
//! then does the old one drain as on SIGTERM (its workers stop accepting
//! and close their copies of the descriptors; the sockets live on in the
//! new process).
//!
//! Two environment variables carry the hand-over; both are read and removed
//! at start ([`adopt_from_env`]):
//!
//! - `WSEDGE_LISTEN_FDS`: the inherited listening sockets by address,
//!   `ADDR=FD,FD;ADDR=FD`, e.g. `127.0.0.1:8080=5,6;[::1]:9901=7` (one
//!   descriptor per worker of the old process; one for the admin endpoint).
//!   Each descriptor must be a listening TCP socket bound to exactly that
//!   address, or the new process exits with an error saying which is not.
//! - `WSEDGE_READY_FD`: the write end of a pipe; the new process writes its
//!   process id to it once it serves ([`report_ready`]). The old process
//!   reads it ([`start_new_binary`]); end of file (the new process exited)
//!   or a timeout means the upgrade failed, and the old process goes on
//!   serving.
//!
//! Which sockets are handed on is this process's registry: [`remember`]ed
//! when bound (by [`crate::listener::bind_all`] and the admin endpoint),
//! [`forget`]ten when a listener is closed. Port 0 ("any free port") is
//! never handed on: the new process would ask for a port of its own anyway.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tracing::warn;

/// The inherited listening sockets, `ADDR=FD,FD;ADDR=FD`.
pub const LISTEN_FDS_VAR: &str = "WSEDGE_LISTEN_FDS";

/// The descriptor the new process reports ready on.
pub const READY_FD_VAR: &str = "WSEDGE_READY_FD";

/// How long the old process waits for the new one to report ready before
/// it kills it and goes on serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the inherited sockets could not be taken over. The new process
/// exits with this message; the old one goes on serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum InheritError {
    /// `WSEDGE_LISTEN_FDS` is not `ADDR=FD,FD;...`.
    Syntax {
        /// The entry that does not parse.
        entry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A descriptor is not a listening TCP socket of its address.
    NotListening {
        /// The descriptor.
        fd: RawFd,
        /// The address the variable gives it.
        address: SocketAddr,
        /// What it is instead.
        found: String,
    },
    /// `WSEDGE_READY_FD` is not an open descriptor.
    ReadyFd(String),
}

impl fmt::Display for InheritError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InheritError::Syntax { entry, why } => {
                write!(f, "${LISTEN_FDS_VAR}: {entry:?}: {why}")
            }
            InheritError::NotListening { fd, address, found } => write!(
                f,
                "${LISTEN_FDS_VAR}: descriptor {fd} is not a TCP socket listening on {address}: {found}"
            ),
            InheritError::ReadyFd(v) => {
                write!(f, "${READY_FD_VAR}: {v:?} is not an open descriptor")
            }
        }
    }
}

impl std::error::Error for InheritError {}

/// Why an upgrade failed. The old process goes on serving in every case.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The path of the running binary could not be read.
    Exe(io::Error),
    /// The readiness pipe could not be made, or read.
    Pipe(io::Error),
    /// The new binary could not be started.
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// What `exec` (or `fork`) said.
        source: io::Error,
    },
    /// The new process exited before it reported ready (its log says why).
    Exited(Option<ExitStatus>),
    /// The new process did not report ready in time; it was killed.
    TimedOut(Duration),
}

impl fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeError::Exe(e) => write!(f, "cannot find the running binary: {e}"),
            UpgradeError::Pipe(e) => write!(f, "readiness pipe: {e}"),
            UpgradeError::Spawn { exe, source } => {
                write!(f, "cannot start {}: {source}", exe.display())
            }
            UpgradeError::Exited(Some(status)) => {
                write!(f, "the new process exited before it was ready ({status})")
            }
            UpgradeError::Exited(None) => {
                f.write_str("the new process closed its readiness pipe before it was ready")
            }
            UpgradeError::TimedOut(t) => {
                write!(f, "the new process was not ready within {t:?}: killed")
            }
        }
    }
}

impl std::error::Error for UpgradeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpgradeError::Exe(e)
            | UpgradeError::Pipe(e)
            | UpgradeError::Spawn { source: e, .. } => Some(e),
            UpgradeError::Exited(_) | UpgradeError::TimedOut(_) => None,
        }
    }
}

/// The process-wide hand-over state.
struct State {
    /// The listening sockets this process serves, by local address: what an
    /// upgrade hands on. Raw: the workers own them.
    bound: BTreeMap<SocketAddr, Vec<RawFd>>,
    /// Sockets inherited and not yet taken by a bind.
    inherited: BTreeMap<SocketAddr, Vec<OwnedFd>>,
    /// Where to report ready, when started by an upgrade.
    ready: Option<OwnedFd>,
}

static STATE: Mutex<State> = Mutex::new(State {
    bound: BTreeMap::new(),
    inherited: BTreeMap::new(),
    ready: None,
});

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock leaves plain maps behind: still usable.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Records that `fds` listen on `addr` (replacing what was recorded for
/// it): an upgrade hands them on. Port 0 is not recorded.
pub fn remember(addr: SocketAddr, fds: &[RawFd]) {
    if addr.port() != 0 {
        state().bound.insert(addr, fds.to_vec());
    }
}

/// Drops what [`remember`] recorded for `addr` (its listener closed): an
/// upgrade no longer hands it on.
pub fn forget(addr: SocketAddr) {
    state().bound.remove(&addr);
}

/// What an upgrade would hand on now, by address.
pub fn remembered() -> Vec<(SocketAddr, Vec<RawFd>)> {
    state()
        .bound
        .iter()
        .map(|(a, fds)| (*a, fds.clone()))
        .collect()
}

/// The sockets inherited for `addr`, taken (a second call returns `None`).
pub(crate) fn take_inherited(addr: SocketAddr) -> Option<Vec<std::net::TcpListener>> {
    let fds = state().inherited.remove(&addr)?;
    Some(fds.into_iter().map(std::net::TcpListener::from).collect())
}

/// What [`adopt_from_env`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inheritance {
    /// The inherited sockets by address, how many of each.
    pub sockets: Vec<(SocketAddr, usize)>,
    /// Started by an upgrade: [`report_ready`] tells the old process.
    pub upgrade: bool,
}

/// Takes over what an upgrading process handed on: reads and removes
/// `WSEDGE_LISTEN_FDS` and `WSEDGE_READY_FD`, checks every descriptor, and
/// keeps them for the binds ([`crate::listener::bind_all`], the admin
/// endpoint) to take instead of binding. Nothing to do (`Ok` with nothing
/// inherited) when neither is set.
///
/// # Safety
///
/// Call it before any other thread is started: it removes environment
/// variables (`std::env::remove_var`), and it takes ownership of the
/// descriptors the variables name, which nothing else in the process may
/// use or close.
pub unsafe fn adopt_from_env() -> Result<Inheritance, InheritError> {
    let listen = std::env::var(LISTEN_FDS_VAR).ok();
    let ready = std::env::var(READY_FD_VAR).ok();
    // SAFETY: the caller guarantees no other thread runs (the function's
    // contract), so nothing reads the environment meanwhile.
    unsafe { std::env::remove_var(LISTEN_FDS_VAR) };
    // SAFETY: as above.
    unsafe { std::env::remove_var(READY_FD_VAR) };
    let mut found = Inheritance::default();
    let mut st = state();
    if let Some(text) = ready {
        let fd = text
            .trim()
            .parse::<RawFd>()
            .ok()
            .filter(|&fd| fd > 2 && crate::sys::fd_is_open(fd))
            .ok_or_else(|| InheritError::ReadyFd(text.clone()))?;
        crate::sys::set_cloexec(fd, true).map_err(|_| InheritError::ReadyFd(text.clone()))?;
        // SAFETY: open (checked above), handed to this process for it
        // alone, and owned by nothing else here (the caller's contract).
        st.ready = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        found.upgrade = true;
    }
    let Some(text) = listen else {
        return Ok(found);
    };
    let entries = parse_listen_fds(&text)?;
    for (address, fds) in &entries {
        for &fd in fds {
            check_listening(fd, *address)?;
        }
    }
    for (address, fds) in entries {
        let mut owned = Vec::with_capacity(fds.len());
        for fd in fds {
            // Not inherited any further (an upgrade clears it again).
            crate::sys::set_cloexec(fd, true).map_err(|e| InheritError::NotListening {
                fd,
                address,
                found: e.to_string(),
            })?;
            // SAFETY: checked open and listening above, listed once
            // (parse_listen_fds refuses duplicates), and owned by nothing
            // else in this process (the caller's contract).
            owned.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        found.sockets.push((address, owned.len()));
        st.inherited.insert(address, owned);
    }
    Ok(found)
}

/// Closes the inherited sockets no bind took (their address left the
/// configuration); returns their addresses. Call it once the server runs.
pub fn close_unclaimed() -> Vec<SocketAddr> {
    let left = std::mem::take(&mut state().inherited);
    left.into_keys().collect()
}

/// Tells the process that started this one by an upgrade that this one
/// serves (writes its process id to the readiness pipe and closes it), so
/// that it drains. `Ok(false)` when not started by an upgrade.
pub fn report_ready() -> io::Result<bool> {
    let Some(fd) = state().ready.take() else {
        return Ok(false);
    };
    let mut pipe = std::fs::File::from(fd);
    pipe.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(true)
}

/// The old process's half: starts the running binary again (same path,
/// same arguments) with every [`remember`]ed socket inherited, and waits up
/// to `timeout` for it to report ready. Returns its process id. On an
/// error the new process is gone (killed if it still ran) and this one
/// serves on, untouched.
pub fn start_new_binary(timeout: Duration) -> Result<u32, UpgradeError> {
    let exe = running_exe().map_err(UpgradeError::Exe)?;
    let listeners: Vec<(SocketAddr, Vec<RawFd>)> = remembered()
        .into_iter()
        .filter(|(addr, fds)| {
            let ok = fds.iter().all(|&fd| check_listening(fd, *addr).is_ok());
            if !ok {
                warn!(%addr, "upgrade: a remembered socket of {addr} no longer listens there: not handed on (was it forgotten?)");
            }
            ok
        })
        .collect();
    let (read, write) = crate::sys::pipe_cloexec().map_err(UpgradeError::Pipe)?;
    let mut inherit: Vec<RawFd> = listeners.iter().flat_map(|(_, f)| f.clone()).collect();
    inherit.push(write.as_raw_fd());

    let mut cmd = Command::new(&exe);
    let mut args = std::env::args_os();
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args)
        .env(LISTEN_FDS_VAR, format_listen_fds(&listeners))
        .env(READY_FD_VAR, write.as_raw_fd().to_string());
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it reads a vector allocated
    // before the fork and calls fcntl (set_cloexec allocates nothing, and
    // its error is the OS error code, no allocation either). The
    // descriptors are open in the child: fork copied them, and only exec
    // would close them.
    unsafe {
        cmd.pre_exec(move || {
            // Nothing else crosses the exec: a socket accepted through
            // io_uring has no close-on-exec flag, and a client socket the
            // new process held open would never be closed by this one (its
            // client would wait for the end of the stream).
            crate::sys::cloexec_from(3);
            for &fd in &inherit {
                crate::sys::set_cloexec(fd, false)?;
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(|source| UpgradeError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    // Only the child holds the write end now: its exit is end of file here.
    drop(write);
    match wait_ready(read, timeout) {
        Ok(true) => Ok(child.id()),
        Ok(false) => Err(UpgradeError::Exited(reap(
            &mut child,
            Duration::from_secs(2),
        ))),
        Err(UpgradeError::TimedOut(t)) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(UpgradeError::TimedOut(t))
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Reads the readiness pipe: `Ok(true)` when the new process wrote to it,
/// `Ok(false)` at end of file (it exited, or closed it, without).
fn wait_ready(read: OwnedFd, timeout: Duration) -> Result<bool, UpgradeError> {
    if !crate::sys::poll_readable(read.as_raw_fd(), timeout).map_err(UpgradeError::Pipe)? {
        return Err(UpgradeError::TimedOut(timeout));
    }
    let mut pipe = std::fs::File::from(read);
    let mut buf = [0u8; 32];
    loop {
        match pipe.read(&mut buf) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(UpgradeError::Pipe(e)),
        }
    }
}

/// The exit status of `child`, waiting up to `limit` (it closed its pipe,
/// so it is exiting); killed and reaped after that.
fn reap(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The running binary's path. When the file was replaced (the new version
/// renamed over it), `/proc/self/exe` reads `PATH (deleted)`: PATH is then
/// the new version, which is what an upgrade starts.
fn running_exe() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(strip_deleted(exe))
}

fn strip_deleted(exe: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(path) => PathBuf::from(std::ffi::OsStr::from_bytes(path)),
        None => exe,
    }
}

/// Whether `fd` is a TCP socket listening on `addr`; the error says what it
/// is instead.
fn check_listening(fd: RawFd, address: SocketAddr) -> Result<(), InheritError> {
    let not = |found: String| InheritError::NotListening { fd, address, found };
    if fd <= 2 {
        return Err(not("0, 1 and 2 are stdin, stdout and stderr".into()));
    }
    if !crate::sys::fd_is_open(fd) {
        return Err(not("not an open descriptor".into()));
    }
    // SAFETY: `fd` is open (checked just above) and stays open while
    // borrowed: only this function uses it, and it closes nothing.
    let fd_ref = unsafe { BorrowedFd::borrow_raw(fd) };
    let sock = socket2::SockRef::from(&fd_ref);
    let kind = sock.r#type().map_err(|e| not(e.to_string()))?;
    if kind != socket2::Type::STREAM {
        return Err(not(format!("a socket of type {kind:?}")));
    }
    if sock.protocol().map_err(|e| not(e.to_string()))? != Some(socket2::Protocol::TCP) {
        return Err(not("not a TCP socket".into()));
    }
    if !sock.is_listener().map_err(|e| not(e.to_string()))? {
        return Err(not("a socket that does not listen".into()));
    }
    let local = sock
        .local_addr()
        .map_err(|e| not(e.to_string()))?
        .as_socket();
    if local != Some(address) {
        return Err(not(match local {
            Some(a) => format!("it listens on {a}"),
            None => "not an IP socket".into(),
        }));
    }
    Ok(())
}

/// Parses `ADDR=FD,FD;ADDR=FD` (empty: nothing). An address listed twice,
/// a descriptor listed twice, or one below 3 is an error.
pub fn parse_listen_fds(text: &str) -> Result<Vec<(SocketAddr, Vec<RawFd>)>, InheritError> {
    let mut out: Vec<(SocketAddr, Vec<RawFd>)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why| InheritError::Syntax {
            entry: entry.to_string(),
            why,
        };
        let (addr, fds) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .map_err(|_| bad("not an IP:PORT address"))?;
        if out.iter().any(|(a, _)| *a == addr) {
            return Err(bad("the address is listed twice"));
        }
        let mut list = Vec::new();
        for fd in fds.split(',').map(str::trim) {
            let fd: RawFd = fd.parse().map_err(|_| bad("not a descriptor number"))?;
            if fd <= 2 {
                return Err(bad("descriptors 0, 1 and 2 are stdin, stdout and stderr"));
            }
            if !seen.insert(fd) {
                return Err(bad("a descriptor is listed twice"));
            }
            list.push(fd);
        }
        out.push((addr, list));
    }
    Ok(out)
}

/// The text [`parse_listen_fds`] reads.
pub fn format_listen_fds(entries: &[(SocketAddr, Vec<RawFd>)]) -> String {
    entries
        .iter()
        .map(|(addr, fds)| {
            let fds: Vec<String> = fds.iter().map(RawFd::to_string).collect();
            format!("{addr}={}", fds.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_formats_the_variable() {
        let text = "127.0.0.1:8080=5,6;[::1]:9901=7";
        let parsed = parse_listen_fds(text).unwrap();
        assert_eq!(
            parsed,
            vec![
                (addr("127.0.0.1:8080"), vec![5, 6]),
                (addr("[::1]:9901"), vec![7])
            ]
        );
        assert_eq!(format_listen_fds(&parsed), text);
        assert_eq!(parse_listen_fds("").unwrap(), vec![]);
        assert_eq!(
            parse_listen_fds(" 0.0.0.0:443 = 9 , 10 ;").unwrap(),
            vec![(addr("0.0.0.0:443"), vec![9, 10])]
        );
        assert_eq!(format_listen_fds(&[]), "");
    }

    #[test]
    fn refuses_malformed_entries() {
        for (bad, why) in [
            ("127.0.0.1:8080", "no '='"),
            ("localhost:8080=5", "not an IP:PORT"),
            ("127.0.0.1=5", "not an IP:PORT"),
            ("127.0.0.1:8080=", "not a descriptor"),
            ("127.0.0.1:8080=5,x", "not a descriptor"),
            ("127.0.0.1:8080=-4", "stdin"),
            ("127.0.0.1:8080=1", "stdin"),
            ("127.0.0.1:8080=5;127.0.0.1:8081=5", "listed twice"),
            ("127.0.0.1:8080=5;127.0.0.1:8080=6", "listed twice"),
        ] {
            let e = parse_listen_fds(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains(LISTEN_FDS_VAR), "{bad:?}: {e}");
        }
    }

    #[test]
    fn checks_what_a_descriptor_is() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        check_listening(l.as_raw_fd(), a).unwrap();

        let other = SocketAddr::new(a.ip(), if a.port() == 1 { 2 } else { a.port() - 1 });
        let e = check_listening(l.as_raw_fd(), other)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("it listens on {a}")), "{e}");

        let connected = std::net::TcpStream::connect(a).unwrap();
        let e = check_listening(connected.as_raw_fd(), a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not listen"), "{e}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check_listening(udp.as_raw_fd(), udp.local_addr().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("type"), "{e}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let e = check_listening(file.as_raw_fd(), a)
            .unwrap_err()
            .to_string();
        assert!(e.contains("descriptor"), "{e}");

        // (Another test's thread may open something at that number meanwhile:
        // whatever it is, it is not `l`.)
        let closed = file.as_raw_fd();
        drop(file);
        assert!(check_listening(closed, a).is_err());
        let e = check_listening(1, a).unwrap_err().to_string();
        assert!(e.contains("stdout"), "{e}");
    }

    #[test]
    fn remembers_and_forgets_by_address() {
        // Addresses of their own: other tests in this process bind too.
        let a = addr("127.0.0.1:61001");
        let b = addr("[::1]:61001");
        remember(a, &[40, 41]);
        remember(b, &[42]);
        remember(addr("127.0.0.1:0"), &[43]);
        let now = remembered();
        assert!(now.contains(&(a, vec![40, 41])));
        assert!(now.contains(&(b, vec![42])));
        assert!(!now.iter().any(|(x, _)| x.port() == 0));
        remember(a, &[44]);
        assert!(remembered().contains(&(a, vec![44])));
        forget(a);
        let now = remembered();
        assert!(!now.iter().any(|(x, _)| *x == a));
        assert!(now.contains(&(b, vec![42])));
        forget(b);
        forget(b);
        assert!(!remembered().iter().any(|(x, _)| *x == b));
    }

    #[test]
    fn strips_the_deleted_mark() {
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/local/bin/wsedge (deleted)")),
            PathBuf::from("/usr/local/bin/wsedge")
        );
        assert_eq!(
            strip_deleted(PathBuf::from("/usr/local/bin/wsedge")),
            PathBuf::from("/usr/local/bin/wsedge")
        );
    }
}
