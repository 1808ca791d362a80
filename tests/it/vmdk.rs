//! VMDK (issue 14): monolithicSparse and streamOptimized images made at test
//! time by qemu-img and qemu-io, decoded from every source kind into files
//! and loop devices, byte for byte equal to `qemu-img convert -f vmdk -O raw`;
//! a VMware-layout streamOptimized image (grains first, a grain table after
//! each run of grains, then the directory, the footer and the end-of-stream
//! marker) re-packed here from a qemu-img one; `info` against `qemu-img
//! info`; refusals of multi-file descriptors and of broken images.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::matrix::{assert_no_failures, run_matrix, SourceKind, TargetKind};
use crate::common::{
    make_raw, qemu_img, qemu_raw_fmt, tempdir, wrap, Fill, Input, SplitMix, Streamdisk, Wrapper,
};

const MIB: u64 = 1 << 20;
const S: usize = 512;

/// A raw disk of `size` bytes with random, text and zero regions (the size
/// need not be a multiple of the 64 KiB grain: the last grain is partial).
fn mixed_raw(dir: &Path, name: &str, size: u64) -> PathBuf {
    let raw = dir.join(name);
    make_raw(
        &raw,
        size,
        &[
            (0, 300 << 10, Fill::Random(7)),
            (MIB, 200 << 10, Fill::Text),
            (2 * MIB + 4096, 70 << 10, Fill::Random(8)),
            (size - 1536, 1536, Fill::Byte(0x5a)),
        ],
    );
    raw
}

/// `qemu-img convert -f raw -O vmdk -o OPTS RAW OUT`.
fn vmdk_from_raw(raw: &Path, out: &Path, opts: &str) {
    let mut args: Vec<OsString> = ["convert", "-q", "-f", "raw", "-O", "vmdk"]
        .iter()
        .map(Into::into)
        .collect();
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.into());
    }
    args.push(raw.into());
    args.push(out.into());
    qemu_img(&args);
}

/// `qemu-io -f vmdk -c CMD ... IMAGE` (the common helper is for qcow2).
fn qemu_io_vmdk(image: &Path, cmds: &[String]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "vmdk"]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.arg(image).output().expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.to_ascii_lowercase().contains("fail"),
        "qemu-io on {}: {text}",
        image.display()
    );
}

