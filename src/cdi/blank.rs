//! `IMPORTER_SOURCE=none`: a blank disk, sized and preallocated as CDI does it.
//!
//! * Filesystem: `/data/disk.img` of `usable(min(available, requested))` bytes
//!   (what `qemu-img create -f raw` makes: a sparse file), fully allocated with
//!   `fallocate` when preallocation is asked (`-o preallocation=falloc`), mode 0660.
//! * Block, preallocated: `min(available, requested)` bytes of zeros written
//!   with `O_DIRECT` (CDI runs `dd oflag=direct`), so thin storage allocates it.
//! * Block, not preallocated: nothing to do; an empty PVC is a blank disk.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::space;

/// What the blank disk should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlankPlan {
    /// Create `/data/disk.img` of this size.
    File { size: u64, preallocate: bool },
    /// Zero this many bytes of the block device.
    ZeroBlock { len: u64 },
    /// Block without preallocation: leave the device as it is.
    Nothing,
}

/// CDI's `createBlankImage` arithmetic.
pub(crate) fn plan(
    block: bool,
    available: u64,
    requested: u64,
    overhead: f64,
    preallocate: bool,
) -> BlankPlan {
    let size = available.min(requested);
    if size < requested {
        tracing::warn!(
            available,
            requested,
            "available space less than requested size, creating blank image sized to available space"
        );
    }
    match (block, preallocate) {
        (false, _) => BlankPlan::File {
            size: space::usable_space(overhead, size),
            preallocate,
        },
        (true, true) => BlankPlan::ZeroBlock { len: size },
        (true, false) => BlankPlan::Nothing,
    }
}

/// Creates (replacing any leftover) a raw image file of `size` bytes, mode 0660
/// whatever the umask, allocated when `preallocate`, and syncs it.
pub(crate) fn create_file(path: &Path, size: u64, preallocate: bool) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ctx("removing", e)),
        _ => {}
    }
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o660)
        .open(path)
        .map_err(|e| ctx("creating", e))?;
    f.set_len(size).map_err(|e| ctx("sizing", e))?;
    if preallocate {
        allocate(&f, size).map_err(|e| ctx("preallocating", e))?;
    }
    f.set_permissions(fs::Permissions::from_mode(0o660))
        .map_err(|e| ctx("chmod", e))?;
    f.sync_all().map_err(|e| ctx("syncing", e))
}

/// Allocates every block of `[0, len)` of `f` without changing its contents
/// (what `preallocation=falloc` does).
pub(crate) fn allocate(f: &fs::File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::other("size exceeds off_t"))?;
    if len == 0 {
        return Ok(());
    }
    nix::fcntl::fallocate(f, nix::fcntl::FallocateFlags::empty(), 0, len).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn plans_like_cdi() {
        let gib = 1u64 << 30;
        assert_eq!(
            plan(false, 100 * gib, gib, 0.055, false),
            BlankPlan::File {
                size: 970 << 20,
                preallocate: false
            }
        );
        // Less space than requested: sized to the space, then overhead applies.
        assert_eq!(
            plan(false, gib / 2, gib, 0.0, true),
            BlankPlan::File {
                size: gib / 2,
                preallocate: true
            }
        );
        assert_eq!(
            plan(true, 10 * gib, gib, 0.0, true),
            BlankPlan::ZeroBlock { len: gib }
        );
        assert_eq!(
            plan(true, gib / 2, gib, 0.0, true),
            BlankPlan::ZeroBlock { len: gib / 2 }
        );
        assert_eq!(plan(true, 10 * gib, gib, 0.0, false), BlankPlan::Nothing);
    }

    #[test]
    fn creates_sparse_or_allocated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("disk.img");
        fs::write(&p, b"leftover").expect("write");
        create_file(&p, 8 << 20, false).expect("create");
        let m = fs::metadata(&p).expect("meta");
        assert_eq!(m.len(), 8 << 20);
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert!(m.blocks() * 512 < 1 << 20, "sparse");
        assert!(fs::read(&p).expect("read").iter().all(|&b| b == 0));

        create_file(&p, 8 << 20, true).expect("create");
        let m = fs::metadata(&p).expect("meta");
        assert_eq!(m.len(), 8 << 20);
        assert!(
            m.blocks() * 512 >= 8 << 20,
            "allocated: {} blocks",
            m.blocks()
        );
    }
}
