//! The write side: an `O_DIRECT` block device or regular file, fed extents.
//!
//! [`Target`] is the [`ExtentSink`] at the end of the pipeline. It copies
//! data into a bounded pool of aligned buffers, coalesces contiguous extents
//! into large writes with a bounded number in flight, turns zero extents into
//! holes or device zeroing, and `fdatasync`s before reporting success.
//!
//! Three layers, like the read side's source, decoder and sink:
//! - [`Target`] (this module): the sink's contract. Range checks against the
//!   virtual size or the device, the size check ([`SinkError::TooLarge`]),
//!   the failure latch, statistics, and following the [`Pace`]; then it
//!   forwards each extent to the assembler with the back end as its device.
//! - `assemble`: the sans-IO assembler. Extents in, actions out (write a
//!   filled buffer, write a block, zero a range, read a block to merge
//!   into), with the runs, the inline gaps, the partial blocks and the zero
//!   run it holds in between. No system calls, so its tests run on byte
//!   vectors. [`partial`] is its cache of blocks filled piece by piece.
//! - `backend`: the I/O back end carrying the actions out. It owns the
//!   file, the buffer [`pool`] (the memory bound), the [`writer`] threads,
//!   the device [`zeroing`] strategy, the buffered-mode [`pacing`] and the
//!   final sync.
//!
//! And around them: [`device`] (block-device ioctls), [`mod@file`] (opening
//! with `O_DIRECT` or the buffered fallback, and the alignment) and [`wipe`]
//! (whole-range zero writes and edge wiping for the CDI pod mode).

mod assemble;
mod backend;
// The block-device ioctls have no safe wrapper.
#[allow(unsafe_code)]
pub(crate) mod device;
// `statx` by raw system call (see `file_alignment`).
#[allow(unsafe_code)]
pub(crate) mod file;
// `sync_file_range`, which nix does not wrap.
#[allow(unsafe_code)]
pub(crate) mod pacing;
pub(crate) mod partial;
pub mod pool;
pub(crate) mod wipe;
pub(crate) mod writer;
pub(crate) mod zeroing;

use std::io;
use std::path::{Path, PathBuf};

use crate::format::{ExtentSink, SinkError};
use crate::pace::Pace;

pub use device::size_of_path as block_device_size;
pub use wipe::{wipe_edges, write_zeros_direct};

use assemble::{Assembler, Geometry};
use backend::Backend;

/// Default size of each aligned write buffer: from 1 MiB up, buffer sizes
/// measure the same, and 1 MiB keeps the pool small (BENCHMARKS.md, "Tuning").
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;

/// Writes in flight by default: the end-to-end import wants about 8 MiB in
/// flight to ride out the bursts of one network stream and of the device
/// (BENCHMARKS.md, "Tuning"). It costs memory only when writes set the
/// pace: the pool allocates lazily and reuses the last buffer returned.
pub const DEFAULT_QUEUE_DEPTH: usize = 8;

/// Writes in flight once the input side sets the pace or smooths it itself
/// (see [`Pace`]): decompression leaves the writer waiting anyway and its
/// workers want the memory; a segmented download delivers evenly and its
/// read-ahead wants the memory (BENCHMARKS.md, "Tuning").
pub const PACED_QUEUE_DEPTH: usize = 4;

/// How many writes may be in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Depth {
    /// [`DEFAULT_QUEUE_DEPTH`], lowered to [`PACED_QUEUE_DEPTH`] once the
    /// input side sets the pace.
    #[default]
    Auto,
    /// Exactly this many, throughout.
    Fixed(usize),
}

/// Writer settings: the memory budget of the write side.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The target already reads as zeros: skip zero extents entirely.
    pub target_is_zero: bool,
    /// Size of each aligned write buffer.
    pub buffer_size: usize,
    /// Writes in flight (and buffers in the pool beyond the one being filled).
    pub depth: Depth,
    /// Refuse images larger than this (bytes), in addition to a block device's size.
    pub available: Option<u64>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            target_is_zero: false,
            buffer_size: DEFAULT_BUFFER_SIZE,
            depth: Depth::Auto,
            available: None,
        }
    }
}

