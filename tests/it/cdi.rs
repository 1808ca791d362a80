//! CDI pod mode, end to end: the real binary as a subprocess (`streamdisk cdi`),
//! with the pod's paths re-rooted under a temp dir (`STREAMDISK_POD_ROOT`), the
//! job in environment variables as CDI's controller sets them, images made with
//! qemu-img at test time and served by the tests' HTTP server, and the result
//! checked the way the controller sees it: exit code, termination message,
//! files, and the progress metric parsed with the controller's regex.
//! Disk contents are compared with `qemu-img convert -O raw`.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::{make_ca_and_cert, Body, TestServer};
use crate::common::{
    first_difference, qcow2_create, qemu_io, qemu_raw, range_is, tempdir, LoopDevice,
};

const MIB: u64 = 1 << 20;
pub(crate) const SUCCESS: &str =
    r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"message":"Import Complete"}"#;
const SUCCESS_PREALLOC: &str =
    r#"{"scratchSpaceRequired":false,"preallocationApplied":true,"message":"Import Complete"}"#;
const SCRATCH_REQUIRED: &str =
    r#"{"scratchSpaceRequired":true,"preallocationApplied":false,"message":"Import Complete"}"#;

/// The controller's regex for the progress metric (pkg/controller/util.go).
pub(crate) fn progress_regex(uid: &str) -> regex::Regex {
    regex::Regex::new(&format!(
        r#"(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{{ownerUID\="{}"\}} (\d{{1,3}}\.?\d*)"#,
        regex::escape(uid)
    ))
    .expect("regex")
}

/// A free TCP port for the metrics endpoint (tests run in parallel).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// One importer pod: a temp root holding `data/`, `dev/` and the rest.
pub(crate) struct Pod {
    root: tempfile::TempDir,
    envs: Vec<(String, String)>,
    umask: Option<u32>,
    pub(crate) metrics_port: u16,
}

/// A pod being run.
pub(crate) struct Running {
    pub(crate) child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// How a pod run ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) code: Option<i32>,
    pub(crate) stderr: String,
    pub(crate) termination: Option<String>,
}

impl Ended {
    pub(crate) fn message(&self) -> &str {
        self.termination
            .as_deref()
            .unwrap_or("<no termination message>")
    }
    pub(crate) fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code; termination message {:?}\nstderr:\n{}",
            self.termination,
            self.stderr
        );
        self
    }
    pub(crate) fn assert_message(&self, expected: &str) -> &Self {
        assert_eq!(self.message(), expected, "stderr:\n{}", self.stderr);
        self
    }
}

impl Pod {
    pub(crate) fn new() -> Pod {
        let root = tempdir();
        fs::create_dir(root.path().join("data")).expect("mkdir data");
        fs::create_dir(root.path().join("dev")).expect("mkdir dev");
        let metrics_port = free_port();
        let mut pod = Pod {
            root,
            envs: Vec::new(),
            umask: None,
            metrics_port,
        };
        pod.env("PREALLOCATION", "false")
            .env("OWNER_UID", "0b1c7f5e-test")
            .env("FILESYSTEM_OVERHEAD", "0")
            .env("IMPORTER_CONTENTTYPE", "kubevirt");
        pod
    }

    pub(crate) fn env(&mut self, k: &str, v: &str) -> &mut Self {
        self.envs.retain(|(n, _)| n != k);
        self.envs.push((k.to_string(), v.to_string()));
        self
    }

    pub(crate) fn http(&mut self, url: &str) -> &mut Self {
        self.env("IMPORTER_SOURCE", "http")
            .env("IMPORTER_ENDPOINT", url)
    }

    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    pub(crate) fn disk(&self) -> PathBuf {
        self.path("data/disk.img")
    }

    /// Makes `<root>/dev/cdi-block-volume` point at `dev` (block mode).
    pub(crate) fn block(&mut self, dev: &Path) -> &mut Self {
        std::os::unix::fs::symlink(dev, self.path("dev/cdi-block-volume")).expect("symlink");
        self
    }

