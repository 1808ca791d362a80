//! The clone target: what CDI's cloner sends for a host-assisted clone.
//!
//! The source pod POSTs its volume with the header
//! `x-cdi-content-type: filesystem-clone` (a `tar` of the volume, `tar -S`
//! unless preallocated) or `blockdevice-clone` (the device's bytes), either
//! way through Go's snappy *framing* format. The snappy layer is applied
//! here, because the header says so, and never found by the format table:
//!
//! * CDI selects it by the header only; an ordinary upload that happens to
//!   start with the snappy stream identifier (`ff 06 00 00 73 4e 61 50 70 59`)
//!   is copied as it is by CDI, and must be here too;
//! * the clone's bytes are guest data, never sniffed: a raw clone of a disk
//!   that starts with qcow2 magic must be copied as raw, so the pipeline
//!   gets the stream with `FormatChoice::Exactly(Format::Raw)`, which also
//!   turns off wrapper detection; the table is never asked.
//!
//! For a filesystem clone into a block volume, CDI copies the first tar
//! member whose name contains `disk.img`; [`disk_member`] finds it (a GNU
//! sparse member streams expanded), so that it too reaches the pipeline as
//! a raw stream of known length.

use std::io::{self, BufRead};

use crate::container::tar::{MemberKind, TarReader};
use crate::source::SourceError;

use super::body::{Adapted, BodyReader};

/// The request header naming CDI's clone content types.
pub(crate) const HEADER: &str = "x-cdi-content-type";

/// The tar member CDI takes from a filesystem clone for a block target.
pub(crate) const DISK_IMAGE_NAME: &str = "disk.img";

/// A clone stream's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloneKind {
    /// `filesystem-clone`: a tar of the source volume.
    Filesystem,
    /// `blockdevice-clone`: the source device's bytes.
    Blockdevice,
}

impl CloneKind {
    /// The header's value as CDI reads it (exact match; anything else is an
    /// ordinary upload).
    pub(crate) fn from_header(value: Option<&str>) -> Option<CloneKind> {
        match value? {
            "filesystem-clone" => Some(CloneKind::Filesystem),
            "blockdevice-clone" => Some(CloneKind::Blockdevice),
            _ => None,
        }
    }

    /// The header value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CloneKind::Filesystem => "filesystem-clone",
            CloneKind::Blockdevice => "blockdevice-clone",
        }
    }
}

/// Buffer in front of the snappy decoder (one decoded frame is at most
/// 64 KiB; the pipeline reads larger slices).
const READ_BUFFER: usize = 256 << 10;

/// The body with its snappy framing removed. The decoded length is not
/// known: the size is dropped.
pub(crate) fn unsnappy(body: BodyReader) -> Box<dyn BufRead + Send> {
    Box::new(io::BufReader::with_capacity(
        READ_BUFFER,
        snap::read::FrameDecoder::new(body),
    ))
}

/// Why a filesystem clone could not feed a block target.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CloneError {
    /// CDI's wording.
    #[error("no disk image found in tar")]
    NoDiskImage,
}

/// The `disk.img` member of a tar stream, as a stream of its length (the
/// rest of the archive is drained after it, so a cut stream still fails).
pub(crate) fn disk_member(tar: Box<dyn BufRead + Send>) -> Result<Adapted, SourceError> {
    let mut walker = TarReader::new(tar);
    let failed = |e: io::Error| SourceError::Io {
        what: "reading the clone's tar stream".to_string(),
        source: e,
    };
    loop {
        let member = walker
            .next_member()
            .map_err(|e| failed(io::Error::other(e)))?;
        let Some(member) = member else {
            return Err(failed(io::Error::new(
                io::ErrorKind::NotFound,
                CloneError::NoDiskImage,
            )));
        };
        if member.kind == MemberKind::File && member.name.contains(DISK_IMAGE_NAME) {
            tracing::info!(member = %member.name, size = member.size, "clone: taking the disk image from the tar");
            let size = member.size;
            return Ok((Box::new(walker.into_member()), Some(size)));
        }
        tracing::debug!(member = %member.name, "clone: skipping tar member");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn header_values() {
        assert_eq!(
            CloneKind::from_header(Some("filesystem-clone")),
            Some(CloneKind::Filesystem)
        );
        assert_eq!(
            CloneKind::from_header(Some("blockdevice-clone")),
            Some(CloneKind::Blockdevice)
        );
        assert_eq!(CloneKind::from_header(Some("Filesystem-Clone")), None);
        assert_eq!(CloneKind::from_header(Some("")), None);
        assert_eq!(CloneKind::from_header(None), None);
        assert_eq!(CloneKind::Filesystem.name(), "filesystem-clone");
    }

    fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    #[test]
    fn finds_the_disk_image_member() {
        let bytes = tar(&[
            ("lost+found.txt", b"x"),
            ("./disk.img", b"DISK"),
            ("z", b"zz"),
        ]);
        let (mut r, size) = disk_member(Box::new(io::Cursor::new(bytes))).expect("found");
        assert_eq!(size, Some(4));
        let mut got = Vec::new();
        r.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"DISK");

        let bytes = tar(&[("other.img", b"x")]);
        let e = disk_member(Box::new(io::Cursor::new(bytes)))
            .err()
            .expect("no disk");
        assert!(
            crate::error_chain(&e).contains("no disk image found in tar"),
            "{e}"
        );
    }
}
