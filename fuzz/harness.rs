//! The qcow2 fuzz harness, shared by the fuzz target
//! (`fuzz_targets/qcow2_decode.rs`) and its stable-Rust replay in the
//! integration tests (`tests/it/qcow2_fuzz_regressions.rs`, which includes
//! this file with `#[path]`), so the replay checks exactly what the fuzzer
//! checked.
//!
//! It drives the qcow2 decoder on arbitrary bytes, as a stream (in pieces
//! whose size comes from the input), with a tiny reorder window, once refusing
//! to spill and once with range reads over the same bytes. The sink
//! (`streamdisk::testing::CheckingSink`) checks the decoder's contract:
//! virtual size first, nothing past it, nothing twice, and an accepted image
//! covered exactly.

use streamdisk::format::qcow2::{decode, PlanOptions, SpillPolicy};
use streamdisk::testing::{CheckingSink, Dribble, SliceRange};

/// One fuzz input: panics if the decoder breaks its contract.
pub fn run_one(data: &[u8]) {
    let opts = PlanOptions {
        window: 4096,
        spill: SpillPolicy::Forbid,
    };
    let step = data.get(30).map_or(512, |&b| usize::from(b) * 37 + 1);
    let mut sink = CheckingSink::counting();
    if decode(&mut Dribble::new(data, step, 4093), None, &opts, &mut sink).is_ok() {
        sink.assert_complete();
    }
    let mut sink = CheckingSink::counting();
    let _ = decode(
        &mut Dribble::fixed(data, 4096),
        Some(&mut SliceRange::new(data)),
        &opts,
        &mut sink,
    );
}
