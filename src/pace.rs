//! [`Pace`]: which side of an import sets its speed, told once and read by
//! the stages that adapt to it.
//!
//! Control stays out of the data path: the pipeline makes one handle and
//! gives clones to the source, the decoders and the target, the way
//! [`crate::progress::Counter`] is shared. Whoever learns something sets it;
//! whoever cares reads it when it suits them (an atomic load).
//!
//! - Decompression sets the pace (a gzip/xz/zstd wrapper, or a decoder that
//!   met compressed clusters): a source reading ahead would only fill memory,
//!   so it stops; the target keeps fewer writes in flight and leaves the
//!   memory to the inflate workers.
//! - The source reads ahead on its own (a segmented download): it delivers
//!   evenly instead of in bursts, so the target needs less depth to absorb
//!   them, and the memory pays for the read-ahead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A shared handle on who sets the pace. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Pace(Arc<State>);

#[derive(Debug, Default)]
struct State {
    decompressing: AtomicBool,
    reads_ahead: AtomicBool,
}

impl Pace {
    /// A fresh handle: nothing known yet.
    pub fn new() -> Pace {
        Pace::default()
    }

    /// Decompression sets the pace from here on.
    pub fn set_decompressing(&self) {
        if !self.0.decompressing.swap(true, Ordering::AcqRel) {
            tracing::debug!("decompression sets the pace");
        }
    }

    /// Whether decompression sets the pace.
    pub fn decompressing(&self) -> bool {
        self.0.decompressing.load(Ordering::Acquire)
    }

    /// The source reads ahead of the decoder on its own.
    pub fn set_reads_ahead(&self) {
        self.0.reads_ahead.store(true, Ordering::Release);
    }

    /// Whether the source reads ahead on its own.
    pub fn reads_ahead(&self) -> bool {
        self.0.reads_ahead.load(Ordering::Acquire)
    }

    /// Whether the input side sets or smooths the pace, so that the write
    /// side may keep fewer writes in flight.
    pub fn input_paced(&self) -> bool {
        self.decompressing() || self.reads_ahead()
    }
}

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn clones_share_the_state() {
        let a = Pace::new();
        let b = a.clone();
        assert!(!b.input_paced());
        a.set_reads_ahead();
        assert!(b.reads_ahead() && b.input_paced() && !b.decompressing());
        a.set_decompressing();
        assert!(b.decompressing());
    }
}
