//! `cdi-image-size-detection`: the virtual size of the disk image on a
//! PVC, for CDI's host-assisted clones.
//!
//! The clone controller runs `/usr/bin/cdi-image-size-detection -image-path
//! /data/disk.img` from the importer image with the source PVC at `/data`,
//! and reads back either the termination message (the virtual size in
//! decimal) or the exit code, which names the failure
//! (`pkg/controller/common/util.go`): 1 bad arguments, 2 invalid file,
//! 3 invalid path, 4 termination-file failure, 5 unknown.
//!
//! CDI asks `qemu-img info`; this asks [`crate::info::probe_source`], the
//! probe of `streamdisk info`, so every format streamdisk decodes is sized
//! by its own header. What qemu-img would say is kept where the two could
//! differ: a compressed file is sized as the raw file it is on the volume
//! (qemu-img does not look inside gzip or xz, and a clone copies the file
//! as it is), and raw sizes are rounded up to 512 bytes as qemu's are.
//! Formats streamdisk refuses are an invalid file (exit 2), with the
//! refusal in the log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::goflag::{self, FlagError, Kind, Spec};
use super::paths::{PodPaths, POD_ROOT_ENV};
use super::{gourl, termination};
use crate::job::InputOptions;
use crate::source::SourceSpec;

/// The exit codes CDI's clone controller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// 1: a flag missing or malformed.
    BadArguments = 1,
    /// 2: the image could not be read or sized.
    InvalidFile = 2,
    /// 3: `-scheme` + `-image-path` is not a URL.
    InvalidPath = 3,
    /// 4: the termination message could not be written.
    BadTermFile = 4,
    /// 5: anything else.
    Unknown = 5,
}

/// CDI's flags.
const SPECS: &[Spec] = &[
    Spec {
        name: "image-path",
        kind: Kind::Str,
        default: "",
        usage: "(Mandatory) URL address of the virtual image.",
    },
    Spec {
        name: "scheme",
        kind: Kind::Str,
        default: "file://",
        usage: "(Optional) Virtual image's URI scheme.",
    },
];

/// Runs the tool with `args` (after the program name) and returns its exit
/// code. `program` names it in the usage text.
pub fn run(program: &str, args: Vec<OsString>) -> i32 {
    super::logging::init(None);
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let root = std::env::var(POD_ROOT_ENV).unwrap_or_default();
    let paths = PodPaths::from_override(Some(&root));
    match detect(program, &args, &paths.termination_log) {
        Ok(()) => 0,
        Err(code) => code as i32,
    }
}

/// The tool's steps in CDI's order; `Err` is the exit code, already logged.
fn detect(program: &str, args: &[String], termination_log: &Path) -> Result<(), Exit> {
    let values = match goflag::parse(args, SPECS) {
        Ok(v) => v,
        Err(FlagError::Help) => {
            eprint!("{}", goflag::usage(program, SPECS));
            return Ok(());
        }
        Err(FlagError::Bad(m)) => {
            // Go's flag package would exit 2, which the controller reads as
            // "invalid file"; a bad command line is "bad arguments".
            eprintln!("{m}");
            eprint!("{}", goflag::usage(program, SPECS));
            return Err(Exit::BadArguments);
        }
    };
    let (image_path, scheme) = match values.as_slice() {
        [p, s] => (p.as_str(), s.as_str()),
        _ => return Err(Exit::Unknown),
    };
    if image_path.is_empty() {
        tracing::error!("One or more mandatory parameters are missing");
        return Err(Exit::BadArguments);
    }
    tracing::info!("Initializing size-detection pod");
    let url_scheme = gourl::parse_scheme(&format!("{scheme}{image_path}")).map_err(|e| {
        tracing::error!("Unable to parse the provided URL: '{e}'");
        Exit::InvalidPath
    })?;
    let size = virtual_size(&url_scheme, Path::new(image_path)).map_err(|(code, e)| {
        tracing::error!("Unable to extract information from '{image_path}': '{e}'");
        code
    })?;
    termination::write(termination_log, &size.to_string()).map_err(|e| {
        tracing::error!(
            "Unable to write to termination file: 'could not create termination message file: {e}'"
        );
        Exit::BadTermFile
    })?;
    tracing::info!(virtual_size = size, "Size-detection binary has completed");
    Ok(())
}

/// The virtual size of the image at `path`, as `qemu-img info` reports it.
fn virtual_size(url_scheme: &str, path: &Path) -> Result<u64, (Exit, String)> {
    let invalid = |m: String| (Exit::InvalidFile, m);
    match url_scheme {
        "" | "file" => {}
        "nbd+unix" => {
            return Err(invalid(
                "nbd+unix images are not supported by streamdisk's size detection".into(),
            ))
        }
        other => return Err(invalid(format!("not valid schema {other}"))),
    }
    // qemu-img refuses what is not a regular file or a block device.
    let meta = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?;
    if meta.is_dir() {
        return Err(invalid(format!(
            "'file' driver requires '{}' to be a regular file",
            path.display()
        )));
    }
    let rt = crate::source::runtime().map_err(|e| (Exit::Unknown, e.to_string()))?;
    let opts = InputOptions::new(SourceSpec::file(PathBuf::from(path)));
    let info = crate::info::probe_source(&opts, rt.handle())
        .map_err(|e| invalid(crate::error_chain(&e)))?;
    rt.shutdown_background();
    if !info.wrappers.is_empty() {
        // qemu-img sees the compressed file as a raw image of its own length.
        let len = info.source_size.unwrap_or(meta.len());
        return Ok(len.div_ceil(512).saturating_mul(512));
    }
    info.image
        .virtual_size
        .ok_or_else(|| invalid("the image's virtual size is unknown".into()))
}
