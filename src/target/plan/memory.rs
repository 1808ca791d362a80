//! A [`Device`] on a byte vector, for the plan's and the assembler's tests.
//!
//! It carries actions out at once, in order, and checks on every one what
//! the back end relies on: alignment, the device's end, and that the
//! assembler never holds more than one buffer (the pool's memory bound
//! depends on it). It keeps a log of the actions so tests can say which
//! writes and zero operations an input became.

use std::io;

use super::{Action, Device};
use crate::io::AlignedBuf;

/// One action carried out, as the log keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A filled buffer written at `offset`.
    Write { offset: u64, len: usize },
    /// One block written at `offset`.
    Block { offset: u64 },
    /// `[start, end)` zeroed.
    Zero { start: u64, end: u64 },
    /// One block read at `offset` to merge a partial block into.
    Read { offset: u64 },
}

/// The device's bytes and what was done to them.
pub(crate) struct MemDevice {
    /// What the device holds.
    pub bytes: Vec<u8>,
    align: usize,
    buffer_size: usize,
    /// A file grows as it is written; a block device has a fixed end.
    grows: bool,
    /// Every action, in order.
    pub log: Vec<Op>,
    /// Buffers handed out and not yet written or recycled.
    out: usize,
}

impl MemDevice {
    /// A block device of `len` bytes, all `fill`.
    pub(crate) fn device(len: usize, fill: u8, align: usize, buffer_size: usize) -> Self {
        MemDevice {
            bytes: vec![fill; len],
            align,
            buffer_size,
            grows: false,
            log: Vec::new(),
            out: 0,
        }
    }

    /// An empty (truncated) regular file.
    pub(crate) fn file(align: usize, buffer_size: usize) -> Self {
        MemDevice {
            grows: true,
            ..MemDevice::device(0, 0, align, buffer_size)
        }
    }

    /// The zero operations in the log.
    pub(crate) fn zeros(&self) -> Vec<(u64, u64)> {
        self.log
            .iter()
            .filter_map(|op| match *op {
                Op::Zero { start, end } => Some((start, end)),
                _ => None,
            })
            .collect()
    }

    /// The buffer writes in the log.
    pub(crate) fn writes(&self) -> Vec<(u64, usize)> {
        self.log
            .iter()
            .filter_map(|op| match *op {
                Op::Write { offset, len } => Some((offset, len)),
                _ => None,
            })
            .collect()
    }

    /// The bytes `[offset, offset + len)` are to change: checks alignment
    /// and the end, and grows a file to cover them.
    fn span(&mut self, offset: u64, len: usize) -> &mut [u8] {
        let align = self.align as u64;
        assert_eq!(offset % align, 0, "unaligned offset {offset}");
        assert_eq!(len as u64 % align, 0, "unaligned length {len} at {offset}");
        let start = usize::try_from(offset).expect("offset fits in memory");
        let end = start + len;
        if self.grows && end > self.bytes.len() {
            self.bytes.resize(end, 0);
        }
        assert!(
            end <= self.bytes.len(),
            "[{start}, {end}) reaches past the device's end ({})",
            self.bytes.len()
        );
        &mut self.bytes[start..end]
    }
}

impl Device for MemDevice {
    fn buffer(&mut self) -> io::Result<AlignedBuf> {
        self.out += 1;
        assert_eq!(self.out, 1, "the assembler holds one buffer at a time");
        Ok(AlignedBuf::new(self.buffer_size, self.align))
    }

    fn recycle(&mut self, _buf: AlignedBuf) {
        self.out -= 1;
    }

    fn execute(&mut self, action: Action<'_>) -> io::Result<()> {
        match action {
            Action::Write { offset, buf, len } => {
                self.out -= 1;
                self.span(offset, len)
                    .copy_from_slice(&buf.as_slice()[..len]);
                self.log.push(Op::Write { offset, len });
            }
            Action::Block { offset, bytes } => {
                assert_eq!(bytes.len(), self.align, "a block is one block");
                self.span(offset, bytes.len()).copy_from_slice(bytes);
                self.log.push(Op::Block { offset });
            }
            Action::Zero { start, end } => {
                assert!(start < end, "an empty zero range");
                let len = usize::try_from(end - start).expect("fits in memory");
                self.span(start, len).fill(0);
                self.log.push(Op::Zero { start, end });
            }
        }
        Ok(())
    }

    fn read_block(&mut self, offset: u64, dst: &mut [u8]) -> io::Result<()> {
        assert_eq!(dst.len(), self.align, "a block is one block");
        assert_eq!(offset % self.align as u64, 0, "unaligned read at {offset}");
        let start = usize::try_from(offset).expect("offset fits in memory");
        dst.fill(0);
        if let Some(have) = self.bytes.get(start..) {
            let n = have.len().min(dst.len());
            dst[..n].copy_from_slice(&have[..n]);
        }
        if !self.grows {
            assert!(start + dst.len() <= self.bytes.len(), "read past the end");
        }
        self.log.push(Op::Read { offset });
        Ok(())
    }
}
