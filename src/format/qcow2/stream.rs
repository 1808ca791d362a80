//! The sans-IO qcow2 stream decoder.
//!
//! Fed the image in increasing host-offset order, it parses the header, then
//! the L1 and L2 tables as they pass, and reports guest extents to the sink:
//! standard clusters straight from the input slices (no copy), compressed
//! clusters once their bytes are all in, zeros for everything unallocated.
//! Bytes that arrive before the table mapping them are held in the [`Window`];
//! when a table later maps bytes already passed, they are taken from there.
//! The decoder itself does no I/O: when holding would overflow and the caller
//! said metadata can be fetched out of order, `feed` stops and returns
//! [`Feed::NeedMetadata`]; the driver then reads [`StreamDecoder::missing_metadata`]
//! and hands the bytes back with [`StreamDecoder::supply`].

use std::ops::Range;

use crate::format::inflate::{Codec, Done, Pool};
use crate::format::plan::{SpillPolicy, Window};
use crate::format::{DecodeReport, Decoder, ExtentSink, Feed, FormatError, ImageInfo};
use crate::pace::Pace;

use super::emit::Emitter;
use super::entry::{Geometry, Mapping, SUBCLUSTERS};
use super::header::{align_up, cluster_size_hint, CompressionType, Header, MAX_HOST_OFFSET};
use super::map::{describe, CompressedRegion, MapState, Plain, TableCursor};
use super::Qcow2Error;

/// On a seekable source, the missing tables are fetched once this much is
/// held, even when the window could take more: held bytes include the unused
/// tails qemu's compressed writer leaves between clusters, which can only be
/// dropped once every table is known, so fetching the few missing tables early
/// keeps the window nearly empty. Non-seekable sources keep the whole window
/// before they spill. Measurements: BENCHMARKS.md, "Tuning".
const FETCH_AT: usize = 1 << 20;

/// Decoder settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// In-memory reorder window (bytes).
    pub window: usize,
    pub spill: SpillPolicy,
    /// Whether the driver can fetch metadata out of order (range reads).
    pub can_fetch: bool,
    /// Budget of the mapping state (bytes), see `map.rs`.
    pub mapping_budget: usize,
    /// Told when the first compressed cluster arrives.
    pub pace: Pace,
}

/// The stream decoder was asked to decode before it had a header (a bug).
fn no_header() -> Qcow2Error {
    Qcow2Error::Internal("no header parsed yet")
}

/// A region found by `plain_at` was not in the map (a bug).
fn lost_region() -> Qcow2Error {
    Qcow2Error::Internal("the mapping state lost a region")
}

/// Everything known once the header is parsed.
struct Body {
    header: Header,
    geo: Geometry,
    map: MapState,
    emit: Emitter,
    pool: Pool,
    /// Finished decompressions waiting to be emitted.
    done: Vec<Done>,
    /// Told once the first compressed cluster arrives.
    pace: Pace,
    l1_done: bool,
    pending_l2: u64,
    complete: bool,
    /// Scratch for decoded table entries.
    entries: Vec<(u64, u64, u64)>,
}

pub struct StreamDecoder {
    cfg: Config,
    pos: u64,
    head: Vec<u8>,
    body: Option<Body>,
    window: Window,
    fetched: bool,
}

impl StreamDecoder {
    pub fn new(cfg: Config) -> StreamDecoder {
        let window = Window::new(cfg.window, cfg.spill.clone());
        StreamDecoder {
            cfg,
            pos: 0,
            head: Vec::new(),
            body: None,
            window,
            fetched: false,
        }
    }