    /// Starts the pod; its stderr is drained from the start (a full pipe
    /// would block the child's logging).
    pub(crate) fn spawn(&self) -> Running {
        let mut cmd = Command::new(crate::common::bin());
        // As CDI's image runs it: klog flags, one unknown, then -v.
        cmd.args(["cdi", "-alsologtostderr", "-some_future_flag=x", "-v=3"])
            .env_clear()
            .env("STREAMDISK_POD_ROOT", self.root.path())
            .env("STREAMDISK_METRICS_PORT", self.metrics_port.to_string())
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(mask) = self.umask {
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn streamdisk cdi");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running { child, stderr }
    }

    pub(crate) fn wait(&self, running: Running) -> Ended {
        let Running {
            mut child,
            stderr: reader,
        } = running;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > crate::common::TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("pod run hung:\n{}", reader.join().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = reader.join().unwrap_or_default();
        assert!(!stderr.contains("panicked"), "panic:\n{stderr}");
        Ended {
            code: status.code(),
            stderr,
            termination: fs::read_to_string(self.path("dev/termination-log")).ok(),
        }
    }

    pub(crate) fn run(&self) -> Ended {
        self.wait(self.spawn())
    }
}

/// A qcow2 image with data at a few places (and zeros elsewhere), plus its
/// oracle raw conversion.
pub(crate) fn sample_qcow2(dir: &Path, virtual_size: u64) -> (PathBuf, PathBuf) {
    let img = dir.join("disk.qcow2");
    qcow2_create(&img, virtual_size, "");
    let last = virtual_size - MIB;
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 3M 512k",
            &format!("write -P 0x33 {last} 1M"),
        ],
    );
    let raw = qemu_raw(&img);
    (img, raw)
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(fs::read(path).expect("read"));
    hex::encode(h.finalize())
}

pub(crate) fn assert_prefix_equals(actual: &Path, expected: &Path, len: u64) {
    if let Some(off) = first_difference(actual, expected, len) {
        panic!(
            "{} differs from the qemu-img oracle at offset {off}",
            actual.display()
        );
    }
}

/// Free space of the filesystem holding `p`, as CDI measures it.
fn fs_free(p: &Path) -> u64 {
    let st = nix::sys::statfs::statfs(p).expect("statfs");
    st.blocks_available() * st.block_size() as u64
}

// ---------------------------------------------------------------------------------------
// Filesystem targets
// ---------------------------------------------------------------------------------------

#[test]
fn filesystem_target_with_overhead_resize_and_leftover() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 64 * MIB);
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    if fs_free(pod.root.path()) < 2 << 30 {
        eprintln!("SKIP: less than 2 GiB free in the temp dir, the resize size would depend on it");
        return;
    }
    // A partial disk.img left by a previous attempt, with a restrictive mode.
    fs::write(pod.disk(), vec![0xEEu8; 3 * MIB as usize]).expect("leftover");
    fs::set_permissions(pod.disk(), fs::Permissions::from_mode(0o600)).expect("chmod");
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "1Gi")
        .env("FILESYSTEM_OVERHEAD", "0.055");
    pod.umask = Some(0o077);
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);

    // min(1 GiB, free) = 1 GiB; ceil(1 GiB / 1.055) rounded down to 1 MiB = 970 MiB.
    let meta = fs::metadata(pod.disk()).expect("disk.img");
    assert_eq!(meta.len(), 970 * MIB, "resized as CDI resizes");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "mode 0660 despite umask 077"
    );
    assert_prefix_equals(&pod.disk(), &raw, 64 * MIB);
    assert!(
        range_is(&pod.disk(), 64 * MIB, 906 * MIB, 0),
        "grown part reads as zeros"
    );
    assert!(
        end.stderr.contains("some_future_flag"),
        "ignored flag is logged at -v=3"
    );
}

#[test]
fn filesystem_target_is_never_shrunk() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 64 * MIB);
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    // The request (after overhead) is smaller than the image but the space
    // budget (min(free, request)) still holds the image.
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "64Mi")
        .env("FILESYSTEM_OVERHEAD", "0.5");
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_eq!(fs::metadata(pod.disk()).expect("disk").len(), 64 * MIB);
    assert_prefix_equals(&pod.disk(), &raw, 64 * MIB);
}

#[test]
fn filesystem_target_too_small() {
    let work = tempdir();
    let (img, _) = sample_qcow2(work.path(), 64 * MIB);
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "32Mi");
    let end = pod.run();
    end.assert_code(1).assert_message(
        "Unable to process data: virtual image size 67108864 is larger than the reported available storage 33554432. A larger PVC is required",
    );
    assert!(!pod.disk().exists(), "nothing left behind");
}

