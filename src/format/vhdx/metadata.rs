//! The metadata region: its table (at most 64 KiB at the region's start)
//! names the items, each at an offset inside the region; the decoder reads
//! four of them (file parameters, virtual disk size, logical and physical
//! sector sizes) and checks them as qemu does, plus the limits of the
//! specification (virtual size at most 64 TiB, a multiple of the sector).

use super::layout::{guid_at, guid_text, u32_at, u64_at};
use super::VhdxError;

/// Most bytes of the table: its 32-byte header and 2047 entries.
pub(crate) const TABLE_MAX: usize = 64 << 10;
/// The table header's size (and each entry's).
pub(crate) const TABLE_HEAD: usize = 32;
/// The largest virtual disk the format allows.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// The metadata items the decoder knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Item {
    FileParameters,
    VirtualDiskSize,
    Page83,
    LogicalSectorSize,
    PhysicalSectorSize,
    ParentLocator,
}

/// Each item: its identifier as stored, its name, and how many bytes of it
/// are read (0: only its presence matters).
const ITEMS: [(Item, [u8; 16], &str, usize); 6] = [
    (
        Item::FileParameters,
        [
            0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44,
            0xe7, 0x6b,
        ],
        "file parameters",
        8,
    ),
    (
        Item::VirtualDiskSize,
        [
            0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b,
            0xf4, 0xb8,
        ],
        "virtual disk size",
        8,
    ),
    (
        Item::Page83,
        [
            0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00,
            0xc7, 0x46,
        ],
        "page 83 data",
        0,
    ),
    (
        Item::LogicalSectorSize,
        [
            0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa,
            0xab, 0x5f,
        ],
        "logical sector size",
        4,
    ),
    (
        Item::PhysicalSectorSize,
        [
            0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51,
            0xc5, 0x56,
        ],
        "physical sector size",
        4,
    ),
    (
        Item::ParentLocator,
        [
            0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34,
            0xab, 0x0c,
        ],
        "parent locator",
        0,
    ),
];

/// The table's length in bytes, from its first [`TABLE_HEAD`] bytes (the
/// table starts at host offset `at`, in a region of `region_len` bytes).
pub(crate) fn table_len(head: &[u8], at: u64, region_len: u32) -> Result<usize, VhdxError> {
    if head.get(..8) != Some(b"metadata") {
        return Err(VhdxError::MetadataSignature(at));
    }
    let count = u16::from_le_bytes([
        head.get(10).copied().unwrap_or(0),
        head.get(11).copied().unwrap_or(0),
    ]);
    let len = TABLE_HEAD + usize::from(count) * TABLE_HEAD;
    if len > TABLE_MAX || len as u64 > u64::from(region_len) {
        return Err(VhdxError::MetadataCount { count });
    }
    Ok(len)
}

/// An item to read: `len` bytes at `offset` in the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) item: Item,
    pub(crate) offset: u32,
    pub(crate) len: usize,
}

/// What the table says: the items to read, and whether a parent locator is
/// present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub(crate) wanted: Vec<Wanted>,
    pub(crate) has_locator: bool,
}

/// Parses the whole table (`table_len` bytes).
pub(crate) fn parse_table(table: &[u8], region_len: u32) -> Result<Table, VhdxError> {
    let count = (table.len() / TABLE_HEAD).saturating_sub(1);
    let mut found: [Option<(u32, u32)>; 6] = [None; 6];
    for i in 0..count {
        let e = table
            .get(TABLE_HEAD * (i + 1)..TABLE_HEAD * (i + 2))
            .unwrap_or_default();
        let guid = guid_at(e, 0);
        let required = u32_at(e, 24) & 4 != 0;
        match ITEMS.iter().position(|it| it.1 == guid) {
            Some(k) => {
                let slot = found.get_mut(k).ok_or(VhdxError::MetadataMissing("item"))?;
                if slot.is_some() {
                    return Err(VhdxError::MetadataDuplicate(ITEMS[k].2));
                }
                *slot = Some((u32_at(e, 16), u32_at(e, 20)));
            }
            None if required => return Err(VhdxError::MetadataUnknown(guid_text(&guid))),
            None => {}
        }
    }
    let mut wanted = Vec::new();
    for (k, (item, _, name, len)) in ITEMS.iter().enumerate() {
        let Some((offset, _)) = found.get(k).copied().flatten() else {
            if *item == Item::ParentLocator {
                continue;
            }
            return Err(VhdxError::MetadataMissing(name));
        };
        if *len == 0 {
            continue;
        }
        if u64::from(offset) + *len as u64 > u64::from(region_len) {
            return Err(VhdxError::MetadataItemOutside {
                what: name,
                offset,
                region: region_len,
            });
        }
        wanted.push(Wanted {
            item: *item,
            offset,
            len: *len,
        });
    }
    Ok(Table {
        wanted,
        has_locator: found.get(5).copied().flatten().is_some(),
    })
}

/// The image's parameters, from the metadata items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) block_size: u32,
    /// Fixed images set it: blocks are never unallocated.
    pub(crate) leave_allocated: bool,
    pub(crate) virtual_size: u64,
    pub(crate) logical_sector: u32,
    pub(crate) physical_sector: u32,
}

