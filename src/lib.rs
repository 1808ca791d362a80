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

pub(crate) mod archive;
pub mod cdi;
pub mod checksum;
// Used by the OVA and registry sources, which land next.
#[allow(dead_code)]
pub(crate) mod container;
pub mod format;
pub mod info;
pub(crate) mod io;
pub mod job;
pub mod pace;
pub mod pipeline;
pub mod progress;
pub mod signals;
pub mod source;
pub mod target;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod unwrap;

/// An error and its causes, joined by ": " (each cause once), for
/// messages that leave the process: the CLI's last line, CDI's termination
/// message.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !s.is_empty() && !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}
