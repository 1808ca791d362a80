//! A local file (or block device) as a source: a forward reader plus `pread`
//! range reads on a duplicate descriptor.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::path::PathBuf;

use super::{OpenContext, OpenedSource, Source, SourceError};
use crate::io::RangeRead;

/// A local file or block device.
#[derive(Debug, Clone)]
pub(super) struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub(super) fn new(path: PathBuf) -> FileSource {
        FileSource { path }
    }
}

impl Source for FileSource {
    fn display(&self) -> String {
        self.path.display().to_string()
    }

    fn open(&self, _: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        open(&self.path)
    }
}

/// Opens `path` for reading. The size comes from seeking to the end, which
/// works for regular files and block devices alike (metadata `len()` is 0 for
/// a block device).
fn open(path: &Path) -> Result<OpenedSource, SourceError> {
    let display = path.display().to_string();
    let io_err = |what: &str, source: io::Error| SourceError::Io {
        what: format!("{what} {display}"),
        source,
    };
    let mut file = File::open(path).map_err(|e| io_err("cannot open", e))?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.rewind().map(|()| len))
        .ok();
    // A second descriptor for range reads: `pread` does not move the shared
    // file offset, so the forward reader is not disturbed.
    let range_file = file
        .try_clone()
        .map_err(|e| io_err("cannot duplicate", e))?;
    let range: Option<Box<dyn RangeRead>> = if size.is_some() {
        Some(Box::new(FileRange { file: range_file }))
    } else {
        None
    };
    Ok(OpenedSource {
        reader: Box::new(BufReader::with_capacity(
            super::READ_BUFFER,
            CacheDropping::new(file),
        )),
        size,
        range,
        display,
        counts_itself: false,
        registry: None,
    })
}

/// Range reads on a file with `pread`.
struct FileRange {
    file: File,
}

impl RangeRead for FileRange {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }
}

/// Page cache behind the read position is dropped every this many bytes.
const DROP_EVERY: u64 = 4 << 20;

/// A forward reader that drops the page cache it leaves behind.
///
/// Page cache counts against a pod's memory limit, and a forward pass never
/// reads a byte twice: without this, a local import fills a pod's memory
/// limit with the source's pages (BENCHMARKS.md, "Tuning").
/// `POSIX_FADV_DONTNEED` only drops clean
/// pages, so it cannot lose data; pages another reader of the same file had
/// cached are dropped too, which costs that reader a re-read at worst.
struct CacheDropping {
    file: File,
    pos: u64,
    dropped_to: u64,
}

impl CacheDropping {
    fn new(file: File) -> Self {
        CacheDropping {
            file,
            pos: 0,
            dropped_to: 0,
        }
    }
}

impl Read for CacheDropping {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        if self.pos - self.dropped_to >= DROP_EVERY {
            // The range reaches back over the previous one: the kernel only
            // drops a large folio that lies wholly inside the range, and the
            // folio straddling the last boundary was skipped then.
            let from = self.dropped_to.saturating_sub(DROP_EVERY);
            let (Ok(off), Ok(len)) = (
                libc::off_t::try_from(from),
                libc::off_t::try_from(self.pos - from),
            ) else {
                return Ok(n);
            };
            // Advisory: a failure changes memory use, never the data.
            let _ = nix::fcntl::posix_fadvise(
                &self.file,
                off,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
            self.dropped_to = self.pos;
        }
        Ok(n)
    }
}
