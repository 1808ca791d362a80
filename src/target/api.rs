//! What callers of the write side hand in and get back: the options (the
//! buffer size and the write depth), the kind of target, the statistics and
//! the errors outside the sink calls.
//!
//! They live apart from [`super::Target`] so that its two parts, the plan
//! and the back end, can use them without reaching up into the sink.

use std::io;

/// Default size of each aligned write buffer: from 1 MiB up, buffer sizes
/// measure the same, and 1 MiB keeps the pool small (BENCHMARKS.md, "Tuning").
pub const DEFAULT_BUFFER_SIZE: usize = 1 << 20;

/// Writes in flight by default: the end-to-end import wants about 8 MiB in
/// flight to ride out the bursts of one network stream and of the device
/// (BENCHMARKS.md, "Tuning"). It costs memory only when writes set the
/// pace: the pool allocates lazily and reuses the last buffer returned.
pub const DEFAULT_QUEUE_DEPTH: usize = 8;

/// Writes in flight once the input side sets the pace or smooths it itself
/// (see [`crate::pace::Pace`]): decompression leaves the writer waiting
/// anyway and its workers want the memory; a segmented download delivers
/// evenly and its read-ahead wants the memory (BENCHMARKS.md, "Tuning").
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
