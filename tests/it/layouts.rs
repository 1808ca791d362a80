//! Issue 3 sections 1, 2 and 7: every valid qcow2 layout and feature, from every source
//! kind, byte for byte equal to `qemu-img convert -O raw`.
//!
//! Each layout is built at test time with qemu-img/qemu-io, and the property that makes it
//! interesting (L1 after the data, L2 after its data, dirty bit, extended L2, ...) is
//! checked by reading the header and tables (tests/common/qcow2.rs) before converting, so
//! the test cannot silently degrade into the friendly layout. Ranges that read as zero but
//! still have host clusters behind them are filled with 0xEE first (see
//! `crate::common::poison_zero_ranges`), so a decoder that ignores zero flags or subcluster bitmaps
//! is caught.
//!
//! Sources: file, HTTP with Range, HTTP without Range, stdin (a pipe), and gzip/xz/zstd
//! wrappers (from a file, and gzip also over HTTP with Range).
//!
//! Also: the spill path (non-seekable source of an L1-at-end image with `--scratch DIR`
//! succeeds and leaves DIR empty), the refusal path (`--no-spill`), and a 1 TiB stress image.

use std::fs;
use std::path::{Path, PathBuf};

use crate::common::matrix::{assert_no_failures, convert_once, run_matrix, SourceKind, TargetKind};
use crate::common::qcow2::{layout, read_header};
use crate::common::{
    make_raw, poison_zero_ranges, qcow2_create, qcow2_from_raw, qemu_img, qemu_io, qemu_raw, wrap,
    Fill, Input, Streamdisk, Wrapper,
};

const MIB: u64 = 1 << 20;

