//! The fuzz harness, shared by the fuzz targets (`fuzz_targets/*.rs`) and
//! their stable-Rust replay in the integration tests
//! (`tests/it/fuzz_regressions.rs`, which includes this file with `#[path]`),
//! so the replay checks exactly what the fuzzer checked.
//!
//! [`check_format`] drives one decoder on arbitrary bytes with the generic
//! driver, twice: as a stream (in pieces whose size comes from the input)
//! with a tiny window and spilling forbidden, so the overflow and read-ahead
//! paths run; then with range reads over the same bytes. The sink
//! (`streamdisk::testing::CheckingSink`) checks the decoder's contract on
//! every call: virtual size first, nothing past it, nothing twice, and an
//! accepted image covered exactly.

// Each target (and the replay test) uses its own entry points.
#![allow(dead_code)]

use streamdisk::format::{
    drive, identify, new_decoder, DecoderConfig, Format, PlanOptions, Signature, SpillPolicy, Tail,
};
use streamdisk::testing::{CheckingSink, Dribble, SliceRange};

/// One fuzz input for `format`: panics if the decoder breaks its contract.
///
/// VHDX inputs are first unpacked ([`vhdx_unpack`]): a VHDX image is at
/// least 1 MiB of mostly zeros, too big for a fuzz corpus.
pub fn check_format(format: Format, data: &[u8]) {
    if format == Format::Vhdx {
        check_bytes(format, &vhdx_unpack(data));
        return;
    }
    check_bytes(format, data);
}

/// Largest image a packed VHDX input unpacks to.
const VHDX_UNPACKED_MAX: usize = 16 << 20;

/// A packed VHDX input: one flags byte, then segments, each a little-endian
/// `u32` offset in 512-byte units, a `u16` length and that many bytes, laid
/// over zeros (later segments win; the image ends where the last one does,
/// at most [`VHDX_UNPACKED_MAX`]). Flag bit 0 re-seals the CRC-32C of both
/// headers and region tables after unpacking, so that mutations get past
/// them. An input that already starts with `vhdxfile` is a plain image.
/// `fuzz/vhdx_seeds.py` packs the seeds this way.
pub fn vhdx_unpack(data: &[u8]) -> Vec<u8> {
    if data.starts_with(b"vhdxfile") {
        return data.to_vec();
    }
    let Some((&flags, mut rest)) = data.split_first() else {
        return Vec::new();
    };
    let mut img = Vec::new();
    while rest.len() >= 6 {
        let off = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize * 512;
        let len = usize::from(u16::from_le_bytes([rest[4], rest[5]]));
        let bytes = &rest[6..6 + len.min(rest.len() - 6)];
        rest = &rest[6 + bytes.len()..];
        let end = off.saturating_add(bytes.len());
        if end > VHDX_UNPACKED_MAX {
            continue;
        }
        if img.len() < end {
            img.resize(end, 0);
        }
        img[off..end].copy_from_slice(bytes);
    }
    if flags & 1 != 0 {
        for (at, len) in [
            (64usize << 10, 4096usize),
            (128 << 10, 4096),
            (192 << 10, 65536),
            (256 << 10, 65536),
        ] {
            if let Some(b) = img.get_mut(at..at + len) {
                let c = streamdisk::format::vhdx::checksum(b, 4);
                b[4..8].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    img
}

/// Runs one input's bytes through the decoder for `format`, twice.
fn check_bytes(format: Format, data: &[u8]) {
    let plan = PlanOptions {
        window: 4096,
        spill: SpillPolicy::Forbid,
    };
    let step = data.get(30).map_or(512, |&b| usize::from(b) * 37 + 1);
    let stream = DecoderConfig {
        plan: plan.clone(),
        ..DecoderConfig::default()
    };
    if let Ok(mut dec) = new_decoder(format, &stream) {
        let mut sink = CheckingSink::counting().sizeless();
        let input = &mut Dribble::new(data, step, 4093);
        if drive(dec.as_mut(), input, None, &plan, &mut sink).is_ok() && sink.vsize.is_some() {
            sink.assert_complete();
        }
    }
    // As `pipeline::input` checks a seekable source: a stream without a
    // signature whose last 512 bytes hold a VHD footer (`conectix` at their
    // start, or one byte later) is a fixed VHD, its footer known.
    let cookie = |t: &[u8]| t.starts_with(b"conectix");
    let tail = data
        .len()
        .checked_sub(512)
        .and_then(|at| data.get(at..))
        .filter(|t| {
            identify(data) == Signature::None && (cookie(t) || t.get(1..).is_some_and(cookie))
        })
        .map_or(Tail::Unchecked, |t| Tail::VhdFooter(t.to_vec()));
    let seekable = DecoderConfig {
        can_fetch: true,
        stream_len: Some(data.len() as u64),
        tail,
        ..stream
    };
    if let Ok(mut dec) = new_decoder(format, &seekable) {
        let mut sink = CheckingSink::counting().sizeless();
        let mut range = SliceRange::new(data);
        let input = &mut Dribble::fixed(data, 4096);
        if drive(dec.as_mut(), input, Some(&mut range), &plan, &mut sink).is_ok()
            && sink.vsize.is_some()
        {
            sink.assert_complete();
        }
    }
}

/// The qcow2 target's input.
pub fn run_one(data: &[u8]) {
    check_format(Format::Qcow2, data);
}

/// One fuzz input for the OVA opener (`container::open_ova`): the tar
/// walk, the OVF descriptor and the choice of disk. Panics if it panics,
/// if the chosen disk is not one the descriptor lists, or if the member's
/// stream yields other than its size (fewer bytes only with an error).
/// The disk asked for comes from the input's length, so that the bytes
/// themselves stay a plain OVA.
pub fn check_ova(data: &[u8]) {
    use std::io::BufRead;

    let disk = match data.len() % 4 {
        0 => None,
        n => Some(n),
    };
    let step = data.get(30).map_or(512, |&b| usize::from(b) * 37 + 1);
    let Ok((chosen, mut member)) =
        streamdisk::container::open_ova(Dribble::new(data, step, 4093), disk)
    else {
        return;
    };
    assert!(
        chosen.disk >= 1 && chosen.disk <= chosen.disks,
        "{chosen:?}"
    );
    assert_eq!(chosen.disk, disk.unwrap_or(1));
    let mut got = 0u64;
    let mut first = Vec::new();
    loop {
        let buf = match member.fill_buf() {
            Ok(b) => b,
            Err(_) => return,
        };
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        if first.len() < 512 {
            first.extend_from_slice(buf.get(..n.min(512 - first.len())).unwrap_or_default());
        }
        got += n as u64;
        assert!(got <= chosen.member_size, "member longer than its header");
        member.consume(n);
    }
    assert_eq!(got, chosen.member_size, "member shorter than its header");
    let _ = chosen.check_head(&first);
}
