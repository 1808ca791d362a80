//! The sans-IO VHDX stream decoder.
//!
//! Fed the image in increasing host-offset order, it collects the header
//! section, then whatever the region table points to as it passes: the
//! metadata table and items, the log (only when a header says it may hold
//! entries), the BAT (parsed entry by entry once the metadata gives the
//! geometry). Payload blocks may lie anywhere outside those regions, so no
//! byte outside them is consumed before the mapping is complete: when the
//! stream gets there first (a BAT or metadata region stored after data, or
//! a BAT before the metadata it needs), `feed` stops with
//! [`Feed::NeedMetadata`] and [`Decoder::missing_metadata`] lists the ranges;
//! the driver reads them out of order or reads the stream ahead, and hands
//! them over with [`Decoder::supply`]. Metadata bytes that come by again
//! afterwards (in the stream, or in the driver's replay) are ignored.
//!
//! Once the mapping is complete and checked, the virtual size and the zero
//! ranges are reported, then each allocated block straight from the input
//! slices as it streams by (no copy).

use std::ops::Range;

use crate::format::{DecodeReport, Decoder, ExtentSink, Feed, Format, FormatError, ImageInfo};

use super::bat::{BatParser, Geometry, Mapping};
use super::gather::Gather;
use super::layout::{
    self, Kind, Layout, HEADER_OFFSETS, HEADER_SECTION, HEADER_SIZE, REGION_TABLE,
    REGION_TABLE_SIZE,
};
use super::metadata::{self, Item, Params, TABLE_HEAD, TABLE_MAX};
use super::{log, VhdxError, LOG_CHECK_MAX, MAPPING_BUDGET};

/// The header section's checksummed parts, collected as they pass.
struct Head {
    ident: Gather,
    headers: [Gather; 2],
    table: Gather,
}

impl Head {
    fn new() -> Head {
        Head {
            ident: Gather::new(0, 8),
            headers: HEADER_OFFSETS.map(|o| Gather::new(o, HEADER_SIZE)),
            table: Gather::new(REGION_TABLE, REGION_TABLE_SIZE),
        }
    }

    fn offer(&mut self, host: u64, bytes: &[u8]) {
        self.ident.offer(host, bytes);
        for h in &mut self.headers {
            h.offer(host, bytes);
        }
        self.table.offer(host, bytes);
    }
}

/// The metadata region's parts being collected.
#[derive(Default)]
struct Meta {
    /// The table; its length is known once its first 32 bytes are in.
    table: Option<Gather>,
    table_len_known: bool,
    /// The items to read, once the table is parsed.
    items: Option<Vec<(Item, Gather)>>,
    has_locator: bool,
}

/// Whether the log still has to be checked.
enum LogState {
    /// No LogGuid: nothing to replay.
    Unneeded,
    /// Being collected, to be scanned once whole.
    Gathering(Gather),
    /// Scanned: no entry to replay.
    Clean,
}

/// The VHDX decoder (see the module documentation).
pub struct VhdxDecoder {
    /// Host offset of the next byte expected from the stream.
    pos: u64,
    stream_len: Option<u64>,
    budget: usize,
    head: Option<Head>,
    layout: Option<Layout>,
    meta: Meta,
    log: LogState,
    params: Option<Params>,
    bat: Option<BatParser>,
    mapping: Option<Mapping>,
    /// Guest bytes reported so far.
    reported: u64,
}

fn internal(what: &'static str) -> FormatError {
    FormatError::Internal(what)
}

impl VhdxDecoder {
    /// A decoder for a stream of `stream_len` bytes, when known (blocks past
    /// its end are then refused before anything is reported).
    pub fn new(stream_len: Option<u64>) -> VhdxDecoder {
        VhdxDecoder::with_budget(stream_len, MAPPING_BUDGET)
    }

    /// As [`VhdxDecoder::new`], with a mapping budget of `budget` bytes.
    pub fn with_budget(stream_len: Option<u64>, budget: usize) -> VhdxDecoder {
        VhdxDecoder {
            pos: 0,
            stream_len,
            budget,
            head: Some(Head::new()),
            layout: None,
            meta: Meta::default(),
            log: LogState::Unneeded,
            params: None,
            bat: None,
            mapping: None,
            reported: 0,
        }
    }

