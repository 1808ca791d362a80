//! qcow2: a streaming decoder fed host bytes in increasing offset order.
//!
//! `decode` is the driver used by the pipeline: it pulls the stream, feeds the
//! sans-IO state machine, and applies the plan (reorder window, range reads of
//! metadata on seekable sources, spill to scratch otherwise).

mod driver;
mod emit;
mod entry;
mod error;
mod header;
mod info;
mod map;
pub(crate) mod stream;

use std::io::BufRead;

use crate::format::{ExtentSink, FormatError};
use crate::io::RangeRead;

pub use crate::format::plan::{PlanOptions, SpillPolicy};
pub use crate::format::DecodeReport;
pub use driver::decoder;
pub use error::{BitmapProblem, Qcow2Error};
pub use header::CompressionType;
pub use info::{image_info_of, probe, probe_len, ImageInfo, PROBE_MAX_BYTES};
pub use map::MAPPING_BUDGET;

/// Decodes a qcow2 stream into `sink`.
///
/// `input` is the unwrapped image from its first byte. `range`, when given,
/// must read the same bytes at random (a plain file or an HTTP server with
/// `Range` support, and no compression wrapper): it is used only to fetch
/// tables the stream has not reached when the reorder window is full.
///
/// Memory: the reorder window (`opts.window`), the mapping state (at most
/// [`MAPPING_BUDGET`]), no read buffer of its own (`input` lends its
/// buffer), and a few cluster buffers
/// (up to 2 MiB each for 2 MiB clusters). None of it grows with the virtual size.
pub fn decode(
    input: &mut dyn BufRead,
    range: Option<&mut dyn RangeRead>,
    opts: &PlanOptions,
    sink: &mut dyn ExtentSink,
) -> Result<DecodeReport, FormatError> {
    driver::decode(input, range, opts, sink)
}
