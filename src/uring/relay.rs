//! Relayed connections on a worker's own io_uring instance: the turn loop
//! of the io_uring-native driver around the sans-IO [`Core`] (not wired
//! into the workers yet; see `docs/architecture.md`).
//!
//! Each connection is one record in a slab: its two sockets, its core, what
//! each direction has in flight, and an entry in the worker's [`Wheel`]. No
//! future, waker or timer object exists per connection. Receives select
//! their buffer from the worker's [`BufRing`] when bytes arrive (an idle
//! connection holds none); the walked bytes are sent out of that buffer,
//! which goes back to the ring when the send completes. A direction is
//! received from only when the core wants it (`Core::wants_read`: the
//! bytes last received have been sent on), so a slow reader holds at most
//! one buffer per direction. A [`RelayRing::turn`] reaps every completion,
//! lets the cores act on them, and submits what they asked for at once.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::{BufRing, HEADROOM};
use super::wheel::Wheel;
use crate::proto::mask::MaskKeyGen;
use crate::relay::closing::TcpAction;
use crate::relay::walk::MessageSizes;
use crate::relay::{Core, Leg, Outcome};

const RECV: u64 = 1;
const SEND: u64 = 2;
const SEND_OWN: u64 = 3;
const CANCEL: u64 = 4;

/// Buffers kept in the kernel's ring at once (the memory touched is these
/// and the ones whose bytes are on the way out).
const RING_DEPTH: u16 = 32;

/// Free buffers kept warm; the memory of colder ones goes back to the OS
/// once a second.
const WARM_BUFFERS: usize = 16;

/// Reap-and-submit rounds in one turn at most (each round's submissions
/// may complete at once; the bound keeps a turn short).
const TURN_ROUNDS: usize = 8;

fn user_data(id: u32, kind: u64, leg: Leg) -> u64 {
    u64::from(id) | kind << 32 | (leg as u64) << 40
}

fn decode(ud: u64) -> (u32, u64, Leg) {
    let leg = if (ud >> 40) & 1 == 0 {
        Leg::Client
    } else {
        Leg::Backend
    };
    (ud as u32, (ud >> 32) & 0xff, leg)
}

/// Where the bytes on their way to a leg are.
#[derive(Debug)]
enum Src {
    /// A ring buffer: its id and where the walked bytes start in it.
    Ring { bid: u16, start: u32 },
    /// The bytes that came with the handshake heads.
    Pending(Vec<u8>),
}

/// Bytes read from one leg, on their way to the other.
#[derive(Debug)]
struct Out {
    src: Src,
    written: u32,
    end: u32,
    /// A send of them is in flight.
    sending: bool,
}

/// One relayed connection.
#[derive(Debug)]
struct Conn {
    fds: [OwnedFd; 2],
    core: Core,
    /// By source leg.
    out: [Option<Out>; 2],
    /// A receive is armed on the leg.
    receiving: [bool; 2],
    /// wsedge's own frame being sent to the leg (a copy: the kernel reads
    /// it while the core may move on).
    own: [Option<Box<[u8]>>; 2],
    /// The bytes that came with the handshake heads, by source leg.
    pending: Option<Box<[Vec<u8>; 2]>>,
    /// Operations in flight (the sockets stay open until none is).
    ops: u16,
    /// A receive found the ring empty: armed again at the next turn.
    starved: [bool; 2],
    cancelled: bool,
}

/// A worker's relayed connections on their own io_uring instance.
pub struct RelayRing {
    ring: IoUring,
    bufs: BufRing,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    wheel: Wheel,
    epoch: Instant,
    keys: MaskKeyGen,
    ended: Vec<(u32, Outcome)>,
    completions: Vec<(u64, i32, u32)>,
    fired: Vec<u32>,
    starved: Vec<u32>,
    /// When the cold buffers were last given back (µs).
    trimmed_at: u64,
}

impl std::fmt::Debug for RelayRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRing")
            .field("bufs", &self.bufs)
            .field("connections", &self.len())
            .finish_non_exhaustive()
    }
}

