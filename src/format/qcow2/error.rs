//! [`Qcow2Error`]: every way a qcow2 stream can be refused, one variant per
//! kind of fault, carrying the numbers that locate it.
//!
//! Messages are one line and name the problem in the words users search for
//! ("truncated", "backing file", "overlaps", "out of range", "reserved").
//! A variant with a `#[source]` never repeats it in its own message: the
//! front ends print the chain.

use std::ops::Range;

use qcow2_rs::error::Qcow2Error as Qcow2RsError;

use crate::format::inflate::InflateError;
use crate::format::plan::PlanError;
use crate::format::SinkError;

use super::header::{MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};

/// Why a qcow2 stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    // ------------------------------------------------------------ header
    /// The stream ended before its first byte.
    #[error("empty stream: no qcow2 header")]
    Empty,
    /// The first four bytes are not `QFI\xfb`.
    #[error("bad magic: not a qcow2 image")]
    BadMagic,
    /// A version other than 2 or 3.
    #[error("unsupported version {0} (only 2 and 3 exist)")]
    UnsupportedVersion(u32),
    /// `cluster_bits` outside what QEMU accepts.
    #[error("cluster_bits {0} out of range ({MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS})")]
    ClusterBits(u32),
    /// The image (or the bytes given to `probe`) ends inside the header.
    #[error("truncated header: the image ends after {have} bytes, {need} are needed to read it")]
    HeaderTruncated {
        /// Bytes the header needs (so far as is known).
        need: u64,
        /// Bytes there are.
        have: u64,
    },
    /// A v3 `header_length` that is too short, unaligned, or past the cluster.
    #[error(
        "header_length {len} invalid (a v3 header has at least 104 bytes, a multiple of 8, \
         inside the first cluster of {cluster_size} bytes)"
    )]
    HeaderLength {
        /// The field's value.
        len: u32,
        /// The cluster size.
        cluster_size: u64,
    },
    /// A header extension that does not fit in the first cluster.
    #[error("header extension{} at offset {at} runs past the first cluster", ext_type(.ty))]
    HeaderExtension {
        /// Offset of the extension's header.
        at: u64,
        /// Its type, when its 8-byte header could be read.
        ty: Option<u32>,
    },
    /// The image is an overlay: its content depends on another file.
    #[error(
        "backing file '{name}' is not supported (the image is an overlay; flatten it with \
         qemu-img convert first)"
    )]
    BackingFile {
        /// The backing file's name as the header gives it.
        name: String,
    },
    /// An encrypted image ("AES" or "LUKS").
    #[error("{0} encryption is not supported")]
    Encrypted(&'static str),
    /// An encryption method this reader does not know.
    #[error("unknown encryption method {0}")]
    UnknownEncryption(u32),
    /// The encryption header extension without an encryption method.
    #[error("encryption header extension present but the image claims no encryption")]
    CryptoExtension,
    /// The guest data lives in another file.
    #[error("external data file '{name}' is not supported")]
    ExternalDataFile {
        /// The data file's name, or `<unnamed>`.
        name: String,
    },
    /// Incompatible feature bits this reader does not know (the spec says refuse).
    #[error("unknown incompatible feature bits {names}")]
    UnknownIncompatible {
        /// The unknown bits.
        bits: u64,
        /// The bit numbers, with their names from the image's feature table.
        names: String,
    },
    /// The compression type feature bit is set in a header without the field.
    #[error("compression type feature bit set but the header has no compression_type field")]
    CompressionFieldMissing,
    /// The compression type field disagrees with the feature bit.
    #[error(
        "compression_type {raw} does not match the compression type feature bit ({})",
        if *.bit { "set" } else { "clear" }
    )]
    CompressionTypeMismatch {
        /// The field's value.
        raw: u8,
        /// Whether the feature bit is set.
        bit: bool,
    },
    /// A compression type other than zlib (0) and zstd (1).
    #[error("unknown compression type {0}")]
    UnknownCompressionType(u8),
    /// Extended L2 entries need 16 KiB clusters or larger.
    #[error("extended L2 entries need clusters of at least 16 KiB, not {cluster_size} bytes")]
    ExtendedL2Clusters {
        /// The cluster size.
        cluster_size: u64,
    },
    /// `refcount_order` above 6 (64-bit refcounts).
    #[error("refcount_order {0} out of range (0..=6)")]
    RefcountOrder(u32),
    /// A virtual size no image can map.
    #[error("absurd virtual size {0}")]
    VirtualSize(u64),
    /// The L1 table cannot map the whole virtual size.
    #[error("L1 table too small: {entries} entries for a virtual size needing {needed}")]
    L1TooSmall {
        /// `l1_size`.
        entries: u32,
        /// Entries the virtual size needs.
        needed: u64,
    },
    /// An L1 table above QEMU's 32 MiB limit.
    #[error("L1 table of {entries} entries is too large")]
    L1TooLarge {
        /// `l1_size`.
        entries: u32,
    },
    /// A refcount table of zero clusters.
    #[error("refcount table has no clusters")]
    RefcountTableEmpty,
    /// A refcount table above QEMU's 8 MiB limit.
    #[error("refcount table of {clusters} clusters is too large")]
    RefcountTableTooLarge {
        /// `refcount_table_clusters`.
        clusters: u32,
    },
    /// More internal snapshots than QEMU allows.
    #[error("too many snapshots ({0})")]
    TooManySnapshots(u32),

    // ------------------------------------------------------------ layout
    /// A table or cluster offset that is not a multiple of the cluster size.
    #[error("{what} offset 0x{offset:x} is not cluster aligned")]
    Unaligned {
        /// "L1 table", "L2 table", "data cluster"...
        what: &'static str,
        /// The offset.
        offset: u64,
    },
    /// An offset past any possible end of an image (56 bits).
    #[error("{what} offset 0x{offset:x} out of range (past any possible end of the image)")]
    OutOfRange {
        /// "L1 table", "L2 table", "data cluster"...
        what: &'static str,
        /// The offset.
        offset: u64,
    },
    /// Two structures claim the same host bytes.
    #[error("{what} at 0x{at:x} overlaps the {other} at 0x{other_at:x}")]
    Overlap {
        /// What was being placed.
        what: &'static str,
        /// Where.
        at: u64,
        /// What is already there ("image header", "L1 table", "refcount table"...).
        other: &'static str,
        /// Where that starts.
        other_at: u64,
    },
    /// A table entry with bits set that the format reserves.
    #[error("{table} entry 0x{raw:016x} has reserved bits 0x{bits:x} set")]
    ReservedBits {
        /// "L1", "L2", "version 2 L2" (the zero flag) or "extended L2" (likewise).
        table: &'static str,
        /// The whole entry.
        raw: u64,
        /// The reserved bits that are set.
        bits: u64,
    },
    /// The subcluster bitmap of an extended L2 entry is inconsistent.
    #[error("extended L2 bitmap 0x{bitmap:016x} {problem}")]
    SubclusterBitmap {
        /// The bitmap (allocation in the low half, zeros in the high half).
        bitmap: u64,
        /// What is wrong with it.
        problem: BitmapProblem,
    },
    /// Bytes a table maps had already passed, and the window no longer held
    /// them (they were claimed by other image data).
    #[error(
        "{what} at 0x{at:x}{} was not available when the {table} arrived (it overlaps other \
         image data)",
        guest_note(.guest)
    )]
    Unavailable {
        /// "L2 table", "data cluster" or "compressed cluster".
        what: &'static str,
        /// Its host offset.
        at: u64,
        /// Its guest offset, for clusters.
        guest: Option<u64>,
        /// The table that mapped it ("L1 table" or "L2 table").
        table: &'static str,
    },
    /// The mapping state would exceed its memory budget.
    #[error(
        "mapping state needs more than its budget of {} MiB ({extents} pending extents, \
         {compressed} compressed clusters, {l2_tables} L2 tables): the image is too \
         fragmented for streaming",
        .budget >> 20
    )]
    MappingBudget {
        /// The budget in bytes.
        budget: usize,
        /// Pending plain extents.
        extents: usize,
        /// Pending compressed clusters.
        compressed: usize,
        /// L2 tables remembered.
        l2_tables: usize,
    },

    // ------------------------------------------------------------ stream end
    /// The stream ended before a table or cluster that the image maps.
    #[error(
        "truncated: the stream ended at {at} bytes, before the {before} at 0x{:x}..0x{:x} \
         (truncated image, or a table past its end)",
        .range.start,
        .range.end
    )]
    Truncated {
        /// Bytes the stream had.
        at: u64,
        /// What was still expected.
        before: &'static str,
        /// Its host range.
        range: Range<u64>,
    },
    /// The stream ended inside a compressed cluster, and what arrived does
    /// not decompress.
    #[error(
        "truncated: the stream ended at {at} bytes, inside the compressed cluster at \
         0x{host:x} (guest 0x{guest:x}), which does not decompress"
    )]
    TruncatedCompressed {
        /// Bytes the stream had.
        at: u64,
        /// Host offset of the cluster.
        host: u64,
        /// Guest offset of the cluster.
        guest: u64,
        /// What the decompressor said.
        #[source]
        source: InflateError,
    },

    // ------------------------------------------------------------ data
    /// A compressed cluster does not decompress to exactly one cluster.
    #[error("compressed cluster at 0x{host:x} (guest 0x{guest:x}) does not decompress")]
    CompressedCluster {
        /// Host offset of the cluster.
        host: u64,
        /// Guest offset of the cluster.
        guest: u64,
        /// What the decompressor said.
        #[source]
        source: InflateError,
    },
    /// The decompression workers could not be started.
    #[error("starting the decompression workers")]
    DecompressorSetup(#[source] InflateError),

    // ------------------------------------------------------------ others' errors
    /// qcow2-rs refused the normalized header our checks accepted.
    #[error("{what} rejected by qcow2-rs")]
    Qcow2Rs {
        /// "header" or "geometry".
        what: &'static str,
        /// qcow2-rs's error.
        #[source]
        source: Qcow2RsError,
    },
    /// The planner could not hold what the layout needs.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The sink (target) failed.
    #[error(transparent)]
    Sink(#[from] SinkError),

    // ------------------------------------------------------------ bugs
    /// The driver supplied bytes where no table's parsing stands (a bug in
    /// the caller, reported rather than trusted).
    #[error("internal decoder error: supplied bytes at 0x{host:x} are not where a pending table's parsing stands")]
    UnexpectedSupply {
        /// Where the bytes were said to come from.
        host: u64,
    },
    /// At the end, the guest bytes reported do not add up to the virtual size.
    #[error("internal decoder error: reported {covered} of {virtual_size} guest bytes")]
    Coverage {
        /// Guest bytes reported.
        covered: u64,
        /// The virtual size.
        virtual_size: u64,
    },
    /// An invariant the decoder checks on itself does not hold.
    #[error("internal decoder error: {0}")]
    Internal(&'static str),
}

/// What is wrong with an extended L2 subcluster bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BitmapProblem {
    /// Compressed clusters have no subclusters: the bitmap must be zero.
    #[error("of a compressed cluster is not zero")]
    Compressed,
    /// A subcluster marked both allocated and reading as zeros.
    #[error("marks subclusters both allocated and zero")]
    AllocatedAndZero,
    /// Allocated subclusters in a cluster with no host offset.
    #[error("allocates subclusters of an unallocated cluster")]
    Unallocated,
}

impl Qcow2Error {
    /// Whether the image ended before everything it maps: the header, a
    /// table, or a cluster.
    pub fn is_truncation(&self) -> bool {
        matches!(
            self,
            Qcow2Error::Empty
                | Qcow2Error::HeaderTruncated { .. }
                | Qcow2Error::Truncated { .. }
                | Qcow2Error::TruncatedCompressed { .. }
        )
    }
}

/// ` 0xTYPE` when the extension's type is known.
fn ext_type(ty: &Option<u32>) -> String {
    ty.map(|t| format!(" 0x{t:08x}")).unwrap_or_default()
}

/// ` (guest 0xG)` for clusters.
fn guest_note(guest: &Option<u64>) -> String {
    guest
        .map(|g| format!(" (guest 0x{g:x})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_problem() {
        let cases: Vec<(Qcow2Error, &str)> = vec![
            (
                Qcow2Error::HeaderExtension {
                    at: 112,
                    ty: Some(0x6803_f857),
                },
                "header extension 0x6803f857 at offset 112 runs past",
            ),
            (
                Qcow2Error::HeaderExtension { at: 112, ty: None },
                "header extension at offset 112 runs past",
            ),
            (
                Qcow2Error::Unavailable {
                    what: "data cluster",
                    at: 0x50000,
                    guest: Some(0x10000),
                    table: "L2 table",
                },
                "data cluster at 0x50000 (guest 0x10000) was not available when the L2 table",
            ),
            (
                Qcow2Error::MappingBudget {
                    budget: 8 << 20,
                    extents: 1,
                    compressed: 2,
                    l2_tables: 3,
                },
                "budget of 8 MiB (1 pending extents, 2 compressed clusters, 3 L2 tables)",
            ),
            (
                Qcow2Error::Truncated {
                    at: 100,
                    before: "L2 table",
                    range: 0x30000..0x40000,
                },
                "ended at 100 bytes, before the L2 table at 0x30000..0x40000",
            ),
            (
                Qcow2Error::CompressionTypeMismatch { raw: 0, bit: true },
                "compression_type 0 does not match the compression type feature bit (set)",
            ),
        ];
        for (e, want) in cases {
            let m = e.to_string();
            assert!(m.contains(want), "{m:?} should contain {want:?}");
            assert!(!m.contains('\n'), "{m:?}");
        }
    }

    #[test]
    fn a_source_is_not_repeated_in_the_message() {
        let source = InflateError::WorkerGone;
        let e = Qcow2Error::CompressedCluster {
            host: 1,
            guest: 2,
            source: source.clone(),
        };
        assert!(!e.to_string().contains(&source.to_string()));
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some(source.to_string())
        );
    }
}
