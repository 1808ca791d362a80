//! Unit tests on byte slices: small images built here (512-byte grains,
//! four entries per grain table), decoded in pieces of every size and
//! through the driver, checked with `CheckingSink`.

use std::io::Write;

use super::VmdkError;
use crate::format::plan::{PlanOptions, SpillPolicy};
use crate::format::{drive, Decoder, DecoderConfig, Feed, FormatError, PlanError};
use crate::testing::{CheckingSink, Dribble, SliceRange};

use super::VmdkDecoder;

const S: usize = 512;
/// Entries per grain table in these images.
const N: u32 = 4;

fn put32(b: &mut Vec<u8>, at: usize, v: u32) {
    grow(b, at + 4);
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut Vec<u8>, at: usize, v: u64) {
    grow(b, at + 8);
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn grow(b: &mut Vec<u8>, len: usize) {
    if b.len() < len {
        b.resize(len, 0);
    }
}

/// Flags: newline check, plus compression and markers for streamOptimized.
fn header(capacity: u64, gd: u64, overhead: u64, compressed: bool) -> Vec<u8> {
    let mut b = vec![0u8; S];
    b[..4].copy_from_slice(b"KDMV");
    let flags: u32 = 1 | if compressed { 3 << 16 } else { 0 };
    put32(&mut b, 4, if compressed { 3 } else { 1 });
    put32(&mut b, 8, flags);
    put64(&mut b, 12, capacity);
    put64(&mut b, 20, 1);
    put64(&mut b, 28, 1);
    put64(&mut b, 36, 20);
    put32(&mut b, 44, N);
    put64(&mut b, 56, gd);
    put64(&mut b, 64, overhead);
    b[73..77].copy_from_slice(&[0x0a, 0x20, 0x0d, 0x0a]);
    b[77] = u8::from(compressed);
    b
}

fn descriptor(b: &mut Vec<u8>, text: &str) {
    grow(b, 2 * S);
    b[S..S + text.len()].copy_from_slice(text.as_bytes());
}

const DESC: &str = "# Disk DescriptorFile\nversion=1\nCID=1234abcd\nparentCID=ffffffff\n\
    createType=\"monolithicSparse\"\n\n# Extent description\nRW 10 SPARSE \"t.vmdk\"\n";

fn fill(g: u64) -> u8 {
    0x40u8.wrapping_add(g as u8)
}

/// A monolithicSparse image of 10 sectors (grains of one sector, three
/// grain tables): the directory at sector `gd`, table `t` at `gts[t]`,
/// guest grain `g` at sector `grains[g]` (0: unallocated), filled with
/// `fill(g)`.
fn sparse(gd: u64, gts: [u64; 3], grains: &[(u64, u64)]) -> Vec<u8> {
    let mut b = header(10, gd, 2, false);
    descriptor(&mut b, DESC);
    for (t, &at) in gts.iter().enumerate() {
        put32(&mut b, gd as usize * S + t * 4, at as u32);
        grow(&mut b, (at as usize + 1) * S);
    }
    for &(g, at) in grains {
        let t = (g / u64::from(N)) as usize;
        let j = (g % u64::from(N)) as usize;
        put32(&mut b, gts[t] as usize * S + j * 4, at as u32);
        grow(&mut b, (at as usize + 1) * S);
        b[at as usize * S..(at as usize + 1) * S].fill(fill(g));
    }
    grow(&mut b, 32 * S);
    b
}

/// What the disk must read: `fill(g)` for the grains given, zeros elsewhere.
fn expected(grains: &[u64], sectors: usize) -> Vec<u8> {
    let mut v = vec![0u8; sectors * S];
    for &g in grains {
        v[g as usize * S..(g as usize + 1) * S].fill(fill(g));
    }
    v
}

fn decoder() -> VmdkDecoder {
    VmdkDecoder::new(&DecoderConfig::default())
}

/// Feeds `img` in pieces of `piece` bytes (no driver: every table must come
/// before what it maps).
fn feed(img: &[u8], piece: usize) -> Result<CheckingSink, FormatError> {
    let mut d = decoder();
    let mut sink = CheckingSink::new();
    for p in img.chunks(piece) {
        match d.feed(p, &mut sink)? {
            Feed::Done => {}
            Feed::NeedMetadata(_) => return Err(FormatError::Internal("test: metadata asked")),
        }
    }
    d.finish(&mut sink)?;
    Ok(sink)
}

/// Decodes through the driver: as a stream with a window of `window` bytes
/// and no spill, or with range reads.
fn driven(img: &[u8], window: usize, seekable: bool) -> Result<CheckingSink, FormatError> {
    let plan = PlanOptions {
        window,
        spill: SpillPolicy::Forbid,
    };
    let mut d = decoder();
    let mut sink = CheckingSink::new();
    let mut range = SliceRange::new(img);
    let mut input = Dribble::new(img, 97, 1000);
    let r = if seekable {
        drive(&mut d, &mut input, Some(&mut range), &plan, &mut sink)
    } else {
        drive(&mut d, &mut input, None, &plan, &mut sink)
    };
    r.map(|_| sink)
}

fn vmdk_err(r: Result<CheckingSink, FormatError>) -> VmdkError {
    match r {
        Err(FormatError::Vmdk(e)) => e,
        Err(e) => panic!("expected a VMDK error, got {e}"),
        Ok(_) => panic!("expected a VMDK error, the image decoded"),
    }
}

#[test]
fn a_forward_sparse_image_decodes_in_pieces_of_any_size() {
    // Grains in guest order after the tables, as qemu-img convert writes them.
    let img = sparse(21, [22, 23, 24], &[(0, 25), (2, 26), (3, 27), (9, 28)]);
    let want = expected(&[0, 2, 3, 9], 10);
    for piece in [1, 7, 512, 513, 4096, 1 << 20] {
        let sink = feed(&img, piece).expect("decodes");
        sink.assert_complete();
        assert_eq!(sink.image(), want, "piece {piece}");
        assert_eq!(sink.data_bytes(), 4 * S as u64);
    }
}

#[test]
fn grains_in_any_host_order_are_placed_by_their_tables() {
    // qemu-io writes in random order: host order is write order.
    let img = sparse(21, [22, 23, 24], &[(9, 25), (3, 26), (0, 27), (5, 28)]);
    let sink = feed(&img, 333).expect("decodes");
    assert_eq!(sink.image(), expected(&[0, 3, 5, 9], 10));
}

#[test]
fn tables_after_the_data_they_map_are_read_ahead_or_fetched() {
    // The directory and tables after the grains: the decoder asks for them.
    let img = sparse(40, [41, 42, 43], &[(0, 25), (4, 26), (8, 27)]);
    let want = expected(&[0, 4, 8], 10);
    let mut d = decoder();
    let mut sink = CheckingSink::new();
    assert!(matches!(d.feed(&img, &mut sink), Ok(Feed::NeedMetadata(_))));
    assert_eq!(d.missing_metadata(), vec![40 * 512..41 * 512]);
    for seekable in [true, false] {
        let sink = driven(&img, 64 << 10, seekable).expect("decodes");
        sink.assert_complete();
        assert_eq!(sink.image(), want, "seekable {seekable}");
    }
    // A stream with too small a window and no spill says so.
    match driven(&img, 1024, false) {
        Err(FormatError::Plan(PlanError::ScratchRequired { .. })) => {}
        other => panic!("expected ScratchRequired, got {:?}", other.err()),
    }
}

#[test]
fn zero_grains_read_as_zeros_when_the_flag_says_so() {
    let mut img = sparse(21, [22, 23, 24], &[(0, 25), (1, 26)]);
    // Entry 1 becomes a zero grain; bit 2 of the flags enables them.
    put32(&mut img, 22 * S + 4, 1);
    img[8] |= 4;
    let sink = feed(&img, 100).expect("decodes");
    assert_eq!(sink.image(), expected(&[0], 10));
    // Without the flag, entry 1 points into the embedded descriptor.
    img[8] &= !4;
    assert!(matches!(
        vmdk_err(feed(&img, 100)),
        VmdkError::Passed { what: "grain", .. }
    ));
}

#[test]
fn a_partial_last_grain_is_clipped_to_the_disk() {
    // Grains of 2 sectors over a 5-sector disk: the third grain is half in.
    let mut img = header(5, 21, 2, false);
    put64(&mut img, 20, 2);
    descriptor(&mut img, DESC);
    put32(&mut img, 21 * S, 22);
    put32(&mut img, 22 * S + 8, 23);
    grow(&mut img, 25 * S);
    img[23 * S..25 * S].fill(0x77);
    let sink = feed(&img, 64).expect("decodes");
    sink.assert_complete();
    let mut want = vec![0u8; 5 * S];
    want[4 * S..].fill(0x77);
    assert_eq!(sink.image(), want);
}

#[test]
fn hostile_sparse_maps_are_refused() {
    // Two guest grains on the same host sector.
    let img = sparse(21, [22, 23, 24], &[(0, 25), (5, 25)]);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Overlap { .. }
    ));
    // A grain on a grain table, a table on the directory.
    let img = sparse(21, [22, 23, 24], &[(0, 23)]);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Overlap { .. }
    ));
    let img = sparse(21, [21, 23, 24], &[]);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Overlap { .. }
    ));
    // A grain past the end of the file.
    let img = sparse(21, [22, 23, 24], &[(1, 25)]);
    let mut cut = img.clone();
    put32(&mut cut, 22 * S + 4, 500);
    assert!(matches!(
        vmdk_err(feed(&cut, 512)),
        VmdkError::Truncated { what: "grain", .. }
    ));
}

