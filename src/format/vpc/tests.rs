//! VHD decoders on images built in memory: every layout the format allows
//! (tables before or after the blocks, blocks in any order), fed in slices
//! of varying size, from a stream and with range reads; every fault refused
//! by name; and the contract checked by `CheckingSink` throughout.

use super::blocks::MapFault;
use super::footer::tests::footer;
use super::footer::FOOTER_LEN;
use super::*;
use crate::format::{drive, new_decoder, Format, PlanError, PlanOptions, SpillPolicy};
use crate::testing::{CheckingSink, Dribble, Prng, SliceRange};

/// Small blocks keep the images small: 4 KiB of data behind a one-sector
/// bitmap.
const BS: u64 = 4096;
const BITMAP: u64 = 512;
const SPAN: u64 = BS + BITMAP;

/// Where things go in a dynamic image built by [`Dyn::build`].
#[derive(Clone)]
struct Dyn {
    vsize: u64,
    /// Allocated guest blocks, in the order they are stored on the host.
    order: Vec<u64>,
    /// Dynamic header offset.
    header: u64,
    /// BAT offset; `None`: right after the header.
    bat: Option<u64>,
    /// First block's host offset; `None`: right after the BAT.
    data: Option<u64>,
    /// BAT entries (at least the blocks the virtual size needs).
    entries: u32,
    /// Bitmap bytes (qemu sets them all; their content does not matter).
    bitmap_fill: u8,
}

impl Dyn {
    fn new(vsize: u64, order: Vec<u64>) -> Dyn {
        Dyn {
            vsize,
            order,
            header: 512,
            bat: None,
            data: None,
            entries: vsize.div_ceil(BS) as u32,
            bitmap_fill: 0xff,
        }
    }

    fn bat_offset(&self) -> u64 {
        self.bat.unwrap_or(self.header + 1024)
    }

    /// The image and the disk it holds.
    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let f = footer(b"qem2", (1, 1, 1), self.vsize, 3);
        let t = self.bat_offset();
        let bat_end = (t + 4 * u64::from(self.entries)).div_ceil(512) * 512;
        let data = self
            .data
            .unwrap_or(bat_end.max(self.header + 1024).div_ceil(512) * 512);
        let mut bat = vec![0xffu8; 4 * self.entries as usize];
        let mut disk = vec![0u8; self.vsize as usize];
        let mut rng = Prng::new(self.vsize ^ self.order.len() as u64);
        let mut blocks = Vec::new();
        for (k, &g) in self.order.iter().enumerate() {
            let host = data + k as u64 * SPAN;
            bat[4 * g as usize..4 * g as usize + 4]
                .copy_from_slice(&((host / 512) as u32).to_be_bytes());
            let bytes = rng.bytes(BS as usize);
            let start = (g * BS) as usize;
            let end = (start + BS as usize).min(disk.len());
            if start < end {
                disk[start..end].copy_from_slice(&bytes[..end - start]);
            }
            blocks.push((host, bytes));
        }
        let mut hdr = vec![0u8; 1024];
        hdr[..8].copy_from_slice(b"cxsparse");
        hdr[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        hdr[16..24].copy_from_slice(&t.to_be_bytes());
        hdr[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        hdr[28..32].copy_from_slice(&self.entries.to_be_bytes());
        hdr[32..36].copy_from_slice(&(BS as u32).to_be_bytes());
        let mut f0 = f.clone();
        f0[16..24].copy_from_slice(&self.header.to_be_bytes());
        let c = footer::checksum(&f0);
        f0[64..68].copy_from_slice(&c.to_be_bytes());
        let mut img = Vec::new();
        let put = |img: &mut Vec<u8>, at: u64, b: &[u8]| {
            let at = at as usize;
            if img.len() < at + b.len() {
                img.resize(at + b.len(), 0);
            }
            img[at..at + b.len()].copy_from_slice(b);
        };
        put(&mut img, 0, &f0);
        put(&mut img, self.header, &hdr);
        put(&mut img, t, &bat);
        for (host, bytes) in &blocks {
            put(&mut img, *host, &vec![self.bitmap_fill; BITMAP as usize]);
            put(&mut img, host + BITMAP, bytes);
        }
        let end = img.len() as u64;
        put(&mut img, end.div_ceil(512) * 512, &f0);
        (img, disk)
    }
}

/// How an image is fed.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A stream, a big window, no range reads.
    Stream,
    /// A stream with range reads and a known length.
    Seekable,
    /// A stream, no range reads, a 4 KiB window and no spill.
    Tight,
}