impl RelayRing {
    /// A ring of `entries` submission slots with `buffers` receive buffers
    /// of `buffer_size` bytes (headroom included).
    pub fn new(entries: u32, buffers: u16, buffer_size: u32, keys: MaskKeyGen) -> io::Result<Self> {
        // One thread submits and reaps (the worker's); completions need no
        // interrupt of it: their work runs at its next entry to the kernel.
        // Kernels before 6.0 refuse the flags: then a plain ring.
        let ring = match IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)
        {
            Ok(r) => r,
            Err(_) => IoUring::builder().build(entries)?,
        };
        let mut bufs = BufRing::new(&ring.submitter(), 0, buffers, buffer_size)?;
        bufs.set_depth(RING_DEPTH);
        let now = Instant::now();
        Ok(RelayRing {
            ring,
            bufs,
            conns: Vec::new(),
            free: Vec::new(),
            wheel: Wheel::new(1000, 4096, 0),
            epoch: now,
            keys,
            ended: Vec::new(),
            completions: Vec::new(),
            fired: Vec::new(),
            starved: Vec::new(),
            trimmed_at: 0,
        })
    }

    /// Has the kernel signal `efd` with every completion.
    pub fn register_eventfd(&self, efd: std::os::fd::RawFd) -> io::Result<()> {
        self.ring.submitter().register_eventfd(efd)
    }

    /// Submits what is queued, without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Connections relayed now.
    pub fn len(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// No connection is relayed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ring buffers the kernel may fill now (the rest are held by
    /// connections, their bytes on the way out).
    pub fn buffers_free(&self) -> usize {
        usize::from(self.bufs.count()) - self.held()
    }

    fn held(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .flat_map(|c| c.out.iter().flatten())
            .filter(|o| matches!(o.src, Src::Ring { .. }))
            .count()
    }

    /// Takes over a connection whose handshake is done: its client and
    /// backend sockets, its core, and the bytes that came after each
    /// handshake head. Returns its id.
    pub fn add(
        &mut self,
        client: OwnedFd,
        backend: OwnedFd,
        core: Core,
        from_client: Vec<u8>,
        from_backend: Vec<u8>,
        now: Instant,
    ) -> u32 {
        let pending = (!from_client.is_empty() || !from_backend.is_empty())
            .then(|| Box::new([from_client, from_backend]));
        let conn = Conn {
            fds: [client, backend],
            core,
            out: [None, None],
            receiving: [false; 2],
            own: [None, None],
            pending,
            ops: 0,
            starved: [false; 2],
            cancelled: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.conns[id as usize] = Some(conn);
                id
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        };
        let now_us = self.micros(now);
        self.service(id, now, now_us);
        id
    }

    /// Connections that ended since the last call, with what happened.
    pub fn take_ended(&mut self) -> Vec<(u32, Outcome)> {
        std::mem::take(&mut self.ended)
    }

    /// When the next timer is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.wheel
            .next_due()
            .map(|us| self.epoch + std::time::Duration::from_micros(us))
    }

    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// Closes every connection with 1001 "server shutting down".
    pub fn shutdown(&mut self, now: Instant) {
        let now_us = self.micros(now);
        for id in 0..self.conns.len() as u32 {
            if let Some(c) = &mut self.conns[id as usize] {
                let t = c.core.clock(now);
                c.core.shutdown(t);
                self.service(id, now, now_us);
            }
        }
    }

    /// One turn: submits what is queued (waiting for a completion when
    /// `wait` and something is in flight), reaps every completion, lets
    /// the cores act on them and on the timers due at `now`.
    pub fn turn(&mut self, now: Instant, wait: bool) -> io::Result<()> {
        // Every connection has a receive or a send in flight (or waits for
        // buffers that a send in flight gives back).
        match if wait && !self.is_empty() {
            self.ring.submit_and_wait(1)
        } else {
            self.ring.submit()
        } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        let now_us = self.micros(now);
        // What the cores ask for in answer often completes at once when
        // submitted (a send the socket takes, a receive with bytes already
        // there): reap again in the same turn, a few times, rather than
        // wait for the next wake-up.
        for _ in 0..TURN_ROUNDS {
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if self.completions.is_empty() {
                break;
            }
            for i in 0..self.completions.len() {
                let (ud, res, flags) = self.completions[i];
                self.complete(ud, res, flags, now, now_us);
            }
            self.bufs.publish();
            // Receives that found no buffer: again, now that some came back.
            for id in std::mem::take(&mut self.starved) {
                if let Some(c) = &mut self.conns[id as usize] {
                    c.starved = [false; 2];
                    self.service(id, now, now_us);
                }
            }
            self.ring.submit()?;
        }
        self.fired.clear();
        self.wheel.advance(now_us, &mut self.fired);
        for i in 0..self.fired.len() {
            let id = self.fired[i];
            if let Some(c) = &mut self.conns[id as usize] {
                let t = c.core.clock(now);
                c.core.on_timeout(t, &mut self.keys);
                self.service(id, now, now_us);
            }
        }
        if now_us.saturating_sub(self.trimmed_at) >= 1_000_000 {
            self.trimmed_at = now_us;
            self.bufs.trim(WARM_BUFFERS);
        }
        self.bufs.publish();
        self.ring.submit()?;
        Ok(())
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, now: Instant, now_us: u64) {
        let (id, kind, leg) = decode(ud);
        let Some(c) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        c.ops -= 1;
        let t = c.core.clock(now);
        let l = leg as usize;
        match kind {
            RECV => {
                c.receiving[l] = false;
                if c.cancelled {
                    // The relay is over: whatever came is not relayed.
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        self.bufs.taken();
                        self.bufs.recycle(bid);
                    }
                } else if res > 0 {
                    let Some(bid) = cqueue::buffer_select(flags) else {
                        return;
                    };
                    self.bufs.taken();
                    let buf = self.bufs.buf(bid);
                    let mut carry = [0u8; HEADROOM];
                    let k = c.core.begin_read(leg, &mut carry);
                    let start = HEADROOM - k;
                    buf[start..HEADROOM].copy_from_slice(&carry[..k]);
                    let mut sizes = MessageSizes::default();
                    let end = c.core.on_read(
                        leg,
                        &mut buf[start..HEADROOM + res as usize],
                        t,
                        &mut self.keys,
                        &mut sizes,
                    );
                    if end > 0 {
                        c.out[l] = Some(Out {
                            src: Src::Ring {
                                bid,
                                start: start as u32,
                            },
                            written: 0,
                            end: end as u32,
                            sending: false,
                        });
                    } else {
                        self.bufs.recycle(bid);
                    }
                } else if res == 0 {
                    c.core.on_read_end(leg, None, t);
                } else if res == -libc::ENOBUFS {
                    c.starved[l] = true;
                    self.starved.push(id);
                } else if res != -libc::ECANCELED {
                    let e = io::Error::from_raw_os_error(-res).kind();
                    c.core.on_read_end(leg, Some(e), t);
                }
            }
            SEND => {
                // `leg` is the source of the bytes.
                let dl = leg.other();
                let Some(o) = &mut c.out[l] else { return };
                o.sending = false;
                if res > 0 {
                    o.written += res as u32;
                    if o.written >= o.end {
                        if let Some(Out {
                            src: Src::Ring { bid, .. },
                            ..
                        }) = c.out[l].take()
                        {
                            self.bufs.recycle(bid);
                        }
                        c.core.on_forwarded(leg, t);
                    }
                } else {
                    if let Some(Out {
                        src: Src::Ring { bid, .. },
                        ..
                    }) = c.out[l].take()
                    {
                        self.bufs.recycle(bid);
                    }
                    let e = if res == 0 {
                        io::ErrorKind::WriteZero
                    } else {
                        io::Error::from_raw_os_error(-res).kind()
                    };
                    c.core.on_write_error(dl, e, t);
                }
            }
            SEND_OWN => {
                // `leg` is the destination.
                let Some(own) = c.own[l].take() else { return };
                drop(own);
                if res > 0 {
                    c.core.own_frame_written(leg, res as usize);
                } else {
                    let e = if res == 0 {
                        io::ErrorKind::WriteZero
                    } else {
                        io::Error::from_raw_os_error(-res).kind()
                    };
                    c.core.on_write_error(leg, e, t);
                }
            }
            _ => {}
        }
        self.service(id, now, now_us);
    }

    /// Lets connection `id` act: sends, TCP actions, receives to arm, its
    /// timer; ends it when its core is done.
    fn service(&mut self, id: u32, now: Instant, now_us: u64) {
        let Some(c) = self.conns.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        let t = c.core.clock(now);
        loop {
            for sl in [Leg::Client, Leg::Backend] {
                step(c, id, sl, t, &mut self.ring, &mut self.bufs, &mut self.keys);
            }
            if !c.core.take_repoll() {
                break;
            }
        }
        if c.core.is_done() {
            self.wheel.cancel(id);
            if c.ops > 0 {
                if !c.cancelled {
                    c.cancelled = true;
                    for leg in [Leg::Client, Leg::Backend] {
                        if c.receiving[leg as usize] {
                            let e = opcode::AsyncCancel::new(user_data(id, RECV, leg))
                                .build()
                                .user_data(user_data(id, CANCEL, leg));
                            c.ops += 1;
                            push(&mut self.ring, &e);
                        }
                    }
                }
                return;
            }
            let Some(c) = self.conns[id as usize].take() else {
                return;
            };
            for o in c.out.into_iter().flatten() {
                if let Src::Ring { bid, .. } = o.src {
                    self.bufs.recycle(bid);
                }
            }
            self.ended.push((id, c.core.outcome()));
            self.free.push(id);
            // The sockets close as `c.fds` drops here.
            return;
        }
        match c.core.poll_timeout() {
            Some(at) => {
                let at = at.saturating_duration_since(self.epoch).as_micros() as u64;
                self.wheel.set(id, at.max(now_us));
            }
            None => self.wheel.cancel(id),
        }
    }
}

