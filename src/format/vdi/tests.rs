//! The VDI decoder on images built in memory: dynamic and static, blocks
//! in any order, the block map before or after the data, fed in slices of
//! varying size, from a stream and with range reads; every fault refused by
//! name; the contract checked by `CheckingSink` throughout.

use super::header::tests::header;
use super::header::BLOCK_SIZE;
use super::*;
use crate::format::vpc::blocks::MapFault;
use crate::format::{drive, new_decoder, Format, FormatError, PlanError, PlanOptions, SpillPolicy};
use crate::testing::{CheckingSink, Dribble, Prng, SliceRange};

const BS: u64 = BLOCK_SIZE as u64;

/// A VDI image: `entries[g]` is guest block g's entry (`None`:
/// unallocated); data block k holds `pattern(k)`.
struct Vdi {
    vsize: u64,
    entries: Vec<Option<u32>>,
    /// Block map offset (the header says where).
    bmap: u32,
    /// Data offset.
    data: u32,
    image_type: u32,
}

impl Vdi {
    fn new(vsize: u64, entries: Vec<Option<u32>>) -> Vdi {
        let blocks = vsize.div_ceil(BS) as u32;
        let bmap_len = (u64::from(blocks) * 4).div_ceil(512) * 512;
        Vdi {
            vsize,
            entries,
            bmap: 0x200,
            data: 0x200 + bmap_len as u32,
            image_type: 1,
        }
    }

    /// Data blocks stored, by index.
    fn data_blocks(&self) -> u32 {
        self.entries
            .iter()
            .flatten()
            .map(|&e| e + 1)
            .max()
            .unwrap_or(0)
    }

    fn build(&self) -> (Vec<u8>, Vec<u8>) {
        let mut h = header(self.vsize, self.image_type);
        h[0x154..0x158].copy_from_slice(&self.bmap.to_le_bytes());
        h[0x158..0x15c].copy_from_slice(&self.data.to_le_bytes());
        let blocks: Vec<Vec<u8>> = (0..self.data_blocks())
            .map(|k| {
                // Sparse-ish data: a random head and tail, zeros between.
                let mut b = vec![0u8; BS as usize];
                let mut r = Prng::new(u64::from(k) + 1);
                r.fill(&mut b[..3000]);
                r.fill(&mut b[BS as usize - 700..]);
                b
            })
            .collect();
        let mut img = vec![0u8; 512];
        let put = |img: &mut Vec<u8>, at: u64, b: &[u8]| {
            let at = at as usize;
            if img.len() < at + b.len() {
                img.resize(at + b.len(), 0);
            }
            img[at..at + b.len()].copy_from_slice(b);
        };
        put(&mut img, 0, &h);
        let map: Vec<u8> = self
            .entries
            .iter()
            .flat_map(|e| e.unwrap_or(u32::MAX).to_le_bytes())
            .collect();
        put(&mut img, u64::from(self.bmap), &map);
        for (k, b) in blocks.iter().enumerate() {
            put(&mut img, u64::from(self.data) + k as u64 * BS, b);
        }
        let mut disk = vec![0u8; self.vsize as usize];
        for (g, e) in self.entries.iter().enumerate() {
            if let Some(k) = e {
                let start = g * BS as usize;
                let end = (start + BS as usize).min(disk.len());
                disk[start..end].copy_from_slice(&blocks[*k as usize][..end - start]);
            }
        }
        (img, disk)
    }
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Stream,
    Seekable,
    Tight,
}

fn decode(img: &[u8], via: Via, step: usize) -> Result<CheckingSink, FormatError> {
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
        ..DecoderConfig::default()
    };
    let mut dec = new_decoder(Format::Vdi, &cfg)?;
    let mut sink = CheckingSink::new();
    let mut range = SliceRange::new(img);
    let mut input = Dribble::new(img, step, 300_007);
    let r: Option<&mut dyn crate::io::RangeRead> = if seekable { Some(&mut range) } else { None };
    drive(dec.as_mut(), &mut input, r, &plan, &mut sink)?;
    Ok(sink)
}

