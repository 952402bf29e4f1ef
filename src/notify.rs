//! systemd's service notification protocol (`sd_notify(3)`), without
//! libsystemd.
//!
//! Under a unit with `Type=notify` (or `notify-reload`), systemd passes the
//! path of a Unix datagram socket in `$NOTIFY_SOCKET`; the service reports
//! its state by sending it newline-separated `KEY=VALUE` assignments, one
//! datagram per report. A path starting with `@` names a socket in the
//! abstract namespace (the `@` stands for the leading NUL byte).
//!
//! Every function here is a no-op returning `Ok(false)` when
//! `$NOTIFY_SOCKET` is unset or empty (not started by systemd), and
//! `Ok(true)` once the datagram is sent. An error (the socket is gone, the
//! variable holds something that is not a socket path) is the caller's to
//! log: a failed notification must not stop the proxy.
//!
//! The variable is left in the environment, so that a process wsedge
//! started could notify too: the new process of a binary upgrade
//! ([`crate::upgrade`]) does, with [`ready_as_main_process`].

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// The environment variable systemd names its notification socket in.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells systemd that start-up is complete (`READY=1`): the listeners are
/// bound and clients can connect. Also ends a reload begun with
/// [`reloading`].
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// Tells systemd that this process is the service's main process now and
/// is ready (`MAINPID=<pid>` and `READY=1` in one datagram): what a binary
/// upgrade's new process sends, before the old one exits. systemd accepts
/// it from a process other than the main one only with `NotifyAccess=all`.
pub fn ready_as_main_process() -> io::Result<bool> {
    notify(&main_pid_message(std::process::id()))
}

/// Tells systemd that a reload began (`RELOADING=1`), with the
/// `MONOTONIC_USEC` timestamp (`CLOCK_MONOTONIC`, microseconds) that
/// systemd 253 and later require of a `Type=notify-reload` service. Send
/// [`ready`] when the reload is over, whether or not it succeeded.
pub fn reloading() -> io::Result<bool> {
    if notify_socket().is_none() {
        return Ok(false);
    }
    notify(&reloading_message(monotonic_usec()?))
}

/// Tells systemd that the service is stopping (`STOPPING=1`): it drains
/// its connections and will exit on its own.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// A one-line status for `systemctl status` (`STATUS=...`). Line breaks in
/// `text` become spaces: a newline would otherwise start another
/// assignment (`STATUS=x\nREADY=1`).
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

/// The interval systemd expects `WATCHDOG=1` within, when the unit sets
/// `WatchdogSec=`: `$WATCHDOG_USEC`, if `$WATCHDOG_PID` is unset or names
/// this process. `None` when the watchdog is off, or meant for another
/// process. Send a keep-alive at about half this interval.
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Sends `msg` to `$NOTIFY_SOCKET`; `Ok(false)` when it is unset or empty.
fn notify(msg: &str) -> io::Result<bool> {
    match notify_socket() {
        None => Ok(false),
        Some(socket) => send_to(&socket, msg).map(|()| true),
    }
}

/// `$NOTIFY_SOCKET`, unless unset or empty (sd_notify treats both alike).
fn notify_socket() -> Option<std::ffi::OsString> {
    std::env::var_os(NOTIFY_SOCKET).filter(|s| !s.is_empty())
}

/// Sends `msg` as one datagram to the socket `socket` names: a filesystem
/// path (`/run/systemd/notify`) or, after `@`, an abstract name.
fn send_to(socket: &OsStr, msg: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = match bytes.split_first() {
        Some((b'@', name)) if !name.is_empty() => {
            let addr = SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(msg.as_bytes(), &addr)?
        }
        Some((b'/', _)) => sock.send_to(msg.as_bytes(), Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "${NOTIFY_SOCKET} is neither an absolute path nor an abstract name (@...): {}",
                    socket.to_string_lossy()
                ),
            ));
        }
    };
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes to ${NOTIFY_SOCKET}", msg.len()),
        ));
    }
    Ok(())
}

fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

fn main_pid_message(pid: u32) -> String {
    format!("MAINPID={pid}\nREADY=1")
}

fn status_message(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={one_line}")
}

