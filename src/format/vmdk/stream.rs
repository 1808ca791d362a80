//! The grains of a streamOptimized extent: from `overHead` on, the file is
//! a sequence of sector-aligned markers ("Virtual Disk Format 1.1",
//! *Stream-Optimized Compressed Sparse Extents*):
//! - a grain marker: `u64 lba`, `u32 size` (non-zero), then `size` bytes of
//!   zlib stream, padded to the sector;
//! - a metadata marker: `u64 numSectors`, `u32 0`, `u32 type`, padded to
//!   the sector, then `numSectors` sectors: a grain table (type 1), the grain
//!   directory (2), the footer (3, a copy of the header whose `gdOffset` is
//!   real); type 0 is the end of the stream.
//!
//! QEMU writes grains only (its tables come before `overHead`, issue #1357:
//! no footer, no end-of-stream marker); VMware writes a grain table after
//! each run of grains, then the directory, the footer and the end-of-stream
//! marker, which with the footer must be the file's last two sectors.
//!
//! Each grain is placed at its marker's LBA and inflated on the pool. The
//! grain tables QEMU would read are summed into a fingerprint
//! ([`super::fingerprint`]), and so are the markers; `finish` compares them.

use std::collections::BTreeMap;

use crate::format::inflate::{Done, Pool};
use crate::format::{ExtentSink, FormatError};
use crate::pace::Pace;

use super::body::Body;
use super::fingerprint::{Fingerprint, Sum};
use super::header::{sectors_for, Geometry, Header, GD_AT_END, SECTOR};
use super::map::{Carry, Kind};
use super::VmdkError;

/// Grain tables summed before the directory placed them, kept at most (one
/// per 32 MiB of disk with 64 KiB grains: 4 TiB; a few dozen bytes each).
const MAX_SUMMARIES: usize = 1 << 17;
/// Runs of placed grains kept before the lowest half are finished: their
/// gaps reported as zeros, and a later grain there refused. Grains in guest
/// order keep one run per allocated extent; this bounds the set for disks
/// with many extents and still lets a stream go back a few thousand runs.
const PLACED_RUNS: usize = 1 << 12;

/// A grain table read before the directory says which one it is: summed
/// with entry indices, below and from the cut of the disk's last table.
#[derive(Debug, Clone, Copy, Default)]
struct Summary {
    low: Sum,
    high: Sum,
}

/// What the marker reader is in the middle of.
enum Item {
    /// A marker at `at`: its first bytes.
    Marker { at: u64, buf: [u8; 16], len: usize },
    /// A grain's compressed bytes, then its padding up to `end`.
    Grain {
        at: u64,
        guest: u64,
        need: usize,
        buf: Vec<u8>,
        end: u64,
    },
    /// The sectors after a metadata marker at `at`: `[start, end)`.
    Meta {
        at: u64,
        start: u64,
        end: u64,
        what: Meta,
    },
    /// After the end-of-stream marker, whose sector ends at `from`.
    Ended { from: u64 },
}

/// What a metadata marker's sectors hold, and how far they are read.
enum Meta {
    /// A grain table, `Some(i)` when the directory named it already.
    Gt {
        index: Option<u64>,
        carry: Carry,
        summary: Summary,
    },
    /// The directory QEMU reads.
    Gd { carry: Carry },
    /// The footer.
    Footer { buf: Vec<u8> },
    /// Something QEMU does not read here.
    Ignore,
}

/// The streamOptimized side of the decoder.
pub(crate) struct Stream {
    /// Host offset of the first marker (`overHead`).
    pub(crate) start: u64,
    pool: Pool,
    done: Vec<Done>,
    pace: Pace,
    paced: bool,
    item: Item,
    fp: Fingerprint,
    /// Over the allocated entries of the tables QEMU reads.
    tables: Sum,
    /// Over the grain markers.
    markers: Sum,
    /// Grain tables read before the directory, by sector.
    summaries: BTreeMap<u64, Summary>,
    /// Runs of guest grains placed: start -> end.
    placed: BTreeMap<u64, u64>,
    /// Grains below this are all reported (data or zeros).
    finished: u64,
    /// Entries of the disk's last grain table that lie inside the disk.
    cut: u64,
    /// Sector of the directory read after a directory marker (`GD_AT_END`).
    candidate: Option<u64>,
    footer_seen: bool,
    eos_seen: bool,
    /// The last item was the footer.
    after_footer: bool,
    words: Vec<(u64, u32)>,
}

