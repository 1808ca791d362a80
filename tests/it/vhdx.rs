//! VHDX end to end, compared byte for byte with `qemu-img convert -f vhdx -O raw`.
//!
//! Every image is made at test time: `qemu-img convert -O vhdx` at 1, 8 and 32 MiB
//! blocks and as a fixed image, and `qemu-img create` + `qemu-io` writes in random
//! order (blocks land in the file in write order, not guest order). Each is read from a
//! file, stdin and HTTP, into a file and a loop device. A qemu-made image with its BAT
//! and metadata region moved after the data exercises the out-of-order paths (range
//! reads on a seekable source, the read-ahead and its spill otherwise). Broken images
//! (a bad checksum, a log to replay, a differencing image, truncation) are refused by
//! qemu-img and by streamdisk alike.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use streamdisk::format::vhdx::checksum;

use crate::common::matrix::{assert_no_failures, run_matrix, SourceKind, TargetKind};
use crate::common::{
    assert_same_bytes, make_raw, qemu_img, qemu_raw_fmt, wrap, Fill, Input, Streamdisk, Wrapper,
};

const MIB: u64 = 1 << 20;
const REGION_TABLES: [usize; 2] = [192 << 10, 256 << 10];
const HEADERS: [usize; 2] = [64 << 10, 128 << 10];
const BAT_GUID: [u8; 16] = [
    0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08,
];
const METADATA_GUID: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
const PARENT_LOCATOR_GUID: [u8; 16] = [
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The oracle for a VHDX image.
fn oracle(img: &Path) -> PathBuf {
    qemu_raw_fmt(img, Some("vhdx"))
}

/// A sparse raw disk of `size` bytes with data in a few places (random, text, a
/// zero-filled stretch, the last sector), so that some blocks are allocated and
/// others are not.
fn raw_disk(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("disk.raw");
    make_raw(
        &p,
        size,
        &[
            (0, 300 << 10, Fill::Random(1)),
            (MIB + 4096 + 17, 200_000, Fill::Text),
            (3 * MIB, MIB, Fill::Byte(0)),
            (size / 2 - 1000, 5000, Fill::Random(2)),
            (size - 4096, 4096, Fill::Random(3)),
        ],
    );
    p
}

/// `qemu-img convert -f raw -O vhdx -o OPTS RAW OUT`.
fn vhdx_from_raw(raw: &Path, out: &Path, opts: &str) {
    let mut args: Vec<OsString> = ["convert", "-q", "-f", "raw", "-O", "vhdx", "-o", opts]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(raw.into());
    args.push(out.into());
    qemu_img(&args);
}

/// `qemu-io -f vhdx -c CMD ... IMAGE`, checking that every command worked.
fn qemu_io_vhdx(img: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "vhdx"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(img).output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_ascii_lowercase();
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("error"),
        "qemu-io {cmds:?}: {text}"
    );
}

/// Where a region of the first region table lies: (entry offset in the table,
/// file offset, length).
fn region(img: &[u8], guid: &[u8; 16]) -> (usize, u64, u32) {
    let rt = REGION_TABLES[0];
    let count = u32_at(img, rt + 8) as usize;
    (0..count)
        .map(|i| rt + 16 + 32 * i)
        .find(|&e| &img[e..e + 16] == guid)
        .map(|e| (e - rt, u64_at(img, e + 16), u32_at(img, e + 24)))
        .expect("region present")
}

