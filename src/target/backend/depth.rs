//! How many writes the back end keeps in flight, and when that changes.
//!
//! The depth is the write side's share of the memory budget: every write in
//! flight holds one pool buffer. It is settled once at open ([`Depth`]) and
//! may be lowered once, when the [`Pace`] says the input side sets the pace,
//! so the memory goes where it helps.

use crate::pace::Pace;
use crate::target::api::{Depth, DEFAULT_QUEUE_DEPTH, PACED_QUEUE_DEPTH};

/// The most writes in flight a fixed depth is clamped to: beyond it the
/// device gains nothing and the pool would break the memory budget.
const MAX_QUEUE_DEPTH: usize = 64;

/// The depth chosen at open, and the lowering still to come.
#[derive(Debug)]
pub(crate) struct DepthPolicy {
    /// Writes in flight from the start.
    initial: usize,
    /// The depth to lower to once the input side sets the pace, until used.
    lower_to: Option<usize>,
    /// Read to learn who sets the pace (see [`DepthPolicy::follow`]).
    pace: Option<Pace>,
}

impl DepthPolicy {
    /// The policy for `depth`: [`Depth::Auto`] starts deep and may lower
    /// once; a fixed depth (clamped to `1..=64`) never changes.
    pub(crate) fn new(depth: Depth) -> Self {
        let (initial, lower_to) = match depth {
            Depth::Auto => (DEFAULT_QUEUE_DEPTH, Some(PACED_QUEUE_DEPTH)),
            Depth::Fixed(n) => (n.clamp(1, MAX_QUEUE_DEPTH), None),
        };
        DepthPolicy {
            initial,
            lower_to,
            pace: None,
        }
    }

    /// Writes in flight from the start.
    pub(crate) fn initial(&self) -> usize {
        self.initial
    }

    /// Lowers the depth once `pace` says the input side sets the pace.
    pub(crate) fn follow(&mut self, pace: Pace) {
        self.pace = Some(pace);
    }

    /// The depth to lower to now, once: `Some` the first time this is asked
    /// after the input side took over the pace, `None` otherwise. Cheap
    /// enough (one atomic load) to ask on every extent.
    pub(crate) fn lower_now(&mut self) -> Option<usize> {
        if self.lower_to.is_some() && self.pace.as_ref().is_some_and(Pace::input_paced) {
            return self.lower_to.take();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_lowers_once_when_the_input_sets_the_pace() {
        let mut d = DepthPolicy::new(Depth::Auto);
        assert_eq!(d.initial(), DEFAULT_QUEUE_DEPTH);
        assert_eq!(d.lower_now(), None, "no pace followed yet");
        let pace = Pace::new();
        d.follow(pace.clone());
        assert_eq!(d.lower_now(), None, "the writes still set the pace");
        pace.set_decompressing();
        assert_eq!(d.lower_now(), Some(PACED_QUEUE_DEPTH));
        assert_eq!(d.lower_now(), None, "only once");
    }

    #[test]
    fn a_fixed_depth_is_clamped_and_never_lowered() {
        assert_eq!(DepthPolicy::new(Depth::Fixed(0)).initial(), 1);
        assert_eq!(DepthPolicy::new(Depth::Fixed(1000)).initial(), 64);
        let mut d = DepthPolicy::new(Depth::Fixed(3));
        let pace = Pace::new();
        pace.set_reads_ahead();
        d.follow(pace);
        assert_eq!(d.lower_now(), None);
        assert_eq!(d.initial(), 3);
    }
}