const ALL: [Via; 3] = [Via::Stream, Via::Seekable, Via::Tight];

fn decode(img: &[u8], via: Via, step: usize) -> Result<CheckingSink, FormatError> {
    decode_cfg(img, via, step, Tail::Unchecked)
}

fn decode_cfg(img: &[u8], via: Via, step: usize, tail: Tail) -> Result<CheckingSink, FormatError> {
    let plan = match via {
        Via::Tight => PlanOptions {
            window: 4096,
            spill: SpillPolicy::Forbid,
        },
        _ => PlanOptions::default(),
    };
    let seekable = matches!(via, Via::Seekable);
    let cfg = DecoderConfig {
        plan: plan.clone(),
        can_fetch: seekable,
        stream_len: seekable.then_some(img.len() as u64),
        tail,
        ..DecoderConfig::default()
    };
    let mut dec = new_decoder(Format::Vpc, &cfg)?;
    let mut sink = CheckingSink::new().sizeless();
    let mut range = SliceRange::new(img);
    let mut input = Dribble::new(img, step, 70_001);
    let r: Option<&mut dyn crate::io::RangeRead> = if seekable { Some(&mut range) } else { None };
    drive(dec.as_mut(), &mut input, r, &plan, &mut sink)?;
    Ok(sink)
}

fn assert_decodes(img: &[u8], disk: &[u8], vias: &[Via]) {
    for &via in vias {
        for step in [1, 511, 4096, 65536] {
            let sink = decode(img, via, step).unwrap_or_else(|e| panic!("{via:?}/{step}: {e}"));
            assert_eq!(sink.vsize, Some(disk.len() as u64), "{via:?}/{step}");
            sink.assert_complete();
            assert!(sink.image() == disk, "{via:?}/{step}: disk differs");
        }
    }
}

fn vpc_err(r: Result<CheckingSink, FormatError>) -> VpcError {
    match r {
        Err(FormatError::Vpc(e)) => e,
        Err(e) => panic!("not a vpc fault: {e}"),
        Ok(_) => panic!("decoded"),
    }
}

#[test]
fn dynamic_in_guest_order_and_in_random_order() {
    // 13 blocks, the last one cut by the virtual size; holes between.
    let vsize = 12 * BS + 1536;
    let (img, disk) = Dyn::new(vsize, vec![0, 1, 2, 5, 6, 12]).build();
    assert_decodes(&img, &disk, &ALL);
    let (img, disk) = Dyn::new(vsize, vec![6, 0, 12, 2, 1, 5]).build();
    assert_decodes(&img, &disk, &ALL);
    // Nothing allocated, and everything allocated.
    let (img, disk) = Dyn::new(vsize, vec![]).build();
    assert_decodes(&img, &disk, &ALL);
    let (img, disk) = Dyn::new(vsize, (0..13).rev().collect()).build();
    assert_decodes(&img, &disk, &ALL);
}

#[test]
fn sector_bitmaps_are_ignored_as_qemu_ignores_them() {
    let mut d = Dyn::new(4 * BS, vec![1, 3]);
    d.bitmap_fill = 0;
    let (img, disk) = d.build();
    assert_decodes(&img, &disk, &[Via::Stream]);
}

