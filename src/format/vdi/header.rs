//! The VDI header: 512 little-endian bytes at offset 0, checked as qemu's
//! `vdi` driver checks it (`qemu-img convert -f vdi` is the reference).

use super::VdiError;

/// Bytes of header qemu reads.
pub(crate) const HEADER_LEN: usize = 512;

/// The signature at 0x40.
pub(crate) const SIGNATURE: u32 = 0xbeda_107f;

/// Version 1.1, the only one qemu reads.
const VERSION_1_1: u32 = 0x0001_0001;

/// The only block size qemu reads (VirtualBox never writes another).
pub(crate) const BLOCK_SIZE: u32 = 1 << 20;

/// Most blocks qemu reads: the block map, rounded up to a sector, must fit
/// in an `int`.
pub(crate) const MAX_BLOCKS: u32 = ((i32::MAX as u32) + 1 - 512) / 4;

/// Largest disk qemu reads.
pub(crate) const MAX_DISK_SIZE: u64 = MAX_BLOCKS as u64 * BLOCK_SIZE as u64;

/// VirtualBox's image types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageType {
    /// "normal": blocks allocated as written (qemu's default).
    Dynamic,
    /// "fixed": every block allocated at creation (`-o static=on`).
    Static,
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) image_type: ImageType,
    /// Where the block map starts.
    pub(crate) offset_bmap: u64,
    /// Where data block 0 starts.
    pub(crate) offset_data: u64,
    /// The virtual size (rounded up to whole sectors, as qemu does).
    pub(crate) disk_size: u64,
    /// Entries in the block map.
    pub(crate) blocks: u32,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn is_null(b: &[u8], at: usize) -> bool {
    b.get(at..at + 16)
        .is_some_and(|u| u.iter().all(|&x| x == 0))
}

