//! libFuzzer entry point; the harness itself is `fuzz/harness.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_format(streamdisk::format::Format::Vpc, data));
