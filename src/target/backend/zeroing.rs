//! The block-device zeroing strategy.
//!
//! A sparse image reports zeros cluster by cluster (16 million calls for a
//! 1 TiB qcow2 with 64 KiB clusters). The assembler joins contiguous ranges
//! in a [`crate::io::ZeroRun`], so that the back end gets one range per run
//! of zeros; this module picks how each such range is zeroed (punching a
//! hole, `BLKZEROOUT`, or writing zeros) and remembers what the device
//! accepts, which is what makes zero handling cost nothing on sparse images.

use std::fs::File;
use std::io;

use super::device;
use super::writer::DeviceZero;

/// How a block device gets zeroed, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`: zeroes and deallocates. Must come first:
    /// on a loop device it punches holes in the backing file.
    Punch,
    /// `BLKZEROOUT`: zeroes, possibly by writing (allocates on loop devices).
    ZeroOut,
    /// Plain writes of zero buffers.
    Write,
}

/// Remembers which zeroing method the device accepts, so a method that failed
/// once is never retried on every range.
///
/// The first range is zeroed synchronously, on the caller's thread, because
/// its outcome picks the method. Once a method has worked, later ranges are
/// queued to the writer threads like data writes: a punch on a loop device
/// costs a few milliseconds in the backing filesystem, and issued inline it
/// stalled the decoder (and with it the download) on every zero run
/// (BENCHMARKS.md, "Tuning").
#[derive(Debug)]
pub(crate) struct DeviceZeroer {
    method: Method,
    /// `method` has succeeded once on this device.
    proven: bool,
}

impl Default for DeviceZeroer {
    fn default() -> Self {
        DeviceZeroer {
            method: Method::Punch,
            proven: false,
        }
    }
}

impl DeviceZeroer {
    /// The method that will be tried next.
    #[cfg(test)]
    pub(crate) fn method(&self) -> Method {
        self.method
    }

    /// Zeroes `[start, end)` of the device open as `file`. `queue` hands a
    /// range to the caller's write pipeline: with `Some(method)` for a device
    /// zeroing call already proven on this device, with `None` for the last
    /// resort, writing zero buffers.
    pub(crate) fn zero(
        &mut self,
        file: &File,
        start: u64,
        end: u64,
        queue: &mut dyn FnMut(u64, u64, Option<DeviceZero>) -> io::Result<()>,
    ) -> io::Result<()> {
        let len = end.saturating_sub(start);
        if len == 0 {
            return Ok(());
        }
        if self.proven {
            let call = match self.method {
                Method::Punch => Some(DeviceZero::Punch),
                Method::ZeroOut => Some(DeviceZero::ZeroOut),
                Method::Write => None,
            };
            return queue(start, end, call);
        }
        if self.method == Method::Punch {
            match device::punch(file, start, len) {
                Ok(()) => {
                    self.proven = true;
                    return Ok(());
                }
                Err(e) if device::is_unsupported(&e) => {
                    tracing::debug!(error = %e, "punching holes is not supported; trying BLKZEROOUT");
                    self.method = Method::ZeroOut;
                }
                Err(e) => return Err(e),
            }
        }
        if self.method == Method::ZeroOut {
            match device::zeroout(file, start, len) {
                Ok(()) => {
                    self.proven = true;
                    return Ok(());
                }
                Err(e) if device::is_unsupported(&e) => {
                    tracing::debug!(error = %e, "BLKZEROOUT is not supported; writing zeros");
                    self.method = Method::Write;
                }
                Err(e) => return Err(e),
            }
        }
        self.proven = true;
        queue(start, end, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_back_to_writing_and_remembers() {
        // /dev/null supports neither fallocate nor BLKZEROOUT.
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let mut z = DeviceZeroer::default();
        let mut calls = Vec::new();
        for (s, e) in [(0u64, 4096u64), (8192, 12288)] {
            z.zero(&null, s, e, &mut |a, b, call| {
                assert_eq!(call, None, "nothing but writing works on /dev/null");
                calls.push((a, b));
                Ok(())
            })
            .expect("falls back");
            assert_eq!(z.method(), Method::Write);
        }
        assert_eq!(calls, vec![(0, 4096), (8192, 12288)]);
    }

    #[test]
    fn first_range_probes_then_later_ranges_are_queued() {
        // A regular file on the test filesystem accepts punching, as a loop
        // device does: the first range is punched inline, the next are queued.
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 16384]).expect("write");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        let mut z = DeviceZeroer::default();
        let mut queued = Vec::new();
        z.zero(&f, 0, 4096, &mut |a, b, call| {
            queued.push((a, b, call));
            Ok(())
        })
        .expect("first range");
        if queued.is_empty() {
            // The filesystem punched: the first range was zeroed inline.
            assert_eq!(&std::fs::read(&p).expect("read")[..4096], &[0u8; 4096][..]);
            z.zero(&f, 8192, 12288, &mut |a, b, call| {
                queued.push((a, b, call));
                Ok(())
            })
            .expect("second range");
            assert_eq!(queued, vec![(8192, 12288, Some(DeviceZero::Punch))]);
            let data = std::fs::read(&p).expect("read");
            assert!(
                data[8192..12288].iter().all(|&b| b == 7),
                "queued, not done inline"
            );
        } else {
            // A filesystem without hole punching: regular files refuse
            // BLKZEROOUT too, so writing is the method from the start.
            assert_eq!(queued, vec![(0, 4096, None)]);
        }
    }

    #[test]
    fn real_errors_are_reported_not_downgraded() {
        // A read-only fd makes fallocate fail with EBADF: an error, not "unsupported".
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, [1u8; 8192]).expect("write");
        let ro = File::open(&p).expect("open");
        let mut z = DeviceZeroer::default();
        let err = z
            .zero(&ro, 0, 4096, &mut |_, _, _| Ok(()))
            .expect_err("EBADF is not 'unsupported'");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(z.method(), Method::Punch);
    }
}