/// A UUID as VirtualBox shows it (the first three fields little-endian).
fn uuid(b: &[u8], at: usize) -> String {
    let u = b.get(at..at + 16).unwrap_or_default();
    let hex = |r: std::ops::Range<usize>, rev: bool| {
        let mut v: Vec<u8> = u.get(r).unwrap_or_default().to_vec();
        if rev {
            v.reverse();
        }
        v.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    format!(
        "{}-{}-{}-{}-{}",
        hex(0..4, true),
        hex(4..6, true),
        hex(6..8, true),
        hex(8..10, false),
        hex(10..16, false)
    )
}

impl Header {
    /// Parses and checks the first [`HEADER_LEN`] bytes, in qemu's order.
    pub(crate) fn parse(b: &[u8]) -> Result<Header, VdiError> {
        if b.len() < HEADER_LEN {
            return Err(VdiError::TooShort(b.len() as u64));
        }
        let disk_size = le_u64(b, 0x170);
        if disk_size > MAX_DISK_SIZE {
            return Err(VdiError::DiskTooLarge(disk_size));
        }
        // VBoxManage convertfromraw can leave a partial last sector; qemu
        // rounds it up.
        let disk_size = disk_size.div_ceil(512) * 512;
        let signature = le_u32(b, 0x40);
        if signature != SIGNATURE {
            return Err(VdiError::Signature(signature));
        }
        let version = le_u32(b, 0x44);
        if version != VERSION_1_1 {
            return Err(VdiError::Version(version >> 16, version & 0xffff));
        }
        let parent = (!is_null(b, 0x1b8)).then(|| uuid(b, 0x1b8));
        let image_type = match le_u32(b, 0x4c) {
            1 => ImageType::Dynamic,
            2 => ImageType::Static,
            4 => return Err(VdiError::Differencing { parent }),
            other => return Err(VdiError::ImageType(other)),
        };
        let offset_bmap = le_u32(b, 0x154);
        if offset_bmap % 512 != 0 {
            return Err(VdiError::Unaligned {
                what: "block map",
                offset: offset_bmap,
            });
        }
        let offset_data = le_u32(b, 0x158);
        if offset_data % 512 != 0 {
            return Err(VdiError::Unaligned {
                what: "data",
                offset: offset_data,
            });
        }
        let sector_size = le_u32(b, 0x168);
        if sector_size != 512 {
            return Err(VdiError::SectorSize(sector_size));
        }
        let block_size = le_u32(b, 0x178);
        if block_size != BLOCK_SIZE {
            return Err(VdiError::BlockSize(block_size));
        }
        let blocks = le_u32(b, 0x180);
        let room = u64::from(blocks) * u64::from(BLOCK_SIZE);
        if disk_size > room {
            return Err(VdiError::MapTooSmall {
                size: disk_size,
                room,
            });
        }
        if !is_null(b, 0x1a8) {
            return Err(VdiError::Linked);
        }
        if parent.is_some() {
            return Err(VdiError::Differencing { parent });
        }
        if blocks > MAX_BLOCKS {
            return Err(VdiError::TooManyBlocks(blocks));
        }
        Ok(Header {
            image_type,
            offset_bmap: u64::from(offset_bmap),
            offset_data: u64::from(offset_data),
            disk_size,
            blocks,
        })
    }

    /// The block map's host bytes.
    pub(crate) fn bmap(&self) -> std::ops::Range<u64> {
        self.offset_bmap..self.offset_bmap + u64::from(self.blocks) * 4
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header as qemu-img writes it: `size` bytes, dynamic or static.
    pub(crate) fn header(size: u64, image_type: u32) -> Vec<u8> {
        let blocks = size.div_ceil(u64::from(BLOCK_SIZE)) as u32;
        let bmap = (u64::from(blocks) * 4).div_ceil(512) * 512;
        let mut h = vec![0u8; HEADER_LEN];
        h[..35].copy_from_slice(b"<<< QEMU VM Virtual Disk Image >>>\n");
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0x40, &SIGNATURE.to_le_bytes());
        put(0x44, &VERSION_1_1.to_le_bytes());
        put(0x48, &0x180u32.to_le_bytes());
        put(0x4c, &image_type.to_le_bytes());
        put(0x154, &0x200u32.to_le_bytes());
        put(0x158, &(0x200 + bmap as u32).to_le_bytes());
        put(0x168, &512u32.to_le_bytes());
        put(0x170, &size.to_le_bytes());
        put(0x178, &BLOCK_SIZE.to_le_bytes());
        put(0x180, &blocks.to_le_bytes());
        put(0x188, &[7u8; 16]);
        h
    }

    #[test]
    fn a_qemu_header_parses() {
        let h = Header::parse(&header(10 << 20, 1)).unwrap();
        assert_eq!(h.image_type, ImageType::Dynamic);
        assert_eq!(h.disk_size, 10 << 20);
        assert_eq!(h.blocks, 10);
        assert_eq!(h.bmap(), 0x200..0x200 + 40);
        assert_eq!(h.offset_data, 0x400);
        let h = Header::parse(&header(1000, 2)).unwrap();
        assert_eq!(h.image_type, ImageType::Static);
        assert_eq!(h.disk_size, 1024, "rounded up to a sector, as qemu does");
    }

    #[test]
    fn each_fault_is_named() {
        type Check = fn(&VdiError) -> bool;
        let cases: Vec<(usize, Vec<u8>, Check)> = vec![
            (0x40, 1u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::Signature(1))
            }),
            (0x44, 0x0001_0000u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::Version(1, 0))
            }),
            (0x4c, 4u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::Differencing { parent: None })
            }),
            (0x4c, 3u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::ImageType(3))
            }),
            (0x154, 0x201u32.to_le_bytes().to_vec(), |e| {
                matches!(
                    e,
                    VdiError::Unaligned {
                        what: "block map",
                        ..
                    }
                )
            }),
            (0x158, 0x401u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::Unaligned { what: "data", .. })
            }),
            (0x168, 4096u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::SectorSize(4096))
            }),
            (0x178, (2u32 << 20).to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::BlockSize(_))
            }),
            (0x180, 9u32.to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::MapTooSmall { .. })
            }),
            (0x1a8, vec![1], |e| matches!(e, VdiError::Linked)),
            (0x1b8, vec![1], |e| {
                e.to_string()
                    .contains("parent image {00000001-0000-0000-0000-000000000000}")
            }),
            (0x170, (MAX_DISK_SIZE + 1).to_le_bytes().to_vec(), |e| {
                matches!(e, VdiError::DiskTooLarge(_))
            }),
        ];
        for (at, bytes, want) in cases {
            let mut h = header(10 << 20, 1);
            h[at..at + bytes.len()].copy_from_slice(&bytes);
            let e = Header::parse(&h).unwrap_err();
            assert!(want(&e), "patch at 0x{at:x}: {e}");
        }
        assert!(matches!(
            Header::parse(&[0u8; 100]),
            Err(VdiError::TooShort(100))
        ));
    }
}
