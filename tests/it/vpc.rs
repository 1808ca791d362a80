//! VHD (qemu's `vpc`): dynamic and fixed disks made at test time by `qemu-img convert`
//! and by qemu-io writes in random order, from every source kind into every target
//! kind, compared byte for byte with `qemu-img convert -f vpc -O raw`; inside gzip;
//! the footer's size rules; `info`; and every broken or unsupported image refused by
//! name with exit 1, never written past its virtual size.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::matrix::{
    assert_no_failures, assert_refused_everywhere, convert_once, run_matrix, SourceKind, TargetKind,
};
use crate::common::{
    assert_same_bytes, make_raw, qemu_img, qemu_raw_fmt, wrap, Fill, Input, MemCgroup, SplitMix,
    Streamdisk, Wrapper,
};

const MIB: u64 = 1 << 20;
/// qemu's VHD block size.
const BLOCK: u64 = 2 * MIB;

/// Runs `qemu-io -f FMT -c CMD ... IMAGE`; qemu-io exits 0 even when a command fails, so
/// its output is checked too.
pub fn qemu_io_fmt(image: &Path, fmt: &str, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    let out = c.arg(image).output().expect("run qemu-io");
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

/// `count` writes of varied sizes at varied offsets below `vsize`, in a shuffled
/// order: some cross a block boundary, some are a single sector, one is in the last
/// (partial) block, and some overwrite earlier ones.
pub fn shuffled_writes(vsize: u64, block: u64, count: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix(seed);
    let mut writes = Vec::new();
    for i in 0..count {
        let len = match i % 4 {
            0 => 512,
            1 => 64 << 10,
            2 => block + 4096,
            _ => 3 * 4096,
        };
        let max_start = (vsize - len) / 512;
        let off = (rng.next_u64() % max_start) * 512;
        writes.push((off, len, 1 + (i % 250) as u8));
    }
    // Across a boundary, and the very end of the disk.
    writes.push((block - 4096, 8192, 0xb0));
    writes.push((vsize - 4096, 4096, 0xe0));
    for i in (1..writes.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        writes.swap(i, j);
    }
    writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect()
}

/// A raw disk with random, text, constant and zero regions.
fn mixed_raw(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    make_raw(
        &p,
        size,
        &[
            (0, 300 << 10, Fill::Random(1)),
            (BLOCK - 8192, 16384, Fill::Text),
            (3 * MIB, MIB, Fill::Byte(0x5a)),
            (size - 70_000, 70_000, Fill::Random(2)),
        ],
    );
    p
}

fn vpc_from_raw(raw: &Path, out: &Path, subformat: &str) {
    let opt = format!("subformat={subformat}");
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "vpc", "-o", &opt]
        .into_iter()
        .map(OsStr::new)
        .collect();
    args.extend([raw.as_os_str(), out.as_os_str()]);
    qemu_img(&args);
}

/// The virtual size qemu-img reports for `img` read as `fmt`.
pub fn virtual_size(img: &Path, fmt: &str) -> u64 {
    qemu_info(img, fmt)["virtual-size"]
        .as_u64()
        .expect("qemu-img info has a virtual size")
}

fn vpc_create(out: &Path, size: u64, subformat: &str) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        &format!("subformat={subformat}"),
        out.to_str().unwrap(),
        &size.to_string(),
    ]);
}

fn oracle(img: &Path) -> PathBuf {
    qemu_raw_fmt(img, Some("vpc"))
}

fn read(path: &Path, off: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, off)
        .unwrap();
    b
}

fn write(path: &Path, off: u64, b: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(b, off)
        .unwrap();
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Rewrites the 512-byte footer at `at` with `f` and fixes its checksum.
fn patch_footer(path: &Path, at: u64, f: impl Fn(&mut [u8])) {
    let mut footer = read(path, at, 512);
    f(&mut footer);
    footer[64..68].fill(0);
    let sum = footer
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)));
    footer[64..68].copy_from_slice(&(!sum).to_be_bytes());
    write(path, at, &footer);
}

/// Both footers of a dynamic VHD.
fn patch_both_footers(path: &Path, f: impl Fn(&mut [u8]) + Copy) {
    let len = fs::metadata(path).unwrap().len();
    patch_footer(path, 0, f);
    patch_footer(path, len - 512, f);
}

/// The BAT of a qemu-made dynamic VHD (header at 512, so the table offset is at 528).
fn bat(path: &Path) -> (u64, Vec<u32>) {
    let h = read(path, 512, 1024);
    let off = u64::from_be_bytes(h[16..24].try_into().unwrap());
    let n = be_u32(&h, 28) as usize;
    let t = read(path, off, 4 * n);
    (off, (0..n).map(|i| be_u32(&t, 4 * i)).collect())
}

