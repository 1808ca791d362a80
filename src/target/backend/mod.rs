//! The I/O back end: carries out the plan's actions on the open target.
//!
//! It owns everything that touches the kernel, one concern a module:
//! [`mod@file`] opens the target (`O_DIRECT`, or buffered where that is
//! refused) and finds its alignment; [`device`] holds the block-device
//! ioctls; [`pool`] the aligned buffers (the memory bound); [`writer`] the
//! threads keeping several writes in flight, as many as [`depth`] allows;
//! [`zeroing`] the device zeroing strategy; [`pacing`] the bounded page
//! cache of buffered writes. [`Backend`] ties them together, adds the
//! synchronous block reads and writes of read-modify-write and the final
//! `fdatasync`. What to write, and when, is the plan's business
//! ([`super::plan`]); the back end only makes it happen, in order, and is
//! the one place that knows a regular file from a block device.

pub(crate) mod depth;
// The block-device ioctls have no safe wrapper.
#[allow(unsafe_code)]
pub(crate) mod device;
// `statx` by raw system call (see `file_alignment`).
#[allow(unsafe_code)]
pub(crate) mod file;
// `sync_file_range`, which nix does not wrap.
#[allow(unsafe_code)]
pub(crate) mod pacing;
pub mod pool;
pub(crate) mod writer;
pub(crate) mod zeroing;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::api::{Depth, TargetError, TargetKind};
use super::plan::{Action, Device};
use crate::pace::Pace;
use depth::DepthPolicy;
use file::FileMode;
use pacing::Pacer;
use pool::{AlignedBuf, BufferPool};
use writer::{Job, Payload, WritePipeline};
use zeroing::DeviceZeroer;

/// In buffered mode, force writeback and drop pages after this many bytes.
const PACING_INTERVAL: u64 = 16 << 20;

/// The largest and smallest buffer sizes accepted; outside this range the
/// value is clamped (tiny buffers make syscalls dominate, huge ones break the
/// memory budget).
const MIN_BUFFER: usize = 64 << 10;
const MAX_BUFFER: usize = 64 << 20;

fn internal(msg: &str) -> io::Error {
    io::Error::other(format!("internal writer error: {msg}"))
}

/// The open target and the machinery writing to it.
pub(crate) struct Backend {
    file: Arc<File>,
    kind: TargetKind,
    align: usize,
    direct: bool,
    device_size: Option<u64>,
    /// `depth + 1` buffers: one being filled, the rest in flight.
    pool: BufferPool,
    /// `None` once shut down.
    writers: Option<WritePipeline>,
    zeroer: DeviceZeroer,
    /// Bounds the page cache when `O_DIRECT` was refused.
    pacer: Option<Pacer>,
    /// How many writes may be in flight, and when that is lowered.
    depth: DepthPolicy,
}

impl Backend {
    /// Opens `path` (creating or truncating a regular file) and starts the
    /// writer threads: as many as `depth` allows, with a pool of one more
    /// buffer than that, of about `buffer_size` bytes each (clamped, and
    /// rounded up to the alignment), allocated as they are first needed.
    pub(crate) fn open(path: &Path, buffer_size: usize, depth: Depth) -> Result<Self, TargetError> {
        let ctx = |what: &str, source: io::Error| TargetError::Io {
            context: format!("{what} {}", path.display()),
            source,
        };
        let opened = file::open(path, FileMode::Replace).map_err(|e| ctx("opening", e))?;
        if !opened.direct {
            tracing::warn!(
                path = %path.display(),
                "the target does not support O_DIRECT; using buffered writes with periodic writeback to bound the page cache"
            );
        }
        let align = opened.align;
        let buffer_size = round_up_usize(buffer_size.clamp(MIN_BUFFER, MAX_BUFFER), align);
        let depth = DepthPolicy::new(depth);
        let file = Arc::new(opened.file);
        let pool = BufferPool::new(depth.initial() + 1, buffer_size, align);
        let writers = WritePipeline::new(
            Arc::clone(&file),
            depth.initial(),
            pool.returner(),
            buffer_size,
            align,
        )
        .map_err(|e| ctx("starting writer threads for", e))?;
        Ok(Backend {
            file,
            kind: opened.kind,
            align,
            direct: opened.direct,
            device_size: opened.device_size,
            pool,
            writers: Some(writers),
            zeroer: DeviceZeroer::default(),
            pacer: (!opened.direct).then(|| Pacer::new(PACING_INTERVAL)),
            depth,
        })
    }

    /// Block device or file.
    pub(crate) fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The alignment of every write.
    pub(crate) fn align(&self) -> usize {
        self.align
    }

    /// False when the target refused `O_DIRECT`.
    pub(crate) fn direct(&self) -> bool {
        self.direct
    }

    /// A block device's size in bytes.
    pub(crate) fn device_size(&self) -> Option<u64> {
        self.device_size
    }

