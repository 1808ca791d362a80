//! The decoder on hand-built images (`testimg`): every layout, fed in
//! pieces of every size, through the generic driver with range reads and
//! with the read-ahead window and its spill; and every refusal.

use super::testimg::{reseal_headers, Spec};
use super::{checksum, VhdxDecoder, VhdxError};
use crate::format::{
    drive, DecodeReport, Decoder, Feed, FormatError, PlanError, PlanOptions, SpillPolicy,
};
use crate::testing::{CheckingSink, Dribble, SliceRange};

const MIB: u64 = 1 << 20;

/// How the image reaches the decoder.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// `feed` alone, in fixed pieces: the layout must need nothing ahead.
    Feed(usize),
    /// The driver over a dribbled stream, with this window, spilling or not.
    Stream { window: usize, spill: bool },
    /// The driver with range reads.
    Range,
}

fn decode(img: &[u8], via: Via) -> Result<(CheckingSink, DecodeReport), FormatError> {
    decode_with(VhdxDecoder::new(Some(img.len() as u64)), img, via)
}

fn decode_with(
    mut dec: VhdxDecoder,
    img: &[u8],
    via: Via,
) -> Result<(CheckingSink, DecodeReport), FormatError> {
    let mut sink = CheckingSink::new();
    let scratch = tempfile::tempdir().expect("scratch dir");
    let report = match via {
        Via::Feed(piece) => {
            for p in img.chunks(piece) {
                assert_eq!(dec.feed(p, &mut sink)?, Feed::Done, "forward layout");
            }
            dec.finish(&mut sink)?
        }
        Via::Stream { window, spill } => {
            let plan = PlanOptions {
                window,
                spill: if spill {
                    SpillPolicy::Dir(scratch.path().to_path_buf())
                } else {
                    SpillPolicy::Forbid
                },
            };
            let mut input = Dribble::new(img, 1000, 70_001);
            drive(&mut dec, &mut input, None, &plan, &mut sink)?
        }
        Via::Range => {
            let plan = PlanOptions {
                window: 0,
                spill: SpillPolicy::Forbid,
            };
            let mut input = Dribble::new(img, 3, 300_007);
            let mut range = SliceRange::new(img);
            drive(&mut dec, &mut input, Some(&mut range), &plan, &mut sink)?
        }
    };
    Ok((sink, report))
}

fn check(spec: &Spec, sink: &CheckingSink) {
    sink.assert_complete();
    assert_eq!(sink.vsize, Some(spec.virtual_size));
    assert!(sink.image() == spec.expected(), "decoded disk differs");
}

/// 3.5 MiB in 1 MiB blocks: 0 and 2 allocated out of order, 1 zero, the
/// last half block allocated.
fn three_and_a_half(mut spec: Spec, hosts: [u64; 3]) -> Spec {
    spec.blocks = vec![(2, hosts[0]), (0, hosts[1]), (3, hosts[2])];
    spec.raw = vec![(1, 2)];
    spec
}

fn vhdx_err(r: Result<(CheckingSink, DecodeReport), FormatError>) -> VhdxError {
    match r {
        Err(FormatError::Vhdx(e)) => e,
        Err(e) => panic!("expected a VHDX error, got {e}"),
        Ok(_) => panic!("expected a VHDX error, got success"),
    }
}

#[test]
fn metadata_before_the_bat_streams_forward() {
    let mut spec = Spec::qemu_like(1 << 20, 3 * MIB + MIB / 2);
    spec.metadata = (2 * MIB, MIB as u32);
    spec.bat = (3 * MIB, MIB as u32);
    let spec = three_and_a_half(spec, [4 * MIB, 5 * MIB, 6 * MIB]);
    let img = spec.build();
    for piece in [1 << 20, 65536, 4097, 511] {
        let (sink, report) = decode(&img, Via::Feed(piece)).expect("decodes");
        check(&spec, &sink);
        assert_eq!(report.virtual_size, spec.virtual_size);
    }
}

