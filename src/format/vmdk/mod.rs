//! VMDK: hosted sparse extents in one file, `monolithicSparse` and
//! `streamOptimized` ("Virtual Disk Format 1.1"), decoded in one forward pass
//! as QEMU's `block/vmdk.c` reads them (`qemu-img convert -f vmdk -O raw`
//! is the oracle).
//!
//! - `monolithicSparse`: the grain directory and grain tables come before
//!   the grains in QEMU's and VMware's files. They are read as they pass,
//!   each grain is mapped to its guest offset before it arrives, and grains
//!   stream from the input to the sink as they pass. A layout with a table
//!   after data it needs stops with `NeedMetadata`: the driver reads the
//!   tables out of order, or reads the stream ahead (bounded, then spilled).
//! - `streamOptimized`: zlib-compressed grains behind markers that carry
//!   their guest LBA, inflated on worker threads ([`crate::format::inflate`]).
//!   Grains are placed by their LBA as they stream past, so neither QEMU's
//!   layout (tables first, no footer) nor VMware's (a table after each run
//!   of grains, the directory, footer and end-of-stream marker last) needs a
//!   table in memory or a read ahead; the tables are still read, and a
//!   fingerprint ([`fingerprint`]) proves at the end that the markers say
//!   exactly what QEMU would read through the tables.
//! - A text descriptor naming separate extent files (`monolithicFlat`,
//!   `twoGbMaxExtent*`, `vmfs`...) is refused with the names of the files it
//!   needs, and so is a sparse extent whose embedded descriptor belongs to
//!   such a set, or names a parent (a delta disk).
//!
//! Layout: [`header`] (fields and limits), [`descriptor`] (the text),
//! [`map`] (pending regions), [`emit`] (output), [`body`] (the decoder after
//! the header: tables and plain grains), [`stream`] (markers and compressed
//! grains), [`decoder`] (the [`crate::format::Decoder`] itself).

mod body;
mod decoder;
mod descriptor;
mod emit;
mod fingerprint;
mod header;
mod map;
mod stream;

pub use decoder::VmdkDecoder;

use crate::format::inflate::InflateError;

