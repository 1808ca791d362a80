//! Shared support for the end-to-end tests.
//!
//! - [`server`]: a fault-injecting HTTP/1.1 (and HTTPS) server on loopback.
//! - [`qcow2`]: a tiny reader/patcher of qcow2 headers and tables, used to check that an
//!   image really has the layout a test intends and to craft broken images.
//! - Here: the qemu-img/qemu-io wrappers (images are always made at test time), the oracle
//!   (`qemu-img convert -O raw`), byte comparison, running the `streamdisk` binary with a
//!   timeout, loop devices and memory cgroups.
//!
//! Every test binary includes this module with `mod common;` and uses only part of it.
#![allow(dead_code)]

pub mod kube_api;
pub mod matrix;
pub mod objstore;
pub mod qcow2;
pub mod registry;
pub mod server;

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use streamdisk::testing::Prng;

/// How long any one streamdisk run may take before the test calls it a hang.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_streamdisk")
}

/// CDI's image server for node pull, a binary of its own.
pub fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cdi-containerimage-server")
}

/// A symbolic link named `name` in `dir` to the binary under test: CDI's
/// tools (`cdi-importer`, `cdi-image-size-detection`, ...) are chosen by
/// the name the binary is run as.
pub fn bin_as(dir: &Path, name: &str) -> PathBuf {
    let link = dir.join(name);
    std::os::unix::fs::symlink(bin(), &link).expect("symlink to the binary");
    link
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("streamdisk-test-")
        .tempdir()
        .expect("create temp dir")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    nix::unistd::geteuid().is_root()
}

/// Whether an external tool can be run (`TOOL --version` or `--help` succeeds).
pub fn have_tool(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn run_tool(prog: &str, args: &[&OsStr]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e} (is it installed?)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{prog} {:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        args,
        out.status
    );
    stdout
}

/// Runs `qemu-img ARGS`; panics with its output on failure; returns stdout.
pub fn qemu_img<S: AsRef<OsStr>>(args: &[S]) -> String {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_ref()).collect();
    run_tool("qemu-img", &args)
}

/// `qemu-img convert -f FROM -O TO -o OPTS SRC DST`: an image made by qemu-img
/// in another format, for tests of that format's decoder.
pub fn qemu_convert(src: &Path, from: &str, to: &str, opts: &str, dst: &Path) {
    qemu_img(&[
        OsStr::new("convert"),
        OsStr::new("-q"),
        OsStr::new("-f"),
        OsStr::new(from),
        OsStr::new("-O"),
        OsStr::new(to),
        OsStr::new("-o"),
        OsStr::new(opts),
        src.as_os_str(),
        dst.as_os_str(),
    ]);
}

/// Runs `qemu-io -f qcow2 -c CMD ... IMAGE`. qemu-io exits 0 even when a command fails, so
/// its output is checked for "failed"/"error" as well.
pub fn qemu_io(image: &Path, cmds: &[&str]) -> String {
    let mut args: Vec<OsString> = vec!["-f".into(), "qcow2".into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.into());
    }
    args.push(image.into());
    let out = Command::new("qemu-io")
        .args(&args)
        .output()
        .expect("cannot run qemu-io (is it installed?)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lower = text.to_ascii_lowercase();
    // `abort` kills qemu-io on purpose (SIGABRT); callers that use it expect that.
    let aborted = cmds.iter().any(|c| c.trim() == "abort");
    assert!(
        (out.status.success() || aborted) && !lower.contains("failed") && !lower.contains("error"),
        "qemu-io {cmds:?} on {} went wrong ({}): {text}",
        image.display(),
        out.status
    );
    text
}

/// `qemu-img create -f qcow2 [-o OPTS] PATH SIZE`.
pub fn qcow2_create(path: &Path, size: u64, opts: &str) {
    let size = size.to_string();
    let mut args: Vec<&OsStr> = vec![OsStr::new("create"), OsStr::new("-q"), OsStr::new("-f")];
    args.push(OsStr::new("qcow2"));
    if !opts.is_empty() {
        args.push(OsStr::new("-o"));
        args.push(OsStr::new(opts));
    }
    args.push(path.as_os_str());
    args.push(OsStr::new(&size));
    qemu_img(&args);
}

