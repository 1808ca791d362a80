//! VDI, streamed: header, block map, then the data blocks.
//!
//! qemu and VirtualBox write the block map right after the header and the
//! data after the map, so a forward pass knows every block before it
//! arrives. A map placed after data it maps makes the decoder stop and ask
//! for it ([`Feed::NeedMetadata`]); bytes before the data area are skipped
//! without asking, since no block can live there.
//!
//! The block map is parsed as it passes into a [`BlockMap`] (runs of blocks
//! in host order), never kept whole. Entries 0xFFFFFFFF (never allocated)
//! and 0xFFFFFFFE (discarded) read as zeros, as in qemu.

use std::ops::Range;

use super::header::{Header, BLOCK_SIZE, HEADER_LEN};
use super::VdiError;
use crate::format::vpc::blocks::{BlockMap, EntryCursor, SealError};
use crate::format::{DecodeReport, Decoder, ExtentSink, Feed, Format, FormatError, ImageInfo};

/// The first entry value that is not a block index.
const DISCARDED: u32 = 0xffff_fffe;

/// A VDI decoder.
#[derive(Debug)]
pub(crate) struct VdiDecoder {
    /// Host offset of the next byte fed.
    pos: u64,
    /// The stream's length, when known.
    len: Option<u64>,
    header_buf: Vec<u8>,
    header: Option<Header>,
    bmap: EntryCursor,
    map: Option<BlockMap>,
}

impl VdiDecoder {
    /// A decoder for a stream of `len` bytes, when known.
    pub(crate) fn new(len: Option<u64>) -> VdiDecoder {
        VdiDecoder {
            pos: 0,
            len,
            header_buf: Vec::with_capacity(HEADER_LEN),
            header: None,
            bmap: EntryCursor::default(),
            map: None,
        }
    }

    fn sealed(&self) -> bool {
        self.map.as_ref().is_some_and(BlockMap::is_sealed)
    }

    /// The header is in: checks it and prepares the map.
    fn on_header(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let h = Header::parse(&self.header_buf)?;
        let bmap = h.bmap();
        if !bmap.is_empty() && bmap.start < HEADER_LEN as u64 {
            return Err(VdiError::MapOverlap(bmap.start).into());
        }
        if let Some(len) = self.len {
            if bmap.end > len {
                return Err(FormatError::MetadataPastEnd {
                    start: bmap.start,
                    end: bmap.end,
                });
            }
        }
        sink.set_virtual_size(h.disk_size)?;
        self.map = Some(BlockMap::new(u64::from(BLOCK_SIZE), 0, h.disk_size));
        let empty = h.blocks == 0;
        self.header = Some(h);
        if empty {
            self.seal(sink)?;
        }
        Ok(())
    }

    /// Parses the next block map bytes (from offset `self.bmap.parsed` on).
    fn take_map(&mut self, bytes: &[u8], sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let (Some(h), Some(map)) = (self.header.as_ref(), self.map.as_mut()) else {
            return Err(FormatError::Internal("block map bytes before the header"));
        };
        let needed = h.disk_size.div_ceil(u64::from(BLOCK_SIZE));
        let offset_data = h.offset_data;
        let len = self.len;
        self.bmap.feed(bytes, |i, raw| -> Result<(), FormatError> {
            if i >= needed {
                // Never read: qemu ignores them too.
                return Ok(());
            }
            let guest = u32::try_from(i).map_err(|_| FormatError::Internal("block map index"))?;
            let e = u32::from_le_bytes(raw);
            if e >= DISCARDED {
                map.zero(guest, sink)?;
                return Ok(());
            }
            let host = offset_data + u64::from(e) * u64::from(BLOCK_SIZE);
            let end = host + u64::from(BLOCK_SIZE);
            if let Some(len) = len {
                if end > len {
                    return Err(VdiError::BlockPastEnd {
                        block: i,
                        host,
                        end,
                        len,
                    }
                    .into());
                }
            }
            map.map(guest, host).map_err(VdiError::from)?;
            Ok(())
        })?;
        if self.bmap.parsed >= u64::from(h.blocks) * 4 {
            self.seal(sink)?;
        }
        Ok(())
    }

