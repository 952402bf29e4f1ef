//! Per-worker buffer pool.
//!
//! Buffers are fixed-size boxed slices. A relay direction takes one when its
//! source is readable and gives it back when the bytes have been written on,
//! so an idle connection holds none. The pool keeps at most `max_idle`
//! buffers; the rest are freed when returned.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

/// A worker's pool. Not `Send`: it lives and dies on its worker thread.
#[derive(Debug)]
pub struct Pool {
    size: usize,
    max_idle: usize,
    free: RefCell<Vec<Box<[u8]>>>,
}

impl Pool {
    /// A pool of `size`-byte buffers keeping at most `max_idle` spare ones.
    pub fn new(size: usize, max_idle: usize) -> Rc<Pool> {
        Rc::new(Pool {
            size,
            max_idle,
            free: RefCell::new(Vec::new()),
        })
    }

    /// The size of every buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// Takes a buffer (allocating one if none is spare).
    #[inline]
    pub fn take(self: &Rc<Self>) -> PoolBuf {
        let buf = self
            .free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        PoolBuf {
            buf: Some(buf),
            pool: Rc::clone(self),
        }
    }

    /// Spare buffers held right now.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

/// A buffer on loan from a [`Pool`]; goes back to it when dropped.
#[derive(Debug)]
pub struct PoolBuf {
    buf: Option<Box<[u8]>>,
    pool: Rc<Pool>,
}

impl Deref for PoolBuf {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl DerefMut for PoolBuf {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.free.borrow_mut();
            if free.len() < self.pool.max_idle {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_return_and_are_reused_up_to_max_idle() {
        let pool = Pool::new(1024, 2);
        let a = pool.take();
        let b = pool.take();
        let c = pool.take();
        assert_eq!(a.len(), 1024);
        assert_eq!(pool.idle(), 0);
        drop((a, b, c));
        assert_eq!(pool.idle(), 2);
        let _d = pool.take();
        assert_eq!(pool.idle(), 1);
    }
}
