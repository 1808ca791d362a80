//! gzip decoding of every member (`cat a.gz b.gz` and `pigz` output are
//! several members), with errors that say they come from gzip.
//!
//! flate2 reports a member cut short as `UnexpectedEof` and checks each
//! member's CRC32 and length trailer, so a truncated or corrupt stream
//! cannot end quietly.

use std::io::{self, BufRead, Read};

use flate2::bufread::MultiGzDecoder;

pub(super) struct GzReader<R: BufRead> {
    inner: MultiGzDecoder<R>,
}

impl<R: BufRead> GzReader<R> {
    pub(super) fn new(inner: R) -> Self {
        GzReader {
            inner: MultiGzDecoder::new(inner),
        }
    }
}

impl<R: BufRead> Read for GzReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.inner.read(out).map_err(|e| {
            if super::from_below(&e) {
                e
            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "gzip: the compressed stream is truncated",
                )
            } else {
                io::Error::new(e.kind(), format!("gzip: {e}"))
            }
        })
    }
}
