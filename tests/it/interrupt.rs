//! Interruptions at the CLI level (issue 5): SIGTERM stops an import with a
//! non-zero status, `kill -9` followed by a rerun of the same command gives a
//! correct target, and an HTTP body cut several times is resumed seamlessly
//! through the whole pipeline (decoder, checksum and writer carry on).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::server::{Body, TestServer};
use crate::common::{assert_same_bytes, bin, make_raw, qcow2_from_raw, qemu_raw, tempdir, Fill};

/// A 24 MiB qcow2 of incompressible data (so the download dominates) with a
/// zero hole in the middle.
fn image(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("src.raw");
    make_raw(
        &raw,
        32 << 20,
        &[
            (0, 12 << 20, Fill::Random(7)),
            (20 << 20, 12 << 20, Fill::Random(9)),
        ],
    );
    let img = dir.join("src.qcow2");
    qcow2_from_raw(&raw, &img, false, "");
    img
}

fn spawn_convert(url: &str, target: &Path, extra: &[&str]) -> Child {
    Command::new(bin())
        .args(["convert", url])
        .arg(target)
        .args(["--progress", "none"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamdisk")
}

/// Waits for `child` at most `limit`; kills it and fails the test on a hang.
fn wait_for(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            return (status, err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("streamdisk did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the server has sent at least `n` body bytes (the import is under way).
fn wait_until_sent(srv: &TestServer, n: u64) {
    let start = Instant::now();
    while srv.body_bytes_sent() < n {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the import never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("kill failed");
}

#[test]
fn sigterm_stops_the_import_with_a_failure_status() {
    let dir = tempdir();
    let img = image(dir.path());
    // 4 MiB/s: the 24 MiB download takes several seconds, so the signal lands mid-stream.
    let srv = TestServer::builder(Body::file(&img))
        .rate_limit(4 << 20)
        .start();
    let target = dir.path().join("out.raw");
    let mut child = spawn_convert(&srv.url("/img.qcow2"), &target, &[]);
    wait_until_sent(&srv, 2 << 20);
    let sent_at = Instant::now();
    signal(&child, libc::SIGTERM);
    let (status, stderr) = wait_for(&mut child, Duration::from_secs(30));
    let took = sent_at.elapsed();
    println!("stopped {took:?} after SIGTERM, status {status:?}");
    assert!(!status.success(), "must not report success: {stderr}");
    assert!(
        stderr.contains("SIGTERM"),
        "the error names the signal: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn rerun_after_kill_9_gives_a_correct_target() {
    let dir = tempdir();
    let img = image(dir.path());
    let expected = qemu_raw(&img);
    let target = dir.path().join("out.raw");
    {
        let slow = TestServer::builder(Body::file(&img))
            .rate_limit(4 << 20)
            .start();
        let mut child = spawn_convert(&slow.url("/img.qcow2"), &target, &[]);
        wait_until_sent(&slow, 6 << 20);
        signal(&child, libc::SIGKILL);
        let (status, _) = wait_for(&mut child, Duration::from_secs(30));
        assert!(!status.success());
    }
    // The same command again, against a server that now runs at full speed.
    let srv = TestServer::builder(Body::file(&img)).start();
    let mut child = spawn_convert(&srv.url("/img.qcow2"), &target, &[]);
    let (status, stderr) = wait_for(&mut child, Duration::from_secs(120));
    assert!(status.success(), "rerun failed: {stderr}");
    assert_same_bytes(&target, &expected);
}

#[test]
fn five_connection_drops_are_resumed_through_the_whole_pipeline() {
    let dir = tempdir();
    let img = image(dir.path());
    let expected = qemu_raw(&img);
    let sha = {
        use sha2::Digest;
        let bytes = std::fs::read(&img).expect("read image");
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let srv = TestServer::builder(Body::file(&img))
        .drop_after(vec![1 << 20, 3 << 20, 5 << 20, 2 << 20, 4 << 20, 700_001])
        .start();
    let target = dir.path().join("out.raw");
    let checksum = format!("sha256:{sha}");
    let mut child = spawn_convert(&srv.url("/img.qcow2"), &target, &["--checksum", &checksum]);
    let (status, stderr) = wait_for(&mut child, Duration::from_secs(120));
    assert!(status.success(), "import failed: {stderr}");
    assert_same_bytes(&target, &expected);
    // Every reconnect resumed at the exact next byte: the first GET starts at
    // 0 and each later one asks for the byte after everything sent so far.
    let gets: Vec<_> = srv
        .log()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert!(
        gets.len() >= 7,
        "expected 6 resumes, saw {} GETs",
        gets.len()
    );
    let mut expected_from = 0u64;
    for (i, (g, cut)) in gets
        .iter()
        .zip([1u64 << 20, 3 << 20, 5 << 20, 2 << 20, 4 << 20, 700_001])
        .enumerate()
    {
        let asked = g
            .range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert_eq!(asked, expected_from, "GET #{i} resumed at the wrong byte");
        expected_from += cut;
    }
}