// ---------------------------------------------------------------------------------------
// Block targets (root: loop devices)
// ---------------------------------------------------------------------------------------

/// A loop device over a file of `size` bytes filled with `fill`.
fn loop_device(dir: &Path, size: u64, fill: u8) -> Option<(LoopDevice, PathBuf)> {
    let backing = dir.join("backing.img");
    crate::common::fill_file(&backing, size, fill);
    LoopDevice::attach(&backing).map(|l| (l, backing))
}

#[test]
fn block_target_on_loop_device() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 64 * MIB);
    let Some((lo, _backing)) = loop_device(work.path(), 96 * MIB, 0xAA) else {
        return;
    };
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    pod.block(&lo.dev)
        .http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "96Mi")
        .env("PREALLOCATION", "true");
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS_PREALLOC);
    // Stale 0xAA bytes inside the image must read as the image's zeros.
    assert_prefix_equals(&lo.dev, &raw, 64 * MIB);
    assert!(
        range_is(&lo.dev, 64 * MIB, 32 * MIB, 0xAA),
        "past the image: untouched"
    );
    assert!(!pod.disk().exists(), "block mode writes no disk.img");
}

#[test]
fn block_target_too_small_is_refused_before_writing() {
    let work = tempdir();
    let (img, _) = sample_qcow2(work.path(), 64 * MIB);
    let Some((lo, _backing)) = loop_device(work.path(), 32 * MIB, 0xAA) else {
        return;
    };
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    pod.block(&lo.dev)
        .http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "32Mi");
    let end = pod.run();
    end.assert_code(1).assert_message(
        "Unable to process data: virtual image size 67108864 is larger than the reported available storage 33554432. A larger PVC is required",
    );
    assert!(range_is(&lo.dev, 0, 32 * MIB, 0xAA), "no byte written");
}

#[test]
fn block_checksum_mismatch_wipes_edges() {
    let work = tempdir();
    let (img, _) = sample_qcow2(work.path(), 64 * MIB);
    let Some((lo, _backing)) = loop_device(work.path(), 64 * MIB, 0xAA) else {
        return;
    };
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    let wrong = "0".repeat(64);
    pod.block(&lo.dev)
        .http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "64Mi")
        .env("IMPORTER_CHECKSUM", &format!("sha256:{wrong}"));
    let end = pod.run();
    end.assert_code(0).assert_message(&format!(
        r#"{{"message":"Unable to process data: checksum mismatch: expected sha256:{wrong}, calculated sha256:{}"}}"#,
        sha256_hex(&img)
    ));
    assert!(range_is(&lo.dev, 0, MIB, 0), "first MiB zeroed");
    assert!(range_is(&lo.dev, 63 * MIB, MIB, 0), "last MiB zeroed");
}

// ---------------------------------------------------------------------------------------
// Checksums (filesystem)
// ---------------------------------------------------------------------------------------

#[test]
fn checksum_match_and_mismatch() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 16 * MIB);
    let srv = TestServer::serve(Body::file(&img));
    let sum = sha256_hex(&img);

    let mut pod = Pod::new();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "16Mi")
        .env("IMPORTER_CHECKSUM", &format!("sha256:{sum}"));
    pod.run().assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 16 * MIB);

    let mut pod = Pod::new();
    let wrong = format!("{}0", &sum[..63]);
    let wrong = if wrong == sum {
        format!("{}1", &sum[..63])
    } else {
        wrong
    };
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "16Mi")
        .env("IMPORTER_CHECKSUM", &format!("sha256:{wrong}"));
    let end = pod.run();
    end.assert_code(0).assert_message(&format!(
        r#"{{"message":"Unable to process data: checksum mismatch: expected sha256:{wrong}, calculated sha256:{sum}"}}"#
    ));
    assert!(!pod.disk().exists(), "disk.img removed after a mismatch");
}

// ---------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------

fn make_tar_gz(dir: &Path) -> PathBuf {
    let src = dir.join("tree");
    fs::create_dir_all(src.join("sub")).expect("mkdir");
    fs::write(src.join("a.txt"), b"alpha\n").expect("write");
    fs::write(src.join("sub/b.bin"), vec![0x5Au8; 300_000]).expect("write");
    fs::set_permissions(src.join("a.txt"), fs::Permissions::from_mode(0o640)).expect("chmod");
    std::os::unix::fs::symlink("../a.txt", src.join("sub/link")).expect("symlink");
    let out = dir.join("tree.tar.gz");
    let st = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success());
    out
}

