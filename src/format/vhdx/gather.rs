//! [`Gather`]: collects one host range of metadata from whatever passes,
//! the stream or a range read, in order, once.
//!
//! Metadata bytes can come by twice (read out of order first, then again in
//! the stream or in the driver's replay of what it held); a gather takes
//! only the bytes it does not have yet, so the second pass is ignored.

use std::ops::Range;

/// One host range being collected.
#[derive(Debug)]
pub(crate) struct Gather {
    start: u64,
    want: usize,
    buf: Vec<u8>,
}

impl Gather {
    /// Collects `want` bytes from host offset `start`.
    pub(crate) fn new(start: u64, want: usize) -> Gather {
        Gather {
            start,
            want,
            buf: Vec::new(),
        }
    }

    /// The host offset of the first byte.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Host offset of the next byte needed.
    pub(crate) fn next(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// The bytes collected so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Whether every byte is in.
    pub(crate) fn done(&self) -> bool {
        self.buf.len() >= self.want
    }

    /// Shrinks the range to `want` bytes (once a table's length is known).
    pub(crate) fn shrink(&mut self, want: usize) {
        self.want = self.want.min(want);
        self.buf.truncate(self.want);
    }

    /// The host range still missing, if any.
    pub(crate) fn missing(&self) -> Option<Range<u64>> {
        (!self.done()).then(|| self.next()..self.start + self.want as u64)
    }

    /// Takes the part of `bytes` (at host offset `host`) that continues what
    /// is collected; anything else is ignored.
    pub(crate) fn offer(&mut self, host: u64, bytes: &[u8]) {
        if self.done() {
            return;
        }
        let next = self.next();
        let end = host.saturating_add(bytes.len() as u64);
        if host > next || end <= next {
            return;
        }
        let skip = (next - host) as usize;
        let take = (bytes.len() - skip).min(self.want - self.buf.len());
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.want);
        }
        self.buf
            .extend_from_slice(bytes.get(skip..skip + take).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_each_byte_once_in_order() {
        let mut g = Gather::new(100, 10);
        g.offer(90, &[1; 5]); // before
        g.offer(102, &[9; 4]); // a gap: ignored
        assert_eq!(g.missing(), Some(100..110));
        g.offer(95, &(0..10).collect::<Vec<u8>>()); // 100..105 are 5..10
        assert_eq!(g.bytes(), &[5, 6, 7, 8, 9]);
        g.offer(100, &[0; 5]); // again: ignored
        g.offer(105, &[1, 2, 3, 4, 5, 6, 7]);
        assert!(g.done());
        assert_eq!(g.bytes(), &[5, 6, 7, 8, 9, 1, 2, 3, 4, 5]);
        assert_eq!(g.missing(), None);
        let mut s = Gather::new(0, 64);
        s.offer(0, &[7; 40]);
        s.shrink(32);
        assert!(s.done());
        assert_eq!(s.bytes().len(), 32);
    }
}
