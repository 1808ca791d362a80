//! Dynamic VHDs, streamed: footer copy, dynamic header, block allocation
//! table (BAT), then the blocks, each behind its sector bitmap.
//!
//! qemu writes the header at 512 and the BAT at 1536, before any block, so
//! a forward pass knows every block before it arrives. The format allows
//! the header and the BAT anywhere: when the stream reaches bytes it cannot
//! place because the header or the BAT lies further on, the decoder stops
//! and asks for them ([`Feed::NeedMetadata`]); the driver reads them out of
//! order or holds the stream until they pass.
//!
//! The BAT is parsed as it passes into a [`BlockMap`] (runs of blocks in
//! host order), never kept whole. The sector bitmaps are skipped: qemu reads
//! every sector of an allocated block from the block, whatever its bitmap
//! says, and `qemu-img convert` is the reference.

use std::ops::Range;

use super::blocks::{BlockMap, EntryCursor, SealError};
use super::footer::{DiskType, Footer, FOOTER_LEN};
use super::VpcError;
use crate::format::{DecodeReport, Decoder, ExtentSink, Feed, Format, FormatError, ImageInfo};

/// Bytes of the dynamic disk header qemu reads.
const HEADER_LEN: u64 = 1024;

/// The header's signature.
const HEADER_MAGIC: &[u8; 8] = b"cxsparse";

/// A BAT entry for an unallocated block.
const UNALLOCATED: u32 = 0xffff_ffff;

/// Most BAT entries qemu reads (the table must fit in an `int`).
const MAX_ENTRIES: u32 = (i32::MAX / 4) as u32;

/// What the dynamic header says.
#[derive(Debug, Clone, Copy)]
struct DynHeader {
    table_offset: u64,
    entries: u32,
    block_size: u32,
}

impl DynHeader {
    /// The BAT's host bytes.
    fn table(&self) -> Range<u64> {
        let len = u64::from(self.entries) * 4;
        self.table_offset..self.table_offset.saturating_add(len)
    }
}

/// A dynamic VHD decoder.
#[derive(Debug)]
pub(crate) struct DynamicDecoder {
    /// Host offset of the next byte fed.
    pos: u64,
    /// The stream's length, when known.
    len: Option<u64>,
    footer_buf: Vec<u8>,
    footer: Option<Footer>,
    header_buf: Vec<u8>,
    header: Option<DynHeader>,
    bat: EntryCursor,
    map: Option<BlockMap>,
}

impl DynamicDecoder {
    /// A decoder for a stream of `len` bytes, when known.
    pub(crate) fn new(len: Option<u64>) -> DynamicDecoder {
        DynamicDecoder {
            pos: 0,
            len,
            footer_buf: Vec::with_capacity(FOOTER_LEN),
            footer: None,
            header_buf: Vec::new(),
            header: None,
            bat: EntryCursor::default(),
            map: None,
        }
    }

    fn header_range(&self) -> Option<Range<u64>> {
        let h = self.footer.as_ref()?.data_offset;
        Some(h..h.saturating_add(HEADER_LEN))
    }

    fn vsize(&self) -> u64 {
        self.footer.as_ref().map_or(0, |f| f.virtual_size)
    }

    /// The first 512 bytes are in: checks the footer and announces the size.
    fn on_footer(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let f = Footer::parse(&self.footer_buf)?;
        match f.disk_type {
            // A differencing disk is refused once its header names the parent.
            DiskType::Dynamic | DiskType::Differencing => {}
            DiskType::Fixed => return Err(VpcError::FixedAtStart.into()),
        }
        let h = f.data_offset;
        let end = h.checked_add(HEADER_LEN).ok_or(VpcError::HeaderOffset(h))?;
        if h < FOOTER_LEN as u64 {
            return Err(VpcError::HeaderOffset(h).into());
        }
        if let Some(len) = self.len {
            if end > len {
                return Err(FormatError::MetadataPastEnd { start: h, end });
            }
        }
        if f.disk_type == DiskType::Dynamic {
            sink.set_virtual_size(f.virtual_size)?;
        }
        self.footer = Some(f);
        Ok(())
    }