#[test]
fn archive_is_extracted_into_data() {
    let work = tempdir();
    let tgz = make_tar_gz(work.path());
    let srv = TestServer::serve(Body::file(&tgz));
    let mut pod = Pod::new();
    pod.http(&srv.url("/tree.tar.gz"))
        .env("IMPORTER_CONTENTTYPE", "archive")
        .env("IMPORTER_CHECKSUM", &format!("sha256:{}", sha256_hex(&tgz)));
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_eq!(fs::read(pod.path("data/a.txt")).expect("a.txt"), b"alpha\n");
    assert_eq!(
        fs::metadata(pod.path("data/a.txt")).expect("meta").mode() & 0o777,
        0o640
    );
    assert_eq!(
        fs::read(pod.path("data/sub/b.bin")).expect("b.bin"),
        vec![0x5Au8; 300_000]
    );
    assert_eq!(
        fs::read(pod.path("data/sub/link")).expect("link"),
        b"alpha\n"
    );
    assert!(!pod.disk().exists());
}

#[test]
fn archive_checksum_mismatch_empties_the_volume() {
    let work = tempdir();
    let tgz = make_tar_gz(work.path());
    let srv = TestServer::serve(Body::file(&tgz));
    let mut pod = Pod::new();
    let wrong = "f".repeat(64);
    pod.http(&srv.url("/tree.tar.gz"))
        .env("IMPORTER_CONTENTTYPE", "archive")
        .env("IMPORTER_CHECKSUM", &format!("sha256:{wrong}"));
    let end = pod.run();
    end.assert_code(0).assert_message(&format!(
        r#"{{"message":"Unable to process data: checksum mismatch: expected sha256:{wrong}, calculated sha256:{}"}}"#,
        sha256_hex(&tgz)
    ));
    assert!(pod.path("data").is_dir(), "the mount point stays");
    assert_eq!(fs::read_dir(pod.path("data")).expect("ls").count(), 0);
}

#[test]
fn hostile_archive_is_refused() {
    // A member named "../escape": built by hand, tar(1) would not write it.
    let mut h = tar::Header::new_gnu();
    let name = b"../escape";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"evil"[..]).expect("append");
    let srv = TestServer::serve(Body::mem(b.into_inner().expect("tar")));
    let mut pod = Pod::new();
    pod.http(&srv.url("/evil.tar"))
        .env("IMPORTER_CONTENTTYPE", "archive");
    let end = pod.run();
    end.assert_code(1);
    assert!(
        end.message().contains("escapes the target directory"),
        "{}",
        end.message()
    );
    assert!(!pod.path("escape").exists());
}

// ---------------------------------------------------------------------------------------
// Blank disks
// ---------------------------------------------------------------------------------------

