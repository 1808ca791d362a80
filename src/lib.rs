//! streamdisk: a streaming disk-image importer.
//!
//! The data path runs one way (`docs/ARCHITECTURE.md` has the whole picture):
//!
//! ```text
//! source ──► taps ──► unwrap / container ──► decode ──► target
//! (bytes)    (count,   (gzip, xz, zstd; tar)  (qcow2,    (O_DIRECT, extents
//!            hash)                            raw, ...)   at guest offsets)
//! ```
//!
//! Each stage lives in its own module and talks to the next through a small
//! interface: sources are `BufRead` streams (plus optional range reads),
//! wrappers are `BufRead` adapters, decoders are sans-IO state machines that
//! push guest extents into a [`format::ExtentSink`], and the target is that
//! sink. [`pipeline::open_input`] is the one place that wires the input.

pub(crate) mod archive;
pub mod cdi;
pub mod checksum;
// `TarReader::position` is for the registry source, which lands next.
#[allow(dead_code)]
pub mod container;
pub mod format;
pub mod info;
pub(crate) mod io;
pub mod job;
mod log_filter;
pub mod pace;
pub mod pipeline;
pub mod progress;
pub mod signals;
pub mod source;
pub mod target;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod unwrap;

pub use log_filter::log_filter;

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