fn set_bat(path: &Path, index: usize, sector: u32) {
    let (off, _) = bat(path);
    write(path, off + 4 * index as u64, &sector.to_be_bytes());
}

#[test]
fn dynamic_from_qemu_img_convert() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "d.raw", 7 * MIB);
    let img = dir.path().join("d.vhd");
    vpc_from_raw(&raw, &img, "dynamic");
    assert_eq!(&read(&img, 0, 8), b"conectix");
    let oracle = oracle(&img);
    let mut failures = run_matrix(
        "dynamic VHD",
        &img,
        &oracle,
        &SourceKind::ALL,
        &TargetKind::ALL,
        &[],
    );
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        failures.extend(run_matrix(
            "dynamic VHD in gzip",
            &gz,
            &oracle,
            &[SourceKind::File, SourceKind::Stdin, SourceKind::HttpRange],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

#[test]
fn fixed_from_qemu_img_convert() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "f.raw", 7 * MIB);
    let img = dir.path().join("f.vhd");
    vpc_from_raw(&raw, &img, "fixed");
    let len = fs::metadata(&img).unwrap().len();
    assert_ne!(&read(&img, 0, 8), b"conectix");
    assert_eq!(&read(&img, len - 512, 8), b"conectix");
    let oracle = oracle(&img);
    assert_eq!(fs::metadata(&oracle).unwrap().len(), len - 512);
    // Every source: the footer is found up front (file, HTTP with ranges) or held back
    // at the end of the stream (stdin, HTTP without ranges, gzip).
    let mut failures = run_matrix(
        "fixed VHD",
        &img,
        &oracle,
        &SourceKind::ALL,
        &TargetKind::ALL,
        &[],
    );
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        failures.extend(run_matrix(
            "fixed VHD in gzip",
            &gz,
            &oracle,
            &[SourceKind::File, SourceKind::Stdin, SourceKind::HttpRange],
            &[TargetKind::NewFile, TargetKind::Loop],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

#[test]
fn dynamic_written_by_qemu_io_in_random_order() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("rand.vhd");
    let vsize = 23 * MIB;
    vpc_create(&img, vsize, "dynamic");
    let vsize = virtual_size(&img, "vpc");
    qemu_io_fmt(&img, "vpc", &shuffled_writes(vsize, BLOCK, 14, 7));
    // The blocks are stored in the order they were first written, not in guest order.
    let (_, entries) = bat(&img);
    let allocated: Vec<u32> = entries.iter().copied().filter(|&e| e != u32::MAX).collect();
    assert!(allocated.len() > 3, "{entries:?}");
    assert!(
        allocated.windows(2).any(|w| w[0] > w[1]),
        "blocks in guest order: {entries:?}"
    );
    let oracle = oracle(&img);
    assert_no_failures(&run_matrix(
        "random-order dynamic VHD",
        &img,
        &oracle,
        &SourceKind::CORE,
        &TargetKind::FILE_AND_LOOP,
        &[],
    ));
}

#[test]
fn fixed_written_by_qemu_io_in_random_order() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("rand-fixed.vhd");
    vpc_create(&img, 9 * MIB, "fixed");
    let vsize = virtual_size(&img, "vpc");
    qemu_io_fmt(&img, "vpc", &shuffled_writes(vsize, BLOCK, 8, 8));
    let oracle = oracle(&img);
    assert_no_failures(&run_matrix(
        "random-order fixed VHD",
        &img,
        &oracle,
        &SourceKind::CORE,
        &[TargetKind::NewFile],
        &[],
    ));
}

/// 100 GiB, three blocks written: a 200 KiB BAT streamed from a pipe, a sparse target.
#[test]
fn large_sparse_dynamic_from_a_pipe() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("big.vhd");
    vpc_create(&img, 100 << 30, "dynamic");
    let vsize = virtual_size(&img, "vpc");
    qemu_io_fmt(
        &img,
        "vpc",
        &[
            format!("write -P 1 {} 4096", vsize - 4096),
            "write -P 2 0 4096".to_string(),
            format!("write -P 3 {} 1M", 50u64 << 30),
        ],
    );
    let oracle = oracle(&img);
    for s in [SourceKind::Stdin, SourceKind::File] {
        convert_once(&img, &oracle, s, TargetKind::NewFile, &[])
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
}

/// The footer's size rules, as qemu applies them to a fixed disk: the virtual size
/// from `current_size` or from the geometry by creator; less than the data cuts the
/// disk, more adds the footer's bytes and zeros. From a file the result is qemu's
/// every time; from a stream a footer smaller than the data is refused, since the data
/// was already written.
#[test]
fn fixed_footer_sizes_match_qemu() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "s.raw", 6 * MIB);
    let base = dir.path().join("s.vhd");
    vpc_from_raw(&raw, &base, "fixed");
    let len = fs::metadata(&base).unwrap().len();
    let data = len - 512;
    type Chs = Option<(u16, u8, u8)>;
    let cases: [(&str, &[u8; 4], Chs, u64, bool); 5] = [
        ("current size larger", b"qem2", None, data + MIB, true),
        (
            "current size a sector larger",
            b"win ",
            None,
            data + 512,
            true,
        ),
        ("current size smaller", b"qem2", None, data - MIB, false),
        ("geometry smaller", b"vpc ", Some((100, 4, 17)), data, false),
        (
            "largest geometry",
            b"vbox",
            Some((65535, 16, 255)),
            data,
            true,
        ),
    ];
    for (name, app, chs, size, stream_ok) in cases {
        let img = dir.path().join(format!("{}.vhd", name.replace(' ', "-")));
        fs::copy(&base, &img).unwrap();
        patch_footer(&img, data, |f| {
            f[28..32].copy_from_slice(app);
            f[48..56].copy_from_slice(&size.to_be_bytes());
            if let Some((c, h, s)) = chs {
                f[56..58].copy_from_slice(&c.to_be_bytes());
                f[58] = h;
                f[59] = s;
            }
        });
        let oracle = oracle(&img);
        convert_once(&img, &oracle, SourceKind::File, TargetKind::NewFile, &[])
            .unwrap_or_else(|e| panic!("{name} from a file: {e}"));
        convert_once(&img, &oracle, SourceKind::HttpRange, TargetKind::Loop, &[])
            .unwrap_or_else(|e| panic!("{name} over HTTP into a device: {e}"));
        if stream_ok {
            convert_once(&img, &oracle, SourceKind::Stdin, TargetKind::NewFile, &[])
                .unwrap_or_else(|e| panic!("{name} from a pipe: {e}"));
        } else {
            let out = dir.path().join("out.raw");
            Streamdisk::convert("-", &out)
                .input(Input::Pipe(img.clone()))
                .run()
                .assert_refused(&["less than the"]);
        }
    }
}

