//! qcow2: a streaming decoder fed host bytes in increasing offset order.
//!
//! `decode` is the driver used by the pipeline: it pulls the stream, feeds the
//! sans-IO state machine, and applies the plan (reorder window, range reads of
//! metadata on seekable sources, spill to scratch otherwise).

use std::io::{self, Read};
use std::path::PathBuf;

use crate::format::ExtentSink;
use crate::source::RangeRead;

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
pub fn decode(
    _input: &mut dyn Read,
    _range: Option<&mut dyn RangeRead>,
    _opts: &PlanOptions,
    _sink: &mut dyn ExtentSink,
) -> Result<DecodeReport, Qcow2Error> {
    Err(Qcow2Error::Invalid("not implemented yet".into()))
}
