//! The planner's shared parts: what to do with stream bytes that arrive
//! before the metadata that places them.
//!
//! [`Window`] holds such bytes by host offset, in memory up to a limit and
//! then in an unlinked `O_DIRECT` scratch file ([`spill`]), or refuses by
//! [`SpillPolicy`]. qcow2 uses it as its reorder window; the generic driver
//! (`format::drive`) uses it to read ahead to metadata that sits later in a
//! non-seekable stream and then replay what it held.

use std::path::PathBuf;

mod spill;
pub(crate) mod window;

pub(crate) use window::Window;

/// What to do with data that arrives before the metadata that maps it.
#[derive(Debug, Clone)]
pub enum SpillPolicy {
    /// Spill into a scratch file in this directory (removed afterwards).
    Dir(PathBuf),
    /// Never spill: fail with [`PlanError::ScratchRequired`] as soon as it is needed.
    Forbid,
}

/// The planner's memory budget and fallbacks.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Bytes of not-yet-placed stream held in memory before falling back.
    pub window: usize,
    /// Where overflow goes on a non-seekable source.
    pub spill: SpillPolicy,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            window: DEFAULT_WINDOW,
            spill: SpillPolicy::Dir(std::env::temp_dir()),
        }
    }
}

/// Default [`PlanOptions::window`].
pub(crate) const DEFAULT_WINDOW: usize = 4 << 20;

/// Why the planner could not hold bytes.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The layout needs spill space and spilling is forbidden.
    #[error(
        "scratch space required: the image stores more than {held} bytes before the tables \
         that place them and the source cannot be read out of order (allow spilling, or use \
         a seekable source)"
    )]
    ScratchRequired {
        /// The in-memory limit that was reached.
        held: usize,
    },
    /// Creating, writing or reading the scratch file failed.
    #[error("{what} the scratch file in {}", dir.display())]
    Scratch {
        /// "creating", "writing" or "reading".
        what: &'static str,
        /// The scratch directory.
        dir: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}
