//! Scenario tests of the assembled target on regular files. Randomized
//! layouts and block devices are in `tests/target.rs`.

use super::*;
use crate::pace::Pace;

/// One extent: data (filled with a pattern derived from its offset) or zeros.
#[derive(Clone, Copy)]
enum Ext {
    D(u64, usize),
    Z(u64, u64),
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i) % 251) as u8 | 1)
        .collect()
}

/// Feeds `exts` to a fresh file target; returns the file's bytes and the stats.
fn run(exts: &[Ext], vsize: Option<u64>, opts: &TargetOptions) -> (Vec<u8>, WriteStats) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.img");
    // Stale data that must not survive.
    std::fs::write(&p, vec![0xA5u8; 3 << 20]).expect("stale");
    let mut t = Target::open(&p, opts).expect("open");
    assert_eq!(t.kind(), TargetKind::File);
    if let Some(v) = vsize {
        t.set_virtual_size(v).expect("vsize");
    }
    for e in exts {
        match *e {
            Ext::D(off, len) => t.data(off, &pattern(off, len)).expect("data"),
            Ext::Z(off, len) => t.zero(off, len).expect("zero"),
        }
    }
    let stats = t.finish().expect("finish");
    (std::fs::read(&p).expect("read back"), stats)
}

fn expected(exts: &[Ext], len: u64) -> Vec<u8> {
    let mut img = vec![0u8; len as usize];
    for e in exts {
        if let Ext::D(off, n) = *e {
            img[off as usize..off as usize + n].copy_from_slice(&pattern(off, n));
        }
    }
    img
}

fn small() -> TargetOptions {
    TargetOptions {
        buffer_size: 64 << 10,
        depth: Depth::Fixed(2),
        ..TargetOptions::default()
    }
}

#[test]
fn in_order_data_and_zeros_with_an_odd_size() {
    let v = (1 << 20) + 4096 * 3 + 700;
    let exts = [
        Ext::D(0, 100_000),
        Ext::Z(100_000, 3000), // small gap: inlined
        Ext::D(103_000, 50_000),
        Ext::Z(153_000, 600_000), // long gap: a hole
        Ext::D(753_000, 10),
        Ext::Z(753_010, v - 753_010 - 1000),
        Ext::D(v - 1000, 1000), // data at the very end, last block partial
    ];
    for opts in [small(), TargetOptions::default()] {
        let (got, stats) = run(&exts, Some(v), &opts);
        assert_eq!(got.len() as u64, v);
        assert!(got == expected(&exts, v), "contents differ");
        assert_eq!(stats.bytes_written + stats.bytes_zeroed, v);
        // Only the last block (the image ends mid-block) needed a merge.
        assert_eq!(stats.partial_merges, 1);
    }
}

#[test]
fn reverse_order_512_byte_pieces() {
    let v = 256 * 1024 + 512;
    let mut exts: Vec<Ext> = (0..v / 512)
        .map(|i| {
            if i % 3 == 1 {
                Ext::Z(i * 512, 512)
            } else {
                Ext::D(i * 512, 512)
            }
        })
        .collect();
    exts.reverse();
    let (got, _) = run(&exts, Some(v), &small());
    assert!(got == expected(&exts, v));
}

#[test]
fn scattered_pieces_force_read_modify_write() {
    // 1024 blocks each receiving its 8 sectors far apart in time: the partial
    // cache (at most 16 blocks with 64 KiB buffers) must evict and merge.
    let blocks = 1024u64;
    let v = blocks * 4096;
    let mut exts = Vec::new();
    for sector in 0..8u64 {
        for b in 0..blocks {
            let off = b * 4096 + ((sector + b) % 8) * 512;
            exts.push(if (b + sector) % 5 == 0 {
                Ext::Z(off, 512)
            } else {
                Ext::D(off, 512)
            });
        }
    }
    let (got, stats) = run(&exts, Some(v), &small());
    assert!(got == expected(&exts, v));
    assert!(
        stats.partial_merges > 1000,
        "{} merges",
        stats.partial_merges
    );
}

