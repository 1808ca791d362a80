//! [`Decoder`]: the interface every image decoder implements.
//!
//! A decoder is a sans-IO state machine. It is fed the (unwrapped) image in
//! increasing host-offset order, chunk by chunk, and pushes what it learns
//! into an [`ExtentSink`]. It never reads a file or a socket itself: when it
//! cannot go on without metadata that lies further ahead in the stream (a
//! block table stored after the blocks), it stops and says which host ranges
//! it needs; the driver ([`super::drive`]) gets them, by a range read on a
//! seekable source or by holding the stream until they pass, and hands them
//! over with [`Decoder::supply`].
//!
//! The contract, checked by `testing::CheckingSink` in the tests and the
//! fuzz targets:
//! - `set_virtual_size` once, before any extent;
//! - no extent reaches past the virtual size, and no guest byte is reported
//!   twice;
//! - when `finish` succeeds, every guest byte of `[0, virtual size)` has
//!   been reported, as data or as zeros;
//! - nothing in the decoder's memory grows with the image's size beyond a
//!   budget it enforces (tables are parsed as they pass, not kept whole).

use std::ops::Range;

use super::error::FormatError;
use super::info::ImageInfo;
use super::sink::ExtentSink;

/// What [`Decoder::feed`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The whole chunk was consumed.
    Done,
    /// Only the first `n` bytes were consumed: the decoder needs the ranges
    /// of [`Decoder::missing_metadata`] before the rest.
    NeedMetadata(usize),
}

/// What a decode did besides producing extents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeReport {
    /// The image's virtual size.
    pub virtual_size: u64,
    /// Bytes written to a scratch file because the source could not be read
    /// out of order.
    pub spilled_bytes: u64,
    /// Range requests made for metadata.
    pub range_requests: u64,
    /// Bytes read by those requests.
    pub range_bytes: u64,
}

/// A sans-IO image decoder (see the module documentation for the contract).
pub trait Decoder: Send {
    /// Feeds the next bytes of the stream. The first call gets the stream's
    /// first byte; each later call continues where the bytes consumed so far
    /// end.
    fn feed(&mut self, chunk: &[u8], sink: &mut dyn ExtentSink) -> Result<Feed, FormatError>;

    /// Host ranges needed before the stream can go on, after
    /// [`Feed::NeedMetadata`]. They lie at or after the position reached.
    /// Empty when nothing is missing.
    fn missing_metadata(&self) -> Vec<Range<u64>> {
        Vec::new()
    }

    /// Hands over bytes of a missing range, read out of order. `host` is
    /// where they start, within a range of [`Decoder::missing_metadata`].
    fn supply(
        &mut self,
        host: u64,
        bytes: &[u8],
        sink: &mut dyn ExtentSink,
    ) -> Result<(), FormatError> {
        let _ = (host, bytes, sink);
        Err(FormatError::Internal(
            "metadata supplied to a decoder that asked for none",
        ))
    }

    /// The range reads failed before any metadata arrived: carry on with the
    /// stream alone (holding or spilling what cannot be placed yet), if the
    /// decoder can. Returns false if it cannot.
    fn stop_fetching(&mut self) -> bool {
        false
    }

    /// The stream ended: report what is left and check that everything the
    /// image maps has arrived.
    fn finish(&mut self, sink: &mut dyn ExtentSink) -> Result<DecodeReport, FormatError>;

    /// What the image's header says, once it has been parsed (for `info`).
    fn info(&self) -> Option<ImageInfo>;
}

/// Runs a decoder's `step` over `chunk` until the chunk is used up or a step
/// needs metadata that lies ahead: the loop of a [`Decoder::feed`] built from
/// steps. `step` is given what is left of the chunk and returns the bytes it
/// took (`None`: it needs metadata first); it keeps its own position. A step
/// that takes nothing of a non-empty rest would loop forever, so it is an
/// internal error instead.
pub(crate) fn feed_steps(
    chunk: &[u8],
    mut step: impl FnMut(&[u8]) -> Result<Option<usize>, FormatError>,
) -> Result<Feed, FormatError> {
    let mut at = 0usize;
    while let Some(rest) = chunk.get(at..).filter(|r| !r.is_empty()) {
        match step(rest)? {
            Some(0) => return Err(FormatError::Internal("a decoder step made no progress")),
            Some(n) => at += n,
            None => return Ok(Feed::NeedMetadata(at)),
        }
    }
    Ok(Feed::Done)
}
