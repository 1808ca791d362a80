//! Everything after the header sector: the pending regions (tables,
//! plain grains, bytes to skip), the embedded descriptor's check, and what
//! `finish` proves.
//!
//! The stream is taken byte range by byte range ([`Body::step`]): a pending
//! region's bytes go to it (a table is read, a grain goes to the sink, a
//! skipped range is dropped); the grains of a streamOptimized extent go to
//! the marker reader ([`super::stream`]); anything else is unknown. An
//! unknown byte is consumed only once every table that could map it is
//! known: before that, the decoder stops with `NeedMetadata` and names the
//! tables ([`Body::missing`]), which the driver reads out of order or after
//! reading the stream ahead ([`Body::supply`]).

use crate::format::inflate::{Codec, Pool};
use crate::format::{DecodeReport, ExtentSink, FormatError, FormatSpecific, ImageInfo};
use crate::pace::Pace;

use super::descriptor::{parent_hint, qemu_cid, Descriptor};
use super::emit::Emitter;
use super::header::{Geometry, Header, SECTOR};
use super::map::{Kind, Map};
use super::stream::Stream;
use super::VmdkError;

/// Where QEMU reads the embedded descriptor of a sparse extent (for the
/// CIDs and the parent), whatever the header says: `0x200`, 20 sectors.
pub(crate) const AREA_START: u64 = 0x200;
/// End of that area.
pub(crate) const AREA_END: u64 = AREA_START + 20 * SECTOR;

/// Regions (and grain runs) pending at most: about 6 MiB.
pub(crate) const MAX_ENTRIES: usize = 1 << 16;

/// The decoder once the header is read.
pub(crate) struct Body {
    pub(crate) hdr: Header,
    pub(crate) geo: Geometry,
    pub(crate) map: Map,
    pub(crate) emit: Emitter,
    /// QEMU's descriptor area, as it streams past.
    area: Vec<u8>,
    /// The descriptor area was checked (and `info` is known).
    pub(crate) desc_checked: bool,
    pub(crate) info: Option<ImageInfo>,
    /// The grain directory QEMU reads has been read.
    pub(crate) gd_read: bool,
    /// Grain tables named and not read to their end.
    pub(crate) tables_pending: u64,
    /// Host offset of the directory QEMU reads, when the header gives it.
    gd_start: Option<u64>,
    /// Scratch for table entries.
    words: Vec<(u64, u32)>,
    /// The compressed grains' side (streamOptimized).
    pub(crate) stream: Option<Stream>,
}

fn sink_err(e: crate::format::SinkError) -> FormatError {
    FormatError::Sink(e)
}

impl Body {
    /// Sets up the regions the header names. `pos` is where the stream
    /// stands (the end of the header sector).
    pub(crate) fn new(
        hdr: Header,
        geo: Geometry,
        pos: u64,
        pace: Pace,
    ) -> Result<Body, FormatError> {
        let stream = if geo.compressed {
            let pool =
                Pool::new(Codec::Zlib, geo.grain as usize).map_err(|e| VmdkError::Inflate {
                    at: 0,
                    guest: 0,
                    source: e,
                })?;
            let start = hdr.overhead.saturating_mul(SECTOR);
            Some(Stream::new(pool, pace, start, &geo))
        } else {
            None
        };
        let mut body = Body {
            map: Map::new(MAX_ENTRIES, geo.gt_span),
            emit: Emitter::new(geo.vsize),
            area: Vec::new(),
            desc_checked: false,
            info: None,
            gd_read: geo.gd_entries == 0 || geo.gd_at_end,
            tables_pending: 0,
            gd_start: None,
            words: Vec::new(),
            stream,
            hdr,
            geo,
        };
        if !body.gd_read {
            let sector = body.hdr.gd_offset;
            let (start, end) = sector
                .checked_mul(SECTOR)
                .and_then(|s| Some((s, s.checked_add(body.geo.gd_span)?)))
                .ok_or(VmdkError::Beyond {
                    what: "grain directory",
                    sector,
                })?;
            if start < pos {
                return Err(VmdkError::Passed {
                    what: "grain directory",
                    at: start,
                }
                .into());
            }
            body.check_overhead("grain directory", start, end)?;
            body.map.insert(start, end, Kind::Gd)?;
            body.gd_start = Some(start);
        }
        let limit = body.marker_start();
        let weak = |off: u64, len: u64| {
            let a = off.saturating_mul(SECTOR).max(pos);
            let b = off.saturating_add(len).saturating_mul(SECTOR).min(limit);
            (a, b)
        };
        if body.hdr.desc_offset > 0 {
            let (a, b) = weak(body.hdr.desc_offset, body.hdr.desc_size);
            body.map
                .insert_weak(a, b, Kind::Skip("embedded descriptor"));
        }
        if let Some(rgd) = body.hdr.rgd().filter(|_| body.geo.gd_entries > 0) {
            let a = rgd.saturating_mul(SECTOR);
            let b = a.saturating_add(body.geo.gd_span);
            if a >= pos && b <= limit {
                body.map.insert_weak(a, b, Kind::Rgd);
            }
        }
        Ok(body)
    }

