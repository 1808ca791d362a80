//! Progress: a shared byte counter, read by whoever shows it (the CLI's bar
//! or log lines, the CDI metric, the upload server's log).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes received from the source so far, and the total when known.
///
/// Shared (behind an `Arc`) between the reading thread, which bumps it, and
/// the reporters (bar, log lines, the CDI metric), which only read it.
#[derive(Debug, Default)]
pub struct Counter {
    received: AtomicU64,
    /// 0 while unknown.
    total: AtomicU64,
    done: std::sync::atomic::AtomicBool,
}

impl Counter {
    /// Counts `n` more bytes received.
    pub fn add(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the number of bytes expected in all.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Bytes expected in all, when known.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
    /// Starts over for a new transfer (the upload server's next upload after
    /// a failed one).
    pub fn reset(&self) {
        self.received.store(0, Ordering::Relaxed);
        self.total.store(0, Ordering::Relaxed);
        self.done.store(false, Ordering::Release);
    }
    /// Marks the import complete (every byte durable).
    pub fn set_done(&self) {
        self.done.store(true, Ordering::Release);
    }
    /// Whether [`Counter::set_done`] was called.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
    /// Percent for the CDI metric: below 100 until [`Counter::set_done`], monotonic.
    pub fn percent(&self) -> f64 {
        if self.is_done() {
            return 100.0;
        }
        match self.total() {
            Some(t) => (self.received() as f64 * 100.0 / t as f64).clamp(0.0, 99.0),
            None => 0.0,
        }
    }
}
