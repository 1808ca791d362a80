//! The sparse extent header ("Virtual Disk Format 1.1", *Hosted Sparse
//! Extent Header*), read with QEMU's limits (`block/vmdk.c`,
//! `vmdk_open_vmdk4` and `vmdk_add_extent`), so that what qemu-img opens
//! we open, and what it refuses we refuse.
//!
//! A few checks are ours, where QEMU would read garbage or needs memory we
//! will not spend: the newline check bytes, a grain size that is a power of
//! two, compressed grains of at most 2 MiB, compressed grains without
//! markers, and a grain directory "at the end" of an uncompressed extent.

use super::VmdkError;

/// Bytes in a sector: every offset in a VMDK is counted in sectors.
pub(crate) const SECTOR: u64 = 512;
/// The header occupies the first sector.
pub(crate) const HEADER_LEN: usize = 512;
/// The magic of a hosted sparse extent.
pub(crate) const MAGIC: &[u8; 4] = b"KDMV";
/// The magic of an ESX sparse extent (refused).
pub(crate) const COWD_MAGIC: &[u8; 4] = b"COWD";

/// The header's newline check bytes are valid (and checked).
const FLAG_NL_DETECT: u32 = 1 << 0;
/// A redundant grain directory exists.
const FLAG_RGD: u32 = 1 << 1;
/// A grain table entry of 1 means "this grain reads as zeros".
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Grains are preceded by markers.
const FLAG_MARKERS: u32 = 1 << 17;
/// `gdOffset` of a streamOptimized header whose directory is in the footer.
pub(crate) const GD_AT_END: u64 = u64::MAX;
/// `compressAlgorithm` for deflate (zlib streams).
const COMPRESSION_DEFLATE: u16 = 1;
/// The newline check bytes: `\n`, ` `, `\r`, `\n`.
const CHECK_BYTES: [u8; 4] = [0x0a, 0x20, 0x0d, 0x0a];

/// QEMU's largest grain table ("L2 table size too big").
const MAX_GTES_PER_GT: u32 = 512;
/// QEMU's largest grain, in sectors (1 GiB: "Invalid granularity").
const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Largest compressed grain we inflate: a grain waiting for a worker is
/// held in memory, several at a time, so it must stay small.
const MAX_COMPRESSED_GRAIN: u64 = 2 << 20;
/// QEMU's largest grain directory, in entries ("L1 size too big").
const MAX_GD_ENTRIES: u64 = 32 << 20;
/// Largest virtual size: what a signed 64-bit byte offset can address.
const MAX_VIRTUAL_SIZE: u64 = i64::MAX as u64 & !(SECTOR - 1);

/// The header fields, as stored (little endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) flags: u32,
    /// Virtual size in sectors.
    pub(crate) capacity: u64,
    /// Grain size in sectors.
    pub(crate) grain_sectors: u64,
    /// Embedded descriptor, in sectors.
    pub(crate) desc_offset: u64,
    pub(crate) desc_size: u64,
    pub(crate) gtes_per_gt: u32,
    pub(crate) rgd_offset: u64,
    pub(crate) gd_offset: u64,
    /// Sectors of metadata before the first grain (`overHead`).
    pub(crate) overhead: u64,
    pub(crate) check_bytes: [u8; 4],
    pub(crate) compress_algorithm: u16,
}

/// What the header says about the layout, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Guest bytes.
    pub(crate) vsize: u64,
    /// Grain bytes.
    pub(crate) grain: u64,
    /// Grains in the disk (the last one may be partial).
    pub(crate) grains: u64,
    /// Entries per grain table.
    pub(crate) gtes: u64,
    /// Entries in the grain directory (one per grain table).
    pub(crate) gd_entries: u64,
    /// Bytes a grain table occupies, whole sectors.
    pub(crate) gt_span: u64,
    /// Bytes the grain directory occupies, whole sectors.
    pub(crate) gd_span: u64,
    /// Grains are zlib streams behind markers (streamOptimized).
    pub(crate) compressed: bool,
    /// A grain table entry of 1 reads as zeros.
    pub(crate) zero_grain: bool,
    /// The grain directory is found through the footer.
    pub(crate) gd_at_end: bool,
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

/// Whole sectors holding `bytes`.
pub(crate) fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR)
}