/// Why a VMDK stream was refused. Offsets are host bytes in the file.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    /// Neither a sparse extent header nor a descriptor.
    #[error("not a VMDK image: no KDMV sparse header and no descriptor")]
    NotVmdk,
    /// An ESX sparse extent.
    #[error("VMDK (ESX COWD sparse) images are not supported")]
    Cowd,
    /// The stream ends inside the header sector.
    #[error("truncated: the image ends after {len} bytes, inside its 512-byte header")]
    TruncatedHeader {
        /// Bytes there were.
        len: usize,
    },
    /// A version QEMU does not read.
    #[error("unsupported VMDK version {0} (qemu reads versions 1 to 3)")]
    Version(u32),
    /// The newline check bytes are damaged.
    #[error("the header's newline check bytes are {0:02x?}, not [0a, 20, 0d, 0a]: the file was damaged (transferred as text?)")]
    NewlineCheck([u8; 4]),
    /// An impossible grain table size.
    #[error("grain tables of {0} entries: numGTEsPerGT must be 1 to 512")]
    GtesPerGt(u32),
    /// An impossible grain size.
    #[error("grain size of {0} sectors: it must be a power of two from 1 to 2097152 sectors")]
    GrainSize(u64),
    /// Compressed grains larger than we inflate.
    #[error("compressed grains of {0} bytes: streamdisk inflates grains of up to 2 MiB")]
    CompressedGrainSize(u64),
    /// Compressed grains without markers (their sizes would be unknown).
    #[error("compressed grains without grain markers are not supported")]
    CompressedWithoutMarkers,
    /// A capacity whose byte size overflows.
    #[error("capacity of {0} sectors is too large")]
    Capacity(u64),
    /// A grain directory larger than QEMU reads.
    #[error("a grain directory of {0} entries is larger than qemu's limit of 33554432")]
    GdEntries(u64),
    /// `GD_AT_END` in an uncompressed extent (there is no footer to stream to).
    #[error("the grain directory is at the end of an uncompressed sparse extent: not supported")]
    GdAtEndUncompressed,
    /// The grain directory would be the header.
    #[error("the grain directory is at sector 0, in the header")]
    GdInHeader,
    /// Grains would start inside the header.
    #[error("overHead of {0} sectors puts the first grain inside the header")]
    Overhead(u64),
    /// An offset no file can reach.
    #[error("the {what} at sector {sector} lies beyond any file")]
    Beyond {
        /// What it is.
        what: &'static str,
        /// Its offset, in sectors.
        sector: u64,
    },
    /// The image ends before its metadata area does.
    #[error(
        "truncated: the image is {len} bytes, but its header says grains start at byte {need}"
    )]
    TruncatedOverhead {
        /// Bytes there were.
        len: u64,
        /// Where the header says the first grain is.
        need: u64,
    },
    /// The image ends before something it maps.
    #[error("truncated: the image ends before the {what} at 0x{at:x}")]
    Truncated {
        /// What is missing.
        what: &'static str,
        /// Where it should be.
        at: u64,
    },
    /// A table or grain placed in bytes that streamed past before the table
    /// naming it: inside the header, the descriptor or another table.
    #[error("the {what} at 0x{at:x} lies in bytes before the table that names it (inside the image's metadata)")]
    Passed {
        /// What it is.
        what: &'static str,
        /// Where it is.
        at: u64,
    },
    /// Two things claim the same bytes.
    #[error("the {what} at 0x{at:x} overlaps the {other} at 0x{other_at:x}")]
    Overlap {
        /// The new one.
        what: &'static str,
        /// Where it starts.
        at: u64,
        /// The one already known.
        other: &'static str,
        /// Where that starts.
        other_at: u64,
    },
    /// A table that straddles the start of the grains.
    #[error("the {what} at 0x{at:x} crosses the start of the grains (overHead)")]
    CrossesOverhead {
        /// What it is.
        what: &'static str,
        /// Where it starts.
        at: u64,
    },
    /// The pending mapping outgrew its budget.
    #[error("the image is too fragmented to stream: more than {entries} pending grain runs, tables or grain markers out of order")]
    Budget {
        /// The limit.
        entries: usize,
    },
    /// A grain table named by the directory is not where a streamOptimized
    /// stream can have it.
    #[error("grain directory entry {entry} names a grain table at 0x{at:x} that no grain table marker precedes")]
    GtNotInStream {
        /// The directory entry.
        entry: u64,
        /// Where the table would be.
        at: u64,
    },
    /// A grain marker's LBA is past the disk.
    #[error("grain marker at 0x{at:x}: LBA {lba} is past the disk's {capacity} sectors")]
    GrainLba {
        /// The marker.
        at: u64,
        /// Its LBA.
        lba: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A grain marker's LBA is not the start of a grain.
    #[error(
        "grain marker at 0x{at:x}: LBA {lba} is not a multiple of the grain size ({grain} sectors)"
    )]
    GrainAlign {
        /// The marker.
        at: u64,
        /// Its LBA.
        lba: u64,
        /// Sectors per grain.
        grain: u64,
    },
    /// A grain marker declares more compressed bytes than QEMU reads.
    #[error("grain marker at 0x{at:x} declares {size} compressed bytes, more than {max}")]
    MarkerGrainSize {
        /// The marker.
        at: u64,
        /// What it declares.
        size: u64,
        /// Twice the grain size.
        max: u64,
    },
    /// Two grain markers for the same guest grain.
    #[error("grain marker at 0x{at:x}: LBA {lba} was given by an earlier grain marker")]
    DuplicateGrain {
        /// The second marker.
        at: u64,
        /// Its LBA.
        lba: u64,
    },
    /// A grain marker far behind the grains before it.
    #[error("grain marker at 0x{at:x}: LBA {lba} comes after thousands of grains beyond it (too far out of order to stream)")]
    OutOfOrder {
        /// The marker.
        at: u64,
        /// Its LBA.
        lba: u64,
    },
    /// A metadata marker of an unknown type.
    #[error("metadata marker at 0x{at:x} has unknown type {kind}")]
    MarkerType {
        /// The marker.
        at: u64,
        /// Its type.
        kind: u32,
    },
    /// A metadata marker whose length does not fit what follows it.
    #[error("{what} marker at 0x{at:x} announces {sectors} sectors, {want}")]
    MarkerLength {
        /// What the marker is for.
        what: &'static str,
        /// The marker.
        at: u64,
        /// Sectors it announces.
        sectors: u64,
        /// What was expected.
        want: String,
    },
    /// A grain that does not inflate.
    #[error("compressed grain at 0x{at:x} (guest 0x{guest:x})")]
    Inflate {
        /// The grain marker.
        at: u64,
        /// The guest offset.
        guest: u64,
        /// Why.
        #[source]
        source: InflateError,
    },
    /// A grain that inflates to less than the disk needs there.
    #[error("compressed grain at 0x{at:x} (guest 0x{guest:x}) inflates to {got} bytes, the disk needs {want}")]
    ShortGrain {
        /// The grain marker.
        at: u64,
        /// The guest offset.
        guest: u64,
        /// Bytes made.
        got: usize,
        /// Bytes needed.
        want: u64,
    },
    /// The grain markers do not say what the grain tables say.
    #[error("the grain markers do not match the grain tables ({markers} markers, {tables} allocated table entries): a marker's LBA or position differs from what its table says")]
    Mismatch {
        /// Allocated entries in the tables.
        tables: u64,
        /// Grain markers in the stream.
        markers: u64,
    },
    /// Bytes after the end-of-stream marker of an image that ends with one.
    #[error("data at 0x{at:x} after the end-of-stream marker")]
    DataAfterEos {
        /// Where.
        at: u64,
    },
    /// The header puts the directory in a footer that never came.
    #[error("truncated: the header puts the grain directory in the footer, and the stream has no footer")]
    NoFooter,
    /// The footer is not the last thing before the end-of-stream marker.
    #[error("the footer is not followed by the end-of-stream marker (they must be the last two sectors)")]
    FooterNotLast,
    /// The stream ends without the end-of-stream marker after the footer.
    #[error("truncated: the stream ends without the end-of-stream marker after the footer")]
    NoEos,
    /// The footer is not a sparse extent header.
    #[error("the footer at 0x{at:x} is not a sparse extent header")]
    BadFooter {
        /// Where it is.
        at: u64,
    },
    /// The footer and the header disagree.
    #[error("the footer's {field} ({footer}) differs from the header's ({header})")]
    FooterField {
        /// The field.
        field: &'static str,
        /// The header's value.
        header: u64,
        /// The footer's value.
        footer: u64,
    },
    /// The footer names a directory the stream did not have there.
    #[error("the footer puts the grain directory at sector {0}, where no grain directory marker put one")]
    FooterGd(u64),
    /// More than one directory in a stream that finds it through the footer.
    #[error("a second grain directory marker at 0x{at:x}")]
    MultipleGd {
        /// The second one.
        at: u64,
    },
    /// No CID in the embedded descriptor: QEMU does not open such a file.
    #[error("the sparse extent has no embedded descriptor (no CID): it looks like one extent of a multi-file VMDK; convert the whole disk to a single file first")]
    NoDescriptor,
    /// A descriptor that names separate extent files.
    #[error("VMDK descriptor (createType {create_type}) names separate extent files ({files}): streamdisk imports single-file VMDKs (monolithicSparse, streamOptimized); point it at a converted image")]
    SeparateExtents {
        /// `createType`.
        create_type: String,
        /// The files, for the message.
        files: String,
    },
    /// A descriptor that names no extent at all.
    #[error("VMDK descriptor (createType {create_type}) names no extent file: there is no disk data to import")]
    NoExtents {
        /// `createType`.
        create_type: String,
    },
    /// A delta disk.
    #[error("VMDK delta disks are not supported (this one needs its parent \"{parent}\"): import a disk without a parent")]
    DeltaDisk {
        /// The parent's name.
        parent: String,
    },
}

#[cfg(test)]
mod tests;