    /// Size of every write buffer.
    pub(crate) fn buffer_size(&self) -> usize {
        self.pool.buffer_size()
    }

    /// Writes that may be in flight now (the pool's limit less the buffer
    /// being filled).
    pub(crate) fn depth(&self) -> usize {
        self.pool.limit().saturating_sub(1)
    }

    /// Lowers the write depth once `pace` says the input side sets the pace.
    pub(crate) fn follow(&mut self, pace: Pace) {
        self.depth.follow(pace);
    }

    /// Once the input side sets the pace, keep fewer writes in flight (see
    /// [`Pace`]); asked on every data extent, one atomic load.
    pub(crate) fn follow_pace(&mut self) {
        if let Some(depth) = self.depth.lower_now() {
            tracing::debug!(
                depth,
                "the input side sets the pace: fewer writes in flight, memory left to the input"
            );
            self.pool.lower_limit(depth + 1);
        }
    }

    /// Gives a regular file its length (when the plan says so).
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Stops the writer threads once their queue has drained, and reports
    /// the first write error. Later writes fail.
    pub(crate) fn shutdown(&mut self) -> io::Result<()> {
        match self.writers.take() {
            Some(w) => w.shutdown(),
            None => Ok(()),
        }
    }

    /// Makes every write stable: a file gets its final length `len` when
    /// there is one (`O_DIRECT` rounded its last block up), then
    /// `fdatasync`, then (buffered mode) the written pages leave the page
    /// cache.
    pub(crate) fn sync(&self, len: Option<u64>) -> io::Result<()> {
        if let Some(len) = len {
            self.file.set_len(len)?;
        }
        nix::unistd::fdatasync(&*self.file).map_err(io::Error::from)?;
        if !self.direct {
            pacing::writeback_and_drop(&self.file)?;
        }
        Ok(())
    }

    fn paced(&mut self, n: u64) -> io::Result<()> {
        match self.pacer.as_mut() {
            Some(p) => p.wrote(&self.file, n),
            None => Ok(()),
        }
    }

    /// Waits until no queued write overlaps `[start, end)`, so that a block
    /// written or read on this thread is never one a writer is changing.
    fn settle(&self, start: u64, end: u64) {
        if let Some(w) = self.writers.as_ref() {
            w.wait_overlap(start, end);
        }
    }

    fn zero(&mut self, start: u64, end: u64) -> io::Result<()> {
        let writers = self
            .writers
            .as_ref()
            .ok_or_else(|| internal("writers already stopped"))?;
        self.zeroer
            .zero(&self.file, start, end, &mut |a, b, call| match call {
                Some(method) => writers.submit(Job {
                    offset: a,
                    payload: Payload::Device { len: b - a, method },
                }),
                None => writers.submit_zeros(a, b),
            })
    }
}

impl Device for Backend {
    fn buffer(&mut self) -> io::Result<AlignedBuf> {
        self.pool
            .get()
            .ok_or_else(|| internal("write buffers lost: a writer thread died"))
    }

    fn recycle(&mut self, buf: AlignedBuf) {
        self.pool.put(buf);
    }

    fn execute(&mut self, action: Action<'_>) -> io::Result<()> {
        match action {
            Action::Write { offset, buf, len } => {
                let Some(writers) = self.writers.as_ref() else {
                    self.pool.put(buf);
                    return Err(internal("writers already stopped"));
                };
                writers.submit(Job {
                    offset,
                    payload: Payload::Buf { buf, len },
                })?;
                self.paced(len as u64)
            }
            Action::Block { offset, bytes } => {
                let len = bytes.len() as u64;
                self.settle(offset, offset.saturating_add(len));
                self.file.write_all_at(bytes, offset).map_err(|e| {
                    io::Error::new(e.kind(), format!("writing block at offset {offset}: {e}"))
                })?;
                self.paced(len)
            }
            Action::Zero { start, end } => self.zero(start, end),
        }
    }

    fn read_block(&mut self, offset: u64, dst: &mut [u8]) -> io::Result<()> {
        self.settle(offset, offset.saturating_add(dst.len() as u64));
        read_block(&self.file, offset, dst)
            .map_err(|e| io::Error::new(e.kind(), format!("reading block at offset {offset}: {e}")))
    }
}

/// Reads one block at `offset`; bytes past the end of a file read as zeros.
pub(crate) fn read_block(file: &File, offset: u64, dst: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while let Some(rest) = dst.get_mut(done..).filter(|r| !r.is_empty()) {
        match file.read_at(rest, offset.saturating_add(done as u64)) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(rest) = dst.get_mut(done..) {
        rest.fill(0);
    }
    Ok(())
}

fn round_up_usize(n: usize, align: usize) -> usize {
    n.div_ceil(align).saturating_mul(align)
}
