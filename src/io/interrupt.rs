//! [`InterruptTap`]: turns a pending SIGTERM/SIGINT into a read error.
//!
//! The signal handler only sets a flag (`crate::signals`). This tap, on the
//! raw source stream, is the one place that reads it: the next `fill_buf`
//! fails with an [`Interrupted`] error, which unwinds the pipeline through
//! its ordinary failure path, and the pipeline recognises it by type
//! ([`Interrupted::find`]).

use std::io::{self, BufRead, Read};

/// The import was interrupted by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted by {0}")]
pub struct Interrupted(pub &'static str);

impl Interrupted {
    /// The pending signal, if one arrived.
    pub fn pending() -> Option<Interrupted> {
        crate::signals::pending().map(Interrupted)
    }

    /// Whether `e`, or an error it wraps, is an interrupt.
    pub fn find(e: &io::Error) -> Option<Interrupted> {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
        while let Some(c) = cur {
            if let Some(i) = c.downcast_ref::<Interrupted>() {
                return Some(*i);
            }
            if let Some(inner) = c.downcast_ref::<io::Error>() {
                cur = inner.get_ref().map(|i| i as _);
                continue;
            }
            cur = c.source();
        }
        None
    }
}

/// A `BufRead` over a `BufRead` that fails once a signal is pending.
pub(crate) struct InterruptTap<R> {
    inner: R,
}

impl<R> InterruptTap<R> {
    /// Watches for signals in front of `inner`.
    pub(crate) fn new(inner: R) -> Self {
        InterruptTap { inner }
    }
}

impl<R: BufRead> BufRead for InterruptTap<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(i) = Interrupted::pending() {
            // Not `ErrorKind::Interrupted`: readers retry those (EINTR), and
            // this one must stop them.
            return Err(io::Error::other(i));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt);
    }
}

impl<R: BufRead> Read for InterruptTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::read_via_buf(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_is_found_through_wrapping() {
        let e = io::Error::other(Interrupted("SIGTERM"));
        assert_eq!(Interrupted::find(&e), Some(Interrupted("SIGTERM")));
        let wrapped = io::Error::other(e);
        assert_eq!(Interrupted::find(&wrapped), Some(Interrupted("SIGTERM")));
        assert_eq!(Interrupted::find(&io::Error::other("no")), None);
    }
}
