//! libFuzzer entry point; the harness itself is `fuzz/harness.rs`
//! (inputs are packed VHDX images, see `harness::vhdx_unpack`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamdisk::format::Format;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_format(Format::Vhdx, data));
