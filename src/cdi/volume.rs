//! The target volume's envelope around the pipeline, shared by the importer
//! pod and the upload server: clearing a leftover, the space budget, CDI's
//! resize, preallocation and mode after the write, durability, and the
//! cleanup after a checksum mismatch.
//!
//! The numbers themselves are [`super::space`]'s; this module applies them to
//! the files and devices.

use std::fs;
use std::io;
use std::path::Path;

use super::{blank, space};

/// The size and preallocation settings a pod was given (`IMPORTER_IMAGE_SIZE`
/// or `UPLOAD_IMAGE_SIZE`, `FILESYSTEM_OVERHEAD`, `PREALLOCATION`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SpaceRules {
    /// The PVC request in bytes, when set.
    pub image_size: Option<u64>,
    /// The filesystem's overhead fraction.
    pub overhead: f64,
    /// Allocate every block of disk.img after the write.
    pub preallocation: bool,
}

/// Removes a leftover regular file (or directory) at `path`, as CDI's `CleanAll`;
/// a device is left alone.
pub(crate) fn clean(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(m) => {
            use std::os::unix::fs::FileTypeExt;
            let t = m.file_type();
            if t.is_block_device() || t.is_char_device() {
                Ok(())
            } else {
                fs::remove_file(path)
            }
        }
    }
}

/// CDI's space budget: the block device's size, or the free space of
/// `data_dir` capped at the request.
pub(crate) fn available_space(
    block: bool,
    device: &Path,
    data_dir: &Path,
    requested: Option<u64>,
) -> Result<u64, String> {
    if block {
        space::device_size(device)
            .map_err(|e| format!("Unable to determine the size of {}: {e}", device.display()))
    } else {
        space::filesystem_free(data_dir)
            .map(|free| space::cap_to_request(free, requested))
            .map_err(|e| {
                format!(
                    "Unable to determine available space in {}: {e}",
                    data_dir.display()
                )
            })
    }
}

/// After a successful filesystem import: grow to CDI's size (never shrink),
/// preallocate when asked, mode 0660, and make it durable.
pub(crate) fn finish_file(path: &Path, rules: &SpaceRules, available: u64) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| ctx("opening", e))?;
    let current = f.metadata().map_err(|e| ctx("inspecting", e))?.len();
    let mut size = current;
    if let Some(new) = space::resize_target(current, rules.image_size, available, rules.overhead) {
        tracing::info!(from = current, to = new, "expanding image");
        f.set_len(new)
            .map_err(|e| ctx("Resize of image failed: resizing", e))?;
        size = new;
    }
    if rules.preallocation {
        blank::allocate(&f, size).map_err(|e| ctx("preallocating", e))?;
    }
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(fs::Permissions::from_mode(0o660))
        .map_err(|e| ctx("Unable to change permissions of target file", e))?;
    f.sync_all().map_err(|e| ctx("syncing", e))
}

/// `fsync` of a file, device or directory.
pub(crate) fn sync_path(path: &Path) -> io::Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("syncing {}: {e}", path.display())))
}

/// After a checksum mismatch, leave nothing that looks like a disk: delete
/// disk.img, or zero a block device's first and last MiB (partition tables and
/// their backups live there).
pub(crate) fn remove_target(block: bool, target: &Path) {
    let res = if block {
        crate::target::wipe_edges(target).map_err(|e| e.to_string())
    } else {
        clean(target).map_err(|e| e.to_string())
    };
    if let Err(e) = res {
        tracing::warn!(target = %target.display(), error = %e, "failed to remove the target after a checksum mismatch");
    }
}

/// Flushes the whole filesystem holding `dir` (every extracted file at once).
pub(crate) fn syncfs(dir: &Path) -> io::Result<()> {
    let f = fs::File::open(dir)?;
    nix::unistd::syncfs(&f).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("syncing {}: {e}", dir.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_removes_files_and_dirs_but_not_devices() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("disk.img");
        fs::write(&f, b"x").expect("write");
        clean(&f).expect("clean");
        assert!(!f.exists());
        clean(&f).expect("clean of nothing");
        fs::create_dir_all(f.join("sub")).expect("mkdir");
        clean(&f).expect("clean dir");
        assert!(!f.exists());
        clean(Path::new("/dev/null")).expect("device left alone");
        assert!(Path::new("/dev/null").exists());
    }

    #[test]
    fn finish_file_grows_allocates_and_chmods() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("disk.img");
        fs::write(&f, vec![1u8; 4096]).expect("write");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).expect("chmod");
        let rules = SpaceRules {
            image_size: Some(8 << 20),
            overhead: 0.0,
            preallocation: true,
        };
        finish_file(&f, &rules, 100 << 20).expect("finish");
        let m = fs::metadata(&f).expect("meta");
        assert_eq!(m.len(), 8 << 20);
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() * 512 >= 8 << 20, "preallocated");
        assert_eq!(&fs::read(&f).expect("read")[..4096], &[1u8; 4096][..]);
    }
}
