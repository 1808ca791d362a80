//! Issue 14: the bzip2 wrapper, end to end. Images are compressed with the
//! `bzip2` tool when it is installed (with the `bzip2` crate's encoder
//! otherwise, saying so), and each import is compared byte for byte with
//! `qemu-img convert -O raw` of the image before compression.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::matrix::{assert_no_failures, run_matrix, SourceKind, TargetKind};
use crate::common::{make_raw, qcow2_from_raw, qemu_raw_fmt, tempdir, Fill, Streamdisk};

const MIB: u64 = 1 << 20;

/// `bzip2 -c -1 FILE`, or the crate's encoder at level 1 when the tool is
/// missing (CI installs it: package `bzip2`).
fn bzip2_bytes(data_file: &Path) -> Vec<u8> {
    let out = Command::new("bzip2")
        .args(["-c", "-1"])
        .arg(data_file)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => o.stdout,
        _ => {
            eprintln!("NOTE: no bzip2 tool; compressing with the bzip2 crate instead");
            let data = fs::read(data_file).expect("read");
            let mut enc = ::bzip2::write::BzEncoder::new(Vec::new(), ::bzip2::Compression::new(1));
            enc.write_all(&data).expect("bzip2");
            enc.finish().expect("bzip2")
        }
    }
}

fn bz2_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".bz2");
    let out = PathBuf::from(name);
    fs::write(&out, bzip2_bytes(path)).expect("write bz2");
    out
}

/// A 4 MiB raw disk with data, text and holes.
fn mixed_raw(dir: &Path) -> PathBuf {
    let p = dir.join("mixed.raw");
    make_raw(
        &p,
        4 * MIB,
        &[
            (0, 300_000, Fill::Random(21)),
            (MIB + 99, 400_000, Fill::Text),
            (4 * MIB - 4096, 4096, Fill::Random(22)),
        ],
    );
    p
}

fn check(label: &str, image: &Path, oracle: &Path) {
    let failures = run_matrix(
        label,
        image,
        oracle,
        &SourceKind::CORE,
        &TargetKind::FILE_AND_LOOP,
        &[],
    );
    assert_no_failures(&failures);
}

#[test]
fn raw_bz2_matches_qemu_img() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path());
    let oracle = qemu_raw_fmt(&raw, Some("raw"));
    check("raw.bz2", &bz2_file(&raw), &oracle);
}

#[test]
fn qcow2_bz2_matches_qemu_img() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path());
    let img = dir.path().join("disk.qcow2");
    qcow2_from_raw(&raw, &img, false, "");
    let oracle = qemu_raw_fmt(&img, Some("qcow2"));
    check("qcow2.bz2", &bz2_file(&img), &oracle);
}

/// Two streams, as pbzip2 writes (or `cat a.bz2 b.bz2`).
#[test]
fn multi_stream_raw_bz2() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path());
    let bytes = fs::read(&raw).expect("read");
    let (a, b) = bytes.split_at(bytes.len() / 2 + 12345);
    let (pa, pb) = (dir.path().join("a.part"), dir.path().join("b.part"));
    fs::write(&pa, a).expect("a");
    fs::write(&pb, b).expect("b");
    let mut joined = bzip2_bytes(&pa);
    joined.extend(bzip2_bytes(&pb));
    let img = dir.path().join("two.raw.bz2");
    fs::write(&img, joined).expect("write");
    let oracle = qemu_raw_fmt(&raw, Some("raw"));
    check("two-stream raw.bz2", &img, &oracle);
}

#[test]
fn truncated_and_corrupt_bz2_are_refused() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path());
    let bytes = fs::read(bz2_file(&raw)).expect("read");
    let cut = dir.path().join("cut.raw.bz2");
    fs::write(&cut, &bytes[..bytes.len() - 20]).expect("write");
    let run = Streamdisk::convert(&cut, dir.path().join("out1.raw")).run();
    run.assert_refused(&["bzip2: the compressed stream is truncated"]);
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 32] {
        *b ^= 0x5a;
    }
    let corrupt = dir.path().join("bad.raw.bz2");
    fs::write(&corrupt, &bad).expect("write");
    let run = Streamdisk::convert(&corrupt, dir.path().join("out2.raw")).run();
    run.assert_refused(&["bzip2: corrupt data"]);
}