impl Header {
    /// Reads the header from its sector (`b` starts with the magic).
    pub(crate) fn parse(b: &[u8]) -> Result<Header, VmdkError> {
        if b.len() < HEADER_LEN {
            return Err(VmdkError::TruncatedHeader { len: b.len() });
        }
        if b.get(..4) != Some(MAGIC.as_slice()) {
            return Err(VmdkError::NotVmdk);
        }
        let mut check_bytes = [0u8; 4];
        if let Some(s) = b.get(73..77) {
            check_bytes.copy_from_slice(s);
        }
        Ok(Header {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 12),
            grain_sectors: u64_at(b, 20),
            desc_offset: u64_at(b, 28),
            desc_size: u64_at(b, 36),
            gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            check_bytes,
            compress_algorithm: u16::from_le_bytes([
                b.get(77).copied().unwrap_or(0),
                b.get(78).copied().unwrap_or(0),
            ]),
        })
    }

    /// Grains are compressed (QEMU looks at `compressAlgorithm` only).
    pub(crate) fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// The redundant grain directory, in sectors, when the flag says there is one.
    pub(crate) fn rgd(&self) -> Option<u64> {
        (self.flags & FLAG_RGD != 0 && self.rgd_offset != 0).then_some(self.rgd_offset)
    }

    /// Checks the fields against QEMU's limits and ours.
    pub(crate) fn geometry(&self) -> Result<Geometry, VmdkError> {
        if self.version > 3 {
            return Err(VmdkError::Version(self.version));
        }
        if self.flags & FLAG_NL_DETECT != 0 && self.check_bytes != CHECK_BYTES {
            return Err(VmdkError::NewlineCheck(self.check_bytes));
        }
        if self.gtes_per_gt == 0 || self.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(VmdkError::GtesPerGt(self.gtes_per_gt));
        }
        let gs = self.grain_sectors;
        if gs == 0 || gs > MAX_GRAIN_SECTORS || !gs.is_power_of_two() {
            return Err(VmdkError::GrainSize(gs));
        }
        let grain = gs * SECTOR;
        let compressed = self.compressed();
        if compressed && self.flags & FLAG_MARKERS == 0 {
            return Err(VmdkError::CompressedWithoutMarkers);
        }
        if compressed && grain > MAX_COMPRESSED_GRAIN {
            return Err(VmdkError::CompressedGrainSize(grain));
        }
        let vsize = self
            .capacity
            .checked_mul(SECTOR)
            .filter(|&v| v <= MAX_VIRTUAL_SIZE)
            .ok_or(VmdkError::Capacity(self.capacity))?;
        let gtes = u64::from(self.gtes_per_gt);
        let grains = self.capacity.div_ceil(gs);
        let gd_entries = grains.div_ceil(gtes);
        if gd_entries > MAX_GD_ENTRIES {
            return Err(VmdkError::GdEntries(gd_entries));
        }
        let gd_at_end = self.gd_offset == GD_AT_END;
        if gd_at_end && !compressed {
            return Err(VmdkError::GdAtEndUncompressed);
        }
        if !gd_at_end && gd_entries > 0 && self.gd_offset == 0 {
            return Err(VmdkError::GdInHeader);
        }
        if compressed && self.overhead == 0 {
            return Err(VmdkError::Overhead(self.overhead));
        }
        Ok(Geometry {
            vsize,
            grain,
            grains,
            gtes,
            gd_entries,
            gt_span: sectors_for(gtes * 4) * SECTOR,
            gd_span: sectors_for(gd_entries * 4) * SECTOR,
            compressed,
            zero_grain: self.flags & FLAG_ZERO_GRAIN != 0,
            gd_at_end,
        })
    }

    /// Where the footer's fields differ from the header's in a way that
    /// changes how the disk reads (QEMU takes the footer's): the first
    /// such field, with both values.
    pub(crate) fn differs(&self, footer: &Header) -> Option<(&'static str, u64, u64)> {
        let fields: [(&'static str, u64, u64); 5] = [
            ("capacity", self.capacity, footer.capacity),
            ("grainSize", self.grain_sectors, footer.grain_sectors),
            (
                "numGTEsPerGT",
                u64::from(self.gtes_per_gt),
                u64::from(footer.gtes_per_gt),
            ),
            (
                "compressAlgorithm",
                u64::from(self.compress_algorithm),
                u64::from(footer.compress_algorithm),
            ),
            (
                "flags",
                u64::from(self.flags & (FLAG_ZERO_GRAIN | FLAG_MARKERS)),
                u64::from(footer.flags & (FLAG_ZERO_GRAIN | FLAG_MARKERS)),
            ),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header sector: `compressed` makes it a streamOptimized one.
    pub(crate) fn sector(
        capacity: u64,
        grain: u64,
        gd: u64,
        overhead: u64,
        compressed: bool,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(MAGIC);
        let flags: u32 = FLAG_NL_DETECT
            | if compressed {
                (1 << 16) | FLAG_MARKERS
            } else {
                0
            };
        b[4..8].copy_from_slice(&(if compressed { 3u32 } else { 1 }).to_le_bytes());
        b[8..12].copy_from_slice(&flags.to_le_bytes());
        b[12..20].copy_from_slice(&capacity.to_le_bytes());
        b[20..28].copy_from_slice(&grain.to_le_bytes());
        b[28..36].copy_from_slice(&1u64.to_le_bytes());
        b[36..44].copy_from_slice(&1u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&gd.to_le_bytes());
        b[64..72].copy_from_slice(&overhead.to_le_bytes());
        b[73..77].copy_from_slice(&CHECK_BYTES);
        b[77..79].copy_from_slice(&(u16::from(compressed)).to_le_bytes());
        b
    }

    #[test]
    fn reads_and_checks_the_fields() {
        let h = Header::parse(&sector(2048, 128, 3, 8, false)).expect("parse");
        let g = h.geometry().expect("valid");
        assert_eq!(
            (g.vsize, g.grain, g.grains, g.gd_entries),
            (1 << 20, 65536, 16, 1)
        );
        assert_eq!((g.gt_span, g.gd_span), (2048, 512));
        assert!(!g.compressed && !g.gd_at_end);
        let s = Header::parse(&sector(2048, 128, GD_AT_END, 8, true)).expect("parse");
        assert!(s.geometry().expect("valid").gd_at_end);
    }

    #[test]
    fn impossible_fields_are_refused() {
        let bad = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut b = sector(2048, 128, 3, 8, false);
            patch(&mut b);
            Header::parse(&b).and_then(|h| h.geometry()).err()
        };
        assert!(matches!(bad(&|b| b[4] = 4), Some(VmdkError::Version(4))));
        assert!(matches!(
            bad(&|b| b[20] = 100),
            Some(VmdkError::GrainSize(100))
        ));
        assert!(matches!(bad(&|b| b[20] = 0), Some(VmdkError::GrainSize(0))));
        assert!(matches!(
            bad(&|b| b[20..28].copy_from_slice(&(1u64 << 22).to_le_bytes())),
            Some(VmdkError::GrainSize(_))
        ));
        assert!(matches!(
            bad(&|b| b[44..48].copy_from_slice(&513u32.to_le_bytes())),
            Some(VmdkError::GtesPerGt(513))
        ));
        assert!(matches!(
            bad(&|b| b[44..48].fill(0)),
            Some(VmdkError::GtesPerGt(0))
        ));
        assert!(matches!(
            bad(&|b| b[75] = b'\n'),
            Some(VmdkError::NewlineCheck(_))
        ));
        assert!(matches!(
            bad(&|b| b[12..20].copy_from_slice(&(1u64 << 60).to_le_bytes())),
            Some(VmdkError::Capacity(_))
        ));
        assert!(matches!(
            bad(&|b| b[12..20].copy_from_slice(&(1u64 << 50).to_le_bytes())),
            Some(VmdkError::GdEntries(_))
        ));
        assert!(matches!(
            bad(&|b| b[56..64].fill(0xff)),
            Some(VmdkError::GdAtEndUncompressed)
        ));
        assert!(matches!(
            bad(&|b| b[56..64].fill(0)),
            Some(VmdkError::GdInHeader)
        ));
        assert!(matches!(
            bad(&|b| b[77] = 1),
            Some(VmdkError::CompressedWithoutMarkers)
        ));
        assert!(matches!(
            Header::parse(&[0u8; 100]),
            Err(VmdkError::TruncatedHeader { len: 100 })
        ));
    }
}