fn assert_decodes(img: &[u8], disk: &[u8], vias: &[Via]) {
    for &via in vias {
        for step in [1000, 65536, 1 << 20] {
            let sink = decode(img, via, step).unwrap_or_else(|e| panic!("{via:?}/{step}: {e}"));
            assert_eq!(sink.vsize, Some(disk.len() as u64));
            sink.assert_complete();
            assert!(sink.image() == disk, "{via:?}/{step}: disk differs");
        }
    }
}

fn vdi_err(r: Result<CheckingSink, FormatError>) -> VdiError {
    match r {
        Err(FormatError::Vdi(e)) => e,
        Err(e) => panic!("not a vdi fault: {e}"),
        Ok(_) => panic!("decoded"),
    }
}

const ALL: [Via; 3] = [Via::Stream, Via::Seekable, Via::Tight];

#[test]
fn dynamic_and_static_images() {
    // Allocated in guest order, with holes and a discarded block.
    let mut entries = vec![Some(0), None, Some(1), Some(2), None];
    let (img, disk) = Vdi::new(5 * BS - 512, entries.clone()).build();
    assert_decodes(&img, &disk, &ALL);
    // Allocated in random order (as a guest writes).
    entries = vec![Some(2), Some(0), None, Some(1), Some(3)];
    let (img, disk) = Vdi::new(5 * BS, entries).build();
    assert_decodes(&img, &disk, &ALL);
    // Static: every block, in order.
    let mut v = Vdi::new(3 * BS, (0..3).map(Some).collect());
    v.image_type = 2;
    let (img, disk) = v.build();
    assert_decodes(&img, &disk, &ALL);
}

#[test]
fn discarded_blocks_read_as_zeros() {
    let (mut img, mut disk) = Vdi::new(2 * BS, vec![Some(0), Some(1)]).build();
    img[0x200..0x204].copy_from_slice(&0xffff_fffeu32.to_le_bytes());
    disk[..BS as usize].fill(0);
    assert_decodes(&img, &disk, &[Via::Stream]);
}

#[test]
fn a_block_map_after_the_data_is_fetched_or_waited_for() {
    let mut v = Vdi::new(3 * BS, vec![Some(1), None, Some(0)]);
    v.data = 0x200;
    v.bmap = 0x200 + 2 * BS as u32;
    let (img, disk) = v.build();
    assert_decodes(&img, &disk, &[Via::Stream, Via::Seekable]);
    let e = decode(&img, Via::Tight, 4096).unwrap_err();
    assert!(
        matches!(e, FormatError::Plan(PlanError::ScratchRequired { .. })),
        "{e}"
    );
    // A gap before the block map that precedes the data is passed without
    // waiting for anything.
    let mut v = Vdi::new(3 * BS, vec![Some(0), Some(1), None]);
    v.bmap = 0x1000;
    v.data = 0x2000;
    let (img, disk) = v.build();
    assert_decodes(&img, &disk, &[Via::Tight]);
}

#[test]
fn info_names_the_format_size_and_block_size() {
    let (img, _) = Vdi::new(3 * BS, vec![None, None, None]).build();
    let mut dec = new_decoder(Format::Vdi, &DecoderConfig::default()).unwrap();
    let mut sink = CheckingSink::new();
    assert_eq!(dec.info(), None);
    dec.feed(&img[..512], &mut sink).unwrap();
    let i = dec.info().expect("header parsed");
    assert_eq!(i.format, Format::Vdi);
    assert_eq!(i.virtual_size, Some(3 * BS));
    assert_eq!(i.cluster_size, Some(BS));
}