/// Converts `image` from every source kind into a new file and compares with qemu-img.
fn check_all_sources(label: &str, image: &Path) {
    let oracle = qemu_raw(image);
    let mut failures = run_matrix(
        label,
        image,
        &oracle,
        &SourceKind::ALL,
        &[TargetKind::NewFile],
        &[],
    );
    for w in Wrapper::ALL {
        let Some(wrapped) = wrap(image, w) else {
            continue;
        };
        let sources: &[SourceKind] = if w == Wrapper::Gzip {
            &[SourceKind::File, SourceKind::HttpRange]
        } else {
            &[SourceKind::File]
        };
        failures.extend(run_matrix(
            &format!("{label} in {w:?}"),
            &wrapped,
            &oracle,
            sources,
            &[TargetKind::NewFile],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

/// Converts `image` from a file into a stale file and a loop device full of stale bytes:
/// zero ranges smaller than 4 KiB (subclusters, 512-byte clusters) must read as zeros there
/// too.
fn check_into_devices(label: &str, image: &Path) {
    let oracle = qemu_raw(image);
    assert_no_failures(&run_matrix(
        label,
        image,
        &oracle,
        &[SourceKind::File],
        &[TargetKind::StaleFile, TargetKind::Loop],
        &[],
    ));
}

/// Written, grown with `qemu-img resize` (the L1 table moves to the end of the file), then
/// written again (those clusters land after the new L1).
fn build_l1_after_data(dir: &Path) -> PathBuf {
    let img = dir.join("l1-after-data.qcow2");
    qcow2_create(&img, 4 * MIB, "cluster_size=4096");
    qemu_io(&img, &["write -P 0x11 0 64k", "write -P 0x12 3M 100k"]);
    let before = read_header(&img).l1_table_offset;
    qemu_img(&["resize", "-q", img.to_str().unwrap(), "64M"]);
    qemu_io(&img, &["write -P 0x13 40M 64k", "write -P 0x14 100k 8k"]);
    let lay = layout(&img);
    assert_ne!(lay.l1_offset, before, "resize did not move the L1 table");
    assert!(lay.l1_after_data(), "L1 is not after data: {lay:?}");
    img
}

/// Like [`build_l1_after_data`] but nothing is written after the resize: every L2 table
/// and data cluster precedes the L1 table, the worst case for a forward reader.
///
/// Eight writes of `chunk` bytes each; with 8 x 1 MiB the data before the L1 table is
/// larger than the decoder's 4 MiB reorder window, so a forward reader must range-read the
/// tables (seekable source) or spill (non-seekable source).
fn build_l1_at_end(dir: &Path, name: &str, size: u64, grow_to: &str, chunk: &str) -> PathBuf {
    let img = dir.join(name);
    qcow2_create(&img, size, "cluster_size=4096");
    let step = size / 8;
    let mut cmds = Vec::new();
    for i in 0..8u64 {
        cmds.push(format!(
            "write -P 0x{:x} {} {chunk}",
            0x20 + i,
            i * step + 512 * i
        ));
    }
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&img, &cmds);
    qemu_img(&["resize", "-q", img.to_str().unwrap(), grow_to]);
    let lay = layout(&img);
    let max_meta = lay.l2_offsets.iter().max().copied().unwrap_or(0);
    assert!(
        lay.max_data_offset().unwrap() < lay.l1_offset && max_meta < lay.l1_offset,
        "L1 is not after all data and L2 tables: {lay:?}"
    );
    img
}

/// An L2 table stored after data it maps: write region A, write region B (its L2 table is
/// allocated after A's data), discard A (a hole opens before B's L2), write more into B
/// (the new data fills the hole, before B's L2 table).
fn build_l2_after_data(dir: &Path) -> PathBuf {
    let img = dir.join("l2-after-data.qcow2");
    qcow2_create(&img, 16 * MIB, "cluster_size=4096");
    qemu_io(
        &img,
        &[
            "write -P 0x31 0 16k",
            "write -P 0x32 4M 4k",
            "discard 0 16k",
            "write -P 0x33 4100k 12k",
            "write -P 0x34 8M 4k",
        ],
    );
    let lay = layout(&img);
    assert!(lay.l2_after_its_data, "no L2 table after its data: {lay:?}");
    img
}

#[test]
fn layout_l1_after_data() {
    let dir = crate::common::tempdir();
    check_all_sources("L1 after data", &build_l1_after_data(dir.path()));
}

#[test]
fn layout_l1_at_end() {
    let dir = crate::common::tempdir();
    check_all_sources(
        "L1 at end, within the reorder window",
        &build_l1_at_end(dir.path(), "l1-end-small.qcow2", 8 * MIB, "64M", "24k"),
    );
    check_all_sources(
        "L1 at end, beyond the reorder window",
        &build_l1_at_end(dir.path(), "l1-end.qcow2", 32 * MIB, "256M", "1M"),
    );
}

/// Thousands of small L2 tables interleaved with data clusters ([L2][data][L2][data]...,
/// 4 KiB clusters), then the L1 table moved to the end by a resize: wherever the reorder
/// window fills, it is likely to be in the middle of an L2 table. Over HTTP with Range the
/// byte chunking varies from run to run, so that source is tried a few times.
#[test]
fn layout_interleaved_l2_tables_l1_at_end() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("interleaved.qcow2");
    qcow2_create(&img, 4 << 30, "cluster_size=4096");
    let cmds: Vec<String> = (0..2048u64)
        .map(|i| {
            format!(
                "write -P 0x{:x} {} 4k",
                i % 250 + 1,
                i * 2 * MIB + (i % 7) * 4096
            )
        })
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&img, &cmds);
    qemu_img(&["resize", "-q", img.to_str().unwrap(), "8G"]);
    let lay = layout(&img);
    assert!(lay.l2_offsets.len() >= 2048);
    assert!(lay.max_data_offset().unwrap() < lay.l1_offset);
    let oracle = qemu_raw(&img);
    let mut failures = Vec::new();
    for _ in 0..3 {
        failures.extend(run_matrix(
            "interleaved L2 tables, L1 at end",
            &img,
            &oracle,
            &[SourceKind::HttpRange],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    for w in [Wrapper::Zstd] {
        if let Some(z) = wrap(&img, w) {
            failures.extend(run_matrix(
                "interleaved L2 tables, L1 at end, zstd",
                &z,
                &oracle,
                &[SourceKind::File],
                &[TargetKind::NewFile],
                &[],
            ));
        }
    }
    failures.extend(run_matrix(
        "interleaved L2 tables, L1 at end",
        &img,
        &oracle,
        &[SourceKind::File, SourceKind::Stdin, SourceKind::HttpNoRange],
        &[TargetKind::NewFile],
        &[],
    ));
    assert_no_failures(&failures);
}

/// `qemu-img convert -c` (how cloud images are made) with small clusters stores many
/// compressed clusters before the L2 table that maps them (up to about 1 MiB ahead here):
/// the reorder window's job.
#[test]
fn layout_compressed_data_before_its_l2() {
    let dir = crate::common::tempdir();
    let raw = dir.path().join("cz.raw");
    let regions: Vec<(u64, u64, Fill)> = (0..24u64)
        .filter(|i| i % 3 != 2)
        .map(|i| {
            let fill = if i % 3 == 0 {
                Fill::Random(100 + i)
            } else {
                Fill::Text
            };
            (i * MIB, MIB, fill)
        })
        .collect();
    make_raw(&raw, 24 * MIB, &regions);
    let img = dir.path().join("cz.qcow2");
    qcow2_from_raw(&raw, &img, true, "cluster_size=4096");
    let lay = layout(&img);
    assert!(
        lay.l2_after_its_data,
        "no compressed cluster stored before its L2 table"
    );
    check_all_sources("compressed data before its L2 table", &img);
}

#[test]
fn layout_l2_after_data() {
    let dir = crate::common::tempdir();
    check_all_sources("L2 after data", &build_l2_after_data(dir.path()));
}

#[test]
fn layout_preallocation() {
    let dir = crate::common::tempdir();
    for mode in ["metadata", "falloc", "full"] {
        let img = dir.path().join(format!("prealloc-{mode}.qcow2"));
        qcow2_create(&img, 4 * MIB, &format!("preallocation={mode}"));
        qemu_io(&img, &["write -P 0x41 64k 100k", "write -P 0x42 3M 4k"]);
        let lay = layout(&img);
        assert!(
            lay.data_offsets.len() >= 60,
            "preallocation={mode} did not allocate clusters: {lay:?}"
        );
        poison_zero_ranges(&img);
        check_all_sources(&format!("preallocation={mode}"), &img);
    }
}

/// Internal snapshots: the active layer is converted; snapshot clusters are shared or
/// COWed (L2 tables copied after the data they map).
#[test]
fn layout_internal_snapshots() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("snap.qcow2");
    qcow2_create(&img, 8 * MIB, "cluster_size=65536");
    qemu_io(&img, &["write -P 0x51 0 1M", "write -P 0x52 5M 64k"]);
    qemu_img(&["snapshot", "-q", "-c", "s1", img.to_str().unwrap()]);
    qemu_io(&img, &["write -P 0x53 512k 128k", "write -z 5M 64k"]);
    qemu_img(&["snapshot", "-q", "-c", "s2", img.to_str().unwrap()]);
    qemu_io(&img, &["write -P 0x54 7M 64k", "discard 0 64k"]);
    let h = read_header(&img);
    assert_eq!(h.nb_snapshots, 2);
    check_all_sources("internal snapshots", &img);
}

/// Left dirty with lazy refcounts (qemu-io `abort` after writing): refcounts are stale,
/// which does not matter for reading.
#[test]
fn layout_dirty_lazy_refcounts() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("dirty.qcow2");
    qcow2_create(&img, 4 * MIB, "lazy_refcounts=on");
    qemu_io(
        &img,
        &["write -P 0x61 0 200k", "write -P 0x62 2M 64k", "abort"],
    );
    let h = read_header(&img);
    assert_ne!(h.incompatible & 1, 0, "image is not marked dirty");
    assert_ne!(h.compatible & 1, 0, "lazy refcounts not set");
    check_all_sources("dirty, lazy refcounts", &img);
}

/// Version 2 images (compat=0.10): no zero flags, 72-byte header.
#[test]
fn layout_compat_0_10() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("v2.qcow2");
    qcow2_create(&img, 4 * MIB, "compat=0.10");
    qemu_io(
        &img,
        &[
            "write -P 0x71 0 100k",
            "write -z 64k 64k",
            "write -P 0x72 4000k 96k",
        ],
    );
    assert_eq!(read_header(&img).version, 2);
    check_all_sources("compat=0.10", &img);
    let raw = dir.path().join("v2src.raw");
    make_raw(&raw, 2 * MIB, &[(0, 2 * MIB, Fill::Text)]);
    let zimg = dir.path().join("v2z.qcow2");
    qcow2_from_raw(&raw, &zimg, true, "compat=0.10");
    check_all_sources("compat=0.10 compressed", &zimg);
}

/// Cluster sizes from 512 B to 2 MiB, with writes crossing L2 table boundaries.
#[test]
fn layout_cluster_sizes() {
    let dir = crate::common::tempdir();
    for bits in 9..=21u32 {
        let cs = 1u64 << bits;
        let img = dir.path().join(format!("cs{cs}.qcow2"));
        qcow2_create(&img, 6 * MIB, &format!("cluster_size={cs}"));
        qemu_io(
            &img,
            &[
                "write -P 0x81 0 33k",
                "write -P 0x82 1000k 300k",
                "write -z 1100k 100k",
                "write -P 0x83 6143k 1k",
            ],
        );
        assert_eq!(read_header(&img).cluster_bits, bits);
        poison_zero_ranges(&img);
        check_all_sources(&format!("cluster size {cs}"), &img);
        if cs < 4096 {
            check_into_devices(&format!("cluster size {cs}"), &img);
        }
    }
}

/// Extended L2 entries: subclusters allocated, zero and unallocated within one cluster.
#[test]
fn layout_extended_l2() {
    let dir = crate::common::tempdir();
    for cs in [16384u64, 65536, 2 * MIB] {
        let img = dir.path().join(format!("ext{cs}.qcow2"));
        qcow2_create(&img, 8 * MIB, &format!("extended_l2=on,cluster_size={cs}"));
        qemu_io(
            &img,
            &[
                "write -P 0x91 0 2k",
                "write -P 0x92 6k 3k",
                "write -z 64k 8k",
                "write -P 0x93 128k 64k",
                "write -z 130k 4k",
                "discard 160k 8k",
                "write -z -u 256k 64k",
                "write -P 0x94 4M 2M",
                "write -z 5M 512k",
            ],
        );
        assert!(read_header(&img).extended_l2());
        let poisoned = poison_zero_ranges(&img);
        assert!(
            poisoned > 0,
            "no unallocated/zero subcluster with a host cluster"
        );
        check_all_sources(&format!("extended L2, cluster {cs}"), &img);
        check_into_devices(&format!("extended L2, cluster {cs}"), &img);
    }
}

/// Compressed clusters with zstd and zlib.
#[test]
fn layout_compression_types() {
    let dir = crate::common::tempdir();
    let raw = dir.path().join("ct.raw");
    make_raw(
        &raw,
        4 * MIB,
        &[
            (0, MIB, Fill::Text),
            (MIB, 256 * 1024, Fill::Random(5)),
            (2 * MIB + 100, 300_000, Fill::Text),
            (4 * MIB - 1000, 1000, Fill::Byte(7)),
        ],
    );
    for ctype in ["zlib", "zstd"] {
        for cs in [4096u64, 65536] {
            let img = dir.path().join(format!("{ctype}{cs}.qcow2"));
            qcow2_from_raw(
                &raw,
                &img,
                true,
                &format!("compression_type={ctype},cluster_size={cs}"),
            );
            let h = read_header(&img);
            assert_eq!(h.compression_type, u8::from(ctype == "zstd"));
            assert!(!layout(&img).compressed_offsets.is_empty());
            check_all_sources(&format!("{ctype} compressed, cluster {cs}"), &img);
        }
    }
}

/// v3 zero flags, with and without a host cluster behind them.
#[test]
fn layout_v3_zero_flags() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("zero.qcow2");
    qcow2_create(&img, 8 * MIB, "");
    qemu_io(
        &img,
        &[
            "write -P 0xa1 0 2M",
            "write -z 64k 128k",
            "write -z -u 1M 256k",
            "write -z 6M 1M",
        ],
    );
    let lay = layout(&img);
    assert!(lay.zero_entries > 0, "no zero-flagged L2 entries: {lay:?}");
    poison_zero_ranges(&img);
    check_all_sources("v3 zero flags", &img);
}

