//! VDI (VirtualBox): dynamic and static images made at test time by `qemu-img convert`
//! and by qemu-io writes in random order, from every source kind into every target
//! kind, compared byte for byte with `qemu-img convert -f vdi -O raw`; inside gzip;
//! `info`; and every broken or unsupported image refused by name with exit 1, never
//! written past its virtual size.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::matrix::{
    assert_no_failures, assert_refused_everywhere, convert_once, run_matrix, SourceKind, TargetKind,
};
use crate::common::{
    make_raw, qemu_img, qemu_raw_fmt, wrap, Fill, Input, MemCgroup, Streamdisk, Wrapper,
};
use crate::vpc::{assert_info_matches_qemu, qemu_io_fmt, shuffled_writes, virtual_size};

const MIB: u64 = 1 << 20;
/// qemu's (and VirtualBox's) VDI block size.
const BLOCK: u64 = MIB;

fn mixed_raw(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    make_raw(
        &p,
        size,
        &[
            (0, 200 << 10, Fill::Random(3)),
            (BLOCK - 4096, 8192, Fill::Text),
            (3 * MIB + 512, 512, Fill::Byte(0x77)),
            (size - 50_000, 50_000, Fill::Random(4)),
        ],
    );
    p
}

fn vdi_from_raw(raw: &Path, out: &Path, opts: &str) {
    let mut args: Vec<&OsStr> = ["convert", "-q", "-f", "raw", "-O", "vdi"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    if !opts.is_empty() {
        args.extend([OsStr::new("-o"), OsStr::new(opts)]);
    }
    args.extend([raw.as_os_str(), out.as_os_str()]);
    qemu_img(&args);
}

fn vdi_create(out: &Path, size: u64, opts: &str) {
    let size = size.to_string();
    let mut args: Vec<&OsStr> = ["create", "-q", "-f", "vdi"]
        .into_iter()
        .map(OsStr::new)
        .collect();
    if !opts.is_empty() {
        args.extend([OsStr::new("-o"), OsStr::new(opts)]);
    }
    args.extend([out.as_os_str(), OsStr::new(&size)]);
    qemu_img(&args);
}

fn oracle(img: &Path) -> PathBuf {
    qemu_raw_fmt(img, Some("vdi"))
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

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// `(block map offset, data offset, entries)` of a VDI.
fn block_map(path: &Path) -> (u64, u64, Vec<u32>) {
    let h = read(path, 0, 512);
    let bmap = u64::from(le_u32(&h, 0x154));
    let data = u64::from(le_u32(&h, 0x158));
    let n = le_u32(&h, 0x180) as usize;
    let m = read(path, bmap, 4 * n);
    (bmap, data, (0..n).map(|i| le_u32(&m, 4 * i)).collect())
}

fn set_entry(path: &Path, index: usize, e: u32) {
    let (bmap, _, _) = block_map(path);
    write(path, bmap + 4 * index as u64, &e.to_le_bytes());
}

#[test]
fn dynamic_from_qemu_img_convert() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "d.raw", 6 * MIB + 3 * 512);
    let img = dir.path().join("d.vdi");
    vdi_from_raw(&raw, &img, "");
    let oracle = oracle(&img);
    let mut failures = run_matrix(
        "dynamic VDI",
        &img,
        &oracle,
        &SourceKind::ALL,
        &TargetKind::ALL,
        &[],
    );
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        failures.extend(run_matrix(
            "dynamic VDI in gzip",
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
fn static_from_qemu_img_convert() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "s.raw", 5 * MIB);
    let img = dir.path().join("s.vdi");
    vdi_from_raw(&raw, &img, "static=on");
    let (_, _, entries) = block_map(&img);
    assert_eq!(
        entries,
        (0..5).collect::<Vec<u32>>(),
        "static: every block, in order"
    );
    let oracle = oracle(&img);
    let mut failures = run_matrix(
        "static VDI",
        &img,
        &oracle,
        &SourceKind::ALL,
        &TargetKind::ALL,
        &[],
    );
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        failures.extend(run_matrix(
            "static VDI in gzip",
            &gz,
            &oracle,
            &[SourceKind::File, SourceKind::Stdin],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

#[test]
fn written_by_qemu_io_in_random_order() {
    let dir = crate::common::tempdir();
    for opts in ["", "static=on"] {
        let img = dir.path().join(format!("rand{}.vdi", opts.len()));
        vdi_create(&img, 11 * MIB + 4096, opts);
        let vsize = virtual_size(&img, "vdi");
        qemu_io_fmt(&img, "vdi", &shuffled_writes(vsize, BLOCK, 12, 11));
        if opts.is_empty() {
            // Blocks are stored in the order they were first written.
            let (_, _, entries) = block_map(&img);
            let allocated: Vec<u32> = entries
                .iter()
                .copied()
                .filter(|&e| e < 0xffff_fffe)
                .collect();
            assert!(allocated.len() > 3, "{entries:?}");
            assert!(
                entries
                    .iter()
                    .enumerate()
                    .any(|(g, &e)| e < 0xffff_fffe && e as usize != g),
                "blocks in guest order: {entries:?}"
            );
        }
        let oracle = oracle(&img);
        assert_no_failures(&run_matrix(
            &format!("random-order VDI {opts}"),
            &img,
            &oracle,
            &SourceKind::CORE,
            &TargetKind::FILE_AND_LOOP,
            &[],
        ));
    }
}

/// 100 GiB, three blocks written: a 400 KiB block map streamed from a pipe.
#[test]
fn large_sparse_dynamic_from_a_pipe() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("big.vdi");
    vdi_create(&img, 100 << 30, "");
    qemu_io_fmt(
        &img,
        "vdi",
        &[
            format!("write -P 1 {} 4096", (100u64 << 30) - 4096),
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

/// A disk size that is not a whole number of sectors (VBoxManage convertfromraw makes
/// them) is rounded up, as qemu rounds it; a discarded block reads as zeros.
#[test]
fn odd_disk_size_and_discarded_blocks_read_as_qemu_reads_them() {
    let dir = crate::common::tempdir();
    let raw = mixed_raw(dir.path(), "o.raw", 4 * MIB);
    let img = dir.path().join("o.vdi");
    vdi_from_raw(&raw, &img, "");
    write(&img, 0x170, &(4 * MIB - 1000).to_le_bytes());
    set_entry(&img, 1, 0xffff_fffe);
    let oracle = oracle(&img);
    assert_eq!(fs::metadata(&oracle).unwrap().len(), 4 * MIB - 512);
    for s in SourceKind::CORE {
        convert_once(&img, &oracle, s, TargetKind::NewFile, &[])
            .unwrap_or_else(|e| panic!("{s:?}: {e}"));
    }
}

#[test]
fn broken_and_unsupported_images_are_refused_by_name() {
    let dir = crate::common::tempdir();
    let d = dir.path();
    let raw = mixed_raw(d, "b.raw", 5 * MIB);
    let base = d.join("base.vdi");
    vdi_from_raw(&raw, &base, "");
    let vsize = 5 * MIB;
    let (bmap, data, entries) = block_map(&base);
    assert_eq!((bmap, entries[0]), (0x200, 0), "{entries:?}");
    let variant = |name: &str| {
        let p = d.join(name);
        fs::copy(&base, &p).unwrap();
        p
    };
    type Patch = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Patch, &[&str])> = vec![
        (
            "diff-type",
            Box::new(|p| write(p, 0x4c, &4u32.to_le_bytes())),
            &["differencing VDI images are not supported"],
        ),
        (
            "diff-parent",
            Box::new(|p| write(p, 0x1b8, &[9; 16])),
            &["differencing VDI images are not supported"],
        ),
        (
            "linked",
            Box::new(|p| write(p, 0x1a8, &[9; 16])),
            &["link UUID"],
        ),
        (
            "type",
            Box::new(|p| write(p, 0x4c, &3u32.to_le_bytes())),
            &["image type 3"],
        ),
        (
            "version",
            Box::new(|p| write(p, 0x44, &0x0001_0000u32.to_le_bytes())),
            &["version 1.0"],
        ),
        (
            "blocksize",
            Box::new(|p| write(p, 0x178, &(2u32 << 20).to_le_bytes())),
            &["block size"],
        ),
        (
            "sectorsize",
            Box::new(|p| write(p, 0x168, &4096u32.to_le_bytes())),
            &["sector size 4096"],
        ),
        (
            "unaligned",
            Box::new(|p| write(p, 0x158, &(0x400u32 + 12).to_le_bytes())),
            &["not a multiple of 512"],
        ),
        (
            "map-too-small",
            Box::new(|p| write(p, 0x180, &2u32.to_le_bytes())),
            &["room for only"],
        ),
        (
            "too-large",
            Box::new(|p| write(p, 0x170, &(1u64 << 62).to_le_bytes())),
            &["over the VDI maximum"],
        ),
        (
            "past-end",
            Box::new(|p| set_entry(p, 2, 4000)),
            &["past the end"],
        ),
        ("duplicate", Box::new(|p| set_entry(p, 3, 0)), &["overlap"]),
        (
            "data-in-map",
            Box::new(|p| write(p, 0x158, &0x200u32.to_le_bytes())),
            &["overlaps the block map"],
        ),
        (
            "map-in-header",
            Box::new(|p| write(p, 0x154, &0u32.to_le_bytes())),
            &["overlaps the header"],
        ),
    ];
    for (name, patch, words) in cases {
        let p = variant(&format!("{name}.vdi"));
        patch(&p);
        assert_refused_everywhere(&p, words, vsize);
    }
    // Cut inside the last block, inside the block map, inside the header.
    let len = fs::metadata(&base).unwrap().len();
    for (name, cut, words) in [
        ("cut-block", len - 1000, &["past the end"][..]),
        ("cut-map", bmap + 6, &["truncated"][..]),
        ("cut-header", 300, &["512 bytes"][..]),
    ] {
        let p = variant(&format!("{name}.vdi"));
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_refused_everywhere(&p, words, vsize);
    }
    assert!(data >= bmap + 4 * entries.len() as u64);
}

#[test]
fn info_json_matches_qemu_img() {
    let dir = crate::common::tempdir();
    for opts in ["", "static=on"] {
        let img = dir.path().join(format!("i{}.vdi", opts.len()));
        vdi_create(&img, 10 * MIB, opts);
        assert_info_matches_qemu(&img, "vdi");
    }
}

/// A block map with more separate runs than the decoder keeps (600 Ki blocks stored in
/// reverse guest order) is refused while the map streams, inside a 64 MiB cgroup.
#[test]
fn too_fragmented_a_block_map_is_refused_in_bounded_memory() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("frag.vdi");
    let blocks: u32 = 600 << 10;
    vdi_create(&img, u64::from(blocks) * BLOCK, "");
    let (bmap, _, entries) = block_map(&img);
    assert_eq!(entries.len() as u32, blocks);
    let map: Vec<u8> = (0..blocks)
        .flat_map(|i| (blocks - 1 - i).to_le_bytes())
        .collect();
    write(&img, bmap, &map);
    let out = dir.path().join("out.raw");
    let cg = MemCgroup::new(64 << 20);
    let mut cmd = Streamdisk::convert("-", &out).input(Input::Pipe(img.clone()));
    if let Some(cg) = &cg {
        cmd = cmd.in_cgroup(cg);
    }
    cmd.run().assert_refused(&["too fragmented"]);
}
