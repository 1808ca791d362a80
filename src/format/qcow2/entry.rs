//! L1 and L2 entry decoding.
//!
//! qcow2-rs's `L1Entry`/`L2Entry` (`TableEntry::try_from_plain`) check the
//! reserved bits and cluster alignment, and `L2Entry::compressed_range` decodes
//! compressed descriptors. What qcow2-rs does not know we add here: bit 0 of
//! L1 entries (reserved, qcow2-rs uses it internally), the zero flag being
//! reserved in v2 and with extended L2 entries, upper offset bits of small-cluster
//! compressed descriptors, and the subcluster bitmaps of extended L2 entries.

use qcow2_rs::dev::Qcow2Info;
use qcow2_rs::meta::{L1Entry, L2Entry, TableEntry};

use super::header::{Header, MAX_HOST_OFFSET};

/// Subclusters per cluster with extended L2 entries.
pub(super) const SUBCLUSTERS: u32 = 32;

/// Geometry plus qcow2-rs's `Qcow2Info`, shared by all entry decoding.
pub(super) struct Geometry {
    pub cluster_bits: u32,
    pub cluster_size: u64,
    pub extended_l2: bool,
    pub version: u32,
    info: Qcow2Info,
}

/// What one guest cluster (or, for extended entries, its subclusters) reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mapping {
    /// Reads as zeros: unallocated, or zero flag.
    Zero,
    /// Standard cluster stored at this host offset.
    Data { host: u64 },
    /// Compressed: `len` bytes at most, starting at `host` (not aligned).
    Compressed { host: u64, len: u64 },
    /// Extended entry: per-subcluster status (bit i = subcluster i).
    /// `alloc` subclusters are read from `host + i * subcluster_size`; the
    /// others read as zeros (there is no backing file).
    Sub { host: u64, alloc: u32 },
}

impl Geometry {
    pub(super) fn new(h: &Header) -> Result<Geometry, String> {
        let info = h.qcow2rs_info().map_err(|e| e.to_string())?;
        Ok(Geometry {
            cluster_bits: h.cluster_bits,
            cluster_size: h.cluster_size(),
            extended_l2: h.extended_l2(),
            version: h.version,
            info,
        })
    }

