//! qcow2: a streaming decoder fed host bytes in increasing offset order.
//!
//! `decode` is the driver used by the pipeline: it pulls the stream, feeds the
//! sans-IO state machine, and applies the plan (reorder window, range reads of
//! metadata on seekable sources, spill to scratch otherwise).

mod driver;
mod emit;
mod entry;
mod header;
mod info;
mod map;
pub(crate) mod stream;

use std::io::{self, BufRead};

use crate::format::plan::PlanError;
use crate::format::{ExtentSink, FormatError, SinkError};
use crate::io::RangeRead;

pub use crate::format::plan::{PlanOptions, SpillPolicy};
pub use crate::format::DecodeReport;
pub use driver::decoder;
pub use header::CompressionType;
pub use info::{image_info_of, probe, probe_len, ImageInfo, PROBE_MAX_BYTES};
pub use map::MAPPING_BUDGET;

/// Why a qcow2 stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The image is invalid, hostile, truncated or uses an unsupported feature.
    #[error("{0}")]
    Invalid(String),
    /// The planner could not hold what the layout needs.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Reading the stream failed.
    #[error("reading the image")]
    Read(#[source] io::Error),
    /// The sink (target) failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

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