impl Stream {
    pub(crate) fn new(pool: Pool, pace: Pace, start: u64, geo: &Geometry) -> Stream {
        let cut = geo.grains - geo.gd_entries.saturating_sub(1) * geo.gtes;
        Stream {
            start,
            pool,
            done: Vec::new(),
            pace,
            paced: false,
            item: Item::Marker {
                at: start,
                buf: [0; 16],
                len: 0,
            },
            fp: Fingerprint::new(),
            tables: Sum::default(),
            markers: Sum::default(),
            summaries: BTreeMap::new(),
            placed: BTreeMap::new(),
            finished: 0,
            cut,
            candidate: None,
            footer_seen: false,
            eos_seen: false,
            after_footer: false,
            words: Vec::new(),
        }
    }

    /// An entry of a table whose place in the directory is known.
    pub(crate) fn table_entry(&mut self, g: u64, v: u32, zero_grain: bool) {
        if v != 0 && !(v == 1 && zero_grain) {
            self.fp.add(&mut self.tables, g, u64::from(v));
        }
    }

    /// Marks guest grain `g` placed.
    fn place(&mut self, g: u64) -> Placement {
        if g < self.finished {
            return Placement::Late;
        }
        if let Some((_, &e)) = self.placed.range(..=g).next_back() {
            if e > g {
                return Placement::Again;
            }
        }
        let next = self.placed.get(&(g + 1)).copied();
        if let Some((_, e)) = self
            .placed
            .range_mut(..g)
            .next_back()
            .filter(|(_, e)| **e == g)
        {
            *e = next.unwrap_or(g + 1);
            if next.is_some() {
                self.placed.remove(&(g + 1));
            }
            return Placement::Fresh;
        }
        if let Some(end) = next {
            self.placed.remove(&(g + 1));
            self.placed.insert(g, end);
        } else {
            self.placed.insert(g, g + 1);
        }
        Placement::Fresh
    }

    /// Takes the `n` lowest runs of placed grains out of the set: the gaps
    /// below their end read as zeros (returned, to be emitted), and no grain
    /// may come there any more.
    fn finish_lowest(&mut self, n: usize) -> Vec<(u64, u64)> {
        let runs: Vec<(u64, u64)> = self.placed.iter().take(n).map(|(&a, &b)| (a, b)).collect();
        let mut gaps = Vec::new();
        for (a, b) in runs {
            if a > self.finished {
                gaps.push((self.finished, a));
            }
            self.finished = b;
            self.placed.remove(&a);
        }
        gaps
    }
}

