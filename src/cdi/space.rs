//! How much the target may hold, with CDI's exact arithmetic.
//!
//! CDI decides three numbers, and the controller (and users' PVC sizing) rely
//! on them:
//!
//! * **available**: a block volume's size; for a filesystem volume, `statfs`
//!   free space (`f_bavail * f_bsize`) capped at the requested image size.
//!   An image whose virtual size exceeds it is refused before anything is written.
//! * **usable**: what a file may grow to once the filesystem's own overhead is
//!   taken off: `ceil(available / (1 + overhead))`, rounded down to 1 MiB (CDI's
//!   `GetUsableSpace`, computed in `float64` as Go does).
//! * **resize target**: `min(usable, requested)`. disk.img grows to it after the
//!   import, and never shrinks.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

/// CDI aligns image sizes to 1 MiB, a multiple of every hardware block size.
pub(crate) const ALIGN: u64 = 1 << 20;

/// CDI's `GetUsableSpace`: the space left once the filesystem overhead is
/// reserved, rounded down to [`ALIGN`].
///
/// `overhead` must be finite and non-negative (the config refuses anything else).
pub(crate) fn usable_space(overhead: f64, available: u64) -> u64 {
    // Go: int64(math.Ceil(float64(availableSpace) / (1 + filesystemOverhead))).
    // `as` saturates on out-of-range floats, which only a nonsensical overhead makes.
    let without_overhead = (available as f64 / (1.0 + overhead)).ceil() as u64;
    without_overhead / ALIGN * ALIGN
}

/// The filesystem-mode space budget: free space capped at the requested size.
pub(crate) fn cap_to_request(free: u64, requested: Option<u64>) -> u64 {
    match requested {
        Some(r) => free.min(r),
        None => free,
    }
}

/// The size disk.img should grow to after an import, or `None` when it should
/// stay as it is (no size requested, or the image is already as large or larger:
/// CDI never shrinks).
pub(crate) fn resize_target(
    current: u64,
    requested: Option<u64>,
    available: u64,
    overhead: f64,
) -> Option<u64> {
    let requested = requested?;
    let target = usable_space(overhead, available).min(requested);
    (target > current).then_some(target)
}

/// Free space on the filesystem holding `dir`, as CDI measures it
/// (`f_bavail * f_bsize`: blocks available to unprivileged users).
pub(crate) fn filesystem_free(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statfs::statfs(dir).map_err(io::Error::from)?;
    let bsize = u64::try_from(st.block_size()).unwrap_or(0);
    Ok(st.blocks_available().saturating_mul(bsize))
}

/// The size of a block device (seeking to its end gives `BLKGETSIZE64`'s answer
/// without an ioctl), or of a regular file standing in for one in tests.
pub(crate) fn device_size(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_space_matches_cdi() {
        // Values computed with CDI's Go expression.
        assert_eq!(usable_space(0.0, 10 << 30), 10 << 30);
        // 1 GiB / 1.055 = 1017764762.6 -> ceil 1017764763 -> round down to MiB: 970 MiB.
        assert_eq!(usable_space(0.055, 1 << 30), 970 << 20);
        // 10 GiB / 1.06 = 10129639849.1 -> 9660 MiB.
        assert_eq!(usable_space(0.06, 10 << 30), 9660 << 20);
        assert_eq!(usable_space(0.06, 0), 0);
        assert_eq!(usable_space(0.06, (1 << 20) - 1), 0);
    }

    #[test]
    fn resize_never_shrinks() {
        let gib = 1u64 << 30;
        // Request 1 GiB, plenty of space: grow to the request.
        assert_eq!(
            resize_target(64 << 20, Some(gib), 100 * gib, 0.0),
            Some(gib)
        );
        // Space after overhead is smaller than the request: grow to usable.
        assert_eq!(
            resize_target(64 << 20, Some(gib), gib, 0.055),
            Some(970 << 20)
        );
        // Image already larger than the target: leave it.
        assert_eq!(resize_target(2 * gib, Some(gib), 100 * gib, 0.0), None);
        assert_eq!(resize_target(gib, Some(gib), 100 * gib, 0.0), None);
        // No request: leave it.
        assert_eq!(resize_target(64 << 20, None, 100 * gib, 0.0), None);
        // An unaligned request is honoured exactly (qemu-img resize does not round).
        assert_eq!(
            resize_target(0, Some(1_000_000_001), 100 * gib, 0.0),
            Some(1_000_000_001)
        );
    }

    #[test]
    fn cap() {
        assert_eq!(cap_to_request(10, Some(5)), 5);
        assert_eq!(cap_to_request(10, Some(50)), 10);
        assert_eq!(cap_to_request(10, None), 10);
    }

    #[test]
    fn measures_files_and_filesystems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, vec![0u8; 12345]).expect("write");
        assert_eq!(device_size(&p).expect("size"), 12345);
        assert!(filesystem_free(dir.path()).expect("statfs") > 0);
    }
}
