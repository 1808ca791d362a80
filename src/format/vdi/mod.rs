//! VDI (VirtualBox): dynamic ("normal") and static ("fixed") images,
//! decoded in one forward pass.
//!
//! - [`header`]: the header, checked as qemu checks it;
//! - [`stream`]: the block map and the blocks, through the block map shared
//!   with VHD (`format::vpc::blocks`).
//!
//! Differencing images (and images linked to another) are refused by name:
//! their unallocated blocks live in a parent image we do not have.

mod header;
mod stream;

use crate::format::DecoderConfig;

/// Why a VDI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VdiError {
    /// Too short for a header.
    #[error("the image is only {0} bytes, less than a VDI header (512 bytes)")]
    TooShort(u64),
    /// Not the VDI signature.
    #[error("bad signature 0x{0:08x} (not a VDI image)")]
    Signature(u32),
    /// A version qemu does not read.
    #[error("unsupported VDI version {0}.{1} (qemu reads 1.1)")]
    Version(u32, u32),
    /// An image type other than normal or fixed.
    #[error("unsupported image type {0} (1 is normal, 2 fixed, 4 differencing)")]
    ImageType(u32),
    /// A differencing image, with its parent's UUID when the header gives one.
    #[error("differencing VDI images are not supported: they need their parent image{} (merge the chain first, with VBoxManage clonemedium)", .parent.as_deref().map_or(String::new(), |u| format!(" {{{u}}}")))]
    Differencing {
        /// The parent's UUID.
        parent: Option<String>,
    },
    /// A link UUID: the image belongs to another.
    #[error("VDI images linked to another image (a non-null link UUID) are not supported")]
    Linked,
    /// An offset not on a sector boundary.
    #[error("the {what} offset 0x{offset:x} is not a multiple of 512")]
    Unaligned {
        /// Which offset.
        what: &'static str,
        /// Its value.
        offset: u32,
    },
    /// A sector size other than 512.
    #[error("sector size {0} is not 512")]
    SectorSize(u32),
    /// A block size other than 1 MiB.
    #[error("block size {0} is not 1 MiB (the only one qemu and VirtualBox use)")]
    BlockSize(u32),
    /// Over qemu's limit.
    #[error("disk size {0} bytes is over the VDI maximum")]
    DiskTooLarge(u64),
    /// The block map cannot hold the whole disk.
    #[error("disk size {size} bytes, but the block map has room for only {room}")]
    MapTooSmall {
        /// The disk size.
        size: u64,
        /// Blocks times block size.
        room: u64,
    },
    /// More blocks than qemu reads.
    #[error("{0} blocks, more than qemu reads")]
    TooManyBlocks(u32),
    /// The block map overlaps the header.
    #[error("the block map at 0x{0:x} overlaps the header")]
    MapOverlap(u64),
    /// A block lies past the end of the image.
    #[error("block {block} at 0x{host:x}..0x{end:x} lies past the end of the image ({len} bytes): truncated image, or a bad block map entry")]
    BlockPastEnd {
        /// Its guest block index.
        block: u64,
        /// Where its data starts.
        host: u64,
        /// Where it ends.
        end: u64,
        /// The image's length.
        len: u64,
    },
    /// A block that cannot be placed: the map is too fragmented, or blocks
    /// overlap each other or the metadata.
    #[error(transparent)]
    Map(#[from] crate::format::vpc::blocks::MapFault),
    /// The stream ended before a structure.
    #[error("truncated: the image ends after {len} bytes, before the end of {what}")]
    Truncated {
        /// Bytes received.
        len: u64,
        /// What was cut.
        what: &'static str,
    },
}

/// The VDI decoder for `cfg`.
pub(crate) fn decoder(cfg: &DecoderConfig) -> impl crate::format::Decoder {
    stream::VdiDecoder::new(cfg.stream_len)
}

#[cfg(test)]
mod tests;