/// Checks the items' values, in qemu's order.
pub(crate) fn params(values: &[(Item, &[u8])], has_locator: bool) -> Result<Params, VhdxError> {
    let get = |it: Item| values.iter().find(|v| v.0 == it).map_or(&[][..], |v| v.1);
    let fp = get(Item::FileParameters);
    let block_size = u32_at(fp, 0);
    let bits = u32_at(fp, 4);
    if bits & 2 != 0 {
        return Err(if has_locator {
            VhdxError::Differencing
        } else {
            VhdxError::ParentWithoutLocator
        });
    }
    let virtual_size = u64_at(get(Item::VirtualDiskSize), 0);
    let logical_sector = u32_at(get(Item::LogicalSectorSize), 0);
    let physical_sector = u32_at(get(Item::PhysicalSectorSize), 0);
    if !(1 << 20..=256 << 20).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(VhdxError::BlockSize(block_size));
    }
    if logical_sector != 512 && logical_sector != 4096 {
        return Err(VhdxError::LogicalSectorSize(logical_sector));
    }
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(VhdxError::VirtualSize {
            size: virtual_size,
            why: "is larger than the format's 64 TiB",
        });
    }
    if virtual_size % u64::from(logical_sector) != 0 {
        return Err(VhdxError::VirtualSize {
            size: virtual_size,
            why: "is not a multiple of the logical sector size",
        });
    }
    Ok(Params {
        block_size,
        leave_allocated: bits & 1 != 0,
        virtual_size,
        logical_sector,
        physical_sector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(usize, u32, u32)]) -> Vec<u8> {
        let mut t = vec![0u8; TABLE_HEAD * (entries.len() + 1)];
        t[..8].copy_from_slice(b"metadata");
        t[10..12].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        for (i, &(k, off, bits)) in entries.iter().enumerate() {
            let e = TABLE_HEAD * (i + 1);
            t[e..e + 16].copy_from_slice(&ITEMS[k].1);
            t[e + 16..e + 20].copy_from_slice(&off.to_le_bytes());
            t[e + 20..e + 24].copy_from_slice(&8u32.to_le_bytes());
            t[e + 24..e + 28].copy_from_slice(&bits.to_le_bytes());
        }
        t
    }

    #[test]
    fn table_checks() {
        let all: Vec<(usize, u32, u32)> = (0..5).map(|k| (k, 65536 + 8 * k as u32, 4)).collect();
        let t = table(&all);
        assert_eq!(table_len(&t, 0, 1 << 20).expect("len"), t.len());
        let p = parse_table(&t, 1 << 20).expect("table");
        assert_eq!(p.wanted.len(), 4);
        assert!(!p.has_locator);
        assert!(matches!(
            parse_table(&t, 65536 + 12),
            Err(VhdxError::MetadataItemOutside { .. })
        ));
        let mut dup = all.clone();
        dup.push((1, 0, 0));
        assert!(matches!(
            parse_table(&table(&dup), 1 << 20),
            Err(VhdxError::MetadataDuplicate("virtual disk size"))
        ));
        assert!(matches!(
            parse_table(&table(&all[..4]), 1 << 20),
            Err(VhdxError::MetadataMissing("physical sector size"))
        ));
        let mut unknown = table(&all);
        unknown.extend_from_slice(&[0xee; 32]);
        unknown[10] = 6;
        // An unknown item whose flags (0xeeeeeeee) include "required".
        assert!(matches!(
            parse_table(&unknown, 1 << 20),
            Err(VhdxError::MetadataUnknown(_))
        ));
        assert!(matches!(
            table_len(b"metadatX\0\0\0\0", 5, 1 << 20),
            Err(VhdxError::MetadataSignature(5))
        ));
        let mut big = vec![0u8; 32];
        big[..8].copy_from_slice(b"metadata");
        big[10..12].copy_from_slice(&2048u16.to_le_bytes());
        assert!(table_len(&big, 0, 1 << 20).is_err());
    }

    #[test]
    fn parameter_checks() {
        let fp = |bs: u32, bits: u32| {
            let mut v = bs.to_le_bytes().to_vec();
            v.extend_from_slice(&bits.to_le_bytes());
            v
        };
        let run = |fp: &[u8], vs: u64, lss: u32, loc: bool| {
            let vs = vs.to_le_bytes();
            let lss = lss.to_le_bytes();
            let pss = 4096u32.to_le_bytes();
            params(
                &[
                    (Item::FileParameters, fp),
                    (Item::VirtualDiskSize, &vs),
                    (Item::LogicalSectorSize, &lss),
                    (Item::PhysicalSectorSize, &pss),
                ],
                loc,
            )
        };
        let ok = run(&fp(1 << 20, 1), 1 << 30, 512, false).expect("params");
        assert!(ok.leave_allocated);
        assert_eq!(ok.physical_sector, 4096);
        assert!(matches!(
            run(&fp(1 << 20, 2), 1 << 30, 512, true),
            Err(VhdxError::Differencing)
        ));
        assert!(matches!(
            run(&fp(1 << 20, 2), 1 << 30, 512, false),
            Err(VhdxError::ParentWithoutLocator)
        ));
        for bs in [0, (1 << 20) - 1, 3 << 20, 512 << 20] {
            assert!(matches!(
                run(&fp(bs, 0), 1 << 30, 512, false),
                Err(VhdxError::BlockSize(_))
            ));
        }
        assert!(run(&fp(1 << 20, 0), 1 << 30, 1024, false).is_err());
        assert!(run(&fp(1 << 20, 0), 1000, 512, false).is_err());
        assert!(run(&fp(1 << 20, 0), 512, 4096, false).is_err());
        assert!(run(&fp(1 << 20, 0), (64 << 40) + 512, 512, false).is_err());
        assert!(run(&fp(256 << 20, 0), 64 << 40, 4096, false).is_ok());
    }
}
