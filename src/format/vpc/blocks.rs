//! The block map of a format made of equal blocks found through one table
//! (VHD's BAT, VDI's block map), kept in host order as the stream passes.
//!
//! Both formats store a table of one 32-bit entry per guest block, then the
//! blocks, each at a host offset the entry names. A forward decoder must
//! know, for every host byte, which guest block it belongs to, so the table
//! is turned into **runs**: blocks that follow each other in the guest and
//! on the host become one entry, whatever their number. An image written in
//! guest order (`qemu-img convert`) is one run per allocated stretch; an
//! image written at random costs one run per block. Memory follows the runs,
//! never the virtual size, and is capped by [`MAX_RUNS`]: an image more
//! fragmented than that is refused instead of growing.
//!
//! Every guest block of `[0, virtual size)` is reported exactly once: as
//! zeros when its entry says unallocated (while the table is parsed), as
//! data when the stream passes its host bytes. Each block may start with
//! bytes that hold no guest data (VHD's sector bitmap), skipped.

use std::ops::Range;

use crate::format::{ExtentSink, SinkError};

/// Most runs kept: 16 bytes each, so 8 MiB, the qcow2 decoder's mapping
/// budget. With 2 MiB blocks that is 1 TiB written in random block order.
pub(crate) const MAX_RUNS: usize = 512 * 1024;

/// `count` blocks stored back to back from host offset `host`, holding
/// guest blocks `guest..guest + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    host: u64,
    guest: u32,
    count: u32,
}

/// Why a block cannot be placed.
///
/// VHD and VDI both map their blocks here, and report these faults as they
/// are (their errors carry a `MapFault`), so the wording is the same for both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapFault {
    /// More runs than [`MAX_RUNS`].
    #[error("more than {MAX_RUNS} separate runs of blocks: too fragmented to map in bounded memory (convert it with qemu-img first)")]
    TooFragmented,
    /// Two blocks share host bytes.
    #[error("blocks {} (at 0x{:x}) and {} (at 0x{:x}) overlap in the file", first.0, first.1, second.0, second.1)]
    Overlap {
        /// `(guest block, host offset)` of one.
        first: (u64, u64),
        /// And of the other.
        second: (u64, u64),
    },
    /// A block's host bytes overlap a metadata structure.
    #[error("block {block} at 0x{host:x} overlaps the {what}")]
    IntoMetadata {
        /// Its guest block index.
        block: u64,
        /// Where it starts.
        host: u64,
        /// What it overlaps.
        what: &'static str,
    },
}

/// The runs of one image, built in guest order, then sealed into host order.
#[derive(Debug)]
pub(crate) struct BlockMap {
    runs: Vec<Run>,
    /// Host bytes per block (the guest bytes plus the skipped prefix).
    span: u64,
    /// Leading host bytes of each block that hold no guest data.
    skip: u64,
    /// Guest bytes per block.
    block: u64,
    /// Nothing at or past this guest offset is reported.
    vsize: u64,
    /// First run not passed yet (after sealing).
    next: usize,
    /// Guest zeros `[start, end)` not reported yet, to report them in one call.
    zeros: Option<(u64, u64)>,
    sealed: bool,
}

impl BlockMap {
    /// A map of blocks of `block` guest bytes, each stored as `skip` bytes
    /// of no interest followed by the block's data, for a disk of `vsize`.
    pub(crate) fn new(block: u64, skip: u64, vsize: u64) -> BlockMap {
        BlockMap {
            runs: Vec::new(),
            span: block.saturating_add(skip),
            skip,
            block,
            vsize,
            next: 0,
            zeros: None,
            sealed: false,
        }
    }

    /// Host bytes per block.
    pub(crate) fn span(&self) -> u64 {
        self.span
    }

    /// Guest block `guest` is stored at host offset `host`. Calls come in
    /// increasing guest order (the table's order).
    pub(crate) fn map(&mut self, guest: u32, host: u64) -> Result<(), MapFault> {
        if let Some(last) = self.runs.last_mut() {
            let follows_guest = u64::from(last.guest) + u64::from(last.count) == u64::from(guest);
            let follows_host = u64::from(last.count)
                .checked_mul(self.span)
                .and_then(|n| last.host.checked_add(n))
                == Some(host);
            if follows_guest && follows_host && last.count < u32::MAX {
                last.count += 1;
                return Ok(());
            }
        }
        if self.runs.len() >= MAX_RUNS {
            return Err(MapFault::TooFragmented);
        }
        self.runs.push(Run {
            host,
            guest,
            count: 1,
        });
        Ok(())
    }

    /// Guest block `guest` reads as zeros.
    pub(crate) fn zero(&mut self, guest: u32, sink: &mut dyn ExtentSink) -> Result<(), SinkError> {
        let start = u64::from(guest).saturating_mul(self.block);
        let end = start.saturating_add(self.block).min(self.vsize);
        if start >= end {
            return Ok(());
        }
        match self.zeros {
            Some((s, e)) if e == start => self.zeros = Some((s, end)),
            _ => {
                self.flush_zeros(sink)?;
                self.zeros = Some((start, end));
            }
        }
        Ok(())
    }