fn oracle(image: &Path) -> PathBuf {
    qemu_raw_fmt(image, Some("vmdk"))
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The header fields the tests look at.
struct Hdr {
    flags: u32,
    grain: u64,
    gtes: u64,
    gd: u64,
    overhead: u64,
    capacity: u64,
}

fn hdr(b: &[u8]) -> Hdr {
    assert_eq!(&b[..4], b"KDMV");
    Hdr {
        flags: le32(b, 8),
        capacity: le64(b, 12),
        grain: le64(b, 20),
        gtes: u64::from(le32(b, 44)),
        gd: le64(b, 56),
        overhead: le64(b, 64),
    }
}

/// Every allocated grain table entry: (guest grain, host sector).
fn entries(b: &[u8]) -> Vec<(u64, u64)> {
    let h = hdr(b);
    let grains = h.capacity.div_ceil(h.grain);
    let tables = grains.div_ceil(h.gtes);
    let mut out = Vec::new();
    for t in 0..tables {
        let gt = u64::from(le32(b, h.gd as usize * S + t as usize * 4));
        if gt == 0 {
            continue;
        }
        for j in 0..h.gtes {
            let g = t * h.gtes + j;
            let e = u64::from(le32(b, gt as usize * S + j as usize * 4));
            if g < grains && e != 0 {
                out.push((g, e));
            }
        }
    }
    out
}

/// Every source kind into a new file, a file and a loop device full of
/// stale bytes from a file, and inside gzip from a file and over HTTP.
fn check_everywhere(label: &str, image: &Path) {
    let oracle = oracle(image);
    let mut failures = run_matrix(
        label,
        image,
        &oracle,
        &SourceKind::ALL,
        &[TargetKind::NewFile],
        &[],
    );
    failures.extend(run_matrix(
        label,
        image,
        &oracle,
        &[SourceKind::File, SourceKind::Stdin],
        &[TargetKind::StaleFile, TargetKind::Loop],
        &[],
    ));
    if let Some(gz) = wrap(image, Wrapper::Gzip) {
        failures.extend(run_matrix(
            &format!("{label} in gzip"),
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
fn vmdk_stream_optimized_from_every_source() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "so.raw", 3 * MIB + 1536);
    let img = dir.path().join("so.vmdk");
    vmdk_from_raw(&raw, &img, "subformat=streamOptimized");
    let b = fs::read(&img).unwrap();
    let h = hdr(&b);
    assert_eq!(
        h.flags & (3 << 16),
        3 << 16,
        "compressed grains with markers"
    );
    assert!(h.gd < h.overhead, "qemu puts its tables before the grains");
    assert_ne!(h.capacity % h.grain, 0, "the last grain is partial");
    check_everywhere("streamOptimized", &img);
}

#[test]
fn vmdk_monolithic_sparse_from_every_source() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "ms.raw", 3 * MIB + 1536);
    let img = dir.path().join("ms.vmdk");
    vmdk_from_raw(&raw, &img, "subformat=monolithicSparse");
    let b = fs::read(&img).unwrap();
    assert_eq!(le32(&b, 8) & (1 << 16), 0, "not compressed");
    check_everywhere("monolithicSparse", &img);
}

#[test]
fn vmdk_creation_options_and_empty_images() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "opt.raw", 3 * MIB);
    let mut failures = Vec::new();
    for (i, opts) in [
        "subformat=monolithicSparse,adapter_type=lsilogic,hwversion=6",
        "subformat=streamOptimized,adapter_type=buslogic,hwversion=14",
        "subformat=monolithicSparse,compat6=on",
        "subformat=monolithicSparse,zeroed_grain=on",
        "subformat=streamOptimized,zeroed_grain=on",
    ]
    .iter()
    .enumerate()
    {
        let img = dir.path().join(format!("opt{i}.vmdk"));
        vmdk_from_raw(&raw, &img, opts);
        failures.extend(run_matrix(
            opts,
            &img,
            &oracle(&img),
            &[SourceKind::File, SourceKind::Stdin],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    // Nothing allocated at all, 1 GiB virtual.
    for sub in ["monolithicSparse", "streamOptimized"] {
        let img = dir.path().join(format!("empty-{sub}.vmdk"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            img.to_str().unwrap(),
            "1G",
        ]);
        failures.extend(run_matrix(
            sub,
            &img,
            &oracle(&img),
            &[SourceKind::File, SourceKind::Stdin],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

/// qemu-io writes in random order: monolithicSparse grains land in write
/// order (host order is not guest order), partial-grain writes pad the
/// grain, `write -z` on a zeroed-grain image makes zero-grain entries; on a
/// streamOptimized image the compressed grains come in write order too.
#[test]
fn vmdk_qemu_io_random_writes() {
    let dir = tempdir();
    let mut rng = SplitMix(0x7e57);
    let mut failures = Vec::new();
    for (name, opts) in [
        ("rand-ms.vmdk", "subformat=monolithicSparse,zeroed_grain=on"),
        ("rand-so.vmdk", "subformat=streamOptimized"),
    ] {
        let img = dir.path().join(name);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            opts,
            img.to_str().unwrap(),
            "8M",
        ]);
        let mut grains: Vec<u64> = (0..128).collect();
        for i in (1..grains.len()).rev() {
            grains.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let stream = name.contains("so");
        let mut cmds = Vec::new();
        for &g in grains.iter().take(40) {
            let pattern = 1 + rng.next_u64() % 250;
            if stream {
                // Compressed writes take whole grains.
                cmds.push(format!("write -P {pattern} {} 64k", g * 65536));
            } else {
                let off = g * 65536 + (rng.next_u64() % 64) * 512;
                let len = 512 * (1 + rng.next_u64() % 64).min((g * 65536 + 65536 - off) / 512);
                cmds.push(format!("write -P {pattern} {off} {len}"));
            }
        }
        if !stream {
            for &g in grains.iter().skip(40).take(5) {
                cmds.push(format!("write -z {} 64k", g * 65536));
            }
        }
        qemu_io_vmdk(&img, &cmds);
        let b = fs::read(&img).unwrap();
        let e = entries(&b);
        let hosts: Vec<u64> = e.iter().map(|&(_, h)| h).filter(|&h| h > 1).collect();
        assert!(
            hosts.windows(2).any(|w| w[0] > w[1]),
            "{name}: grains should not be in guest order on the host"
        );
        if !stream {
            assert!(
                e.iter().any(|&(_, h)| h == 1),
                "{name}: zero-grain entries expected"
            );
        }
        failures.extend(run_matrix(
            name,
            &img,
            &oracle(&img),
            &[SourceKind::File, SourceKind::Stdin, SourceKind::HttpRange],
            &[TargetKind::NewFile],
            &[],
        ));
    }
    assert_no_failures(&failures);
}

/// Re-packs a qemu-img streamOptimized image in VMware's layout ("Virtual
/// Disk Format 1.1", *Stream-Optimized Compressed Sparse Extents*, and
/// qemu issue #1357 for what VMware requires at the end):
///
/// ```text
/// sector 0        header: gdOffset = GD_AT_END (~0), no redundant GD
/// sector 1..21    the embedded descriptor (20 sectors)
/// 21..            for each grain table with grains: its grains (markers
///                 copied, reversed inside the run when `reverse`: the spec
///                 allows any order), then a metadata marker (numSectors 4,
///                 type 1 = grain table) and the table (4 sectors)
///                 a marker (type 2) and the grain directory
///                 a marker (numSectors 1, type 3) and the footer: the
///                 header again, with the real gdOffset
///                 the end-of-stream marker (a zero sector), last
/// ```
fn vmware_layout(src: &Path, dst: &Path, reverse: bool) {
    let b = fs::read(src).unwrap();
    let h = hdr(&b);
    let grains = h.capacity.div_ceil(h.grain);
    let tables = grains.div_ceil(h.gtes) as usize;
    let mut by_table: Vec<Vec<(u64, u64)>> = vec![Vec::new(); tables];
    for (g, host) in entries(&b) {
        by_table[(g / h.gtes) as usize].push((g, host));
    }
    let mut header = b[..S].to_vec();
    header[8..12].copy_from_slice(&(le32(&b, 8) & !2).to_le_bytes());
    header[48..56].fill(0);
    header[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    header[64..72].copy_from_slice(&21u64.to_le_bytes());
    let mut out = header.clone();
    out.extend_from_slice(&b[S..21 * S]);
    let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(S) * S, 0);
    let marker = |v: &mut Vec<u8>, sectors: u64, kind: u32| {
        v.extend_from_slice(&sectors.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        pad(v);
    };
    let gt_sectors = (h.gtes * 4).div_ceil(S as u64);
    let mut gd = vec![0u32; tables];
    for (t, run) in by_table.iter_mut().enumerate() {
        if run.is_empty() {
            continue;
        }
        if reverse {
            run.reverse();
        }
        let mut gt = vec![0u32; h.gtes as usize];
        for &(g, host) in run.iter() {
            let at = host as usize * S;
            let size = le32(&b, at + 8) as usize;
            assert_eq!(le64(&b, at), g * h.grain, "qemu's marker carries its LBA");
            gt[(g % h.gtes) as usize] = (out.len() / S) as u32;
            out.extend_from_slice(&b[at..at + 12 + size]);
            pad(&mut out);
        }
        marker(&mut out, gt_sectors, 1);
        gd[t] = (out.len() / S) as u32;
        out.extend(gt.iter().flat_map(|e| e.to_le_bytes()));
        pad(&mut out);
    }
    marker(&mut out, (tables as u64 * 4).div_ceil(S as u64), 2);
    let gd_at = out.len() / S;
    out.extend(gd.iter().flat_map(|e| e.to_le_bytes()));
    pad(&mut out);
    marker(&mut out, 1, 3);
    let mut footer = header;
    footer[56..64].copy_from_slice(&(gd_at as u64).to_le_bytes());
    out.extend_from_slice(&footer);
    out.extend_from_slice(&[0u8; S]);
    fs::write(dst, out).unwrap();
}

#[test]
fn vmdk_vmware_layout_stream_optimized() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "vmw.raw", 6 * MIB + 1536);
    let qemu = dir.path().join("qemu.vmdk");
    vmdk_from_raw(&raw, &qemu, "subformat=streamOptimized");
    let mut failures = Vec::new();
    for reverse in [false, true] {
        let img = dir.path().join(format!("vmware-{reverse}.vmdk"));
        vmware_layout(&qemu, &img, reverse);
        // qemu-img reads the re-packed image as the original.
        let (a, b) = (oracle(&qemu), oracle(&img));
        crate::common::assert_same_bytes(&b, &a);
        let label = format!("VMware layout (reversed runs: {reverse})");
        failures.extend(run_matrix(
            &label,
            &img,
            &b,
            &SourceKind::ALL,
            &[TargetKind::NewFile],
            &[],
        ));
        failures.extend(run_matrix(
            &label,
            &img,
            &b,
            &[SourceKind::Stdin],
            &[TargetKind::Loop],
            &[],
        ));
        // The OVA case: a plain stream, inside gzip, with no range reads, no
        // read-ahead and no scratch space allowed.
        if let Some(gz) = wrap(&img, Wrapper::Gzip) {
            failures.extend(run_matrix(
                &format!("{label} in gzip"),
                &gz,
                &b,
                &[SourceKind::Stdin, SourceKind::HttpNoRange],
                &[TargetKind::NewFile],
                &["--no-spill"],
            ));
        }
        // Extra bytes after the end-of-stream marker: qemu-img refuses the
        // footer, so do we.
        let mut longer = fs::read(&img).unwrap();
        longer.extend_from_slice(&[0u8; S]);
        let bad = dir.path().join("longer.vmdk");
        fs::write(&bad, longer).unwrap();
        Streamdisk::convert(&bad, dir.path().join("longer.out"))
            .run()
            .assert_refused(&["after the end-of-stream marker"]);
    }
    assert_no_failures(&failures);
}

/// Re-packs a qemu-img monolithicSparse image with its grain directory and
/// tables after the grains (no redundant directory): a layout where the
/// tables must be read out of order (range reads) or the stream read ahead
/// (then spilled) before the grains can be placed.
fn tables_at_end(src: &Path, dst: &Path) {
    let b = fs::read(src).unwrap();
    let h = hdr(&b);
    let grains = h.capacity.div_ceil(h.grain);
    let tables = grains.div_ceil(h.gtes) as usize;
    let grain = h.grain as usize * S;
    let mut out = b[..21 * S].to_vec();
    out[8..12].copy_from_slice(&(le32(&b, 8) & !2).to_le_bytes());
    out[48..56].fill(0);
    out[64..72].copy_from_slice(&21u64.to_le_bytes());
    let mut gts = vec![vec![0u32; h.gtes as usize]; tables];
    for (g, host) in entries(&b) {
        if host == 1 {
            continue;
        }
        gts[(g / h.gtes) as usize][(g % h.gtes) as usize] = (out.len() / S) as u32;
        out.extend_from_slice(&b[host as usize * S..host as usize * S + grain]);
    }
    let gd_at = out.len() / S;
    out[56..64].copy_from_slice(&(gd_at as u64).to_le_bytes());
    let gt_sectors = (h.gtes as usize * 4).div_ceil(S);
    let first_gt = gd_at + (tables * 4).div_ceil(S);
    for t in 0..tables {
        out.extend_from_slice(&((first_gt + t * gt_sectors) as u32).to_le_bytes());
    }
    out.resize(first_gt * S, 0);
    for gt in &gts {
        out.extend(gt.iter().flat_map(|e| e.to_le_bytes()));
        out.resize(out.len().div_ceil(S) * S, 0);
    }
    fs::write(dst, out).unwrap();
}

#[test]
fn vmdk_sparse_tables_after_the_grains() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "late.raw", 3 * MIB + 1536);
    let qemu = dir.path().join("qemu.vmdk");
    vmdk_from_raw(&raw, &qemu, "subformat=monolithicSparse");
    let img = dir.path().join("late.vmdk");
    tables_at_end(&qemu, &img);
    let (a, b) = (oracle(&qemu), oracle(&img));
    crate::common::assert_same_bytes(&b, &a);
    let mut failures = run_matrix(
        "tables at the end",
        &img,
        &b,
        &SourceKind::ALL,
        &[TargetKind::NewFile],
        &[],
    );
    let scratch = dir.path().join("scratch");
    fs::create_dir(&scratch).unwrap();
    // A window smaller than the grains: the stream spills, then replays.
    failures.extend(run_matrix(
        "tables at the end, small window",
        &img,
        &b,
        &[SourceKind::Stdin],
        &[TargetKind::NewFile],
        &["--window", "64K", "--scratch", scratch.to_str().unwrap()],
    ));
    assert_no_failures(&failures);
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "scratch left behind"
    );
    Streamdisk::convert("-", dir.path().join("nospill.out"))
        .input(Input::Pipe(img.clone()))
        .arg("--no-spill")
        .args(["--window", "64K"])
        .run()
        .assert_refused(&["scratch"]);
}

#[test]
fn vmdk_info_matches_qemu_img() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "info.raw", 3 * MIB);
    for sub in ["monolithicSparse", "streamOptimized"] {
        let img = dir.path().join(format!("{sub}.vmdk"));
        vmdk_from_raw(&raw, &img, &format!("subformat={sub}"));
        let q: serde_json::Value = serde_json::from_str(&qemu_img(&[
            "info",
            "--output",
            "json",
            img.to_str().unwrap(),
        ]))
        .unwrap();
        for input in [Input::Null, Input::Pipe(img.clone())] {
            let src = if matches!(input, Input::Null) {
                img.to_str().unwrap().to_string()
            } else {
                "-".into()
            };
            let run = Streamdisk::new()
                .args(["info", "--output", "json", src.as_str()])
                .input(input)
                .run();
            run.assert_ok();
            let mut o: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
            for key in ["format", "virtual-size", "cluster-size"] {
                assert_eq!(o[key], q[key], "{sub}: {key}");
            }
            let mut qs = q["format-specific"].clone();
            // qemu names the file it opened; a stream has no name, so the
            // descriptor's is given.
            let os = &mut o["format-specific"];
            assert_eq!(os["data"]["extents"][0]["filename"], format!("{sub}.vmdk"));
            os["data"]["extents"][0]
                .as_object_mut()
                .unwrap()
                .remove("filename");
            qs["data"]["extents"][0]
                .as_object_mut()
                .unwrap()
                .remove("filename");
            assert_eq!(*os, qs, "{sub}: format-specific");
        }
    }
}

