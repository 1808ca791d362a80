//! Partially filled aligned blocks.
//!
//! `O_DIRECT` writes whole aligned blocks, but extents come with any alignment
//! and in any order: a qcow2 image with 512-byte clusters fills a 4 KiB file
//! block in eight pieces that may arrive far apart. This cache keeps such
//! blocks until they are complete (then they are written whole) or until the
//! cache is over budget (then the least recently touched block is merged with
//! what is on disk: read-modify-write). Memory is bounded by `max_blocks`.

use std::collections::HashMap;

use crate::io::AlignedBuf;

/// Bytes to place into a block: a slice, or that many zeros.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Src<'a> {
    Data(&'a [u8]),
    Zeros(usize),
}

impl<'a> Src<'a> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Src::Data(d) => d.len(),
            Src::Zeros(n) => *n,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits into the first `n` bytes and the rest (`n` is clamped).
    pub(crate) fn split(self, n: usize) -> (Src<'a>, Src<'a>) {
        match self {
            Src::Data(d) => {
                let (a, b) = d.split_at(n.min(d.len()));
                (Src::Data(a), Src::Data(b))
            }
            Src::Zeros(z) => {
                let a = n.min(z);
                (Src::Zeros(a), Src::Zeros(z - a))
            }
        }
    }

    /// Copies (or zero-fills) into `dst`, which must be exactly `len()` long.
    pub(crate) fn copy_to(&self, dst: &mut [u8]) {
        match self {
            Src::Data(d) => dst.copy_from_slice(d),
            Src::Zeros(_) => dst.fill(0),
        }
    }
}

/// A block leaving the cache: either complete, or to be merged with the disk.
/// Its bytes stay in the cache's slab until [`PartialCache::recycle`].
pub(crate) struct Block {
    /// Byte offset of the block (a multiple of the alignment).
    pub start: u64,
    slot: usize,
    /// Covered byte ranges `[a, b)` within the block, sorted and disjoint.
    pub ranges: Vec<(usize, usize)>,
}

struct Entry {
    slot: usize,
    ranges: Vec<(usize, usize)>,
    last_use: u64,
}

/// A piece that cannot be placed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PartialError {
    /// Two extents claimed the same byte: a decoder bug or a hostile image.
    #[error("extent at offset {0} overlaps bytes already received")]
    Overlap(u64),
    /// The caller split a piece wrongly (an internal error, reported, not panicked).
    #[error("partial piece at offset {0} crosses a block boundary")]
    CrossesBlock(u64),
    /// The caller did not make room first (an internal error).
    #[error("no free partial-block slot for offset {0}")]
    Full(u64),
}

/// The bounded cache of partial blocks.
pub(crate) struct PartialCache {
    align: usize,
    /// `max_blocks` aligned slots of `align` bytes each.
    slab: AlignedBuf,
    entries: HashMap<u64, Entry>,
    /// Free slots, each with a range list kept for its capacity.
    free: Vec<(usize, Vec<(usize, usize)>)>,
    tick: u64,
}

impl PartialCache {
    /// A cache of at most `max_blocks` blocks of `align` bytes.
    pub(crate) fn new(align: usize, max_blocks: usize) -> Self {
        let max_blocks = max_blocks.max(1);
        PartialCache {
            align,
            slab: AlignedBuf::new(align.saturating_mul(max_blocks), align),
            entries: HashMap::with_capacity(max_blocks),
            free: (0..max_blocks).rev().map(|s| (s, Vec::new())).collect(),
            tick: 0,
        }
    }

    /// Number of blocks held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no block is held.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The block's bytes (aligned, `align` long).
    pub(crate) fn bytes(&self, block: &Block) -> &[u8] {
        let at = block.slot * self.align;
        &self.slab.as_slice()[at..at + self.align]
    }

    /// True when every byte of the block was supplied.
    pub(crate) fn is_complete(&self, block: &Block) -> bool {
        matches!(block.ranges.as_slice(), [(0, b)] if *b == self.align)
    }

    /// If adding a new block at `start` would exceed the budget, removes and
    /// returns the least recently touched block, which the caller must merge
    /// with the disk.
    pub(crate) fn make_room_for(&mut self, start: u64) -> Option<Block> {
        if self.entries.contains_key(&start) || !self.free.is_empty() {
            return None;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_use)
            .map(|(&k, _)| k)?;
        self.take(victim)
    }

