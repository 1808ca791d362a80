//! `ImportJob`: what to read, how to decode it, where to write it, and the budget.
//!
//! The CLI builds one from its flags and the CDI pod mode from the pod's
//! environment; [`crate::pipeline::run`] executes it. Keeping this a plain data
//! type is what lets both front ends share one tested data path.

use std::path::PathBuf;

use crate::checksum::Checksum;
use crate::format::qcow2::PlanOptions;
use crate::progress::ProgressMode;
use crate::source::{HttpOptions, SourceSpec};
use crate::target::TargetOptions;

/// Which decoder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FormatChoice {
    /// Detect by magic bytes: qcow2, otherwise raw.
    #[default]
    Auto,
    /// Treat the (unwrapped) stream as a raw disk.
    Raw,
    /// Require qcow2.
    Qcow2,
}

/// Everything one import needs.
#[derive(Debug, Clone)]
pub struct ImportJob {
    pub source: SourceSpec,
    pub http: HttpOptions,
    pub target: PathBuf,
    pub format: FormatChoice,
    pub checksum: Option<Checksum>,
    pub target_opts: TargetOptions,
    pub plan: PlanOptions,
    pub progress: ProgressMode,
}

/// How an import ended, when it succeeded.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Bytes received from the source (before unwrapping).
    pub bytes_received: u64,
    /// The image's virtual size (raw: bytes written).
    pub virtual_size: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub spilled_bytes: u64,
    pub range_requests: u64,
}

/// Why an import failed. Front ends map these to exit codes and messages
/// (the CDI mode has special cases for the first three).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("checksum mismatch: expected {expected}, calculated {calculated}")]
    ChecksumMismatch {
        expected: String,
        calculated: String,
    },
    #[error("{0}")]
    ScratchRequired(String),
    #[error("virtual image size {size} is larger than the reported available storage {available}. A larger PVC is required")]
    TooLarge { size: u64, available: u64 },
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}
