//! Bounding dirty page cache when `O_DIRECT` is not available.
//!
//! Buffered writes land in the page cache, which counts against the pod's
//! memory cgroup; left alone, the kernel may let gigabytes of dirty pages pile
//! up before writing them back. Every `every` bytes this forces writeback of the
//! file (`sync_file_range`, waiting) and then drops the now-clean pages
//! (`posix_fadvise(DONTNEED)`), so the cache holds at most about one interval.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};

/// Forces writeback and drops clean pages at a fixed byte interval.
#[derive(Debug)]
pub(crate) struct Pacer {
    every: u64,
    since: u64,
}

impl Pacer {
    /// A pacer that syncs after every `every` bytes written.
    pub(crate) fn new(every: u64) -> Self {
        Pacer {
            every: every.max(1),
            since: 0,
        }
    }

    /// Records `n` bytes written; syncs and drops pages when the interval is up.
    pub(crate) fn wrote(&mut self, file: &File, n: u64) -> io::Result<()> {
        self.since = self.since.saturating_add(n);
        if self.since >= self.every {
            self.since = 0;
            writeback_and_drop(file)?;
        }
        Ok(())
    }
}

/// Writes back every dirty page of `file`, waits for it, and drops the clean
/// pages from the cache.
pub(crate) fn writeback_and_drop(file: &File) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain syscall on an open fd; offset 0 and length 0 mean the whole file.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Some filesystems (and block devices on old kernels) lack it; fall
        // back to fdatasync, which is stronger.
        if err.raw_os_error() == Some(libc::ESPIPE) || err.raw_os_error() == Some(libc::EINVAL) {
            nix::unistd::fdatasync(file).map_err(io::Error::from)?;
        } else {
            return Err(err);
        }
    }
    // Advisory: a failure only means pages stay cached a little longer.
    let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn syncs_at_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut f = File::create(dir.path().join("f")).expect("create");
        f.write_all(&[1u8; 8192]).expect("write");
        let mut p = Pacer::new(10_000);
        p.wrote(&f, 8192).expect("no sync yet");
        assert_eq!(p.since, 8192);
        p.wrote(&f, 8192).expect("sync");
        assert_eq!(p.since, 0);
    }
}
