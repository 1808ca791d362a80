//! The request body as the pipeline's source: a bounded bridge from the
//! async side (hyper delivers the body's frames on the runtime) to the
//! blocking side (the pipeline reads a `BufRead` on its own thread).
//!
//! The bound is in bytes ([`BUFFER_BYTES`], a semaphore with one permit per
//! byte), so memory stays flat whatever the upload's size: when the disk is
//! slower than the network, the forwarder stops polling the body, hyper
//! stops reading the socket, and TCP flow control slows the client down.
//! `fill_buf` hands out the frames themselves (no copy), as the HTTP
//! source's reader does.

use std::io::{self, BufRead, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, Semaphore};

use crate::source::{OpenContext, OpenedSource, Source, SourceError};

/// Bytes in flight between the connection and the pipeline (the HTTP
/// source's figure: the socket buffers and the writes in flight absorb the
/// jitter; more only costs memory).
pub(crate) const BUFFER_BYTES: usize = 512 << 10;

/// Channel slots; the byte budget is the real limit.
const SLOTS: usize = 64;

/// What the async side sends.
enum Msg {
    Data(Bytes),
    /// Every byte of the body was delivered.
    End,
    /// The body could not be read (the client went away, a bad chunk...).
    Failed(String),
}

/// Creates the two ends of the bridge.
pub(crate) fn pipe() -> (BodySender, BodyReader) {
    let (tx, rx) = mpsc::channel(SLOTS);
    let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
    (
        BodySender {
            tx,
            budget: Arc::clone(&budget),
        },
        BodyReader {
            rx,
            budget,
            current: Bytes::new(),
            owed: 0,
            state: State::Open,
        },
    )
}

/// The reader went away (the pipeline stopped): stop forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Permits for a chunk (a chunk larger than the budget takes all of it).
fn permits_for(len: usize) -> usize {
    len.min(BUFFER_BYTES)
}

/// The async end.
pub(crate) struct BodySender {
    tx: mpsc::Sender<Msg>,
    budget: Arc<Semaphore>,
}

impl BodySender {
    /// Sends one chunk, waiting while the budget is spent.
    pub(crate) async fn put(&mut self, data: Bytes) -> Result<(), Closed> {
        if data.is_empty() {
            return Ok(());
        }
        let wanted = u32::try_from(permits_for(data.len())).unwrap_or(u32::MAX);
        self.budget
            .acquire_many(wanted)
            .await
            .map_err(|_| Closed)?
            .forget();
        self.tx.send(Msg::Data(data)).await.map_err(|_| Closed)
    }

    /// Reports the end of the body: complete, or why not.
    pub(crate) async fn finish(self, result: Result<(), String>) {
        let msg = match result {
            Ok(()) => Msg::End,
            Err(e) => Msg::Failed(e),
        };
        let _ = self.tx.send(msg).await;
    }
}

enum State {
    Open,
    Ended,
    Failed(String),
}

/// The blocking end. Dropping it tells the sender to stop.
pub(crate) struct BodyReader {
    rx: mpsc::Receiver<Msg>,
    budget: Arc<Semaphore>,
    current: Bytes,
    /// Permits held by `current`, returned once it is consumed.
    owed: usize,
    state: State,
}

impl BufRead for BodyReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.current.is_empty() {
            if self.owed > 0 {
                self.budget.add_permits(self.owed);
                self.owed = 0;
            }
            match &self.state {
                State::Open => {}
                State::Ended => return Ok(&[]),
                State::Failed(m) => return Err(io::Error::other(m.clone())),
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(d)) => {
                    self.owed = permits_for(d.len());
                    self.current = d;
                }
                Some(Msg::End) => self.state = State::Ended,
                Some(Msg::Failed(m)) => self.state = State::Failed(m),
                None => {
                    self.state = State::Failed("the request body ended without its end".to_string())
                }
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::io::read_via_buf(self, buf)
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        // Wakes a sender waiting for budget; its next send fails.
        self.budget.close();
        self.rx.close();
    }
}

/// A stream for the pipeline, and its length when known.
pub(crate) type Adapted = (Box<dyn BufRead + Send>, Option<u64>);

/// How the body is turned into the stream the pipeline reads (given the
/// body and its `Content-Length`).
pub(crate) type Adapt =
    Box<dyn FnOnce(BodyReader, Option<u64>) -> Result<Adapted, SourceError> + Send>;

/// An upload's body as a [`Source`], opened once: a forward stream, never
/// seekable, with the size from `Content-Length` when it is the image's.
pub(crate) struct BodySource {
    body: Mutex<Option<(BodyReader, Adapt)>>,
    size: Option<u64>,
}

impl std::fmt::Debug for BodySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodySource")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// How the upload is named in logs and messages.
pub(crate) const DISPLAY: &str = "the upload";

impl BodySource {
    /// The body as it is (`size`: its `Content-Length`, when that is the
    /// image's length).
    pub(crate) fn plain(body: BodyReader, size: Option<u64>) -> BodySource {
        BodySource::adapted(body, size, Box::new(|b, size| Ok((Box::new(b), size))))
    }

    /// The body through `adapt` (a clone stream's framing and tar).
    pub(crate) fn adapted(body: BodyReader, size: Option<u64>, adapt: Adapt) -> BodySource {
        BodySource {
            body: Mutex::new(Some((body, adapt))),
            size,
        }
    }
}

impl Source for BodySource {
    fn display(&self) -> String {
        DISPLAY.to_string()
    }

    fn open(&self, _: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        let taken = self.body.lock().ok().and_then(|mut b| b.take());
        let Some((body, adapt)) = taken else {
            return Err(SourceError::Io {
                what: "opening the upload a second time".to_string(),
                source: io::Error::other("a request body can be read once"),
            });
        };
        let (reader, size) = adapt(body, self.size)?;
        Ok(OpenedSource {
            reader,
            size,
            range: None,
            display: DISPLAY.to_string(),
            counts_itself: false,
            registry: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_flight_are_bounded_and_arrive_in_order() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, mut rx) = pipe();
        let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 100 << 10])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let budget = Arc::clone(&tx.budget);
        let sender = rt.spawn(async move {
            for c in chunks {
                tx.put(c).await.expect("put");
            }
            tx.finish(Ok(())).await;
        });
        // Nothing read yet: the sender stops once the budget is spent.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!sender.is_finished(), "the sender must wait for the reader");
        assert!(budget.available_permits() < 100 << 10);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).expect("read");
        assert!(got == expected);
        rt.block_on(sender).expect("sender");
    }

    #[test]
    fn failures_and_a_dropped_reader() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, mut rx) = pipe();
        rt.block_on(async {
            tx.put(Bytes::from_static(b"abc")).await.expect("put");
            tx.finish(Err("connection reset".into())).await;
        });
        let mut got = Vec::new();
        let e = rx.read_to_end(&mut got).expect_err("failed body");
        assert_eq!(got, b"abc");
        assert!(e.to_string().contains("connection reset"), "{e}");
        // The error stays.
        assert!(rx.fill_buf().is_err());

        let (mut tx, rx) = pipe();
        drop(rx);
        let r = rt.block_on(tx.put(Bytes::from(vec![1u8; BUFFER_BYTES * 2])));
        assert_eq!(r, Err(Closed));

        // A sender dropped without finishing is an error, not an end.
        let (tx, mut rx) = pipe();
        drop(tx);
        assert!(rx.read_to_end(&mut Vec::new()).is_err());
    }
}
