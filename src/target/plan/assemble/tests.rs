//! The assembler on byte vectors: what extents become, and that the result
//! holds exactly the extents' bytes.

use super::super::memory::{MemDevice, Op};
use super::*;
use crate::testing::Prng;

const ALIGN: usize = 512;
const BUF: usize = 8 * ALIGN;

fn geometry(limit: u64, zero_ranges: bool, partial_blocks: usize) -> Geometry {
    Geometry {
        align: ALIGN,
        limit,
        zero_ranges,
        partial_blocks,
    }
}

/// Bytes that differ from zeros and from the stale fill everywhere.
fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i) % 251) as u8 | 1)
        .collect()
}

/// Pieces covering `[0, size)` once each, data or zeros, of 1 to `max`
/// bytes, in an order that is mostly forward with random swaps (the way a
/// qcow2 image's clusters arrive).
fn pieces(rng: &mut Prng, size: u64, max: u64) -> Vec<(u64, u64, bool)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off < size {
        let len = (1 + rng.below(max)).min(size - off);
        v.push((off, len, rng.below(3) != 0));
        off += len;
    }
    for i in 0..v.len() {
        if rng.below(4) == 0 {
            let j = rng.below(v.len() as u64) as usize;
            v.swap(i, j);
        }
    }
    v
}

fn feed(a: &mut Assembler, dev: &mut MemDevice, pieces: &[(u64, u64, bool)]) {
    for &(off, len, is_data) in pieces {
        if is_data {
            a.data(off, &pattern(off, len as usize), dev).expect("data");
        } else {
            a.zero(off, len, dev).expect("zero");
        }
    }
    a.finish(dev).expect("finish");
}

fn expected(pieces: &[(u64, u64, bool)], size: u64, fill: u8) -> Vec<u8> {
    let mut img = vec![fill; size as usize];
    for &(off, len, is_data) in pieces {
        let r = off as usize..(off + len) as usize;
        if is_data {
            img[r].copy_from_slice(&pattern(off, len as usize));
        } else {
            img[r].fill(0);
        }
    }
    img
}

#[test]
fn random_extents_on_a_device_leave_exactly_their_bytes() {
    for seed in 0..40 {
        let mut rng = Prng::new(seed);
        let device = 64 * ALIGN;
        // An image that ends mid-block, on a device with stale bytes.
        let size = device as u64 - ALIGN as u64 - 1 - rng.below(3000);
        let max = 1 + rng.below(6000);
        let ps = pieces(&mut rng, size, max);
        let mut dev = MemDevice::device(device, 0xA5, ALIGN, BUF);
        // A small cache, so blocks are merged with the device before they
        // are complete.
        let mut a = Assembler::new(geometry(device as u64, true, 2));
        feed(&mut a, &mut dev, &ps);
        let mut want = expected(&ps, size, 0xA5);
        // Past the image the device keeps what it held.
        want.resize(device, 0xA5);
        assert!(dev.bytes == want, "seed {seed}: contents differ");
    }
}

#[test]
fn random_extents_on_a_file_leave_exactly_their_bytes() {
    for seed in 100..140 {
        let mut rng = Prng::new(seed);
        let size = 1 + rng.below(40_000);
        let max = 1 + rng.below(6000);
        let ps = pieces(&mut rng, size, max);
        let mut dev = MemDevice::file(ALIGN, BUF);
        let mut a = Assembler::new(geometry(u64::MAX, false, 3));
        feed(&mut a, &mut dev, &ps);
        assert!(dev.zeros().is_empty(), "a file's zeros are holes");
        let round = (size as usize).div_ceil(ALIGN) * ALIGN;
        assert!(
            dev.bytes.len() <= round,
            "seed {seed}: written past the last block"
        );
        dev.bytes.resize(size as usize, 0);
        assert!(
            dev.bytes == expected(&ps, size, 0),
            "seed {seed}: contents differ"
        );
    }
}