#[test]
fn qemu_layout_reads_the_metadata_ahead_of_the_bat() {
    let spec = three_and_a_half(
        Spec::qemu_like(1 << 20, 3 * MIB + MIB / 2),
        [4 * MIB, 5 * MIB, 6 * MIB],
    );
    let img = spec.build();
    let (sink, report) = decode(&img, Via::Range).expect("range reads");
    check(&spec, &sink);
    assert!(report.range_requests > 0 && report.range_bytes < 128 << 10);
    let (sink, report) = decode(
        &img,
        Via::Stream {
            window: 4 << 20,
            spill: false,
        },
    )
    .expect("read ahead in memory");
    check(&spec, &sink);
    assert_eq!(report.spilled_bytes, 0);
    // The BAT region (1 MiB) is held while the metadata is read ahead.
    let (sink, report) = decode(
        &img,
        Via::Stream {
            window: 64 << 10,
            spill: true,
        },
    )
    .expect("read ahead with a spill");
    check(&spec, &sink);
    assert!(report.spilled_bytes > 0);
    assert!(matches!(
        decode(
            &img,
            Via::Stream {
                window: 64 << 10,
                spill: false
            }
        ),
        Err(FormatError::Plan(PlanError::ScratchRequired { .. }))
    ));
}

#[test]
fn regions_after_the_data() {
    // Blocks right after the header section, the BAT and the metadata at
    // the end, and the log between the blocks.
    let mut spec = Spec::qemu_like(1 << 20, 3 * MIB + MIB / 2);
    spec.log = (4 * MIB, MIB as u32);
    spec.bat = (7 * MIB, MIB as u32);
    spec.metadata = (9 * MIB, MIB as u32);
    let spec = three_and_a_half(spec, [5 * MIB, MIB, 3 * MIB]);
    let img = spec.build();
    let (sink, report) = decode(&img, Via::Range).expect("range reads");
    check(&spec, &sink);
    assert!(report.range_requests >= 2);
    assert_eq!(report.spilled_bytes, 0);
    let (sink, report) = decode(
        &img,
        Via::Stream {
            window: 100 << 10,
            spill: true,
        },
    )
    .expect("read ahead with a spill");
    check(&spec, &sink);
    assert!(report.spilled_bytes > 5 * MIB);
    assert!(matches!(
        decode(
            &img,
            Via::Stream {
                window: 1 << 20,
                spill: false
            }
        ),
        Err(FormatError::Plan(PlanError::ScratchRequired { .. }))
    ));
}

#[test]
fn a_log_to_check_after_the_data() {
    let mut spec = Spec::qemu_like(1 << 20, 2 * MIB);
    spec.log = (6 * MIB, MIB as u32);
    spec.log_guid = [9; 16];
    spec.metadata = (2 * MIB, MIB as u32);
    spec.bat = (3 * MIB, MIB as u32);
    spec.blocks = vec![(0, 4 * MIB), (1, MIB)];
    let img = spec.build();
    // An empty log under a LogGuid: nothing to replay.
    let (sink, _) = decode(&img, Via::Range).expect("range reads");
    check(&spec, &sink);
    let (sink, _) = decode(
        &img,
        Via::Stream {
            window: 8 << 20,
            spill: false,
        },
    )
    .expect("stream");
    check(&spec, &sink);
    // One valid entry: refused, in every mode, before a byte is reported.
    let mut dirty = img.clone();
    let e = 6 * MIB as usize;
    dirty[e..e + 4].copy_from_slice(b"loge");
    dirty[e + 8..e + 12].copy_from_slice(&4096u32.to_le_bytes());
    dirty[e + 16..e + 24].copy_from_slice(&1u64.to_le_bytes());
    dirty[e + 32..e + 48].copy_from_slice(&[9; 16]);
    let c = checksum(&dirty[e..e + 4096], 4);
    dirty[e + 4..e + 8].copy_from_slice(&c.to_le_bytes());
    for via in [
        Via::Range,
        Via::Stream {
            window: 8 << 20,
            spill: false,
        },
    ] {
        let mut dec = VhdxDecoder::new(None);
        let mut sink = CheckingSink::new();
        let plan = PlanOptions {
            window: 8 << 20,
            spill: SpillPolicy::Forbid,
        };
        let mut input = Dribble::new(&dirty, 1000, 70_001);
        let mut range = SliceRange::new(&dirty);
        let r = match via {
            Via::Range => drive(&mut dec, &mut input, Some(&mut range), &plan, &mut sink),
            _ => drive(&mut dec, &mut input, None, &plan, &mut sink),
        };
        assert!(
            matches!(r, Err(FormatError::Vhdx(VhdxError::LogToReplay))),
            "{via:?}"
        );
        assert!(
            sink.calls.is_empty() && sink.vsize.is_none(),
            "nothing reported"
        );
    }
}

