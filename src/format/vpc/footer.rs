//! The VHD footer: 512 big-endian bytes, at the end of every VHD and copied
//! at offset 0 of a dynamic one.
//!
//! The virtual size is computed as qemu's `vpc` driver computes it, since
//! `qemu-img convert -f vpc` is the reference: Virtual PC sizes a disk by
//! its CHS geometry (the footer's `current_size` is often larger), Hyper-V
//! and most converters by `current_size`. qemu picks by the creator
//! application, and uses `current_size` whenever the geometry is the
//! largest CHS can say (65535 x 16 x 255), which is what images too large
//! for CHS carry.

use super::VpcError;

/// Bytes in a footer.
pub(crate) const FOOTER_LEN: usize = 512;

/// The footer's signature.
pub(crate) const COOKIE: &[u8; 8] = b"conectix";

/// Largest virtual size in sectors qemu opens (2040 GiB).
pub(crate) const MAX_SECTORS: u64 = 0xff00_0000;

/// The largest CHS geometry: such images are sized by `current_size`.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// Creator applications whose images are sized by `current_size` (Hyper-V,
/// qemu with `force_size`, Disk2vhd, XenConverter, XenServer), as qemu
/// lists them; any other is sized by its geometry.
const SIZED_BY_CURRENT_SIZE: [&[u8; 4]; 5] = [b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0"];

/// A VHD's disk type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskType {
    /// Raw data followed by the footer.
    Fixed,
    /// A footer copy, a dynamic header, a block table and blocks.
    Dynamic,
    /// A dynamic disk whose unallocated blocks come from a parent image.
    Differencing,
}

/// What the footer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Footer {
    /// The disk type.
    pub(crate) disk_type: DiskType,
    /// Where the dynamic header is (dynamic and differencing disks).
    pub(crate) data_offset: u64,
    /// The guest-visible size in bytes, as qemu computes it.
    pub(crate) virtual_size: u64,
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

/// The footer checksum: the one's complement of the byte sum, with the
/// checksum field (bytes 64..68) counted as zeros.
pub(crate) fn checksum(footer: &[u8]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    !sum
}

impl Footer {
    /// Parses and checks a footer (`bytes` must be [`FOOTER_LEN`] long).
    ///
    /// A bad checksum is refused, as qemu refuses it ("Incorrect header
    /// checksum"): the footer is the only copy of the size and the layout.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Footer, VpcError> {
        if bytes.len() < FOOTER_LEN {
            return Err(VpcError::TooShort(bytes.len() as u64));
        }
        if bytes.get(..8) != Some(COOKIE.as_slice()) {
            if bytes.get(1..9) == Some(COOKIE.as_slice()) {
                return Err(VpcError::ShortFooter);
            }
            return Err(VpcError::NoFooter);
        }
        let stored = be_u32(bytes, 64);
        let computed = checksum(bytes.get(..FOOTER_LEN).unwrap_or_default());
        if stored != computed {
            return Err(VpcError::FooterChecksum { stored, computed });
        }
        let disk_type = match be_u32(bytes, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => return Err(VpcError::DiskType(other)),
        };
        let creator = bytes.get(28..32).unwrap_or_default();
        let by_size = SIZED_BY_CURRENT_SIZE
            .iter()
            .any(|c| c.as_slice() == creator);
        let cyls = u64::from(be_u16(bytes, 56));
        let heads = u64::from(bytes.get(58).copied().unwrap_or(0));
        let secs = u64::from(bytes.get(59).copied().unwrap_or(0));
        let chs = cyls * heads * secs;
        let current_size = be_u64(bytes, 48);
        let sectors = if by_size || chs == MAX_GEOMETRY {
            current_size / 512
        } else {
            chs
        };
        if sectors > MAX_SECTORS {
            return Err(VpcError::TooLarge(sectors.saturating_mul(512)));
        }
        Ok(Footer {
            disk_type,
            data_offset: be_u64(bytes, 16),
            virtual_size: sectors * 512,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid footer: `creator` app, `chs`, `current_size`, disk type.
    pub(crate) fn footer(
        creator: &[u8; 4],
        chs: (u16, u8, u8),
        current_size: u64,
        disk_type: u32,
    ) -> Vec<u8> {
        let mut f = vec![0u8; FOOTER_LEN];
        f[..8].copy_from_slice(COOKIE);
        f[8..12].copy_from_slice(&2u32.to_be_bytes());
        f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        let data_offset: u64 = if disk_type == 2 { u64::MAX } else { 512 };
        f[16..24].copy_from_slice(&data_offset.to_be_bytes());
        f[28..32].copy_from_slice(creator);
        f[40..48].copy_from_slice(&current_size.to_be_bytes());
        f[48..56].copy_from_slice(&current_size.to_be_bytes());
        f[56..58].copy_from_slice(&chs.0.to_be_bytes());
        f[58] = chs.1;
        f[59] = chs.2;
        f[60..64].copy_from_slice(&disk_type.to_be_bytes());
        let c = checksum(&f);
        f[64..68].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn size_comes_from_the_geometry_or_current_size_as_in_qemu() {
        // qemu-img's own 10 MiB image: 302 x 4 x 17 sectors.
        let f = Footer::parse(&footer(b"qemu", (302, 4, 17), 10 << 20, 3)).unwrap();
        assert_eq!(f.virtual_size, 302 * 4 * 17 * 512);
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.data_offset, 512);
        // Hyper-V: current_size, whatever the geometry.
        let f = Footer::parse(&footer(b"win ", (302, 4, 17), 10 << 20, 2)).unwrap();
        assert_eq!(f.virtual_size, 10 << 20);
        // An unknown creator with the largest geometry: current_size.
        let f = Footer::parse(&footer(b"vbox", (65535, 16, 255), 1 << 40, 2)).unwrap();
        assert_eq!(f.virtual_size, 1 << 40);
        // current_size is cut to whole sectors.
        let f = Footer::parse(&footer(b"qem2", (1, 1, 1), 1000, 2)).unwrap();
        assert_eq!(f.virtual_size, 512);
    }

    #[test]
    fn bad_footers_are_named() {
        let mut f = footer(b"qemu", (302, 4, 17), 10 << 20, 3);
        f[100] ^= 1;
        assert!(matches!(
            Footer::parse(&f),
            Err(VpcError::FooterChecksum { .. })
        ));
        let f = footer(b"qemu", (302, 4, 17), 10 << 20, 5);
        assert!(matches!(Footer::parse(&f), Err(VpcError::DiskType(5))));
        let f = footer(b"win ", (1, 1, 1), 2041 << 30, 2);
        assert!(matches!(Footer::parse(&f), Err(VpcError::TooLarge(_))));
        let mut short = vec![0u8; 512];
        short[1..9].copy_from_slice(COOKIE);
        assert!(matches!(Footer::parse(&short), Err(VpcError::ShortFooter)));
        assert!(matches!(
            Footer::parse(&[0u8; 100]),
            Err(VpcError::TooShort(100))
        ));
        assert!(matches!(
            Footer::parse(&[0u8; 512]),
            Err(VpcError::NoFooter)
        ));
    }
}
