//! [`PeekReader`]: look at the first bytes of a stream without consuming them.

use std::io::{self, BufRead, Read};

/// A reader that can show upcoming bytes and still deliver them.
///
/// Only the peeked bytes are buffered; once they are read out, reads go
/// straight to the inner reader, so large reads stay zero-copy.
pub(crate) struct PeekReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> PeekReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        PeekReader {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Returns up to `n` upcoming bytes (fewer only at end of stream),
    /// reading more from the inner reader as needed.
    pub(crate) fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        while self.buf.len() < n {
            let have = self.buf.len();
            self.buf.resize(n, 0);
            let got = match self.inner.read(&mut self.buf[have..]) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            };
            self.buf.truncate(have.saturating_add(got));
            if got == 0 && self.buf.len() == have {
                break;
            }
        }
        Ok(&self.buf[..n.min(self.buf.len())])
    }
}

impl<R: Read> Read for PeekReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        if pending.is_empty() {
            return self.inner.read(out);
        }
        let n = pending.len().min(out.len());
        out[..n].copy_from_slice(&pending[..n]);
        self.pos = self.pos.saturating_add(n);
        if self.pos >= self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
        Ok(n)
    }
}

/// Peeked bytes first, then the inner buffer itself (no copy).
impl<R: BufRead> BufRead for PeekReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos < self.buf.len() {
            return Ok(self.buf.get(self.pos..).unwrap_or_default());
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if self.pos < self.buf.len() {
            self.pos = self.pos.saturating_add(amt).min(self.buf.len());
            if self.pos >= self.buf.len() {
                self.buf = Vec::new();
                self.pos = 0;
            }
        } else {
            self.inner.consume(amt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most 3 bytes per read, like a slow socket.
    struct Dribble<'a>(&'a [u8]);

    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(3).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn peek_does_not_consume() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut r = PeekReader::new(Dribble(&data));
        assert_eq!(r.peek(10).expect("peek"), &data[..10]);
        assert_eq!(r.peek(4).expect("peek"), &data[..4]);
        let mut first = [0u8; 2];
        r.read_exact(&mut first).expect("read");
        assert_eq!(first, [0, 1]);
        assert_eq!(r.peek(5).expect("peek"), &data[2..7]);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("read");
        assert_eq!(rest, &data[2..]);
    }

    #[test]
    fn buffered_reads_see_the_peeked_bytes_then_the_rest() {
        let data: Vec<u8> = (0..50u8).collect();
        let mut r = PeekReader::new(io::BufReader::with_capacity(8, &data[..]));
        assert_eq!(r.peek(5).expect("peek"), &data[..5]);
        let mut seen = Vec::new();
        loop {
            let buf = r.fill_buf().expect("fill");
            if buf.is_empty() {
                break;
            }
            // Consume in odd steps across the peeked/inner boundary.
            let n = buf.len().min(3);
            seen.extend_from_slice(&buf[..n]);
            r.consume(n);
        }
        assert_eq!(seen, data);
    }

    #[test]
    fn peek_past_end_returns_what_there_is() {
        let mut r = PeekReader::new(&b"abc"[..]);
        assert_eq!(r.peek(10).expect("peek"), b"abc");
        let mut all = Vec::new();
        r.read_to_end(&mut all).expect("read");
        assert_eq!(all, b"abc");
        assert_eq!(r.peek(10).expect("peek"), b"");
    }
}
