//! One upload, written: the body through the shared pipeline into the
//! volume, with the importer's space rules, and the outcome CDI's upload
//! server reports for each kind of upload.
//!
//! | upload | pipeline | after | `preallocationApplied` |
//! |---|---|---|---|
//! | disk image | wrappers, detection, decode, O_DIRECT target | resize, preallocate, 0660, fsync (file); fsync (block) | `PREALLOCATION` |
//! | archive | wrappers, tar extracted into the data volume | syncfs | false |
//! | `blockdevice-clone` | snappy, raw as is | preallocate, 0660, fsync (file); fsync (block) | false |
//! | `filesystem-clone`, filesystem volume | snappy, tar extracted as is | syncfs | true |
//! | `filesystem-clone`, block volume | snappy, the tar's `disk.img`, raw | fsync | false |
//!
//! (The last column is what CDI's server writes into the termination
//! message for each case, odd as the filesystem clone's `true` is.)
//!
//! Nothing goes to scratch space: a layout that would need it fails.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checksum::Checksum;
use crate::format::{Format, PlanOptions, SpillPolicy};
use crate::job::{Content, FormatChoice, ImportError, ImportJob, InputOptions};
use crate::pace::Pace;
use crate::progress::Counter;
use crate::source::SourceSpec;
use crate::target::TargetOptions;

use super::super::volume::{self, SpaceRules};
use super::body::{BodyReader, BodySource};
use super::clone::{self, CloneKind};

/// Where uploads go.
#[derive(Debug, Clone)]
pub(crate) struct Volume {
    /// The disk image: the block device, or disk.img.
    pub disk: PathBuf,
    /// `disk` is a block device.
    pub block: bool,
    /// The filesystem volume (`/data`): archives and filesystem clones are
    /// extracted here, and its free space is the budget. `None` when the
    /// target is a single file or device (the CLI given one).
    pub data_dir: Option<PathBuf>,
    /// Size and preallocation rules.
    pub rules: SpaceRules,
}

impl Volume {
    /// The directory whose free space counts for a file target.
    fn space_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(d) => d.clone(),
            None => self
                .disk
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }
}

/// What the request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A disk image, in any format the pipeline reads.
    Disk,
    /// A tar archive (CDI's `archive` content).
    Archive,
    /// A host-assisted clone stream.
    Clone(CloneKind),
}

/// One upload to write.
pub(crate) struct Upload {
    pub kind: Kind,
    pub body: BodyReader,
    /// The image's length, when the request says it (`Content-Length` of a
    /// plain body).
    pub size: Option<u64>,
    /// Verify this over the bytes received.
    pub checksum: Option<Checksum>,
}

/// A written upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// What the termination message says.
    pub preallocation_applied: bool,
    /// A clone target's upload (`Clone Complete`).
    pub clone: bool,
}

/// Why an upload failed, by the answer it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The image does not fit: CDI answers 400.
    NoCapacity(String),
    /// Anything else: CDI answers 500.
    Failed(String),
}

/// Writes `up` into `vol` on the calling (blocking) thread.
pub(crate) fn write(
    vol: &Volume,
    up: Upload,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
) -> Result<Written, WriteError> {
    let Upload {
        kind,
        body,
        size,
        checksum,
    } = up;
    match kind {
        Kind::Disk => {
            let source = SourceSpec::new(BodySource::plain(body, size));
            let input = InputOptions {
                checksum,
                ..InputOptions::new(source)
            };
            disk(vol, input, true, rt, counter).map(|()| Written {
                preallocation_applied: vol.rules.preallocation,
                clone: false,
            })
        }
        Kind::Archive => {
            let source = SourceSpec::new(BodySource::plain(body, size));
            let input = InputOptions {
                checksum,
                content: Content::Archive,
                ..InputOptions::new(source)
            };
            extract(vol, input, rt, counter).map(|()| Written {
                preallocation_applied: false,
                clone: false,
            })
        }
        Kind::Clone(CloneKind::Blockdevice) => {
            let source =
                BodySource::adapted(body, None, Box::new(|b, _| Ok((clone::unsnappy(b), None))));
            let input = raw_input(SourceSpec::new(source), Content::Disk);
            disk(vol, input, false, rt, counter).map(|()| Written {
                preallocation_applied: false,
                clone: true,
            })
        }
        Kind::Clone(CloneKind::Filesystem) if vol.block => {
            let source = BodySource::adapted(
                body,
                None,
                Box::new(|b, _| clone::disk_member(clone::unsnappy(b))),
            );
            let input = raw_input(SourceSpec::new(source), Content::Disk);
            disk(vol, input, false, rt, counter).map(|()| Written {
                preallocation_applied: false,
                clone: true,
            })
        }
        Kind::Clone(CloneKind::Filesystem) => {
            let source =
                BodySource::adapted(body, None, Box::new(|b, _| Ok((clone::unsnappy(b), None))));
            let input = raw_input(SourceSpec::new(source), Content::Archive);
            extract(vol, input, rt, counter)?;
            if vol.rules.preallocation {
                if let Some(dir) = &vol.data_dir {
                    preallocate_disk_img(&dir.join(clone::DISK_IMAGE_NAME))?;
                }
            }
            Ok(Written {
                preallocation_applied: true,
                clone: true,
            })
        }
    }
}

/// A clone stream: taken as it is, never sniffed (see [`clone`]).
fn raw_input(source: SourceSpec, content: Content) -> InputOptions {
    InputOptions {
        format: FormatChoice::Exactly(Format::Raw),
        content,
        ..InputOptions::new(source)
    }
}

fn unable(e: impl std::fmt::Display) -> WriteError {
    WriteError::Failed(e.to_string())
}

