//! [`CountTap`]: counts the bytes consumed, for progress.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use crate::progress::Counter;

/// A `BufRead` over a `BufRead` that adds every consumed byte to a
/// [`Counter`]. Bytes are counted, never copied.
pub(crate) struct CountTap<R> {
    inner: R,
    counter: Arc<Counter>,
}

impl<R> CountTap<R> {
    /// Counts what is consumed from `inner` into `counter`.
    pub(crate) fn new(inner: R, counter: Arc<Counter>) -> Self {
        CountTap { inner, counter }
    }
}

impl<R: BufRead> BufRead for CountTap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.counter.add(amt as u64);
        self.inner.consume(amt);
    }
}

impl<R: BufRead> Read for CountTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::read_via_buf(self, buf)
    }
}
