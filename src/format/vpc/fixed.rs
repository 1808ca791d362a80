//! Fixed VHDs: the disk's bytes, then a 512-byte footer. Nothing at the
//! start says so; the footer is found at the end.
//!
//! qemu reads a fixed VHD as the file itself, up to the footer's virtual
//! size: guest byte `x` is file byte `x`. So when the virtual size is
//! smaller than the data, the disk is cut; when it is larger, the footer's
//! own bytes are part of the disk where they lie, and past the file's end
//! the disk reads as zeros. Both decoders here reproduce that exactly.
//!
//! - [`FixedDecoder`]: the footer was read up front (a seekable source, see
//!   `pipeline::input`), so the size is announced first and nothing outside
//!   it is ever written.
//! - [`HeldFixedDecoder`] and [`finish_held`]: a stream whose end cannot be
//!   read first (stdin, a wrapper, HTTP without ranges). The last 512 bytes
//!   are held back and everything before them is passed on as it comes; the
//!   footer is checked when the stream ends. A footer whose virtual size is
//!   smaller than the data that came before it is refused: qemu would cut
//!   the disk, and bytes already written cannot be taken back.

use super::footer::{DiskType, Footer, FOOTER_LEN};
use super::VpcError;
use crate::format::{DecodeReport, Decoder, ExtentSink, Feed, Format, FormatError, ImageInfo};

/// The footer of a fixed disk, or why it is not one.
fn fixed_footer(tail: &[u8]) -> Result<Footer, VpcError> {
    let f = Footer::parse(tail)?;
    match f.disk_type {
        DiskType::Fixed => Ok(f),
        DiskType::Dynamic => Err(VpcError::NotFixed("dynamic")),
        DiskType::Differencing => Err(VpcError::NotFixed("differencing")),
    }
}

/// A fixed VHD of `len` bytes whose footer (its last 512) is known.
#[derive(Debug)]
pub(crate) struct FixedDecoder {
    footer: Footer,
    /// The stream's length, footer included.
    len: u64,
    pos: u64,
    announced: bool,
}

impl FixedDecoder {
    /// Checks `tail` (the stream's last 512 bytes) and makes the decoder.
    pub(crate) fn new(tail: &[u8], len: u64) -> Result<FixedDecoder, FormatError> {
        if len < FOOTER_LEN as u64 || tail.len() != FOOTER_LEN {
            return Err(VpcError::TooShort(len.min(tail.len() as u64)).into());
        }
        Ok(FixedDecoder {
            footer: fixed_footer(tail)?,
            len,
            pos: 0,
            announced: false,
        })
    }
}

impl Decoder for FixedDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        if !self.announced {
            self.announced = true;
            sink.set_virtual_size(self.footer.virtual_size)?;
        }
        // Guest byte x is host byte x, below the virtual size and the end
        // of the file.
        let limit = self.footer.virtual_size.min(self.len);
        if self.pos < limit {
            let n = (limit - self.pos).min(chunk.len() as u64) as usize;
            if let Some(piece) = chunk.get(..n) {
                sink.data(self.pos, piece)?;
            }
        }
        self.pos = self.pos.saturating_add(chunk.len() as u64);
        Ok(Feed::Done)
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        if !self.announced {
            self.announced = true;
            sink.set_virtual_size(self.footer.virtual_size)?;
        }
        if self.pos != self.len {
            return Err(VpcError::LengthChanged {
                got: self.pos,
                expected: self.len,
            }
            .into());
        }
        let vsize = self.footer.virtual_size;
        if vsize > self.len {
            sink.zero(self.len, vsize - self.len)?;
        }
        Ok(DecodeReport {
            virtual_size: vsize,
            ..DecodeReport::default()
        })
    }

    fn info(&self) -> Option<ImageInfo> {
        Some(ImageInfo {
            format: Format::Vpc,
            virtual_size: Some(self.footer.virtual_size),
            cluster_size: None,
            format_specific: None,
        })
    }
}

/// The end of a stream whose last bytes are a fixed VHD footer: `tail` is
/// the held-back end of the stream (its last 512 bytes), `data_len` the bytes
/// already passed on as the disk's first bytes. Reports what qemu reads
/// beyond them (the footer's bytes and zeros, up to the virtual size) and
/// returns the virtual size.
pub(crate) fn finish_held(
    tail: &[u8],
    data_len: u64,
    sink: &mut dyn ExtentSink,
) -> Result<u64, FormatError> {
    if tail.len() < FOOTER_LEN {
        return Err(VpcError::TooShort(data_len + tail.len() as u64).into());
    }
    let footer = fixed_footer(tail)?;
    let vsize = footer.virtual_size;
    if vsize < data_len {
        return Err(VpcError::SizeMismatch {
            virtual_size: vsize,
            data: data_len,
        }
        .into());
    }
    let end = data_len + tail.len() as u64;
    let n = (vsize.min(end) - data_len) as usize;
    if let Some(piece) = tail.get(..n).filter(|p| !p.is_empty()) {
        sink.data(data_len, piece)?;
    }
    if vsize > end {
        sink.zero(end, vsize - end)?;
    }
    Ok(vsize)
}

/// A fixed VHD on a stream that could not be checked up front: the footer
/// is required at the end.
#[derive(Debug, Default)]
pub(crate) struct HeldFixedDecoder {
    /// The last bytes seen, at most [`FOOTER_LEN`] once past the start.
    tail: Vec<u8>,
    /// Bytes passed on as data.
    pos: u64,
}

impl HeldFixedDecoder {
    pub(crate) fn new() -> HeldFixedDecoder {
        HeldFixedDecoder {
            tail: Vec::with_capacity(2 * FOOTER_LEN),
            pos: 0,
        }
    }
}

impl Decoder for HeldFixedDecoder {
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError> {
        // Everything but the last FOOTER_LEN bytes seen so far goes on:
        // first from the held bytes, then from the chunk.
        let total = self.tail.len() + chunk.len();
        let pass = total.saturating_sub(FOOTER_LEN);
        let from_tail = pass.min(self.tail.len());
        let from_chunk = pass - from_tail;
        if from_tail > 0 {
            if let Some(p) = self.tail.get(..from_tail) {
                sink.data(self.pos, p)?;
            }
            self.pos += from_tail as u64;
            self.tail.drain(..from_tail);
        }
        if from_chunk > 0 {
            if let Some(p) = chunk.get(..from_chunk) {
                sink.data(self.pos, p)?;
            }
            self.pos += from_chunk as u64;
        }
        self.tail
            .extend_from_slice(chunk.get(from_chunk..).unwrap_or_default());
        Ok(Feed::Done)
    }

    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError> {
        let tail = std::mem::take(&mut self.tail);
        let virtual_size = finish_held(&tail, self.pos, sink)?;
        Ok(DecodeReport {
            virtual_size,
            ..DecodeReport::default()
        })
    }

    /// A VHD whose size only its last bytes give: unknown until the end.
    fn info(&self) -> Option<ImageInfo> {
        Some(ImageInfo {
            format: Format::Vpc,
            virtual_size: None,
            cluster_size: None,
            format_specific: None,
        })
    }
}
