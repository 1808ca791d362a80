//! The blocking side of an HTTP transfer: a `Read` over a bounded channel
//! fed by a tokio task. The channel bound is what keeps memory flat when the
//! network is faster than the disk.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::fetch::Sink;
use crate::source::SourceError;

/// Chunks queued between the network task and the reader. Chunks are what
/// the connection delivers (typically 8-64 KiB), or at most
/// [`super::segments::HANDOFF_CHUNK`] in segmented mode.
pub(super) const CHANNEL_CHUNKS: usize = 16;

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
    current: Bytes,
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
    pub(super) fn new(rx: mpsc::Receiver<Msg>, task: AbortHandle, display: String) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
            state: State::Open,
            task,
            display,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.current.is_empty() {
                let n = buf.len().min(self.current.len());
                self.current.copy_to_slice(&mut buf[..n]);
                return Ok(n);
            }
            match &self.state {
                State::Open => {}
                State::Ended => return Ok(0),
                State::Failed(msg) => return Err(io::Error::other(msg.clone())),
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(data)) => self.current = data,
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
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sending side, as a [`Sink`] for [`super::fetch::fetch`].
pub(super) struct ChannelSink {
    pub tx: mpsc::Sender<Msg>,
    pub display: String,
}

impl Sink for ChannelSink {
    async fn put(&mut self, data: Bytes) -> Result<(), SourceError> {
        self.tx
            .send(Msg::Data(data))
            .await
            .map_err(|_| SourceError::Cancelled {
                url: self.display.clone(),
            })
    }
}
