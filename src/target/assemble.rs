//! How extents become writes.
//!
//! Data is copied into a *run*: one pool buffer covering a contiguous, aligned
//! range of the target. Contiguous extents keep filling the run; a full run is
//! handed to the writer threads. Bytes that cannot go into a run (the unaligned
//! head of an extent that starts mid-block, or the unaligned tail left when a
//! run is cut short) go to the partial-block cache. Zero extents only touch the
//! blocks at their edges; their aligned interior becomes one coalesced zeroing
//! call on block devices and nothing at all on files (holes).

use std::io;
use std::os::unix::fs::FileExt;

use super::partial::{Block, Src};
use super::pool::AlignedBuf;
use super::writer::{Job, Payload};
use super::{Target, TargetKind};

/// Zero extents up to this size that sit between two pieces of data are
/// written as zeros inside the surrounding large write instead of cutting it
/// in two (one 1 MiB write is much cheaper than two small writes plus a zeroing
/// call). Longer zero ranges become holes or device zeroing.
pub(super) const INLINE_GAP: u64 = 64 << 10;

/// A pool buffer being filled for the range `[start, start + filled)`.
pub(super) struct Run {
    start: u64,
    buf: AlignedBuf,
    filled: usize,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.filled as u64
    }

    fn space(&self) -> usize {
        self.buf.len() - self.filled
    }
}

fn internal(msg: &str) -> io::Error {
    io::Error::other(format!("internal writer error: {msg}"))
}

