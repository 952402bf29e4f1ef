//! The built-in echo upstream (`builtin:echo`): a small RFC 6455 server on a
//! loopback port of its own, so `wsedge` with no arguments has something to
//! proxy to. It echoes text and binary frames as they come (fragments
//! included), answers pings with pongs and close with close. It walks frames
//! with the relay's own [`Walker`] (no copy of the frame logic of its own),
//! so it also refuses what the relay refuses (1002, 1007).

use std::rc::Rc;

use monoio::net::{TcpListener, TcpStream};

use std::future::poll_fn;
use std::task::Poll;

use crate::pool::Pool;
use crate::proto::frame::{Peer, SmallFrame};
use crate::proto::handshake::{Limits, build_switching_response, parse_request};
use crate::proto::mask::MaskKeyGen;
use crate::relay::walk::{Event, Output, WalkConfig, WalkOpts, Walker};
use crate::transport::{Transport, into_poll, read, write_all};

/// Accepts and serves echo connections until the runtime stops.
pub async fn serve(listener: TcpListener, pool: Rc<Pool>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        monoio::spawn(connection(stream, Rc::clone(&pool)));
    }
}

async fn connection(s: TcpStream, pool: Rc<Pool>) {
    let Ok(mut s) = into_poll(s) else { return };
    // Handshake.
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let (accept, rest) = loop {
        let n = match read(&mut s, &mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        let mut h = [httparse::EMPTY_HEADER; 64];
        match parse_request(&head, &mut h, &Limits::default()) {
            Ok(Some((req, len))) => break (req.accept_key(), head[len..].to_vec()),
            Ok(None) => continue,
            Err(rej) => {
                let _ = write_all(&mut s, &rej.response()).await;
                return;
            }
        }
    };
    if write_all(&mut s, &build_switching_response(&accept, None, None))
        .await
        .is_err()
    {
        return;
    }
    // Frames: the relay's own walker, in echo mode: every frame is checked
    // (sequencing, UTF-8, close payloads), unmasked in place with its key
    // stripped from the header, pings turned into pongs, and the result sent
    // back out of the buffer it was read into.
    let mut walker = Walker::new(&WalkConfig {
        source: Peer::Client,
        max_message_size: i64::MAX as u64,
        validate_utf8: true,
        compressed: false,
        output: Output::Echo,
    });
    // Echo mode never draws a key; the generator only fills the signature.
    let mut keys = MaskKeyGen::from_seed([0; 32]);
    let mut pending = rest;
    let opts = WalkOpts {
        forward: true,
        forward_close: true,
        own_ping: None,
    };
    loop {
        // A buffer only for the span of one read and its write: a waiting
        // connection holds none.
        let (mut buf, len) = if pending.is_empty() {
            let read = poll_fn(|cx| {
                let mut buf = pool.take();
                let carried = walker.put_carry(&mut buf);
                match s.poll_read(cx, &mut buf[carried..]) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(r) => Poll::Ready(r.map(|n| (n, buf, carried))),
                }
            })
            .await;
            match read {
                Ok((0, ..)) | Err(_) => return,
                Ok((n, buf, carried)) => (buf, carried + n),
            }
        } else {
            let mut buf = pool.take();
            let carried = walker.put_carry(&mut buf);
            let n = pending.len().min(buf.len() - carried);
            buf[carried..carried + n].copy_from_slice(&pending[..n]);
            pending.drain(..n);
            (buf, carried + n)
        };
        let walk = walker.walk(&mut buf[..len], opts, &mut keys);
        if write_all(&mut s, &buf[..walk.out_end]).await.is_err() {
            return;
        }
        match walk.event {
            None => {}
            // The close was echoed with the rest: hang up.
            Some(Event::Close { .. }) => {
                let _ = s.shutdown_write();
                return;
            }
            Some(Event::Error(e)) => {
                if !walk.open {
                    let close = SmallFrame::close(e.close_code(), e.reason(), None);
                    let _ = write_all(&mut s, close.as_bytes()).await;
                }
                let _ = s.shutdown_write();
                return;
            }
        }
    }
}
