//! [`ExtentSink`]: where decoders put what they decode, and [`SinkError`]:
//! why a sink refused it.

use std::io;

/// The receiving end of a decoder: usually the target writer.
///
/// Calls may come in any guest order (qcow2 stores clusters in host order), but
/// every guest byte of `[0, virtual_size)` is reported at most once.
pub trait ExtentSink {
    /// Called once, before any extent, when the decoder learns the virtual size.
    /// Raw streams of unknown length never call it.
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError>;
    /// `data` belongs at guest offset `guest_offset`.
    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError>;
    /// Guest range `[guest_offset, guest_offset + len)` reads as zeros.
    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError>;
}

impl<S: ExtentSink + ?Sized> ExtentSink for &mut S {
    fn set_virtual_size(&mut self, size: u64) -> Result<(), SinkError> {
        (**self).set_virtual_size(size)
    }
    fn data(&mut self, guest_offset: u64, data: &[u8]) -> Result<(), SinkError> {
        (**self).data(guest_offset, data)
    }
    fn zero(&mut self, guest_offset: u64, len: u64) -> Result<(), SinkError> {
        (**self).zero(guest_offset, len)
    }
}

/// Why a sink refused a call. Typed, so that front ends can tell a disk that
/// is too small (CDI words that one its own way) from a failed write.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The image does not fit the target.
    #[error(
        "the image's virtual size ({size} bytes) is larger than the target ({available} bytes)"
    )]
    TooLarge {
        /// The virtual size announced.
        size: u64,
        /// What the target can hold.
        available: u64,
    },
    /// An extent reaches past the end of the writable range.
    #[error("extent [{start}, {end}) lies beyond {what} ({limit} bytes)")]
    OutOfRange {
        /// First byte of the extent.
        start: u64,
        /// End of the extent (exclusive; saturated on overflow).
        end: u64,
        /// The end of the writable range.
        limit: u64,
        /// What `limit` is: the virtual size or the end of the device.
        what: &'static str,
    },
    /// The virtual size came after the first extent, or changed.
    #[error("virtual size {0} announced after writing had started")]
    LateSize(u64),
    /// A write, zeroing call or resize failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// An earlier call failed; the sink refuses everything after it.
    #[error("an earlier write failed: {0}")]
    Failed(String),
}

impl SinkError {
    /// A failed system call, with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> SinkError {
        SinkError::Io {
            context: context.into(),
            source,
        }
    }
}