    /// Places `src` at byte `offset` (it must not cross a block boundary).
    /// Returns the block when this completed it. The caller makes room first
    /// ([`Self::make_room_for`]); without room this fails.
    pub(crate) fn put(&mut self, offset: u64, src: Src<'_>) -> Result<Option<Block>, PartialError> {
        let align = self.align as u64;
        let start = offset - offset % align;
        let a = (offset - start) as usize;
        let b = a.saturating_add(src.len());
        if b > self.align {
            return Err(PartialError::CrossesBlock(offset));
        }
        if src.is_empty() {
            return Ok(None);
        }
        self.tick += 1;
        let tick = self.tick;
        if !self.entries.contains_key(&start) {
            let (slot, ranges) = self.free.pop().ok_or(PartialError::Full(offset))?;
            self.entries.insert(
                start,
                Entry {
                    slot,
                    ranges,
                    last_use: tick,
                },
            );
        }
        let align_len = self.align;
        let entry = self
            .entries
            .get_mut(&start)
            .ok_or(PartialError::Full(offset))?;
        entry.last_use = tick;
        if entry.ranges.iter().any(|&(s, e)| s < b && a < e) {
            return Err(PartialError::Overlap(offset));
        }
        let at = entry.slot * align_len;
        src.copy_to(&mut self.slab.as_mut_slice()[at + a..at + b]);
        insert_range(&mut entry.ranges, a, b);
        let complete = matches!(entry.ranges.as_slice(), [(0, e)] if *e == align_len);
        Ok(if complete { self.take(start) } else { None })
    }

    /// Removes every block, in offset order (for the final flush).
    pub(crate) fn drain(&mut self) -> Vec<Block> {
        let mut keys: Vec<u64> = self.entries.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.take(k)).collect()
    }

    /// Gives a written block's slot back for reuse.
    pub(crate) fn recycle(&mut self, mut block: Block) {
        block.ranges.clear();
        self.free.push((block.slot, block.ranges));
    }

    fn take(&mut self, start: u64) -> Option<Block> {
        self.entries.remove(&start).map(|e| Block {
            start,
            slot: e.slot,
            ranges: e.ranges,
        })
    }
}

/// Inserts `[a, b)` into a sorted list of disjoint ranges, merging neighbours.
fn insert_range(ranges: &mut Vec<(usize, usize)>, a: usize, b: usize) {
    let pos = ranges.partition_point(|&(s, _)| s < a);
    ranges.insert(pos, (a, b));
    // Merge with the next, then with the previous.
    if pos + 1 < ranges.len() && ranges[pos].1 == ranges[pos + 1].0 {
        ranges[pos].1 = ranges[pos + 1].1;
        ranges.remove(pos + 1);
    }
    if pos > 0 && ranges[pos - 1].1 == ranges[pos].0 {
        ranges[pos - 1].1 = ranges[pos].1;
        ranges.remove(pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_in_any_order_complete_a_block() {
        let mut c = PartialCache::new(4096, 4);
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let order = [3usize, 0, 7, 5, 1, 6, 2];
        for &i in &order {
            let r = c
                .put(
                    8192 + i as u64 * 512,
                    Src::Data(&data[i * 512..(i + 1) * 512]),
                )
                .expect("no overlap");
            assert!(r.is_none());
        }
        // The last piece is zeros.
        let b = c
            .put(8192 + 4 * 512, Src::Zeros(512))
            .expect("ok")
            .expect("complete");
        assert!(c.is_complete(&b));
        assert_eq!(b.start, 8192);
        let mut want = data.clone();
        want[2048..2560].fill(0);
        assert_eq!(c.bytes(&b), &want[..]);
        assert_eq!(c.bytes(&b).as_ptr() as usize % 4096, 0, "aligned");
        assert!(c.is_empty());
        c.recycle(b);
    }

    #[test]
    fn overlap_is_refused() {
        let mut c = PartialCache::new(4096, 4);
        c.put(100, Src::Zeros(100)).expect("first");
        assert!(matches!(
            c.put(150, Src::Zeros(10)),
            Err(PartialError::Overlap(150))
        ));
        assert!(matches!(
            c.put(4000, Src::Zeros(200)),
            Err(PartialError::CrossesBlock(4000))
        ));
    }

    #[test]
    fn evicts_least_recently_used_when_full() {
        let mut c = PartialCache::new(4096, 2);
        c.put(0, Src::Zeros(10)).expect("a");
        c.put(4096, Src::Zeros(10)).expect("b");
        c.put(20, Src::Zeros(10)).expect("touch a");
        assert!(
            c.make_room_for(4096).is_none(),
            "existing block needs no room"
        );
        let v = c.make_room_for(8192).expect("victim");
        assert_eq!(v.start, 4096);
        assert_eq!(v.ranges, vec![(0, 10)]);
        assert!(!c.is_complete(&v));
        assert_eq!(c.len(), 1);
        c.recycle(v);
        c.put(8192, Src::Zeros(1)).expect("c");
        let all = c.drain();
        assert_eq!(
            all.iter().map(|b| b.start).collect::<Vec<_>>(),
            vec![0, 8192]
        );
        assert_eq!(all[0].ranges, vec![(0, 10), (20, 30)]);
    }

    #[test]
    fn ranges_merge() {
        let mut r = Vec::new();
        insert_range(&mut r, 10, 20);
        insert_range(&mut r, 30, 40);
        insert_range(&mut r, 20, 30);
        assert_eq!(r, vec![(10, 40)]);
        insert_range(&mut r, 0, 5);
        insert_range(&mut r, 5, 10);
        assert_eq!(r, vec![(0, 40)]);
    }
}