    /// Processes bytes at `self.pos`; returns how many were consumed, or
    /// `None` when metadata ahead is needed first.
    fn step(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, FormatError> {
        let p = self.pos;
        if p < HEADER_SECTION {
            let n = usize::try_from(HEADER_SECTION - p)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            if let Some(head) = self.head.as_mut() {
                head.offer(p, bytes.get(..n).unwrap_or_default());
                if head.table.done() {
                    if let Some(head) = self.head.take() {
                        self.start(&head)?;
                    }
                }
            }
            return Ok(Some(n));
        }
        let layout = self
            .layout
            .as_ref()
            .ok_or(internal("no layout past the header section"))?;
        let (region, limit) = layout.at(p);
        let n = usize::try_from(limit - p)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let piece = bytes.get(..n).unwrap_or_default();
        match region.map(|r| r.kind) {
            Some(Kind::Bat) => {
                let Some(parser) = self.bat.as_mut().filter(|b| !b.done()) else {
                    if self.params.is_none() {
                        // The BAT cannot be read before the metadata.
                        return self.stop();
                    }
                    return Ok(Some(n));
                };
                let next = layout.bat.start + parser.consumed();
                let k = match p.cmp(&next) {
                    // Already read out of order.
                    std::cmp::Ordering::Less => n.min(usize::try_from(next - p).unwrap_or(n)),
                    std::cmp::Ordering::Equal => match parser.feed(piece, layout)? {
                        0 => n,
                        k => k,
                    },
                    std::cmp::Ordering::Greater => {
                        return Err(internal("BAT bytes went by unread"))
                    }
                };
                self.advance(sink)?;
                Ok(Some(k))
            }
            Some(_) => {
                // Stop at the end of the metadata table's header, then of the
                // table, so that the items it names are known before their
                // bytes go by.
                let n = match self.meta.table.as_ref() {
                    Some(t) if self.meta.items.is_none() => {
                        let stop = if self.meta.table_len_known {
                            t.missing().map_or(p, |m| m.end)
                        } else {
                            t.start() + TABLE_HEAD as u64
                        };
                        match stop.checked_sub(p) {
                            Some(k) if k > 0 => n.min(usize::try_from(k).unwrap_or(n)),
                            _ => n,
                        }
                    }
                    _ => n,
                };
                let piece = piece.get(..n).unwrap_or_default();
                self.offer(p, piece);
                self.advance(sink)?;
                Ok(Some(n))
            }
            None if self.mapping.is_none() => self.stop(),
            None => {
                self.emit(p, piece, sink)?;
                Ok(Some(n))
            }
        }
    }

    /// Stops the stream for metadata ahead (there must be some to ask for).
    fn stop(&self) -> Result<Option<usize>, FormatError> {
        if self.missing_metadata().is_empty() {
            return Err(internal("stopped for metadata, but none is missing"));
        }
        Ok(None)
    }

    /// The header section is in: parses it and sets up what to collect.
    fn start(&mut self, head: &Head) -> Result<(), FormatError> {
        let l = layout::parse(
            head.ident.bytes(),
            head.headers[0].bytes(),
            head.headers[1].bytes(),
            head.table.bytes(),
        )?;
        let md_len = l.metadata.end - l.metadata.start;
        self.meta.table = Some(Gather::new(
            l.metadata.start,
            usize::try_from(md_len).unwrap_or(TABLE_MAX).min(TABLE_MAX),
        ));
        if l.log_to_check() {
            let len = u32::try_from(l.log.end - l.log.start).unwrap_or(u32::MAX);
            if len > LOG_CHECK_MAX {
                return Err(VhdxError::LogTooLarge(len).into());
            }
            self.log = LogState::Gathering(Gather::new(l.log.start, len as usize));
        }
        self.layout = Some(l);
        Ok(())
    }

    /// Gives metadata bytes to whatever is collecting them.
    fn offer(&mut self, host: u64, bytes: &[u8]) {
        if let Some(t) = self.meta.table.as_mut() {
            t.offer(host, bytes);
        }
        for (_, g) in self.meta.items.iter_mut().flatten() {
            g.offer(host, bytes);
        }
        if let LogState::Gathering(g) = &mut self.log {
            g.offer(host, bytes);
        }
    }

    /// Parses whatever has become complete; once the whole mapping is known,
    /// reports the virtual size and the zeros.
    fn advance(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let Some(layout) = self.layout.as_ref() else {
            return Ok(());
        };
        let md = layout.metadata;
        let md_len = u32::try_from(md.end - md.start).unwrap_or(u32::MAX);
        if let Some(t) = self.meta.table.as_mut() {
            if !self.meta.table_len_known && (t.done() || t.bytes().len() >= TABLE_HEAD) {
                let len = metadata::table_len(t.bytes(), md.start, md_len)?;
                t.shrink(len);
                self.meta.table_len_known = true;
            }
            if self.meta.table_len_known && t.done() && self.meta.items.is_none() {
                let table = metadata::parse_table(t.bytes(), md_len)?;
                let items = table
                    .wanted
                    .iter()
                    .map(|w| {
                        let mut g = Gather::new(md.start + u64::from(w.offset), w.len);
                        // An item may lie inside the table's own bytes.
                        g.offer(t.start(), t.bytes());
                        (w.item, g)
                    })
                    .collect();
                self.meta.items = Some(items);
                self.meta.has_locator = table.has_locator;
            }
        }
        if self.params.is_none() {
            if let Some(items) = self
                .meta
                .items
                .as_ref()
                .filter(|i| i.iter().all(|g| g.1.done()))
            {
                let values: Vec<(Item, &[u8])> =
                    items.iter().map(|(it, g)| (*it, g.bytes())).collect();
                let p = metadata::params(&values, self.meta.has_locator)?;
                let geo = Geometry::new(&p, layout.bat.end - layout.bat.start)?;
                self.params = Some(p);
                self.bat = Some(BatParser::new(geo, self.budget, self.stream_len));
                self.meta = Meta::default();
            }
        }
        if let LogState::Gathering(g) = &self.log {
            if g.done() {
                log::check(g.bytes(), &layout.log_guid, layout.log.start)?;
                self.log = LogState::Clean;
            }
        }
        let log_ok = !matches!(self.log, LogState::Gathering(_));
        if self.mapping.is_none() && log_ok && self.bat.as_ref().is_some_and(|b| b.done()) {
            let parser = self.bat.take().ok_or(internal("BAT parser lost"))?;
            let vsize = parser.geometry().virtual_size;
            let mut mapping = parser.finish()?;
            sink.set_virtual_size(vsize)?;
            for &(guest, len) in &mapping.zeros {
                sink.zero(guest, len)?;
                self.reported += len;
            }
            mapping.zeros = Vec::new();
            self.mapping = Some(mapping);
        }
        Ok(())
    }

    /// Reports the allocated bytes in `piece` (stream bytes at host `p`,
    /// outside every region).
    fn emit(&mut self, p: u64, piece: &[u8], sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let m = self.mapping.as_mut().ok_or(internal("no mapping"))?;
        let end = p + piece.len() as u64;
        while let Some(r) = m.runs.get(m.next).copied() {
            if r.host >= end {
                break;
            }
            let run_end = r.host + r.len;
            let a = p.max(r.host);
            if a != m.done_to.max(r.host) {
                return Err(internal("a block's bytes went by unplaced"));
            }
            let b = end.min(run_end);
            let bytes = piece
                .get((a - p) as usize..(b - p) as usize)
                .ok_or(internal("block bytes out of the piece"))?;
            sink.data(r.guest + (a - r.host), bytes)?;
            self.reported += b - a;
            if b < run_end {
                m.done_to = b;
                break;
            }
            m.next += 1;
            m.done_to = 0;
        }
        Ok(())
    }

    /// What the stream ended before, for the truncation message.
    fn missing_what(&self) -> String {
        let Some(layout) = self.layout.as_ref() else {
            return "inside the 1 MiB header section".to_string();
        };
        if self.params.is_none() {
            return format!(
                "before the end of the metadata region at 0x{:x}",
                layout.metadata.start
            );
        }
        if matches!(self.log, LogState::Gathering(_)) {
            return format!("before the end of the log at 0x{:x}", layout.log.start);
        }
        if let Some(m) = self.mapping.as_ref() {
            if let Some(r) = m.pending() {
                let bs = self.params.map_or(1, |p| u64::from(p.block_size));
                return format!(
                    "before the end of block {} at 0x{:x}..0x{:x}",
                    r.guest / bs,
                    r.host,
                    r.host + r.len
                );
            }
        }
        format!("before the end of the BAT at 0x{:x}", layout.bat.start)
    }
}

impl Decoder for VhdxDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        crate::format::decoder::feed_steps(chunk, |rest| {
            let took = self.step(rest, sink)?;
            self.pos += took.unwrap_or(0) as u64;
            Ok(took)
        })
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        let Some(layout) = self.layout.as_ref() else {
            return Vec::new();
        };
        let mut v = Vec::new();
        if self.params.is_none() {
            v.extend(self.meta.table.as_ref().and_then(Gather::missing));
            for (_, g) in self.meta.items.iter().flatten() {
                v.extend(g.missing());
            }
        }
        // Stopped at the BAT: only the metadata is needed to read on.
        let at_bat = layout.at(self.pos).0.is_some_and(|r| r.kind == Kind::Bat);
        if !at_bat {
            if let LogState::Gathering(g) = &self.log {
                v.extend(g.missing());
            }
            if let Some(b) = self.bat.as_ref().filter(|b| !b.done()) {
                let start = layout.bat.start;
                v.push(start + b.consumed()..start + b.geometry().bat_bytes());
            }
        }
        v
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        self.offer(host, bytes);
        if let (Some(layout), Some(parser)) = (self.layout.as_ref(), self.bat.as_mut()) {
            let next = layout.bat.start + parser.consumed();
            let end = host.saturating_add(bytes.len() as u64);
            if !parser.done() && host <= next && next < end {
                let from = usize::try_from(next - host).unwrap_or(usize::MAX);
                parser.feed(bytes.get(from..).unwrap_or_default(), layout)?;
            }
        }
        self.advance(sink)
    }

    fn finish(&mut self, _sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let pending = self.mapping.as_ref().is_none_or(|m| m.pending().is_some());
        if pending {
            let what = if self.pos == 0 {
                "empty stream: no VHDX header section".to_string()
            } else {
                self.missing_what()
            };
            return Err(VhdxError::Truncated {
                pos: self.pos,
                what,
            }
            .into());
        }
        let vsize = self.params.map_or(0, |p| p.virtual_size);
        if self.reported != vsize {
            return Err(internal("the mapping does not cover the virtual size"));
        }
        Ok(DecodeReport {
            virtual_size: vsize,
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        self.params.map(|p| ImageInfo {
            format: Format::Vhdx,
            virtual_size: Some(p.virtual_size),
            cluster_size: Some(u64::from(p.block_size)),
            format_specific: None,
        })
    }
}
