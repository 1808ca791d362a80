//! VHD (qemu's `vpc`): dynamic and fixed disks, decoded in one forward pass.
//!
//! - [`footer`]: the footer, its checksum and the virtual size as qemu
//!   computes it;
//! - [`dynamic`]: footer copy, dynamic header, BAT, blocks;
//! - [`fixed`]: raw data and a trailing footer, known up front or held back
//!   at the end of a stream;
//! - [`blocks`]: the block map in host order (shared with VDI).
//!
//! Differencing disks are refused by name: their unallocated blocks live in
//! a parent image we do not have.

pub(crate) mod blocks;
mod dynamic;
mod fixed;
mod footer;

use std::ops::Range;

use crate::format::{
    DecodeReport, Decoder, DecoderConfig, ExtentSink, Feed, FormatError, ImageInfo, Tail,
};

pub(crate) use fixed::finish_held;
#[cfg(test)]
pub(crate) use footer::tests::footer as test_footer;

/// Why a VHD was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpcError {
    /// Too short for a footer.
    #[error("the image is only {0} bytes, less than a VHD footer (512 bytes)")]
    TooShort(u64),
    /// `conectix` is neither at the start nor at the end.
    #[error("no VHD footer: 'conectix' is neither at offset 0 nor in the last 512 bytes")]
    NoFooter,
    /// A footer one byte short (Virtual PC before 2004).
    #[error("the image ends in a 511-byte footer (Virtual PC before 2004), which qemu does not read either (use --format raw to copy the bytes as they are)")]
    ShortFooter,
    /// The footer's checksum does not match its bytes.
    #[error("footer checksum mismatch: stored 0x{stored:08x}, computed 0x{computed:08x} (corrupt footer)")]
    FooterChecksum {
        /// What the footer says.
        stored: u32,
        /// What its bytes sum to.
        computed: u32,
    },
    /// A disk type the format does not define.
    #[error("unknown disk type {0} in the footer (2 is fixed, 3 dynamic, 4 differencing)")]
    DiskType(u32),
    /// A differencing disk, with its parent's name when the header gives one.
    #[error("differencing VHD images are not supported: they need their parent image{} (merge it into its parent first)", parent_suffix(parent))]
    Differencing {
        /// The parent's file name, as the dynamic header stores it.
        parent: Option<String>,
    },
    /// The footer copy at offset 0 says fixed.
    #[error(
        "the footer at offset 0 says fixed disk, but a fixed VHD has its footer only at its end"
    )]
    FixedAtStart,
    /// The footer at the end, with no copy at the start, is not a fixed disk's.
    #[error("the footer at the end says {0} disk, but the image does not start with its copy")]
    NotFixed(&'static str),
    /// Over qemu's limit.
    #[error("virtual size {0} bytes is over the VHD maximum of 2040 GiB")]
    TooLarge(u64),
    /// The dynamic header cannot be where the footer says.
    #[error("impossible dynamic header offset 0x{0:x} (inside the footer, or past any file)")]
    HeaderOffset(u64),
    /// No `cxsparse` where the footer points.
    #[error("no dynamic disk header ('cxsparse') at 0x{0:x}")]
    HeaderMagic(u64),
    /// A block size qemu refuses.
    #[error("block size {0} is not a power of two of at least 512")]
    BlockSize(u32),
    /// The BAT cannot map the whole disk.
    #[error("the block allocation table's {entries} entries of {block_size} bytes cannot map the virtual size {virtual_size}")]
    TableTooSmall {
        /// Entries in the BAT.
        entries: u32,
        /// Bytes per block.
        block_size: u32,
        /// The footer's virtual size.
        virtual_size: u64,
    },
    /// More BAT entries than qemu reads.
    #[error("the block allocation table has {0} entries, more than qemu reads")]
    TableTooLarge(u32),
    /// The BAT's offset overflows.
    #[error("impossible block allocation table offset 0x{0:x}")]
    TableOffset(u64),
    /// The BAT overlaps another structure.
    #[error("the block allocation table at 0x{at:x} overlaps the {what}")]
    TableOverlap {
        /// Where the BAT is.
        at: u64,
        /// What it overlaps.
        what: &'static str,
    },
    /// A block lies past the end of the image.
    #[error("block {block} at 0x{host:x}..0x{end:x} lies past the end of the image ({len} bytes): truncated image, or a bad BAT entry")]
    BlockPastEnd {
        /// Its guest block index.
        block: u64,
        /// Where it starts (its sector bitmap).
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
    /// A fixed disk's footer on a stream gives less than the data before it.
    #[error("the fixed VHD footer gives a virtual size of {virtual_size} bytes, less than the {data} bytes of data before it: qemu cuts the disk there, which a stream already written cannot do (import it from a file or an HTTP server with range requests)")]
    SizeMismatch {
        /// The footer's virtual size.
        virtual_size: u64,
        /// Bytes before the footer.
        data: u64,
    },
    /// The stream is not as long as its source said.
    #[error("the image is {got} bytes, but its source said {expected}")]
    LengthChanged {
        /// Bytes received.
        got: u64,
        /// The announced length.
        expected: u64,
    },
}

/// ` 'NAME'` for a message, or nothing.
fn parent_suffix(parent: &Option<String>) -> String {
    parent
        .as_deref()
        .map_or(String::new(), |p| format!(" '{p}'"))
}

/// The VHD decoder for `cfg`: a fixed disk when the footer was found at the
/// end up front (`Tail::VhdFooter`); otherwise the first bytes decide (a
/// footer copy at 0 is a dynamic disk; anything else must be a fixed disk
/// whose footer ends the stream).
pub(crate) fn decoder(cfg: &DecoderConfig) -> Result<Box<dyn Decoder>, FormatError> {
    match (&cfg.tail, cfg.stream_len) {
        (Tail::VhdFooter(tail), Some(len)) => Ok(Box::new(fixed::FixedDecoder::new(tail, len)?)),
        _ => Ok(Box::new(SniffDecoder {
            head: Vec::new(),
            len: cfg.stream_len,
            inner: None,
        })),
    }
}

/// Picks the dynamic or the held-fixed decoder by the first 8 bytes.
struct SniffDecoder {
    /// The first bytes, until there are 8.
    head: Vec<u8>,
    len: Option<u64>,
    inner: Option<Box<dyn Decoder>>,
}

impl Decoder for SniffDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        if let Some(inner) = self.inner.as_mut() {
            return inner.feed(chunk, sink);
        }
        let need = footer::COOKIE.len() - self.head.len();
        if chunk.len() < need {
            self.head.extend_from_slice(chunk);
            return Ok(Feed::Done);
        }
        let held = std::mem::take(&mut self.head);
        let mut first = held.clone();
        first.extend_from_slice(chunk.get(..need).unwrap_or_default());
        let mut inner: Box<dyn Decoder> = if first.as_slice() == footer::COOKIE.as_slice() {
            Box::new(dynamic::DynamicDecoder::new(self.len))
        } else {
            Box::new(fixed::HeldFixedDecoder::new())
        };
        // The held bytes were reported consumed; neither decoder stops
        // within its first 8 bytes.
        if !held.is_empty() && inner.feed(&held, sink)? != Feed::Done {
            return Err(FormatError::Internal(
                "VHD decoder stopped in its first bytes",
            ));
        }
        let r = inner.feed(chunk, sink);
        self.inner = Some(inner);
        r
    }

    fn missing_metadata(&self) -> Vec<Range<u64>> {
        self.inner
            .as_ref()
            .map(|d| d.missing_metadata())
            .unwrap_or_default()
    }

    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        match self.inner.as_mut() {
            Some(d) => d.supply(host, bytes, sink),
            None => Err(FormatError::Internal("VHD metadata before the first bytes")),
        }
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        match self.inner.as_mut() {
            Some(d) => d.finish(sink),
            None => Err(VpcError::TooShort(self.head.len() as u64).into()),
        }
    }

    fn info(&self) -> Option<ImageInfo> {
        self.inner.as_ref().and_then(|d| d.info())
    }
}

#[cfg(test)]
mod tests;