/// Virtual sizes that are not a multiple of the cluster size.
#[test]
fn layout_odd_virtual_sizes() {
    let dir = crate::common::tempdir();
    for (size, cs) in [
        (5 * MIB + 512, 65536u64),
        (MIB + 3584, 2 * MIB),
        (777 * 1024, 4096),
    ] {
        let img = dir.path().join(format!("odd{size}.qcow2"));
        qcow2_create(&img, size, &format!("cluster_size={cs}"));
        let v = read_header(&img).size;
        assert_ne!(v % cs, 0);
        qemu_io(
            &img,
            &[
                "write -P 0xb1 0 4k",
                &format!("write -P 0xb2 {} 512", v - 512),
            ],
        );
        check_all_sources(&format!("virtual size {v}, cluster {cs}"), &img);
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read scratch dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Non-seekable sources of an L1-at-end image need a spill: with `--scratch DIR` the import
/// succeeds and DIR is empty afterwards.
#[test]
fn spill_with_scratch_dir() {
    let dir = crate::common::tempdir();
    let img = build_l1_at_end(dir.path(), "spill.qcow2", 32 * MIB, "256M", "1M");
    let oracle = qemu_raw(&img);
    let xz = wrap(&img, Wrapper::Xz);
    let mut cases: Vec<(PathBuf, SourceKind)> = vec![
        (img.clone(), SourceKind::Stdin),
        (img.clone(), SourceKind::HttpNoRange),
    ];
    if let Some(xz) = xz {
        cases.push((xz, SourceKind::File));
    }
    for (input, source) in cases {
        let scratch = crate::common::tempdir();
        let s = scratch.path().to_str().unwrap().to_string();
        convert_once(
            &input,
            &oracle,
            source,
            TargetKind::NewFile,
            &["--scratch", &s],
        )
        .unwrap_or_else(|e| panic!("spill from {source:?} of {}: {e}", input.display()));
        let left = dir_entries(scratch.path());
        assert!(left.is_empty(), "scratch dir not emptied: {left:?}");
    }
    // The spill and its size are reported.
    let scratch = crate::common::tempdir();
    let out = dir.path().join("reported.raw");
    let run = Streamdisk::convert("-", &out)
        .arg("--scratch")
        .arg(scratch.path())
        .input(Input::Pipe(img.clone()))
        .run();
    run.assert_ok();
    crate::common::assert_same_bytes(&out, &oracle);
    assert!(
        run.stderr.to_ascii_lowercase().contains("spill"),
        "the spill is not reported: {}",
        run.stderr
    );
    assert!(dir_entries(scratch.path()).is_empty());
}

/// With `--no-spill`, a non-seekable source of an L1-at-end image fails, saying scratch
/// space is required; a seekable source of the same image still succeeds.
#[test]
fn no_spill_refuses_non_seekable() {
    let dir = crate::common::tempdir();
    let img = build_l1_at_end(dir.path(), "nospill.qcow2", 32 * MIB, "256M", "1M");
    let oracle = qemu_raw(&img);
    // Stdin.
    let out = dir.path().join("o1");
    let run = Streamdisk::convert("-", &out)
        .arg("--no-spill")
        .input(Input::Pipe(img.clone()))
        .run();
    run.assert_refused(&["scratch"]);
    // HTTP without Range.
    let srv = crate::common::server::TestServer::builder(crate::common::server::Body::file(&img))
        .ranges(false)
        .start();
    let run = Streamdisk::convert(srv.url("/i.qcow2"), dir.path().join("o2"))
        .arg("--no-spill")
        .run();
    run.assert_refused(&["scratch"]);
    drop(srv);
    // Inside a wrapper, even from a file.
    if let Some(gz) = wrap(&img, Wrapper::Gzip) {
        let run = Streamdisk::convert(&gz, dir.path().join("o3"))
            .arg("--no-spill")
            .run();
        run.assert_refused(&["scratch"]);
    }
    // Seekable sources need no spill.
    for source in [SourceKind::File, SourceKind::HttpRange] {
        convert_once(&img, &oracle, source, TargetKind::NewFile, &["--no-spill"])
            .unwrap_or_else(|e| panic!("--no-spill from seekable {source:?}: {e}"));
    }
}

/// A server that advertises Range but answers range requests with the whole file (200): the
/// table fetch fails before any table arrives, and the import carries on with the stream
/// alone, spilling like a source without ranges; with `--no-spill` it says scratch is needed.
#[test]
fn range_refusing_server_falls_back_to_the_stream() {
    let dir = crate::common::tempdir();
    let img = build_l1_at_end(dir.path(), "liar.qcow2", 32 * MIB, "256M", "1M");
    let oracle = qemu_raw(&img);
    let srv = crate::common::server::TestServer::builder(crate::common::server::Body::file(&img))
        .ignore_range(true)
        .start();
    let out = dir.path().join("o");
    let run = Streamdisk::convert(srv.url("/liar.qcow2"), &out).run();
    run.assert_ok();
    crate::common::assert_same_bytes(&out, &oracle);
    assert!(
        run.stderr.contains("continuing with the stream alone"),
        "the fallback is reported: {}",
        run.stderr
    );
    let run = Streamdisk::convert(srv.url("/liar.qcow2"), dir.path().join("o2"))
        .arg("--no-spill")
        .run();
    run.assert_refused(&["scratch"]);
}

/// Over HTTP with Range, the L1-at-end image is not downloaded twice: the body bytes the
/// server sends stay well under twice the file size.
#[test]
fn range_source_does_not_download_twice() {
    let dir = crate::common::tempdir();
    let img = build_l1_at_end(dir.path(), "once.qcow2", 32 * MIB, "256M", "1M");
    let oracle = qemu_raw(&img);
    let srv = crate::common::server::TestServer::serve(crate::common::server::Body::file(&img));
    let out = dir.path().join("o");
    Streamdisk::convert(srv.url("/once.qcow2"), &out)
        .run()
        .assert_ok();
    crate::common::assert_same_bytes(&out, &oracle);
    let size = fs::metadata(&img).unwrap().len();
    let sent = srv.body_bytes_sent();
    assert!(
        sent < size * 3 / 2,
        "server sent {sent} body bytes for a {size}-byte image: {:?}",
        srv.log()
            .iter()
            .map(|r| (r.method.clone(), r.range.clone()))
            .collect::<Vec<_>>()
    );
}

/// Stress: 1 TiB virtual size, data scattered across it, L1 table at the very end (sparse
/// file), from every source kind inside a 64 MiB cgroup. Compared extent by extent with
/// qemu-img's sparse output. (A few seconds per source: the zero ranges are holes.)
#[test]
fn stress_1tib_l1_at_end() {
    let dir = crate::common::tempdir();
    let img = dir.path().join("huge.qcow2");
    qcow2_create(&img, 512 << 30, "cluster_size=65536");
    let mut cmds = Vec::new();
    for i in 0..64u64 {
        let off = i * (8 << 30) + i * 65536 * 3 + 4096 * (i % 5);
        cmds.push(format!("write -P 0x{:x} {off} 64k", (i % 250) + 1));
    }
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&img, &cmds);
    qemu_img(&["resize", "-q", img.to_str().unwrap(), "1T"]);
    let lay = layout(&img);
    assert!(lay.max_data_offset().unwrap() < lay.l1_offset);
    assert_eq!(read_header(&img).size, 1 << 40);
    let oracle = qemu_raw(&img);
    let mut sources = vec![
        (img.clone(), SourceKind::File),
        (img.clone(), SourceKind::HttpRange),
        (img.clone(), SourceKind::HttpNoRange),
        (img.clone(), SourceKind::Stdin),
    ];
    if let Some(z) = wrap(&img, Wrapper::Zstd) {
        sources.push((z, SourceKind::File));
    }
    let mut failures = Vec::new();
    for (input, source) in sources {
        let out = dir.path().join("huge.raw");
        let _ = fs::remove_file(&out);
        let _server;
        let src = match source {
            SourceKind::File => input.to_str().unwrap().to_string(),
            SourceKind::Stdin => "-".to_string(),
            _ => {
                let s = crate::common::server::TestServer::builder(
                    crate::common::server::Body::file(&input),
                )
                .ranges(source == SourceKind::HttpRange)
                .start();
                let u = s.url("/huge.qcow2");
                _server = s;
                u
            }
        };
        let inp = if source == SourceKind::Stdin {
            Input::Pipe(input.clone())
        } else {
            Input::Null
        };
        let cg = crate::common::MemCgroup::new(64 << 20);
        let mut cmd = Streamdisk::convert(&src, &out)
            .input(inp)
            .timeout(std::time::Duration::from_secs(600));
        if let Some(cg) = &cg {
            cmd = cmd.in_cgroup(cg);
        }
        let what = format!("1 TiB from {source:?} ({})", input.display());
        let run = match cmd.try_run() {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("* {what}: {e}"));
                continue;
            }
        };
        if !run.success() {
            failures.push(format!(
                "* {what}: exit {}: {}",
                run.status,
                run.last_stderr_line()
            ));
            continue;
        }
        eprintln!(
            "{what}: {:?}, peak cgroup memory {} KiB",
            run.elapsed,
            cg.as_ref().and_then(|c| c.peak()).unwrap_or(0) / 1024
        );
        let len = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
        if len != 1 << 40 {
            failures.push(format!("* {what}: target size {len}, expected 1 TiB"));
        } else if let Some(off) = crate::common::first_difference(&out, &oracle, 1 << 40) {
            failures.push(format!("* {what}: differs from qemu-img's at offset {off}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Memory stays bounded: an image holding more data than the cgroup limit, with the L1
/// table at the end, converts from HTTP (Range), stdin (spilling) and a file inside a
/// 32 MiB memory cgroup (page cache included). Not a speed test; the peak is printed.
#[test]
fn bounded_memory_under_cgroup() {
    let dir = crate::common::tempdir();
    let raw = dir.path().join("mem.raw");
    make_raw(
        &raw,
        64 * MIB,
        &[
            (0, 16 * MIB, Fill::Random(11)),
            (24 * MIB, 16 * MIB, Fill::Text),
            (56 * MIB, 8 * MIB, Fill::Random(12)),
        ],
    );
    let img = dir.path().join("mem.qcow2");
    qcow2_from_raw(&raw, &img, false, "");
    qemu_img(&["resize", "-q", img.to_str().unwrap(), "1G"]);
    assert!(layout(&img).l1_after_data());
    let oracle = qemu_raw(&img);
    for source in [SourceKind::HttpRange, SourceKind::Stdin, SourceKind::File] {
        let Some(cg) = crate::common::MemCgroup::new(32 << 20) else {
            return;
        };
        let out = dir.path().join("mem.out");
        let _ = fs::remove_file(&out);
        let _server;
        let src = match source {
            SourceKind::File => img.to_str().unwrap().to_string(),
            SourceKind::Stdin => "-".to_string(),
            _ => {
                let s = crate::common::server::TestServer::serve(
                    crate::common::server::Body::file(&img),
                );
                let u = s.url("/mem.qcow2");
                _server = s;
                u
            }
        };
        let input = if source == SourceKind::Stdin {
            Input::Pipe(img.clone())
        } else {
            Input::Null
        };
        let run = Streamdisk::convert(&src, &out)
            .input(input)
            .in_cgroup(&cg)
            .run();
        run.assert_ok();
        eprintln!(
            "bounded memory from {source:?}: peak cgroup memory {} KiB, {:?}",
            cg.peak().unwrap_or(0) / 1024,
            run.elapsed
        );
        crate::common::assert_same_sparse(&out, &oracle);
    }
}