    /// Where grain markers start (never, for an uncompressed extent).
    pub(crate) fn marker_start(&self) -> u64 {
        self.stream.as_ref().map_or(u64::MAX, |s| s.start)
    }

    /// A pre-grain table must end before the grains start.
    fn check_overhead(&self, what: &'static str, a: u64, b: u64) -> Result<(), VmdkError> {
        let m = self.marker_start();
        if a < m && b > m {
            return Err(VmdkError::CrossesOverhead { what, at: a });
        }
        Ok(())
    }

    /// Keeps the bytes of QEMU's descriptor area as they pass.
    pub(crate) fn capture(&mut self, pos: u64, bytes: &[u8]) {
        let end = pos + bytes.len() as u64;
        if end <= AREA_START || pos >= AREA_END {
            return;
        }
        let a = pos.max(AREA_START);
        let b = end.min(AREA_END);
        if let Some(s) = bytes.get((a - pos) as usize..(b - pos) as usize) {
            self.area.extend_from_slice(s);
        }
    }

    /// Checks the embedded descriptor as QEMU reads it, then what it says
    /// about the disk's files; makes `info` known.
    pub(crate) fn check_descriptor(&mut self) -> Result<(), VmdkError> {
        self.desc_checked = true;
        if let Some(parent) = parent_hint(&self.area) {
            return Err(VmdkError::DeltaDisk { parent });
        }
        let cid = qemu_cid(&self.area, false).ok_or(VmdkError::NoDescriptor)?;
        let parent_cid = qemu_cid(&self.area, true).ok_or(VmdkError::NoDescriptor)?;
        let desc = Descriptor::parse(&self.area);
        if desc.is_multi_file() {
            return Err(VmdkError::SeparateExtents {
                create_type: desc.create_type.clone().unwrap_or_else(|| "unknown".into()),
                files: desc.files(),
            });
        }
        self.area = Vec::new();
        let compressed = self.geo.compressed;
        let mut extent = serde_json::Map::new();
        if compressed {
            extent.insert("compressed".into(), true.into());
        }
        extent.insert("virtual-size".into(), self.geo.vsize.into());
        if let Some(e) = desc.extents.first() {
            extent.insert("filename".into(), e.file.clone().into());
        }
        extent.insert("cluster-size".into(), self.geo.grain.into());
        extent.insert("format".into(), "".into());
        let specific = FormatSpecific::new("vmdk")
            .with("cid", cid)
            .with("parent-cid", parent_cid)
            .with(
                "create-type",
                if compressed {
                    "streamOptimized"
                } else {
                    "monolithicSparse"
                },
            )
            .with("extents", vec![serde_json::Value::Object(extent)]);
        self.info = Some(ImageInfo {
            format: crate::format::Format::Vmdk,
            virtual_size: Some(self.geo.vsize),
            cluster_size: Some(self.geo.grain),
            format_specific: Some(specific),
        });
        Ok(())
    }

