//! The I/O back end: carries out the assembler's actions on the open target.
//!
//! It owns everything that touches the kernel: the file or device, the
//! buffer pool and the writer threads its buffers circulate through, the
//! device zeroing strategy, the synchronous block reads and writes of
//! read-modify-write, the buffered-mode pacing, and the final `fdatasync`.
//! What to write, and when, is the assembler's business
//! ([`super::assemble`]); the back end only makes it happen, in order.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::assemble::{Action, Device};
use super::file::Opened;
use super::pacing::{self, Pacer};
use super::pool::{AlignedBuf, BufferPool};
use super::writer::{Job, Payload, WritePipeline};
use super::zeroing::DeviceZeroer;
use super::TargetKind;

/// In buffered mode, force writeback and drop pages after this many bytes.
const PACING_INTERVAL: u64 = 16 << 20;

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
}

impl Backend {
    /// Starts `depth` writer threads on `opened`, with a pool of `depth + 1`
    /// buffers of `buffer_size` bytes (allocated as they are first needed).
    pub(crate) fn new(opened: Opened, buffer_size: usize, depth: usize) -> io::Result<Self> {
        let file = Arc::new(opened.file);
        let align = opened.align;
        let pool = BufferPool::new(depth + 1, buffer_size, align);
        let writers =
            WritePipeline::new(Arc::clone(&file), depth, pool.returner(), buffer_size, align)?;
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

    /// Writes that may be in flight now (the pool's limit less the buffer
    /// being filled).
    pub(crate) fn depth(&self) -> usize {
        self.pool.limit().saturating_sub(1)
    }

    /// Keeps at most `depth` writes in flight from now on (never raises it).
    pub(crate) fn lower_depth(&self, depth: usize) {
        self.pool.lower_limit(depth + 1);
    }

    /// Sets a regular file's length.
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

    /// Makes every write stable: a file gets its final length (`O_DIRECT`
    /// rounded its last block up), then `fdatasync`, then (buffered mode) the
    /// written pages leave the page cache.
    pub(crate) fn sync(&self, file_len: u64) -> io::Result<()> {
        if self.kind == TargetKind::File {
            self.file.set_len(file_len)?;
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
        read_block(&self.file, offset, dst).map_err(|e| {
            io::Error::new(e.kind(), format!("reading block at offset {offset}: {e}"))
        })
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
