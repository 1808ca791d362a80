//! The decoder's output side: announces the virtual size before the first
//! extent (and only then, so that a refusal found in the descriptor comes
//! before anything reaches the target), clips every extent to the virtual
//! size, merges adjacent zero extents, and counts covered bytes so that
//! `finish` can prove every guest byte was reported.

use crate::format::{ExtentSink, SinkError};

pub(crate) struct Emitter {
    vsize: u64,
    announced: bool,
    pending_zero: Option<(u64, u64)>,
    covered: u64,
}

impl Emitter {
    pub(crate) fn new(vsize: u64) -> Emitter {
        Emitter {
            vsize,
            announced: false,
            pending_zero: None,
            covered: 0,
        }
    }

    pub(crate) fn covered(&self) -> u64 {
        self.covered
    }

    /// Tells the sink the virtual size, once.
    pub(crate) fn announce(&mut self, sink: &mut dyn ExtentSink) -> Result<(), SinkError> {
        if !self.announced {
            self.announced = true;
            sink.set_virtual_size(self.vsize)?;
        }
        Ok(())
    }

    fn clip(&self, guest: u64, len: u64) -> u64 {
        if guest >= self.vsize {
            0
        } else {
            len.min(self.vsize - guest)
        }
    }

    pub(crate) fn data(
        &mut self,
        sink: &mut dyn ExtentSink,
        guest: u64,
        bytes: &[u8],
    ) -> Result<(), SinkError> {
        let n = self.clip(guest, bytes.len() as u64) as usize;
        let Some(b) = bytes.get(..n).filter(|b| !b.is_empty()) else {
            return Ok(());
        };
        self.announce(sink)?;
        self.covered += n as u64;
        sink.data(guest, b)
    }

    pub(crate) fn zero(
        &mut self,
        sink: &mut dyn ExtentSink,
        guest: u64,
        len: u64,
    ) -> Result<(), SinkError> {
        let len = self.clip(guest, len);
        if len == 0 {
            return Ok(());
        }
        self.announce(sink)?;
        self.covered += len;
        match &mut self.pending_zero {
            Some((g, l)) if g.checked_add(*l) == Some(guest) => {
                *l += len;
                Ok(())
            }
            _ => {
                self.flush(sink)?;
                self.pending_zero = Some((guest, len));
                Ok(())
            }
        }
    }

    pub(crate) fn flush(&mut self, sink: &mut dyn ExtentSink) -> Result<(), SinkError> {
        if let Some((g, l)) = self.pending_zero.take() {
            sink.zero(g, l)?;
        }
        Ok(())
    }
}
