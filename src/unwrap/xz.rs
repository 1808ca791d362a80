//! xz decoding with a memory limit and a strict end: liblzma's own `Read`
//! adapter returns a clean EOF on truncated input, so this one drives the
//! stream itself and fails unless liblzma reports the end of the stream.

use std::io::{self, BufRead, Read};

use liblzma::stream::{Action, Error as LzmaError, Status, Stream, CONCATENATED};

/// Decodes an xz stream (several concatenated streams allowed, as `xz`
/// writes with `-T` or when files are `cat`ed).
pub(super) struct XzReader<R> {
    inner: R,
    stream: Stream,
    memlimit: u64,
    done: bool,
}

impl<R: BufRead> XzReader<R> {
    pub(super) fn new(inner: R, memlimit: u64) -> io::Result<Self> {
        let stream = Stream::new_stream_decoder(memlimit, CONCATENATED)
            .map_err(|e| io::Error::other(format!("cannot start the xz decoder: {e}")))?;
        Ok(XzReader {
            inner,
            stream,
            memlimit,
            done: false,
        })
    }

    fn error(&self, e: LzmaError) -> io::Error {
        match e {
            LzmaError::MemLimit => io::Error::other(format!(
                "xz: the stream needs more than the {} MiB decoder memory limit",
                self.memlimit >> 20
            )),
            LzmaError::Data | LzmaError::Format => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("xz: corrupt data ({e})"),
            ),
            other => io::Error::other(format!("xz: {other}")),
        }
    }
}

impl<R: BufRead> Read for XzReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.done {
                return Ok(0);
            }
            let input = self.inner.fill_buf()?;
            let eof = input.is_empty();
            let action = if eof { Action::Finish } else { Action::Run };
            let in_before = self.stream.total_in();
            let out_before = self.stream.total_out();
            let status = self.stream.process(input, out, action);
            let consumed = self.stream.total_in().saturating_sub(in_before);
            let produced = self.stream.total_out().saturating_sub(out_before);
            self.inner
                .consume(usize::try_from(consumed).unwrap_or(usize::MAX));
            let status = status.map_err(|e| self.error(e))?;
            if status == Status::StreamEnd {
                self.done = true;
            }
            let produced = usize::try_from(produced).unwrap_or(0);
            if produced > 0 {
                return Ok(produced);
            }
            if eof && !self.done {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "xz: the compressed stream is truncated",
                ));
            }
        }
    }
}