    /// The dynamic header is in: checks it, as qemu does, and prepares the map.
    fn on_header(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let hr = self.header_range().unwrap_or(0..0);
        let b = &self.header_buf;
        if self
            .footer
            .as_ref()
            .is_some_and(|f| f.disk_type == DiskType::Differencing)
        {
            let parent = (b.get(..8) == Some(HEADER_MAGIC.as_slice()))
                .then(|| parent_name(b.get(64..576).unwrap_or_default()))
                .flatten();
            return Err(VpcError::Differencing { parent }.into());
        }
        if b.get(..8) != Some(HEADER_MAGIC.as_slice()) {
            return Err(VpcError::HeaderMagic(hr.start).into());
        }
        let word = |at: usize| {
            let mut a = [0u8; 4];
            if let Some(s) = b.get(at..at + 4) {
                a.copy_from_slice(s);
            }
            u32::from_be_bytes(a)
        };
        let mut t = [0u8; 8];
        if let Some(s) = b.get(16..24) {
            t.copy_from_slice(s);
        }
        let table_offset = u64::from_be_bytes(t);
        let entries = word(28);
        let block_size = word(32);
        if !block_size.is_power_of_two() || block_size < 512 {
            return Err(VpcError::BlockSize(block_size).into());
        }
        let vsize = self.vsize();
        if u64::from(entries) * u64::from(block_size) < vsize {
            return Err(VpcError::TableTooSmall {
                entries,
                block_size,
                virtual_size: vsize,
            }
            .into());
        }
        if entries > MAX_ENTRIES {
            return Err(VpcError::TableTooLarge(entries).into());
        }
        // qemu's bitmap size: one bit per sector, in whole sectors (none at
        // all for blocks under 4 KiB, as qemu computes it).
        let bitmap = ((u64::from(block_size) / 4096) + 511) & !511;
        let h = DynHeader {
            table_offset,
            entries,
            block_size,
        };
        let table = h.table();
        if table_offset.checked_add(u64::from(entries) * 4).is_none() {
            return Err(VpcError::TableOffset(table_offset).into());
        }
        if !table.is_empty() {
            if table.start < FOOTER_LEN as u64 {
                return Err(VpcError::TableOverlap {
                    at: table_offset,
                    what: "footer",
                }
                .into());
            }
            if table.start < hr.end && hr.start < table.end {
                return Err(VpcError::TableOverlap {
                    at: table_offset,
                    what: "dynamic header",
                }
                .into());
            }
            if let Some(len) = self.len {
                if table.end > len {
                    return Err(FormatError::MetadataPastEnd {
                        start: table.start,
                        end: table.end,
                    });
                }
            }
        }
        self.header = Some(h);
        self.map = Some(BlockMap::new(u64::from(block_size), bitmap, vsize));
        if entries == 0 {
            self.seal(sink)?;
        }
        Ok(())
    }

    /// Parses the next BAT bytes (the table's bytes from offset
    /// `self.bat.parsed` on).
    fn take_table(&mut self, bytes: &[u8], sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let (Some(h), Some(map)) = (self.header, self.map.as_mut()) else {
            return Err(FormatError::Internal("BAT bytes before the header"));
        };
        let vsize = self.footer.as_ref().map_or(0, |f| f.virtual_size);
        let needed = vsize.div_ceil(u64::from(h.block_size));
        let len = self.len;
        let span = map.span();
        self.bat.feed(bytes, |i, raw| -> Result<(), FormatError> {
            let e = u32::from_be_bytes(raw);
            let guest = u32::try_from(i).map_err(|_| FormatError::Internal("BAT index"))?;
            if e == UNALLOCATED {
                if i < needed {
                    map.zero(guest, sink)?;
                }
                return Ok(());
            }
            let host = u64::from(e) * 512;
            let end = host + span;
            if let Some(len) = len {
                // qemu refuses any block past the end, even one the
                // virtual size never reads.
                if end > len {
                    return Err(VpcError::BlockPastEnd {
                        block: i,
                        host,
                        end,
                        len,
                    }
                    .into());
                }
            }
            if i < needed {
                map.map(guest, host).map_err(VpcError::from)?;
            }
            Ok(())
        })?;
        if self.bat.parsed >= h.table().end - h.table().start {
            self.seal(sink)?;
        }
        Ok(())
    }

    /// The BAT is complete: the map goes into host order and is checked.
    fn seal(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let mut metadata = vec![(0..FOOTER_LEN as u64, "footer")];
        if let Some(hr) = self.header_range() {
            metadata.push((hr, "dynamic header"));
        }
        if let Some(h) = self.header {
            metadata.push((h.table(), "block allocation table"));
        }
        let Some(map) = self.map.as_mut() else {
            return Err(FormatError::Internal("BAT sealed without a map"));
        };
        map.seal(&metadata, sink).map_err(|e| match e {
            SealError::Sink(s) => FormatError::Sink(s),
            SealError::Fault(f) => VpcError::from(f).into(),
        })
    }

    fn sealed(&self) -> bool {
        self.map.as_ref().is_some_and(BlockMap::is_sealed)
    }

