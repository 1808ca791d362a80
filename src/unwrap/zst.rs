//! zstd decoding with a bounded window. The zstd crate's reader already
//! fails on a truncated frame ("incomplete frame"); this adapter names the
//! window limit when a frame asks for more.

use std::io::{self, BufRead, Read};

/// Decodes one or more zstd frames.
pub(super) struct ZstdReader<R: BufRead> {
    inner: zstd::stream::read::Decoder<'static, R>,
    window_log_max: u32,
}

impl<R: BufRead> ZstdReader<R> {
    pub(super) fn new(inner: R, window_log_max: u32) -> io::Result<Self> {
        let mut decoder = zstd::stream::read::Decoder::with_buffer(inner)?;
        decoder.window_log_max(window_log_max)?;
        Ok(ZstdReader {
            inner: decoder,
            window_log_max,
        })
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.inner.read(out).map_err(|e| {
            let text = e.to_string();
            if super::from_below(&e) {
                e
            } else if text.contains("too much memory") || text.contains("window") {
                io::Error::other(format!(
                    "zstd: the frame needs a window larger than the {} MiB limit (window log {})",
                    (1u64 << self.window_log_max) >> 20,
                    self.window_log_max
                ))
            } else if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "zstd: the compressed stream is truncated",
                )
            } else {
                io::Error::new(e.kind(), format!("zstd: {text}"))
            }
        })
    }
}
