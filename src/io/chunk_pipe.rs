//! A bounded bridge from an async producer to a blocking reader: chunks of
//! bytes go through a channel, and a semaphore with one permit per byte
//! bounds what waits in between.
//!
//! Two stages feed the pipeline this way: the HTTP source (a network task on
//! the runtime) and the upload server (a request body that hyper delivers on
//! the runtime). The bound is in bytes, not chunks, because chunk sizes are
//! whatever the connection delivers; when the pipeline is slower than the
//! network, the producer waits for permits, stops polling its socket, and TCP
//! flow control slows the sender down, so memory stays flat whatever the size.
//!
//! `fill_buf` hands out the chunks themselves, so the decoders read the bytes
//! where hyper put them: an uncompressed image's data is copied once, from the
//! chunk into the target's aligned write buffer.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use tokio::sync::{mpsc, Semaphore};

/// Channel slots; the byte budget is the real limit.
const SLOTS: usize = 64;

/// A failure the producer reports, as the reader returns it.
pub(crate) trait PipeError: fmt::Display {
    /// The error `fill_buf` returns the first time (later calls return its
    /// message again).
    fn into_io(self) -> io::Error;
}

impl PipeError for String {
    fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// What the producer sends.
enum Msg<E> {
    Data(Bytes),
    /// Every byte was delivered.
    End,
    Failed(E),
}

/// The reader went away: the producer should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Creates a pipe that holds at most `budget` bytes between its ends (a chunk
/// larger than that takes the whole budget). `lost` is the error the reader
/// reports if the producer goes away without finishing.
pub(crate) fn pipe<E>(budget: usize, lost: E) -> (PipeSender<E>, PipeReader<E>) {
    let cap = budget.clamp(1, Semaphore::MAX_PERMITS);
    let (tx, rx) = mpsc::channel(SLOTS);
    let permits = Arc::new(Semaphore::new(cap));
    (
        PipeSender {
            tx,
            budget: Arc::clone(&permits),
            cap,
        },
        PipeReader {
            rx,
            budget: permits,
            cap,
            current: Bytes::new(),
            owed: 0,
            state: State::Open,
            lost: Some(lost),
        },
    )
}

/// The async end.
pub(crate) struct PipeSender<E> {
    tx: mpsc::Sender<Msg<E>>,
    budget: Arc<Semaphore>,
    cap: usize,
}

impl<E> PipeSender<E> {
    /// Sends one chunk, waiting while the budget is spent.
    pub(crate) async fn put(&mut self, data: Bytes) -> Result<(), Closed> {
        if data.is_empty() {
            return Ok(());
        }
        let wanted = u32::try_from(data.len().min(self.cap)).unwrap_or(u32::MAX);
        self.budget
            .acquire_many(wanted)
            .await
            .map_err(|_| Closed)?
            .forget();
        self.tx.send(Msg::Data(data)).await.map_err(|_| Closed)
    }

    /// Reports the end: complete, or why not.
    pub(crate) async fn finish(self, result: Result<(), E>) {
        let msg = match result {
            Ok(()) => Msg::End,
            Err(e) => Msg::Failed(e),
        };
        let _ = self.tx.send(msg).await;
    }

    /// Permits free now (tests watch the bound with it).
    #[cfg(test)]
    pub(crate) fn free_budget(&self) -> usize {
        self.budget.available_permits()
    }
}

enum State {
    Open,
    Ended,
    /// The producer failed; its error was returned once already.
    Failed(String),
}

/// The blocking end. Dropping it tells the producer to stop.
pub(crate) struct PipeReader<E> {
    rx: mpsc::Receiver<Msg<E>>,
    budget: Arc<Semaphore>,
    cap: usize,
    current: Bytes,
    /// Permits held by `current`, returned once it is consumed.
    owed: usize,
    state: State,
    lost: Option<E>,
}

impl<E: PipeError> PipeReader<E> {
    fn fail(&mut self, e: E) -> io::Error {
        self.state = State::Failed(e.to_string());
        e.into_io()
    }
}

impl<E: PipeError> BufRead for PipeReader<E> {
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
                    self.owed = data.len().min(self.cap);
                    self.current = data;
                }
                Some(Msg::End) => self.state = State::Ended,
                Some(Msg::Failed(e)) => return Err(self.fail(e)),
                None => match self.lost.take() {
                    Some(e) => return Err(self.fail(e)),
                    None => self.state = State::Failed("the producer went away".to_string()),
                },
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, amt: usize) {
        self.current.advance(amt.min(self.current.len()));
    }
}

impl<E: PipeError> Read for PipeReader<E> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::read_via_buf(self, buf)
    }
}

impl<E> Drop for PipeReader<E> {
    fn drop(&mut self) {
        // Wakes a producer waiting for budget; its next put fails.
        self.budget.close();
        self.rx.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 512 << 10;

    fn string_pipe() -> (PipeSender<String>, PipeReader<String>) {
        pipe(BUDGET, "the body ended without its end".to_string())
    }

    #[test]
    fn bytes_in_flight_are_bounded_and_arrive_in_order() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, mut rx) = string_pipe();
        let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 100 << 10])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let sender = rt.spawn(async move {
            for c in chunks {
                tx.put(c).await.expect("put");
                let _ = seen_tx.send(tx.free_budget());
            }
            tx.finish(Ok(())).await;
        });
        // Nothing read yet: the sender stops once the budget is spent.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!sender.is_finished(), "the sender must wait for the reader");
        let free: Vec<usize> = seen_rx.try_iter().collect();
        assert!(free.last().is_some_and(|&f| f < 100 << 10), "{free:?}");
        let mut got = Vec::new();
        rx.read_to_end(&mut got).expect("read");
        assert!(got == expected);
        rt.block_on(sender).expect("sender");
    }

    #[test]
    fn a_failure_is_returned_and_stays() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, mut rx) = string_pipe();
        rt.block_on(async {
            tx.put(Bytes::from_static(b"abc")).await.expect("put");
            tx.finish(Err("connection reset".into())).await;
        });
        let mut got = Vec::new();
        let e = rx.read_to_end(&mut got).expect_err("failed body");
        assert_eq!(got, b"abc");
        assert!(e.to_string().contains("connection reset"), "{e}");
        let again = rx.fill_buf().expect_err("the error stays");
        assert!(again.to_string().contains("connection reset"), "{again}");
    }

    #[test]
    fn a_dropped_reader_stops_the_sender() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, rx) = string_pipe();
        drop(rx);
        let r = rt.block_on(tx.put(Bytes::from(vec![1u8; BUDGET * 2])));
        assert_eq!(r, Err(Closed));
    }

    #[test]
    fn a_sender_gone_without_finishing_is_an_error_not_an_end() {
        let (tx, mut rx) = string_pipe();
        drop(tx);
        let e = rx.read_to_end(&mut Vec::new()).expect_err("no end");
        assert!(e.to_string().contains("without its end"), "{e}");
        assert!(rx.fill_buf().is_err());
    }

    #[test]
    fn an_end_after_the_data_is_a_clean_eof() {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (mut tx, mut rx) = string_pipe();
        rt.block_on(async {
            tx.put(Bytes::new())
                .await
                .expect("an empty chunk is skipped");
            tx.put(Bytes::from_static(b"xy")).await.expect("put");
            tx.finish(Ok(())).await;
        });
        let mut got = Vec::new();
        rx.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"xy");
        assert!(rx.fill_buf().expect("eof").is_empty());
    }
}