#[test]
fn truncation_anywhere_is_an_error() {
    let mut spec = Spec::qemu_like(1 << 20, 3 * MIB + MIB / 2);
    spec.metadata = (2 * MIB, MIB as u32);
    spec.bat = (3 * MIB, MIB as u32);
    let spec = three_and_a_half(spec, [4 * MIB, 5 * MIB, 6 * MIB]);
    let img = spec.build();
    let mut cuts: Vec<usize> = (0..img.len()).step_by(65521).collect();
    cuts.extend([8, 64 << 10, (192 << 10) + 5, 1 << 20, img.len() - 1]);
    for cut in cuts {
        let mut dec = VhdxDecoder::new(None);
        let r = decode_with(dec, &img[..cut], Via::Feed(40_000));
        match r {
            Err(FormatError::Vhdx(VhdxError::Truncated { pos, .. })) => {
                assert_eq!(pos, cut as u64)
            }
            Err(e) => panic!("cut at {cut}: {e}"),
            Ok(_) => panic!("cut at {cut}: accepted"),
        }
        // With the length known, a block past the end is refused up front.
        dec = VhdxDecoder::new(Some(cut as u64));
        assert!(decode_with(dec, &img[..cut], Via::Feed(40_000)).is_err());
    }
}

#[test]
fn the_current_header_is_the_valid_one_with_the_higher_sequence() {
    let mut spec = Spec::qemu_like(1 << 20, 2 * MIB);
    spec.blocks = vec![(0, 4 * MIB)];
    let img = spec.build();
    // Header 2 (sequence 11) names a log at an impossible offset.
    let mut h2_bad_log = img.clone();
    let h2 = 128 << 10;
    h2_bad_log[h2 + 72..h2 + 80].copy_from_slice(&(MIB + 1).to_le_bytes());
    reseal_headers(&mut h2_bad_log);
    assert!(matches!(
        vhdx_err(decode(&h2_bad_log, Via::Range)),
        VhdxError::LogOffset(_)
    ));
    // With header 2's checksum broken, header 1 is current: fine.
    let mut h2_broken = h2_bad_log.clone();
    h2_broken[h2 + 4] ^= 1;
    check(&spec, &decode(&h2_broken, Via::Range).expect("header 1").0);
    // Both broken.
    let mut both = h2_broken.clone();
    both[(64 << 10) + 200] ^= 1;
    assert!(matches!(
        vhdx_err(decode(&both, Via::Range)),
        VhdxError::NoValidHeader
    ));
    // Same sequence number, different contents.
    let mut tie = img.clone();
    tie[h2 + 8..h2 + 16].copy_from_slice(&10u64.to_le_bytes());
    tie[h2 + 16] ^= 1;
    reseal_headers(&mut tie);
    assert!(matches!(
        vhdx_err(decode(&tie, Via::Range)),
        VhdxError::HeadersDisagree(10)
    ));
    // Identical headers (as Disk2VHD writes them) are fine.
    let mut same = img.clone();
    let h1: Vec<u8> = same[64 << 10..(64 << 10) + 4096].to_vec();
    same[h2..h2 + 4096].copy_from_slice(&h1);
    check(
        &spec,
        &decode(&same, Via::Range).expect("identical headers").0,
    );
}

