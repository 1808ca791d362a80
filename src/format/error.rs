//! [`FormatError`]: why an image could not be decoded.
//!
//! One enum for every decoder, so that the pipeline maps failures in one
//! place: an image fault (one variant per format, each with its own typed
//! causes), a format we recognise and do not decode, the planner's refusal,
//! a read error from below, or the sink's refusal from above.

use std::io;

use super::plan::PlanError;
use super::qcow2::Qcow2Error;
use super::sink::SinkError;
use super::table::Refusal;

/// Why decoding stopped.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A qcow2 image is invalid, truncated, hostile or uses a feature we refuse.
    #[error("qcow2: {0}")]
    Qcow2(#[source] Qcow2Error),
    /// A VHD image is invalid, truncated, hostile or a differencing disk.
    #[error("vpc: {0}")]
    Vpc(#[from] super::vpc::VpcError),
    /// A VDI image is invalid, truncated, hostile or a differencing image.
    #[error("vdi: {0}")]
    Vdi(#[from] super::vdi::VdiError),
    /// A VMDK image is invalid, truncated, hostile, or made of several files.
    #[error("vmdk: {0}")]
    Vmdk(#[from] super::vmdk::VmdkError),
    /// A VHDX image is invalid, truncated, hostile or uses a feature we refuse.
    #[error("vhdx: {0}")]
    Vhdx(#[from] super::vhdx::VhdxError),
    /// A raw image is truncated, too short, or longer than announced.
    #[error("raw: {0}")]
    Raw(#[from] super::raw::RawError),
    /// A format (or wrapper) we recognise by its signature and do not decode.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The image is not in the format that was asked for.
    #[error("--format {asked} given, but the image is {found}")]
    WrongFormat {
        /// The format given.
        asked: &'static str,
        /// What the signature says.
        found: String,
    },
    /// The planner could not hold what the layout needs.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// Metadata the image points to lies past the end of the stream.
    #[error("truncated: the image ends before its metadata at 0x{start:x}..0x{end:x} (truncated image, or a table past its end)")]
    MetadataPastEnd {
        /// First byte of the missing range.
        start: u64,
        /// End of the missing range.
        end: u64,
    },
    /// Reading the stream (or a range of it) failed.
    #[error("reading the image")]
    Read(#[source] io::Error),
    /// The sink refused an extent.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A decoder broke its own contract: a bug, reported rather than panicking.
    #[error("internal decoder error: {0}")]
    Internal(&'static str),
}

/// qcow2's own errors still carry the planner's and the sink's errors;
/// they are lifted into the shared variants here so that front ends
/// see one shape whatever the format.
impl From<Qcow2Error> for FormatError {
    fn from(e: Qcow2Error) -> FormatError {
        match e {
            Qcow2Error::Plan(p) => FormatError::Plan(p),
            Qcow2Error::Sink(s) => FormatError::Sink(s),
            other => FormatError::Qcow2(other),
        }
    }
}
