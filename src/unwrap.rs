//! Compression wrappers (gzip, xz, zstd), found by magic bytes and decoded as streams.
//!
//! The wrapper is sniffed with a [`PeekReader`], which looks at the first
//! bytes without consuming them, so the decoder (or the raw passthrough) sees
//! the stream from its first byte. Decoders are bounded: xz by a memory
//! limit, zstd by a maximum window, so that a hostile or exotic file cannot
//! blow the memory budget. Every decoder fails on truncated input instead of
//! ending the stream short.

use std::io::{self, BufRead, BufReader};

mod gz;
mod peek;
mod xz;
mod zst;

pub use peek::PeekReader;

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
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Wrapper {
    /// Identifies a wrapper from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Wrapper {
        if head.starts_with(&[0x1f, 0x8b]) {
            Wrapper::Gzip
        } else if head.starts_with(&[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) {
            Wrapper::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Wrapper::Zstd
        } else {
            Wrapper::None
        }
    }

    /// A short name for logs and `info`.
    pub fn name(self) -> &'static str {
        match self {
            Wrapper::None => "none",
            Wrapper::Gzip => "gzip",
            Wrapper::Xz => "xz",
            Wrapper::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest magic number looked at.
const MAGIC_LEN: usize = 6;

/// Detects the wrapper of `reader` and returns a stream of the unwrapped
/// bytes (the input itself, unconsumed, when there is no wrapper).
pub fn unwrap(reader: Box<dyn BufRead + Send>) -> io::Result<(Wrapper, Box<dyn BufRead + Send>)> {
    let mut peek = PeekReader::new(reader);
    let wrapper = Wrapper::detect(peek.peek(MAGIC_LEN)?);
    let decoded: Box<dyn BufRead + Send> = match wrapper {
        Wrapper::None => Box::new(peek),
        Wrapper::Gzip => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            gz::GzReader::new(peek),
        )),
        Wrapper::Xz => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            xz::XzReader::new(peek, XZ_MEMLIMIT)?,
        )),
        Wrapper::Zstd => Box::new(BufReader::with_capacity(
            DECODED_BUFFER,
            zst::ZstdReader::new(peek, ZSTD_WINDOW_LOG_MAX)?,
        )),
    };
    Ok((wrapper, decoded))
}

#[cfg(test)]
mod tests;