/// `qemu-img convert -f raw -O qcow2 [-c] [-o OPTS] RAW OUT`.
pub fn qcow2_from_raw(raw: &Path, out: &Path, compress: bool, opts: &str) {
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "qcow2"]
        .iter()
        .map(OsStr::new)
        .collect();
    if compress {
        args.push(OsStr::new("-c"));
    }
    if !opts.is_empty() {
        args.push(OsStr::new("-o"));
        args.push(OsStr::new(opts));
    }
    args.push(raw.as_os_str());
    args.push(out.as_os_str());
    qemu_img(&args);
}

/// The oracle: `qemu-img convert -O raw IMAGE IMAGE.oracle.raw` (format probed by qemu-img,
/// or given with `-f`). Returns the raw file's path.
pub fn qemu_raw(image: &Path) -> PathBuf {
    qemu_raw_fmt(image, None)
}

pub fn qemu_raw_fmt(image: &Path, fmt: Option<&str>) -> PathBuf {
    let out = image.with_extension("oracle.raw");
    let mut args: Vec<&OsStr> = vec![OsStr::new("convert"), OsStr::new("-q")];
    if let Some(f) = fmt {
        args.push(OsStr::new("-f"));
        args.push(OsStr::new(f));
    }
    args.extend([OsStr::new("-O"), OsStr::new("raw")]);
    args.push(image.as_os_str());
    args.push(out.as_os_str());
    qemu_img(&args);
    out
}

/// How a region of a generated raw disk is filled.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    /// Pseudo-random bytes from a seed (incompressible).
    Random(u64),
    /// Repetitive text (compresses well, but is not zero).
    Text,
    /// One byte value repeated.
    Byte(u8),
}

/// The tests' one deterministic PRNG, [`Prng`] (splitmix64), seeded with
/// `seed`, so images are reproducible. Spelt like the tuple struct it
/// replaces so that `SplitMix(seed).fill(..)` keeps working; new code calls
/// `Prng::new`.
#[allow(non_snake_case)]
pub fn SplitMix(seed: u64) -> Prng {
    Prng::new(seed)
}

/// Fills `buf` (which sits at `offset` in its region) according to `fill`.
pub fn fill_bytes(fill: Fill, offset: u64, buf: &mut [u8]) {
    match fill {
        Fill::Random(seed) => {
            Prng::new(seed ^ offset.wrapping_mul(0x2545_F491_4F6C_DD1D)).fill(buf)
        }
        Fill::Text => {
            const T: &[u8] =
                b"streamdisk test data: the quick brown fox jumps over the lazy dog 0123456789\n";
            for (i, b) in buf.iter_mut().enumerate() {
                *b = T[((offset as usize) + i) % T.len()];
            }
        }
        Fill::Byte(v) => buf.fill(v),
    }
}

/// Writes a sparse raw disk of `size` bytes with the given regions `(offset, len, fill)`.
pub fn make_raw(path: &Path, size: u64, regions: &[(u64, u64, Fill)]) {
    let f = File::create(path).expect("create raw");
    f.set_len(size).expect("set_len");
    let mut buf = vec![0u8; 1 << 20];
    for &(off, len, fill) in regions {
        assert!(off + len <= size, "region past the end of the disk");
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            fill_bytes(fill, off + done, &mut buf[..n]);
            f.write_all_at(&buf[..n], off + done).expect("write raw");
            done += n as u64;
        }
    }
}

/// Compression wrappers made with the system tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapper {
    Gzip,
    Xz,
    Zstd,
}

impl Wrapper {
    pub const ALL: [Wrapper; 3] = [Wrapper::Gzip, Wrapper::Xz, Wrapper::Zstd];