    /// Takes what it can of `bytes` (the stream from `self.pos` on):
    /// `Some(n)` bytes consumed, `None` when metadata further on is needed
    /// first.
    fn step(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, FormatError> {
        let pos = self.pos;
        let avail = bytes.len() as u64;
        if pos < FOOTER_LEN as u64 {
            let k = (FOOTER_LEN as u64 - pos).min(avail) as usize;
            self.footer_buf
                .extend_from_slice(bytes.get(..k).unwrap_or_default());
            if self.footer_buf.len() == FOOTER_LEN {
                self.on_footer(sink)?;
            }
            return Ok(Some(k));
        }
        if self.sealed() {
            if let Some(map) = self.map.as_mut() {
                map.feed(pos, bytes, sink)?;
            }
            return Ok(Some(bytes.len()));
        }
        let hr = self.header_range().unwrap_or(0..0);
        if self.header.is_none() {
            if pos < hr.start {
                return Ok(None);
            }
            let off = pos - hr.start;
            let have = self.header_buf.len() as u64;
            if off < have {
                // Supplied earlier.
                return Ok(Some((have - off).min(avail) as usize));
            }
            if off > have || pos >= hr.end {
                return Err(FormatError::Internal("dynamic header bytes out of order"));
            }
            let k = (hr.end - pos).min(avail) as usize;
            self.header_buf
                .extend_from_slice(bytes.get(..k).unwrap_or_default());
            if self.header_buf.len() as u64 == HEADER_LEN {
                self.on_header(sink)?;
            }
            return Ok(Some(k));
        }
        // The header is known, the BAT is not complete.
        if hr.contains(&pos) {
            // Supplied earlier: its bytes pass again.
            return Ok(Some((hr.end - pos).min(avail) as usize));
        }
        let Some(h) = self.header else {
            return Err(FormatError::Internal("no dynamic header"));
        };
        let table = h.table();
        if pos < table.start {
            return Ok(None);
        }
        let off = pos - table.start;
        let k = (table.end - pos).min(avail);
        if off < self.bat.parsed {
            // Supplied earlier.
            let skip = (self.bat.parsed - off).min(k) as usize;
            return Ok(Some(skip));
        }
        if off > self.bat.parsed {
            return Err(FormatError::Internal("BAT bytes out of order"));
        }
        self.take_table(bytes.get(..k as usize).unwrap_or_default(), sink)?;
        Ok(Some(k as usize))
    }
}

/// The parent's name from the header's UTF-16 (big-endian) field, without
/// control characters; `None` when empty.
fn parent_name(field: &[u8]) -> Option<String> {
    let units: Vec<u16> = field
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let name: String = String::from_utf16_lossy(&units)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    (!name.is_empty()).then_some(name)
}

impl Decoder for DynamicDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        crate::format::decoder::feed_steps(chunk, |rest| {
            let took = self.step(rest, sink)?;
            self.pos += took.unwrap_or(0) as u64;
            Ok(took)
        })
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        if self.footer.is_none() || self.sealed() {
            return Vec::new();
        }
        match (&self.header, self.header_range()) {
            (None, Some(hr)) => {
                std::iter::once(hr.start + self.header_buf.len() as u64..hr.end).collect()
            }
            (Some(h), _) => {
                let t = h.table();
                std::iter::once(t.start.saturating_add(self.bat.parsed)..t.end).collect()
            }
            (None, None) => Vec::new(),
        }
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let end = host.saturating_add(bytes.len() as u64);
        let piece = |from: u64, to: u64| -> &[u8] {
            let (a, b) = ((from - host) as usize, (to - host) as usize);
            bytes.get(a..b).unwrap_or_default()
        };
        if self.header.is_none() {
            if let Some(hr) = self.header_range() {
                let want = hr.start + self.header_buf.len() as u64;
                if want >= host && want < end {
                    let to = end.min(hr.end);
                    self.header_buf.extend_from_slice(piece(want, to));
                    if self.header_buf.len() as u64 == HEADER_LEN {
                        self.on_header(sink)?;
                    }
                }
            }
        }
        if let (Some(h), false) = (self.header, self.sealed()) {
            let t = h.table();
            let want = t.start.saturating_add(self.bat.parsed);
            if want >= host && want < end {
                let to = end.min(t.end);
                let bytes = piece(want, to);
                self.take_table(bytes, sink)?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, _sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let len = self.pos;
        if self.footer.is_none() {
            return Err(VpcError::TooShort(len).into());
        }
        if self.header.is_none() {
            return Err(VpcError::Truncated {
                len,
                what: "its dynamic header",
            }
            .into());
        }
        if !self.sealed() {
            return Err(VpcError::Truncated {
                len,
                what: "its block allocation table",
            }
            .into());
        }
        if let Some((block, host, end)) = self.map.as_ref().and_then(|m| m.pending(len)) {
            return Err(VpcError::BlockPastEnd {
                block,
                host,
                end,
                len,
            }
            .into());
        }
        Ok(DecodeReport {
            virtual_size: self.vsize(),
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        let h = self.header?;
        Some(ImageInfo {
            format: Format::Vpc,
            virtual_size: Some(self.vsize()),
            cluster_size: Some(u64::from(h.block_size)),
            format_specific: None,
        })
    }
}