#[test]
fn blank_without_preallocation() {
    let mut pod = Pod::new();
    pod.env("IMPORTER_SOURCE", "none")
        .env("IMPORTER_IMAGE_SIZE", "64Mi")
        .env("FILESYSTEM_OVERHEAD", "0.055");
    pod.umask = Some(0o077);
    pod.run()
        .assert_code(0)
        .assert_message(r#"{"preallocationApplied":false,"message":"Import Complete"}"#);
    let m = fs::metadata(pod.disk()).expect("disk.img");
    // ceil(64 MiB / 1.055) = 63610299 -> rounded down to 60 MiB.
    assert_eq!(m.len(), 60 * MIB);
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert!(m.blocks() * 512 < MIB, "sparse: {} blocks", m.blocks());
    assert!(range_is(&pod.disk(), 0, 60 * MIB, 0));
}

#[test]
fn blank_with_preallocation() {
    let mut pod = Pod::new();
    pod.env("IMPORTER_SOURCE", "none")
        .env("IMPORTER_IMAGE_SIZE", "32Mi")
        .env("PREALLOCATION", "true");
    pod.run()
        .assert_code(0)
        .assert_message(r#"{"preallocationApplied":true,"message":"Import Complete"}"#);
    let m = fs::metadata(pod.disk()).expect("disk.img");
    assert_eq!(m.len(), 32 * MIB);
    assert!(
        m.blocks() * 512 >= 32 * MIB,
        "allocated: {} blocks",
        m.blocks()
    );
}

#[test]
fn blank_block_with_and_without_preallocation() {
    let work = tempdir();
    let Some((lo, _backing)) = loop_device(work.path(), 48 * MIB, 0xAA) else {
        return;
    };
    let mut pod = Pod::new();
    pod.block(&lo.dev)
        .env("IMPORTER_SOURCE", "none")
        .env("IMPORTER_IMAGE_SIZE", "32Mi");
    pod.run()
        .assert_code(0)
        .assert_message(r#"{"preallocationApplied":false,"message":"Import Complete"}"#);
    assert!(
        range_is(&lo.dev, 0, 48 * MIB, 0xAA),
        "no preallocation: untouched"
    );

    pod.env("PREALLOCATION", "true");
    pod.run()
        .assert_code(0)
        .assert_message(r#"{"preallocationApplied":true,"message":"Import Complete"}"#);
    assert!(range_is(&lo.dev, 0, 32 * MIB, 0), "requested size zeroed");
    assert!(
        range_is(&lo.dev, 32 * MIB, 16 * MIB, 0xAA),
        "beyond the request: untouched"
    );
}

// ---------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------

#[test]
fn unsupported_and_unknown_sources() {
    for src in ["imageio", "vddk"] {
        let mut pod = Pod::new();
        pod.env("IMPORTER_SOURCE", src)
            .env("IMPORTER_ENDPOINT", "http://127.0.0.1:9/x");
        let end = pod.run();
        end.assert_code(1);
        assert!(
            end.message().contains("not supported yet") && end.message().contains(src),
            "{src}: {}",
            end.message()
        );
    }
    let mut pod = Pod::new();
    pod.env("IMPORTER_SOURCE", "ftp");
    pod.run()
        .assert_code(1)
        .assert_message("Unknown data source: ftp");
}

#[test]
fn invalid_preallocation() {
    for bad in ["", "yes"] {
        let mut pod = Pod::new();
        pod.env("IMPORTER_SOURCE", "none")
            .env("IMPORTER_IMAGE_SIZE", "1Mi")
            .env("PREALLOCATION", bad);
        let end = pod.run();
        end.assert_code(1);
        assert!(end.message().contains("PREALLOCATION"), "{}", end.message());
        assert!(!pod.disk().exists());
    }
}

// ---------------------------------------------------------------------------------------
// HTTP options: auth, headers, CAs
// ---------------------------------------------------------------------------------------

#[test]
fn basic_auth() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let password = "pa55-w0rd-XYZ";
    let srv = TestServer::builder(Body::file(&img))
        .basic_auth("importer", password)
        .start();

    let mut pod = Pod::new();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_ACCESS_KEY_ID", "importer")
        .env("IMPORTER_SECRET_KEY", password);
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    assert!(!end.stderr.contains(password), "password logged");
    assert!(srv.log().iter().all(|r| r.status != 401));

    // A wrong password fails (exit 1) without printing it anywhere.
    let mut pod = Pod::new();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_ACCESS_KEY_ID", "importer")
        .env("IMPORTER_SECRET_KEY", "wrong-secret-123");
    let end = pod.run();
    end.assert_code(1);
    assert!(!end.stderr.contains("wrong-secret-123"));
    assert!(!end.message().contains("wrong-secret-123"));
}

#[test]
fn extra_headers_from_env_and_secret_files() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let secret_value = "Bearer t0ken-not-for-logs";
    let srv = TestServer::builder(Body::file(&img))
        .require_header("Authorization", secret_value)
        .start();
    let mut pod = Pod::new();
    // The secret header, laid out as a Kubernetes secret volume.
    let d = pod.path("extraheaders/0/..2024_01_01");
    fs::create_dir_all(&d).expect("mkdir");
    fs::write(d.join("auth"), format!("Authorization: {secret_value}\n")).expect("write");
    std::os::unix::fs::symlink("..2024_01_01", pod.path("extraheaders/0/..data")).expect("ln");
    std::os::unix::fs::symlink("..data/auth", pod.path("extraheaders/0/auth")).expect("ln");
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_EXTRA_HEADER_0", "X-Cdi-Test: plain-value");
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    let log = srv.log();
    assert!(log
        .iter()
        .any(|r| r.header("x-cdi-test") == Some("plain-value")));
    assert!(log
        .iter()
        .all(|r| r.header("authorization") == Some(secret_value)));
    assert!(
        !end.stderr.contains("t0ken-not-for-logs"),
        "secret header logged"
    );

    // Without the secret the server refuses: the import fails, exit 1.
    let mut pod = Pod::new();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi");
    pod.run().assert_code(1);
}

#[test]
fn custom_ca_over_tls() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let certs = make_ca_and_cert("localhost");
    let srv = TestServer::builder(Body::file(&img))
        .tls(&certs.server_cert_pem, &certs.server_key_pem)
        .start();
    let url = srv.url("/disk.qcow2");
    assert!(url.starts_with("https://"));

    // IMPORTER_CERT_DIR: every non-dot file is a PEM bundle.
    let certdir = work.path().join("certs");
    fs::create_dir(&certdir).expect("mkdir");
    fs::write(certdir.join("ca.pem"), &certs.ca_cert_pem).expect("write");
    fs::write(certdir.join(".hidden"), "not a cert").expect("write");
    let mut pod = Pod::new();
    pod.http(&url)
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_CERT_DIR", certdir.to_str().expect("utf8"));
    pod.run().assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);

    // The cluster-wide proxy CA directory works the same way.
    let mut pod = Pod::new();
    fs::create_dir(pod.path("proxycerts")).expect("mkdir");
    fs::write(pod.path("proxycerts/ca.pem"), &certs.ca_cert_pem).expect("write");
    pod.http(&url).env("IMPORTER_IMAGE_SIZE", "8Mi");
    pod.run().assert_code(0).assert_message(SUCCESS);

    // Without the CA the server is not trusted.
    let mut pod = Pod::new();
    pod.http(&url).env("IMPORTER_IMAGE_SIZE", "8Mi");
    pod.run().assert_code(1);
    assert!(!pod.disk().exists());

    // INSECURE_TLS skips verification.
    let mut pod = Pod::new();
    pod.http(&url)
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("INSECURE_TLS", "true");
    pod.run().assert_code(0).assert_message(SUCCESS);
}

