//! Whole-range zero writes for the CDI pod mode.
//!
//! - [`write_zeros_direct`]: block preallocation. CDI preallocates a blank
//!   block volume by writing zeros, so every block is really allocated on thin
//!   storage; punching or `BLKZEROOUT` would defeat that.
//! - [`wipe_edges`]: after a checksum mismatch, zero the first and last MiB so
//!   that nothing half-written looks like a disk (partition tables, GPT backup
//!   header, filesystem superblocks live there).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::api::{TargetError, TargetKind};
use super::backend::file::{self, FileMode, Opened};
use super::backend::pool::AlignedBuf;
use super::backend::writer::WritePipeline;

/// Bytes zeroed at each edge by [`wipe_edges`].
pub(crate) const EDGE: u64 = 1 << 20;

/// Zero buffer size and writer threads for long zero runs.
const ZERO_BUF: usize = 1 << 20;
const ZERO_THREADS: usize = 4;

fn io_err<'a>(path: &'a Path, what: &str) -> impl Fn(io::Error) -> TargetError + 'a {
    let what = what.to_string();
    move |source| TargetError::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}

/// Writes zeros over `[0, len)` of `path` with `O_DIRECT` aligned writes and
/// `fdatasync`s. A block device must be at least `len` bytes; a regular file is
/// created (or truncated) and ends at exactly `len`.
pub fn write_zeros_direct(path: &Path, len: u64) -> Result<(), TargetError> {
    let opened = file::open(path, FileMode::Replace).map_err(io_err(path, "opening"))?;
    if let Some(dev) = opened.device_size {
        if len > dev {
            return Err(TargetError::TooLarge {
                size: len,
                available: dev,
            });
        }
    }
    zero_span(&opened, 0, len).map_err(io_err(path, "writing zeros to"))?;
    finish(&opened, Some(len)).map_err(io_err(path, "syncing"))
}

/// Zeroes the first and last MiB of a block device or regular file (all of it
/// when smaller than 2 MiB) and `fdatasync`s. A file keeps its length.
pub fn wipe_edges(path: &Path) -> Result<(), TargetError> {
    let opened = file::open(path, FileMode::Existing).map_err(io_err(path, "opening"))?;
    let size = match opened.device_size {
        Some(dev) => dev,
        None => opened
            .file
            .metadata()
            .map_err(io_err(path, "inspecting"))?
            .len(),
    };
    let head_end = size.min(EDGE);
    let tail_start = size.saturating_sub(EDGE).max(head_end);
    let wipe = || -> io::Result<()> {
        zero_span(&opened, 0, head_end)?;
        zero_span(&opened, tail_start, size)
    };
    wipe().map_err(io_err(path, "wiping"))?;
    finish(&opened, Some(size)).map_err(io_err(path, "syncing"))
}

fn finish(opened: &Opened, file_len: Option<u64>) -> io::Result<()> {
    if opened.kind == TargetKind::File {
        if let Some(len) = file_len {
            opened.file.set_len(len)?;
        }
    }
    nix::unistd::fdatasync(&opened.file).map_err(io::Error::from)
}

/// Writes zeros over `[start, end)`: whole blocks through parallel writers,
/// partial blocks at either edge by read-modify-write so bytes outside the span
/// are kept.
fn zero_span(opened: &Opened, start: u64, end: u64) -> io::Result<()> {
    if start >= end {
        return Ok(());
    }
    let align = opened.align as u64;
    let first_full = start.div_ceil(align).saturating_mul(align);
    let last_full = end - end % align;
    if first_full >= last_full {
        // No whole block inside: one or two partial blocks.
        let b0 = start - start % align;
        rmw_zero(opened, b0, start, end.min(b0 + align))?;
        if end > b0 + align {
            rmw_zero(opened, b0 + align, b0 + align, end)?;
        }
        return Ok(());
    }
    if start < first_full {
        rmw_zero(opened, first_full - align, start, first_full)?;
    }
    let file = Arc::new(opened.file.try_clone()?);
    // No pool buffers circulate here: only zero jobs, so the returner is idle.
    let idle = super::backend::pool::BufferPool::new(1, 0, opened.align);
    let writers = WritePipeline::new(file, ZERO_THREADS, idle.returner(), ZERO_BUF, opened.align)?;
    writers.submit_zeros(first_full, last_full)?;
    writers.shutdown()?;
    if end > last_full {
        rmw_zero(opened, last_full, last_full, end)?;
    }
    Ok(())
}

/// Zeroes `[from, to)` inside the block at `block`, keeping its other bytes.
fn rmw_zero(opened: &Opened, block: u64, from: u64, to: u64) -> io::Result<()> {
    let mut buf = AlignedBuf::new(opened.align, opened.align);
    super::backend::read_block(&opened.file, block, buf.as_mut_slice())?;
    let a = usize::try_from(from - block).map_err(io::Error::other)?;
    let b = usize::try_from(to - block).map_err(io::Error::other)?;
    if let Some(r) = buf.as_mut_slice().get_mut(a..b) {
        r.fill(0);
    }
    opened.file.write_all_at(buf.as_slice(), block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_zeros_direct_sizes_and_zeroes_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("blank.img");
        std::fs::write(&p, vec![0xAAu8; 3 << 20]).expect("stale");
        let len = (2 << 20) + 1234;
        write_zeros_direct(&p, len).expect("zeros");
        let data = std::fs::read(&p).expect("read");
        assert_eq!(data.len() as u64, len);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn wipe_edges_keeps_the_middle_and_the_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("disk.img");
        let size = (5 << 20) + 777;
        std::fs::write(&p, vec![0x55u8; size]).expect("fill");
        wipe_edges(&p).expect("wipe");
        let data = std::fs::read(&p).expect("read");
        assert_eq!(data.len(), size);
        let mib = 1 << 20;
        assert!(data[..mib].iter().all(|&b| b == 0));
        assert!(data[size - mib..].iter().all(|&b| b == 0));
        assert!(data[mib..size - mib].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn wipe_edges_on_a_small_file_zeroes_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("small.img");
        std::fs::write(&p, vec![0x55u8; 10_000]).expect("fill");
        wipe_edges(&p).expect("wipe");
        let data = std::fs::read(&p).expect("read");
        assert_eq!(data.len(), 10_000);
        assert!(data.iter().all(|&b| b == 0));
    }

    #[test]
    fn wipe_edges_refuses_a_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(wipe_edges(&dir.path().join("nope")).is_err());
    }
}
