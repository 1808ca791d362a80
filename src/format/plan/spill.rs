//! Scratch file for stream bytes that cannot be placed yet (non-seekable sources).
//!
//! The file is a log: bytes are appended in the order they are held and an
//! index maps host ranges to log offsets. It is opened with `O_DIRECT` (so the
//! spill does not fill the page cache, which counts against a pod's memory
//! limit) and written in aligned blocks from an aligned staging buffer; if the
//! filesystem refuses `O_DIRECT` (tmpfs), it falls back to buffered I/O and
//! says so. The file is unlinked right after creation, so it disappears when
//! dropped, even if the process dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::io::{direct, AlignedBuf};

/// Alignment of O_DIRECT I/O (covers 512 and 4096 byte logical blocks).
const ALIGN: usize = 4096;
/// Staging buffer size: full blocks of it are written at once.
const STAGE: usize = 1 << 20;

/// One contiguous host range stored contiguously in the log.
#[derive(Debug, Clone, Copy)]
struct Seg {
    host: u64,
    len: u64,
    log: u64,
}

pub(super) struct SpillFile {
    file: File,
    direct: bool,
    /// Bytes written to the file (a multiple of ALIGN).
    flushed: u64,
    stage: AlignedBuf,
    stage_len: usize,
    index: Vec<Seg>,
}

impl SpillFile {
    /// Creates an unlinked scratch file in `dir`.
    pub(super) fn create(dir: &Path) -> io::Result<SpillFile> {
        let name = dir.join(format!(
            ".streamdisk-spill-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create_new(true);
        let (file, direct) = direct::open(&opts, &name)?;
        if !direct {
            tracing::warn!(dir = %dir.display(), "scratch filesystem refuses O_DIRECT; spilling through the page cache");
        }
        std::fs::remove_file(&name)?;
        tracing::info!(dir = %dir.display(), "spilling out-of-order image data to a scratch file");
        Ok(SpillFile {
            file,
            direct,
            flushed: 0,
            stage: AlignedBuf::new(STAGE, ALIGN),
            stage_len: 0,
            index: Vec::new(),
        })
    }

    /// Total bytes spilled.
    pub(super) fn len(&self) -> u64 {
        self.flushed + self.stage_len as u64
    }

    /// Appends bytes found at host offset `host`.
    pub(super) fn append(&mut self, host: u64, mut bytes: &[u8]) -> io::Result<()> {
        let log = self.len();
        let n = bytes.len() as u64;
        match self.index.last_mut() {
            Some(s) if s.host.checked_add(s.len) == Some(host) && s.log + s.len == log => {
                s.len += n
            }
            _ => self.index.push(Seg { host, len: n, log }),
        }
        while !bytes.is_empty() {
            let room = STAGE - self.stage_len;
            let k = room.min(bytes.len());
            let (a, b) = bytes.split_at(k);
            let dst = self
                .stage
                .as_mut_slice()
                .get_mut(self.stage_len..self.stage_len + k)
                .ok_or_else(|| io::Error::other("stage bounds"))?;
            dst.copy_from_slice(a);
            self.stage_len += k;
            bytes = b;
            if self.stage_len == STAGE {
                self.flush_stage()?;
            }
        }
        Ok(())
    }

    fn flush_stage(&mut self) -> io::Result<()> {
        let data = self
            .stage
            .as_slice()
            .get(..STAGE)
            .ok_or_else(|| io::Error::other("stage"))?;
        match self.file.write_all_at(data, self.flushed) {
            Ok(()) => {}
            Err(e) if self.direct && direct::refused(&e) => {
                tracing::warn!(error = %e, "scratch file refuses O_DIRECT I/O; falling back to buffered");
                direct::disable(&self.file)?;
                self.direct = false;
                self.file.write_all_at(data, self.flushed)?;
            }
            Err(e) => return Err(e),
        }
        self.flushed += STAGE as u64;
        self.stage_len = 0;
        Ok(())
    }
}

impl SpillFile {
    /// Reads host bytes `[host, host + out.len())`; false if not all were spilled.
    pub(super) fn read(&mut self, host: u64, out: &mut [u8]) -> io::Result<bool> {
        let end = host.saturating_add(out.len() as u64);
        let mut cur = host;
        // Segments are in increasing host order (appends happen in stream order).
        let start = self.index.partition_point(|s| s.host + s.len <= host);
        let segs: Vec<Seg> = self.index.get(start..).unwrap_or_default().to_vec();
        for s in segs {
            if cur >= end {
                break;
            }
            if s.host > cur {
                return Ok(false);
            }
            let seg_end = s.host + s.len;
            let b = seg_end.min(end);
            if b <= cur {
                continue;
            }
            let log = s.log + (cur - s.host);
            let dst = out
                .get_mut((cur - host) as usize..(b - host) as usize)
                .ok_or_else(|| io::Error::other("read bounds"))?;
            self.read_log(log, dst)?;
            cur = b;
        }
        Ok(cur >= end)
    }

    /// Reads log bytes, from the file and/or the staging buffer.
    fn read_log(&mut self, log: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let pos = log + done as u64;
            let want = out.len() - done;
            if pos >= self.flushed {
                let off = (pos - self.flushed) as usize;
                let src = self
                    .stage
                    .as_slice()
                    .get(off..off + want)
                    .ok_or_else(|| io::Error::other("stage read bounds"))?;
                out.get_mut(done..)
                    .ok_or_else(|| io::Error::other("bounds"))?
                    .copy_from_slice(src);
                return Ok(());
            }
            // Aligned read from the file, at most one staging-sized block.
            let a = pos & !(ALIGN as u64 - 1);
            let lim = (self.flushed - pos).min(want as u64) as usize;
            let span = ((pos - a) as usize + lim).div_ceil(ALIGN) * ALIGN;
            let span = span.min(STAGE);
            let mut tmp = AlignedBuf::new(span, ALIGN);
            let buf = tmp
                .as_mut_slice()
                .get_mut(..span)
                .ok_or_else(|| io::Error::other("tmp"))?;
            self.file.read_exact_at(buf, a)?;
            let skip = (pos - a) as usize;
            let n = lim.min(span - skip);
            out.get_mut(done..done + n)
                .ok_or_else(|| io::Error::other("bounds"))?
                .copy_from_slice(
                    buf.get(skip..skip + n)
                        .ok_or_else(|| io::Error::other("tmp"))?,
                );
            done += n;
        }
        Ok(())
    }
}
