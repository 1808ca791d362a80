//! VHDX (Microsoft's Hyper-V disk format, MS-VHDX v1.0): a streaming
//! decoder fed host bytes in increasing offset order.
//!
//! A VHDX file starts with a 1 MiB header section (the `vhdxfile`
//! identifier, two headers at 64 KiB and 128 KiB, the region table at
//! 192 KiB), then objects anywhere the region table says: the log, the
//! metadata region (block size, virtual size, sector sizes), the block
//! allocation table (BAT, one 64-bit entry per payload block, with a sector
//! bitmap entry after every `chunk_ratio` of them), and the payload blocks
//! in any order.
//!
//! The decoder follows qemu's reading of the format (block/vhdx.c, the
//! oracle is `qemu-img convert -f vhdx -O raw`), with these choices:
//! - only the first region table is read, as qemu does (the copy at
//!   256 KiB is ignored);
//! - a log with entries to replay is refused by name, as `qemu-img` refuses
//!   it read-only; a log header set over an empty log is accepted;
//! - differencing images (with a parent) are refused by name;
//! - payload blocks that are partially present (state 7: only valid in a
//!   differencing image) or in the reserved state 4 are refused, where qemu
//!   fails the read with an I/O error;
//! - 4096-byte logical sectors are decoded per the specification (qemu 10
//!   refuses them); the block geometry is in bytes, only the sector bitmap
//!   interleave (`chunk_ratio`) depends on the sector size;
//! - blocks are refused if they overlap the header section, a region, the
//!   log or another block, or lie past the end of a stream of known length.
//!
//! Nothing reaches the sink until the whole mapping is known and checked:
//! the virtual size, the zero ranges and then the data, as it streams by.
//! Memory is the header section's checksummed parts (72 KiB, then freed),
//! the metadata table (at most 64 KiB), the log when it must be checked (at
//! most [`LOG_CHECK_MAX`]) and the mapping of allocated blocks not yet
//! passed (at most [`MAPPING_BUDGET`]).

mod bat;
mod gather;
mod layout;
mod log;
mod metadata;
mod stream;

#[cfg(test)]
mod testimg;
#[cfg(test)]
mod tests;

pub use stream::VhdxDecoder;

/// Memory the block mapping may use, in bytes (runs of allocated blocks and
/// of zero blocks, estimated per entry).
pub const MAPPING_BUDGET: usize = 8 << 20;

/// Largest log the decoder holds to check for entries to replay (the log is
/// only read when a header says it may hold some; Hyper-V and qemu make
/// 1 MiB logs).
pub const LOG_CHECK_MAX: u32 = 4 << 20;

/// The CRC-32C that VHDX stores in its headers, region tables and log
/// entries: over `buf` with the four checksum bytes at `crc_offset` taken as
/// zero. Public so that tests and the fuzz harness can seal the images they
/// make.
pub fn checksum(buf: &[u8], crc_offset: usize) -> u32 {
    let mut d = digest();
    let (head, rest) = buf.split_at(crc_offset.min(buf.len()));
    d.update(head);
    let n = rest.len().min(4);
    d.update(&[0u8; 4][..n]);
    d.update(rest.get(n..).unwrap_or_default());
    d.finalize()
}

/// A CRC-32C over several pieces (a log entry's sectors).
pub(crate) fn digest() -> crc::Digest<'static, u32, crc::Table<1>> {
    static CASTAGNOLI: crc::Crc<u32, crc::Table<1>> =
        crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISCSI);
    CASTAGNOLI.digest()
}

