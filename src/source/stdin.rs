//! Standard input as a source: forward only, never seekable (even when it
//! happens to be a file, the planner must not rely on it).

use std::io;
use std::os::fd::AsFd;

use super::{OpenContext, OpenedSource, Source, SourceError};

/// Standard input (`-`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stdin;

impl Source for Stdin {
    fn display(&self) -> String {
        "stdin".to_string()
    }

    fn open(&self, _: &OpenContext<'_>) -> Result<OpenedSource, SourceError> {
        Ok(open())
    }
}

/// Wraps stdin. The size is known only when stdin is a regular file
/// (`streamdisk convert - T < image`), which lets progress show a percentage.
fn open() -> OpenedSource {
    let stdin = io::stdin();
    let size = regular_file_remaining(&stdin);
    OpenedSource {
        reader: Box::new(io::BufReader::with_capacity(super::READ_BUFFER, stdin)),
        size,
        range: None,
        display: "stdin".to_string(),
        counts_itself: false,
        registry: None,
    }
}

/// Bytes left to read when `fd` is a regular file, from its size and the
/// current offset; `None` for pipes, terminals and sockets.
fn regular_file_remaining(fd: &impl AsFd) -> Option<u64> {
    let st = nix::sys::stat::fstat(fd.as_fd()).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let pos = nix::unistd::lseek(fd.as_fd(), 0, nix::unistd::Whence::SeekCur).ok()?;
    let len = u64::try_from(st.st_size).ok()?;
    len.checked_sub(u64::try_from(pos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::regular_file_remaining;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn size_is_known_only_for_regular_files() {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&[7u8; 1000]).expect("write");
        file.seek(SeekFrom::Start(100)).expect("seek");
        assert_eq!(regular_file_remaining(&file), Some(900));
        let (reader, _writer) = nix::unistd::pipe().expect("pipe");
        assert_eq!(regular_file_remaining(&reader), None);
    }
}
