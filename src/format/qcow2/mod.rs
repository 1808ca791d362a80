//! qcow2: a streaming decoder fed host bytes in increasing offset order.
//!
//! `decode` is the driver used by the pipeline: it pulls the stream, feeds the
//! sans-IO state machine, and applies the plan (reorder window, range reads of
//! metadata on seekable sources, spill to scratch otherwise).

pub mod decompress;
mod driver;
mod emit;
mod entry;
mod header;
mod info;
mod map;
mod spill;
pub mod stream;
mod window;
mod workers;

use std::io::{self, BufRead};
use std::path::PathBuf;

use crate::format::ExtentSink;
use crate::source::RangeRead;

pub use header::CompressionType;
pub use info::{probe, probe_len, ImageInfo, PROBE_MAX_BYTES};
pub use map::MAPPING_BUDGET;

/// What to do with data that arrives before the metadata that maps it.
#[derive(Debug, Clone)]
pub enum SpillPolicy {
    /// Spill into a scratch file in this directory (removed afterwards).
    Dir(PathBuf),
    /// Never spill: fail with [`Qcow2Error::ScratchRequired`] as soon as it is needed.
    Forbid,
}

/// The planner's memory budget and fallbacks.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Bytes of not-yet-mapped stream held in memory before falling back.
    pub window: usize,
    /// Where overflow goes on a non-seekable source.
    pub spill: SpillPolicy,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            window: 4 << 20,
            spill: SpillPolicy::Dir(std::env::temp_dir()),
        }
    }
}

/// What the decode did besides producing extents.
#[derive(Debug, Clone, Default)]
pub struct DecodeReport {
    pub virtual_size: u64,
    pub cluster_size: u64,
    pub spilled_bytes: u64,
    pub range_requests: u64,
    pub range_bytes: u64,
}

/// Why a qcow2 stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The layout needs spill space and spilling is forbidden.
    #[error("scratch space required: {0}")]
    ScratchRequired(String),
    /// The image is invalid, hostile, truncated or uses an unsupported feature.
    #[error("qcow2: {0}")]
    Invalid(String),
    /// Reading the stream failed.
    #[error("reading image: {0}")]
    Read(#[source] io::Error),
    /// The sink (target) failed.
    #[error("{0}")]
    Sink(#[source] io::Error),
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
) -> Result<DecodeReport, Qcow2Error> {
    driver::decode(input, range, opts, sink)
}