#[test]
fn truncation_anywhere_is_an_error_never_a_panic() {
    let img = sparse(21, [22, 23, 24], &[(0, 25), (3, 26), (9, 27)]);
    let img = &img[..28 * S];
    assert!(feed(img, 512).is_ok());
    for cut in (0..img.len()).step_by(37).chain([img.len() - 1]) {
        match feed(&img[..cut], 512) {
            Err(FormatError::Vmdk(
                VmdkError::Truncated { .. }
                | VmdkError::TruncatedHeader { .. }
                | VmdkError::TruncatedOverhead { .. },
            )) => {}
            Err(e) => panic!("cut at {cut}: {e}"),
            Ok(_) => panic!("cut at {cut} decoded"),
        }
    }
}

#[test]
fn descriptors_naming_other_files_are_refused_by_name() {
    let text = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\n";
    for piece in [1, 10, 4096] {
        let e = vmdk_err(feed(text.as_bytes(), piece));
        let m = e.to_string();
        assert!(
            m.contains("disk-flat.vmdk") && m.contains("monolithicFlat"),
            "{m}"
        );
    }
    // Without a Disk Data Base, at the end of the stream.
    let short = "# Disk DescriptorFile\ncreateType=\"twoGbMaxExtentSparse\"\nRW 1 SPARSE \"a-s001.vmdk\"\nRW 1 SPARSE \"a-s002.vmdk\"\n";
    let m = vmdk_err(feed(short.as_bytes(), 7)).to_string();
    assert!(m.contains("a-s001.vmdk, a-s002.vmdk"), "{m}");
    // A sparse extent whose embedded descriptor belongs to a split set.
    let mut img = sparse(21, [22, 23, 24], &[]);
    img[S..2 * S].fill(0);
    descriptor(
        &mut img,
        "CID=1\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\nRW 10 SPARSE \"x-s001.vmdk\"\nRW 10 SPARSE \"x-s002.vmdk\"\n",
    );
    let m = vmdk_err(feed(&img, 512)).to_string();
    assert!(m.contains("x-s002.vmdk"), "{m}");
    // A delta disk, and an extent with no descriptor at all.
    let mut img = sparse(21, [22, 23, 24], &[]);
    img[S..2 * S].fill(0);
    descriptor(
        &mut img,
        "CID=1\nparentCID=2\nparentFileNameHint=\"base.vmdk\"\n",
    );
    assert!(
        matches!(vmdk_err(feed(&img, 512)), VmdkError::DeltaDisk { parent } if parent == "base.vmdk")
    );
    img[S..2 * S].fill(0);
    assert!(matches!(vmdk_err(feed(&img, 512)), VmdkError::NoDescriptor));
    // A sparse header with no capacity is a descriptor, as qemu reads it.
    let mut img = header(0, 21, 2, false);
    descriptor(&mut img, "createType=\"vmfs\"\nRW 10 VMFS \"raw.vmdk\"\n");
    let m = vmdk_err(feed(&img, 512)).to_string();
    assert!(m.contains("raw.vmdk"), "{m}");
}