#[test]
fn broken_images_are_refused_by_name() {
    let v = Vdi::new(4 * BS, vec![Some(0), Some(1), None, Some(2)]);
    let (img, _) = v.build();
    let set = |img: &mut [u8], g: usize, e: u32| {
        let at = 0x200 + 4 * g;
        img[at..at + 4].copy_from_slice(&e.to_le_bytes());
    };

    // Two guest blocks on one data block.
    let mut bad = img.clone();
    set(&mut bad, 2, 0);
    for via in ALL {
        let e = vdi_err(decode(&bad, via, 65536));
        assert!(
            matches!(e, VdiError::Map(MapFault::Overlap { .. })),
            "{via:?}: {e}"
        );
    }
    // A block past the end: refused up front with a known length, at the
    // end of a stream otherwise.
    let mut bad = img.clone();
    set(&mut bad, 2, 3);
    for via in ALL {
        let e = vdi_err(decode(&bad, via, 65536));
        assert!(
            matches!(e, VdiError::BlockPastEnd { block: 2, .. }),
            "{via:?}: {e}"
        );
    }
    // Data over the block map (the data offset inside it).
    let mut bad = img.clone();
    bad[0x158..0x15c].copy_from_slice(&0x200u32.to_le_bytes());
    let e = vdi_err(decode(&bad, Via::Stream, 65536));
    assert!(
        matches!(
            e,
            VdiError::Map(MapFault::IntoMetadata {
                what: "block map",
                ..
            })
        ),
        "{e}"
    );
    // Data over the header.
    let mut bad = img.clone();
    bad[0x158..0x15c].copy_from_slice(&0u32.to_le_bytes());
    let e = vdi_err(decode(&bad, Via::Stream, 65536));
    assert!(
        matches!(
            e,
            VdiError::Map(MapFault::IntoMetadata { what: "header", .. })
        ),
        "{e}"
    );
    // The block map over the header.
    let mut bad = img.clone();
    bad[0x154..0x158].copy_from_slice(&0u32.to_le_bytes());
    let e = vdi_err(decode(&bad, Via::Stream, 65536));
    assert!(matches!(e, VdiError::MapOverlap(0)), "{e}");
    // Differencing, by type or by parent.
    let mut bad = img.clone();
    bad[0x4c] = 4;
    assert_eq!(
        vdi_err(decode(&bad, Via::Stream, 1000)),
        VdiError::Differencing { parent: None }
    );
    let mut bad = img.clone();
    bad[0x1b8] = 1;
    let e = vdi_err(decode(&bad, Via::Stream, 1000));
    assert!(
        e.to_string()
            .starts_with("differencing VDI images are not supported: they need their parent"),
        "{e}"
    );
}

#[test]
fn truncation_anywhere_is_refused_never_a_panic() {
    let (img, disk) = Vdi::new(3 * BS, vec![Some(1), None, Some(0)]).build();
    for cut in (0..img.len())
        .step_by(4093)
        .chain([img.len() - 1, 511, 512, 0x200 + 11])
    {
        let e = decode(&img[..cut], Via::Stream, 5000).err();
        let e = e.unwrap_or_else(|| panic!("cut at {cut} decoded"));
        assert!(matches!(e, FormatError::Vdi(_)), "cut {cut}: {e}");
    }
    let sink = decode(&img, Via::Stream, 5000).unwrap();
    assert!(sink.image() == disk);
}

#[test]
fn random_layouts_decode_or_fail_cleanly() {
    let mut rng = Prng::new(5);
    for round in 0..12 {
        let blocks = 1 + rng.below(6) as u32;
        let mut data: Vec<u32> = (0..blocks).collect();
        for i in (1..data.len()).rev() {
            data.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let entries: Vec<Option<u32>> = data
            .iter()
            .map(|&k| (rng.below(4) > 0).then_some(k))
            .collect();
        let vsize = u64::from(blocks) * BS - rng.below(4) * 512;
        let (img, disk) = Vdi::new(vsize, entries).build();
        assert_decodes(&img, &disk, &[Via::Stream]);
        let mut bad = img.clone();
        for _ in 0..3 {
            let at = (0x140 + rng.below(0x100) as usize).min(bad.len() - 1);
            bad[at] ^= 1 << rng.below(8);
        }
        for via in ALL {
            if let Ok(sink) = decode(&bad, via, 4096 + round * 977) {
                sink.assert_complete();
            }
        }
    }
}