/// Re-seals both region tables and both headers after a change.
fn reseal(img: &mut [u8]) {
    for at in REGION_TABLES {
        let c = checksum(&img[at..at + (64 << 10)], 4);
        img[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    }
    for at in HEADERS {
        let c = checksum(&img[at..at + 4096], 4);
        img[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    }
}

/// The payload blocks that are fully present, as (block, file offset), in guest order.
fn allocated_blocks(img: &[u8]) -> Vec<(u64, u64)> {
    let (_, bat, bat_len) = region(img, &BAT_GUID);
    let (_, md, _) = region(img, &METADATA_GUID);
    let md = md as usize;
    // The file parameters item comes first in qemu's metadata table.
    let fp = u32_at(img, md + 32 + 16) as usize;
    let bs = u64::from(u32_at(img, md + fp));
    let chunk_ratio = (1u64 << 23) * 512 / bs;
    (0..u64::from(bat_len) / 8)
        .filter(|i| i % (chunk_ratio + 1) != chunk_ratio)
        .filter_map(|i| {
            let e = u64_at(img, bat as usize + 8 * i as usize);
            (e & 7 == 6).then_some((i - i / (chunk_ratio + 1), e & !0xfffff))
        })
        .collect()
}

/// Moves the BAT and the metadata region after everything else in the file (the
/// metadata first, then the BAT, each at a MiB boundary), zeroes their old places and
/// re-seals the region tables. qemu reads the result as before.
fn move_regions_to_the_end(img: &Path) {
    let mut d = fs::read(img).expect("read image");
    let (bat_e, bat, bat_len) = region(&d, &BAT_GUID);
    let (md_e, md, md_len) = region(&d, &METADATA_GUID);
    let new_md = (d.len() as u64).div_ceil(MIB) * MIB;
    let new_bat = (new_md + u64::from(md_len)).div_ceil(MIB) * MIB;
    d.resize((new_bat + u64::from(bat_len)) as usize, 0);
    for (from, to, len) in [(md, new_md, md_len), (bat, new_bat, bat_len)] {
        let (from, to, len) = (from as usize, to as usize, len as usize);
        let bytes = d[from..from + len].to_vec();
        d[to..to + len].copy_from_slice(&bytes);
        d[from..from + len].fill(0);
    }
    for rt in REGION_TABLES {
        d[rt + bat_e + 16..rt + bat_e + 24].copy_from_slice(&new_bat.to_le_bytes());
        d[rt + md_e + 16..rt + md_e + 24].copy_from_slice(&new_md.to_le_bytes());
    }
    reseal(&mut d);
    fs::write(img, &d).expect("write image");
}

/// Every source kind (file, stdin, HTTP with and without ranges) into a file and a
/// loop device, compared with the oracle.
fn check_all(label: &str, img: &Path) {
    let oracle = oracle(img);
    let failures = run_matrix(
        label,
        img,
        &oracle,
        &SourceKind::ALL,
        &TargetKind::FILE_AND_LOOP,
        &[],
    );
    assert_no_failures(&failures);
}

#[test]
fn vhdx_block_sizes_match_qemu() {
    let dir = crate::common::tempdir();
    let raw = raw_disk(dir.path(), 24 * MIB);
    for bs in ["1M", "8M", "32M"] {
        let img = dir.path().join(format!("b{bs}.vhdx"));
        vhdx_from_raw(&raw, &img, &format!("block_size={bs}"));
        let d = fs::read(&img).expect("read");
        let blocks = allocated_blocks(&d);
        assert!(!blocks.is_empty(), "{bs}: no block allocated");
        check_all(&format!("vhdx block_size={bs}"), &img);
    }
}

/// Fixed images: every block has its place in the file. `qemu-img convert` still marks
/// the all-zero blocks as zero blocks unless `block_state_zero=off`.
#[test]
fn vhdx_fixed_matches_qemu() {
    let dir = crate::common::tempdir();
    let raw = raw_disk(dir.path(), 6 * MIB);
    for (opts, present) in [
        ("subformat=fixed,block_size=1M", 5),
        ("subformat=fixed,block_size=1M,block_state_zero=off", 6),
    ] {
        let img = dir.path().join("fixed.vhdx");
        vhdx_from_raw(&raw, &img, opts);
        let d = fs::read(&img).expect("read");
        assert_eq!(allocated_blocks(&d).len(), present, "{opts}");
        check_all(&format!("vhdx {opts}"), &img);
    }
}

/// Blocks written by qemu-io in shuffled order: the BAT maps them out of guest order.
#[test]
fn vhdx_written_in_random_order_matches_qemu() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("random.vhdx");
    qemu_img(&[
        OsString::from("create"),
        "-q".into(),
        "-f".into(),
        "vhdx".into(),
        "-o".into(),
        "block_size=1M".into(),
        img.clone().into(),
        "20M".into(),
    ]);
    let mut offsets: Vec<u64> = vec![7, 2, 15, 0, 11, 4, 19, 9, 13];
    let cmds: Vec<String> = offsets
        .drain(..)
        .enumerate()
        .map(|(i, mb)| {
            // A piece of each block, unaligned, with its own pattern.
            format!(
                "write -P {} {} {}",
                0x10 + i,
                mb * MIB + 512 * (i as u64 + 1),
                64 * 1024 + 512 * i as u64
            )
        })
        .collect();
    qemu_io_vhdx(&img, &cmds);
    let d = fs::read(&img).expect("read");
    let blocks = allocated_blocks(&d);
    assert_eq!(blocks.len(), 9);
    assert!(
        blocks.windows(2).any(|w| w[0].1 > w[1].1),
        "blocks are in guest order in the file: {blocks:?}"
    );
    check_all("vhdx random order", &img);
}

/// The BAT and the metadata region after the data: a seekable source reads them out of
/// order, a pipe or an HTTP server without ranges holds the stream (memory, then the
/// spill) until they pass.
#[test]
fn vhdx_with_regions_after_the_data_matches_qemu() {
    let dir = crate::common::tempdir();
    let raw = raw_disk(dir.path(), 8 * MIB);
    let img = dir.path().join("late.vhdx");
    vhdx_from_raw(&raw, &img, "block_size=1M");
    move_regions_to_the_end(&img);
    let d = fs::read(&img).expect("read");
    let (_, bat, _) = region(&d, &BAT_GUID);
    let blocks = allocated_blocks(&d);
    assert!(
        blocks.iter().all(|&(_, host)| host < bat),
        "the BAT is not after the data"
    );
    check_all("vhdx regions last", &img);
    // Through gzip (no range reads): the read-ahead spills past its window.
    let gz = wrap(&img, Wrapper::Gzip).expect("gzip");
    let out = dir.path().join("late.out");
    let run = Streamdisk::convert(&gz, &out)
        .args(["--window", "1MiB"])
        .run();
    run.assert_ok();
    assert_same_bytes(&out, &oracle(&img));
    // With spilling forbidden, the pipe is refused, saying why.
    let out2 = dir.path().join("late2.out");
    Streamdisk::convert("-", &out2)
        .args(["--window", "1MiB", "--no-spill"])
        .input(Input::Pipe(img.clone()))
        .run()
        .assert_refused(&["scratch"]);
}

#[test]
fn vhdx_inside_gzip_matches_qemu() {
    let dir = crate::common::tempdir();
    let raw = raw_disk(dir.path(), 12 * MIB);
    let img = dir.path().join("gz.vhdx");
    vhdx_from_raw(&raw, &img, "block_size=1M");
    let gz = wrap(&img, Wrapper::Gzip).expect("gzip");
    let oracle = oracle(&img);
    let failures = run_matrix(
        "vhdx.gz",
        &gz,
        &oracle,
        &SourceKind::CORE,
        &[TargetKind::NewFile],
        &[],
    );
    assert_no_failures(&failures);
}

/// What `qemu-img` says when it cannot open or read `img`; `None` if it can.
fn qemu_refusal(img: &Path) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "vhdx", "-O", "raw"])
        .arg(img)
        .arg(img.with_extension("qemu.raw"))
        .output()
        .expect("run qemu-img");
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// streamdisk refuses `img` from a file and from stdin, naming one of `words`.
fn assert_refused(img: &Path, words: &[&str]) -> String {
    let dir = crate::common::tempdir();
    let out = dir.path().join("out.raw");
    let line = Streamdisk::convert(img, &out).run().assert_refused(words);
    Streamdisk::convert("-", &out)
        .input(Input::Pipe(img.to_path_buf()))
        .run()
        .assert_refused(words);
    line
}