#[test]
fn info_reports_qemus_names() {
    let img = sparse(21, [22, 23, 24], &[(0, 25)]);
    let mut d = decoder();
    let mut sink = CheckingSink::new();
    assert!(d.info().is_none());
    d.feed(&img[..30 * S], &mut sink).expect("feed");
    let info = d.info().expect("info after the descriptor");
    let json = serde_json::to_value(&info).expect("json");
    assert_eq!(json["format"], "vmdk");
    assert_eq!(json["virtual-size"], 10 * 512);
    assert_eq!(json["cluster-size"], 512);
    let data = &json["format-specific"]["data"];
    assert_eq!(data["cid"], 0x1234_abcd);
    assert_eq!(data["parent-cid"], 0xffff_ffffu32);
    assert_eq!(data["create-type"], "monolithicSparse");
    assert_eq!(data["extents"][0]["filename"], "t.vmdk");
    assert_eq!(data["extents"][0]["cluster-size"], 512);
}

// ---------------------------------------------------------------------------
// streamOptimized
// ---------------------------------------------------------------------------

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data).expect("zlib");
    z.finish().expect("zlib")
}

/// Appends a grain marker for guest grain `g` (one sector) at the end;
/// returns its sector.
fn grain(b: &mut Vec<u8>, lba: u64, data: &[u8]) -> u64 {
    let at = b.len();
    let z = zlib(data);
    b.extend_from_slice(&lba.to_le_bytes());
    b.extend_from_slice(&(z.len() as u32).to_le_bytes());
    b.extend_from_slice(&z);
    grow(b, at.div_ceil(S) * S + (12 + z.len()).div_ceil(S) * S);
    (at / S) as u64
}

