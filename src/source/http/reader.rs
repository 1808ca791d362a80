//! The blocking side of an HTTP transfer: a `BufRead` over a
//! [`chunk_pipe`](crate::io::chunk_pipe) fed by a tokio task, bounded in
//! bytes. The bound is what keeps memory flat when the network is faster
//! than the disk.
//!
//! `fill_buf` hands out the network chunk itself, so the decoders read the
//! bytes where hyper put them: an uncompressed image's data is copied once,
//! from the chunk into the target's aligned write buffer. (Through `Read`
//! it took a second copy into the decoder's buffer first: 28% of the
//! pipeline thread's samples were that memmove, on the mixed benchmark image.)

use std::io::{self, BufRead, Read};

use bytes::Bytes;
use tokio::task::AbortHandle;

use super::fetch::Sink;
use crate::io::chunk_pipe::{self, PipeError, PipeReader, PipeSender};
use crate::source::SourceError;

/// Bytes that may wait between the network task and the reader. Chunk sizes
/// are whatever the connection delivers (hyper's reads grow up to a few
/// hundred KiB when the consumer lags), so the bound is on bytes, not on
/// chunks.
///
/// 512 KiB: the socket's receive buffer and the writes in flight absorb the
/// jitter, and since the decoders work on the chunks in place (a chunk stays
/// queued until it is consumed), more only costs memory (BENCHMARKS.md,
/// "Tuning").
pub(super) const BUFFER_BYTES: usize = 512 << 10;

impl PipeError for SourceError {
    fn into_io(self) -> io::Error {
        SourceError::into_io(self)
    }
}

/// Creates the two ends of the transfer pipe.
pub(super) fn pipe(display: &str) -> (ChannelSink, PipeEnd) {
    let lost = SourceError::Internal {
        url: display.to_string(),
        detail: "the download task stopped without a result".to_string(),
    };
    let (tx, rx) = chunk_pipe::pipe(BUFFER_BYTES, lost);
    (
        ChannelSink {
            tx,
            display: display.to_string(),
        },
        PipeEnd(rx),
    )
}

/// The receiving end, before it is tied to its task.
pub(super) struct PipeEnd(PipeReader<SourceError>);

/// A blocking reader over the pipe. Dropping it stops the transfer.
pub(super) struct ChannelReader {
    rx: PipeReader<SourceError>,
    task: AbortHandle,
}

impl ChannelReader {
    pub(super) fn new(end: PipeEnd, task: AbortHandle) -> Self {
        ChannelReader { rx: end.0, task }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.rx.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.rx.consume(amt);
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sending side, as a [`Sink`] for [`super::fetch::fetch`].
pub(super) struct ChannelSink {
    tx: PipeSender<SourceError>,
    display: String,
}

impl ChannelSink {
    /// Reports the end of the transfer (success or the error).
    pub(super) async fn finish(self, result: Result<(), SourceError>) {
        self.tx.finish(result).await;
    }
}

impl Sink for ChannelSink {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        self.tx
            .put(data)
            .await
            .map_err(|chunk_pipe::Closed| SourceError::Cancelled {
                url: self.display.clone(),
            })
    }
}
