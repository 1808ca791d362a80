//! The plan on byte vectors: sizes, ranges and the target's length.

use super::memory::MemDevice;
use super::*;

const ALIGN: usize = 512;
const BUF: usize = 8 * ALIGN;

fn setup(device_size: Option<u64>, available: Option<u64>) -> Setup {
    Setup {
        align: ALIGN,
        device_size,
        available,
        resizable: device_size.is_none(),
        zero_ranges: device_size.is_some(),
        partial_blocks: 4,
    }
}

fn contract(r: Result<(), Refused>) -> SinkError {
    match r {
        Err(Refused::Contract(e)) => e,
        other => panic!("expected a contract refusal, got {other:?}"),
    }
}

#[test]
fn a_file_takes_the_virtual_size_as_its_length() {
    let mut p = Plan::new(setup(None, None));
    assert_eq!(p.set_virtual_size(5000).expect("size"), Some(5000));
    let mut dev = MemDevice::file(ALIGN, BUF);
    p.data(4000, &[7; 1000], &mut dev).expect("data");
    assert_eq!(p.finish(&mut dev).expect("finish"), Some(5000));
    assert_eq!(p.stats().bytes_written, 1000);
}

#[test]
fn a_file_of_unknown_size_ends_at_its_last_extent() {
    let mut p = Plan::new(setup(None, None));
    let mut dev = MemDevice::file(ALIGN, BUF);
    p.data(0, &[7; 100], &mut dev).expect("data");
    p.zero(100, 4000, &mut dev).expect("zero");
    p.data(9000, &[], &mut dev).expect("an empty extent");
    assert_eq!(p.finish(&mut dev).expect("finish"), Some(4100));
    let s = p.stats();
    assert_eq!((s.bytes_written, s.bytes_zeroed), (100, 4000));
}

#[test]
fn a_block_device_keeps_its_length_and_its_bytes_past_the_image() {
    let device = 16 * ALIGN;
    let vsize = 3 * ALIGN as u64 + 100;
    let mut p = Plan::new(setup(Some(device as u64), None));
    assert_eq!(p.set_virtual_size(vsize).expect("size"), None);
    let mut dev = MemDevice::device(device, 0xA5, ALIGN, BUF);
    p.data(0, &vec![7; vsize as usize], &mut dev).expect("data");
    assert_eq!(p.finish(&mut dev).expect("finish"), None);
    assert!(dev.bytes[..vsize as usize].iter().all(|&b| b == 7));
    assert!(
        dev.bytes[vsize as usize..].iter().all(|&b| b == 0xA5),
        "nothing written outside [0, virtual size)"
    );
    assert_eq!(p.stats().partial_merges, 1, "the last block is merged");
}

#[test]
fn extents_outside_the_virtual_size_are_refused_before_any_action() {
    let mut p = Plan::new(setup(Some(16 * ALIGN as u64), None));
    let mut dev = MemDevice::device(16 * ALIGN, 0xA5, ALIGN, BUF);
    // Before the virtual size is known the device's end bounds the extents.
    let e = contract(p.data(8190, &[1; 3], &mut dev));
    assert!(matches!(
        e,
        SinkError::OutOfRange {
            what: "the end of the block device",
            ..
        }
    ));
    p.set_virtual_size(1000).expect("size");
    let e = contract(p.data(999, &[1; 2], &mut dev));
    assert!(matches!(
        e,
        SinkError::OutOfRange {
            start: 999,
            end: 1001,
            limit: 1000,
            what: "the virtual size"
        }
    ));
    let e = contract(p.zero(u64::MAX, 2, &mut dev));
    assert!(matches!(e, SinkError::OutOfRange { end: u64::MAX, .. }));
    p.finish(&mut dev).expect("finish");
    assert!(dev.log.is_empty(), "no action for a refused extent");
}

#[test]
fn the_virtual_size_is_told_once_before_any_extent() {
    let mut p = Plan::new(setup(None, None));
    p.set_virtual_size(4096).expect("size");
    p.set_virtual_size(4096).expect("the same size again");
    assert!(matches!(
        p.set_virtual_size(8192),
        Err(SinkError::LateSize(8192))
    ));
    let mut p = Plan::new(setup(None, None));
    let mut dev = MemDevice::file(ALIGN, BUF);
    p.zero(0, 10, &mut dev).expect("zero");
    assert!(matches!(
        p.set_virtual_size(4096),
        Err(SinkError::LateSize(4096))
    ));
}

#[test]
fn an_image_larger_than_the_device_or_the_space_is_refused() {
    let mut p = Plan::new(setup(Some(8192), Some(4096)));
    assert!(matches!(
        p.set_virtual_size(4097),
        Err(SinkError::TooLarge {
            size: 4097,
            available: 4096
        })
    ));
    let mut p = Plan::new(setup(Some(8192), None));
    assert!(matches!(
        p.set_virtual_size(8193),
        Err(SinkError::TooLarge {
            available: 8192,
            ..
        })
    ));
    let mut p = Plan::new(setup(None, Some(100)));
    assert!(p.set_virtual_size(100).is_ok());
}