    pub fn tool(self) -> &'static str {
        match self {
            Wrapper::Gzip => "gzip",
            Wrapper::Xz => "xz",
            Wrapper::Zstd => "zstd",
        }
    }
    pub fn ext(self) -> &'static str {
        match self {
            Wrapper::Gzip => "gz",
            Wrapper::Xz => "xz",
            Wrapper::Zstd => "zst",
        }
    }
}

/// Compresses `path` into `path.EXT` with the system tool; `None` (with a printed reason)
/// when the tool is missing. (For .ci/run: packages gzip, xz-utils, zstd.)
pub fn wrap(path: &Path, w: Wrapper) -> Option<PathBuf> {
    if !have_tool(w.tool()) {
        eprintln!(
            "SKIP {} wrapper: `{}` is not installed (apt-get install gzip xz-utils zstd)",
            w.ext(),
            w.tool()
        );
        return None;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(w.ext());
    let out_path = PathBuf::from(name);
    let out = File::create(&out_path).expect("create wrapped file");
    let args: &[&str] = match w {
        Wrapper::Gzip => &["-c", "-1"],
        Wrapper::Xz => &["-c", "-1", "-T1"],
        Wrapper::Zstd => &["-c", "-q", "-1"],
    };
    let status = Command::new(w.tool())
        .args(args)
        .arg(path)
        .stdout(out)
        .status()
        .expect("run compressor");
    assert!(
        status.success(),
        "{} failed on {}",
        w.tool(),
        path.display()
    );
    Some(out_path)
}

/// The size of a file or a block device (whose `st_size` is 0), by seeking to its end.
pub fn size_of(path: &Path) -> u64 {
    use std::io::{Seek, SeekFrom};
    fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .unwrap_or_else(|e| panic!("size of {}: {e}", path.display()))
}

/// Compares two files (or a device and a file) byte for byte; panics naming the first
/// differing offset.
pub fn assert_same_bytes(actual: &Path, expected: &Path) {
    let la = size_of(actual);
    let le = size_of(expected);
    assert_eq!(
        la,
        le,
        "size of {} is {la}, expected {le} (as {})",
        actual.display(),
        expected.display()
    );
    assert_same_prefix(actual, expected, le);
}

/// Compares the first `len` bytes of two files (or devices); panics naming the first
/// differing offset.
pub fn assert_same_prefix(actual: &Path, expected: &Path, len: u64) {
    if let Some(off) = first_difference(actual, expected, len) {
        let a = read_at(actual, off, 16);
        let e = read_at(expected, off, 16);
        panic!(
            "{} differs from {} at offset {off} (0x{off:x}): got {a:02x?}, expected {e:02x?}",
            actual.display(),
            expected.display()
        );
    }
}

/// The first offset below `len` where the files differ (a short file differs at its end).
///
/// Only ranges that hold data in either file (SEEK_DATA/SEEK_HOLE) are read: holes in both
/// read as zeros, so large sparse outputs compare quickly. Devices are read in full.
pub fn first_difference(a: &Path, b: &Path, len: u64) -> Option<u64> {
    let fa = File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let fb = File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let short = byte_len(&fa).min(byte_len(&fb)).min(len);
    let mut ranges = extents_or_all(a, &fa, short);
    ranges.extend(extents_or_all(b, &fb, short));
    ranges.sort_unstable();
    const CHUNK: usize = 1 << 20;
    let mut ba = vec![0u8; CHUNK];
    let mut bb = vec![0u8; CHUNK];
    let mut done_to = 0u64;
    for (s, e) in ranges {
        let mut pos = s.max(done_to);
        while pos < e {
            let n = (e - pos).min(CHUNK as u64) as usize;
            fa.read_exact_at(&mut ba[..n], pos)
                .unwrap_or_else(|err| panic!("read {}: {err}", a.display()));
            fb.read_exact_at(&mut bb[..n], pos)
                .unwrap_or_else(|err| panic!("read {}: {err}", b.display()));
            if ba[..n] != bb[..n] {
                let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
                return Some(pos + i as u64);
            }
            pos += n as u64;
        }
        done_to = done_to.max(e);
    }
    (short < len).then_some(short)
}

/// Length of a file or block device (seek to the end works for both).
fn byte_len(f: &File) -> u64 {
    use std::io::Seek;
    let mut f = f;
    f.seek(io::SeekFrom::End(0)).expect("seek to end")
}

/// Data extents of a regular file clipped to `[0, limit)`; the whole range otherwise.
fn extents_or_all(path: &Path, f: &File, limit: u64) -> Vec<(u64, u64)> {
    if !f.metadata().map(|m| m.is_file()).unwrap_or(false) {
        return vec![(0, limit)];
    }
    data_extents(path)
        .into_iter()
        .filter(|&(s, _)| s < limit)
        .map(|(s, e)| (s, e.min(limit)))
        .collect()
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

/// Up to `n` bytes of a file at `off` (fewer at its end).
pub fn read_at(path: &Path, off: u64, n: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
    buf.truncate(got);
    buf
}

/// Whether every byte of `path` in `[off, off+len)` equals `value`.
pub fn range_is(path: &Path, off: u64, len: u64, value: u8) -> bool {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = off;
    while pos < off + len {
        let n = (off + len - pos).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], pos)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if buf[..n].iter().any(|&b| b != value) {
            return false;
        }
        pos += n as u64;
    }
    true
}

