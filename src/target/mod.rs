//! The write side: an `O_DIRECT` block device or regular file, fed extents.
//!
//! The target is the [`ExtentSink`] at the end of the pipeline. It copies data
//! into a fixed pool of aligned buffers, coalesces contiguous extents into large
//! writes with a bounded number in flight, turns zero extents into holes or
//! device zeroing, and `fdatasync`s before reporting success.
//!
//! Modules, one concern each:
//! - [`pool`]: aligned buffers and the fixed pool (the memory bound);
//! - [`device`]: block-device ioctls (size, logical block size, zeroing);
//! - [`mod@file`]: opening with `O_DIRECT` (or the buffered fallback) and alignment;
//! - [`zeroing`]: coalescing zero ranges and the device zeroing strategy;
//! - [`writer`]: the threads that keep several `pwrite`s in flight;
//! - [`partial`]: blocks filled piece by piece (unaligned extents);
//! - [`pacing`]: bounded dirty page cache for buffered writes;
//! - `assemble`: how extents become runs, partial blocks and zero ranges;
//! - [`wipe`]: whole-range zero writes and edge wiping for the CDI pod mode.

mod assemble;
pub mod device;
pub mod file;
pub mod pacing;
pub mod partial;
pub mod pool;
pub mod wipe;
pub mod writer;
pub mod zeroing;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::ExtentSink;

pub use device::size_of_path as block_device_size;
pub use wipe::{wipe_edges, write_zeros_direct};

use partial::PartialCache;
use pool::{AlignedBuf, BufferPool};
use writer::WritePipeline;
use zeroing::{DeviceZeroer, ZeroCoalescer};

/// Default size of each aligned write buffer.
///
/// Chosen by measurement (issue 7, part 3), together with
/// [`DEFAULT_QUEUE_DEPTH`]. Command (release build, root, a preallocated
/// 256 MiB backing file on the machine's virtio disk):
///
/// ```text
/// fallocate -l 256M /tmp/sdtune/backing.img
/// LO=$(losetup -f --show --direct-io=on /tmp/sdtune/backing.img)
/// STREAMDISK_TUNE=$LO STREAMDISK_TUNE_MIB=256 cargo bench --bench writer
/// STREAMDISK_TUNE=/tmp/sdtune/file.img STREAMDISK_TUNE_MIB=256 cargo bench --bench writer
/// losetup -d $LO
/// ```
///
/// 256 MiB of random data in 64 KiB extents per run, fdatasync included,
/// 3 rounds interleaved; median MiB/s (the 2-core machine was shared with
/// other builds, load average 14-18, so min-max spreads reached 2-4x):
///
/// ```text
/// buffer  depth | loop device | file (ext4)
/// 256K    1     |   307       |   420
/// 256K    4     |   928       |   249
/// 1M      1     |   408       |   679
/// 1M      2     |   755       |   681
/// 1M      4     |   817       |   725
/// 1M      8     |  1139       |   488
/// 2M      2     |   573       |  1080
/// 2M      4     |   668       |   803
/// 4M      2     |  1036       |   672
/// 4M      4     |   984       |   793
/// ```
///
/// Depth 1 is clearly slower (one write at a time leaves the device idle);
/// from 1 MiB x 4 upward the differences are within the noise. 1 MiB x 4
/// costs 5 MiB of pool (4 in flight + 1 filling), against 10-20 MiB for the
/// larger buffers, out of a 24 MiB budget for the whole process (but see
/// [`DEFAULT_QUEUE_DEPTH`]: the end-to-end import wants 8 in flight). For
/// reference, `dd bs=4M oflag=direct conv=fdatasync` of the same 256 MiB
/// reached 250-370 MB/s on the loop device and 120-250 MB/s on the file in
/// the same session: a single write in flight.
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;

/// Default number of writes in flight.
///
/// The micro benchmark above (one writer feeding 64 KiB extents of a
/// 256 MiB file) could not tell 4 from 8. The end-to-end import can: the
/// mixed 8 GiB benchmark image over loopback HTTP into a loop device, with
/// page cache dropped before each command, took 3.99-4.07 s with 4 writes in
/// flight and 3.16-3.72 s with 8 (qemu-img's local conversion: 3.07-3.39 s in
/// the same rounds; 2026-11-28). What counts is bytes in flight, not the
/// number of writes: 8 x 512 KiB (3.93-4.06 s) and 16 x 256 KiB (4.07-4.34 s)
/// were no better than 4 x 1 MiB. The network stream delivers in bursts and
/// the loop device completes in bursts; 8 MiB in flight rides out both.
///
/// It costs memory only when writes set the pace: the pool allocates lazily
/// and reuses the last buffer returned (see `pool`), and once the input side
/// sets the pace the pool shrinks to [`PACED_QUEUE_DEPTH`].
pub const DEFAULT_QUEUE_DEPTH: usize = 8;

