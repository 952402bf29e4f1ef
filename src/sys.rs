//! The few raw system calls wsedge makes itself (socket half-close, signal
//! masks), each a single `libc` call.

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
