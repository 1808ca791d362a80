//! Block-device probing and the kernel calls that zero device ranges.
//!
//! Each function is a thin, checked wrapper around one ioctl or syscall so the
//! zeroing strategy can try them in order and remember which one the device
//! supports.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};

// BLKGETSIZE64 = _IOR(0x12, 114, size_t): the device size in bytes.
nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
// BLKSSZGET = _IO(0x12, 104), but it writes an int through its argument.
nix::ioctl_read_bad!(blk_sszget, nix::request_code_none!(0x12, 104), libc::c_int);
// BLKZEROOUT = _IO(0x12, 127), taking a pointer to {start, len} in bytes.
nix::ioctl_write_ptr_bad!(blk_zeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

/// Size in bytes of the block device open as `file`.
pub(crate) fn size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the duration of the call and `size` is a
    // valid, writable u64, which is what BLKGETSIZE64 stores through.
    unsafe { blk_getsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(size)
}

/// Logical block size of the block device open as `file`: the unit `O_DIRECT`
/// transfers must be aligned to.
pub(crate) fn logical_block_size(file: &File) -> io::Result<usize> {
    let mut ssz: libc::c_int = 0;
    // SAFETY: the fd is open and `ssz` is a valid, writable int.
    unsafe { blk_sszget(file.as_raw_fd(), &mut ssz) }.map_err(io::Error::from)?;
    let ssz = usize::try_from(ssz).map_err(|_| io::Error::other("negative logical block size"))?;
    if !ssz.is_power_of_two() || ssz < 512 {
        return Err(io::Error::other(format!(
            "device reports an invalid logical block size {ssz}"
        )));
    }
    Ok(ssz)
}

/// Size of the block device at `path`, for callers that only need the number
/// (CDI's available-space computation).
pub fn size_of_path(path: &Path) -> io::Result<u64> {
    let file = File::open(path)?;
    size(&file)
}

/// Deallocates and zeroes `[offset, offset+len)` with
/// `fallocate(PUNCH_HOLE|KEEP_SIZE)`. On a block device the kernel turns this
/// into a zero-out that must not fall back to writing zeros, so it either
/// deallocates (thin devices, loop devices over sparse files) or fails with
/// `EOPNOTSUPP`.
pub(crate) fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (off, len) = off_t_pair(offset, len)?;
    fallocate(
        file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    )
    .map_err(io::Error::from)
}

/// Zeroes `[offset, offset+len)` with `BLKZEROOUT`. Unlike punching, this may
/// allocate: on a loop device it writes real zero blocks into the backing file.
pub(crate) fn zeroout(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range = [offset, len];
    // SAFETY: the fd is open and `range` is a valid [u64; 2] the kernel reads.
    unsafe { blk_zeroout(file.as_raw_fd(), &range) }.map_err(io::Error::from)?;
    Ok(())
}

fn off_t_pair(offset: u64, len: u64) -> io::Result<(libc::off_t, libc::off_t)> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::other(format!("offset {offset} out of range")))?;
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::other(format!("length {len} out of range")))?;
    Ok((off, len))
}

/// True for the errors that mean "this zeroing method is not available here"
/// (as opposed to an I/O failure that must be reported).
pub(crate) fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP)
            | Some(libc::ENOTTY)
            | Some(libc::EINVAL)
            | Some(libc::ENOSYS)
            | Some(libc::ENODEV)
            | Some(libc::EPERM)
            | Some(libc::EACCES)
    )
}