/// Writes in flight once the input side sets the pace or smooths it itself
/// (see [`crate::format::ExtentSink::input_paced`]).
///
/// - Decompression (compressed qcow2 clusters, gzip/xz/zstd wrappers): the
///   writer waits for data anyway, and the 4 MiB given back pays for the
///   inflate workers' buffers within the 24 MiB budget. The zlib Debian
///   rootfs image peaked at 26 MiB with 8 writes in flight against 22-23 MiB
///   with 4, at the same speed (1.79-2.12 s against 1.94-1.95 s).
/// - A segmented HTTP download: two connections deliver evenly instead of
///   in the bursts that 8 writes in flight absorb for one stream, and the
///   memory pays for the segment read ahead. On the mixed benchmark image,
///   4 writes took 3.35-3.46 s, 6 took 3.28-3.43 s and 8 took 3.52-4.01 s
///   (one stream with 8: 4.05-4.10 s, qemu-img local 3.19-3.46 s).
pub const PACED_QUEUE_DEPTH: usize = 4;

/// Writer settings: the memory budget of the write side.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The target already reads as zeros: skip zero extents entirely.
    pub target_is_zero: bool,
    /// Size of each aligned write buffer.
    pub buffer_size: usize,
    /// Writes in flight (and buffers in the pool beyond the one being filled).
    pub queue_depth: usize,
    /// Writes in flight once the input side sets the pace (see
    /// [`ExtentSink::input_paced`]); `None` keeps `queue_depth` throughout.
    pub paced_depth: Option<usize>,
    /// Refuse images larger than this (bytes), in addition to a block device's size.
    pub available: Option<u64>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            target_is_zero: false,
            buffer_size: DEFAULT_BUFFER_SIZE,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            paced_depth: Some(PACED_QUEUE_DEPTH),
            available: None,
        }
    }
}

/// What kind of target was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
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

