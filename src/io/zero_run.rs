//! [`ZeroRun`]: a run of zeros being collected before it is reported.
//!
//! Decoders and the writer see zeros in pieces that follow the input's
//! chunks, the image's clusters or the sink's calls; reporting each piece
//! would cost one zeroing call (or one hole punch) each. Every stage that
//! joins them uses this one type: contiguous ranges join the run, and a
//! range that does not touch it hands the finished run back.

use std::ops::Range;

/// A pending run of zeros, `[start, end)` in guest (or device) offsets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ZeroRun(Option<Range<u64>>);

impl ZeroRun {
    /// An empty run.
    pub(crate) fn new() -> ZeroRun {
        ZeroRun(None)
    }

    /// Adds `r`. When it touches the run (right after it, or right before
    /// it), the run grows and `None` comes back; otherwise the previous run
    /// comes back, finished, and `r` starts a new one. Empty ranges change
    /// nothing.
    pub(crate) fn add(&mut self, r: Range<u64>) -> Option<Range<u64>> {
        if r.start >= r.end {
            return None;
        }
        match &mut self.0 {
            Some(run) if run.end == r.start => {
                run.end = r.end;
                None
            }
            Some(run) if r.end == run.start => {
                run.start = r.start;
                None
            }
            prev => prev.replace(r),
        }
    }

    /// The pending run, taken (the run is empty afterwards).
    pub(crate) fn take(&mut self) -> Option<Range<u64>> {
        self.0.take()
    }
}

#[cfg(test)]
mod tests {
    use super::ZeroRun;

    #[test]
    fn contiguous_ranges_join_and_others_finish_the_run() {
        let mut z = ZeroRun::new();
        assert_eq!(z.add(10..20), None);
        assert_eq!(z.add(20..30), None);
        assert_eq!(z.add(5..10), None, "a range right before joins too");
        assert_eq!(z.add(7..7), None, "empty ranges change nothing");
        assert_eq!(z.add(40..50), Some(5..30));
        assert_eq!(z.take(), Some(40..50));
        assert_eq!(z.take(), None);
    }
}
