//! The sans-IO assembler: how extents become writes.
//!
//! The write-side twin of the decoders. A decoder turns image bytes into
//! extents and hands them to an [`crate::format::ExtentSink`]; the assembler
//! (driven by [`super::Plan`], which checks each extent first) turns
//! extents into aligned writes and hands them to a [`Device`]. It makes no
//! system call itself, so it runs the same against the I/O back end
//! ([`crate::target::backend::Backend`]) and against a byte vector (`memory`) in its
//! tests.
//!
//! Data is copied into a *run*: one buffer covering a contiguous, aligned
//! range of the target. Contiguous extents keep filling the run; a full run
//! becomes one [`Action::Write`]. Bytes that cannot go into a run (the
//! unaligned head of an extent that starts mid-block, or the unaligned tail
//! left when a run is cut short) go to the partial-block cache, and leave it
//! as an [`Action::Block`] once complete, or merged with the device's
//! current contents ([`Device::read_block`]) when the cache needs room or at
//! the end. Zero extents only touch the blocks at their edges: a short one
//! between two pieces of data is written inline in the run, and the aligned
//! interior of a long one joins a [`ZeroRun`] that becomes one
//! [`Action::Zero`], or nothing at all when zero ranges need no action
//! (files, whose untouched ranges are holes).
//!
//! Actions are handed over one at a time and in order, as they arise, not
//! queued: a partial block's bytes and the merge scratch block are lent to
//! the device only for the duration of the call, and a full run reaches the
//! device before the assembler asks for the next buffer. That last point is
//! what keeps the buffer pool the memory bound: [`Device::buffer`] may block
//! until a write in flight hands one back, and that write is always one the
//! device already has.

use std::io;

use super::partial::{Block, PartialCache, Src};
use crate::io::AlignedBuf;
use crate::io::ZeroRun;

#[cfg(test)]
mod tests;

/// Zero extents up to this size that sit between two pieces of data are
/// written as zeros inside the surrounding large write instead of cutting it
/// in two (one 1 MiB write is much cheaper than two small writes plus a zeroing
/// call). Longer zero ranges become holes or device zeroing.
pub(crate) const INLINE_GAP: u64 = 64 << 10;

/// What the assembler must respect about the target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Every write starts and ends on a multiple of this (a power of two).
    pub align: usize,
    /// No action may reach past this byte: a block device's end, `u64::MAX`
    /// for a file. Partial blocks are rounded out to whole blocks, so this is
    /// the device's end rather than the image's virtual size.
    pub limit: u64,
    /// Aligned zero ranges must be zeroed ([`Action::Zero`]); when false they
    /// are left alone (a file truncated at open, or a device known to read
    /// as zeros).
    pub zero_ranges: bool,
    /// Blocks the partial cache holds before it merges the least recently
    /// touched one with the device (the cache's memory bound).
    pub partial_blocks: usize,
}

/// One step for the device, handed over in the order it must happen.
pub(crate) enum Action<'a> {
    /// Write the first `len` bytes of `buf` (a buffer from
    /// [`Device::buffer`]) at `offset`; the device owns the buffer from here
    /// on and returns it to its pool once written.
    Write {
        /// Where (aligned).
        offset: u64,
        /// The filled buffer.
        buf: AlignedBuf,
        /// How many of its bytes (a multiple of the alignment).
        len: usize,
    },
    /// Write one aligned block, a completed or merged partial block. The
    /// bytes are lent for the call only.
    Block {
        /// Where (aligned).
        offset: u64,
        /// Exactly one block.
        bytes: &'a [u8],
    },
    /// `[start, end)`, aligned, must read as zeros.
    Zero {
        /// First byte.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
}

/// What the assembler needs from the device side: buffers, the execution of
/// its actions, and the contents of blocks it merges.
pub(crate) trait Device {
    /// An empty buffer for a run, aligned and a multiple of the alignment
    /// long. May block until a write in flight returns one (this bounds the
    /// memory); fails only when none can ever come back.
    fn buffer(&mut self) -> io::Result<AlignedBuf>;
    /// Takes back a buffer from [`Device::buffer`] that was never written.
    fn recycle(&mut self, buf: AlignedBuf);
    /// Carries out `action`. Actions that overlap take effect in the order
    /// given, even when the device runs them in parallel.
    fn execute(&mut self, action: Action<'_>) -> io::Result<()>;
    /// Fills `dst` (one block) with what the device holds at `offset`, after
    /// every earlier action touching it has taken effect; bytes a file does
    /// not have yet read as zeros.
    fn read_block(&mut self, offset: u64, dst: &mut [u8]) -> io::Result<()>;
}

/// A buffer being filled for the range `[start, start + filled)`.
struct Run {
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

/// Turns extents into [`Action`]s. It holds what is not written yet: the run
/// being filled, a zero gap after it, the partial blocks and a zero run.
pub(crate) struct Assembler {
    /// `Geometry::align`, as a byte count for offset arithmetic.
    align: u64,
    limit: u64,
    zero_ranges: bool,
    run: Option<Run>,
    /// Zero bytes reported right after the current run, not yet placed.
    gap: u64,
    cache: PartialCache,
    /// One aligned block for read-modify-write.
    scratch: AlignedBuf,
    zeros: ZeroRun,
    /// Partial blocks merged with the device's contents.
    merges: u64,
}

impl Assembler {
    /// An assembler with nothing pending.
    pub(crate) fn new(geo: Geometry) -> Self {
        let align = geo.align.max(1);
        Assembler {
            align: align as u64,
            limit: geo.limit,
            zero_ranges: geo.zero_ranges,
            run: None,
            gap: 0,
            cache: PartialCache::new(align, geo.partial_blocks),
            scratch: AlignedBuf::new(align, align),
            zeros: ZeroRun::new(),
            merges: 0,
        }
    }