fn watchdog_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds: the clock systemd compares
/// `MONOTONIC_USEC` with (std's `Instant` reads it but does not expose it).
fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and
    // CLOCK_MONOTONIC is a clock every Linux kernel has.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).map_err(|_| io::Error::other("negative monotonic time"))?;
    let nanos =
        u64::try_from(ts.tv_nsec).map_err(|_| io::Error::other("negative monotonic time"))?;
    Ok(secs * 1_000_000 + nanos / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound datagram socket in a fresh directory, removed on drop.
    struct Receiver {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
        sock: UnixDatagram,
    }

    impl Receiver {
        fn new(tag: &str) -> Receiver {
            let dir = std::env::temp_dir().join(format!(
                "wsedge-notify-{tag}-{}-{}",
                std::process::id(),
                monotonic_usec().unwrap()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("notify.sock");
            let sock = UnixDatagram::bind(&path).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Receiver { dir, path, sock }
        }

        fn recv(&self) -> Vec<u8> {
            let mut buf = [0u8; 4096];
            let n = self.sock.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        }
    }

    impl Drop for Receiver {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn sends_exact_bytes_to_a_path() {
        let rx = Receiver::new("path");
        send_to(rx.path.as_os_str(), "READY=1").unwrap();
        assert_eq!(rx.recv(), b"READY=1");
        send_to(rx.path.as_os_str(), "STOPPING=1").unwrap();
        assert_eq!(rx.recv(), b"STOPPING=1");
        send_to(rx.path.as_os_str(), &status_message("serving 3 listeners")).unwrap();
        assert_eq!(rx.recv(), b"STATUS=serving 3 listeners");
        send_to(rx.path.as_os_str(), &reloading_message(1_234_567)).unwrap();
        assert_eq!(rx.recv(), b"RELOADING=1\nMONOTONIC_USEC=1234567");
        send_to(rx.path.as_os_str(), &main_pid_message(4321)).unwrap();
        assert_eq!(rx.recv(), b"MAINPID=4321\nREADY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!(
            "wsedge-notify-test-{}-{}",
            std::process::id(),
            monotonic_usec().unwrap()
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send_to(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn refuses_what_is_not_a_socket_address() {
        for bad in ["", "@", "relative/notify.sock", "vsock:2:1234"] {
            let err = send_to(OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let rx = Receiver::new("gone");
        let path = rx.path.clone();
        drop(rx);
        assert!(send_to(path.as_os_str(), "READY=1").is_err());
    }

    /// Runs `notify::tests::as_child` in a child copy of this test binary,
    /// with `NOTIFY_SOCKET` as given (`None`: removed): the env-reading
    /// wrappers are tested without `set_var`, which would race with tests
    /// running in parallel threads of this process.
    fn run_child(mode: &str, notify_socket: Option<&OsStr>) {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["notify::tests::as_child", "--exact", "--test-threads=1"])
            .env("WSEDGE_NOTIFY_TEST_CHILD", mode);
        match notify_socket {
            Some(s) => cmd.env(NOTIFY_SOCKET, s),
            None => cmd.env_remove(NOTIFY_SOCKET),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "child ({mode}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The child's half of `wrappers_read_notify_socket`; passes at once
    /// when run as an ordinary test.
    #[test]
    fn as_child() {
        match std::env::var("WSEDGE_NOTIFY_TEST_CHILD").as_deref() {
            Ok("send") => {
                assert!(ready().unwrap());
                assert!(ready_as_main_process().unwrap());
                assert!(reloading().unwrap());
                assert!(status("draining\n2 left").unwrap());
                assert!(stopping().unwrap());
            }
            Ok("unset") => {
                assert!(!ready().unwrap());
                assert!(!ready_as_main_process().unwrap());
                assert!(!reloading().unwrap());
                assert!(!status("x").unwrap());
                assert!(!stopping().unwrap());
            }
            _ => {}
        }
    }

    #[test]
    fn wrappers_read_notify_socket() {
        let rx = Receiver::new("env");
        let before = monotonic_usec().unwrap();
        run_child("send", Some(rx.path.as_os_str()));
        let after = monotonic_usec().unwrap();
        assert_eq!(rx.recv(), b"READY=1");
        let main_pid = String::from_utf8(rx.recv()).unwrap();
        assert!(
            main_pid.starts_with("MAINPID=") && main_pid.ends_with("\nREADY=1"),
            "{main_pid:?}"
        );
        let reload = String::from_utf8(rx.recv()).unwrap();
        let usec: u64 = reload
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reload:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
        assert_eq!(rx.recv(), b"STATUS=draining 2 left");
        assert_eq!(rx.recv(), b"STOPPING=1");

        run_child("unset", None);
        run_child("unset", Some(OsStr::new("")));
    }

    #[test]
    fn status_stays_on_one_line() {
        assert_eq!(status_message("a\nREADY=1\r\nb"), "STATUS=a READY=1  b");
        assert_eq!(status_message(""), "STATUS=");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec().unwrap();
        let b = monotonic_usec().unwrap();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn watchdog_interval_from_the_environment_values() {
        let us = Some(Duration::from_secs(30));
        assert_eq!(watchdog_from(Some("30000000"), None, 42), us);
        assert_eq!(watchdog_from(Some("30000000"), Some("42"), 42), us);
        assert_eq!(watchdog_from(Some("30000000"), Some("41"), 42), None);
        assert_eq!(watchdog_from(Some("30000000"), Some("x"), 42), None);
        assert_eq!(watchdog_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_from(Some("soon"), None, 42), None);
        assert_eq!(watchdog_from(None, Some("42"), 42), None);
    }
}
