//! Hand-built VHDX images for the unit tests: every structure at an offset
//! the test chooses (regions after the data, blocks in any order, states,
//! logs), sealed with real checksums, plus the disk they should decode to.

use super::checksum;

const MIB: u64 = 1 << 20;
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
const METADATA_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
/// File parameters, virtual size, page 83, logical and physical sector
/// size, parent locator.
const ITEM_GUIDS: [[u8; 16]; 6] = [
    [
        0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7,
        0x6b,
    ],
    [
        0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4,
        0xb8,
    ],
    [
        0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7,
        0x46,
    ],
    [
        0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab,
        0x5f,
    ],
    [
        0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5,
        0x56,
    ],
    [
        0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab,
        0x0c,
    ],
];

/// An image to build.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) block_size: u32,
    pub(crate) logical_sector: u32,
    pub(crate) virtual_size: u64,
    pub(crate) log: (u64, u32),
    pub(crate) log_guid: [u8; 16],
    pub(crate) bat: (u64, u32),
    pub(crate) metadata: (u64, u32),
    pub(crate) has_parent: bool,
    pub(crate) locator: bool,
    /// Fully present blocks: (block number, file offset).
    pub(crate) blocks: Vec<(u64, u64)>,
    /// Other raw entries by BAT index (a state, an offset).
    pub(crate) raw: Vec<(u64, u64)>,
}

impl Spec {
    /// qemu's layout: the log at 1 MiB, the BAT at 2 MiB, the metadata at
    /// 3 MiB, 1 MiB each; no block allocated.
    pub(crate) fn qemu_like(block_size: u32, virtual_size: u64) -> Spec {
        Spec {
            block_size,
            logical_sector: 512,
            virtual_size,
            log: (MIB, MIB as u32),
            log_guid: [0; 16],
            bat: (2 * MIB, MIB as u32),
            metadata: (3 * MIB, MIB as u32),
            has_parent: false,
            locator: false,
            blocks: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn chunk_ratio(&self) -> u64 {
        (1u64 << 23) * u64::from(self.logical_sector) / u64::from(self.block_size)
    }

    /// The BAT index of payload block `b`.
    pub(crate) fn index(&self, b: u64) -> u64 {
        b + b / self.chunk_ratio()
    }

    fn block_len(&self, b: u64) -> u64 {
        let g = b * u64::from(self.block_size);
        u64::from(self.block_size).min(self.virtual_size - g)
    }

    /// The byte at guest offset `g` of an allocated block.
    pub(crate) fn pattern(g: u64) -> u8 {
        ((g / 512).wrapping_mul(7) % 251 + 1) as u8
    }

    /// The image's bytes.
    pub(crate) fn build(&self) -> Vec<u8> {
        let mut ends = vec![
            HEADER_END,
            self.log.0 + u64::from(self.log.1),
            self.bat.0 + u64::from(self.bat.1),
            self.metadata.0 + u64::from(self.metadata.1),
        ];
        for &(b, host) in &self.blocks {
            ends.push(host + self.block_len(b));
        }
        let mut img = vec![0u8; ends.into_iter().max().unwrap_or(0) as usize];
        // Blocks first: a test that overlaps a block with a structure keeps
        // the structure.
        for &(b, host) in &self.blocks {
            let g = b * u64::from(self.block_size);
            for k in 0..self.block_len(b) {
                img[(host + k) as usize] = Spec::pattern(g + k);
            }
        }
        img[..HEADER_END as usize].fill(0);
        img[..8].copy_from_slice(b"vhdxfile");
        for (i, at) in [64usize << 10, 128 << 10].into_iter().enumerate() {
            let h = &mut img[at..at + 4096];
            h[..4].copy_from_slice(b"head");
            h[8..16].copy_from_slice(&(10 + i as u64).to_le_bytes());
            h[16..32].fill(0x11);
            h[32..48].fill(0x22);
            h[48..64].copy_from_slice(&self.log_guid);
            h[66..68].copy_from_slice(&1u16.to_le_bytes());
            h[68..72].copy_from_slice(&self.log.1.to_le_bytes());
            h[72..80].copy_from_slice(&self.log.0.to_le_bytes());
            let c = checksum(h, 4);
            h[4..8].copy_from_slice(&c.to_le_bytes());
        }
        for at in [192usize << 10, 256 << 10] {
            let t = &mut img[at..at + (64 << 10)];
            t[..4].copy_from_slice(b"regi");
            t[8..12].copy_from_slice(&2u32.to_le_bytes());
            for (k, (guid, (off, len))) in [(BAT_GUID, self.bat), (METADATA_GUID, self.metadata)]
                .into_iter()
                .enumerate()
            {
                let e = &mut t[16 + 32 * k..48 + 32 * k];
                e[..16].copy_from_slice(&guid);
                e[16..24].copy_from_slice(&off.to_le_bytes());
                e[24..28].copy_from_slice(&len.to_le_bytes());
                e[28..32].copy_from_slice(&1u32.to_le_bytes());
            }
            let c = checksum(t, 4);
            t[4..8].copy_from_slice(&c.to_le_bytes());
        }
        let m = self.metadata.0 as usize;
        let n = if self.locator { 6 } else { 5 };
        img[m..m + 8].copy_from_slice(b"metadata");
        img[m + 10..m + 12].copy_from_slice(&(n as u16).to_le_bytes());
        let bits = u32::from(self.has_parent) << 1;
        let mut fp = self.block_size.to_le_bytes().to_vec();
        fp.extend_from_slice(&bits.to_le_bytes());
        let values: [Vec<u8>; 6] = [
            fp,
            self.virtual_size.to_le_bytes().to_vec(),
            vec![0x5a; 16],
            self.logical_sector.to_le_bytes().to_vec(),
            4096u32.to_le_bytes().to_vec(),
            vec![0; 20],
        ];
        let mut at = 64 << 10;
        for k in 0..n {
            let e = m + 32 * (k + 1);
            img[e..e + 16].copy_from_slice(&ITEM_GUIDS[k]);
            img[e + 16..e + 20].copy_from_slice(&(at as u32).to_le_bytes());
            img[e + 20..e + 24].copy_from_slice(&(values[k].len() as u32).to_le_bytes());
            img[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes());
            img[m + at..m + at + values[k].len()].copy_from_slice(&values[k]);
            at += values[k].len();
        }
        let bat = self.bat.0 as usize;
        let mut put = |idx: u64, entry: u64| {
            let a = bat + 8 * idx as usize;
            img[a..a + 8].copy_from_slice(&entry.to_le_bytes());
        };
        for &(b, host) in &self.blocks {
            put(self.index(b), host | 6);
        }
        for &(idx, entry) in &self.raw {
            put(idx, entry);
        }
        img
    }

    /// The disk the image holds.
    pub(crate) fn expected(&self) -> Vec<u8> {
        let mut disk = vec![0u8; self.virtual_size as usize];
        for &(b, _) in &self.blocks {
            let g = b * u64::from(self.block_size);
            for k in 0..self.block_len(b) {
                disk[(g + k) as usize] = Spec::pattern(g + k);
            }
        }
        disk
    }
}

/// The header section's size.
const HEADER_END: u64 = MIB;

/// Re-seals the checksums of both headers (after a test changed them).
pub(crate) fn reseal_headers(img: &mut [u8]) {
    for at in [64usize << 10, 128 << 10] {
        let h = &mut img[at..at + 4096];
        let c = checksum(h, 4);
        h[4..8].copy_from_slice(&c.to_le_bytes());
    }
}
