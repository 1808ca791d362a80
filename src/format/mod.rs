//! Image formats: sans-IO decoders that turn host-offset bytes into guest extents.
//!
//! A decoder is fed the (unwrapped) image stream in order, chunk by chunk, and
//! pushes what it learns into an [`ExtentSink`]: "these bytes belong at guest
//! offset G" or "guest range [G, G+len) reads as zeros". It never does I/O of its
//! own, which is what makes it unit-testable on byte slices and fuzzable.

pub mod qcow2;
pub mod raw;
pub mod zeros;

use std::io;

/// The receiving end of a decoder: usually the target writer.
///
/// Calls may come in any guest order (qcow2 stores clusters in host order), but
/// every guest byte of `[0, virtual_size)` is reported at most once as data.
pub trait ExtentSink {
    /// Called once, before any extent, when the decoder learns the virtual size.
    /// Raw streams of unknown length never call it.
    fn set_virtual_size(&mut self, size: u64) -> io::Result<()>;
    /// `data` belongs at guest offset `guest_offset`.
    fn data(&mut self, guest_offset: u64, data: &[u8]) -> io::Result<()>;
    /// Guest range `[guest_offset, guest_offset + len)` reads as zeros.
    fn zero(&mut self, guest_offset: u64, len: u64) -> io::Result<()>;
    /// The input side will set the pace from here on, or smooths it itself:
    /// decompression (the decoder met its first compressed cluster, or the
    /// image has a wrapper), or a source that reads ahead on its own (a
    /// segmented download). A sink with a memory budget may then keep fewer
    /// writes in flight, leaving that memory to the input side. Only a hint:
    /// the default ignores it.
    fn input_paced(&mut self) {}
}

/// Which format a stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        })
    }
}

/// qcow2 magic bytes, `QFI\xfb`.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Detects the format from the first bytes of the unwrapped stream.
/// Anything that is not qcow2 is raw, as in CDI.
pub fn detect(head: &[u8]) -> Format {
    if head.starts_with(&QCOW2_MAGIC) {
        Format::Qcow2
    } else {
        Format::Raw
    }
}