/// What kind of target was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A block device.
    BlockDevice,
    /// A regular file.
    File,
}

/// What the writer did, for logs and reports.
#[derive(Debug, Clone, Default)]
pub struct WriteStats {
    /// Bytes received as data extents.
    pub bytes_written: u64,
    /// Bytes received as zero extents.
    pub bytes_zeroed: u64,
    /// False when the target refused `O_DIRECT` and buffered writes were used.
    pub direct_io: bool,
    /// Partial blocks merged with the target's contents (read-modify-write).
    pub partial_merges: u64,
}

/// Target-side failures outside the sink calls (opening, finishing, wiping).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The image does not fit.
    #[error(
        "the image's virtual size ({size} bytes) is larger than the target ({available} bytes)"
    )]
    TooLarge {
        /// The size asked for.
        size: u64,
        /// What the target holds.
        available: u64,
    },
    /// A system call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// The largest and smallest buffer sizes accepted; outside this range the
/// value is clamped (tiny buffers make syscalls dominate, huge ones break the
/// memory budget).
const MIN_BUFFER: usize = 64 << 10;
const MAX_BUFFER: usize = 64 << 20;
const MAX_QUEUE_DEPTH: usize = 64;

/// An open target: the sink in front of the assembler and the back end.
pub struct Target {
    path: PathBuf,
    /// Extents in, actions out.
    assembler: Assembler,
    /// Carries the actions out.
    backend: Backend,
    /// `TargetOptions::available`.
    available: Option<u64>,
    vsize: Option<u64>,
    /// An extent has been received (the virtual size can no longer change).
    started: bool,
    /// End of the highest byte covered by any extent (sizes files of unknown length).
    high_water: u64,
    /// The depth to lower to once the input side sets the pace, until used.
    paced_depth: Option<usize>,
    /// Followed to lower the write depth (see [`Target::follow`]).
    pace: Option<Pace>,
    stats: WriteStats,
    /// Set by the first failed call; every later call and `finish` report it.
    /// Kept here rather than in the back end because range and size errors,
    /// which no system call sees, must latch too.
    failed: Option<String>,
}

