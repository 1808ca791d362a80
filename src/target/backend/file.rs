//! Opening the target: block device or regular file, `O_DIRECT` when the
//! filesystem allows it, and the alignment every transfer must respect.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use super::device;
use crate::target::api::TargetKind;

/// Files are always written in units of at least this many bytes: it is the
/// page size, and the smallest alignment every local filesystem accepts for
/// `O_DIRECT`.
pub(crate) const MIN_FILE_ALIGN: usize = 4096;

/// Alignments larger than this are not believed (a filesystem reporting a huge
/// DIO alignment would make every partial block a huge read-modify-write).
const MAX_ALIGN: usize = 1 << 20;

/// An opened target and what was learned about it.
pub(crate) struct Opened {
    pub file: File,
    pub kind: TargetKind,
    /// Offset, length and memory alignment for every write.
    pub align: usize,
    /// False when the target refused `O_DIRECT` and buffered writes are used.
    pub direct: bool,
    /// A block device's size in bytes.
    pub device_size: Option<u64>,
}

/// How a regular file is opened (block devices are always opened as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileMode {
    /// Create it, or truncate it to zero, so no stale data survives in ranges
    /// the image leaves as zeros (they become holes).
    Replace,
    /// It must exist; its contents are kept.
    Existing,
}

/// Opens `path` for writing.
pub(crate) fn open(path: &Path, mode: FileMode) -> io::Result<Opened> {
    let kind = match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => TargetKind::BlockDevice,
        Ok(meta) if meta.is_file() => TargetKind::File,
        Ok(_) => {
            return Err(io::Error::other(
                "not a block device or a regular file".to_string(),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && mode == FileMode::Replace => {
            TargetKind::File
        }
        Err(e) => return Err(e),
    };
    let replace = kind == TargetKind::File && mode == FileMode::Replace;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if replace {
        opts.create(true).truncate(true).mode(0o644);
    }
    let (file, direct) = crate::io::direct::open(&opts, path)?;
    // The path may have been swapped between the metadata check and open.
    if file.metadata()?.file_type().is_block_device() != (kind == TargetKind::BlockDevice) {
        return Err(io::Error::other("target changed type while opening"));
    }
    match kind {
        TargetKind::BlockDevice => {
            let device_size = device::size(&file)?;
            let align = device::logical_block_size(&file)?.min(MAX_ALIGN);
            Ok(Opened {
                file,
                kind,
                align,
                direct,
                device_size: Some(device_size),
            })
        }
        TargetKind::File => {
            let align = file_alignment(path).max(MIN_FILE_ALIGN);
            Ok(Opened {
                file,
                kind,
                align,
                direct,
                device_size: None,
            })
        }
    }
}

/// The filesystem's required `O_DIRECT` offset alignment, from `statx`
/// (`STATX_DIOALIGN`, Linux 6.1+). Returns 0 when unknown; the caller raises it
/// to [`MIN_FILE_ALIGN`].
fn file_alignment(path: &Path) -> usize {
    let Ok(cpath) = CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statx is plain data; an all-zero value is valid.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // The raw system call, not libc's `statx` wrapper: the standard library
    // references `statx` weakly, and in the static glibc build of the
    // container image with fat LTO the two references merged into one weak
    // undefined symbol, which the linker left at address 0 (the import
    // crashed jumping there). A system call has no symbol to lose.
    //
    // SAFETY: `cpath` is a valid NUL-terminated string and `stx` a valid,
    // writable statx buffer for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            &mut stx as *mut libc::statx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return 0;
    }
    let align = usize::try_from(stx.stx_dio_offset_align)
        .unwrap_or(0)
        .max(usize::try_from(stx.stx_dio_mem_align).unwrap_or(0));
    if align.is_power_of_two() && align <= MAX_ALIGN {
        align
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn existing_file_is_truncated_and_missing_file_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("t.img");
        let o = open(&p, FileMode::Replace).expect("create");
        assert_eq!(o.kind, TargetKind::File);
        assert!(o.align >= MIN_FILE_ALIGN && o.align.is_power_of_two());
        drop(o);
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(&[7u8; 10000]))
            .expect("stale data");
        let o = open(&p, FileMode::Existing).expect("existing");
        assert_eq!(o.file.metadata().expect("meta").len(), 10000);
        drop(o);
        let o = open(&p, FileMode::Replace).expect("reopen");
        assert_eq!(o.file.metadata().expect("meta").len(), 0);
    }

    #[test]
    fn directories_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = open(dir.path(), FileMode::Replace)
            .err()
            .expect("must fail");
        assert!(err
            .to_string()
            .contains("not a block device or a regular file"));
        let missing = dir.path().join("missing");
        assert!(open(&missing, FileMode::Existing).is_err());
        assert!(!missing.exists());
    }
}