    /// The map is complete: host order, overlap checks.
    fn seal(&mut self, sink: &mut dyn ExtentSink) -> Result<(), FormatError> {
        let Some(h) = self.header.as_ref() else {
            return Err(FormatError::Internal("block map sealed without a header"));
        };
        let metadata = [(0..HEADER_LEN as u64, "header"), (h.bmap(), "block map")];
        let Some(map) = self.map.as_mut() else {
            return Err(FormatError::Internal("block map sealed without a map"));
        };
        map.seal(&metadata, sink).map_err(|e| match e {
            SealError::Sink(s) => FormatError::Sink(s),
            SealError::Fault(f) => VdiError::from(f).into(),
        })
    }

    /// Takes what it can of `bytes` (the stream from `self.pos` on):
    /// `Some(n)` bytes consumed, `None` when the block map, further on, is
    /// needed first.
    fn step(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, FormatError> {
        let pos = self.pos;
        let avail = bytes.len() as u64;
        if pos < HEADER_LEN as u64 {
            let k = (HEADER_LEN as u64 - pos).min(avail) as usize;
            self.header_buf
                .extend_from_slice(bytes.get(..k).unwrap_or_default());
            if self.header_buf.len() == HEADER_LEN {
                self.on_header(sink)?;
            }
            return Ok(Some(k));
        }
        if self.sealed() {
            if let Some(map) = self.map.as_mut() {
                map.feed(pos, bytes, sink)?;
            }
            return Ok(Some(bytes.len()));
        }
        let Some(h) = self.header.as_ref() else {
            return Err(FormatError::Internal("no VDI header"));
        };
        let bmap = h.bmap();
        if pos < bmap.start {
            // Before the data area nothing can be a block: pass without
            // waiting for the map.
            let clear = bmap.start.min(h.offset_data);
            if pos < clear {
                return Ok(Some((clear - pos).min(avail) as usize));
            }
            return Ok(None);
        }
        let off = pos - bmap.start;
        let k = (bmap.end - pos).min(avail);
        if off < self.bmap.parsed {
            // Supplied earlier.
            return Ok(Some((self.bmap.parsed - off).min(k) as usize));
        }
        if off > self.bmap.parsed {
            return Err(FormatError::Internal("block map bytes out of order"));
        }
        self.take_map(bytes.get(..k as usize).unwrap_or_default(), sink)?;
        Ok(Some(k as usize))
    }
}

impl Decoder for VdiDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        crate::format::decoder::feed_steps(chunk, |rest| {
            let took = self.step(rest, sink)?;
            self.pos += took.unwrap_or(0) as u64;
            Ok(took)
        })
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        match (&self.header, self.sealed()) {
            (Some(h), false) => {
                let m = h.bmap();
                std::iter::once(m.start.saturating_add(self.bmap.parsed)..m.end).collect()
            }
            _ => Vec::new(),
        }
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let Some(m) = self.header.as_ref().map(Header::bmap) else {
            return Err(FormatError::Internal("VDI metadata before the header"));
        };
        if self.sealed() {
            return Ok(());
        }
        let end = host.saturating_add(bytes.len() as u64);
        let want = m.start.saturating_add(self.bmap.parsed);
        if want >= host && want < end {
            let to = end.min(m.end);
            let piece = bytes
                .get((want - host) as usize..(to - host) as usize)
                .unwrap_or_default();
            self.take_map(piece, sink)?;
        }
        Ok(())
    }

    fn finish(&mut self, _sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let len = self.pos;
        let Some(h) = self.header.as_ref() else {
            return Err(VdiError::TooShort(len).into());
        };
        let disk_size = h.disk_size;
        if !self.sealed() {
            return Err(VdiError::Truncated {
                len,
                what: "its block map",
            }
            .into());
        }
        if let Some((block, host, end)) = self.map.as_ref().and_then(|m| m.pending(len)) {
            return Err(VdiError::BlockPastEnd {
                block,
                host,
                end,
                len,
            }
            .into());
        }
        Ok(DecodeReport {
            virtual_size: disk_size,
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        let h = self.header.as_ref()?;
        Some(ImageInfo {
            format: Format::Vdi,
            virtual_size: Some(h.disk_size),
            cluster_size: Some(u64::from(BLOCK_SIZE)),
            format_specific: None,
        })
    }
}
