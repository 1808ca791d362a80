//! streamdisk: a streaming disk-image importer.
//!
//! The data path runs one way (see `ARCHITECTURE` in the README):
//!
//! ```text
//! source ──► unwrap ──► decode ──► plan ──► write
//! (bytes)   (gz/xz/zst) (qcow2/raw) (extents) (O_DIRECT target)
//! ```
//!
//! Each stage lives in its own module and talks to the next through a small
//! interface: sources are `std::io::Read` (plus optional range reads), wrappers
//! are `Read` adapters, decoders are sans-IO state machines that push guest
//! extents into an [`format::ExtentSink`], and the target is that sink.

pub mod cdi;
pub mod checksum;
pub mod format;
pub mod info;
pub mod job;
pub mod pipeline;
pub mod progress;
pub mod signals;
pub mod source;
pub mod target;
pub mod unwrap;
