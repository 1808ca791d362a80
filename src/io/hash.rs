//! [`HashTap`]: feeds every byte that passes into a shared digest, once.

use std::io::{self, BufRead, Read};
use std::sync::{Arc, Mutex};

use digest::DynDigest;

/// A digest shared between the tap and whoever verifies it at the end.
pub(crate) type SharedDigest = Arc<Mutex<Box<dyn DynDigest + Send>>>;

/// A `BufRead` over a `BufRead` that hashes the bytes it shows, in place.
///
/// Bytes are hashed when first shown by `fill_buf` (behind a watermark), so
/// a consumer that looks at the same buffer twice, or consumes it in pieces,
/// still gets every byte hashed exactly once, in order.
pub struct HashTap<R> {
    inner: R,
    state: SharedDigest,
    /// Bytes of the inner buffer already hashed.
    hashed: usize,
}

impl<R> HashTap<R> {
    /// Hashes what passes through `inner` into `state`.
    pub fn new(inner: R, state: SharedDigest) -> HashTap<R> {
        HashTap {
            inner,
            state,
            hashed: 0,
        }
    }
}

impl<R: BufRead> BufRead for HashTap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buf = self.inner.fill_buf()?;
        if let Some(new) = buf.get(self.hashed..).filter(|n| !n.is_empty()) {
            match self.state.lock() {
                Ok(mut h) => h.update(new),
                Err(poisoned) => poisoned.into_inner().update(new),
            }
            self.hashed = buf.len();
        }
        Ok(buf)
    }

    fn consume(&mut self, amt: usize) {
        self.hashed = self.hashed.saturating_sub(amt);
        self.inner.consume(amt);
    }
}

impl<R: BufRead> Read for HashTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::read_via_buf(self, buf)
    }
}