#[test]
fn tables_after_the_blocks_are_fetched_or_waited_for() {
    let vsize = 16 * BS;
    // The BAT after the blocks: read out of order, or held until it passes.
    let mut d = Dyn::new(vsize, vec![3, 0, 9]);
    d.data = Some(2048);
    d.bat = Some(2048 + 3 * SPAN);
    let (img, disk) = d.build();
    assert_decodes(&img, &disk, &[Via::Stream, Via::Seekable]);
    // A 4 KiB window without a spill cannot hold the blocks before it.
    let e = decode(&img, Via::Tight, 4096).unwrap_err();
    assert!(
        matches!(e, FormatError::Plan(PlanError::ScratchRequired { .. })),
        "{e}"
    );
    // The header after the blocks, then the BAT after the header.
    let mut d = Dyn::new(vsize, vec![1, 2]);
    d.data = Some(512);
    d.header = 512 + 2 * SPAN;
    d.bat = Some(d.header + 1024);
    let (img, disk) = d.build();
    assert_decodes(&img, &disk, &[Via::Stream, Via::Seekable]);
    // The BAT between the footer and the blocks, the header after them.
    let mut d = Dyn::new(vsize, vec![4]);
    d.bat = Some(512);
    d.data = Some(1024);
    d.header = 1024 + SPAN;
    let (img, disk) = d.build();
    assert_decodes(&img, &disk, &[Via::Stream, Via::Seekable]);
}

#[test]
fn info_names_the_format_size_and_block_size() {
    let (img, _) = Dyn::new(8 * BS, vec![1]).build();
    let mut dec = new_decoder(Format::Vpc, &DecoderConfig::default()).unwrap();
    let mut sink = CheckingSink::new();
    assert_eq!(dec.info(), None);
    dec.feed(&img[..1536], &mut sink).unwrap();
    let i = dec.info().expect("header parsed");
    assert_eq!(i.format, Format::Vpc);
    assert_eq!(i.virtual_size, Some(8 * BS));
    assert_eq!(i.cluster_size, Some(BS));
}

#[test]
fn truncation_anywhere_is_refused_never_a_panic() {
    let (img, disk) = Dyn::new(6 * BS, vec![4, 1, 2]).build();
    // The image ends with a footer copy the decoder does not need: every
    // cut before the last block's end must fail.
    let last_block_end = img.len() - FOOTER_LEN;
    for cut in (0..img.len()).step_by(97).chain([last_block_end - 1]) {
        let r = decode(&img[..cut], Via::Stream, 300);
        if cut < last_block_end {
            let e = r.err().unwrap_or_else(|| panic!("cut at {cut} decoded"));
            assert!(matches!(e, FormatError::Vpc(_)), "cut {cut}: {e}");
        } else {
            assert!(r.unwrap().image() == disk);
        }
    }
    // With a known length, a block past the end is refused before any data.
    let cut = &img[..img.len() - FOOTER_LEN - 100];
    let mut dec = DynamicDecoderProbe::seekable(cut);
    let e = dec.run().unwrap_err();
    assert!(
        matches!(e, FormatError::Vpc(VpcError::BlockPastEnd { block: 2, .. })),
        "{e}"
    );
    assert_eq!(
        dec.sink.data_bytes(),
        0,
        "nothing written before the refusal"
    );
}

/// Drives a decoder built for a seekable stream and keeps the sink.
struct DynamicDecoderProbe<'a> {
    img: &'a [u8],
    sink: CheckingSink,
}

impl<'a> DynamicDecoderProbe<'a> {
    fn seekable(img: &'a [u8]) -> Self {
        DynamicDecoderProbe {
            img,
            sink: CheckingSink::new().sizeless(),
        }
    }