/// Where a grain marker's LBA falls.
enum Placement {
    /// A grain not seen before.
    Fresh,
    /// One an earlier marker gave.
    Again,
    /// Below grains already finished (zeros reported around them).
    Late,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl Body {
    fn side(&mut self) -> Result<&mut Stream, FormatError> {
        self.stream
            .as_mut()
            .ok_or(FormatError::Internal("vmdk: no stream state"))
    }

    /// Takes marker-area bytes at `pos`; returns how many.
    pub(crate) fn stream_step(
        &mut self,
        pos: u64,
        b: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<usize, FormatError> {
        let gd_at_end = self.geo.gd_at_end;
        let s = self.side()?;
        match &mut s.item {
            Item::Ended { from } => {
                if gd_at_end && pos >= *from {
                    return Err(VmdkError::DataAfterEos { at: pos }.into());
                }
                let rest = if gd_at_end { *from - pos } else { u64::MAX };
                Ok(rest.min(b.len() as u64) as usize)
            }
            Item::Marker { at, buf, len } => {
                let at = *at;
                let want = if *len >= 12 && u32_at(buf, 8) == 0 {
                    16
                } else {
                    12
                };
                let k = (want - *len).min(b.len());
                if let (Some(d), Some(src)) = (buf.get_mut(*len..*len + k), b.get(..k)) {
                    d.copy_from_slice(src);
                }
                *len += k;
                let (ready, bytes) = (*len, *buf);
                if ready == 12 && u32_at(&bytes, 8) != 0 {
                    self.start_grain(at, &bytes, sink)?;
                } else if ready == 16 {
                    self.start_meta(at, &bytes)?;
                }
                Ok(k)
            }
            Item::Grain {
                at,
                guest,
                need,
                buf,
                end,
            } => {
                let (at, guest, end) = (*at, *guest, *end);
                let k;
                if buf.len() < *need {
                    k = (*need - buf.len()).min(b.len());
                    buf.extend_from_slice(b.get(..k).unwrap_or_default());
                    if buf.len() == *need {
                        // Submitted: what is left up to `end` is padding.
                        *need = 0;
                        let input = std::mem::take(buf);
                        self.submit(at, guest, input, sink)?;
                    }
                } else {
                    k = (end - pos).min(b.len() as u64) as usize;
                }
                if pos + k as u64 >= end {
                    if let Some(s) = self.stream.as_mut() {
                        s.item = Item::Marker {
                            at: end,
                            buf: [0; 16],
                            len: 0,
                        };
                    }
                }
                Ok(k)
            }
            Item::Meta { .. } => self.meta_bytes(pos, b, sink),
        }
    }

    /// A grain marker at `at` is complete.
    fn start_grain(
        &mut self,
        at: u64,
        m: &[u8; 16],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let (lba, size) = (u64_at(m, 0), u64::from(u32_at(m, 8)));
        let gs = self.hdr.grain_sectors;
        let capacity = self.hdr.capacity;
        let max = 2 * self.geo.grain;
        if lba % gs != 0 {
            return Err(VmdkError::GrainAlign { at, lba, grain: gs }.into());
        }
        if lba >= capacity {
            return Err(VmdkError::GrainLba { at, lba, capacity }.into());
        }
        if size > max {
            return Err(VmdkError::MarkerGrainSize { at, size, max }.into());
        }
        let end = at + sectors_for(12 + size) * SECTOR;
        if let Some((o, r)) = self.map.strong_overlap(at, end) {
            return Err(VmdkError::Overlap {
                what: "grain",
                at,
                other: r.kind.name(),
                other_at: o,
            }
            .into());
        }
        let g = lba / gs;
        let guest = g * self.geo.grain;
        let s = self.side()?;
        match s.place(g) {
            Placement::Fresh => {}
            Placement::Again => return Err(VmdkError::DuplicateGrain { at, lba }.into()),
            Placement::Late => return Err(VmdkError::OutOfOrder { at, lba }.into()),
        }
        s.fp.add(&mut s.markers, g, at / SECTOR);
        if s.placed.len() > PLACED_RUNS {
            let gaps = s.finish_lowest(PLACED_RUNS / 2);
            let grain = self.geo.grain;
            for (a, b) in gaps {
                self.emit
                    .zero(sink, a * grain, (b - a) * grain)
                    .map_err(FormatError::Sink)?;
            }
        }
        let s = self.side()?;
        if !s.paced {
            s.paced = true;
            s.pace.set_decompressing();
        }
        let buf = s.pool.buffer();
        s.after_footer = false;
        s.item = Item::Grain {
            at,
            guest,
            need: size as usize,
            buf,
            end,
        };
        Ok(())
    }

    /// A metadata marker at `at` is complete.
    fn start_meta(&mut self, at: u64, m: &[u8; 16]) -> Result<(), FormatError> {
        let (sectors, kind) = (u64_at(m, 0), u32_at(m, 12));
        let gd_at_end = self.geo.gd_at_end;
        let start = at + SECTOR;
        if kind == 0 {
            let s = self.side()?;
            if gd_at_end {
                if !s.footer_seen {
                    return Err(VmdkError::NoFooter.into());
                }
                if !s.after_footer || sectors != 0 {
                    return Err(VmdkError::FooterNotLast.into());
                }
            }
            s.eos_seen = true;
            s.item = Item::Ended { from: start };
            return Ok(());
        }
        let len = sectors
            .checked_mul(SECTOR)
            .filter(|l| start.checked_add(*l).is_some())
            .ok_or_else(|| length(kind, at, sectors, "too many".into()))?;
        let end = start + len;
        if let Some((o, r)) = self.map.strong_overlap(at, start) {
            return Err(overlap("metadata marker", at, r.kind.name(), o));
        }
        let what = match kind {
            1 => {
                if len != self.geo.gt_span {
                    let want = format!("a grain table takes {}", self.geo.gt_span / SECTOR);
                    return Err(length(kind, at, sectors, want));
                }
                let index = match self.map.get(start) {
                    Some(r) if r.end == end && matches!(r.kind, Kind::Gt { .. }) => match r.kind {
                        Kind::Gt { first } => Some(first),
                        _ => None,
                    },
                    _ => None,
                };
                if index.is_some() {
                    self.map.remove(start);
                    self.tables_pending = self.tables_pending.saturating_sub(1);
                } else if let Some((o, r)) = self.map.strong_overlap(start, end) {
                    return Err(overlap("grain table", start, r.kind.name(), o));
                }
                Meta::Gt {
                    index,
                    carry: Carry::default(),
                    summary: Summary::default(),
                }
            }
            2 => {
                let need = self.geo.gd_entries * 4;
                if len < need {
                    let want = format!("the grain directory needs {}", sectors_for(need));
                    return Err(length(kind, at, sectors, want));
                }
                let header_gd = self.map.get(start).is_some_and(|r| r.kind == Kind::Gd);
                if header_gd {
                    self.map.remove(start);
                } else if let Some((o, r)) = self.map.strong_overlap(start, end) {
                    return Err(overlap("grain directory", start, r.kind.name(), o));
                }
                if header_gd {
                    Meta::Gd {
                        carry: Carry::default(),
                    }
                } else if gd_at_end {
                    let s = self.side()?;
                    if s.candidate.is_some() {
                        return Err(VmdkError::MultipleGd { at }.into());
                    }
                    s.candidate = Some(start / SECTOR);
                    Meta::Gd {
                        carry: Carry::default(),
                    }
                } else {
                    Meta::Ignore
                }
            }
            3 => {
                if sectors != 1 {
                    return Err(length(kind, at, sectors, "a footer takes 1".into()));
                }
                if let Some((o, r)) = self.map.strong_overlap(start, end) {
                    return Err(overlap("footer", start, r.kind.name(), o));
                }
                Meta::Footer { buf: Vec::new() }
            }
            k => return Err(VmdkError::MarkerType { at, kind: k }.into()),
        };
        let s = self.side()?;
        s.after_footer = false;
        s.item = Item::Meta {
            at,
            start,
            end,
            what,
        };
        Ok(())
    }

    /// Bytes of a metadata marker's sector or of the sectors after it.
    fn meta_bytes(
        &mut self,
        pos: u64,
        b: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<usize, FormatError> {
        let gtes = self.geo.gtes;
        let gd_entries = self.geo.gd_entries;
        let Some(s) = self.stream.as_mut() else {
            return Err(FormatError::Internal("vmdk: no stream state"));
        };
        let Item::Meta {
            at,
            start,
            end,
            what,
        } = &mut s.item
        else {
            return Err(FormatError::Internal("vmdk: not in metadata"));
        };
        let (marker, start, end) = (*at, *start, *end);
        if pos < start {
            // The rest of the marker's sector.
            return Ok((start - pos).min(b.len() as u64) as usize);
        }
        let n = (end - pos).min(b.len() as u64) as usize;
        let piece = b.get(..n).unwrap_or_default();
        let rel = pos - start;
        let mut words = std::mem::take(&mut s.words);
        words.clear();
        let mut gd = false;
        match what {
            Meta::Gt {
                index,
                carry,
                summary,
            } => {
                carry.words(rel, piece, &mut words);
                match *index {
                    Some(i) => {
                        for &(off, v) in &words {
                            let (j, zero) = (off / 4, self.geo.zero_grain);
                            let g = i * gtes + j;
                            if j < gtes && g < self.geo.grains && v != 0 && !(v == 1 && zero) {
                                s.fp.add(&mut s.tables, g, u64::from(v));
                            }
                        }
                    }
                    None => {
                        for &(off, v) in &words {
                            let j = off / 4;
                            if j < gtes && v != 0 && !(v == 1 && self.geo.zero_grain) {
                                let sum = if j < s.cut {
                                    &mut summary.low
                                } else {
                                    &mut summary.high
                                };
                                s.fp.add(sum, j, u64::from(v));
                            }
                        }
                    }
                }
            }
            Meta::Gd { carry } => {
                carry.words(rel, piece, &mut words);
                gd = true;
            }
            Meta::Footer { buf } => buf.extend_from_slice(piece),
            Meta::Ignore => {}
        }
        let result = if gd {
            words
                .iter()
                .filter(|(off, _)| off / 4 < gd_entries)
                .try_for_each(|&(off, v)| self.gd_entry(off / 4, v, pos, sink))
        } else {
            Ok(())
        };
        if let Some(s) = self.stream.as_mut() {
            s.words = words;
        }
        result?;
        if pos + n as u64 >= end {
            self.end_meta(marker, start)?;
        }
        Ok(n)
    }

    /// The sectors after a metadata marker are all in.
    fn end_meta(&mut self, marker: u64, start: u64) -> Result<(), FormatError> {
        let gd_at_end = self.geo.gd_at_end;
        let s = self.side()?;
        let next = Item::Marker {
            at: match &s.item {
                Item::Meta { end, .. } => *end,
                _ => start,
            },
            buf: [0; 16],
            len: 0,
        };
        let item = std::mem::replace(&mut s.item, next);
        let Item::Meta { what, .. } = item else {
            return Ok(());
        };
        match what {
            Meta::Gt {
                index: None,
                summary,
                ..
            } => {
                if s.summaries.len() >= MAX_SUMMARIES {
                    return Err(VmdkError::Budget {
                        entries: MAX_SUMMARIES,
                    }
                    .into());
                }
                s.summaries.insert(start / SECTOR, summary);
            }
            Meta::Gd { .. } => self.gd_read = true,
            Meta::Footer { buf } => {
                if !gd_at_end {
                    return Ok(());
                }
                let footer = Header::parse(&buf).map_err(|_| VmdkError::BadFooter { at: start })?;
                if footer.version > 3 {
                    return Err(VmdkError::Version(footer.version).into());
                }
                if let Some((field, header, footer)) = self.hdr.differs(&footer) {
                    return Err(VmdkError::FooterField {
                        field,
                        header,
                        footer,
                    }
                    .into());
                }
                let s = self.side()?;
                if footer.gd_offset == GD_AT_END || s.candidate != Some(footer.gd_offset) {
                    return Err(VmdkError::FooterGd(footer.gd_offset).into());
                }
                s.footer_seen = true;
                s.after_footer = true;
            }
            _ => {}
        }
        let _ = marker;
        Ok(())
    }

    /// Directory entry `i` names grain table `v` (sectors; 0: none).
    pub(crate) fn stream_gd_entry(&mut self, i: u64, v: u32, pos: u64) -> Result<(), FormatError> {
        if v == 0 {
            return Ok(());
        }
        let last = i + 1 == self.geo.gd_entries;
        let shift = i * self.geo.gtes;
        let start_area = self.marker_start();
        let s = self.side()?;
        if let Some(sum) = s.summaries.get(&u64::from(v)).copied() {
            s.fp.add_shifted(&mut s.tables, &sum.low, shift);
            if !last {
                s.fp.add_shifted(&mut s.tables, &sum.high, shift);
            }
            return Ok(());
        }
        let a = u64::from(v) * SECTOR;
        if a < pos {
            return Err(VmdkError::GtNotInStream { entry: i, at: a }.into());
        }
        let b = a + self.geo.gt_span;
        if a < start_area && b > start_area {
            return Err(VmdkError::CrossesOverhead {
                what: "grain table",
                at: a,
            }
            .into());
        }
        self.map.insert(a, b, Kind::Gt { first: i })?;
        self.tables_pending += 1;
        Ok(())
    }

    /// Hands a grain's bytes to the pool and emits what is finished.
    fn submit(
        &mut self,
        at: u64,
        guest: u64,
        input: Vec<u8>,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let grain = self.geo.grain as usize;
        let s = self.side()?;
        s.pool.submit(at, guest, input, grain, &mut s.done);
        self.emit_done(sink)
    }

    /// Emits inflated grains (in submission order).
    fn emit_done(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let vsize = self.geo.vsize;
        let grain = self.geo.grain;
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        let done = std::mem::take(&mut s.done);
        let mut result: Result<(), FormatError> = Ok(());
        for d in done {
            if result.is_ok() {
                let (at, guest) = (d.job.host, d.job.guest);
                let want = grain.min(vsize - guest.min(vsize));
                result = match d.result {
                    Ok(_) if (d.job.out.len() as u64) < want => Err(VmdkError::ShortGrain {
                        at,
                        guest,
                        got: d.job.out.len(),
                        want,
                    }
                    .into()),
                    Ok(_) => self
                        .emit
                        .data(
                            sink,
                            guest,
                            d.job.out.get(..want as usize).unwrap_or_default(),
                        )
                        .map_err(FormatError::Sink),
                    Err(source) => Err(VmdkError::Inflate { at, guest, source }.into()),
                };
            }
            if let Some(s) = self.stream.as_mut() {
                s.pool.give_back(d.job);
            }
        }
        result
    }

    /// The end of a streamOptimized stream at `pos`.
    pub(crate) fn stream_finish(
        &mut self,
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let gd_at_end = self.geo.gd_at_end;
        let s = self.side()?;
        let cut = match &s.item {
            Item::Marker { at, len, .. } if *len > 0 => Some(("grain marker", *at)),
            Item::Grain { at, need, buf, .. } if buf.len() < *need => Some(("grain", *at)),
            Item::Meta { start, end, .. } if pos < *end => Some(("metadata", *start)),
            _ => None,
        };
        if let Some((what, at)) = cut {
            return Err(VmdkError::Truncated { what, at }.into());
        }
        s.pool.drain(&mut s.done);
        self.emit_done(sink)?;
        let s = self.side()?;
        if gd_at_end {
            if !s.footer_seen {
                return Err(VmdkError::NoFooter.into());
            }
            if !s.eos_seen {
                return Err(VmdkError::NoEos.into());
            }
        }
        if let Some((at, r)) = self.map.first_strong() {
            return Err(VmdkError::Truncated {
                what: r.kind.name(),
                at,
            }
            .into());
        }
        let s = self.side()?;
        if s.tables != s.markers {
            return Err(VmdkError::Mismatch {
                tables: s.tables.count,
                markers: s.markers.count,
            }
            .into());
        }
        let placed: Vec<(u64, u64)> = s.placed.iter().map(|(&a, &b)| (a, b)).collect();
        let mut next = s.finished;
        let grain = self.geo.grain;
        for (a, b) in placed
            .into_iter()
            .chain(std::iter::once((self.geo.grains, self.geo.grains)))
        {
            if a > next {
                self.emit
                    .zero(sink, next * grain, (a - next) * grain)
                    .map_err(FormatError::Sink)?;
            }
            next = b;
        }
        Ok(())
    }
}

fn length(kind: u32, at: u64, sectors: u64, want: String) -> FormatError {
    let what = match kind {
        1 => "grain table",
        2 => "grain directory",
        3 => "footer",
        _ => "metadata",
    };
    VmdkError::MarkerLength {
        what,
        at,
        sectors,
        want,
    }
    .into()
}

fn overlap(what: &'static str, at: u64, other: &'static str, other_at: u64) -> FormatError {
    VmdkError::Overlap {
        what,
        at,
        other,
        other_at,
    }
    .into()
}
