//! The upload server's one-upload lifecycle, as CDI's: idle until an upload
//! is accepted; busy while it streams (and, for the async routes, while it
//! is finished after the answer); done after one success, and then the
//! process exits. A failed upload returns to idle: the next one starts clean.

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::write::Written;

/// Where the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Receiving an upload.
    Uploading,
    /// An async upload was answered and is being finished.
    Processing,
    /// One upload succeeded.
    Done,
    /// The deadline passed with nothing in flight: no new upload starts.
    Closed,
}

/// Why an upload cannot start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// Another upload is in progress (503).
    InProgress,
    /// An upload already succeeded (409).
    Done,
    /// The deadline passed (503).
    Closing,
}

/// What the server loop learns.
#[derive(Debug)]
pub(crate) enum Event {
    /// An upload succeeded: answer, then exit.
    Done(Written),
    /// An async upload failed after its answer: exit with this error.
    Fatal(String),
}

/// The shared state.
#[derive(Debug)]
pub(crate) struct State {
    phase: Mutex<Phase>,
    events: mpsc::UnboundedSender<Event>,
}

impl State {
    pub(crate) fn new() -> (State, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            State {
                phase: Mutex::new(Phase::Idle),
                events: tx,
            },
            rx,
        )
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        // A poisoned lock still holds a valid phase (every update is one store).
        let mut guard = match self.phase.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard)
    }

    /// Claims the server for one upload.
    pub(crate) fn claim(&self) -> Result<(), Busy> {
        self.with(|p| match *p {
            Phase::Idle => {
                *p = Phase::Uploading;
                Ok(())
            }
            Phase::Uploading | Phase::Processing => Err(Busy::InProgress),
            Phase::Done => Err(Busy::Done),
            Phase::Closed => Err(Busy::Closing),
        })
    }

    /// The upload failed before succeeding: back to idle.
    pub(crate) fn release(&self) {
        self.with(|p| {
            if matches!(*p, Phase::Uploading | Phase::Processing) {
                *p = Phase::Idle;
            }
        });
    }

    /// An async upload was answered and goes on in the background.
    pub(crate) fn processing(&self) {
        self.with(|p| {
            if *p == Phase::Uploading {
                *p = Phase::Processing;
            }
        });
    }

    /// The upload succeeded.
    pub(crate) fn done(&self, w: Written) {
        self.with(|p| *p = Phase::Done);
        let _ = self.events.send(Event::Done(w));
    }

    /// An async upload failed after it was answered.
    pub(crate) fn fatal(&self, message: String) {
        self.with(|p| *p = Phase::Idle);
        let _ = self.events.send(Event::Fatal(message));
    }

    /// At the deadline: `Some(done)` once nothing is in flight (and no new
    /// upload may start), `None` while an upload still runs.
    pub(crate) fn close_if_idle(&self) -> Option<bool> {
        self.with(|p| match *p {
            Phase::Uploading | Phase::Processing => None,
            Phase::Done => Some(true),
            Phase::Idle | Phase::Closed => {
                *p = Phase::Closed;
                Some(false)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_upload_at_a_time_then_done() {
        let (s, mut rx) = State::new();
        assert_eq!(s.claim(), Ok(()));
        assert_eq!(s.claim(), Err(Busy::InProgress));
        assert_eq!(s.close_if_idle(), None, "busy at the deadline");
        s.release();
        assert_eq!(s.claim(), Ok(()), "a failed upload frees the server");
        s.processing();
        assert_eq!(s.claim(), Err(Busy::InProgress));
        let w = Written {
            preallocation_applied: false,
            clone: false,
        };
        s.done(w);
        assert_eq!(s.claim(), Err(Busy::Done));
        assert!(matches!(rx.try_recv(), Ok(Event::Done(x)) if x == w));
        assert_eq!(s.close_if_idle(), Some(true));
    }

    #[test]
    fn deadline_closes_an_idle_server() {
        let (s, _rx) = State::new();
        assert_eq!(s.close_if_idle(), Some(false));
        assert_eq!(s.claim(), Err(Busy::Closing));
    }
}
