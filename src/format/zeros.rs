//! A sink adapter that turns all-zero stretches of data extents into zero extents.
//!
//! qcow2 images often store clusters that hold nothing but zeros (a guest
//! wrote zeros; a converter copied them verbatim). Writing them costs as much
//! device bandwidth as real data, while a zero extent costs a hole punch (or
//! nothing on a fresh file). qemu-img detects such sectors for the same
//! reason. The raw decoder does its own detection as it reads; qcow2 output
//! passes through this adapter.

use std::io;

use super::raw::{is_zero, ZERO_GRANULE};
use super::ExtentSink;

/// Forwards to `inner`, splitting data extents at guest offsets that are
/// multiples of [`ZERO_GRANULE`] and reporting all-zero pieces as zeros.
/// Contiguous pieces of the same kind are forwarded as one call, so an extent
/// without zeros costs one scan and one call.
pub struct ZeroDetect<'a> {
    inner: &'a mut dyn ExtentSink,
}

impl<'a> ZeroDetect<'a> {
    pub fn new(inner: &'a mut dyn ExtentSink) -> Self {
        ZeroDetect { inner }
    }
}

impl ExtentSink for ZeroDetect<'_> {
    fn set_virtual_size(&mut self, size: u64) -> io::Result<()> {
        self.inner.set_virtual_size(size)
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> io::Result<()> {
        self.inner.zero(guest_offset, len)
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> io::Result<()> {
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
    fn flush(&mut self, base: u64, piece: &[u8], at: usize, zero: bool) -> io::Result<()> {
        let off = base + at as u64;
        if zero {
            self.inner.zero(off, piece.len() as u64)
        } else {
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
        fn set_virtual_size(&mut self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn data(&mut self, off: u64, d: &[u8]) -> io::Result<()> {
            self.0.push((off, d.len() as u64, true));
            Ok(())
        }
        fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
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
        ZeroDetect::new(&mut calls)
            .data(g as u64 / 2, &buf)
            .expect("data");
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
    fn data_without_zeros_is_one_call() {
        let buf = vec![7u8; 3 * ZERO_GRANULE];
        let mut calls = Calls::default();
        ZeroDetect::new(&mut calls).data(512, &buf).expect("data");
        assert_eq!(calls.0, vec![(512, buf.len() as u64, true)]);
    }
}