fn small_image(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let raw = raw_disk(dir, 4 * MIB);
    let img = dir.join(name);
    vhdx_from_raw(&raw, &img, "block_size=1M");
    let d = fs::read(&img).expect("read");
    (img, d)
}

#[test]
fn vhdx_with_a_bad_checksum_is_refused() {
    let dir = crate::common::tempdir();
    let (img, mut d) = small_image(dir.path(), "crc.vhdx");
    d[REGION_TABLES[0] + 40] ^= 0x10;
    fs::write(&img, &d).expect("write");
    assert!(qemu_refusal(&img).is_some(), "qemu-img read it");
    let line = assert_refused(&img, &["region table"]);
    assert!(line.contains("vhdx:") && line.contains("CRC-32C"), "{line}");
    // Both headers broken.
    let (img, mut d) = small_image(dir.path(), "hdr.vhdx");
    for at in HEADERS {
        d[at + 100] ^= 1;
    }
    fs::write(&img, &d).expect("write");
    assert!(qemu_refusal(&img).is_some(), "qemu-img read it");
    assert_refused(&img, &["no valid header"]);
}

/// A log entry (one zero descriptor over a sector of the header section's reserved
/// space) under a LogGuid set in both headers: qemu refuses it read-only, and
/// `qemu-img check -r all` replays it.
#[test]
fn vhdx_with_a_log_to_replay_is_refused() {
    let dir = crate::common::tempdir();
    let (img, mut d) = small_image(dir.path(), "log.vhdx");
    let guid = [0x5au8; 16];
    for at in HEADERS {
        d[at + 48..at + 64].copy_from_slice(&guid);
    }
    // A LogGuid over an empty log: nothing to replay, both read it.
    let mut clean = d.clone();
    reseal(&mut clean);
    let clean_img = dir.path().join("clean-log.vhdx");
    fs::write(&clean_img, &clean).expect("write");
    assert!(qemu_refusal(&clean_img).is_none(), "qemu-img refused it");
    let out = dir.path().join("clean.raw");
    Streamdisk::convert(&clean_img, &out).run().assert_ok();
    assert_same_bytes(&out, &oracle(&clean_img));
    // One valid entry.
    let log = u64_at(&d, HEADERS[0] + 72) as usize;
    let len = d.len() as u64;
    let e = &mut d[log..log + 4096];
    e[..4].copy_from_slice(b"loge");
    e[8..12].copy_from_slice(&4096u32.to_le_bytes());
    e[16..24].copy_from_slice(&1u64.to_le_bytes());
    e[24..28].copy_from_slice(&1u32.to_le_bytes());
    e[32..48].copy_from_slice(&guid);
    e[48..56].copy_from_slice(&len.to_le_bytes());
    e[56..64].copy_from_slice(&len.to_le_bytes());
    e[64..68].copy_from_slice(b"zero");
    e[72..80].copy_from_slice(&4096u64.to_le_bytes());
    e[80..88].copy_from_slice(&(512u64 << 10).to_le_bytes());
    e[88..96].copy_from_slice(&1u64.to_le_bytes());
    let c = checksum(e, 4);
    e[4..8].copy_from_slice(&c.to_le_bytes());
    reseal(&mut d);
    fs::write(&img, &d).expect("write");
    let q = qemu_refusal(&img).expect("qemu-img read a log to replay");
    assert!(q.contains("replayed"), "{q}");
    assert_refused(&img, &["log", "replay"]);
    // Replayed by qemu-img check -r all: now both read it.
    let _ = Command::new("qemu-img")
        .args(["check", "-q", "-r", "all", "-f", "vhdx"])
        .arg(&img)
        .status()
        .expect("qemu-img check");
    assert!(qemu_refusal(&img).is_none(), "the log was not replayed");
    let out = dir.path().join("replayed.raw");
    Streamdisk::convert(&img, &out).run().assert_ok();
    assert_same_bytes(&out, &oracle(&img));
}