// ---------------------------------------------------------------------------------------
// Scratch space
// ---------------------------------------------------------------------------------------

/// An image whose L1 table sits after its data (written, grown, written
/// again), with more data before the L1 than the decoder's 4 MiB reorder window.
fn l1_after_data_image(dir: &Path) -> (PathBuf, PathBuf) {
    let img = dir.join("grown.qcow2");
    qcow2_create(&img, 64 * MIB, "");
    qemu_io(&img, &["write -P 1 0 12M"]);
    crate::common::qemu_img(&["resize", "-q", img.to_str().expect("utf8"), "1G"]);
    qemu_io(&img, &["write -P 2 900M 1M"]);
    let raw = qemu_raw(&img);
    (img, raw)
}

#[test]
fn scratch_required_without_scratch_and_used_with_it() {
    let work = tempdir();
    let (img, raw) = l1_after_data_image(work.path());
    let srv = TestServer::builder(Body::file(&img)).ranges(false).start();

    let mut pod = Pod::new();
    pod.http(&srv.url("/grown.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "1Gi");
    pod.run().assert_code(0).assert_message(SCRATCH_REQUIRED);

    // The controller then recreates the pod with a scratch volume.
    let mut pod = Pod::new();
    fs::create_dir(pod.path("scratch")).expect("mkdir scratch");
    pod.http(&srv.url("/grown.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "1Gi");
    pod.run().assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 1 << 30);
    assert_eq!(
        fs::read_dir(pod.path("scratch")).expect("ls").count(),
        0,
        "spill files are removed"
    );
}

// ---------------------------------------------------------------------------------------
// Progress metric
// ---------------------------------------------------------------------------------------

/// `curl -sk https://127.0.0.1:PORT/<path>`, as the controller scrapes (no verification).
pub(crate) fn scrape(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "2"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn progress_metric_during_import() {
    if !crate::common::have_tool("curl") {
        eprintln!("SKIP: curl is not installed");
        return;
    }
    let work = tempdir();
    let img = work.path().join("random.raw");
    crate::common::make_raw(
        &img,
        6 * MIB,
        &[(0, 6 * MIB, crate::common::Fill::Random(7))],
    );
    // 6 MiB at 1.5 MiB/s: about four seconds of import to watch.
    let srv = TestServer::builder(Body::file(&img))
        .rate_limit(3 * MIB / 2)
        .start();
    let mut pod = Pod::new();
    pod.http(&srv.url("/random.raw"))
        .env("IMPORTER_IMAGE_SIZE", "6Mi");
    let uid = "0b1c7f5e-test";
    let re = progress_regex(uid);
    let mut running = pod.spawn();
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut paths = ["/metrics", "/", "/anything"].iter().cycle();
    while start.elapsed() < Duration::from_secs(60) {
        if running.child.try_wait().expect("wait").is_some() {
            break;
        }
        if let Some(body) = scrape(pod.metrics_port, paths.next().expect("cycle")) {
            let caps = re
                .captures(&body)
                .unwrap_or_else(|| panic!("regex does not match:\n{body}"));
            let v: f64 = caps[2].parse().expect("number");
            seen.push(v);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let end = pod.wait(running);
    eprintln!("progress values scraped: {seen:?}");
    end.assert_code(0).assert_message(SUCCESS);
    assert!(
        seen.iter().any(|&v| v > 0.0 && v < 100.0),
        "no intermediate progress seen: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went down: {seen:?}"
    );
    assert!(seen.iter().all(|&v| v <= 100.0), "{seen:?}");
}

#[test]
fn busy_metrics_port_does_not_stop_the_import() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let srv = TestServer::serve(Body::file(&img));
    let mut pod = Pod::new();
    let holder = std::net::TcpListener::bind("[::]:0")
        .or_else(|_| std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("bind");
    pod.metrics_port = holder.local_addr().expect("addr").port();
    pod.http(&srv.url("/disk.qcow2"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi");
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    assert!(end.stderr.contains("metrics"), "the bind failure is logged");
}

// ---------------------------------------------------------------------------------------
// Entry point and volume-full wording
// ---------------------------------------------------------------------------------------

#[test]
fn invoked_as_cdi_importer() {
    let dir = tempdir();
    let link = dir.path().join("cdi-importer");
    std::os::unix::fs::symlink(crate::common::bin(), &link).expect("symlink");
    let pod = Pod::new();
    let out = Command::new(&link)
        .args(["-alsologtostderr", "-v=1"])
        .env_clear()
        .env("STREAMDISK_POD_ROOT", pod.root.path())
        .env("STREAMDISK_METRICS_PORT", "0")
        .env("PREALLOCATION", "false")
        .env("IMPORTER_SOURCE", "nfs")
        .output()
        .expect("run cdi-importer");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs::read_to_string(pod.path("dev/termination-log")).expect("message"),
        "Unknown data source: nfs"
    );
}

#[test]
fn url_credentials_are_used_but_never_printed() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let srv = TestServer::builder(Body::file(&img))
        .basic_auth("importer", "url-pa55word")
        .start();
    let url = srv
        .url("/disk.qcow2")
        .replace("http://", "http://importer:url-pa55word@");
    let mut pod = Pod::new();
    pod.http(&url).env("IMPORTER_IMAGE_SIZE", "8Mi");
    let end = pod.run();
    end.assert_code(0).assert_message(SUCCESS);
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    assert!(!end.stderr.contains("url-pa55word"), "{}", end.stderr);
}

/// A small tmpfs mounted on `<root>/data`, unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> Option<SmallFs> {
        if !crate::common::is_root() {
            eprintln!("SKIP: mounting a small tmpfs needs root");
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIP: cannot mount a tmpfs");
            return None;
        }
        Some(SmallFs(at.to_path_buf()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_volume_is_reported_with_the_controller_wording() {
    // A raw stream without Content-Length has no size to check up front, so a
    // too-small volume shows up as ENOSPC while writing.
    let work = tempdir();
    let img = work.path().join("random.raw");
    crate::common::make_raw(
        &img,
        8 * MIB,
        &[(0, 8 * MIB, crate::common::Fill::Random(3))],
    );
    let srv = TestServer::builder(Body::file(&img))
        .omit_content_length(true)
        .ranges(false)
        .start();
    let mut pod = Pod::new();
    let Some(_fs) = SmallFs::mount(&pod.path("data"), "4m") else {
        return;
    };
    pod.http(&srv.url("/random.raw"));
    let end = pod.run();
    end.assert_code(1);
    let m = end.message();
    eprintln!("termination message: {m}");
    assert!(
        m.contains("no space left on device")
            || m.contains("is larger than the reported available"),
        "{m}"
    );
    assert!(!pod.disk().exists(), "partial disk.img removed");
}

#[test]
fn sigterm_never_reports_success() {
    let work = tempdir();
    let img = work.path().join("random.raw");
    crate::common::make_raw(
        &img,
        8 * MIB,
        &[(0, 8 * MIB, crate::common::Fill::Random(5))],
    );
    let srv = TestServer::builder(Body::file(&img))
        .rate_limit(MIB)
        .start();
    let mut pod = Pod::new();
    pod.http(&srv.url("/random.raw"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi");
    let running = pod.spawn();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = i32::try_from(running.child.id()).expect("pid");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
    let end = pod.wait(running);
    assert_ne!(end.code, Some(0), "stderr:\n{}", end.stderr);
    assert!(
        end.message().contains("interrupted by SIGTERM"),
        "{}",
        end.message()
    );
    // A partial disk.img may remain after a forced exit; the next attempt
    // starts over (see filesystem_target_with_overhead_resize_and_leftover).
}

// ---------------------------------------------------------------------------------------
// Registry node pull: the image-server sidecar
// ---------------------------------------------------------------------------------------

/// A minimal stand-in for CDI's image-server sidecar: `/info` answers JSON,
/// every other path the disk; no Range support. Returns the port and the
/// paths requested.
fn fake_sidecar(
    disk: Vec<u8>,
    info: &'static str,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    let disk = std::sync::Arc::new(disk);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut stream) = conn else { continue };
            let disk = std::sync::Arc::clone(&disk);
            let seen = std::sync::Arc::clone(&seen2);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h == "\r\n" {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                seen.lock().expect("lock").push(format!("{method} {path}"));
                let body: &[u8] = if path == "/info" {
                    info.as_bytes()
                } else {
                    &disk
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                if method != "HEAD" {
                    let _ = stream.write_all(body);
                }
            });
        }
    });
    (port, seen)
}

#[test]
fn registry_node_pull_with_sidecar() {
    let work = tempdir();
    let (img, raw) = sample_qcow2(work.path(), 8 * MIB);
    let (port, seen) = fake_sidecar(
        fs::read(&img).expect("read"),
        r#"{"env":["PATH=/bin","INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.small","KUBEVIRT_IO_OS=fedora"]}"#,
    );
    let shared = work.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    let ready = shared.join("ready");
    let done = shared.join("done");
    let mut pod = Pod::new();
    pod.http(&format!("http://127.0.0.1:{port}/disk.img"))
        .env("IMPORTER_IMAGE_SIZE", "8Mi")
        .env("IMPORTER_PULL_METHOD", "node")
        .env("IMPORTER_READY_FILE", ready.to_str().expect("utf8"))
        .env("IMPORTER_DONE_FILE", done.to_str().expect("utf8"));
    let running = pod.spawn();
    // The sidecar becomes ready a little later and names the disk file.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(!done.exists());
    fs::write(&ready, "disk/fedora.qcow2").expect("ready");
    let end = pod.wait(running);
    end.assert_code(0).assert_message(
        r#"{"scratchSpaceRequired":false,"preallocationApplied":false,"labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small","kubevirt.io/os":"fedora"},"message":"Import Complete"}"#,
    );
    assert_prefix_equals(&pod.disk(), &raw, 8 * MIB);
    assert!(done.exists(), "done file lets the sidecar exit");
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter().any(|r| r == "GET /disk/fedora.qcow2"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|r| r == "GET /info"), "{seen:?}");
}

#[test]
fn unwritable_termination_log_is_not_a_success() {
    let mut pod = Pod::new();
    // A directory where the file should be: the message cannot be written.
    fs::create_dir(pod.path("dev/termination-log")).expect("mkdir");
    pod.env("IMPORTER_SOURCE", "none")
        .env("IMPORTER_IMAGE_SIZE", "1Mi");
    let end = pod.run();
    assert_eq!(end.code, Some(1), "stderr:\n{}", end.stderr);
}
