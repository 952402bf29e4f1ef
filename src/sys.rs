//! The few raw system calls wsedge makes itself (socket half-close, signal
//! masks, descriptor flags, the upgrade's readiness pipe), each a single
//! `libc` call.

use std::io;
use std::os::fd::RawFd;

/// `shutdown(fd, SHUT_WR)`.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    shutdown(fd, libc::SHUT_WR)
}

/// Shuts down both directions of a socket (a dead peer is dropped).
pub fn shutdown_both(fd: RawFd) -> io::Result<()> {
    shutdown(fd, libc::SHUT_RDWR)
}

fn shutdown(fd: RawFd, how: libc::c_int) -> io::Result<()> {
    // SAFETY: `shutdown` takes no pointers; an invalid fd is reported as an
    // error, not undefined behaviour.
    let r = unsafe { libc::shutdown(fd, how) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it fully
    // before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is a valid, initialised sigset_t.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks `signals` in the calling thread (inherited by threads it starts).
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// Waits for one of `signals` (which must be blocked) and returns it.
pub fn wait_for_signals(signals: &[i32]) -> i32 {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid place to write to.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Raises the soft open-file limit to the hard one; returns the limit in
/// force afterwards (the soft limit).
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit, read only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// When accepting fails for want of file descriptors: frees `reserve` (a
/// descriptor kept for this), accepts one waiting client on `listener`
/// (without blocking), writes it `answer` (without blocking) and closes
/// it, then takes the reserve again. Returns whether a client was answered.
pub fn refuse_one_without_fds(
    listener: RawFd,
    reserve: &mut Option<std::fs::File>,
    answer: &[u8],
) -> bool {
    drop(reserve.take());
    let mut pfd = libc::pollfd {
        fd: listener,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) } > 0;
    let mut answered = false;
    if ready {
        // SAFETY: null address pointers are allowed (the peer's address is
        // not wanted); the flags make the new socket non-blocking and
        // close-on-exec.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `answer` is valid for its length; MSG_DONTWAIT never
            // blocks, MSG_NOSIGNAL avoids SIGPIPE on a closed peer.
            let _ = unsafe {
                libc::send(
                    fd,
                    answer.as_ptr().cast(),
                    answer.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            // SAFETY: `fd` was returned by accept4 above and is closed once.
            unsafe { libc::close(fd) };
            answered = true;
        }
    }
    *reserve = std::fs::File::open("/dev/null").ok();
    answered
}

/// Sets (`on`) or clears the close-on-exec flag of `fd`. Only `fcntl`,
/// which is async-signal-safe, and no allocation: callable between `fork`
/// and `exec`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: `fcntl(F_GETFD)` takes no pointers; a closed fd is EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if wanted != flags {
        // SAFETY: as above; F_SETFD takes an int argument.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, wanted) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec. Async-signal-safe
/// (for a child between fork and exec): `close_range(CLOSE_RANGE_CLOEXEC)`
/// (Linux 5.11), else `fcntl` on each descriptor below the open-file limit.
pub fn cloexec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range takes no pointers; it only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as RawFd
    } else {
        1024
    };
    for fd in first..max {
        // SAFETY: fcntl on a descriptor number; a closed one is EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 {
            // SAFETY: as above; F_SETFD takes an int argument.
            unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        }
    }
}

/// Whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: `fcntl(F_GETFD)` takes no pointers; a closed fd is EBADF.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub fn pipe_cloexec() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are fresh descriptors that nothing
    // else owns.
    let read = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above, the other end.
    let write = unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) };
    Ok((read, write))
}

/// Waits up to `timeout` for `fd` to be readable (data, end of file or an
/// error to read); `Ok(false)` when the time ran out. Retries on EINTR.
pub fn poll_readable(fd: RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid, writable pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloexec_from_marks_descriptors_at_and_above() {
        // SAFETY: dup of stderr; the copy has no close-on-exec flag.
        let fd = unsafe { libc::dup(2) };
        assert!(fd > 2);
        // SAFETY: fcntl on the descriptor just made.
        let flags = || unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_eq!(flags() & libc::FD_CLOEXEC, 0);
        cloexec_from(fd);
        assert_eq!(flags() & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        // SAFETY: closes only the copy made here.
        unsafe { libc::close(fd) };
    }
}