#[test]
fn region_table_faults() {
    let spec = Spec::qemu_like(1 << 20, 2 * MIB);
    let img = spec.build();
    let rt = 192 << 10;
    let mut bad_crc = img.clone();
    bad_crc[rt + 100] ^= 1;
    assert!(matches!(
        vhdx_err(decode(&bad_crc, Via::Range)),
        VhdxError::RegionTableChecksum
    ));
    let reseal = |img: &mut Vec<u8>| {
        let c = checksum(&img[rt..rt + (64 << 10)], 4);
        img[rt + 4..rt + 8].copy_from_slice(&c.to_le_bytes());
    };
    let mut sig = img.clone();
    sig[rt] = b'R';
    reseal(&mut sig);
    assert!(matches!(
        vhdx_err(decode(&sig, Via::Range)),
        VhdxError::RegionTableSignature
    ));
    // The BAT moved onto the log.
    let mut overlap = img.clone();
    overlap[rt + 32..rt + 40].copy_from_slice(&(MIB + 4096).to_le_bytes());
    reseal(&mut overlap);
    assert!(matches!(
        vhdx_err(decode(&overlap, Via::Range)),
        VhdxError::RegionOverlap {
            other: "the log",
            ..
        }
    ));
    // The metadata region into the header section.
    let mut inside = img.clone();
    inside[rt + 64..rt + 72].copy_from_slice(&0u64.to_le_bytes());
    reseal(&mut inside);
    assert!(matches!(
        vhdx_err(decode(&inside, Via::Range)),
        VhdxError::RegionOverlap {
            other: "the header section",
            ..
        }
    ));
    // The BAT listed twice.
    let mut twice = img.clone();
    let bat_entry: Vec<u8> = twice[rt + 16..rt + 48].to_vec();
    twice[rt + 48..rt + 80].copy_from_slice(&bat_entry);
    twice[rt + 64..rt + 72].copy_from_slice(&(5 * MIB).to_le_bytes());
    reseal(&mut twice);
    assert!(matches!(
        vhdx_err(decode(&twice, Via::Range)),
        VhdxError::RegionDuplicate("BAT")
    ));
    // An unknown required region.
    let mut unknown = img.clone();
    unknown[rt + 8] = 3;
    unknown[rt + 80..rt + 96].fill(0x42);
    unknown[rt + 96..rt + 104].copy_from_slice(&(9 * MIB).to_le_bytes());
    unknown[rt + 108] = 1;
    reseal(&mut unknown);
    assert!(matches!(
        vhdx_err(decode(&unknown, Via::Range)),
        VhdxError::RegionUnknown(_)
    ));
    // The same, not required: ignored.
    unknown[rt + 108] = 0;
    reseal(&mut unknown);
    assert!(decode(&unknown, Via::Range).is_ok());
    let mut not_vhdx = img.clone();
    not_vhdx[0] = b'V';
    assert!(matches!(
        vhdx_err(decode(&not_vhdx, Via::Range)),
        VhdxError::NotVhdx
    ));
}

#[test]
fn differencing_images_are_refused_by_name() {
    let mut spec = Spec::qemu_like(1 << 20, 2 * MIB);
    spec.has_parent = true;
    spec.locator = true;
    let e = vhdx_err(decode(&spec.build(), Via::Range));
    assert!(matches!(e, VhdxError::Differencing));
    assert!(e.to_string().contains("differencing"), "{e}");
    spec.locator = false;
    assert!(matches!(
        vhdx_err(decode(&spec.build(), Via::Range)),
        VhdxError::ParentWithoutLocator
    ));
}

#[test]
fn block_states() {
    let mut spec = Spec::qemu_like(1 << 20, 6 * MIB);
    spec.blocks = vec![(5, 4 * MIB)];
    // Not present, undefined, zero, unmapped, unmapped (v0.95): zeros.
    spec.raw = vec![(0, 0), (1, 1 | (5 * MIB)), (2, 2), (3, 3), (4, 5)];
    check(&spec, &decode(&spec.build(), Via::Range).expect("states").0);
    for (state, want) in [(7u64, "partially present"), (4, "reserved state 4")] {
        let mut s = spec.clone();
        s.raw.push((2, state | (5 * MIB)));
        let e = vhdx_err(decode(&s.build(), Via::Range));
        assert!(e.to_string().contains(want), "{e}");
    }
}

#[test]
fn blocks_that_overlap_are_refused() {
    let spec = Spec::qemu_like(1 << 20, 3 * MIB);
    for (blocks, what) in [
        (vec![(0, 2 * MIB)], "the BAT region"),
        (vec![(1, 3 * MIB)], "the metadata region"),
        (vec![(1, MIB)], "the log"),
        (vec![(2, 0)], "the header section"),
        (vec![(0, 5 * MIB), (2, 5 * MIB)], "overlap in the file"),
    ] {
        let mut s = spec.clone();
        s.blocks = blocks;
        let e = vhdx_err(decode(&s.build(), Via::Range));
        assert!(e.to_string().contains(what), "{what}: {e}");
    }
}