/// One direction of connection `c`: `sl` is the source leg, the bytes go
/// to the other. The same order as the poll-io driver: what was read is
/// written first, then wsedge's own frames, then the TCP action; then a
/// receive if the core wants one.
fn step(
    c: &mut Conn,
    id: u32,
    sl: Leg,
    now: u64,
    ring: &mut IoUring,
    bufs: &mut BufRing,
    keys: &mut MaskKeyGen,
) {
    let dl = sl.other();
    let (s, d) = (sl as usize, dl as usize);
    if c.core.must_drop(dl) {
        let _ = c.core.take_tcp_action(dl);
        // SAFETY: shutdown on a socket this record owns.
        unsafe { libc::shutdown(c.fds[d].as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(o) = &c.out[s]
            && !o.sending
        {
            if let Some(Out {
                src: Src::Ring { bid, .. },
                ..
            }) = c.out[s].take()
            {
                bufs.recycle(bid);
            }
        }
    }
    // A send to `dl` in flight (data or own frame): wait for it.
    if c.out[s].as_ref().is_some_and(|o| o.sending) || c.own[d].is_some() {
        return;
    }
    // 1. The bytes read from `sl`.
    if let Some(o) = &mut c.out[s] {
        let ptr = match &mut o.src {
            Src::Ring { bid, start } => {
                let start = *start as usize;
                bufs.buf(*bid)[start..].as_ptr()
            }
            Src::Pending(v) => v.as_ptr(),
        };
        // `written < end`, both within the buffer the bytes are in.
        let ptr = ptr.wrapping_add(o.written as usize);
        let e = opcode::Send::new(types::Fd(c.fds[d].as_raw_fd()), ptr, o.end - o.written)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(id, SEND, sl));
        o.sending = true;
        c.ops += 1;
        push(ring, &e);
        return;
    }
    // 2. wsedge's own frames on `dl`.
    if c.core.owes_frame(dl)
        && let Some(bytes) = c.core.own_frame(dl, now, keys)
    {
        let copy: Box<[u8]> = bytes.into();
        let e = opcode::Send::new(
            types::Fd(c.fds[d].as_raw_fd()),
            copy.as_ptr(),
            copy.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(id, SEND_OWN, dl));
        c.own[d] = Some(copy);
        c.ops += 1;
        push(ring, &e);
        return;
    }
    // 3. The TCP action on `dl`.
    let how = match c.core.take_tcp_action(dl) {
        Some(TcpAction::ShutdownWrite) => libc::SHUT_WR,
        Some(TcpAction::Drop) => libc::SHUT_RDWR,
        None => -1,
    };
    if how >= 0 {
        // SAFETY: shutdown on a socket this record owns.
        unsafe { libc::shutdown(c.fds[d].as_raw_fd(), how) };
    }
    // 4. Receive from `sl`, if the core wants it.
    if !c.core.wants_read(sl) || c.receiving[s] || c.starved[s] || c.cancelled {
        return;
    }
    if let Some(p) = c.pending.as_mut().map(|p| std::mem::take(&mut p[s]))
        && !p.is_empty()
    {
        if c.pending
            .as_ref()
            .is_some_and(|p| p.iter().all(Vec::is_empty))
        {
            c.pending = None;
        }
        // The first bytes: no carry before them.
        let mut p = p;
        let mut sizes = MessageSizes::default();
        let end = c.core.on_read(sl, &mut p, now, keys, &mut sizes);
        if end > 0 {
            c.out[s] = Some(Out {
                src: Src::Pending(p),
                written: 0,
                end: end as u32,
                sending: false,
            });
        }
        // Come back round for the send.
        return step(c, id, sl, now, ring, bufs, keys);
    }
    let e = opcode::Recv::new(
        types::Fd(c.fds[s].as_raw_fd()),
        std::ptr::null_mut(),
        bufs.capacity() as u32,
    )
    .buf_group(bufs.bgid())
    .build()
    .flags(squeue::Flags::BUFFER_SELECT)
    .user_data(user_data(id, RECV, sl));
    c.receiving[s] = true;
    c.ops += 1;
    push(ring, &e);
}

/// Queues `e`, submitting first when the queue is full.
fn push(ring: &mut IoUring, e: &squeue::Entry) {
    loop {
        // SAFETY: every buffer and socket an entry names stays valid until
        // its completion is reaped: ring buffers are recycled, own frames
        // and pending bytes freed, sockets closed, only after it.
        if unsafe { ring.submission().push(e) }.is_ok() {
            return;
        }
        let _ = ring.submit();
    }
}

impl Drop for RelayRing {
    fn drop(&mut self) {
        let _ = self.bufs.unregister(&self.ring.submitter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::RelayConfig;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    fn cfg() -> RelayConfig {
        RelayConfig {
            frames: true,
            max_message_size: 1 << 24,
            validate_utf8: true,
            compressed: false,
            close_timeout: Duration::from_secs(5),
            idle_timeout: Duration::ZERO,
            ping_interval: Duration::ZERO,
            pong_timeout: Duration::from_secs(10),
        }
    }

    /// A loopback pair: (the end the relay owns, the peer's end).
    fn pair() -> (OwnedFd, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        peer.set_nonblocking(true).unwrap();
        (ours.into(), peer)
    }

    struct Setup {
        ring: RelayRing,
        client: TcpStream,
        backend: TcpStream,
        id: u32,
    }

    fn setup(cfg: &RelayConfig, from_client: Vec<u8>, buffers: u16, size: u32) -> Option<Setup> {
        let mut ring = match RelayRing::new(64, buffers, size, MaskKeyGen::from_seed([3; 32])) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("io_uring unavailable ({e}): skipped");
                return None;
            }
        };
        let (c, client) = pair();
        let (b, backend) = pair();
        let now = Instant::now();
        let id = ring.add(c, b, Core::new(cfg, now), from_client, Vec::new(), now);
        Some(Setup {
            ring,
            client,
            backend,
            id,
        })
    }

    impl Setup {
        fn turn(&mut self) {
            self.ring.turn(Instant::now(), false).unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }

        /// Reads `n` bytes from a peer, turning the ring meanwhile.
        fn read(&mut self, leg: Leg, n: usize) -> Vec<u8> {
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < n {
                assert!(Instant::now() < deadline, "read {got:?} of {n}");
                let peer = match leg {
                    Leg::Client => &mut self.client,
                    Leg::Backend => &mut self.backend,
                };
                let mut buf = vec![0; n - got.len()];
                match peer.read(&mut buf) {
                    Ok(0) => panic!("end of stream after {got:?}"),
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.turn(),
                    Err(e) => panic!("{e}"),
                }
            }
            got
        }

        fn write(&mut self, leg: Leg, bytes: &[u8]) {
            let peer = match leg {
                Leg::Client => &mut self.client,
                Leg::Backend => &mut self.backend,
            };
            peer.write_all(bytes).unwrap();
        }

        fn until_ended(&mut self) -> Outcome {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                self.turn();
                if let Some((id, o)) = self.ring.take_ended().pop() {
                    assert_eq!(id, self.id);
                    return o;
                }
                assert!(Instant::now() < deadline, "the relay did not end");
            }
        }
    }

    /// A client frame as a browser sends it: masked with `key`.
    fn masked(op: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | op, 0x80 | payload.len() as u8];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    /// Reads one masked frame of `len` payload bytes from the backend's
    /// side and unmasks it: (first byte, payload).
    fn masked_frame(s: &mut Setup, len: usize) -> (u8, Vec<u8>) {
        let f = s.read(Leg::Backend, 6 + len);
        assert_eq!(f[1], 0x80 | len as u8, "masked, {len} bytes");
        let key = [f[2], f[3], f[4], f[5]];
        let payload = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        (f[0], payload)
    }

    #[test]
    fn frames_both_ways_and_the_close_handshake() {
        let Some(mut s) = setup(&cfg(), Vec::new(), 8, 4096) else {
            return;
        };
        s.write(Leg::Client, &masked(1, b"hello", [1, 2, 3, 4]));
        assert_eq!(masked_frame(&mut s, 5), (0x81, b"hello".to_vec()));
        s.write(Leg::Backend, b"\x81\x05world");
        assert_eq!(s.read(Leg::Client, 7), b"\x81\x05world");
        // The client closes; the backend answers.
        s.write(Leg::Client, &masked(8, &[0x03, 0xe8], [9, 9, 9, 9]));
        assert_eq!(masked_frame(&mut s, 2), (0x88, vec![0x03, 0xe8]));
        s.write(Leg::Backend, b"\x88\x02\x03\xe8");
        assert_eq!(s.read(Leg::Client, 4), b"\x88\x02\x03\xe8");
        let o = s.until_ended();
        assert_eq!((o.from_client, o.from_backend), (19, 11));
        assert_eq!(s.ring.len(), 0);
        assert_eq!(s.ring.buffers_free(), 8, "every buffer back");
        // The sockets were closed: both peers see the end of the stream.
        for peer in [&mut s.client, &mut s.backend] {
            peer.set_nonblocking(false).unwrap();
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(peer.read(&mut [0; 8]).unwrap(), 0);
        }
    }

    /// A frame header cut between two receives: the carried start goes in
    /// the next buffer's headroom, and the walk sees it whole.
    #[test]
    fn a_header_split_across_receives() {
        let Some(mut s) = setup(&cfg(), Vec::new(), 4, 4096) else {
            return;
        };
        let f = masked(2, b"split frame", [5, 6, 7, 8]);
        for part in [&f[..1], &f[1..4], &f[4..]] {
            s.write(Leg::Client, part);
            for _ in 0..20 {
                s.turn();
            }
        }
        assert_eq!(masked_frame(&mut s, 11), (0x82, b"split frame".to_vec()));
    }

    /// Bytes that came with the client's handshake head are relayed first.
    #[test]
    fn bytes_after_the_handshake_head_go_first() {
        let Some(mut s) = setup(&cfg(), masked(1, b"early", [1, 1, 1, 1]), 4, 4096) else {
            return;
        };
        s.write(Leg::Client, &masked(1, b"later", [2, 2, 2, 2]));
        assert_eq!(masked_frame(&mut s, 5), (0x81, b"early".to_vec()));
        assert_eq!(masked_frame(&mut s, 5), (0x81, b"later".to_vec()));
    }

    /// A backend that reads nothing: however much the client sends, the
    /// relay holds one buffer for that direction, never more.
    #[test]
    fn a_slow_reader_holds_one_buffer() {
        let Some(mut s) = setup(&cfg(), Vec::new(), 16, 16 * 1024) else {
            return;
        };
        let frame = {
            let payload = vec![b'x'; 60_000];
            let key = [1, 2, 3, 4];
            let mut f = vec![0x82, 0x80 | 126, (60_000u16 >> 8) as u8, 60_000u16 as u8];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            f
        };
        let mut sent = 0usize;
        let mut most = 0;
        for _ in 0..400 {
            match s.client.write(&frame) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            s.turn();
            most = most.max(16 - s.ring.buffers_free());
        }
        assert!(sent > 1 << 20, "the client sent {sent} bytes");
        assert_eq!(most, 1, "buffers held at most");
    }

    /// The idle timeout fires from the wheel: both legs get 1001.
    #[test]
    fn idle_timeout_from_the_wheel() {
        let cfg = RelayConfig {
            idle_timeout: Duration::from_millis(50),
            ..cfg()
        };
        let Some(mut s) = setup(&cfg, Vec::new(), 4, 4096) else {
            return;
        };
        let started = Instant::now();
        let close = s.read(Leg::Client, 4);
        assert_eq!(&close[..4], b"\x88\x0e\x03\xe9", "1001 to the client");
        assert!(started.elapsed() >= Duration::from_millis(50));
        let (b0, payload) = masked_frame(&mut s, 14);
        assert_eq!((b0, &payload[..2]), (0x88, &[0x03, 0xe9][..]));
    }
}
