//! The conversion matrix: one image, every source kind, every target kind, each result
//! compared byte for byte with the oracle (`qemu-img convert -O raw`).
//!
//! Failures are collected rather than raised at the first one, so a failing test lists
//! every (source, target) pair that went wrong, each with its command line, exit status,
//! the last lines of stderr and the first differing offset.

use std::fmt;
use std::fs;
use std::path::Path;

use super::server::{Body, TestServer};
use super::{
    fill_file, first_difference, range_is, tempdir, Input, LoopDevice, MemCgroup, Run, Streamdisk,
};

/// Where streamdisk reads the image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A local path.
    File,
    /// `-`, fed through a pipe (not seekable).
    Stdin,
    /// HTTP from a server with Range support.
    HttpRange,
    /// HTTP from a server without Range support.
    HttpNoRange,
}

impl SourceKind {
    pub const ALL: [SourceKind; 4] = [
        SourceKind::File,
        SourceKind::Stdin,
        SourceKind::HttpRange,
        SourceKind::HttpNoRange,
    ];
    /// The three kinds issue 2 names (file, stdin, HTTP with Range).
    pub const CORE: [SourceKind; 3] = [SourceKind::File, SourceKind::Stdin, SourceKind::HttpRange];
}

/// Where streamdisk writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A file that does not exist yet.
    NewFile,
    /// A file that exists, larger than the image and full of 0xA5: the result must be
    /// exactly the image (zero ranges read as zero, size = virtual size).
    StaleFile,
    /// A loop block device over a file full of 0xA5 (root only; skipped otherwise).
    Loop,
}

impl TargetKind {
    pub const ALL: [TargetKind; 3] = [TargetKind::NewFile, TargetKind::StaleFile, TargetKind::Loop];
    pub const FILE_AND_LOOP: [TargetKind; 2] = [TargetKind::NewFile, TargetKind::Loop];
}

/// Stale data byte in pre-existing targets.
pub const STALE: u8 = 0xA5;

/// One failed conversion, described for the test log.
pub struct Failure {
    pub what: String,
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "* {}: {}", self.what, self.detail)
    }
}

fn describe(run: &Run) -> String {
    let tail: Vec<&str> = run.stderr.lines().rev().take(6).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "exit {} for {:?}; stderr tail: {}",
        run.status,
        run.args,
        tail.join(" | ")
    )
}

/// Converts `image` once from `source` into `target` and compares with `oracle`.
/// `extra` are additional CLI arguments.
pub fn convert_once(
    image: &Path,
    oracle: &Path,
    source: SourceKind,
    target: TargetKind,
    extra: &[&str],
) -> Result<(), String> {
    let dir = tempdir();
    let vsize = fs::metadata(oracle).map_err(|e| e.to_string())?.len();
    let _server;
    let src_arg = match source {
        SourceKind::File => image.as_os_str().to_owned(),
        SourceKind::Stdin => "-".into(),
        SourceKind::HttpRange | SourceKind::HttpNoRange => {
            let srv = TestServer::builder(Body::file(image))
                .ranges(source == SourceKind::HttpRange)
                .start();
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let url = srv.url(&format!("/{name}"));
            _server = srv;
            url.into()
        }
    };
    let input = if source == SourceKind::Stdin {
        Input::Pipe(image.to_path_buf())
    } else {
        Input::Null
    };
    match target {
        TargetKind::NewFile | TargetKind::StaleFile => {
            let out = dir.path().join("out.raw");
            if target == TargetKind::StaleFile {
                fill_file(&out, vsize * 2 + 12345, STALE);
            }
            let run = Streamdisk::convert(&src_arg, &out)
                .args(extra)
                .input(input)
                .try_run()?;
            if !run.success() {
                return Err(describe(&run));
            }
            let got = fs::metadata(&out)
                .map_err(|e| format!("target file {}: {e}", out.display()))?
                .len();
            if got != vsize {
                return Err(format!("target size {got}, expected virtual size {vsize}"));
            }
            if let Some(off) = first_difference(&out, oracle, vsize) {
                return Err(format!("output differs from qemu-img's at offset {off}"));
            }
            Ok(())
        }
        TargetKind::Loop => {
            // Backing file: the virtual size rounded up to 4 KiB, plus a 64 KiB tail that
            // must stay untouched.
            let body = vsize.div_ceil(4096) * 4096;
            let backing = dir.path().join("loop.img");
            fill_file(&backing, body + 65536, STALE);
            let Some(lo) = LoopDevice::attach(&backing) else {
                return Ok(());
            };
            let run = Streamdisk::convert(&src_arg, &lo.dev)
                .args(extra)
                .input(input)
                .try_run()?;
            drop(lo);
            if !run.success() {
                return Err(describe(&run));
            }
            if let Some(off) = first_difference(&backing, oracle, vsize) {
                return Err(format!(
                    "loop device content differs from qemu-img's at offset {off}"
                ));
            }
            if !range_is(&backing, body, 65536, STALE) {
                return Err(format!(
                    "bytes past the virtual size (from {body}) on the device were changed"
                ));
            }
            Ok(())
        }
    }
}

/// Runs every (source, target) pair and returns the failures.
pub fn run_matrix(
    label: &str,
    image: &Path,
    oracle: &Path,
    sources: &[SourceKind],
    targets: &[TargetKind],
    extra: &[&str],
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for &s in sources {
        for &t in targets {
            if let Err(detail) = convert_once(image, oracle, s, t, extra) {
                failures.push(Failure {
                    what: format!("{label} from {s:?} into {t:?}"),
                    detail,
                });
            }
        }
    }
    failures
}

/// Panics listing every failure, if any.
pub fn assert_no_failures(failures: &[Failure]) {
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
        panic!(
            "{} conversion(s) failed:\n{}",
            failures.len(),
            list.join("\n")
        );
    }
}

/// Runs `src` from a file, a pipe and HTTP with ranges, inside a 64 MiB cgroup when
/// root: each run must be refused naming one of `words`, and the target never grows
/// past `vsize`.
pub fn assert_refused_everywhere(src: &Path, words: &[&str], vsize: u64) {
    let dir = crate::common::tempdir();
    for s in [SourceKind::File, SourceKind::Stdin, SourceKind::HttpRange] {
        let out = dir.path().join("out.raw");
        let _ = fs::remove_file(&out);
        let _srv;
        let (arg, input) = match s {
            SourceKind::File => (src.as_os_str().to_owned(), Input::Null),
            SourceKind::Stdin => ("-".into(), Input::Pipe(src.to_path_buf())),
            _ => {
                let srv = TestServer::serve(Body::file(src));
                let u = srv.url("/bad.img");
                _srv = srv;
                (u.into(), Input::Null)
            }
        };
        let cg = MemCgroup::new(64 << 20);
        let mut cmd = Streamdisk::convert(&arg, &out).input(input);
        if let Some(cg) = &cg {
            cmd = cmd.in_cgroup(cg);
        }
        let run = cmd.run();
        let line = run
            .check_refused(words)
            .unwrap_or_else(|e| panic!("{} from {s:?}: {e}", src.display()));
        assert_eq!(run.status.code(), Some(1), "{line}");
        if let Ok(m) = fs::metadata(&out) {
            assert!(
                m.len() <= vsize,
                "{} from {s:?}: target grew to {}",
                src.display(),
                m.len()
            );
        }
    }
}