    fn run(&mut self) -> Result<DecodeReport, FormatError> {
        let cfg = DecoderConfig {
            can_fetch: true,
            stream_len: Some(self.img.len() as u64),
            ..DecoderConfig::default()
        };
        let mut dec = new_decoder(Format::Vpc, &cfg)?;
        let mut range = SliceRange::new(self.img);
        drive(
            dec.as_mut(),
            &mut Dribble::fixed(self.img, 4096),
            Some(&mut range),
            &PlanOptions::default(),
            &mut self.sink,
        )
    }
}

/// Rewrites the footer copy at 0 (and its checksum) with `f`.
fn patch_footer(img: &mut [u8], f: impl Fn(&mut [u8])) {
    f(&mut img[..512]);
    img[64..68].fill(0);
    let c = footer::checksum(&img[..512]);
    img[64..68].copy_from_slice(&c.to_be_bytes());
}

fn set_bat(img: &mut [u8], bat: u64, index: usize, sector: u32) {
    let at = bat as usize + 4 * index;
    img[at..at + 4].copy_from_slice(&sector.to_be_bytes());
}

#[test]
fn broken_images_are_refused_by_name() {
    let d = Dyn::new(8 * BS, vec![0, 3, 5]);
    let (img, _) = d.build();
    let bat = d.bat_offset();
    let data = 2048u64; // header 512..1536, BAT 1536..1568, blocks from 2048
    let check = |img: &[u8], want: fn(&VpcError) -> bool, name: &str| {
        for via in ALL {
            let e = vpc_err(decode(img, via, 1000));
            assert!(want(&e), "{name} via {via:?}: {e}");
        }
    };

    let mut bad = img.clone();
    bad[100] ^= 1;
    check(
        &bad,
        |e| matches!(e, VpcError::FooterChecksum { .. }),
        "checksum",
    );

    let mut bad = img.clone();
    patch_footer(&mut bad, |f| f[60..64].copy_from_slice(&4u32.to_be_bytes()));
    check(
        &bad,
        |e| matches!(e, VpcError::Differencing { parent: None }),
        "differencing",
    );
    assert!(vpc_err(decode(&bad, Via::Stream, 1))
        .to_string()
        .contains("differencing VHD images are not supported: they need their parent"));
    // The parent's name, when the header gives one (UTF-16, big-endian).
    for (i, u) in "base.vhd".encode_utf16().enumerate() {
        bad[512 + 64 + 2 * i..512 + 66 + 2 * i].copy_from_slice(&u.to_be_bytes());
    }
    let e = vpc_err(decode(&bad, Via::Stream, 777));
    assert!(e.to_string().contains("parent image 'base.vhd'"), "{e}");

    let mut bad = img.clone();
    patch_footer(&mut bad, |f| f[60..64].copy_from_slice(&2u32.to_be_bytes()));
    check(&bad, |e| matches!(e, VpcError::FixedAtStart), "fixed at 0");

    let mut bad = img.clone();
    patch_footer(&mut bad, |f| {
        f[16..24].copy_from_slice(&100u64.to_be_bytes())
    });
    check(
        &bad,
        |e| matches!(e, VpcError::HeaderOffset(100)),
        "header in footer",
    );

    let mut bad = img.clone();
    bad[512] = b'X';
    check(
        &bad,
        |e| matches!(e, VpcError::HeaderMagic(512)),
        "header magic",
    );

    let mut bad = img.clone();
    bad[512 + 32..512 + 36].copy_from_slice(&3000u32.to_be_bytes());
    check(
        &bad,
        |e| matches!(e, VpcError::BlockSize(3000)),
        "block size",
    );

    let mut bad = img.clone();
    bad[512 + 28..512 + 32].copy_from_slice(&7u32.to_be_bytes());
    check(
        &bad,
        |e| matches!(e, VpcError::TableTooSmall { entries: 7, .. }),
        "table too small",
    );

    let mut bad = img.clone();
    bad[512 + 16..512 + 24].copy_from_slice(&1024u64.to_be_bytes());
    check(
        &bad,
        |e| {
            matches!(
                e,
                VpcError::TableOverlap {
                    what: "dynamic header",
                    ..
                }
            )
        },
        "BAT in header",
    );

    // A block pointing at the BAT, at the header, at the footer copy.
    for (sector, what) in [
        ((bat / 512) as u32, "block allocation table"),
        (1, "dynamic header"),
        (0, "footer"),
    ] {
        let mut bad = img.clone();
        set_bat(&mut bad, bat, 1, sector);
        let e = vpc_err(decode(&bad, Via::Stream, 1000));
        assert!(
            matches!(e, VpcError::Map(MapFault::IntoMetadata { what: w, .. }) if w == what),
            "{what}: {e}"
        );
    }

    // Two blocks sharing bytes (one block's data over the next one's bitmap).
    let mut bad = img.clone();
    set_bat(&mut bad, bat, 7, ((data + SPAN - 512) / 512) as u32);
    check(
        &bad,
        |e| matches!(e, VpcError::Map(MapFault::Overlap { .. })),
        "overlap",
    );

    // A block past the end.
    let mut bad = img.clone();
    set_bat(&mut bad, bat, 2, 0x00ff_ffff);
    check(
        &bad,
        |e| matches!(e, VpcError::BlockPastEnd { block: 2, .. }),
        "past end",
    );

    // A virtual size over 2040 GiB.
    let mut bad = img.clone();
    patch_footer(&mut bad, |f| {
        f[48..56].copy_from_slice(&(2041u64 << 30).to_be_bytes())
    });
    check(&bad, |e| matches!(e, VpcError::TooLarge(_)), "too large");
}