fn meta(b: &mut Vec<u8>, sectors: u64, kind: u32) {
    let at = b.len();
    b.extend_from_slice(&sectors.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&kind.to_le_bytes());
    grow(b, at + S);
}

fn table(b: &mut Vec<u8>, entries: &[u64]) -> u64 {
    let at = b.len();
    for &e in entries {
        b.extend_from_slice(&(e as u32).to_le_bytes());
    }
    grow(b, at + S);
    (at / S) as u64
}

const SO_DESC: &str =
    "CID=5\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\nRW 10 SPARSE \"s.vmdk\"\n";

/// QEMU's layout: directory and tables before `overHead`, then the grains
/// of `guest` (in that order), no footer.
fn qemu_stream(guest: &[u64]) -> Vec<u8> {
    qemu_stream_of(10, guest)
}

/// The same over `capacity` sectors.
fn qemu_stream_of(capacity: u64, guest: &[u64]) -> Vec<u8> {
    let tables = capacity.div_ceil(u64::from(N)) as usize;
    let gd_sectors = (tables * 4).div_ceil(S);
    let overhead = 21 + gd_sectors + tables;
    let mut b = header(capacity, 21, overhead as u64, true);
    descriptor(&mut b, SO_DESC);
    grow(&mut b, overhead * S);
    let mut gt = vec![[0u64; 4]; tables];
    for &g in guest {
        let at = grain(&mut b, g, &[fill(g); S]);
        gt[g as usize / 4][g as usize % 4] = at;
    }
    for (t, entries) in gt.iter().enumerate() {
        let at = 21 + gd_sectors + t;
        put32(&mut b, 21 * S + t * 4, at as u32);
        for (j, &e) in entries.iter().enumerate() {
            put32(&mut b, at * S + j * 4, e as u32);
        }
    }
    b
}