#[test]
fn vmdk_descriptors_naming_extent_files_are_refused() {
    let dir = tempdir();
    for (i, sub, names) in [
        (0, "monolithicFlat", vec!["d0-flat.vmdk"]),
        (
            1,
            "twoGbMaxExtentSparse",
            vec!["d1-s001.vmdk", "d1-s002.vmdk"],
        ),
        (
            2,
            "twoGbMaxExtentFlat",
            vec!["d2-f001.vmdk", "d2-f002.vmdk"],
        ),
    ] {
        let img = dir.path().join(format!("d{i}.vmdk"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            &format!("subformat={sub}"),
            img.to_str().unwrap(),
            "3G",
        ]);
        for args in [vec!["convert".to_string()], vec!["info".to_string()]] {
            let mut cmd = Streamdisk::new().args(&args).arg(&img);
            if args[0] == "convert" {
                cmd = cmd
                    .arg(dir.path().join("out.raw"))
                    .args(["--progress", "none"]);
            }
            let line = cmd.run().assert_refused(&["extent files"]);
            for n in &names {
                assert!(line.contains(n), "{sub}: {line}");
            }
            assert!(line.contains(sub), "{sub}: {line}");
        }
        // One extent of the split set on its own: qemu-img cannot open it
        // either (no descriptor); we say what it is.
        if sub == "twoGbMaxExtentSparse" {
            Streamdisk::convert(dir.path().join(names[0]), dir.path().join("out.raw"))
                .run()
                .assert_refused(&["multi-file"]);
        }
    }
}

