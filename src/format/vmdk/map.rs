//! What the bytes ahead of the stream position are: the grain directory and
//! grain tables still to come, the grains they map (monolithicSparse), and
//! ranges known to hold no guest data (the embedded descriptor, the
//! redundant directory and tables).
//!
//! Regions are disjoint and dropped once the stream has passed them, so the
//! map follows what is pending, never the disk's size: contiguous grains of
//! contiguous guest ranges are one run, contiguous grain tables of
//! consecutive directory entries one region. An entry budget caps it: an
//! image that needs more (a very fragmented sparse extent) is refused with a
//! clear message instead of growing.
//!
//! *Weak* regions (what we skip only to avoid reading ahead for nothing) give
//! way: one that overlaps anything is not added, and one that a table or a
//! grain overlaps is dropped. *Strong* regions (tables, grains) must not
//! overlap each other: QEMU would read the same bytes twice, as two
//! different things, and we refuse the image.

use std::collections::BTreeMap;

use super::VmdkError;

/// What a pending region holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Bytes without guest data, skipped (weak).
    Skip(&'static str),
    /// The redundant grain directory: read only for where the redundant
    /// tables are, so they can be skipped too (weak).
    Rgd,
    /// The grain directory.
    Gd,
    /// Grain tables for directory entries `first..`, one every `gt_span`.
    Gt { first: u64 },
    /// Grain data: host byte `start + k` is guest byte `guest + k`.
    Data { guest: u64 },
}

impl Kind {
    /// For messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Kind::Skip(what) => what,
            Kind::Rgd => "redundant grain directory",
            Kind::Gd => "grain directory",
            Kind::Gt { .. } => "grain table",
            Kind::Data { .. } => "grain",
        }
    }

    fn weak(&self) -> bool {
        matches!(self, Kind::Skip(_) | Kind::Rgd)
    }

    /// A table whose entries are read.
    pub(crate) fn table(&self) -> bool {
        matches!(self, Kind::Rgd | Kind::Gd | Kind::Gt { .. })
    }
}

/// A pending region of host bytes `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) end: u64,
    pub(crate) kind: Kind,
    /// Bytes from the start already read (tables may be read out of order,
    /// before the stream reaches them).
    pub(crate) parsed: u64,
    /// A table entry cut between two pieces.
    pub(crate) carry: Carry,
}

/// The first bytes of a 4-byte entry cut between two pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carry {
    bytes: [u8; 4],
    len: usize,
}

impl Carry {
    /// Splits `bytes`, which start `at` bytes into a table, into whole
    /// little-endian entries: pushes `(byte offset in the table, value)`.
    pub(crate) fn words(&mut self, at: u64, bytes: &[u8], out: &mut Vec<(u64, u32)>) {
        let mut off = at;
        let mut rest = bytes;
        if self.len > 0 {
            let k = (4 - self.len).min(rest.len());
            if let (Some(d), Some(s)) = (self.bytes.get_mut(self.len..self.len + k), rest.get(..k))
            {
                d.copy_from_slice(s);
            }
            self.len += k;
            rest = rest.get(k..).unwrap_or_default();
            off += k as u64;
            if self.len < 4 {
                return;
            }
            out.push((off - 4, u32::from_le_bytes(self.bytes)));
            self.len = 0;
        }
        let mut it = rest.chunks_exact(4);
        for w in &mut it {
            let mut a = [0u8; 4];
            a.copy_from_slice(w);
            out.push((off, u32::from_le_bytes(a)));
            off += 4;
        }
        let tail = it.remainder();
        if let Some(d) = self.bytes.get_mut(..tail.len()) {
            d.copy_from_slice(tail);
        }
        self.len = tail.len();
    }
}

/// The pending regions, by start.
#[derive(Debug)]
pub(crate) struct Map {
    regions: BTreeMap<u64, Region>,
    /// Entries allowed.
    max: usize,
    /// Bytes each grain table takes (to merge adjacent ones).
    gt_span: u64,
}

