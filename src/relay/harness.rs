//! An in-memory driver for the relay core: both legs as byte pipes with
//! chosen chunking and write room, and a fake clock (quinn's `Pair`,
//! pingora's mock IO). It follows the same order of operations as the
//! socket driver ([`super::driver`]), so a test or fuzz run here exercises
//! the real core deterministically: no sockets, no sleeps, no threads.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::proto::close::CloseCode;
use crate::proto::mask::MaskKeyGen;

use super::closing::TcpAction;
use super::walk::MessageSizes;
use super::{Core, Ending, Leg, Outcome, RelayConfig};

/// One leg as the core sees it.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Bytes the peer has sent that wsedge has not read yet.
    pub incoming: VecDeque<u8>,
    /// After `incoming` is drained, the peer's stream ends (EOF), or fails
    /// with this error.
    pub end: Option<Option<io::ErrorKind>>,
    /// Sizes of the next reads (each read returns at most this many bytes);
    /// empty: as much as the buffer takes.
    pub read_sizes: VecDeque<usize>,
    /// Bytes the peer will accept before wsedge's writes block; `None`:
    /// unlimited.
    pub write_room: Option<usize>,
    /// Writes to this leg fail with this error.
    pub write_error: Option<io::ErrorKind>,
    /// Everything wsedge wrote to this leg.
    pub written: Vec<u8>,
    /// TCP actions wsedge took on this leg, in order.
    pub tcp: Vec<TcpAction>,
}

/// A core between two in-memory legs.
#[derive(Debug)]
pub struct Pair {
    /// The core under test.
    pub core: Core,
    /// Masking keys (seeded: runs are reproducible).
    pub keys: MaskKeyGen,
    /// The fake clock's current time.
    pub now: Instant,
    /// The client (`[0]`) and backend (`[1]`) legs.
    pub legs: [Pipe; 2],
    /// Size of each read buffer (like the pool's buffers).
    pub buffer_size: usize,
    /// Data messages read from each leg, by size.
    pub sizes: [MessageSizes; 2],
    in_flight: [Option<(Vec<u8>, usize)>; 2],
    outcome: Option<Outcome>,
}

impl Pair {
    /// A fresh relay with `cfg`, buffers of `buffer_size` bytes.
    pub fn new(cfg: &RelayConfig, buffer_size: usize) -> Pair {
        let now = Instant::now();
        Pair {
            core: Core::new(cfg, now),
            keys: MaskKeyGen::from_seed([7; 32]),
            now,
            legs: [Pipe::default(), Pipe::default()],
            buffer_size: buffer_size.max(64),
            sizes: Default::default(),
            in_flight: [None, None],
            outcome: None,
        }
    }

    /// A leg.
    pub fn leg(&mut self, leg: Leg) -> &mut Pipe {
        &mut self.legs[leg as usize]
    }

    /// The peer on `leg` sends `bytes`.
    pub fn send(&mut self, leg: Leg, bytes: &[u8]) {
        self.leg(leg).incoming.extend(bytes);
    }

    /// The peer on `leg` ends its stream (EOF, or an error) after what it sent.
    pub fn end(&mut self, leg: Leg, error: Option<io::ErrorKind>) {
        self.leg(leg).end = Some(error);
    }

    /// Takes what wsedge has written to `leg` so far.
    pub fn take_written(&mut self, leg: Leg) -> Vec<u8> {
        std::mem::take(&mut self.leg(leg).written)
    }