#[test]
fn unused_bat_entries_past_the_virtual_size_are_ignored_unless_past_the_end() {
    let mut d = Dyn::new(4 * BS, vec![1]);
    d.entries = 8;
    let (mut img, disk) = d.build();
    // Entry 6 maps a block the virtual size never reads, inside the file.
    set_bat(&mut img, d.bat_offset(), 6, 4);
    assert_decodes(&img, &disk, &[Via::Stream]);
    // Past the end of a file of known length: qemu refuses it, so do we.
    set_bat(&mut img, d.bat_offset(), 6, 0x00ff_ffff);
    let e = vpc_err(decode(&img, Via::Seekable, 4096));
    assert!(matches!(e, VpcError::BlockPastEnd { block: 6, .. }), "{e}");
}

/// A fixed VHD: `data_len` bytes of data, then a footer of `vsize`.
fn fixed(data_len: usize, vsize: u64) -> Vec<u8> {
    let mut img = Prng::new(data_len as u64).bytes(data_len);
    img.extend_from_slice(&footer(b"qem2", (1, 1, 1), vsize, 2));
    img
}

/// What qemu reads from a fixed VHD: the file's bytes up to the virtual
/// size, zeros past the file's end.
fn qemu_fixed(img: &[u8], vsize: u64) -> Vec<u8> {
    let mut d = img.to_vec();
    d.resize(vsize as usize, 0);
    d
}

fn tail_of(img: &[u8]) -> Tail {
    Tail::VhdFooter(img[img.len() - FOOTER_LEN..].to_vec())
}

#[test]
fn fixed_with_the_footer_known_up_front() {
    for (len, vsize) in [
        (8192, 8192),
        (8192, 4096),
        (8192, 8192 + 512),
        (8192, 20480),
    ] {
        let img = fixed(len, vsize);
        for step in [1, 1000, 65536] {
            let sink = decode_cfg(&img, Via::Seekable, step, tail_of(&img))
                .unwrap_or_else(|e| panic!("{len}/{vsize}: {e}"));
            assert_eq!(sink.vsize, Some(vsize));
            sink.assert_complete();
            assert!(
                sink.image() == qemu_fixed(&img, vsize),
                "{len}/{vsize}/{step}"
            );
        }
    }
}

