//! A local file (or block device) as a source: a forward reader plus `pread`
//! range reads on a duplicate descriptor.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{OpenedSource, RangeRead, SourceError};

/// Opens `path` for reading. The size comes from seeking to the end, which
/// works for regular files and block devices alike (metadata `len()` is 0 for
/// a block device).
pub(super) fn open(path: &Path) -> Result<OpenedSource, SourceError> {
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
        reader: Box::new(file),
        size,
        range,
        display,
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