    /// Partial blocks merged with the device's contents so far
    /// (read-modify-write).
    pub(crate) fn merges(&self) -> u64 {
        self.merges
    }

    /// `data` belongs at `offset`.
    pub(crate) fn data<D: Device>(
        &mut self,
        offset: u64,
        data: &[u8],
        dev: &mut D,
    ) -> io::Result<()> {
        self.check_within(offset, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        // A short zero gap right before this data joins the same write.
        if self.gap > 0 {
            if let Some(run_end) = self.run.as_ref().map(Run::end) {
                if run_end.checked_add(self.gap) == Some(offset) {
                    let gap = std::mem::take(&mut self.gap);
                    let gap = usize::try_from(gap).map_err(|_| internal("gap too large"))?;
                    self.feed(run_end, Src::Zeros(gap), dev)?;
                }
            }
        }
        self.feed(offset, Src::Data(data), dev)
    }

    /// `[offset, offset + len)` reads as zeros.
    pub(crate) fn zero<D: Device>(&mut self, offset: u64, len: u64, dev: &mut D) -> io::Result<()> {
        self.check_within(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let align = self.align;
        let (mut offset, mut len) = (offset, len);
        if let Some(run_end) = self.run.as_ref().map(Run::end) {
            if run_end.checked_add(self.gap) == Some(offset) {
                if self.gap == 0 && run_end % align != 0 {
                    // The run's last block is written anyway: complete it with zeros.
                    let n = (align - run_end % align).min(len);
                    self.feed(offset, Src::Zeros(n as usize), dev)?;
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
        self.flush_run(dev)?;
        self.zero_range(offset, len, dev)
    }

    /// Hands everything still held to the device: the run (and a gap after
    /// it), the zero run, and the partial blocks, merged with the device's
    /// contents where incomplete.
    pub(crate) fn finish<D: Device>(&mut self, dev: &mut D) -> io::Result<()> {
        // Placing a gap can open one more run; flushing that one cannot.
        while self.run.is_some() {
            self.flush_run(dev)?;
        }
        if let Some(r) = self.zeros.take() {
            self.emit_zero(r.start, r.end, dev)?;
        }
        for block in self.cache.drain() {
            self.merge(block, dev)?;
        }
        Ok(())
    }

    /// Refuses a range reaching past the limit (or past `u64::MAX`), so that
    /// every offset computed inside it, block ends included, fits.
    fn check_within(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.limit => Ok(()),
            _ => Err(internal(&format!(
                "[{offset}, +{len}) reaches past the end of the target ({} bytes)",
                self.limit
            ))),
        }
    }

    /// Copies `src` to offset `off` through runs and partial blocks.
    fn feed<D: Device>(&mut self, mut off: u64, mut src: Src<'_>, dev: &mut D) -> io::Result<()> {
        let align = self.align;
        while !src.is_empty() {
            // With a gap pending, the run's logical end is past the gap:
            // nothing may be appended before the gap is placed.
            let continues = self.gap == 0 && self.run.as_ref().is_some_and(|r| r.end() == off);
            if !continues {
                if self.run.is_some() {
                    // Flushing may place a pending gap, which may open a new run
                    // (its unaligned tail): look again.
                    self.flush_run(dev)?;
                    continue;
                }
                let within = off % align;
                if within != 0 {
                    let (head, rest) = src.split((align - within) as usize);
                    self.put_partial(off, head, dev)?;
                    off += head.len() as u64;
                    src = rest;
                    continue;
                }
                let buf = dev.buffer()?;
                if buf.is_empty() || buf.len() as u64 % align != 0 {
                    dev.recycle(buf);
                    return Err(internal("a write buffer is not a whole number of blocks"));
                }
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
                    self.emit_write(full.start, full.buf, full.filled, dev)?;
                }
            }
        }
        Ok(())
    }

    /// Ends the current run: its aligned part is written, its unaligned
    /// tail goes to the partial cache, and a pending gap is placed.
    fn flush_run<D: Device>(&mut self, dev: &mut D) -> io::Result<()> {
        let Some(run) = self.run.take() else {
            return Ok(());
        };
        let gap = std::mem::take(&mut self.gap);
        let run_end = run.end();
        let aligned = run.filled - run.filled % self.align as usize;
        let tail_result = match run.buf.as_slice().get(aligned..run.filled) {
            Some(tail) if !tail.is_empty() => {
                self.put_partial(run.start + aligned as u64, Src::Data(tail), dev)
            }
            _ => Ok(()),
        };
        if aligned > 0 {
            self.emit_write(run.start, run.buf, aligned, dev)?;
        } else {
            dev.recycle(run.buf);
        }
        tail_result?;
        if gap > 0 {
            self.zero_range(run_end, gap, dev)?;
        }
        Ok(())
    }

    /// Places the zero range `[offset, offset+len)` with no run open.
    fn zero_range<D: Device>(&mut self, offset: u64, len: u64, dev: &mut D) -> io::Result<()> {
        let align = self.align;
        let end = offset + len;
        let mut off = offset;
        let within = off % align;
        if within != 0 {
            let n = (align - within).min(len);
            self.put_partial(off, Src::Zeros(n as usize), dev)?;
            off += n;
        }
        let interior_end = end - end % align;
        if interior_end > off {
            self.zero_interior(off, interior_end, dev)?;
            off = interior_end;
        }
        if end > off {
            // An unaligned tail (shorter than a block): open a run of zeros so
            // data that continues right after it joins the same write.
            self.feed(off, Src::Zeros((end - off) as usize), dev)?;
        }
        Ok(())
    }

    /// Aligned whole blocks that must read as zeros: they join the zero run,
    /// and the run it ends (if any) is zeroed.
    fn zero_interior<D: Device>(&mut self, start: u64, end: u64, dev: &mut D) -> io::Result<()> {
        if !self.zero_ranges {
            return Ok(());
        }
        match self.zeros.add(start..end) {
            Some(r) => self.emit_zero(r.start, r.end, dev),
            None => Ok(()),
        }
    }

    /// Puts a piece that lies within one block into the partial cache,
    /// writing the block if this completes it and merging the least recently
    /// touched block with the device if the cache is full.
    fn put_partial<D: Device>(&mut self, off: u64, src: Src<'_>, dev: &mut D) -> io::Result<()> {
        let start = off - off % self.align;
        if let Some(victim) = self.cache.make_room_for(start) {
            self.merge(victim, dev)?;
        }
        match self.cache.put(off, src) {
            Ok(Some(block)) => self.write_block(block, false, dev),
            Ok(None) => Ok(()),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Writes a block leaving the cache: a complete one as it is, an
    /// incomplete one merged with the device's contents (read-modify-write).
    fn merge<D: Device>(&mut self, block: Block, dev: &mut D) -> io::Result<()> {
        let complete = self.cache.is_complete(&block);
        self.write_block(block, !complete, dev)
    }

    /// Writes `block` and gives its slot back to the cache, even on failure.
    fn write_block<D: Device>(
        &mut self,
        block: Block,
        read_first: bool,
        dev: &mut D,
    ) -> io::Result<()> {
        let result = self.write_block_bytes(&block, read_first, dev);
        self.cache.recycle(block);
        result
    }

    fn write_block_bytes<D: Device>(
        &mut self,
        block: &Block,
        read_first: bool,
        dev: &mut D,
    ) -> io::Result<()> {
        let offset = block.start;
        self.check_within(offset, self.align)?;
        if !read_first {
            let bytes = self.cache.bytes(block);
            return dev.execute(Action::Block { offset, bytes });
        }
        self.merges += 1;
        dev.read_block(offset, self.scratch.as_mut_slice())?;
        let dst = self.scratch.as_mut_slice();
        let src = self.cache.bytes(block);
        for &(a, b) in &block.ranges {
            let (Some(d), Some(s)) = (dst.get_mut(a..b), src.get(a..b)) else {
                return Err(internal("partial range out of block"));
            };
            d.copy_from_slice(s);
        }
        let bytes = self.scratch.as_slice();
        dev.execute(Action::Block { offset, bytes })
    }

    /// Hands a filled run's first `len` bytes to the device.
    fn emit_write<D: Device>(
        &mut self,
        offset: u64,
        buf: AlignedBuf,
        len: usize,
        dev: &mut D,
    ) -> io::Result<()> {
        if let Err(e) = self.check_within(offset, len as u64) {
            dev.recycle(buf);
            return Err(e);
        }
        dev.execute(Action::Write { offset, buf, len })
    }

    /// Hands a coalesced aligned zero range to the device.
    fn emit_zero<D: Device>(&mut self, start: u64, end: u64, dev: &mut D) -> io::Result<()> {
        self.check_within(start, end.saturating_sub(start))?;
        dev.execute(Action::Zero { start, end })
    }
}