/// `--format vpc` on a pipe: a fixed disk is decoded (its footer checked at the end),
/// a stream without a footer is refused; `--format vdi` on a fixed VHD is refused.
#[test]
fn format_vpc_on_a_pipe() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "p.raw", 5 * MIB);
    let img = dir.path().join("p.vhd");
    vpc_from_raw(&raw, &img, "fixed");
    let oracle = oracle(&img);
    let out = dir.path().join("out.raw");
    Streamdisk::convert("-", &out)
        .args(["--format", "vpc"])
        .input(Input::Pipe(img.clone()))
        .run()
        .assert_ok();
    assert_same_bytes(&out, &oracle);
    Streamdisk::convert("-", &out)
        .args(["--format", "vpc"])
        .input(Input::Pipe(raw.clone()))
        .run()
        .assert_refused(&["no VHD footer"]);
    Streamdisk::convert(&img, &out)
        .args(["--format", "vdi"])
        .run()
        .assert_refused(&["--format vdi"]);
}

#[test]
fn broken_and_unsupported_images_are_refused_by_name() {
    let dir = crate::common::tempdir();
    let d = dir.path();
    let raw = mixed_raw(d, "b.raw", 7 * MIB);
    let base = d.join("base.vhd");
    vpc_from_raw(&raw, &base, "dynamic");
    let vsize = virtual_size(&base, "vpc");
    let (bat_off, entries) = bat(&base);
    let first = entries[0];
    assert_ne!(first, u32::MAX);
    let variant = |name: &str| {
        let p = d.join(name);
        fs::copy(&base, &p).unwrap();
        p
    };

    let p = variant("diff.vhd");
    patch_both_footers(&p, |f| f[60..64].copy_from_slice(&4u32.to_be_bytes()));
    assert_refused_everywhere(&p, &["differencing VHD images are not supported"], vsize);

    let p = variant("checksum.vhd");
    write(&p, 100, &[1]);
    assert_refused_everywhere(&p, &["checksum"], vsize);

    let p = variant("bigsize.vhd");
    patch_both_footers(&p, |f| {
        f[28..32].copy_from_slice(b"qem2");
        f[48..56].copy_from_slice(&(3u64 << 40).to_be_bytes());
    });
    assert_refused_everywhere(&p, &["2040 GiB"], vsize);

    let p = variant("blocksize.vhd");
    write(&p, 512 + 32, &3000u32.to_be_bytes());
    assert_refused_everywhere(&p, &["block size 3000"], vsize);

    let p = variant("magic.vhd");
    write(&p, 512, b"cxsparsX");
    assert_refused_everywhere(&p, &["cxsparse"], vsize);

    let p = variant("past-end.vhd");
    set_bat(&p, 1, 0x7fff_ffff);
    assert_refused_everywhere(&p, &["past the end"], vsize);

    let p = variant("into-bat.vhd");
    set_bat(&p, 1, (bat_off / 512) as u32);
    assert_refused_everywhere(&p, &["overlaps the block allocation table"], vsize);

    let p = variant("into-header.vhd");
    set_bat(&p, 1, 1);
    assert_refused_everywhere(&p, &["overlaps the dynamic header"], vsize);

    // Block 1 starts inside block 0's data.
    let p = variant("overlap.vhd");
    set_bat(&p, 1, first + 8);
    assert_refused_everywhere(&p, &["overlap"], vsize);

    // Cut inside the last block, inside the BAT, inside the header, inside the footer.
    let len = fs::metadata(&base).unwrap().len();
    for (name, cut, words) in [
        ("cut-block.vhd", len - 512 - 300_000, &["past the end"][..]),
        (
            "cut-bat.vhd",
            bat_off + 2,
            &["truncated", "past the end"][..],
        ),
        ("cut-header.vhd", 800, &["truncated", "past the end"][..]),
        ("cut-footer.vhd", 300, &["512 bytes"][..]),
    ] {
        let p = variant(name);
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_refused_everywhere(&p, words, vsize);
    }

    // A fixed disk with a corrupt footer, and one claiming a differencing disk.
    let fixed = d.join("fixed.vhd");
    vpc_from_raw(&raw, &fixed, "fixed");
    let flen = fs::metadata(&fixed).unwrap().len();
    let p = d.join("fixed-checksum.vhd");
    fs::copy(&fixed, &p).unwrap();
    write(&p, flen - 100, &[1]);
    assert_refused_everywhere(&p, &["checksum"], flen);
    let p = d.join("fixed-diff.vhd");
    fs::copy(&fixed, &p).unwrap();
    patch_footer(&p, flen - 512, |f| {
        f[60..64].copy_from_slice(&4u32.to_be_bytes())
    });
    assert_refused_everywhere(&p, &["differencing"], flen);
}

