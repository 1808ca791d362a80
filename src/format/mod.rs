//! Image formats: sans-IO decoders that turn host-offset bytes into guest extents.
//!
//! A decoder ([`Decoder`]) is fed the (unwrapped) image stream in order,
//! chunk by chunk, and pushes what it learns into an [`ExtentSink`]: "these
//! bytes belong at guest offset G" or "guest range [G, G+len) reads as
//! zeros". It never does I/O of its own, which is what makes it
//! unit-testable on byte slices and fuzzable; [`drive`] feeds it and gets it
//! the metadata it asks for.
//!
//! Layout:
//! - [`table`]: every signature, and which formats are decoded or refused;
//! - [`sink`], [`decoder`], [`error`], [`info`]: the interfaces;
//! - [`drive`] and [`plan`]: feeding a decoder, range reads, the window and
//!   the spill;
//! - [`inflate`]: compressed units on all cores;
//! - one module per format: [`qcow2`], [`raw`]; [`zeros`] turns all-zero
//!   data into zero extents.

pub mod decoder;
pub mod drive;
pub mod error;
pub mod inflate;
pub mod info;
pub mod plan;
pub mod qcow2;
pub mod raw;
pub mod sink;
pub mod table;
pub mod zeros;

pub use decoder::{DecodeReport, Decoder, Feed};
pub use drive::drive;
pub use error::FormatError;
pub use info::{FormatSpecific, ImageInfo};
pub use plan::{PlanError, PlanOptions, SpillPolicy};
pub use sink::{ExtentSink, SinkError};
pub use table::{identify, Refusal, Signature};

/// An image format, named as qemu names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A raw disk: the bytes as they are.
    Raw,
    /// QEMU's qcow2, versions 2 and 3.
    Qcow2,
    /// VMware's VMDK (hosted sparse extents).
    Vmdk,
    /// Microsoft's VHD (qemu calls the driver `vpc`).
    Vpc,
    /// Microsoft's VHDX.
    Vhdx,
    /// VirtualBox's VDI.
    Vdi,
}

impl Format {
    /// The name qemu uses (`qemu-img info`, `-f`).
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vpc => "vpc",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