    /// Bytes per L2 entry.
    pub(super) fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }

    pub(super) fn subcluster_size(&self) -> u64 {
        self.cluster_size / u64::from(SUBCLUSTERS)
    }

    /// Decodes an L1 entry: `Ok(None)` for an unallocated L2 table.
    pub(super) fn l1_entry(&self, raw: u64) -> Result<Option<u64>, String> {
        if raw & 1 != 0 {
            return Err(format!("L1 entry 0x{raw:016x} has reserved bit 0 set"));
        }
        let e = L1Entry::try_from_plain(raw, &self.info).map_err(|e| e.to_string())?;
        if e.is_zero() {
            Ok(None)
        } else {
            Ok(Some(e.l2_offset()))
        }
    }

    /// Decodes an L2 entry (`bitmap` is the second half of an extended entry).
    pub(super) fn l2_entry(&self, raw: u64, bitmap: u64) -> Result<Mapping, String> {
        let e = L2Entry::try_from_plain(raw, &self.info).map_err(|e| e.to_string())?;
        if let Some((host, len)) = e.compressed_range(self.cluster_bits) {
            // qcow2-rs masks the offset to 56 bits; the spec wants those bits zero.
            let x = 62 - (self.cluster_bits - 8);
            let field = raw & ((1u64 << x) - 1);
            if field != host || host >= MAX_HOST_OFFSET {
                return Err(format!(
                    "compressed L2 entry 0x{raw:016x} has an offset beyond 56 bits"
                ));
            }
            if self.extended_l2 && bitmap != 0 {
                return Err(format!(
                    "compressed L2 entry 0x{raw:016x} has a non-zero subcluster bitmap"
                ));
            }
            let len = u64::try_from(len).map_err(|_| "compressed length overflow".to_string())?;
            return Ok(Mapping::Compressed { host, len });
        }
        let host = e.cluster_offset();
        if self.extended_l2 {
            if raw & 1 != 0 {
                return Err(format!(
                    "L2 entry 0x{raw:016x} has the zero flag set, reserved with extended L2 entries"
                ));
            }
            let alloc = (bitmap & 0xffff_ffff) as u32;
            let zero = (bitmap >> 32) as u32;
            if alloc & zero != 0 {
                return Err(format!(
                    "extended L2 bitmap 0x{bitmap:016x} marks subclusters both allocated and zero"
                ));
            }
            if host == 0 {
                if alloc != 0 {
                    return Err(format!(
                        "extended L2 bitmap 0x{bitmap:016x} allocates subclusters of an unallocated cluster"
                    ));
                }
                return Ok(Mapping::Zero);
            }
            return Ok(match alloc {
                0 => Mapping::Zero,
                u32::MAX => Mapping::Data { host },
                _ => Mapping::Sub { host, alloc },
            });
        }
        if e.is_zero() {
            if self.version < 3 {
                return Err(format!(
                    "L2 entry 0x{raw:016x} has the zero flag set, reserved in version 2"
                ));
            }
            return Ok(Mapping::Zero);
        }
        if host == 0 {
            Ok(Mapping::Zero)
        } else {
            Ok(Mapping::Data { host })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(ext: bool) -> Geometry {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        b[36..40].copy_from_slice(&4u32.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        if ext {
            b[72..80].copy_from_slice(&INCOMPAT.to_be_bytes());
        }
        Geometry::new(&Header::parse(&b).expect("header")).expect("geometry")
    }
    const INCOMPAT: u64 = super::super::header::INCOMPAT_EXTL2;

    #[test]
    fn standard_entries() {
        let g = geo(false);
        assert_eq!(g.l2_entry(0, 0), Ok(Mapping::Zero));
        assert_eq!(g.l2_entry(1, 0), Ok(Mapping::Zero));
        assert_eq!(
            g.l2_entry((1 << 63) | 0x50000, 0),
            Ok(Mapping::Data { host: 0x50000 })
        );
        assert!(g.l2_entry(0x50200, 0).is_err(), "unaligned");
        assert!(g.l2_entry(0x50002, 0).is_err(), "reserved bit 1");
        assert!(g.l2_entry(1 << 60, 0).is_err(), "reserved high bit");
        assert_eq!(g.l1_entry(0), Ok(None));
        assert_eq!(g.l1_entry((1 << 63) | 0x30000), Ok(Some(0x30000)));
        assert!(g.l1_entry(0x30001).is_err());
    }

    #[test]
    fn compressed_entries() {
        let g = geo(false);
        // x = 62 - 8 = 54: 2 additional sectors, offset 0x12345.
        let raw = (1u64 << 62) | (2u64 << 54) | 0x12345;
        let Ok(Mapping::Compressed { host, len }) = g.l2_entry(raw, 0) else {
            panic!("not compressed");
        };
        assert_eq!(host, 0x12345);
        assert_eq!(len, 3 * 512 - 0x145);
        assert!(g.l2_entry(raw | (1 << 63), 0).is_err());
    }

    #[test]
    fn extended_entries() {
        let g = geo(true);
        assert_eq!(g.l2_entry(0, 0xffff_ffff_0000_0000), Ok(Mapping::Zero));
        assert!(g.l2_entry(0, 1).is_err());
        assert!(g.l2_entry(0x50000, 0x1_0000_0001).is_err());
        assert!(g.l2_entry(0x50001, 0).is_err());
        assert_eq!(
            g.l2_entry(0x50000, 0x0000_0003),
            Ok(Mapping::Sub {
                host: 0x50000,
                alloc: 3
            })
        );
        assert_eq!(
            g.l2_entry(0x50000, 0xffff_ffff),
            Ok(Mapping::Data { host: 0x50000 })
        );
    }
}