    /// Whether unknown bytes must wait: a table that could map them (or
    /// name one that does) has not been read.
    fn needs_tables(&self) -> bool {
        match &self.stream {
            None => !self.gd_read || self.tables_pending > 0,
            Some(s) => !self.gd_read && self.gd_start.is_some_and(|g| g < s.start),
        }
    }

    /// The tables to read before the stream can go on (after `NeedMetadata`).
    pub(crate) fn missing(&self) -> Vec<std::ops::Range<u64>> {
        let limit = self.marker_start();
        self.map
            .unread_tables()
            .filter(|(s, _)| self.stream.is_none() || *s < limit)
            .filter(|(_, r)| self.stream.is_none() || r.kind == Kind::Gd)
            .map(|(s, r)| s + r.parsed..r.end)
            .collect()
    }

    /// Takes bytes at `pos`; returns how many, or `None` when tables must
    /// be read first.
    pub(crate) fn step(
        &mut self,
        pos: u64,
        b: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, FormatError> {
        if pos >= self.marker_start() {
            return self.stream_step(pos, b, sink).map(Some);
        }
        if let Some(start) = self.map.at(pos) {
            let Some(r) = self.map.get(start) else {
                return Err(FormatError::Internal("vmdk: a region vanished"));
            };
            let end = r.end;
            let kind = r.kind.clone();
            let n = (end - pos).min(b.len() as u64) as usize;
            let piece = b.get(..n).unwrap_or_default();
            match kind {
                Kind::Skip(_) => {}
                Kind::Data { guest } => {
                    self.emit
                        .data(sink, guest + (pos - start), piece)
                        .map_err(sink_err)?;
                }
                Kind::Rgd | Kind::Gd | Kind::Gt { .. } => {
                    self.read_table(start, pos, piece, pos, sink)?;
                }
            }
            if pos + n as u64 >= end {
                self.map.remove(start);
            }
            return Ok(Some(n));
        }
        if self.needs_tables() {
            if self.missing().is_empty() {
                return Err(FormatError::Internal("vmdk: tables wanted, none missing"));
            }
            return Ok(None);
        }
        let next = self
            .map
            .next_start(pos)
            .unwrap_or(u64::MAX)
            .min(self.marker_start());
        Ok(Some((next - pos).min(b.len() as u64) as usize))
    }

    /// Tables read out of order: the bytes at `host` (the stream stands at `pos`).
    pub(crate) fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let end = host + bytes.len() as u64;
        let mut starts: Vec<u64> = Vec::new();
        let mut at = host;
        while at < end {
            match self.map.at(at) {
                Some(s) => {
                    starts.push(s);
                    at = self.map.get(s).map_or(end, |r| r.end);
                }
                None => at = self.map.next_start(at).unwrap_or(end),
            }
        }
        for s in starts {
            let Some(r) = self.map.get(s) else { continue };
            if !r.kind.table() || r.kind == Kind::Rgd {
                continue;
            }
            let a = s.max(host);
            let b = r.end.min(end);
            if a < b {
                let piece = bytes
                    .get((a - host) as usize..(b - host) as usize)
                    .unwrap_or_default();
                self.read_table(s, a, piece, pos, sink)?;
            }
        }
        Ok(())
    }

    /// Reads table bytes at `host` of the table starting at `start`
    /// (bytes already read are skipped). `pos` is the stream position:
    /// nothing a table names may lie before it.
    pub(crate) fn read_table(
        &mut self,
        start: u64,
        host: u64,
        bytes: &[u8],
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let Some(r) = self.map.get_mut(start) else {
            return Ok(());
        };
        let rel = host - start;
        let len = bytes.len() as u64;
        if rel + len <= r.parsed || rel > r.parsed {
            return Ok(());
        }
        let fresh = bytes.get((r.parsed - rel) as usize..).unwrap_or_default();
        let mut words = std::mem::take(&mut self.words);
        words.clear();
        r.carry.words(r.parsed, fresh, &mut words);
        r.parsed += fresh.len() as u64;
        let done = start + r.parsed >= r.end;
        let (kind, count) = (r.kind.clone(), (r.end - start) / self.geo.gt_span.max(1));
        let result = self.table_words(&kind, &words, pos, sink);
        self.words = words;
        result?;
        if done {
            match kind {
                Kind::Gd => self.gd_read = true,
                Kind::Gt { .. } => self.tables_pending = self.tables_pending.saturating_sub(count),
                _ => {}
            }
        }
        Ok(())
    }

