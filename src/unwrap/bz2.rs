//! bzip2 decoding of every stream (`pbzip2` writes one stream per block
//! group, and `cat a.bz2 b.bz2` is two), with errors that say they come
//! from bzip2.
//!
//! The `bzip2` crate's multi-stream decoder reports input that ends inside
//! a stream as `UnexpectedEof` and checks every block's CRC and each
//! stream's combined CRC, so a truncated or corrupt stream cannot end
//! quietly. Its default backend, `libbz2-rs-sys`, is a pure-Rust port of
//! libbzip2: no C library to build or link.

use std::io::{self, BufRead, Read};

use bzip2::bufread::MultiBzDecoder;

pub(super) struct Bz2Reader<R: BufRead> {
    inner: MultiBzDecoder<R>,
}

impl<R: BufRead> Bz2Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Bz2Reader {
            inner: MultiBzDecoder::new(inner),
        }
    }
}

impl<R: BufRead> Read for Bz2Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.inner.read(out).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bzip2: the compressed stream is truncated",
                )
            } else {
                // The crate reports corrupt data as InvalidInput; it is the
                // data that is invalid.
                let kind = match e.kind() {
                    io::ErrorKind::InvalidInput => io::ErrorKind::InvalidData,
                    k => k,
                };
                io::Error::new(kind, format!("bzip2: corrupt data ({e})"))
            }
        })
    }
}
