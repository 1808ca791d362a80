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
use super::{BitmapProblem, Qcow2Error};

/// Bits of an L1 entry the spec reserves (bit 0 included: qcow2-rs uses it
/// for itself and does not check it).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// Bits of a standard L2 entry the spec reserves.
const L2_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Bits of a compressed L2 entry the spec reserves.
const L2_COMPRESSED_RESERVED: u64 = 1 << 63;
/// Host offset bits of L1 and standard L2 entries.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

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
    pub(super) fn new(h: &Header) -> Result<Geometry, Qcow2Error> {
        let info = h.qcow2rs_info()?;
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
    pub(super) fn l1_entry(&self, raw: u64) -> Result<Option<u64>, Qcow2Error> {
        if raw & 1 != 0 {
            return Err(reserved("L1", raw, L1_RESERVED));
        }
        let e = L1Entry::try_from_plain(raw, &self.info)
            .map_err(|_| refused("L1", raw, L1_RESERVED, "L2 table"))?;
        if e.is_zero() {
            Ok(None)
        } else {
            Ok(Some(e.l2_offset()))
        }
    }

    /// Decodes an L2 entry (`bitmap` is the second half of an extended entry).
    pub(super) fn l2_entry(&self, raw: u64, bitmap: u64) -> Result<Mapping, Qcow2Error> {
        let compressed = raw & (1 << 62) != 0;
        let e = L2Entry::try_from_plain(raw, &self.info).map_err(|_| {
            if compressed {
                reserved("L2", raw, L2_COMPRESSED_RESERVED)
            } else {
                refused("L2", raw, L2_RESERVED, "data cluster")
            }
        })?;
        if let Some((host, len)) = e.compressed_range(self.cluster_bits) {
            // qcow2-rs masks the offset to 56 bits; the spec wants those bits zero.
            let x = 62 - (self.cluster_bits - 8);
            let field = raw & ((1u64 << x) - 1);
            if field != host || host >= MAX_HOST_OFFSET {
                return Err(Qcow2Error::OutOfRange {
                    what: "compressed cluster",
                    offset: field,
                });
            }
            if self.extended_l2 && bitmap != 0 {
                return Err(Qcow2Error::SubclusterBitmap {
                    bitmap,
                    problem: BitmapProblem::Compressed,
                });
            }
            let len = u64::try_from(len)
                .map_err(|_| Qcow2Error::Internal("compressed length does not fit in u64"))?;
            return Ok(Mapping::Compressed { host, len });
        }
        let host = e.cluster_offset();
        if self.extended_l2 {
            if raw & 1 != 0 {
                // The zero flag: the bitmap says which subclusters read as zeros.
                return Err(reserved("extended L2", raw, 1));
            }
            let alloc = (bitmap & 0xffff_ffff) as u32;
            let zero = (bitmap >> 32) as u32;
            let bad = |problem| Qcow2Error::SubclusterBitmap { bitmap, problem };
            if alloc & zero != 0 {
                return Err(bad(BitmapProblem::AllocatedAndZero));
            }
            if host == 0 {
                if alloc != 0 {
                    return Err(bad(BitmapProblem::Unallocated));
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
                // The zero flag came with version 3.
                return Err(reserved("version 2 L2", raw, 1));
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

/// The entry `raw` of `table` has some of the `mask` bits set.
fn reserved(table: &'static str, raw: u64, mask: u64) -> Qcow2Error {
    Qcow2Error::ReservedBits {
        table,
        raw,
        bits: raw & mask,
    }
}

/// Why qcow2-rs refused an entry: it checks only the reserved bits and the
/// cluster alignment of the offset (of the table or cluster `target`), so
/// which one is told by the spec's masks.
fn refused(table: &'static str, raw: u64, mask: u64, target: &'static str) -> Qcow2Error {
    if raw & mask != 0 {
        reserved(table, raw, mask)
    } else {
        Qcow2Error::Unaligned {
            what: target,
            offset: raw & OFFSET_MASK,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(ext: bool) -> Geometry {
        geo_with(ext, 16, 1 << 30, 4)
    }

    fn geo_with(ext: bool, cluster_bits: u32, vsize: u64, l1_size: u32) -> Geometry {
        let mut b = vec![0u8; 65536];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&vsize.to_be_bytes());
        b[36..40].copy_from_slice(&l1_size.to_be_bytes());
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

    /// The mapping of an entry that must decode.
    fn ok(r: Result<Mapping, Qcow2Error>) -> Mapping {
        r.unwrap_or_else(|e| panic!("refused: {e}"))
    }

    #[test]
    fn standard_entries() {
        let g = geo(false);
        assert_eq!(ok(g.l2_entry(0, 0)), Mapping::Zero);
        assert_eq!(ok(g.l2_entry(1, 0)), Mapping::Zero);
        assert_eq!(
            ok(g.l2_entry((1 << 63) | 0x50000, 0)),
            Mapping::Data { host: 0x50000 }
        );
        let e = g.l2_entry(0x50200, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Unaligned {
                    what: "data cluster",
                    offset: 0x50200
                })
            ),
            "unaligned: {e:?}"
        );
        let e = g.l2_entry(0x50002, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::ReservedBits {
                    table: "L2",
                    bits: 2,
                    ..
                })
            ),
            "reserved bit 1: {e:?}"
        );
        let e = g.l2_entry(1 << 60, 0);
        assert!(
            matches!(e, Err(Qcow2Error::ReservedBits { table: "L2", bits, .. }) if bits == 1 << 60),
            "reserved high bit: {e:?}"
        );
        assert!(matches!(g.l1_entry(0), Ok(None)));
        assert!(matches!(g.l1_entry((1 << 63) | 0x30000), Ok(Some(0x30000))));
        let e = g.l1_entry(0x30001);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::ReservedBits {
                    table: "L1",
                    bits: 1,
                    ..
                })
            ),
            "{e:?}"
        );
        let e = g.l1_entry(0x30200);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::Unaligned {
                    what: "L2 table",
                    offset: 0x30200
                })
            ),
            "{e:?}"
        );
        let e = g.l1_entry((1 << 57) | 0x30000);
        assert!(
            matches!(e, Err(Qcow2Error::ReservedBits { table: "L1", bits, .. }) if bits == 1 << 57),
            "{e:?}"
        );
    }

    #[test]
    fn compressed_entries() {
        let g = geo(false);
        // x = 62 - 8 = 54: 2 additional sectors, offset 0x12345.
        let raw = (1u64 << 62) | (2u64 << 54) | 0x12345;
        let Mapping::Compressed { host, len } = ok(g.l2_entry(raw, 0)) else {
            panic!("not compressed");
        };
        assert_eq!(host, 0x12345);
        assert_eq!(len, 3 * 512 - 0x145);
        let e = g.l2_entry(raw | (1 << 63), 0);
        assert!(
            matches!(e, Err(Qcow2Error::ReservedBits { table: "L2", bits, .. }) if bits == 1 << 63),
            "{e:?}"
        );
        // With 512-byte clusters the offset field has 61 bits: the top 5
        // must be zero.
        let g = geo_with(false, 9, 1 << 20, 32);
        let e = g.l2_entry((1u64 << 62) | (1 << 56) | 0x12345, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::OutOfRange {
                    what: "compressed cluster",
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn version_2_has_no_zero_flag() {
        let mut g = geo(false);
        g.version = 2;
        let e = g.l2_entry((1 << 63) | 0x50001, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::ReservedBits {
                    table: "version 2 L2",
                    bits: 1,
                    ..
                })
            ),
            "{e:?}"
        );
    }

    #[test]
    fn extended_entries() {
        let g = geo(true);
        assert_eq!(ok(g.l2_entry(0, 0xffff_ffff_0000_0000)), Mapping::Zero);
        let e = g.l2_entry(0, 1);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::SubclusterBitmap {
                    bitmap: 1,
                    problem: BitmapProblem::Unallocated
                })
            ),
            "{e:?}"
        );
        let e = g.l2_entry(0x50000, 0x1_0000_0001);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::SubclusterBitmap {
                    problem: BitmapProblem::AllocatedAndZero,
                    ..
                })
            ),
            "{e:?}"
        );
        let e = g.l2_entry(0x50001, 0);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::ReservedBits {
                    table: "extended L2",
                    bits: 1,
                    ..
                })
            ),
            "{e:?}"
        );
        let e = g.l2_entry((1u64 << 62) | 0x12345, 4);
        assert!(
            matches!(
                e,
                Err(Qcow2Error::SubclusterBitmap {
                    problem: BitmapProblem::Compressed,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(
            ok(g.l2_entry(0x50000, 0x0000_0003)),
            Mapping::Sub {
                host: 0x50000,
                alloc: 3
            }
        );
        assert_eq!(
            ok(g.l2_entry(0x50000, 0xffff_ffff)),
            Mapping::Data { host: 0x50000 }
        );
    }
}