/// Target-side failures.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("virtual image size {size} is larger than the reported available storage {available}. A larger PVC is required")]
    TooLarge { size: u64, available: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl TargetError {
    /// Recovers a `TargetError` carried inside an `io::Error` (the
    /// [`ExtentSink`] methods return `io::Result`, so a too-large refusal from
    /// `set_virtual_size` travels wrapped; callers unwrap it with this).
    pub fn from_io(err: &io::Error) -> Option<&TargetError> {
        err.get_ref().and_then(|e| e.downcast_ref::<TargetError>())
    }
}

/// The largest and smallest buffer sizes accepted; outside this range the
/// value is clamped (tiny buffers make syscalls dominate, huge ones break the
/// memory budget).
const MIN_BUFFER: usize = 64 << 10;
const MAX_BUFFER: usize = 64 << 20;
const MAX_QUEUE_DEPTH: usize = 64;

/// In buffered mode, force writeback and drop pages after this many bytes.
const PACING_INTERVAL: u64 = 16 << 20;

/// An open target.
pub struct Target {
    path: PathBuf,
    file: Arc<File>,
    kind: TargetKind,
    align: usize,
    direct: bool,
    device_size: Option<u64>,
    /// `TargetOptions::available`.
    available: Option<u64>,
    vsize: Option<u64>,
    /// An extent has been received (the virtual size can no longer change).
    started: bool,
    /// End of the highest byte covered by any extent (sizes files of unknown length).
    high_water: u64,
    pool: BufferPool,
    /// `TargetOptions::paced_depth`, until used.
    paced_depth: Option<usize>,
    writers: Option<WritePipeline>,
    run: Option<assemble::Run>,
    /// Zero bytes reported right after the current run, not yet placed.
    gap: u64,
    cache: PartialCache,
    /// One aligned block for read-modify-write.
    scratch: AlignedBuf,
    zero_ranges: ZeroCoalescer,
    /// `None` when zero ranges need no action (files, `target_is_zero`).
    zeroer: Option<DeviceZeroer>,
    pacer: Option<pacing::Pacer>,
    stats: WriteStats,
    /// Set by the first failed call; every later call and `finish` report it.
    failed: Option<(io::ErrorKind, String)>,
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
        let depth = opts.queue_depth.clamp(1, MAX_QUEUE_DEPTH);
        let file = Arc::new(opened.file);
        let pool = BufferPool::new(depth + 1, buffer_size, align);
        let writers = WritePipeline::new(
            Arc::clone(&file),
            depth,
            pool.returner(),
            buffer_size,
            align,
        )
        .map_err(|e| ctx("starting writer threads for", e))?;
        // The partial-block budget: one buffer's worth of blocks, within sane bounds.
        let partial_blocks = (buffer_size / align).clamp(16, 4096);
        let zeroer = (opened.kind == TargetKind::BlockDevice && !opts.target_is_zero)
            .then(DeviceZeroer::default);
        Ok(Target {
            path: path.to_path_buf(),
            file,
            kind: opened.kind,
            align,
            direct: opened.direct,
            device_size: opened.device_size,
            available: opts.available,
            vsize: None,
            started: false,
            high_water: 0,
            pool,
            paced_depth: opts.paced_depth,
            writers: Some(writers),
            run: None,
            gap: 0,
            cache: PartialCache::new(align, partial_blocks),
            scratch: AlignedBuf::new(align, align),
            zero_ranges: ZeroCoalescer::default(),
            zeroer,
            pacer: (!opened.direct).then(|| pacing::Pacer::new(PACING_INTERVAL)),
            stats: WriteStats {
                direct_io: opened.direct,
                ..WriteStats::default()
            },
            failed: None,
        })
    }

    /// Writes that may be in flight now (the pool's limit less the buffer
    /// being filled).
    pub fn write_depth(&self) -> usize {
        self.pool.limit().saturating_sub(1)
    }

    /// Block device or file.
    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The alignment of every write (logical block size; at least 4096 for files).
    pub fn alignment(&self) -> usize {
        self.align
    }

    /// False when the target refused `O_DIRECT`.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// A block device's size in bytes.
    pub fn device_size(&self) -> Option<u64> {
        self.device_size
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
        self.check_failed()?;
        let r = self.flush_all();
        let writers = self.writers.take();
        // Join the writers even after a flush error, and prefer their error:
        // it is the earlier one.
        let joined = match writers {
            Some(w) => w.shutdown(),
            None => Ok(()),
        };
        joined?;
        r?;
        if self.kind == TargetKind::File {
            // O_DIRECT rounded the last block up; the file ends exactly here.
            let len = self.vsize.unwrap_or(self.high_water);
            self.file.set_len(len)?;
        }
        nix::unistd::fdatasync(&*self.file).map_err(io::Error::from)?;
        if !self.direct {
            pacing::writeback_and_drop(&self.file)?;
        }
        Ok(self.stats.clone())
    }

    fn check_failed(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(
                *kind,
                format!("an earlier write failed: {msg}"),
            )),
            None => Ok(()),
        }
    }

    /// Records the first failure so nothing after it can report success.
    fn fail(&mut self, err: io::Error) -> io::Error {
        if self.failed.is_none() {
            self.failed = Some((err.kind(), err.to_string()));
        }
        err
    }

    /// The end of the writable range: the virtual size, else a block device's
    /// end, else unbounded (a raw file of unknown length).
    fn limit(&self) -> u64 {
        self.vsize.or(self.device_size).unwrap_or(u64::MAX)
    }

    /// Checks that `[offset, offset+len)` lies inside the writable range.
    fn check_range(&self, offset: u64, len: u64) -> io::Result<u64> {
        let end = offset.checked_add(len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("extent at offset {offset} of length {len} overflows"),
            )
        })?;
        let limit = self.limit();
        if end > limit {
            let what = if self.vsize.is_some() {
                "the virtual size"
            } else {
                "the end of the block device"
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("extent [{offset}, {end}) lies beyond {what} ({limit} bytes)"),
            ));
        }
        Ok(end)
    }
}

impl ExtentSink for Target {
    fn set_virtual_size(&mut self, size: u64) -> io::Result<()> {
        self.check_failed()?;
        if self.started || self.vsize.is_some_and(|v| v != size) {
            let e = io::Error::other(format!(
                "virtual size {size} announced after writing had started"
            ));
            return Err(self.fail(e));
        }
        let available = match (self.device_size, self.available) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(available) = available {
            if size > available {
                let e = io::Error::other(TargetError::TooLarge { size, available });
                return Err(self.fail(e));
            }
        }
        if self.kind == TargetKind::File {
            if let Err(e) = self.file.set_len(size) {
                return Err(self.fail(e));
            }
        }
        self.vsize = Some(size);
        Ok(())
    }

    fn data(&mut self, guest_offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_failed()?;
        let r = self.accept_data(guest_offset, data);
        r.map_err(|e| self.fail(e))
    }

    fn zero(&mut self, guest_offset: u64, len: u64) -> io::Result<()> {
        self.check_failed()?;
        let r = self.accept_zero(guest_offset, len);
        r.map_err(|e| self.fail(e))
    }

    fn input_paced(&mut self) {
        if let Some(depth) = self.paced_depth.take() {
            tracing::debug!(
                depth,
                "the input side sets the pace: fewer writes in flight, memory left to the input"
            );
            self.pool.lower_limit(depth + 1);
        }
    }
}

fn round_up_usize(n: usize, align: usize) -> usize {
    n.div_ceil(align).saturating_mul(align)
}

#[cfg(test)]
mod tests;