/// The pipeline's failure as CDI's server classifies it.
fn classify(e: &ImportError) -> WriteError {
    if let Some((size, available)) = e.too_large() {
        return WriteError::NoCapacity(format!(
            "virtual image size {size} is larger than the reported available storage {available}. A larger PVC is required"
        ));
    }
    let msg = crate::cdi::outcome::controller_wording(&e.message());
    if msg.contains("no space left on device") || msg.contains("disk quota exceeded") {
        return WriteError::NoCapacity(msg);
    }
    if e.scratch_required() {
        return WriteError::Failed(format!(
            "{msg}; the upload server writes without scratch space"
        ));
    }
    WriteError::Failed(msg)
}

/// A disk image (or a raw clone stream) into the device or disk.img.
/// `resize`: apply CDI's resize after the write (not for clones).
fn disk(
    vol: &Volume,
    input: InputOptions,
    resize: bool,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
) -> Result<(), WriteError> {
    // A leftover from an earlier attempt must not count as used space.
    if !vol.block {
        volume::clean(&vol.disk)
            .map_err(|e| unable(format!("removing {}: {e}", vol.disk.display())))?;
    }
    let available =
        volume::available_space(vol.block, &vol.disk, &vol.space_dir(), vol.rules.image_size)
            .map_err(WriteError::Failed)?;
    tracing::info!(available, target = %vol.disk.display(), "target space");
    let job = ImportJob {
        input,
        target: vol.disk.clone(),
        target_opts: TargetOptions {
            available: Some(available),
            ..TargetOptions::default()
        },
        plan: PlanOptions {
            spill: SpillPolicy::Forbid,
            ..PlanOptions::default()
        },
    };
    let cleanup = |vol: &Volume| {
        if !vol.block {
            let _ = volume::clean(&vol.disk);
        }
    };
    match crate::pipeline::run(&job, rt, counter) {
        Ok(report) => {
            tracing::info!(
                bytes_received = report.bytes_received,
                virtual_size = report.virtual_size,
                bytes_written = report.bytes_written,
                "image written"
            );
        }
        Err(e @ ImportError::ChecksumMismatch { .. }) => {
            volume::remove_target(vol.block, &vol.disk);
            return Err(WriteError::Failed(e.message()));
        }
        Err(e) => {
            cleanup(vol);
            return Err(classify(&e));
        }
    }
    let finish = if vol.block {
        volume::sync_path(&vol.disk)
    } else {
        let rules = if resize {
            vol.rules
        } else {
            SpaceRules {
                image_size: None,
                ..vol.rules
            }
        };
        volume::finish_file(&vol.disk, &rules, available)
            .and_then(|()| volume::sync_path(&vol.space_dir()))
    };
    finish.map_err(|e| {
        cleanup(vol);
        let msg = crate::cdi::outcome::controller_wording(&e.to_string());
        if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)) {
            WriteError::NoCapacity(msg)
        } else {
            WriteError::Failed(msg)
        }
    })
}

/// A tar (an archive upload, or a filesystem clone) into the data volume.
fn extract(
    vol: &Volume,
    input: InputOptions,
    rt: &tokio::runtime::Handle,
    counter: Arc<Counter>,
) -> Result<(), WriteError> {
    let Some(dir) = vol.data_dir.clone().filter(|_| !vol.block) else {
        return Err(unable(
            "archive content needs a filesystem volume, but the target is a block device or a single file",
        ));
    };
    let extracted = crate::pipeline::open_input(&input, rt, counter, &Pace::new())
        .and_then(|i| crate::pipeline::extract_archive(i, &dir));
    match extracted {
        Ok(_) => volume::syncfs(&dir).map_err(unable),
        Err(e @ ImportError::ChecksumMismatch { .. }) => {
            if let Err(w) = crate::archive::remove_contents(&dir) {
                tracing::warn!(error = %w, "failed to clean the volume after a checksum mismatch");
            }
            Err(WriteError::Failed(e.message()))
        }
        Err(e) => Err(classify(&e)),
    }
}

/// Allocates every block of an extracted disk.img (a preallocated clone's
/// tar carries its zeros, which extraction leaves as holes).
fn preallocate_disk_img(path: &Path) -> Result<(), WriteError> {
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(unable(format!("opening {}: {e}", path.display()))),
    };
    let len = f
        .metadata()
        .map_err(|e| unable(format!("inspecting {}: {e}", path.display())))?
        .len();
    crate::cdi::blank::allocate(&f, len)
        .and_then(|()| f.sync_all())
        .map_err(|e| unable(format!("preallocating {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_errors_are_told_apart() {
        let too_large = ImportError::Target(crate::target::TargetError::TooLarge {
            size: 10,
            available: 5,
        });
        assert_eq!(
            classify(&too_large),
            WriteError::NoCapacity(
                "virtual image size 10 is larger than the reported available storage 5. A larger PVC is required".into()
            )
        );
        let enospc = ImportError::Read {
            display: "x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(
            matches!(classify(&enospc), WriteError::NoCapacity(m) if m.contains("no space left on device"))
        );
        let other = ImportError::Read {
            display: "the upload".into(),
            source: io::Error::other("connection closed"),
        };
        assert!(
            matches!(classify(&other), WriteError::Failed(m) if m.contains("connection closed"))
        );
    }

    #[test]
    fn space_dir_of_a_lone_file() {
        let v = Volume {
            disk: PathBuf::from("disk.img"),
            block: false,
            data_dir: None,
            rules: SpaceRules {
                image_size: None,
                overhead: 0.0,
                preallocation: false,
            },
        };
        assert_eq!(v.space_dir(), PathBuf::from("."));
        let v = Volume {
            disk: PathBuf::from("/a/b/disk.img"),
            ..v
        };
        assert_eq!(v.space_dir(), PathBuf::from("/a/b"));
    }
}