    fn table_words(
        &mut self,
        kind: &Kind,
        words: &[(u64, u32)],
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let (gtes, span) = (self.geo.gtes, self.geo.gt_span);
        let entries = self.geo.gd_entries;
        for &(off, v) in words {
            match *kind {
                Kind::Rgd if off / 4 < entries && v != 0 => {
                    let a = u64::from(v) * SECTOR;
                    let b = (a + span).min(self.marker_start());
                    if a >= pos {
                        self.map
                            .insert_weak(a, b, Kind::Skip("redundant grain table"));
                    }
                }
                Kind::Gd if off / 4 < entries => self.gd_entry(off / 4, v, pos, sink)?,
                Kind::Gt { first } if (off % span) / 4 < gtes => {
                    self.gt_entry(first + off / span, (off % span) / 4, v, pos, sink)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Directory entry `i` names grain table `v` (sectors; 0: none).
    pub(crate) fn gd_entry(
        &mut self,
        i: u64,
        v: u32,
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        if self.stream.is_some() {
            return self.stream_gd_entry(i, v, pos);
        }
        let span = self.geo.gtes * self.geo.grain;
        if v == 0 {
            return self.emit.zero(sink, i * span, span).map_err(sink_err);
        }
        let a = u64::from(v) * SECTOR;
        if a < pos {
            return Err(VmdkError::Passed {
                what: "grain table",
                at: a,
            }
            .into());
        }
        self.map
            .insert(a, a + self.geo.gt_span, Kind::Gt { first: i })?;
        self.tables_pending += 1;
        Ok(())
    }

    /// Entry `j` of grain table `table` is `v` (sectors; 0: unallocated).
    fn gt_entry(
        &mut self,
        table: u64,
        j: u64,
        v: u32,
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let g = table * self.geo.gtes + j;
        if g >= self.geo.grains {
            return Ok(());
        }
        if let Some(s) = self.stream.as_mut() {
            s.table_entry(g, v, self.geo.zero_grain);
            return Ok(());
        }
        let guest = g * self.geo.grain;
        let len = self.geo.grain.min(self.geo.vsize - guest);
        if v == 0 || (v == 1 && self.geo.zero_grain) {
            return self.emit.zero(sink, guest, len).map_err(sink_err);
        }
        let a = u64::from(v) * SECTOR;
        if a < pos {
            return Err(VmdkError::Passed {
                what: "grain",
                at: a,
            }
            .into());
        }
        self.map.insert(a, a + len, Kind::Data { guest })?;
        Ok(())
    }

    /// The end of the stream at `pos`: checks that everything mapped came.
    pub(crate) fn finish(
        &mut self,
        pos: u64,
        sink: &mut dyn ExtentSink,
    ) -> Result<DecodeReport, FormatError> {
        let need = self.hdr.overhead.saturating_mul(SECTOR);
        if pos < need {
            return Err(VmdkError::TruncatedOverhead { len: pos, need }.into());
        }
        if !self.desc_checked {
            self.check_descriptor()?;
        }
        if self.stream.is_some() {
            self.stream_finish(pos, sink)?;
        } else if let Some((at, r)) = self.map.first_strong() {
            return Err(VmdkError::Truncated {
                what: r.kind.name(),
                at,
            }
            .into());
        }
        self.emit.announce(sink).map_err(sink_err)?;
        self.emit.flush(sink).map_err(sink_err)?;
        if self.emit.covered() != self.geo.vsize {
            return Err(FormatError::Internal(
                "vmdk: the disk was not covered exactly",
            ));
        }
        Ok(DecodeReport {
            virtual_size: self.geo.vsize,
            ..DecodeReport::default()
        })
    }
}