/// Writes `img` with `patch` applied and returns the new path.
fn patched(img: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = fs::read(img).unwrap();
    patch(&mut b);
    let p = img.with_file_name(name);
    fs::write(&p, b).unwrap();
    p
}

#[test]
fn vmdk_broken_images_are_refused() {
    let dir = tempdir();
    let raw = mixed_raw(dir.path(), "bad.raw", 3 * MIB);
    let so = dir.path().join("so.vmdk");
    let ms = dir.path().join("ms.vmdk");
    vmdk_from_raw(&raw, &so, "subformat=streamOptimized");
    vmdk_from_raw(&raw, &ms, "subformat=monolithicSparse");
    let sob = fs::read(&so).unwrap();
    let msb = fs::read(&ms).unwrap();
    let first = |b: &[u8]| entries(b)[0].1 as usize * S;
    let (so_first, ms_gd) = (first(&sob), hdr(&msb).gd as usize * S);
    let ms_gt = le32(&msb, ms_gd) as usize * S;
    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "truncated stream",
            patched(&so, "t1.vmdk", |b| b.truncate(so_first + 1000)),
            &["truncated"],
        ),
        (
            "truncated sparse",
            patched(&ms, "t2.vmdk", |b| b.truncate(b.len() - 70000)),
            &["truncated"],
        ),
        (
            "truncated header",
            patched(&ms, "t3.vmdk", |b| b.truncate(300)),
            &["truncated"],
        ),
        (
            "grain table past the end",
            patched(&ms, "gd.vmdk", |b| {
                b[ms_gd..ms_gd + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes())
            }),
            &["truncated", "grain table"],
        ),
        (
            "grain into the directory",
            patched(&ms, "gt.vmdk", |b| {
                b[ms_gt..ms_gt + 4].copy_from_slice(&((ms_gd / S) as u32).to_le_bytes())
            }),
            &["metadata", "overlaps"],
        ),
        (
            "two guest grains on one host grain",
            patched(&ms, "dup.vmdk", |b| {
                let e = le32(b, ms_gt);
                b[ms_gt + 4..ms_gt + 8].copy_from_slice(&e.to_le_bytes());
            }),
            &["overlaps"],
        ),
        (
            "LBA past the capacity",
            patched(&so, "lba.vmdk", |b| {
                b[so_first..so_first + 8].copy_from_slice(&(1u64 << 40).to_le_bytes())
            }),
            &["past the disk"],
        ),
        (
            "LBA out of grain alignment",
            patched(&so, "align.vmdk", |b| {
                b[so_first..so_first + 8].copy_from_slice(&1u64.to_le_bytes())
            }),
            &["multiple of the grain"],
        ),
        (
            "corrupt zlib",
            patched(&so, "zlib.vmdk", |b| {
                for x in &mut b[so_first + 40..so_first + 80] {
                    *x ^= 0x55;
                }
            }),
            &["zlib"],
        ),
        (
            "grain size not a power of two",
            patched(&ms, "grain.vmdk", |b| {
                b[20..28].copy_from_slice(&100u64.to_le_bytes())
            }),
            &["grain size"],
        ),
        (
            "grain tables too large",
            patched(&ms, "gtes.vmdk", |b| {
                b[44..48].copy_from_slice(&1000u32.to_le_bytes())
            }),
            &["numGTEsPerGT"],
        ),
        (
            "impossible capacity",
            patched(&so, "cap.vmdk", |b| {
                b[12..20].copy_from_slice(&(1u64 << 62).to_le_bytes())
            }),
            &["capacity"],
        ),
        (
            "grain table entry off its marker",
            patched(&so, "off.vmdk", |b| {
                let gt = le32(b, hdr(b).gd as usize * S) as usize * S;
                let e = le32(b, gt);
                b[gt..gt + 4].copy_from_slice(&(e + 1).to_le_bytes());
            }),
            &["do not match the grain tables"],
        ),
    ];
    for (what, img, words) in cases {
        for input in [Input::Null, Input::Pipe(img.clone())] {
            let src: OsString = if matches!(input, Input::Null) {
                img.clone().into()
            } else {
                "-".into()
            };
            let out = dir.path().join("bad.out");
            let run = Streamdisk::convert(&src, &out).input(input).run();
            run.check_refused(words)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}
