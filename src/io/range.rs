//! [`RangeRead`]: random access to a source's bytes, for decoders whose
//! metadata lies ahead of the stream.

use std::io;

/// Random access to the source's raw bytes (before unwrapping).
pub trait RangeRead: Send {
    /// Fills `buf` exactly from `offset`, or fails (`UnexpectedEof` past the end).
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<R: RangeRead + ?Sized> RangeRead for Box<R> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buf)
    }
}
