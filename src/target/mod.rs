//! The write side: an `O_DIRECT` block device or regular file, fed extents.
//!
//! The target is the [`ExtentSink`] at the end of the pipeline. It copies data
//! into a fixed pool of aligned buffers, coalesces contiguous extents into large
//! writes with a bounded number in flight, turns zero extents into holes or
//! device zeroing, and `fdatasync`s before reporting success.

use std::io;
use std::path::{Path, PathBuf};

use crate::format::ExtentSink;

/// Writer settings: the memory budget of the write side.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// The target already reads as zeros: skip zero extents entirely.
    pub target_is_zero: bool,
    /// Size of each aligned write buffer.
    pub buffer_size: usize,
    /// Writes in flight (and buffers in the pool beyond the one being filled).
    pub queue_depth: usize,
    /// Refuse images larger than this (bytes), in addition to a block device's size.
    pub available: Option<u64>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            target_is_zero: false,
            buffer_size: 1 << 20,
            queue_depth: 4,
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
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub direct_io: bool,
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

/// An open target.
pub struct Target {
    _path: PathBuf,
}

impl Target {
    /// Opens (creating or truncating a regular file) the target.
    pub fn open(path: &Path, _opts: &TargetOptions) -> Result<Self, TargetError> {
        Err(TargetError::Io {
            context: format!("opening {}", path.display()),
            source: io::Error::other("not implemented yet"),
        })
    }

    /// Block device or file.
    pub fn kind(&self) -> TargetKind {
        TargetKind::File
    }

    /// Flushes everything and `fdatasync`s. Success means every byte is stable.
    pub fn finish(self) -> Result<WriteStats, TargetError> {
        Ok(WriteStats::default())
    }
}

impl ExtentSink for Target {
    fn set_virtual_size(&mut self, _size: u64) -> io::Result<()> {
        Err(io::Error::other("not implemented yet"))
    }
    fn data(&mut self, _guest_offset: u64, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::other("not implemented yet"))
    }
    fn zero(&mut self, _guest_offset: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::other("not implemented yet"))
    }
}

// ---------------------------------------------------------------------------
// TEMPORARY SHIMS added by the cdi branch so that pod mode compiles before the
// target agent's versions land on main. Replace (delete) them in favour of the
// target module's real implementations when merging.
// ---------------------------------------------------------------------------

/// Writes `len` zero bytes from offset 0 of `path` and syncs (temporary shim:
/// buffered writes, not `O_DIRECT`).
pub fn write_zeros_direct(path: &Path, len: u64) -> Result<(), TargetError> {
    use std::io::Write;
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| TargetError::Io {
            context: ctx("opening"),
            source,
        })?;
    let buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        f.write_all(&buf[..n]).map_err(|source| TargetError::Io {
            context: ctx("zeroing"),
            source,
        })?;
        left -= n as u64;
    }
    f.sync_all().map_err(|source| TargetError::Io {
        context: ctx("syncing"),
        source,
    })
}

/// Zeroes the first and last MiB of `path` so that a half-written disk is not
/// recognised as one (temporary shim).
pub fn wipe_edges(path: &Path) -> Result<(), TargetError> {
    use std::io::{Seek, SeekFrom, Write};
    let ctx = |what: &str| format!("{what} {}", path.display());
    let io = |what: &str| {
        let c = ctx(what);
        move |source| TargetError::Io { context: c, source }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("opening"))?;
    let size = f.seek(SeekFrom::End(0)).map_err(io("sizing"))?;
    let mib: u64 = 1 << 20;
    let head = size.min(mib);
    let zeros = vec![0u8; mib as usize];
    f.seek(SeekFrom::Start(0)).map_err(io("seeking"))?;
    f.write_all(&zeros[..head as usize]).map_err(io("wiping"))?;
    let tail_start = size.saturating_sub(mib).max(head);
    f.seek(SeekFrom::Start(tail_start)).map_err(io("seeking"))?;
    f.write_all(&zeros[..(size - tail_start) as usize])
        .map_err(io("wiping"))?;
    f.sync_all().map_err(io("syncing"))
}