#[test]
fn fixed_on_a_stream_keeps_the_footer_out() {
    for (len, vsize) in [(8192, 8192), (8192, 8192 + 512), (8192, 20480), (512, 4096)] {
        let img = fixed(len, vsize);
        for step in [1, 700, 65536] {
            let sink =
                decode(&img, Via::Stream, step).unwrap_or_else(|e| panic!("{len}/{vsize}: {e}"));
            // No size is announced on a stream: the disk is what was reported.
            assert!(
                sink.image() == qemu_fixed(&img, vsize),
                "{len}/{vsize}/{step}"
            );
        }
    }
    // Less virtual size than data: refused (the data was already passed on).
    let e = vpc_err(decode(&fixed(8192, 4096), Via::Stream, 1000));
    assert_eq!(
        e,
        VpcError::SizeMismatch {
            virtual_size: 4096,
            data: 8192
        }
    );
}

#[test]
fn fixed_footers_that_are_not_are_refused() {
    let mut img = fixed(4096, 4096);
    let n = img.len();
    img[n - 400] ^= 1;
    let e = vpc_err(decode(&img, Via::Stream, 999));
    assert!(matches!(e, VpcError::FooterChecksum { .. }), "{e}");
    let e = decode_cfg(&img, Via::Seekable, 999, tail_of(&img)).unwrap_err();
    assert!(
        matches!(e, FormatError::Vpc(VpcError::FooterChecksum { .. })),
        "{e}"
    );

    let mut img = Prng::new(1).bytes(4096);
    img.extend_from_slice(&footer(b"qem2", (1, 1, 1), 4096, 3));
    let e = vpc_err(decode(&img, Via::Stream, 999));
    assert_eq!(e, VpcError::NotFixed("dynamic"));

    // A stream with no footer at all, given as a VHD.
    let img = Prng::new(2).bytes(4096);
    assert_eq!(vpc_err(decode(&img, Via::Stream, 999)), VpcError::NoFooter);
    assert!(matches!(
        vpc_err(decode(&img[..5], Via::Stream, 999)),
        VpcError::TooShort(5)
    ));

    // A 511-byte footer.
    let mut img = Prng::new(3).bytes(4097);
    img.extend_from_slice(&footer(b"qem2", (1, 1, 1), 4096, 2)[..511]);
    assert_eq!(
        vpc_err(decode(&img, Via::Stream, 999)),
        VpcError::ShortFooter
    );
}

#[test]
fn geometry_sizes_a_qemu_fixed_disk() {
    // qemu-img's 10 MiB fixed disk: 302 x 4 x 17 sectors, data of that size.
    let vsize = 302 * 4 * 17 * 512;
    let mut img = vec![0u8; vsize as usize];
    img[5000] = 9;
    img.extend_from_slice(&footer(b"qemu", (302, 4, 17), 10 << 20, 2));
    let sink = decode_cfg(&img, Via::Seekable, 1 << 16, tail_of(&img)).unwrap();
    assert_eq!(sink.vsize, Some(vsize));
    assert!(sink.image() == img[..vsize as usize]);
}

#[test]
fn random_layouts_decode_or_fail_cleanly() {
    let mut rng = Prng::new(77);
    for round in 0..40 {
        let blocks = 1 + rng.below(20);
        let vsize = blocks * BS - rng.below(8) * 512;
        let mut order: Vec<u64> = (0..blocks).filter(|_| rng.below(3) > 0).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let (img, disk) = Dyn::new(vsize, order).build();
        assert_decodes(&img, &disk, &[Via::Stream]);
        // Flip a few bytes in the metadata: decode or a clean error.
        let mut bad = img.clone();
        for _ in 0..3 {
            let at = rng.below(2048) as usize;
            bad[at] ^= 1 << rng.below(8);
        }
        for via in ALL {
            if let Ok(sink) = decode(&bad, via, 1 + round * 101) {
                if sink.vsize.is_some() {
                    sink.assert_complete();
                }
            }
        }
    }
}