    /// Reports the zeros held back.
    fn flush_zeros(&mut self, sink: &mut dyn ExtentSink) -> Result<(), SinkError> {
        match self.zeros.take() {
            Some((s, e)) => sink.zero(s, e - s),
            None => Ok(()),
        }
    }

    /// The table is complete: reports the zeros held back, puts the runs in
    /// host order and checks that no two blocks share host bytes and that
    /// none lies in `metadata` (named ranges of the image's own structures).
    pub(crate) fn seal(
        &mut self,
        metadata: &[(Range<u64>, &'static str)],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), SealError> {
        self.flush_zeros(sink).map_err(SealError::Sink)?;
        self.runs.sort_unstable_by_key(|r| r.host);
        self.runs.shrink_to_fit();
        self.sealed = true;
        let mut prev: Option<Run> = None;
        for &r in &self.runs {
            let end = self.end_of(r);
            if let Some(p) = prev {
                let p_end = self.end_of(p);
                if p_end > r.host {
                    // The last block of `p` reaches into the first of `r`.
                    let last = u64::from(p.count) - 1;
                    let first = (
                        u64::from(p.guest) + last,
                        p.host + last.saturating_mul(self.span),
                    );
                    return Err(SealError::Fault(MapFault::Overlap {
                        first,
                        second: (u64::from(r.guest), r.host),
                    }));
                }
            }
            for (m, what) in metadata {
                if m.start < end && r.host < m.end {
                    // The first block of the run that touches the range.
                    let k = m.start.saturating_sub(r.host) / self.span.max(1);
                    return Err(SealError::Fault(MapFault::IntoMetadata {
                        block: u64::from(r.guest) + k,
                        host: r.host + k.saturating_mul(self.span),
                        what,
                    }));
                }
            }
            prev = Some(r);
        }
        Ok(())
    }

    /// End of a run's host bytes (saturated: such a run is refused as past
    /// the end of any real stream).
    fn end_of(&self, r: Run) -> u64 {
        u64::from(r.count)
            .saturating_mul(self.span)
            .saturating_add(r.host)
    }

    /// Reports the guest data among `bytes`, the stream's bytes from host
    /// offset `pos` on. Calls come in increasing `pos` order.
    pub(crate) fn feed(
        &mut self,
        pos: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), SinkError> {
        let end = pos.saturating_add(bytes.len() as u64);
        while let Some(&r) = self.runs.get(self.next) {
            let r_end = self.end_of(r);
            if r_end <= pos {
                self.next += 1;
                continue;
            }
            if r.host >= end {
                break;
            }
            // Blocks of this run that meet [pos, end).
            let from = pos.max(r.host);
            let to = end.min(r_end);
            let mut at = from;
            while at < to {
                let k = (at - r.host) / self.span;
                let block_start = r.host + k * self.span;
                let data_start = block_start + self.skip;
                let block_end = block_start + self.span;
                let piece_end = to.min(block_end);
                if piece_end > data_start {
                    let s = at.max(data_start);
                    let guest_block = u64::from(r.guest) + k;
                    let guest = guest_block
                        .saturating_mul(self.block)
                        .saturating_add(s - data_start);
                    let limit = self.vsize.saturating_sub(guest);
                    let n = (piece_end - s).min(limit);
                    if n > 0 {
                        let i = (s - pos) as usize;
                        if let Some(piece) = bytes.get(i..i + n as usize) {
                            sink.data(guest, piece)?;
                        }
                    }
                }
                at = piece_end;
            }
            if r_end <= end {
                self.next += 1;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// The first block the stream has not passed completely, as
    /// `(guest block, host offset, host end)`, once the stream is at `pos`.
    pub(crate) fn pending(&self, pos: u64) -> Option<(u64, u64, u64)> {
        let r = self.runs.get(self.next)?;
        let k = pos.saturating_sub(r.host) / self.span.max(1);
        let host = r.host + k.saturating_mul(self.span);
        Some((u64::from(r.guest) + k, host, host.saturating_add(self.span)))
    }

    /// Whether [`BlockMap::seal`] has run.
    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Runs kept (for tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.len()
    }
}

/// Why sealing failed.
#[derive(Debug)]
pub(crate) enum SealError {
    /// The map is invalid.
    Fault(MapFault),
    /// The sink refused the zeros.
    Sink(SinkError),
}

/// Splits a table arriving in pieces into 32-bit entries.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryCursor {
    /// Bytes of the table consumed so far.
    pub(crate) parsed: u64,
    carry: [u8; 4],
    carry_len: usize,
}

impl EntryCursor {
    /// Feeds the next `bytes` of the table; calls `each(index, raw entry
    /// bytes)` for every entry completed.
    pub(crate) fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut each: impl FnMut(u64, [u8; 4]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut idx = self.parsed / 4;
        self.parsed = self.parsed.saturating_add(bytes.len() as u64);
        if self.carry_len > 0 {
            let k = (4 - self.carry_len).min(bytes.len());
            let (head, rest) = bytes.split_at(k);
            if let Some(d) = self.carry.get_mut(self.carry_len..self.carry_len + k) {
                d.copy_from_slice(head);
            }
            self.carry_len += k;
            bytes = rest;
            if self.carry_len < 4 {
                return Ok(());
            }
            self.carry_len = 0;
            each(idx, self.carry)?;
            idx += 1;
        }
        let mut it = bytes.chunks_exact(4);
        for e in &mut it {
            let mut a = [0u8; 4];
            a.copy_from_slice(e);
            each(idx, a)?;
            idx += 1;
        }
        let rem = it.remainder();
        if let Some(d) = self.carry.get_mut(..rem.len()) {
            d.copy_from_slice(rem);
        }
        self.carry_len = rem.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CheckingSink;

    #[test]
    fn entries_split_anywhere_come_out_whole() {
        let table: Vec<u8> = (0u8..40).collect();
        for step in 1..9 {
            let mut c = EntryCursor::default();
            let mut got = Vec::new();
            for piece in table.chunks(step) {
                c.feed::<()>(piece, |i, e| {
                    got.push((i, u32::from_be_bytes(e)));
                    Ok(())
                })
                .unwrap();
            }
            let want: Vec<(u64, u32)> = table
                .chunks(4)
                .enumerate()
                .map(|(i, e)| (i as u64, u32::from_be_bytes([e[0], e[1], e[2], e[3]])))
                .collect();
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn contiguous_blocks_become_one_run_and_data_skips_the_prefix() {
        // Blocks of 8 guest bytes behind a 2-byte prefix; guest blocks 0, 1
        // and 3 stored back to back from host 100, block 2 unallocated.
        let mut m = BlockMap::new(8, 2, 30);
        let mut sink = CheckingSink::new();
        sink.set_virtual_size(30).unwrap();
        m.map(0, 100).unwrap();
        m.map(1, 110).unwrap();
        m.zero(2, &mut sink).unwrap();
        m.map(3, 120).unwrap();
        assert_eq!(m.runs(), 2, "block 3 does not follow block 1 in the guest");
        m.seal(&[(0..100, "header")], &mut sink).unwrap();
        let host: Vec<u8> = (0u8..140).collect();
        for (i, piece) in host.chunks(3).enumerate() {
            m.feed(i as u64 * 3, piece, &mut sink).unwrap();
        }
        assert_eq!(m.pending(140), None);
        sink.assert_complete();
        let img = sink.image();
        assert_eq!(&img[0..8], &host[102..110]);
        assert_eq!(&img[8..16], &host[112..120]);
        assert_eq!(&img[16..24], &[0u8; 8]);
        // Block 3 is cut at the virtual size.
        assert_eq!(&img[24..30], &host[122..128]);
    }

    #[test]
    fn overlapping_blocks_and_blocks_in_metadata_are_faults() {
        let mut sink = CheckingSink::new();
        sink.set_virtual_size(64).unwrap();
        let mut m = BlockMap::new(8, 0, 64);
        m.map(0, 100).unwrap();
        m.map(1, 104).unwrap();
        let e = m.seal(&[], &mut sink).unwrap_err();
        assert!(
            matches!(
                e,
                SealError::Fault(MapFault::Overlap {
                    first: (0, 100),
                    second: (1, 104)
                })
            ),
            "{e:?}"
        );
        let mut m = BlockMap::new(8, 0, 64);
        m.map(0, 100).unwrap();
        m.map(1, 108).unwrap();
        m.map(2, 116).unwrap();
        let e = m.seal(&[(110..112, "table")], &mut sink).unwrap_err();
        assert!(
            matches!(
                e,
                SealError::Fault(MapFault::IntoMetadata {
                    block: 1,
                    host: 108,
                    what: "table"
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn the_number_of_runs_is_capped() {
        let mut m = BlockMap::new(512, 0, u64::MAX);
        for g in 0..MAX_RUNS as u32 {
            // Every other host slot: no two blocks merge.
            m.map(g, u64::from(g) * 1024).unwrap();
        }
        assert_eq!(
            m.map(MAX_RUNS as u32, 1 << 40),
            Err(MapFault::TooFragmented)
        );
    }

    #[test]
    fn a_pending_block_is_named_by_where_the_stream_stopped() {
        let mut sink = CheckingSink::new();
        sink.set_virtual_size(32).unwrap();
        let mut m = BlockMap::new(8, 0, 32);
        for g in 0..4 {
            m.map(g, 64 + u64::from(g) * 8).unwrap();
        }
        m.seal(&[], &mut sink).unwrap();
        m.feed(0, &[1u8; 80], &mut sink).unwrap();
        assert_eq!(m.pending(80), Some((2, 80, 88)));
    }
}
