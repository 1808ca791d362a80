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
