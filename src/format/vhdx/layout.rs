//! The header section (the first 1 MiB): the file type identifier, the two
//! headers and the region table, and the [`Layout`] they describe: where the
//! log, the BAT and the metadata region lie.
//!
//! As in qemu, the current header is the valid one with the higher sequence
//! number (two valid headers with the same number must be identical, as the
//! Disk2VHD tool writes them), and only the first region table is read.

use super::{checksum, VhdxError};

/// Size of the header section; nothing else may lie inside it.
pub(crate) const HEADER_SECTION: u64 = 1 << 20;
/// Where the two headers start, and the bytes of each under its checksum.
pub(crate) const HEADER_OFFSETS: [u64; 2] = [64 << 10, 128 << 10];
pub(crate) const HEADER_SIZE: usize = 4 << 10;
/// Where the region table starts, and the bytes under its checksum.
pub(crate) const REGION_TABLE: u64 = 192 << 10;
pub(crate) const REGION_TABLE_SIZE: usize = 64 << 10;
/// The bytes of a header that qemu compares when sequence numbers tie.
const HEADER_FIELDS: usize = 80;
const MIB: u64 = 1 << 20;

/// The BAT region's identifier, as stored.
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
/// The metadata region's identifier, as stored.
const METADATA_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];

/// What a region of the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Log,
    Bat,
    Metadata,
    /// A region the decoder does not know (not required by the image).
    Other,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Bat => "BAT",
            Kind::Metadata => "metadata",
            Kind::Other => "other",
        }
    }
}

/// A registered host range: no payload block may overlap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) kind: Kind,
}

/// What the header section says.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The current header's log identifier (all zeros: no log to replay).
    pub(crate) log_guid: [u8; 16],
    pub(crate) log: Region,
    pub(crate) bat: Region,
    pub(crate) metadata: Region,
    /// Every registered region (log included), sorted by start.
    pub(crate) regions: Vec<Region>,
}

impl Layout {
    /// Whether the log must be read to know if it holds entries to replay.
    pub(crate) fn log_to_check(&self) -> bool {
        self.log_guid != [0; 16] && self.log.end > self.log.start
    }

    /// The region holding `pos` (empty regions hold nothing), and the end of
    /// the run of bytes at `pos` of the same kind: the region's end, or the
    /// start of the next region.
    pub(crate) fn at(&self, pos: u64) -> (Option<Region>, u64) {
        let i = self.regions.partition_point(|r| r.end <= pos);
        match self.regions.get(i) {
            None => (None, u64::MAX),
            Some(r) if r.start <= pos => (Some(*r), r.end),
            Some(r) => (None, r.start),
        }
    }

    /// The registered region (or the header section) that `[start, end)`
    /// overlaps, by qemu's test.
    pub(crate) fn overlap(&self, start: u64, end: u64) -> Option<&'static str> {
        if start < HEADER_SECTION {
            return Some("the header section");
        }
        self.regions
            .iter()
            .find(|r| overlaps(start, end, r))
            .map(|r| match r.kind {
                Kind::Log => "the log",
                Kind::Bat => "the BAT region",
                Kind::Metadata => "the metadata region",
                Kind::Other => "a region of the region table",
            })
    }
}

/// qemu's region check: `[start, end)` and `r` share a byte (an empty range
/// strictly inside `r` counts).
fn overlaps(start: u64, end: u64, r: &Region) -> bool {
    !(start >= r.end || end <= r.start)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

pub(crate) fn guid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        a.copy_from_slice(s);
    }
    a
}

/// A GUID in its usual text form (the first three fields little-endian).
pub(crate) fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32_at(g, 0),
        u16_at(g, 4),
        u16_at(g, 6),
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// One header's fields, when it passes its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    seq: u64,
    log_guid: [u8; 16],
    log_version: u16,
    log_length: u32,
    log_offset: u64,
    fields: [u8; HEADER_FIELDS],
}

fn header(b: &[u8]) -> Option<Header> {
    let b = b.get(..HEADER_SIZE)?;
    if b.get(..4) != Some(b"head") || u16_at(b, 66) != 1 || checksum(b, 4) != u32_at(b, 4) {
        return None;
    }
    let mut fields = [0u8; HEADER_FIELDS];
    fields.copy_from_slice(b.get(..HEADER_FIELDS)?);
    Some(Header {
        seq: u64_at(b, 8),
        log_guid: guid_at(b, 48),
        log_version: u16_at(b, 64),
        log_length: u32_at(b, 68),
        log_offset: u64_at(b, 72),
        fields,
    })
}

/// Picks the current header as qemu does.
fn current(h1: Option<Header>, h2: Option<Header>) -> Result<Header, VhdxError> {
    match (h1, h2) {
        (None, None) => Err(VhdxError::NoValidHeader),
        (Some(h), None) | (None, Some(h)) => Ok(h),
        (Some(a), Some(b)) if a.seq > b.seq => Ok(a),
        (Some(a), Some(b)) if b.seq > a.seq => Ok(b),
        (Some(a), Some(b)) if a.fields == b.fields => Ok(a),
        (Some(a), Some(_)) => Err(VhdxError::HeadersDisagree(a.seq)),
    }
}

