//! A minimal qcow2 header/table reader and patcher for tests.
//!
//! Used to check that an image made with qemu-img/qemu-io really has the layout a test
//! means to cover (L1 after data, L2 after data, ...), and to craft broken images by
//! patching bytes of valid ones. Offsets follow the qcow2 specification
//! (qemu docs/interop/qcow2.txt); all fields are big-endian.
//!
//! Header fields (byte offset: field):
//! ```text
//!   0 magic "QFI\xfb" (u32)      4 version (u32)            8 backing_file_offset (u64)
//!  16 backing_file_size (u32)   20 cluster_bits (u32)      24 size (u64, virtual size)
//!  32 crypt_method (u32)        36 l1_size (u32)           40 l1_table_offset (u64)
//!  48 refcount_table_offset     56 refcount_table_clusters 60 nb_snapshots (u32)
//!  64 snapshots_offset (u64)
//!  version 3 only:
//!  72 incompatible_features (u64: bit0 dirty, bit1 corrupt, bit2 external data file,
//!     bit3 compression type, bit4 extended L2)
//!  80 compatible_features (u64: bit0 lazy refcounts)
//!  88 autoclear_features (u64)   96 refcount_order (u32)   100 header_length (u32)
//! 104 compression_type (u8: 0 zlib, 1 zstd)
//! ```
//! L1 entry: bits 9..=55 L2 table offset, bit 63 "copied"; bits 0..=8 and 56..=62 reserved.
//! L2 entry (standard cluster): bit 0 "reads as zero" (v3), bits 1..=8 reserved,
//! bits 9..=55 host offset, bits 56..=61 reserved, bit 62 compressed, bit 63 copied.
//! Compressed descriptor: with x = 62 - (cluster_bits - 8), bits 0..x host offset,
//! bits x..=61 number of additional 512-byte sectors.
//! Extended L2 (incompatible bit 4): 16-byte entries, the 64-bit entry above followed by
//! a subcluster bitmap (bits 0..32 allocated, 32..64 reads as zero).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: u32 = 0x5146_49fb;

/// Header field offsets.
pub mod off {
    pub const VERSION: u64 = 4;
    pub const BACKING_FILE_OFFSET: u64 = 8;
    pub const BACKING_FILE_SIZE: u64 = 16;
    pub const CLUSTER_BITS: u64 = 20;
    pub const SIZE: u64 = 24;
    pub const CRYPT_METHOD: u64 = 32;
    pub const L1_SIZE: u64 = 36;
    pub const L1_TABLE_OFFSET: u64 = 40;
    pub const REFCOUNT_TABLE_OFFSET: u64 = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: u64 = 56;
    pub const NB_SNAPSHOTS: u64 = 60;
    pub const SNAPSHOTS_OFFSET: u64 = 64;
    pub const INCOMPATIBLE_FEATURES: u64 = 72;
    pub const COMPATIBLE_FEATURES: u64 = 80;
    pub const AUTOCLEAR_FEATURES: u64 = 88;
    pub const REFCOUNT_ORDER: u64 = 96;
    pub const HEADER_LENGTH: u64 = 100;
    pub const COMPRESSION_TYPE: u64 = 104;
}

pub const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2_COMPRESSED: u64 = 1 << 62;
pub const L2_ZERO: u64 = 1;

/// The header fields the tests look at.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible: u64,
    pub compatible: u64,
    pub header_length: u32,
    pub compression_type: u8,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible & (1 << 4) != 0
    }
    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
}

pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn read_header(path: &Path) -> Header {
    let f = File::open(path).expect("open qcow2");
    let mut b = [0u8; 112];
    f.read_exact_at(&mut b[..72], 0).expect("read header");
    assert_eq!(be32(&b, 0), MAGIC, "{} is not qcow2", path.display());
    let version = be32(&b, 4);
    if version >= 3 {
        f.read_exact_at(&mut b[72..105], 72)
            .expect("read v3 header");
    }
    let header_length = if version >= 3 { be32(&b, 100) } else { 72 };
    Header {
        version,
        backing_file_offset: be64(&b, 8),
        cluster_bits: be32(&b, 20),
        size: be64(&b, 24),
        crypt_method: be32(&b, 32),
        l1_size: be32(&b, 36),
        l1_table_offset: be64(&b, 40),
        refcount_table_offset: be64(&b, 48),
        nb_snapshots: be32(&b, 60),
        snapshots_offset: be64(&b, 64),
        incompatible: if version >= 3 { be64(&b, 72) } else { 0 },
        compatible: if version >= 3 { be64(&b, 80) } else { 0 },
        header_length,
        compression_type: if header_length > 104 { b[104] } else { 0 },
    }
}

