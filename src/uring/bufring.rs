//! A provided-buffer ring: buffers the kernel picks from only when bytes
//! arrive, so a connection waiting for data holds none.
//!
//! One contiguous allocation of `count` buffers, each with [`HEADROOM`]
//! bytes in front of what the kernel fills: the relay core's carry (the
//! start of a frame header cut by the previous read, at most 14 bytes) is
//! copied there, so the walk sees it and the new bytes as one slice — the
//! same contract as `Core::begin_read` over a pool buffer — and the bytes
//! it hands out are sent from the same buffer. A buffer goes back to the
//! kernel ([`BufRing::recycle`]) once its send has completed.
//!
//! The ring memory (`count` 16-byte entries, page aligned) and the buffers
//! stay valid until the owner has unregistered the group or closed the
//! io_uring instance: [`BufRing`] does not know the instance, so its owner
//! calls [`BufRing::unregister`] before dropping it (see `Drop`).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// Bytes reserved in front of each buffer for the carried frame-header
/// start (at most 14), rounded up.
pub const HEADROOM: usize = 16;

/// The ring memory must be page aligned: 64 KiB is, whatever the kernel's
/// page size (4, 16 or 64 KiB).
const RING_ALIGN: usize = 64 * 1024;

/// A registered group of equal buffers.
pub struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    /// Entries: a power of two, at most 32,768.
    count: u16,
    /// Bytes per buffer, headroom included.
    size: u32,
    bgid: u16,
    /// The tail as this side last wrote it; published to the kernel by
    /// [`BufRing::publish`].
    tail: u16,
    registered: bool,
    /// Buffers neither in the ring nor handed out, the most recently used
    /// on top: the ring is refilled from the top, so the same few buffers
    /// keep being used and the rest stay untouched memory.
    free: Vec<u16>,
    /// Buffers in the ring (provided, not yet picked by the kernel).
    in_ring: u16,
    /// How many buffers the ring is kept filled with.
    depth: u16,
    /// Buffers whose memory was given back to the OS ([`BufRing::trim`]).
    trimmed: Vec<bool>,
}

