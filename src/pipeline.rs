//! Runs an [`ImportJob`]: source, unwrap, decode, write.

use std::sync::Arc;

use crate::job::{ImportError, ImportJob, ImportReport};
use crate::progress::Counter;

/// Runs `job` to completion on the calling (blocking) thread, using `rt` for
/// network I/O. `counter` receives progress. Success means every byte of the
/// image is on stable storage and the checksum (if any) matched.
pub fn run(
    _job: &ImportJob,
    _rt: &tokio::runtime::Handle,
    _counter: Arc<Counter>,
) -> Result<ImportReport, ImportError> {
    Err(ImportError::Other(anyhow::anyhow!("not implemented yet")))
}
