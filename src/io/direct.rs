//! Opening files with `O_DIRECT`, falling back to buffered I/O on
//! filesystems that refuse it (tmpfs before Linux 6.6, some FUSE and network
//! filesystems): the target and the spill file both need this.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Opens `path` with `opts` plus `O_DIRECT` (and `O_CLOEXEC`); if the
/// filesystem refuses `O_DIRECT` (`EINVAL`), opens it again without.
/// Returns the file and whether it is direct.
pub(crate) fn open(opts: &OpenOptions, path: &Path) -> io::Result<(File, bool)> {
    let mut direct = opts.clone();
    direct.custom_flags(libc::O_CLOEXEC | libc::O_DIRECT);
    match direct.open(path) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let mut buffered = opts.clone();
            buffered.custom_flags(libc::O_CLOEXEC);
            Ok((buffered.open(path)?, false))
        }
        Err(e) => Err(e),
    }
}

/// Whether an I/O error means "this file does not do `O_DIRECT` after all"
/// (some filesystems accept the flag at open time and refuse the I/O).
pub(crate) fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Clears `O_DIRECT` on an open file.
pub(crate) fn disable(file: &File) -> io::Result<()> {
    let flags = fcntl(file, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_DIRECT;
    fcntl(file, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_direct_where_it_can_and_buffered_where_it_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true);
        let (f, _direct) = open(&opts, &dir.path().join("f")).expect("open");
        disable(&f).expect("clear O_DIRECT");
        let flags = fcntl(&f, FcntlArg::F_GETFL).expect("flags");
        assert_eq!(
            OFlag::from_bits_truncate(flags) & OFlag::O_DIRECT,
            OFlag::empty()
        );
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            // tmpfs refuses O_DIRECT on older kernels; either way it opens.
            open(&opts, &shm.path().join("f")).expect("open on tmpfs");
        }
    }
}