/// Why a VHDX stream was refused: each variant names one fault.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// The file type identifier is missing.
    #[error("no \"vhdxfile\" signature at offset 0")]
    NotVhdx,
    /// Neither header passes its checks.
    #[error("no valid header: both headers (at 64 KiB and 128 KiB) fail their signature, version or CRC-32C check")]
    NoValidHeader,
    /// Both headers are valid, carry the same sequence number and differ.
    #[error("the two headers have the same sequence number ({0}) but differ")]
    HeadersDisagree(u64),
    /// The log is not where the format allows it.
    #[error("the log offset 0x{0:x} is not a multiple of 1 MiB past the header section")]
    LogOffset(u64),
    /// An unknown log format.
    #[error("unsupported log version {0}")]
    LogVersion(u16),
    /// A log length the format does not allow.
    #[error("the log length {0} is not a multiple of 1 MiB")]
    LogLength(u32),
    /// The region table's checksum does not match.
    #[error("the region table at 192 KiB fails its CRC-32C check")]
    RegionTableChecksum,
    /// The region table has no `regi` signature.
    #[error("no region table signature (\"regi\") at 192 KiB")]
    RegionTableSignature,
    /// More region table entries than the format allows.
    #[error("the region table has {0} entries (at most 2047)")]
    RegionCount(u32),
    /// A region overlaps another region, the log or the header section.
    #[error("the {what} region at 0x{offset:x} ({len} bytes) overlaps {other}")]
    RegionOverlap {
        /// The region's name.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// What it overlaps.
        other: &'static str,
    },
    /// The BAT or metadata region is listed twice.
    #[error("the region table lists the {0} region twice")]
    RegionDuplicate(&'static str),
    /// A required region this decoder does not know.
    #[error("the region table lists a required region it does not know ({0})")]
    RegionUnknown(String),
    /// The BAT or metadata region is missing.
    #[error("the region table has no {0} region")]
    RegionMissing(&'static str),
    /// The metadata table has no `metadata` signature.
    #[error("no metadata table signature (\"metadata\") at 0x{0:x}")]
    MetadataSignature(u64),
    /// The metadata table does not fit its limits or its region.
    #[error("the metadata table has {count} entries, more than its region or its 64 KiB allow")]
    MetadataCount {
        /// Entries announced.
        count: u16,
    },
    /// A metadata item is listed twice.
    #[error("the metadata table lists the {0} item twice")]
    MetadataDuplicate(&'static str),
    /// A required metadata item this decoder does not know.
    #[error("the metadata table lists a required item it does not know ({0})")]
    MetadataUnknown(String),
    /// A required metadata item is missing.
    #[error("the metadata table has no {0} item")]
    MetadataMissing(&'static str),
    /// A metadata item lies outside the metadata region.
    #[error(
        "the {what} item at offset {offset} lies outside the metadata region ({region} bytes)"
    )]
    MetadataItemOutside {
        /// The item's name.
        what: &'static str,
        /// Its offset in the region.
        offset: u32,
        /// The region's length.
        region: u32,
    },
    /// A differencing image: it needs its parent.
    #[error("differencing VHDX images are not supported: this one needs its parent image (merge it into its parent first)")]
    Differencing,
    /// The has-parent flag without a parent locator.
    #[error("the file parameters say the image has a parent, but there is no parent locator")]
    ParentWithoutLocator,
    /// A block size the format does not allow.
    #[error("block size {0} is not a power of two between 1 MiB and 256 MiB")]
    BlockSize(u32),
    /// A logical sector size the format does not allow.
    #[error("logical sector size {0} is neither 512 nor 4096")]
    LogicalSectorSize(u32),
    /// An impossible virtual size.
    #[error("virtual disk size {size} {why}")]
    VirtualSize {
        /// The size announced.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The BAT region cannot hold the entries the virtual size needs.
    #[error("the BAT region ({len} bytes) is too small for its {entries} entries")]
    BatTooSmall {
        /// Entries needed.
        entries: u64,
        /// The region's length.
        len: u32,
    },
    /// A payload block in a state that cannot be read.
    #[error("block {block} is in the reserved state {state}")]
    BlockState {
        /// The payload block's number.
        block: u64,
        /// Its state.
        state: u8,
    },
    /// A partially present block outside a differencing image.
    #[error("block {0} is partially present, which only a differencing image may be")]
    PartiallyPresent(u64),
    /// A block that overlaps the header section, the log or a region.
    #[error("block {block} at 0x{offset:x} overlaps {what}")]
    BlockOverlaps {
        /// The payload block's number.
        block: u64,
        /// Its file offset.
        offset: u64,
        /// What it overlaps.
        what: &'static str,
    },
    /// Two blocks that share file bytes.
    #[error("block {a} and block {b} overlap in the file at 0x{offset:x}")]
    BlocksOverlap {
        /// One block.
        a: u64,
        /// The other.
        b: u64,
        /// Where the second starts.
        offset: u64,
    },
    /// A block that lies past the end of the file.
    #[error("block {block} at 0x{offset:x} ends past the end of the file ({len} bytes): the image is truncated")]
    BlockPastEnd {
        /// The payload block's number.
        block: u64,
        /// Its file offset.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// The mapping needs more memory than its budget.
    #[error("the block mapping needs more than its budget of {} MiB ({runs} runs of blocks): the image is too fragmented for streaming", budget >> 20)]
    MappingBudget {
        /// The budget, in bytes.
        budget: usize,
        /// Runs held when it was reached.
        runs: usize,
    },
    /// The log holds entries that must be replayed before the image reads right.
    #[error("the log holds entries that must be replayed first (qemu-img refuses it read-only too): replay it with `qemu-img check -r all` or by attaching the disk once in Hyper-V")]
    LogToReplay,
    /// A log entry with an invalid descriptor (qemu refuses to open such an image).
    #[error("the log entry at 0x{0:x} has an invalid descriptor")]
    LogDescriptor(u64),
    /// A log too large to check.
    #[error("the log may hold entries to replay, and at {0} bytes it is larger than the {LOG_CHECK_MAX} bytes checked")]
    LogTooLarge(u32),
    /// A log whose entries wrap around it endlessly.
    #[error("the log cannot be scanned: its entries wrap around it")]
    LogUnscannable,
    /// The stream ended before everything it maps.
    #[error("truncated: the stream ended at {pos} bytes, {what}")]
    Truncated {
        /// Bytes received.
        pos: u64,
        /// What was still missing.
        what: String,
    },
}
