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

use streamdisk::format::{
    drive, identify, new_decoder, DecoderConfig, Format, PlanOptions, Signature, SpillPolicy, Tail,
};
use streamdisk::testing::{CheckingSink, Dribble, SliceRange};

/// One fuzz input for `format`: panics if the decoder breaks its contract.
pub fn check_format(format: Format, data: &[u8]) {
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
