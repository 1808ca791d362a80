//! `ImportJob`: what to read, how to decode it, where to write it, and the budget.
//!
//! The CLI builds one from its flags and the CDI pod mode from the pod's
//! environment; [`crate::pipeline::run`] executes it. Keeping this a plain data
//! type is what lets every front end share one tested data path.

use std::path::PathBuf;

use crate::checksum::Checksum;
use crate::format::{Format, FormatError, PlanOptions, SinkError};
use crate::io::Interrupted;
use crate::source::{HttpOptions, SourceError, SourceSpec};
use crate::target::{TargetError, TargetOptions};

/// Which decoder to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatChoice {
    /// Detect by signature; refuse what is recognised and not decoded.
    #[default]
    Auto,
    /// Require this format (`Raw` copies the unwrapped stream as it is,
    /// whatever its signature says).
    Exactly(Format),
}

/// What the input should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Content {
    /// A disk image (CDI's `kubevirt` content type).
    #[default]
    Disk,
    /// A tar archive to extract (CDI's `archive` content type).
    Archive,
}

/// Where an image comes from and how to recognise it: everything
/// [`crate::pipeline::open_input`] needs.
#[derive(Debug, Clone)]
pub struct InputOptions {
    /// The source.
    pub source: SourceSpec,
    /// Client settings for network sources.
    pub http: HttpOptions,
    /// The format, or detection.
    pub format: FormatChoice,
    /// What the stream should hold.
    pub content: Content,
    /// Verify this checksum over the bytes as received.
    pub checksum: Option<Checksum>,
    /// Which disk of a multi-disk container (an OVA) to import, from 1.
    pub disk: Option<usize>,
}

impl InputOptions {
    /// A disk image from `source`, detected, with default client settings.
    pub fn new(source: SourceSpec) -> InputOptions {
        InputOptions {
            source,
            http: HttpOptions::default(),
            format: FormatChoice::Auto,
            content: Content::Disk,
            checksum: None,
            disk: None,
        }
    }
}

/// Everything one import needs.
#[derive(Debug, Clone)]
pub struct ImportJob {
    /// What to read.
    pub input: InputOptions,
    /// The block device or file to write.
    pub target: PathBuf,
    /// The write side's budget.
    pub target_opts: TargetOptions,
    /// The planner's budget (reorder window, spill).
    pub plan: PlanOptions,
}

/// How an import ended, when it succeeded.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    /// Bytes received from the source (before unwrapping).
    pub bytes_received: u64,
    /// The image's virtual size.
    pub virtual_size: u64,
    /// Bytes received as data extents.
    pub bytes_written: u64,
    /// Bytes received as zero extents.
    pub bytes_zeroed: u64,
    /// Bytes spilled to scratch (removed afterwards).
    pub spilled_bytes: u64,
    /// Range requests made for metadata.
    pub range_requests: u64,
    /// What a registry said about the image (`None` for other sources).
    pub registry: Option<Box<crate::source::registry::ImageDetails>>,
}

/// Why an import failed. Front ends map these to exit codes and messages;
/// each variant prints its own cause once and chains the rest as `source`.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source could not be opened.
    #[error("opening source {display}")]
    Source {
        /// The source, without credentials.
        display: String,
        /// Why.
        #[source]
        source: SourceError,
    },
    /// Reading the stream failed outside a decoder (the header, the drain).
    #[error("reading {display}")]
    Read {
        /// The source, without credentials.
        display: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is refused, invalid, or did not fit the sink.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The target could not be opened or finished.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// An OVA could not be opened, or its disk not found.
    #[error(transparent)]
    Ova(#[from] crate::container::OvaError),
    /// An archive could not be extracted.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// The bytes received do not match the checksum.
    #[error("checksum mismatch: expected {expected}, calculated {calculated}")]
    ChecksumMismatch {
        /// `ALGO:HEX` expected.
        expected: String,
        /// `ALGO:HEX` of what arrived.
        calculated: String,
    },
    /// A signal stopped the import.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

impl ImportError {
    /// The image does not fit the target: `(virtual size, available)`.
    pub fn too_large(&self) -> Option<(u64, u64)> {
        match self {
            ImportError::Format(FormatError::Sink(SinkError::TooLarge { size, available }))
            | ImportError::Target(TargetError::TooLarge { size, available }) => {
                Some((*size, *available))
            }
            _ => None,
        }
    }

    /// The layout needs scratch space and spilling was forbidden.
    pub fn scratch_required(&self) -> bool {
        matches!(
            self,
            ImportError::Format(FormatError::Plan(
                crate::format::PlanError::ScratchRequired { .. }
            ))
        )
    }

    /// The error as one line, each cause once.
    pub fn message(&self) -> String {
        crate::error_chain(self)
    }
}