impl std::fmt::Debug for BufRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRing")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("bgid", &self.bgid)
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl BufRing {
    /// Allocates `count` buffers of `size` bytes (headroom included) and
    /// registers them as group `bgid` with the instance behind `submitter`,
    /// every buffer given to the kernel.
    pub fn new(submitter: &Submitter<'_>, bgid: u16, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32_768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer ring holds a power of two entries, at most 32,768",
            ));
        }
        if (size as usize) <= HEADROOM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a ring buffer must be larger than its headroom",
            ));
        }
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            RING_ALIGN,
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let bufs_layout = Layout::from_size_align(
            usize::from(count) * (size as usize).next_multiple_of(4096),
            4096,
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout's size is not zero (count ≥ 1, 16-byte entries).
        let ring = unsafe { alloc_zeroed(ring_layout) };
        let Some(ring) = NonNull::new(ring.cast::<BufRingEntry>()) else {
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        // SAFETY: the layout's size is not zero (count ≥ 1, size > HEADROOM).
        let bufs = unsafe { alloc_zeroed(bufs_layout) };
        let Some(bufs) = NonNull::new(bufs) else {
            // SAFETY: allocated just above with this layout, not shared.
            unsafe { dealloc(ring.as_ptr().cast(), ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut this = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            count,
            size,
            bgid,
            tail: 0,
            registered: false,
            free: (0..count).rev().collect(),
            in_ring: 0,
            depth: count,
            trimmed: vec![false; usize::from(count)],
        };
        this.publish();
        // SAFETY: the ring memory is page aligned, holds `count` entries
        // and lives until `unregister` or, failing that, until `Drop`,
        // which leaks it rather than free memory the kernel may use.
        unsafe { submitter.register_buf_ring(this.ring.as_ptr() as u64, count, bgid)? };
        this.registered = true;
        Ok(this)
    }

    /// Where buffer `bid` starts in the allocation: buffers are page
    /// aligned, so a cold one can be given back to the OS.
    fn offset(&self, bid: u16) -> usize {
        usize::from(bid) * (self.size as usize).next_multiple_of(4096)
    }

    /// The group id to name in a buffer-selecting request.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Buffers in the group.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Bytes the kernel may fill in one buffer (its size less the headroom).
    pub fn capacity(&self) -> usize {
        self.size as usize - HEADROOM
    }

    /// Buffer `bid`, headroom included: the kernel's bytes start at
    /// [`HEADROOM`]. Only for a buffer the kernel handed out (named by a
    /// completion) and not yet recycled.
    ///
    /// # Panics
    /// When `bid` is not a buffer of this group.
    pub fn buf(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < self.count, "buffer {bid} is not in the group");
        let start = self.offset(bid);
        // `start + size` is within the allocation (bid < count);
        // the kernel writes a buffer only while it is in the ring, and the
        // caller holds it out of the ring (a completion named it and it is
        // not recycled yet); `&mut self` keeps this the only reference.
        let base = self.bufs.as_ptr().wrapping_add(start);
        // SAFETY: as above: `base..base + size` is that buffer.
        unsafe { std::slice::from_raw_parts_mut(base, self.size as usize) }
    }

    /// Gives buffer `bid` back (its bytes are sent): the ring takes it
    /// again at the next [`BufRing::publish`], before colder ones.
    pub fn recycle(&mut self, bid: u16) {
        assert!(bid < self.count, "buffer {bid} is not in the group");
        self.free.push(bid);
    }

    /// A completion named a buffer: the kernel took it out of the ring.
    pub fn taken(&mut self) {
        self.in_ring = self.in_ring.saturating_sub(1);
    }

    /// Keeps the ring filled with at most `depth` buffers (1 ..= count):
    /// the memory used is what is handed out plus `depth` buffers; a
    /// receive that finds the ring empty fails with ENOBUFS and is armed
    /// again once the ring is refilled.
    pub fn set_depth(&mut self, depth: u16) {
        self.depth = depth.clamp(1, self.count);
    }

    /// Gives the memory of the coldest free buffers back to the OS, all
    /// but the `keep` most recently used; returns how many.
    pub fn trim(&mut self, keep: usize) -> usize {
        let cold = self.free.len().saturating_sub(keep);
        let mut n = 0;
        for i in 0..cold {
            let bid = self.free[i];
            if self.trimmed[usize::from(bid)] {
                continue;
            }
            let base = self.bufs.as_ptr().wrapping_add(self.offset(bid));
            // SAFETY: the buffer is ours, neither in the ring nor handed
            // out; MADV_DONTNEED only drops its pages (they read as zero
            // when next touched). A range that is not page aligned is
            // refused by the kernel and the buffer simply stays.
            unsafe { libc::madvise(base.cast(), self.size as usize, libc::MADV_DONTNEED) };
            self.trimmed[usize::from(bid)] = true;
            n += 1;
        }
        n
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        let entry = self.ring.as_ptr().wrapping_add(slot);
        // SAFETY: slot < count, within the ring allocation (initialised:
        // zeroed at allocation); the kernel reads entries only up to the
        // published tail, and this one is past it.
        let entry = unsafe { &mut *entry };
        // bid < count: within the buffers.
        let base = self.bufs.as_ptr().wrapping_add(self.offset(bid));
        entry.set_addr(base as u64 + HEADROOM as u64);
        entry.set_len(self.size - HEADROOM as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Refills the ring from the free buffers, most recently used first,
    /// and makes them visible to the kernel.
    pub fn publish(&mut self) {
        while self.in_ring < self.depth
            && let Some(bid) = self.free.pop()
        {
            self.trimmed[usize::from(bid)] = false;
            self.push(bid);
            self.in_ring += 1;
        }
        // SAFETY: the ring's first entry is initialised (zeroed at
        // allocation) and page aligned; its `resv` field is the tail.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) };
        // SAFETY: the tail is a naturally aligned u16 the kernel reads with
        // an acquire load; a release store orders the entries before it.
        let tail = unsafe { AtomicU16::from_ptr(tail.cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Unregisters the group (before the io_uring instance is closed or
    /// the ring dropped).
    pub fn unregister(&mut self, submitter: &Submitter<'_>) -> io::Result<()> {
        if self.registered {
            submitter.unregister_buf_ring(self.bgid)?;
            self.registered = false;
        }
        Ok(())
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.registered {
            // The kernel may still write into it: leak rather than free.
            return;
        }
        // SAFETY: allocated in `new` with these layouts, no longer
        // registered with any kernel instance, and not borrowed (`&mut`).
        unsafe { dealloc(self.ring.as_ptr().cast(), self.ring_layout) };
        // SAFETY: as above.
        unsafe { dealloc(self.bufs.as_ptr(), self.bufs_layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{IoUring, cqueue, opcode, types};
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// A connected loopback TCP pair: (ours, the peer's).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (b, a)
    }

    fn ring() -> Option<IoUring> {
        match IoUring::new(64) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("io_uring unavailable ({e}): skipped");
                None
            }
        }
    }

    /// Waits for one completion.
    fn next(ring: &mut IoUring) -> cqueue::Entry {
        loop {
            if let Some(c) = ring.completion().next() {
                return c;
            }
            ring.submit_and_wait(1).unwrap();
        }
    }

    #[test]
    fn refuses_bad_shapes() {
        let Some(ring) = ring() else { return };
        assert!(BufRing::new(&ring.submitter(), 1, 3, 4096).is_err());
        assert!(BufRing::new(&ring.submitter(), 1, 4, HEADROOM as u32).is_err());
    }

    /// Multishot receive into the group: each arrival takes a buffer,
    /// the bytes land after the headroom, a recycled buffer is used again,
    /// an empty group ends the request with ENOBUFS (the driver re-arms
    /// once its buffers come back), and end of stream ends it with 0.
    #[test]
    fn multishot_receive_takes_buffers_only_as_bytes_arrive() {
        let Some(mut ring) = ring() else { return };
        let mut bufs = BufRing::new(&ring.submitter(), 7, 2, 4096).unwrap();
        assert_eq!(bufs.capacity(), 4096 - HEADROOM);
        let (ours, mut peer) = pair();
        let recv = || {
            opcode::RecvMulti::new(types::Fd(ours.as_raw_fd()), 7)
                .build()
                .user_data(42)
        };
        // SAFETY: the socket outlives every completion this test waits for.
        unsafe { ring.submission().push(&recv()).unwrap() };
        ring.submit().unwrap();

        let mut got = Vec::new();
        for msg in [&b"first"[..], b"second"] {
            peer.write_all(msg).unwrap();
            let c = next(&mut ring);
            assert_eq!(c.user_data(), 42);
            assert!(cqueue::more(c.flags()), "multishot goes on");
            let bid = cqueue::buffer_select(c.flags()).expect("a buffer was picked");
            bufs.taken();
            let n = c.result() as usize;
            got.push((bid, bufs.buf(bid)[HEADROOM..HEADROOM + n].to_vec()));
        }
        assert_eq!(got[0].1, b"first");
        assert_eq!(got[1].1, b"second");
        assert_ne!(got[0].0, got[1].0, "two buffers in use");

        // Both buffers are out: the next arrival finds none.
        peer.write_all(b"third").unwrap();
        let c = next(&mut ring);
        assert_eq!(c.result(), -libc::ENOBUFS);
        assert!(!cqueue::more(c.flags()), "the request ended");

        // One buffer back, re-armed: the waiting bytes arrive in it, after
        // the carried bytes placed in its headroom.
        bufs.recycle(got[0].0);
        bufs.publish();
        // SAFETY: as above.
        unsafe { ring.submission().push(&recv()).unwrap() };
        ring.submit().unwrap();
        let c = next(&mut ring);
        let bid = cqueue::buffer_select(c.flags()).unwrap();
        bufs.taken();
        assert_eq!(bid, got[0].0, "the recycled buffer");
        let n = c.result() as usize;
        let b = bufs.buf(bid);
        b[HEADROOM - 3..HEADROOM].copy_from_slice(b"<<<");
        assert_eq!(&b[HEADROOM - 3..HEADROOM + n], b"<<<third");
        bufs.recycle(bid);
        bufs.recycle(got[1].0);
        bufs.publish();

        // End of stream: result 0, no more.
        drop(peer);
        let c = next(&mut ring);
        assert_eq!(c.result(), 0);
        assert!(!cqueue::more(c.flags()));
        bufs.unregister(&ring.submitter()).unwrap();
    }

    /// Sending out of a ring buffer: what was received is written from the
    /// same memory, then the buffer goes back.
    #[test]
    fn what_was_received_is_sent_from_the_same_buffer() {
        let Some(mut ring) = ring() else { return };
        let mut bufs = BufRing::new(&ring.submitter(), 1, 4, 8192).unwrap();
        let (a, mut a_peer) = pair();
        let (b, b_peer) = pair();
        let recv = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), 1)
            .build()
            .user_data(1);
        // SAFETY: the sockets outlive every completion this test waits for.
        unsafe { ring.submission().push(&recv).unwrap() };
        ring.submit().unwrap();
        a_peer.write_all(b"relayed").unwrap();
        let c = next(&mut ring);
        let bid = cqueue::buffer_select(c.flags()).unwrap();
        bufs.taken();
        let n = c.result() as usize;
        let data = bufs.buf(bid)[HEADROOM..HEADROOM + n].as_ptr();
        let send = opcode::Send::new(types::Fd(b.as_raw_fd()), data, n as u32)
            .build()
            .user_data(2);
        // SAFETY: the buffer stays out of the ring until this completes.
        unsafe { ring.submission().push(&send).unwrap() };
        ring.submit().unwrap();
        let c = next(&mut ring);
        assert_eq!(c.user_data(), 2);
        assert_eq!(c.result(), n as i32);
        bufs.recycle(bid);
        bufs.publish();
        let mut got = [0u8; 7];
        std::io::Read::read_exact(&mut &b_peer, &mut got).unwrap();
        assert_eq!(&got, b"relayed");
        bufs.unregister(&ring.submitter()).unwrap();
    }
}