impl Map {
    pub(crate) fn new(max: usize, gt_span: u64) -> Map {
        Map {
            regions: BTreeMap::new(),
            max,
            gt_span,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.regions.len()
    }

    /// The region holding host byte `pos`, by its start.
    pub(crate) fn at(&self, pos: u64) -> Option<u64> {
        match self.regions.range(..=pos).next_back() {
            Some((&s, r)) if r.end > pos => Some(s),
            _ => None,
        }
    }

    pub(crate) fn get(&self, start: u64) -> Option<&Region> {
        self.regions.get(&start)
    }

    pub(crate) fn get_mut(&mut self, start: u64) -> Option<&mut Region> {
        self.regions.get_mut(&start)
    }

    pub(crate) fn remove(&mut self, start: u64) -> Option<Region> {
        self.regions.remove(&start)
    }

    /// Start of the first region at or after `pos`.
    pub(crate) fn next_start(&self, pos: u64) -> Option<u64> {
        self.regions.range(pos..).next().map(|(&s, _)| s)
    }

    /// The first strong region overlapping `[a, b)`, with its start.
    pub(crate) fn strong_overlap(&self, a: u64, b: u64) -> Option<(u64, &Region)> {
        self.regions
            .range(..b)
            .rev()
            .take_while(|(_, r)| r.end > a)
            .find(|(_, r)| !r.kind.weak())
            .map(|(&s, r)| (s, r))
    }

    /// Tables not read to their end: `(start, region)`.
    pub(crate) fn unread_tables(&self) -> impl Iterator<Item = (u64, &Region)> {
        self.regions
            .iter()
            .filter(|(s, r)| !r.kind.weak() && r.kind.table() && **s + r.parsed < r.end)
            .map(|(&s, r)| (s, r))
    }

    /// The first strong region, with its start.
    pub(crate) fn first_strong(&self) -> Option<(u64, &Region)> {
        self.regions
            .iter()
            .find(|(_, r)| !r.kind.weak())
            .map(|(&s, r)| (s, r))
    }

    /// Adds a weak region, unless it overlaps anything or the budget is
    /// spent (it only spares reading ahead).
    pub(crate) fn insert_weak(&mut self, start: u64, end: u64, kind: Kind) {
        let overlaps = self
            .regions
            .range(..end)
            .next_back()
            .is_some_and(|(_, r)| r.end > start);
        if start >= end || overlaps || self.regions.len() >= self.max {
            return;
        }
        if let Kind::Skip(what) = kind {
            if let Some((_, prev)) = self.regions.range_mut(..start).next_back() {
                if prev.end == start && prev.kind == Kind::Skip(what) {
                    prev.end = end;
                    return;
                }
            }
        }
        self.regions.insert(start, region(end, kind));
    }

    /// Adds a strong region: a table or a grain. Refuses one that overlaps
    /// another; drops the weak regions it overlaps.
    pub(crate) fn insert(&mut self, start: u64, end: u64, kind: Kind) -> Result<(), VmdkError> {
        if start >= end {
            return Ok(());
        }
        if let Some((s, r)) = self.strong_overlap(start, end) {
            return Err(VmdkError::Overlap {
                what: kind.name(),
                at: start,
                other: r.kind.name(),
                other_at: s,
            });
        }
        let weak: Vec<u64> = self
            .regions
            .range(..end)
            .rev()
            .take_while(|(_, r)| r.end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in weak {
            self.regions.remove(&s);
        }
        if let Some((&s, prev)) = self.regions.range_mut(..start).next_back() {
            if prev.end == start && prev.parsed == 0 {
                let merged = match (&prev.kind, &kind) {
                    (Kind::Data { guest: g }, Kind::Data { guest }) => {
                        g.checked_add(start - s) == Some(*guest)
                    }
                    (Kind::Gt { first: f }, Kind::Gt { first }) => {
                        self.gt_span > 0
                            && (start - s) % self.gt_span == 0
                            && f.checked_add((start - s) / self.gt_span) == Some(*first)
                    }
                    _ => false,
                };
                if merged {
                    prev.end = end;
                    return Ok(());
                }
            }
        }
        if self.regions.len() >= self.max {
            return Err(VmdkError::Budget { entries: self.max });
        }
        self.regions.insert(start, region(end, kind));
        Ok(())
    }
}

fn region(end: u64, kind: Kind) -> Region {
    Region {
        end,
        kind,
        parsed: 0,
        carry: Carry::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_across_pieces() {
        let table: Vec<u8> = (0..40u32).flat_map(|v| (v * 7).to_le_bytes()).collect();
        for piece in [1usize, 3, 4, 5, 160] {
            let mut c = Carry::default();
            let mut out = Vec::new();
            let mut at = 0u64;
            for p in table.chunks(piece) {
                c.words(at, p, &mut out);
                at += p.len() as u64;
            }
            let want: Vec<(u64, u32)> = (0..40u32).map(|v| (u64::from(v) * 4, v * 7)).collect();
            assert_eq!(out, want, "piece {piece}");
        }
    }

    #[test]
    fn runs_merge_overlaps_refuse_weak_regions_yield() {
        let mut m = Map::new(100, 2048);
        m.insert_weak(0, 512, Kind::Skip("descriptor"));
        m.insert_weak(512, 1024, Kind::Skip("descriptor"));
        assert_eq!(m.len(), 1);
        for i in 0..10u64 {
            m.insert(
                65536 + i * 512,
                65536 + (i + 1) * 512,
                Kind::Data { guest: i * 512 },
            )
            .expect("data");
        }
        assert_eq!(m.len(), 2, "one run for contiguous grains");
        for i in 0..4u64 {
            m.insert(
                4096 + i * 2048,
                4096 + (i + 1) * 2048,
                Kind::Gt { first: i },
            )
            .expect("gt");
        }
        assert_eq!(m.len(), 3, "one region for contiguous tables");
        let e = m
            .insert(66000, 66100, Kind::Data { guest: 0 })
            .expect_err("overlap");
        assert!(
            e.to_string().contains("overlaps the grain at 0x10000"),
            "{e}"
        );
        // A table over the descriptor drops it.
        m.insert(0, 512, Kind::Gd).expect("gd");
        assert_eq!(m.get(0).map(|r| &r.kind), Some(&Kind::Gd));
        assert_eq!(m.at(700), None);
        // A weak region over a strong one is not added.
        m.insert_weak(4000, 5000, Kind::Skip("x"));
        assert_eq!(m.at(4000), None);
        assert_eq!(m.at(4096), Some(4096));
    }

    #[test]
    fn budget_is_enforced() {
        let mut m = Map::new(10, 2048);
        let mut err = None;
        for i in 0..100u64 {
            if let Err(e) = m.insert(i * 1024, i * 1024 + 512, Kind::Data { guest: i * 4096 }) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(VmdkError::Budget { entries: 10 })));
    }
}
