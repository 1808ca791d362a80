//! The decoder's output side: clips every extent to the virtual size, merges
//! adjacent zero extents (a sparse 1 TiB image becomes a handful of calls), and
//! counts covered bytes so that `finish` can prove every guest byte of
//! `[0, virtual_size)` was reported.

use crate::format::ExtentSink;
use crate::io::ZeroRun;

use super::Qcow2Error;

pub(super) struct Emitter {
    vsize: u64,
    pending_zero: ZeroRun,
    covered: u64,
    pub data_bytes: u64,
}

impl Emitter {
    pub(super) fn new(vsize: u64) -> Emitter {
        Emitter {
            vsize,
            pending_zero: ZeroRun::new(),
            covered: 0,
            data_bytes: 0,
        }
    }

    pub(super) fn covered(&self) -> u64 {
        self.covered
    }

    /// Length of `[guest, guest + len)` inside the virtual size.
    fn clip(&self, guest: u64, len: u64) -> u64 {
        if guest >= self.vsize {
            0
        } else {
            len.min(self.vsize - guest)
        }
    }

    pub(super) fn data(
        &mut self,
        sink: &mut dyn ExtentSink,
        guest: u64,
        bytes: &[u8],
    ) -> Result<(), Qcow2Error> {
        let n = self.clip(guest, bytes.len() as u64) as usize;
        let Some(b) = bytes.get(..n) else {
            return Ok(());
        };
        if b.is_empty() {
            return Ok(());
        }
        self.covered += n as u64;
        self.data_bytes += n as u64;
        sink.data(guest, b).map_err(Qcow2Error::Sink)
    }

    pub(super) fn zero(
        &mut self,
        sink: &mut dyn ExtentSink,
        guest: u64,
        len: u64,
    ) -> Result<(), Qcow2Error> {
        let len = self.clip(guest, len);
        if len == 0 {
            return Ok(());
        }
        self.covered += len;
        match self.pending_zero.add(guest..guest + len) {
            Some(done) => sink
                .zero(done.start, done.end - done.start)
                .map_err(Qcow2Error::Sink),
            None => Ok(()),
        }
    }

    pub(super) fn flush(&mut self, sink: &mut dyn ExtentSink) -> Result<(), Qcow2Error> {
        if let Some(r) = self.pending_zero.take() {
            sink.zero(r.start, r.end - r.start)
                .map_err(Qcow2Error::Sink)?;
        }
        Ok(())
    }
}
