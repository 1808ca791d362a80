//! The write plan: the sink's contract on the write side, with no I/O.
//!
//! [`Plan`] decides everything about an import's writes that does not need
//! the kernel: how large the target may be, which byte ranges an extent may
//! touch, what the target's length must be, and, through its
//! [`Assembler`], which aligned writes and zero operations carry the
//! extents out (with [`partial`], its cache of blocks filled piece by
//! piece). The only way out is a [`Device`], so the whole plan runs against
//! a byte vector (`memory`) in its tests as it runs against the back end.
//!
//! The invariant it keeps: nothing is written outside `[0, virtual size)`.
//! Every extent is checked against the virtual size (or, before it is
//! known, the end of the block device) before the assembler sees it; the
//! only bytes past it are those that share the image's last block, which
//! on a block device are merged with what it holds and on a file are cut
//! off by its final length.

use std::io;

mod assemble;
#[cfg(test)]
mod memory;
pub(crate) mod partial;

pub(crate) use assemble::{Action, Device};

use super::api::WriteStats;
use crate::format::SinkError;
use assemble::{Assembler, Geometry};

/// What the plan must know about the target when it is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Every write starts and ends on a multiple of this.
    pub align: usize,
    /// A block device's size: the writable range until the virtual size is
    /// known, and a bound on it.
    pub device_size: Option<u64>,
    /// A further bound on the virtual size (`TargetOptions::available`).
    pub available: Option<u64>,
    /// The target's length follows the image (a regular file): it becomes
    /// the virtual size as soon as that is known, and stays so at the end.
    pub resizable: bool,
    /// Aligned zero ranges must be zeroed; false when the target reads as
    /// zeros there anyway (a file truncated at open, `target_is_zero`).
    pub zero_ranges: bool,
    /// Blocks the assembler may hold partly filled (its memory bound).
    pub partial_blocks: usize,
}

/// Why an extent was not taken.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The extent breaks the sink's contract (out of range); no action was
    /// asked of the device.
    Contract(SinkError),
    /// The device failed to carry out an action.
    Io(io::Error),
}

/// The planning state of one import: sizes, ranges, counts, and the
/// assembler holding what is not written yet.
pub(crate) struct Plan {
    /// Extents in, actions out.
    assembler: Assembler,
    /// `Setup::device_size`.
    device_size: Option<u64>,
    /// The most the virtual size may be (the device and `available`).
    capacity: Option<u64>,
    /// `Setup::resizable`.
    resizable: bool,
    vsize: Option<u64>,
    /// An extent has been received (the virtual size can no longer change).
    started: bool,
    /// End of the highest byte covered by any extent (the length of a file
    /// whose virtual size was never told).
    high_water: u64,
    /// Bytes received as data extents.
    bytes_written: u64,
    /// Bytes received as zero extents.
    bytes_zeroed: u64,
}

impl Plan {
    /// A plan with nothing received yet.
    pub(crate) fn new(setup: Setup) -> Self {
        let capacity = match (setup.device_size, setup.available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Plan {
            assembler: Assembler::new(Geometry {
                align: setup.align,
                // Partial blocks are rounded out to whole blocks, so the
                // assembler's bound is the device's end, not the image's.
                limit: setup.device_size.unwrap_or(u64::MAX),
                zero_ranges: setup.zero_ranges,
                partial_blocks: setup.partial_blocks,
            }),
            device_size: setup.device_size,
            capacity,
            resizable: setup.resizable,
            vsize: None,
            started: false,
            high_water: 0,
            bytes_written: 0,
            bytes_zeroed: 0,
        }
    }

    /// Takes the image's virtual size. Returns the length the target must be
    /// given now (a file's), if any.
    pub(crate) fn set_virtual_size(&mut self, size: u64) -> Result<Option<u64>, SinkError> {
        if self.started || self.vsize.is_some_and(|v| v != size) {
            return Err(SinkError::LateSize(size));
        }
        if let Some(available) = self.capacity {
            if size > available {
                return Err(SinkError::TooLarge { size, available });
            }
        }
        self.vsize = Some(size);
        Ok(self.resizable.then_some(size))
    }

    /// `data` belongs at `offset`.
    pub(crate) fn data<D: Device>(
        &mut self,
        offset: u64,
        data: &[u8],
        dev: &mut D,
    ) -> Result<(), Refused> {
        let len = data.len() as u64;
        if !self.receive(offset, len)? {
            return Ok(());
        }
        self.bytes_written = self.bytes_written.saturating_add(len);
        self.assembler.data(offset, data, dev).map_err(Refused::Io)
    }

    /// `[offset, offset + len)` reads as zeros.
    pub(crate) fn zero<D: Device>(
        &mut self,
        offset: u64,
        len: u64,
        dev: &mut D,
    ) -> Result<(), Refused> {
        if !self.receive(offset, len)? {
            return Ok(());
        }
        self.bytes_zeroed = self.bytes_zeroed.saturating_add(len);
        self.assembler.zero(offset, len, dev).map_err(Refused::Io)
    }

    /// Hands everything still held to the device. Returns the length the
    /// target must end with (a file's: the virtual size, or the end of the
    /// last extent when it was never told), if any.
    pub(crate) fn finish<D: Device>(&mut self, dev: &mut D) -> io::Result<Option<u64>> {
        self.assembler.finish(dev)?;
        Ok(self
            .resizable
            .then(|| self.vsize.unwrap_or(self.high_water)))
    }

    /// What was received, and how many partial blocks were merged with the
    /// target's contents (`direct_io` is the back end's to tell).
    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            bytes_written: self.bytes_written,
            bytes_zeroed: self.bytes_zeroed,
            direct_io: false,
            partial_merges: self.assembler.merges(),
        }
    }

    /// Checks `[offset, offset + len)` and notes it; false when it is empty
    /// (nothing to do).
    fn receive(&mut self, offset: u64, len: u64) -> Result<bool, Refused> {
        let end = self.check_range(offset, len).map_err(Refused::Contract)?;
        if len == 0 {
            return Ok(false);
        }
        self.started = true;
        self.high_water = self.high_water.max(end);
        Ok(true)
    }

    /// The end of the writable range: the virtual size, else a block device's
    /// end, else unbounded (a raw file of unknown length).
    fn limit(&self) -> u64 {
        self.vsize.or(self.device_size).unwrap_or(u64::MAX)
    }

    /// Checks that `[offset, offset+len)` lies inside the writable range, and
    /// returns its end.
    fn check_range(&self, offset: u64, len: u64) -> Result<u64, SinkError> {
        let limit = self.limit();
        match offset.checked_add(len) {
            Some(end) if end <= limit => Ok(end),
            end => Err(SinkError::OutOfRange {
                start: offset,
                end: end.unwrap_or(u64::MAX),
                limit,
                what: if self.vsize.is_some() {
                    "the virtual size"
                } else {
                    "the end of the block device"
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests;