/// VMware's layout: for each grain table, its grains then the table behind
/// a marker; the directory, the footer and the end-of-stream marker last.
fn vmware_stream(groups: &[&[u64]]) -> Vec<u8> {
    let mut b = header(10, u64::MAX, 21, true);
    descriptor(&mut b, SO_DESC);
    grow(&mut b, 21 * S);
    let mut gd = [0u64; 3];
    for group in groups {
        let mut gt = [0u64; 4];
        for &g in group.iter() {
            gt[g as usize % 4] = grain(&mut b, g, &[fill(g); S]);
        }
        meta(&mut b, 1, 1);
        gd[group[0] as usize / 4] = table(&mut b, &gt);
    }
    meta(&mut b, 1, 2);
    let gd_at = table(&mut b, &gd);
    meta(&mut b, 1, 3);
    let mut footer = header(10, gd_at, 21, true);
    footer.truncate(S);
    b.extend_from_slice(&footer);
    meta(&mut b, 0, 0);
    b
}

#[test]
fn streams_in_qemus_layout_decode() {
    let img = qemu_stream(&[0, 1, 5, 9]);
    for piece in [1, 13, 512, 1 << 20] {
        let sink = feed(&img, piece).expect("decodes");
        sink.assert_complete();
        assert_eq!(sink.image(), expected(&[0, 1, 5, 9], 10), "piece {piece}");
    }
    // An end-of-stream marker after the grains (a zero sector) is fine too.
    let mut eos = img.clone();
    grow(&mut eos, img.len() + 3 * S);
    assert!(feed(&eos, 512).is_ok());
}

#[test]
fn streams_in_vmwares_layout_decode_without_reading_ahead() {
    // Out-of-order grains inside a table's run are allowed.
    let img = vmware_stream(&[&[1, 0, 3], &[9, 8]]);
    for piece in [1, 100, 4096] {
        let sink = feed(&img, piece).expect("decodes");
        sink.assert_complete();
        assert_eq!(sink.image(), expected(&[0, 1, 3, 8, 9], 10));
    }
    for seekable in [true, false] {
        let sink = driven(&img, 1024, seekable).expect("decodes");
        assert_eq!(sink.image(), expected(&[0, 1, 3, 8, 9], 10));
    }
}

#[test]
fn the_last_grain_may_be_short() {
    // 2-sector grains over 3 sectors: the second grain holds one sector.
    let mut b = header(3, 21, 25, true);
    put64(&mut b, 20, 2);
    descriptor(&mut b, SO_DESC);
    grow(&mut b, 25 * S);
    let g0 = grain(&mut b, 0, &[7u8; 2 * S]);
    let g1 = grain(&mut b, 2, &[9u8; S]);
    put32(&mut b, 21 * S, 22);
    put32(&mut b, 22 * S, g0 as u32);
    put32(&mut b, 22 * S + 4, g1 as u32);
    let sink = feed(&b, 200).expect("decodes");
    sink.assert_complete();
    let mut want = vec![7u8; 3 * S];
    want[2 * S..].fill(9);
    assert_eq!(sink.image(), want);
    // A middle grain that inflates short is refused.
    let mut bad = header(3, 21, 25, true);
    put64(&mut bad, 20, 2);
    descriptor(&mut bad, SO_DESC);
    grow(&mut bad, 25 * S);
    let g0 = grain(&mut bad, 0, &[7u8; S]);
    put32(&mut bad, 21 * S, 22);
    put32(&mut bad, 22 * S, g0 as u32);
    assert!(matches!(
        vmdk_err(feed(&bad, 512)),
        VmdkError::ShortGrain { .. }
    ));
}

#[test]
fn markers_that_disagree_with_the_tables_are_refused() {
    // A grain the tables do not point at (an orphan).
    let mut img = qemu_stream(&[0, 1]);
    put32(&mut img, 22 * S + 4, 0);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Mismatch { .. }
    ));
    // A table entry pointing at the wrong marker.
    let mut img = qemu_stream(&[0, 1]);
    let a = u32::from_le_bytes(img[22 * S..22 * S + 4].try_into().expect("4"));
    let b = u32::from_le_bytes(img[22 * S + 4..22 * S + 8].try_into().expect("4"));
    put32(&mut img, 22 * S, b);
    put32(&mut img, 22 * S + 4, a);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Mismatch { .. }
    ));
    // A marker whose LBA is not where its table entry is.
    let mut img = vmware_stream(&[&[0, 1]]);
    put64(&mut img, 21 * S, 2);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Mismatch { .. }
    ));
}

