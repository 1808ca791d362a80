//! Compression wrappers (gzip, xz, zstd, bzip2), found by magic bytes and decoded as streams.
//!
//! Wrappers are recognised by the format table (`format::table`); this
//! module only decodes them. Decoders are bounded: xz by a memory
//! limit, zstd by a maximum window, so that a hostile or exotic file cannot
//! blow the memory budget. Every decoder fails on truncated input instead of
//! ending the stream short.

use std::io::{self, BufRead, BufReader};

mod bz2;
mod gz;
mod xz;
mod zst;

/// Memory limit for the xz decoder (its dictionary dominates). `xz -9` uses
/// a 64 MiB dictionary, so every preset decodes within this.
pub const XZ_MEMLIMIT: u64 = 128 << 20;

/// Largest zstd window accepted, as a power of two: 2^27 = 128 MiB, the
/// zstd default maximum for decoding without `--long` flags beyond 27.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Output buffer behind the decoders: the slices the image decoder works on
/// (decompressed straight into it, so it costs no extra copy). Their input
/// needs none: the source is buffered already.
const DECODED_BUFFER: usize = 256 << 10;

/// A compression wrapper around the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wrapper {
    /// gzip (RFC 1952), possibly several members.
    Gzip,
    /// xz.
    Xz,
    /// zstd, possibly several frames.
    Zstd,
    /// bzip2, possibly several streams.
    Bzip2,
}

impl Wrapper {
    /// A short name for logs and `info`.
    pub fn name(self) -> &'static str {
        match self {
            Wrapper::Gzip => "gzip",
            Wrapper::Xz => "xz",
            Wrapper::Zstd => "zstd",
            Wrapper::Bzip2 => "bzip2",
        }
    }
}

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The stream of bytes `wrapper` holds, decoded from `reader`.
pub fn decoder(
    wrapper: Wrapper,
    reader: Box<dyn BufRead + Send>,
) -> io::Result<Box<dyn BufRead + Send>> {
    Ok(match wrapper {
        Wrapper::Gzip => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            gz::GzReader::new(reader),
        )),
        Wrapper::Xz => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            xz::XzReader::new(reader, XZ_MEMLIMIT)?,
        )),
        Wrapper::Zstd => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            zst::ZstdReader::new(reader, ZSTD_WINDOW_LOG_MAX)?,
        )),
        Wrapper::Bzip2 => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            bz2::Bz2Reader::new(reader),
        )),
    })
}

/// Whether `e` came from below the decoder with a typed cause of its own
/// (a transfer failure, a registry blob's digest mismatch, an interrupt):
/// such an error passes through a decoder unchanged, so the pipeline still
/// recognises it (a checksum mismatch wipes the target, an interrupt exits
/// with the signal's code). The decoders' own errors are named by codec.
fn from_below(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        inner.is::<crate::source::SourceError>() || inner.is::<crate::io::Interrupted>()
    })
}

#[cfg(test)]
mod tests;
