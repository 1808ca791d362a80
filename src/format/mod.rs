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
//! - one module per format: [`qcow2`], [`raw`], [`vhdx`], [`vmdk`]; [`zeros`] turns all-zero
//!   data into zero extents.

pub(crate) mod decoder;
pub(crate) mod drive;
pub(crate) mod error;
pub mod inflate;
pub(crate) mod info;
pub(crate) mod plan;
pub mod qcow2;
pub mod raw;
pub(crate) mod sink;
pub(crate) mod table;
pub(crate) mod vdi;
pub mod vhdx;
pub mod vmdk;
pub(crate) mod vpc;
pub(crate) mod zeros;

pub use decoder::{DecodeReport, Decoder, Feed};
pub use drive::drive;
pub use error::FormatError;
pub use info::{FormatSpecific, ImageInfo};
pub use plan::{PlanError, PlanOptions, SpillPolicy};
pub use sink::{ExtentSink, SinkError};
pub use table::{identify, Refusal, Signature};
pub use vdi::VdiError;
pub use vpc::VpcError;

use crate::pace::Pace;

/// What a decoder is told when it is made.
#[derive(Debug, Clone, Default)]
pub struct DecoderConfig {
    /// The planner's budget (reorder window, spill).
    pub plan: PlanOptions,
    /// Whether the driver can read ranges of the source (metadata can be
    /// fetched out of order instead of held).
    pub can_fetch: bool,
    /// Told when decompression starts setting the pace.
    pub pace: Pace,
    /// The length of the image stream, when known (no wrapper in between).
    pub stream_len: Option<u64>,
    /// What is known about the stream's last bytes.
    pub tail: Tail,
}

/// What is known about the last bytes of a stream, for formats recognised
/// by a trailer (a fixed VHD's footer) and for raw streams, which must not
/// write such a trailer into the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tail {
    /// Not checked (not seekable, or wrapped): a raw decoder holds the last
    /// bytes back and checks them at the end.
    #[default]
    Unchecked,
    /// Checked up front: no trailer.
    Clean,
    /// The format was forced: no check at all, every byte is the disk.
    Forced,
    /// Checked up front: a fixed VHD footer (these bytes) ends the stream.
    VhdFooter(Vec<u8>),
}

/// The decoder for `format`: the one place that maps a format to its decoder.
pub fn new_decoder(format: Format, cfg: &DecoderConfig) -> Result<Box<dyn Decoder>, FormatError> {
    match format {
        Format::Qcow2 => Ok(Box::new(qcow2::decoder(
            &cfg.plan,
            cfg.can_fetch,
            cfg.pace.clone(),
        ))),
        Format::Raw => {
            let dec = raw::RawDecoder::new(cfg.stream_len);
            match &cfg.tail {
                Tail::Unchecked => Ok(Box::new(dec.hold_tail())),
                Tail::Clean | Tail::Forced => Ok(Box::new(dec)),
                // A fixed VHD: its footer is not part of the disk.
                Tail::VhdFooter(_) => vpc::decoder(cfg),
            }
        }
        Format::Vpc => vpc::decoder(cfg),
        Format::Vdi => Ok(Box::new(vdi::decoder(cfg))),
        Format::Vhdx => Ok(Box::new(vhdx::VhdxDecoder::new(cfg.stream_len))),
        Format::Vmdk => Ok(Box::new(vmdk::VmdkDecoder::new(cfg))),
    }
}

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
