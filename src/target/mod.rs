//! The write side: an `O_DIRECT` block device or regular file, fed extents.
//!
//! [`Target`] is the [`ExtentSink`] at the end of the pipeline. It copies
//! data into a bounded pool of aligned buffers, coalesces contiguous extents
//! into large writes with a bounded number in flight, turns zero extents into
//! holes or device zeroing, and `fdatasync`s before reporting success.
//!
//! It is a thin composition of two parts, the way the read side is a source
//! and a sans-IO decoder:
//! - `plan/`: what to write, with no I/O. The virtual size and the size
//!   check ([`SinkError::TooLarge`]), the range check of every extent (so
//!   nothing is written outside `[0, virtual size)`), the target's length,
//!   the counts; and its assembler, which turns extents into actions (write
//!   a filled buffer, write a block, zero a range, read a block to merge
//!   into), holding runs, inline gaps, partial blocks and a zero run in
//!   between. Its tests run on byte vectors.
//! - `backend/`: how to write it. Opening the file or device (with
//!   `O_DIRECT` or the buffered fallback; the block-device ioctls), the
//!   buffer [`pool`] (the memory bound), the writer threads and the write
//!   depth, the device zeroing strategy, the buffered-mode pacing and the
//!   final sync. It is the one part that knows a file from a block device.
//!
//! [`Target`] itself adds what belongs to the sink's contract as a whole:
//! the failure latch, and the target's path in every error. `api` holds the
//! types both parts share with callers (options, kind, stats, errors), and
//! `wipe` the whole-range zero writes and edge wiping of the CDI pod mode.

mod api;
mod backend;
mod plan;
pub(crate) mod wipe;

use std::io;
use std::path::{Path, PathBuf};

use crate::format::{ExtentSink, SinkError};
use crate::pace::Pace;

pub use api::{
    Depth, TargetError, TargetKind, TargetOptions, WriteStats, DEFAULT_BUFFER_SIZE,
    DEFAULT_QUEUE_DEPTH, PACED_QUEUE_DEPTH,
};
pub use backend::device::size_of_path as block_device_size;
pub use backend::pool;
pub use wipe::{wipe_edges, write_zeros_direct};

use backend::Backend;
use plan::{Plan, Refused, Setup};

/// An open target: the sink in front of the plan and the back end.
pub struct Target {
    /// Named in every error.
    path: PathBuf,
    /// What to write: sizes, ranges, and the assembler.
    plan: Plan,
    /// Writes it.
    backend: Backend,
    /// Set by the first failed call; every later call and `finish` report it.
    /// Kept here rather than in the plan or the back end because failures of
    /// both, contract and I/O, must latch.
    failed: Option<String>,
}

impl Target {
    /// Opens (creating or truncating a regular file) the target.
    pub fn open(path: &Path, opts: &TargetOptions) -> Result<Self, TargetError> {
        let backend = Backend::open(path, opts.buffer_size, opts.depth)?;
        let align = backend.align();
        let kind = backend.kind();
        let plan = Plan::new(Setup {
            align,
            device_size: backend.device_size(),
            available: opts.available,
            resizable: kind == TargetKind::File,
            // A file truncated at open reads as holes; with `target_is_zero`
            // the device already reads as zeros.
            zero_ranges: kind == TargetKind::BlockDevice && !opts.target_is_zero,
            // The partial-block budget: one buffer's worth of blocks, within sane bounds.
            partial_blocks: (backend.buffer_size() / align).clamp(16, 4096),
        });
        Ok(Target {
            path: path.to_path_buf(),
            plan,
            backend,
            failed: None,
        })
    }

    /// Writes that may be in flight now (the pool's limit less the buffer
    /// being filled).
    pub fn write_depth(&self) -> usize {
        self.backend.depth()
    }

    /// Block device or file.
    pub fn kind(&self) -> TargetKind {
        self.backend.kind()
    }

    /// The alignment of every write (logical block size; at least 4096 for files).
    pub fn alignment(&self) -> usize {
        self.backend.align()
    }

    /// False when the target refused `O_DIRECT`.
    pub fn direct_io(&self) -> bool {
        self.backend.direct()
    }

    /// A block device's size in bytes.
    pub fn device_size(&self) -> Option<u64> {
        self.backend.device_size()
    }

    /// Lowers the write depth once `pace` says the input side sets the pace.
    pub fn follow(&mut self, pace: Pace) {
        self.backend.follow(pace);
    }

    /// Flushes everything and `fdatasync`s. Success means every byte is stable.
    pub fn finish(mut self) -> Result<WriteStats, TargetError> {
        let result = self.finish_inner();
        result.map_err(|source| TargetError::Io {
            context: format!("writing {}", self.path.display()),
            source,
        })
    }

    fn finish_inner(&mut self) -> io::Result<WriteStats> {
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("an earlier write failed: {msg}")));
        }
        let flushed = self.plan.finish(&mut self.backend);
        // Join the writers even after a flush error, and prefer their error:
        // it is the earlier one.
        self.backend.shutdown()?;
        self.backend.sync(flushed?)?;
        Ok(WriteStats {
            direct_io: self.backend.direct(),
            ..self.plan.stats()
        })
    }

    fn check_failed(&self) -> Result<(), SinkError> {
        match &self.failed {
            Some(msg) => Err(SinkError::Failed(msg.clone())),
            None => Ok(()),
        }
    }

    /// Records the first failure so nothing after it can report success.
    fn fail(&mut self, err: SinkError) -> SinkError {
        if self.failed.is_none() {
            self.failed = Some(crate::error_chain(&err));
        }
        err
    }

    /// Latches a refused extent, naming the target in an I/O error.
    fn refused(&mut self, r: Refused) -> SinkError {
        let e = match r {
            Refused::Contract(e) => e,
            Refused::Io(e) => SinkError::io(format!("writing {}", self.path.display()), e),
        };
        self.fail(e)
    }
}

impl ExtentSink for Target {
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.check_failed()?;
        let resize = match self.plan.set_virtual_size(size) {
            Ok(resize) => resize,
            Err(e) => return Err(self.fail(e)),
        };
        if let Some(len) = resize {
            if let Err(e) = self.backend.set_len(len) {
                let e = SinkError::io(format!("resizing {}", self.path.display()), e);
                return Err(self.fail(e));
            }
        }
        Ok(())
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.check_failed()?;
        self.backend.follow_pace();
        self.plan
            .data(guest_offset, data, &mut self.backend)
            .map_err(|r| self.refused(r))
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError> {
        self.check_failed()?;
        self.plan
            .zero(guest_offset, len, &mut self.backend)
            .map_err(|r| self.refused(r))
    }
}

#[cfg(test)]
mod tests;
