//! libFuzzer entry point for the OVA opener; the harness is `fuzz/harness.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The harness also holds the decoders' entry points, unused here.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

fuzz_target!(|data: &[u8]| harness::check_ova(data));