/// Parses the header section from its parts: the first 8 bytes, the two
/// 4 KiB headers and the 64 KiB region table.
pub(crate) fn parse(ident: &[u8], h1: &[u8], h2: &[u8], rt: &[u8]) -> Result<Layout, VhdxError> {
    if ident.get(..8) != Some(b"vhdxfile") {
        return Err(VhdxError::NotVhdx);
    }
    let h = current(header(h1), header(h2))?;
    if h.log_offset < MIB || h.log_offset % MIB != 0 {
        return Err(VhdxError::LogOffset(h.log_offset));
    }
    if h.log_version != 0 {
        return Err(VhdxError::LogVersion(h.log_version));
    }
    if h.log_guid != [0; 16] && h.log_length != 0 && u64::from(h.log_length) % MIB != 0 {
        return Err(VhdxError::LogLength(h.log_length));
    }
    let log = Region {
        start: h.log_offset,
        end: h
            .log_offset
            .checked_add(u64::from(h.log_length))
            .ok_or(VhdxError::LogOffset(h.log_offset))?,
        kind: Kind::Log,
    };
    let rt = rt
        .get(..REGION_TABLE_SIZE)
        .ok_or(VhdxError::RegionTableChecksum)?;
    if checksum(rt, 4) != u32_at(rt, 4) {
        return Err(VhdxError::RegionTableChecksum);
    }
    if rt.get(..4) != Some(b"regi") {
        return Err(VhdxError::RegionTableSignature);
    }
    let count = u32_at(rt, 8);
    if count > 2047 {
        return Err(VhdxError::RegionCount(count));
    }
    let mut regions = vec![log];
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count as usize {
        let e = rt.get(16 + 32 * i..48 + 32 * i).unwrap_or_default();
        let guid = guid_at(e, 0);
        let offset = u64_at(e, 16);
        let len = u64::from(u32_at(e, 24));
        let required = u32_at(e, 28) & 1 != 0;
        let kind = if guid == BAT_GUID {
            Kind::Bat
        } else if guid == METADATA_GUID {
            Kind::Metadata
        } else {
            Kind::Other
        };
        let what = kind.name();
        let end = offset.checked_add(len).ok_or(VhdxError::RegionOverlap {
            what,
            offset,
            len,
            other: "the end of the address space",
        })?;
        let r = Region {
            start: offset,
            end,
            kind,
        };
        if let Some(o) = regions.iter().find(|o| overlaps(offset, end, o)) {
            return Err(VhdxError::RegionOverlap {
                what,
                offset,
                len,
                other: match o.kind {
                    Kind::Log => "the log",
                    _ => "another region",
                },
            });
        }
        if offset < HEADER_SECTION && (len > 0 || kind != Kind::Other) {
            return Err(VhdxError::RegionOverlap {
                what,
                offset,
                len,
                other: "the header section",
            });
        }
        regions.push(r);
        match kind {
            Kind::Bat if bat.is_some() => return Err(VhdxError::RegionDuplicate(what)),
            Kind::Metadata if metadata.is_some() => return Err(VhdxError::RegionDuplicate(what)),
            Kind::Bat => bat = Some(r),
            Kind::Metadata => metadata = Some(r),
            _ if required => return Err(VhdxError::RegionUnknown(guid_text(&guid))),
            _ => {}
        }
    }
    let bat = bat.ok_or(VhdxError::RegionMissing("BAT"))?;
    let metadata = metadata.ok_or(VhdxError::RegionMissing("metadata"))?;
    regions.retain(|r| r.end > r.start);
    regions.sort_unstable_by_key(|r| r.start);
    Ok(Layout {
        log_guid: h.log_guid,
        log,
        bat,
        metadata,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(regions: &[(u64, u64, Kind)]) -> Layout {
        let r: Vec<Region> = regions
            .iter()
            .map(|&(start, end, kind)| Region { start, end, kind })
            .collect();
        Layout {
            log_guid: [0; 16],
            log: r[0],
            bat: r[1],
            metadata: r[2],
            regions: r,
        }
    }

    #[test]
    fn positions_and_overlaps() {
        let m = 1u64 << 20;
        let l = layout(&[
            (m, 2 * m, Kind::Log),
            (2 * m, 3 * m, Kind::Bat),
            (5 * m, 6 * m, Kind::Metadata),
        ]);
        assert_eq!(l.at(m).0.map(|r| r.kind), Some(Kind::Log));
        assert_eq!(l.at(2 * m + 5), (Some(l.bat), 3 * m));
        assert_eq!(l.at(3 * m), (None, 5 * m));
        assert_eq!(l.at(6 * m), (None, u64::MAX));
        assert_eq!(l.overlap(3 * m, 4 * m), None);
        assert_eq!(l.overlap(4 * m, 5 * m + 1), Some("the metadata region"));
        assert_eq!(l.overlap(0, m), Some("the header section"));
        assert!(guid_text(&BAT_GUID).starts_with("2dc27766-f623-4200-9d64-115e9bfd4a08"));
    }
}