    /// The relay ended, with this outcome.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// Moves the fake clock forward by `d`, firing every deadline that falls
    /// inside in order, and driving the I/O after each.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            self.run();
            match self.core.poll_timeout() {
                Some(at) if at <= target && self.outcome.is_none() => {
                    self.now = self.now.max(at);
                    let now = self.core.clock(self.now);
                    self.core.on_timeout(now, &mut self.keys);
                }
                _ => break,
            }
        }
        self.now = target;
        self.run();
    }

    /// wsedge closes both legs (as shutdown, an operator or expiry would).
    pub fn close(&mut self, why: Ending, code: CloseCode, reason: &'static str) {
        let now = self.core.clock(self.now);
        self.core.close(why, code, reason, now);
        self.run();
    }

    /// Drives both directions until nothing more can happen without the
    /// peers or the clock.
    pub fn run(&mut self) {
        if self.outcome.is_some() {
            return;
        }
        loop {
            let mut progress = false;
            for src in [Leg::Client, Leg::Backend] {
                progress |= self.step(src);
            }
            if self.core.is_done() {
                self.outcome = Some(self.core.outcome());
                return;
            }
            let repoll = self.core.take_repoll();
            if !progress && !repoll {
                return;
            }
        }
    }

    /// One pass over one direction, in the socket driver's order. Whether
    /// anything happened.
    fn step(&mut self, sl: Leg) -> bool {
        let dl = sl.other();
        let (s, d) = (sl as usize, dl as usize);
        let now = self.core.clock(self.now);
        let mut progress = false;
        if self.core.must_drop(dl) {
            self.in_flight[s] = None;
            if let Some(a) = self.core.take_tcp_action(dl) {
                self.legs[d].tcp.push(a);
            }
            progress = true;
        }
        // 1. The write in flight.
        if let Some((buf, written)) = &mut self.in_flight[s] {
            if let Some(kind) = self.legs[d].write_error {
                self.in_flight[s] = None;
                self.core.on_write_error(dl, kind, now);
                return true;
            }
            let n = room(&self.legs[d], buf.len() - *written);
            if n > 0 {
                self.legs[d]
                    .written
                    .extend_from_slice(&buf[*written..*written + n]);
                take_room(&mut self.legs[d], n);
                *written += n;
                progress = true;
            }
            if *written < buf.len() {
                return progress;
            }
            self.in_flight[s] = None;
            self.core.on_forwarded(sl, now);
        }
        // 2. Own frames.
        while let Some(bytes) = self.core.own_frame(dl, now, &mut self.keys) {
            if let Some(kind) = self.legs[d].write_error {
                self.core.on_write_error(dl, kind, now);
                return true;
            }
            let n = room(&self.legs[d], bytes.len());
            if n == 0 {
                return progress;
            }
            self.legs[d].written.extend_from_slice(&bytes[..n]);
            take_room(&mut self.legs[d], n);
            self.core.own_frame_written(dl, n);
            progress = true;
        }
        // 3. TCP actions.
        if let Some(a) = self.core.take_tcp_action(dl) {
            self.legs[d].tcp.push(a);
            progress = true;
        }
        // 4. One read.
        if !self.core.wants_read(sl) {
            return progress;
        }
        let mut buf = vec![0u8; self.buffer_size];
        let carried = self.core.begin_read(sl, &mut buf);
        let leg = &mut self.legs[s];
        if leg.incoming.is_empty() {
            if let Some(end) = leg.end {
                self.core.on_read_end(sl, end, now);
                return true;
            }
            return progress;
        }
        let mut n = leg.incoming.len().min(buf.len() - carried);
        if let Some(size) = leg.read_sizes.pop_front() {
            n = n.min(size.max(1));
        }
        for (i, b) in leg.incoming.drain(..n).enumerate() {
            buf[carried + i] = b;
        }
        buf.truncate(carried + n);
        let end = self
            .core
            .on_read(sl, &mut buf, now, &mut self.keys, &mut self.sizes[s]);
        if end > 0 {
            buf.truncate(end);
            self.in_flight[s] = Some((buf, 0));
        }
        true
    }
}

fn room(p: &Pipe, want: usize) -> usize {
    p.write_room.map_or(want, |r| r.min(want))
}

fn take_room(p: &mut Pipe, n: usize) {
    if let Some(r) = &mut p.write_room {
        *r -= n;
    }
}
