//! Runs the qcow2 decoder under the generic driver.
//!
//! Single pass whenever the layout allows. When the reorder window would
//! overflow, a seekable source is asked for the missing tables, the L1 first,
//! then every L2 not seen yet, adjacent ranges coalesced, so the whole
//! mapping is known and the stream continues without ever downloading the
//! image twice. Otherwise the window spills or refuses (see
//! `format::plan::window`).

use std::io::BufRead;

use crate::format::{drive, DecodeReport, ExtentSink, FormatError};
use crate::io::RangeRead;
use crate::pace::Pace;

use super::map::MAPPING_BUDGET;
use super::stream::{Config, StreamDecoder};
use super::PlanOptions;

/// A decoder for a stream that can (`can_fetch`) or cannot be read out of order.
pub fn decoder(opts: &PlanOptions, can_fetch: bool, pace: Pace) -> StreamDecoder {
    StreamDecoder::new(Config {
        window: opts.window,
        spill: opts.spill.clone(),
        can_fetch,
        mapping_budget: MAPPING_BUDGET,
        pace,
    })
}

/// `input` is consumed slice by slice where its buffer holds the bytes (the
/// network chunk, over HTTP): standard clusters go from there straight to
/// the sink, which copies them into its aligned write buffers.
pub(super) fn decode(
    input: &mut dyn BufRead,
    range: Option<&mut dyn RangeRead>,
    opts: &PlanOptions,
    sink: &mut dyn ExtentSink,
) -> Result<DecodeReport, FormatError> {
    let mut dec = decoder(opts, range.is_some(), Pace::default());
    drive(&mut dec, input, range, opts, sink)
}