#[test]
fn a_fragmented_mapping_over_budget_is_refused() {
    let mut spec = Spec::qemu_like(1 << 20, 40 * MIB);
    // Every other block, in reverse order: no two runs merge.
    spec.blocks = (0..20).map(|i| (2 * i, (44 - i) * MIB)).collect();
    let img = spec.build();
    let e = vhdx_err(decode_with(
        VhdxDecoder::with_budget(None, 512),
        &img,
        Via::Range,
    ));
    assert!(matches!(e, VhdxError::MappingBudget { .. }), "{e}");
    check(&spec, &decode(&img, Via::Range).expect("default budget").0);
}

#[test]
fn sector_bitmap_entries_are_skipped() {
    for (lss, ratio) in [(512u32, 16u64), (4096, 128)] {
        // 256 MiB blocks: a bitmap entry after every `ratio` payload
        // entries; the block after the first bitmap entry is the last one,
        // 4 KiB long.
        let mut spec = Spec::qemu_like(256 << 20, ratio * (256 * MIB) + 4096);
        spec.logical_sector = lss;
        spec.blocks = vec![(ratio, 4 * MIB)];
        spec.raw = vec![(ratio, 0xdead_beef_0000_0006)];
        assert_eq!(spec.index(ratio), ratio + 1);
        let (sink, _) = decode(&spec.build(), Via::Range).expect("decodes");
        sink.assert_complete();
        let g = ratio * 256 * MIB;
        let data = sink.data();
        assert_eq!(data.len(), 1);
        let want: Vec<u8> = (g..g + 4096).map(Spec::pattern).collect();
        assert!(
            data.get(&g) == Some(&want),
            "block {ratio} of {lss}-byte sectors"
        );
    }
}

#[test]
fn an_empty_disk() {
    let spec = Spec::qemu_like(8 << 20, 0);
    let (sink, report) = decode(&spec.build(), Via::Range).expect("decodes");
    assert_eq!((sink.vsize, report.virtual_size), (Some(0), 0));
    assert!(sink.calls.is_empty());
}

#[test]
fn info_names_the_block_size() {
    let spec = Spec::qemu_like(32 << 20, 100 * MIB);
    let img = spec.build();
    let mut dec = VhdxDecoder::new(None);
    let mut sink = CheckingSink::new();
    let plan = PlanOptions {
        window: 4 << 20,
        spill: SpillPolicy::Forbid,
    };
    let info = crate::format::drive::probe(
        &mut dec,
        &mut Dribble::fixed(&img, 65536),
        None,
        &plan,
        64 << 20,
    )
    .expect("probe")
    .expect("info");
    assert_eq!(info.virtual_size, Some(100 * MIB));
    assert_eq!(info.cluster_size, Some(32 * MIB));
    assert!(sink.calls.is_empty());
    assert!(dec.finish(&mut sink).is_err(), "the probe stopped early");
}

#[test]
fn checksum_is_crc32c_with_the_field_zeroed() {
    // The CRC-32C check value.
    assert_eq!(checksum(b"123456789", 9), 0xe306_9283);
    let mut b = b"ab\xff\xff\xff\xffcdefgh".to_vec();
    let c = checksum(&b, 2);
    b[2..6].fill(0);
    assert_eq!(c, checksum(&b, 100));
}

#[test]
fn a_huge_sparse_disk_streams_in_bounded_memory() {
    // 1 TiB in 1 MiB blocks: an 8 MiB BAT (a million entries and 256 bitmap
    // entries) streamed past, three blocks allocated far apart.
    let tib = 1u64 << 40;
    let mut spec = Spec::qemu_like(1 << 20, tib);
    spec.metadata = (2 * MIB, MIB as u32);
    spec.bat = (3 * MIB, 9 * MIB as u32);
    spec.blocks = vec![(5, 12 * MIB), (700_000, 13 * MIB), (1_048_575, 14 * MIB)];
    let img = spec.build();
    let mut dec = VhdxDecoder::new(Some(img.len() as u64));
    let mut sink = CheckingSink::counting();
    for p in img.chunks(1 << 20) {
        assert_eq!(dec.feed(p, &mut sink).expect("feed"), Feed::Done);
    }
    dec.finish(&mut sink).expect("finish");
    sink.assert_complete();
    assert_eq!(sink.data_bytes(), 3 * MIB);
    // Zero ranges merged: one before each block and one between.
    assert_eq!(sink.calls.iter().filter(|c| !c.2).count(), 3);
}