#[test]
fn contiguous_pieces_become_whole_buffer_writes() {
    let mut dev = MemDevice::file(ALIGN, BUF);
    let mut a = Assembler::new(geometry(u64::MAX, false, 4));
    let total = 3 * BUF as u64;
    let ps: Vec<_> = (0..total / 96).map(|i| (i * 96, 96, true)).collect();
    feed(&mut a, &mut dev, &ps);
    assert_eq!(
        dev.log,
        (0..3)
            .map(|i| Op::Write {
                offset: i * BUF as u64,
                len: BUF
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(a.merges(), 0);
}

#[test]
fn a_short_zero_gap_is_written_inside_the_run() {
    let mut dev = MemDevice::device(64 * ALIGN, 0xA5, ALIGN, 4 * BUF);
    let mut a = Assembler::new(geometry(64 * ALIGN as u64, true, 4));
    let ps = [(0, 1000, true), (1000, 2000, false), (3000, 5192, true)];
    feed(&mut a, &mut dev, &ps);
    assert_eq!(
        dev.log,
        [Op::Write {
            offset: 0,
            len: 8192
        }]
    );
    assert!(dev.bytes[..8192] == expected(&ps, 8192, 0xA5)[..]);
}

#[test]
fn a_long_zero_run_is_one_zero_action_on_a_device() {
    let size = (4096 + 640 * 1024 + 4096) as u64;
    let mut ps = vec![(0, 4096, true)];
    ps.extend((0..10).map(|i| (4096 + i * (64 << 10), 64 << 10, false)));
    ps.push((size - 4096, 4096, true));
    let mut dev = MemDevice::device(size as usize, 0xA5, ALIGN, BUF);
    let mut a = Assembler::new(geometry(size, true, 4));
    feed(&mut a, &mut dev, &ps);
    assert_eq!(dev.zeros(), [(4096, size - 4096)]);
    assert_eq!(dev.writes(), [(0, 4096), (size - 4096, 4096)]);
    assert!(dev.bytes == expected(&ps, size, 0xA5));

    // On a file the same run is a hole: no action at all.
    let mut dev = MemDevice::file(ALIGN, BUF);
    let mut a = Assembler::new(geometry(u64::MAX, false, 4));
    feed(&mut a, &mut dev, &ps);
    assert_eq!(dev.writes(), [(0, 4096), (size - 4096, 4096)]);
    assert_eq!(dev.log.len(), 2);
}

#[test]
fn a_block_filled_in_pieces_out_of_order_is_written_once_without_a_read() {
    let mut dev = MemDevice::device(16 * ALIGN, 0xA5, ALIGN, BUF);
    let mut a = Assembler::new(geometry(16 * ALIGN as u64, true, 4));
    // The second block, in four pieces, last piece first.
    let ps = [
        (512 + 384, 128, true),
        (512, 128, true),
        (512 + 256, 128, false),
        (512 + 128, 128, true),
    ];
    feed(&mut a, &mut dev, &ps);
    assert_eq!(dev.log, [Op::Block { offset: 512 }]);
    assert_eq!(a.merges(), 0);
    assert!(dev.bytes[512..1024] == expected(&ps, 1024, 0xA5)[512..]);
}

#[test]
fn an_incomplete_block_is_merged_with_the_device() {
    let mut dev = MemDevice::device(16 * ALIGN, 0xA5, ALIGN, BUF);
    let mut a = Assembler::new(geometry(16 * ALIGN as u64, true, 4));
    let ps = [(1000, 10, true)];
    feed(&mut a, &mut dev, &ps);
    assert_eq!(
        dev.log,
        [Op::Read { offset: 512 }, Op::Block { offset: 512 }]
    );
    assert_eq!(a.merges(), 1);
    assert!(dev.bytes[..2048] == expected(&ps, 2048, 0xA5)[..]);
}

#[test]
fn an_extent_past_the_device_end_is_refused_before_any_action() {
    let mut dev = MemDevice::device(4 * ALIGN, 0xA5, ALIGN, BUF);
    let mut a = Assembler::new(geometry(4 * ALIGN as u64, true, 4));
    assert!(a.data(2040, &[1; 9], &mut dev).is_err());
    assert!(a.zero(u64::MAX - 1, 2, &mut dev).is_err());
    assert!(a.data(u64::MAX, &[1], &mut dev).is_err());
    a.finish(&mut dev).expect("finish");
    assert!(dev.log.is_empty());
}

#[test]
fn overlapping_pieces_of_one_block_are_refused() {
    let mut dev = MemDevice::device(4 * ALIGN, 0xA5, ALIGN, BUF);
    let mut a = Assembler::new(geometry(4 * ALIGN as u64, true, 4));
    a.data(100, &[1; 50], &mut dev).expect("first");
    let e = a.data(120, &[2; 10], &mut dev).expect_err("overlap");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}