impl Target {
    /// The data half of [`crate::format::ExtentSink`].
    pub(super) fn accept_data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = data.len() as u64;
        // In range: checked by the sink call (`Target::check_range`).
        let end = offset.saturating_add(len);
        if data.is_empty() {
            return Ok(());
        }
        self.started = true;
        self.high_water = self.high_water.max(end);
        self.stats.bytes_written = self.stats.bytes_written.saturating_add(len);
        // A short zero gap right before this data joins the same write.
        if self.gap > 0 {
            if let Some(run_end) = self.run.as_ref().map(Run::end) {
                if run_end.checked_add(self.gap) == Some(offset) {
                    let gap = std::mem::take(&mut self.gap);
                    let gap = usize::try_from(gap).map_err(|_| internal("gap too large"))?;
                    self.feed(run_end, Src::Zeros(gap))?;
                }
            }
        }
        self.feed(offset, Src::Data(data))
    }

    /// The zero half of [`crate::format::ExtentSink`].
    pub(super) fn accept_zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.started = true;
        self.high_water = self.high_water.max(offset + len);
        self.stats.bytes_zeroed = self.stats.bytes_zeroed.saturating_add(len);
        let align = self.align as u64;
        let (mut offset, mut len) = (offset, len);
        if let Some(run_end) = self.run.as_ref().map(Run::end) {
            if run_end.checked_add(self.gap) == Some(offset) {
                if self.gap == 0 && run_end % align != 0 {
                    // The run's last block is written anyway: complete it with zeros.
                    let n = (align - run_end % align).min(len);
                    self.feed(offset, Src::Zeros(n as usize))?;
                    offset += n;
                    len -= n;
                    if len == 0 {
                        return Ok(());
                    }
                }
                if self.run.is_some() {
                    if self.gap.saturating_add(len) <= INLINE_GAP {
                        self.gap += len;
                        return Ok(());
                    }
                    // Too long to inline: the pending gap and this extent are one range.
                    offset -= self.gap;
                    len += self.gap;
                    self.gap = 0;
                }
            }
        }
        self.flush_run()?;
        self.zero_range(offset, len)
    }

    /// Copies `src` to target offset `off` through runs and partial blocks.
    fn feed(&mut self, mut off: u64, mut src: Src<'_>) -> io::Result<()> {
        let align = self.align as u64;
        while !src.is_empty() {
            // With a gap pending, the run's logical end is past the gap:
            // nothing may be appended before the gap is placed.
            let continues = self.gap == 0 && self.run.as_ref().is_some_and(|r| r.end() == off);
            if !continues {
                if self.run.is_some() {
                    // Flushing may place a pending gap, which may open a new run
                    // (its unaligned tail): look again.
                    self.flush_run()?;
                    continue;
                }
                let within = off % align;
                if within != 0 {
                    let (head, rest) = src.split((align - within) as usize);
                    self.put_partial(off, head)?;
                    off += head.len() as u64;
                    src = rest;
                    continue;
                }
                let buf = self
                    .pool
                    .get()
                    .ok_or_else(|| internal("write buffers lost: a writer thread died"))?;
                self.run = Some(Run {
                    start: off,
                    buf,
                    filled: 0,
                });
            }
            let run = self.run.as_mut().ok_or_else(|| internal("no run"))?;
            let (now, rest) = src.split(run.space());
            let n = now.len();
            let dst = run
                .buf
                .as_mut_slice()
                .get_mut(run.filled..run.filled + n)
                .ok_or_else(|| internal("run overflow"))?;
            now.copy_to(dst);
            run.filled += n;
            off += n as u64;
            src = rest;
            if run.space() == 0 {
                if let Some(full) = self.run.take() {
                    self.submit_buf(full.start, full.buf, full.filled)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the current run: its aligned part goes to the writers, its
    /// unaligned tail to the partial cache, and a pending gap is placed.
    pub(super) fn flush_run(&mut self) -> io::Result<()> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let gap = std::mem::take(&mut self.gap);
        let run_end = run.end();
        let align = self.align;
        let aligned = run.filled - run.filled % align;
        let tail_result = match run.buf.as_slice().get(aligned..run.filled) {
            Some(tail) if !tail.is_empty() => {
                self.put_partial(run.start + aligned as u64, Src::Data(tail))
            }
            _ => Ok(()),
        };
        if aligned > 0 {
            self.submit_buf(run.start, run.buf, aligned)?;
        } else {
            self.pool.put(run.buf);
        }
        tail_result?;
        if gap > 0 {
            self.zero_range(run_end, gap)?;
        }
        Ok(())
    }

    /// Places the zero range `[offset, offset+len)` with no run open.
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let align = self.align as u64;
        let end = offset + len;
        let mut off = offset;
        let within = off % align;
        if within != 0 {
            let n = (align - within).min(len);
            self.put_partial(off, Src::Zeros(n as usize))?;
            off += n;
        }
        let interior_end = end - end % align;
        if interior_end > off {
            self.zero_interior(off, interior_end)?;
            off = interior_end;
        }
        if end > off {
            // An unaligned tail (shorter than a block): open a run of zeros so
            // data that continues right after it joins the same write.
            self.feed(off, Src::Zeros((end - off) as usize))?;
        }
        Ok(())
    }

    /// Aligned whole blocks that must read as zeros.
    fn zero_interior(&mut self, start: u64, end: u64) -> io::Result<()> {
        if self.zeroer.is_none() {
            // A file truncated at open reads as holes here; with
            // `target_is_zero` the device already reads as zeros.
            return Ok(());
        }
        match self.zero_ranges.add(start..end) {
            Some(r) => self.issue_zero(r.start, r.end),
            None => Ok(()),
        }
    }

    /// Zeroes a coalesced aligned range on a block device.
    pub(super) fn issue_zero(&mut self, start: u64, end: u64) -> io::Result<()> {
        let (Some(zeroer), Some(writers)) = (self.zeroer.as_mut(), self.writers.as_ref()) else {
            return Ok(());
        };
        zeroer.zero(&self.file, start, end, &mut |a, b, call| match call {
            Some(method) => writers.submit(Job {
                offset: a,
                payload: Payload::Device { len: b - a, method },
            }),
            None => writers.submit_zeros(a, b),
        })
    }

    fn submit_buf(&mut self, start: u64, buf: AlignedBuf, len: usize) -> io::Result<()> {
        let writers = self
            .writers
            .as_ref()
            .ok_or_else(|| internal("writers already stopped"))?;
        writers.submit(Job {
            offset: start,
            payload: Payload::Buf { buf, len },
        })?;
        if let Some(p) = self.pacer.as_mut() {
            p.wrote(&self.file, len as u64)?;
        }
        Ok(())
    }

    /// Puts a piece that lies within one block into the partial cache,
    /// writing the block if this completes it and merging the oldest block
    /// with the disk if the cache is full.
    fn put_partial(&mut self, off: u64, src: Src<'_>) -> io::Result<()> {
        let align = self.align as u64;
        let start = off - off % align;
        if let Some(victim) = self.cache.make_room_for(start) {
            self.merge_with_disk(victim)?;
        }
        match self.cache.put(off, src) {
            Ok(Some(block)) => self.write_block(block, false),
            Ok(None) => Ok(()),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Writes a partial block: complete blocks as they are, incomplete ones
    /// merged with what the target holds (read-modify-write).
    pub(super) fn merge_with_disk(&mut self, block: Block) -> io::Result<()> {
        let complete = self.cache.is_complete(&block);
        self.write_block(block, !complete)
    }

    fn write_block(&mut self, block: Block, read_first: bool) -> io::Result<()> {
        let align = self.align as u64;
        let end = block.start + align;
        if self.kind == TargetKind::BlockDevice && self.device_size.is_some_and(|d| end > d) {
            self.cache.recycle(block);
            return Err(internal("partial block beyond the device end"));
        }
        if let Some(w) = self.writers.as_ref() {
            // Never read or overwrite a block a queued write is still changing.
            w.wait_overlap(block.start, end);
        }
        if read_first {
            self.stats.partial_merges += 1;
        }
        let result = if read_first {
            read_block(&self.file, block.start, self.scratch.as_mut_slice()).and_then(|()| {
                let dst = self.scratch.as_mut_slice();
                for &(a, b) in &block.ranges {
                    let (Some(d), Some(s)) =
                        (dst.get_mut(a..b), self.cache.bytes(&block).get(a..b))
                    else {
                        return Err(internal("partial range out of block"));
                    };
                    d.copy_from_slice(s);
                }
                self.file.write_all_at(self.scratch.as_slice(), block.start)
            })
        } else {
            self.file
                .write_all_at(self.cache.bytes(&block), block.start)
        };
        self.cache.recycle(block);
        result.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing block at offset {}: {e}", end - align),
            )
        })?;
        if let Some(p) = self.pacer.as_mut() {
            p.wrote(&self.file, align)?;
        }
        Ok(())
    }

    /// Everything still buffered goes to the target (for `finish`).
    pub(super) fn flush_all(&mut self) -> io::Result<()> {
        // Placing a gap can open one more run; flushing that one cannot.
        while self.run.is_some() {
            self.flush_run()?;
        }
        if let Some(r) = self.zero_ranges.take() {
            self.issue_zero(r.start, r.end)?;
        }
        for block in self.cache.drain() {
            self.merge_with_disk(block)?;
        }
        Ok(())
    }
}

/// Reads one block at `offset`; bytes past the end of a file read as zeros.
pub(crate) fn read_block(file: &std::fs::File, offset: u64, dst: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < dst.len() {
        match file.read_at(&mut dst[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    dst[done..].fill(0);
    Ok(())
}