#[test]
fn hostile_markers_are_refused() {
    let at = 25 * S;
    let mut img = qemu_stream(&[0]);
    put64(&mut img, at, 11);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::GrainLba { lba: 11, .. }
    ));
    let mut img = qemu_stream(&[0]);
    put64(&mut img, at, u64::MAX);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::GrainLba { .. }
    ));
    let mut img = qemu_stream(&[0]);
    put32(&mut img, at + 8, 5000);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::MarkerGrainSize { .. }
    ));
    let mut img = qemu_stream(&[0, 1]);
    put64(&mut img, 26 * S, 0);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::DuplicateGrain { .. }
    ));
    let mut img = qemu_stream(&[0]);
    img[at + 20] ^= 0xff;
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::Inflate { .. }
    ));
    let mut img = qemu_stream(&[0]);
    put32(&mut img, at + 8, 0);
    put32(&mut img, at + 12, 7);
    assert!(matches!(
        vmdk_err(feed(&img, 512)),
        VmdkError::MarkerType { kind: 7, .. }
    ));
}

#[test]
fn vmware_streams_must_end_with_footer_and_end_marker() {
    let img = vmware_stream(&[&[0, 1]]);
    // No end-of-stream marker, no footer, data after the end.
    let n = img.len();
    assert!(matches!(
        vmdk_err(feed(&img[..n - S], 512)),
        VmdkError::NoEos
    ));
    assert!(matches!(
        vmdk_err(feed(&img[..n - 3 * S], 512)),
        VmdkError::NoFooter
    ));
    let mut more = img.clone();
    more.extend_from_slice(&[0u8; S]);
    assert!(matches!(
        vmdk_err(feed(&more, 512)),
        VmdkError::DataAfterEos { .. }
    ));
    // A footer that says another capacity.
    let mut f = img.clone();
    put64(&mut f, n - 2 * S + 12, 12);
    assert!(matches!(
        vmdk_err(feed(&f, 512)),
        VmdkError::FooterField {
            field: "capacity",
            ..
        }
    ));
    // A footer pointing at no directory.
    let mut f = img.clone();
    put64(&mut f, n - 2 * S + 56, 3);
    assert!(matches!(vmdk_err(feed(&f, 512)), VmdkError::FooterGd(3)));
}

#[test]
fn stream_truncation_anywhere_is_an_error() {
    for img in [qemu_stream(&[0, 4, 9]), vmware_stream(&[&[0, 2], &[5]])] {
        assert!(feed(&img, 512).is_ok());
        for cut in (0..img.len()).step_by(29) {
            match feed(&img[..cut], 512) {
                Err(FormatError::Vmdk(_)) => {}
                Err(e) => panic!("cut at {cut}: {e}"),
                // Only the padding of the last grain may go missing.
                Ok(sink) => assert_eq!(sink.image(), feed(&img, 512).expect("whole").image()),
            }
        }
    }
}

#[test]
fn many_extents_are_finished_as_they_go_and_late_grains_refused() {
    // 5000 separate extents (every other grain): more runs than are kept.
    let even: Vec<u64> = (0..5000).map(|i| i * 2).collect();
    let img = qemu_stream_of(10_000, &even);
    let sink = feed(&img, 4096).expect("decodes");
    sink.assert_complete();
    let image = sink.image();
    for g in [0usize, 1, 2, 4999, 5000, 9998, 9999] {
        let want = if g % 2 == 0 { fill(g as u64) } else { 0 };
        assert!(
            image[g * S..(g + 1) * S].iter().all(|&b| b == want),
            "grain {g}"
        );
    }
    // A grain far behind the others, once its range was finished.
    let mut late = even.clone();
    late.push(1);
    let img = qemu_stream_of(10_000, &late);
    assert!(matches!(
        vmdk_err(feed(&img, 4096)),
        VmdkError::OutOfOrder { lba: 1, .. }
    ));
}