/// The raw L1 entries.
pub fn l1_table(path: &Path, h: &Header) -> Vec<u64> {
    let f = File::open(path).expect("open qcow2");
    let mut b = vec![0u8; h.l1_size as usize * 8];
    f.read_exact_at(&mut b, h.l1_table_offset)
        .expect("read L1 table");
    b.chunks(8).map(|c| be64(c, 0)).collect()
}

/// The raw L2 entries (first word of each entry) of the table at `offset`.
pub fn l2_table(path: &Path, h: &Header, offset: u64) -> Vec<u64> {
    let f = File::open(path).expect("open qcow2");
    let mut b = vec![0u8; h.cluster_size() as usize];
    f.read_exact_at(&mut b, offset).expect("read L2 table");
    b.chunks(h.l2_entry_size() as usize)
        .map(|c| be64(c, 0))
        .collect()
}

/// Where the metadata and data of the active layer sit in the file.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub l1_offset: u64,
    /// Host offsets of the L2 tables, in L1 order.
    pub l2_offsets: Vec<u64>,
    /// Host offsets of standard (uncompressed) data clusters.
    pub data_offsets: Vec<u64>,
    /// Host offsets of compressed clusters.
    pub compressed_offsets: Vec<u64>,
    /// Some L2 table maps a data cluster stored before it.
    pub l2_after_its_data: bool,
    /// Zero-flagged L2 entries.
    pub zero_entries: usize,
}

impl Layout {
    pub fn max_data_offset(&self) -> Option<u64> {
        self.data_offsets
            .iter()
            .chain(&self.compressed_offsets)
            .max()
            .copied()
    }
    pub fn min_data_offset(&self) -> Option<u64> {
        self.data_offsets
            .iter()
            .chain(&self.compressed_offsets)
            .min()
            .copied()
    }
    /// The L1 table sits after at least one L2 table or data cluster (a forward reader
    /// meets mapped bytes before it knows where they go).
    pub fn l1_after_data(&self) -> bool {
        self.l2_offsets.iter().any(|&o| o < self.l1_offset)
            || self.min_data_offset().is_some_and(|d| d < self.l1_offset)
    }
}

/// Reads L1 and every L2 table of the active layer.
pub fn layout(path: &Path) -> Layout {
    let h = read_header(path);
    let mut lay = Layout {
        l1_offset: h.l1_table_offset,
        ..Layout::default()
    };
    let x = 62 - (h.cluster_bits - 8);
    for e in l1_table(path, &h) {
        let l2 = e & L1_OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        lay.l2_offsets.push(l2);
        for entry in l2_table(path, &h, l2) {
            if entry & L2_COMPRESSED != 0 {
                let host = entry & ((1u64 << x) - 1);
                lay.compressed_offsets.push(host);
                if host < l2 {
                    lay.l2_after_its_data = true;
                }
            } else {
                let host = entry & L2_OFFSET_MASK;
                if entry & L2_ZERO != 0 {
                    lay.zero_entries += 1;
                }
                if host != 0 {
                    lay.data_offsets.push(host);
                    if host < l2 {
                        lay.l2_after_its_data = true;
                    }
                }
            }
        }
    }
    lay
}

/// Overwrites bytes of a file in place.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch");
    f.write_all_at(bytes, offset).expect("patch");
}

pub fn patch_u32(path: &Path, offset: u64, v: u32) {
    patch(path, offset, &v.to_be_bytes());
}

pub fn patch_u64(path: &Path, offset: u64, v: u64) {
    patch(path, offset, &v.to_be_bytes());
}

pub fn read_u64(path: &Path, offset: u64) -> u64 {
    let f = File::open(path).expect("open");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).expect("read u64");
    u64::from_be_bytes(b)
}
