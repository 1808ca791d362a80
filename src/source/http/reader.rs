//! The blocking side of an HTTP transfer: a `BufRead` over a channel fed by
//! a tokio task, bounded in bytes. The bound is what keeps memory flat when
//! the network is faster than the disk.
//!
//! `fill_buf` hands out the network chunk itself, so the decoders read the
//! bytes where hyper put them: an uncompressed image's data is copied once,
//! from the chunk into the target's aligned write buffer. (Through `Read`
//! it took a second copy into the decoder's buffer first: 28% of the
//! pipeline thread's samples were that memmove, on the mixed benchmark image.)

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::AbortHandle;

use super::fetch::Sink;
use crate::source::SourceError;

/// Bytes that may wait between the network task and the reader. Chunk sizes
/// are whatever the connection delivers (hyper's reads grow up to a few
/// hundred KiB when the consumer lags), so the bound is on bytes, not on
/// chunks: a semaphore with one permit per byte.
///
/// 512 KiB: the socket's receive buffer and the writes in flight absorb the
/// jitter, and since the decoders work on the chunks in place (a chunk stays
/// queued until it is consumed), more only costs memory (BENCHMARKS.md,
/// "Tuning").
pub(super) const BUFFER_BYTES: usize = 512 << 10;

/// Channel slots; the byte budget is the real limit.
const CHANNEL_SLOTS: usize = 64;

/// Creates the two ends of the transfer pipe.
pub(super) fn pipe(display: &str) -> (ChannelSink, PipeEnd) {
    let (tx, rx) = mpsc::channel(CHANNEL_SLOTS);
    let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
    (
        ChannelSink {
            tx,
            budget: budget.clone(),
            display: display.to_string(),
        },
        PipeEnd { rx, budget },
    )
}

/// The receiving end, before it is tied to its task.
pub(super) struct PipeEnd {
    rx: mpsc::Receiver<Msg>,
    budget: Arc<Semaphore>,
}

/// Permits taken for one chunk (chunks larger than the whole budget take
/// the whole budget).
fn permits_for(len: usize) -> usize {
    len.min(BUFFER_BYTES)
}

/// What the network task sends.
pub(super) enum Msg {
    Data(Bytes),
    /// The transfer completed: every byte was delivered.
    End,
    Failed(SourceError),
}

/// A blocking reader over the channel. Dropping it stops the transfer.
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    budget: Arc<Semaphore>,
    current: Bytes,
    /// Permits held by `current`, returned once it is consumed.
    owed: usize,
    state: State,
    task: AbortHandle,
    display: String,
}

enum State {
    Open,
    Ended,
    /// The transfer failed; its message was returned once already.
    Failed(String),
}

impl ChannelReader {
    pub(super) fn new(end: PipeEnd, task: AbortHandle, display: String) -> Self {
        ChannelReader {
            rx: end.rx,
            budget: end.budget,
            current: Bytes::new(),
            owed: 0,
            state: State::Open,
            task,
            display,
        }
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            if self.owed > 0 {
                self.budget.add_permits(self.owed);
                self.owed = 0;
            }
            match &self.state {
                State::Open => {}
                State::Ended => return Ok(&[]),
                State::Failed(msg) => return Err(io::Error::other(msg.clone())),
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(data)) => {
                    self.owed = permits_for(data.len());
                    self.current = data;
                }
                Some(Msg::End) => self.state = State::Ended,
                Some(Msg::Failed(err)) => {
                    self.state = State::Failed(err.to_string());
                    return Err(err.into_io());
                }
                None => {
                    let err = SourceError::Internal {
                        url: self.display.clone(),
                        detail: "the download task stopped without a result".to_string(),
                    };
                    self.state = State::Failed(err.to_string());
                    return Err(err.into_io());
                }
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
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
    tx: mpsc::Sender<Msg>,
    budget: Arc<Semaphore>,
    display: String,
}

impl ChannelSink {
    /// Reports the end of the transfer (success or the error).
    pub(super) async fn finish(self, result: Result<(), SourceError>) {
        let msg = match result {
            Ok(()) => Msg::End,
            Err(err) => Msg::Failed(err),
        };
        let _ = self.tx.send(msg).await;
    }

    fn cancelled(&self) -> SourceError {
        SourceError::Cancelled {
            url: self.display.clone(),
        }
    }
}

impl Sink for ChannelSink {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        let wanted = u32::try_from(permits_for(data.len())).unwrap_or(u32::MAX);
        self.budget
            .acquire_many(wanted)
            .await
            .map_err(|_| self.cancelled())?
            .forget();
        self.tx
            .send(Msg::Data(data))
            .await
            .map_err(|_| self.cancelled())
    }
}