/// Fills a (new or existing) file with `len` bytes of `value`, e.g. stale data that an
/// import must overwrite.
pub fn fill_file(path: &Path, len: u64, value: u8) {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .expect("create fill file");
    let buf = vec![value; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], pos).expect("fill");
        pos += n as u64;
    }
    f.sync_all().expect("sync fill file");
}

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// What stdin of the child is.
pub enum Input {
    /// /dev/null.
    Null,
    /// The file's bytes, fed through a pipe by a thread (so stdin is not seekable).
    Pipe(PathBuf),
    /// These bytes through a pipe.
    Bytes(Vec<u8>),
}

/// The outcome of one streamdisk run.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<OsString>,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the full output unless the run exited 0.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "streamdisk {:?} failed ({}):\nstderr:\n{}\nstdout:\n{}",
            self.args,
            self.status,
            self.stderr,
            self.stdout
        );
        self
    }

    /// The last non-empty line of stderr (the error line on failure).
    pub fn last_stderr_line(&self) -> &str {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// Asserts a clean refusal: an exit code (not a signal, so not an OOM kill or an
    /// abort), non-zero, no panic, and a last stderr line that mentions one of `words`
    /// (case-insensitive). Returns that line.
    pub fn assert_refused(&self, words: &[&str]) -> String {
        self.check_refused(words).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Run::assert_refused`], but returns the problem instead of panicking.
    pub fn check_refused(&self, words: &[&str]) -> Result<String, String> {
        let ctx = format!(
            "streamdisk {:?}: status {}\nstderr:\n{}",
            self.args, self.status, self.stderr
        );
        if let Some(sig) = self.status.signal() {
            return Err(format!("killed by signal {sig} (OOM or crash?) - {ctx}"));
        }
        if self.status.success() {
            return Err(format!("expected a failure, got exit 0 - {ctx}"));
        }
        if self.stderr.contains("panicked") || self.stderr.contains("RUST_BACKTRACE") {
            return Err(format!("stderr shows a panic - {ctx}"));
        }
        let line = self.last_stderr_line().to_string();
        if line.is_empty() {
            return Err(format!("no error message - {ctx}"));
        }
        // A human-readable message, not a Debug dump of an error struct.
        if ["Error {", "Custom {", "kind: ", "description: "]
            .iter()
            .any(|p| line.contains(p))
        {
            return Err(format!(
                "last stderr line {line:?} is a Debug-formatted error struct, not a message - {ctx}"
            ));
        }
        let lower = line.to_ascii_lowercase();
        if !words.is_empty()
            && !words
                .iter()
                .any(|w| lower.contains(&w.to_ascii_lowercase()))
        {
            return Err(format!(
                "last stderr line {line:?} names none of {words:?} - {ctx}"
            ));
        }
        Ok(line)
    }
}

/// A streamdisk invocation being built.
pub struct Streamdisk {
    args: Vec<OsString>,
    input: Input,
    timeout: Duration,
    cgroup: Option<CString>,
    envs: Vec<(OsString, OsString)>,
    /// Variables removed from the child's environment.
    unset: Vec<OsString>,
}

impl Streamdisk {
    pub fn new() -> Self {
        Streamdisk {
            args: Vec::new(),
            input: Input::Null,
            timeout: TIMEOUT,
            cgroup: None,
            envs: Vec::new(),
            unset: Vec::new(),
        }
    }

    /// `streamdisk convert SOURCE TARGET --progress none`.
    pub fn convert(source: impl AsRef<OsStr>, target: impl AsRef<OsStr>) -> Self {
        Self::new()
            .arg("convert")
            .arg(source)
            .arg(target)
            .args(["--progress", "none"])
    }

    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(it.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Removes `k` from the child's environment.
    pub fn env_remove(mut self, k: impl AsRef<OsStr>) -> Self {
        self.unset.push(k.as_ref().to_owned());
        self
    }

    pub fn input(mut self, input: Input) -> Self {
        self.input = input;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs the child inside this memory cgroup.
    pub fn in_cgroup(mut self, cg: &MemCgroup) -> Self {
        self.cgroup = Some(cg.procs_file.clone());
        self
    }

    /// Runs to completion, killing the child (and panicking) after the timeout.
    pub fn run(self) -> Run {
        self.try_run().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs to completion; a hang (killed after the timeout) is an `Err` naming it.
    pub fn try_run(self) -> Result<Run, String> {
        let mut cmd = Command::new(bin());
        for k in &self.unset {
            cmd.env_remove(k);
        }
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(match self.input {
                Input::Null => Stdio::null(),
                _ => Stdio::piped(),
            });
        if let Some(procs) = self.cgroup.clone() {
            // SAFETY: between fork and exec only async-signal-safe calls (open, write,
            // close) on a path prepared before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let w = libc::write(fd, b"0\n".as_ptr() as *const libc::c_void, 2);
                    libc::close(fd);
                    if w < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
        let feeder = match self.input {
            Input::Null => None,
            Input::Pipe(path) => {
                let mut stdin = child.stdin.take().expect("stdin pipe");
                Some(thread::spawn(move || {
                    if let Ok(mut f) = File::open(&path) {
                        // The child may stop reading early (an error): ignore EPIPE.
                        let _ = io::copy(&mut f, &mut stdin);
                    }
                }))
            }
            Input::Bytes(bytes) => {
                let mut stdin = child.stdin.take().expect("stdin pipe");
                Some(thread::spawn(move || {
                    let _ = stdin.write_all(&bytes);
                }))
            }
        };
        let mut out_pipe = child.stdout.take().expect("stdout pipe");
        let mut err_pipe = child.stderr.take().expect("stderr pipe");
        let out_t = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let err_t = thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err_t.join().unwrap_or_default();
                return Err(format!(
                    "streamdisk {:?} hung: killed after {:?}\nstderr:\n{}",
                    self.args,
                    self.timeout,
                    String::from_utf8_lossy(&stderr)
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        let elapsed = start.elapsed();
        if let Some(f) = feeder {
            let _ = f.join();
        }
        let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
        Ok(Run {
            status,
            stdout,
            stderr,
            elapsed,
            args: self.args,
        })
    }
}

impl Default for Streamdisk {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------
// Loop devices
// ---------------------------------------------------------------------------------------

/// A loop device over a file, detached when dropped (even when the test fails).
pub struct LoopDevice {
    pub dev: PathBuf,
}

impl LoopDevice {
    /// `losetup -f --show --direct-io=on FILE`. `None`, with a printed reason, when not
    /// root or when no loop device can be set up.
    pub fn attach(file: &Path) -> Option<LoopDevice> {
        Self::attach_with(file, &[])
    }

    /// Like [`LoopDevice::attach`], with `extra` losetup arguments (such as
    /// `--sector-size 4096`); `None`, with a printed reason, when losetup
    /// refuses them too.
    pub fn attach_with(file: &Path, extra: &[&str]) -> Option<LoopDevice> {
        if !is_root() {
            eprintln!("SKIP loop device target: not running as root");
            return None;
        }
        let out = Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .args(extra)
            .arg(file)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(LoopDevice {
                    dev: PathBuf::from(dev),
                })
            }
            Ok(o) => {
                eprintln!(
                    "SKIP loop device target: losetup failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP loop device target: cannot run losetup: {e}");
                None
            }
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        for _ in 0..50 {
            let ok = Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not detach {}", self.dev.display());
    }
}

// ---------------------------------------------------------------------------------------
// Memory cgroups
// ---------------------------------------------------------------------------------------

/// A child memory cgroup with a hard limit, removed when dropped.
pub struct MemCgroup {
    pub dir: PathBuf,
    procs_file: CString,
    v2: bool,
}

impl MemCgroup {
    /// Creates a child of this process's memory cgroup limited to `limit` bytes (cgroup v1:
    /// memory.limit_in_bytes (+ memsw); v2: memory.max, memory.swap.max = 0). `None`, with a
    /// printed reason, when not root or cgroups are not writable.
    pub fn new(limit: u64) -> Option<MemCgroup> {
        if !is_root() {
            eprintln!("NOTE: not root, running without a memory cgroup");
            return None;
        }
        match Self::try_new(limit) {
            Ok(cg) => Some(cg),
            Err(e) => {
                eprintln!("NOTE: cannot make a memory cgroup ({e}); running without one");
                None
            }
        }
    }

    fn try_new(limit: u64) -> io::Result<MemCgroup> {
        let own = fs::read_to_string("/proc/self/cgroup")?;
        let name = format!(
            "streamdisk-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        );
        // cgroup v1: "N:memory:/path" (possibly "N:memory,other:/path").
        for line in own.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
            let (Some(ctrls), Some(path)) = (ctrls, path) else {
                continue;
            };
            if ctrls.split(',').any(|c| c == "memory") {
                let base = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
                let dir = base.join(&name);
                fs::create_dir(&dir)?;
                let cg = MemCgroup {
                    procs_file: cstring(&dir.join("cgroup.procs")),
                    dir: dir.clone(),
                    v2: false,
                };
                fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
                // Without swap accounting the child could swap instead of hitting the limit.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    let _ = fs::write(memsw, limit.to_string());
                }
                return Ok(cg);
            }
        }
        // cgroup v2: "0::/path". A child of our own group only gets memory.max when our
        // group delegates the memory controller, which v2 forbids while it holds processes
        // (the "no internal processes" rule); so walk up to the nearest ancestor whose
        // children get it (the root always qualifies).
        if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
            let root = Path::new("/sys/fs/cgroup");
            let mut base = root.join(path.trim_start_matches('/'));
            loop {
                let dir = base.join(&name);
                if fs::create_dir(&dir).is_ok() {
                    if dir.join("memory.max").exists() {
                        let cg = MemCgroup {
                            procs_file: cstring(&dir.join("cgroup.procs")),
                            dir: dir.clone(),
                            v2: true,
                        };
                        fs::write(dir.join("memory.max"), limit.to_string())?;
                        let _ = fs::write(dir.join("memory.swap.max"), "0");
                        return Ok(cg);
                    }
                    let _ = fs::remove_dir(&dir);
                }
                if base == root || !base.pop() {
                    break;
                }
            }
            return Err(io::Error::other(
                "no cgroup v2 group with the memory controller delegated to its children",
            ));
        }
        Err(io::Error::other(
            "no memory controller in /proc/self/cgroup",
        ))
    }

    /// Peak memory of the group (page cache included), in bytes.
    pub fn peak(&self) -> Option<u64> {
        let f = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        fs::read_to_string(self.dir.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

fn cstring(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// The data extents of a file as the filesystem reports them (SEEK_DATA/SEEK_HOLE).
pub fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let len = f.metadata().expect("stat").len();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        use nix::unistd::{lseek, Whence};
        let Ok(start) = lseek(&f, pos, Whence::SeekData) else {
            break; // ENXIO: no data after pos
        };
        let end = lseek(&f, start, Whence::SeekHole).unwrap_or(len as i64);
        out.push((start as u64, end as u64));
        pos = end;
    }
    out
}

/// Compares two (possibly huge, sparse) files of the same size by reading only the ranges
/// that hold data in either; holes read as zeros in both. Panics at the first difference.
pub fn assert_same_sparse(actual: &Path, expected: &Path) {
    let la = fs::metadata(actual).expect("stat actual").len();
    let le = fs::metadata(expected).expect("stat expected").len();
    assert_eq!(
        la,
        le,
        "size of {} differs from {}",
        actual.display(),
        expected.display()
    );
    let mut ranges = data_extents(actual);
    ranges.extend(data_extents(expected));
    ranges.sort_unstable();
    let fa = File::open(actual).expect("open");
    let fb = File::open(expected).expect("open");
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut done_to = 0u64;
    for (s, e) in ranges {
        let mut pos = s.max(done_to);
        while pos < e {
            let n = (e - pos).min(ba.len() as u64) as usize;
            fa.read_exact_at(&mut ba[..n], pos).expect("read actual");
            fb.read_exact_at(&mut bb[..n], pos).expect("read expected");
            if let Some(i) = (0..n).find(|&i| ba[i] != bb[i]) {
                panic!(
                    "{} differs from {} at offset {}",
                    actual.display(),
                    expected.display(),
                    pos + i as u64
                );
            }
            pos += n as u64;
        }
        done_to = done_to.max(e);
    }
}

/// One entry of `qemu-img map --output=json`.
#[derive(Debug, Clone)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
}

/// `qemu-img map --output=json -f qcow2 IMAGE`.
pub fn qemu_map(image: &Path) -> Vec<MapEntry> {
    let out = qemu_img(&[
        OsStr::new("map"),
        OsStr::new("--output=json"),
        OsStr::new("-f"),
        OsStr::new("qcow2"),
        image.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("qemu-img map JSON");
    v.as_array()
        .expect("map array")
        .iter()
        .map(|e| MapEntry {
            start: e["start"].as_u64().expect("start"),
            length: e["length"].as_u64().expect("length"),
            present: e["present"].as_bool().unwrap_or(false),
            zero: e["zero"].as_bool().unwrap_or(false),
            data: e["data"].as_bool().unwrap_or(false),
            compressed: e["compressed"].as_bool().unwrap_or(false),
            offset: e["offset"].as_u64(),
        })
        .collect()
}

/// Fills the host bytes behind every guest range that reads as zero but still has a host
/// offset (v3 zero-flagged clusters, unallocated or zero subclusters of an allocated
/// extended-L2 cluster) with 0xEE. A decoder that ignores the zero flag or the subcluster
/// bitmap then produces visibly wrong output instead of accidentally right zeros.
/// Returns how many bytes were poisoned.
pub fn poison_zero_ranges(image: &Path) -> u64 {
    let mut total = 0;
    let f = OpenOptions::new()
        .write(true)
        .open(image)
        .expect("open image");
    for e in qemu_map(image) {
        if let (true, false, Some(off)) = (e.zero, e.data, e.offset) {
            let buf = vec![0xEEu8; e.length as usize];
            f.write_all_at(&buf, off).expect("poison");
            total += e.length;
        }
    }
    total
}