impl Target {
    /// Opens (creating or truncating a regular file) the target.
    pub fn open(path: &Path, opts: &TargetOptions) -> Result<Self, TargetError> {
        let ctx = |what: &str, source: io::Error| TargetError::Io {
            context: format!("{what} {}", path.display()),
            source,
        };
        let opened = file::open(path, file::FileMode::Replace).map_err(|e| ctx("opening", e))?;
        if !opened.direct {
            tracing::warn!(
                path = %path.display(),
                "the target does not support O_DIRECT; using buffered writes with periodic writeback to bound the page cache"
            );
        }
        let align = opened.align;
        let buffer_size = round_up_usize(opts.buffer_size.clamp(MIN_BUFFER, MAX_BUFFER), align);
        let (depth, paced_depth) = match opts.depth {
            Depth::Auto => (DEFAULT_QUEUE_DEPTH, Some(PACED_QUEUE_DEPTH)),
            Depth::Fixed(n) => (n.clamp(1, MAX_QUEUE_DEPTH), None),
        };
        let geometry = Geometry {
            align,
            limit: opened.device_size.unwrap_or(u64::MAX),
            // A file truncated at open reads as holes; with `target_is_zero`
            // the device already reads as zeros.
            zero_ranges: opened.kind == TargetKind::BlockDevice && !opts.target_is_zero,
            // The partial-block budget: one buffer's worth of blocks, within sane bounds.
            partial_blocks: (buffer_size / align).clamp(16, 4096),
        };
        let backend = Backend::new(opened, buffer_size, depth)
            .map_err(|e| ctx("starting writer threads for", e))?;
        Ok(Target {
            path: path.to_path_buf(),
            assembler: Assembler::new(geometry),
            stats: WriteStats {
                direct_io: backend.direct(),
                ..WriteStats::default()
            },
            backend,
            available: opts.available,
            vsize: None,
            started: false,
            high_water: 0,
            paced_depth,
            pace: None,
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
        let flushed = self.assembler.finish(&mut self.backend);
        // Join the writers even after a flush error, and prefer their error:
        // it is the earlier one.
        self.backend.shutdown()?;
        flushed?;
        self.backend.sync(self.vsize.unwrap_or(self.high_water))?;
        self.stats.partial_merges = self.assembler.merges();
        Ok(self.stats.clone())
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

    /// Names the target in a write-side error.
    fn io_error(&self, e: io::Error) -> SinkError {
        SinkError::io(format!("writing {}", self.path.display()), e)
    }

    /// Once the input side sets the pace, keep fewer writes in flight
    /// (see [`Pace`]); checked on every data extent, one atomic load.
    fn follow_pace(&mut self) {
        if self.paced_depth.is_some() && self.pace.as_ref().is_some_and(Pace::input_paced) {
            if let Some(depth) = self.paced_depth.take() {
                tracing::debug!(
                    depth,
                    "the input side sets the pace: fewer writes in flight, memory left to the input"
                );
                self.backend.lower_depth(depth);
            }
        }
    }

    /// Lowers the write depth once `pace` says the input side sets the pace.
    pub fn follow(&mut self, pace: Pace) {
        self.pace = Some(pace);
    }

    /// The end of the writable range: the virtual size, else a block device's
    /// end, else unbounded (a raw file of unknown length).
    fn limit(&self) -> u64 {
        self.vsize
            .or(self.backend.device_size())
            .unwrap_or(u64::MAX)
    }

    /// Checks that `[offset, offset+len)` lies inside the writable range.
    fn check_range(&self, offset: u64, len: u64) -> Result<(), SinkError> {
        let limit = self.limit();
        match offset.checked_add(len) {
            Some(end) if end <= limit => Ok(()),
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

    /// Notes a non-empty, in-range extent ending at `end`.
    fn received(&mut self, end: u64) {
        self.started = true;
        self.high_water = self.high_water.max(end);
    }
}

impl ExtentSink for Target {
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
        self.check_failed()?;
        if self.started || self.vsize.is_some_and(|v| v != size) {
            return Err(self.fail(SinkError::LateSize(size)));
        }
        let available = match (self.backend.device_size(), self.available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(available) = available {
            if size > available {
                return Err(self.fail(SinkError::TooLarge { size, available }));
            }
        }
        if self.backend.kind() == TargetKind::File {
            if let Err(e) = self.backend.set_len(size) {
                let e = SinkError::io(format!("resizing {}", self.path.display()), e);
                return Err(self.fail(e));
            }
        }
        self.vsize = Some(size);
        Ok(())
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        self.check_failed()?;
        self.follow_pace();
        let len = data.len() as u64;
        if let Err(e) = self.check_range(guest_offset, len) {
            return Err(self.fail(e));
        }
        if len == 0 {
            return Ok(());
        }
        self.received(guest_offset + len);
        self.stats.bytes_written = self.stats.bytes_written.saturating_add(len);
        match self.assembler.data(guest_offset, data, &mut self.backend) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.io_error(e);
                Err(self.fail(e))
            }
        }
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError> {
        self.check_failed()?;
        if let Err(e) = self.check_range(guest_offset, len) {
            return Err(self.fail(e));
        }
        if len == 0 {
            return Ok(());
        }
        self.received(guest_offset + len);
        self.stats.bytes_zeroed = self.stats.bytes_zeroed.saturating_add(len);
        match self.assembler.zero(guest_offset, len, &mut self.backend) {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = self.io_error(e);
                Err(self.fail(e))
            }
        }
    }
}

fn round_up_usize(n: usize, align: usize) -> usize {
    n.div_ceil(align).saturating_mul(align)
}

#[cfg(test)]
mod tests;