fn info_json(img: &Path) -> serde_json::Value {
    let run = Streamdisk::new()
        .arg("info")
        .arg(img)
        .args(["--output", "json"])
        .run();
    run.assert_ok();
    serde_json::from_str(run.stdout.trim()).expect("info JSON")
}

fn qemu_info(img: &Path, fmt: &str) -> serde_json::Value {
    let out = qemu_img(&[
        OsStr::new("info"),
        OsStr::new("-f"),
        OsStr::new(fmt),
        OsStr::new("--output"),
        OsStr::new("json"),
        img.as_os_str(),
    ]);
    serde_json::from_str(&out).expect("qemu-img info JSON")
}

/// `info --output json` names the format, virtual size and cluster size as
/// `qemu-img info --output json -f FMT` does (no cluster size for a fixed disk).
pub fn assert_info_matches_qemu(img: &Path, fmt: &str) {
    let ours = info_json(img);
    let theirs = qemu_info(img, fmt);
    for key in ["format", "virtual-size", "cluster-size"] {
        assert_eq!(ours.get(key), theirs.get(key), "{key}: {ours} vs {theirs}");
    }
    assert!(theirs.get("virtual-size").is_some(), "{theirs}");
    assert_eq!(
        theirs.get("format-specific"),
        None,
        "qemu prints none for {fmt}"
    );
    assert_eq!(ours.get("format-specific"), None, "{ours}");
}

#[test]
fn info_json_matches_qemu_img() {
    let dir = crate::common::tempdir();
    for sub in ["dynamic", "fixed"] {
        let img = dir.path().join(format!("{sub}.vhd"));
        vpc_create(&img, 10 * MIB, sub);
        assert_info_matches_qemu(&img, "vpc");
    }
}

/// A BAT that maps more separate runs of blocks than the decoder keeps (blocks stored in
/// reverse guest order, 1.1 TiB of them) is refused while the BAT streams, inside a
/// 64 MiB cgroup, before anything is written.
#[test]
fn too_fragmented_a_bat_is_refused_in_bounded_memory() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("frag.vhd");
    vpc_create(&img, 1100 << 30, "dynamic");
    let vsize = virtual_size(&img, "vpc");
    let (off, entries) = bat(&img);
    let n = entries.len() as u32;
    assert!(n > 524_288, "{n} entries");
    let span = (BLOCK + 512) / 512;
    let table: Vec<u8> = (0..n)
        .flat_map(|i| (8 + (n - i) * span as u32).to_be_bytes())
        .collect();
    write(&img, off, &table);
    let out = dir.path().join("out.raw");
    let cg = MemCgroup::new(64 << 20);
    let mut cmd = Streamdisk::convert("-", &out).input(Input::Pipe(img.clone()));
    if let Some(cg) = &cg {
        cmd = cmd.in_cgroup(cg);
    }
    cmd.run().assert_refused(&["too fragmented"]);
    assert!(fs::metadata(&out).map_or(0, |m| m.len()) <= vsize);
}