#[test]
fn differencing_vhdx_is_refused_by_name() {
    let dir = crate::common::tempdir();
    let (img, mut d) = small_image(dir.path(), "diff.vhdx");
    let (_, md, _) = region(&d, &METADATA_GUID);
    let md = md as usize;
    let count = u16::from_le_bytes([d[md + 10], d[md + 11]]) as usize;
    // Has-parent in the file parameters, and a parent locator item.
    let fp = u32_at(&d, md + 32 + 16) as usize;
    d[md + fp + 4] |= 2;
    let e = md + 32 * (count + 1);
    d[e..e + 16].copy_from_slice(&PARENT_LOCATOR_GUID);
    d[e + 16..e + 20].copy_from_slice(&(128u32 << 10).to_le_bytes());
    d[e + 20..e + 24].copy_from_slice(&20u32.to_le_bytes());
    d[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes());
    d[md + 10..md + 12].copy_from_slice(&(count as u16 + 1).to_le_bytes());
    fs::write(&img, &d).expect("write");
    assert!(qemu_refusal(&img).is_some(), "qemu-img read it");
    assert_refused(&img, &["differencing"]);
}

#[test]
fn truncated_vhdx_is_refused() {
    let dir = crate::common::tempdir();
    let (img, d) = small_image(dir.path(), "cut.vhdx");
    let blocks = allocated_blocks(&d);
    let last = blocks.iter().map(|b| b.1).max().expect("a block");
    for cut in [last + 4096, 3 * MIB + 100, 200 << 10] {
        fs::write(&img, &d[..cut as usize]).expect("write");
        assert!(
            qemu_refusal(&img).is_some(),
            "qemu-img read it cut at {cut}"
        );
        assert_refused(&img, &["truncated"]);
    }
}

fn info_json(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let run = Streamdisk::new()
        .arg("info")
        .args(args)
        .args(["--output", "json"])
        .run();
    run.assert_ok();
    serde_json::from_str(run.stdout.trim()).expect("info JSON")
}

/// `info --output json` names what qemu-img names: format, virtual size, block size.
#[test]
fn vhdx_info_json_matches_qemu_img() {
    let dir = crate::common::tempdir();
    let raw = raw_disk(dir.path(), 40 * MIB);
    for bs in ["1M", "32M"] {
        let img = dir.path().join(format!("i{bs}.vhdx"));
        vhdx_from_raw(&raw, &img, &format!("block_size={bs}"));
        let q: serde_json::Value = serde_json::from_str(&qemu_img(&[
            OsString::from("info"),
            "--output".into(),
            "json".into(),
            img.clone().into(),
        ]))
        .expect("qemu-img JSON");
        let gz = wrap(&img, Wrapper::Gzip).expect("gzip");
        for input in [img.as_os_str(), gz.as_os_str()] {
            let j = info_json(&[input]);
            for key in ["format", "virtual-size", "cluster-size"] {
                assert_eq!(j[key], q[key], "{key}: ours {j}, qemu-img {q}");
            }
            assert_eq!(j.get("format-specific"), q.get("format-specific"));
        }
    }
}