    /// Host offset of the next byte expected.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn header(&self) -> Option<&Header> {
        self.body.as_ref().map(|b| &b.header)
    }

    pub fn spilled_bytes(&self) -> u64 {
        self.window.spilled_bytes()
    }

    /// Feeds the next bytes of the stream.
    fn feed_bytes(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, Qcow2Error> {
        let mut off = 0usize;
        if self.body.is_none() {
            off = self.feed_head(chunk, sink)?;
        }
        while off < chunk.len() {
            let rest = chunk.get(off..).unwrap_or_default();
            match self.step(rest, sink)? {
                Some(n) => off += n,
                None => return Ok(Feed::NeedMetadata(off)),
            }
        }
        Ok(Feed::Done)
    }

    /// Collects the header cluster; returns bytes consumed from `chunk`.
    fn feed_head(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<usize, Qcow2Error> {
        let mut off = 0usize;
        loop {
            let want = self.head_wanted()?;
            if self.head.len() >= want {
                break;
            }
            let take = (want - self.head.len()).min(chunk.len() - off);
            if take == 0 {
                return Ok(off);
            }
            self.head
                .extend_from_slice(chunk.get(off..off + take).unwrap_or_default());
            off += take;
        }
        let header = Header::parse(&self.head)?;
        self.pos = self.head.len() as u64;
        self.head = Vec::new();
        self.start_body(header, sink)?;
        Ok(off)
    }

    /// How many bytes the header cluster needs, as far as `self.head` tells:
    /// the fixed prefix, then the whole first cluster once the header has
    /// passed the checks its bytes so far allow (magic, version and cluster
    /// bits are checked before the size is trusted).
    fn head_wanted(&self) -> Result<usize, Qcow2Error> {
        if self.head.len() < super::header::FIXED_PREFIX {
            return Ok(super::header::FIXED_PREFIX);
        }
        match Header::parse(&self.head) {
            Ok(_) | Err(Qcow2Error::HeaderTruncated { .. }) => {}
            Err(e) => return Err(e),
        }
        let cs = cluster_size_hint(&self.head).ok_or(Qcow2Error::Internal(
            "cluster size unknown after the header checks",
        ))?;
        usize::try_from(cs).map_err(|_| Qcow2Error::Internal("cluster size does not fit in usize"))
    }

    fn start_body(&mut self, header: Header, sink: &mut dyn ExtentSink) -> Result<(), Qcow2Error> {
        let geo = Geometry::new(&header)?;
        let cs = header.cluster_size();
        let mut map = MapState::new(cs, self.cfg.mapping_budget);
        map.fixed.push((0, cs, "image header"));
        let l1_bytes = u64::from(header.l1_size) * 8;
        if l1_bytes > 0 {
            // The whole clusters of the L1: its padding is no guest data and
            // should not wait in the window (entries past `l1_size` are ignored).
            let a = header.l1_table_offset;
            let end = a + align_up(l1_bytes, cs);
            map.fixed.push((a, end, "L1 table"));
            map.insert_table(a, end, Plain::L1(TableCursor::default()))?;
        }
        let rt = header.refcount_table_offset;
        let rt_end = rt + u64::from(header.refcount_table_clusters) * cs;
        map.fixed.push((rt, rt_end, "refcount table"));
        map.insert_table(rt, rt_end, Plain::RefTable(TableCursor::default()))?;
        sink.set_virtual_size(header.virtual_size)?;
        let codec = match header.compression_type {
            CompressionType::Zlib => Codec::Deflate,
            CompressionType::Zstd => Codec::Zstd,
        };
        let unit = usize::try_from(cs)
            .map_err(|_| Qcow2Error::Internal("cluster size does not fit in usize"))?;
        let pool = Pool::new(codec, unit).map_err(Qcow2Error::DecompressorSetup)?;
        let vsize = header.virtual_size;
        let mut body = Body {
            geo,
            map,
            emit: Emitter::new(vsize),
            pool,
            done: Vec::new(),
            pace: self.cfg.pace.clone(),
            l1_done: l1_bytes == 0,
            pending_l2: 0,
            complete: false,
            entries: Vec::new(),
            header,
        };
        body.update_complete(&mut self.window);
        self.body = Some(body);
        Ok(())
    }

    /// Processes bytes at `self.pos`; returns how many were consumed, or
    /// `None` when metadata must be fetched first.
    fn step(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<Option<usize>, Qcow2Error> {
        let pos = self.pos;
        let body = self.body.as_mut().ok_or_else(no_header)?;
        if let Some(start) = body.map.plain_at(pos) {
            let Some(region) = body.map.plain.remove(&start) else {
                return Err(lost_region());
            };
            let n = (region.end - pos).min(bytes.len() as u64) as usize;
            let piece = bytes.get(..n).unwrap_or_default();
            let end = region.end;
            let done = pos + n as u64 == end;
            let kind =
                body.plain_bytes(start, region.kind, pos, piece, pos, sink, &mut self.window)?;
            if !done {
                body.map
                    .plain
                    .insert(start, super::map::PlainRegion { end, kind });
            } else {
                body.region_done(&kind, &mut self.window);
            }
            self.pos += n as u64;
            return Ok(Some(n));
        }
        // Bytes not covered by a plain region: compressed data, or unknown.
        let limit = body
            .map
            .next_plain(pos)
            .map_or(bytes.len() as u64, |s| (s - pos).min(bytes.len() as u64));
        let n = limit as usize;
        let piece = bytes.get(..n).unwrap_or_default();
        if !body.complete {
            if self.window.would_overflow(n) {
                // Clusters still being decompressed hold their input in the
                // window: finish them before deciding the window is full.
                body.pool.drain(&mut body.done);
                body.emit_done(sink, &mut self.window)?;
            }
            if self.cfg.can_fetch
                && !self.fetched
                && self.window.would_exceed(n, self.cfg.window.min(FETCH_AT))
            {
                return Ok(None);
            }
            self.window.hold(pos, piece)?;
        }
        body.feed_compressed(pos, piece, sink, &mut self.window)?;
        self.pos += n as u64;
        Ok(Some(n))
    }

    /// Host ranges of metadata still missing, for the driver to fetch: the
    /// rest of the L1 table if it has not been parsed, else every L2 table
    /// not parsed yet. Empty once the mapping is complete.
    fn missing_tables(&self) -> Vec<(u64, u64)> {
        let Some(body) = self.body.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let want_l1 = !body.l1_done;
        for (&s, r) in &body.map.plain {
            match &r.kind {
                Plain::L1(c) if want_l1 => {
                    let end = s + u64::from(body.header.l1_size) * 8;
                    out.push((s + c.parsed, end.max(s + c.parsed)));
                }
                Plain::L2 { cursor, .. } if !want_l1 => out.push((s + cursor.parsed, r.end)),
                _ => {}
            }
        }
        out
    }

    /// Hands over metadata bytes read out of order (`host` must be where the
    /// table's parsing stands, as returned by `missing_metadata`).
    fn supply_tables(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), Qcow2Error> {
        self.fetched = true;
        let live = self.pos;
        let body = self.body.as_mut().ok_or_else(no_header)?;
        let mut host = host;
        let mut bytes = bytes;
        while !bytes.is_empty() {
            let start = body
                .map
                .plain_at(host)
                .ok_or(Qcow2Error::UnexpectedSupply { host })?;
            let next = match body.map.plain.get(&start).map(|r| &r.kind) {
                Some(Plain::L1(c) | Plain::L2 { cursor: c, .. }) => start + c.parsed,
                _ => return Err(Qcow2Error::UnexpectedSupply { host }),
            };
            if next != host {
                return Err(Qcow2Error::UnexpectedSupply { host });
            }
            let Some(region) = body.map.plain.remove(&start) else {
                return Err(lost_region());
            };
            let n = (region.end - host).min(bytes.len() as u64) as usize;
            let (piece, rest) = bytes.split_at(n);
            let end = region.end;
            // Tables parsed from a range read never pass through the window.
            let kind = body.plain_bytes(
                start,
                region.kind,
                host,
                piece,
                live,
                sink,
                &mut self.window,
            )?;
            if host + n as u64 == end {
                body.region_done(&kind, &mut self.window);
            } else {
                body.map
                    .plain
                    .insert(start, super::map::PlainRegion { end, kind });
            }
            host += n as u64;
            bytes = rest;
        }
        Ok(())
    }

    /// Ends the stream: everything mapped must have arrived.
    fn finish_stream(&mut self, sink: &mut dyn ExtentSink) -> Result<(u64, u64), Qcow2Error> {
        let pos = self.pos;
        if self.body.is_none() {
            return Err(if self.head.is_empty() {
                Qcow2Error::Empty
            } else {
                Qcow2Error::HeaderTruncated {
                    need: self.head_wanted()? as u64,
                    have: self.head.len() as u64,
                }
            });
        }
        let body = self.body.as_mut().ok_or_else(no_header)?;
        let l1_done = body.l1_done;
        body.map.plain.retain(|_, r| match r.kind {
            Plain::RefBlock => false,
            Plain::L1(_) => !l1_done,
            _ => true,
        });
        if let Some((&s, r)) = body.map.plain.iter().next() {
            return Err(Qcow2Error::Truncated {
                at: pos,
                before: describe(&r.kind),
                range: s..r.end,
            });
        }
        // Compressed clusters may legitimately end with a partial sector past
        // the end of the file: decompress what arrived. If that fails, the
        // stream was cut inside the cluster (or its bytes are corrupt): said
        // so, with the decompressor's reason. Sink failures pass unchanged.
        let pending: Vec<(u64, u64)> = body.map.compressed.keys().copied().collect();
        let cut_short = |e: Qcow2Error| match e {
            Qcow2Error::CompressedCluster {
                host,
                guest,
                source,
            } if pending.contains(&(host, guest)) => Qcow2Error::TruncatedCompressed {
                at: pos,
                host,
                guest,
                source,
            },
            other => other,
        };
        for &(host, guest) in &pending {
            let Some(r) = body.map.remove_compressed(&(host, guest)) else {
                continue;
            };
            if r.buf.is_empty() {
                return Err(Qcow2Error::Truncated {
                    at: pos,
                    before: "compressed cluster",
                    range: host..r.end,
                });
            }
            body.decompress(host, guest, r.buf, sink, &mut self.window)
                .map_err(cut_short)?;
        }
        body.pool.drain(&mut body.done);
        body.emit_done(sink, &mut self.window).map_err(cut_short)?;
        body.emit.flush(sink)?;
        let vsize = body.header.virtual_size;
        if body.emit.covered() != vsize {
            return Err(Qcow2Error::Coverage {
                covered: body.emit.covered(),
                virtual_size: vsize,
            });
        }
        Ok((vsize, body.header.cluster_size()))
    }
}

impl Decoder for StreamDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        Ok(self.feed_bytes(chunk, sink)?)
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        self.missing_tables()
            .into_iter()
            .map(|(a, b)| a..b)
            .collect()
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        Ok(self.supply_tables(host, bytes, sink)?)
    }

    /// Never ask for metadata again: the range reads failed, so bytes
    /// whose tables have not been seen are held (and spilled) instead.
    fn stop_fetching(&mut self) -> bool {
        self.cfg.can_fetch = false;
        true
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let (virtual_size, _) = self.finish_stream(sink)?;
        Ok(DecodeReport {
            virtual_size,
            spilled_bytes: self.window.spilled_bytes(),
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        self.body
            .as_ref()
            .map(|b| super::info::image_info(&b.header))
    }
}

impl Body {
    fn update_complete(&mut self, window: &mut Window) {
        if !self.complete && self.l1_done && self.pending_l2 == 0 {
            self.complete = true;
            window.clear();
        }
    }

    fn region_done(&mut self, kind: &Plain, window: &mut Window) {
        match kind {
            Plain::L1(_) => self.l1_done = true,
            Plain::L2 { .. } => self.pending_l2 = self.pending_l2.saturating_sub(1),
            _ => {}
        }
        self.update_complete(window);
    }

    /// Bytes of a plain region (`piece` found at host `pos`; the stream has
    /// passed everything before `live`); returns the region's updated kind.
    #[allow(clippy::too_many_arguments)]
    fn plain_bytes(
        &mut self,
        start: u64,
        kind: Plain,
        pos: u64,
        piece: &[u8],
        live: u64,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<Plain, Qcow2Error> {
        match kind {
            Plain::Data { guest } => {
                let g = guest
                    .checked_add(pos - start)
                    .ok_or(Qcow2Error::Internal("guest offset overflow"))?;
                self.emit.data(sink, g, piece)?;
                Ok(Plain::Data { guest })
            }
            Plain::RefBlock => Ok(Plain::RefBlock),
            Plain::RefTable(mut c) => {
                let mut entries = std::mem::take(&mut self.entries);
                entries.clear();
                c.feed(piece, 8, &mut entries);
                let cs = self.geo.cluster_size;
                for &(_, raw, _) in &entries {
                    let off = raw & !0x1ff;
                    if off != 0 && off % cs == 0 && off >= live && off < MAX_HOST_OFFSET {
                        self.map.insert_refblock(off, off + cs);
                    }
                }
                self.entries = entries;
                Ok(Plain::RefTable(c))
            }
            Plain::L1(mut c) => {
                let mut entries = std::mem::take(&mut self.entries);
                entries.clear();
                c.feed(piece, 8, &mut entries);
                for &(i, raw, _) in &entries {
                    self.l1_entry(i, raw, live, sink, window)?;
                }
                self.entries = entries;
                // The table may end before its cluster does (and the file with
                // it, as after `qemu-img resize`): done once its entries are in.
                if c.parsed >= u64::from(self.header.l1_size) * 8 {
                    self.l1_done = true;
                    self.update_complete(window);
                }
                Ok(Plain::L1(c))
            }
            Plain::L2 {
                l1_index,
                mut cursor,
            } => {
                let mut entries = std::mem::take(&mut self.entries);
                entries.clear();
                cursor.feed(piece, self.geo.l2_entry_size() as usize, &mut entries);
                for &(i, raw, bitmap) in &entries {
                    self.l2_entry(l1_index, i, raw, bitmap, live, sink, window)?;
                }
                self.entries = entries;
                self.emit.flush(sink)?;
                Ok(Plain::L2 { l1_index, cursor })
            }
        }
    }

    fn l1_entry(
        &mut self,
        index: u64,
        raw: u64,
        live: u64,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        if index >= self.header.l1_entries_needed() {
            return Ok(());
        }
        let span = self.header.l2_span();
        let guest = index * span;
        let Some(l2) = self.geo.l1_entry(raw)? else {
            return self.emit.zero(sink, guest, span);
        };
        let cs = self.geo.cluster_size;
        let end = l2 + cs;
        if end > MAX_HOST_OFFSET {
            return Err(Qcow2Error::OutOfRange {
                what: "L2 table",
                offset: l2,
            });
        }
        self.map.check_metadata(l2, end, "L2 table")?;
        self.map.l2_tables.insert(l2);
        self.map.check_budget()?;
        // Where does the stream stand relative to this table? The part that
        // already passed ([l2, split)) went by before the L1 named it, so it
        // sits in the window as unknown bytes and is parsed now; the part
        // still to come ([split, end)) continues the same cursor as it streams
        // in. Either part may be empty (the table is wholly behind or ahead).
        let pos = live;
        let split = pos.clamp(l2, end);
        let mut cursor = TableCursor::default();
        if split > l2 {
            let mut head = vec![0u8; (split - l2) as usize];
            if !window.take(l2, &mut head, true)? {
                return Err(Qcow2Error::Unavailable {
                    what: "L2 table",
                    at: l2,
                    guest: None,
                    table: "L1 table",
                });
            }
            let mut entries = Vec::new();
            cursor.feed(&head, self.geo.l2_entry_size() as usize, &mut entries);
            for &(i, raw, bitmap) in &entries {
                self.l2_entry(index, i, raw, bitmap, pos, sink, window)?;
            }
            self.emit.flush(sink)?;
        }
        if split < end {
            // Keyed by the table's start, as every table is: the cursor says
            // how much of it has been parsed, so the stream continues at `split`.
            self.map.insert_table(
                l2,
                end,
                Plain::L2 {
                    l1_index: index,
                    cursor,
                },
            )?;
            self.pending_l2 += 1;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn l2_entry(
        &mut self,
        l1_index: u64,
        index: u64,
        raw: u64,
        bitmap: u64,
        pos: u64,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        let cs = self.geo.cluster_size;
        let cluster = l1_index
            .checked_mul(self.header.l2_entries())
            .and_then(|c| c.checked_add(index))
            .ok_or(Qcow2Error::Internal("guest cluster overflow"))?;
        let Some(guest) = cluster.checked_mul(cs) else {
            return Ok(());
        };
        let vsize = self.header.virtual_size;
        if guest >= vsize {
            return Ok(());
        }
        let len = cs.min(vsize - guest);
        match self.geo.l2_entry(raw, bitmap)? {
            Mapping::Zero => self.emit.zero(sink, guest, len),
            Mapping::Data { host } => self.data(host, guest, len, pos, sink, window),
            Mapping::Compressed { host, len: clen } => {
                self.compressed(host, clen, guest, pos, sink, window)
            }
            Mapping::Sub { host, alloc } => {
                let sc = self.geo.subcluster_size();
                let mut i = 0u32;
                while i < SUBCLUSTERS {
                    let bit = alloc >> i & 1;
                    let mut j = i + 1;
                    while j < SUBCLUSTERS && alloc >> j & 1 == bit {
                        j += 1;
                    }
                    let g = guest + u64::from(i) * sc;
                    if g < vsize {
                        let l = (u64::from(j - i) * sc).min(vsize - g);
                        if bit == 1 {
                            self.data(host + u64::from(i) * sc, g, l, pos, sink, window)?;
                        } else {
                            self.emit.zero(sink, g, l)?;
                        }
                    }
                    i = j;
                }
                Ok(())
            }
        }
    }

    /// Maps host `[host, host + len)` to guest `guest`.
    fn data(
        &mut self,
        host: u64,
        guest: u64,
        len: u64,
        pos: u64,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        let end = host
            .checked_add(len)
            .filter(|&e| e <= MAX_HOST_OFFSET)
            .ok_or(Qcow2Error::OutOfRange {
                what: "data cluster",
                offset: host,
            })?;
        self.map.check_metadata(host, end, "data cluster")?;
        let split = pos.clamp(host, end);
        if split > host {
            // Already passed: the bytes must be held.
            let mut buf = vec![0u8; (split - host) as usize];
            if !window.take(host, &mut buf, true)? {
                return Err(Qcow2Error::Unavailable {
                    what: "data cluster",
                    at: host,
                    guest: Some(guest),
                    table: "L2 table",
                });
            }
            self.emit.data(sink, guest, &buf)?;
        }
        if split < end {
            self.map.insert_data(split, end, guest + (split - host))?;
        }
        Ok(())
    }

    fn compressed(
        &mut self,
        host: u64,
        clen: u64,
        guest: u64,
        pos: u64,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        let end = host
            .checked_add(clen)
            .filter(|&e| e <= MAX_HOST_OFFSET)
            .ok_or(Qcow2Error::OutOfRange {
                what: "compressed cluster",
                offset: host,
            })?;
        self.map.check_metadata(host, end, "compressed cluster")?;
        self.map.check_plain(host, end, "compressed cluster")?;
        self.pace.set_decompressing();
        let mut buf = self.pool.buffer();
        let split = pos.clamp(host, end);
        if split > host {
            buf.resize((split - host) as usize, 0);
            if !window.take(host, &mut buf, false)? {
                return Err(Qcow2Error::Unavailable {
                    what: "compressed cluster",
                    at: host,
                    guest: Some(guest),
                    table: "L2 table",
                });
            }
        }
        if split == end {
            return self.decompress(host, guest, buf, sink, window);
        }
        self.map
            .insert_compressed((host, guest), CompressedRegion { end, buf })
    }

    /// Hands a compressed cluster to the pool, then emits whatever finished.
    fn decompress(
        &mut self,
        host: u64,
        guest: u64,
        input: Vec<u8>,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        let len = self.geo.cluster_size as usize;
        self.pool.submit(host, guest, input, len, &mut self.done);
        self.emit_done(sink, window)
    }

    /// Emits finished clusters (in submission order) and releases the input
    /// bytes they consumed from the window.
    fn emit_done(
        &mut self,
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        let done = std::mem::take(&mut self.done);
        let mut result = Ok(());
        for d in done {
            if result.is_ok() {
                let (host, guest) = (d.job.host, d.job.guest);
                result = match d.result {
                    Ok(used) => {
                        window.release(host, host.saturating_add(used as u64));
                        self.emit.data(sink, guest, &d.job.out)
                    }
                    Err(source) => Err(Qcow2Error::CompressedCluster {
                        host,
                        guest,
                        source,
                    }),
                };
            }
            self.pool.give_back(d.job);
        }
        result
    }

    /// Gives unplaced bytes at `pos` to the compressed clusters they belong to.
    fn feed_compressed(
        &mut self,
        pos: u64,
        piece: &[u8],
        sink: &mut dyn ExtentSink,
        window: &mut Window,
    ) -> Result<(), Qcow2Error> {
        if self.map.compressed.is_empty() || piece.is_empty() {
            return Ok(());
        }
        let end = pos + piece.len() as u64;
        let lo = pos.saturating_sub(self.map.max_compressed);
        let keys: Vec<(u64, u64)> = self
            .map
            .compressed
            .range((lo, 0)..(end, 0))
            .filter(|(_, r)| r.end > pos)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(r) = self.map.compressed.get(&key) else {
                continue;
            };
            let (s, e) = (key.0, r.end);
            let a = pos.max(s);
            let b = end.min(e);
            if s + r.buf.len() as u64 != a {
                return Err(Qcow2Error::Internal(
                    "compressed cluster bytes received out of order",
                ));
            }
            let bytes = piece
                .get((a - pos) as usize..(b - pos) as usize)
                .unwrap_or_default();
            self.map.extend_compressed(&key, bytes)?;
            if b == e {
                if let Some(r) = self.map.remove_compressed(&key) {
                    self.decompress(key.0, key.1, r.buf, sink, window)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PlanError;
    use crate::testing::CheckingSink;

    const CS: usize = 512;

    /// A 512-byte-cluster v3 image: header at 0, refcount table at cluster 1,
    /// L1 at cluster `l1c`, one L2 at cluster `l2c`, and guest clusters 0 and 2
    /// stored at `data` clusters (patterns 0xA1, 0xA2). Virtual size 20 clusters.
    fn image(l1c: usize, l2c: usize, data: [usize; 2]) -> Vec<u8> {
        let n = 1 + [l1c, l2c, data[0], data[1]].into_iter().max().unwrap_or(0);
        let mut b = vec![0u8; n * CS];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&9u32.to_be_bytes());
        b[24..32].copy_from_slice(&(20 * CS as u64).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        b[40..48].copy_from_slice(&((l1c * CS) as u64).to_be_bytes());
        b[48..56].copy_from_slice(&(CS as u64).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        let put =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put(&mut b, l1c * CS, (1 << 63) | (l2c * CS) as u64);
        put(&mut b, l2c * CS, (1 << 63) | (data[0] * CS) as u64);
        put(&mut b, l2c * CS + 16, (1 << 63) | (data[1] * CS) as u64);
        put(&mut b, l2c * CS + 24, 1); // zero flag
        b[data[0] * CS..data[0] * CS + CS].fill(0xA1);
        b[data[1] * CS..data[1] * CS + CS].fill(0xA2);
        b
    }

    /// Decodes `img` fed in pieces of `piece` bytes; returns the sink and
    /// whether decompression was said to set the pace.
    fn run(img: &[u8], window: usize, piece: usize) -> Result<(CheckingSink, bool), FormatError> {
        let pace = Pace::new();
        let mut d = StreamDecoder::new(Config {
            window,
            spill: SpillPolicy::Forbid,
            can_fetch: false,
            mapping_budget: super::super::MAPPING_BUDGET,
            pace: pace.clone(),
        });
        let mut m = CheckingSink::new();
        for p in img.chunks(piece) {
            assert_eq!(d.feed(p, &mut m)?, Feed::Done);
        }
        d.finish(&mut m)?;
        Ok((m, pace.decompressing()))
    }

    fn check(m: &CheckingSink) {
        m.assert_complete();
        assert_eq!(m.vsize, Some(20 * CS as u64));
        let image = m.image();
        for (g, &b) in image.iter().enumerate() {
            let want = match g / CS {
                0 => 0xA1,
                2 => 0xA2,
                _ => 0,
            };
            assert_eq!(b, want, "guest byte {g}");
        }
        assert_eq!(m.data_bytes(), 2 * CS as u64);
    }

    #[test]
    fn forward_layout_needs_no_window() {
        let img = image(2, 3, [4, 5]);
        for piece in [1, 7, 512, 100_000] {
            let (m, paced) = run(&img, 0, piece).expect("decodes");
            check(&m);
            assert!(!paced, "no compressed cluster");
        }
    }

    /// `image(2, 3, [4, 5])` with guest clusters 0 and 2 compressed (raw
    /// deflate, one sector each) in place of the plain ones; also returns
    /// the compressed length of the last one (host cluster 5).
    fn compressed_image() -> (Vec<u8>, usize) {
        use std::io::Write;
        let mut img = image(2, 3, [4, 5]);
        let mut last = 0;
        for (guest, cluster, fill) in [(0usize, 4usize, 0xA1u8), (2, 5, 0xA2)] {
            let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(&[fill; CS]).expect("deflate");
            let packed = z.finish().expect("deflate");
            assert!(packed.len() <= CS);
            img[cluster * CS..(cluster + 1) * CS].fill(0);
            img[cluster * CS..cluster * CS + packed.len()].copy_from_slice(&packed);
            // Bit 62: compressed; offset in the low bits, the (zero) count of
            // additional sectors above them.
            let entry = (1u64 << 62) | (cluster * CS) as u64;
            let at = 3 * CS + guest * 8;
            img[at..at + 8].copy_from_slice(&entry.to_be_bytes());
            last = packed.len();
        }
        (img, last)
    }

    #[test]
    fn a_compressed_cluster_is_inflated_and_the_pace_told() {
        let (img, _) = compressed_image();
        let (m, paced) = run(&img, 0, 97).expect("decodes");
        check(&m);
        assert!(paced, "decompression sets the pace");
    }

    #[test]
    fn compressed_clusters_that_do_not_decompress_are_named() {
        let (img, last) = compressed_image();
        // Corrupt in the middle of the stream: the cluster and the
        // decompressor's reason, as its source.
        let mut bad = img.clone();
        bad[4 * CS..5 * CS].fill(0xff);
        match run(&bad, 0, 97) {
            Err(FormatError::Qcow2(e @ Qcow2Error::CompressedCluster { host, guest: 0, .. })) => {
                assert_eq!(host, 4 * CS as u64);
                assert!(std::error::Error::source(&e).is_some(), "{e}");
            }
            other => panic!("expected CompressedCluster, got {:?}", other.err()),
        }
        // Cut inside the last one: a truncation, with the same reason.
        match run(&img[..5 * CS + last / 2], 0, 97) {
            Err(FormatError::Qcow2(
                e @ Qcow2Error::TruncatedCompressed {
                    host, guest, at, ..
                },
            )) => {
                assert_eq!((host, guest), (5 * CS as u64, 2 * CS as u64));
                assert_eq!(at, (5 * CS + last / 2) as u64);
                assert!(e.is_truncation());
                assert!(std::error::Error::source(&e).is_some(), "{e}");
            }
            other => panic!("expected TruncatedCompressed, got {:?}", other.err()),
        }
        // Cut after its data but inside its sector: legitimate, decodes.
        check(&run(&img[..5 * CS + last], 0, 97).expect("decodes").0);
    }

    /// A sink that refuses data at one guest offset (a full disk, say).
    struct RefusingSink {
        inner: CheckingSink,
        refuse_at: u64,
    }

    impl ExtentSink for RefusingSink {
        fn set_virtual_size(&mut self, size: u64) -> Result<(), crate::format::SinkError> {
            self.inner.set_virtual_size(size)
        }
        fn data(&mut self, guest: u64, bytes: &[u8]) -> Result<(), crate::format::SinkError> {
            if guest == self.refuse_at {
                return Err(crate::format::SinkError::Io {
                    context: "writing the target".to_string(),
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
            ExtentSink::data(&mut self.inner, guest, bytes)
        }
        fn zero(&mut self, guest: u64, len: u64) -> Result<(), crate::format::SinkError> {
            self.inner.zero(guest, len)
        }
    }

    #[test]
    fn a_sink_failure_at_the_end_is_not_reported_as_a_corrupt_image() {
        // The last compressed cluster is decompressed only at the end of the
        // stream (its sector runs past the end of the file), so the sink
        // first sees its data there.
        let (img, last) = compressed_image();
        let img = &img[..5 * CS + last];
        let mut d = StreamDecoder::new(Config {
            window: 0,
            spill: SpillPolicy::Forbid,
            can_fetch: false,
            mapping_budget: super::super::MAPPING_BUDGET,
            pace: Pace::new(),
        });
        let mut sink = RefusingSink {
            inner: CheckingSink::new(),
            refuse_at: 2 * CS as u64,
        };
        for p in img.chunks(97) {
            assert_eq!(d.feed(p, &mut sink).expect("feed"), Feed::Done);
        }
        match d.finish(&mut sink) {
            Err(FormatError::Sink(crate::format::SinkError::Io { .. })) => {}
            other => panic!("expected the sink's error, got {:?}", other.err()),
        }
    }

    #[test]
    fn data_before_its_l2_is_held_then_placed() {
        let img = image(2, 6, [3, 5]);
        check(&run(&img, 4096, 100).expect("decodes").0);
        // Forbid with a window too small: scratch required, said so.
        match run(&img, 600, 100) {
            Err(FormatError::Plan(PlanError::ScratchRequired { held: 600 })) => {}
            other => panic!("expected ScratchRequired, got {:?}", other.err()),
        }
    }

    #[test]
    fn l1_at_the_end() {
        let img = image(7, 4, [3, 5]);
        check(&run(&img, 8192, 333).expect("decodes").0);
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let img = image(2, 3, [4, 5]);
        for cut in 0..img.len() {
            match run(&img[..cut], 1 << 20, 64) {
                Err(FormatError::Qcow2(e)) => assert!(e.is_truncation(), "{cut}: {e:?}"),
                Err(e) => panic!("{cut}: {e}"),
                Ok(_) => panic!("truncated at {cut} accepted"),
            }
        }
    }
}