#[test]
fn unknown_length_file_ends_at_the_highest_byte() {
    let exts = [Ext::D(0, 5000), Ext::Z(5000, 70_001)];
    let (got, _) = run(&exts, None, &small());
    assert_eq!(got.len(), 75_001);
    assert!(got == expected(&exts, 75_001));
}

#[test]
fn writes_outside_the_virtual_size_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.img");
    let mut t = Target::open(&p, &small()).expect("open");
    t.set_virtual_size(8192).expect("vsize");
    let err = t.data(8000, &[1u8; 200]).expect_err("past the end");
    assert!(
        matches!(
            err,
            SinkError::OutOfRange {
                start: 8000,
                end: 8200,
                limit: 8192,
                ..
            }
        ),
        "{err}"
    );
    assert!(t.zero(u64::MAX - 1, 10).is_err(), "overflow");
    // A rejected extent poisons the target: finish never reports success.
    t.data(0, &[1u8; 10]).expect_err("poisoned");
    let err = t.finish().expect_err("finish fails");
    let msg = crate::error_chain(&err);
    assert!(msg.contains("beyond the virtual size"), "{msg}");
}

#[test]
fn too_large_is_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.img");
    let opts = TargetOptions {
        available: Some(1 << 20),
        ..small()
    };
    let mut t = Target::open(&p, &opts).expect("open");
    let err = t.set_virtual_size((1 << 20) + 1).expect_err("too large");
    assert!(matches!(
        err,
        SinkError::TooLarge {
            size: 1048577,
            available: 1048576
        }
    ));
    assert!(t.finish().is_err());
    assert_eq!(std::fs::metadata(&p).expect("meta").len(), 0);
}

#[test]
fn virtual_size_cannot_change_after_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = Target::open(&dir.path().join("t.img"), &small()).expect("open");
    t.zero(0, 4096).expect("zero");
    assert!(t.set_virtual_size(8192).is_err());
}

#[test]
fn overlapping_pieces_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = Target::open(&dir.path().join("t.img"), &small()).expect("open");
    t.set_virtual_size(1 << 20).expect("vsize");
    t.data(100, &[1u8; 100]).expect("first");
    let err = t.data(150, &[1u8; 10]).expect_err("overlap");
    let msg = crate::error_chain(&err);
    assert!(msg.contains("overlaps"), "{msg}");
}

#[test]
fn defaults_and_clamping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = TargetOptions {
        buffer_size: 1,
        depth: Depth::Fixed(0),
        ..TargetOptions::default()
    };
    let mut t = Target::open(&dir.path().join("t.img"), &opts).expect("open");
    assert!(t.alignment() >= 4096);
    assert_eq!(t.device_size(), None);
    t.data(0, &pattern(0, 300_000)).expect("data");
    let stats = t.finish().expect("finish");
    assert_eq!(stats.bytes_written, 300_000);
    let got = std::fs::read(dir.path().join("t.img")).expect("read");
    assert!(got == pattern(0, 300_000));
}

#[test]
fn the_write_depth_drops_once_the_decoder_sets_the_pace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pace = Pace::new();
    let mut t = Target::open(&dir.path().join("t.img"), &TargetOptions::default()).expect("open");
    t.follow(pace.clone());
    t.data(0, &[1u8; 4096]).expect("data");
    assert_eq!(t.write_depth(), DEFAULT_QUEUE_DEPTH);
    pace.set_decompressing();
    t.data(4096, &[1u8; 4096]).expect("data");
    assert_eq!(t.write_depth(), PACED_QUEUE_DEPTH);
    // A depth given by hand is kept.
    let opts = TargetOptions {
        depth: Depth::Fixed(6),
        ..TargetOptions::default()
    };
    let mut t = Target::open(&dir.path().join("u.img"), &opts).expect("open");
    t.follow(pace);
    t.data(0, &[1u8; 4096]).expect("data");
    assert_eq!(t.write_depth(), 6);
}
