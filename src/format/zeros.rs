//! A sink adapter that turns all-zero stretches of data extents into zero extents.
//!
//! qcow2 images often store clusters that hold nothing but zeros (a guest
//! wrote zeros; a converter copied them verbatim). Writing them costs as much
//! device bandwidth as real data, while a zero extent costs a hole punch (or
//! nothing on a fresh file). qemu-img detects such sectors for the same
//! reason. The raw decoder does its own detection as it reads; qcow2 output
//! passes through this adapter.

use super::raw::{is_zero, ZERO_GRANULE};
use super::{ExtentSink, SinkError};
use crate::io::ZeroRun;

/// Forwards to `inner`, splitting data extents at guest offsets that are
/// multiples of [`ZERO_GRANULE`] and reporting all-zero pieces as zeros.
/// Contiguous pieces of the same kind are forwarded as one call, so an extent
/// without zeros costs one scan and one call.
///
/// Zero ranges are held back until something non-contiguous arrives, so
/// that zeros split across calls reach the sink as one range. This matters
/// because the decoder's calls follow the input's chunk boundaries, which
/// are arbitrary: a zero cluster cut at byte 40000 of a read became two
/// zero ranges ending mid-sector, and the target could join neither to its
/// neighbours (one 512-byte write plus one extra hole punch per network
/// chunk: 5,900 of each for the 1 GiB zero-filled tail of the benchmark
/// image, where 256 punches suffice). Call [`ZeroDetect::finish`] at the end.
pub(crate) struct ZeroDetect<'a> {
    inner: &'a mut dyn ExtentSink,
    /// Zeros not forwarded yet.
    pending: ZeroRun,
}

impl<'a> ZeroDetect<'a> {
    pub(crate) fn new(inner: &'a mut dyn ExtentSink) -> Self {
        ZeroDetect {
            inner,
            pending: ZeroRun::new(),
        }
    }

    /// Forwards the zeros still held back. Without this the last zero range
    /// of the image would be lost.
    pub(crate) fn finish(mut self) -> Result<(), SinkError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), SinkError> {
        match self.pending.take() {
            Some(r) => self.inner.zero(r.start, r.end - r.start),
            None => Ok(()),
        }
    }

    /// Adds zeros `[off, off + len)`, joining them to the held-back range
    /// when contiguous.
    fn hold_zero(&mut self, off: u64, len: u64) -> Result<(), SinkError> {
        if len == 0 {
            return Ok(());
        }
        let end = off.checked_add(len).ok_or(SinkError::OutOfRange {
            start: off,
            end: u64::MAX,
            limit: u64::MAX,
            what: "the largest offset",
        })?;
        match self.pending.add(off..end) {
            Some(done) => self.inner.zero(done.start, done.end - done.start),
            None => Ok(()),
        }
    }
}

impl ExtentSink for ZeroDetect<'_> {
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.inner.set_virtual_size(size)
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError> {
        self.hold_zero(guest_offset, len)
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        let g = ZERO_GRANULE as u64;
        // Start of the current run within `data`, and whether it is zeros.
        let mut run_start = 0usize;
        let mut run_zero: Option<bool> = None;
        let mut at = 0usize;
        while at < data.len() {
            let off = guest_offset + at as u64;
            // Up to the next granule boundary in guest terms.
            let to_boundary = (g - off % g) as usize;
            let end = at + to_boundary.min(data.len() - at);
            let zero = is_zero(&data[at..end]);
            match run_zero {
                Some(z) if z != zero => {
                    self.flush(guest_offset, &data[run_start..at], run_start, z)?;
                    run_start = at;
                    run_zero = Some(zero);
                }
                None => run_zero = Some(zero),
                _ => {}
            }
            at = end;
        }
        match run_zero {
            Some(z) => self.flush(guest_offset, &data[run_start..], run_start, z),
            None => Ok(()),
        }
    }
}

impl ZeroDetect<'_> {
    fn flush(&mut self, base: u64, piece: &[u8], at: usize, zero: bool) -> Result<(), SinkError> {
        let off = base + at as u64;
        if zero {
            self.hold_zero(off, piece.len() as u64)
        } else {
            self.release()?;
            self.inner.data(off, piece)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Calls(Vec<(u64, u64, bool)>);

    impl ExtentSink for Calls {
        fn set_virtual_size(&mut self, _: u64) -> Result<(), SinkError> {
            Ok(())
        }
        fn data(&mut self, off: u64, d: &[u8]) -> Result<(), SinkError> {
            self.0.push((off, d.len() as u64, true));
            Ok(())
        }
        fn zero(&mut self, off: u64, len: u64) -> Result<(), SinkError> {
            self.0.push((off, len, false));
            Ok(())
        }
    }

    #[test]
    fn splits_zero_granules_and_keeps_everything_else() {
        let g = ZERO_GRANULE;
        // Starts mid-granule: [data half][zero granule][zero granule][data granule][zero tail]
        let mut buf = vec![0u8; g / 2 + 3 * g + 100];
        buf[0] = 1;
        buf[g / 2 + 2 * g + 7] = 2;
        let mut calls = Calls::default();
        let mut zd = ZeroDetect::new(&mut calls);
        zd.data(g as u64 / 2, &buf).expect("data");
        zd.finish().expect("finish");
        let gu = g as u64;
        assert_eq!(
            calls.0,
            vec![
                (gu / 2, gu / 2, true),
                (gu, 2 * gu, false),
                (3 * gu, gu, true),
                (4 * gu, 100, false),
            ]
        );
    }

    #[test]
    fn zeros_split_across_calls_arrive_as_one_range() {
        // A zero cluster cut by the input's chunk boundaries, then a zero
        // extent, then data: one zero call, then the data.
        let mut calls = Calls::default();
        let mut zd = ZeroDetect::new(&mut calls);
        zd.data(0, &vec![0u8; 40000]).expect("first piece");
        zd.data(40000, &vec![0u8; 25536]).expect("second piece");
        zd.zero(65536, 65536).expect("zero extent");
        zd.data(131072, &[5u8; 100]).expect("data");
        zd.zero(200000, 10).expect("separate zeros");
        zd.finish().expect("finish");
        assert_eq!(
            calls.0,
            vec![(0, 131072, false), (131072, 100, true), (200000, 10, false)]
        );
    }

    #[test]
    fn data_without_zeros_is_one_call() {
        let buf = vec![7u8; 3 * ZERO_GRANULE];
        let mut calls = Calls::default();
        ZeroDetect::new(&mut calls).data(512, &buf).expect("data");
        assert_eq!(calls.0, vec![(512, buf.len() as u64, true)]);
    }
}
